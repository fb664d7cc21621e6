//! The workloads, each run on every baseline, and the figures they produce.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use super::backend::{Cow, Thin};
use super::measure::{self, Sample};
use super::overlay::{Overlay, Under};

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
    /// Which workloads run.
    pub only: Option<Workload>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    FirstWrite,
    Latency,
    Depth,
}

impl Workload {
    pub fn parse(s: &str) -> Option<Workload> {
        match s {
            "first-write" => Some(Workload::FirstWrite),
            "latency" => Some(Workload::Latency),
            "depth" => Some(Workload::Depth),
            _ => None,
        }
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
            only: None,
        }
    }

    pub fn full() -> Config {
        Config {
            quick: false,
            reps: 5,
            sizes: vec![4 << 10, 1 << 20, 64 << 20, 1 << 30],
            counts: vec![1, 10, 100, 1000],
            depths: vec![1, 16, 128, 500, 1000],
            only: None,
        }
    }

    fn runs(&self, w: Workload) -> bool {
        self.only.is_none_or(|o| o == w)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Bytes,
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
    pub seconds: f64,
}

impl Results {
    fn push(&mut self, f: Figure) {
        match &f.values {
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

/// Runs every workload of `cfg` on the three baselines, all under `dir`.
pub fn run(dir: &Path, cfg: &Config) -> Result<Results> {
    let start = Instant::now();
    let mut res = Results::default();
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let overlay_size = if cfg.quick { 8 << 30 } else { 24 << 30 };
    let thin = Thin::new(dir)?;
    res.setup
        .push(("pool block size".into(), thin.block_size.clone()));
    let mut baselines: Vec<Box<dyn Cow>> = vec![Box::new(thin)];
    for under in [Under::Ext4, Under::XfsReflink] {
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
            if cfg.runs(Workload::FirstWrite) {
                first_write(&mut **b, cfg, &mut res)?;
            }
            if cfg.runs(Workload::Latency) {
                latency(&mut **b, cfg, &mut res)?;
            }
            if cfg.runs(Workload::Depth) {
                depth(&mut **b, cfg, &mut res)?;
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
    outcome?;
    res.seconds = start.elapsed().as_secs_f64();
    Ok(res)
}

/// Writes `len` bytes of a non-zero pattern to `path` and fsyncs.
pub fn write_file(path: &Path, len: u64) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
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
        let offset = (size / 2) & !4095;
        let mut samples = Vec::new();
        let mut failed = None;
        for r in 0..cfg.reps {
            let ctr = format!("fw{size}-{r}");
            let step = (|| {
                b.create(&ctr, &image)?;
                let path = b.mount(&ctr)?.join("f");
                let dev = b.device().clone();
                let ((), s) = measure::measure(&dev, true, || {
                    let f = OpenOptions::new().write(true).open(&path)?;
                    f.write_all_at(&[0xa5; 4096], offset)?;
                    f.sync_all()?;
                    Ok(())
                })?;
                b.umount(&ctr)?;
                b.remove(&ctr)?;
                Ok::<_, anyhow::Error>(s)
            })();
            match step {
                Ok(s) => samples.push(s),
                Err(e) => {
                    discard(b, &ctr);
                    failed = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        b.remove_image(&image)?;
        let (times, bytes) = values(&samples);
        for (metric, unit, v) in [
            ("time", Unit::Seconds, times),
            ("bytes written", Unit::Bytes, bytes),
        ] {
            res.push(Figure {
                workload: FIRST_WRITE,
                metric,
                unit,
                param: size,
                baseline: b.name().to_string(),
                values: failed.clone().map_or(Ok(v), Err),
            });
        }
    }
    Ok(())
}

/// (b) N containers of one image: create start to mounted, then teardown.
fn latency(b: &mut dyn Cow, cfg: &Config, res: &mut Results) -> Result<()> {
    let image = "lat";
    b.build_image(image, 1, &mut |_, dir| {
        fs::create_dir(dir.join("etc"))?;
        for i in 0..8 {
            fs::write(dir.join("etc").join(format!("f{i}")), format!("file {i}\n"))?;
        }
        Ok(())
    })?;
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
        for (metric, v) in [("create to mounted", up), ("teardown of all", down)] {
            res.push(Figure {
                workload: LATENCY,
                metric,
                unit: Unit::Seconds,
                param: n as u64,
                baseline: b.name().to_string(),
                values: failed.clone().map_or(Ok(v), Err),
            });
        }
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
        res.push(Figure {
            workload: DEPTH,
            metric: "build image",
            unit: Unit::Seconds,
            param: d as u64,
            baseline: b.name().to_string(),
            values: Ok(vec![build.as_secs_f64()]),
        });
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
        for (metric, v) in [
            ("mount", mounts),
            ("cold read of the bottom layer's file", reads),
        ] {
            res.push(Figure {
                workload: DEPTH,
                metric,
                unit: Unit::Seconds,
                param: d as u64,
                baseline: b.name().to_string(),
                values: failed.clone().map_or(Ok(v), Err),
            });
        }
    }
    Ok(())
}
