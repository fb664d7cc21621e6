//! Everything thinlayer asks of the kernel, behind one trait.
//!
//! [`Kernel`] is the only way the rest of the crate touches device-mapper,
//! loop devices, mounts and the block-level tools (mkfs, thin_check,
//! thin_dump). [`Linux`] implements it with in-process ioctls (through the
//! `devicemapper` and `loopdev-3` crates) and syscalls (through `nix`);
//! `Sim` (with the `testing` feature) implements it in memory, so the
//! snapshot tree, the records and the crash recovery above it are tested on
//! hosts without device-mapper.
//!
//! Device-mapper contract relied on throughout:
//! - a device is created empty, gets a table loaded into its inactive slot,
//!   and only a resume makes that table live;
//! - messages to a thin-pool (`create_thin`, `create_snap`, `delete`,
//!   `set_transaction_id`, `reserve_metadata_snap`, `release_metadata_snap`)
//!   are committed to the pool's metadata before the ioctl returns;
//! - `create_snap` of an origin that is active must be sent while the origin
//!   is suspended, or writes racing the snapshot can be lost.

#[cfg(any(test, feature = "testing"))]
pub mod contract;
mod linux;
#[cfg(any(test, feature = "testing"))]
mod sim;

use std::fmt;
use std::path::{Path, PathBuf};

pub use linux::Linux;
#[cfg(any(test, feature = "testing"))]
pub use sim::Sim;

use crate::error::Result;
use crate::units::{Bytes, Sectors};

/// The space of a host filesystem, as [`Kernel::fs_space`] gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FsSpace {
    /// Free to an unprivileged user (`f_bavail`), bytes.
    pub free: u64,
    /// Its size, bytes.
    pub size: u64,
}

/// A block device number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for DevNum {
    /// The `major:minor` form device-mapper tables take.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl DevNum {
    /// The device node devtmpfs makes for a device-mapper device. No udev is
    /// assumed, so `/dev/mapper/NAME` may not exist; `/dev/dm-N` always does.
    pub fn dm_node(self) -> PathBuf {
        PathBuf::from(format!("/dev/dm-{}", self.minor))
    }
}

/// One line of a device-mapper table or status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub start: Sectors,
    pub length: Sectors,
    pub kind: String,
    pub params: String,
}

impl Target {
    pub fn new(length: Sectors, kind: &str, params: String) -> Self {
        Target {
            start: Sectors(0),
            length,
            kind: kind.to_string(),
            params,
        }
    }
}

/// What the kernel says of one device-mapper device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmInfo {
    pub devnum: DevNum,
    pub suspended: bool,
    /// How many holders have it open (mounts, stacked devices, processes).
    pub open_count: i32,
    /// Whether a table is live.
    pub active_table: bool,
    /// Whether a deferred removal is pending (it goes at its last close).
    pub deferred_remove: bool,
}

/// An attached loop device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopInfo {
    pub device: PathBuf,
    pub devnum: DevNum,
    pub backing_file: PathBuf,
}

/// One entry of the mount table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub devnum: Option<DevNum>,
    pub target: PathBuf,
    pub fstype: String,
}

/// How a device is suspended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suspend {
    /// Queued I/O finishes first, and a filesystem mounted on it is
    /// frozen (and thawed at the resume): a freeze waits for the kernel's
    /// grace periods, tens of milliseconds in an emulated VM.
    Freeze,
    /// Queued I/O finishes first; a filesystem on it is left as it is
    /// (read-only, or otherwise quiet: the caller has seen to it).
    Flush,
    /// Queued I/O stays queued; nothing is frozen.
    NoFlush,
}

/// How a filesystem is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountRequest<'a> {
    pub source: &'a Path,
    pub target: &'a Path,
    pub fstype: &'a str,
    pub read_only: bool,
    /// Device nodes on it cannot be opened (`nodev`). A container's root
    /// needs them, as on any other snapshotter: containerd's mounts never
    /// set it.
    pub nodev: bool,
    /// Filesystem-specific options (`nouuid`, `noinit_itable`, ...).
    pub data: &'a str,
}

/// The kernel, as thinlayer uses it. All methods are safe to call from
/// several threads; ordering between them is the caller's business.
pub trait Kernel: Send + Sync {
    /// Fails with [`crate::Error::NoDeviceMapper`] when this kernel cannot run
    /// a thin pool, and [`crate::Error::NotRoot`] without privileges.
    fn check(&self) -> Result<()>;

    /// Creates a device, loads `table` and resumes it: the device is live on return.
    /// On failure nothing is left behind.
    fn dm_create(&self, name: &str, table: &[Target], read_only: bool) -> Result<DmInfo>;
    /// Loads `table` into the inactive slot; a resume makes it live.
    fn dm_load(&self, name: &str, table: &[Target]) -> Result<()>;
    /// Suspends a device, as `how` says.
    fn dm_suspend(&self, name: &str, how: Suspend) -> Result<()>;
    fn dm_resume(&self, name: &str) -> Result<()>;
    /// Removes a device. `deferred` lets the kernel remove a busy device when
    /// its last holder closes it, instead of failing with EBUSY.
    fn dm_remove(&self, name: &str, deferred: bool) -> Result<()>;
    /// Sends a target message (to a thin-pool: see the module docs).
    fn dm_message(&self, name: &str, message: &str) -> Result<Option<String>>;
    /// The live table's status lines.
    fn dm_status(&self, name: &str) -> Result<Vec<Target>>;
    /// The live table.
    fn dm_table(&self, name: &str) -> Result<Vec<Target>>;
    /// `None` when no device has this name.
    fn dm_info(&self, name: &str) -> Result<Option<DmInfo>>;
    /// Names of every device-mapper device.
    fn dm_list(&self) -> Result<Vec<String>>;

    /// Attaches a loop device to `file`, with direct I/O where the backing
    /// filesystem allows it, detached automatically when its last holder
    /// closes it (autoclear): a pool's loops vanish with the pool, and a
    /// process killed before the pool holds them leaks none.
    fn loop_attach(&self, file: &Path) -> Result<LoopAttachment>;
    /// Every attached loop device.
    fn loop_list(&self) -> Result<Vec<LoopInfo>>;
    /// Re-reads the size of the backing file (after it grew).
    fn loop_refresh_size(&self, device: &Path) -> Result<()>;
    fn loop_detach(&self, device: &Path) -> Result<()>;

    /// The device number and length of a block device given by path
    /// (a pool's own data and metadata devices); a path that is not a block
    /// device is [`crate::Error::Invalid`].
    fn block_device(&self, path: &Path) -> Result<(DevNum, Bytes)>;
    /// Zeroes the first 4 KiB of a block device and flushes it: the kernel
    /// formats a thin-pool metadata device whose first block is zero, and
    /// takes anything else there for existing metadata.
    fn zero_start(&self, device: &Path) -> Result<()>;
    /// Sets a path's access and modification times to the epoch.
    fn reset_times(&self, path: &Path) -> Result<()>;
    /// The free space and size of the filesystem holding `path` (statvfs).
    fn fs_space(&self, path: &Path) -> Result<FsSpace>;
    /// Waits until a device-mapper event (any device's: a thin pool
    /// crossing its low water mark or changing mode, a device removed) or
    /// for `timeout`, whichever comes first. An event that came since the
    /// last wait returns at once. For one waiter per process.
    fn dm_wait_event(&self, timeout: std::time::Duration) -> Result<()>;

    fn mount(&self, request: &MountRequest<'_>) -> Result<()>;
    /// Changes the filesystem mounted at `request.target` (its source is
    /// not used) to `request`'s flags and options (MS_REMOUNT): read-only
    /// writes back and cleans the filesystem (ext4's journal, xfs's log);
    /// read-write makes it writable again. EBUSY: a file on it is open for
    /// writing.
    fn remount(&self, request: &MountRequest<'_>) -> Result<()>;
    /// Unmounts `target`; `lazy` detaches it even while busy (MNT_DETACH).
    fn umount(&self, target: &Path, lazy: bool) -> Result<()>;
    /// This process's mount table.
    fn mounts(&self) -> Result<Vec<MountEntry>>;
    /// Whether a filesystem is mounted on `path`: one look at it and at its
    /// parent, whatever the size of the mount table (so a bind mount of a
    /// directory of its parent's own filesystem does not count). A path
    /// that does not exist is not.
    fn is_mount_point(&self, path: &Path) -> Result<bool>;

    /// Discards every block of the block device `device` (BLKDISCARD over
    /// its whole length). The device is opened exclusively, so one that is
    /// mounted is refused with EBUSY, never emptied under its filesystem.
    /// On a thin device the pool unmaps every block, and passes the discard
    /// down to its data device for the blocks no other thin device maps.
    fn discard(&self, device: &Path) -> Result<()>;
    /// Syncs the filesystem mounted at `target` and discards its free
    /// space (FITRIM, the ioctl behind `fstrim`). Returns what the filesystem
    /// reports: the bytes of free extents it asked the device to drop,
    /// whether or not the device still held them.
    fn trim(&self, target: &Path) -> Result<Bytes>;
    /// The new data the filesystem mounted at `target` holds in the page
    /// cache without blocks yet: ext4's delayed allocation
    /// (`/sys/fs/ext4/DEV/delayed_allocation_blocks`, a count of its
    /// blocks, exact when read), in bytes. Data written where a file has
    /// no block yet counts from the write until writeback allocates its
    /// blocks, just before it writes them; a write over blocks already
    /// allocated never counts. `None` when no filesystem is mounted at
    /// `target` (it does not exist, or it is on its parent's filesystem),
    /// or when the filesystem keeps no such count (xfs; one on no block
    /// device). Flushes nothing: an open, two `stat`s, a `statvfs`, a
    /// `readlink` and a read of a few bytes of sysfs.
    fn delayed_allocation(&self, target: &Path) -> Result<Option<Bytes>>;

    /// Makes a filesystem on `device`: `program` and `args` as mkfs takes them.
    fn mkfs(&self, device: &Path, program: &str, args: &[String]) -> Result<()>;
    /// Grows a filesystem to fill its device: runs `program` with `args`
    /// and then `target`, the device (unmounted) or the mount point (a
    /// tool that grows mounted filesystems), as [`crate::fs::FsKind::grow`]
    /// says.
    fn grow_fs(&self, target: &Path, program: &str, args: &[String]) -> Result<()>;
    /// Runs `thin_check` on a pool's metadata device (pool not live).
    fn thin_check(&self, metadata: &Path) -> Result<()>;
    /// Runs `thin_repair` from `metadata` into `into`.
    fn thin_repair(&self, metadata: &Path, into: &Path) -> Result<()>;
    /// `thin_dump` XML of the pool's held metadata snapshot (taken with
    /// `reserve_metadata_snap`).
    fn thin_dump_snapshot(&self, metadata: &Path) -> Result<String>;
    /// `thin_ls` of the held metadata snapshot: one line per thin device with
    /// `DEV MAPPED_BLOCKS EXCLUSIVE_BLOCKS SHARED_BLOCKS`.
    fn thin_ls_snapshot(&self, metadata: &Path) -> Result<String>;
}

/// A loop device just attached. While this value lives the device is held
/// open, so autoclear cannot detach it; drop it once a pool holds the device.
pub struct LoopAttachment {
    pub info: LoopInfo,
    pub(crate) _hold: Option<std::fs::File>,
}
