//! Writing OCI image layouts, as a directory or a tar file.
//!
//! Everything is first written into a staging directory next to the
//! destination, which is renamed into place (directory) or packed into a tar
//! that is renamed into place: a failed export leaves no half-written
//! destination behind.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{Map, Value, json};

use super::{Compression, host_architecture, media_type as mt};
use crate::digest::{Digest, DigestReader, DigestWriter};
use crate::error::{Error, Result};
use crate::layer::read_up_to;

/// One image to export.
#[derive(Clone, Debug)]
pub struct ExportImage {
    /// The reference name, e.g. `app:1`, stored as the
    /// `org.opencontainers.image.ref.name` annotation.
    pub name: String,
    /// Uncompressed layer tar files, bottom first.
    pub layers: Vec<PathBuf>,
    /// A base config to keep (architecture, os, config, history...);
    /// `rootfs` is rewritten from the layers. Missing architecture and os
    /// are set to this host's linux platform.
    pub config: Option<Value>,
}

/// Writes `images` as an OCI image layout: a tar file when `dest` ends in
/// `.tar`, otherwise a directory that must not exist or be empty. Layers are
/// stored gzip-compressed; a blob shared by several images is stored once.
pub fn write_oci_layout(dest: &Path, images: &[ExportImage]) -> Result<()> {
    if images.is_empty() {
        return Err(Error::invalid(
            "export",
            &dest.display().to_string(),
            "no images to write",
        ));
    }
    let mut names: Vec<&str> = Vec::new();
    for img in images {
        if img.name.is_empty() {
            return Err(Error::invalid("image name", "", "must not be empty"));
        }
        if names.contains(&img.name.as_str()) {
            return Err(Error::invalid(
                "image name",
                &img.name,
                "named twice in one export",
            ));
        }
        names.push(&img.name);
    }
    let as_tar = dest.extension().is_some_and(|e| e == "tar");
    let mut st = Staging::new(dest, as_tar)?;
    let mut done: HashMap<PathBuf, StoredLayer> = HashMap::new();
    let mut entries = Vec::new();
    for img in images {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for p in &img.layers {
            let key = fs::canonicalize(p).map_err(|e| Error::io("open", p, e))?;
            let stored = match done.get(&key) {
                Some(s) => s.clone(),
                None => {
                    let s = st.put_layer_gzip(p)?;
                    done.insert(key, s.clone());
                    s
                }
            };
            layers.push(LayerDesc {
                media_type: mt::OCI_LAYER_GZIP.to_string(),
                digest: stored.blob,
                size: stored.size,
            });
            diff_ids.push(stored.diff_id);
        }
        let config = oci_config(img.config.as_ref(), &diff_ids)?;
        entries.push(st.put_image(&img.name, &config, &layers)?);
    }
    st.put_index(&entries)?;
    st.commit()
}

#[derive(Clone)]
pub(crate) struct StoredLayer {
    pub blob: Digest,
    pub size: u64,
    pub diff_id: Digest,
}

pub(crate) struct LayerDesc {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// An image config: `base` (if any) with `rootfs` set to `diff_ids`, a
/// default platform, and history padded to one entry per layer.
pub(crate) fn oci_config(base: Option<&Value>, diff_ids: &[Digest]) -> Result<Value> {
    let mut cfg = match base {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(Error::invalid(
                "image config",
                &other.to_string(),
                "not a JSON object",
            ));
        }
    };
    cfg.entry("architecture")
        .or_insert_with(|| json!(host_architecture()));
    cfg.entry("os").or_insert_with(|| json!("linux"));
    cfg.insert(
        "rootfs".into(),
        json!({ "type": "layers", "diff_ids": diff_ids }),
    );
    if let Some(Value::Array(history)) = cfg.get_mut("history") {
        let non_empty = history
            .iter()
            .filter(|h| h.get("empty_layer").and_then(Value::as_bool) != Some(true))
            .count();
        for n in non_empty..diff_ids.len() {
            history
                .push(json!({ "created_by": "thinlayer", "comment": format!("layer {}", n + 1) }));
        }
    }
    Ok(Value::Object(cfg))
}

fn json_bytes(v: &Value) -> Vec<u8> {
    // Serialising a Value cannot fail: its keys are strings.
    serde_json::to_vec(v).unwrap_or_default()
}

pub(crate) struct Staging {
    root: PathBuf,
    dest: PathBuf,
    as_tar: bool,
    committed: bool,
    tmp_n: u32,
}

impl Staging {
    /// Checks the destination and makes the staging directory beside it.
    pub fn new(dest: &Path, as_tar: bool) -> Result<Staging> {
        let dest_s = dest.display().to_string();
        match fs::symlink_metadata(dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", dest, e)),
            Ok(m) if !as_tar && m.is_dir() => {
                let mut it =
                    fs::read_dir(dest).map_err(|e| Error::io("read directory", dest, e))?;
                if it.next().is_some() {
                    return Err(Error::invalid(
                        "export destination",
                        &dest_s,
                        "the directory is not empty",
                    ));
                }
            }
            Ok(_) => {
                return Err(Error::Exists {
                    kind: "file",
                    name: dest_s,
                });
            }
        }
        let Some(file_name) = dest.file_name() else {
            return Err(Error::invalid(
                "export destination",
                &dest_s,
                "has no file name",
            ));
        };
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let root = parent.join(format!(
            ".{}.partial-{}-{}",
            file_name.to_string_lossy(),
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&root).map_err(|e| Error::io("create directory", &root, e))?;
        Ok(Staging {
            root,
            dest: dest.to_path_buf(),
            as_tar,
            committed: false,
            tmp_n: 0,
        })
    }

    fn path(&self, member: &str) -> PathBuf {
        self.root.join(member)
    }

    fn mkdirs(&self, member: &str) -> Result<PathBuf> {
        let p = self.path(member);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
        }
        Ok(p)
    }

    /// Writes a file at `member`.
    pub fn put(&self, member: &str, bytes: &[u8]) -> Result<()> {
        let p = self.mkdirs(member)?;
        fs::write(&p, bytes).map_err(|e| Error::io("write", p, e))
    }

    /// Stores a blob under its digest (once).
    pub fn put_blob(&self, bytes: &[u8]) -> Result<(Digest, u64)> {
        let d = Digest::of_bytes(bytes);
        let member = d.blob_path();
        if !self.path(&member).exists() {
            self.put(&member, bytes)?;
        }
        Ok((d, bytes.len() as u64))
    }

    /// Compresses an uncompressed layer tar file into a gzip blob.
    pub fn put_layer_gzip(&mut self, src: &Path) -> Result<StoredLayer> {
        let input = File::open(src).map_err(|e| Error::io("open", src, e))?;
        let mut input = BufReader::new(input);
        let mut head = [0u8; 4];
        let n = read_up_to(&mut input, &mut head).map_err(|e| Error::io("read", src, e))?;
        if Compression::from_magic(&head[..n]) != Compression::None {
            return Err(Error::invalid(
                "layer file",
                &src.display().to_string(),
                "is compressed; export takes uncompressed layer tars",
            ));
        }
        self.tmp_n += 1;
        let tmp = self.mkdirs(&format!("blobs/sha256/.tmp-{}", self.tmp_n))?;
        let out = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        let mut enc = flate2::write::GzEncoder::new(
            DigestWriter::new(BufWriter::new(out)),
            flate2::Compression::default(),
        );
        let mut reader = DigestReader::new(io::Cursor::new(head[..n].to_vec()).chain(input));
        io::copy(&mut reader, &mut enc).map_err(|e| Error::io("compress", src, e))?;
        let out = enc.finish().map_err(|e| Error::io("write", &tmp, e))?;
        let (buffered, blob, size) = out.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| Error::io("write", &tmp, e.into_error()))?;
        drop(file);
        let diff_id = reader.finish().1;
        let final_path = self.path(&blob.blob_path());
        if final_path.exists() {
            fs::remove_file(&tmp).map_err(|e| Error::io("remove", &tmp, e))?;
        } else {
            fs::rename(&tmp, &final_path).map_err(|e| Error::io("rename", &tmp, e))?;
        }
        Ok(StoredLayer {
            blob,
            size,
            diff_id,
        })
    }

    /// Stores an image's config and manifest; returns its `index.json` entry.
    pub fn put_image(&self, name: &str, config: &Value, layers: &[LayerDesc]) -> Result<Value> {
        let (cfg_digest, cfg_size) = self.put_blob(&json_bytes(config))?;
        let layers: Vec<Value> = layers
            .iter()
            .map(|l| json!({ "mediaType": l.media_type, "digest": l.digest, "size": l.size }))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": mt::OCI_MANIFEST,
            "config": { "mediaType": mt::OCI_CONFIG, "digest": cfg_digest, "size": cfg_size },
            "layers": layers,
        });
        let (m_digest, m_size) = self.put_blob(&json_bytes(&manifest))?;
        let arch = config
            .get("architecture")
            .and_then(Value::as_str)
            .unwrap_or(host_architecture());
        let os = config.get("os").and_then(Value::as_str).unwrap_or("linux");
        Ok(json!({
            "mediaType": mt::OCI_MANIFEST,
            "digest": m_digest,
            "size": m_size,
            "annotations": { mt::REF_NAME: name },
            "platform": { "architecture": arch, "os": os },
        }))
    }

    /// Writes `oci-layout` and `index.json`.
    pub fn put_index(&self, entries: &[Value]) -> Result<()> {
        self.put(
            "oci-layout",
            &json_bytes(&json!({ "imageLayoutVersion": mt::OCI_LAYOUT_VERSION })),
        )?;
        self.put(
            "index.json",
            &json_bytes(&json!({
                "schemaVersion": 2,
                "mediaType": mt::OCI_INDEX,
                "manifests": entries,
            })),
        )
    }

    /// Moves the staged tree to the destination.
    pub fn commit(mut self) -> Result<()> {
        if self.as_tar {
            let mut tmp = self.root.clone().into_os_string();
            tmp.push(".tar");
            let tmp = PathBuf::from(tmp);
            let result = write_tree_tar(&self.root, &tmp).and_then(|()| {
                fs::rename(&tmp, &self.dest).map_err(|e| Error::io("rename", &tmp, e))
            });
            if result.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            result?;
        } else {
            if self.dest.is_dir() {
                fs::remove_dir(&self.dest).map_err(|e| Error::io("remove", &self.dest, e))?;
            }
            fs::rename(&self.root, &self.dest).map_err(|e| Error::io("rename", &self.root, e))?;
            self.committed = true;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

/// Packs the directory `root` into the tar file `out`, sorted, with fixed
/// owners, modes and times.
pub(crate) fn write_tree_tar(root: &Path, out: &Path) -> Result<()> {
    let file = File::create(out).map_err(|e| Error::io("create", out, e))?;
    let mut b = tar::Builder::new(BufWriter::new(file));
    add_tree(&mut b, root, "").map_err(|e| Error::io("write", out, e))?;
    let w = b.into_inner().map_err(|e| Error::io("write", out, e))?;
    let file = w
        .into_inner()
        .map_err(|e| Error::io("write", out, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io("sync", out, e))
}

fn add_tree<W: Write>(b: &mut tar::Builder<W>, dir: &Path, prefix: &str) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let p = dir.join(&name);
        let member = format!("{prefix}{}", name.to_string_lossy());
        let meta = fs::metadata(&p)?;
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        if meta.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, format!("{member}/"), io::empty())?;
            add_tree(b, &p, &format!("{member}/"))?;
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(meta.len());
            b.append_data(&mut h, &member, File::open(&p)?)?;
        }
    }
    Ok(())
}
