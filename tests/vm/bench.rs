//! The copy-on-write benchmarks of `benches/cow` in their quick mode: every
//! workload must produce figures, the figures must be sane, and nothing may
//! be left behind. Speed targets are the benchmarks' business
//! (`vm-tests/bench`), never asserted here.

#[path = "../../benches/cow/backend.rs"]
#[allow(dead_code)]
mod backend;
#[path = "../../benches/cow/kubelet.rs"]
#[allow(dead_code)]
mod kubelet;
#[path = "../../benches/cow/measure.rs"]
#[allow(dead_code)]
mod measure;
#[path = "../../benches/cow/overlay.rs"]
#[allow(dead_code)]
mod overlay;
#[path = "../../benches/cow/peers.rs"]
#[allow(dead_code)]
mod peers;
#[path = "../../benches/cow/workloads.rs"]
#[allow(dead_code)]
mod workloads;

use std::fs;

// kubelet's `super::channel`: the one served.rs includes.
use crate::served::channel;

use crate::fixture;
use backend::{Cow, Thin};
use overlay::{Overlay, Under};
use peers::{
    CREATE_COST, IDLE_COST, PARALLEL, PEER_FIRST_WRITE, PEER_METRICS, PEERS, PREPARE_CYCLE,
    ROOTFS_ENV, SHAPE_2988, SPACE_BACK, TEARDOWN, UNPACK,
};
use workloads::{
    CHURN, CONTAINERD, Config, DENSITY, DENSITY_WRITE, DEPTH, FIO_JOBS, FIRST_WRITE, LATENCY,
    PAGE_CACHE, RAW, Results, SPARSE, THROUGHPUT, USAGE, Unit, Workload,
};

const BASELINES: [&str; 3] = ["thin", "overlay-ext4", "overlay-xfs-reflink"];

#[test]
fn quick_benchmarks_produce_sane_figures() {
    // Alone: the page cache workload measures the growth of the machine's
    // page cache, which another test's reads would add to.
    fixture::run_alone("bench", |fx| {
        // The thin pool's root is `fx.dir/thin`: registered so that the
        // fixture checks its devices for leaks too.
        fx.with_another_root("thin", |_| {
            // The peers have a test of their own; kubelet polling, whose
            // figures are timings only, none.
            // Quiet: a failure's message must not drown in progress lines.
            let cfg = Config {
                skip: vec![Workload::Peers, Workload::Kubelet],
                progress: false,
                ..Config::quick()
            };
            let res = workloads::run(&fx.dir, &cfg).expect("run the quick benchmarks");
            let mut expected = Vec::new();
            for &s in &cfg.sizes {
                expected.push((FIRST_WRITE, "time", s, cfg.reps));
                expected.push((FIRST_WRITE, "bytes written", s, cfg.reps));
            }
            for &n in &cfg.counts {
                expected.push((LATENCY, "create to mounted", n as u64, n * cfg.reps));
                expected.push((LATENCY, "teardown of all", n as u64, cfg.reps));
            }
            for &d in &cfg.depths {
                expected.push((DEPTH, "build image", d as u64, 1));
                expected.push((DEPTH, "mount", d as u64, cfg.reps));
                expected.push((
                    DEPTH,
                    "cold read of the bottom layer's file",
                    d as u64,
                    cfg.reps,
                ));
            }
            for &pm in &cfg.sparse_permille {
                expected.push((SPARSE, "time", pm, cfg.reps));
                expected.push((SPARSE, "bytes written", pm, cfg.reps));
            }
            let g = cfg.churn_group;
            for k in 1..=cfg.churn / g {
                expected.push((CHURN, "time per group", (k * g) as u64, cfg.churn_reps));
            }
            expected.push((CHURN, "left behind", cfg.churn as u64, 1));
            for m in [
                "build time",
                "build bytes written",
                "write time",
                "write bytes written",
                "total time",
                "total bytes written",
            ] {
                expected.push((CONTAINERD, m, cfg.cd_layers as u64, cfg.cd_reps));
            }
            for &n in &cfg.density {
                for m in [
                    "idle, per container",
                    "after writing 1 MiB each, per container",
                ] {
                    expected.push((DENSITY, m, n as u64, cfg.reps));
                }
            }
            for i in 0..FIO_JOBS.len() {
                expected.push((THROUGHPUT, "bandwidth", i as u64, cfg.fio_reps));
            }
            for &n in &cfg.readers {
                expected.push((PAGE_CACHE, "page cache", n as u64, cfg.reps));
            }
            for b in BASELINES {
                for &(w, m, p, n) in &expected {
                    let v = values(&res, w, m, p, b);
                    assert_eq!(v.len(), n, "{w} / {m} / {p} on {b}: {v:?}");
                    let unit = res.find(w, m, p, b).unwrap().unit;
                    let ok = |x: &f64| match (unit, m) {
                        // Nothing may be left behind.
                        (Unit::Count, _) => *x == 0.0,
                        // An idle container may cost no block at all.
                        (_, "idle, per container") => *x >= 0.0,
                        _ => *x > 0.0,
                    };
                    assert!(
                        v.iter().all(|x| x.is_finite() && ok(x)),
                        "{w} / {m} / {p} on {b}: a value out of range: {v:?}"
                    );
                    if unit == Unit::Seconds {
                        assert!(v.iter().all(|x| *x < 60.0), "{w} / {m} / {p} on {b}: {v:?}");
                    }
                }
                if let Some((_, l)) = res.leaks.iter().find(|(n, _)| n == b) {
                    assert!(l.is_empty(), "churn on {b} left behind: {l:?}");
                }
            }
            for i in 0..FIO_JOBS.len() {
                let v = values(&res, THROUGHPUT, "bandwidth", i as u64, RAW);
                assert_eq!(v.len(), cfg.fio_reps, "{RAW}: {v:?}");
                assert!(v.iter().all(|x| x.is_finite() && *x > 0.0), "{RAW}: {v:?}");
            }
            physics(&res, &cfg);
            usage(&res, &cfg);
            let mib64 = 64u64 << 20;
            // copy_up copies the whole file into the upper layer of ext4.
            let ext4 = res
                .find(FIRST_WRITE, "bytes written", mib64, "overlay-ext4")
                .unwrap();
            assert!(
                ext4.values
                    .as_ref()
                    .unwrap()
                    .iter()
                    .all(|&b| b >= mib64 as f64),
                "overlay on ext4 wrote less than the 64 MiB file: {:?}",
                ext4.values
            );
            // Block-level copy-on-write copies pool blocks, not the file.
            let thin = res
                .find(FIRST_WRITE, "bytes written", mib64, "thin")
                .unwrap();
            assert!(
                thin.values
                    .as_ref()
                    .unwrap()
                    .iter()
                    .all(|&b| b < mib64 as f64),
                "thin copied the whole 64 MiB file: {:?}",
                thin.values
            );
            assert!(!res.setup.is_empty());
        });
    });
}

/// The values of a figure that must exist and have succeeded.
fn values(res: &Results, w: &str, m: &str, p: u64, b: &str) -> Vec<f64> {
    let f = res
        .find(w, m, p, b)
        .unwrap_or_else(|| panic!("no figure for {w} / {m} / {p} on {b}"));
    f.values
        .clone()
        .unwrap_or_else(|e| panic!("{w} / {m} / {p} on {b} failed: {e}"))
}

/// What the new workloads' figures must show whatever the speed.
fn physics(res: &Results, cfg: &Config) {
    let size = cfg.sparse_size as f64;
    let all = *cfg.sparse_permille.iter().max().unwrap();
    let least = *cfg.sparse_permille.iter().min().unwrap();
    for b in BASELINES {
        // Writing every 4 KiB block of the file writes the whole file.
        let v = values(res, SPARSE, "bytes written", all, b);
        assert!(v.iter().all(|&x| x >= size), "sparse 100 % on {b}: {v:?}");
    }
    // copy_up on ext4 copies the whole file for any write.
    let v = values(res, SPARSE, "bytes written", least, "overlay-ext4");
    assert!(
        v.iter().all(|&x| x >= size),
        "sparse on overlay-ext4: {v:?}"
    );
    // thin copies pool blocks, not the file.
    let v = values(res, SPARSE, "bytes written", least, "thin");
    assert!(v.iter().all(|&x| x < size / 4.0), "sparse on thin: {v:?}");

    // The 4-byte writes: overlay on ext4 copies every file up.
    let files = (cfg.cd_layers * cfg.cd_files) as f64 * cfg.cd_file_size as f64;
    let layers = cfg.cd_layers as u64;
    let v = values(
        res,
        CONTAINERD,
        "write bytes written",
        layers,
        "overlay-ext4",
    );
    assert!(v.iter().all(|&x| x >= files), "containerd on ext4: {v:?}");
    let v = values(res, CONTAINERD, "write bytes written", layers, "thin");
    assert!(v.iter().all(|&x| x < files), "containerd on thin: {v:?}");
    for b in BASELINES {
        // The build wrote every file.
        let v = values(res, CONTAINERD, "build bytes written", layers, b);
        assert!(
            v.iter().all(|&x| x >= files),
            "containerd build on {b}: {v:?}"
        );
    }

    for &n in &cfg.density {
        for b in BASELINES {
            let idle = values(res, DENSITY, "idle, per container", n as u64, b);
            let full = values(
                res,
                DENSITY,
                "after writing 1 MiB each, per container",
                n as u64,
                b,
            );
            for (i, w) in idle.iter().zip(&full) {
                assert!(
                    w - i >= DENSITY_WRITE as f64,
                    "density {n} on {b}: {i} idle, {w} after writing 1 MiB each"
                );
            }
        }
    }

    let file = cfg.cache_file as f64;
    for &n in &cfg.readers {
        for b in BASELINES {
            let v = values(res, PAGE_CACHE, "page cache", n as u64, b);
            // At least one copy was read into the cache.
            assert!(
                v.iter().all(|&x| x >= 0.9 * file),
                "page cache on {b}: {v:?}"
            );
            if b != "thin" {
                // overlay reads the one lower file.
                assert!(
                    v.iter().all(|&x| x < n as f64 * file),
                    "page cache on {b}, {n} readers: {v:?}"
                );
            }
        }
    }
}

/// The usage workload (thin only): its figures exist and count what they
/// should; how fast is not asserted.
fn usage(res: &Results, cfg: &Config) {
    let n = cfg.usage_snapshots as u64;
    let v = |m| values(res, USAGE, m, n, "thin");
    for (m, len) in [
        ("one uncached dump", cfg.usage_dumps),
        ("locked operation", cfg.usage_locked),
        ("usage call", cfg.usage_snapshots),
        ("all usage calls", 1),
    ] {
        let x = v(m);
        assert_eq!(x.len(), len, "{USAGE} / {m}: {x:?}");
        assert!(
            x.iter().all(|t| t.is_finite() && *t > 0.0),
            "{USAGE} / {m}: {x:?}"
        );
    }
    assert_eq!(v("usage calls"), [n as f64], "one call per snapshot");
    // The first call finds nothing kept; no call takes more than one.
    let dumps = v("dumps taken by the calls");
    assert!(
        dumps.len() == 1 && dumps[0] >= 1.0 && dumps[0] <= n as f64,
        "dumps taken by {n} calls: {dumps:?}"
    );
    for b in &BASELINES[1..] {
        assert!(res.find(USAGE, "usage call", n, b).is_none(), "{b}");
    }
}

/// The peers workload in its quick form: thinlayer, containerd's overlayfs
/// and devmapper through one containerd. Every figure exists for every
/// snapshotter with one value per repetition, and the values are physically
/// sane; how fast is not asserted.
#[test]
fn quick_peers_produce_sane_figures() {
    fixture::run("bench-peers", |fx| {
        // thinlayer's root, and the root whose prefix names devmapper's
        // pool and thin devices: the fixture checks both for leaks.
        fx.with_another_root("peers/thinlayer", |_| {});
        fx.with_another_root("peers/devmapper", |_| {});
        let cfg = Config {
            only: Some(Workload::Peers),
            ..Config::quick()
        };
        let res = workloads::run(&fx.dir, &cfg).expect("run the quick peers workload");
        for f in &res.figures {
            println!(
                "peers: {} / {} / {} on {}: {:?}",
                f.workload, f.metric, f.param, f.baseline, f.values
            );
        }
        for st in &res.peer_steps {
            println!(
                "peers: steps of {} on {}: {:?}",
                st.workload, st.snapshotter, st.rows
            );
        }
        for b in PEERS {
            // One table of figures per parameter of each workload.
            for (_, w, metrics) in PEER_METRICS {
                for (param, n) in expected(&cfg, w, b) {
                    for &(m, unit) in metrics {
                        let f = res
                            .find(w, m, param, b)
                            .unwrap_or_else(|| panic!("no figure for {w} / {m} / {param} on {b}"));
                        assert_eq!(f.unit, unit, "{w} / {m} on {b}");
                        if let Err(e) = &f.values {
                            // Only space that did not come back may be
                            // missing, and only where nothing discards it.
                            assert!(
                                may_stay(w, m, b) && e.contains("never came back within"),
                                "{w} / {m} / {param} on {b} failed: {e}"
                            );
                            continue;
                        }
                        let v = values(&res, w, m, param, b);
                        assert_eq!(v.len(), n(m), "{w} / {m} / {param} on {b}: {v:?}");
                        // An idle container may cost nothing the store
                        // shows; the host's file may not grow if the store
                        // reuses blocks it already had.
                        let ok = |x: &f64| match (w, m) {
                            (IDLE_COST, _) => *x >= 0.0,
                            (SPACE_BACK, "host files' growth") => true,
                            _ => *x > 0.0,
                        };
                        assert!(
                            v.iter().all(|x| x.is_finite() && ok(x)),
                            "{w} / {m} / {param} on {b}: a value out of range: {v:?}"
                        );
                    }
                }
            }
            let v = |m: &str| values(&res, PREPARE_CYCLE, m, cfg.peer_cycles as u64, b);
            // Timed from the same clock readings.
            for (i, t) in v("total").iter().enumerate() {
                let parts = v("prepare")[i] + v("mount")[i] + v("unmount")[i];
                let collected = v("remove until collected")[i];
                assert!(
                    collected >= v("remove call")[i] && *t >= parts + 0.999 * collected,
                    "prepare cycle {i} on {b}: total {t}, steps {parts} + {collected}"
                );
            }
            let clients = cfg.peer_clients as u64;
            let v = |m: &str| values(&res, PARALLEL, m, clients, b);
            let (wall, cycles) = (
                v("wall time")[0],
                (cfg.peer_clients * cfg.peer_parallel_cycles) as f64,
            );
            assert!(
                (v("cycles per second")[0] * wall - cycles).abs() < 1e-6 * cycles,
                "parallel on {b}: {cycles} cycles in {wall} s at {:?} a second",
                v("cycles per second")
            );
            // Each client's cycles ran one after another within the run.
            assert!(
                v("cycle").iter().all(|&c| c <= wall),
                "parallel on {b}: a cycle longer than the run ({wall} s): {:?}",
                v("cycle")
            );
        }
        peer_physics(&res, &cfg);
        unpack_physics(&res, &cfg);
        space_physics(&res, &cfg);
        teardown_physics(&res, &cfg);
        serve_steps(&res, &cfg);
    });
}

/// How many values each metric of a figure has.
type Counts = Box<dyn Fn(&str) -> usize>;

/// The parameters of a peers workload's figures on snapshotter `b`, each
/// with the count of values of each metric.
fn expected(cfg: &Config, w: &str, b: &str) -> Vec<(u64, Counts)> {
    let reps = cfg.peer_reps;
    let live = live_counts(cfg, b);
    let top = *live.last().unwrap();
    let each = |n: usize| -> Counts { Box::new(move |_| n) };
    match w {
        PREPARE_CYCLE => vec![(cfg.peer_cycles as u64, each(cfg.peer_cycles))],
        PARALLEL => {
            let all = cfg.peer_clients * cfg.peer_parallel_cycles;
            vec![(
                cfg.peer_clients as u64,
                Box::new(move |m| if m == "cycle" { all } else { 1 }),
            )]
        }
        SHAPE_2988 => {
            let calls = cfg.peer_layers * reps;
            vec![(
                cfg.peer_layers as u64,
                Box::new(move |m| if m.ends_with(" call") { calls } else { reps }),
            )]
        }
        PEER_FIRST_WRITE => vec![(cfg.peer_write_size, each(reps))],
        IDLE_COST => vec![(cfg.peer_idle as u64, each(reps))],
        SPACE_BACK => vec![(cfg.peer_space_size, each(cfg.peer_space_reps))],
        TEARDOWN => {
            // The timed creates at a count above 0 are kept, and count
            // among the live ones of the next count.
            let containers = live
                .iter()
                .filter(|&&c| c > 0)
                .fold(0, |made, &c| made.max(c) + reps);
            vec![(
                top as u64,
                Box::new(move |m| {
                    if m == "unmount + remove call" {
                        containers
                    } else {
                        1
                    }
                }),
            )]
        }
        CREATE_COST => live.iter().map(|&c| (c as u64, each(reps))).collect(),
        // The root filesystem has more entries than the quick form takes.
        UNPACK => vec![(
            cfg.peer_unpack_entries.unwrap() as u64,
            each(cfg.peer_unpack_reps),
        )],
        other => panic!("a peers workload this test does not know: {other}"),
    }
}

/// The live counts of the teardown workload on `b`: devmapper's scaled to
/// its cap, if it has one.
fn live_counts(cfg: &Config, b: &str) -> Vec<usize> {
    let top = *cfg.peer_live.last().unwrap();
    match cfg.peer_live_devmapper {
        Some(d) if b == "devmapper" => cfg.peer_live.iter().map(|c| c * d / top).collect(),
        _ => cfg.peer_live.clone(),
    }
}

/// Whether figure `m` of `w` on `b` may be missing because freed space
/// never came back: the host's file, where nothing discards freed blocks
/// (overlayfs's ext4 is mounted without discard; containerd's devmapper
/// does not discard a removed device). thinlayer discards them.
fn may_stay(w: &str, m: &str, b: &str) -> bool {
    b != "thinlayer" && matches!(w, SPACE_BACK | TEARDOWN) && m.starts_with("host space back")
}

/// The teardown: the calls fit in the teardown's time.
fn teardown_physics(res: &Results, cfg: &Config) {
    for b in PEERS {
        let top = *live_counts(cfg, b).last().unwrap() as u64;
        let v = |m: &str| values(res, TEARDOWN, m, top, b);
        let calls: f64 = v("unmount + remove call").iter().sum();
        let all = v("teardown of all N")[0];
        assert!(
            calls <= all,
            "teardown on {b}: the unmount and Remove calls took {calls} s of the {all} s"
        );
        let per = v("teardown per container")[0];
        let n = v("unmount + remove call").len() as f64;
        assert!(
            (per * n - all).abs() < 1e-6 * all,
            "teardown on {b}: {per} s per container × {n} against {all} s"
        );
    }
}

/// Space back: what a container wrote is in its store until it is
/// removed, and in thinlayer's data file on the host, since thinlayer
/// discards what it frees.
fn space_physics(res: &Results, cfg: &Config) {
    let size = cfg.peer_space_size as f64;
    for b in PEERS {
        let taken = values(res, SPACE_BACK, "space taken", cfg.peer_space_size, b);
        assert!(
            taken.iter().all(|&x| x >= size),
            "space taken by {size} bytes written on {b}: {taken:?}"
        );
    }
    let grown = values(
        res,
        SPACE_BACK,
        "host files' growth",
        cfg.peer_space_size,
        "thinlayer",
    );
    assert!(
        grown.iter().all(|&x| x >= cfg.peer_space_size as f64),
        "thinlayer's data file grew by less than the {} bytes written: {grown:?}",
        cfg.peer_space_size
    );
}

/// What `thinlayer serve`'s metrics counted: every workload on thinlayer
/// has its calls and steps (none on the others); each Prepare of the
/// prepare cycles and of the parallel ones was counted once, as a call and
/// as an operation.
fn serve_steps(res: &Results, cfg: &Config) {
    for st in &res.peer_steps {
        assert_eq!(st.snapshotter, "thinlayer", "steps of {}", st.workload);
    }
    for (_, w, _) in PEER_METRICS.iter().filter(|(_, w, _)| *w != CREATE_COST) {
        let st = res
            .peer_steps
            .iter()
            .find(|s| s.workload == *w)
            .unwrap_or_else(|| panic!("no steps of {w} on thinlayer"));
        let rows = st
            .rows
            .as_ref()
            .unwrap_or_else(|e| panic!("steps of {w}: {e}"));
        assert!(rows.iter().any(|r| r.call), "no call counted in {w}");
        assert!(rows.iter().any(|r| !r.call), "no step counted in {w}");
        for r in rows {
            assert!(
                r.calls >= 1.0 && r.seconds >= 0.0 && r.seconds.is_finite(),
                "{w}: {r:?}"
            );
        }
    }
    // Each workload's image layer is prepared once more.
    for (w, prepares) in [
        (PREPARE_CYCLE, cfg.peer_cycles + 1),
        (PARALLEL, cfg.peer_clients * cfg.peer_parallel_cycles + 1),
    ] {
        let rows = res
            .peer_steps
            .iter()
            .find(|s| s.workload == w)
            .and_then(|s| s.rows.as_ref().ok())
            .unwrap();
        let count = |call: bool, step: &str| {
            rows.iter()
                .find(|r| r.call == call && r.op == "prepare" && r.step == step)
                .map(|r| r.calls)
        };
        assert_eq!(
            (count(true, ""), count(false, "total")),
            (Some(prepares as f64), Some(prepares as f64)),
            "Prepare calls and operations counted in {w}: {rows:?}"
        );
    }
}

/// The unpack: every snapshotter holds the whole layer after it, and wrote
/// and keeps at least its files' data.
fn unpack_physics(res: &Results, cfg: &Config) {
    let rootfs = std::env::var_os(ROOTFS_ENV).expect("the root filesystem's tar");
    let tar = fs::File::open(rootfs).expect("open the root filesystem's tar");
    let layer = peers::tar_entries(std::io::BufReader::new(tar), cfg.peer_unpack_entries)
        .expect("its entries");
    let n = layer.entries;
    assert_eq!(
        Some(n as usize),
        cfg.peer_unpack_entries,
        "the quick form's layer"
    );
    let data = layer.data as f64;
    assert!(data > 0.0, "no file data in the first {n} entries");
    for b in PEERS {
        let v = |m: &str| values(res, UNPACK, m, n, b);
        assert!(
            v("entries").iter().all(|&x| x == n as f64),
            "entries of the unpacked tree on {b}, the layer has {n}: {:?}",
            v("entries")
        );
        for m in ["bytes written", "space in use"] {
            assert!(
                v(m).iter().all(|&x| x >= data),
                "unpack {m} on {b}, the layer's files hold {data} bytes: {:?}",
                v(m)
            );
        }
        for (t, s) in v("unpack").iter().zip(v("unpack + sync")) {
            assert!(s >= *t, "unpack on {b}: {t} s, with the sync after {s} s");
        }
    }
}

/// Bytes the peers must have written whatever the speed.
fn peer_physics(res: &Results, cfg: &Config) {
    let layers = cfg.peer_layers as u64;
    let files = (cfg.peer_layers * cfg.peer_files) as f64 * cfg.peer_file_size as f64;
    let size = cfg.peer_write_size;
    let shape = |m: &str, b: &str| values(res, SHAPE_2988, m, layers, b);
    let first = |b: &str| values(res, PEER_FIRST_WRITE, "bytes written", size, b);
    for b in PEERS {
        // Every file was written and fsynced once.
        let v = shape("build bytes written", b);
        assert!(v.iter().all(|&x| x >= files), "#2988 build on {b}: {v:?}");
    }
    // overlayfs copies each file up whole for a 4-byte write; the thin
    // pools copy a block.
    let v = shape("write bytes written", "overlayfs");
    assert!(
        v.iter().all(|&x| x >= files),
        "#2988 writes on overlayfs: {v:?}"
    );
    for b in ["thinlayer", "devmapper"] {
        let v = shape("write bytes written", b);
        assert!(v.iter().all(|&x| x < files), "#2988 writes on {b}: {v:?}");
        let v = first(b);
        assert!(
            v.iter().all(|&x| x < size as f64),
            "first write on {b}: {v:?}"
        );
    }
    let v = first("overlayfs");
    assert!(
        v.iter().all(|&x| x >= size as f64),
        "first write on overlayfs copies the file up: {v:?}"
    );
}

/// Both drivers commit a container into an image its children see.
#[test]
fn both_drivers_commit() {
    fixture::run("bench-commit", |fx| {
        fx.with_another_root("thin", |_| {
            let drivers: Vec<Box<dyn Cow>> = vec![
                Box::new(Thin::new(&fx.dir).expect("thin pool")),
                Box::new(Overlay::new(&fx.dir, Under::Ext4, 1 << 30).expect("overlay on ext4")),
                Box::new(
                    Overlay::new(&fx.dir, Under::XfsReflink, 1 << 30).expect("overlay on xfs"),
                ),
            ];
            for mut d in drivers {
                let name = d.name().to_string();
                let run = (|| {
                    d.build_image("base", 2, &mut |i, dir| {
                        fs::write(dir.join(format!("l{i}")), [b'0' + i as u8]).map_err(Into::into)
                    })?;
                    d.create("c1", "base")?;
                    let m = d.mount("c1")?;
                    anyhow::ensure!(fs::read(m.join("l0"))? == b"0");
                    fs::write(m.join("new"), b"committed")?;
                    fs::remove_file(m.join("l1"))?;
                    d.umount("c1")?;
                    d.commit("c1", "next")?;
                    d.create("c2", "next")?;
                    let m = d.mount("c2")?;
                    anyhow::ensure!(fs::read(m.join("new"))? == b"committed");
                    anyhow::ensure!(!m.join("l1").exists(), "a removed file came back");
                    d.umount("c2")?;
                    d.remove("c2")?;
                    d.remove_image("next")?;
                    d.remove_image("base")
                })();
                let down = d.destroy();
                run.unwrap_or_else(|e| panic!("{name}: {e:#}"));
                down.unwrap_or_else(|e| panic!("{name}: tear down: {e:#}"));
            }
        });
    });
}
