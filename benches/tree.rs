//! Snapshot-tree and record operations at 10,000 layers.
//!
//! Every thinlayer command reads the records, checks the tree and writes the
//! records back; these measure that bookkeeping alone (the kernel side is
//! the simulated kernel, so no device work is counted): how it scales when a
//! host holds 10,000 layers, e.g. a chain of 10,000 image layers, or 1,000
//! images of 10 layers with containers on them.
//!
//! Run: `cargo bench --bench tree`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use thinlayer::Driver;
use thinlayer::kernel::Sim;
use thinlayer::pool::{PoolOptions, SourceOptions};
use thinlayer::records::{Durability, Records, Store};
use thinlayer::tree::{IdAllocator, Kind, Layer, Tree};
use thinlayer::units::{Bytes, ThinId};

const LAYERS: u32 = 10_000;

fn layer(key: String, id: u32, parent: Option<String>, kind: Kind) -> Layer {
    Layer {
        key,
        kind,
        thin_id: ThinId::new(id).expect("24-bit id"),
        parent,
        device_size: Bytes(10 << 30),
        created: 1_700_000_000,
        created_ns: 1_700_000_000_000_000_000,
        updated_ns: 0,
        snapshotter: false,
        image: None,
        labels: BTreeMap::new(),
        mounts: 0,
        pinned: false,
    }
}

/// 1,000 images of 9 committed layers, each with one container: 10,000 layers.
fn wide_tree() -> Tree {
    wide_tree_of(1000)
}

/// `images` images of 9 layers, each with one container: 10 layers each.
fn wide_tree_of(images: usize) -> Tree {
    let mut t = Tree {
        base: Some(ThinId::new(1).expect("id")),
        ..Tree::default()
    };
    let mut id = 100;
    for img in 0..images {
        let mut parent = None;
        for l in 0..9 {
            let key = format!("sha256:{img:032x}{l:032x}");
            t.layers.insert(
                key.clone(),
                layer(key.clone(), id, parent.clone(), Kind::Committed),
            );
            parent = Some(key);
            id += 1;
        }
        let c = format!("container-{img}");
        t.layers
            .insert(c.clone(), layer(c, id, parent, Kind::Active));
        id += 1;
    }
    t
}

/// One chain 10,000 layers deep.
fn deep_tree() -> Tree {
    let mut t = Tree {
        base: Some(ThinId::new(1).expect("id")),
        ..Tree::default()
    };
    let mut parent = None;
    for i in 0..LAYERS {
        let key = format!("layer-{i:05}");
        t.layers.insert(
            key.clone(),
            layer(key.clone(), i + 2, parent.clone(), Kind::Committed),
        );
        parent = Some(key);
    }
    t
}

fn scratch_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("thinlayer-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("bench dir");
    d
}

fn tree_rules(c: &mut Criterion) {
    let wide = wide_tree();
    let deep = deep_tree();
    c.bench_function("tree/check_new (10k layers)", |b| {
        b.iter(|| {
            wide.check_new(
                black_box("new"),
                Some("sha256:000000000000000000000000000001f300000000000000000000000000000008"),
            )
        })
    });
    c.bench_function("tree/children (10k layers)", |b| {
        b.iter(|| {
            wide.children(black_box(
                "sha256:000000000000000000000000000001f300000000000000000000000000000004",
            ))
        })
    });
    c.bench_function("tree/ancestry (10k deep)", |b| {
        b.iter(|| deep.ancestry(black_box("layer-09999")).map(|a| a.len()))
    });
    c.bench_function("tree/check_remove (10k layers)", |b| {
        b.iter(|| wide.check_remove(black_box("container-500")).is_ok())
    });
    c.bench_function("ids/allocate (10k used)", |b| {
        b.iter_batched(
            IdAllocator::default,
            |mut a| a.allocate(wide.thin_ids()),
            BatchSize::SmallInput,
        )
    });
}

fn records(c: &mut Criterion) {
    let dir = scratch_dir("records");
    let store = Store::new(&dir);
    let opts = PoolOptions::default();
    let mut rec = Records::new(thinlayer::pool::config_for(&dir, &opts));
    rec.tree = wide_tree();
    store.save(&rec, Durability::Durable).expect("save");
    let size = std::fs::metadata(store.path())
        .map(|m| m.len())
        .unwrap_or(0);
    println!("state.json with {LAYERS} layers: {size} bytes");
    // A save appends what changed since the last: here one layer's mount
    // count, as a mount does.
    let first = rec.tree.layers.keys().next().expect("layers").clone();
    let change = |rec: &mut Records| {
        let l = rec.tree.layers.get_mut(&first).expect("layer");
        l.mounts = 1 - l.mounts;
    };
    c.bench_function("records/save (10k layers, one changed, durable)", |b| {
        b.iter(|| {
            change(&mut rec);
            store.save(black_box(&rec), Durability::Durable)
        })
    });
    c.bench_function("records/save (10k layers, one changed, atomic)", |b| {
        b.iter(|| {
            change(&mut rec);
            store.save(black_box(&rec), Durability::Atomic)
        })
    });
    // Written whole, as when the journal has outgrown state.json (a store
    // that kept nothing has nothing to tell what changed).
    c.bench_function("records/save whole (10k layers, durable)", |b| {
        b.iter(|| Store::new(&dir).save(black_box(&rec), Durability::Durable))
    });
    // Read and parsed, as by a process that did not write this version.
    c.bench_function("records/load (10k layers)", |b| {
        b.iter(|| Store::new(&dir).load().map(|r| r.tree.layers.len()))
    });
    // The version the store wrote, kept (see `Store`).
    c.bench_function("records/load (10k layers, kept)", |b| {
        b.iter(|| store.load().map(|r| r.tree.layers.len()))
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whole driver operations (lock, load, reconcile, transaction, save) on
/// the simulated kernel, with none, 1,000 and 10,000 layers already
/// recorded: how their cost grows with the layers. A container's create
/// and removal as the CLI does them, a snapshot's Prepare, Remove and reap
/// as `serve` does them.
fn driver_ops(c: &mut Criterion) {
    for (images, name) in [(0, "0"), (100, "1k"), (1000, "10k")] {
        driver_ops_among(c, images, name);
    }
}

fn driver_ops_among(c: &mut Criterion, images: usize, name: &str) {
    let dir = scratch_dir(&format!("driver-{name}"));
    let sim = Sim::new();
    let opts = PoolOptions {
        source: SourceOptions::LoopFiles {
            data_size: Bytes(1 << 30),
            metadata_size: Bytes(16 << 20),
        },
        base_size: Bytes(1 << 30),
        ..PoolOptions::default()
    };
    let d = Driver::init(&dir, Arc::new(sim), &opts).expect("init");
    // Record the layers directly (creating them one by one would measure
    // the setup, not the operation). The simulated kernel never sees them:
    // the measured operations touch only the base and their own layer.
    let store = Store::new(&dir);
    let mut rec = store.load().expect("records");
    let mut tree = wide_tree_of(images);
    tree.base = rec.tree.base;
    rec.tree = tree;
    store.save(&rec, Durability::Durable).expect("save");
    let mut n = 0u64;
    c.bench_function(
        &format!("driver/create+remove container ({name} layers)"),
        |b| {
            b.iter(|| {
                n += 1;
                let name = format!("bench{n}");
                d.create_container(&name, None).expect("create");
                d.remove(&name, false).expect("remove");
            })
        },
    );
    // containerd's Prepare and Remove as `serve` does them, the removal's
    // kernel work (its reap) included.
    c.bench_function(
        &format!("driver/prepare+remove snapshot ({name} layers)"),
        |b| {
            b.iter(|| {
                n += 1;
                let key = format!("ns/{n}/bench");
                d.create_snapshot(&key, None, Kind::Active, Default::default())
                    .expect("prepare");
                d.remove_snapshot(&key).expect("remove");
                d.reap_all().expect("reap");
            })
        },
    );
    c.bench_function(&format!("driver/ps without sizes ({name} layers)"), |b| {
        b.iter(|| d.containers(false).map(|l| l.len()))
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = tree_rules, records, driver_ops
}
criterion_main!(benches);
