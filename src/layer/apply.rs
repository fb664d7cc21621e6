//! Applying an OCI layer tar onto the content of the layers below it.
//!
//! Every path is resolved relative to a directory descriptor of the layer
//! root: parent directories with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)`, which refuses any resolution that would leave
//! the root (`..`, absolute symlinks, relative symlinks that climb out), and
//! the final component with the `*at` calls and `O_NOFOLLOW` /
//! `AT_SYMLINK_NOFOLLOW`, so that a symlink planted by an earlier entry is
//! replaced, never written through.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstat, fstatat,
    futimens, makedev, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};

use super::xattr::{Xattrs, xattr_is_local};
use crate::error::{Error, Result};

/// What [`apply_layer`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApplyStats {
    /// Entries written: files, directories, symlinks, hard links, fifos and
    /// devices (whiteouts are counted apart).
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
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

/// A path below the root: its components, never empty, `.` or `..`.
type Rel = Vec<Vec<u8>>;

fn rel_key(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

/// Splits an archive name into components; refuses absolute names and `..`.
fn normalize(raw: &[u8]) -> std::result::Result<Rel, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path has a \"..\" component"),
            _ => {
                if c.contains(&0) {
                    return Err("path contains a NUL byte");
                }
                out.push(c.to_vec());
            }
        }
    }
    Ok(out)
}

fn cstr(bytes: &[u8]) -> CString {
    // Components and link targets are checked for NUL bytes before use; tar
    // header fields cannot hold them.
    CString::new(bytes).unwrap_or_default()
}

#[derive(Clone, Copy, Debug)]
struct Times {
    atime: TimeSpec,
    mtime: TimeSpec,
}

impl Times {
    fn of(st: &FileStat) -> Times {
        Times {
            atime: TimeSpec::new(st.st_atime, st.st_atime_nsec),
            mtime: TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
        }
    }
}

/// Metadata of an entry, from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    times: Times,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Parses a PAX time: `[-]SECONDS[.FRACTION]`.
fn parse_pax_time(v: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let mut nsec: i64 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nsec += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
    }
    if !neg {
        Some(TimeSpec::new(secs, nsec))
    } else if nsec == 0 {
        Some(TimeSpec::new(-secs, 0))
    } else {
        Some(TimeSpec::new(-secs - 1, 1_000_000_000 - nsec))
    }
}

/// The names in a directory, without `.` and `..`.
fn read_names(dir: BorrowedFd<'_>) -> nix::Result<Vec<Vec<u8>>> {
    let fd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` is an open directory descriptor that we own; on success
    // the stream owns it and `closedir` below closes it.
    let dir = unsafe { libc::fdopendir(raw) };
    if dir.is_null() {
        let e = Errno::last();
        // SAFETY: fdopendir failed, so the descriptor is still ours to close.
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
        return Err(e);
    }
    let mut names = Vec::new();
    let result = loop {
        Errno::clear();
        // SAFETY: `dir` is a valid stream until the closedir below.
        let ent = unsafe { libc::readdir64(dir) };
        if ent.is_null() {
            let e = Errno::last_raw();
            break if e == 0 {
                Ok(())
            } else {
                Err(Errno::from_raw(e))
            };
        }
        // SAFETY: a non-null entry from readdir64 is valid until the next
        // call on the stream, and its d_name is NUL-terminated.
        let n = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    };
    // SAFETY: `dir` came from fdopendir and is closed exactly once.
    unsafe { libc::closedir(dir) };
    result?;
    Ok(names)
}

fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes `name` in `dir`, recursively if it is a directory; never follows
/// symlinks. A missing `name` is not an error.
fn remove_all_at(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if is_dir(&st) {
        let sub = openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        for n in read_names(sub.as_fd())? {
            remove_all_at(sub.as_fd(), &cstr(&n))?;
        }
        unlinkat(dir, name, UnlinkatFlags::RemoveDir)
    } else {
        match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
            Err(Errno::ENOENT) => Ok(()),
            r => r,
        }
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

    /// Opens the directory at `comps` below the root; `None` if it does not
    /// exist.
    fn open_dir(&self, entry: &str, comps: &[Vec<u8>]) -> Result<Option<OwnedFd>> {
        let key = rel_key(comps);
        let path = if key.is_empty() {
            b".".to_vec()
        } else {
            key.clone()
        };
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let mut tries = 0;
        loop {
            match openat2(self.root_fd.as_fd(), OsStr::from_bytes(&path), how) {
                Ok(fd) => return Ok(Some(fd)),
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::EAGAIN) if tries < 16 => tries += 1,
                Err(Errno::EXDEV) => {
                    return Err(unsafe_entry(
                        entry,
                        format!(
                            "parent path {:?} leaves the layer through a symlink",
                            String::from_utf8_lossy(&key)
                        ),
                    ));
                }
                Err(Errno::ELOOP) => {
                    return Err(unsafe_entry(
                        entry,
                        format!(
                            "parent path {:?} has a symlink loop",
                            String::from_utf8_lossy(&key)
                        ),
                    ));
                }
                Err(Errno::ENOTDIR) => {
                    return Err(unsafe_entry(
                        entry,
                        format!(
                            "parent path {:?} is not a directory",
                            String::from_utf8_lossy(&key)
                        ),
                    ));
                }
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
    fn make_dirs(&mut self, entry: &str, comps: &[Vec<u8>]) -> Result<OwnedFd> {
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

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let etype = entry.header().entry_type();
        if etype.is_pax_global_extensions() {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let comps = normalize(&raw).map_err(|why| unsafe_entry(&name, why))?;
        let link = entry.link_name_bytes().map(|l| l.into_owned());

        if comps.len() > 1
            && comps[..comps.len() - 1]
                .iter()
                .any(|c| c.starts_with(b".wh."))
        {
            return Err(unsafe_entry(
                &name,
                "a whiteout name is used as a directory",
            ));
        }
        if let Some(last) = comps.last()
            && last.starts_with(b".wh.")
        {
            let parent = &comps[..comps.len() - 1];
            return self.whiteout(&name, parent, &last[4..]);
        }

        let meta = self.meta(&name, entry)?;
        if comps.is_empty() {
            if !etype.is_dir() {
                return Err(unsafe_entry(
                    &name,
                    "the layer root can only be a directory",
                ));
            }
            let fd = self
                .root_fd
                .try_clone()
                .map_err(|e| self.io_err("dup", b"", e))?;
            self.set_fd_meta(&name, b"", fd.as_fd(), &meta)?;
            self.tar_times.insert(Vec::new(), meta.times);
            self.stats.entries += 1;
            return Ok(());
        }

        let (parent, fname) = comps.split_at(comps.len() - 1);
        let fname = cstr(&fname[0]);
        let key = rel_key(&comps);
        let pfd = self.make_dirs(&name, parent)?;
        let pfd = pfd.as_fd();

        match etype {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.clear(pfd, parent, &fname, &key, false)?;
                self.note_modified(parent, pfd)?;
                let fd = openat(
                    pfd,
                    fname.as_c_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| self.io_err("create", &key, e))?;
                let mut file = File::from(fd);
                let n = self.copy_content(&name, &key, entry, &mut file)?;
                self.stats.bytes += n;
                self.set_fd_meta(&name, &key, file.as_fd(), &meta)?;
                futimens(file.as_fd(), &meta.times.atime, &meta.times.mtime)
                    .map_err(|e| self.io_err("set times of", &key, e))?;
            }
            tar::EntryType::Directory => {
                let kept = self.clear(pfd, parent, &fname, &key, true)?;
                if !kept {
                    self.note_modified(parent, pfd)?;
                    mkdirat(pfd, fname.as_c_str(), Mode::from_bits_truncate(0o700))
                        .map_err(|e| self.io_err("create directory", &key, e))?;
                }
                let fd = openat(
                    pfd,
                    fname.as_c_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.io_err("open", &key, e))?;
                self.set_fd_meta(&name, &key, fd.as_fd(), &meta)?;
                self.tar_times.insert(key.clone(), meta.times);
            }
            tar::EntryType::Symlink => {
                let Some(target) = link.filter(|t| !t.is_empty()) else {
                    return Err(unsafe_entry(&name, "symlink without a target"));
                };
                if target.contains(&0) {
                    return Err(unsafe_entry(&name, "symlink target contains a NUL byte"));
                }
                self.clear(pfd, parent, &fname, &key, false)?;
                self.note_modified(parent, pfd)?;
                symlinkat(OsStr::from_bytes(&target), pfd, fname.as_c_str())
                    .map_err(|e| self.io_err("create symlink", &key, e))?;
                self.set_node_meta(&name, &key, pfd, &fname, &meta, true)?;
            }
            tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => {
                let (kind, dev) = match etype {
                    tar::EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    t => {
                        let h = entry.header();
                        let major = h
                            .device_major()
                            .map_err(|e| unsafe_entry(&name, format!("device major: {e}")))?
                            .unwrap_or(0);
                        let minor = h
                            .device_minor()
                            .map_err(|e| unsafe_entry(&name, format!("device minor: {e}")))?
                            .unwrap_or(0);
                        let kind = if t == tar::EntryType::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (kind, makedev(u64::from(major), u64::from(minor)))
                    }
                };
                self.clear(pfd, parent, &fname, &key, false)?;
                self.note_modified(parent, pfd)?;
                mknodat(
                    pfd,
                    fname.as_c_str(),
                    kind,
                    Mode::from_bits_truncate(0o600),
                    dev,
                )
                .map_err(|e| self.io_err("create node", &key, e))?;
                self.set_node_meta(&name, &key, pfd, &fname, &meta, false)?;
            }
            tar::EntryType::Link => {
                self.hard_link(&name, &comps, pfd, &fname, link)?;
            }
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

    fn meta<R: Read>(&self, name: &str, entry: &mut tar::Entry<'_, R>) -> Result<Meta> {
        let h = entry.header();
        let bad = |what: &str, e: io::Error| Error::Archive {
            what: "layer".into(),
            detail: format!("entry {name:?}: invalid {what}: {e}"),
        };
        let mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
        let uid = h.uid().map_err(|e| bad("uid", e))?;
        let gid = h.gid().map_err(|e| bad("gid", e))?;
        let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
            return Err(unsafe_entry(
                name,
                format!("owner {uid}:{gid} out of range"),
            ));
        };
        let secs = h.mtime().map_err(|e| bad("mtime", e))?;
        let mut mtime = TimeSpec::new(i64::try_from(secs).unwrap_or(i64::MAX), 0);
        let mut atime = None;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| bad("pax extensions", e))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| bad("pax record", e))?;
                let key = ext.key_bytes();
                let value = ext.value_bytes();
                let time = |what: &str| {
                    parse_pax_time(value).ok_or_else(|| Error::Archive {
                        what: "layer".into(),
                        detail: format!(
                            "entry {name:?}: invalid pax {what} {:?}",
                            String::from_utf8_lossy(value)
                        ),
                    })
                };
                if key == b"mtime" {
                    mtime = time("mtime")?;
                } else if key == b"atime" {
                    atime = Some(time("atime")?);
                } else if let Some(x) = key.strip_prefix(b"SCHILY.xattr.") {
                    if x.is_empty() || x.contains(&0) {
                        return Err(unsafe_entry(name, "invalid xattr name"));
                    }
                    if !xattr_is_local(x) {
                        xattrs.retain(|(k, _): &(Vec<u8>, Vec<u8>)| k != x);
                        xattrs.push((x.to_vec(), value.to_vec()));
                    }
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            times: Times {
                atime: atime.unwrap_or(mtime),
                mtime,
            },
            xattrs,
        })
    }

    fn copy_content<R: Read>(
        &self,
        name: &str,
        key: &[u8],
        entry: &mut tar::Entry<'_, R>,
        file: &mut File,
    ) -> Result<u64> {
        let expected = entry.size();
        let sparse = entry.header().entry_type().is_gnu_sparse();
        let mut buf = vec![0u8; 128 * 1024];
        let mut total = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::Archive {
                        what: "layer".into(),
                        detail: format!("reading the content of {name:?}: {e}"),
                    });
                }
            };
            file.write_all(&buf[..n])
                .map_err(|e| self.io_err("write", key, e))?;
            total += n as u64;
        }
        if self.eof.get() || (!sparse && total != expected) {
            return Err(Error::Archive {
                what: "layer".into(),
                detail: format!(
                    "truncated in the content of {name:?}: {total} of {expected} bytes"
                ),
            });
        }
        Ok(total)
    }

    /// Owner, xattrs and mode, through a descriptor of the entry.
    fn set_fd_meta(&self, name: &str, key: &[u8], fd: BorrowedFd<'_>, meta: &Meta) -> Result<()> {
        fchown(
            fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(|e| self.io_err("chown", key, e))?;
        self.set_xattrs(name, key, &Xattrs::Fd(fd), meta)?;
        fchmod(fd, Mode::from_bits_truncate(meta.mode)).map_err(|e| self.io_err("chmod", key, e))
    }

    /// Owner, xattrs, mode and times of a node just created in `pfd`: a
    /// symlink, fifo or device, which cannot be opened for writing.
    fn set_node_meta(
        &self,
        name: &str,
        key: &[u8],
        pfd: BorrowedFd<'_>,
        fname: &CStr,
        meta: &Meta,
        symlink: bool,
    ) -> Result<()> {
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
        self.set_xattrs(name, key, &Xattrs::Path(cstr(&p)), meta)?;
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

    /// Makes room for an entry at `fname` in `pfd`. With `keep_dir`, an
    /// existing directory stays (returns true); anything else is removed.
    fn clear(
        &mut self,
        pfd: BorrowedFd<'_>,
        parent: &[Vec<u8>],
        fname: &CStr,
        key: &[u8],
        keep_dir: bool,
    ) -> Result<bool> {
        let st = lstat_at(pfd, fname).map_err(|e| self.io_err("stat", key, e))?;
        match st {
            None => Ok(false),
            Some(st) if keep_dir && is_dir(&st) => Ok(true),
            Some(_) => {
                self.note_modified(parent, pfd)?;
                remove_all_at(pfd, fname).map_err(|e| self.io_err("remove", key, e))?;
                forget_below(&mut self.orig_times, key);
                forget_below(&mut self.tar_times, key);
                Ok(false)
            }
        }
    }

    fn hard_link(
        &mut self,
        name: &str,
        comps: &[Vec<u8>],
        pfd: BorrowedFd<'_>,
        fname: &CStr,
        link: Option<Vec<u8>>,
    ) -> Result<()> {
        let Some(target) = link.filter(|t| !t.is_empty()) else {
            return Err(unsafe_entry(name, "hard link without a target"));
        };
        let shown = String::from_utf8_lossy(&target).into_owned();
        let tcomps = normalize(&target)
            .map_err(|why| unsafe_entry(name, format!("hard link target {shown:?}: {why}")))?;
        if tcomps.is_empty() {
            return Err(unsafe_entry(name, "hard link to the layer root"));
        }
        if tcomps == comps {
            return Err(unsafe_entry(name, "hard link to itself"));
        }
        let (tparent, tname) = tcomps.split_at(tcomps.len() - 1);
        let tname = cstr(&tname[0]);
        let missing = || unsafe_entry(name, format!("hard link target {shown:?} does not exist"));
        let Some(tfd) = self.open_dir(name, tparent)? else {
            return Err(missing());
        };
        let tkey = rel_key(&tcomps);
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
        let key = rel_key(comps);
        self.clear(pfd, &comps[..comps.len() - 1], fname, &key, false)?;
        self.note_modified(&comps[..comps.len() - 1], pfd)?;
        match linkat(tfd.as_fd(), tname.as_c_str(), pfd, fname, AtFlags::empty()) {
            Ok(()) => Ok(()),
            Err(Errno::ENOENT) => Err(missing()),
            Err(e) => Err(self.io_err("create hard link", &key, e)),
        }
    }

    /// `wh` is the whiteout's name without its `.wh.` prefix.
    fn whiteout(&mut self, name: &str, parent: &[Vec<u8>], wh: &[u8]) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::Path;

    use tar::EntryType;

    use super::*;
    use crate::layer::xattr::read_xattrs;
    use crate::testutil::TempDir;

    /// Builds layer tars entry by entry, with names and targets verbatim.
    pub struct Layer(tar::Builder<Vec<u8>>);

    pub struct E<'a> {
        pub name: &'a [u8],
        pub kind: EntryType,
        pub mode: u32,
        pub uid: u64,
        pub gid: u64,
        pub mtime: u64,
        pub link: Option<&'a [u8]>,
        pub data: &'a [u8],
        pub pax: Vec<(&'a str, &'a [u8])>,
        pub dev: (u32, u32),
    }

    pub fn e(name: &str, kind: EntryType) -> E<'_> {
        E {
            name: name.as_bytes(),
            kind,
            mode: if kind == EntryType::Directory {
                0o755
            } else {
                0o644
            },
            uid: 0,
            gid: 0,
            mtime: 1_000_000,
            link: None,
            data: b"",
            pax: Vec::new(),
            dev: (0, 0),
        }
    }

    impl Layer {
        pub fn new() -> Layer {
            Layer(tar::Builder::new(Vec::new()))
        }

        pub fn add(&mut self, e: E<'_>) -> &mut Self {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(e.kind);
            h.set_mode(e.mode);
            h.set_uid(e.uid);
            h.set_gid(e.gid);
            h.set_mtime(e.mtime);
            h.set_size(e.data.len() as u64);
            let mut pax = e.pax;
            let n = e.name.len().min(100);
            h.as_old_mut().name[..n].copy_from_slice(&e.name[..n]);
            if e.name.len() > 100 {
                pax.push(("path", e.name));
            }
            if let Some(l) = e.link {
                let n = l.len().min(100);
                h.as_old_mut().linkname[..n].copy_from_slice(&l[..n]);
                if l.len() > 100 {
                    pax.push(("linkpath", l));
                }
            }
            if matches!(e.kind, EntryType::Char | EntryType::Block) {
                h.set_device_major(e.dev.0).expect("major");
                h.set_device_minor(e.dev.1).expect("minor");
            }
            if !pax.is_empty() {
                self.0.append_pax_extensions(pax).expect("pax");
            }
            h.set_cksum();
            self.0.append(&h, e.data).expect("append");
            self
        }

        pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
            self.add(E {
                data,
                ..e(name, EntryType::Regular)
            })
        }

        pub fn dir(&mut self, name: &str) -> &mut Self {
            self.add(e(name, EntryType::Directory))
        }

        pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.add(E {
                link: Some(target.as_bytes()),
                ..e(name, EntryType::Symlink)
            })
        }

        pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.add(E {
                link: Some(target.as_bytes()),
                ..e(name, EntryType::Link)
            })
        }

        pub fn bytes(&mut self) -> Vec<u8> {
            let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
            b.into_inner().expect("finish tar")
        }
    }

    fn md(p: &Path) -> fs::Metadata {
        fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
    }

    fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
        read_xattrs(p)
            .expect("xattrs")
            .into_iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v)
    }

    #[test]
    fn applies_every_entry_type() {
        let t = TempDir::new("apply-types");
        let root = t.path();
        let long = format!("deep/{}/{}", "d".repeat(80), "f".repeat(120));
        let tar = Layer::new()
            .add(E {
                mtime: 1_000,
                ..e("etc/", EntryType::Directory)
            })
            .add(E {
                data: b"root:x:0:0\n",
                pax: vec![
                    ("mtime", b"1600000000.123456789"),
                    ("atime", b"1500000000.5"),
                ],
                ..e("etc/passwd", EntryType::Regular)
            })
            .add(E {
                mode: 0o4755,
                gid: 12,
                data: b"\x7fELF",
                ..e("usr/bin/su", EntryType::Regular)
            })
            .add(E {
                mode: 0o600,
                uid: 1000,
                gid: 1001,
                data: b"secret",
                pax: vec![
                    ("SCHILY.xattr.user.a", b"one"),
                    ("SCHILY.xattr.trusted.b", b"\x00two"),
                ],
                ..e("home/u/f", EntryType::Regular)
            })
            .add(E {
                mode: 0o2775,
                uid: 1000,
                gid: 1000,
                pax: vec![("SCHILY.xattr.user.d", b"dir")],
                mtime: 2_000,
                ..e("home/u", EntryType::Directory)
            })
            .add(E {
                data: b"long",
                ..e(&long, EntryType::Regular)
            })
            .add(E {
                link: Some(b"../usr/bin/su"),
                uid: 5,
                gid: 6,
                mtime: 12_345,
                pax: vec![("SCHILY.xattr.trusted.sym", b"s")],
                ..e("etc/su-link", EntryType::Symlink)
            })
            .add(E {
                link: Some(b"etc/passwd"),
                ..e("etc/passwd-hard", EntryType::Link)
            })
            .add(E {
                link: Some(long.as_bytes()),
                ..e("long-hard", EntryType::Link)
            })
            .add(E {
                mode: 0o640,
                uid: 3,
                ..e("run/fifo", EntryType::Fifo)
            })
            .add(E {
                mode: 0o666,
                dev: (1, 3),
                pax: vec![("SCHILY.xattr.trusted.dev", b"d")],
                ..e("dev/null", EntryType::Char)
            })
            .add(E {
                mode: 0o1777,
                ..e("tmp", EntryType::Directory)
            })
            .bytes();
        let stats = apply_layer(root, &tar[..]).expect("apply");
        assert_eq!(
            stats,
            ApplyStats {
                entries: 12,
                bytes: 11 + 4 + 6 + 4,
                whiteouts: 0
            }
        );

        let m = md(&root.join("etc/passwd"));
        assert_eq!(
            fs::read(root.join("etc/passwd")).expect("read"),
            b"root:x:0:0\n"
        );
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 123_456_789));
        assert_eq!((m.atime(), m.atime_nsec()), (1_500_000_000, 500_000_000));
        assert_eq!(m.mode() & 0o7777, 0o644);
        assert_eq!(m.nlink(), 2);
        assert_eq!(md(&root.join("etc/passwd-hard")).ino(), m.ino());
        assert_eq!(md(&root.join("etc")).mtime(), 1_000, "dir times set last");

        let m = md(&root.join("usr/bin/su"));
        assert_eq!(m.mode() & 0o7777, 0o4755, "setuid survives chown");
        assert_eq!((m.uid(), m.gid()), (0, 12));
        assert_eq!(
            md(&root.join("usr")).mode() & 0o7777,
            0o755,
            "implicit parent"
        );

        let f = root.join("home/u/f");
        let m = md(&f);
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1001, 0o600));
        assert_eq!(xattr(&f, "user.a").as_deref(), Some(&b"one"[..]));
        assert_eq!(xattr(&f, "trusted.b").as_deref(), Some(&b"\x00two"[..]));
        let m = md(&root.join("home/u"));
        assert_eq!(
            (m.uid(), m.mode() & 0o7777, m.mtime()),
            (1000, 0o2775, 2_000)
        );
        assert_eq!(
            xattr(&root.join("home/u"), "user.d").as_deref(),
            Some(&b"dir"[..])
        );

        assert_eq!(fs::read(root.join(&long)).expect("read long"), b"long");
        assert_eq!(
            md(&root.join("long-hard")).ino(),
            md(&root.join(&long)).ino()
        );

        let l = root.join("etc/su-link");
        let m = md(&l);
        assert!(m.file_type().is_symlink());
        assert_eq!(
            fs::read_link(&l).expect("readlink"),
            Path::new("../usr/bin/su")
        );
        assert_eq!((m.uid(), m.gid(), m.mtime()), (5, 6, 12_345));
        assert_eq!(xattr(&l, "trusted.sym").as_deref(), Some(&b"s"[..]));

        let m = md(&root.join("run/fifo"));
        assert!(m.file_type().is_fifo());
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o640, 3));
        let m = md(&root.join("dev/null"));
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), makedev(1, 3));
        assert_eq!(
            xattr(&root.join("dev/null"), "trusted.dev").as_deref(),
            Some(&b"d"[..])
        );
        assert_eq!(m.mode() & 0o7777, 0o666);
        assert_eq!(md(&root.join("tmp")).mode() & 0o7777, 0o1777);
    }

    #[test]
    fn whiteouts_and_opaque_directories() {
        let t = TempDir::new("apply-whiteouts");
        let root = t.path();
        let l1 = Layer::new()
            .file("a/f1", b"1")
            .file("a/sub/f2", b"2")
            .file("b/x", b"x")
            .file("b/deeper/y", b"y")
            .file("c/old1", b"o")
            .file("c/olddir/old2", b"o")
            .file("d/old", b"o")
            .file("d/keepdir/x", b"o")
            .file("e/kept", b"k")
            .bytes();
        apply_layer(root, &l1[..]).expect("layer 1");
        let l2 = Layer::new()
            .file("a/.wh.f1", b"")
            .file(".wh.b", b"")
            .file("a/.wh.never-existed", b"")
            // Marker before the layer's own entries.
            .file("c/.wh..wh..opq", b"")
            .file("c/new1", b"n")
            .file("c/olddir/new2", b"n")
            // Marker after them.
            .file("d/new", b"n")
            .dir("d/keepdir")
            .file("d/keepdir/y", b"n")
            .file("d/.wh..wh..opq", b"")
            .file("e/.wh..wh.plnk", b"")
            .bytes();
        let stats = apply_layer(root, &l2[..]).expect("layer 2");
        assert_eq!(stats.whiteouts, 5);
        assert_eq!(stats.entries, 5);
        let names = |d: &str| {
            let mut v: Vec<String> = fs::read_dir(root.join(d))
                .expect("read_dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(""), ["a", "c", "d", "e"]);
        assert_eq!(names("a"), ["sub"]);
        assert_eq!(names("c"), ["new1", "olddir"]);
        assert_eq!(names("c/olddir"), ["new2"]);
        assert_eq!(names("d"), ["keepdir", "new"]);
        assert_eq!(names("d/keepdir"), ["y"]);
        assert_eq!(
            names("e"),
            ["kept"],
            "aufs metadata is ignored, not written"
        );
    }

    #[test]
    fn replaces_entries_of_other_types() {
        let t = TempDir::new("apply-replace");
        let root = t.path();
        let l1 = Layer::new()
            .file("p", b"file")
            .file("q/inner/f", b"f")
            .add(E {
                mode: 0o700,
                ..e("r/", EntryType::Directory)
            })
            .file("r/kept", b"k")
            .symlink("s", "q")
            .bytes();
        apply_layer(root, &l1[..]).expect("layer 1");
        let l2 = Layer::new()
            .dir("p")
            .file("p/child", b"c")
            .file("q", b"now a file")
            .add(E {
                mode: 0o750,
                uid: 4,
                ..e("r", EntryType::Directory)
            })
            .file("s", b"no longer a link")
            .bytes();
        apply_layer(root, &l2[..]).expect("layer 2");
        assert_eq!(fs::read(root.join("p/child")).expect("p/child"), b"c");
        assert_eq!(fs::read(root.join("q")).expect("q"), b"now a file");
        let m = md(&root.join("r"));
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o750, 4));
        assert_eq!(
            fs::read(root.join("r/kept")).expect("kept"),
            b"k",
            "dir over dir keeps content"
        );
        assert!(md(&root.join("s")).is_file());
        assert!(md(&root.join("q")).is_file());
    }

    #[test]
    fn keeps_times_of_directories_it_does_not_name() {
        let t = TempDir::new("apply-times");
        let root = t.path();
        apply_layer(
            root,
            &Layer::new()
                .add(E {
                    mtime: 777,
                    ..e("a", EntryType::Directory)
                })
                .file("a/old", b"o")
                .file("a/gone", b"g")
                .bytes()[..],
        )
        .expect("layer 1");
        crate::layer::testtree::set_mtime(root, 555, 5);
        assert_eq!(md(&root.join("a")).mtime(), 777);
        apply_layer(
            root,
            &Layer::new()
                .file("a/old", b"new")
                .file("a/.wh.gone", b"")
                .file("a/b/c", b"implicit parent")
                .bytes()[..],
        )
        .expect("layer 2");
        let m = md(&root.join("a"));
        assert_eq!((m.mtime(), m.mtime_nsec()), (777, 0));
        let m = md(root);
        assert_eq!((m.mtime(), m.mtime_nsec()), (555, 5));
    }

    /// Applies a hostile layer in `base/root`, next to an empty
    /// `base/sentinel`, and returns the error.
    fn hostile(tar: &[u8]) -> (TempDir, Error) {
        let base = TempDir::new("apply-hostile");
        fs::create_dir(base.path().join("root")).expect("root");
        fs::create_dir(base.path().join("sentinel")).expect("sentinel");
        let err = apply_layer(&base.path().join("root"), tar).expect_err("hostile layer applied");
        let left: Vec<_> = fs::read_dir(base.path().join("sentinel"))
            .expect("sentinel")
            .collect();
        assert!(left.is_empty(), "wrote outside the root: {left:?}");
        (base, err)
    }

    fn assert_unsafe(err: &Error, name: &str) {
        match err {
            Error::UnsafeEntry { entry, .. } => assert_eq!(entry, name, "{err}"),
            other => panic!("expected UnsafeEntry for {name}, got {other:?}"),
        }
    }

    fn unique(tag: &str) -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "thinlayer-escape-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    #[test]
    fn refuses_names_outside_the_root() {
        let u = unique("abs");
        let abs = format!("/tmp/{u}");
        let (_t, err) = hostile(&Layer::new().file(&abs, b"x").bytes());
        assert_unsafe(&err, &abs);
        assert!(!Path::new(&abs).exists());

        let (t, err) = hostile(&Layer::new().file("../x", b"x").bytes());
        assert_unsafe(&err, "../x");
        assert!(!t.path().join("x").exists());

        let (t, err) = hostile(&Layer::new().file("a/../../x", b"x").bytes());
        assert_unsafe(&err, "a/../../x");
        assert!(!t.path().join("x").exists());
        assert!(
            err.to_string().starts_with("layer entry \"a/../../x\": "),
            "{err}"
        );

        let (_t, err) = hostile(&Layer::new().file("ok", b"x").dir("../sentinel/d").bytes());
        assert_unsafe(&err, "../sentinel/d");

        let (_t, err) = hostile(&Layer::new().file("a/.wh...", b"").bytes());
        assert_unsafe(&err, "a/.wh...");

        let (t, err) = hostile(&Layer::new().file("a/.wh.b/c", b"").bytes());
        assert_unsafe(&err, "a/.wh.b/c");
        assert!(!t.path().join("root/a/.wh.b").exists());
    }

    #[test]
    fn refuses_parents_that_leave_through_symlinks() {
        let u = unique("up");
        let name = format!("evil/{u}");
        let (_t, err) = hostile(
            &Layer::new()
                .symlink("evil", "../../..")
                .file(&name, b"x")
                .bytes(),
        );
        assert_unsafe(&err, &name);
        assert!(!Path::new("/").join(&u).exists());

        let u = unique("tmp");
        let name = format!("evil/{u}");
        let (_t, err) = hostile(
            &Layer::new()
                .symlink("evil", "/tmp")
                .file(&name, b"x")
                .bytes(),
        );
        assert_unsafe(&err, &name);
        assert!(!Path::new("/tmp").join(&u).exists());

        let (_t, err) = hostile(
            &Layer::new()
                .symlink("evil", "../sentinel")
                .file("evil/x", b"x")
                .bytes(),
        );
        assert_unsafe(&err, "evil/x");

        let (_t, err) = hostile(
            &Layer::new()
                .symlink("evil", "/")
                .file("evil/etc/passwd", b"pwned")
                .bytes(),
        );
        assert_unsafe(&err, "evil/etc/passwd");

        let before = fs::read("/etc/passwd").expect("read /etc/passwd");
        let (_t, err) = hostile(
            &Layer::new()
                .symlink("link", "/etc")
                .file("link/passwd", b"pwned")
                .bytes(),
        );
        assert_unsafe(&err, "link/passwd");
        assert_eq!(fs::read("/etc/passwd").expect("read /etc/passwd"), before);

        let (_t, err) = hostile(
            &Layer::new()
                .symlink("a", "b")
                .symlink("b", "a")
                .file("a/x", b"x")
                .bytes(),
        );
        assert_unsafe(&err, "a/x");

        // A dangling relative symlink as parent is refused too.
        let (_t, err) = hostile(
            &Layer::new()
                .symlink("dl", "nowhere")
                .file("dl/x", b"x")
                .bytes(),
        );
        assert_unsafe(&err, "dl/x");
    }

    #[test]
    fn whiteouts_do_not_reach_through_symlinks() {
        let base = TempDir::new("apply-hostile-wh");
        let root = base.path().join("root");
        let sentinel = base.path().join("sentinel");
        fs::create_dir(&root).expect("root");
        fs::create_dir(&sentinel).expect("sentinel");
        fs::write(sentinel.join("keep"), b"k").expect("keep");
        for (tar, name) in [
            (
                Layer::new()
                    .symlink("evil", "../sentinel")
                    .file("evil/.wh.keep", b"")
                    .bytes(),
                "evil/.wh.keep",
            ),
            (
                Layer::new()
                    .symlink("evil2", "../sentinel")
                    .file("evil2/.wh..wh..opq", b"")
                    .bytes(),
                "evil2/.wh..wh..opq",
            ),
        ] {
            let err = apply_layer(&root, &tar[..]).expect_err("applied");
            assert_unsafe(&err, name);
            assert!(sentinel.join("keep").exists());
        }
        // A whiteout of the symlink itself removes the symlink only.
        apply_layer(&root, &Layer::new().file(".wh.evil", b"").bytes()[..]).expect("whiteout");
        assert!(!root.join("evil").exists());
        assert!(sentinel.join("keep").exists());
    }

    #[test]
    fn replaces_final_symlinks_instead_of_following_them() {
        let base = TempDir::new("apply-final-link");
        let root = base.path().join("root");
        let sentinel = base.path().join("sentinel");
        fs::create_dir(&root).expect("root");
        fs::create_dir(&sentinel).expect("sentinel");
        let tar = Layer::new()
            .symlink("f", "../sentinel/target")
            .file("f", b"inside")
            .symlink("d", "../sentinel")
            .dir("d")
            .file("d/x", b"inside too")
            .symlink("s", "/etc/passwd")
            .hardlink("h", "s")
            .symlink("n", "../sentinel/node")
            .add(e("n", EntryType::Fifo))
            .bytes();
        apply_layer(&root, &tar[..]).expect("apply");
        assert_eq!(fs::read(root.join("f")).expect("f"), b"inside");
        assert_eq!(fs::read(root.join("d/x")).expect("d/x"), b"inside too");
        assert!(
            md(&root.join("h")).file_type().is_symlink(),
            "links the symlink itself"
        );
        assert!(md(&root.join("n")).file_type().is_fifo());
        assert_eq!(fs::read_dir(&sentinel).expect("sentinel").count(), 0);
    }

    #[test]
    fn refuses_hard_links_outside_the_layer() {
        let (_t, err) = hostile(&Layer::new().hardlink("h", "/etc/passwd").bytes());
        assert_unsafe(&err, "h");
        assert!(err.to_string().contains("absolute"), "{err}");

        let (_t, err) = hostile(&Layer::new().hardlink("h", "../x").bytes());
        assert_unsafe(&err, "h");

        let (_t, err) = hostile(&Layer::new().hardlink("h", "missing").bytes());
        assert_unsafe(&err, "h");
        assert!(err.to_string().contains("does not exist"), "{err}");

        let (_t, err) = hostile(
            &Layer::new()
                .symlink("evil", "../sentinel")
                .hardlink("h", "evil/x")
                .bytes(),
        );
        assert_unsafe(&err, "h");

        let (_t, err) = hostile(&Layer::new().dir("d").hardlink("h", "d").bytes());
        assert_unsafe(&err, "h");
    }

    fn archive_error(tar: &[u8]) -> String {
        let t = TempDir::new("apply-corrupt");
        match apply_layer(t.path(), tar) {
            Err(e @ Error::Archive { .. }) => e.to_string(),
            other => panic!("expected an archive error, got {other:?}"),
        }
    }

    #[test]
    fn refuses_truncated_and_corrupt_archives() {
        let tar = Layer::new()
            .file("a", &[7u8; 10_000])
            .file("b", b"b")
            .bytes();
        let msg = archive_error(&tar[..tar.len() / 2]);
        assert!(msg.contains("truncated"), "{msg}");
        assert!(msg.contains("\"a\""), "{msg}");

        // Cut at an entry boundary: only the end-of-archive marker tells.
        let cut = 512 + 10_240;
        assert_eq!(&tar[cut..cut + 100][..1], b"b");
        let msg = archive_error(&tar[..cut]);
        assert!(msg.contains("end-of-archive"), "{msg}");

        // Cut inside a header.
        archive_error(&tar[..cut + 100]);

        let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        let msg = archive_error(&garbage);
        assert!(msg.starts_with("image archive layer: "), "{msg}");

        archive_error(b"");

        let mut bad_time = Layer::new();
        bad_time.add(E {
            pax: vec![("mtime", b"12x")],
            ..e("t", EntryType::Regular)
        });
        archive_error(&bad_time.bytes());
    }

    #[test]
    fn pax_times() {
        let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec(), t.tv_nsec()));
        assert_eq!(t("5"), Some((5, 0)));
        assert_eq!(t("5.25"), Some((5, 250_000_000)));
        assert_eq!(t("5.1234567891"), Some((5, 123_456_789)));
        assert_eq!(t("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(t("-3"), Some((-3, 0)));
        assert_eq!(t(""), None);
        assert_eq!(t("1e3"), None);
    }

    #[test]
    fn root_entry_sets_root_metadata() {
        let t = TempDir::new("apply-root");
        let tar = Layer::new()
            .add(E {
                mode: 0o711,
                uid: 9,
                mtime: 4_242,
                ..e("./", EntryType::Directory)
            })
            .file("./x", b"x")
            .bytes();
        apply_layer(t.path(), &tar[..]).expect("apply");
        let m = md(t.path());
        assert_eq!((m.mode() & 0o7777, m.uid(), m.mtime()), (0o711, 9, 4_242));
        let t2 = TempDir::new("apply-root-file");
        let err = apply_layer(t2.path(), &Layer::new().file(".", b"x").bytes()[..])
            .expect_err("root as a file");
        assert_unsafe(&err, ".");
    }
}
