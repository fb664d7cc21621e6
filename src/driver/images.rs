//! Images in and out of the pool: importing an image archive, exporting an
//! image as an OCI layout, and committing a container with its content
//! digest. Each is one driver operation; the command line only names the
//! archive and prints what these return.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{BLOB, DIFF_ID, Driver, ImportLayer, ImportedLayer};
use crate::error::{Error, Result};
use crate::image::{DigestWriter, ExportImage, ImageArchive, write_oci_layout};
use crate::tree::{ImageRef, Layer};

/// What a long operation reports as it goes, e.g. to a progress bar.
/// Both methods do nothing unless overridden; `()` reports nothing.
pub trait Progress {
    /// Layer `index` (from 0, bottom first) of the `count` layers of
    /// `image` is about to be applied.
    fn layer(&self, image: &ImageRef, index: usize, count: usize) {
        let _ = (image, index, count);
    }

    /// `n` more bytes of layer content were read.
    fn bytes(&self, n: u64) {
        let _ = n;
    }
}

impl Progress for () {}

/// One image of an archive, imported.
#[derive(Clone, Debug, Serialize)]
pub struct ImportedImage {
    pub name: String,
    /// Bottom first.
    pub layers: Vec<ImportedLayer>,
}

impl ImportedImage {
    /// Layers written by this import (the others were already stored).
    pub fn new_layers(&self) -> usize {
        self.layers.iter().filter(|l| !l.reused).count()
    }
}

/// An image written as an OCI layout.
#[derive(Clone, Debug, Serialize)]
pub struct ExportedImage {
    pub name: String,
    pub path: PathBuf,
    pub layers: usize,
}

/// A reader that reports the bytes read through it.
struct Counted<'a, R> {
    inner: R,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.bytes(n as u64);
        Ok(n)
    }
}

impl Driver {
    /// Imports every image of an OCI layout or `docker save` archive, or
    /// the one image it holds under `name` when given. Each layer is applied
    /// onto a snapshot of the one below and committed under its chain id, so
    /// a layer two images share is stored once; the blob digest and diff id
    /// of every layer are checked, and recorded on the layer as [`BLOB`] and
    /// [`DIFF_ID`]. An image whose import fails leaves nothing of itself
    /// behind; the images before it stay imported.
    pub fn import_archive(
        &self,
        archive: &ImageArchive,
        name: Option<&ImageRef>,
        progress: &dyn Progress,
    ) -> Result<Vec<ImportedImage>> {
        let images = archive.images();
        if let Some(n) = name.filter(|_| images.len() != 1) {
            return Err(Error::invalid(
                "image name",
                &n.to_string(),
                &format!(
                    "the archive holds {} images; a name names exactly one",
                    images.len()
                ),
            ));
        }
        let mut out = Vec::new();
        for img in images {
            let name = match (name, img.name.as_deref()) {
                (Some(n), _) => n.clone(),
                (None, Some(n)) => ImageRef::parse(n)?,
                (None, None) => {
                    return Err(Error::invalid(
                        "image archive",
                        &archive.path().display().to_string(),
                        "it names no image: give the image a name",
                    ));
                }
            };
            let layers: Vec<ImportLayer> = img
                .layers
                .iter()
                .map(|l| ImportLayer {
                    key: l.chain_id.to_string(),
                    labels: BTreeMap::from([
                        (DIFF_ID.to_string(), l.diff_id.to_string()),
                        (BLOB.to_string(), l.blob.to_string()),
                    ]),
                })
                .collect();
            let count = img.layers.len();
            let layers =
                self.import_image(&name, &layers, Some(img.config.raw.clone()), |i, mount| {
                    progress.layer(&name, i, count);
                    let reader = archive.open_layer(&img.layers[i])?;
                    let mut reader = Counted {
                        inner: reader,
                        progress,
                    };
                    crate::layer::apply_layer(mount, &mut reader)?;
                    reader.inner.finish()
                })?;
            out.push(ImportedImage {
                name: name.to_string(),
                layers,
            });
        }
        Ok(out)
    }

    /// Writes an image as an OCI image layout at `dest` (a tar when it ends
    /// in `.tar`, else a directory that must not exist or be empty), each
    /// layer recomputed from the thin snapshots as the changes against the
    /// layer below, in one operation. The layer tars are staged in a
    /// directory under the root and removed afterwards.
    pub fn export_image(&self, image: &ImageRef, dest: &Path) -> Result<ExportedImage> {
        let mut op = self.begin()?;
        let (img, layers) = op.image_layers(image)?;
        let work = self.root().join(format!("export-{}", std::process::id()));
        fs::create_dir_all(&work).map_err(|e| Error::io("create", &work, e))?;
        let written = (|| {
            let mut tars = Vec::new();
            for (i, l) in layers.iter().enumerate() {
                let path = work.join(format!("{i}.tar"));
                let file = fs::File::create(&path).map_err(|e| Error::io("create", &path, e))?;
                op.write_changes(&l.key, std::io::BufWriter::new(file))?;
                tars.push(path);
            }
            write_oci_layout(
                dest,
                &[ExportImage {
                    name: image.to_string(),
                    layers: tars,
                    config: img.config.clone(),
                }],
            )
        })();
        let cleaned = fs::remove_dir_all(&work).map_err(|e| Error::io("remove", &work, e));
        written?;
        if let Err(e) = cleaned {
            tracing::warn!(error = %e, "cannot remove the export's work directory");
        }
        Ok(ExportedImage {
            name: image.to_string(),
            path: dest.to_path_buf(),
            layers: layers.len(),
        })
    }

    /// Commits container `key` as image `image` (see [`Driver::commit`]);
    /// with `digest`, also computes the new layer's content digest (the
    /// sha256 of its changes as an OCI layer tar: its diff id) and records
    /// it as [`DIFF_ID`], in the same operation. A crash between the two
    /// record writes leaves the image committed without its digest, as a
    /// commit without `digest` makes it.
    pub fn commit_container(&self, key: &str, image: &ImageRef, digest: bool) -> Result<Layer> {
        let mut op = self.begin()?;
        let layer = op.commit_as_image(key, image)?;
        if !digest {
            return Ok(layer);
        }
        let mut w = DigestWriter::new(std::io::sink());
        op.write_changes(&layer.key, &mut w)?;
        let diff_id = w.finish().1;
        let l = op.rec.tree.get_mut(&layer.key)?;
        l.labels.insert(DIFF_ID.to_string(), diff_id.to_string());
        let l = l.clone();
        op.save()?;
        Ok(l)
    }
}
