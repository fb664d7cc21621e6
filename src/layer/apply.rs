//! Applying an OCI layer tar onto the content of the layers below it.
//!
//! Every path is resolved relative to a directory descriptor of the layer
//! root: parent directories with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)`, which refuses any resolution that would leave
//! the root (`..`, absolute symlinks, relative symlinks that climb out), and
//! the final component with the `*at` calls and `O_NOFOLLOW` /
//! `AT_SYMLINK_NOFOLLOW`, so that a symlink planted by an earlier entry is
//! replaced, never written through.
//!
//! Here: the pass over the archive and the dispatch of each entry. Apart:
//! what an entry says, checked and normalised (`header`); parent
//! directories opened beneath the root (`beneath`); directory entries read
//! and removed through a directory descriptor (`dir`); each entry type
//! written at its place with its metadata (`write`); whiteouts
//! (`whiteout`).

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, UtimensatFlags, fstat, futimens, utimensat};
use tar::EntryType;

use self::dir::{is_dir, lstat_at, remove_all_at};
use self::header::{Meta, Rel, Times, cstr, node_kind, normalize, rel_key};
use self::write::Place;
use crate::error::{Error, Result};

mod beneath;
mod dir;
mod header;
#[cfg(test)]
mod tests;
mod whiteout;
mod write;

/// What [`apply_layer`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApplyStats {
    /// Entries written: files, directories, symlinks, hard links, fifos and
    /// devices (whiteouts are counted apart).
    pub entries: u64,
    /// Bytes of regular file content written, holes included.
    pub bytes: u64,
    /// Bytes of regular file content that were zeros and were left as holes
    /// (whole filesystem blocks of them), taking no space.
    pub holes: u64,
    /// Whiteout and opaque-directory markers honoured (including those whose
    /// target did not exist).
    pub whiteouts: u64,
}

/// Applies an uncompressed OCI image layer (a tar stream) onto `root`, a
/// directory holding the parent layers' content (the mounted thin snapshot).
///
/// Entries: regular files, directories, symlinks, hard links, fifos, and
/// character and block devices, with numeric ownership, permission bits
/// (including setuid, setgid and sticky), access and modification times
/// (PAX `atime`/`mtime` with nanoseconds when present; atime defaults to the
/// mtime) and extended attributes from PAX `SCHILY.xattr.NAME` records.
/// Long names (GNU or PAX) are accepted; PAX global headers are ignored.
/// An entry replaces what is at its path: a directory over a directory
/// keeps the directory and its content and updates its metadata (dropping
/// xattrs the entry does not list); anything else is removed first,
/// recursively for a directory. Missing parent directories are created
/// (mode 0755, root-owned). A `./` entry sets the metadata of `root` itself.
///
/// OCI whiteouts apply to the content of the lower layers only and are never
/// written to disk: `DIR/.wh.NAME` removes `DIR/NAME` (recursively);
/// `DIR/.wh..wh..opq` removes everything in `DIR` that this layer did not
/// write, whether the marker comes before or after this layer's entries in
/// `DIR`. A whiteout whose target does not exist is not an error. Other
/// `.wh..wh.` names (AUFS metadata) are ignored.
///
/// Times: directory times are set in a final pass, after all content is
/// written. Existing directories that the layer modifies without naming them
/// (the parents of its entries, the directories of its whiteouts) keep their
/// previous access and modification times, so that applying a diff made by
/// [`super::write_diff`] reproduces its upper tree exactly.
///
/// Safety: nothing outside `root` is ever written. Refused, with
/// [`Error::UnsafeEntry`] naming the entry as it is in the archive: absolute
/// names, names with a `..` component, hard links whose target is absolute,
/// has a `..` component, is a directory or does not exist below `root`, and
/// entries whose parent path leaves `root` through a symlink (absolute
/// symlinks count as leaving). Symlinks that stay below `root` may be
/// parents. A refused entry fails the whole apply, leaving what was already
/// written in place: the caller discards the layer.
///
/// A truncated or malformed stream (including one that ends without the
/// end-of-archive marker) gives [`Error::Archive`].
///
/// Needs openat2 (Linux 5.6) and, for the xattrs of symlinks, fifos and
/// devices, a mounted `/proc` (they are set through `/proc/self/fd`).
pub fn apply_layer(root: &Path, tar: impl Read) -> Result<ApplyStats> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open layer root", root, e.into()))?;
    let eof = Rc::new(Cell::new(false));
    let mut archive = tar::Archive::new(EofTracker {
        inner: tar,
        eof: Rc::clone(&eof),
    });
    let mut ap = Applier {
        root,
        root_fd,
        eof,
        written: HashSet::new(),
        implicit: HashSet::new(),
        orig_times: BTreeMap::new(),
        tar_times: BTreeMap::new(),
        stats: ApplyStats::default(),
    };
    let entries = archive.entries().map_err(|e| archive_error("", e))?;
    let mut last = String::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| archive_error(&last, e))?;
        last = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        ap.entry(&mut entry)?;
    }
    if ap.eof.get() {
        return Err(Error::Archive {
            what: "layer".into(),
            detail: if last.is_empty() {
                "empty or truncated: no end-of-archive marker".into()
            } else {
                format!(
                    "truncated after entry {last:?}: the stream ends without the end-of-archive marker"
                )
            },
        });
    }
    ap.set_dir_times()?;
    Ok(ap.stats)
}

fn archive_error(after: &str, e: io::Error) -> Error {
    // The tar reader quotes header fields, which may be binary garbage.
    let mut detail: String = e
        .to_string()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(200)
        .collect();
    if !after.is_empty() {
        detail.push_str(&format!(" (after entry {after:?})"));
    }
    Error::Archive {
        what: "layer".into(),
        detail,
    }
}

fn unsafe_entry(entry: &str, why: impl Into<String>) -> Error {
    Error::UnsafeEntry {
        entry: entry.to_string(),
        why: why.into(),
    }
}

/// Records whether the archive stream ended (a read returned 0): a complete
/// archive ends with its end-of-archive marker before that.
struct EofTracker<R> {
    inner: R,
    eof: Rc<Cell<bool>>,
}

impl<R: Read> Read for EofTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof.set(true);
        }
        Ok(n)
    }
}

/// Removes the map's entries for `key` and everything below it.
fn forget_below<V>(map: &mut BTreeMap<Vec<u8>, V>, key: &[u8]) {
    map.remove(key);
    let mut lo = key.to_vec();
    lo.push(b'/');
    let mut hi = key.to_vec();
    hi.push(b'/' + 1);
    let doomed: Vec<Vec<u8>> = map.range(lo..hi).map(|(k, _)| k.clone()).collect();
    for k in doomed {
        map.remove(&k);
    }
}

struct Applier<'a> {
    root: &'a Path,
    root_fd: OwnedFd,
    eof: Rc<Cell<bool>>,
    /// Paths this layer wrote, and all their ancestors.
    written: HashSet<Vec<u8>>,
    /// Directories this apply created only as missing parents.
    implicit: HashSet<Vec<u8>>,
    /// Times of existing directories before this apply modified them.
    orig_times: BTreeMap<Vec<u8>, Times>,
    /// Times of the directory entries of the layer.
    tar_times: BTreeMap<Vec<u8>, Times>,
    stats: ApplyStats,
}

impl Applier<'_> {
    fn host_path(&self, key: &[u8]) -> PathBuf {
        self.root.join(OsStr::from_bytes(key))
    }

    fn io_err(&self, op: &'static str, key: &[u8], e: impl Into<io::Error>) -> Error {
        Error::io(op, self.host_path(key), e.into())
    }

    /// Writes one entry: a whiteout, the root's metadata, or an entry of one
    /// of the types below at its place.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let etype = entry.header().entry_type();
        if etype.is_pax_global_extensions() {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let comps = normalize(&raw).map_err(|why| unsafe_entry(&name, why))?;
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        if let Some((last, dirs)) = comps.split_last() {
            if dirs.iter().any(|c| c.starts_with(b".wh.")) {
                return Err(unsafe_entry(
                    &name,
                    "a whiteout name is used as a directory",
                ));
            }
            if let Some(wh) = last.strip_prefix(b".wh.") {
                return self.whiteout(&name, dirs, wh);
            }
        }

        let meta = Meta::of(&name, entry)?;
        let Some((last, parent)) = comps.split_last() else {
            return self.root_entry(&name, etype, &meta);
        };
        let fname = cstr(last);
        let key = rel_key(&comps);
        let pfd = self.make_dirs(&name, parent)?;
        let at = Place {
            name: &name,
            parent,
            pfd: pfd.as_fd(),
            fname: &fname,
            key: &key,
        };
        match etype {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.regular_file(&at, entry, &meta)?;
            }
            EntryType::Directory => self.directory(&at, &meta)?,
            EntryType::Symlink => self.symlink(&at, link, &meta)?,
            EntryType::Fifo | EntryType::Char | EntryType::Block => {
                let (kind, dev) = node_kind(&name, entry.header(), etype)?;
                self.node(&at, kind, dev, &meta)?;
            }
            EntryType::Link => self.hard_link(&at, link)?,
            other => {
                return Err(unsafe_entry(
                    &name,
                    format!("unsupported entry type {other:?}"),
                ));
            }
        }
        self.mark_written(&comps);
        self.stats.entries += 1;
        Ok(())
    }

    /// The `./` entry: the metadata of the root itself.
    fn root_entry(&mut self, name: &str, etype: EntryType, meta: &Meta) -> Result<()> {
        if !etype.is_dir() {
            return Err(unsafe_entry(name, "the layer root can only be a directory"));
        }
        let fd = self
            .root_fd
            .try_clone()
            .map_err(|e| self.io_err("dup", b"", e))?;
        self.set_fd_meta(name, b"", fd.as_fd(), meta)?;
        self.tar_times.insert(Vec::new(), meta.times);
        self.stats.entries += 1;
        Ok(())
    }

    /// Records the times of directory `comps` (open as `fd`) before this
    /// apply first changes its content, unless this apply created it.
    fn note_modified(&mut self, comps: &[Vec<u8>], fd: BorrowedFd<'_>) -> Result<()> {
        let key = rel_key(comps);
        if self.orig_times.contains_key(&key) || self.implicit.contains(&key) {
            return Ok(());
        }
        let st = fstat(fd).map_err(|e| self.io_err("stat", &key, e))?;
        self.orig_times.insert(key, Times::of(&st));
        Ok(())
    }

    fn mark_written(&mut self, comps: &[Vec<u8>]) {
        for i in (1..=comps.len()).rev() {
            if !self.written.insert(rel_key(&comps[..i])) {
                break;
            }
        }
    }

    /// Makes room for an entry at `at`. With `keep_dir`, an existing
    /// directory stays (returns true); anything else is removed.
    fn clear(&mut self, at: &Place<'_>, keep_dir: bool) -> Result<bool> {
        let st = lstat_at(at.pfd, at.fname).map_err(|e| self.io_err("stat", at.key, e))?;
        match st {
            None => Ok(false),
            Some(st) if keep_dir && is_dir(&st) => Ok(true),
            Some(_) => {
                self.note_modified(at.parent, at.pfd)?;
                remove_all_at(at.pfd, at.fname).map_err(|e| self.io_err("remove", at.key, e))?;
                forget_below(&mut self.orig_times, at.key);
                forget_below(&mut self.tar_times, at.key);
                Ok(false)
            }
        }
    }

    /// Sets the times of the layer's directories, and restores those of the
    /// existing directories it modified without naming them.
    fn set_dir_times(&mut self) -> Result<()> {
        let mut all = std::mem::take(&mut self.orig_times);
        all.extend(std::mem::take(&mut self.tar_times));
        for (key, t) in all.iter().rev() {
            if key.is_empty() {
                futimens(self.root_fd.as_fd(), &t.atime, &t.mtime)
                    .map_err(|e| self.io_err("set times of", key, e))?;
                continue;
            }
            let comps: Rel = key.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
            let (parent, fname) = comps.split_at(comps.len() - 1);
            let fname = cstr(&fname[0]);
            let shown = String::from_utf8_lossy(key).into_owned();
            let Some(pfd) = self.open_dir(&shown, parent)? else {
                continue;
            };
            match lstat_at(pfd.as_fd(), &fname) {
                Ok(Some(st)) if is_dir(&st) => {}
                Ok(_) => continue,
                Err(e) => return Err(self.io_err("stat", key, e)),
            }
            utimensat(
                pfd.as_fd(),
                fname.as_c_str(),
                &t.atime,
                &t.mtime,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| self.io_err("set times of", key, e))?;
        }
        Ok(())
    }
}
