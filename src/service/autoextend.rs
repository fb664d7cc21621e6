//! The watcher of `thinlayer serve` that grows the pool before it fills
//! (see [`crate::pool::autoextend`] for the policy).
//!
//! A thread looks at the pool ([`Driver::autoextend`]), then waits for a
//! device-mapper event or [`INTERVAL`], and looks again. With a policy on,
//! the pool table's low water mark sits at the threshold, so the kernel's
//! event wakes the watcher as soon as the data space crosses it; the
//! interval is the fallback (metadata, which has no event of its own at
//! the threshold, and a pool whose table predates the policy). Each growth
//! is logged (info) and counted in the metrics; a growth a limit cut short
//! or prevented is logged (warn) when that changes, not at every look.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::Driver;
use crate::driver::AutoextendWatch;
use crate::metrics::Metrics;
use crate::pool::autoextend::{Plan, Step};

/// The longest pause between two looks.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The running watcher; dropping it stops it (within one interval).
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching `driver`'s pool, looking at least every `interval`.
    pub fn start(driver: Arc<Driver>, metrics: Arc<Metrics>, interval: Duration) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("autoextend".into())
            .spawn(move || watch(&driver, &metrics, interval, &flag))
            .expect("start the autoextend thread");
        Watcher {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(driver: &Driver, metrics: &Metrics, interval: Duration, stop: &AtomicBool) {
    let mut seen = AutoextendWatch::default();
    // What was last said of a limit or a failure, so that a state that
    // lasts is logged once.
    let mut said = String::new();
    while !stop.load(Ordering::Relaxed) {
        match driver.autoextend(&mut seen) {
            Ok(Some(plan)) => report(&plan, metrics, &mut said),
            Ok(None) => said.clear(),
            Err(e) => {
                metrics.autoextend_failed();
                let now = format!("error: {e}");
                if now != said {
                    tracing::warn!(error = %e, "autoextend: cannot look at the pool");
                    said = now;
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Err(e) = driver.wait_pool_event(interval) {
            tracing::debug!(error = %e, "autoextend: cannot wait for events; sleeping");
            std::thread::sleep(interval);
        }
    }
}

/// Logs and counts what a look did.
fn report(plan: &Plan, metrics: &Metrics, said: &mut String) {
    let mut limits = Vec::new();
    for (space, step) in [("metadata", plan.metadata), ("data", plan.data)] {
        match step {
            Step::Keep => {}
            Step::Grow { from, to, limited } => {
                metrics.grown(space, to - from);
                tracing::info!(
                    space,
                    from,
                    to,
                    limited = limited.map(|l| l.name()),
                    "autoextend: grew the pool's {space} from {from} to {to} bytes"
                );
                if let Some(l) = limited {
                    metrics.limited(space, l.name());
                }
            }
            Step::Blocked { limit } => limits.push((space, limit)),
        }
    }
    let now = format!("{limits:?}");
    if now != *said {
        for &(space, limit) in &limits {
            metrics.limited(space, limit.name());
            tracing::warn!(
                space,
                limit = limit.name(),
                "autoextend: the pool's {space} is over the threshold and cannot grow: {}",
                match limit {
                    crate::pool::autoextend::Limit::Max => "it is at its maximum size",
                    crate::pool::autoextend::Limit::HostSpace =>
                        "the host filesystem has no room beyond its reserve",
                }
            );
        }
        *said = now;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::kernel::{Kernel, Sim};
    use crate::metrics::Samples;
    use crate::pool::autoextend::FsSpace;
    use crate::pool::{Autoextend, PoolOptions, SourceOptions};
    use crate::testutil::TempDir;
    use crate::units::Bytes;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    /// A 64 MiB pool (1024 blocks) on the simulated kernel, with a 70/50
    /// policy up to 128 MiB, and a container whose device is live.
    fn pool(host: FsSpace) -> (TempDir, Sim, Arc<Driver>, String) {
        let dir = TempDir::new("autoextend");
        let sim = Sim::new();
        sim.set_fs_space(Some(host));
        let opts = PoolOptions {
            source: SourceOptions::LoopFiles {
                data_size: Bytes(64 * MIB),
                metadata_size: Bytes(16 * MIB),
            },
            base_size: Bytes(64 * MIB),
            ..PoolOptions::default()
        };
        let d = Driver::init(dir.path(), Arc::new(sim.clone()), &opts).unwrap();
        d.set_autoextend(|a| {
            a.threshold_percent = 70;
            a.percent = 50;
            a.max = Some(Bytes(128 * MIB));
        })
        .unwrap();
        d.create_container("c", None).unwrap();
        d.mount("c").unwrap();
        let rec = d.records().unwrap();
        let dev = format!("{}-{}", rec.pool.prefix, rec.tree.layers["c"].thin_id);
        (dir, sim, Arc::new(d), dev)
    }

    fn data_total(d: &Driver) -> u64 {
        d.status().unwrap().data_total.0
    }

    /// Waits (10 s at most) until the pool's data space is `bytes`.
    fn grown_to(d: &Driver, bytes: u64) {
        let start = Instant::now();
        while data_total(d) != bytes {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the pool never grew to {bytes}: it is {}",
                data_total(d)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The low water mark of the pool's live table, in blocks.
    fn low_water(sim: &Sim, d: &Driver) -> String {
        let name = d.status().unwrap().name;
        let table = sim.dm_table(&name).unwrap();
        table[0].params.split(' ').nth(3).unwrap().to_string()
    }

    const ROOMY: FsSpace = FsSpace {
        free: 100 * GIB,
        size: 200 * GIB,
    };

    #[test]
    fn the_watcher_grows_a_pool_over_its_threshold_up_to_its_maximum() {
        let (_dir, sim, d, dev) = pool(ROOMY);
        assert_eq!(low_water(&sim, &d), "307", "30% of 1024 blocks");
        let metrics = Arc::new(Metrics::new());
        let watcher = Watcher::start(d.clone(), metrics.clone(), Duration::from_millis(20));
        // 800 of 1024 blocks: 78%, over 70: one step of 50%.
        sim.write(&dev, 0, 800).unwrap();
        grown_to(&d, 96 * MIB);
        assert_eq!(low_water(&sim, &d), "460", "the mark follows the size");
        // 1100 of 1536: 72%; 50% more would be 144 MiB, past the maximum.
        sim.write(&dev, 800, 300).unwrap();
        grown_to(&d, 128 * MIB);
        // 1500 of 2048: 73%, and the pool is at its maximum.
        sim.write(&dev, 1100, 400).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        drop(watcher);
        assert_eq!(data_total(&d), 128 * MIB, "never past the maximum");
        let m = Samples::parse(&metrics.scrape(&d));
        assert_eq!(
            m.value(r#"thinlayer_autoextend_events_total{space="data"}"#),
            2.0
        );
        assert_eq!(
            m.value(r#"thinlayer_autoextend_grown_bytes_total{space="data"}"#),
            (64 * MIB) as f64
        );
        assert_eq!(
            m.value(r#"thinlayer_autoextend_limited_total{space="data",limit="max"}"#),
            2.0,
            "the step cut short, then the pool at its maximum (said once)"
        );
        assert_eq!(m.value("thinlayer_autoextend_threshold_percent"), 70.0);
        assert_eq!(
            m.value("thinlayer_autoextend_max_bytes"),
            (128 * MIB) as f64
        );
        assert_eq!(
            m.get(r#"thinlayer_autoextend_events_total{space="metadata"}"#),
            None
        );
    }

    #[test]
    fn the_watcher_leaves_the_host_its_reserve() {
        // A 10 GiB filesystem keeps 1 GiB. The simulated pool's files hold
        // nothing on the host, so their 64 + 16 MiB could still be taken:
        // 16 MiB of room is left for growth.
        let host = FsSpace {
            free: GIB + 96 * MIB,
            size: 10 * GIB,
        };
        let (_dir, sim, d, dev) = pool(host);
        let metrics = Arc::new(Metrics::new());
        let watcher = Watcher::start(d.clone(), metrics.clone(), Duration::from_millis(20));
        sim.write(&dev, 0, 800).unwrap();
        grown_to(&d, 80 * MIB);
        // 1000 of 1280 blocks: over the threshold again, and no room.
        sim.write(&dev, 800, 200).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        drop(watcher);
        assert_eq!(
            data_total(&d),
            80 * MIB,
            "no further: the reserve is reached"
        );
        let m = Samples::parse(&metrics.scrape(&d));
        assert_eq!(
            m.value(r#"thinlayer_autoextend_limited_total{space="data",limit="host_space"}"#),
            2.0,
            "the step cut short, then no room at all"
        );
    }

    #[test]
    fn a_pool_off_or_not_on_loop_files_is_left_alone() {
        let (_dir, sim, d, dev) = pool(ROOMY);
        d.set_autoextend(|a| a.threshold_percent = 100).unwrap();
        assert_eq!(low_water(&sim, &d), "32", "the default mark again");
        sim.write(&dev, 0, 1000).unwrap();
        assert_eq!(d.autoextend(&mut AutoextendWatch::default()).unwrap(), None);
        assert_eq!(data_total(&d), 64 * MIB);
        let devices = PoolOptions {
            source: SourceOptions::Devices {
                data: "/dev/vdb".into(),
                metadata: "/dev/vdc".into(),
            },
            ..PoolOptions::default()
        };
        let on = Autoextend {
            threshold_percent: 80,
            ..Autoextend::default()
        };
        let e = devices.validate_autoextend(&on).unwrap_err();
        assert!(matches!(e, crate::Error::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("loop files"), "{e}");
    }
}
