//! OCI whiteouts: what the layer deletes from the layers below it.

use std::os::fd::{AsFd, BorrowedFd};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use super::dir::{is_dir, lstat_at, read_names, remove_all_at};
use super::header::{cstr, rel_key};
use super::{Applier, forget_below, unsafe_entry};
use crate::error::Result;

impl Applier<'_> {
    /// `wh` is the whiteout's name without its `.wh.` prefix.
    pub(super) fn whiteout(&mut self, name: &str, parent: &[Vec<u8>], wh: &[u8]) -> Result<()> {
        if let Some(meta) = wh.strip_prefix(b".wh.") {
            if meta != b".opq" {
                // AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): not content.
                return Ok(());
            }
            if let Some(dfd) = self.open_dir(name, parent)? {
                let names = read_names(dfd.as_fd())
                    .map_err(|e| self.io_err("read directory", &rel_key(parent), e))?;
                for n in names {
                    self.remove_lower(dfd.as_fd(), parent, &n)?;
                }
            }
        } else {
            if wh.is_empty() || wh == b"." || wh == b".." {
                return Err(unsafe_entry(name, "whiteout names no file"));
            }
            if let Some(dfd) = self.open_dir(name, parent)? {
                self.remove_lower(dfd.as_fd(), parent, wh)?;
            }
        }
        self.stats.whiteouts += 1;
        Ok(())
    }

    /// Removes `child` of directory `dir` (open as `dfd`) as far as it comes
    /// from the lower layers: what this layer wrote stays.
    fn remove_lower(&mut self, dfd: BorrowedFd<'_>, dir: &[Vec<u8>], child: &[u8]) -> Result<()> {
        let mut comps = dir.to_vec();
        comps.push(child.to_vec());
        let key = rel_key(&comps);
        let cname = cstr(child);
        let Some(st) = lstat_at(dfd, &cname).map_err(|e| self.io_err("stat", &key, e))? else {
            return Ok(());
        };
        if !self.written.contains(&key) {
            self.note_modified(dir, dfd)?;
            remove_all_at(dfd, &cname).map_err(|e| self.io_err("remove", &key, e))?;
            forget_below(&mut self.orig_times, &key);
            forget_below(&mut self.tar_times, &key);
        } else if is_dir(&st) {
            let sub = openat(
                dfd,
                cname.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| self.io_err("open", &key, e))?;
            let names =
                read_names(sub.as_fd()).map_err(|e| self.io_err("read directory", &key, e))?;
            for n in names {
                self.remove_lower(sub.as_fd(), &comps, &n)?;
            }
        }
        Ok(())
    }
}
