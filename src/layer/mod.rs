//! Layer content: applying layer tars into a mounted layer, and writing a layer's changes as a tar.
//!
//! A layer tar is an uncompressed OCI image layer: a tar stream of the
//! entries a layer adds or changes, with OCI whiteouts (`DIR/.wh.NAME`,
//! `DIR/.wh..wh..opq`) for what it deletes from the layers below.
//! [`apply_layer`] writes such a stream into the mounted snapshot of the
//! parent layers; [`write_diff`] produces one from a layer and its parent.
//! Zeros take no blocks: [`apply_layer`] leaves them as holes, and
//! [`punch_zeros`] makes holes of the zeros someone else wrote as data.
//!
//! Extended attributes travel as PAX records `SCHILY.xattr.NAME`, except
//! `security.selinux`, which belongs to the host's policy, not to the image:
//! it is neither written into layers nor removed by them.

mod apply;
#[cfg(any(test, feature = "testing"))]
mod compare;
mod diff;
pub(crate) mod sparse;
mod xattr;

pub use apply::{ApplyStats, apply_layer};
#[cfg(any(test, feature = "testing"))]
pub use compare::compare_trees;
pub use diff::{DiffStats, write_diff};
pub use sparse::{PunchStats, punch_zeros};

use std::io::{self, Read};

/// Reads until `buf` is full or the input ends; returns how much it read.
/// Interrupted reads are retried.
pub(crate) fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
pub(crate) mod testtree {
    //! Building trees with every kind of entry, for the tests of both halves.

    use std::ffi::CString;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::path::Path;

    pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
        let p = CString::new(path.as_os_str().as_bytes()).expect("path");
        let n = CString::new(name).expect("name");
        // SAFETY: NUL-terminated strings and a buffer of the length passed.
        let r = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(
            r,
            0,
            "lsetxattr {name} on {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }

    pub fn remove_xattr(path: &Path, name: &str) {
        let p = CString::new(path.as_os_str().as_bytes()).expect("path");
        let n = CString::new(name).expect("name");
        // SAFETY: NUL-terminated strings.
        let r = unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) };
        assert_eq!(
            r,
            0,
            "lremovexattr {name} on {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }

    pub fn lchown(path: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("lchown");
    }

    pub fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    pub fn set_mtime(path: &Path, secs: i64, nsec: i64) {
        let t = nix::sys::time::TimeSpec::new(secs, nsec);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .expect("utimensat");
    }

    pub fn write(path: &Path, content: &[u8]) {
        fs::write(path, content).expect("write");
    }

    /// A tree with every kind of entry that a layer can hold.
    pub fn populate(root: &Path) {
        fs::create_dir_all(root.join("etc/conf.d")).expect("mkdir");
        fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
        fs::create_dir_all(root.join("var/lib/app/data")).expect("mkdir");
        fs::create_dir_all(root.join("gone/deep/er")).expect("mkdir");
        fs::create_dir_all(root.join("replaced-dir/sub")).expect("mkdir");
        fs::create_dir_all(root.join("opaque/old")).expect("mkdir");
        write(&root.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n");
        write(&root.join("etc/conf.d/app.conf"), b"key = value\n");
        write(&root.join("usr/bin/tool"), &vec![0x7f; 70_000]);
        lchown(&root.join("usr/bin/tool"), 0, 12);
        chmod(&root.join("usr/bin/tool"), 0o4755);
        write(&root.join("usr/bin/shared"), b"shared inode\n");
        fs::hard_link(
            root.join("usr/bin/shared"),
            root.join("usr/bin/shared-link"),
        )
        .expect("link");
        fs::hard_link(root.join("usr/bin/shared"), root.join("etc/shared-too")).expect("link");
        write(&root.join("var/lib/app/data/db"), b"records");
        lchown(&root.join("var/lib/app/data/db"), 1000, 1000);
        lchown(&root.join("var/lib/app/data"), 1000, 1000);
        chmod(&root.join("var/lib/app/data"), 0o2770);
        set_xattr(&root.join("var/lib/app/data/db"), "user.origin", b"lower");
        set_xattr(
            &root.join("var/lib/app/data/db"),
            "trusted.overlay",
            b"\x00\x01bin",
        );
        set_xattr(&root.join("var/lib/app"), "user.dir", b"yes");
        symlink("../etc/passwd", root.join("usr/passwd-link")).expect("symlink");
        symlink("/nonexistent/absolute", root.join("usr/dangling")).expect("symlink");
        lchown(&root.join("usr/dangling"), 7, 8);
        write(&root.join("gone/deep/er/file"), b"deleted later");
        write(&root.join("gone-file"), b"deleted later");
        write(&root.join("replaced-file"), b"becomes a directory");
        write(&root.join("replaced-dir/sub/x"), b"becomes a file");
        write(&root.join("opaque/old/f"), b"hidden by opaque");
        write(&root.join("opaque/kept-name"), b"lower version");
        let long = "l".repeat(60);
        let long_dir = root.join(&long).join(&long);
        fs::create_dir_all(&long_dir).expect("mkdir long");
        write(&long_dir.join(format!("{long}.txt")), b"long name");
        nix::unistd::mkfifo(
            &root.join("var/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .expect("mkfifo");
        nix::sys::stat::mknod(
            &root.join("var/null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .expect("mknod");
        chmod(&root.join("var/null"), 0o666);
        fs::create_dir_all(root.join("tmp")).expect("mkdir");
        chmod(&root.join("tmp"), 0o1777);
        set_mtime(&root.join("etc/passwd"), 1_600_000_000, 123_456_789);
        set_mtime(&root.join("usr/passwd-link"), 1_500_000_000, 5);
        set_mtime(&root.join("var/fifo"), 1_400_000_000, 0);
        // Directory times last, after their content.
        set_mtime(&root.join("etc"), 1_300_000_000, 999_999_999);
        set_mtime(&root.join("var/lib/app"), 1_200_000_000, 1);
    }
}
