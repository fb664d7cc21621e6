//! The thin-pool target's status line, as the kernel prints it:
//!
//! ```text
//! <transaction id> <used meta>/<total meta> <used data>/<total data> <held metadata root|->
//! rw|ro|out_of_data_space [no_]discard_passdown error|queue_if_no_space needs_check|- <meta low water>
//! ```
//!
//! or `Fail` when the pool has failed. Metadata blocks are 4 KiB; data blocks
//! are the pool's block size.

use std::str::FromStr;

use devicemapper::{ThinPoolStatus, ThinPoolStatusSummary, ThinPoolWorkingStatus};
use serde::Serialize;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    ReadWrite,
    ReadOnly,
    OutOfDataSpace,
    /// Read-only because metadata space ran out: the kernel prints `ro`
    /// and counts its metadata reserve (a tenth) as used, so used equals
    /// total. Growing the metadata brings the pool back to read-write.
    OutOfMetadataSpace,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::ReadWrite => "rw",
            PoolMode::ReadOnly => "read-only",
            PoolMode::OutOfDataSpace => "out of data space",
            PoolMode::OutOfMetadataSpace => "out of metadata space",
        }
    }
}

/// What the kernel says of a pool: working, with its figures, or failed,
/// when it reports nothing to read (`Fail`, or `Error` when device-mapper
/// could not get the status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolState {
    Working(KernelPoolStatus),
    Failed,
}

/// The figures of a working pool. Metadata counts are of [`META_BLOCK`]s,
/// data counts of the pool's blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelPoolStatus {
    pub transaction: u64,
    pub meta_used: u64,
    pub meta_total: u64,
    pub data_used: u64,
    pub data_total: u64,
    pub held_metadata_snapshot: bool,
    pub mode: PoolMode,
    pub error_if_no_space: bool,
    pub needs_check: bool,
}

/// Metadata blocks are always 4 KiB.
pub const META_BLOCK: u64 = 4096;

impl PoolState {
    /// Reads a thin-pool status line with the devicemapper crate's parser.
    pub fn parse(line: &str) -> Result<Self> {
        let line = line.trim();
        let bad = |why: &str| Error::unexpected("thin-pool status", line, why);
        // The crate indexes the used/total pairs without looking: a pair
        // with no '/' would panic there.
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() >= 3
            && f[0].parse::<u64>().is_ok()
            && !(f[1].contains('/') && f[2].contains('/'))
        {
            return Err(bad("no used/total pairs"));
        }
        let status = ThinPoolStatus::from_str(line).map_err(|e| bad(&e.to_string()))?;
        Ok(match status {
            ThinPoolStatus::Working(w) => PoolState::Working(KernelPoolStatus::of(&w)),
            ThinPoolStatus::Fail | ThinPoolStatus::Error => PoolState::Failed,
        })
    }
}

impl KernelPoolStatus {
    fn of(w: &ThinPoolWorkingStatus) -> Self {
        let u = &w.usage;
        let mode = match w.summary {
            ThinPoolStatusSummary::Good => PoolMode::ReadWrite,
            ThinPoolStatusSummary::ReadOnly
                if u.total_meta.0 > 0 && u.used_meta >= u.total_meta =>
            {
                PoolMode::OutOfMetadataSpace
            }
            ThinPoolStatusSummary::ReadOnly => PoolMode::ReadOnly,
            ThinPoolStatusSummary::OutOfSpace => PoolMode::OutOfDataSpace,
        };
        KernelPoolStatus {
            transaction: w.transaction_id,
            meta_used: u.used_meta.0,
            meta_total: u.total_meta.0,
            data_used: u.used_data.0,
            data_total: u.total_data.0,
            held_metadata_snapshot: w.held_metadata_root.is_some(),
            mode,
            error_if_no_space: w.no_space_policy == devicemapper::ThinPoolNoSpacePolicy::Error,
            needs_check: w.needs_check,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn working(line: &str) -> Result<KernelPoolStatus> {
        match PoolState::parse(line)? {
            PoolState::Working(w) => Ok(w),
            PoolState::Failed => panic!("{line:?} read as failed"),
        }
    }

    #[test]
    fn parses_kernel_status_lines() {
        let s =
            working("3 27/4096 150/16384 - rw discard_passdown error_if_no_space - 1024").unwrap();
        assert_eq!(
            (s.transaction, s.meta_used, s.data_used, s.data_total),
            (3, 27, 150, 16384)
        );
        assert_eq!(s.mode, PoolMode::ReadWrite);
        assert!(s.error_if_no_space && !s.needs_check && !s.held_metadata_snapshot);
        let s = working(
            "9 1/2 2/2 17 out_of_data_space no_discard_passdown queue_if_no_space needs_check 1",
        )
        .unwrap();
        assert_eq!(s.mode, PoolMode::OutOfDataSpace);
        assert!(s.needs_check && s.held_metadata_snapshot && !s.error_if_no_space);
        let s = working("161 512/512 3557/65536 - ro discard_passdown error_if_no_space - 128")
            .unwrap();
        assert_eq!(s.mode, PoolMode::OutOfMetadataSpace);
        let s = working(
            "161 300/512 3557/65536 - ro discard_passdown error_if_no_space needs_check 128",
        )
        .unwrap();
        assert_eq!(s.mode, PoolMode::ReadOnly);
        assert_eq!(PoolState::parse("Fail").unwrap(), PoolState::Failed);
        assert_eq!(PoolState::parse("Error").unwrap(), PoolState::Failed);
        assert!(PoolState::parse("1 2 3").is_err());
        assert!(PoolState::parse("3 27 150 - rw discard_passdown error_if_no_space - 1").is_err());
    }
}
