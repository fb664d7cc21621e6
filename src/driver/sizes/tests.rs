//! Reuse of one dump's figures, on the simulated kernel: when a dump is
//! taken, and that what is reused equals what a fresh handle computes.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::kernel::{Kernel, MountRequest, Sim};
use crate::pool::PoolOptions;
use crate::testutil::TempDir;
use crate::tree::{ImageRef, Kind};

/// A pool with an image of 20 blocks and containers `c0`…`c{n-1}` of it,
/// `ci` having written `i` blocks of its own; none mounted.
struct Root {
    dir: TempDir,
    sim: Sim,
    d: Driver,
    prefix: String,
}

impl Root {
    fn new(n: u64) -> Root {
        let dir = TempDir::new("sizes");
        let sim = Sim::new();
        let d = Driver::init(dir.path(), Arc::new(sim.clone()), &PoolOptions::default()).unwrap();
        let prefix = d.records().unwrap().pool.prefix;
        let p = Root {
            dir,
            sim,
            d,
            prefix,
        };
        p.d.create_container("img", None).unwrap();
        p.write("img", 0, 20);
        p.d.commit("img", &image()).unwrap();
        for i in 0..n {
            p.d.create_container(&format!("c{i}"), Some(&image()))
                .unwrap();
            p.write(&format!("c{i}"), 100, i);
        }
        p
    }

    /// Writes `blocks` new blocks from `from` into a layer through its
    /// device, made live for that and taken down after.
    fn write(&self, key: &str, from: u64, blocks: u64) {
        self.d.mount(key).unwrap();
        let id = self.d.tree().unwrap().layers[key].thin_id;
        self.sim
            .write(&format!("{}-{id}", self.prefix), from, blocks)
            .unwrap();
        self.d.umount(key).unwrap();
    }

    /// Every layer's sizes from a new handle, which has nothing kept.
    fn uncached(&self) -> BTreeMap<String, LayerSize> {
        let fresh = Driver::open(self.dir.path(), Arc::new(self.sim.clone())).unwrap();
        let sizes = fresh.sizes().unwrap();
        assert_eq!(fresh.metadata_dumps(), 1);
        sizes
    }

    /// Runs `f`; returns what it returned and how many dumps it took.
    fn dumps<T>(&self, f: impl FnOnce(&Driver) -> T) -> (T, u64) {
        let before = self.d.metadata_dumps();
        let out = f(&self.d);
        (out, self.d.metadata_dumps() - before)
    }

    /// One layer's size through `layer_size`, and the dumps it took.
    fn size(&self, key: &str) -> (LayerSize, u64) {
        self.dumps(|d| d.layer_size(key).unwrap())
    }

    /// Every container's size through `layer_size`.
    fn usage(&self) -> BTreeMap<String, LayerSize> {
        let keys: Vec<String> = self.d.tree().unwrap().layers.into_keys().collect();
        keys.into_iter()
            .map(|k| {
                let s = self.d.layer_size(&k).unwrap();
                (k, s)
            })
            .collect()
    }
}

fn image() -> ImageRef {
    ImageRef::parse("app").unwrap()
}

const BLOCK: u64 = 65536;

#[test]
fn repeated_calls_take_one_dump_and_match_an_uncached_one() {
    let p = Root::new(5);
    let (first, n) = p.dumps(|d| d.sizes().unwrap());
    assert_eq!(n, 1);
    assert_eq!(p.dumps(|d| d.sizes().unwrap()), (first.clone(), 0));
    assert_eq!(first, p.uncached());
    assert_eq!(first["c3"].size, Bytes(3 * BLOCK));
    assert_eq!(
        first["c3"].virtual_size,
        Bytes(first["c0"].virtual_size.0 + 3 * BLOCK)
    );
    // Usage of every layer, twice: no dump at all, the first set of answers
    // made under the lock from the kept dump, the rest without it.
    assert_eq!(p.dumps(|_| p.usage()), (first.clone(), 0));
    assert_eq!(p.dumps(|_| p.usage()), (first, 0));
    let err = p.d.layer_size("nope").unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[test]
fn a_change_to_the_layers_or_the_pool_takes_a_new_dump() {
    let p = Root::new(2);
    assert_eq!(p.dumps(|_| p.usage()).1, 1);
    p.d.mount("c1").unwrap();
    assert_eq!(p.size("c1").1, 0, "a mount moves nothing");
    // A write that maps new blocks: data blocks used grows.
    let id = p.d.tree().unwrap().layers["c1"].thin_id;
    p.sim.write(&format!("{}-{id}", p.prefix), 500, 4).unwrap();
    let (c1, n) = p.size("c1");
    assert_eq!((c1.size, n), (Bytes(5 * BLOCK), 1));
    assert_eq!(p.usage(), p.uncached());
    p.d.umount("c1").unwrap();
    // A new layer and a removed one: the transaction id moves.
    p.d.create_container("c9", Some(&image())).unwrap();
    assert_eq!(p.dumps(|_| assert_eq!(p.usage(), p.uncached())).1, 1);
    p.d.remove("c0", false).unwrap();
    assert_eq!(p.dumps(|_| assert_eq!(p.usage(), p.uncached())).1, 1);
    assert!(p.d.layer_size("c0").is_err());
    // A commit renames a layer in place: same thin ids, same figures.
    p.d.commit("c1", &ImageRef::parse("next").unwrap()).unwrap();
    let top = p.d.tree().unwrap().images["next:latest"].top.clone();
    assert_eq!(p.size(&top), (c1, 0));
    assert!(p.d.layer_size("c1").is_err());
    // A layer made elsewhere (another handle, as another process would).
    let other = Driver::open(p.dir.path(), Arc::new(p.sim.clone())).unwrap();
    other
        .create_layer("ns/1/v", Some(&top), Kind::View, BTreeMap::new(), false)
        .unwrap();
    assert_eq!(p.size("ns/1/v").1, 1);
}

#[test]
fn figures_older_than_the_bound_are_dumped_again() {
    let p = Root::new(1);
    assert_eq!(p.dumps(|_| p.usage()).1, 1);
    let age = |d: &Driver| {
        let mut kept = d.sizes.kept();
        let dump = kept.dump.as_mut().unwrap();
        dump.ready = dump.ready.checked_sub(SIZES_MAX_AGE).unwrap();
    };
    age(&p.d);
    assert_eq!(p.size("c0").1, 1);
    assert_eq!(p.size("c0").1, 0);
    age(&p.d);
    assert_eq!(p.dumps(|d| d.sizes().unwrap()).1, 1);
}

#[test]
fn kept_answers_need_not_wait_for_the_lock() {
    let p = Root::new(1);
    p.usage();
    // Another operation holds the root's lock for as long as it likes.
    let lock = p.d.store.lock().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| tx.send(p.d.layer_size("c0")).unwrap());
        let answer = rx.recv_timeout(Duration::from_secs(10));
        drop(lock);
        let size = answer.expect("answered while the lock was held").unwrap();
        assert_eq!(size.size, Bytes(0));
    });
}

#[test]
fn a_settled_records_file_is_checked_by_stat_and_still_shows_saves() {
    let p = Root::new(1);
    // Left alone long enough that its stat tells one save from another.
    std::thread::sleep(SETTLED);
    assert_eq!(p.size("c0").1, 1);
    assert!(p.d.sizes.kept().answers.as_ref().unwrap().records.settled);
    assert_eq!(p.size("c0").1, 0);
    // Another handle saves: a new file, so a new stat, then new bytes.
    let other = Driver::open(p.dir.path(), Arc::new(p.sim.clone())).unwrap();
    other.create_container("c1", Some(&image())).unwrap();
    assert_eq!(p.size("c1").1, 1);
    let kept = p.d.sizes.kept();
    assert!(
        !kept.answers.as_ref().unwrap().records.settled,
        "just saved"
    );
}

/// The device name of layer `key`'s thin device.
fn device(p: &Root, key: &str) -> String {
    let id = p.d.tree().unwrap().layers[key].thin_id;
    format!("{}-{id}", p.prefix)
}

#[test]
fn what_a_mounted_container_has_not_written_back_counts_at_once() {
    let p = Root::new(2);
    p.d.mount("c1").unwrap();
    let dev = device(&p, "c1");
    let (was, _) = p.size("c1");
    assert_eq!(was.size, Bytes(BLOCK));
    p.sim.take_calls();
    // 8 MiB and a 4 KiB page, not written back: whole pool blocks, read
    // fresh while the kept dump answers.
    p.sim.cache(&dev, Bytes((8 << 20) + 4096));
    let more = |b: u64| LayerSize {
        size: Bytes(was.size.0 + b * BLOCK),
        virtual_size: Bytes(was.virtual_size.0 + b * BLOCK),
    };
    assert_eq!(p.size("c1"), (more(129), 0));
    p.sim.cache(&dev, Bytes(BLOCK));
    assert_eq!(p.size("c1"), (more(130), 0), "nothing kept of the count");
    // One read of the count a call, and only for the mounted container.
    assert_eq!(p.size("c0").1, 0);
    assert_eq!(p.sim.take_calls().get("delayed_allocation"), Some(&2));
    // Every way sizes are read counts it.
    assert_eq!(p.d.sizes().unwrap()["c1"], more(130));
    let ps = p.d.containers(true).unwrap();
    let c1 = ps.iter().find(|c| c.name == "c1").unwrap();
    assert_eq!(c1.size.as_ref(), Some(&more(130)));
    assert_eq!(p.d.sizes().unwrap()["c0"], p.size("c0").0);

    // Written back: the pool maps the blocks, the count drops; counted
    // once, from a new dump.
    p.sim.write_back(&dev).unwrap();
    assert_eq!(p.size("c1"), (more(130), 1));
    assert_eq!(p.usage(), p.uncached());
}

#[test]
fn only_active_layers_thinlayer_holds_mounted_count_what_is_not_written_back() {
    let p = Root::new(1);
    let top = p.d.tree().unwrap().images["app:latest"].top.clone();
    p.d.create_layer("v", Some(&top), Kind::View, BTreeMap::new(), false)
        .unwrap();
    let exact = p.uncached();
    // Read-only layers mounted, data in the page cache of each device
    // (as no read-only filesystem could hold): none of it counts.
    for key in [top.as_str(), "v"] {
        p.d.mount(key).unwrap();
        p.sim.cache(&device(&p, key), Bytes(3 * BLOCK));
    }
    assert_eq!(p.usage(), exact);
    // A container whose device someone else mounts: not thinlayer's mount.
    let node = p.d.activate_layer("c0").unwrap();
    let elsewhere = p.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    p.sim
        .mount(&MountRequest {
            source: &node,
            target: &elsewhere,
            fstype: "ext4",
            read_only: false,
            nodev: false,
            data: "",
        })
        .unwrap();
    p.sim.cache(&device(&p, "c0"), Bytes(3 * BLOCK));
    p.sim.take_calls();
    assert_eq!(p.usage(), exact);
    assert_eq!(p.sim.take_calls().get("delayed_allocation"), None);
    p.sim.umount(&elsewhere, false).unwrap();
    let exact = p.uncached();
    // Mounted by thinlayer, it counts; unmounted again, its filesystem
    // wrote it back: the pool's figure alone, as large.
    p.d.mount("c0").unwrap();
    p.sim.cache(&device(&p, "c0"), Bytes(3 * BLOCK));
    let pending = p.d.layer_size("c0").unwrap();
    assert_eq!(pending.size, Bytes(exact["c0"].size.0 + 3 * BLOCK));
    p.d.umount("c0").unwrap();
    assert_eq!(p.d.layer_size("c0").unwrap(), pending);
    assert_eq!(p.usage(), p.uncached());
}

#[test]
fn on_xfs_only_what_is_written_back_counts() {
    let dir = TempDir::new("sizes-xfs");
    let sim = Sim::new();
    let opts = PoolOptions {
        filesystem: crate::fs::FsKind::Xfs,
        ..PoolOptions::default()
    };
    let d = Driver::init(dir.path(), Arc::new(sim.clone()), &opts).unwrap();
    d.create_container("c", None).unwrap();
    d.mount("c").unwrap();
    let was = d.layer_size("c").unwrap();
    let id = d.tree().unwrap().layers["c"].thin_id;
    let prefix = d.records().unwrap().pool.prefix;
    sim.cache(&format!("{prefix}-{id}"), Bytes(3 * BLOCK));
    assert_eq!(d.layer_size("c").unwrap(), was);
}

#[test]
fn a_count_that_cannot_be_read_leaves_the_pools_figure() {
    let p = Root::new(1);
    p.d.mount("c0").unwrap();
    let exact = p.size("c0").0;
    p.sim.cache(&device(&p, "c0"), Bytes(BLOCK));
    p.sim.fail_once("delayed_allocation:");
    assert_eq!(p.size("c0").0, exact);
    assert_eq!(p.size("c0").0.size, Bytes(exact.size.0 + BLOCK));
}

/// A root of containers `c0`…`c3` whose kept dump no longer matches the
/// pool or the records: `c1` mounted (its device live, as a containerd
/// snapshot's is) and every layer's size read, then a layer made, one
/// removed and `c2` written through its device (made live for that and
/// taken down after). Returns it with the figures before those changes,
/// and the image's top layer.
fn churned() -> (Root, BTreeMap<String, LayerSize>, String) {
    let p = Root::new(4);
    p.d.mount("c1").unwrap();
    let top = p.d.tree().unwrap().images["app:latest"].top.clone();
    let (before, n) = p.dumps(|_| p.usage());
    assert_eq!(n, 1);
    assert_eq!(before, p.uncached());
    p.d.create_container("c9", Some(&image())).unwrap();
    p.d.remove("c0", false).unwrap();
    p.write("c2", 300, 2);
    (p, before, top)
}

#[test]
fn an_unchanged_layer_answers_from_the_kept_dump_while_others_change() {
    let (p, before, top) = churned();
    let exact = p.uncached();
    assert_ne!(exact["c2"], before["c2"]);
    // A live device mapping what it mapped, a committed layer: no dump,
    // and the figures exact.
    assert_eq!(p.size("c1"), (exact["c1"].clone(), 0));
    assert_eq!(p.size(&top), (exact[&top].clone(), 0));
    assert_eq!(exact["c1"], before["c1"]);
    // Answered without the root's lock.
    let lock = p.d.store.lock().unwrap();
    let (done, size) = std::thread::scope(|s| {
        let asked = s.spawn(|| p.d.layer_size("c1"));
        for _ in 0..1000 {
            if asked.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let done = asked.is_finished();
        drop(lock);
        (done, asked.join().unwrap())
    });
    assert!(done, "answered while the lock was held");
    assert_eq!(size.unwrap(), exact["c1"]);
    // A removed layer is not found, without a dump either.
    let (err, n) = p.dumps(|d| d.layer_size("c0").unwrap_err());
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert_eq!(n, 0);
    // What it has not written back still counts, read now.
    p.sim.cache(&device(&p, "c1"), Bytes(BLOCK));
    let more = LayerSize {
        size: Bytes(exact["c1"].size.0 + BLOCK),
        virtual_size: Bytes(exact["c1"].virtual_size.0 + BLOCK),
    };
    assert_eq!(p.size("c1"), (more, 0));
}

#[test]
fn a_write_through_the_layer_or_a_new_layer_takes_a_new_dump() {
    let (p, _, _) = churned();
    // Written through its live device: it maps more blocks.
    p.sim.write(&device(&p, "c1"), 700, 3).unwrap();
    let exact = p.uncached();
    assert_eq!(p.size("c1"), (exact["c1"].clone(), 1));
    assert_eq!(exact["c1"].size, Bytes(4 * BLOCK));
    let (p, _, _) = churned();
    // Written through a device live only meanwhile: no count to compare.
    let exact = p.uncached();
    assert_eq!(p.size("c2"), (exact["c2"].clone(), 1));
    assert_eq!(exact["c2"].size, Bytes(4 * BLOCK));
    let (p, _, _) = churned();
    // A layer the dump does not hold.
    assert_eq!(p.size("c9"), (p.uncached()["c9"].clone(), 1));
}

/// Makes the kept dump as old as [`SIZES_MAX_AGE`].
fn expire(d: &Driver) {
    let mut kept = d.sizes.kept();
    let dump = kept.dump.as_mut().unwrap();
    dump.ready = dump.ready.checked_sub(SIZES_MAX_AGE).unwrap();
}

#[test]
fn an_unchanged_layer_answers_for_no_longer_than_the_bound() {
    let (p, _, _) = churned();
    expire(&p.d);
    assert_eq!(p.size("c1"), (p.uncached()["c1"].clone(), 1));
}

#[test]
fn a_copy_of_a_shared_block_goes_unseen_until_the_bound() {
    let (p, before, _) = churned();
    // A rewrite of an image block: the pool copies it, the count stays.
    p.sim.write(&device(&p, "c1"), 5, 1).unwrap();
    let exact = p.uncached();
    assert_eq!(exact["c1"].size, Bytes(before["c1"].size.0 + BLOCK));
    assert_eq!(p.size("c1"), (before["c1"].clone(), 0));
    expire(&p.d);
    assert_eq!(p.size("c1"), (exact["c1"].clone(), 1));
}
