//! Automatic growth under `thinlayer serve`: a 256 MiB pool with a 70/50
//! policy up to 1 GiB, a container whose writer writes and fsyncs more
//! than the pool's first size (it must not fail: the pool grows first),
//! then more than the maximum (it must fail, ENOSPC from the pool reported
//! by ext4 as EIO, the pool at its maximum and out of data space). The growth is in serve's log and in its
//! metrics. A pool on given block devices refuses a policy.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use crate::fixture::{self, Fixture};
use crate::served::Served;

const MIB: u64 = 1 << 20;

/// Writes `len` bytes to a new file at `path` in 1 MiB writes, with an
/// fsync every 8 MiB and at the end, so that the pool fills steadily, as
/// a database's writer would. Returns the first error and how many bytes
/// had been written and synced before it.
fn write_synced(path: &Path, len: u64) -> Result<(), (std::io::Error, u64)> {
    let mut f = fs::File::create(path).map_err(|e| (e, 0))?;
    let chunk: Vec<u8> = (0..MIB as usize)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(1))
        .collect();
    let mut synced = 0;
    for n in 1..=len / MIB {
        f.write_all(&chunk).map_err(|e| (e, synced))?;
        if n % 8 == 0 || n == len / MIB {
            f.sync_data().map_err(|e| (e, synced))?;
            synced = n * MIB;
        }
    }
    Ok(())
}

fn data_total(fx: &Fixture) -> u64 {
    fx.json(&["pool", "status"])["data_total"].as_u64().unwrap()
}

#[test]
fn serve_grows_the_pool_before_a_writer_fills_it_and_stops_at_the_maximum() {
    fixture::run("autoextend", |fx| {
        fx.init_pool(
            "256M",
            "64M",
            Some("2G"),
            &[
                "--autoextend-threshold",
                "70",
                "--autoextend-percent",
                "50",
                "--autoextend-max",
                "1G",
            ],
        );
        let policy = fx.json(&["pool", "set"]);
        assert_eq!(policy["threshold_percent"], 70);
        assert_eq!(policy["percent"], 50);
        assert_eq!(policy["max"], 1u64 << 30);
        let st = fx.json(&["pool", "status"]);
        assert_eq!(
            st["autoextend"], policy,
            "pool status shows the policy: {st}"
        );
        let text = fx.ok(&["pool", "status"]);
        assert!(
            text.contains(
                "autoextend:      at 70% used, grow by 50% of the size, data up to 1.0 GiB"
            ),
            "{text}"
        );
        assert_eq!(data_total(fx), 256 * MIB);
        let served = Served::start(fx);
        fx.ok(&["container", "create", "scratch", "w"]);
        let dir = fx.ok(&["container", "mount", "w"]).trim().to_string();

        // 400 MiB through a 256 MiB pool: the watcher must stay ahead.
        write_synced(&Path::new(&dir).join("first"), 400 * MIB).unwrap_or_else(|(e, synced)| {
            panic!(
                "the writer failed after {} MiB synced: {e}; pool: {}; serve's log ends:\n{}",
                synced / MIB,
                fx.ok(&["pool", "status"]),
                served.daemon.log_tail(30)
            )
        });
        let grown = data_total(fx);
        eprintln!("after 400 MiB: data space {} MiB", grown / MIB);
        assert!(
            grown > 256 * MIB && grown <= 1 << 30,
            "grown within the maximum: {grown}"
        );
        let log = fs::read_to_string(&served.log).unwrap();
        assert!(
            log.contains("autoextend: grew the pool's data from 268435456 to 402653184 bytes"),
            "the first growth (256 to 384 MiB) is in serve's log:\n{log}"
        );
        let m = served.scrape();
        let events = m.value(r#"thinlayer_autoextend_events_total{space="data"}"#);
        assert!(events >= 2.0, "{events} growths for 400 MiB");
        assert_eq!(
            m.value(r#"thinlayer_autoextend_grown_bytes_total{space="data"}"#),
            (grown - 256 * MIB) as f64
        );
        assert_eq!(m.value("thinlayer_pool_data_total_bytes"), grown as f64);

        // 900 MiB more cannot fit in 1 GiB: growth stops at the maximum and
        // the writer fails, as the pool errors writes when it is full.
        let (e, synced) = write_synced(&Path::new(&dir).join("second"), 900 * MIB)
            .expect_err("a writer past the maximum fails");
        eprintln!(
            "past the maximum: {e} after {} MiB more synced",
            synced / MIB
        );
        // The pool fails the writes with ENOSPC (error_if_no_space); ext4's
        // writeback reports that to fsync as EIO on Debian 12's 6.1 kernel.
        // Which it is matters less than why: the pool is full, below.
        assert!(
            [Some(libc::ENOSPC), Some(libc::EIO)].contains(&e.raw_os_error()),
            "the writer fails for want of space: {e}"
        );
        let st = fx.json(&["pool", "status"]);
        assert_eq!(
            st["data_total"],
            1u64 << 30,
            "grown to the maximum, not past it"
        );
        assert_eq!(st["mode"], "out_of_data_space");
        let m = served.scrape();
        assert_eq!(
            m.value(r#"thinlayer_pool_mode{mode="out_of_data_space"}"#),
            1.0
        );
        assert!(m.value(r#"thinlayer_autoextend_limited_total{space="data",limit="max"}"#) >= 1.0);
        let log = fs::read_to_string(&served.log).unwrap();
        assert!(
            log.contains("it is at its maximum size"),
            "serve says the pool is at its maximum:\n{log}"
        );

        // By hand, past the policy's maximum: the pool is writable again,
        // and the container can be taken down.
        fx.ok(&["pool", "grow", "--data-size", "2G"]);
        assert_eq!(fx.json(&["pool", "status"])["mode"], "read_write");
        fx.ok(&["container", "umount", "w"]);
        fx.ok(&["container", "rm", "w"]);
        let stopped = served.daemon.stop();
        assert!(stopped.success(), "serve stopped with {stopped}");
    });
}

#[test]
fn a_pool_on_block_devices_refuses_a_policy() {
    fixture::run("autoextend-devices", |fx| {
        // Refused before anything is opened: the paths need not exist.
        let missing = fx.dir.join("no-such-device");
        let missing = missing.to_str().unwrap();
        let err = fx.fails(
            &[
                "pool",
                "init",
                "--data-device",
                missing,
                "--metadata-device",
                missing,
                "--autoextend-threshold",
                "80",
            ],
            2,
        );
        assert!(
            err.contains("only pools on loop files grow automatically"),
            "{err}"
        );
        assert!(!fx.root.join("state.json").exists(), "nothing was made");
        let err = fx.fails(
            &[
                "pool",
                "init",
                "--data-size",
                "256M",
                "--autoextend-threshold",
                "40",
            ],
            2,
        );
        assert!(err.contains("50 to 100"), "{err}");
    });
}
