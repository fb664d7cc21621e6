//! Where an archive's files come from: a directory, or the members of an
//! uncompressed tar indexed by offset and read with positioned reads.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tar::EntryType;

use super::Compression;
use crate::error::{Error, Result};

/// JSON documents (index, manifests, configs) larger than this are refused
/// rather than read into memory.
pub(crate) const MAX_JSON: u64 = 32 << 20;

/// How many symlink or hardlink hops a tar member name may take.
const MAX_LINK_HOPS: usize = 16;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Member {
    pub offset: u64,
    pub size: u64,
}

pub(crate) enum Source {
    Dir {
        root: PathBuf,
    },
    Tar {
        path: PathBuf,
        file: Arc<File>,
        members: HashMap<String, Member>,
    },
}

/// A bounded, positioned view of one file's bytes; a short file is an error,
/// never an early end.
pub(crate) struct BlobReader {
    file: Arc<File>,
    pos: u64,
    end: u64,
    size: u64,
}

impl BlobReader {
    pub fn new(file: Arc<File>, offset: u64, size: u64) -> BlobReader {
        BlobReader {
            file,
            pos: offset,
            end: offset.saturating_add(size),
            size,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = self.file.read_at(&mut buf[..want], self.pos)?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "truncated: the file ends after {} of {} bytes",
                    self.size - left,
                    self.size
                ),
            ));
        }
        self.pos += got as u64;
        Ok(got)
    }
}

/// Splits a member name into clean components: no empty or `.` parts, and
/// `..` refused.
pub(crate) fn clean_member(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

/// Resolves `target` of a symlink at `link` (both archive paths).
fn resolve_symlink(link: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return clean_member(target);
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for p in target.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

fn archive_err(path: &Path, detail: impl Into<String>) -> Error {
    Error::Archive {
        what: path.display().to_string(),
        detail: detail.into(),
    }
}

impl Source {
    pub fn dir(root: &Path) -> Source {
        Source::Dir {
            root: root.to_path_buf(),
        }
    }

    /// Indexes an uncompressed tar file.
    pub fn tar(path: &Path) -> Result<Source> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        let mut head = [0u8; 6];
        let n = file
            .read_at(&mut head, 0)
            .map_err(|e| Error::io("read", path, e))?;
        let head = &head[..n];
        let compressed = match Compression::from_magic(head) {
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
            Compression::None if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) => Some("xz"),
            Compression::None if head.starts_with(b"BZh") => Some("bzip2"),
            Compression::None => None,
        };
        if let Some(kind) = compressed {
            return Err(archive_err(
                path,
                format!(
                    "the archive is {kind}-compressed; decompress it first (only uncompressed \
                     tars and directories are read)"
                ),
            ));
        }
        if len == 0 {
            return Err(archive_err(path, "empty file, not a tar archive"));
        }
        if len < 512 {
            return Err(archive_err(
                path,
                format!("not a tar archive: {len} bytes is shorter than one tar header"),
            ));
        }

        let mut ar = tar::Archive::new(&file);
        let entries = ar
            .entries_with_seek()
            .map_err(|e| archive_err(path, format!("not a tar archive: {e}")))?;
        let mut files: HashMap<String, Member> = HashMap::new();
        let mut links: HashMap<String, String> = HashMap::new();
        let mut end_of_data = 0u64;
        for entry in entries {
            let entry = entry.map_err(|e| archive_err(path, format!("not a tar archive: {e}")))?;
            let size = entry.size();
            let offset = entry.raw_file_position();
            let kind = entry.header().entry_type();
            let data_end = offset.saturating_add(size);
            if data_end > len {
                return Err(archive_err(
                    path,
                    format!(
                        "truncated: member {:?} needs bytes up to {data_end} but the file has {len}",
                        String::from_utf8_lossy(&entry.path_bytes())
                    ),
                ));
            }
            end_of_data = data_end.div_ceil(512) * 512;
            let Ok(raw) = std::str::from_utf8(&entry.path_bytes()).map(str::to_string) else {
                continue;
            };
            let Some(name) = clean_member(&raw) else {
                continue;
            };
            match kind {
                EntryType::Regular | EntryType::Continuous => {
                    links.remove(&name);
                    files.insert(name, Member { offset, size });
                }
                EntryType::Symlink | EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .and_then(|t| std::str::from_utf8(&t).ok().map(str::to_string));
                    let resolved = target.and_then(|t| {
                        if kind == EntryType::Link {
                            clean_member(&t)
                        } else {
                            resolve_symlink(&name, &t)
                        }
                    });
                    files.remove(&name);
                    if let Some(r) = resolved {
                        links.insert(name, r);
                    }
                }
                _ => {}
            }
        }
        if files.is_empty() && links.is_empty() {
            return Err(archive_err(path, "the tar archive holds no files"));
        }
        // Writers end a tar with zero blocks; a file that stops right after
        // the last member's data was cut short.
        let mut tail = [0u8; 512];
        let tail_ok = len >= end_of_data + 512
            && file
                .read_at(&mut tail, end_of_data)
                .is_ok_and(|n| n == 512 && tail.iter().all(|&b| b == 0));
        if !tail_ok {
            return Err(archive_err(
                path,
                "truncated: the tar has no end-of-archive marker after its last member",
            ));
        }
        for (name, target) in &links {
            let mut t = target.clone();
            for _ in 0..MAX_LINK_HOPS {
                if let Some(m) = files.get(&t) {
                    let m = *m;
                    files.insert(name.clone(), m);
                    break;
                }
                match links.get(&t) {
                    Some(next) => t = next.clone(),
                    None => break,
                }
            }
        }
        Ok(Source::Tar {
            path: path.to_path_buf(),
            file: Arc::new(file),
            members: files,
        })
    }

    fn archive_path(&self) -> &Path {
        match self {
            Source::Dir { root } => root,
            Source::Tar { path, .. } => path,
        }
    }

    pub fn err(&self, detail: impl Into<String>) -> Error {
        archive_err(self.archive_path(), detail)
    }

    /// Whether a member exists (as a regular file).
    pub fn exists(&self, member: &str) -> bool {
        let Some(name) = clean_member(member) else {
            return false;
        };
        match self {
            Source::Dir { root } => root.join(name).is_file(),
            Source::Tar { members, .. } => members.contains_key(&name),
        }
    }

    /// Opens a member; `what_for` says who names it, for the missing-file
    /// message.
    pub fn open(&self, member: &str, what_for: &str) -> Result<BlobReader> {
        let Some(name) = clean_member(member) else {
            return Err(self.err(format!(
                "{member:?} (named by {what_for}) is not a relative path inside the archive"
            )));
        };
        let missing = || self.err(format!("{name} is missing (named by {what_for})"));
        match self {
            Source::Dir { root } => {
                let p = root.join(&name);
                let file = match File::open(&p) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
                    Err(e) => return Err(Error::io("open", p, e)),
                };
                let meta = file.metadata().map_err(|e| Error::io("stat", &p, e))?;
                if !meta.is_file() {
                    return Err(self.err(format!("{name} is not a regular file")));
                }
                Ok(BlobReader::new(Arc::new(file), 0, meta.len()))
            }
            Source::Tar { file, members, .. } => {
                let m = members.get(&name).ok_or_else(missing)?;
                Ok(BlobReader::new(file.clone(), m.offset, m.size))
            }
        }
    }

    /// The size of a member.
    pub fn size(&self, member: &str, what_for: &str) -> Result<u64> {
        Ok(self.open(member, what_for)?.size())
    }

    /// Reads a whole member of at most `max` bytes.
    pub fn read(&self, member: &str, what_for: &str, max: u64) -> Result<Vec<u8>> {
        let mut r = self.open(member, what_for)?;
        if r.size() > max {
            return Err(self.err(format!(
                "{member} is {} bytes, more than the {max} bytes allowed for it",
                r.size()
            )));
        }
        let mut buf = Vec::with_capacity(usize::try_from(r.size()).unwrap_or(0));
        r.read_to_end(&mut buf)
            .map_err(|e| self.err(format!("{member}: {e}")))?;
        Ok(buf)
    }

    /// The first bytes of a member, for magic numbers.
    pub fn head(&self, member: &str, what_for: &str) -> Result<Vec<u8>> {
        let r = self.open(member, what_for)?;
        let mut buf = Vec::new();
        r.take(8)
            .read_to_end(&mut buf)
            .map_err(|e| self.err(format!("{member}: {e}")))?;
        Ok(buf)
    }
}

/// Finds a member of an uncompressed tar file: its data offset and size.
/// Used by the image builder, a test aid.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn tar_member(path: &Path, member: &str) -> Result<Member> {
    let src = Source::tar(path)?;
    let found = match (&src, clean_member(member)) {
        (Source::Tar { members, .. }, Some(name)) => members.get(&name).copied(),
        _ => None,
    };
    found.ok_or_else(|| src.err(format!("{member} is missing")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_cleaned() {
        assert_eq!(clean_member("./a//b/").as_deref(), Some("a/b"));
        assert_eq!(clean_member("/a").as_deref(), Some("a"));
        assert_eq!(clean_member("a/../b"), None);
        assert_eq!(clean_member("./"), None);
        assert_eq!(
            resolve_symlink("x/layer.tar", "../y/layer.tar").as_deref(),
            Some("y/layer.tar")
        );
        assert_eq!(resolve_symlink("layer.tar", "../y"), None);
    }
}
