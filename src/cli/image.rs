//! `thinlayer image ...`

use anyhow::Context as _;
use clap::Subcommand;
use serde::Serialize;

use super::{Ctx, output};
use crate::tree::ImageRef;

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// List images with their top layer and thin id.
    Ls,
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

pub fn run(ctx: &Ctx, cmd: ImageCmd) -> anyhow::Result<()> {
    let driver = ctx.open()?;
    match cmd {
        ImageCmd::Ls => {
            let tree = driver.tree()?;
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
        }
        ImageCmd::Rm { image } => {
            let r = ImageRef::parse(&image)?;
            driver
                .remove_image(&r)
                .with_context(|| format!("cannot remove image {r}"))?;
            if !ctx.json {
                println!("{r}");
            }
        }
    }
    Ok(())
}
