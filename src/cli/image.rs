//! `thinlayer image ...`

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use serde::Serialize;

use super::{Ctx, output, progress};
use crate::driver::ImportLayer;
use crate::image::{ExportImage, ImageArchive, write_oci_layout};
use crate::tree::ImageRef;

/// Labels recorded on imported layers.
pub const DIFF_ID: &str = "thinlayer.io/diff-id";
pub const BLOB: &str = "thinlayer.io/blob";

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Import an OCI image layout (directory or tar) or a `docker save`
    /// archive. Each layer is applied onto a snapshot of the one below and
    /// committed under its chain id, so a layer two images share is stored
    /// once. Digests are verified; a failed import leaves nothing behind.
    Import {
        path: PathBuf,
        /// Name the image NAME[:TAG] (the archive must hold one image);
        /// otherwise the names in the archive are used.
        #[arg(long)]
        name: Option<String>,
    },
    /// Write an image as an OCI image layout: a directory, or a tar when
    /// PATH ends in .tar. Each layer is recomputed from the thin snapshots.
    Export {
        image: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// List images with their top layer and thin id.
    Ls,
    /// Show an image's layers with their thin ids, digests and sizes.
    Inspect { image: String },
    /// Show how an image was built, from its config.
    History { image: String },
    /// Remove an image name, and every layer no other image or container uses.
    Rm { image: String },
}

#[derive(Serialize)]
struct ImageRow {
    name: String,
    top_layer: String,
    thin_id: u32,
    layers: usize,
    created: u64,
}

#[derive(Serialize)]
struct Imported {
    name: String,
    layers: Vec<crate::driver::ImportedLayer>,
}

#[derive(Serialize)]
struct LayerInfo {
    key: String,
    thin_id: u32,
    diff_id: Option<String>,
    size: Option<u64>,
    virtual_size: Option<u64>,
}

#[derive(Serialize)]
struct Inspect {
    name: String,
    created: u64,
    layers: Vec<LayerInfo>,
    config: Option<serde_json::Value>,
}

pub fn run(ctx: &Ctx, cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::Import { path, name } => import(ctx, &path, name.as_deref()),
        ImageCmd::Export { image, output } => export(ctx, &image, &output),
        ImageCmd::Ls => ls(ctx),
        ImageCmd::Inspect { image } => inspect(ctx, &image),
        ImageCmd::History { image } => history(ctx, &image),
        ImageCmd::Rm { image } => {
            let r = ImageRef::parse(&image)?;
            ctx.open()?
                .remove_image(&r)
                .with_context(|| format!("cannot remove image {r}"))?;
            output::Done::new("removed", "image", &r)
                .text(r.to_string())
                .print(ctx.json)
        }
    }
}

fn import(ctx: &Ctx, path: &std::path::Path, name: Option<&str>) -> anyhow::Result<()> {
    let archive = ImageArchive::open(path)
        .with_context(|| format!("cannot read image archive {}", path.display()))?;
    let images = archive.images();
    if name.is_some() && images.len() != 1 {
        anyhow::bail!(crate::Error::invalid(
            "--name",
            name.unwrap_or_default(),
            &format!(
                "the archive holds {} images; --name names exactly one",
                images.len()
            )
        ));
    }
    let driver = ctx.open()?;
    let mut reports = Vec::new();
    for img in images {
        let name = match name.or(img.name.as_deref()) {
            Some(n) => ImageRef::parse(n)?,
            None => anyhow::bail!(crate::Error::invalid(
                "image archive",
                &path.display().to_string(),
                "it names no image; give --name NAME[:TAG]"
            )),
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
        let bar = progress::bar(&format!("importing {name}"));
        let n = img.layers.len();
        let report = driver
            .import_image(&name, &layers, Some(img.config.raw.clone()), |i, mount| {
                let layer = &img.layers[i];
                bar.set_message(format!("importing {name}: layer {} of {n}", i + 1));
                let reader = archive.open_layer(layer)?;
                let mut reader = progress::Counted::new(reader, &bar);
                crate::layer::apply_layer(mount, &mut reader)?;
                reader.into_inner().finish()
            })
            .with_context(|| format!("cannot import {name} from {}", path.display()))?;
        bar.finish_and_clear();
        if !ctx.json {
            let new = report.iter().filter(|l| !l.reused).count();
            println!(
                "{name}: {} layers, {new} new, {} already stored",
                report.len(),
                report.len() - new
            );
        }
        reports.push(Imported {
            name: name.to_string(),
            layers: report,
        });
    }
    if ctx.json {
        return output::json(&reports);
    }
    Ok(())
}

fn export(ctx: &Ctx, image: &str, dest: &std::path::Path) -> anyhow::Result<()> {
    let r = ImageRef::parse(image)?;
    let driver = ctx.open()?;
    let (img, layers) = driver.image_layers(&r)?;
    let work = ctx.root.join(format!("export-{}", std::process::id()));
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let result = (|| -> anyhow::Result<()> {
        let mut tars = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let path = work.join(format!("{i}.tar"));
            let file = fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            driver.with_layer_and_parent(&l.key, |lower, upper| {
                crate::layer::write_diff(Some(lower), upper, std::io::BufWriter::new(file))
                    .map(|_| ())
            })?;
            tars.push(path);
        }
        write_oci_layout(
            dest,
            &[ExportImage {
                name: r.to_string(),
                layers: tars,
                config: img.config.clone(),
            }],
        )?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&work);
    result.with_context(|| format!("cannot export {r} to {}", dest.display()))?;
    output::Done::new("exported", "image", &r)
        .field("path", dest)
        .field("layers", layers.len())
        .text(format!(
            "{r} exported to {} ({} layers)",
            dest.display(),
            layers.len()
        ))
        .print(ctx.json)
}

fn ls(ctx: &Ctx) -> anyhow::Result<()> {
    let tree = ctx.open()?.tree()?;
    let rows: Vec<ImageRow> = tree
        .images
        .values()
        .map(|i| ImageRow {
            name: i.name.clone(),
            top_layer: i.top.clone(),
            thin_id: tree
                .layers
                .get(&i.top)
                .map(|l| l.thin_id.get())
                .unwrap_or(0),
            layers: tree.ancestry(&i.top).map(|a| a.len()).unwrap_or(0),
            created: i.created,
        })
        .collect();
    if ctx.json {
        return output::json(&rows);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.top_layer.clone(),
                r.thin_id.to_string(),
                r.layers.to_string(),
            ]
        })
        .collect();
    output::table(&["IMAGE", "TOP LAYER", "THIN ID", "LAYERS"], &cells);
    Ok(())
}

fn inspect(ctx: &Ctx, image: &str) -> anyhow::Result<()> {
    let r = ImageRef::parse(image)?;
    let driver = ctx.open()?;
    let (img, layers) = driver.image_layers(&r)?;
    let sizes = driver.sizes()?;
    let info = Inspect {
        name: img.name.clone(),
        created: img.created,
        layers: layers
            .iter()
            .map(|l| LayerInfo {
                key: l.key.clone(),
                thin_id: l.thin_id.get(),
                diff_id: l.labels.get(DIFF_ID).cloned(),
                size: sizes.get(&l.key).map(|s| s.size.0),
                virtual_size: sizes.get(&l.key).map(|s| s.virtual_size.0),
            })
            .collect(),
        config: img.config.clone(),
    };
    if ctx.json {
        return output::json(&info);
    }
    println!("{}", info.name);
    let rows: Vec<Vec<String>> = info
        .layers
        .iter()
        .map(|l| {
            vec![
                l.thin_id.to_string(),
                l.key.clone(),
                l.diff_id.clone().unwrap_or_else(|| "-".into()),
                l.size
                    .map(|s| crate::units::Bytes(s).to_string())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    output::table(&["THIN ID", "LAYER", "DIFF ID", "SIZE"], &rows);
    Ok(())
}

#[derive(Serialize)]
struct HistoryRow {
    created: Option<String>,
    created_by: Option<String>,
    comment: Option<String>,
    empty_layer: bool,
}

fn history(ctx: &Ctx, image: &str) -> anyhow::Result<()> {
    let r = ImageRef::parse(image)?;
    let (img, layers) = ctx.open()?.image_layers(&r)?;
    let from_config = img
        .config
        .as_ref()
        .and_then(|c| c.get("history"))
        .and_then(|h| h.as_array())
        .map(|h| {
            h.iter()
                .map(|e| HistoryRow {
                    created: e.get("created").and_then(|v| v.as_str()).map(String::from),
                    created_by: e
                        .get("created_by")
                        .and_then(|v| v.as_str())
                        .map(String::from),
                    comment: e.get("comment").and_then(|v| v.as_str()).map(String::from),
                    empty_layer: e
                        .get("empty_layer")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false),
                })
                .collect::<Vec<_>>()
        });
    // Images made by commits carry no config: one row per layer.
    let rows = from_config.unwrap_or_else(|| {
        layers
            .iter()
            .map(|l| HistoryRow {
                created: Some(l.created.to_string()),
                created_by: Some(format!("thinlayer container commit (thin {})", l.thin_id)),
                comment: None,
                empty_layer: false,
            })
            .collect()
    });
    if ctx.json {
        return output::json(&rows);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .rev()
        .map(|h| {
            vec![
                h.created.clone().unwrap_or_default(),
                h.created_by.clone().unwrap_or_default(),
                if h.empty_layer {
                    "0 B".into()
                } else {
                    "layer".into()
                },
                h.comment.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(&["CREATED", "CREATED BY", "LAYER", "COMMENT"], &cells);
    Ok(())
}
