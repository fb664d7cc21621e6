//! `thinlayer container ...`

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::Ctx;
use super::output::{Done, Report, Said};
use crate::tree::ImageRef;
use crate::units::Bytes;

#[derive(Subcommand, Debug)]
pub enum ContainerCmd {
    /// Create a container: a writable thin snapshot of IMAGE's top layer, or
    /// of the empty base device when IMAGE is `scratch`.
    ///
    /// Its device is the image's size (the pool's `--base-size` unless the
    /// image was committed from a larger container), or `--size`.
    /// Example: `thinlayer container create --size 20G app:1 web1`.
    Create {
        /// IMAGE[:TAG], or `scratch`.
        image: String,
        /// The container's name: letters, digits, '_', '.', '-'.
        name: String,
        /// The container's device size, e.g. 20G (K, M, G, T: powers of
        /// 1024), rounded up to whole pool blocks; its filesystem is grown
        /// to fill it. At least the image's device size (`ps` shows each
        /// container's); a thin device takes pool space only for what is
        /// written, so a large size costs nothing until it is used. Images
        /// committed from it, and their containers, keep at least this size.
        #[arg(long, value_name = "SIZE")]
        size: Option<Bytes>,
    },
    /// Mount a container's filesystem and print the path. Mounts are counted:
    /// each mount needs an umount.
    Mount { name: String },
    /// Undo one mount; the last one trims the filesystem (the blocks its
    /// deleted files held go back to the pool), unmounts it and deactivates
    /// the device.
    Umount { name: String },
    /// Remove a container and free its blocks: those no image shares are
    /// discarded, which gives them back to the host (on loop files, `du` of
    /// the pool's data file falls).
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

pub fn run(ctx: &Ctx, cmd: ContainerCmd) -> anyhow::Result<Report> {
    let driver = ctx.open()?;
    match cmd {
        ContainerCmd::Create { image, name, size } => {
            let image = if image == "scratch" {
                None
            } else {
                Some(ImageRef::parse(&image)?)
            };
            let layer = driver
                .create_container_sized(&name, image.as_ref(), size)
                .with_context(|| format!("cannot create container {name}"))?;
            Report::of(&Said::new(layer, name))
        }
        ContainerCmd::Mount { name } => {
            let mount = driver
                .mount(&name)
                .with_context(|| format!("cannot mount container {name}"))?;
            let text = mount.display().to_string();
            Report::of(&Said::new(Mounted { name: &name, mount }, text))
        }
        ContainerCmd::Umount { name } => {
            driver
                .umount(&name)
                .with_context(|| format!("cannot unmount container {name}"))?;
            Done::new("unmounted", "container", &name).report()
        }
        ContainerCmd::Rm(a) => {
            driver
                .remove(&a.name, a.force)
                .with_context(|| format!("cannot remove container {}", a.name))?;
            Done::new("removed", "container", &a.name)
                .text(&a.name)
                .report()
        }
        ContainerCmd::Commit {
            name,
            image,
            digest,
        } => {
            let image = ImageRef::parse(&image)?;
            let layer = driver
                .commit_container(&name, &image, digest)
                .with_context(|| format!("cannot commit container {name} as {image}"))?;
            Report::of(&Said::new(layer, image.to_string()))
        }
    }
}
