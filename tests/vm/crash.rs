//! The crash matrix: every mutating operation killed with SIGKILL at each of
//! its failpoints, after which the next command must repair the root by
//! itself. After every point:
//! - the kernel's thin ids (thin_ls on a metadata snapshot) are the tree's;
//! - the only device-mapper devices, loop devices and mounts of the root are
//!   those the tree needs (the pool, mounted and pinned layers);
//! - every committed layer still holds its content: the digest of its
//!   changes as a layer tar is the one taken before the matrix;
//! - the killed operation is complete or absent, and can be done again.
//!
//! The matrix names its points with the constants of
//! [`thinlayer::failpoint`], and a test insists that it (here and the
//! containerd part in [`crate::containerd`]) kills at each point of
//! [`failpoint::ALL`], the list of every point there is. Running, each
//! (operation, point) pair must kill a process at its point exactly once
//! ([`kills_during`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use thinlayer::Driver;
use thinlayer::failpoint::{
    self, Point, activate, claim, commit, create, grow, image_rm, import, labels, mount, orphan,
    reap, remove, spare, umount,
};
use thinlayer::image::build::{LayerBuilder, write_oci_archive};
use thinlayer::image::{Compression, DigestWriter};
use thinlayer::kernel::Kernel;
use thinlayer::records::{Records, Store};

use crate::fixture::{self, DEADLINE, Fixture, eventually, write_file};

/// One operation of the matrix: its failpoints, and how to run it killed at
/// one of them, recover, check and bring the root back to the baseline.
struct Row {
    op: &'static str,
    points: &'static [Point],
    run: fn(&Fixture, &Baseline, &str),
}

const CREATE: &[Point] = &create::TRANSACTION.points();
/// A removal's record, then its kernel work.
const REMOVE: &[Point] = &[
    remove::AFTER_RECORD,
    reap::AFTER_UMOUNT,
    reap::AFTER_DISCARD,
    reap::AFTER_DEACTIVATE,
    reap::AFTER_DELETE,
    reap::AFTER_RECORD,
];

/// The command-line operations.
const ROWS: &[Row] = &[
    Row {
        op: "pool init",
        points: thinlayer::failpoint::INIT_POINTS,
        run: pool_init,
    },
    Row {
        op: "pool activate",
        points: activate::POINTS,
        run: pool_activate,
    },
    Row {
        op: "pool activate with an orphan thin id",
        points: orphan::POINTS,
        run: orphan,
    },
    Row {
        op: "container create",
        points: CREATE,
        run: container_create,
    },
    Row {
        op: "container create --size",
        points: grow::POINTS,
        run: container_create_sized,
    },
    Row {
        op: "container mount",
        points: mount::POINTS,
        run: container_mount,
    },
    Row {
        op: "container umount",
        points: umount::POINTS,
        run: container_umount,
    },
    Row {
        op: "container commit",
        points: &[commit::AFTER_RECORD],
        run: container_commit,
    },
    Row {
        op: "container rm",
        points: REMOVE,
        run: container_rm,
    },
    Row {
        op: "image import",
        // Between these, the layer's create, mount and umount (killed in
        // the rows above).
        points: import::POINTS,
        run: image_import,
    },
    Row {
        op: "image rm",
        points: &[
            image_rm::AFTER_MARK,
            reap::AFTER_UMOUNT,
            reap::AFTER_DISCARD,
            reap::AFTER_DEACTIVATE,
            reap::AFTER_DELETE,
            reap::AFTER_RECORD,
            image_rm::AFTER_LAYER,
        ],
        run: image_rm,
    },
];

/// The containerd calls, killed in `thinlayer serve`
/// ([`crate::containerd`] runs them). The server keeps no spares but in
/// the rows that make and claim them.
pub const CONTAINERD_ROWS: &[(&str, &[Point])] = &[
    ("Prepare", create::POINTS),
    ("View", create::POINTS),
    ("Commit", &[commit::AFTER_RECORD]),
    // A Commit of a snapshot its client still has mounted: the committed
    // layer is a snapshot taken at the commit, one more transaction.
    ("CommitMounted", &commit::TRANSACTION.points()),
    // A Commit that hands thinlayer's mount over as a spare of the
    // committed snapshot: a copy taken at the commit, as above.
    (
        "CommitHandOver",
        &[
            commit::AFTER_INTENT,
            commit::AFTER_READ_ONLY,
            commit::AFTER_MESSAGE,
            commit::AFTER_RECORD,
        ],
    ),
    ("Update", labels::POINTS),
    // The removal's record in the call, its kernel work in the background.
    ("Remove", REMOVE),
    // A spare made in the background after a Prepare on `base`.
    ("PrepareSpare", spare::POINTS),
    // A Prepare that claims a spare.
    ("PrepareClaim", claim::POINTS),
];

/// What the main root holds before the matrix, and holds again after each
/// point: image `app` (a committed layer with files), image `box:1` (two
/// imported layers), container `keep` mounted throughout.
pub struct Baseline {
    keys: BTreeSet<String>,
    images: BTreeSet<String>,
    /// Digest of every committed layer's changes.
    digests: BTreeMap<String, String>,
    import: PathBuf,
    rmme: PathBuf,
}

fn builder_layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut l = LayerBuilder::new();
    for (path, data) in files {
        l.file(path, data, 0o644);
    }
    l.finish()
}

#[test]
fn every_operation_killed_at_every_failpoint_recovers() {
    fixture::run("crash", |fx| {
        let started = Instant::now();
        let base = baseline(fx);
        eprintln!(
            "baseline: {} layers, {} committed, ready in {:.1} s",
            base.keys.len(),
            base.digests.len(),
            started.elapsed().as_secs_f64()
        );
        let started = Instant::now();
        let mut ran = 0;
        for row in ROWS {
            for point in row.points.iter().map(|p| p.name()) {
                let t = Instant::now();
                let killed = kills_during(|| (row.run)(fx, &base, point));
                assert_eq!(
                    killed,
                    [point],
                    "{}: the points at which the row killed thinlayer",
                    row.op
                );
                ran += 1;
                eprintln!(
                    "{}, killed at {point}: recovered ({:.1} s)",
                    row.op,
                    t.elapsed().as_secs_f64()
                );
            }
        }
        println!(
            "crash matrix: {ran} points × operations recovered in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    });
}

#[test]
fn the_crash_matrix_covers_every_failpoint() {
    let every: BTreeSet<Point> = failpoint::ALL
        .iter()
        .flat_map(|op| op.iter().copied())
        .collect();
    let covered: BTreeSet<Point> = ROWS
        .iter()
        .flat_map(|r| r.points.iter())
        .chain(CONTAINERD_ROWS.iter().flat_map(|r| r.1.iter()))
        .copied()
        .collect();
    let missing: Vec<&Point> = every.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "failpoints no test kills at: {missing:?}"
    );
    let unknown: Vec<&Point> = covered.difference(&every).collect();
    assert!(
        unknown.is_empty(),
        "the matrix names no such failpoint: {unknown:?}"
    );
    let pairs = ROWS.iter().map(|r| r.points.len()).sum::<usize>()
        + CONTAINERD_ROWS.iter().map(|r| r.1.len()).sum::<usize>();
    println!(
        "crash matrix: {} failpoints, {pairs} points × operations",
        every.len()
    );
}

thread_local! {
    /// The failpoints at which this thread saw a process killed, in order.
    static KILLS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Notes that a process armed to die at `point` was killed (by SIGKILL,
/// which the failpoint sends itself).
pub fn note_kill(point: &str) {
    KILLS.with(|k| k.borrow_mut().push(point.to_string()));
}

/// Runs `work` and returns the failpoints at which it saw processes killed
/// ([`killed_at`], and `thinlayer serve` in [`crate::containerd`]).
pub fn kills_during(work: impl FnOnce()) -> Vec<String> {
    let before = KILLS.with(|k| k.borrow().len());
    work();
    KILLS.with(|k| k.borrow_mut().split_off(before))
}

/// Runs thinlayer with `THINLAYER_FAILPOINT=point` and insists that it was
/// killed there (a point the command never reaches fails the test).
pub fn killed_at(fx: &Fixture, point: &str, args: &[&str]) {
    let out = fx.cli_env(args, &[("THINLAYER_FAILPOINT", point)]);
    assert_eq!(
        out.status.signal(),
        Some(9),
        "thinlayer {args:?} was to be killed at {point}, ended with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    note_kill(point);
}

/// The records as the last command left them (read, not repaired).
pub fn records(fx: &Fixture) -> Records {
    Store::new(&fx.root).load().expect("records")
}

/// thinlayer's key of the snapshot containerd's namespace `namespace`
/// names `name` (containerd keeps it as `NAMESPACE/N/NAME`); there must be
/// exactly one.
pub fn snapshot_key(fx: &Fixture, namespace: &str, name: &str) -> String {
    let (prefix, suffix) = (format!("{namespace}/"), format!("/{name}"));
    let keys: Vec<String> = records(fx)
        .tree
        .layers
        .into_keys()
        .filter(|k| k.starts_with(&prefix) && k.ends_with(&suffix))
        .collect();
    assert_eq!(keys.len(), 1, "one snapshot {name} in thinlayer: {keys:?}");
    keys.into_iter().next().unwrap()
}

/// The invariants of a root after the next command: nothing pending, the
/// kernel's thin ids are the tree's, and the root's devices, loops and
/// mounts are what its layers need. Returns the records.
pub fn check_root(fx: &Fixture, what: &str) -> Records {
    let rec = records(fx);
    assert!(rec.pending.is_none(), "{what}: pending {:?}", rec.pending);
    assert!(rec.base_ready, "{what}: the base is not finished");
    let tree: BTreeSet<u64> = rec.tree.thin_ids().map(|i| u64::from(i.get())).collect();
    let kernel = fixture::kernel_thin_ids_of(fx);
    // A pending removal's thin id may be gone already (its delete comes
    // before its record); nothing else may differ.
    let removals: BTreeSet<u64> = rec
        .tree
        .removals
        .values()
        .map(|r| u64::from(r.thin_id.get()))
        .collect();
    let missing: BTreeSet<u64> = tree.difference(&kernel).copied().collect();
    assert!(
        kernel.is_subset(&tree) && missing.is_subset(&removals),
        "{what}: kernel thin ids {kernel:?} vs tree {tree:?} (pending removals {removals:?})"
    );

    let name = |id: thinlayer::units::ThinId| thinlayer::thin::dm_name(&fx.prefix, id);
    let pool = format!("{}-pool", fx.prefix);
    let devices: BTreeSet<String> = fx.devices().into_iter().collect();
    let mounted = rec.tree.layers.values().filter(|l| l.mounts > 0);
    let spares = rec.tree.spares.iter().filter(|s| s.mounted);
    let mut needed: BTreeSet<String> = mounted
        .clone()
        .map(|l| l.thin_id)
        .chain(spares.clone().map(|s| s.thin_id))
        .map(name)
        .collect();
    needed.insert(pool.clone());
    // A pinned layer's device may be down (a Commit killed after taking it
    // down): containerd's next Mounts brings it up again. A pending
    // removal's may be up until it is reaped, and a spare's.
    let allowed: BTreeSet<String> = rec
        .tree
        .layers
        .values()
        .filter(|l| l.pinned)
        .map(|l| l.thin_id)
        .chain(rec.tree.removals.values().map(|r| r.thin_id))
        .chain(rec.tree.spares.iter().map(|s| s.thin_id))
        .map(name)
        .chain(needed.iter().cloned())
        .collect();
    assert!(
        needed.is_subset(&devices) && devices.is_subset(&allowed),
        "{what}: devices {devices:?}, needed {needed:?}, allowed {allowed:?}"
    );
    let mounts: BTreeSet<PathBuf> = fx
        .kernel
        .mounts()
        .unwrap()
        .into_iter()
        .map(|m| m.target)
        .filter(|t| t.starts_with(&fx.root))
        .collect();
    let at = |id: thinlayer::units::ThinId| fx.root.join("mnt").join(id.to_string());
    let want: BTreeSet<PathBuf> = mounted
        .map(|l| l.thin_id)
        .chain(spares.map(|s| s.thin_id))
        .map(at)
        .collect();
    let may: BTreeSet<PathBuf> = rec.tree.removals.values().map(|r| at(r.thin_id)).collect();
    assert!(
        want.is_subset(&mounts) && mounts.difference(&want).all(|m| may.contains(m)),
        "{what}: mounts {mounts:?}, wanted {want:?}, of pending removals {may:?}"
    );
    let want: BTreeSet<PathBuf> = [fx.root.join("data"), fx.root.join("metadata")].into();
    assert_eq!(loop_files(fx), want, "{what}: loop devices");
    rec
}

/// The files under the root that loop devices are attached to.
fn loop_files(fx: &Fixture) -> BTreeSet<PathBuf> {
    fx.kernel
        .loop_list()
        .unwrap()
        .into_iter()
        .map(|l| l.backing_file)
        .filter(|f| f.starts_with(&fx.root))
        .collect()
}

/// The digest of a layer's changes against its parent as a layer tar: reads
/// every file the layer added or changed.
pub fn layer_digest(d: &Driver, key: &str) -> String {
    let mut w = DigestWriter::new(std::io::sink());
    d.write_changes(key, &mut w)
        .unwrap_or_else(|e| panic!("content of {key}: {e}"));
    w.finish().1.to_string()
}

/// Every committed layer of the baseline holds the content it had.
pub fn check_content(fx: &Fixture, digests: &BTreeMap<String, String>, what: &str) {
    let d = open(fx);
    for (key, want) in digests {
        assert_eq!(&layer_digest(&d, key), want, "{what}: content of {key}");
    }
}

/// The root, opened in this process.
pub fn open(fx: &Fixture) -> Driver {
    let kernel: Arc<dyn Kernel> = fx.kernel.clone();
    Driver::open(&fx.root, kernel).expect("open the root")
}

fn baseline(fx: &Fixture) -> Baseline {
    fx.init_pool("2G", "16M", Some("256M"), &[]);
    fx.ok(&["container", "create", "scratch", "img"]);
    let mnt = PathBuf::from(fx.ok(&["container", "mount", "img"]).trim());
    write_file(&mnt.join("data.bin"), 512 << 10, 7);
    fs::create_dir(mnt.join("etc")).unwrap();
    fs::write(mnt.join("etc/motd"), "committed content\n").unwrap();
    fx.ok(&["container", "umount", "img"]);
    fx.ok(&["container", "commit", "img", "app"]);

    let archive = |name: &str, layers: Vec<Vec<u8>>| {
        let path = fx.dir.join(format!("{}.tar", name.replace(':', "-")));
        write_oci_archive(&path, name, &layers, Compression::Gzip, true).unwrap();
        path
    };
    let box1 = builder_layer(&[("a", b"box layer one\n"), ("b", &[7u8; 70_000])]);
    let box2 = builder_layer(&[("c", b"box layer two\n")]);
    let boxed = archive("box:1", vec![box1.clone(), box2]);
    fx.ok(&["image", "import", boxed.to_str().unwrap()]);
    // Shares box's bottom layer, adds two: the killed layer has a parent.
    let import = archive(
        "imp:1",
        vec![
            box1,
            builder_layer(&[("imp-1", b"first new layer\n")]),
            builder_layer(&[("imp-2", b"second new layer\n")]),
        ],
    );
    // Two layers of its own, both removed with it.
    let rmme = archive(
        "rmme:1",
        vec![
            builder_layer(&[("r1", b"removed one\n")]),
            builder_layer(&[("r2", b"removed two\n")]),
        ],
    );
    fx.ok(&["container", "create", "app", "keep"]);
    fx.ok(&["container", "mount", "keep"]);

    let rec = check_root(fx, "baseline");
    let d = open(fx);
    let digests: BTreeMap<String, String> = rec
        .tree
        .layers
        .values()
        .filter(|l| l.kind == thinlayer::tree::Kind::Committed)
        .map(|l| (l.key.clone(), layer_digest(&d, &l.key)))
        .collect();
    assert_eq!(digests.len(), 3, "app's layer and box's two");
    assert_eq!(
        digests.values().collect::<BTreeSet<_>>().len(),
        3,
        "each layer has content of its own: {digests:?}"
    );
    Baseline {
        keys: rec.tree.layers.keys().cloned().collect(),
        images: rec.tree.images.keys().cloned().collect(),
        digests,
        import,
        rmme,
    }
}

impl Baseline {
    /// After the next command: the root's invariants, the baseline's
    /// content, and the layers being the baseline's plus `extra`.
    fn recovered(&self, fx: &Fixture, what: &str, extra: &[&str]) -> Records {
        let rec = check_root(fx, what);
        let mut want = self.keys.clone();
        want.extend(extra.iter().map(|k| k.to_string()));
        let have: BTreeSet<String> = rec.tree.layers.keys().cloned().collect();
        assert_eq!(have, want, "{what}: layers");
        check_content(fx, &self.digests, what);
        rec
    }

    fn images_are_the_baselines(&self, rec: &Records, what: &str) {
        let have: BTreeSet<String> = rec.tree.images.keys().cloned().collect();
        assert_eq!(have, self.images, "{what}: images");
    }
}

/// What a reboot does to the root: mounts, devices and the pool gone, the
/// loops detached.
fn reboot(fx: &Fixture) {
    for m in fx.kernel.mounts().unwrap() {
        if m.target.starts_with(&fx.root) {
            fx.kernel.umount(&m.target, false).unwrap();
        }
    }
    for d in fx.devices() {
        fx.kernel.dm_remove(&d, false).unwrap();
    }
    eventually("the pool's loops detach (autoclear)", DEADLINE, || {
        let left = loop_files(fx);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("loops over {left:?}"))
        }
    });
}

fn keep_unmounted_then_remounted(fx: &Fixture, rec: &Records, what: &str) {
    assert_eq!(
        rec.tree.layers["keep"].mounts, 0,
        "{what}: a reboot unmounted keep"
    );
    fx.ok(&["container", "mount", "keep"]);
}

const INIT: &[&str] = &[
    "pool",
    "init",
    "--data-size",
    "1G",
    "--metadata-size",
    "8M",
    "--base-size",
    "128M",
];

/// A fresh root per point. Killed before its records are written, the root
/// is not initialised: commands say so (exit 3) and init runs again from
/// scratch. Killed after, the next command finishes the base device.
fn pool_init(fx: &Fixture, _: &Baseline, point: &str) {
    fx.with_another_root(&point.replace('.', "-"), |r| {
        killed_at(r, point, INIT);
        if r.root.join("state.json").exists() {
            r.ok(&["ps"]);
            let again = r.fails(INIT, 4);
            assert!(again.contains("already"), "{point}: {again}");
        } else {
            let err = r.fails(&["ps"], 3);
            assert!(err.contains("pool init"), "{point}: {err}");
            r.ok(INIT);
        }
        let rec = check_root(r, point);
        assert!(rec.tree.layers.is_empty() && rec.tree.base.is_some());
        r.ok(&["pool", "destroy"]);
        assert!(
            r.kernel
                .dm_list()
                .unwrap()
                .iter()
                .all(|n| !n.starts_with(&r.prefix)),
            "{point}: devices after destroy"
        );
        assert!(
            !r.root.join("data").exists(),
            "{point}: files after destroy"
        );
    });
}

fn pool_activate(fx: &Fixture, base: &Baseline, point: &str) {
    reboot(fx);
    killed_at(fx, point, &["pool", "activate"]);
    fx.ok(&["ps"]);
    let rec = base.recovered(fx, point, &[]);
    keep_unmounted_then_remounted(fx, &rec, point);
}

/// A thin id the records do not know (as an operation of another tool would
/// leave), found on activation and deleted.
fn orphan(fx: &Fixture, base: &Baseline, point: &str) {
    fx.kernel
        .dm_message(&format!("{}-pool", fx.prefix), "create_thin 4000")
        .unwrap();
    pool_activate(fx, base, point);
}

fn container_create(fx: &Fixture, base: &Baseline, point: &str) {
    let create = ["container", "create", "app", "victim"];
    killed_at(fx, point, &create);
    fx.ok(&["ps"]);
    // The intent is durable before the kernel is told: the next command
    // completes the create wherever it was killed.
    base.recovered(fx, point, &["victim"]);
    fx.ok(&["container", "rm", "victim"]);
}

/// Killed while the new layer's filesystem grows (its thin id made, the
/// layer not recorded yet): rolled back whole.
fn container_create_sized(fx: &Fixture, base: &Baseline, point: &str) {
    let create = ["container", "create", "--size", "512M", "app", "victim"];
    killed_at(fx, point, &create);
    fx.ok(&["ps"]);
    base.recovered(fx, point, &[]);
    fx.ok(&create);
    let mnt = PathBuf::from(fx.ok(&["container", "mount", "victim"]).trim());
    let st = nix::sys::statvfs::statvfs(&mnt).unwrap();
    let size = st.blocks() * st.fragment_size();
    assert!(size > 400 << 20, "{point}: grown again to {size} bytes");
    fx.ok(&["container", "rm", "--force", "victim"]);
}

fn container_mount(fx: &Fixture, base: &Baseline, point: &str) {
    fx.ok(&["container", "create", "app", "victim"]);
    killed_at(fx, point, &["container", "mount", "victim"]);
    fx.ok(&["ps"]);
    let rec = base.recovered(fx, point, &["victim"]);
    assert_eq!(rec.tree.layers["victim"].mounts, 0, "{point}: not mounted");
    let mnt = PathBuf::from(fx.ok(&["container", "mount", "victim"]).trim());
    assert!(mnt.join("etc/motd").exists(), "{point}: mounted again");
    fx.ok(&["container", "rm", "--force", "victim"]);
}

fn container_umount(fx: &Fixture, base: &Baseline, point: &str) {
    fx.ok(&["container", "create", "app", "victim"]);
    fx.ok(&["container", "mount", "victim"]);
    killed_at(fx, point, &["container", "umount", "victim"]);
    fx.ok(&["ps"]);
    let rec = base.recovered(fx, point, &["victim"]);
    assert_eq!(rec.tree.layers["victim"].mounts, 0, "{point}: unmounted");
    fx.ok(&["container", "rm", "victim"]);
}

fn container_commit(fx: &Fixture, base: &Baseline, point: &str) {
    fx.ok(&["container", "create", "app", "victim"]);
    killed_at(fx, point, &["container", "commit", "victim", "made"]);
    fx.ok(&["ps"]);
    let rec = check_root(fx, point);
    // Complete: the container became the image's layer.
    assert!(!rec.tree.layers.contains_key("victim"), "{point}");
    let top = &rec.tree.images["made:latest"].top;
    let app = rec.tree.images["app:latest"].top.as_str();
    assert_eq!(rec.tree.layers[top].parent.as_deref(), Some(app), "{point}");
    fx.ok(&["image", "rm", "made"]);
    let rec = base.recovered(fx, point, &[]);
    base.images_are_the_baselines(&rec, point);
}

fn container_rm(fx: &Fixture, base: &Baseline, point: &str) {
    fx.ok(&["container", "create", "app", "victim"]);
    fx.ok(&["container", "mount", "victim"]);
    killed_at(fx, point, &["container", "rm", "--force", "victim"]);
    fx.ok(&["ps"]);
    // Gone once its record is written; its kernel work is finished by the
    // next removal.
    base.recovered(fx, point, &[]);
    fx.ok(&["container", "create", "app", "other"]);
    fx.ok(&["container", "rm", "other"]);
    let rec = base.recovered(fx, point, &[]);
    assert!(
        rec.tree.removals.is_empty(),
        "{point}: pending {:?}",
        rec.tree.removals
    );
}

fn image_import(fx: &Fixture, base: &Baseline, point: &str) {
    let import = ["image", "import", base.import.to_str().unwrap()];
    killed_at(fx, point, &import);
    fx.ok(&["ps"]);
    // Absent: every layer it made is removed, the shared one kept.
    let rec = base.recovered(fx, point, &[]);
    base.images_are_the_baselines(&rec, point);
    fx.ok(&import);
    let rec = check_root(fx, point);
    assert_eq!(
        rec.tree.layers.len(),
        base.keys.len() + 2,
        "{point}: redone"
    );
    fx.ok(&["image", "rm", "imp:1"]);
    let rec = base.recovered(fx, point, &[]);
    base.images_are_the_baselines(&rec, point);
}

fn image_rm(fx: &Fixture, base: &Baseline, point: &str) {
    fx.ok(&["image", "import", base.rmme.to_str().unwrap()]);
    killed_at(fx, point, &["image", "rm", "rmme:1"]);
    fx.ok(&["ps"]);
    // Complete: the name and both its layers are gone, what is left of
    // their kernel work done by the next removal.
    let rec = base.recovered(fx, point, &[]);
    base.images_are_the_baselines(&rec, point);
    fx.ok(&["container", "create", "app", "other"]);
    fx.ok(&["container", "rm", "other"]);
    let rec = base.recovered(fx, point, &[]);
    assert!(rec.tree.removals.is_empty(), "{point}: pending");
}
