//! Measurements: wall time on the monotonic clock, and bytes written to a
//! block device from `/sys/block/<dev>/stat`.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The block device whose writes a baseline pays for (`loop3`, ...).
#[derive(Clone, Debug)]
pub struct BlockDev(pub String);

impl BlockDev {
    /// `/dev/loop3` → `loop3`.
    pub fn of(path: &Path) -> Result<BlockDev> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("no device name in {}", path.display()))?;
        Ok(BlockDev(name.to_string()))
    }

    /// Bytes written to the device since it appeared: field 7 of its stat
    /// file (sectors written) × 512.
    pub fn bytes_written(&self) -> Result<u64> {
        let p = format!("/sys/block/{}/stat", self.0);
        let s = fs::read_to_string(&p).with_context(|| format!("read {p}"))?;
        let sectors: u64 = s
            .split_whitespace()
            .nth(6)
            .with_context(|| format!("{p}: fewer than 7 fields"))?
            .parse()
            .with_context(|| format!("{p}: field 7 is not a number"))?;
        Ok(sectors * 512)
    }
}

/// Writes every dirty page back.
pub fn sync() {
    nix::unistd::sync();
}

/// Writes everything back, then empties the page, dentry and inode caches,
/// so the next read comes from the device; then syncs again, writing back
/// what evicting the inodes changed (xfs frees the preallocations past
/// files' ends then).
pub fn drop_caches() -> Result<()> {
    sync();
    fs::write("/proc/sys/vm/drop_caches", "3").context("drop caches")?;
    sync();
    Ok(())
}

/// One measured step.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub time: Duration,
    pub bytes: u64,
}

/// Runs `step` and measures it: the caches are synced (and dropped when
/// `cold`) before, the device's write counter read before and after a
/// final sync, and only `step` itself timed.
pub fn measure<T>(
    dev: &BlockDev,
    cold: bool,
    step: impl FnOnce() -> Result<T>,
) -> Result<(T, Sample)> {
    if cold {
        drop_caches()?;
    } else {
        sync();
    }
    let before = dev.bytes_written()?;
    let start = Instant::now();
    let out = step()?;
    let time = start.elapsed();
    sync();
    let after = dev.bytes_written()?;
    Ok((
        out,
        Sample {
            time,
            bytes: after.saturating_sub(before),
        },
    ))
}

/// Times `step` alone.
pub fn timed<T>(step: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let start = Instant::now();
    let out = step()?;
    Ok((out, start.elapsed()))
}

/// Median, min and max of repeated runs, and percentiles.
#[derive(Clone, Debug)]
pub struct Stats {
    sorted: Vec<f64>,
}

impl Stats {
    pub fn new(values: &[f64]) -> Option<Stats> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Stats { sorted })
    }

    pub fn min(&self) -> f64 {
        self.sorted[0]
    }

    pub fn max(&self) -> f64 {
        self.sorted[self.sorted.len() - 1]
    }

    pub fn median(&self) -> f64 {
        self.percentile(50.0)
    }

    /// Nearest-rank percentile.
    pub fn percentile(&self, p: f64) -> f64 {
        let n = self.sorted.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.sorted[rank.clamp(1, n) - 1]
    }
}
