//! `thinlayer image ...`

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use indicatif::ProgressBar;
use serde::Serialize;

use super::output::{Done, Report, Said, Table};
use super::{Ctx, progress};
use crate::driver::{DIFF_ID, Progress};
use crate::image::ImageArchive;
use crate::tree::ImageRef;

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
    /// Remove an image name, and every layer no other image or container
    /// uses; those layers' blocks are discarded, back to the pool and the
    /// host.
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

pub fn run(ctx: &Ctx, cmd: ImageCmd) -> anyhow::Result<Report> {
    match cmd {
        ImageCmd::Import { path, name } => import(ctx, &path, name.as_deref()),
        ImageCmd::Export { image, output } => {
            let r = ImageRef::parse(&image)?;
            let done = ctx
                .open()?
                .export_image(&r, &output)
                .with_context(|| format!("cannot export {r} to {}", output.display()))?;
            Done::new("exported", "image", &r)
                .field("path", &done.path)
                .field("layers", done.layers)
                .text(format!(
                    "{r} exported to {} ({} layers)",
                    done.path.display(),
                    done.layers
                ))
                .report()
        }
        ImageCmd::Ls => ls(ctx),
        ImageCmd::Inspect { image } => inspect(ctx, &image),
        ImageCmd::History { image } => history(ctx, &image),
        ImageCmd::Rm { image } => {
            let r = ImageRef::parse(&image)?;
            ctx.open()?
                .remove_image(&r)
                .with_context(|| format!("cannot remove image {r}"))?;
            Done::new("removed", "image", &r)
                .text(r.to_string())
                .report()
        }
    }
}

/// The progress bar of an import: which layer, and bytes applied.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn layer(&self, image: &ImageRef, index: usize, count: usize) {
        self.0
            .set_message(format!("importing {image}: layer {} of {count}", index + 1));
    }

    fn bytes(&self, n: u64) {
        self.0.inc(n);
    }
}

fn import(ctx: &Ctx, path: &std::path::Path, name: Option<&str>) -> anyhow::Result<Report> {
    let name = name.map(ImageRef::parse).transpose()?;
    let archive = ImageArchive::open(path)
        .with_context(|| format!("cannot read image archive {}", path.display()))?;
    let driver = ctx.open()?;
    let bar = Bar(progress::bar("importing"));
    let imported = driver
        .import_archive(&archive, name.as_ref(), &bar)
        .with_context(|| format!("cannot import {}", path.display()));
    bar.0.finish_and_clear();
    let imported = imported?;
    let text: Vec<String> = imported
        .iter()
        .map(|i| {
            let new = i.new_layers();
            format!(
                "{}: {} layers, {new} new, {} already stored",
                i.name,
                i.layers.len(),
                i.layers.len() - new
            )
        })
        .collect();
    Report::of(&Said::new(imported, text.join("\n")))
}

fn ls(ctx: &Ctx) -> anyhow::Result<Report> {
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
    let table = Table {
        headers: &["IMAGE", "TOP LAYER", "THIN ID", "LAYERS"],
        rows: cells,
    };
    Report::of(&Said::new(rows, table.to_string()))
}

fn inspect(ctx: &Ctx, image: &str) -> anyhow::Result<Report> {
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
    let table = Table {
        headers: &["THIN ID", "LAYER", "DIFF ID", "SIZE"],
        rows,
    };
    let text = format!("{}\n{table}", info.name);
    Report::of(&Said::new(info, text))
}

#[derive(Serialize)]
struct HistoryRow {
    created: Option<String>,
    created_by: Option<String>,
    comment: Option<String>,
    empty_layer: bool,
}

fn history(ctx: &Ctx, image: &str) -> anyhow::Result<Report> {
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
    let table = Table {
        headers: &["CREATED", "CREATED BY", "LAYER", "COMMENT"],
        rows: cells,
    };
    Report::of(&Said::new(rows, table.to_string()))
}
