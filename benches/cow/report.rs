//! BENCHMARKS.md and its SVG plots.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::kubelet::{
    CHURN_EVERY, CHURNED, KUBELET, KUBELET_CPU_TARGET, KUBELET_DUMP_CPU, KUBELET_METRICS,
    POLL_PERIOD, QUIET,
};
use super::measure::Stats;
use super::peers::{
    CREATE_COST, IDLE_COST, PARALLEL, PEER_FIRST_WRITE, PEER_METRICS, PEERS, PREPARE_CYCLE,
    SHAPE_2988, SPACE_BACK, StepRow, TEARDOWN, UNPACK,
};
use super::workloads::{
    CHURN, CONTAINERD, Config, DENSITY, DEPTH, FIO_JOBS, FIRST_WRITE, Figure, LATENCY, PAGE_CACHE,
    RAW, Results, SPARSE, THROUGHPUT, USAGE, Unit,
};

const BASELINES: [&str; 3] = ["thin", "overlay-ext4", "overlay-xfs-reflink"];
/// The throughput workload's columns: the baselines and the raw device.
const WITH_RAW: [&str; 4] = ["thin", "overlay-ext4", "overlay-xfs-reflink", RAW];

/// A baseline's short name, in ratio headers.
fn short_name(b: &str) -> &str {
    match b {
        "overlay-ext4" => "ext4",
        "overlay-xfs-reflink" => "xfs",
        RAW => "raw loop",
        b => b,
    }
}

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
            if v.abs() >= f64::from(1 << 20) {
                format!("{:.1} MiB", v / f64::from(1 << 20))
            } else {
                format!("{:.0} KiB", v / 1024.0)
            }
        }
        Unit::Seconds if v >= 1.0 => format!("{v:.2} s"),
        Unit::Seconds if v >= 1e-3 => format!("{:.1} ms", v * 1e3),
        Unit::Seconds => format!("{:.0} µs", v * 1e6),
        Unit::Rate => format!("{:.1} MiB/s", v / f64::from(1 << 20)),
        Unit::Count => format!("{v:.0}"),
        Unit::PerSecond => format!("{v:.2}/s"),
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

/// A table: one row per parameter, one column per baseline of `cols`,
/// ratios of thin (the first) to each other.
fn table(out: &mut String, res: &Results, sec: &Section<'_>, metric: &str, p: Option<f64>) {
    let names: Vec<String> = sec.cols.iter().map(|c| c.to_string()).collect();
    let ratios: Vec<String> = sec.cols[1..]
        .iter()
        .map(|c| format!("{} / {}", short_name(sec.cols[0]), short_name(c)))
        .collect();
    let _ = writeln!(
        out,
        "| {} | {} | {} |\n|---{}|",
        sec.row,
        names.join(" | "),
        ratios.join(" | "),
        "|---".repeat(names.len() + ratios.len())
    );
    for param in params(res, sec.workload) {
        let figs: Vec<Option<&Figure>> = sec
            .cols
            .iter()
            .map(|b| res.find(sec.workload, metric, param, b))
            .collect();
        if figs.iter().all(Option::is_none) {
            continue;
        }
        let pick = |s: &Stats| p.map_or(s.median(), |p| s.percentile(p));
        let ratio = |i: usize| match (stats(figs[0]), stats(figs[i])) {
            (Some(t), Some(o)) if pick(&o) > 0.0 => ratio_text(pick(&t) / pick(&o)),
            _ => "—".into(),
        };
        let cells: Vec<String> = figs.iter().map(|f| cell(*f, p)).collect();
        let rs: Vec<String> = (1..figs.len()).map(ratio).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            (sec.label)(param),
            cells.join(" | "),
            rs.join(" | ")
        );
    }
    out.push('\n');
}

/// A table of one peers workload: one row per metric, one column per
/// snapshotter, ratios of thinlayer to each other; cells are the
/// percentile `p` or, if none, median (min … max).
fn peer_table(out: &mut String, res: &Results, workload: &str, p: Option<f64>) {
    let Some((_, _, metrics)) = PEER_METRICS.iter().find(|(_, w, _)| *w == workload) else {
        return;
    };
    for param in params(res, workload) {
        let _ = writeln!(
            out,
            "| | {} | thinlayer / overlayfs | thinlayer / devmapper |\n|---{}|",
            PEERS.join(" | "),
            "|---".repeat(PEERS.len() + 2)
        );
        for (metric, _) in metrics.iter() {
            let figs: Vec<Option<&Figure>> = PEERS
                .iter()
                .map(|b| res.find(workload, metric, param, b))
                .collect();
            let pick = |s: &Stats| p.map_or(s.median(), |p| s.percentile(p));
            let ratio = |i: usize| match (stats(figs[0]), stats(figs[i])) {
                (Some(t), Some(o)) if pick(&o) > 0.0 => ratio_text(pick(&t) / pick(&o)),
                _ => "—".into(),
            };
            let cells: Vec<String> = figs.iter().map(|f| cell(*f, p)).collect();
            let _ = writeln!(
                out,
                "| {metric} | {} | {} | {} |",
                cells.join(" | "),
                ratio(1),
                ratio(2)
            );
        }
        out.push('\n');
    }
}

/// The p50 of a peers figure, at the first parameter it has values at.
fn peer_p50(res: &Results, w: &str, m: &str, b: &str) -> Option<f64> {
    params(res, w)
        .into_iter()
        .find_map(|n| stats(res.find(w, m, n, b)).map(|s| s.median()))
}

/// Why a peers figure has no value: its error, or that it was not run.
fn peer_missing(res: &Results, w: &str, m: &str, b: &str) -> String {
    params(res, w)
        .into_iter()
        .find_map(|n| match res.find(w, m, n, b) {
            Some(Figure { values: Err(e), .. }) => Some(format!("{b}'s {m} missing: {e}")),
            _ => None,
        })
        .unwrap_or_else(|| format!("{b}'s {m} not measured in this run"))
}

/// The peers' targets: thinlayer's figure against another snapshotter's,
/// each as met or missed with its figures.
fn peer_targets(res: &Results, cfg: &Config) -> Vec<String> {
    let verdict = |ok: bool| if ok { "**met**" } else { "**missed**" };
    let unit = |w: &str, m: &str| {
        res.figures
            .iter()
            .find(|f| f.workload == w && f.metric == m)
            .map_or(Unit::Seconds, |f| f.unit)
    };
    // What, workload, metric, the other snapshotter, the bound on
    // thinlayer / other, whether it is an upper bound.
    let checks = [
        (
            "Prepare cycle total, p50, at most 1.2× overlayfs",
            PREPARE_CYCLE,
            "total",
            "overlayfs",
            1.2,
            true,
        ),
        (
            "Prepare cycle total, p50, at most 0.15× devmapper",
            PREPARE_CYCLE,
            "total",
            "devmapper",
            0.15,
            true,
        ),
        (
            "Prepare alone (each call of the #2988 build), p50, at most 1.5× overlayfs",
            SHAPE_2988,
            "prepare call",
            "overlayfs",
            1.5,
            true,
        ),
        (
            "Commit (each call of the #2988 build), p50, at most 2× overlayfs",
            SHAPE_2988,
            "commit call",
            "overlayfs",
            2.0,
            true,
        ),
        (
            "containerd #2988 shape total time at most 0.8× overlayfs",
            SHAPE_2988,
            "total time",
            "overlayfs",
            0.8,
            true,
        ),
        (
            "Unpack of a realistic image, p50, at most 1.0× overlayfs",
            UNPACK,
            "unpack",
            "overlayfs",
            1.0,
            true,
        ),
        (
            "Parallel prepare cycles: cycles per second at least 0.67× overlayfs",
            PARALLEL,
            "cycles per second",
            "overlayfs",
            0.67,
            false,
        ),
    ];
    let mut t: Vec<String> = checks
        .into_iter()
        .map(|(what, w, m, other, bound, at_most)| {
            let u = unit(w, m);
            match (peer_p50(res, w, m, "thinlayer"), peer_p50(res, w, m, other)) {
                (Some(t), Some(o)) if o > 0.0 => format!(
                    "{what}: {} (thinlayer / {other} = {:.2}: {} / {})",
                    verdict(if at_most {
                        t / o <= bound
                    } else {
                        t / o >= bound
                    }),
                    t / o,
                    show(t, u),
                    show(o, u)
                ),
                (t, _) => format!(
                    "{what}: not measured ({}).",
                    peer_missing(res, w, m, if t.is_none() { "thinlayer" } else { other })
                ),
            }
        })
        .collect();
    t.push(teardown_target(res, cfg));
    // Per-operation cost with N live against with none other live.
    for b in PEERS {
        let counts: Vec<u64> = params(res, CREATE_COST)
            .into_iter()
            .filter(|&n| median(res, CREATE_COST, "create", n, b).is_some())
            .collect();
        let what = format!("{b}: create with N live within 1.2× of with none other live");
        let c = |n: u64| median(res, CREATE_COST, "create", n, b);
        t.push(match (counts.first(), counts.last()) {
            (Some(&0), Some(&n)) if n > 0 => {
                let (one, many) = (c(0).unwrap_or(f64::NAN), c(n).unwrap_or(f64::NAN));
                format!(
                    "{what}: {} (N = {n}: {:.2}×: {} / {})",
                    verdict(many / one <= 1.2),
                    many / one,
                    show(many, Unit::Seconds),
                    show(one, Unit::Seconds)
                )
            }
            _ => format!(
                "{what}: not measured ({}).",
                peer_missing(res, CREATE_COST, "create", b)
            ),
        });
    }
    t
}

/// The teardown's target: thinlayer's teardown of all N at most 1.5×
/// overlayfs's, and all its space back, in the pool and in the host's
/// file, within 60 s of the last removal.
fn teardown_target(res: &Results, cfg: &Config) -> String {
    let what = "Teardown of all N at most 1.5× overlayfs, all space back (pool and host file) within 60 s after the last removal";
    let m = "teardown of all N";
    let (Some(t), Some(o)) = (
        peer_p50(res, TEARDOWN, m, "thinlayer"),
        peer_p50(res, TEARDOWN, m, "overlayfs"),
    ) else {
        let b = if peer_p50(res, TEARDOWN, m, "thinlayer").is_none() {
            "thinlayer"
        } else {
            "overlayfs"
        };
        return format!(
            "{what}: not measured ({}).",
            peer_missing(res, TEARDOWN, m, b)
        );
    };
    let mut ok = t / o <= 1.5;
    let mut back = Vec::new();
    for (m, where_) in [
        ("space back after the last removal", "pool"),
        ("host space back after the last removal", "host file"),
    ] {
        match peer_p50(res, TEARDOWN, m, "thinlayer") {
            Some(v) => {
                ok &= v <= 60.0;
                back.push(format!("{where_} {}", show(v, Unit::Seconds)));
            }
            None => {
                ok = false;
                back.push(format!(
                    "{where_}: {} (deadline {} s)",
                    peer_missing(res, TEARDOWN, m, "thinlayer"),
                    cfg.peer_space_deadline
                ));
            }
        }
    }
    format!(
        "{what}: {} (thinlayer / overlayfs = {:.2}: {} / {}; space back after the last removal: {})",
        if ok { "**met**" } else { "**missed**" },
        t / o,
        show(t, Unit::Seconds),
        show(o, Unit::Seconds),
        back.join(", ")
    )
}

/// What `thinlayer serve`'s metrics say a peers workload cost: calls and
/// mean time of each snapshotter method, then of each step of each
/// operation (its `total` first, then its steps by the time they took).
fn steps_tables(res: &Results, workload: &str) -> String {
    let mut s = String::new();
    for st in res.peer_steps.iter().filter(|s| s.workload == workload) {
        let rows = match &st.rows {
            Err(e) => {
                let _ = writeln!(
                    s,
                    "Inside {}: its metrics could not be read: {e}\n",
                    st.snapshotter
                );
                continue;
            }
            Ok(r) => r,
        };
        let mean = |r: &StepRow| show(r.seconds / r.calls, Unit::Seconds);
        let _ = writeln!(
            s,
            "#### Inside {} (its metrics, between a scrape before the workload and one after its last collection)\n\n| method | calls | mean | all |\n|---|---|---|---|",
            st.snapshotter
        );
        for r in rows.iter().filter(|r| r.call) {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {} | {} |",
                r.op,
                r.calls,
                mean(r),
                show(r.seconds, Unit::Seconds)
            );
        }
        let mut ops: Vec<&StepRow> = rows.iter().filter(|r| !r.call).collect();
        ops.sort_by(|a, b| {
            (&a.op, a.step != "total")
                .cmp(&(&b.op, b.step != "total"))
                .then(b.seconds.total_cmp(&a.seconds))
        });
        let _ = writeln!(
            s,
            "\n| op | step | calls | mean | all |\n|---|---|---|---|---|"
        );
        for r in ops {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {} | {} |",
                r.op,
                r.step,
                r.calls,
                mean(r),
                show(r.seconds, Unit::Seconds)
            );
        }
        s.push('\n');
    }
    s
}

/// The peers' part of the report.
fn peers_report(res: &Results, cfg: &Config) -> String {
    let mut s = String::new();
    if PEER_METRICS
        .iter()
        .all(|(_, w, _)| params(res, w).is_empty())
    {
        return s;
    }
    let _ = writeln!(
        s,
        "\n## (k) Peers: containerd's overlayfs and devmapper snapshotters\n\nthinlayer (`thinlayer serve` as proxy plugin), containerd's `overlayfs` and its `devmapper`, each on loop devices of its own, driven through one containerd's snapshots API by containerd's Go client (`vm-tests/peers`), one after another. Snapshots are made under a lease; removals go through containerd's snapshots service, and reach the snapshotter in containerd's garbage collection. Bytes written: sectors written to all of the snapshotter's loop devices (both of a pool's), before and after the step, after a sync. Ratios: thinlayer's figure over the other's (below 1: thinlayer is faster or writes less; for cycles per second, above 1: thinlayer does more). Under *Inside thinlayer*, what `thinlayer serve`'s own metrics (`thinlayer_snapshotter_call_duration_seconds` and `thinlayer_step_duration_seconds`, scraped from `--metrics-address`) counted during the workload: calls and mean time per snapshotter method, and per step of each operation (`total`: the whole operation); work done in the background after a workload's last collection counts for the next one. thinlayer's `list` calls are mostly the benchmark's own: it walks thinlayer's snapshots every 2 ms to see a removed one gone.\n"
    );
    let live = |counts: &[usize]| {
        counts
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let top = cfg.peer_live.last().copied().unwrap_or(0);
    let dm_live = cfg.peer_live_devmapper.filter(|_| top > 0).map(|d| {
        let scaled: Vec<usize> = cfg.peer_live.iter().map(|c| c * d / top).collect();
        format!(
            " (on devmapper, whose every step runs `dmsetup` processes, the same shares of {d}: {}; it has no target here)",
            live(&scaled)
        )
    });
    let space = format!(
        "the snapshotter's space in use (thin pools: data blocks in use from the pool's status; overlayfs: used blocks of its ext4, statvfs; a sync before each reading) back within one pool block (64 KiB for overlayfs) of what it was before, and the host files behind its data (the pools' data files, the overlay's ext4 image; not the pools' metadata files) holding no more allocated blocks (`st_blocks`) than that either. Each is read every 10 ms (a pool's status by the ioctl `dmsetup status` makes, without starting a process), so a time is when the first reading that found it back ended. Before the container, both are read until three readings 200 ms apart agree, so that space earlier work frees in the background does not count. A space that does not come back within {} s is reported missing, with how much was still above: overlayfs's ext4 is mounted without `discard` and containerd's devmapper does not discard a removed device's blocks (`discard_blocks` unset, its default), so neither gives space back to the host's file; thinlayer discards a device's blocks before it deletes it",
        cfg.peer_space_deadline
    );
    // Workload, introduction, tables (heading, percentile or none).
    type Part<'a> = (&'a str, String, Vec<(&'a str, Option<f64>)>);
    let parts: [Part<'_>; 8] = [
        (
            PREPARE_CYCLE,
            format!(
                "{} cycles of Prepare of a container on a one-layer image, mount, unmount, Remove through containerd, each after a synchronous collection (containerd 1.6's scheduler drops the event of a removal made while a collection runs, so the removal would wait for some later one); *remove until collected*: from the Remove call until the snapshot is gone from the backend (thinlayer: from its own Walk; overlayfs: its directory gone; devmapper: its thin device deactivated — the `delete` message devmapper sends next is not waited for); *total*: prepare to collected.",
                cfg.peer_cycles
            ),
            vec![("p50", Some(50.0)), ("p90", Some(90.0))],
        ),
        (
            PARALLEL,
            format!(
                "{} clients at once (goroutines of the Go program, one containerd client), each doing {} cycles of Prepare on a one-layer image, mount, unmount and Remove through containerd one after another, without waiting for the collection; *cycles per second*: all cycles over the *wall time* from the start until every removed snapshot is gone from the backend (after the last Remove, one synchronous collection, for the reason above; then each snapshot waited for as in the prepare cycle); *cycle*: from a cycle's Prepare call to the return of its Remove call, over every cycle of every client. One run.",
                cfg.peer_clients, cfg.peer_parallel_cycles
            ),
            vec![("p50", Some(50.0)), ("p90", Some(90.0))],
        ),
        (
            SHAPE_2988,
            format!(
                "The shape of containerd's issue #2988: {} layers × {} files × {}, each layer a commit of a snapshot on the previous one (every file written and fsynced); then from an active snapshot on top, a 4-byte write + fsync in the middle of every file; {} runs. *prepare call* and *commit call*: each Prepare and each Commit call of the layers' build, timed alone (one value per layer and run).",
                cfg.peer_layers,
                cfg.peer_files,
                size(cfg.peer_file_size),
                cfg.peer_reps
            ),
            vec![("Median (min … max)", None)],
        ),
        (
            PEER_FIRST_WRITE,
            format!(
                "An image of one file of {}; per run a new container, caches dropped, then one 4 KiB write + fsync into the middle of the file; {} runs.",
                size(cfg.peer_write_size),
                cfg.peer_reps
            ),
            vec![("Median (min … max)", None)],
        ),
        (
            IDLE_COST,
            format!(
                "{} containers of a one-layer image, prepared and mounted, nothing written: space in use after ÷ N (thin pools: data blocks in use from the pool's status; overlayfs: used blocks of its ext4, statvfs); {} runs.",
                cfg.peer_idle, cfg.peer_reps
            ),
            vec![("Median (min … max)", None)],
        ),
        (
            SPACE_BACK,
            format!(
                "A container of a one-layer image writes a file of {} and fsyncs it, and is unmounted; *space taken* and *host files' growth*: what the snapshotter's space in use and the host files' allocation grew by. Then Remove through containerd: *remove until collected* as in the prepare cycle; *space back* and *host space back*: from the Remove call until {space}. {} run(s); a space that did not come back in one run is not waited for in the next.",
                size(cfg.peer_space_size),
                cfg.peer_space_reps
            ),
            vec![("Median (min … max)", None)],
        ),
        (
            TEARDOWN,
            format!(
                "After the creates below, N = {top} containers of a one-layer image kept mounted{}, and the {} created last (the timed creates at a count above 0 are kept, and count among the live ones of the next count); then unmount and Remove through containerd of all of them (*unmount + remove call*: each container's), one synchronous collection (a lease deleted with `SynchronousDelete`), until the backend holds none: *teardown of all N*, and ÷ the containers (*teardown per container*). *space back after the last removal* and *host space back after the last removal*: from the return of the last Remove call until {space}, the *before* read before the first container was made. One run.",
                dm_live.clone().unwrap_or_default(),
                cfg.peer_reps,
            ),
            vec![("Median (min … max)", None)],
        ),
        (
            UNPACK,
            format!(
                "`ctr images import` of a realistic image, made by the benchmark itself: a Debian 12 root filesystem from Debian's packages (debootstrap on the host, `vm-tests/rootfs`; which part of it, under Setup) as an OCI archive of one gzip layer. Per run: *import* into containerd's content store (`Client.Import`, timed apart); *unpack* into the snapshotter (the image's `Unpack` with the snapshotter's name, as `ctr images import` does: containerd's applier writes the layer into a snapshot it then commits); *unpack + sync*: with a sync after it, the write-back of what the unpack left dirty (containerd's overlayfs leaves its files in the page cache; the thin pools' ext4 is written back when containerd unmounts it); bytes written and space in use (after less before) by the unpack; *entries*: files, directories and links counted in a read-only view of the unpacked image (an ext4's `lost+found` left out), which must equal the layer's entries. Then the image is deleted and a collection removes its content and snapshot before the next run; {} runs.",
                cfg.peer_unpack_reps
            ),
            vec![("Median (min … max)", None)],
        ),
    ];
    for (w, intro, tables) in parts {
        if params(res, w).is_empty() {
            continue;
        }
        let _ = writeln!(s, "### {w}\n\n{intro}\n");
        for (h, p) in tables {
            let _ = writeln!(s, "#### {h}\n");
            peer_table(&mut s, res, w, p);
        }
        if w == TEARDOWN && !params(res, CREATE_COST).is_empty() {
            let _ = writeln!(
                s,
                "#### {CREATE_COST}\n\nPrepare + mount of one container of the same image with the given number of others live, on the way up to N: live counts {}{}; {} runs at each count (with none live: each removed and collected after).\n",
                live(&cfg.peer_live),
                dm_live.clone().unwrap_or_default(),
                cfg.peer_reps
            );
            let sec = Section {
                title: String::new(),
                intro: String::new(),
                workload: CREATE_COST,
                row: "live snapshots",
                label: Box::new(|p| p.to_string()),
                cols: &PEERS,
                tables: Vec::new(),
            };
            table(&mut s, res, &sec, "create", None);
        }
        s.push_str(&steps_tables(res, w));
    }
    s
}

/// A part of the report: one workload, its tables.
struct Section<'a> {
    title: String,
    intro: String,
    workload: &'a str,
    /// The first column's header, and a row's label from its parameter.
    row: &'a str,
    label: Box<dyn Fn(u64) -> String + 'a>,
    cols: &'a [&'a str],
    /// Heading, metric, percentile (none: median, min, max).
    tables: Vec<(String, &'a str, Option<f64>)>,
}

/// Median of a figure, if it has values.
fn median(res: &Results, w: &str, m: &str, param: u64, b: &str) -> Option<f64> {
    stats(res.find(w, m, param, b)).map(|s| s.median())
}

fn targets(res: &Results, cfg: &Config) -> Vec<String> {
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
    let groups = params(res, CHURN);
    for b in BASELINES {
        let m = |p: &u64| median(res, CHURN, "time per group", *p, b);
        let first = groups.iter().find_map(|p| m(p).map(|v| (*p, v)));
        let last = groups.iter().rev().find_map(|p| m(p).map(|v| (*p, v)));
        match (first, last) {
            (Some((p0, first)), Some((p1, last))) if p1 > p0 => {
                let r = last / first;
                t.push(format!(
                    "Churn on {b}: time per group of {} containers flat within 1.2× (last / first): {} ({} / {} = {r:.2}×)",
                    cfg.churn_group,
                    verdict(r <= 1.2),
                    show(last, Unit::Seconds),
                    show(first, Unit::Seconds)
                ));
            }
            _ => t.push(format!(
                "Churn on {b}: time per group flat within 1.2×: not measured in this run."
            )),
        }
    }
    let cd = |b: &str| {
        params(res, CONTAINERD)
            .into_iter()
            .find_map(|l| median(res, CONTAINERD, "total time", l, b).map(|v| (l, v)))
    };
    match (cd("thin"), cd("overlay-ext4")) {
        (Some((l, thin)), Some((_, ext4))) => {
            let r = thin / ext4;
            let note = if l != 16 {
                format!(" — measured with {l} layers; the shape of the target is 16")
            } else {
                String::new()
            };
            t.push(format!(
                "containerd-shaped total time at most 1.5× overlay-ext4 (containerd's devmapper snapshotter: 2.7×): {} (thin / overlay-ext4 = {r:.2}×: {} / {}){note}",
                verdict(r <= 1.5),
                show(thin, Unit::Seconds),
                show(ext4, Unit::Seconds)
            ));
        }
        _ => t.push(
            "containerd-shaped total time at most 1.5× overlay-ext4: not measured in this run."
                .into(),
        ),
    }
    t.push(usage_target(res));
    t.extend(peer_targets(res, cfg));
    t.extend(kubelet_targets(res));
    let idle: Vec<(u64, f64)> = params(res, DENSITY)
        .into_iter()
        .filter_map(|n| median(res, DENSITY, "idle, per container", n, "thin").map(|v| (n, v)))
        .collect();
    if idle.is_empty() {
        t.push("An idle container at most 256 KiB of pool data: not measured in this run.".into());
    } else {
        let ok = idle.iter().all(|&(_, v)| v <= 256.0 * 1024.0);
        let parts: Vec<String> = idle
            .iter()
            .map(|&(n, v)| format!("N={n}: {} per container", show(v, Unit::Bytes)))
            .collect();
        t.push(format!(
            "An idle container at most 256 KiB of pool data: {} ({})",
            verdict(ok),
            parts.join(", ")
        ));
    }
    t
}

/// The usage workload's figures at its largest count: snapshots, all
/// calls, one uncached dump (median), dumps the calls took.
fn usage_figures(res: &Results) -> Option<(u64, f64, f64, f64)> {
    params(res, USAGE).into_iter().rev().find_map(|n| {
        let m = |metric| median(res, USAGE, metric, n, "thin");
        Some((
            n,
            m("all usage calls")?,
            m("one uncached dump")?,
            m("dumps taken by the calls")?,
        ))
    })
}

fn usage_target(res: &Results) -> String {
    let target =
        "Usage of each of 1000 snapshots, one call each, costs less than 5 uncached metadata dumps";
    let Some((n, all, dump, dumps)) = usage_figures(res) else {
        return format!("{target}: not measured in this run.");
    };
    let r = all / dump;
    let note = if n != 1000 {
        format!(" — measured at {n} snapshots")
    } else {
        String::new()
    };
    format!(
        "{target}: {} (all calls / one dump = {}: {} against {}; the calls took {dumps:.0} dump(s)){note}",
        if r < 5.0 { "**met**" } else { "**missed**" },
        ratio_text(r),
        show(all, Unit::Seconds),
        show(dump, Unit::Seconds),
    )
}

/// The usage workload's table: a row per figure.
fn usage_table(res: &Results) -> Option<String> {
    let mut s = String::new();
    for n in params(res, USAGE) {
        let f = |m| res.find(USAGE, m, n, "thin");
        let ratio = usage_figures(res)
            .filter(|u| u.0 == n)
            .map_or("—".into(), |(_, all, dump, _)| ratio_text(all / dump));
        let _ = writeln!(s, "| {n} snapshots | thin |\n|---|---|");
        for (what, cell) in [
            (
                "one uncached dump and parse (every layer's sizes from a new handle: what each call cost before), median (min … max)",
                cell(f("one uncached dump"), None),
            ),
            (
                "a locked operation that does nothing (the root's lock, the records, the start-up checks), median (min … max)",
                cell(f("locked operation"), None),
            ),
            ("Usage calls", cell(f("usage calls"), Some(50.0))),
            (
                "metadata dumps they took",
                cell(f("dumps taken by the calls"), Some(50.0)),
            ),
            ("all calls", cell(f("all usage calls"), Some(50.0))),
            ("per call, median (min … max)", cell(f("usage call"), None)),
            ("per call, p99", cell(f("usage call"), Some(99.0))),
            ("all calls ÷ one uncached dump (median)", ratio),
        ] {
            let _ = writeln!(s, "| {what} | {cell} |");
        }
        s.push('\n');
    }
    (!s.is_empty()).then_some(s)
}

type Series = (String, Vec<(f64, f64)>);

/// A line per column of `cols`: the figure's median (or percentile `p`)
/// at each parameter.
fn series(res: &Results, cols: &[&str], w: &str, m: &str, p: Option<f64>) -> Vec<Series> {
    cols.iter()
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

/// A plotting error as anyhow's.
fn drawing(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// A log–log line plot of medians, one line per baseline.
fn plot(path: &Path, title: &str, x: &str, y: &str, data: &[Series]) -> Result<()> {
    lines(path, title, x, y, data, true)
}

/// A line plot, one line per series: log–log, or linear from 0.
fn lines(path: &Path, title: &str, x: &str, y: &str, data: &[Series], log: bool) -> Result<()> {
    let pts = data.iter().flat_map(|(_, p)| p.iter().copied());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (a, b) in pts {
        (x0, x1, y0, y1) = (x0.min(a), x1.max(a), y0.min(b), y1.max(b));
    }
    if x0 > x1 {
        return Ok(());
    }
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    if log {
        let (x0, x1) = (x0.max(1e-9) / 1.5, x1 * 1.5);
        let (y0, y1) = (y0.max(1e-9) / 2.0, y1.max(1e-9) * 2.0);
        let chart = builder
            .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
            .map_err(drawing)?;
        draw_lines(chart, x, y, data)?;
    } else {
        let chart = builder
            .build_cartesian_2d(0.0..x1.max(1.0) * 1.05, 0.0..y1.max(1e-9) * 1.2)
            .map_err(drawing)?;
        draw_lines(chart, x, y, data)?;
    }
    root.present().map_err(drawing)
}

/// Draws the series of a line plot on its axes.
fn draw_lines<'a, X, Y>(
    mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    x: &str,
    y: &str,
    data: &[Series],
) -> Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_label_formatter(&|v| tick(*v, x))
        .y_label_formatter(&|v| tick(*v, y))
        .x_desc(x)
        .y_desc(y)
        .draw()
        .map_err(drawing)?;
    for (i, (name, p)) in data.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))
            .map_err(drawing)?
            .label(name.as_str())
            .legend(move |(a, b)| {
                PathElement::new(vec![(a, b), (a + 20, b)], color.stroke_width(2))
            });
        chart
            .draw_series(p.iter().map(|&q| Circle::new(q, 3, color.filled())))
            .map_err(drawing)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

/// The legend of a chart's labelled series, at `pos`.
fn legend<'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    pos: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(pos)
        .draw()
        .map_err(drawing)
}

/// Stacked bars, one per group (its name and one value per part, bottom
/// first), each with its sum written above it; false if there was nothing
/// to draw.
fn stacked(path: &Path, title: &str, y: &str, parts: &[&str], groups: &[Bar]) -> Result<bool> {
    let top = groups
        .iter()
        .map(|(_, v)| v.iter().sum::<f64>())
        .fold(0.0, f64::max);
    if groups.is_empty() || top <= 0.0 {
        return Ok(false);
    }
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0..groups.len()).into_segmented(), 0.0..top * 1.2)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => groups.get(*i).map_or(String::new(), |g| g.0.clone()),
            _ => String::new(),
        })
        .y_label_formatter(&|v| tick(*v, y))
        .y_desc(y)
        .draw()
        .map_err(drawing)?;
    for (k, part) in parts.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let bars = groups.iter().enumerate().map(|(i, (_, v))| {
            let below: f64 = v[..k].iter().sum();
            let mut r = Rectangle::new(
                [
                    (SegmentValue::Exact(i), below),
                    (SegmentValue::Exact(i + 1), below + v[k]),
                ],
                color.filled(),
            );
            r.set_margin(0, 0, 40, 40);
            r
        });
        chart
            .draw_series(bars)
            .map_err(drawing)?
            .label(*part)
            .legend(move |(a, b)| Rectangle::new([(a, b - 5), (a + 10, b + 5)], color.filled()));
    }
    chart
        .draw_series(groups.iter().enumerate().map(|(i, (_, v))| {
            let sum: f64 = v.iter().sum();
            Text::new(
                tick(sum, y),
                (SegmentValue::CenterOf(i), sum + top * 0.02),
                TextStyle::from(("sans-serif", 13).into_font())
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))
        .map_err(drawing)?;
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(drawing)?;
    Ok(true)
}

/// A bar of [`stacked`]: its name and the values of its parts.
type Bar = (String, Vec<f64>);

/// The peers' plots that have figures, written to `dir`: the prepare
/// cycle's steps, the teardown per container, the create cost against the
/// live snapshots.
fn peer_plots(dir: &Path, res: &Results) -> Result<Vec<&'static str>> {
    let mut made = Vec::new();
    let mut bars = |file: &'static str, title: &str, parts: &[&str], bars: Vec<Bar>| {
        if stacked(&dir.join(file), title, "seconds", parts, &bars)
            .with_context(|| format!("plot {file}"))?
        {
            made.push(file);
        }
        anyhow::Ok(())
    };
    let steps = ["prepare", "mount", "unmount", "remove until collected"];
    bars(
        "cow-peers-prepare-cycle.svg",
        "Prepare cycle through containerd: p50 of each step",
        &steps,
        PEERS
            .iter()
            .filter_map(|b| {
                let v: Option<Vec<f64>> = steps
                    .iter()
                    .map(|m| peer_p50(res, PREPARE_CYCLE, m, b))
                    .collect();
                v.map(|v| (b.to_string(), v))
            })
            .collect(),
    )?;
    bars(
        "cow-peers-teardown.svg",
        "Teardown through containerd: time per container",
        &["unmount + Remove call (mean)", "the rest, until collected"],
        PEERS
            .iter()
            .filter_map(|b| {
                let (n, per) = params(res, TEARDOWN).into_iter().find_map(|n| {
                    median(res, TEARDOWN, "teardown per container", n, b).map(|v| (n, v))
                })?;
                let calls = res
                    .find(TEARDOWN, "unmount + remove call", n, b)
                    .and_then(|f| f.values.as_ref().ok())
                    .filter(|v| !v.is_empty())
                    .map_or(0.0, |v| v.iter().sum::<f64>() / v.len() as f64);
                Some((
                    format!("{b} (N = {n})"),
                    vec![calls, (per - calls).max(0.0)],
                ))
            })
            .collect(),
    )?;
    let data = series(res, &PEERS, CREATE_COST, "create", None);
    let file = "cow-peers-create-cost.svg";
    if data.iter().any(|(_, p)| !p.is_empty()) {
        lines(
            &dir.join(file),
            "Create (Prepare + mount) against live snapshots, median",
            "live snapshots",
            "seconds",
            &data,
            false,
        )
        .with_context(|| format!("plot {file}"))?;
        made.push(file);
    }
    Ok(made)
}

/// The report's parts, in order.
fn sections<'a>(cfg: &'a Config) -> Vec<Section<'a>> {
    let count = |p: u64| p.to_string();
    let med = |h: &str, m: &'a str| (h.to_string(), m, None);
    let g = cfg.churn_group as u64;
    vec![
        Section {
            title: "(a) First write".into(),
            intro: "An image of one file; per run a new container is created and mounted, caches are dropped, then one 4 KiB write + fsync into the middle of the file is measured.".into(),
            workload: FIRST_WRITE,
            row: "file",
            label: Box::new(size),
            cols: &BASELINES,
            tables: vec![
                med("Time", "time"),
                med("Bytes written to the device", "bytes written"),
            ],
        },
        Section {
            title: "(b) Create to mounted".into(),
            intro: "N containers of one image, made one after another: time from the start of create to mounted, over all containers of all repetitions; then the time to unmount and remove all N.".into(),
            workload: LATENCY,
            row: "containers",
            label: Box::new(count),
            cols: &BASELINES,
            tables: vec![
                ("p50".into(), "create to mounted", Some(50.0)),
                ("p99".into(), "create to mounted", Some(99.0)),
                med("Median (min … max)", "create to mounted"),
                med("Teardown of all N", "teardown of all"),
            ],
        },
        Section {
            title: "(c) Depth".into(),
            intro: "Images of many layers, each adding one small file, the bottom one a 1 MiB file. Per run: a new container, its mount timed, caches dropped, the bottom file read whole. overlay's lower directories are named by a short path (`/tmp/oN/ID`), yet the kernel reads only one page of mount options and stacks at most 500 lower directories; a refused mount is shown as a failure.".into(),
            workload: DEPTH,
            row: "layers",
            label: Box::new(count),
            cols: &BASELINES,
            tables: vec![
                med("Mount", "mount"),
                med("Cold read of the bottom layer's file (1 MiB)", "cold read of the bottom layer's file"),
                med("Building the image (one run)", "build image"),
            ],
        },
        Section {
            title: "(d) Sparse updates".into(),
            intro: format!("An image of one file of {}; per run a new container is created and mounted and caches are dropped, then 4 KiB writes at distinct random offsets (4 KiB aligned, from a seeded generator: the same offsets on every run and baseline) cover the given share of the file's 4 KiB blocks, followed by one fsync at the end; the writes and the fsync are measured.", size(cfg.sparse_size)),
            workload: SPARSE,
            row: "blocks written",
            label: Box::new(|p| format!("{} %", short(p as f64 / 10.0))),
            cols: &BASELINES,
            tables: vec![
                med("Time", "time"),
                med("Bytes written to the device", "bytes written"),
            ],
        },
        Section {
            title: "(e) Churn".into(),
            intro: format!("{} containers of one image made and removed one after another (create, mount, unmount, remove each), {} run(s); the time of each group of {g} containers. Then, after the image is removed too, what is left behind: for thin, device-mapper devices of the pool's prefix other than the pool and the base device, loop devices over files of the pool's root other than its data and metadata files, mounts under the root; for overlay, mounts under its filesystem and container directories.", cfg.churn, cfg.churn_reps),
            workload: CHURN,
            row: "containers",
            label: Box::new(move |p| format!("{}–{p}", p.saturating_sub(g) + 1)),
            cols: &BASELINES,
            tables: vec![med(&format!("Time per group of {g}"), "time per group")],
        },
        Section {
            title: "(f) containerd-shaped".into(),
            intro: format!("The shape of containerd's snapshotter benchmark: an image of {} layers of {} files of {} each. The bottom layer is the driver's image build (for thin an import: a container on the empty base, filled, committed); every further layer is a container on the previous image, mounted, filled (each file written and fsynced), unmounted and committed. Then a container on top writes 4 bytes into the middle of every file, each write followed by an fsync of its file. Build and write measured apart; total = both. {} runs.", cfg.cd_layers, cfg.cd_files, size(cfg.cd_file_size), cfg.cd_reps),
            workload: CONTAINERD,
            row: "layers",
            label: Box::new(count),
            cols: &BASELINES,
            tables: vec![
                med("Total time", "total time"),
                med("Total bytes written to the device", "total bytes written"),
                med("Build time", "build time"),
                med("Build bytes written", "build bytes written"),
                med("Write time", "write time"),
                med("Write bytes written", "write bytes written"),
            ],
        },
        Section {
            title: "(g) Density".into(),
            intro: "N containers of one image of a few small files, created and mounted, nothing written: space used per container — for thin the pool's data in use as the kernel reports it (pool status), for overlay the used blocks of its filesystem (statvfs), each as the difference from before the containers, after a sync and dropping the caches (which makes xfs free its preallocations of files no longer open). Then each container writes and fsyncs a 1 MiB file, measured again.".into(),
            workload: DENSITY,
            row: "containers",
            label: Box::new(count),
            cols: &BASELINES,
            tables: vec![
                med("Idle, per container", "idle, per container"),
                med("After writing 1 MiB each, per container", "after writing 1 MiB each, per container"),
            ],
        },
        Section {
            title: "(h) Throughput".into(),
            intro: format!("fio (`--direct=1 --ioengine=psync --iodepth=1 --time_based --runtime={} --end_fsync=1`, {} runs) on a {} file a container wrote whole in its own layer (thin: ext4 on the container's thin device; overlay: the upper directory), against `{RAW}`: a loop device with direct I/O over a sparse file of the same size on the same scratch disk, written whole first. Bandwidth from fio's JSON output (`bw_bytes`).", cfg.fio_seconds, cfg.fio_reps, size(cfg.fio_size)),
            workload: THROUGHPUT,
            row: "job",
            label: Box::new(|p| {
                FIO_JOBS
                    .get(p as usize)
                    .map_or_else(|| p.to_string(), |(n, _, bs)| format!("{n}, {bs}"))
            }),
            cols: &WITH_RAW,
            tables: vec![med("Bandwidth", "bandwidth")],
        },
        Section {
            title: "(i) Page cache".into(),
            intro: format!("N containers of one image each read the same {} file of it whole; the growth of `Cached:` in /proc/meminfo, caches dropped before. overlayfs reads the lower file itself, so its page cache is shared; each thin snapshot is a block device of its own with its own cache. The VM has {} of memory.", size(cfg.cache_file), meminfo_total()),
            workload: PAGE_CACHE,
            row: "readers",
            label: Box::new(count),
            cols: &BASELINES,
            tables: vec![med("Page cache used", "page cache")],
        },
        Section {
            title: "(j) Usage".into(),
            intro: format!("Usage as containerd asks it for Kubernetes' image-filesystem statistics (every snapshot, one call each, every 10 s), thin only. {} active snapshots of one image of a few small files, made as the snapshotter service makes them (containerd-shaped keys, each device live, none mounted). Then: every layer's sizes from a new handle, which has nothing kept, {} runs: one metadata dump and its parse, the cost of each Usage call before sizes were kept; a locked operation that does nothing, {} runs; then one poll: Usage of each snapshot once, in order, through the call the service makes (`Driver::layer_size`) on one handle, each call timed, and the metadata dumps the calls took counted. The first call takes a dump; the others are answered from it while `state.json`, the pool's status and the 2 s age bound allow.", cfg.usage_snapshots, cfg.usage_dumps, cfg.usage_locked),
            workload: USAGE,
            row: "snapshots",
            label: Box::new(count),
            cols: &["thin"],
            tables: Vec::new(),
        },
    ]
}

/// The machine's memory, for the report.
fn meminfo_total() -> String {
    super::workloads::meminfo("MemTotal")
        .map_or_else(|_| "unknown".into(), |b| format!("{} MiB", b >> 20))
}

/// Copies of the page cache workload's file in the cache, per baseline.
fn copies(res: &Results, cfg: &Config) -> Option<String> {
    let parts: Vec<String> = params(res, PAGE_CACHE)
        .into_iter()
        .flat_map(|n| {
            BASELINES.iter().filter_map(move |b| {
                median(res, PAGE_CACHE, "page cache", n, b)
                    .map(|v| format!("{b} {:.2} (N={n})", v / cfg.cache_file as f64))
            })
        })
        .collect();
    (!parts.is_empty()).then(|| format!("Page cache used ÷ file size: {}.\n", parts.join(", ")))
}

/// What churn left behind, per baseline.
fn leaks(res: &Results) -> Option<String> {
    if res.leaks.is_empty() {
        return None;
    }
    let mut s = "Left behind after churn:\n\n".to_string();
    for (b, l) in &res.leaks {
        if l.is_empty() {
            let _ = writeln!(s, "- {b}: nothing");
        } else {
            let _ = writeln!(s, "- {b}: {} — {}", l.len(), l.join("; "));
        }
    }
    s.push('\n');
    Some(s)
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
    let plots: [Plot<'_>; 10] = [
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
        (
            "cow-sparse-time.svg",
            "Sparse 4 KiB updates + fsync: time",
            "thousandths of the file's blocks written",
            "seconds",
            SPARSE,
            "time",
            None,
        ),
        (
            "cow-sparse-bytes.svg",
            "Sparse 4 KiB updates + fsync: bytes written to the device",
            "thousandths of the file's blocks written",
            "bytes",
            SPARSE,
            "bytes written",
            None,
        ),
        (
            "cow-churn.svg",
            "Churn: time per group of containers made and removed",
            "containers made so far",
            "seconds",
            CHURN,
            "time per group",
            None,
        ),
        (
            "cow-density-idle.svg",
            "Space used per idle container",
            "containers",
            "bytes",
            DENSITY,
            "idle, per container",
            None,
        ),
        (
            "cow-density-written.svg",
            "Space used per container after writing 1 MiB",
            "containers",
            "bytes",
            DENSITY,
            "after writing 1 MiB each, per container",
            None,
        ),
    ];
    let mut made = Vec::new();
    for (file, title, x, y, w, m, p) in plots {
        let data = series(res, &BASELINES, w, m, p);
        if data.iter().any(|(_, p)| !p.is_empty()) {
            plot(&dir.join(file), title, x, y, &data).with_context(|| format!("plot {file}"))?;
            made.push(file);
        }
    }
    made.extend(peer_plots(dir, res)?);
    let mut s = String::new();
    let _ = writeln!(s, "# Copy-on-write benchmarks\n");
    let _ = writeln!(
        s,
        "thinlayer (`thin`: block-level copy-on-write, one thin snapshot per layer) against file-level copy-on-write the way Docker's overlay2 does it (overlayfs, one directory per layer) on ext4 and on xfs with reflink. Generated by `vm-tests/bench{}{}`; {} mode, {} repetitions (churn, containerd-shaped and throughput: as their parts say; create to mounted and density at 100 or more containers: fewer), {:.0} s in all.\n",
        if cfg.quick { " --quick" } else { "" },
        cfg.only
            .map_or(String::new(), |w| format!(" --only {}", w.name())),
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
        "Each cell: median (min … max) over the repetitions. Ratios: thin's median over the baseline's (p50 and p99 tables: over the same percentile); below 1 means thin is faster or writes less (for bandwidth: above 1 means thin is faster). Bytes written: the backing block device's sectors written (`/sys/block/DEV/stat`, field 7, × 512) before and after the step, after a sync — for thin the pool's data loop device, for overlay the loop device under its filesystem.\n"
    );
    let _ = writeln!(s, "## Targets\n");
    for t in targets(res, cfg) {
        let _ = writeln!(s, "- {t}");
    }
    let _ = writeln!(s, "\n## Set-up\n\n| | |\n|---|---|");
    for (k, v) in &res.setup {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    for sec in sections(cfg) {
        if params(res, sec.workload).is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n## {}\n\n{}\n", sec.title, sec.intro);
        for (heading, metric, p) in &sec.tables {
            let _ = writeln!(s, "### {heading}\n");
            table(&mut s, res, &sec, metric, *p);
        }
        let extra = match sec.workload {
            CHURN => leaks(res),
            PAGE_CACHE => copies(res, cfg),
            USAGE => usage_table(res),
            _ => None,
        };
        s.push_str(&extra.unwrap_or_default());
    }
    s.push_str(&peers_report(res, cfg));
    s.push_str(&kubelet_report(res, cfg));
    if !made.is_empty() {
        let _ = writeln!(s, "\n## Plots\n");
        for f in made {
            let _ = writeln!(s, "![{f}]({f})\n");
        }
    }
    fs::write(out, s).with_context(|| format!("write {}", out.display()))
}

/// A kubelet figure's value (its median if it has several) with `n`
/// snapshots, in the windows of `column`.
fn kubelet_value(res: &Results, m: &str, n: u64, column: &str) -> Option<f64> {
    median(res, KUBELET, m, n, column)
}

/// The kubelet workload's windows: the image alone (0) and N snapshots.
fn kubelet_windows(res: &Results) -> Option<(u64, u64)> {
    let p = params(res, KUBELET);
    Some((*p.first()?, *p.last().filter(|n| **n > 0)?))
}

/// serve's CPU per minute, its children's included, in one window.
fn kubelet_cpu(res: &Results, n: u64, column: &str) -> Option<f64> {
    Some(
        kubelet_value(res, "serve CPU per minute", n, column)?
            + kubelet_value(res, "children's CPU per minute", n, column)?,
    )
}

/// The kubelet workload's two targets.
fn kubelet_targets(res: &Results) -> Vec<String> {
    let cpu_target = format!(
        "Polling 200 snapshots costs serve at most {} of CPU per minute",
        show(KUBELET_CPU_TARGET, Unit::Seconds)
    );
    let lock_target = "A Prepare waits for the root's lock no longer than one Usage call";
    let Some((base, n)) = kubelet_windows(res) else {
        return vec![
            format!("{cpu_target}: not measured in this run."),
            format!("{lock_target}: not measured in this run."),
        ];
    };
    let verdict = |ok: bool| if ok { "**met**" } else { "**missed**" };
    let note = if n != 200 {
        format!(" — measured at {n} snapshots")
    } else {
        String::new()
    };
    let cost = |column| {
        Some((
            kubelet_cpu(res, n, column)?,
            kubelet_cpu(res, base, column)?,
        ))
    };
    let cpu = match (cost(QUIET), cost(CHURNED)) {
        (Some((with, without)), churned) => {
            let also = churned.map_or(String::new(), |(w, wo)| {
                format!(
                    "; with a Prepare every {} s as well: {} against {}, {} more",
                    CHURN_EVERY.as_secs(),
                    show(w, Unit::Seconds),
                    show(wo, Unit::Seconds),
                    show(w - wo, Unit::Seconds)
                )
            });
            format!(
                "{cpu_target}: {} (polling alone: {} per minute with {n} snapshots, {} with the image alone, {} more{also}{note})",
                verdict(with - without <= KUBELET_CPU_TARGET),
                show(with, Unit::Seconds),
                show(without, Unit::Seconds),
                show(with - without, Unit::Seconds),
            )
        }
        _ => format!("{cpu_target}: not measured in this run."),
    };
    let lock = match (
        kubelet_value(res, "prepare lock wait, max", n, CHURNED),
        kubelet_value(res, "usage call, max", n, CHURNED),
    ) {
        (Some(wait), Some(usage)) => format!(
            "{lock_target}: {} (with {n} snapshots polled: the longest wait at most {}, the longest Usage call at most {}, the histograms' bucket bounds{note})",
            verdict(wait <= usage),
            show(wait, Unit::Seconds),
            show(usage, Unit::Seconds),
        ),
        _ => format!("{lock_target}: not measured in this run."),
    };
    vec![cpu, lock]
}

/// The kubelet workload's section: a row per figure, a column per window.
fn kubelet_report(res: &Results, cfg: &Config) -> String {
    let Some((base, n)) = kubelet_windows(res) else {
        return String::new();
    };
    let mut s = format!(
        "\n## (l) Kubelet polling\n\nWhat Kubernetes' polling of container statistics costs `thinlayer serve`. containerd's CRI plugin keeps a container's writable-layer usage for the kubelet from its snapshots syncer: every `stats_collect_period` ({POLL_PERIOD} s, the default) it Walks the CRI snapshotter's snapshots in `k8s.io`, then asks `Usage` of every active one (and of each other kind once). containerd's Walk reads its own metadata and asks the snapshotter `Stat` of each snapshot, so each poll reaches serve as one Stat per snapshot and one Usage per container; `list` calls are containerd's garbage collection's. A poll's Usage calls are one after another: when they take longer than the period, ticks are dropped and there are fewer polls. Set-up: see *kubelet* above. Windows of {} s each, after serve saw a whole poll of the snapshots live: the image alone, then {n} container snapshots live; each polling alone, then with a Prepare and a Remove of a snapshot of the image through containerd's snapshots API every {} s, as a node starts and removes containers. Per window: serve's CPU time from /proc/PID/stat (user + system; children: the `thin_dump` processes and other tools it waited for), scaled to a minute; from serve's metrics scraped before and after: calls per method, metadata dumps (step `dump`), Usage calls that took the root's lock (step `lock` of `usage`: a Usage answered from the kept sizes takes none), Usage call time (mean, and the upper bound of the histogram bucket holding the longest) and how long Prepares waited for the root's lock (step `lock` of `prepare`, the same way); and each Prepare's time through containerd, timed by the client.\n\nWhy the CPU target: one poll should cost serve one metadata dump, and a lock-free answer per call. A dump, a `thin_dump` process and its parse, cost about {} of CPU under this emulation when the target was set (quick runs, on a machine other VMs kept busy; this run's `thin_dump` alone: *children's CPU* over *metadata dumps* below, its parse is in serve's own); {} polls a minute then cost {} in dumps, and the {} Stat and Usage calls of a poll of 200 about as much again. So: at most {} a minute above the image alone, polling alone; a dump per call (200 a poll) would cost a hundred times more.\n",
        cfg.kubelet_seconds,
        CHURN_EVERY.as_secs(),
        show(KUBELET_DUMP_CPU, Unit::Seconds),
        60 / POLL_PERIOD,
        show(KUBELET_DUMP_CPU * (60 / POLL_PERIOD) as f64, Unit::Seconds),
        2 * 200 + 1,
        show(KUBELET_CPU_TARGET, Unit::Seconds),
    );
    for column in [QUIET, CHURNED] {
        let _ = writeln!(
            s,
            "\n### {}\n\n| | image only | {n} snapshots | difference |\n|---|---|---|---|",
            if column == QUIET {
                "Polling alone".to_string()
            } else {
                format!(
                    "With a Prepare and a Remove every {} s",
                    CHURN_EVERY.as_secs()
                )
            }
        );
        for (metric, unit) in KUBELET_METRICS {
            let f = |p| res.find(KUBELET, metric, p, column);
            let (a, b) = (f(base), f(n));
            let values = |f: Option<&Figure>| f.and_then(|f| f.values.as_ref().ok()).map(Vec::len);
            let multi = values(a).max(values(b)).is_some_and(|l| l > 1);
            let diff = match (stats(a), stats(b)) {
                (Some(x), Some(y)) if unit != Unit::Count || metric.ends_with("per minute") => {
                    let d = y.median() - x.median();
                    if d < 0.0 {
                        format!("−{}", show(-d, unit))
                    } else {
                        show(d, unit)
                    }
                }
                _ => "—".into(),
            };
            let (what, ca, cb) = if multi {
                (
                    format!("{metric}, median (min … max)"),
                    cell(a, None),
                    cell(b, None),
                )
            } else {
                (metric.to_string(), cell(a, Some(50.0)), cell(b, Some(50.0)))
            };
            let _ = writeln!(s, "| {what} | {ca} | {cb} | {diff} |");
        }
    }
    s
}
