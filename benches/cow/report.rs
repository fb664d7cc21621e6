//! BENCHMARKS.md and its SVG plots.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use super::measure::Stats;
use super::workloads::{Config, DEPTH, FIRST_WRITE, Figure, LATENCY, Results, Unit};

const BASELINES: [&str; 3] = ["thin", "overlay-ext4", "overlay-xfs-reflink"];

fn size(b: u64) -> String {
    match b {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn show(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Bytes => {
            let v = v.round() as u64;
            if v >= 1 << 20 {
                format!("{:.1} MiB", v as f64 / f64::from(1 << 20))
            } else {
                format!("{:.0} KiB", v as f64 / 1024.0)
            }
        }
        Unit::Seconds if v >= 1.0 => format!("{v:.2} s"),
        Unit::Seconds => format!("{:.1} ms", v * 1e3),
    }
}

fn stats(f: Option<&Figure>) -> Option<Stats> {
    f.and_then(|f| f.values.as_ref().ok())
        .and_then(|v| Stats::new(v))
}

fn cell(f: Option<&Figure>, p: Option<f64>) -> String {
    match f {
        None => "—".into(),
        Some(Figure { values: Err(e), .. }) => {
            format!("**failed**: {}", e.replace('|', "/").replace('\n', " "))
        }
        Some(f) => match stats(Some(f)) {
            None => "no values".into(),
            Some(s) => match p {
                Some(p) => show(s.percentile(p), f.unit),
                None => format!(
                    "{} ({} … {})",
                    show(s.median(), f.unit),
                    show(s.min(), f.unit),
                    show(s.max(), f.unit)
                ),
            },
        },
    }
}

fn params(res: &Results, workload: &str) -> Vec<u64> {
    let mut p: Vec<u64> = res
        .figures
        .iter()
        .filter(|f| f.workload == workload)
        .map(|f| f.param)
        .collect();
    p.sort_unstable();
    p.dedup();
    p
}

/// A ratio: two decimals, or `1/N` when well below one.
fn ratio_text(r: f64) -> String {
    if r >= 0.1 || r <= 0.0 {
        format!("{r:.2}")
    } else {
        format!("1/{:.0}", 1.0 / r)
    }
}

/// A table: one row per parameter, one column per baseline, ratios of thin
/// to each overlay.
fn table(
    out: &mut String,
    res: &Results,
    workload: &str,
    metric: &str,
    label: &dyn Fn(u64) -> String,
    p: Option<f64>,
) {
    let _ = writeln!(
        out,
        "| {} | thin | overlay-ext4 | overlay-xfs-reflink | thin / ext4 | thin / xfs |\n|---|---|---|---|---|---|",
        if workload == FIRST_WRITE {
            "file"
        } else if workload == LATENCY {
            "containers"
        } else {
            "layers"
        }
    );
    for param in params(res, workload) {
        let figs: Vec<Option<&Figure>> = BASELINES
            .iter()
            .map(|b| res.find(workload, metric, param, b))
            .collect();
        if figs.iter().all(Option::is_none) {
            continue;
        }
        let pick = |s: &Stats| p.map_or(s.median(), |p| s.percentile(p));
        let ratio = |i: usize| match (stats(figs[0]), stats(figs[i])) {
            (Some(t), Some(o)) if pick(&o) > 0.0 => ratio_text(pick(&t) / pick(&o)),
            _ => "—".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            label(param),
            cell(figs[0], p),
            cell(figs[1], p),
            cell(figs[2], p),
            ratio(1),
            ratio(2)
        );
    }
    out.push('\n');
}

/// Median of a figure, if it has values.
fn median(res: &Results, w: &str, m: &str, param: u64, b: &str) -> Option<f64> {
    stats(res.find(w, m, param, b)).map(|s| s.median())
}

fn targets(res: &Results) -> Vec<String> {
    let mut t = Vec::new();
    let verdict = |ok: bool| if ok { "**met**" } else { "**missed**" };
    let g = 1u64 << 30;
    let fw = |m: &str, b: &str| median(res, FIRST_WRITE, m, g, b);
    match (fw("bytes written", "thin"), fw("bytes written", "overlay-ext4")) {
        (Some(thin), Some(ext4)) => {
            let r = ext4 / thin.max(1.0);
            t.push(format!("First write to a 1 GiB file, ≥ 100× fewer bytes written than overlay on ext4: {} (overlay-ext4 / thin = {r:.0}×)", verdict(r >= 100.0)));
        }
        _ => t.push("First write to a 1 GiB file, ≥ 100× fewer bytes than overlay on ext4: not measured in this run.".into()),
    }
    match (fw("time", "thin"), fw("time", "overlay-ext4")) {
        (Some(thin), Some(ext4)) => {
            let r = ext4 / thin;
            t.push(format!("First write to a 1 GiB file, ≥ 20× faster than overlay on ext4: {} (overlay-ext4 / thin = {r:.1}×)", verdict(r >= 20.0)));
        }
        _ => t.push("First write to a 1 GiB file, ≥ 20× faster than overlay on ext4: not measured in this run.".into()),
    }
    match (fw("time", "thin"), fw("time", "overlay-xfs-reflink")) {
        (Some(thin), Some(xfs)) => {
            let r = thin / xfs;
            t.push(format!("First write to a 1 GiB file, no slower than overlay on xfs with reflink: {} (thin / overlay-xfs-reflink = {r:.2}×)", verdict(r <= 1.0)));
        }
        _ => t.push("First write to a 1 GiB file, no slower than overlay on xfs-reflink: not measured in this run.".into()),
    }
    for b in ["overlay-ext4", "overlay-xfs-reflink"] {
        let ns = params(res, LATENCY);
        let mut parts = Vec::new();
        let mut all = true;
        for n in ns {
            if let (Some(thin), Some(o)) = (
                median(res, LATENCY, "create to mounted", n, "thin"),
                median(res, LATENCY, "create to mounted", n, b),
            ) {
                let r = thin / o;
                all &= r <= 3.0;
                parts.push(format!("N={n}: {r:.2}×"));
            }
        }
        if parts.is_empty() {
            t.push(format!(
                "Create-to-mounted p50 at most 3× {b}: not measured in this run."
            ));
        } else {
            t.push(format!(
                "Create-to-mounted p50 at most 3× {b}: {} (thin / {b}: {})",
                verdict(all),
                parts.join(", ")
            ));
        }
    }
    let read = "cold read of the bottom layer's file";
    let deepest = params(res, DEPTH)
        .into_iter()
        .filter(|&d| median(res, DEPTH, read, d, "thin").is_some())
        .max();
    match (median(res, DEPTH, read, 1, "thin"), deepest) {
        (Some(one), Some(d)) if d > 1 => {
            let r = median(res, DEPTH, read, d, "thin").unwrap_or(f64::NAN) / one;
            let note = if d < 1000 {
                format!(" — measured at depth {d} only; the target is at depth 1000")
            } else {
                String::new()
            };
            t.push(format!("Bottom-layer read at depth 1000 within 1.2× of depth 1: {} (depth {d} / depth 1 = {r:.2}×){note}", verdict(r <= 1.2)));
        }
        _ => t.push(
            "Bottom-layer read at depth 1000 within 1.2× of depth 1: not measured in this run."
                .into(),
        ),
    }
    t
}

type Series = (String, Vec<(f64, f64)>);

fn series(res: &Results, w: &str, m: &str, p: Option<f64>) -> Vec<Series> {
    BASELINES
        .iter()
        .map(|b| {
            let pts = params(res, w)
                .into_iter()
                .filter_map(|x| {
                    stats(res.find(w, m, x, b))
                        .map(|s| (x as f64, p.map_or(s.median(), |p| s.percentile(p))))
                })
                .collect();
            (b.to_string(), pts)
        })
        .collect()
}

/// A number with about three significant digits, no trailing zeros.
fn short(x: f64) -> String {
    let s = if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A tick label: sizes in binary units, seconds in ms or s, counts plain.
fn tick(v: f64, axis: &str) -> String {
    if axis.contains("bytes") {
        let b = v.max(0.0);
        if b >= f64::from(1 << 30) {
            format!("{} GiB", short(b / f64::from(1 << 30)))
        } else if b >= f64::from(1 << 20) {
            format!("{} MiB", short(b / f64::from(1 << 20)))
        } else {
            format!("{} KiB", short(b / 1024.0))
        }
    } else if axis == "seconds" {
        if v >= 1.0 {
            format!("{} s", short(v))
        } else {
            format!("{} ms", short(v * 1e3))
        }
    } else {
        short(v)
    }
}

/// A log–log line plot of medians, one line per baseline.
fn plot(path: &Path, title: &str, x: &str, y: &str, data: &[Series]) -> Result<()> {
    let pts = data.iter().flat_map(|(_, p)| p.iter().copied());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (a, b) in pts {
        (x0, x1, y0, y1) = (x0.min(a), x1.max(a), y0.min(b), y1.max(b));
    }
    if x0 > x1 {
        return Ok(());
    }
    let (x0, x1) = (x0.max(1e-9) / 1.5, x1 * 1.5);
    let (y0, y1) = (y0.max(1e-9) / 2.0, y1.max(1e-9) * 2.0);
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_label_formatter(&|v| tick(*v, x))
        .y_label_formatter(&|v| tick(*v, y))
        .x_desc(x)
        .y_desc(y)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, (name, p)) in data.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(name.as_str())
            .legend(move |(a, b)| {
                PathElement::new(vec![(a, b), (a + 20, b)], color.stroke_width(2))
            });
        chart
            .draw_series(p.iter().map(|&q| Circle::new(q, 3, color.filled())))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Writes the report to `out` and the plots beside it.
pub fn write(out: &Path, res: &Results, cfg: &Config) -> Result<()> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // File, title, x axis, y axis, workload, metric, percentile (median if none).
    type Plot<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        Option<f64>,
    );
    let plots: [Plot<'_>; 5] = [
        (
            "cow-first-write-time.svg",
            "First 4 KiB write + fsync: time",
            "file size (bytes)",
            "seconds",
            FIRST_WRITE,
            "time",
            None,
        ),
        (
            "cow-first-write-bytes.svg",
            "First 4 KiB write + fsync: bytes written to the device",
            "file size (bytes)",
            "bytes",
            FIRST_WRITE,
            "bytes written",
            None,
        ),
        (
            "cow-create-to-mounted.svg",
            "Create to mounted, p50",
            "containers",
            "seconds",
            LATENCY,
            "create to mounted",
            Some(50.0),
        ),
        (
            "cow-depth-mount.svg",
            "Mount time by image depth",
            "layers",
            "seconds",
            DEPTH,
            "mount",
            None,
        ),
        (
            "cow-depth-read.svg",
            "Cold read of a bottom-layer file by depth",
            "layers",
            "seconds",
            DEPTH,
            "cold read of the bottom layer's file",
            None,
        ),
    ];
    let mut made = Vec::new();
    for (file, title, x, y, w, m, p) in plots {
        let data = series(res, w, m, p);
        if data.iter().any(|(_, p)| !p.is_empty()) {
            plot(&dir.join(file), title, x, y, &data).with_context(|| format!("plot {file}"))?;
            made.push(file);
        }
    }
    let mut s = String::new();
    let _ = writeln!(s, "# Copy-on-write benchmarks\n");
    let _ = writeln!(
        s,
        "thinlayer (`thin`: block-level copy-on-write, one thin snapshot per layer) against file-level copy-on-write the way Docker's overlay2 does it (overlayfs, one directory per layer) on ext4 and on xfs with reflink. Generated by `vm-tests/bench{}`; {} mode, {} repetitions, {:.0} s in all.\n",
        if cfg.quick { " --quick" } else { "" },
        if cfg.quick {
            "quick (CI-sized)"
        } else {
            "full"
        },
        cfg.reps,
        res.seconds
    );
    let _ = writeln!(
        s,
        "Each cell: median (min … max) over the repetitions. Ratios: thin's median over the baseline's (p50 and p99 tables: over the same percentile); below 1 means thin is faster or writes less. Bytes written: the backing block device's sectors written (`/sys/block/DEV/stat`, field 7, × 512) before and after the step, after a sync — for thin the pool's data loop device, for overlay the loop device under its filesystem.\n"
    );
    let _ = writeln!(s, "## Targets\n");
    for t in targets(res) {
        let _ = writeln!(s, "- {t}");
    }
    let _ = writeln!(s, "\n## Set-up\n\n| | |\n|---|---|");
    for (k, v) in &res.setup {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    let _ = writeln!(
        s,
        "\n## (a) First write\n\nAn image of one file; per run a new container is created and mounted, caches are dropped, then one 4 KiB write + fsync into the middle of the file is measured.\n\n### Time\n"
    );
    table(&mut s, res, FIRST_WRITE, "time", &|p| size(p), None);
    let _ = writeln!(s, "### Bytes written to the device\n");
    table(
        &mut s,
        res,
        FIRST_WRITE,
        "bytes written",
        &|p| size(p),
        None,
    );
    let _ = writeln!(
        s,
        "## (b) Create to mounted\n\nN containers of one image, made one after another: time from the start of create to mounted, over all containers of all repetitions; then the time to unmount and remove all N.\n\n### p50\n"
    );
    table(
        &mut s,
        res,
        LATENCY,
        "create to mounted",
        &|p| p.to_string(),
        Some(50.0),
    );
    let _ = writeln!(s, "### p99\n");
    table(
        &mut s,
        res,
        LATENCY,
        "create to mounted",
        &|p| p.to_string(),
        Some(99.0),
    );
    let _ = writeln!(s, "### Median (min … max)\n");
    table(
        &mut s,
        res,
        LATENCY,
        "create to mounted",
        &|p| p.to_string(),
        None,
    );
    let _ = writeln!(s, "### Teardown of all N\n");
    table(
        &mut s,
        res,
        LATENCY,
        "teardown of all",
        &|p| p.to_string(),
        None,
    );
    let _ = writeln!(
        s,
        "## (c) Depth\n\nImages of many layers, each adding one small file, the bottom one a 1 MiB file. Per run: a new container, its mount timed, caches dropped, the bottom file read whole. overlay's lower directories are named by a short path (`/tmp/oN/ID`), yet the kernel reads only one page of mount options and stacks at most 500 lower directories; a refused mount is shown as a failure.\n\n### Mount\n"
    );
    table(&mut s, res, DEPTH, "mount", &|p| p.to_string(), None);
    let _ = writeln!(s, "### Cold read of the bottom layer's file (1 MiB)\n");
    table(
        &mut s,
        res,
        DEPTH,
        "cold read of the bottom layer's file",
        &|p| p.to_string(),
        None,
    );
    let _ = writeln!(s, "### Building the image (one run)\n");
    table(&mut s, res, DEPTH, "build image", &|p| p.to_string(), None);
    if !made.is_empty() {
        let _ = writeln!(s, "## Plots\n");
        for f in made {
            let _ = writeln!(s, "![{f}]({f})\n");
        }
    }
    fs::write(out, s).with_context(|| format!("write {}", out.display()))
}
