//! Test aid: builds layer tars and small image archives in every format the
//! reader accepts, and damages them in controlled ways.
//!
//! This is for tests (unit tests here and the integration tests); nothing in
//! the driver uses it. Builder methods panic on misuse (a path the tar
//! format cannot hold), as test helpers do; the archive writers return
//! errors for I/O failures.
//!
//! Ways to make a bad archive:
//! - [`Faults`] with [`write_oci_archive_with`] / [`write_docker_save_with`]:
//!   a wrong diff id in the config, one diff id too many, a wrong size or
//!   media type in a layer descriptor, a layer blob left out;
//! - [`flip_byte`]: flips a byte inside one member (a layer blob, the
//!   config...) of an archive already written, keeping every index as it is;
//! - [`overwrite_bytes`]: writes chosen bytes inside a member;
//! - truncating the file with `std::fs::File::set_len`.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde_json::json;
use tar::{EntryType, Header};

use super::archive::ImageArchive;
use super::digest::chain_ids;
use super::export::{LayerDesc, Staging, oci_config};
use super::source::{clean_member, tar_member};
use super::{Compression, LayerRef};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// The mtime entries get unless a test gives one.
pub const DEFAULT_MTIME: u64 = 1_700_000_000;

/// Builds an uncompressed layer tar in memory.
///
/// ```
/// use thinlayer::image::build::LayerBuilder;
///
/// let mut b = LayerBuilder::new();
/// b.dir("etc", 0o755).file("etc/hosts", b"127.0.0.1 localhost\n", 0o644);
/// b.xattr("user.note", b"hi").file("etc/motd", b"hello", 0o644);
/// b.whiteout("etc/old").opaque("var/cache");
/// let tar: Vec<u8> = b.finish();
/// assert_eq!(tar.len() % 512, 0, "a tar is whole 512-byte records");
/// ```
pub struct LayerBuilder {
    inner: tar::Builder<Vec<u8>>,
    pending: Vec<(String, Vec<u8>)>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `len` counts the whole
/// record including its own digits.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    loop {
        let next = base + len.to_string().len();
        if next == len {
            break;
        }
        len = next;
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(DEFAULT_MTIME);
    h.set_size(size);
    h
}

fn poke(field: &mut [u8], bytes: &[u8]) {
    field.fill(0);
    field[..bytes.len()].copy_from_slice(bytes);
}

impl LayerBuilder {
    pub fn new() -> Self {
        LayerBuilder {
            inner: tar::Builder::new(Vec::new()),
            pending: Vec::new(),
        }
    }

    /// Writes queued PAX records as an extended header for the next entry.
    fn flush_pax(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut body = Vec::new();
        for (k, v) in self.pending.drain(..) {
            body.extend(pax_record(&k, &v));
        }
        let mut h = header(EntryType::XHeader, 0o644, body.len() as u64);
        poke(&mut h.as_old_mut().name, b"PaxHeaders/entry");
        h.set_cksum();
        self.inner
            .append(&h, body.as_slice())
            .expect("append to an in-memory tar");
    }

    fn append(&mut self, mut h: Header, path: &str, data: &[u8]) -> &mut Self {
        self.flush_pax();
        self.inner
            .append_data(&mut h, path, data)
            .unwrap_or_else(|e| panic!("layer builder: entry {path:?}: {e}"));
        self
    }

    fn link(&mut self, kind: EntryType, path: &str, target: &str) -> &mut Self {
        self.flush_pax();
        let mut h = header(kind, 0o777, 0);
        self.inner
            .append_link(&mut h, path, target)
            .unwrap_or_else(|e| panic!("layer builder: link {path:?} -> {target:?}: {e}"));
        self
    }

    /// A directory (root owned, default mtime).
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let p = format!("{}/", path.trim_end_matches('/'));
        self.append(header(EntryType::Directory, mode, 0), &p, &[])
    }

    /// A regular file (root owned, default mtime).
    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
        self.file_owned(path, data, mode, 0, 0, DEFAULT_MTIME)
    }

    /// A regular file with owner and mtime.
    pub fn file_owned(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> &mut Self {
        let mut h = header(EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        self.append(h, path, data)
    }

    /// A symlink; the target is stored as given (absolute and `..` allowed).
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.link(EntryType::Symlink, path, target)
    }

    /// A hard link to `target`, a path inside the layer.
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.link(EntryType::Link, path, target)
    }

    /// A named pipe.
    pub fn fifo(&mut self, path: &str) -> &mut Self {
        self.append(header(EntryType::Fifo, 0o644, 0), path, &[])
    }

    /// A character device.
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        self.device(EntryType::Char, path, major, minor)
    }

    fn device(&mut self, kind: EntryType, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = header(kind, 0o600, 0);
        h.set_device_major(major)
            .expect("gnu header has device fields");
        h.set_device_minor(minor)
            .expect("gnu header has device fields");
        self.append(h, path, &[])
    }

    /// A whiteout deleting `path` from the layers below: `DIR/.wh.NAME`.
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let path = path.trim_end_matches('/');
        let p = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        self.append(header(EntryType::Regular, 0o644, 0), &p, &[])
    }

    /// An opaque-directory marker: `DIR/.wh..wh..opq`.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        let dir = dir.trim_end_matches('/');
        let p = if dir.is_empty() {
            ".wh..wh..opq".to_string()
        } else {
            format!("{dir}/.wh..wh..opq")
        };
        self.append(header(EntryType::Regular, 0o644, 0), &p, &[])
    }

    /// Queues an extended attribute (PAX `SCHILY.xattr.NAME`) for the next
    /// entry written.
    pub fn xattr(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.pending
            .push((format!("SCHILY.xattr.{name}"), value.to_vec()));
        self
    }

    /// Queues any PAX record (e.g. `path`, `mtime`, `uid`) for the next entry.
    pub fn pax(&mut self, key: &str, value: &[u8]) -> &mut Self {
        self.pending.push((key.to_string(), value.to_vec()));
        self
    }

    /// Writes an entry with the name and link name bytes exactly as given,
    /// including what `tar::Builder` refuses (absolute paths, `..`, empty
    /// names). Names over 100 bytes go in GNU long-name entries.
    pub fn raw_entry(
        &mut self,
        name: &[u8],
        kind: EntryType,
        mode: u32,
        data: &[u8],
        link: Option<&[u8]>,
    ) -> &mut Self {
        self.flush_pax();
        let mut h = header(kind, mode, data.len() as u64);
        if name.len() > 100 {
            self.gnu_long(EntryType::GNULongName, name);
        }
        poke(&mut h.as_old_mut().name, &name[..name.len().min(100)]);
        if let Some(link) = link {
            if link.len() > 100 {
                self.gnu_long(EntryType::GNULongLink, link);
            }
            poke(&mut h.as_old_mut().linkname, &link[..link.len().min(100)]);
        }
        h.set_cksum();
        self.inner
            .append(&h, data)
            .expect("append to an in-memory tar");
        self
    }

    fn gnu_long(&mut self, kind: EntryType, value: &[u8]) {
        let mut body = value.to_vec();
        body.push(0);
        let mut h = header(kind, 0o644, body.len() as u64);
        poke(&mut h.as_old_mut().name, b"././@LongLink");
        h.set_cksum();
        self.inner
            .append(&h, body.as_slice())
            .expect("append to an in-memory tar");
    }

    /// The tar, with its end-of-archive blocks. Queued PAX records that no
    /// entry followed are dropped.
    pub fn finish(self) -> Vec<u8> {
        self.inner.into_inner().expect("finish an in-memory tar")
    }
}

/// Compresses `data` as a layer blob.
pub fn compress(data: &[u8], c: Compression) -> Result<Vec<u8>> {
    let fail = |e: std::io::Error| Error::Archive {
        what: "layer blob".into(),
        detail: format!("{c} compression failed: {e}"),
    };
    match c {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).map_err(fail)?;
            e.finish().map_err(fail)
        }
        Compression::Zstd => zstd::encode_all(data, 3).map_err(fail),
    }
}

/// Deliberate defects for archives written by [`write_oci_archive_with`]
/// and [`write_docker_save_with`]. Layer numbers count from 0 at the bottom.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Put a wrong diff id (the digest of other bytes) for this layer in the config.
    pub wrong_diff_id: Option<usize>,
    /// Put one diff id more in the config than there are layers.
    pub extra_diff_id: bool,
    /// Give this layer's descriptor a size one more than its blob (OCI only).
    pub wrong_layer_size: Option<usize>,
    /// Use this media type for every layer descriptor (OCI only).
    pub layer_media_type: Option<String>,
    /// Leave this layer's blob out of the archive.
    pub missing_layer: Option<usize>,
}

fn faulty_diff_ids(layers: &[Vec<u8>], faults: &Faults) -> Vec<Digest> {
    let mut ids: Vec<Digest> = layers.iter().map(|l| Digest::of_bytes(l)).collect();
    if let Some(n) = faults.wrong_diff_id
        && let Some(d) = ids.get_mut(n)
    {
        *d = Digest::of_bytes(b"not the content of this layer");
    }
    if faults.extra_diff_id {
        ids.push(Digest::of_bytes(b"a layer that is not there"));
    }
    ids
}

/// The image configuration's `config` (its process) of the archives
/// written here, unless told otherwise: `/bin/sh` with a `PATH`.
fn default_process() -> serde_json::Value {
    json!({ "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"] })
}

fn base_config(layers: usize) -> serde_json::Value {
    base_config_running(layers, default_process())
}

/// [`base_config`] whose `config` (the process) is `process`.
fn base_config_running(layers: usize, process: serde_json::Value) -> serde_json::Value {
    let history: Vec<serde_json::Value> = (0..layers)
        .map(|n| {
            json!({
                "created": "2024-01-01T00:00:00Z",
                "created_by": format!("layer {}", n + 1),
            })
        })
        .collect();
    json!({
        "created": "2024-01-01T00:00:00Z",
        "config": process,
        "history": history,
    })
}

/// Writes a one-image OCI image layout at `dest` (a tar file when `as_tar`,
/// otherwise a directory) with the layer tars compressed as `compression`.
pub fn write_oci_archive(
    dest: &Path,
    name: &str,
    layers: &[Vec<u8>],
    compression: Compression,
    as_tar: bool,
) -> Result<()> {
    write_oci_archive_with(dest, name, layers, compression, as_tar, &Faults::default())
}

/// [`write_oci_archive`] with deliberate defects.
pub fn write_oci_archive_with(
    dest: &Path,
    name: &str,
    layers: &[Vec<u8>],
    compression: Compression,
    as_tar: bool,
    faults: &Faults,
) -> Result<()> {
    let st = Staging::new(dest, as_tar)?;
    let mut descs = Vec::new();
    for (n, l) in layers.iter().enumerate() {
        let blob = compress(l, compression)?;
        let (digest, size) = if faults.missing_layer == Some(n) {
            (Digest::of_bytes(&blob), blob.len() as u64)
        } else {
            st.put_blob(&blob)?
        };
        descs.push(LayerDesc {
            media_type: faults
                .layer_media_type
                .clone()
                .unwrap_or_else(|| compression.oci_media_type().to_string()),
            digest,
            size: size + u64::from(faults.wrong_layer_size == Some(n)),
        });
    }
    let config = oci_config(
        Some(&base_config(layers.len())),
        &faulty_diff_ids(layers, faults),
    )?;
    let entry = st.put_image(name, &config, &descs)?;
    st.put_index(&[entry])?;
    st.commit()
}

/// Writes a `docker save` archive (the format before Docker 25: plain
/// `<id>/layer.tar` members, `<config hex>.json`, `manifest.json`,
/// `repositories`): a tar file when `dest` ends in `.tar`, otherwise the
/// same tree as a directory.
pub fn write_docker_save(dest: &Path, repo_tag: &str, layers: &[Vec<u8>]) -> Result<()> {
    write_docker_save_with(dest, repo_tag, layers, &Faults::default())
}

/// [`write_docker_save`] of an image that runs `process` (the image
/// configuration's `config` object: `Entrypoint`, `Cmd`, `Env`,
/// `WorkingDir`, `Labels`...) instead of `/bin/sh`: for a container that
/// must stay up with no command given, such as a pod's sandbox.
pub fn write_docker_save_running(
    dest: &Path,
    repo_tag: &str,
    layers: &[Vec<u8>],
    process: &serde_json::Value,
) -> Result<()> {
    let config = base_config_running(layers.len(), process.clone());
    docker_save(dest, repo_tag, layers, &Faults::default(), &config)
}

/// [`write_docker_save`] with deliberate defects (`wrong_diff_id`,
/// `extra_diff_id`, `missing_layer`).
pub fn write_docker_save_with(
    dest: &Path,
    repo_tag: &str,
    layers: &[Vec<u8>],
    faults: &Faults,
) -> Result<()> {
    docker_save(dest, repo_tag, layers, faults, &base_config(layers.len()))
}

/// A `docker save` archive whose image configuration is `base` with the
/// layers' diff ids.
fn docker_save(
    dest: &Path,
    repo_tag: &str,
    layers: &[Vec<u8>],
    faults: &Faults,
    base: &serde_json::Value,
) -> Result<()> {
    let as_tar = dest.extension().is_some_and(|e| e == "tar");
    let st = Staging::new(dest, as_tar)?;
    let real: Vec<Digest> = layers.iter().map(|l| Digest::of_bytes(l)).collect();
    let ids: Vec<String> = chain_ids(&real)
        .iter()
        .map(|c| c.hex().to_string())
        .collect();
    let mut members = Vec::new();
    for (n, l) in layers.iter().enumerate() {
        let id = &ids[n];
        let member = format!("{id}/layer.tar");
        if faults.missing_layer != Some(n) {
            st.put(&member, l)?;
        }
        st.put(&format!("{id}/VERSION"), b"1.0")?;
        let v1 = match n {
            0 => json!({ "id": id }),
            _ => json!({ "id": id, "parent": ids[n - 1] }),
        };
        st.put(&format!("{id}/json"), v1.to_string().as_bytes())?;
        members.push(member);
    }
    let config = oci_config(Some(base), &faulty_diff_ids(layers, faults))?;
    let cfg_bytes = config.to_string().into_bytes();
    let cfg_name = format!("{}.json", Digest::of_bytes(&cfg_bytes).hex());
    st.put(&cfg_name, &cfg_bytes)?;
    let manifest = json!([{ "Config": cfg_name, "RepoTags": [repo_tag], "Layers": members }]);
    st.put("manifest.json", manifest.to_string().as_bytes())?;
    let (repo, tag) = match repo_tag.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (repo_tag, "latest"),
    };
    if let Some(top) = ids.last() {
        st.put(
            "repositories",
            json!({ repo: { tag: top } }).to_string().as_bytes(),
        )?;
    }
    st.commit()
}

/// Where `member` of an archive (directory or uncompressed tar) lives:
/// the file to change and the member's offset and size in it.
fn locate(archive: &Path, member: &str) -> Result<(std::path::PathBuf, u64, u64)> {
    if archive.is_dir() {
        let Some(clean) = clean_member(member) else {
            return Err(Error::invalid(
                "member",
                member,
                "not a path inside the archive",
            ));
        };
        let p = archive.join(clean);
        let len = std::fs::metadata(&p)
            .map_err(|e| Error::io("stat", &p, e))?
            .len();
        Ok((p, 0, len))
    } else {
        let m = tar_member(archive, member)?;
        Ok((archive.to_path_buf(), m.offset, m.size))
    }
}

/// Writes `bytes` at `offset` inside `member` of an archive (a directory or
/// an uncompressed tar), changing nothing else.
pub fn overwrite_bytes(archive: &Path, member: &str, offset: u64, bytes: &[u8]) -> Result<()> {
    let (file, start, size) = locate(archive, member)?;
    if offset + bytes.len() as u64 > size {
        return Err(Error::invalid(
            "offset",
            &offset.to_string(),
            "past the end of the member",
        ));
    }
    let f = OpenOptions::new()
        .write(true)
        .open(&file)
        .map_err(|e| Error::io("open", &file, e))?;
    f.write_all_at(bytes, start + offset)
        .map_err(|e| Error::io("write", &file, e))
}

/// Flips every bit of the byte in the middle of `member` (e.g. a layer's
/// `LayerRef::path`) of an archive, keeping every index and manifest.
pub fn flip_byte(archive: &Path, member: &str) -> Result<()> {
    let (file, start, size) = locate(archive, member)?;
    if size == 0 {
        return Err(Error::invalid("member", member, "is empty"));
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .map_err(|e| Error::io("open", &file, e))?;
    let at = start + size / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at)
        .map_err(|e| Error::io("read", &file, e))?;
    f.write_all_at(&[!b[0]], at)
        .map_err(|e| Error::io("write", &file, e))
}

/// Reads a whole layer through [`ImageArchive::open_layer`] and
/// [`super::LayerReader::finish`].
pub fn read_layer(archive: &ImageArchive, layer: &LayerRef) -> Result<Vec<u8>> {
    let mut r = archive.open_layer(layer)?;
    let mut out = Vec::new();
    if let Err(e) = r.read_to_end(&mut out) {
        return Err(match e.downcast::<Error>() {
            Ok(err) => err,
            Err(e) => Error::Archive {
                what: archive.path().display().to_string(),
                detail: format!("{}: {e}", layer.label),
            },
        });
    }
    r.finish()?;
    Ok(out)
}
