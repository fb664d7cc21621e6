//! Opening (and making) the parent directories of entries, resolved beneath
//! the layer root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, mkdirat};

use super::header::{cstr, rel_key};
use super::{Applier, unsafe_entry};
use crate::error::{Error, Result};

impl Applier<'_> {
    /// Opens the directory at `comps` below the root; `None` if it does not
    /// exist.
    pub(super) fn open_dir(&self, entry: &str, comps: &[Vec<u8>]) -> Result<Option<OwnedFd>> {
        let key = rel_key(comps);
        let path = if key.is_empty() {
            b".".to_vec()
        } else {
            key.clone()
        };
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let parent = |why: &str| {
            unsafe_entry(
                entry,
                format!("parent path {:?} {why}", String::from_utf8_lossy(&key)),
            )
        };
        let mut tries = 0;
        loop {
            match openat2(self.root_fd.as_fd(), OsStr::from_bytes(&path), how) {
                Ok(fd) => return Ok(Some(fd)),
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::EAGAIN) if tries < 16 => tries += 1,
                Err(Errno::EXDEV) => return Err(parent("leaves the layer through a symlink")),
                Err(Errno::ELOOP) => return Err(parent("has a symlink loop")),
                Err(Errno::ENOTDIR) => return Err(parent("is not a directory")),
                Err(Errno::ENOSYS) => {
                    return Err(Error::kernel(
                        "openat2",
                        self.root.display().to_string(),
                        Some(Errno::ENOSYS),
                        "applying layers needs openat2 (linux 5.6 or later)",
                    ));
                }
                Err(e) => return Err(self.io_err("open", &key, e)),
            }
        }
    }

    /// Opens the directory at `comps`, creating missing directories.
    pub(super) fn make_dirs(&mut self, entry: &str, comps: &[Vec<u8>]) -> Result<OwnedFd> {
        if let Some(fd) = self.open_dir(entry, comps)? {
            return Ok(fd);
        }
        let mut cur = match self.open_dir(entry, &[])? {
            Some(fd) => fd,
            None => return Err(self.io_err("open", b"", Errno::ENOENT)),
        };
        for i in 1..=comps.len() {
            match self.open_dir(entry, &comps[..i])? {
                Some(fd) => cur = fd,
                None => {
                    self.note_modified(&comps[..i - 1], cur.as_fd())?;
                    let name = cstr(&comps[i - 1]);
                    let key = rel_key(&comps[..i]);
                    match mkdirat(
                        cur.as_fd(),
                        name.as_c_str(),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) => {}
                        Err(Errno::EEXIST) => {
                            return Err(unsafe_entry(
                                entry,
                                format!(
                                    "parent path {:?} is a symlink to nowhere",
                                    String::from_utf8_lossy(&key)
                                ),
                            ));
                        }
                        Err(e) => return Err(self.io_err("create directory", &key, e)),
                    }
                    self.implicit.insert(key.clone());
                    cur = match self.open_dir(entry, &comps[..i])? {
                        Some(fd) => fd,
                        None => return Err(self.io_err("open", &key, Errno::ENOENT)),
                    };
                }
            }
        }
        Ok(cur)
    }
}
