//! `thinlayer container ...`

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::{Ctx, output};
use crate::image::DigestWriter;
use crate::tree::ImageRef;

#[derive(Subcommand, Debug)]
pub enum ContainerCmd {
    /// Create a container: a writable thin snapshot of IMAGE's top layer, or
    /// of the empty base device when IMAGE is `scratch`.
    Create {
        /// IMAGE[:TAG], or `scratch`.
        image: String,
        /// The container's name: letters, digits, '_', '.', '-'.
        name: String,
    },
    /// Mount a container's filesystem and print the path. Mounts are counted:
    /// each mount needs an umount.
    Mount { name: String },
    /// Undo one mount; the last one unmounts and deactivates the device.
    Umount { name: String },
    /// Remove a container and free its blocks.
    Rm(RmArgs),
    /// Turn a container into a read-only image layer named IMAGE[:TAG]. The
    /// container is consumed; create new containers from the image.
    Commit {
        name: String,
        image: String,
        /// Also compute the layer's content digest (the sha256 of its changes
        /// as an OCI layer tar, its diff id) and record it on the layer.
        #[arg(long)]
        digest: bool,
    },
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Unmount it first if it is mounted.
    #[arg(short, long)]
    force: bool,
    name: String,
}

#[derive(Serialize)]
struct Mounted<'a> {
    name: &'a str,
    mount: std::path::PathBuf,
}

pub fn run(ctx: &Ctx, cmd: ContainerCmd) -> anyhow::Result<()> {
    let driver = ctx.open()?;
    match cmd {
        ContainerCmd::Create { image, name } => {
            let image = if image == "scratch" {
                None
            } else {
                Some(ImageRef::parse(&image)?)
            };
            let layer = driver
                .create_container(&name, image.as_ref())
                .with_context(|| format!("cannot create container {name}"))?;
            if ctx.json {
                return output::json(&layer);
            }
            println!("{name}");
        }
        ContainerCmd::Mount { name } => {
            let mount = driver
                .mount(&name)
                .with_context(|| format!("cannot mount container {name}"))?;
            if ctx.json {
                return output::json(&Mounted { name: &name, mount });
            }
            println!("{}", mount.display());
        }
        ContainerCmd::Umount { name } => {
            driver
                .umount(&name)
                .with_context(|| format!("cannot unmount container {name}"))?;
            output::Done::new("unmounted", "container", &name).print(ctx.json)?;
        }
        ContainerCmd::Rm(a) => {
            driver
                .remove(&a.name, a.force)
                .with_context(|| format!("cannot remove container {}", a.name))?;
            output::Done::new("removed", "container", &a.name)
                .text(&a.name)
                .print(ctx.json)?;
        }
        ContainerCmd::Commit {
            name,
            image,
            digest,
        } => {
            let image = ImageRef::parse(&image)?;
            let mut layer = driver
                .commit(&name, &image)
                .with_context(|| format!("cannot commit container {name}"))?;
            if digest {
                let diff_id = driver
                    .with_layer_and_parent(&layer.key, |lower, upper| {
                        let mut w = DigestWriter::new(std::io::sink());
                        crate::layer::write_diff(Some(lower), upper, &mut w)?;
                        Ok(w.finish().1)
                    })
                    .with_context(|| format!("cannot compute the content digest of {image}"))?;
                layer = driver.label_layer(
                    &layer.key,
                    std::collections::BTreeMap::from([(
                        super::image::DIFF_ID.to_string(),
                        diff_id.to_string(),
                    )]),
                )?;
            }
            if ctx.json {
                return output::json(&layer);
            }
            println!("{image}");
        }
    }
    Ok(())
}
