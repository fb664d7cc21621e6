//! Extended attributes of a file, through a descriptor or a path whose
//! final component is not followed: listed and read for [`super::write_diff`]
//! and the tree comparison, listed, set and removed by [`super::apply_layer`].

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Extended attributes that are not part of layer content.
pub(crate) fn xattr_is_local(name: &[u8]) -> bool {
    name == b"security.selinux"
}

/// The extended attributes of `path` itself (symlinks are not followed),
/// sorted by name, without the host-local ones (see [`xattr_is_local`]).
/// A filesystem without xattr support has none.
pub(crate) fn read_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let file = Xattrs::Path(cpath);
    let mut out = Vec::new();
    for name in file.list()? {
        if xattr_is_local(&name) {
            continue;
        }
        let cname = CString::new(name.as_slice()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "xattr name contains a NUL byte")
        })?;
        let value = file.get(&cname)?;
        out.push((name, value));
    }
    out.sort();
    Ok(out)
}

/// The file whose xattrs are read or changed: an open descriptor, or a
/// path whose final component is not followed.
pub(crate) enum Xattrs<'a> {
    Fd(BorrowedFd<'a>),
    Path(CString),
}

/// Calls `call` with a buffer until the buffer holds the whole answer: a
/// call that fails with ERANGE is retried with a buffer four times larger.
/// `Ok(None)` when the call fails with `none` (the attribute or xattr
/// support is missing).
fn sized(
    len: usize,
    none: libc::c_int,
    mut call: impl FnMut(&mut [u8]) -> isize,
) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; len];
    loop {
        let n = call(&mut buf);
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Some(n) if n == none => return Ok(None),
            _ => return Err(e),
        }
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Xattrs<'_> {
    /// The names of the file's xattrs, in the order the filesystem lists
    /// them; none on a filesystem without xattr support.
    pub fn list(&self) -> io::Result<Vec<Vec<u8>>> {
        let names = sized(1024, libc::ENOTSUP, |buf| match self {
            // SAFETY: `buf` is writable for the length passed.
            Xattrs::Fd(fd) => unsafe {
                libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
            },
            // SAFETY: `p` is NUL-terminated, `buf` is writable for the length passed.
            Xattrs::Path(p) => unsafe {
                libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            },
        })?;
        Ok(names
            .unwrap_or_default()
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(<[u8]>::to_vec)
            .collect())
    }

    /// The value of xattr `name`; empty if it is gone (removed since it was
    /// listed).
    pub fn get(&self, name: &CStr) -> io::Result<Vec<u8>> {
        let value = sized(256, libc::ENODATA, |buf| match self {
            // SAFETY: `name` is NUL-terminated, `buf` is writable for the
            // length passed.
            Xattrs::Fd(fd) => unsafe {
                libc::fgetxattr(
                    fd.as_raw_fd(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            },
            // SAFETY: both strings are NUL-terminated and `buf` is writable
            // for the length passed.
            Xattrs::Path(p) => unsafe {
                libc::lgetxattr(
                    p.as_ptr(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            },
        })?;
        Ok(value.unwrap_or_default())
    }

    pub fn set(&self, name: &CStr, value: &[u8]) -> io::Result<()> {
        check(match self {
            // SAFETY: `name` is NUL-terminated, `value` readable for its length.
            Xattrs::Fd(fd) => unsafe {
                libc::fsetxattr(
                    fd.as_raw_fd(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            },
            // SAFETY: as above, and `p` is NUL-terminated.
            Xattrs::Path(p) => unsafe {
                libc::lsetxattr(
                    p.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            },
        })
    }

    /// Removes xattr `name`; one that is not there is not an error.
    pub fn remove(&self, name: &CStr) -> io::Result<()> {
        let removed = check(match self {
            // SAFETY: `name` is NUL-terminated.
            Xattrs::Fd(fd) => unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) },
            // SAFETY: both strings are NUL-terminated.
            Xattrs::Path(p) => unsafe { libc::lremovexattr(p.as_ptr(), name.as_ptr()) },
        });
        match removed {
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
            r => r,
        }
    }
}
