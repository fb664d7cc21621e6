//! The root's lock: one `flock` on `ROOT/lock` held for a whole operation.
//!
//! flock locks belong to an open file description, so two threads that each
//! open the file exclude each other as two processes do; the kernel drops the
//! lock when its holder dies, so a killed command never leaves the root locked.
//!
//! The file's first byte says whether the last operation finished: `1` is
//! written when one starts and `0` when it ends well. A `1` found by the next
//! holder means its predecessor died or failed half-way, and the reconciler
//! then looks harder (devices left suspended, for one). The byte is never
//! fsynced: after a power cut the pool is re-activated and checked in full
//! anyway.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

pub struct RootLock {
    lock: Flock<std::fs::File>,
}

impl RootLock {
    pub fn acquire(root: &Path) -> Result<Self> {
        let path = root.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("open lock file", &path, e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| Error::io("lock", &path, std::io::Error::from(errno)))?;
        Ok(RootLock { lock })
    }

    /// Whether the previous holder started an operation and did not finish
    /// it well.
    pub fn interrupted(&self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.lock.read_at(&mut b, 0), Ok(1) if b[0] == b'1')
    }

    /// Marks an operation as started (`true`) or finished well (`false`).
    /// A failure to write only costs the next holder a longer check.
    pub fn set_busy(&self, busy: bool) {
        let b = if busy { b"1" } else { b"0" };
        if let Err(e) = self.lock.write_at(b, 0) {
            tracing::debug!(error = %e, "could not mark the lock file");
        }
    }
}
