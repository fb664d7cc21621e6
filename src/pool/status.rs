//! The thin-pool target's status line, as the kernel prints it:
//!
//! ```text
//! <transaction id> <used meta>/<total meta> <used data>/<total data> <held metadata root|->
//! rw|ro|out_of_data_space [no_]discard_passdown error|queue_if_no_space needs_check|- <meta low water>
//! ```
//!
//! or `Fail` when the pool has failed. Metadata blocks are 4 KiB; data blocks
//! are the pool's block size.

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
    Failed,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::ReadWrite => "rw",
            PoolMode::ReadOnly => "read-only",
            PoolMode::OutOfDataSpace => "out of data space",
            PoolMode::OutOfMetadataSpace => "out of metadata space",
            PoolMode::Failed => "failed",
        }
    }
}

/// The parsed status line.
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

impl KernelPoolStatus {
    pub fn parse(line: &str) -> Result<Self> {
        let bad = || {
            Error::unexpected(
                "thin-pool status",
                line,
                "not in the format thinlayer knows",
            )
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"Fail") || f.first() == Some(&"Error") {
            return Ok(KernelPoolStatus {
                transaction: 0,
                meta_used: 0,
                meta_total: 0,
                data_used: 0,
                data_total: 0,
                held_metadata_snapshot: false,
                mode: PoolMode::Failed,
                error_if_no_space: false,
                needs_check: true,
            });
        }
        if f.len() < 8 {
            return Err(bad());
        }
        let pair = |s: &str| -> Result<(u64, u64)> {
            let (a, b) = s.split_once('/').ok_or_else(bad)?;
            Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
        };
        let (meta_used, meta_total) = pair(f[1])?;
        let (data_used, data_total) = pair(f[2])?;
        let mode = match f[4] {
            "rw" => PoolMode::ReadWrite,
            "ro" if meta_total > 0 && meta_used >= meta_total => PoolMode::OutOfMetadataSpace,
            "ro" => PoolMode::ReadOnly,
            "out_of_data_space" => PoolMode::OutOfDataSpace,
            _ => return Err(bad()),
        };
        Ok(KernelPoolStatus {
            transaction: f[0].parse().map_err(|_| bad())?,
            meta_used,
            meta_total,
            data_used,
            data_total,
            held_metadata_snapshot: f[3] != "-",
            mode,
            error_if_no_space: f[6] == "error_if_no_space",
            needs_check: f.get(7) == Some(&"needs_check"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_status_lines() {
        let s = KernelPoolStatus::parse(
            "3 27/4096 150/16384 - rw discard_passdown error_if_no_space - 1024",
        )
        .unwrap();
        assert_eq!(
            (s.transaction, s.meta_used, s.data_used, s.data_total),
            (3, 27, 150, 16384)
        );
        assert_eq!(s.mode, PoolMode::ReadWrite);
        assert!(s.error_if_no_space && !s.needs_check && !s.held_metadata_snapshot);
        let s = KernelPoolStatus::parse(
            "9 1/2 2/2 17 out_of_data_space no_discard_passdown queue_if_no_space needs_check 1",
        )
        .unwrap();
        assert_eq!(s.mode, PoolMode::OutOfDataSpace);
        assert!(s.needs_check && s.held_metadata_snapshot && !s.error_if_no_space);
        let s = KernelPoolStatus::parse(
            "161 512/512 3557/65536 - ro discard_passdown error_if_no_space - 128",
        )
        .unwrap();
        assert_eq!(s.mode, PoolMode::OutOfMetadataSpace);
        let s = KernelPoolStatus::parse(
            "161 300/512 3557/65536 - ro discard_passdown error_if_no_space needs_check 128",
        )
        .unwrap();
        assert_eq!(s.mode, PoolMode::ReadOnly);
        assert_eq!(
            KernelPoolStatus::parse("Fail").unwrap().mode,
            PoolMode::Failed
        );
        assert!(KernelPoolStatus::parse("1 2 3").is_err());
    }
}
