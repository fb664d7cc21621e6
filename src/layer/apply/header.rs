//! What an archive entry says, checked and normalised before anything is
//! written: its name as components below the root, its owner, mode, times
//! and xattrs, and a device's numbers.

use std::ffi::CString;
use std::io::{self, Read};

use nix::sys::stat::{FileStat, SFlag, makedev};
use nix::sys::time::TimeSpec;

use super::unsafe_entry;
use crate::error::{Error, Result};
use crate::layer::xattr::xattr_is_local;

/// A path below the root: its components, never empty, `.` or `..`.
pub(super) type Rel = Vec<Vec<u8>>;

pub(super) fn rel_key(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

/// Splits an archive name into components; refuses absolute names and `..`.
pub(super) fn normalize(raw: &[u8]) -> std::result::Result<Rel, &'static str> {
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

pub(super) fn cstr(bytes: &[u8]) -> CString {
    // Components and link targets are checked for NUL bytes before use; tar
    // header fields cannot hold them.
    CString::new(bytes).unwrap_or_default()
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Times {
    pub atime: TimeSpec,
    pub mtime: TimeSpec,
}

impl Times {
    pub fn of(st: &FileStat) -> Times {
        Times {
            atime: TimeSpec::new(st.st_atime, st.st_atime_nsec),
            mtime: TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
        }
    }
}

/// Metadata of an entry, from its header and PAX records.
pub(super) struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub times: Times,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    /// Reads the metadata of `entry` (named `name` in errors).
    pub fn of<R: Read>(name: &str, entry: &mut tar::Entry<'_, R>) -> Result<Meta> {
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
}

/// The file type and device number of a fifo, character or block device
/// entry of type `etype`.
pub(super) fn node_kind(
    name: &str,
    h: &tar::Header,
    etype: tar::EntryType,
) -> Result<(SFlag, u64)> {
    if etype == tar::EntryType::Fifo {
        return Ok((SFlag::S_IFIFO, 0));
    }
    let major = h
        .device_major()
        .map_err(|e| unsafe_entry(name, format!("device major: {e}")))?
        .unwrap_or(0);
    let minor = h
        .device_minor()
        .map_err(|e| unsafe_entry(name, format!("device minor: {e}")))?
        .unwrap_or(0);
    let kind = if etype == tar::EntryType::Char {
        SFlag::S_IFCHR
    } else {
        SFlag::S_IFBLK
    };
    Ok((kind, makedev(u64::from(major), u64::from(minor))))
}

/// Parses a PAX time: `[-]SECONDS[.FRACTION]`.
pub(super) fn parse_pax_time(v: &[u8]) -> Option<TimeSpec> {
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
