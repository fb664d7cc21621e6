//! `thinlayer pool ...`

use std::fmt;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::Ctx;
use super::output::{Done, Report, Said};
use crate::Driver;
use crate::fs::FsKind;
use crate::pool::{Autoextend, PoolOptions, PoolStatus, SourceOptions};
use crate::units::{BlockSize, Bytes};

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Create the pool: sparse files on loop devices under --root by default,
    /// or given block devices, or an existing pool; then the base device with
    /// an empty filesystem that every layer starts from.
    Init(InitArgs),
    /// Bring the pool up after a reboot: reattach its loop devices, check its
    /// metadata with thin_check and load its table. Every other command does
    /// this by itself when needed.
    Activate,
    /// Show data and metadata use, block size, transaction id and mode.
    Status,
    /// Give the pool more space: extends the sparse files (loop mode) or
    /// rereads grown block devices, and reloads the pool, which leaves
    /// out-of-data-space mode. A pool never shrinks.
    Grow {
        /// New size of the data file.
        #[arg(long)]
        data_size: Option<Bytes>,
        /// New size of the metadata file (at most 16G).
        #[arg(long)]
        metadata_size: Option<Bytes>,
    },
    /// Change how the pool grows by itself (loop files only): as LVM's
    /// thin_pool_autoextend_threshold and thin_pool_autoextend_percent, with
    /// a maximum. `thinlayer serve` does the growing. Without options, shows
    /// the policy. Example: `thinlayer pool set --autoextend-threshold 80
    /// --autoextend-percent 20 --autoextend-max 500G`; `--autoextend-threshold
    /// 100` turns it off.
    Set(AutoextendArgs),
    /// Free now the space of removed layers whose removal is not done
    /// (containerd's Cleanup): their mounts, devices and thin ids go, their
    /// blocks are discarded back to the pool and the host. `thinlayer
    /// serve` does this in the background as snapshots are removed; `pool
    /// status` and `system df` show what is pending. A removed layer whose
    /// device something still holds open stays pending (exit 5).
    Cleanup,
    /// Take the pool offline, check its metadata with thin_check and bring
    /// it back. Refused while containers are mounted.
    Check,
    /// Rebuild damaged metadata with thin_repair (loop-file pools): the
    /// repaired copy replaces the metadata file, the damaged one is kept
    /// beside it. Refused while containers are mounted.
    Repair,
    /// Remove every container, image and mount, the pool's devices and files,
    /// and the records. An existing pool given at init is left in place, with
    /// every thin device thinlayer made in it deleted.
    Destroy,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Size of the sparse data file (loop mode).
    #[arg(long, default_value = "100G")]
    data_size: Bytes,
    /// Size of the sparse metadata file (loop mode), 2 MiB to 16 GiB.
    #[arg(long, default_value = "2G")]
    metadata_size: Bytes,
    /// Pool data block size: the unit of copy-on-write, 64K to 1G in steps of 64K.
    #[arg(long, default_value = "64K")]
    block_size: Bytes,
    /// Size of every layer's block device (what `df` shows inside).
    #[arg(long, default_value = "10G")]
    base_size: Bytes,
    /// Filesystem of the layers: ext4 or xfs.
    #[arg(long = "fs", default_value = "ext4")]
    filesystem: FsKind,
    /// Refuse new layers while less than this percentage of the pool is free.
    #[arg(long, default_value_t = 10)]
    min_free_percent: u8,
    /// Use this block device for data instead of a loop file (with --metadata-device).
    #[arg(long, requires = "metadata_device", conflicts_with = "existing_pool")]
    data_device: Option<PathBuf>,
    /// Use this block device for the pool's metadata (with --data-device).
    #[arg(long, requires = "data_device")]
    metadata_device: Option<PathBuf>,
    /// Use a thin pool that already exists, by its device-mapper name.
    #[arg(long)]
    existing_pool: Option<String>,
    #[command(flatten)]
    autoextend: AutoextendArgs,
}

/// Automatic growth of a pool on loop files, done by `thinlayer serve`.
#[derive(Args, Debug)]
pub struct AutoextendArgs {
    /// Grow the pool when this percentage of its data or metadata space is
    /// used (LVM's thin_pool_autoextend_threshold): 50 to 100; 100, the
    /// default, never grows it. Loop files only.
    #[arg(long, value_name = "PCT")]
    autoextend_threshold: Option<u8>,
    /// Each growth adds this percentage of the space's current size, as many
    /// times as it takes to get back under the threshold (LVM's
    /// thin_pool_autoextend_percent; default 20).
    #[arg(long, value_name = "PCT")]
    autoextend_percent: Option<u16>,
    /// The data space never grows past this size (default: no maximum but
    /// the host filesystem's free space, less 5% of it or 1 GiB).
    #[arg(long, value_name = "SIZE")]
    autoextend_max: Option<Bytes>,
}

impl AutoextendArgs {
    fn given(&self) -> bool {
        self.autoextend_threshold.is_some()
            || self.autoextend_percent.is_some()
            || self.autoextend_max.is_some()
    }

    /// Applies the options given to `policy`.
    fn apply(&self, policy: &mut Autoextend) {
        if let Some(t) = self.autoextend_threshold {
            policy.threshold_percent = t;
        }
        if let Some(p) = self.autoextend_percent {
            policy.percent = p;
        }
        if let Some(m) = self.autoextend_max {
            policy.max = Some(m);
        }
    }
}

/// A policy, for people and for scripts.
#[derive(Serialize)]
#[serde(transparent)]
struct Policy(Autoextend);

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "autoextend: {}", policy_text(&self.0))
    }
}

/// The autoextend policy in words.
fn policy_text(a: &Autoextend) -> String {
    if !a.enabled() {
        return "off (threshold 100%); `pool set --autoextend-threshold` turns it on".into();
    }
    format!(
        "at {}% used, grow by {}% of the size, {}; done by `thinlayer serve`",
        a.threshold_percent,
        a.percent,
        match a.max {
            Some(m) => format!("data up to {m}"),
            None => "no maximum but the host's free space".into(),
        }
    )
}

pub fn run(ctx: &Ctx, cmd: PoolCmd) -> anyhow::Result<Report> {
    let root = ctx.root.display().to_string();
    match cmd {
        PoolCmd::Init(a) => init(ctx, a),
        PoolCmd::Activate => {
            ctx.open()?;
            Done::new("activated", "pool", &root)
                .text(format!("pool at {root} is active"))
                .report()
        }
        PoolCmd::Status => {
            let driver = ctx.open()?;
            Report::of(&Status {
                status: driver.status()?,
                autoextend: driver.records()?.pool.autoextend.unwrap_or_default(),
            })
        }
        PoolCmd::Grow {
            data_size,
            metadata_size,
        } => {
            let st = ctx
                .open()?
                .grow(data_size, metadata_size)
                .context("cannot grow the pool")?;
            let text = format!(
                "pool {}: {} data, {} metadata, {}",
                st.name,
                st.data_total,
                st.metadata_total,
                st.mode.as_str()
            );
            Report::of(&Said::new(st, text))
        }
        PoolCmd::Set(a) => {
            let driver = ctx.open()?;
            let policy = if a.given() {
                driver
                    .set_autoextend(|p| a.apply(p))
                    .context("cannot change the pool's autoextend policy")?
            } else {
                driver.records()?.pool.autoextend.unwrap_or_default()
            };
            Report::of(&Policy(policy))
        }
        PoolCmd::Cleanup => {
            let r = ctx
                .open()?
                .reap_all()
                .context("cannot free the space of removed layers")?;
            if r.held + r.failed > 0 {
                return Err(anyhow::Error::new(crate::Error::Busy {
                    kind: "pool",
                    name: root,
                    why: format!(
                        "{} removed layer(s) freed; {} still held open elsewhere, {} failed \
                         (see the log): they stay pending",
                        r.done, r.held, r.failed
                    ),
                }));
            }
            Done::new("cleaned", "pool", &root)
                .field("freed", r.done)
                .text(format!("freed {} removed layer(s)", r.done))
                .report()
        }
        PoolCmd::Check => {
            Driver::open_offline(&ctx.root, ctx.kernel.clone())?
                .check()
                .context("pool check failed")?;
            Done::new("checked", "pool", &root)
                .field("sound", true)
                .text(format!("pool metadata at {root} is sound"))
                .report()
        }
        PoolCmd::Repair => {
            let kept = Driver::open_offline(&ctx.root, ctx.kernel.clone())?
                .repair()
                .context("pool repair failed")?;
            Done::new("repaired", "pool", &root)
                .field("damaged_metadata", &kept)
                .text(format!(
                    "pool repaired; the damaged metadata is kept as {}",
                    kept.display()
                ))
                .report()
        }
        PoolCmd::Destroy => {
            ctx.open()?.destroy().context("cannot destroy the pool")?;
            Done::new("destroyed", "pool", &root)
                .text(format!("pool at {root} destroyed"))
                .report()
        }
    }
}

fn init(ctx: &Ctx, a: InitArgs) -> anyhow::Result<Report> {
    let source = match (a.data_device, a.metadata_device, a.existing_pool) {
        (Some(data), Some(metadata), None) => SourceOptions::Devices { data, metadata },
        (None, None, Some(pool)) => SourceOptions::Existing { pool },
        _ => SourceOptions::LoopFiles {
            data_size: a.data_size,
            metadata_size: a.metadata_size,
        },
    };
    let opts = PoolOptions {
        source,
        block_size: BlockSize::from_bytes(a.block_size)?,
        filesystem: a.filesystem,
        base_size: a.base_size,
        min_free_percent: a.min_free_percent,
    };
    let policy = a.autoextend.given().then(|| {
        let mut p = Autoextend::default();
        a.autoextend.apply(&mut p);
        p
    });
    if let Some(p) = &policy {
        opts.validate_autoextend(p)?;
    }
    let driver = Driver::init(&ctx.root, ctx.kernel.clone(), &opts)
        .with_context(|| format!("cannot create a pool at {}", ctx.root.display()))?;
    if let Some(p) = policy {
        driver
            .set_autoextend(|a| *a = p)
            .context("cannot record the pool's autoextend policy")?;
    }
    let st = driver.status()?;
    let text = format!(
        "pool {} ready at {}: {} data, {} metadata, {} blocks, {} layers of {}",
        st.name,
        ctx.root.display(),
        st.data_total,
        st.metadata_total,
        st.block_size,
        opts.filesystem,
        opts.base_size
    );
    Report::of(&Said::new(st, text))
}

/// `pool status`: the status and the autoextend policy, one field a line
/// for people.
#[derive(Serialize)]
struct Status {
    #[serde(flatten)]
    status: PoolStatus,
    autoextend: Autoextend,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = &self.status;
        let pct = |u: Bytes, t: Bytes| {
            if t.0 == 0 {
                0.0
            } else {
                u.0 as f64 * 100.0 / t.0 as f64
            }
        };
        writeln!(f, "pool:            {}", st.name)?;
        writeln!(
            f,
            "mode:            {}{}",
            st.mode.as_str(),
            if st.needs_check { " (needs check)" } else { "" }
        )?;
        writeln!(
            f,
            "data:            {} of {} used ({:.1}%), {} bytes of {}",
            st.data_used,
            st.data_total,
            pct(st.data_used, st.data_total),
            st.data_used.0,
            st.data_total.0
        )?;
        writeln!(
            f,
            "metadata:        {} of {} used ({:.1}%), {} bytes of {}",
            st.metadata_used,
            st.metadata_total,
            pct(st.metadata_used, st.metadata_total),
            st.metadata_used.0,
            st.metadata_total.0
        )?;
        writeln!(f, "block size:      {}", st.block_size)?;
        writeln!(f, "transaction id:  {}", st.transaction_id)?;
        writeln!(f, "thin devices:    {}", st.thin_devices)?;
        if st.pending_removals > 0 {
            writeln!(
                f,
                "removing:        {} removed layer(s) whose space is still held \
                 (`thinlayer system df` says how much, `thinlayer pool cleanup` frees it)",
                st.pending_removals
            )?;
        }
        if st.spares > 0 {
            writeln!(
                f,
                "spares:          {} (see `thinlayer serve --spares`)",
                st.spares
            )?;
        }
        writeln!(f, "autoextend:      {}", policy_text(&self.autoextend))
    }
}
