//! The filesystem inside every layer: made once on the base device, then
//! shared by every snapshot of it.
//!
//! # Giving space back
//!
//! A filesystem that deletes a file frees its blocks in its own bitmaps;
//! the thin device still maps them, so the pool still holds them, until
//! the filesystem discards them. thinlayer mounts layers without online
//! discard (`-o discard`) and instead trims each writable layer (FITRIM,
//! as `fstrim` does) just before its last unmount, and discards a removed
//! layer's whole device before its thin id is deleted (the pool's `delete`
//! frees blocks in its metadata but discards nothing on its data device).
//! The pool passes discards down to its data device for blocks no other
//! thin device maps; on a loop device over a file that punches a hole, so
//! the host gets the space back.
//!
//! Batched rather than online, measured in the test VM (a container writes
//! 512 MiB and 3000 files of 12 KiB, deletes them, unmounts; figures in
//! the README): online discard frees a pool block only when one delete
//! frees the whole 64 KiB of it, so deletes of small files give back less
//! (after the same deletes, ext4 left 8.1 MiB in the pool against 6.4 MiB
//! trimmed, xfs 105 MiB against 67 MiB); ext4 issues its discards on the
//! commit path of every delete (the deletes took 8.1 s against 5.2 s);
//! and a trim costs once per unmount, whatever was deleted, and covers the
//! free space as it is then.
//!
//! # Reused blocks and old data
//!
//! The pool skips zeroing new blocks (`skip_block_zeroing`): a block it
//! hands out keeps what its data device holds, except where the first
//! write covers it. Where a block was discarded (every block a layer freed
//! or held alone, as above) the data device reads zeros there: a loop
//! file's hole. The filesystems never read what they have not written
//! anyway (a file's holes, unwritten extents and block tails read as zeros
//! without reading the device), which the device test
//! `space::no_layer_reads_the_data_of_a_removed_one` checks through the
//! filesystem and on the raw device. `assume_storage_prezeroed` (below)
//! promises zeroed inode tables: true of the base, made on a fresh thin
//! device, and of every block a snapshot leaves unmapped; true of the rest
//! of a reused block only while discards reach a data device that zeroes
//! them (loop files do; a given block device may not).

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
