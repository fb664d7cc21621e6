//! The thin pool: where its space comes from, its device-mapper table, and
//! bringing it up and down.
//!
//! By default the pool lives in two sparse files under the root, `data` and
//! `metadata`, each on a loop device. The table is
//!
//! ```text
//! 0 <data sectors> thin-pool <metadata maj:min> <data maj:min> <block sectors> <low water blocks> 2 skip_block_zeroing error_if_no_space
//! ```
//!
//! `skip_block_zeroing`: a newly provisioned block is not zeroed first; the
//! filesystem above never reads what it did not write. `error_if_no_space`:
//! when the data space runs out, writes fail at once instead of queueing for
//! `no_space_timeout` (60 s) while everything using the pool hangs.

pub mod autoextend;
mod status;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use devicemapper::ThinPoolTargetParams;
use serde::{Deserialize, Serialize};

pub use autoextend::Autoextend;
pub use status::{KernelPoolStatus, META_BLOCK, PoolMode, PoolState};

use crate::error::{Error, Result};
use crate::fs::FsKind;
use crate::kernel::{DevNum, Kernel, Suspend, Target};
use crate::units::{BlockSize, Bytes, Sectors};

/// Where the pool's space comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PoolSource {
    /// Sparse files on loop devices (the default).
    LoopFiles { data: PathBuf, metadata: PathBuf },
    /// Block devices given by the user; thinlayer builds the pool on them.
    Devices { data: PathBuf, metadata: PathBuf },
    /// A thin pool someone else made (LVM, a script); thinlayer only makes
    /// thin devices in it and never removes it.
    Existing { pool: String },
}

/// Everything needed to bring the pool up again after a reboot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    /// Prefix of every device-mapper name this root makes.
    pub prefix: String,
    pub source: PoolSource,
    pub block_size: BlockSize,
    /// The kernel raises an event when free data blocks fall below this.
    pub low_water_blocks: u64,
    pub filesystem: FsKind,
    /// Size of the base device, and so of every layer.
    pub base_size: Bytes,
    /// New layers are refused while less than this share of data space is free.
    pub min_free_percent: u8,
    /// Automatic growth by `thinlayer serve` (loop files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoextend: Option<Autoextend>,
}

/// Options of `pool init`.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    pub source: SourceOptions,
    pub block_size: BlockSize,
    pub filesystem: FsKind,
    pub base_size: Bytes,
    pub min_free_percent: u8,
}

#[derive(Clone, Debug)]
pub enum SourceOptions {
    LoopFiles {
        data_size: Bytes,
        metadata_size: Bytes,
    },
    Devices {
        data: PathBuf,
        metadata: PathBuf,
    },
    Existing {
        pool: String,
    },
}

impl Default for PoolOptions {
    /// Docker's loop-lvm defaults, scaled to a test machine: 100 GiB of
    /// sparse data, 2 GiB of sparse metadata, 64 KiB blocks, 10 GiB layers.
    fn default() -> Self {
        PoolOptions {
            source: SourceOptions::LoopFiles {
                data_size: Bytes(100 << 30),
                metadata_size: Bytes(2 << 30),
            },
            block_size: BlockSize::DEFAULT,
            filesystem: FsKind::Ext4,
            base_size: Bytes(10 << 30),
            min_free_percent: 10,
        }
    }
}

/// The kernel accepts metadata devices up to about 16 GiB; beyond that the
/// space is not used.
const MAX_METADATA: u64 = 16 << 30;

impl PoolOptions {
    pub fn validate(&self) -> Result<()> {
        if let SourceOptions::LoopFiles {
            data_size,
            metadata_size,
        } = &self.source
        {
            if data_size.0 < 64 * self.block_size.bytes().0 {
                return Err(Error::invalid(
                    "data size",
                    &data_size.0.to_string(),
                    "the data space must hold at least 64 blocks",
                ));
            }
            if metadata_size.0 < (2 << 20) || metadata_size.0 > MAX_METADATA {
                return Err(Error::invalid(
                    "metadata size",
                    &metadata_size.0.to_string(),
                    "metadata must be between 2 MiB and 16 GiB",
                ));
            }
        }
        if self.base_size.0 < (64 << 20)
            || !self.base_size.0.is_multiple_of(self.block_size.bytes().0)
        {
            return Err(Error::invalid(
                "base size",
                &self.base_size.0.to_string(),
                "the base device must be at least 64 MiB and a whole number of pool blocks",
            ));
        }
        if self.filesystem == FsKind::Xfs && self.base_size.0 < (320 << 20) {
            return Err(Error::invalid(
                "base size",
                &self.base_size.0.to_string(),
                "xfs needs layers of at least 320 MiB",
            ));
        }
        if self.min_free_percent > 50 {
            return Err(Error::invalid(
                "minimum free space",
                &self.min_free_percent.to_string(),
                "at most 50 percent",
            ));
        }
        Ok(())
    }
}

impl PoolOptions {
    /// Checks `policy` for a pool made with these options: loop files only.
    pub fn validate_autoextend(&self, policy: &Autoextend) -> Result<()> {
        match &self.source {
            SourceOptions::LoopFiles { data_size, .. } => policy.validate(Some(*data_size)),
            _ => Err(autoextend_refused()),
        }
    }
}

/// Automatic growth asked of a pool not on loop files.
pub fn autoextend_refused() -> Error {
    Error::invalid(
        "autoextend",
        "",
        "only pools on loop files grow automatically; grow given block devices \
         yourself (e.g. lvextend) and run `thinlayer pool grow`",
    )
}

impl PoolConfig {
    /// The pool's device-mapper name.
    pub fn pool_name(&self) -> String {
        match &self.source {
            PoolSource::Existing { pool } => pool.clone(),
            _ => format!("{}-pool", self.prefix),
        }
    }

    /// Whether thinlayer made the pool (and so may take it down).
    pub fn owns_pool(&self) -> bool {
        !matches!(self.source, PoolSource::Existing { .. })
    }

    #[cfg(test)]
    pub fn for_tests(root: &Path) -> Self {
        PoolConfig {
            prefix: prefix_for(root),
            source: PoolSource::LoopFiles {
                data: root.join("data"),
                metadata: root.join("metadata"),
            },
            block_size: BlockSize::DEFAULT,
            low_water_blocks: 32,
            filesystem: FsKind::Ext4,
            base_size: Bytes(1 << 30),
            min_free_percent: 10,
            autoextend: None,
        }
    }
}

/// A device-mapper name prefix unique to a root: `thinlayer-` and a hash of
/// its path, so pools of different roots never collide and each root can
/// tell its own devices from everyone else's.
pub fn prefix_for(root: &Path) -> String {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in root.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("thinlayer-{:08x}", h as u32)
}

/// Builds the config for a new pool under `root`.
pub fn config_for(root: &Path, opts: &PoolOptions) -> PoolConfig {
    let source = match &opts.source {
        SourceOptions::LoopFiles { .. } => PoolSource::LoopFiles {
            data: root.join("data"),
            metadata: root.join("metadata"),
        },
        SourceOptions::Devices { data, metadata } => PoolSource::Devices {
            data: data.clone(),
            metadata: metadata.clone(),
        },
        SourceOptions::Existing { pool } => PoolSource::Existing { pool: pool.clone() },
    };
    PoolConfig {
        prefix: prefix_for(root),
        source,
        block_size: opts.block_size,
        low_water_blocks: 32,
        filesystem: opts.filesystem,
        base_size: opts.base_size,
        min_free_percent: opts.min_free_percent,
        autoextend: None,
    }
}

/// The pool as the kernel reports it.
#[derive(Clone, Debug, Serialize)]
pub struct PoolStatus {
    pub name: String,
    pub data_used: Bytes,
    pub data_total: Bytes,
    pub metadata_used: Bytes,
    pub metadata_total: Bytes,
    pub block_size: Bytes,
    pub transaction_id: u64,
    pub mode: PoolMode,
    pub needs_check: bool,
    pub thin_devices: usize,
    /// Removed layers whose kernel work is not done: their space is still
    /// held (set by the driver; the pool does not know).
    pub pending_removals: usize,
    /// Snapshots made ahead of Prepares (set by the driver).
    pub spares: usize,
}

/// Brings the pool's device up and down. Borrowed for one operation.
pub struct Pool<'a> {
    pub kernel: &'a dyn Kernel,
    pub config: &'a PoolConfig,
}

/// Backing devices opened for a pool table: the loops stay held until the
/// table holds them.
struct Backing {
    metadata: DevNum,
    metadata_path: PathBuf,
    data: DevNum,
    data_len: Sectors,
    _holds: Vec<crate::kernel::LoopAttachment>,
}

impl Pool<'_> {
    pub fn name(&self) -> String {
        self.config.pool_name()
    }

    /// The pool's device number, for thin tables; the pool must be live.
    pub fn devnum(&self) -> Result<DevNum> {
        self.kernel
            .dm_info(&self.name())?
            .filter(|i| i.active_table)
            .map(|i| i.devnum)
            .ok_or_else(|| Error::not_found("thin pool device", self.name()))
    }

    pub fn is_live(&self) -> Result<bool> {
        Ok(self
            .kernel
            .dm_info(&self.name())?
            .is_some_and(|i| i.active_table))
    }

    /// Makes a new pool: sparse files (loop source), then the pool device.
    /// A fresh metadata device must start with zeros; the kernel formats it.
    pub fn create(&self, opts: &PoolOptions) -> Result<()> {
        match (&self.config.source, &opts.source) {
            (
                PoolSource::LoopFiles { data, metadata },
                SourceOptions::LoopFiles {
                    data_size,
                    metadata_size,
                },
            ) => {
                make_sparse(metadata, *metadata_size)?;
                make_sparse(data, *data_size)?;
                crate::failpoint::hit(crate::failpoint::init::AFTER_FILES);
            }
            (PoolSource::Devices { .. }, _) => {}
            (PoolSource::Existing { .. }, _) => {
                return self.devnum().map(|_| ());
            }
            _ => unreachable!("config_for pairs source and options"),
        }
        // For given devices, opening the backing checks that both are
        // block devices before the metadata's start is zeroed.
        let backing = self.open_backing()?;
        if let PoolSource::Devices { metadata, .. } = &self.config.source {
            self.kernel.zero_start(metadata)?;
        }
        crate::failpoint::hit(crate::failpoint::init::AFTER_LOOPS);
        self.load(&backing)
    }

    /// Brings an existing pool up (after a reboot): reattaches the loops,
    /// runs `thin_check` on the metadata, loads the table. A pool that is
    /// already live is left as it is.
    pub fn activate(&self) -> Result<bool> {
        if self.is_live()? {
            return Ok(false);
        }
        if !self.config.owns_pool() {
            return Err(Error::not_found("thin pool device", self.name()));
        }
        let backing = self.open_backing()?;
        crate::failpoint::hit(crate::failpoint::activate::AFTER_LOOPS);
        // LVM checks a thin pool's metadata on every activation; so do we.
        // The check also clears a needs_check flag the kernel set after an
        // error, once the metadata is found sound.
        let hint = match &self.config.source {
            PoolSource::LoopFiles { .. } => "run `thinlayer pool repair`".to_string(),
            _ => format!(
                "repair it with thin_repair (e.g. `thin_repair -i {} -o NEW_DEVICE`, then use NEW_DEVICE as the metadata device)",
                backing.metadata_path.display()
            ),
        };
        self.kernel
            .thin_check(&backing.metadata_path)
            .map_err(|e| Error::CheckFailed {
                pool: self.name(),
                detail: format!("{e}; the pool was not activated: {hint}"),
            })?;
        crate::failpoint::hit(crate::failpoint::activate::AFTER_CHECK);
        self.load(&backing)?;
        crate::failpoint::hit(crate::failpoint::activate::AFTER_LOAD);
        Ok(true)
    }

    fn load(&self, b: &Backing) -> Result<()> {
        let table = self.table(b.metadata, b.data, b.data_len);
        self.kernel.dm_create(&self.name(), &table, false)?;
        Ok(())
    }

    fn table(&self, metadata: DevNum, data: DevNum, data_len: Sectors) -> [Target; 1] {
        let block = self.config.block_size.sectors().0;
        [Target::new(
            data_len,
            "thin-pool",
            format!(
                "{metadata} {data} {block} {} 2 skip_block_zeroing error_if_no_space",
                self.low_water_blocks(data_len.0 / block.max(1))
            ),
        )]
    }

    /// The table's low water mark, in data blocks: the kernel raises an
    /// event when fewer blocks than this are free. With automatic growth
    /// on, it is where the threshold lies, so that the watcher of
    /// `thinlayer serve` wakes at once when the threshold is crossed.
    pub fn low_water_blocks(&self, data_blocks: u64) -> u64 {
        match &self.config.autoextend {
            Some(a) if a.enabled() => {
                (data_blocks * u64::from(100 - a.threshold_percent) / 100).max(1)
            }
            _ => self.config.low_water_blocks,
        }
    }

    /// Grows the pool: the sparse files (loop source) are extended and their
    /// loops told; then the table is reloaded with the new data size and the
    /// pool suspended and resumed, on which the kernel takes the new data and
    /// metadata sizes, and leaves out-of-data-space mode. Given block devices
    /// are reread (grow them first, e.g. with lvextend). Nothing ever shrinks.
    pub fn grow(&self, data: Option<Bytes>, metadata: Option<Bytes>) -> Result<()> {
        let (data_path, meta_path) = match &self.config.source {
            PoolSource::LoopFiles { data, metadata } => (data, metadata),
            PoolSource::Devices { data, metadata } => (data, metadata),
            PoolSource::Existing { pool } => {
                return Err(Error::invalid(
                    "pool",
                    pool,
                    "thinlayer does not manage this pool's space; grow it with the tool that made it",
                ));
            }
        };
        let loops = self.kernel.loop_list()?;
        if let PoolSource::LoopFiles { .. } = &self.config.source {
            for (file, size) in [(meta_path, metadata), (data_path, data)] {
                let Some(size) = size else { continue };
                let current = file_len(file)?;
                if size < current {
                    return Err(Error::invalid(
                        "size",
                        &size.0.to_string(),
                        &format!(
                            "{} is {} bytes; a pool never shrinks",
                            file.display(),
                            current.0
                        ),
                    ));
                }
                if size > current {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(file)
                        .map_err(|e| Error::io("open", file, e))?;
                    f.set_len(size.0)
                        .map_err(|e| Error::io("extend", file, e))?;
                    let dev = loops
                        .iter()
                        .find(|l| &l.backing_file == file)
                        .ok_or_else(|| {
                            Error::not_found("loop device of", file.display().to_string())
                        })?;
                    self.kernel.loop_refresh_size(&dev.device)?;
                }
            }
        } else if data.is_some() || metadata.is_some() {
            return Err(Error::invalid(
                "size",
                "",
                "the pool is on block devices: grow the devices, then run `pool grow` without sizes",
            ));
        }
        let name = self.name();
        let (meta_dev, data_dev) = self.live_devices()?;
        let data_len = match &self.config.source {
            PoolSource::LoopFiles { data, .. } => file_len(data)?,
            _ => self.kernel.block_device(data_path)?.1,
        };
        self.kernel.dm_load(
            &name,
            &self.table(meta_dev, data_dev, data_len.whole_sectors()),
        )?;
        self.kernel.dm_suspend(&name, Suspend::Freeze)?;
        self.kernel.dm_resume(&name)
    }

    fn open_backing(&self) -> Result<Backing> {
        match &self.config.source {
            PoolSource::LoopFiles { data, metadata } => {
                let m = self.kernel.loop_attach(metadata)?;
                let d = self.kernel.loop_attach(data)?;
                let len = file_len(data)?;
                Ok(Backing {
                    metadata: m.info.devnum,
                    metadata_path: m.info.device.clone(),
                    data: d.info.devnum,
                    data_len: len.whole_sectors(),
                    _holds: vec![m, d],
                })
            }
            PoolSource::Devices { data, metadata } => {
                let (metadata_dev, _) = self.kernel.block_device(metadata)?;
                let (data_dev, data_len) = self.kernel.block_device(data)?;
                Ok(Backing {
                    metadata: metadata_dev,
                    metadata_path: metadata.clone(),
                    data: data_dev,
                    data_len: data_len.whole_sectors(),
                    _holds: Vec::new(),
                })
            }
            PoolSource::Existing { .. } => unreachable!("existing pools are not loaded by us"),
        }
    }

    /// The metadata and data devices of the live pool's table, read with
    /// the devicemapper crate's parser.
    fn live_devices(&self) -> Result<(DevNum, DevNum)> {
        let name = self.name();
        let table = self.kernel.dm_table(&name)?;
        let line = table
            .first()
            .ok_or_else(|| Error::not_found("thin pool table", &name))?;
        let params =
            ThinPoolTargetParams::from_str(&format!("{} {}", line.kind, line.params.trim()))
                .map_err(|e| Error::unexpected("thin-pool table", &line.params, &e.to_string()))?;
        let devnum = |d: devicemapper::Device| DevNum {
            major: d.major,
            minor: d.minor,
        };
        Ok((devnum(params.metadata_dev), devnum(params.data_dev)))
    }

    /// The metadata device of the live pool, for the thin tools.
    pub fn metadata_device(&self) -> Result<PathBuf> {
        let (devnum, _) = self.live_devices()?;
        if let Some(l) = self
            .kernel
            .loop_list()?
            .into_iter()
            .find(|l| l.devnum == devnum)
        {
            return Ok(l.device);
        }
        Ok(PathBuf::from(format!("/dev/block/{devnum}")))
    }

    /// What the kernel says of the pool: its figures, or that it failed.
    pub fn state(&self) -> Result<PoolState> {
        let st = self.kernel.dm_status(&self.name())?;
        let line = st
            .first()
            .ok_or_else(|| Error::not_found("thin pool status", self.name()))?;
        PoolState::parse(&line.params)
    }

    /// The figures of the working pool; a failed pool has none to give and
    /// is an error ([`Error::PoolFailed`]).
    pub fn kernel_status(&self) -> Result<KernelPoolStatus> {
        match self.state()? {
            PoolState::Working(st) => Ok(st),
            PoolState::Failed => Err(Error::PoolFailed { pool: self.name() }),
        }
    }

    pub fn status(&self, thin_devices: usize) -> Result<PoolStatus> {
        let k = self.kernel_status()?;
        let block = self.config.block_size.bytes().0;
        Ok(PoolStatus {
            name: self.name(),
            data_used: Bytes(k.data_used * block),
            data_total: Bytes(k.data_total * block),
            metadata_used: Bytes(k.meta_used * META_BLOCK),
            metadata_total: Bytes(k.meta_total * META_BLOCK),
            block_size: Bytes(block),
            transaction_id: k.transaction,
            mode: k.mode,
            needs_check: k.needs_check,
            thin_devices,
            pending_removals: 0,
            spares: 0,
        })
    }

    /// Takes the pool device down; its loops detach themselves (autoclear).
    pub fn deactivate(&self) -> Result<()> {
        if !self.config.owns_pool() || self.kernel.dm_info(&self.name())?.is_none() {
            return Ok(());
        }
        self.kernel.dm_remove(&self.name(), false)
    }

    /// Removes the sparse files thinlayer made.
    pub fn remove_files(&self) -> Result<()> {
        if let PoolSource::LoopFiles { data, metadata } = &self.config.source {
            for f in [data, metadata] {
                match fs::remove_file(f) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove", f, e)),
                }
            }
        }
        Ok(())
    }
}

fn make_sparse(path: &Path, size: Bytes) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("create pool file", path, e))?;
    f.set_len(size.0)
        .map_err(|e| Error::io("size pool file", path, e))?;
    f.sync_all().map_err(|e| Error::io("fsync", path, e))
}

fn file_len(path: &Path) -> Result<Bytes> {
    fs::metadata(path)
        .map(|m| Bytes(m.len()))
        .map_err(|e| Error::io("stat", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_differ_by_root_and_are_stable() {
        let a = prefix_for(Path::new("/var/lib/thinlayer"));
        assert_eq!(a, prefix_for(Path::new("/var/lib/thinlayer")));
        assert_ne!(a, prefix_for(Path::new("/srv/thinlayer")));
        assert!(a.starts_with("thinlayer-") && a.len() == 18);
    }

    #[test]
    fn options_are_validated() {
        let mut o = PoolOptions::default();
        o.validate().unwrap();
        o.base_size = Bytes(1 << 20);
        assert!(o.validate().is_err());
        o = PoolOptions::default();
        o.source = SourceOptions::LoopFiles {
            data_size: Bytes(1 << 20),
            metadata_size: Bytes(2 << 20),
        };
        assert!(o.validate().is_err());
    }
}
