//! Copy-on-write benchmarks: thinlayer against overlayfs on ext4 and on xfs
//! with reflink. Needs root and device-mapper: run it through
//! `vm-tests/bench` (or `vm-tests/bench --quick`), which writes
//! BENCHMARKS.md and its plots to the repository root.
//!
//! `cow [--quick] [--only WORKLOAD] [--counts N,...] [--out FILE] [--dir DIR]`
//! `--only`: one of first-write, latency, depth, sparse, churn, containerd,
//! density, throughput, page-cache, usage, peers, kubelet (benches/README.md
//! describes each).
//! `--counts`: the numbers of containers of the create-to-mounted workload.
//! `--dir`: where pools, loop files and mounts go (default `$SCRATCH/cow`).

mod backend;
mod channel;
mod kubelet;
mod measure;
mod overlay;
mod peers;
mod report;
mod workloads;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

fn setup(res: &mut workloads::Results) {
    let u = nix::sys::utsname::uname().ok();
    let kernel = u.map_or_else(
        || "unknown".to_string(),
        |u| {
            format!(
                "{} {}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy()
            )
        },
    );
    let emulation = if std::env::var_os("THINLAYER_VM").is_none() {
        "none: the host's kernel".to_string()
    } else if std::env::var("THINLAYER_VM_KVM").as_deref() == Ok("1") {
        "QEMU with KVM".to_string()
    } else {
        "QEMU, software emulation (TCG)".to_string()
    };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    res.setup.extend([
        ("kernel".to_string(), kernel),
        ("emulation".to_string(), emulation),
        ("CPUs".to_string(), cpus.to_string()),
        (
            "thin pool".to_string(),
            "sparse data and metadata files on loop devices with direct I/O; zeroing of new blocks skipped; layers ext4 (thinlayer's defaults)".to_string(),
        ),
        (
            "overlay".to_string(),
            "loop device with direct I/O over a sparse file; default overlayfs options".to_string(),
        ),
    ]);
}

fn main() -> Result<()> {
    let mut cfg = workloads::Config::full();
    let mut out = PathBuf::from("BENCHMARKS.md");
    let mut dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => {
                let only = cfg.only;
                cfg = workloads::Config::quick();
                cfg.only = only;
            }
            "--out" => out = args.next().context("--out needs a file")?.into(),
            "--dir" => {
                dir = Some(PathBuf::from(
                    args.next().context("--dir needs a directory")?,
                ))
            }
            "--counts" => {
                let list = args
                    .next()
                    .context("--counts needs a list, e.g. 1,10,100")?;
                cfg.counts = list
                    .split(',')
                    .map(|n| n.parse().with_context(|| format!("bad count {n:?}")))
                    .collect::<Result<_>>()?;
            }
            "--only" => {
                let w = args.next().context("--only needs a workload")?;
                cfg.only = Some(workloads::Workload::parse(&w).with_context(|| {
                    format!("no workload {w:?}; one of {}", workloads::Workload::names())
                })?);
            }
            // cargo bench passes --bench.
            "--bench" => {}
            other => bail!(
                "unknown argument {other:?}; usage: cow [--quick] [--only {}] [--counts N,N,...] [--out FILE] [--dir DIR]",
                workloads::Workload::names()
            ),
        }
    }
    let dir = match dir {
        Some(d) => d,
        None => match std::env::var_os("SCRATCH") {
            Some(s) => PathBuf::from(s).join("cow"),
            None => {
                // Plain `cargo bench` on a host: this one needs the VM.
                eprintln!(
                    "cow: not run: it needs root, device-mapper and a scratch disk; \
                     run vm-tests/bench [--quick], or pass --dir DIR on a machine with dm-thin"
                );
                return Ok(());
            }
        },
    };
    let mut res = workloads::run(&dir, &cfg)?;
    let _ = std::fs::remove_dir(&dir);
    setup(&mut res);
    report::write(&out, &res, &cfg)?;
    eprintln!("cow: wrote {} in {:.0} s", out.display(), res.seconds);
    Ok(())
}
