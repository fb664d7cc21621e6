//! Operations on layer content: importing image layers, and mounting a layer
//! beside its parent to compute its changes (diff, commit digests, export).
//! The content itself is written and read by [`crate::layer`]; these hold the
//! root's lock for the whole of their work.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::{Driver, Op};
use crate::error::{Error, Result};
use crate::failpoint::{self, import};
use crate::layer::DiffStats;
use crate::tree::{ImageRef, Kind, Layer};
use crate::units::ThinId;

/// Label on the layers of an import in progress, and on the layers an
/// image removal is about to remove. Both hold the root's lock from start to
/// end, so a layer still carrying it when another command takes the lock was
/// left by a killed import or removal, and is removed.
pub const IMPORTING: &str = "thinlayer.io/importing";

/// Label on an imported layer, and on a layer committed with its digest:
/// the digest of the layer's uncompressed tar (its OCI diff id).
pub const DIFF_ID: &str = "thinlayer.io/diff-id";

/// Label on an imported layer: the digest of its blob as the archive stored
/// it (compressed or not).
pub const BLOB: &str = "thinlayer.io/blob";

/// One layer of an image to import, bottom first.
#[derive(Clone, Debug)]
pub struct ImportLayer {
    /// The layer's key: its OCI chain id, so a layer two images share is stored once.
    pub key: String,
    /// Recorded on the layer (diff id, blob digest, ...).
    pub labels: BTreeMap<String, String>,
}

/// What became of one layer.
#[derive(Clone, Debug, Serialize)]
pub struct ImportedLayer {
    pub key: String,
    pub thin_id: ThinId,
    /// Already stored (by an earlier import of another image): nothing was written.
    pub reused: bool,
}

impl Driver {
    /// Imports an image: for each layer not already stored, a snapshot of the
    /// layer below is made, mounted, filled by `apply(index, mount_path)` and
    /// committed under its key; then `name` points at the top. A failure at
    /// any step removes every layer this import made, so nothing is left.
    pub fn import_image(
        &self,
        name: &ImageRef,
        layers: &[ImportLayer],
        config: Option<serde_json::Value>,
        mut apply: impl FnMut(usize, &Path) -> Result<()>,
    ) -> Result<Vec<ImportedLayer>> {
        if layers.is_empty() {
            return Err(Error::invalid(
                "image",
                &name.to_string(),
                "it has no layers",
            ));
        }
        let mut op = self.begin()?;
        let mut made: Vec<String> = Vec::new();
        let result = (|| {
            let mut out = Vec::new();
            let mut parent: Option<String> = None;
            for (i, l) in layers.iter().enumerate() {
                crate::tree::validate_key(&l.key)?;
                if let Some(existing) = op.rec.tree.layers.get(&l.key) {
                    if existing.kind != Kind::Committed || existing.parent != parent {
                        return Err(Error::Inconsistent {
                            pool: op.pool().name(),
                            detail: format!(
                                "layer {} exists but is not the committed child of {parent:?}",
                                l.key
                            ),
                        });
                    }
                    out.push(ImportedLayer {
                        key: l.key.clone(),
                        thin_id: existing.thin_id,
                        reused: true,
                    });
                    parent = Some(l.key.clone());
                    continue;
                }
                let work = format!("{IMPORTING}/{}", l.key);
                let mut labels = l.labels.clone();
                labels.insert(IMPORTING.to_string(), "true".to_string());
                let layer = op.create_layer(
                    &work,
                    parent.as_deref(),
                    Kind::Active,
                    super::LayerOptions {
                        labels,
                        ..Default::default()
                    },
                )?;
                made.push(work.clone());
                failpoint::hit(import::AFTER_CREATE);
                let mount = op.mount(&work)?;
                failpoint::hit(import::AFTER_MOUNT);
                let applied = apply(i, &mount);
                op.umount(&work)?;
                applied?;
                failpoint::hit(import::AFTER_APPLY);
                op.commit(&work, &l.key)?;
                failpoint::hit(import::AFTER_COMMIT);
                made.pop();
                made.push(l.key.clone());
                out.push(ImportedLayer {
                    key: l.key.clone(),
                    thin_id: layer.thin_id,
                    reused: false,
                });
                parent = Some(l.key.clone());
            }
            failpoint::hit(import::AFTER_LAYERS);
            // Named, the layers are the image's: drop the in-progress marks.
            for key in &made {
                op.rec.tree.get_mut(key)?.labels.remove(IMPORTING);
            }
            op.tag(
                &name.to_string(),
                parent.as_deref().expect("at least one layer"),
                config,
            )?;
            Ok(out)
        })();
        if result.is_err() {
            op.remove_made(&made);
        }
        result
    }

    /// Writes the changes of layer `key` against its parent to `out` as an
    /// OCI layer tar (see [`crate::layer::write_diff`]), with both mounted
    /// meanwhile (the empty base stands for a layer without a parent).
    pub fn write_changes(&self, key: &str, out: impl Write) -> Result<DiffStats> {
        self.begin()?.write_changes(key, out)
    }

    /// The committed layers of an image, bottom first.
    pub fn image_layers(&self, image: &ImageRef) -> Result<(crate::tree::Image, Vec<Layer>)> {
        self.begin()?.image_layers(image)
    }
}

impl Op<'_> {
    /// See [`Driver::image_layers`].
    pub(super) fn image_layers(
        &self,
        image: &ImageRef,
    ) -> Result<(crate::tree::Image, Vec<Layer>)> {
        let img = self.image(image)?.clone();
        let mut chain: Vec<Layer> = self
            .rec
            .tree
            .ancestry(&img.top)?
            .into_iter()
            .cloned()
            .collect();
        chain.reverse();
        Ok((img, chain))
    }

    /// See [`Driver::write_changes`].
    pub(super) fn write_changes(&mut self, key: &str, out: impl Write) -> Result<DiffStats> {
        self.with_layer_and_parent(key, |lower, upper| {
            crate::layer::write_diff(Some(lower), upper, out)
        })
    }

    /// Mounts `key` and, read-only, its parent (the empty base for a layer
    /// without one, so the base's own entries such as `lost+found` are not
    /// taken for changes), runs `f(parent, layer)`, and unmounts both.
    fn with_layer_and_parent<T>(
        &mut self,
        key: &str,
        f: impl FnOnce(&Path, &Path) -> Result<T>,
    ) -> Result<T> {
        let layer = self.rec.tree.get(key)?.clone();
        let parent_mount = match &layer.parent {
            Some(p) => self.mount(p)?,
            None => self.mount_base()?,
        };
        let result = self.mount(key).and_then(|m| {
            let r = f(&parent_mount, &m);
            self.umount(key).and(r)
        });
        let down = match &layer.parent {
            Some(p) => self.umount(p),
            None => self.umount_base(),
        };
        result.and_then(|r| down.map(|()| r))
    }

    /// Mounts the base device read-only: once made (its mkfs, its root
    /// emptied), nothing writes it but the one-time emptying of an older
    /// pool's base (`Op::empty_old_base`). Not reference counted: one user
    /// at a time, under the root's lock; the reconciler removes a mount a
    /// crash left.
    fn mount_base(&mut self) -> Result<std::path::PathBuf> {
        let id = self
            .rec
            .tree
            .base
            .ok_or_else(|| Error::not_found("base layer", "(pool not initialised)"))?;
        let pool = self.pool();
        let (dev, _) =
            crate::thin::Thins { pool: &pool }.activate(id, self.rec.pool.base_size, true)?;
        let target = self.base_mount_path();
        self.mount_fs(&dev, &target, true)?;
        Ok(target)
    }

    fn umount_base(&mut self) -> Result<()> {
        let target = self.base_mount_path();
        self.umount_settled(&target)?;
        let _ = std::fs::remove_dir(&target);
        let id = self.rec.tree.base.expect("mounted above");
        let pool = self.pool();
        crate::thin::Thins { pool: &pool }.deactivate(id)
    }

    /// Removes layers an unfinished import made, newest first; a failure
    /// here is logged, and the next operation checks the root in full,
    /// which retries.
    fn remove_made(&mut self, made: &[String]) {
        for key in made.iter().rev() {
            let cleaned = (|| {
                while self.rec.tree.get(key)?.mounts > 0 {
                    self.umount(key)?;
                }
                self.remove_layer_now(key)
            })();
            if let Err(e) = cleaned {
                tracing::error!(layer = key, error = %e, "could not remove a layer of a failed import");
                // Marked: the next operation's full check removes it.
                self.check_next = true;
            }
        }
    }

    /// Removes what a killed import or image removal left: the layers still
    /// marked [`IMPORTING`], deepest first. A marked layer that still has a
    /// child (one not marked) is kept.
    pub(super) fn remove_crashed_imports(&mut self) -> Result<()> {
        let mut left: Vec<(u64, String)> = self
            .rec
            .tree
            .layers
            .values()
            .filter(|l| l.labels.contains_key(IMPORTING))
            .map(|l| (u64::from(l.thin_id.get()), l.key.clone()))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        // Children were made after their parents: newest (highest id) first
        // is not guaranteed after id wrap-around, so order by depth instead.
        left.sort_by_key(|(_, k)| {
            std::cmp::Reverse(self.rec.tree.ancestry(k).map(|a| a.len()).unwrap_or(0))
        });
        for (_, key) in left {
            if !self.rec.tree.children(&key).is_empty() {
                continue;
            }
            tracing::warn!(layer = key, "removing a layer of an interrupted import");
            while self.rec.tree.get(&key)?.mounts > 0 {
                self.umount(&key)?;
            }
            self.remove_layer_now(&key)?;
        }
        Ok(())
    }
}
