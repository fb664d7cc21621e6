//! Opening image archives: finding the images, checking manifests and
//! configs against their digests, and streaming layers with verification.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::digest::chain_ids;
use super::source::{BlobReader, MAX_JSON, Source};
use super::{
    Compression, HistoryEntry, ImageConfig, ImageManifest, LayerRef, host_architecture,
    media_type as mt,
};
use crate::digest::{Digest, DigestReader, Hasher};
use crate::error::{Error, Result};

/// Which kind of archive was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// An OCI image layout (`oci-layout`, `index.json`, `blobs/`).
    OciLayout,
    /// A `docker save` archive read through its `manifest.json`.
    DockerSave,
}

/// An opened, verified image archive.
pub struct ImageArchive {
    path: PathBuf,
    format: ArchiveFormat,
    source: Source,
    images: Vec<ImageManifest>,
}

impl std::fmt::Debug for ImageArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageArchive")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("images", &self.images)
            .finish()
    }
}

#[derive(Deserialize)]
struct Layout {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

#[derive(Deserialize, Clone)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    digest: Digest,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize, Clone)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct Index {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    architecture: Option<String>,
    os: Option<String>,
    created: Option<String>,
    rootfs: Option<RawRootfs>,
    history: Option<Vec<HistoryEntry>>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(rename = "type")]
    kind: Option<String>,
    diff_ids: Option<Vec<Digest>>,
}

fn is_manifest_type(m: &str) -> bool {
    m == mt::OCI_MANIFEST || m == mt::DOCKER_MANIFEST
}

fn is_index_type(m: &str) -> bool {
    m == mt::OCI_INDEX || m == mt::DOCKER_MANIFEST_LIST
}

impl ImageArchive {
    /// Opens an OCI image layout (directory or tar) or a `docker save` tar
    /// (or its extracted directory), and verifies every index, manifest and
    /// config it lists. Layers are checked for presence, size and
    /// compression here; their content is verified as they are read.
    pub fn open(path: &Path) -> Result<ImageArchive> {
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::not_found(
                    "image archive",
                    path.display().to_string(),
                ));
            }
            Err(e) => return Err(Error::io("stat", path, e)),
        };
        let source = if meta.is_dir() {
            Source::dir(path)
        } else if meta.is_file() {
            Source::tar(path)?
        } else {
            return Err(Error::Archive {
                what: path.display().to_string(),
                detail: "not a regular file or directory".into(),
            });
        };
        let (format, images) = if source.exists("index.json") {
            (ArchiveFormat::OciLayout, read_oci(&source)?)
        } else if source.exists("manifest.json") {
            (ArchiveFormat::DockerSave, read_docker(&source)?)
        } else if source.exists("oci-layout") {
            return Err(source.err("index.json is missing from the OCI image layout"));
        } else {
            return Err(source.err(
                "neither an OCI image layout (no oci-layout or index.json) nor a docker save \
                 archive (no manifest.json)",
            ));
        };
        Ok(ImageArchive {
            path: path.to_path_buf(),
            format,
            source,
            images,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> ArchiveFormat {
        self.format
    }

    /// The images, in the order the archive lists them.
    pub fn images(&self) -> &[ImageManifest] {
        &self.images
    }

    /// The image named `name`, or with `None` the archive's only image.
    pub fn image(&self, name: Option<&str>) -> Result<&ImageManifest> {
        match name {
            Some(n) => self
                .images
                .iter()
                .find(|i| i.name.as_deref() == Some(n))
                .ok_or_else(|| Error::not_found("image", n)),
            None => match self.images.as_slice() {
                [one] => Ok(one),
                many => {
                    let names: Vec<String> = many
                        .iter()
                        .map(|i| i.name.clone().unwrap_or_else(|| "(unnamed)".into()))
                        .collect();
                    Err(Error::invalid(
                        "image name",
                        "",
                        &format!(
                            "the archive holds {} images ({}); name one",
                            many.len(),
                            names.join(", ")
                        ),
                    ))
                }
            },
        }
    }

    /// Streams one layer as an uncompressed tar. The reader hashes both the
    /// stored blob and the uncompressed bytes; see [`LayerReader`].
    pub fn open_layer(&self, layer: &LayerRef) -> Result<LayerReader> {
        let blob = self.source.open(&layer.path, &layer.label)?;
        if blob.size() != layer.size {
            return Err(self.source.err(format!(
                "{}: the blob is {} bytes, {} when the archive was opened",
                layer.label,
                blob.size(),
                layer.size
            )));
        }
        let raw = DigestReader::new(blob);
        let stream = match layer.compression {
            Compression::None => Stream::Plain(BufReader::with_capacity(PLAIN_BUFFER, raw)),
            Compression::Gzip => Stream::Gzip(flate2::read::MultiGzDecoder::new(raw)),
            Compression::Zstd => Stream::Zstd(
                zstd::stream::read::Decoder::new(raw)
                    .map_err(|e| self.source.err(format!("{}: zstd: {e}", layer.label)))?,
            ),
        };
        Ok(LayerReader {
            stream,
            diff: Hasher::new(),
            blob: layer.blob.clone(),
            diff_id: layer.diff_id.clone(),
            label: layer.label.clone(),
            archive: self.path.display().to_string(),
            state: State::Reading,
        })
    }
}

fn parse_json<T: DeserializeOwned>(source: &Source, bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| source.err(format!("{what}: invalid JSON: {e}")))
}

/// Reads a blob named by a descriptor and checks its digest and size.
fn read_descriptor(source: &Source, d: &Descriptor, what: &str) -> Result<Vec<u8>> {
    let member = d.digest.blob_path();
    let label = format!("{what} ({member})");
    if let Some(size) = d.size
        && size > MAX_JSON
    {
        return Err(source.err(format!(
            "{label}: {size} bytes is more than the {MAX_JSON} allowed for a JSON document"
        )));
    }
    let bytes = source.read(&member, what, MAX_JSON)?;
    let actual = Digest::of_bytes(&bytes);
    if actual != d.digest {
        return Err(Error::Digest {
            what: label,
            expected: d.digest.to_string(),
            actual: actual.to_string(),
        });
    }
    if let Some(size) = d.size
        && size != bytes.len() as u64
    {
        return Err(source.err(format!(
            "{label}: the blob is {} bytes but its descriptor says {size}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

enum Doc {
    Manifest(Manifest),
    Index(Index),
}

/// Reads the document a descriptor names, as a manifest or an index, by
/// the descriptor's media type or else the document's own.
fn read_doc(source: &Source, d: &Descriptor, what: &str) -> Result<Doc> {
    let bytes = read_descriptor(source, d, what)?;
    let label = format!("{what} ({})", d.digest.blob_path());
    let media = match &d.media_type {
        Some(m) => m.clone(),
        None => {
            let v: serde_json::Value = parse_json(source, &bytes, &label)?;
            match v.get("mediaType").and_then(|m| m.as_str()) {
                Some(m) => m.to_string(),
                None if v.get("manifests").is_some() => mt::OCI_INDEX.to_string(),
                None => mt::OCI_MANIFEST.to_string(),
            }
        }
    };
    if is_manifest_type(&media) {
        let m: Manifest = parse_json(source, &bytes, &label)?;
        if let Some(own) = &m.media_type
            && !is_manifest_type(own)
        {
            return Err(source.err(format!(
                "{label}: the descriptor says {media} but the document says {own}"
            )));
        }
        if m.schema_version.is_some_and(|v| v != 2) {
            return Err(source.err(format!("{label}: schemaVersion is not 2")));
        }
        Ok(Doc::Manifest(m))
    } else if is_index_type(&media) {
        let i: Index = parse_json(source, &bytes, &label)?;
        Ok(Doc::Index(i))
    } else {
        Err(source.err(format!(
            "{label}: unsupported media type {media:?}: not an image manifest or index"
        )))
    }
}

fn read_oci(source: &Source) -> Result<Vec<ImageManifest>> {
    let layout_bytes = source.read("oci-layout", "the OCI image layout", 1 << 20)?;
    let layout: Layout = parse_json(source, &layout_bytes, "oci-layout")?;
    if layout.version != mt::OCI_LAYOUT_VERSION {
        return Err(source.err(format!(
            "oci-layout: unsupported imageLayoutVersion {:?} (expected {})",
            layout.version,
            mt::OCI_LAYOUT_VERSION
        )));
    }
    let index_bytes = source.read("index.json", "the OCI image layout", MAX_JSON)?;
    let index: Index = parse_json(source, &index_bytes, "index.json")?;
    if index.schema_version.is_some_and(|v| v != 2) {
        return Err(source.err("index.json: schemaVersion is not 2"));
    }
    if let Some(m) = &index.media_type
        && !is_index_type(m)
    {
        return Err(source.err(format!(
            "index.json: media type {m:?} is not an image index"
        )));
    }
    if index.manifests.is_empty() {
        return Err(source.err("index.json lists no images"));
    }
    let mut images = Vec::new();
    for (i, d) in index.manifests.iter().enumerate() {
        let ann = d.annotations.as_ref();
        // containerd's full name first, as containerd itself reads it: its
        // exports and buildkit's carry both, `ref.name` then only the tag.
        let name = ann
            .and_then(|a| a.get(mt::CONTAINERD_NAME).or_else(|| a.get(mt::REF_NAME)))
            .cloned();
        let what = match &name {
            Some(n) => format!("manifest of {n}"),
            None => format!("manifest {} of index.json", i + 1),
        };
        let (desc, manifest) = match read_doc(source, d, &what)? {
            Doc::Manifest(m) => (d.clone(), m),
            Doc::Index(nested) => select_platform(source, &nested, &what)?,
        };
        images.push(read_oci_image(source, &desc, manifest, name, i)?);
    }
    Ok(images)
}

/// Follows a nested index one level to the manifest for this host's
/// linux platform.
fn select_platform(source: &Source, index: &Index, what: &str) -> Result<(Descriptor, Manifest)> {
    let arch = host_architecture();
    let mut seen = Vec::new();
    for d in &index.manifests {
        let Some(p) = &d.platform else { continue };
        seen.push(match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        });
        if p.os != "linux" || p.architecture != arch {
            continue;
        }
        if d.media_type
            .as_deref()
            .is_some_and(|m| !is_manifest_type(m))
        {
            continue;
        }
        let sub = format!("{what} for linux/{arch}");
        return match read_doc(source, d, &sub)? {
            Doc::Manifest(m) => Ok((d.clone(), m)),
            Doc::Index(_) => Err(source.err(format!(
                "{sub}: an image index nested more than one level is not supported"
            ))),
        };
    }
    Err(source.err(format!(
        "{what} is an image index with no image for linux/{arch} (it has: {})",
        if seen.is_empty() {
            "no platforms".to_string()
        } else {
            seen.join(", ")
        }
    )))
}

fn parse_config(source: &Source, bytes: &[u8], what: &str) -> Result<ImageConfig> {
    let raw: serde_json::Value = parse_json(source, bytes, what)?;
    if !raw.is_object() {
        return Err(source.err(format!("{what}: not a JSON object")));
    }
    let c = RawConfig::deserialize(&raw)
        .map_err(|e| source.err(format!("{what}: invalid image config: {e}")))?;
    let Some(rootfs) = c.rootfs else {
        return Err(source.err(format!("{what}: no rootfs in the image config")));
    };
    if let Some(k) = &rootfs.kind
        && k != "layers"
    {
        return Err(source.err(format!("{what}: rootfs type {k:?} is not \"layers\"")));
    }
    let Some(diff_ids) = rootfs.diff_ids else {
        return Err(source.err(format!("{what}: no rootfs.diff_ids in the image config")));
    };
    Ok(ImageConfig {
        diff_ids,
        history: c.history.unwrap_or_default(),
        created: c.created,
        architecture: c.architecture,
        os: c.os,
        raw,
    })
}

fn image_label(name: &Option<String>, i: usize) -> String {
    match name {
        Some(n) => n.clone(),
        None => format!("image {}", i + 1),
    }
}

fn count_check(source: &Source, what: &str, layers: usize, diff_ids: usize) -> Result<()> {
    if layers != diff_ids {
        return Err(source.err(format!(
            "{what}: the manifest lists {layers} layers but the config has {diff_ids} diff_ids"
        )));
    }
    Ok(())
}

fn read_oci_image(
    source: &Source,
    desc: &Descriptor,
    manifest: Manifest,
    name: Option<String>,
    i: usize,
) -> Result<ImageManifest> {
    let image = image_label(&name, i);
    let cfg_what = format!("config of {image}");
    match manifest.config.media_type.as_deref() {
        Some(mt::OCI_CONFIG) | Some(mt::DOCKER_CONFIG) | None => {}
        Some(other) => {
            return Err(source.err(format!(
                "{cfg_what}: unsupported config media type {other:?}: not a container image"
            )));
        }
    }
    let cfg_bytes = read_descriptor(source, &manifest.config, &cfg_what)?;
    let config = parse_config(
        source,
        &cfg_bytes,
        &format!("{cfg_what} ({})", manifest.config.digest.blob_path()),
    )?;
    count_check(source, &image, manifest.layers.len(), config.diff_ids.len())?;
    let chains = chain_ids(&config.diff_ids);
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (n, d) in manifest.layers.iter().enumerate() {
        let path = d.digest.blob_path();
        let label = format!("layer {} of {image} ({path})", n + 1);
        let Some(media) = d.media_type.as_deref() else {
            return Err(source.err(format!("{label}: the descriptor has no mediaType")));
        };
        let Some(named) = Compression::from_media_type(media) else {
            return Err(source.err(format!("{label}: unsupported layer media type {media:?}")));
        };
        let size = source.size(&path, &label)?;
        if let Some(want) = d.size
            && want != size
        {
            return Err(source.err(format!(
                "{label}: the blob is {size} bytes but the manifest says {want}"
            )));
        }
        let magic = Compression::from_magic(&source.head(&path, &label)?);
        let docker_type = media.starts_with("application/vnd.docker.");
        let compression = if magic == named || docker_type {
            magic
        } else {
            return Err(source.err(format!(
                "{label}: the media type says {named} but the blob holds {magic} data"
            )));
        };
        layers.push(LayerRef {
            blob: d.digest.clone(),
            path,
            diff_id: config.diff_ids[n].clone(),
            chain_id: chains[n].clone(),
            compression,
            size,
            label,
        });
    }
    Ok(ImageManifest {
        name,
        manifest_digest: Some(desc.digest.clone()),
        config_digest: manifest.config.digest.clone(),
        config,
        layers,
    })
}

/// The digest a docker save member's name claims: `blobs/sha256/<hex>` or
/// `<hex>.json` / `<hex>/...` style names.
fn digest_from_name(path: &str) -> Option<Digest> {
    if let Some(hex) = path.strip_prefix("blobs/sha256/") {
        return Digest::from_hex(hex).ok();
    }
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.strip_suffix(".json")?;
    Digest::from_hex(stem).ok()
}

fn read_docker(source: &Source) -> Result<Vec<ImageManifest>> {
    let bytes = source.read("manifest.json", "the docker save archive", MAX_JSON)?;
    let entries: Vec<DockerEntry> = parse_json(source, &bytes, "manifest.json")?;
    if entries.is_empty() {
        return Err(source.err("manifest.json lists no images"));
    }
    let mut images = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        let name = e.repo_tags.as_ref().and_then(|t| t.first()).cloned();
        let image = image_label(&name, i);
        let cfg_what = format!("config of {image} ({})", e.config);
        let cfg_bytes = source.read(&e.config, "manifest.json", MAX_JSON)?;
        let config_digest = Digest::of_bytes(&cfg_bytes);
        if let Some(named) = digest_from_name(&e.config)
            && named != config_digest
        {
            return Err(Error::Digest {
                what: cfg_what,
                expected: named.to_string(),
                actual: config_digest.to_string(),
            });
        }
        let config = parse_config(source, &cfg_bytes, &cfg_what)?;
        count_check(source, &image, e.layers.len(), config.diff_ids.len())?;
        let chains = chain_ids(&config.diff_ids);
        let mut layers = Vec::with_capacity(e.layers.len());
        for (n, path) in e.layers.iter().enumerate() {
            let label = format!("layer {} of {image} ({path})", n + 1);
            let size = source.size(path, &label)?;
            let compression = Compression::from_magic(&source.head(path, &label)?);
            let diff_id = config.diff_ids[n].clone();
            let blob = match path.strip_prefix("blobs/sha256/") {
                Some(hex) => Digest::from_hex(hex).map_err(|_| {
                    source.err(format!("{label}: the blob name is not a sha256 digest"))
                })?,
                // The member is the layer tar itself.
                None if compression == Compression::None => diff_id.clone(),
                None => {
                    let mut r = DigestReader::new(source.open(path, &label)?);
                    io::copy(&mut r, &mut io::sink())
                        .map_err(|e| source.err(format!("{label}: {e}")))?;
                    r.finish().1
                }
            };
            layers.push(LayerRef {
                blob,
                path: path.clone(),
                diff_id,
                chain_id: chains[n].clone(),
                compression,
                size,
                label,
            });
        }
        images.push(ImageManifest {
            name,
            manifest_digest: None,
            config_digest,
            config,
            layers,
        });
    }
    Ok(images)
}

/// Read-ahead for uncompressed layers, which tar readers consume 512 bytes
/// at a time (the decompressors buffer their input themselves).
const PLAIN_BUFFER: usize = 256 << 10;

enum Stream {
    Plain(BufReader<DigestReader<BlobReader>>),
    Gzip(flate2::read::MultiGzDecoder<DigestReader<BlobReader>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<DigestReader<BlobReader>>>),
}

impl Stream {
    fn raw(&mut self) -> &mut DigestReader<BlobReader> {
        match self {
            Stream::Plain(r) => r.get_mut(),
            Stream::Gzip(g) => g.get_mut(),
            Stream::Zstd(z) => z.get_mut().get_mut(),
        }
    }
}

/// Why a layer stream failed; kept so that every later read and
/// [`LayerReader::finish`] report the same thing.
#[derive(Clone)]
enum Failure {
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    Archive {
        what: String,
        detail: String,
        kind: io::ErrorKind,
    },
}

impl Failure {
    fn error(&self) -> Error {
        match self.clone() {
            Failure::Digest {
                what,
                expected,
                actual,
            } => Error::Digest {
                what,
                expected,
                actual,
            },
            Failure::Archive { what, detail, .. } => Error::Archive { what, detail },
        }
    }

    fn io(&self) -> io::Error {
        let kind = match self {
            Failure::Digest { .. } => io::ErrorKind::InvalidData,
            Failure::Archive { kind, .. } => *kind,
        };
        io::Error::new(kind, self.error())
    }
}

enum State {
    Reading,
    Verified,
    Failed(Failure),
}

/// A layer's uncompressed tar stream.
///
/// It hashes the stored blob and the uncompressed bytes as they pass. When
/// the stream reaches its end, the rest of the blob is hashed and both
/// digests are compared: a mismatch is returned as an error from that last
/// `read` instead of end of file. A tar reader usually stops before the end
/// (at the end-of-archive blocks), so callers must call
/// [`LayerReader::finish`], which reads to the end and reports the result.
///
/// Errors from `read` wrap an [`Error`] (`Error::Digest` or
/// `Error::Archive`): `io_error.downcast::<Error>()` recovers it. After a
/// failure every later `read` and `finish` return the same error. A blob
/// cut short is always an error, never an early end of file.
pub struct LayerReader {
    stream: Stream,
    diff: Hasher,
    blob: Digest,
    diff_id: Digest,
    label: String,
    archive: String,
    state: State,
}

impl LayerReader {
    /// How errors name this layer, e.g. `layer 2 of app:1 (blobs/sha256/<hex>)`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Uncompressed bytes read so far.
    pub fn uncompressed_len(&self) -> u64 {
        self.diff.len()
    }

    /// Reads whatever is left to the end and checks the blob digest and the
    /// diff id.
    pub fn finish(mut self) -> Result<()> {
        if let State::Reading = self.state {
            // Any failure is recorded in `state`.
            let _ = io::copy(&mut self, &mut io::sink());
        }
        match &self.state {
            State::Verified => Ok(()),
            State::Failed(f) => Err(f.error()),
            State::Reading => Err(Error::Archive {
                what: self.archive.clone(),
                detail: format!("{}: the layer stream did not end", self.label),
            }),
        }
    }

    fn archive_failure(&self, e: &io::Error) -> Failure {
        Failure::Archive {
            what: self.archive.clone(),
            detail: format!("{}: {e}", self.label),
            kind: e.kind(),
        }
    }

    /// Hashes the rest of the blob and compares the blob digest.
    fn check_blob(&mut self) -> std::result::Result<(), Failure> {
        let raw = self.stream.raw();
        if let Err(e) = io::copy(raw, &mut io::sink()) {
            return Err(self.archive_failure(&e));
        }
        let actual = self.stream.raw().digest();
        if actual != self.blob {
            return Err(Failure::Digest {
                what: self.label.clone(),
                expected: self.blob.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }

    fn verify(&mut self) -> std::result::Result<(), Failure> {
        self.check_blob()?;
        let actual = self.diff.clone().finish();
        if actual != self.diff_id {
            return Err(Failure::Digest {
                what: format!("{} uncompressed content (diff_id)", self.label),
                expected: self.diff_id.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }

    /// After a read error: a corrupt blob is reported as a digest mismatch,
    /// anything else as the error itself.
    fn diagnose(&mut self, e: io::Error) -> Failure {
        match self.check_blob() {
            Err(f @ Failure::Digest { .. }) => f,
            _ => self.archive_failure(&e),
        }
    }

    fn fail(&mut self, f: Failure) -> io::Error {
        let e = f.io();
        self.state = State::Failed(f);
        e
    }
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.state {
            State::Verified => return Ok(0),
            State::Failed(f) => return Err(f.io()),
            State::Reading => {}
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let r = match &mut self.stream {
            Stream::Plain(r) => r.read(buf),
            Stream::Gzip(g) => g.read(buf),
            Stream::Zstd(z) => z.read(buf),
        };
        match r {
            Ok(0) => match self.verify() {
                Ok(()) => {
                    self.state = State::Verified;
                    Ok(0)
                }
                Err(f) => Err(self.fail(f)),
            },
            Ok(n) => {
                self.diff.update(&buf[..n]);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let f = self.diagnose(e);
                Err(self.fail(f))
            }
        }
    }
}
