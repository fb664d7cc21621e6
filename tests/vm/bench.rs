//! The copy-on-write benchmarks of `benches/cow` in their quick mode: every
//! workload must produce figures, the figures must be sane, and nothing may
//! be left behind. Speed targets are the benchmarks' business
//! (`vm-tests/bench`), never asserted here.

#[path = "../../benches/cow/backend.rs"]
#[allow(dead_code)]
mod backend;
#[path = "../../benches/cow/measure.rs"]
#[allow(dead_code)]
mod measure;
#[path = "../../benches/cow/overlay.rs"]
#[allow(dead_code)]
mod overlay;
#[path = "../../benches/cow/workloads.rs"]
#[allow(dead_code)]
mod workloads;

use std::fs;

use crate::fixture;
use backend::{Cow, Thin};
use overlay::{Overlay, Under};
use workloads::{Config, DEPTH, FIRST_WRITE, LATENCY, Unit};

const BASELINES: [&str; 3] = ["thin", "overlay-ext4", "overlay-xfs-reflink"];

#[test]
fn quick_benchmarks_produce_sane_figures() {
    fixture::run("bench", |fx| {
        // The thin pool's root is `fx.dir/thin`: registered so that the
        // fixture checks its devices for leaks too.
        fx.with_another_root("thin", |_| {
            let cfg = Config::quick();
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
            for b in BASELINES {
                for &(w, m, p, n) in &expected {
                    let f = res
                        .find(w, m, p, b)
                        .unwrap_or_else(|| panic!("no figure for {w} / {m} / {p} on {b}"));
                    let v = f
                        .values
                        .as_ref()
                        .unwrap_or_else(|e| panic!("{w} / {m} / {p} on {b} failed: {e}"));
                    assert_eq!(v.len(), n, "{w} / {m} / {p} on {b}: {v:?}");
                    assert!(
                        v.iter().all(|x| x.is_finite() && *x > 0.0),
                        "{w} / {m} / {p} on {b}: a value is not positive: {v:?}"
                    );
                    if f.unit == Unit::Seconds {
                        assert!(v.iter().all(|x| *x < 60.0), "{w} / {m} / {p} on {b}: {v:?}");
                    }
                }
            }
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
