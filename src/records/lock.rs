//! The root's lock: one `flock` on `ROOT/lock` held for a whole operation.
//!
//! flock locks belong to an open file description, so two threads that each
//! open the file exclude each other as two processes do; the kernel drops the
//! lock when its holder dies, so a killed command never leaves the root locked.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

pub struct RootLock {
    _lock: Flock<std::fs::File>,
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
        Ok(RootLock { _lock: lock })
    }
}
