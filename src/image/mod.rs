//! Image archives: OCI image layouts and `docker save` archives, read, verified and written.
//!
//! [`ImageArchive::open`] reads an OCI image layout (a directory or a tar of
//! one) or a `docker save` tar, checks every manifest and config against its
//! digest, and lists the images with their layers. [`ImageArchive::open_layer`]
//! streams one layer as an uncompressed tar while hashing it; the
//! [`LayerReader`] reports a digest mismatch at end of stream or from
//! [`LayerReader::finish`]. [`write_oci_layout`] writes layer tars back out as
//! an OCI image layout. `build` (with the `testing` feature) makes small
//! archives for tests.
//!
//! Tar archives are read in place: members are indexed by offset and read
//! with positioned reads, never extracted. A compressed outer archive
//! (`docker save | gzip`) is refused with a message saying to decompress it.

mod archive;
#[cfg(any(test, feature = "testing"))]
pub mod build;
mod digest;
mod export;
mod source;

#[cfg(test)]
mod tests;

use std::fmt;

pub use crate::digest::{Digest, DigestReader, DigestWriter, Hasher};
pub use archive::{ArchiveFormat, ImageArchive, LayerReader};
pub use digest::chain_ids;
pub use export::{ExportImage, write_oci_layout};

/// OCI media types this module reads and writes.
pub mod media_type {
    pub const OCI_LAYOUT_VERSION: &str = "1.0.0";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const OCI_LAYER_ND: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
    pub const OCI_LAYER_ND_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    pub const OCI_LAYER_ND_ZSTD: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_LAYER_FOREIGN_GZIP: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    /// The annotation holding an image's reference name in `index.json`.
    pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
    /// containerd's (and so Docker 25+'s) full image name annotation.
    pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type names; `None` for media types that
    /// are not layers we know. Docker's `.tar.gzip` types are returned as
    /// gzip, but tools are known to store them uncompressed: the reader trusts
    /// the magic bytes for those.
    pub fn from_media_type(mt: &str) -> Option<Compression> {
        use media_type::*;
        Some(match mt {
            OCI_LAYER | OCI_LAYER_ND | DOCKER_LAYER => Compression::None,
            OCI_LAYER_GZIP | OCI_LAYER_ND_GZIP | DOCKER_LAYER_GZIP | DOCKER_LAYER_FOREIGN_GZIP => {
                Compression::Gzip
            }
            OCI_LAYER_ZSTD | OCI_LAYER_ND_ZSTD => Compression::Zstd,
            _ => return None,
        })
    }

    /// The compression the first bytes of a blob show: gzip (`1f 8b`), zstd
    /// (`28 b5 2f fd`), otherwise none.
    pub fn from_magic(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => media_type::OCI_LAYER,
            Compression::Gzip => media_type::OCI_LAYER_GZIP,
            Compression::Zstd => media_type::OCI_LAYER_ZSTD,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

/// One image in an archive.
#[derive(Clone, Debug)]
pub struct ImageManifest {
    /// The reference name: containerd's `io.containerd.image.name`
    /// annotation (a full name, as containerd and buildkit write it beside
    /// a `ref.name` holding only the tag), else the OCI
    /// `org.opencontainers.image.ref.name` as given (a full `name:tag` or
    /// only a tag), or the first `RepoTags` entry of a docker save.
    pub name: Option<String>,
    /// The manifest blob's digest; `None` for docker save archives, which
    /// have no manifest blob.
    pub manifest_digest: Option<Digest>,
    pub config_digest: Digest,
    pub config: ImageConfig,
    /// Bottom layer first.
    pub layers: Vec<LayerRef>,
}

impl ImageManifest {
    /// The chain id of the top layer: what names the image's root
    /// filesystem. `None` for an image without layers.
    pub fn top_chain_id(&self) -> Option<&Digest> {
        self.layers.last().map(|l| &l.chain_id)
    }
}

/// The parts of an image config this crate uses, and the whole of it.
#[derive(Clone, Debug)]
pub struct ImageConfig {
    /// The config document as read.
    pub raw: serde_json::Value,
    /// `rootfs.diff_ids`, bottom first.
    pub diff_ids: Vec<Digest>,
    pub history: Vec<HistoryEntry>,
    pub created: Option<String>,
    pub architecture: Option<String>,
    pub os: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct HistoryEntry {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub empty_layer: bool,
}

/// One layer of an image, as found in the archive.
#[derive(Clone, Debug)]
pub struct LayerRef {
    /// The digest of the blob as stored (compressed). For a docker save
    /// member that is not named by digest, this is the member's sha256: the
    /// diff id for an uncompressed member (the blob is the layer tar),
    /// computed when the archive is opened for a compressed one.
    pub blob: Digest,
    /// The member (tar) or file (directory) path inside the archive.
    pub path: String,
    /// The digest of the uncompressed layer tar, from the config.
    pub diff_id: Digest,
    pub chain_id: Digest,
    pub compression: Compression,
    /// The blob's size in bytes, as stored.
    pub size: u64,
    /// How errors name this layer: `layer 2 of app:1 (blobs/sha256/<hex>)`,
    /// counting from 1 at the bottom.
    pub label: String,
}

/// The architecture name (GOARCH style) images for this host carry.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}
