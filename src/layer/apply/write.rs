//! Writing one entry of each type at its place, with its metadata.

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, futimens, mkdirat, mknodat,
    utimensat,
};
use nix::unistd::{Gid, Uid, fchown, fchownat, linkat, symlinkat};

use super::dir::{is_dir, lstat_at};
use super::header::{Meta, cstr, normalize, rel_key};
use super::{Applier, unsafe_entry};
use crate::error::{Error, Result};
use crate::layer::read_up_to;
use crate::layer::sparse::data_runs;
use crate::layer::xattr::{Xattrs, xattr_is_local};

/// Bytes read from an archive at a time.
const COPY_BUFFER: usize = 128 * 1024;

/// Where an entry goes: its parent directory, open, and its name there.
pub(super) struct Place<'a> {
    /// The entry's name in the archive, for errors.
    pub name: &'a str,
    /// The parent directory's components below the root.
    pub parent: &'a [Vec<u8>],
    pub pfd: BorrowedFd<'a>,
    pub fname: &'a CStr,
    /// The entry's path below the root.
    pub key: &'a [u8],
}

impl Applier<'_> {
    pub(super) fn regular_file<R: Read>(
        &mut self,
        at: &Place<'_>,
        entry: &mut tar::Entry<'_, R>,
        meta: &Meta,
    ) -> Result<()> {
        self.clear(at, false)?;
        self.note_modified(at.parent, at.pfd)?;
        let fd = openat(
            at.pfd,
            at.fname,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| self.io_err("create", at.key, e))?;
        let mut file = File::from(fd);
        let (n, holes) = self.copy_content(at.name, at.key, entry, &mut file)?;
        self.stats.bytes += n;
        self.stats.holes += holes;
        self.set_fd_meta(at.name, at.key, file.as_fd(), meta)?;
        futimens(file.as_fd(), &meta.times.atime, &meta.times.mtime)
            .map_err(|e| self.io_err("set times of", at.key, e))
    }

    /// A directory over a directory keeps it and its content.
    pub(super) fn directory(&mut self, at: &Place<'_>, meta: &Meta) -> Result<()> {
        let kept = self.clear(at, true)?;
        if !kept {
            self.note_modified(at.parent, at.pfd)?;
            mkdirat(at.pfd, at.fname, Mode::from_bits_truncate(0o700))
                .map_err(|e| self.io_err("create directory", at.key, e))?;
        }
        let fd = openat(
            at.pfd,
            at.fname,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io_err("open", at.key, e))?;
        self.set_fd_meta(at.name, at.key, fd.as_fd(), meta)?;
        self.tar_times.insert(at.key.to_vec(), meta.times);
        Ok(())
    }

    pub(super) fn symlink(
        &mut self,
        at: &Place<'_>,
        link: Option<Vec<u8>>,
        meta: &Meta,
    ) -> Result<()> {
        let Some(target) = link.filter(|t| !t.is_empty()) else {
            return Err(unsafe_entry(at.name, "symlink without a target"));
        };
        if target.contains(&0) {
            return Err(unsafe_entry(at.name, "symlink target contains a NUL byte"));
        }
        self.clear(at, false)?;
        self.note_modified(at.parent, at.pfd)?;
        symlinkat(OsStr::from_bytes(&target), at.pfd, at.fname)
            .map_err(|e| self.io_err("create symlink", at.key, e))?;
        self.set_node_meta(at, meta, true)
    }

    /// A fifo or a device: `kind` and `dev` as `mknod` takes them.
    pub(super) fn node(
        &mut self,
        at: &Place<'_>,
        kind: SFlag,
        dev: u64,
        meta: &Meta,
    ) -> Result<()> {
        self.clear(at, false)?;
        self.note_modified(at.parent, at.pfd)?;
        mknodat(at.pfd, at.fname, kind, Mode::from_bits_truncate(0o600), dev)
            .map_err(|e| self.io_err("create node", at.key, e))?;
        self.set_node_meta(at, meta, false)
    }

    pub(super) fn hard_link(&mut self, at: &Place<'_>, link: Option<Vec<u8>>) -> Result<()> {
        let name = at.name;
        let Some(target) = link.filter(|t| !t.is_empty()) else {
            return Err(unsafe_entry(name, "hard link without a target"));
        };
        let shown = String::from_utf8_lossy(&target).into_owned();
        let tcomps = normalize(&target)
            .map_err(|why| unsafe_entry(name, format!("hard link target {shown:?}: {why}")))?;
        if tcomps.is_empty() {
            return Err(unsafe_entry(name, "hard link to the layer root"));
        }
        // Components are non-empty and hold no `/`: equal keys, equal paths.
        let tkey = rel_key(&tcomps);
        if tkey == at.key {
            return Err(unsafe_entry(name, "hard link to itself"));
        }
        let (tparent, tname) = tcomps.split_at(tcomps.len() - 1);
        let tname = cstr(&tname[0]);
        let missing = || unsafe_entry(name, format!("hard link target {shown:?} does not exist"));
        let Some(tfd) = self.open_dir(name, tparent)? else {
            return Err(missing());
        };
        match lstat_at(tfd.as_fd(), &tname).map_err(|e| self.io_err("stat", &tkey, e))? {
            None => return Err(missing()),
            Some(st) if is_dir(&st) => {
                return Err(unsafe_entry(
                    name,
                    format!("hard link target {shown:?} is a directory"),
                ));
            }
            Some(_) => {}
        }
        self.clear(at, false)?;
        self.note_modified(at.parent, at.pfd)?;
        match linkat(
            tfd.as_fd(),
            tname.as_c_str(),
            at.pfd,
            at.fname,
            AtFlags::empty(),
        ) {
            Ok(()) => Ok(()),
            Err(Errno::ENOENT) => Err(missing()),
            Err(e) => Err(self.io_err("create hard link", at.key, e)),
        }
    }

    /// Copies the entry's content into `file`, leaving every all-zero
    /// granule ([`crate::layer::sparse`]) of it a hole: a file written out
    /// as zeros (a sparse file in an image, as every image builder writes
    /// it) takes no pool blocks for them, as `cp --sparse=always` would.
    /// Returns the content's length and the bytes left as holes.
    fn copy_content<R: Read>(
        &self,
        name: &str,
        key: &[u8],
        entry: &mut tar::Entry<'_, R>,
        file: &mut File,
    ) -> Result<(u64, u64)> {
        let expected = entry.size();
        let sparse = entry.header().entry_type().is_gnu_sparse();
        let mut buf = vec![0u8; COPY_BUFFER];
        let (mut total, mut holes) = (0u64, 0u64);
        loop {
            // Whole buffers keep every granule aligned to the file's offsets.
            let n = read_up_to(entry, &mut buf).map_err(|e| Error::Archive {
                what: "layer".into(),
                detail: format!("reading the content of {name:?}: {e}"),
            })?;
            if n == 0 {
                break;
            }
            let mut written = 0;
            for (data, at) in data_runs(&buf[..n]) {
                file.write_all_at(data, total + at as u64)
                    .map_err(|e| self.io_err("write", key, e))?;
                written += data.len();
            }
            holes += (n - written) as u64;
            total += n as u64;
            if n < buf.len() {
                break;
            }
        }
        if self.eof.get() || (!sparse && total != expected) {
            return Err(Error::Archive {
                what: "layer".into(),
                detail: format!(
                    "truncated in the content of {name:?}: {total} of {expected} bytes"
                ),
            });
        }
        // Trailing holes: the file's length is the content's.
        file.set_len(total)
            .map_err(|e| self.io_err("set the length of", key, e))?;
        Ok((total, holes))
    }

    /// Owner, xattrs and mode, through a descriptor of the entry.
    pub(super) fn set_fd_meta(
        &self,
        name: &str,
        key: &[u8],
        fd: BorrowedFd<'_>,
        meta: &Meta,
    ) -> Result<()> {
        fchown(
            fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(|e| self.io_err("chown", key, e))?;
        self.set_xattrs(name, key, &Xattrs::Fd(fd), meta)?;
        fchmod(fd, Mode::from_bits_truncate(meta.mode)).map_err(|e| self.io_err("chmod", key, e))
    }

    /// Owner, xattrs, mode and times of a node just created at `at`: a
    /// symlink, fifo or device, which cannot be opened for writing.
    fn set_node_meta(&self, at: &Place<'_>, meta: &Meta, symlink: bool) -> Result<()> {
        let (pfd, fname, key) = (at.pfd, at.fname, at.key);
        fchownat(
            pfd,
            fname,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io_err("chown", key, e))?;
        // The xattr calls take no directory descriptor: name the node through
        // the descriptor of its parent; `l*xattr` does not follow the final
        // component.
        let mut p = format!("/proc/self/fd/{}/", pfd.as_raw_fd()).into_bytes();
        p.extend_from_slice(fname.to_bytes());
        self.set_xattrs(at.name, key, &Xattrs::Path(cstr(&p)), meta)?;
        if !symlink {
            // The node was created by the call before, as a fifo or device:
            // there is no symlink to follow.
            fchmodat(
                pfd,
                fname,
                Mode::from_bits_truncate(meta.mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| self.io_err("chmod", key, e))?;
        }
        utimensat(
            pfd,
            fname,
            &meta.times.atime,
            &meta.times.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.io_err("set times of", key, e))
    }

    /// Sets the entry's xattrs and removes any others (inherited default
    /// ACLs, or those of a directory kept from below).
    fn set_xattrs(&self, name: &str, key: &[u8], t: &Xattrs<'_>, meta: &Meta) -> Result<()> {
        let existing = t
            .list()
            .map_err(|e| self.io_err("list xattrs of", key, e))?;
        for x in existing {
            if !xattr_is_local(&x) && !meta.xattrs.iter().any(|(k, _)| *k == x) {
                t.remove(&cstr(&x))
                    .map_err(|e| self.io_err("remove xattr of", key, e))?;
            }
        }
        for (k, v) in &meta.xattrs {
            t.set(&cstr(k), v).map_err(|e| {
                if matches!(e.raw_os_error(), Some(libc::ENOTSUP | libc::EPERM)) {
                    unsafe_entry(
                        name,
                        format!(
                            "xattr {:?} cannot be set on this entry: {e}",
                            String::from_utf8_lossy(k)
                        ),
                    )
                } else {
                    self.io_err("set xattr of", key, e)
                }
            })?;
        }
        Ok(())
    }
}
