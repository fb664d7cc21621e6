//! Test aid, used by the unit tests, the fuzz tests and the VM integration
//! tests: [`compare_trees`], which tells every difference between two
//! directory trees. Built for tests only (the `testing` feature).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::read_up_to;
use super::xattr::read_xattrs;

/// Test aid, used by the unit tests, the fuzz tests and the VM integration
/// tests: compares two directory trees and describes every difference found
/// (up to 50).
///
/// Compared, for every path below the two roots (the roots' own metadata is
/// not compared): presence, file type, permission bits including setuid,
/// setgid and sticky, uid, gid, mtime in seconds and nanoseconds (except for
/// symlinks), regular file content, symlink targets, device numbers,
/// extended attributes (except `security.selinux`), and hard-link grouping:
/// two paths share an inode in `a` exactly when they do in `b`.
/// Symlinks are never followed. Access and change times are not compared.
pub fn compare_trees(a: &Path, b: &Path) -> Result<(), String> {
    let mut cmp = Comparer {
        a,
        b,
        diffs: Vec::new(),
        inodes_a: HashMap::new(),
        inodes_b: HashMap::new(),
    };
    cmp.dir(Path::new(""));
    if cmp.diffs.is_empty() {
        Ok(())
    } else {
        Err(cmp.diffs.join("\n"))
    }
}

const MAX_DIFFS: usize = 50;

struct Comparer<'a> {
    a: &'a Path,
    b: &'a Path,
    diffs: Vec<String>,
    inodes_a: HashMap<(u64, u64), PathBuf>,
    inodes_b: HashMap<(u64, u64), PathBuf>,
}

impl Comparer<'_> {
    fn note(&mut self, rel: &Path, what: String) {
        if self.diffs.len() < MAX_DIFFS {
            self.diffs.push(format!("{}: {what}", rel.display()));
        }
    }

    fn names(&mut self, dir: &Path, rel: &Path) -> Vec<std::ffi::OsString> {
        let mut names = Vec::new();
        match fs::read_dir(dir) {
            Ok(rd) => {
                for e in rd {
                    match e {
                        Ok(e) => names.push(e.file_name()),
                        Err(e) => self.note(rel, format!("reading {}: {e}", dir.display())),
                    }
                }
            }
            Err(e) => self.note(rel, format!("reading {}: {e}", dir.display())),
        }
        names.sort();
        names
    }

    fn dir(&mut self, rel: &Path) {
        let names_a = self.names(&self.a.join(rel), rel);
        let names_b = self.names(&self.b.join(rel), rel);
        for n in &names_a {
            if names_b.binary_search(n).is_err() {
                self.note(&rel.join(n), format!("only in {}", self.a.display()));
            }
        }
        for n in &names_b {
            if names_a.binary_search(n).is_err() {
                self.note(&rel.join(n), format!("only in {}", self.b.display()));
            }
        }
        for n in &names_a {
            if self.diffs.len() >= MAX_DIFFS {
                return;
            }
            if names_b.binary_search(n).is_ok() {
                self.entry(&rel.join(n));
            }
        }
    }

    fn entry(&mut self, rel: &Path) {
        let (pa, pb) = (self.a.join(rel), self.b.join(rel));
        let (ma, mb) = match (fs::symlink_metadata(&pa), fs::symlink_metadata(&pb)) {
            (Ok(ma), Ok(mb)) => (ma, mb),
            (Err(e), _) | (_, Err(e)) => return self.note(rel, format!("lstat: {e}")),
        };
        let ta = ma.file_type();
        if ma.mode() & libc::S_IFMT != mb.mode() & libc::S_IFMT {
            let (ka, kb) = (kind(ma.mode()), kind(mb.mode()));
            return self.note(rel, format!("file type {ka} != {kb}"));
        }
        if ma.mode() != mb.mode() {
            self.note(rel, format!("mode {:o} != {:o}", ma.mode(), mb.mode()));
        }
        if (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
            self.note(
                rel,
                format!(
                    "owner {}:{} != {}:{}",
                    ma.uid(),
                    ma.gid(),
                    mb.uid(),
                    mb.gid()
                ),
            );
        }
        if !ta.is_symlink() && (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
            self.note(
                rel,
                format!(
                    "mtime {}.{:09} != {}.{:09}",
                    ma.mtime(),
                    ma.mtime_nsec(),
                    mb.mtime(),
                    mb.mtime_nsec()
                ),
            );
        }
        match (read_xattrs(&pa), read_xattrs(&pb)) {
            (Ok(xa), Ok(xb)) if xa != xb => self.note(
                rel,
                format!("xattrs {} != {}", show_xattrs(&xa), show_xattrs(&xb)),
            ),
            (Err(e), _) | (_, Err(e)) => self.note(rel, format!("reading xattrs: {e}")),
            _ => {}
        }
        if (ta.is_block_device() || ta.is_char_device()) && ma.rdev() != mb.rdev() {
            self.note(rel, format!("device {:#x} != {:#x}", ma.rdev(), mb.rdev()));
        }
        if ta.is_symlink() {
            match (fs::read_link(&pa), fs::read_link(&pb)) {
                (Ok(la), Ok(lb)) if la != lb => self.note(
                    rel,
                    format!("symlink target {} != {}", la.display(), lb.display()),
                ),
                (Err(e), _) | (_, Err(e)) => self.note(rel, format!("readlink: {e}")),
                _ => {}
            }
        }
        if ta.is_file() {
            if ma.len() != mb.len() {
                self.note(rel, format!("size {} != {}", ma.len(), mb.len()));
            } else if let Err(why) = same_content(&pa, &pb) {
                self.note(rel, why);
            }
        }
        if !ta.is_dir() {
            let ca = self
                .inodes_a
                .entry((ma.dev(), ma.ino()))
                .or_insert_with(|| rel.to_path_buf())
                .clone();
            let cb = self
                .inodes_b
                .entry((mb.dev(), mb.ino()))
                .or_insert_with(|| rel.to_path_buf())
                .clone();
            if ca != cb {
                self.note(
                    rel,
                    format!(
                        "hard links differ: same inode as {} in {}, as {} in {}",
                        ca.display(),
                        self.a.display(),
                        cb.display(),
                        self.b.display()
                    ),
                );
            }
        }
        if ta.is_dir() {
            self.dir(rel);
        }
    }
}

fn kind(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "fifo",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFSOCK => "socket",
        _ => "unknown",
    }
}

fn show_xattrs(x: &[(Vec<u8>, Vec<u8>)]) -> String {
    let items: Vec<String> = x
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={:?}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn same_content(a: &Path, b: &Path) -> Result<(), String> {
    let open = |p: &Path| fs::File::open(p).map_err(|e| format!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut offset = 0u64;
    loop {
        let na = read_up_to(&mut fa, &mut ba).map_err(|e| format!("read {}: {e}", a.display()))?;
        let nb = read_up_to(&mut fb, &mut bb).map_err(|e| format!("read {}: {e}", b.display()))?;
        if ba[..na] != bb[..nb] {
            return Err(format!("content differs after byte {offset}"));
        }
        if na == 0 {
            return Ok(());
        }
        offset += na as u64;
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::process::Command;

    use super::compare_trees;
    use crate::layer::testtree::{chmod, lchown, populate, set_mtime, set_xattr, write};
    use crate::testutil::TempDir;

    #[test]
    fn compare_trees_sees_every_kind_of_difference() {
        let t = TempDir::new("compare");
        let a = t.path().join("a");
        let b = t.path().join("b");
        fs::create_dir(&a).expect("a");
        populate(&a);
        let st = Command::new("cp")
            .arg("-a")
            .arg(&a)
            .arg(&b)
            .status()
            .expect("cp");
        assert!(st.success());
        compare_trees(&a, &b).expect("a copy is the same");

        set_mtime(&b.join("etc/passwd"), 1_600_000_000, 123_456_780);
        chmod(&b.join("usr/bin/tool"), 0o755);
        lchown(&b.join("etc/conf.d/app.conf"), 1, 0);
        set_xattr(&b.join("var/lib/app/data/db"), "user.origin", b"upper");
        fs::remove_file(b.join("usr/bin/shared-link")).expect("rm");
        fs::copy(b.join("usr/bin/shared"), b.join("usr/bin/shared-link")).expect("cp");
        fs::remove_file(b.join("usr/passwd-link")).expect("rm");
        std::os::unix::fs::symlink("elsewhere", b.join("usr/passwd-link")).expect("ln -s");
        write(&b.join("gone-file"), b"deleted LATER");
        write(&b.join("extra"), b"");
        fs::remove_file(b.join("var/null")).expect("rm");
        nix::unistd::mkfifo(
            &b.join("var/null"),
            nix::sys::stat::Mode::from_bits_truncate(0o666),
        )
        .expect("mkfifo");
        chmod(&b.join("var/null"), 0o666);

        let diffs = compare_trees(&a, &b).expect_err("different trees");
        for what in [
            "etc/passwd: mtime",
            "usr/bin/tool: mode",
            "etc/conf.d/app.conf: owner",
            "var/lib/app/data/db: xattrs",
            "usr/bin/shared-link: hard links differ",
            "usr/passwd-link: symlink target",
            "gone-file: content differs",
            "extra: only in",
            "var/null: file type",
        ] {
            assert!(diffs.contains(what), "{what} not found in:\n{diffs}");
        }
    }
}
