//! Exact space figures from the pool's metadata.
//!
//! `thin_dump --metadata-snap` prints every thin device's block mappings as
//! of a metadata snapshot the pool holds for us (`reserve_metadata_snap`), so
//! it can be read while the pool is live:
//!
//! ```text
//! <device dev_id="3" mapped_blocks="12" ...>
//!   <range_mapping origin_begin="0" data_begin="40" length="10" time="0"/>
//!   <single_mapping origin_block="77" data_block="51" time="1"/>
//! </device>
//! ```
//!
//! From the mappings: a layer's *mapped* blocks (everything it sees), and its
//! *own* blocks: those whose mapping differs from its parent's at the same
//! place, i.e. exactly the blocks the layer wrote.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// A run of mappings: (virtual block, data block, length).
type Run = (u64, u64, u64);

/// One device's mappings: runs of (virtual block, data block, length),
/// sorted by virtual block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mappings {
    runs: Vec<(u64, u64, u64)>,
}

impl Mappings {
    pub fn from_runs(mut runs: Vec<(u64, u64, u64)>) -> Self {
        runs.sort_unstable();
        Mappings { runs }
    }

    /// Blocks mapped.
    pub fn mapped(&self) -> u64 {
        self.runs.iter().map(|r| r.2).sum()
    }

    /// Blocks mapped here and not to the same data block in `parent`.
    pub fn own_blocks(&self, parent: Option<&Mappings>) -> u64 {
        let Some(parent) = parent else {
            return self.mapped();
        };
        let mut shared = 0;
        let p = &parent.runs;
        let mut j = 0;
        for &(v, d, len) in &self.runs {
            let end = v + len;
            // Skip parent runs that end before this run starts.
            while j < p.len() && p[j].0 + p[j].2 <= v {
                j += 1;
            }
            let mut k = j;
            while k < p.len() && p[k].0 < end {
                let (pv, pd, plen) = p[k];
                let lo = v.max(pv);
                let hi = end.min(pv + plen);
                // Same data block at the same place: the run offsets agree.
                if lo < hi && d.wrapping_sub(v) == pd.wrapping_sub(pv) {
                    shared += hi - lo;
                }
                k += 1;
            }
        }
        self.mapped() - shared
    }
}

/// Data blocks that some of `these` map and none of `others` does: what
/// deleting `these` would free.
pub fn held_only_by<'a>(
    these: impl IntoIterator<Item = &'a Mappings>,
    others: impl IntoIterator<Item = &'a Mappings>,
) -> u64 {
    let ours = union(these);
    let theirs = union(others);
    let mut held = 0;
    let mut j = 0;
    for (start, end) in ours {
        let mut covered = 0;
        while j < theirs.len() && theirs[j].1 <= start {
            j += 1;
        }
        let mut k = j;
        while k < theirs.len() && theirs[k].0 < end {
            covered += end.min(theirs[k].1) - start.max(theirs[k].0);
            k += 1;
        }
        held += end - start - covered;
    }
    held
}

/// The data blocks the devices map, as sorted, disjoint `[start, end)`
/// ranges.
fn union<'a>(devices: impl IntoIterator<Item = &'a Mappings>) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = devices
        .into_iter()
        .flat_map(|m| m.runs.iter().map(|&(_, d, len)| (d, d + len)))
        .collect();
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = line.find(&key)? + key.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

fn num(line: &str, name: &str) -> Result<u64> {
    attr(line, name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            Error::unexpected(
                "thin_dump output",
                line.trim(),
                &format!("no number in attribute {name}"),
            )
        })
}

/// Parses thin_dump's XML into each device's mappings.
pub fn parse_thin_dump(xml: &str) -> Result<BTreeMap<u32, Mappings>> {
    let mut out = BTreeMap::new();
    let mut current: Option<(u32, Vec<Run>)> = None;
    for line in xml.lines() {
        let t = line.trim_start();
        if t.starts_with("<device ") {
            current = Some((num(t, "dev_id")? as u32, Vec::new()));
        } else if t.starts_with("<range_mapping ") {
            let runs = &mut current
                .as_mut()
                .ok_or_else(|| {
                    Error::unexpected("thin_dump output", t, "mapping outside a device")
                })?
                .1;
            runs.push((
                num(t, "origin_begin")?,
                num(t, "data_begin")?,
                num(t, "length")?,
            ));
        } else if t.starts_with("<single_mapping ") {
            let runs = &mut current
                .as_mut()
                .ok_or_else(|| {
                    Error::unexpected("thin_dump output", t, "mapping outside a device")
                })?
                .1;
            runs.push((num(t, "origin_block")?, num(t, "data_block")?, 1));
        } else if t.starts_with("</device>") {
            if let Some((id, runs)) = current.take() {
                out.insert(id, Mappings::from_runs(runs));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_held_only_by_some_devices() {
        let a = Mappings::from_runs(vec![(0, 10, 4), (10, 30, 2)]);
        let b = Mappings::from_runs(vec![(0, 12, 4)]);
        let c = Mappings::from_runs(vec![(5, 31, 1)]);
        // a maps 10..14 and 30..32; b 12..16; c 31.
        assert_eq!(held_only_by([&a], [&b, &c]), 2 + 1);
        assert_eq!(held_only_by([&a, &b], [&c]), 6 + 1);
        assert_eq!(held_only_by([&a], []), 6);
        assert_eq!(held_only_by([], [&a]), 0);
    }

    const DUMP: &str = r#"<superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="100">
  <device dev_id="1" mapped_blocks="12" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="10" time="0"/>
    <single_mapping origin_block="20" data_block="10" time="0"/>
    <single_mapping origin_block="30" data_block="11" time="0"/>
  </device>
  <device dev_id="2" mapped_blocks="13" transaction="1" creation_time="1" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="4" time="0"/>
    <single_mapping origin_block="4" data_block="50" time="1"/>
    <range_mapping origin_begin="5" data_begin="5" length="5" time="0"/>
    <single_mapping origin_block="20" data_block="10" time="0"/>
    <single_mapping origin_block="40" data_block="51" time="1"/>
    <single_mapping origin_block="41" data_block="52" time="1"/>
  </device>
</superblock>
"#;

    #[test]
    fn counts_mapped_and_own_blocks() {
        let m = parse_thin_dump(DUMP).unwrap();
        let (parent, child) = (&m[&1], &m[&2]);
        assert_eq!(parent.mapped(), 12);
        assert_eq!(child.mapped(), 13);
        // Child rewrote block 4, added 40 and 41; dropped block 30.
        assert_eq!(child.own_blocks(Some(parent)), 3);
        assert_eq!(parent.own_blocks(None), 12);
        assert_eq!(parent.own_blocks(Some(parent)), 0);
    }

    #[test]
    fn own_blocks_compare_offsets_within_runs() {
        let parent = Mappings::from_runs(vec![(0, 100, 10)]);
        // Same places, data shifted by one block: nothing shared.
        assert_eq!(
            Mappings::from_runs(vec![(0, 101, 10)]).own_blocks(Some(&parent)),
            10
        );
        // Overlapping the parent's run in the middle.
        assert_eq!(
            Mappings::from_runs(vec![(5, 105, 10)]).own_blocks(Some(&parent)),
            5
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_thin_dump("<device dev_id=\"x\">").is_err());
        assert!(parse_thin_dump("<single_mapping origin_block=\"1\" data_block=\"2\"/>").is_err());
    }
}
