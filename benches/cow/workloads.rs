//! The workloads, each run on every baseline, and the figures they produce.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};

use thinlayer::Driver;
use thinlayer::kernel::{Kernel, Linux};
use thinlayer::tree::{ImageRef, Kind};

use super::backend::{Cow, Thin};
use super::measure::{self, Sample};
use super::overlay::{Overlay, Under};
use super::{kubelet, peers};

/// Sizes of one run.
#[derive(Clone, Debug)]
pub struct Config {
    pub quick: bool,
    pub reps: usize,
    /// First write: file sizes.
    pub sizes: Vec<u64>,
    /// Create-to-mounted: numbers of containers.
    pub counts: Vec<usize>,
    /// Depth: numbers of layers.
    pub depths: Vec<usize>,
    /// Sparse updates: the file's size, and the shares of its 4 KiB blocks
    /// written, in thousandths.
    pub sparse_size: u64,
    pub sparse_permille: Vec<u64>,
    /// Churn: containers made and removed per run, and the size of the
    /// groups each timed as one figure.
    pub churn: usize,
    pub churn_group: usize,
    pub churn_reps: usize,
    /// containerd-shaped: layers, files per layer, size of each file.
    pub cd_layers: usize,
    pub cd_files: usize,
    pub cd_file_size: u64,
    pub cd_reps: usize,
    /// Density: numbers of idle containers.
    pub density: Vec<usize>,
    /// Throughput: the file (or device) size fio works on, its run time
    /// per job in seconds, and repetitions.
    pub fio_size: u64,
    pub fio_seconds: u64,
    pub fio_reps: usize,
    /// Page cache: readers and the size of the file they read.
    pub readers: Vec<usize>,
    pub cache_file: u64,
    /// Usage: snapshots asked for, runs of the uncached dump, runs of a
    /// locked operation that does nothing.
    pub usage_snapshots: usize,
    pub usage_dumps: usize,
    pub usage_locked: usize,
    /// Peers (containerd's snapshotters through one containerd): prepare
    /// cycles, layers, files per layer and their size of the #2988 shape,
    /// the first-write file, repetitions, idle containers, live containers
    /// at which the teardown workload times a create (increasing, from 0;
    /// the last is the N torn down), entries of the Debian root filesystem
    /// the unpack workload imports (the first N in the tar's order; None:
    /// all) and its repetitions.
    pub peer_cycles: usize,
    pub peer_layers: usize,
    pub peer_files: usize,
    pub peer_file_size: u64,
    pub peer_write_size: u64,
    pub peer_reps: usize,
    pub peer_idle: usize,
    pub peer_live: Vec<usize>,
    /// The last of `peer_live` for devmapper when set, the others scaled
    /// alike: its every step runs `dmsetup` processes (on an idle machine,
    /// 200 took 2 minutes to tear down).
    pub peer_live_devmapper: Option<usize>,
    /// Parallel prepare cycles: clients at once, cycles of each.
    pub peer_clients: usize,
    pub peer_parallel_cycles: usize,
    /// Space back after a removal: bytes the container writes, runs, and
    /// how long freed space may take to come back, in seconds.
    pub peer_space_size: u64,
    pub peer_space_reps: usize,
    pub peer_space_deadline: u64,
    pub peer_unpack_entries: Option<usize>,
    pub peer_unpack_reps: usize,
    /// Kubelet polling: container snapshots live, and seconds of each
    /// window of polling measured.
    pub kubelet_snapshots: usize,
    pub kubelet_seconds: u64,
    /// Which workloads run: `only` if set, never those in `skip`.
    pub only: Option<Workload>,
    pub skip: Vec<Workload>,
    /// A line on standard error per figure made (failures always).
    pub progress: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    FirstWrite,
    Latency,
    Depth,
    Sparse,
    Churn,
    Containerd,
    Density,
    Throughput,
    PageCache,
    Usage,
    Peers,
    Kubelet,
}

/// Runs a workload on one baseline.
type Runner = fn(&mut dyn Cow, &Config, &mut Results) -> Result<()>;

impl Workload {
    pub const ALL: [Workload; 12] = [
        Workload::FirstWrite,
        Workload::Latency,
        Workload::Depth,
        Workload::Sparse,
        Workload::Churn,
        Workload::Containerd,
        Workload::Density,
        Workload::Throughput,
        Workload::PageCache,
        Workload::Usage,
        Workload::Peers,
        Workload::Kubelet,
    ];

    /// The name `--only` takes.
    pub fn name(self) -> &'static str {
        match self {
            Workload::FirstWrite => "first-write",
            Workload::Latency => "latency",
            Workload::Depth => "depth",
            Workload::Sparse => "sparse",
            Workload::Churn => "churn",
            Workload::Containerd => "containerd",
            Workload::Density => "density",
            Workload::Throughput => "throughput",
            Workload::PageCache => "page-cache",
            Workload::Usage => "usage",
            Workload::Peers => "peers",
            Workload::Kubelet => "kubelet",
        }
    }

    /// Runs the workload on one baseline (peers and kubelet run once, on
    /// their own).
    fn runner(self) -> Option<Runner> {
        Some(match self {
            Workload::FirstWrite => first_write,
            Workload::Latency => latency,
            Workload::Depth => depth,
            Workload::Sparse => sparse,
            Workload::Churn => churn,
            Workload::Containerd => containerd,
            Workload::Density => density,
            Workload::Throughput => throughput,
            Workload::PageCache => page_cache,
            Workload::Usage => usage,
            Workload::Peers | Workload::Kubelet => return None,
        })
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }

    /// Every name, `a|b|c`.
    pub fn names() -> String {
        let n: Vec<&str> = Workload::ALL.iter().map(|w| w.name()).collect();
        n.join("|")
    }
}

impl Config {
    pub fn quick() -> Config {
        Config {
            quick: true,
            reps: 3,
            sizes: vec![4 << 10, 1 << 20, 64 << 20],
            counts: vec![1, 10],
            depths: vec![1, 16],
            sparse_size: 32 << 20,
            sparse_permille: vec![1, 10, 100, 1000],
            churn: 30,
            churn_group: 10,
            churn_reps: 1,
            cd_layers: 3,
            cd_files: 4,
            cd_file_size: 1 << 20,
            cd_reps: 2,
            density: vec![10],
            fio_size: 16 << 20,
            fio_seconds: 1,
            fio_reps: 1,
            readers: vec![2],
            cache_file: 32 << 20,
            usage_snapshots: 20,
            usage_dumps: 3,
            usage_locked: 10,
            peer_cycles: 5,
            peer_layers: 3,
            peer_files: 4,
            peer_file_size: 1 << 20,
            peer_write_size: 64 << 20,
            peer_reps: 2,
            peer_idle: 5,
            peer_live: vec![0, 10, 20],
            peer_live_devmapper: None,
            peer_clients: 8,
            peer_parallel_cycles: 3,
            peer_space_size: 8 << 20,
            peer_space_reps: 1,
            peer_space_deadline: 30,
            peer_unpack_entries: Some(4000),
            peer_unpack_reps: 1,
            kubelet_snapshots: 20,
            kubelet_seconds: 20,
            only: None,
            skip: Vec::new(),
            progress: true,
        }
    }

    pub fn full() -> Config {
        Config {
            quick: false,
            reps: 5,
            sizes: vec![4 << 10, 1 << 20, 64 << 20, 1 << 30],
            counts: vec![1, 10, 100, 1000],
            depths: vec![1, 16, 128, 500, 1000],
            sparse_size: 1 << 30,
            sparse_permille: vec![1, 10, 100, 1000],
            churn: 1000,
            churn_group: 100,
            churn_reps: 2,
            cd_layers: 16,
            cd_files: 10,
            cd_file_size: 1 << 20,
            cd_reps: 5,
            density: vec![10, 100],
            fio_size: 1 << 30,
            fio_seconds: 5,
            fio_reps: 3,
            readers: vec![4],
            cache_file: 200 << 20,
            usage_snapshots: 1000,
            usage_dumps: 5,
            usage_locked: 20,
            peer_cycles: 50,
            peer_layers: 16,
            peer_files: 10,
            peer_file_size: 1 << 20,
            peer_write_size: 1 << 30,
            peer_reps: 3,
            peer_idle: 20,
            peer_live: vec![0, 250, 500, 1000],
            peer_live_devmapper: Some(200),
            peer_clients: 8,
            peer_parallel_cycles: 20,
            peer_space_size: 64 << 20,
            peer_space_reps: 3,
            peer_space_deadline: 120,
            peer_unpack_entries: None,
            peer_unpack_reps: 3,
            kubelet_snapshots: 200,
            kubelet_seconds: 60,
            only: None,
            skip: Vec::new(),
            progress: true,
        }
    }

    fn runs(&self, w: Workload) -> bool {
        self.only.is_none_or(|o| o == w) && !self.skip.contains(&w)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Bytes,
    /// Bytes per second.
    Rate,
    /// Things counted (leaked devices, ...).
    Count,
    /// Things done per second.
    PerSecond,
}

/// One figure: the values of repeated runs of one step, or why it failed.
#[derive(Clone, Debug)]
pub struct Figure {
    pub workload: &'static str,
    pub metric: &'static str,
    pub unit: Unit,
    /// File size, number of containers or of layers.
    pub param: u64,
    pub baseline: String,
    pub values: std::result::Result<Vec<f64>, String>,
}

#[derive(Default, Debug)]
pub struct Results {
    pub figures: Vec<Figure>,
    /// What the run was made on, for the report.
    pub setup: Vec<(String, String)>,
    /// What churn left behind, per baseline: one line per device, mount
    /// or directory.
    pub leaks: Vec<(String, Vec<String>)>,
    pub seconds: f64,
    /// What `thinlayer serve` says each peers workload cost, step by step.
    pub peer_steps: Vec<peers::Steps>,
    /// See [`Config::progress`].
    pub progress: bool,
}

impl Results {
    pub fn push(&mut self, f: Figure) {
        match &f.values {
            Ok(_) if !self.progress => {}
            Ok(v) => eprintln!(
                "cow: {} {} {} {}: {} values",
                f.workload,
                f.metric,
                f.param,
                f.baseline,
                v.len()
            ),
            Err(e) => eprintln!(
                "cow: {} {} {} {}: failed: {e}",
                f.workload, f.metric, f.param, f.baseline
            ),
        }
        self.figures.push(f);
    }

    /// One figure per metric of one step on `baseline`, every one failed
    /// with `failed` if the step failed.
    fn push_metrics(
        &mut self,
        workload: &'static str,
        param: u64,
        baseline: &str,
        failed: &Option<String>,
        metrics: Vec<(&'static str, Unit, Vec<f64>)>,
    ) {
        for (metric, unit, v) in metrics {
            self.push(Figure {
                workload,
                metric,
                unit,
                param,
                baseline: baseline.to_string(),
                values: failed.clone().map_or(Ok(v), Err),
            });
        }
    }

    pub fn find(
        &self,
        workload: &str,
        metric: &str,
        param: u64,
        baseline: &str,
    ) -> Option<&Figure> {
        self.figures.iter().find(|f| {
            f.workload == workload
                && f.metric == metric
                && f.param == param
                && f.baseline == baseline
        })
    }
}

pub const FIRST_WRITE: &str = "first write";
pub const LATENCY: &str = "create to mounted";
pub const DEPTH: &str = "depth";
pub const SPARSE: &str = "sparse updates";
pub const CHURN: &str = "churn";
pub const CONTAINERD: &str = "containerd-shaped";
pub const DENSITY: &str = "density";
pub const THROUGHPUT: &str = "throughput";
pub const PAGE_CACHE: &str = "page cache";
pub const USAGE: &str = "usage";
/// The throughput workload's reference: a loop device over a sparse file.
pub const RAW: &str = "raw-loop";

/// Runs every workload of `cfg`, all under `dir`: each on the three
/// baselines, then the peers, then kubelet polling.
pub fn run(dir: &Path, cfg: &Config) -> Result<Results> {
    let start = Instant::now();
    let mut res = Results {
        progress: cfg.progress,
        ..Results::default()
    };
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    if Workload::ALL
        .into_iter()
        .any(|w| w.runner().is_some() && cfg.runs(w))
    {
        run_baselines(dir, cfg, &mut res)?;
    }
    if cfg.runs(Workload::Peers) {
        peers::run(dir, cfg, &mut res)?;
    }
    if cfg.runs(Workload::Kubelet) {
        kubelet::run(dir, cfg, &mut res)?;
    }
    res.seconds = start.elapsed().as_secs_f64();
    Ok(res)
}

/// Runs the workloads of `cfg` that compare the baselines.
fn run_baselines(dir: &Path, cfg: &Config, res: &mut Results) -> Result<()> {
    let overlay_size = if cfg.quick { 8 << 30 } else { 24 << 30 };
    let thin = Thin::new(dir)?;
    res.setup
        .push(("pool block size".into(), thin.block_size.clone()));
    let mut baselines: Vec<Box<dyn Cow>> = vec![Box::new(thin)];
    // Usage is thin's alone.
    let compared = Workload::ALL
        .into_iter()
        .any(|w| w != Workload::Usage && w.runner().is_some() && cfg.runs(w));
    for under in [Under::Ext4, Under::XfsReflink]
        .into_iter()
        .filter(|_| compared)
    {
        match Overlay::new(dir, under, overlay_size) {
            Ok(o) => {
                res.setup
                    .push((under.label().into(), under.describe().into()));
                baselines.push(Box::new(o));
            }
            Err(e) => {
                for b in baselines {
                    let _ = b.destroy();
                }
                return Err(e);
            }
        }
    }
    let mut outcome = Ok(());
    for b in baselines.iter_mut() {
        let r = (|| {
            for w in Workload::ALL {
                if let Some(runner) = w.runner().filter(|_| cfg.runs(w)) {
                    runner(&mut **b, cfg, res)?;
                }
            }
            Ok(())
        })();
        if r.is_err() {
            outcome = r;
            break;
        }
    }
    for b in baselines {
        let name = b.name().to_string();
        if let Err(e) = b.destroy() {
            outcome = outcome.and(Err(e.context(format!("tear down {name}"))));
        }
    }
    if outcome.is_ok() && cfg.runs(Workload::Throughput) {
        outcome = throughput_raw(dir, cfg, res);
    }
    outcome
}

/// Writes `len` bytes of a non-zero pattern to `path` and fsyncs.
pub fn write_file(path: &Path, len: u64) -> Result<()> {
    let f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    write_pattern(f, len)
}

/// Writes `len` bytes of a non-zero pattern from where `f` stands, fsyncs.
fn write_pattern(mut f: File, len: u64) -> Result<()> {
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i as u8).wrapping_mul(31) | 1)
        .collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

fn values(samples: &[Sample]) -> (Vec<f64>, Vec<f64>) {
    (
        samples.iter().map(|s| s.time.as_secs_f64()).collect(),
        samples.iter().map(|s| s.bytes as f64).collect(),
    )
}

/// An image layer of a few small files.
fn small_files(_: usize, dir: &Path) -> Result<()> {
    fs::create_dir(dir.join("etc"))?;
    for i in 0..8 {
        fs::write(dir.join("etc").join(format!("f{i}")), format!("file {i}\n"))?;
    }
    Ok(())
}

/// Runs `step` for repetitions `0..reps`, stopping at the first failure.
fn repeat<T>(reps: usize, mut step: impl FnMut(usize) -> Result<T>) -> (Vec<T>, Option<String>) {
    let mut out = Vec::new();
    for r in 0..reps {
        match step(r) {
            Ok(v) => out.push(v),
            Err(e) => return (out, Some(format!("{e:#}"))),
        }
    }
    (out, None)
}

/// Creates and mounts containers `names` of `image`, runs `f` on their
/// mount points, then unmounts and removes them; after a failure, removes
/// whatever was made.
fn with_containers<T>(
    b: &mut dyn Cow,
    names: &[String],
    image: &str,
    f: impl FnOnce(&mut dyn Cow, &[PathBuf]) -> Result<T>,
) -> Result<T> {
    let run = (|| {
        let mut mounts = Vec::new();
        for c in names {
            b.create(c, image)?;
            mounts.push(b.mount(c)?);
        }
        let v = f(&mut *b, &mounts)?;
        for c in names {
            b.umount(c)?;
            b.remove(c)?;
        }
        Ok(v)
    })();
    if run.is_err() {
        for c in names {
            discard(b, c);
        }
    }
    run
}

/// [`with_containers`] of one container.
fn in_container<T>(
    b: &mut dyn Cow,
    name: &str,
    image: &str,
    f: impl FnOnce(&mut dyn Cow, &Path) -> Result<T>,
) -> Result<T> {
    with_containers(b, &[name.to_string()], image, |b, m| f(b, &m[0]))
}

/// Removes a container whatever state a failed step left it in.
fn discard(b: &mut dyn Cow, name: &str) {
    let _ = b.umount(name);
    let _ = b.remove(name);
}

/// (a) One 4 KiB write + fsync into the middle of a file of the image.
fn first_write(b: &mut dyn Cow, cfg: &Config, res: &mut Results) -> Result<()> {
    for &size in &cfg.sizes {
        let image = format!("fw{size}");
        b.build_image(&image, 1, &mut |_, dir| write_file(&dir.join("f"), size))?;
        cold_writes(
            b,
            cfg.reps,
            &image,
            FIRST_WRITE,
            size,
            &[size / 2 / 4096],
            res,
        );
        b.remove_image(&image)?;
    }
    Ok(())
}

/// Per repetition a new container of `image`, caches dropped, then 4 KiB
/// writes at the 4 KiB blocks `blocks` of its file `f` and one fsync,
/// measured: time and bytes written to the device.
fn cold_writes(
    b: &mut dyn Cow,
    reps: usize,
    image: &str,
    workload: &'static str,
    param: u64,
    blocks: &[u64],
    res: &mut Results,
) {
    let (samples, failed) = repeat(reps, |r| {
        in_container(b, &format!("{image}-{r}"), image, |b, m| {
            let path = m.join("f");
            let ((), s) = measure::measure(&b.device().clone(), true, || {
                let f = OpenOptions::new().write(true).open(&path)?;
                let block = [0xa5; 4096];
                for &o in blocks {
                    f.write_all_at(&block, o * 4096)?;
                }
                f.sync_all()?;
                Ok(())
            })?;
            Ok(s)
        })
    });
    let (times, bytes) = values(&samples);
    res.push_metrics(
        workload,
        param,
        b.name(),
        &failed,
        vec![
            ("time", Unit::Seconds, times),
            ("bytes written", Unit::Bytes, bytes),
        ],
    );
}

/// (b) N containers of one image: create start to mounted, then teardown.
fn latency(b: &mut dyn Cow, cfg: &Config, res: &mut Results) -> Result<()> {
    let image = "lat";
    b.build_image(image, 1, &mut small_files)?;
    for &n in &cfg.counts {
        let reps = if n >= 100 { cfg.reps.min(2) } else { cfg.reps };
        let mut up = Vec::new();
        let mut down = Vec::new();
        let mut failed = None;
        'reps: for r in 0..reps {
            let mut made = Vec::new();
            for i in 0..n {
                let ctr = format!("lat{n}-{r}-{i}");
                let start = Instant::now();
                let step = b.create(&ctr, image).and_then(|()| b.mount(&ctr));
                let t = start.elapsed().as_secs_f64();
                match step {
                    Ok(_) => {
                        up.push(t);
                        made.push(ctr);
                        if (i + 1) % 100 == 0 {
                            let last = &up[up.len() - 100..];
                            eprintln!(
                                "cow: {LATENCY} {} N={n}: containers {}–{}: mean {:.1} ms",
                                b.name(),
                                i - 98,
                                i + 1,
                                last.iter().sum::<f64>() * 10.0
                            );
                        }
                    }
                    Err(e) => {
                        discard(b, &ctr);
                        for c in &made {
                            discard(b, c);
                        }
                        failed = Some(format!("{e:#}"));
                        break 'reps;
                    }
                }
            }
            let ((), t) = measure::timed(|| {
                for c in &made {
                    b.umount(c)?;
                    b.remove(c)?;
                }
                Ok(())
            })?;
            down.push(t.as_secs_f64());
        }
        res.push_metrics(
            LATENCY,
            n as u64,
            b.name(),
            &failed,
            vec![
                ("create to mounted", Unit::Seconds, up),
                ("teardown of all", Unit::Seconds, down),
            ],
        );
    }
    b.remove_image(image)
}

/// (c) Images of many layers: mount time, and a cold read of a file of the
/// bottom layer.
fn depth(b: &mut dyn Cow, cfg: &Config, res: &mut Results) -> Result<()> {
    const BOTTOM: u64 = 1 << 20;
    for &d in &cfg.depths {
        let image = format!("d{d}");
        let ((), build) = measure::timed(|| {
            b.build_image(&image, d, &mut |i, dir| {
                if i == 0 {
                    write_file(&dir.join("bottom"), BOTTOM)
                } else {
                    fs::write(dir.join(format!("f{i}")), i.to_string()).map_err(Into::into)
                }
            })
        })?;
        res.push_metrics(
            DEPTH,
            d as u64,
            b.name(),
            &None,
            vec![("build image", Unit::Seconds, vec![build.as_secs_f64()])],
        );
        let (mut mounts, mut reads) = (Vec::new(), Vec::new());
        let mut failed = None;
        for r in 0..cfg.reps {
            let ctr = format!("d{d}-{r}");
            let step = (|| {
                b.create(&ctr, &image)?;
                measure::sync();
                let (path, m) = measure::timed(|| b.mount(&ctr))?;
                measure::drop_caches()?;
                let (n, rd) = measure::timed(|| {
                    let mut buf = Vec::new();
                    File::open(path.join("bottom"))?.read_to_end(&mut buf)?;
                    Ok(buf.len() as u64)
                })?;
                anyhow::ensure!(
                    n == BOTTOM,
                    "read {n} bytes of the bottom file, not {BOTTOM}"
                );
                b.umount(&ctr)?;
                b.remove(&ctr)?;
                Ok::<_, anyhow::Error>((m, rd))
            })();
            match step {
                Ok((m, rd)) => {
                    mounts.push(m.as_secs_f64());
                    reads.push(rd.as_secs_f64());
                }
                Err(e) => {
                    discard(b, &ctr);
                    failed = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        b.remove_image(&image)?;
        res.push_metrics(
            DEPTH,
            d as u64,
            b.name(),
            &failed,
            vec![
                ("mount", Unit::Seconds, mounts),
                ("cold read of the bottom layer's file", Unit::Seconds, reads),
            ],
        );
    }
    Ok(())
}

/// splitmix64: the sparse workload's offsets, the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The seed of the sparse workload's offsets.
pub const SPARSE_SEED: u64 = 0x7417_1a7e;

/// `k` distinct numbers of `0..n`, in random order: the first `k` of a
/// seeded Fisher–Yates shuffle.
pub fn sample(n: u64, k: u64, seed: u64) -> Vec<u64> {
    let mut all: Vec<u64> = (0..n).collect();
    let mut rng = Rng(seed);
    let k = k.min(n) as usize;
    for i in 0..k {
        let j = i + (rng.next() % (n - i as u64)) as usize;
        all.swap(i, j);
    }
    all.truncate(k);
    all
}

/// 4 KiB writes of a file of the image (cold caches), the given share of
/// its blocks, each at a distinct random offset, then one fsync.
fn sparse(b: &mut dyn Cow, cfg: &Config, res: &mut Results) -> Result<()> {
    let size = cfg.sparse_size;
    let image = "sp";
    b.build_image(image, 1, &mut |_, dir| write_file(&dir.join("f"), size))?;
    let blocks = size / 4096;
    for &pm in &cfg.sparse_permille {
        let offsets = sample(blocks, (blocks * pm / 1000).max(1), SPARSE_SEED);
        cold_writes(b, cfg.reps, image, SPARSE, pm, &offsets, res);
    }
    b.remove_image(image)
}

/// Containers made and removed one after another (create, mount, unmount,
/// remove each), timed per group; then what was left behind.
fn churn(b: &mut dyn Cow, cfg: &Config, res: &mut Results) -> Result<()> {
    let image = "churn";
    b.build_image(image, 1, &mut small_files)?;
    let g = cfg.churn_group.max(1);
    let groups = cfg.churn / g;
    let mut times = vec![Vec::new(); groups];
    let (_, failed) = repeat(cfg.churn_reps, |r| {
        for (k, t) in times.iter_mut().enumerate() {
            let start = Instant::now();
            for i in k * g..(k + 1) * g {
                in_container(b, &format!("ch{r}-{i}"), image, |_, _| Ok(()))?;
            }
            t.push(start.elapsed().as_secs_f64());
            eprintln!(
                "cow: {CHURN} {}: containers {}–{}: {:.2} s",
                b.name(),
                k * g + 1,
                (k + 1) * g,
                start.elapsed().as_secs_f64()
            );
        }
        Ok(())
    });
    b.remove_image(image)?;
    let leaks = b.leaks()?;
    for (k, v) in times.into_iter().enumerate() {
        res.push_metrics(
            CHURN,
            ((k + 1) * g) as u64,
            b.name(),
            &failed,
            vec![("time per group", Unit::Seconds, v)],
        );
    }
    res.push_metrics(
        CHURN,
        cfg.churn as u64,
        b.name(),
        &None,
        vec![("left behind", Unit::Count, vec![leaks.len() as f64])],
    );
    res.leaks.push((b.name().to_string(), leaks));
    Ok(())
}

/// containerd's snapshotter benchmark shape: an image of `cd_layers`
/// layers of `cd_files` files, each layer a commit of a container on the
/// previous image; then a container on top writes 4 bytes into the middle
/// of every file, each write followed by an fsync of its file.
fn containerd(b: &mut dyn Cow, cfg: &Config, res: &mut Results) -> Result<()> {
    let (layers, files, fsize) = (cfg.cd_layers, cfg.cd_files, cfg.cd_file_size);
    let name = |l: usize, f: usize| format!("l{l}f{f}");
    let fill = |l: usize, dir: &Path| -> Result<()> {
        for f in 0..files {
            write_file(&dir.join(name(l, f)), fsize)?;
        }
        Ok(())
    };
    let dev = b.device().clone();
    let (samples, failed) = repeat(cfg.cd_reps, |r| {
        let img = |l: usize| format!("cd{r}-{l}");
        let ((), build) = measure::measure(&dev, false, || {
            b.build_image(&img(0), 1, &mut |_, d| fill(0, d))?;
            for l in 1..layers {
                let ctr = format!("cd{r}-b{l}");
                let step = (|| {
                    b.create(&ctr, &img(l - 1))?;
                    fill(l, &b.mount(&ctr)?)?;
                    b.umount(&ctr)?;
                    b.commit(&ctr, &img(l))
                })();
                if step.is_err() {
                    discard(b, &ctr);
                }
                step?;
            }
            Ok(())
        })?;
        let write = in_container(b, &format!("cd{r}-top"), &img(layers - 1), |_, m| {
            let ((), s) = measure::measure(&dev, false, || {
                for l in 0..layers {
                    for f in 0..files {
                        let file = OpenOptions::new().write(true).open(m.join(name(l, f)))?;
                        file.write_all_at(b"cow!", fsize / 2)?;
                        file.sync_all()?;
                    }
                }
                Ok(())
            })?;
            Ok(s)
        })?;
        for l in (0..layers).rev() {
            b.remove_image(&img(l))?;
        }
        Ok((build, write))
    });
    let (builds, writes): (Vec<Sample>, Vec<Sample>) = samples.into_iter().unzip();
    let totals: Vec<Sample> = builds
        .iter()
        .zip(&writes)
        .map(|(a, w)| Sample {
            time: a.time + w.time,
            bytes: a.bytes + w.bytes,
        })
        .collect();
    let mut metrics = Vec::new();
    for (what, s) in [("build", builds), ("write", writes), ("total", totals)] {
        let (t, by) = values(&s);
        let (tm, bm) = match what {
            "build" => ("build time", "build bytes written"),
            "write" => ("write time", "write bytes written"),
            _ => ("total time", "total bytes written"),
        };
        metrics.push((tm, Unit::Seconds, t));
        metrics.push((bm, Unit::Bytes, by));
    }
    res.push_metrics(CONTAINERD, layers as u64, b.name(), &failed, metrics);
    Ok(())
}

/// Pool data (thin) or filesystem blocks (overlay) used per container by
/// N idle containers, created and mounted; then after each has written
/// and fsynced 1 MiB.
fn density(b: &mut dyn Cow, cfg: &Config, res: &mut Results) -> Result<()> {
    let image = "den";
    b.build_image(image, 1, &mut small_files)?;
    for &n in &cfg.density {
        let reps = if n >= 100 { cfg.reps.min(3) } else { cfg.reps };
        let (samples, failed) = repeat(reps, |r| {
            let names: Vec<String> = (0..n).map(|i| format!("den{n}-{r}-{i}")).collect();
            // Dropping the caches evicts unused inodes: xfs then frees the
            // blocks it preallocated past their ends, which earlier work
            // would otherwise return in the middle of the measurement.
            measure::drop_caches()?;
            let before = b.used()? as f64;
            with_containers(b, &names, image, |b, mounts| {
                measure::drop_caches()?;
                let idle = b.used()? as f64 - before;
                for m in mounts {
                    write_file(&m.join("data"), DENSITY_WRITE)?;
                }
                measure::drop_caches()?;
                let written = b.used()? as f64 - before;
                Ok((idle / n as f64, written / n as f64))
            })
        });
        let (idle, written): (Vec<f64>, Vec<f64>) = samples.into_iter().unzip();
        res.push_metrics(
            DENSITY,
            n as u64,
            b.name(),
            &failed,
            vec![
                ("idle, per container", Unit::Bytes, idle),
                (
                    "after writing 1 MiB each, per container",
                    Unit::Bytes,
                    written,
                ),
            ],
        );
    }
    b.remove_image(image)
}

/// What each container of the density workload writes.
pub const DENSITY_WRITE: u64 = 1 << 20;

/// The fio jobs of the throughput workload: name, `--rw`, `--bs`.
pub const FIO_JOBS: [(&str, &str, &str); 4] = [
    ("sequential read", "read", "1M"),
    ("sequential write", "write", "1M"),
    ("random read", "randread", "4k"),
    ("random write", "randwrite", "4k"),
];

/// Writes `len` bytes of a non-zero pattern over a file (made if need
/// be) or a device, from the start, and fsyncs.
fn fill(path: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    write_pattern(f, len)
}

/// One fio job on `path`; its bandwidth in bytes per second.
fn fio(path: &Path, cfg: &Config, rw: &str, bs: &str) -> Result<f64> {
    let mut cmd = Command::new("fio");
    cmd.arg("--name=cow")
        .arg(format!("--filename={}", path.display()))
        .arg(format!("--size={}", cfg.fio_size))
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={bs}"))
        .args(["--direct=1", "--ioengine=psync", "--iodepth=1"])
        .arg(format!("--runtime={}", cfg.fio_seconds))
        .args(["--time_based", "--end_fsync=1", "--output-format=json"]);
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // fio may print notes before its JSON.
    let json = &text[text.find('{').context("fio printed no JSON")?..];
    let v: serde_json::Value = serde_json::from_str(json).context("fio's JSON")?;
    let dir = if rw.contains("read") { "read" } else { "write" };
    let bw = v["jobs"][0][dir]["bw_bytes"]
        .as_f64()
        .with_context(|| format!("no jobs[0].{dir}.bw_bytes in fio's output"))?;
    anyhow::ensure!(bw > 0.0, "fio measured no {dir} bandwidth");
    Ok(bw)
}

/// Every fio job, `cfg.fio_reps` times, on a file or device `path` that
/// holds `cfg.fio_size` written bytes; pushes one figure per job.
fn fio_jobs(path: &Path, cfg: &Config, baseline: &str, res: &mut Results) {
    let mut bw = vec![Vec::new(); FIO_JOBS.len()];
    let (_, failed) = repeat(cfg.fio_reps, |_| {
        for (i, (_, rw, bs)) in FIO_JOBS.iter().enumerate() {
            bw[i].push(fio(path, cfg, rw, bs)?);
        }
        Ok(())
    });
    for (i, v) in bw.into_iter().enumerate() {
        res.push_metrics(
            THROUGHPUT,
            i as u64,
            baseline,
            &failed,
            vec![("bandwidth", Unit::Rate, v)],
        );
    }
}

/// fio on a file the container itself wrote, in its own layer.
fn throughput(b: &mut dyn Cow, cfg: &Config, res: &mut Results) -> Result<()> {
    let image = "tp";
    b.build_image(image, 1, &mut small_files)?;
    let name = b.name().to_string();
    let made = in_container(b, "tp", image, |_, m| {
        let path = m.join("fio.dat");
        fill(&path, cfg.fio_size)?;
        fio_jobs(&path, cfg, &name, res);
        Ok(())
    });
    if let Err(e) = made {
        let failed = Some(format!("{e:#}"));
        for i in 0..FIO_JOBS.len() {
            if res.find(THROUGHPUT, "bandwidth", i as u64, &name).is_none() {
                res.push_metrics(
                    THROUGHPUT,
                    i as u64,
                    &name,
                    &failed,
                    vec![("bandwidth", Unit::Rate, Vec::new())],
                );
            }
        }
    }
    b.remove_image(image)
}

/// The throughput workload's reference: fio on a loop device (direct I/O)
/// over a sparse file on the same disk, written whole first.
fn throughput_raw(dir: &Path, cfg: &Config, res: &mut Results) -> Result<()> {
    let base = dir.join(RAW);
    fs::create_dir_all(&base)?;
    let file = base.join("disk");
    File::create(&file)
        .and_then(|f| f.set_len(cfg.fio_size))
        .with_context(|| format!("create {}", file.display()))?;
    let run = (|| {
        let attached = Linux::new()
            .loop_attach(&file)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let dev = attached.info.device.clone();
        fill(&dev, cfg.fio_size)?;
        fio_jobs(&dev, cfg, RAW, res);
        // Autoclear: the device goes with its last open handle.
        drop(attached);
        Ok(())
    })();
    let _ = fs::remove_dir_all(&base);
    run
}

/// A field of /proc/meminfo, in bytes.
pub fn meminfo(field: &str) -> Result<u64> {
    let text = fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?;
    let line = text
        .lines()
        .find(|l| l.split(':').next() == Some(field))
        .with_context(|| format!("no {field} in /proc/meminfo"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("bad line {line:?} in /proc/meminfo"))?;
    Ok(kib * 1024)
}

/// N containers of one image each read the same file of it whole: page
/// cache grown (`Cached:` of /proc/meminfo, caches dropped before).
fn page_cache(b: &mut dyn Cow, cfg: &Config, res: &mut Results) -> Result<()> {
    let size = cfg.cache_file;
    let image = "pc";
    b.build_image(image, 1, &mut |_, dir| write_file(&dir.join("f"), size))?;
    for &n in &cfg.readers {
        let (v, failed) = repeat(cfg.reps, |r| {
            let names: Vec<String> = (0..n).map(|i| format!("pc{n}-{r}-{i}")).collect();
            with_containers(b, &names, image, |_, mounts| {
                measure::drop_caches()?;
                let avail = meminfo("MemAvailable")?;
                anyhow::ensure!(
                    2 * n as u64 * size < avail,
                    "{n} readers of {size} bytes need more memory than the {avail} bytes available"
                );
                let before = meminfo("Cached")? as f64;
                let mut buf = vec![0u8; 1 << 20];
                for m in mounts {
                    let mut f = File::open(m.join("f"))?;
                    let mut total = 0u64;
                    loop {
                        let k = f.read(&mut buf)?;
                        if k == 0 {
                            break;
                        }
                        total += k as u64;
                    }
                    anyhow::ensure!(total == size, "read {total} bytes, not {size}");
                }
                Ok(meminfo("Cached")? as f64 - before)
            })
        });
        res.push_metrics(
            PAGE_CACHE,
            n as u64,
            b.name(),
            &failed,
            vec![("page cache", Unit::Bytes, v)],
        );
    }
    b.remove_image(image)
}

/// Usage the way containerd asks it for Kubernetes' image-filesystem
/// statistics, thin only: `usage_snapshots` active snapshots of one small
/// image, made as the snapshotter service makes them (containerd-shaped
/// keys, device live, never mounted: each maps the image's blocks and none
/// of its own); one uncached computation of every layer's sizes, from a new
/// handle (a metadata dump and its parse: what each Usage call cost before
/// sizes were kept); a locked operation that does nothing; then Usage of
/// each snapshot once, in order, through the driver's call the service
/// makes ([`Driver::layer_size`]) on one handle, as one poll does.
fn usage(b: &mut dyn Cow, cfg: &Config, res: &mut Results) -> Result<()> {
    if b.thin_driver().is_none() {
        return Ok(());
    }
    let image = "us";
    b.build_image(image, 1, &mut small_files)?;
    let d = b.thin_driver().context("thin has a driver")?;
    let n = cfg.usage_snapshots;
    let keys: Vec<String> = (0..n)
        .map(|i| format!("k8s.io/{}/usage-{i}", i + 1))
        .collect();
    let run = usage_figures(d, image, &keys, cfg);
    // Whatever was made goes, whatever failed.
    let mut down = Ok(());
    let made = d.tree().map_err(|e| anyhow!("{e}"))?;
    for k in keys.iter().filter(|k| made.layers.contains_key(*k)) {
        if let Err(e) = d.remove_snapshot(k) {
            down = down.and(Err(anyhow!("remove {k}: {e}")));
        }
    }
    let (values, failed) = match run {
        Ok(v) => (v, None),
        Err(e) => (Default::default(), Some(format!("{e:#}"))),
    };
    let metrics = USAGE_METRICS
        .into_iter()
        .zip(values)
        .map(|((m, u), v)| (m, u, v))
        .collect();
    res.push_metrics(USAGE, n as u64, b.name(), &failed, metrics);
    down?;
    b.remove_image(image)
}

/// The usage workload's figures, in the order [`usage_figures`] gives
/// their values.
pub const USAGE_METRICS: [(&str, Unit); 6] = [
    ("one uncached dump", Unit::Seconds),
    ("locked operation", Unit::Seconds),
    ("usage call", Unit::Seconds),
    ("all usage calls", Unit::Seconds),
    ("usage calls", Unit::Count),
    ("dumps taken by the calls", Unit::Count),
];

/// The usage workload's measurements on snapshots `keys` of `image`, in
/// the order of [`USAGE_METRICS`].
fn usage_figures(d: &Driver, image: &str, keys: &[String], cfg: &Config) -> Result<[Vec<f64>; 6]> {
    let err = |e: thinlayer::Error| anyhow!("{e}");
    let name = ImageRef::parse(image).map_err(err)?.to_string();
    let top = d
        .tree()
        .map_err(err)?
        .images
        .get(&name)
        .with_context(|| format!("no image {name}"))?
        .top
        .clone();
    let start = Instant::now();
    for (i, k) in keys.iter().enumerate() {
        d.create_snapshot(k, Some(&top), Kind::Active, BTreeMap::new())
            .map_err(|e| anyhow!("prepare {k}: {e}"))?;
        if (i + 1) % 100 == 0 {
            eprintln!(
                "cow: {USAGE}: {} snapshots made in {:.0} s",
                i + 1,
                start.elapsed().as_secs_f64()
            );
        }
    }
    // A new handle has nothing kept: its sizes are a dump and its parse.
    let mut dumps = Vec::new();
    for _ in 0..cfg.usage_dumps {
        let fresh = Driver::open(d.root(), Arc::new(Linux::new())).map_err(err)?;
        let (sizes, t) = measure::timed(|| fresh.sizes().map_err(err))?;
        anyhow::ensure!(
            fresh.metadata_dumps() == 1,
            "an uncached sizes took {} dumps",
            fresh.metadata_dumps()
        );
        anyhow::ensure!(
            keys.iter().all(|k| sizes.contains_key(k)),
            "a snapshot has no sizes"
        );
        dumps.push(t.as_secs_f64());
    }
    // `activate` is the root's lock, the records and the start-up checks:
    // what any call that takes the lock pays before its work.
    let mut locked = Vec::new();
    for _ in 0..cfg.usage_locked {
        let ((), t) = measure::timed(|| d.activate().map_err(err))?;
        locked.push(t.as_secs_f64());
    }
    // One poll: Usage of every snapshot, once each.
    let before = d.metadata_dumps();
    let mut calls = Vec::with_capacity(keys.len());
    let all = Instant::now();
    for k in keys {
        let t = Instant::now();
        let s = d.layer_size(k).map_err(|e| anyhow!("usage {k}: {e}"))?;
        calls.push(t.elapsed().as_secs_f64());
        anyhow::ensure!(s.virtual_size.0 > 0, "{k} maps nothing: {s:?}");
    }
    let total = all.elapsed().as_secs_f64();
    let taken = (d.metadata_dumps() - before) as f64;
    eprintln!(
        "cow: {USAGE}: {} calls in {total:.3} s, {taken} dump(s); one uncached dump {:.3} s",
        keys.len(),
        dumps.iter().copied().fold(f64::NAN, f64::min)
    );
    Ok([
        dumps,
        locked,
        calls,
        vec![total],
        vec![keys.len() as f64],
        vec![taken],
    ])
}
