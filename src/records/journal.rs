//! `state.journal`: the changes made to the records since `state.json` was
//! last written whole, one line each, appended.
//!
//! ```text
//! thinlayer journal 1 extends sha256:<hex of state.json's bytes>
//! <16 hex: sha256 of the entry, its first 8 bytes> <the entry, one line of JSON>
//! ...
//! ```
//!
//! An entry holds everything of the records but the layers, the images and
//! the pending removals (the head: the pool, the transaction id, the
//! pending intent, the spares, a few hundred bytes), then the layers,
//! images and removals that changed, each with its new value or `null` for
//! gone. Replaying every entry on the `state.json`
//! the header names gives the records as last saved.
//!
//! The header's hash ties the journal to one `state.json`: a journal left by
//! a compaction that a crash cut short (the new `state.json` in place, the
//! old journal not yet replaced) extends another file and is not replayed;
//! everything it held is in the new `state.json`.
//!
//! A line that does not verify ends the replay. If nothing after it
//! verifies either, it is the torn tail of an append a crash cut short: an
//! entry never made durable (see [`super::Durability`]), dropped. A line
//! that does not verify followed by one that does is damage no crash
//! leaves: the records are refused as corrupt, the files left as they are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Records;
use crate::digest::Digest;
use crate::tree::{Image, Removal, Tree};

const MAGIC: &str = "thinlayer journal 1 extends ";

/// The journal's first line, for `state.json` whose bytes are `state`.
pub(super) fn header(state: &[u8]) -> String {
    format!("{MAGIC}{}\n", Digest::of_bytes(state))
}

/// One entry: the head of the records and what changed of the rest.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Entry {
    /// The records without their layers and images.
    head: Records,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    layers: BTreeMap<String, Option<crate::tree::Layer>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    images: BTreeMap<String, Option<Image>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    removals: BTreeMap<String, Option<Removal>>,
}

/// What takes the records `from` to `to`. Costs a comparison of each
/// layer and image, and a copy of what changed.
pub(super) fn entry(from: &Records, to: &Records) -> Entry {
    Entry {
        head: head(to),
        layers: to.tree.layers.changes_from(&from.tree.layers),
        images: changes(&from.tree.images, &to.tree.images),
        removals: changes(&from.tree.removals, &to.tree.removals),
    }
}

/// The journal line of `entry`, newline included.
pub(super) fn line(entry: &Entry) -> serde_json::Result<Vec<u8>> {
    let json = serde_json::to_vec(entry)?;
    let mut out = Vec::with_capacity(json.len() + 18);
    out.extend_from_slice(checksum(&json).as_bytes());
    out.push(b' ');
    out.extend_from_slice(&json);
    out.push(b'\n');
    Ok(out)
}

/// What replaying a journal gave.
#[derive(Debug)]
pub(super) enum Replay {
    /// The journal extends another `state.json`: nothing was applied.
    Stale,
    /// Every complete line applied; `torn`: a tail that does not verify
    /// (an append cut short) was dropped.
    Applied { entries: usize, torn: bool },
}

/// Why a journal cannot be replayed.
#[derive(Debug)]
pub(super) struct Damage(pub String);

/// Applies the journal `text` to `records`, read from the `state.json`
/// whose bytes are `state`.
pub(super) fn replay(state: &[u8], text: &[u8], records: &mut Records) -> Result<Replay, Damage> {
    let Some(end) = text.iter().position(|&b| b == b'\n') else {
        // Journals are put in place whole (written, synced, renamed): a
        // header cut short is no journal's.
        return Err(Damage("the journal's header is incomplete".into()));
    };
    let Some(extends) = std::str::from_utf8(&text[..end])
        .ok()
        .and_then(|h| h.strip_prefix(MAGIC))
    else {
        return Err(Damage(
            "the journal's header is not thinlayer's (version 1)".into(),
        ));
    };
    if extends != Digest::of_bytes(state).as_str() {
        return Ok(Replay::Stale);
    }
    let mut rest = &text[end + 1..];
    let mut entries = 0;
    while !rest.is_empty() {
        let (line, after) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let complete = line.len() < rest.len();
        let Some(json) = complete.then(|| verified(line)).flatten() else {
            // Only complete lines count: the piece after the last newline
            // may be the torn tail itself.
            let mut later: Vec<&[u8]> = after.split(|&b| b == b'\n').collect();
            later.pop();
            if later.into_iter().any(|l| verified(l).is_some()) {
                return Err(Damage(format!(
                    "entry {} does not verify and a later one does",
                    entries + 1
                )));
            }
            return Ok(Replay::Applied {
                entries,
                torn: true,
            });
        };
        let entry: Entry = serde_json::from_slice(json)
            .map_err(|e| Damage(format!("entry {}: {e}", entries + 1)))?;
        apply(records, entry);
        entries += 1;
        rest = after;
    }
    Ok(Replay::Applied {
        entries,
        torn: false,
    })
}

/// The JSON of a line whose checksum matches.
fn verified(line: &[u8]) -> Option<&[u8]> {
    let (sum, json) = (line.get(..16)?, line.get(17..)?);
    (line[16] == b' ' && checksum(json).as_bytes() == sum).then_some(json)
}

/// An entry's checksum: the first 16 hex digits of its sha256.
fn checksum(json: &[u8]) -> String {
    Digest::of_bytes(json).hex()[..16].to_string()
}

/// Makes `records` what `entry` says: its head, and its layers and
/// images changed.
pub(super) fn apply(records: &mut Records, entry: Entry) {
    let Entry {
        head,
        layers,
        images,
        removals,
    } = entry;
    let mut tree = std::mem::take(&mut records.tree);
    for (key, value) in layers {
        match value {
            Some(l) => tree.layers.insert(key, l),
            None => tree.layers.remove(&key),
        };
    }
    patch(&mut tree.images, images);
    patch(&mut tree.removals, removals);
    *records = head;
    records.tree.layers = tree.layers;
    records.tree.images = tree.images;
    records.tree.removals = tree.removals;
}

fn patch<V>(map: &mut BTreeMap<String, V>, changes: BTreeMap<String, Option<V>>) {
    for (key, value) in changes {
        match value {
            Some(v) => map.insert(key, v),
            None => map.remove(&key),
        };
    }
}

/// The entries of `to` that differ from `from`'s, and `None` for those
/// `to` lacks: one walk of both maps in key order, each key compared once.
fn changes<V: Clone + PartialEq>(
    from: &BTreeMap<String, V>,
    to: &BTreeMap<String, V>,
) -> BTreeMap<String, Option<V>> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let mut out = BTreeMap::new();
    let (mut a, mut b) = (from.iter().peekable(), to.iter().peekable());
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some(_), None) => Less,
            (None, Some(_)) => Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match order {
            Less => {
                let (k, _) = a.next().expect("peeked");
                out.insert(k.clone(), None);
            }
            Greater => {
                let (k, v) = b.next().expect("peeked");
                out.insert(k.clone(), Some(v.clone()));
            }
            Equal => {
                let ((_, va), (k, vb)) = (a.next().expect("peeked"), b.next().expect("peeked"));
                if va != vb {
                    out.insert(k.clone(), Some(vb.clone()));
                }
            }
        }
    }
}

/// The records without their layers, images and removals. Every field is named, so
/// a field added to the records is a compile error here until it is
/// placed.
fn head(r: &Records) -> Records {
    let Records {
        version,
        pool,
        transaction,
        pending,
        base_ready,
        base_empty,
        ids,
        tree,
        trims,
    } = r;
    let Tree {
        base,
        layers: _,
        images: _,
        retired,
        removals: _,
        spares,
    } = tree;
    Records {
        version: *version,
        pool: pool.clone(),
        transaction: *transaction,
        pending: pending.clone(),
        base_ready: *base_ready,
        base_empty: *base_empty,
        ids: ids.clone(),
        tree: Tree {
            base: *base,
            layers: Default::default(),
            images: BTreeMap::new(),
            retired: retired.clone(),
            removals: BTreeMap::new(),
            spares: spares.clone(),
        },
        trims: *trims,
    }
}
