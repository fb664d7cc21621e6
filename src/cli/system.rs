//! `thinlayer system ...`

use std::fmt;

use clap::Subcommand;
use serde::Serialize;

use super::Ctx;
use super::output::{Report, Table};
use crate::driver::{ContainerUsage, DiskUsage, ImageUsage, PoolSpace, UsageSummary};
use crate::units::Bytes;

#[derive(Subcommand, Debug)]
pub enum SystemCmd {
    /// Show disk usage, as `docker system df`: images, containers, and the
    /// pool's space with what the host holds for it.
    ///
    /// Images: TOTAL named images, ACTIVE those at least one container is
    /// made from, SIZE every image layer (what each adds to its parent, a
    /// layer several images share counted once), RECLAIMABLE the image
    /// layers no container is built on: what removing the images no
    /// container uses would free. Containers (and views): TOTAL, ACTIVE
    /// those mounted or held by containerd, SIZE what they wrote,
    /// RECLAIMABLE what the ones not in use wrote: what removing them would
    /// free. Sizes are exact, in whole pool blocks, from the pool's
    /// metadata (as `ps -s`).
    ///
    /// The pool: data and metadata space used and total, and for a pool on
    /// loop files the sparse files' length and what the host's filesystem
    /// has really allocated to them (`du`).
    ///
    /// With `-v` (the global flag, which also logs more), it also lists
    /// every image (size, shared and unique size, containers) and every
    /// container (device size, size, virtual size, whether in use), as
    /// `docker system df -v`.
    ///
    /// Example: `thinlayer system df -v`.
    Df,
}

pub fn run(ctx: &Ctx, cmd: SystemCmd) -> anyhow::Result<Report> {
    match cmd {
        SystemCmd::Df => Report::of(&Df {
            usage: ctx.open()?.disk_usage()?,
            verbose: ctx.verbose > 0,
        }),
    }
}

/// The answer: the lists only with `-v`, in JSON too.
struct Df {
    usage: DiskUsage,
    verbose: bool,
}

#[derive(Serialize)]
struct DfJson<'a> {
    images: &'a UsageSummary,
    containers: &'a UsageSummary,
    pool: &'a PoolSpace,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_list: Option<&'a [ImageUsage]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_list: Option<&'a [ContainerUsage]>,
}

impl Serialize for Df {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let u = &self.usage;
        DfJson {
            images: &u.images,
            containers: &u.containers,
            pool: &u.pool,
            image_list: self.verbose.then_some(u.image_list.as_slice()),
            container_list: self.verbose.then_some(u.container_list.as_slice()),
        }
        .serialize(s)
    }
}

/// `part` as a share of `whole`, as `docker system df` shows it: `12.0 MiB (40%)`.
fn share(part: Bytes, whole: Bytes) -> String {
    match (part.0 * 100).checked_div(whole.0) {
        Some(pct) => format!("{part} ({pct}%)"),
        None => part.to_string(),
    }
}

impl fmt::Display for Df {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = &self.usage;
        let line = |name: &str, s: &UsageSummary| {
            vec![
                name.to_string(),
                s.total.to_string(),
                s.active.to_string(),
                s.size.to_string(),
                share(s.reclaimable, s.size),
            ]
        };
        Table {
            headers: &["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
            rows: vec![line("Images", &u.images), line("Containers", &u.containers)],
        }
        .fmt(f)?;
        writeln!(f)?;
        let p = &u.pool;
        let mut rows = vec![
            vec![
                "data".to_string(),
                share(p.data_used, p.data_total),
                p.data_total.to_string(),
            ],
            vec![
                "metadata".to_string(),
                share(p.metadata_used, p.metadata_total),
                p.metadata_total.to_string(),
            ],
        ];
        let files = !p.files.is_empty();
        for (row, file) in rows.iter_mut().zip(&p.files) {
            row.push(file.path.display().to_string());
            row.push(share(file.allocated, file.size));
        }
        let headers: &[&str] = if files {
            &["POOL", "USED", "TOTAL", "HOST FILE", "HOST ALLOCATED"]
        } else {
            &["POOL", "USED", "TOTAL"]
        };
        Table { headers, rows }.fmt(f)?;
        if p.pending_removals > 0 {
            writeln!(
                f,
                "\n{} removed layer(s) still hold {} of the data space until their \
                 blocks are freed (in the background under `thinlayer serve`, at once \
                 by `thinlayer pool cleanup`)",
                p.pending_removals, p.pending_bytes
            )?;
        }
        if !self.verbose {
            return Ok(());
        }
        writeln!(f, "\nImages space usage:\n")?;
        Table {
            headers: &["IMAGE", "SIZE", "SHARED SIZE", "UNIQUE SIZE", "CONTAINERS"],
            rows: u
                .image_list
                .iter()
                .map(|i| {
                    vec![
                        i.name.clone(),
                        i.size.to_string(),
                        i.shared_size.to_string(),
                        i.unique_size.to_string(),
                        i.containers.to_string(),
                    ]
                })
                .collect(),
        }
        .fmt(f)?;
        writeln!(f, "\nContainers space usage:\n")?;
        Table {
            headers: &[
                "NAME",
                "IMAGE",
                "KIND",
                "DEVICE SIZE",
                "SIZE",
                "VIRTUAL SIZE",
                "STATUS",
            ],
            rows: u
                .container_list
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        c.image.clone().unwrap_or_else(|| "-".into()),
                        c.kind.name().to_string(),
                        c.device_size.to_string(),
                        c.size.to_string(),
                        c.virtual_size.to_string(),
                        if c.active { "in use" } else { "-" }.to_string(),
                    ]
                })
                .collect(),
        }
        .fmt(f)
    }
}
