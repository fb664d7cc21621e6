//! The end-to-end scenario: a three-layer image built by commits, 20
//! containers from it each writing a different amount, sizes as `ps -s`
//! reports them, then everything removed and the pool back to its base.

use std::path::Path;

use std::sync::Arc;

use thinlayer::driver::scenarios::{self, World};
use thinlayer::kernel::Linux;
use thinlayer::pool::{PoolOptions, SourceOptions};
use thinlayer::units::Bytes;

use crate::fixture::{self, BLOCK, FS_OVERHEAD, Fixture, write_file};

const KIB: u64 = 1024;

#[test]
fn twenty_containers_from_a_three_layer_image() {
    fixture::run("scenario", |fx| {
        fx.init_pool("8G", "64M", None, &[]);
        let base_used = fx.data_used();

        // Three layers by commits: scratch → app:1 → app:2 → app:3.
        let mut parent = "scratch".to_string();
        for layer in 1..=3 {
            let name = format!("build{layer}");
            fx.ok(&["container", "create", &parent, &name]);
            let m = fx.ok(&["container", "mount", &name]);
            write_file(
                &Path::new(m.trim()).join(format!("layer{layer}.bin")),
                3 << 20,
                layer as u8,
            );
            fx.ok(&["container", "umount", &name]);
            parent = format!("app:{layer}");
            fx.ok(&["container", "commit", &name, &parent]);
        }
        let images = fx.json(&["image", "ls"]);
        let app3 = images
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "app:3")
            .unwrap();
        assert_eq!(app3["layers"], 3);

        for i in 0..20u64 {
            let name = format!("c{i:02}");
            fx.ok(&["container", "create", "app:3", &name]);
            let m = fx.ok(&["container", "mount", &name]);
            let m = Path::new(m.trim());
            for layer in 1..=3 {
                assert_eq!(
                    std::fs::metadata(m.join(format!("layer{layer}.bin")))
                        .unwrap()
                        .len(),
                    3 << 20
                );
            }
            write_file(&m.join("own.bin"), ((i + 1) * 256 * KIB) as usize, i as u8);
            fx.ok(&["container", "umount", &name]);
        }

        let ps = fx.json(&["ps", "-s"]);
        let ps = ps.as_array().unwrap();
        assert_eq!(ps.len(), 20);
        let mut image_virtual = None;
        for c in ps {
            let i: u64 = c["name"].as_str().unwrap()[1..].parse().unwrap();
            let written = (i + 1) * 256 * KIB;
            let size = c["size"].as_u64().unwrap();
            let virt = c["virtual_size"].as_u64().unwrap();
            assert!(
                size >= written && size <= written + BLOCK + FS_OVERHEAD,
                "{}: wrote {written}, size {size}",
                c["name"]
            );
            assert_eq!(c["image"], "app:3");
            // What it sees: at least the image's 9 MiB and its own data.
            assert!(
                virt >= 9 * 1024 * KIB + written,
                "{}: virtual {virt}",
                c["name"]
            );
            assert!(
                virt <= 9 * 1024 * KIB + size + FS_OVERHEAD * 3 + base_used,
                "{}: virtual {virt}",
                c["name"]
            );
            // Same image for all: virtual minus size is the image's share, the same ± fs overhead.
            println!(
                "{}: wrote {written}, size {size} (+{} fs), virtual {virt}",
                c["name"],
                size - written
            );
            let shared = virt - size;
            let first = *image_virtual.get_or_insert(shared);
            assert!(
                shared.abs_diff(first) <= FS_OVERHEAD,
                "{}: image share {shared} vs {first}",
                c["name"]
            );
        }
        let table = fx.ok(&["ps", "-s"]);
        println!("{table}");
        assert!(table.contains("VIRTUAL SIZE"), "{table}");

        for i in 0..20 {
            fx.ok(&["container", "rm", &format!("c{i:02}")]);
        }
        for layer in (1..=3).rev() {
            fx.ok(&["image", "rm", &format!("app:{layer}")]);
        }
        assert_eq!(fx.json(&["tree"])["layers"].as_object().unwrap().len(), 0);
        let used = fx.data_used();
        assert_eq!(
            used, base_used,
            "pool data after removing everything vs the base alone"
        );
    });
}

fn linux_pool(fx: &Fixture) -> (World, thinlayer::Driver) {
    let opts = PoolOptions {
        source: SourceOptions::LoopFiles {
            data_size: Bytes(2 << 30),
            metadata_size: Bytes(64 << 20),
        },
        base_size: Bytes(256 << 20),
        ..PoolOptions::default()
    };
    World::new(Arc::new(Linux::new()), &fx.root, &opts)
}

/// The host's crash scenario (`driver::scenarios`), on the real kernel:
/// every driver operation stopped at each of its failpoints, then the next
/// handle finds it complete or absent and the pool as the tree says.
/// (Failpoints exist in builds with the `failpoints` feature, as the test
/// command builds the device tests.)
#[cfg(feature = "failpoints")]
#[test]
fn every_operation_stopped_at_each_failpoint_recovers_as_on_the_simulator() {
    fixture::run("scenario-crash", |fx| {
        let crashed = scenarios::crash_at_every_step(&mut || linux_pool(fx));
        assert_eq!(crashed, 28, "crash points reached");
    });
}

/// The host's thread scenario, on the real kernel.
#[test]
fn threads_share_one_handle_as_on_the_simulator() {
    fixture::run("scenario-threads", |fx| {
        let (w, d) = linux_pool(fx);
        scenarios::threads_share_one_handle(&w, d);
        w.open().destroy().unwrap();
    });
}
