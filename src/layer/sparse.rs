//! Zeros as holes: the granule in which a layer's all-zero content takes
//! no blocks, both when a layer tar is applied (its zeros are never
//! written) and after someone else wrote a layer ([`punch_zeros`]: its
//! zeros written as data are punched out in place).

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};
use nix::sys::stat::futimens;
use nix::sys::time::TimeSpec;
use nix::unistd::{Whence, lseek};

use crate::error::{Error, Result};

/// The unit in which zeros become holes: the layers' filesystems' block
/// size (ext4 and xfs as thinlayer makes them), so a hole frees a whole
/// filesystem block and a block with any data is kept as it is.
pub(crate) const HOLE_GRANULE: usize = 4096;

/// Bytes read from a file at a time: a whole number of granules, so every
/// granule of a read is aligned to the file's offsets.
const READ_BUFFER: usize = 32 * HOLE_GRANULE;

/// The runs of [`HOLE_GRANULE`]s of `buf` (the last may be shorter) that
/// are all zeros (`zeros`) or hold data (`!zeros`), neighbours joined.
fn granule_runs(buf: &[u8], zeros: bool) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for (i, granule) in buf.chunks(HOLE_GRANULE).enumerate() {
        if granule.iter().all(|&b| b == 0) != zeros {
            continue;
        }
        let (start, end) = (i * HOLE_GRANULE, i * HOLE_GRANULE + granule.len());
        match runs.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => runs.push(start..end),
        }
    }
    runs
}

/// The runs of `buf` holding data, each with its offset in `buf`: every
/// [`HOLE_GRANULE`] (the last may be shorter) that is not all zeros, with
/// neighbours joined.
pub(crate) fn data_runs(buf: &[u8]) -> Vec<(&[u8], usize)> {
    granule_runs(buf, false)
        .into_iter()
        .map(|r| (&buf[r.clone()], r.start))
        .collect()
}

/// What [`punch_zeros`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PunchStats {
    /// Regular files read: changed since the time given, holding blocks.
    pub files: u64,
    /// Bytes of their data read.
    pub read: u64,
    /// Bytes of all-zero granules made holes.
    pub punched: u64,
    /// Files that could not be opened for writing or punched (left as they
    /// were; logged).
    pub skipped: u64,
}

/// Makes every all-zero 4 KiB granule (the layers' filesystems' block
/// size, aligned to it) a hole in the regular files under `root` (one
/// filesystem, not crossing into others) whose status changed at or after
/// `since_ns` (nanoseconds since the epoch): what a layer holds after a
/// client wrote it out as data, zeros included (containerd's applier
/// writes a tar's sparse files that way). A file's content, length, access
/// and modification times stay as they were; only its blocks go.
///
/// A file that cannot be opened for writing or punched is left as it is
/// and counted in [`PunchStats::skipped`]. Errors: the tree cannot be read,
/// or a punched file's times cannot be put back (its content is intact,
/// but its modification time is not the one it had).
pub fn punch_zeros(root: &Path, since_ns: u64) -> Result<PunchStats> {
    let top = std::fs::symlink_metadata(root).map_err(|e| Error::io("stat", root, e))?;
    let mut stats = PunchStats::default();
    let mut buf = vec![0u8; READ_BUFFER];
    let mut dirs: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("read directory", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(|e| Error::io("stat", &path, e))?;
            if meta.dev() != top.dev() {
                continue;
            }
            if meta.is_dir() {
                dirs.push(path);
            } else if meta.is_file() && meta.blocks() > 0 && changed_ns(&meta) >= since_ns {
                stats.files += 1;
                punch_file(&path, &meta, &mut buf, &mut stats)?;
            }
        }
    }
    Ok(stats)
}

/// When `meta`'s inode last changed, in nanoseconds since the epoch.
fn changed_ns(meta: &Metadata) -> u64 {
    u64::try_from(meta.ctime())
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(meta.ctime_nsec()).unwrap_or(0))
}

/// Punches the all-zero granules of the data of one file (`meta` is its
/// status before), reading only what the filesystem holds as data.
fn punch_file(path: &Path, meta: &Metadata, buf: &mut [u8], stats: &mut PunchStats) -> Result<()> {
    let skip = |stats: &mut PunchStats, what: &str, e: &dyn std::fmt::Display| {
        tracing::debug!(path = %path.display(), error = %e, "cannot {what}: its zeros stay as data");
        stats.skipped += 1;
    };
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        // Reading to look for zeros is not an access of the file's.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOATIME)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            skip(stats, "open", &e);
            return Ok(());
        }
    };
    let size = meta.len();
    let mut punched = 0u64;
    let mut pos = 0u64;
    while pos < size {
        let Some(extent) =
            next_data(&file, pos, size).map_err(|e| Error::io("seek in", path, e))?
        else {
            break;
        };
        if let Err(e) = punch_extent(&file, extent.clone(), buf, &mut stats.read, &mut punched) {
            skip(stats, "punch", &e);
            break;
        }
        pos = extent.end;
    }
    // Punching moved the modification time, after a failure too; the
    // layer's content is the file's times as much as its bytes.
    if punched > 0 {
        stats.punched += punched;
        let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
        let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
        futimens(&file, &atime, &mtime)
            .map_err(|e| Error::io("restore the times of", path, io::Error::from(e)))?;
    }
    Ok(())
}

/// The next extent of `file` at or after `pos` that the filesystem holds as
/// data, its start aligned down to a granule, its end at most `size`.
fn next_data(file: &File, pos: u64, size: u64) -> io::Result<Option<Range<u64>>> {
    let at = |whence, from: u64| -> io::Result<Option<u64>> {
        let from = i64::try_from(from).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        match lseek(file, from, whence) {
            Ok(o) => Ok(Some(o as u64)),
            // No data past `from`.
            Err(Errno::ENXIO) => Ok(None),
            Err(e) => Err(e.into()),
        }
    };
    let Some(start) = at(Whence::SeekData, pos)? else {
        return Ok(None);
    };
    let end = at(Whence::SeekHole, start)?.unwrap_or(size).min(size);
    let start = start - start % HOLE_GRANULE as u64;
    Ok((start < end).then_some(start..end))
}

/// Punches the all-zero granules of `extent` of `file`, counting the bytes
/// read and punched as it goes. A last granule shorter than a whole one (at
/// the end of the file) is punched whole: past the end is nothing to keep.
fn punch_extent(
    file: &File,
    extent: Range<u64>,
    buf: &mut [u8],
    read: &mut u64,
    punched: &mut u64,
) -> io::Result<()> {
    let mut at = extent.start;
    while at < extent.end {
        let n = buf.len().min((extent.end - at) as usize);
        file.read_exact_at(&mut buf[..n], at)?;
        *read += n as u64;
        for run in granule_runs(&buf[..n], true) {
            let len = run.len().next_multiple_of(HOLE_GRANULE);
            let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            let offset = (at + run.start as u64) as i64;
            fallocate(file, flags, offset, len as i64).map_err(io::Error::from)?;
            *punched += run.len() as u64;
        }
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::testutil::TempDir;

    fn zero_runs(buf: &[u8]) -> Vec<Range<usize>> {
        granule_runs(buf, true)
    }

    #[test]
    fn runs_join_neighbours() {
        let g = HOLE_GRANULE;
        let mut buf = vec![0u8; 6 * g + 7];
        buf[1] = 1;
        buf[g] = 1;
        buf[4 * g] = 1;
        buf[6 * g + 6] = 1;
        let data: Vec<(usize, usize)> = data_runs(&buf)
            .into_iter()
            .map(|(d, at)| (at, at + d.len()))
            .collect();
        assert_eq!(data, [(0, 2 * g), (4 * g, 5 * g), (6 * g, 6 * g + 7)]);
        assert_eq!(zero_runs(&buf), [2 * g..4 * g, 5 * g..6 * g]);
        assert!(data_runs(&vec![0u8; 3 * g]).is_empty());
        assert_eq!(
            zero_runs(&vec![0u8; 3 * g + 1]),
            vec![Range {
                start: 0,
                end: 3 * g + 1
            }]
        );
    }

    /// Writes `content` as data, every byte of it, and sets its times.
    fn write_as_data(path: &Path, content: &[u8], mtime: i64) {
        fs::write(path, content).unwrap();
        let f = File::open(path).unwrap();
        f.sync_all().unwrap();
        let t = TimeSpec::new(mtime, 123_456_789);
        futimens(&f, &t, &t).unwrap();
    }

    fn bytes_held(path: &Path) -> u64 {
        fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn zeros_written_as_data_become_holes_and_nothing_else_changes() {
        let t = TempDir::new("punch-zeros");
        let g = HOLE_GRANULE;
        // Data, zeros past the read buffer, data across a granule boundary,
        // zeros to a short last granule.
        let mut mixed = vec![0u8; 2 * READ_BUFFER + 3 * g + 100];
        mixed[..10].fill(b'a');
        let cross = READ_BUFFER + 5 * g;
        mixed[cross - 3..cross + 3].fill(b'b');
        fs::create_dir_all(t.path().join("d/e")).unwrap();
        let files = [
            ("mixed", mixed.clone()),
            ("d/e/zeros", vec![0u8; 1 << 20]),
            ("d/short", vec![0u8; 3]),
            ("d/data", vec![7u8; 3 * g]),
        ];
        for (name, content) in &files {
            write_as_data(&t.path().join(name), content, 1_000_000);
        }
        fs::write(t.path().join("empty"), b"").unwrap();
        std::os::unix::fs::symlink("mixed", t.path().join("link")).unwrap();
        let before = bytes_held(&t.path().join("d/e/zeros"));
        assert!(
            before >= 1 << 20,
            "the host's filesystem kept zeros as data"
        );
        let stats = punch_zeros(t.path(), 0).expect("punch");
        for (name, content) in &files {
            let path = t.path().join(name);
            // Times first: reading moves the access time.
            let m = fs::metadata(&path).unwrap();
            assert_eq!(
                (m.mtime(), m.mtime_nsec()),
                (1_000_000, 123_456_789),
                "{name}"
            );
            assert_eq!(
                (m.atime(), m.atime_nsec()),
                (1_000_000, 123_456_789),
                "{name}"
            );
            assert_eq!(&fs::read(&path).unwrap(), content, "{name}");
        }
        assert_eq!(bytes_held(&t.path().join("d/e/zeros")), 0);
        assert_eq!(bytes_held(&t.path().join("d/short")), 0);
        assert_eq!(bytes_held(&t.path().join("d/data")), 3 * g as u64);
        // Granules 0, and the two across the boundary, hold data.
        assert_eq!(bytes_held(&t.path().join("mixed")), 3 * g as u64);
        assert_eq!(stats.files, 4);
        assert_eq!(stats.skipped, 0);
        let total: u64 = files.iter().map(|(_, c)| c.len() as u64).sum();
        assert_eq!(stats.read, total);
        assert_eq!(stats.punched, total - 6 * g as u64);
    }

    #[test]
    fn files_unchanged_since_are_not_read() {
        let t = TempDir::new("punch-since");
        let old = t.path().join("old");
        write_as_data(&old, &vec![0u8; 64 * 1024], 1_000_000);
        let since = changed_ns(&fs::metadata(&old).unwrap()) + 1;
        let stats = punch_zeros(t.path(), since).expect("punch");
        assert_eq!(stats, PunchStats::default());
        assert_eq!(bytes_held(&old), 64 * 1024);
    }

    #[test]
    fn a_missing_root_is_an_error() {
        let t = TempDir::new("punch-missing");
        let err = punch_zeros(&t.path().join("nothing"), 0).expect_err("no root");
        assert!(matches!(err, Error::Io { op: "stat", .. }), "{err}");
    }
}
