//! The filesystem inside every layer: made once on the base device, then
//! shared by every snapshot of it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    #[default]
    Ext4,
    Xfs,
}

impl FsKind {
    /// The mkfs program and its options.
    ///
    /// A thin device reads as zeros wherever nothing was written, so the
    /// inode tables and journal need no zeroing. For ext4 the zeroing is
    /// skipped *and* the block groups are marked zeroed
    /// (`assume_storage_prezeroed`): otherwise every mount of every snapshot
    /// starts the kernel's lazy-init thread, which writes the tables out and
    /// costs each idle container thousands of pool blocks. No discard either:
    /// the device is already empty.
    pub fn mkfs(self) -> (&'static str, Vec<String>) {
        match self {
            FsKind::Ext4 => (
                "mkfs.ext4",
                [
                    "-q",
                    "-F",
                    "-E",
                    "nodiscard,lazy_itable_init=1,lazy_journal_init=1,assume_storage_prezeroed=1",
                ]
                .map(String::from)
                .to_vec(),
            ),
            FsKind::Xfs => ("mkfs.xfs", ["-q", "-f", "-K"].map(String::from).to_vec()),
        }
    }

    /// Mount options. Every snapshot of the base carries the base's
    /// filesystem UUID, which xfs refuses to mount twice without `nouuid`.
    /// Read-only views skip journal replay: their device is read-only.
    pub fn mount_options(self, read_only: bool) -> &'static str {
        match (self, read_only) {
            (FsKind::Ext4, false) => "noinit_itable",
            (FsKind::Ext4, true) => "noload",
            (FsKind::Xfs, false) => "nouuid",
            (FsKind::Xfs, true) => "nouuid,norecovery",
        }
    }

    /// How a layer's filesystem is grown to fill a device larger than
    /// its parent's: the program, its options (the path grown is added
    /// last), and whether it works on the mounted filesystem.
    ///
    /// ext4 is grown unmounted, on the device, by `resize2fs -f`: the
    /// kernel's online resize writes out the inode tables of every new
    /// block group (mounted `noinit_itable`, or its lazy-init thread does
    /// without it), about 1.6% of the added size in pool blocks, while
    /// `resize2fs` leaves them uninitialised as mkfs did, and a thin device
    /// reads zeros where nothing was written. `-f` because the filesystem
    /// was mounted since it was last checked (the base, when its root was
    /// emptied); it is a fresh snapshot of a cleanly unmounted (or frozen)
    /// layer, and resize2fs still refuses one whose journal needs recovery.
    /// xfs grows only mounted: `xfs_growfs -d` on the mount point.
    pub fn grow(self) -> (&'static str, Vec<String>, GrowOn) {
        match self {
            FsKind::Ext4 => ("resize2fs", vec!["-f".to_string()], GrowOn::Device),
            FsKind::Xfs => ("xfs_growfs", vec!["-d".to_string()], GrowOn::MountPoint),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
        }
    }
}

/// What a filesystem is grown through: see [`FsKind::grow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrowOn {
    /// The unmounted device.
    Device,
    /// The mounted filesystem's mount point.
    MountPoint,
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FsKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ext4" => Ok(FsKind::Ext4),
            "xfs" => Ok(FsKind::Xfs),
            _ => Err(Error::invalid("filesystem", s, "choose ext4 or xfs")),
        }
    }
}
