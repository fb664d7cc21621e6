//! Test aid: scenarios written once and run on both kernels: on
//! [`crate::kernel::Sim`] by the host's unit tests, on the real kernel in the
//! VM by the device tests (`tests/vm/scenario.rs`). Each checks the same
//! invariants on either ([`World::check_invariants`]). Failures panic, as
//! test helpers do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Driver, ImportLayer};
use crate::kernel::Kernel;
use crate::pool::PoolOptions;
use crate::units::ThinId;

/// One root on one kernel.
pub struct World {
    pub root: PathBuf,
    pub kernel: Arc<dyn Kernel>,
}

#[cfg(any(test, feature = "failpoints"))]
fn image(s: &str) -> crate::tree::ImageRef {
    crate::tree::ImageRef::parse(s).expect("a valid image name")
}

/// Layers to import under `keys`, each labelled with a made-up diff id.
pub fn import_layers(keys: &[&str]) -> Vec<ImportLayer> {
    keys.iter()
        .map(|k| ImportLayer {
            key: k.to_string(),
            labels: BTreeMap::from([(super::DIFF_ID.to_string(), format!("diff-{k}"))]),
        })
        .collect()
}

impl World {
    /// Makes a pool at `root`.
    pub fn new(kernel: Arc<dyn Kernel>, root: &Path, opts: &PoolOptions) -> (World, Driver) {
        let d = Driver::init(root, kernel.clone(), opts).expect("pool init");
        let w = World {
            root: root.to_path_buf(),
            kernel,
        };
        (w, d)
    }

    pub fn open(&self) -> Driver {
        Driver::open(&self.root, self.kernel.clone()).expect("open the root")
    }

    /// Opens the root as `serve` does when it starts, checking everything.
    pub fn open_checked(&self) -> Driver {
        Driver::open_checked(&self.root, self.kernel.clone()).expect("open the root")
    }

    /// The invariants every command must leave: the kernel's thin ids are
    /// the tree's (but that a pending removal's may be gone already),
    /// nothing is pending, the transaction ids agree, and only the devices
    /// and mounts of mounted layers, of spares and of pending removals
    /// exist (a removal's until it is reaped).
    pub fn check_invariants(&self) {
        let d = self.open();
        let rec = d.records().expect("records");
        assert!(
            rec.pending.is_none(),
            "pending intent left: {:?}",
            rec.pending
        );
        let kernel = d.kernel_thin_ids().expect("the pool's thin ids");
        let tree: BTreeSet<u32> = rec.tree.thin_ids().map(ThinId::get).collect();
        let removals: BTreeSet<u32> = rec
            .tree
            .removals
            .values()
            .map(|r| r.thin_id.get())
            .collect();
        assert!(
            kernel.is_subset(&tree),
            "kernel thin ids {kernel:?} vs tree {tree:?}"
        );
        let missing: BTreeSet<u32> = tree.difference(&kernel).copied().collect();
        assert!(
            missing.is_subset(&removals),
            "thin ids missing from the kernel: {missing:?}"
        );
        let status = d.status().expect("pool status");
        assert_eq!(status.transaction_id, rec.transaction);
        let mounted = rec.tree.layers.values().filter(|l| l.mounts > 0).count();
        let spares = rec.tree.spares.iter().filter(|s| s.mounted).count();
        let mounts: Vec<_> = self
            .kernel
            .mounts()
            .expect("mounts")
            .into_iter()
            .filter(|m| m.target.starts_with(&self.root))
            .collect();
        let removed = |target: &std::path::Path| {
            target
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|id| removals.contains(&id))
        };
        let (of_removals, others): (Vec<_>, Vec<_>) =
            mounts.iter().partition(|m| removed(&m.target));
        assert_eq!(others.len(), mounted + spares, "mounts: {mounts:?}");
        let devices: Vec<String> = self
            .kernel
            .dm_list()
            .expect("devices")
            .into_iter()
            .filter(|n| n.starts_with(&rec.pool.prefix))
            .collect();
        let removal_devices = devices
            .iter()
            .filter_map(|n| crate::thin::parse_dm_name(&rec.pool.prefix, n))
            .filter(|id| removals.contains(&id.get()))
            .count();
        assert!(of_removals.len() <= removal_devices, "mounts: {mounts:?}");
        assert_eq!(
            devices.len(),
            1 + mounted + spares + removal_devices,
            "devices: {devices:?}"
        );
    }

    /// [`World::check_invariants`], and no removal is pending either.
    pub fn check_reaped(&self) {
        self.check_invariants();
        let rec = self.open().records().expect("records");
        assert!(
            rec.tree.removals.is_empty(),
            "pending: {:?}",
            rec.tree.removals
        );
    }
}

/// Four threads share one handle, each creating, mounting, unmounting
/// and removing every other one of its ten containers.
pub fn threads_share_one_handle(w: &World, d: Driver) {
    let d = Arc::new(d);
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let d = d.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let name = format!("t{t}-{i}");
                    d.create_container(&name, None).unwrap();
                    d.mount(&name).unwrap();
                    d.umount(&name).unwrap();
                    if i % 2 == 0 {
                        d.remove(&name, false).unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a worker thread panicked");
    }
    assert_eq!(d.tree().unwrap().layers.len(), 20);
    w.check_invariants();
}

/// Every driver operation stopped at each of its failpoints, in turn, on a
/// fresh pool that `make` returns: the next handle finds the operation
/// complete or absent, the invariants hold, and the root works again. The
/// operation stops where a crash would, by a panic at the armed point (see
/// [`crate::failpoint`]). Each pool is destroyed afterwards. Returns how
/// many points were reached.
#[cfg(any(test, feature = "failpoints"))]
pub fn crash_at_every_step(make: &mut dyn FnMut() -> (World, Driver)) -> usize {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use crate::failpoint::{
        Point, claim, commit, create, grow, image_rm, import, mount, reap, remove, spare, umount,
    };
    type Step = fn(&Driver);
    let ops: Vec<(&str, &[Point], Step)> = vec![
        ("create", create::POINTS, |d| {
            d.create_container("new", Some(&image("app"))).unwrap();
        }),
        // A container larger than its image: its filesystem is grown
        // before it is recorded.
        ("grow", grow::POINTS, |d| {
            let size = Some(crate::units::Bytes(
                d.records().unwrap().pool.base_size.0 * 2,
            ));
            d.create_container_sized("new", Some(&image("app")), size)
                .unwrap();
        }),
        ("remove", remove::POINTS, |d| {
            d.remove("victim", false).unwrap()
        }),
        ("reap", reap::POINTS, |d| d.remove("victim", false).unwrap()),
        // A spare of the image, as `serve` makes them.
        ("spare", spare::POINTS, |d| {
            let top = d.tree().unwrap().images["app:latest"].top.clone();
            assert!(d.make_spare(Some(&top), 1).unwrap());
        }),
        // A Prepare on the image that claims the spare made for it.
        ("claim", claim::POINTS, |d| {
            let top = d.tree().unwrap().images["app:latest"].top.clone();
            assert!(d.make_spare(Some(&top), 1).unwrap());
            let (l, _) = d
                .create_snapshot(
                    "ns/1/new",
                    Some(&top),
                    crate::tree::Kind::Active,
                    Default::default(),
                )
                .unwrap();
            assert_eq!(l.mounts, 1);
        }),
        ("mount", mount::POINTS, |d| {
            d.mount("victim").unwrap();
        }),
        ("umount", umount::POINTS, |d| d.umount("mounted").unwrap()),
        ("image-rm", image_rm::POINTS, |d| {
            d.remove_image(&image("spare")).unwrap()
        }),
        ("commit", commit::POINTS, |d| {
            d.commit("victim", &image("made")).unwrap();
        }),
        // `import.after-apply` has a test of its own:
        // `a_crashed_import_is_removed_by_the_next_command`.
        (
            "import",
            &[
                import::AFTER_CREATE,
                import::AFTER_MOUNT,
                import::AFTER_COMMIT,
                import::AFTER_LAYERS,
            ],
            |d| {
                d.import_image(
                    &image("imp:1"),
                    &import_layers(&["i1"]),
                    None,
                    |_, _| Ok(()),
                )
                .unwrap();
            },
        ),
    ];
    let mut crashed = 0;
    for (name, points, op) in &ops {
        for &point in *points {
            let (w, d) = make();
            d.create_container("base", None).unwrap();
            d.commit("base", &image("app")).unwrap();
            d.create_container("spare-src", None).unwrap();
            d.commit("spare-src", &image("spare")).unwrap();
            d.create_container("victim", Some(&image("app"))).unwrap();
            d.create_container("mounted", Some(&image("app"))).unwrap();
            d.mount("mounted").unwrap();
            let before = d.records().unwrap();
            crate::failpoint::arm(point);
            let result = catch_unwind(AssertUnwindSafe(|| op(&d)));
            crate::failpoint::disarm();
            drop(d);
            if result.is_ok() {
                w.open().destroy().expect("destroy the pool");
                continue; // this operation has no such step
            }
            crashed += 1;
            if matches!(*name, "spare" | "claim") {
                // The server's own work: the next server's start repairs it.
                drop(w.open_checked());
            }
            w.check_invariants();
            // The interrupted operation is complete or absent.
            let after = w.open().records().unwrap();
            match *name {
                // The intent is durable before the kernel is told: a crash
                // after it completes the create.
                "create" => assert!(after.tree.layers.contains_key("new"), "{point}"),
                "spare" => assert!(
                    after.tree.spares.is_empty(),
                    "{point}: spares do not outlive a crash"
                ),
                "claim" => {
                    let claimed = after.tree.layers.get("ns/1/new");
                    assert_eq!(claimed.is_some(), point == claim::AFTER_RECORD, "{point}");
                    assert!(
                        after.tree.spares.is_empty(),
                        "{point}: spares do not outlive a crash"
                    );
                }
                "reap" => assert!(!after.tree.layers.contains_key("victim"), "{point}"),
                "grow" => assert!(
                    !after.tree.layers.contains_key("new"),
                    "{point}: a layer whose grow was cut short is rolled back"
                ),
                "remove" => {
                    let gone = !after.tree.layers.contains_key("victim")
                        || !after.tree.images.contains_key("spare:latest");
                    assert!(gone || before == after, "{point}: half done");
                }
                "image-rm" => {
                    let spare = &before.tree.images["spare:latest"].top;
                    assert!(
                        !after.tree.images.contains_key("spare:latest")
                            && !after.tree.layers.contains_key(spare),
                        "{point}: the image and its layer are gone"
                    );
                }
                "commit" => assert_ne!(
                    after.tree.layers.contains_key("victim"),
                    after.tree.images.contains_key("made:latest"),
                    "{point}: the container or the image"
                ),
                "import" => assert!(
                    !after.tree.images.contains_key("imp:1")
                        && !after.tree.layers.contains_key("i1"),
                    "{point}: nothing of the import is left"
                ),
                _ => {}
            }
            // And the root is fully usable again; a removal takes what
            // the crash left pending with it.
            let d = w.open();
            d.create_container("afterwards", Some(&image("app")))
                .unwrap();
            d.remove("afterwards", false).unwrap();
            w.check_reaped();
            d.destroy().expect("destroy the pool");
        }
    }
    crashed
}
