//! The driver against the simulated kernel: the tree, the transaction
//! protocol and the reconciler, including a crash at every failpoint.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::kernel::Sim;
use crate::pool::SourceOptions;
use crate::testutil::TempDir;
use crate::units::Bytes;

/// A small pool on loop files, 1 GiB layers: the host tests' default.
pub(super) fn opts() -> PoolOptions {
    PoolOptions {
        source: SourceOptions::LoopFiles {
            data_size: Bytes(1 << 30),
            metadata_size: Bytes(16 << 20),
        },
        base_size: Bytes(1 << 30),
        ..PoolOptions::default()
    }
}

struct World {
    dir: TempDir,
    sim: Sim,
    on: scenarios::World,
}

impl World {
    fn new() -> (World, Driver) {
        let dir = TempDir::new("driver");
        let sim = Sim::new();
        let (on, d) = scenarios::World::new(Arc::new(sim.clone()), dir.path(), &opts());
        (World { dir, sim, on }, d)
    }

    fn open(&self) -> Driver {
        self.on.open()
    }

    fn metadata_file(&self) -> std::path::PathBuf {
        self.dir.path().join("metadata")
    }

    fn check_invariants(&self) {
        self.on.check_invariants()
    }

    /// Mounts the live device of thin id `id` as a client would, on a
    /// directory of its own; returns that directory.
    fn client_mount(&self, d: &Driver, id: ThinId) -> std::path::PathBuf {
        let prefix = d.records().unwrap().pool.prefix;
        let node = self
            .sim
            .dm_info(&crate::thin::dm_name(&prefix, id))
            .unwrap()
            .expect("the device is live")
            .devnum
            .dm_node();
        let client = self.dir.path().join(format!("client-{id}"));
        std::fs::create_dir(&client).unwrap();
        self.sim
            .mount(&MountRequest {
                source: &node,
                target: &client,
                fstype: "ext4",
                read_only: false,
                nodev: false,
                data: "",
            })
            .unwrap();
        client
    }
}

fn image(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap()
}

#[test]
fn init_makes_a_pool_and_a_base_with_a_filesystem() {
    let (w, d) = World::new();
    let rec = d.records().unwrap();
    assert_eq!(rec.tree.base, Some(ThinId::new(1).unwrap()));
    assert!(rec.base_ready);
    // The base's creation left the pool's transaction id alone.
    assert_eq!(rec.transaction, 0);
    assert!(w.sim.tool_runs().iter().any(|r| r.starts_with("mkfs.ext4")));
    assert!(matches!(
        Driver::init(w.dir.path(), Arc::new(w.sim.clone()), &opts()),
        Err(Error::AlreadyInitialized { .. })
    ));
    w.check_invariants();
}

#[test]
fn containers_images_and_the_rules_between_them() {
    let (w, d) = World::new();
    d.create_container("c1", None).unwrap();
    assert!(matches!(
        d.create_container("c1", None),
        Err(Error::Exists { .. })
    ));
    assert!(matches!(
        d.create_container("bad name", None),
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        d.create_container("c2", Some(&image("nope"))),
        Err(Error::NotFound { .. })
    ));

    let path = d.mount("c1").unwrap();
    assert_eq!(d.mount("c1").unwrap(), path, "mounts are counted");
    assert!(matches!(
        d.commit("c1", &image("app:1")),
        Err(Error::Busy { .. })
    ));
    assert!(matches!(d.remove("c1", false), Err(Error::Busy { .. })));
    d.umount("c1").unwrap();
    assert_eq!(w.sim.mounts().unwrap().len(), 1, "still mounted once");
    d.umount("c1").unwrap();
    assert!(w.sim.mounts().unwrap().is_empty());
    assert!(d.umount("c1").is_err(), "not mounted");

    let layer = d.commit("c1", &image("app:1")).unwrap();
    assert_eq!(layer.kind, Kind::Committed);
    d.create_container("c2", Some(&image("app:1"))).unwrap();
    assert!(matches!(
        d.remove(&layer.key, false),
        Err(Error::HasChildren { .. })
    ));
    assert!(matches!(
        d.remove_image(&image("app:1")),
        Err(Error::Busy { .. })
    ));
    d.remove("c2", false).unwrap();
    d.remove_image(&image("app:1")).unwrap();
    assert!(d.tree().unwrap().layers.is_empty());
    w.check_invariants();
}

/// Image `app`, 20 blocks written from block 10 on the base, and
/// container `c` of it, mounted; returns the container's device name.
fn mounted_container_of_an_image(w: &World, d: &Driver) -> String {
    let prefix = d.records().unwrap().pool.prefix;
    d.create_container("img", None).unwrap();
    d.mount("img").unwrap();
    let id = d.tree().unwrap().layers["img"].thin_id;
    w.sim.write(&format!("{prefix}-{id}"), 10, 20).unwrap();
    d.umount("img").unwrap();
    d.commit("img", &image("app")).unwrap();
    d.create_container("c", Some(&image("app"))).unwrap();
    d.mount("c").unwrap();
    format!("{prefix}-{}", d.tree().unwrap().layers["c"].thin_id)
}

#[test]
fn sizes_count_what_each_layer_wrote() {
    let (w, d) = World::new();
    let dev = mounted_container_of_an_image(&w, &d);
    // Rewrites 5 image blocks and adds 3 new ones.
    w.sim.write(&dev, 10, 5).unwrap();
    w.sim.write(&dev, 100, 3).unwrap();
    let list = d.containers(true).unwrap();
    let c = list.iter().find(|c| c.name == "c").unwrap();
    let size = c.size.as_ref().unwrap();
    let block = 65536;
    assert_eq!(size.size, Bytes(8 * block));
    // The base's filesystem (2 blocks) + the image's 20 + 3 new.
    assert_eq!(size.virtual_size, Bytes(25 * block));
    let all = d.sizes().unwrap();
    let img_key = d.tree().unwrap().images["app:latest"].top.clone();
    assert_eq!(all[&img_key].size, Bytes(20 * block));
}

#[test]
fn the_last_unmount_trims_and_kept_sizes_see_the_trim() {
    let (w, d) = World::new();
    let block = 65536;
    let dev = mounted_container_of_an_image(&w, &d);
    w.sim.write(&dev, 100, 4).unwrap();
    // Another handle (the service's, say) keeps the container's figures.
    let reader = w.open();
    let was = reader.layer_size("c").unwrap();
    assert_eq!(was.virtual_size, Bytes(26 * block));
    let used = |d: &Driver| d.status().unwrap().data_used;
    let pool_was = used(&d);

    // The container deletes 5 blocks of an image file: still the image's,
    // so the pool's counters cannot tell the trim happened.
    w.sim.free(&dev, 10, 5);
    d.umount("c").unwrap();
    assert_eq!(used(&d), pool_was, "shared blocks stay in the pool");
    let now = reader.layer_size("c").unwrap();
    assert_eq!(
        now.virtual_size,
        Bytes(21 * block),
        "kept figures from before the trim"
    );
    assert_eq!(now, d.sizes().unwrap()["c"]);

    // Blocks of its own go back to the pool at the unmount, not before.
    d.mount("c").unwrap();
    w.sim.free(&dev, 100, 4);
    assert_eq!(used(&d), pool_was);
    d.umount("c").unwrap();
    assert_eq!(used(&d), Bytes(pool_was.0 - 4 * block));
    assert_eq!(reader.layer_size("c").unwrap().size, Bytes(0));
    // A removal unmounts without a trim: it discards the whole device.
    d.mount("c").unwrap();
    let trims = d.records().unwrap().trims;
    d.remove("c", true).unwrap();
    assert_eq!(d.records().unwrap().trims, trims);
}

#[test]
fn the_free_space_guard_refuses_new_layers() {
    let (w, d) = World::new();
    let prefix = d.records().unwrap().pool.prefix;
    d.create_container("big", None).unwrap();
    d.mount("big").unwrap();
    let id = d.tree().unwrap().layers["big"].thin_id;
    // 1 GiB pool = 16384 blocks; fill to 95 %.
    w.sim.write(&format!("{prefix}-{id}"), 0, 15_500).unwrap();
    let err = d.create_container("more", None).unwrap_err();
    assert!(matches!(err, Error::NoSpace { what: "data", .. }), "{err}");
    d.umount("big").unwrap();
    d.remove("big", false).unwrap();
    d.create_container("more", None).unwrap();
}

#[test]
fn a_failed_snapshot_resumes_the_origin_and_leaves_nothing() {
    let (w, d) = World::new();
    d.create_container("c", None).unwrap();
    d.mount("c").unwrap();
    d.umount("c").unwrap();
    d.commit("c", &image("a")).unwrap();
    // Keep the image layer's device active, as a view mount would.
    let top = d.tree().unwrap().images["a:latest"].top.clone();
    d.activate_layer(&top).unwrap();
    w.sim.fail_once("message:create_snap");
    assert!(d.create_container("x", Some(&image("a"))).is_err());
    let prefix = d.records().unwrap().pool.prefix;
    let id = d.tree().unwrap().layers[&top].thin_id;
    let info = w.sim.dm_info(&format!("{prefix}-{id}")).unwrap();
    // Either still there and resumed, or cleaned by the reconciler as unneeded.
    assert!(info.is_none_or(|i| !i.suspended), "origin left suspended");
    assert!(d.records().unwrap().pending.is_none());
    w.check_invariants();
}

/// Every failpoint of every operation: crash there (a panic that stops the
/// operation dead), then open the root again and check the invariants.
#[test]
fn recovers_from_a_crash_at_every_step() {
    let mut dirs = Vec::new();
    let crashed = scenarios::crash_at_every_step(&mut || {
        let dir = TempDir::new("driver");
        let made = scenarios::World::new(Arc::new(Sim::new()), dir.path(), &opts());
        dirs.push(dir);
        made
    });
    assert_eq!(crashed, 28, "crash points reached");
}

/// Init and activation killed at each of their steps: a root killed before
/// its records were written is initialised again from scratch; after that,
/// and on activation, the next command finishes the work.
#[test]
fn recovers_from_a_crash_in_init_and_activation() {
    for &point in crate::failpoint::INIT_POINTS {
        let dir = TempDir::new("driver");
        let sim = Sim::new();
        crate::failpoint::arm(point);
        let r = catch_unwind(AssertUnwindSafe(|| {
            let _ = Driver::init(dir.path(), Arc::new(sim.clone()), &opts());
        }));
        crate::failpoint::disarm();
        assert!(r.is_err(), "{point} was reached");
        let on = scenarios::World {
            root: dir.path().to_path_buf(),
            kernel: Arc::new(sim.clone()),
        };
        let w = World { dir, sim, on };
        let d = match Driver::open(w.dir.path(), Arc::new(w.sim.clone())) {
            Ok(d) => d,
            Err(Error::NotInitialized { .. }) => {
                Driver::init(w.dir.path(), Arc::new(w.sim.clone()), &opts()).unwrap()
            }
            Err(e) => panic!("{point}: {e}"),
        };
        assert!(d.records().unwrap().base_ready, "{point}");
        d.create_container("c", None).unwrap();
        w.check_invariants();
    }
    for &point in crate::failpoint::activate::POINTS {
        let (w, d) = World::new();
        d.create_container("c", None).unwrap();
        drop(d);
        w.sim.reboot();
        crate::failpoint::arm(point);
        let r = catch_unwind(AssertUnwindSafe(|| {
            let _ = Driver::open(w.dir.path(), Arc::new(w.sim.clone()));
        }));
        crate::failpoint::disarm();
        assert!(r.is_err(), "{point} was reached");
        assert!(w.open().tree().unwrap().layers.contains_key("c"), "{point}");
        w.check_invariants();
    }
}

#[test]
fn a_reboot_reactivates_the_pool_and_resets_mounts() {
    let (w, d) = World::new();
    d.create_container("c", None).unwrap();
    d.mount("c").unwrap();
    drop(d);
    w.sim.reboot();
    let d = w.open();
    assert!(
        w.sim
            .tool_runs()
            .iter()
            .any(|r| r.starts_with("thin_check")),
        "metadata checked on activation"
    );
    assert_eq!(d.tree().unwrap().layers["c"].mounts, 0);
    d.remove("c", false).unwrap();
    w.check_invariants();
}

#[test]
fn a_failed_check_refuses_activation() {
    let (w, d) = World::new();
    drop(d);
    w.sim.reboot();
    w.sim.fail_once("thin_check:");
    let err = Driver::open(w.dir.path(), Arc::new(w.sim.clone()))
        .err()
        .expect("refused");
    assert!(matches!(err, Error::CheckFailed { .. }), "{err}");
    assert!(err.to_string().contains("pool repair"), "{err}");
    // Nothing was left half up.
    assert!(w.sim.dm_list().unwrap().is_empty());
    w.open();
}

#[test]
fn the_check_at_activation_clears_the_kernels_needs_check_flag() {
    let (w, d) = World::new();
    w.sim.set_needs_check(&w.metadata_file(), true);
    assert!(
        d.status().unwrap().needs_check,
        "the kernel's flag is shown"
    );
    drop(d);
    w.sim.reboot();
    let d = w.open();
    assert!(
        !d.status().unwrap().needs_check,
        "the check run at activation found the metadata sound and cleared it"
    );
    assert!(
        w.sim
            .tool_runs()
            .iter()
            .any(|r| r.starts_with("thin_check"))
    );
}

#[test]
fn orphans_in_the_kernel_are_deleted_after_a_reboot() {
    let (w, d) = World::new();
    let pool = d.records().unwrap().pool.pool_name();
    w.sim.dm_message(&pool, "create_thin 77").unwrap();
    drop(d);
    w.sim.reboot();
    // The transaction ids still agree (77 never moved it), so only the scan finds it.
    let d = w.open();
    assert!(!w.sim.thin_ids(&w.metadata_file()).contains(&77));
    drop(d);
    w.check_invariants();
}

#[test]
fn a_foreign_transaction_is_reported_not_repaired() {
    let (w, d) = World::new();
    let rec = d.records().unwrap();
    let (pool, t) = (rec.pool.pool_name(), rec.transaction);
    w.sim
        .dm_message(&pool, &format!("set_transaction_id {t} {}", t + 4))
        .unwrap();
    let err = d.create_container("c", None).unwrap_err();
    assert!(matches!(err, Error::Inconsistent { .. }), "{err}");
}

#[test]
fn stale_devices_and_mounts_are_cleaned() {
    let (w, d) = World::new();
    d.create_container("c", None).unwrap();
    let rec = d.records().unwrap();
    let id = rec.tree.layers["c"].thin_id;
    // A device activated and suspended by a process that then died.
    d.activate_layer("c").unwrap();
    w.sim
        .dm_suspend(
            &format!("{}-{id}", rec.pool.prefix),
            crate::kernel::Suspend::Freeze,
        )
        .unwrap();
    d.status().unwrap();
    assert_eq!(w.sim.dm_list().unwrap().len(), 1, "only the pool is left");
    w.check_invariants();
}

#[test]
fn an_operation_that_died_makes_the_next_one_check_every_device() {
    let (w, d) = World::new();
    d.create_container("a", None).unwrap();
    d.create_container("b", None).unwrap();
    d.mount("a").unwrap();
    let rec = d.records().unwrap();
    let dev = format!("{}-{}", rec.pool.prefix, rec.tree.layers["a"].thin_id);
    // A process dies half-way through mounting `b`, after something
    // (say, a snapshot of `a`'s device) had suspended `a`.
    w.sim
        .dm_suspend(&dev, crate::kernel::Suspend::Freeze)
        .unwrap();
    crate::failpoint::arm(crate::failpoint::mount::AFTER_MOUNT);
    let died = catch_unwind(AssertUnwindSafe(|| d.mount("b")));
    crate::failpoint::disarm();
    assert!(died.is_err(), "the mount was to die at its failpoint");
    d.status().unwrap();
    let info = w.sim.dm_info(&dev).unwrap().expect("a is mounted");
    assert!(
        !info.suspended,
        "the next operation resumes what the dead one left"
    );
    assert!(d.records().unwrap().tree.layers["b"].mounts == 0);
    d.umount("a").unwrap();
    w.check_invariants();
}

#[test]
fn threads_share_one_handle() {
    let (w, d) = World::new();
    scenarios::threads_share_one_handle(&w.on, d);
}

#[test]
fn destroy_leaves_nothing() {
    let (w, d) = World::new();
    d.create_container("c", None).unwrap();
    d.mount("c").unwrap();
    d.destroy().unwrap();
    assert!(w.sim.dm_list().unwrap().is_empty());
    assert!(w.sim.loop_list().unwrap().is_empty());
    assert!(w.sim.mounts().unwrap().is_empty());
    assert!(!w.dir.path().join("data").exists());
    assert!(!w.dir.path().join("state.json").exists());
}

use scenarios::import_layers;

#[test]
fn imports_share_layers_and_failures_leave_nothing() {
    let (w, d) = World::new();
    let mut applied = Vec::new();
    let out = d
        .import_image(
            &image("one:1"),
            &import_layers(&["c1", "c2"]),
            None,
            |i, p| {
                assert!(p.is_dir());
                applied.push(i);
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(applied, [0, 1]);
    assert!(out.iter().all(|l| !l.reused));
    // A second image sharing the bottom layer stores it once.
    let out = d
        .import_image(
            &image("two:1"),
            &import_layers(&["c1", "c3"]),
            None,
            |i, _| {
                assert_eq!(i, 1, "the shared layer is not applied again");
                Ok(())
            },
        )
        .unwrap();
    assert!(out[0].reused && !out[1].reused);
    let tree = d.tree().unwrap();
    assert_eq!(tree.layers.len(), 3);
    assert_eq!(tree.layers["c3"].parent.as_deref(), Some("c1"));
    assert!(
        tree.layers
            .values()
            .all(|l| !l.labels.contains_key(IMPORTING))
    );
    assert_eq!(tree.layers["c2"].labels["thinlayer.io/diff-id"], "diff-c2");

    // A failing apply in the middle: nothing of this import stays.
    let before = d.tree().unwrap();
    let err = d
        .import_image(
            &image("three:1"),
            &import_layers(&["c1", "c4", "c5"]),
            None,
            |i, _| {
                if i == 2 {
                    Err(Error::invalid("layer", "c5", "broken on purpose"))
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("broken on purpose"));
    assert_eq!(d.tree().unwrap(), before);
    w.check_invariants();
}

#[test]
fn a_crashed_import_is_removed_by_the_next_command() {
    let (w, d) = World::new();
    d.import_image(&image("base:1"), &import_layers(&["b1"]), None, |_, _| {
        Ok(())
    })
    .unwrap();
    crate::failpoint::arm(crate::failpoint::import::AFTER_APPLY);
    let r = catch_unwind(AssertUnwindSafe(|| {
        let _ = d.import_image(
            &image("app:1"),
            &import_layers(&["b1", "a2", "a3"]),
            None,
            |_, _| Ok(()),
        );
    }));
    assert!(r.is_err(), "the failpoint was hit");
    let d = w.open();
    let tree = d.tree().unwrap();
    assert_eq!(tree.layers.keys().collect::<Vec<_>>(), ["b1"]);
    assert!(!tree.images.contains_key("app:1"));
    w.check_invariants();
}

#[test]
fn an_older_base_is_emptied_once_nothing_is_built_on_it() {
    let (w, d) = World::new();
    assert!(
        d.records().unwrap().base_empty,
        "a new pool's base is empty"
    );
    d.create_container("c1", None).unwrap();
    // As a pool made before bases were emptied: its base has lost+found.
    let store = crate::records::Store::new(w.dir.path());
    let mut rec = store.load().unwrap();
    rec.base_empty = false;
    store.save(&rec, Durability::Durable).unwrap();
    d.containers(false).unwrap();
    assert!(
        !d.records().unwrap().base_empty,
        "c1 is built on the base: its diff is taken against it"
    );
    d.remove("c1", false).unwrap();
    d.containers(false).unwrap();
    assert!(d.records().unwrap().base_empty);
    w.check_invariants();
}

#[test]
fn a_pool_on_given_block_devices_is_made_reopened_and_checked_for_devices() {
    let dir = TempDir::new("devices");
    let sim = Sim::new();
    let file = |name: &str, len: u64| {
        let p = dir.path().join(name);
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        p
    };
    let (data_file, meta_file) = (file("data.img", 512 << 20), file("meta.img", 16 << 20));
    let data = sim.loop_attach(&data_file).unwrap().info.device;
    let metadata = sim.loop_attach(&meta_file).unwrap().info.device;
    let with = |data, metadata| PoolOptions {
        source: SourceOptions::Devices { data, metadata },
        ..opts()
    };
    let root = dir.path().join("root");
    let d = Driver::init(&root, Arc::new(sim.clone()), &with(data, metadata)).unwrap();
    assert_eq!(d.status().unwrap().data_total, Bytes(512 << 20));
    d.create_container("c", None).unwrap();
    drop(d);
    let d = Driver::open(&root, Arc::new(sim.clone())).unwrap();
    assert_eq!(d.containers(false).unwrap()[0].name, "c");

    // Files are not block devices: refused, nothing made.
    let other = dir.path().join("other");
    let err = Driver::init(&other, Arc::new(sim.clone()), &with(data_file, meta_file))
        .err()
        .expect("files given as devices are refused");
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert!(!other.join("state.json").exists());
}

#[test]
fn unpack_keys_are_containerd_extract_snapshots() {
    use super::service::is_unpack_key;
    assert!(is_unpack_key("k8s.io/12/extract-12345-abc sha256:0123"));
    assert!(is_unpack_key("extract-1 sha256:0123"));
    assert!(!is_unpack_key("k8s.io/12/my-container"));
    assert!(!is_unpack_key("k8s.io/12/sha256:0123"));
    assert!(!is_unpack_key("k8s.io/12/x-extract-1"));
}

#[test]
fn snapshot_calls_write_the_records_once_beyond_their_intent() {
    let (w, d) = World::new();
    let saves = || d.store.saves();
    let labels = BTreeMap::new;
    // Prepare: the intent (durable), then the snapshot and its mount.
    let before = saves();
    d.create_snapshot("ns/1/a", None, Kind::Active, labels())
        .unwrap();
    assert_eq!(saves() - before, 2, "Prepare");
    // Prepare claiming a spare: one write.
    assert!(d.make_spare(None, 1).unwrap());
    let before = saves();
    d.create_snapshot("ns/4/s", None, Kind::Active, labels())
        .unwrap();
    assert_eq!(saves() - before, 1, "Prepare of a spare");
    assert!(d.records().unwrap().tree.spares.is_empty());
    d.remove_snapshot("ns/4/s").unwrap();
    assert_eq!(d.tree().unwrap().get("ns/1/a").unwrap().mounts, 1);
    // Commit of an unmounted, closed device: the unmount and the commit.
    let before = saves();
    d.commit_snapshot("ns/1/a", "ns/2/c", labels(), false)
        .unwrap();
    assert_eq!(saves() - before, 1, "Commit");
    d.create_snapshot("ns/3/b", Some("ns/2/c"), Kind::Active, labels())
        .unwrap();
    // Remove: the removal's record; its kernel work comes later.
    let before = saves();
    d.remove_snapshot("ns/3/b").unwrap();
    assert_eq!(saves() - before, 1, "Remove");
    // What was folded reached the file.
    let on_disk = crate::records::Store::new(w.dir.path()).load().unwrap();
    assert!(on_disk.pending.is_none());
    assert!(on_disk.tree.layers.contains_key("ns/2/c"));
    assert!(!on_disk.tree.layers.contains_key("ns/3/b"));
    assert!(on_disk.tree.layers.values().all(|l| l.mounts == 0));
    w.check_invariants();
    // The kernel work of both removals, in one more write.
    let before = saves();
    let r = d.reap_all().unwrap();
    assert_eq!((r.done, r.held, r.failed), (2, 0, 0));
    assert_eq!(saves() - before, 1, "Reap");
    w.on.check_reaped();
}

/// The kernel calls of one Prepare, one Remove and the reap of its
/// removal, on a root of `live` other mounted snapshots.
fn kernel_calls_of_a_cycle(live: usize) -> Vec<BTreeMap<&'static str, u64>> {
    let (w, d) = World::new();
    for i in 0..live {
        d.create_snapshot(&format!("ns/{i}/live"), None, Kind::Active, BTreeMap::new())
            .unwrap();
    }
    w.sim.take_calls();
    d.create_snapshot("ns/x/a", None, Kind::Active, BTreeMap::new())
        .unwrap();
    let prepare = w.sim.take_calls();
    d.remove_snapshot("ns/x/a").unwrap();
    let remove = w.sim.take_calls();
    assert_eq!(d.reap_all().unwrap().done, 1);
    vec![prepare, remove, w.sim.take_calls()]
}

#[test]
fn a_snapshot_cycle_asks_the_kernel_as_much_whatever_the_number_of_layers() {
    let few = kernel_calls_of_a_cycle(1);
    assert_eq!(few, kernel_calls_of_a_cycle(30), "1 live against 30");
    let [prepare, remove, reap] = &few[..] else {
        unreachable!()
    };
    // The snapshot, one metadata commit; one device made, one mount.
    assert_eq!(prepare["dm_message"], 1, "{prepare:?}");
    assert_eq!(prepare["dm_create"], 1, "{prepare:?}");
    assert_eq!(prepare["mount"], 1, "{prepare:?}");
    // The removal asks nothing of the device: a record.
    for call in ["dm_message", "dm_remove", "umount", "discard"] {
        assert!(!remove.contains_key(call), "{remove:?}");
    }
    // Its reap: the unmount, the discard through the live device, the
    // device down, the delete.
    assert_eq!(reap["umount"], 1, "{reap:?}");
    assert_eq!(reap["discard"], 1, "{reap:?}");
    assert!(!reap.contains_key("dm_create"), "{reap:?}");
    assert_eq!(reap["dm_message"], 1, "{reap:?}");
    for calls in [prepare, remove, reap] {
        // No look at every device nor at the mount table.
        assert!(!calls.contains_key("dm_list"), "{calls:?}");
        assert!(!calls.contains_key("mounts"), "{calls:?}");
    }
}

/// Removals reaped by the background and by two Cleanups at once: each
/// is done once, none started over after another thread did it (which
/// would make a device of a deleted thin id to discard it), and no reaper
/// waits for ever on what another holds.
#[test]
fn removals_reaped_side_by_side_are_each_done_once() {
    const N: u64 = 13;
    for round in 0..10 {
        let (w, d) = World::new();
        for i in 0..N {
            d.create_snapshot(&format!("ns/{i}/s"), None, Kind::Active, BTreeMap::new())
                .unwrap();
        }
        for i in 0..N {
            d.remove_snapshot(&format!("ns/{i}/s")).unwrap();
        }
        w.sim.take_calls();
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel();
            let background = tx.clone();
            let d = &d;
            s.spawn(move || {
                while !d.pending_removals().unwrap().is_empty() {
                    d.reap(4).unwrap();
                }
                background.send(()).unwrap();
            });
            for _ in 0..2 {
                let tx = tx.clone();
                s.spawn(move || {
                    d.reap_all().unwrap();
                    tx.send(()).unwrap();
                });
            }
            for _ in 0..3 {
                if rx.recv_timeout(Duration::from_secs(60)).is_err() {
                    // The scope would wait for ever on the stuck threads.
                    eprintln!("round {round}: reapers still waiting after 60 s");
                    std::process::abort();
                }
            }
        });
        let calls = w.sim.take_calls();
        assert!(!calls.contains_key("dm_create"), "round {round}: {calls:?}");
        assert_eq!(calls.get("dm_remove"), Some(&N), "round {round}: {calls:?}");
        assert_eq!(
            calls.get("dm_message"),
            Some(&N),
            "round {round}: {calls:?}"
        );
        w.on.check_reaped();
    }
}

#[test]
fn a_claim_is_one_threads_until_dropped() {
    let (_w, d) = World::new();
    let id = ThinId::new(42).unwrap();
    let first = removal::Claim::take(&d, id).expect("free");
    assert!(removal::Claim::take(&d, id).is_none(), "taken");
    assert!(
        removal::Claim::take(&d, id).is_none(),
        "a refused claim leaves the holder's in place"
    );
    drop(first);
    assert!(removal::Claim::take(&d, id).is_some(), "free again");
}

#[test]
fn a_removed_snapshot_is_gone_at_once_and_its_key_free_before_its_reap() {
    let (w, d) = World::new();
    let (a, _) = d
        .create_snapshot("ns/1/a", None, Kind::Active, BTreeMap::new())
        .unwrap();
    d.remove_snapshot("ns/1/a").unwrap();
    let rec = d.records().unwrap();
    assert!(!rec.tree.layers.contains_key("ns/1/a"));
    assert!(rec.tree.is_removal(a.thin_id), "pending");
    assert!(matches!(d.layer("ns/1/a"), Err(Error::NotFound { .. })));
    // The same key again, while the first is still pending.
    let (b, _) = d
        .create_snapshot("ns/1/a", None, Kind::Active, BTreeMap::new())
        .unwrap();
    assert_ne!(a.thin_id, b.thin_id, "a pending removal keeps its thin id");
    w.check_invariants();
    assert_eq!(d.reap_all().unwrap().done, 1);
    assert!(
        !w.sim
            .thin_ids(&w.metadata_file())
            .contains(&a.thin_id.get())
    );
    assert!(d.records().unwrap().tree.layers.contains_key("ns/1/a"));
    d.remove_snapshot("ns/1/a").unwrap();
    d.reap_all().unwrap();
    w.on.check_reaped();
}

#[test]
fn a_removal_whose_device_a_client_holds_waits_for_it() {
    let (w, d) = World::new();
    let (l, _) = d
        .create_snapshot("ns/1/a", None, Kind::Active, BTreeMap::new())
        .unwrap();
    // A client mounts the snapshot's device itself and keeps it.
    let client = w.client_mount(&d, l.thin_id);
    d.remove_snapshot("ns/1/a").unwrap();
    let r = d.reap_all().unwrap();
    assert_eq!((r.done, r.held), (0, 1), "held by the client");
    assert!(d.records().unwrap().tree.is_removal(l.thin_id));
    assert!(
        w.sim
            .thin_ids(&w.metadata_file())
            .contains(&l.thin_id.get())
    );
    w.sim.umount(&client, false).unwrap();
    let r = d.reap_all().unwrap();
    assert_eq!((r.done, r.held), (1, 0), "released");
    w.on.check_reaped();
}

#[test]
fn a_prepare_claims_a_spare_and_a_parents_removal_drops_its_spares() {
    let (w, d) = World::new();
    d.create_snapshot("ns/1/a", None, Kind::Active, BTreeMap::new())
        .unwrap();
    d.commit_snapshot("ns/1/a", "ns/2/img", BTreeMap::new(), false)
        .unwrap();
    assert!(d.make_spare(Some("ns/2/img"), 2).unwrap());
    assert!(d.make_spare(Some("ns/2/img"), 2).unwrap());
    assert!(!d.make_spare(Some("ns/2/img"), 2).unwrap(), "two wanted");
    assert!(
        !d.make_spare(Some("ns/9/none"), 2).unwrap(),
        "no such parent"
    );
    assert!(!d.make_spare(Some("ns/1/a"), 2).unwrap(), "not committed");
    let spares = d.spares().unwrap();
    assert_eq!(spares.len(), 2);
    w.check_invariants();
    // A Prepare on it is one of them, already mounted: no kernel call.
    w.sim.take_calls();
    let (c, source) = d
        .create_snapshot(
            "ns/3/c",
            Some("ns/2/img"),
            Kind::Active,
            BTreeMap::from([("k".to_string(), "v".to_string())]),
        )
        .unwrap();
    let calls = w.sim.take_calls();
    for call in ["dm_message", "dm_create", "mount"] {
        assert!(!calls.contains_key(call), "{calls:?}");
    }
    assert_eq!(c.thin_id, spares[0].thin_id);
    assert_eq!((c.mounts, c.pinned, c.snapshotter), (1, true, true));
    assert_eq!(c.labels["k"], "v");
    assert_eq!(source, SnapshotSource::Mounted(d.mount_path_of(c.thin_id)));
    assert_eq!(d.spares().unwrap().len(), 1);
    // Sized, it is made, not claimed.
    let (s, _) = d
        .create_snapshot(
            "ns/4/s",
            Some("ns/2/img"),
            Kind::Active,
            BTreeMap::from([(MAX_SIZE_LABEL.to_string(), (2u64 << 30).to_string())]),
        )
        .unwrap();
    assert_ne!(s.thin_id, spares[1].thin_id);
    // The parent's removal takes its last spare with it.
    d.remove_snapshot("ns/3/c").unwrap();
    d.remove_snapshot("ns/4/s").unwrap();
    d.remove_snapshot("ns/2/img").unwrap();
    assert!(d.spares().unwrap().is_empty());
    assert_eq!(d.reap_all().unwrap().done, 4);
    w.on.check_reaped();
}

/// An intent an older thinlayer left pending (version 3's records, which
/// moved the pool's transaction id with every change) is settled by the
/// transaction id, as that version would have.
#[test]
fn an_older_versions_interrupted_create_is_settled_by_the_transaction_id() {
    for finished in [true, false] {
        let (w, d) = World::new();
        let rec = d.records().unwrap();
        let (pool, t) = (rec.pool.pool_name(), rec.transaction);
        let base = rec.tree.base.unwrap();
        let id = ThinId::new(40).unwrap();
        w.sim
            .dm_message(&pool, &format!("create_snap {id} {base}"))
            .unwrap();
        if finished {
            w.sim
                .dm_message(&pool, &format!("set_transaction_id {t} {}", t + 1))
                .unwrap();
        }
        let layer = Layer {
            key: "old".into(),
            kind: Kind::Active,
            thin_id: id,
            parent: None,
            device_size: rec.pool.base_size,
            created: 1,
            created_ns: 0,
            updated_ns: 0,
            snapshotter: false,
            image: None,
            labels: BTreeMap::new(),
            mounts: 0,
            pinned: false,
        };
        let mut left = rec.clone();
        left.pending = Some(Intent::CreateLayer {
            transaction: Some(t + 1),
            origin: base,
            layer,
            grow: false,
        });
        drop(d);
        crate::records::Store::new(w.dir.path())
            .save(&left, crate::records::Durability::Durable)
            .unwrap();
        let d = w.open();
        let rec = d.records().unwrap();
        assert!(rec.pending.is_none());
        assert_eq!(rec.tree.layers.contains_key("old"), finished, "{finished}");
        assert_eq!(rec.transaction, t + u64::from(finished));
        assert_eq!(
            w.sim.thin_ids(&w.metadata_file()).contains(&id.get()),
            finished
        );
        w.check_invariants();
    }
}

#[test]
fn a_new_snapshot_is_trimmed_once_while_mounted_and_a_committed_one_not() {
    let (w, d) = World::new();
    d.create_snapshot("ns/1/a", None, Kind::Active, BTreeMap::new())
        .unwrap();
    w.sim.take_calls();
    d.pretrim("ns/1/a").unwrap();
    assert_eq!(w.sim.take_calls().get("trim"), Some(&1));
    d.commit_snapshot("ns/1/a", "ns/2/c", BTreeMap::new(), false)
        .unwrap();
    w.sim.take_calls();
    d.pretrim("ns/2/c").unwrap();
    d.pretrim("ns/9/none").unwrap();
    assert_eq!(w.sim.take_calls().get("trim"), None);
}

#[test]
fn a_commit_hands_its_mount_over_unless_a_client_still_holds_one() {
    let (w, d) = World::new();
    let (a, _) = d
        .create_snapshot("ns/1/a", None, Kind::Active, BTreeMap::new())
        .unwrap();
    // A remount that fails: the Commit fails, the snapshot stays active
    // and mounted as it was.
    w.sim.fail_once("remount:");
    d.commit_snapshot("ns/1/a", "ns/2/c", BTreeMap::new(), true)
        .unwrap_err();
    let rec = d.records().unwrap();
    assert_eq!(rec.tree.get("ns/1/a").unwrap().mounts, 1);
    assert!(rec.pending.is_none() && rec.tree.spares.is_empty());
    assert!(!rec.tree.layers.contains_key("ns/2/c"));
    w.check_invariants();
    // So does a `create_snap` that fails, its mount made writable again.
    w.sim.fail_once("message:create_snap");
    w.sim.take_calls();
    d.commit_snapshot("ns/1/a", "ns/2/c", BTreeMap::new(), true)
        .unwrap_err();
    assert_eq!(w.sim.take_calls().get("remount"), Some(&3), "ro, rw, rw");
    assert_eq!(d.records().unwrap().tree.get("ns/1/a").unwrap().mounts, 1);
    w.check_invariants();

    let c = d
        .commit_snapshot("ns/1/a", "ns/2/c", BTreeMap::new(), true)
        .unwrap();
    assert!(c.spare);
    assert_ne!(c.layer.thin_id, a.thin_id, "the committed layer is a copy");
    let calls = w.sim.take_calls();
    assert_eq!(calls.get("umount"), None, "{calls:?}");
    assert_eq!(calls.get("remount"), Some(&2), "read-only, then back");
    assert_eq!(calls.get("dm_suspend"), Some(&1), "suspended for the copy");
    let rec = d.records().unwrap();
    assert!(!rec.tree.layers.contains_key("ns/1/a"));
    assert_eq!(rec.tree.spares.len(), 1);
    let spare = &rec.tree.spares[0];
    assert_eq!(
        (spare.thin_id, spare.parent.as_deref(), spare.mounted),
        (a.thin_id, Some("ns/2/c"), true)
    );
    // The next Prepare on it claims it: no device made, nothing mounted.
    let (b, source) = d
        .create_snapshot("ns/3/b", Some("ns/2/c"), Kind::Active, BTreeMap::new())
        .unwrap();
    assert_eq!(b.thin_id, a.thin_id);
    assert_eq!(source, SnapshotSource::Mounted(d.mount_path_of(a.thin_id)));
    let calls = w.sim.take_calls();
    assert_eq!(
        (
            calls.get("dm_create"),
            calls.get("mount"),
            calls.get("dm_message")
        ),
        (None, None, None),
        "{calls:?}"
    );

    // A client's mount of it left behind: no hand-over, a copy as ever.
    let client = w.client_mount(&d, b.thin_id);
    let e = d
        .commit_snapshot("ns/3/b", "ns/4/e", BTreeMap::new(), true)
        .unwrap();
    assert!(!e.spare);
    let rec = d.records().unwrap();
    assert!(rec.tree.spares.is_empty(), "{:?}", rec.tree.spares);
    assert_eq!(rec.tree.retired, [b.thin_id]);
    w.sim.umount(&client, false).unwrap();

    // Nor with spares enough already.
    let (f, _) = d
        .create_snapshot("ns/5/f", Some("ns/4/e"), Kind::Active, BTreeMap::new())
        .unwrap();
    while d.make_spare(None, MAX_SPARES).unwrap() {}
    assert_eq!(d.spares().unwrap().len(), MAX_SPARES);
    let g = d
        .commit_snapshot("ns/5/f", "ns/6/g", BTreeMap::new(), true)
        .unwrap();
    assert!(!g.spare);
    assert_eq!(g.layer.thin_id, f.thin_id, "committed in place");

    d.drop_spares().unwrap();
    for key in ["ns/6/g", "ns/4/e", "ns/2/c"] {
        d.remove_snapshot(key).unwrap();
    }
    d.reap_all().unwrap();
    w.on.check_reaped();
}

#[test]
fn a_commit_handing_its_mount_over_stopped_anywhere_is_whole_or_undone() {
    for point in failpoint::commit::POINTS.iter().copied() {
        let (w, d) = World::new();
        let (a, _) = d
            .create_snapshot("ns/1/a", None, Kind::Active, BTreeMap::new())
            .unwrap();
        let stopped = catch_unwind(AssertUnwindSafe(|| {
            failpoint::arm(point);
            d.commit_snapshot("ns/1/a", "ns/2/c", BTreeMap::new(), true)
        }));
        failpoint::disarm();
        assert!(stopped.is_err(), "{point}: not reached");
        // The next operation settles it.
        let d = w.open();
        let tree = d.tree().unwrap();
        let done = point == failpoint::commit::AFTER_RECORD;
        assert_eq!(
            (
                tree.layers.contains_key("ns/2/c"),
                tree.layers.contains_key("ns/1/a")
            ),
            (done, !done),
            "{point}"
        );
        if !done {
            assert_eq!(tree.get("ns/1/a").unwrap().thin_id, a.thin_id, "{point}");
            assert!(tree.spares.is_empty(), "{point}: {:?}", tree.spares);
        }
        w.check_invariants();
        drop(d);
    }
}
