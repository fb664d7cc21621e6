//! Writing the changes of a layer relative to its parent as an OCI layer tar.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::xattr::read_xattrs;
use crate::error::{Error, Result};

/// What [`write_diff`] wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DiffStats {
    /// Entries written: files, directories, symlinks, hard links, fifos and
    /// devices (whiteouts are counted apart).
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// Whiteout and opaque-directory markers written.
    pub whiteouts: u64,
}

/// Writes the changes of `upper` relative to `lower` (None: an empty lower)
/// as an uncompressed OCI layer tar to `out`.
///
/// `upper` must be a block-level snapshot of `lower`'s filesystem (or a tree
/// unrelated to it, at the price of a larger diff), and neither may change
/// while the diff is written. Symlinks are never followed. The output is
/// deterministic: entries come in depth-first order of byte-sorted names,
/// with fixed header fields.
///
/// An entry of `upper` is unchanged, and not written, when `lower` has the
/// same path with the same inode number, file type, mode, owner, size,
/// device number, mtime and ctime (with nanoseconds), extended attributes
/// and symlink target: a snapshot keeps inode numbers, and any change to an
/// inode updates its ctime. A directory that is unchanged itself is not
/// written, only its changed descendants; a changed directory is written
/// before them.
///
/// Changed and new entries carry numeric uid/gid, permission bits with
/// setuid, setgid and sticky, the mtime (PAX `mtime` when it has
/// nanoseconds or is before 1970), device numbers, file content, long names
/// as PAX `path`/`linkpath`, and xattrs as PAX `SCHILY.xattr.NAME` (except
/// `security.selinux`). Files sharing an inode in `upper` are written once,
/// then as hard links to that first path; a hard-link group with any changed
/// member is written whole, so that the group survives the apply.
///
/// Deletions are whiteouts `DIR/.wh.NAME`, one for a deleted directory. An
/// entry whose type changed replaces the lower entry without a whiteout (the
/// applier removes what was there). A directory whose inode number differs
/// from the lower directory at the same path was deleted and recreated: it
/// is written, followed by `DIR/.wh..wh..opq`, then all of its content.
/// Whiteouts are empty regular files, mode 0644, owner 0:0, mtime 0.
///
/// Not written: the roots themselves (their metadata is not part of the
/// layer), and sockets (tar cannot hold them; a socket in `upper` counts as
/// absent, so it whiteouts a lower entry of the same name). A name starting
/// with `.wh.` in `upper` cannot be represented and gives
/// [`Error::UnsafeEntry`].
pub fn write_diff(lower: Option<&Path>, upper: &Path, out: impl Write) -> Result<DiffStats> {
    for dir in lower.into_iter().chain(Some(upper)) {
        let md = fs::symlink_metadata(dir).map_err(|e| Error::io("stat", dir, e))?;
        if !md.is_dir() {
            return Err(Error::invalid(
                "layer directory",
                &dir.display().to_string(),
                "not a directory",
            ));
        }
    }
    let mut plan = Vec::new();
    plan_dir(lower, upper, Path::new(""), &mut plan)?;

    // A hard-link group with one changed member is written whole.
    let changed_inodes: HashSet<(u64, u64)> = plan
        .iter()
        .filter_map(|item| match item {
            Item::Entry { md, .. } if !md.is_dir() && md.nlink() > 1 => Some((md.dev(), md.ino())),
            _ => None,
        })
        .collect();
    let plan: Vec<Item> = plan
        .into_iter()
        .filter_map(|item| match item {
            Item::Unchanged { rel, md } => changed_inodes
                .contains(&(md.dev(), md.ino()))
                .then_some(Item::Entry { rel, md }),
            other => Some(other),
        })
        .collect();

    let mut w = Writer {
        upper,
        tar: tar::Builder::new(out),
        links: HashMap::new(),
        stats: DiffStats::default(),
    };
    for item in &plan {
        match item {
            Item::Entry { rel, md } => w.entry(rel, md)?,
            Item::Whiteout { rel } => w.whiteout(rel)?,
            Item::Unchanged { .. } => {}
        }
    }
    let mut out = w
        .tar
        .into_inner()
        .map_err(|e| Error::io("write layer archive of", upper, e))?;
    out.flush()
        .map_err(|e| Error::io("write layer archive of", upper, e))?;
    Ok(w.stats)
}

enum Item {
    /// Written in full (or as a hard link to an earlier path).
    Entry { rel: PathBuf, md: Metadata },
    /// Unchanged, but sharing an inode with other paths: written only if
    /// another member of its group is.
    Unchanged { rel: PathBuf, md: Metadata },
    /// A whiteout or opaque marker, at its own path.
    Whiteout { rel: PathBuf },
}

/// The names in `dir` with their metadata, byte-sorted, without sockets.
fn list(dir: &Path) -> Result<Vec<(Vec<u8>, Metadata)>> {
    let rd = fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io("read directory", dir, e))?;
        let path = e.path();
        let md = fs::symlink_metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
        if md.file_type().is_socket() {
            continue;
        }
        out.push((e.file_name().as_bytes().to_vec(), md));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn rel_join(rel: &Path, name: &[u8]) -> PathBuf {
    rel.join(std::ffi::OsStr::from_bytes(name))
}

fn plan_dir(lower: Option<&Path>, upper: &Path, rel: &Path, plan: &mut Vec<Item>) -> Result<()> {
    let unames = list(upper)?;
    let lnames = match lower {
        Some(l) => list(l)?,
        None => Vec::new(),
    };
    let (mut i, mut j) = (0, 0);
    while i < unames.len() || j < lnames.len() {
        let order = match (unames.get(i), lnames.get(j)) {
            (Some(u), Some(l)) => u.0.cmp(&l.0),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Greater => {
                // Only in lower: deleted.
                let mut wh = b".wh.".to_vec();
                wh.extend_from_slice(&lnames[j].0);
                plan.push(Item::Whiteout {
                    rel: rel_join(rel, &wh),
                });
                j += 1;
            }
            std::cmp::Ordering::Less => {
                let (name, md) = &unames[i];
                plan_entry(None, upper, rel, name, md, plan)?;
                i += 1;
            }
            std::cmp::Ordering::Equal => {
                let (name, md) = &unames[i];
                let lower_entry = lower.map(|l| (l, &lnames[j].1));
                plan_entry(lower_entry, upper, rel, name, md, plan)?;
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

fn plan_entry(
    lower: Option<(&Path, &Metadata)>,
    upper: &Path,
    rel: &Path,
    name: &[u8],
    umd: &Metadata,
    plan: &mut Vec<Item>,
) -> Result<()> {
    let crel = rel_join(rel, name);
    if name.starts_with(b".wh.") {
        return Err(Error::UnsafeEntry {
            entry: crel.display().to_string(),
            why: "names starting with \".wh.\" are reserved for whiteouts and cannot be stored in a layer".into(),
        });
    }
    let upath = upper.join(std::ffi::OsStr::from_bytes(name));
    let lower = lower.map(|(l, lmd)| (l.join(std::ffi::OsStr::from_bytes(name)), lmd));
    if umd.is_dir() {
        match lower {
            Some((lpath, lmd)) if lmd.is_dir() && lmd.ino() == umd.ino() => {
                if !unchanged(&lpath, lmd, &upath, umd)? {
                    plan.push(Item::Entry {
                        rel: crel.clone(),
                        md: umd.clone(),
                    });
                }
                plan_dir(Some(&lpath), &upath, &crel, plan)
            }
            Some((_, lmd)) if lmd.is_dir() => {
                // Deleted and recreated: hide everything of the lower one.
                plan.push(Item::Entry {
                    rel: crel.clone(),
                    md: umd.clone(),
                });
                plan.push(Item::Whiteout {
                    rel: crel.join(".wh..wh..opq"),
                });
                plan_dir(None, &upath, &crel, plan)
            }
            _ => {
                plan.push(Item::Entry {
                    rel: crel.clone(),
                    md: umd.clone(),
                });
                plan_dir(None, &upath, &crel, plan)
            }
        }
    } else {
        let same = match &lower {
            Some((lpath, lmd)) => unchanged(lpath, lmd, &upath, umd)?,
            None => false,
        };
        if !same {
            plan.push(Item::Entry {
                rel: crel,
                md: umd.clone(),
            });
        } else if umd.nlink() > 1 {
            plan.push(Item::Unchanged {
                rel: crel,
                md: umd.clone(),
            });
        }
        Ok(())
    }
}

fn unchanged(lpath: &Path, l: &Metadata, upath: &Path, u: &Metadata) -> Result<bool> {
    let same_inode = l.ino() == u.ino()
        && l.mode() == u.mode()
        && l.uid() == u.uid()
        && l.gid() == u.gid()
        && l.size() == u.size()
        && l.rdev() == u.rdev()
        && (l.mtime(), l.mtime_nsec()) == (u.mtime(), u.mtime_nsec())
        && (l.ctime(), l.ctime_nsec()) == (u.ctime(), u.ctime_nsec());
    if !same_inode {
        return Ok(false);
    }
    let lx = read_xattrs(lpath).map_err(|e| Error::io("read xattrs of", lpath, e))?;
    let ux = read_xattrs(upath).map_err(|e| Error::io("read xattrs of", upath, e))?;
    if lx != ux {
        return Ok(false);
    }
    if u.file_type().is_symlink() {
        let lt = fs::read_link(lpath).map_err(|e| Error::io("read symlink", lpath, e))?;
        let ut = fs::read_link(upath).map_err(|e| Error::io("read symlink", upath, e))?;
        return Ok(lt == ut);
    }
    Ok(true)
}

/// Formats a time as a PAX value: `[-]SECONDS[.NANOSECONDS]`.
fn pax_time(secs: i64, nsec: i64) -> String {
    if nsec == 0 {
        format!("{secs}")
    } else if secs >= 0 {
        format!("{secs}.{nsec:09}")
    } else {
        // secs + nsec/1e9 is negative: write its magnitude.
        format!("-{}.{:09}", -(secs + 1), 1_000_000_000 - nsec)
    }
}

/// Reads exactly `remaining` bytes, failing if the file ends sooner; a read
/// error is kept so that it can be told apart from a write error.
struct Exact {
    file: File,
    remaining: u64,
    error: Rc<RefCell<Option<io::Error>>>,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        match self.file.read(&mut buf[..max]) {
            Ok(0) => {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was being written to the layer",
                );
                *self.error.borrow_mut() = Some(io::Error::new(e.kind(), e.to_string()));
                Err(e)
            }
            Ok(n) => {
                self.remaining -= n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                *self.error.borrow_mut() = Some(io::Error::new(e.kind(), e.to_string()));
                Err(e)
            }
        }
    }
}

struct Writer<'a, W: Write> {
    upper: &'a Path,
    tar: tar::Builder<W>,
    /// Inode (device, number) in `upper` → the first path written for it.
    links: HashMap<(u64, u64), PathBuf>,
    stats: DiffStats,
}

impl<W: Write> Writer<'_, W> {
    fn whiteout(&mut self, rel: &Path) -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        self.append(rel, h, None, Vec::new(), io::empty(), None)?;
        self.stats.whiteouts += 1;
        Ok(())
    }

    fn entry(&mut self, rel: &Path, md: &Metadata) -> Result<()> {
        let path = self.upper.join(rel);
        let ft = md.file_type();
        let mut h = tar::Header::new_ustar();
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(u64::from(md.uid()));
        h.set_gid(u64::from(md.gid()));
        h.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
        h.set_size(0);
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if md.mtime_nsec() != 0 || md.mtime() < 0 {
            pax.push((
                "mtime".into(),
                pax_time(md.mtime(), md.mtime_nsec()).into_bytes(),
            ));
        }

        if ft.is_file() && md.nlink() > 1 {
            if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                let first = first.clone();
                h.set_entry_type(tar::EntryType::Link);
                self.append(
                    rel,
                    h,
                    Some(first.as_os_str().as_bytes()),
                    pax,
                    io::empty(),
                    None,
                )?;
                self.stats.entries += 1;
                return Ok(());
            }
            self.links.insert((md.dev(), md.ino()), rel.to_path_buf());
        }

        let xattrs = read_xattrs(&path).map_err(|e| Error::io("read xattrs of", &path, e))?;
        for (k, v) in xattrs {
            let Ok(k) = String::from_utf8(k) else {
                return Err(Error::UnsafeEntry {
                    entry: rel.display().to_string(),
                    why: "an xattr name is not UTF-8 and cannot be stored in a layer".into(),
                });
            };
            pax.push((format!("SCHILY.xattr.{k}"), v));
        }

        if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(md.size());
            let file = File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| Error::io("open", &path, e))?;
            let error = Rc::new(RefCell::new(None));
            let data = Exact {
                file,
                remaining: md.size(),
                error: Rc::clone(&error),
            };
            self.append(rel, h, None, pax, data, Some(error))?;
            self.stats.bytes += md.size();
        } else if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            self.append(rel, h, None, pax, io::empty(), None)?;
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            let target = fs::read_link(&path).map_err(|e| Error::io("read symlink", &path, e))?;
            self.append(
                rel,
                h,
                Some(target.as_os_str().as_bytes()),
                pax,
                io::empty(),
                None,
            )?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            h.set_entry_type(if ft.is_fifo() {
                tar::EntryType::Fifo
            } else if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            if !ft.is_fifo() {
                let dev = md.rdev();
                let (major, minor) = (libc::major(dev), libc::minor(dev));
                h.set_device_major(major)
                    .and_then(|()| h.set_device_minor(minor))
                    .map_err(|e| Error::io("write device numbers of", &path, e))?;
            }
            self.append(rel, h, None, pax, io::empty(), None)?;
        } else {
            // Sockets were left out when listing.
            return Ok(());
        }
        self.stats.entries += 1;
        Ok(())
    }

    /// Appends one entry, preceded by its PAX records: `path` and
    /// `linkpath` when they do not fit the ustar header, then `pax`.
    fn append(
        &mut self,
        rel: &Path,
        mut h: tar::Header,
        link: Option<&[u8]>,
        mut pax: Vec<(String, Vec<u8>)>,
        data: impl Read,
        read_error: Option<Rc<RefCell<Option<io::Error>>>>,
    ) -> Result<()> {
        let path = self.upper.join(rel);
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        // Names and targets go in verbatim (the header setters would
        // normalise them); what does not fit goes in PAX records.
        let name = rel.as_os_str().as_bytes();
        set_truncated(&mut h.as_old_mut().name, name);
        if name.len() > h.as_old().name.len() {
            records.push(("path".into(), name.to_vec()));
        }
        if let Some(link) = link {
            set_truncated(&mut h.as_old_mut().linkname, link);
            if link.len() > h.as_old().linkname.len() {
                records.push(("linkpath".into(), link.to_vec()));
            }
        }
        records.append(&mut pax);
        let werr = |e: io::Error| Error::io("write layer archive entry for", &path, e);
        if !records.is_empty() {
            self.tar
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(werr)?;
        }
        h.set_cksum();
        self.tar.append(&h, data).map_err(|e| {
            match read_error.and_then(|r| r.borrow_mut().take()) {
                Some(re) => Error::io("read", &path, re),
                None => werr(e),
            }
        })
    }
}

/// Fills a header name field with the start of a name that is carried in
/// full by a PAX record.
fn set_truncated(field: &mut [u8], name: &[u8]) {
    field.fill(0);
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name[..n]);
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::layer::testtree::{
        chmod, lchown, populate, remove_xattr, set_mtime, set_xattr, write,
    };
    use crate::layer::{apply_layer, compare_trees};
    use crate::testutil::TempDir;

    fn run(cmd: &str, args: &[&str]) {
        let out = Command::new(cmd).args(args).output().expect("run");
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn cp_a(from: &Path, to: &Path) {
        run(
            "cp",
            &[
                "-a",
                from.to_str().expect("utf-8"),
                to.to_str().expect("utf-8"),
            ],
        );
    }

    fn names(tar: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .expect("entries")
            .map(|e| String::from_utf8_lossy(&e.expect("entry").path_bytes()).into_owned())
            .collect()
    }

    fn diff(lower: Option<&Path>, upper: &Path) -> (Vec<u8>, DiffStats) {
        let mut out = Vec::new();
        let stats = write_diff(lower, upper, &mut out).expect("write_diff");
        (out, stats)
    }

    /// Applies the diff of `upper` over a copy of `lower` and compares.
    fn round_trip(lower: &Path, upper: &Path, tar: &[u8], stats: &DiffStats) {
        let t = TempDir::new("diff-check");
        let check = t.path().join("check");
        cp_a(lower, &check);
        let applied = apply_layer(&check, tar).expect("apply the diff");
        assert_eq!(
            (applied.entries, applied.bytes, applied.whiteouts),
            (stats.entries, stats.bytes, stats.whiteouts)
        );
        if let Err(d) = compare_trees(&check, upper) {
            panic!("round trip differs:\n{d}");
        }
    }

    /// Changes of every kind, on a tree made by [`populate`].
    fn modify(upper: &Path) {
        fs::create_dir_all(upper.join("new/dir")).expect("mkdir");
        write(&upper.join("new/dir/file"), b"added");
        write(&upper.join("etc/added"), b"added");
        write(&upper.join("etc/passwd"), b"root:x:0:0::/root:/bin/bash\n");
        set_mtime(&upper.join("etc/passwd"), 1_700_000_000, 42);
        chmod(&upper.join("etc/conf.d/app.conf"), 0o600);
        lchown(&upper.join("var/lib/app/data/db"), 2000, 2001);
        set_xattr(&upper.join("usr/bin/tool"), "user.new", b"v");
        remove_xattr(&upper.join("var/lib/app/data/db"), "user.origin");
        fs::remove_file(upper.join("gone-file")).expect("rm");
        fs::remove_dir_all(upper.join("gone")).expect("rm -r");
        fs::remove_file(upper.join("replaced-file")).expect("rm");
        fs::create_dir(upper.join("replaced-file")).expect("mkdir");
        write(&upper.join("replaced-file/child"), b"c");
        fs::remove_dir_all(upper.join("replaced-dir")).expect("rm -r");
        write(&upper.join("replaced-dir"), b"now a file");
        fs::remove_dir_all(upper.join("opaque")).expect("rm -r");
        fs::create_dir(upper.join("opaque")).expect("mkdir");
        write(&upper.join("opaque/kept-name"), b"upper version");
        fs::hard_link(upper.join("usr/bin/shared"), upper.join("usr/shared-3")).expect("ln");
        fs::remove_file(upper.join("usr/passwd-link")).expect("rm");
        std::os::unix::fs::symlink("/etc/passwd", upper.join("usr/passwd-link")).expect("ln -s");
        let long = "m".repeat(120);
        write(&upper.join(format!("var/{long}")), b"long");
        set_mtime(&upper.join("var/lib"), -5, 250);
        set_mtime(&upper.join("new"), 1_234_567_890, 987_654_321);
    }

    #[test]
    fn round_trips_changes_of_copied_trees() {
        let t = TempDir::new("diff-roundtrip");
        let lower = t.path().join("lower");
        let upper = t.path().join("upper");
        fs::create_dir(&lower).expect("lower");
        populate(&lower);
        cp_a(&lower, &upper);
        modify(&upper);
        let (tar, stats) = diff(Some(&lower), &upper);
        let listed = names(&tar);
        assert!(listed.contains(&".wh.gone".to_string()), "{listed:?}");
        assert!(listed.contains(&".wh.gone-file".to_string()), "{listed:?}");
        assert!(
            !listed.iter().any(|n| n.starts_with("gone/")),
            "one whiteout for a deleted directory: {listed:?}"
        );
        assert_eq!(
            stats.whiteouts as usize,
            listed.iter().filter(|n| n.contains(".wh.")).count()
        );
        round_trip(&lower, &upper, &tar, &stats);
    }

    #[test]
    fn round_trips_a_whole_tree_onto_nothing() {
        let t = TempDir::new("diff-full");
        let tree = t.path().join("tree");
        fs::create_dir(&tree).expect("tree");
        populate(&tree);
        let (tar, stats) = diff(None, &tree);
        assert_eq!(stats.whiteouts, 0);
        let empty = t.path().join("empty");
        fs::create_dir(&empty).expect("empty");
        round_trip(&empty, &tree, &tar, &stats);
    }

    #[test]
    fn output_is_deterministic() {
        let t = TempDir::new("diff-determinism");
        let lower = t.path().join("lower");
        let upper = t.path().join("upper");
        fs::create_dir(&lower).expect("lower");
        populate(&lower);
        cp_a(&lower, &upper);
        modify(&upper);
        let (a, _) = diff(Some(&lower), &upper);
        let (b, _) = diff(Some(&lower), &upper);
        assert!(a == b, "two diffs of the same trees differ");
        let (a, _) = diff(None, &upper);
        let (b, _) = diff(None, &upper);
        assert!(a == b, "two full diffs of the same tree differ");
    }

    #[test]
    fn a_tree_has_no_changes_from_itself() {
        let t = TempDir::new("diff-self");
        populate(t.path());
        let (tar, stats) = diff(Some(t.path()), t.path());
        assert_eq!(stats, DiffStats::default());
        assert!(names(&tar).is_empty());
    }

    #[test]
    fn refuses_names_reserved_for_whiteouts() {
        let t = TempDir::new("diff-reserved");
        write(&t.path().join(".wh.x"), b"");
        match write_diff(None, t.path(), Vec::new()) {
            Err(Error::UnsafeEntry { entry, .. }) => assert_eq!(entry, ".wh.x"),
            other => panic!("expected UnsafeEntry, got {other:?}"),
        }
    }

    #[test]
    fn pax_time_format() {
        assert_eq!(pax_time(5, 0), "5");
        assert_eq!(pax_time(5, 7), "5.000000007");
        assert_eq!(pax_time(-2, 500_000_000), "-1.500000000");
        assert_eq!(pax_time(-3, 0), "-3");
    }

    /// Unmounts and detaches a loop mount when dropped.
    struct Mount(std::path::PathBuf);

    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }

    fn mount(img: &Path, at: &Path, opts: &str) -> Option<Mount> {
        fs::create_dir_all(at).expect("mount point");
        let st = Command::new("mount")
            .args(["-t", "ext4", "-o", opts])
            .arg(img)
            .arg(at)
            .status()
            .ok()?;
        st.success().then(|| Mount(at.to_path_buf()))
    }

    /// The minimal diff, on a block-level copy of an ext4 filesystem (what a
    /// thin snapshot is): unchanged entries keep inode numbers and ctimes.
    #[test]
    fn block_copies_give_minimal_diffs() {
        let t = TempDir::new("diff-snapshot");
        let img1 = t.path().join("lower.img");
        let img2 = t.path().join("upper.img");
        fs::File::create(&img1)
            .and_then(|f| f.set_len(64 << 20))
            .expect("image");
        // Needs mkfs.ext4 (e2fsprogs, which vm-tests/setup installs), root
        // and loop devices: the suite runs as root.
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img1)
            .status();
        match mkfs {
            Ok(s) => assert!(s.success(), "mkfs.ext4 {} failed: {s}", img1.display()),
            Err(e) => panic!("this test needs mkfs.ext4 (e2fsprogs): {e}"),
        }
        {
            let _m = mount(&img1, &t.path().join("m"), "loop").unwrap_or_else(|| {
                panic!("this test needs to loop-mount an ext4 image (root, loop devices)")
            });
            populate(&t.path().join("m"));
        }
        run(
            "cp",
            &[
                "--sparse=always",
                img1.to_str().expect("utf-8"),
                img2.to_str().expect("utf-8"),
            ],
        );
        let lower = t.path().join("lower");
        let upper = t.path().join("upper");
        let _ml = mount(&img1, &lower, "loop,ro").expect("mount lower");
        let _mu = mount(&img2, &upper, "loop").expect("mount upper");

        // Content changed in place: the directory is untouched.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(upper.join("etc/conf.d/app.conf"))
            .expect("open");
        f.write_all(b"KEY = VALUE\n").expect("write");
        drop(f);
        write(&upper.join("usr/bin/new"), b"new");
        fs::remove_dir_all(upper.join("gone")).expect("rm -r");
        chmod(&upper.join("var/lib/app/data/db"), 0o640);
        fs::remove_dir_all(upper.join("opaque")).expect("rm -r");
        fs::create_dir(upper.join("opaque")).expect("mkdir");
        write(&upper.join("opaque/kept-name"), b"upper version");
        fs::hard_link(upper.join("usr/bin/shared"), upper.join("usr/shared-3")).expect("ln");

        let (tar, stats) = diff(Some(&lower), &upper);
        let listed = names(&tar);
        // Whiteouts come at the place of the name they delete.
        let expected = [
            "etc/conf.d/app.conf",
            "etc/shared-too",
            ".wh.gone",
            "opaque",
            "opaque/.wh..wh..opq",
            "opaque/kept-name",
            "usr",
            "usr/bin",
            "usr/bin/new",
            "usr/bin/shared",
            "usr/bin/shared-link",
            "usr/shared-3",
            "var/lib/app/data/db",
        ];
        assert_eq!(listed, expected, "diff entries");
        assert_eq!((stats.entries, stats.whiteouts), (11, 2));
        round_trip(&lower, &upper, &tar, &stats);
    }
}
