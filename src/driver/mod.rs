//! The driver: the snapshot tree, the records and the pool, kept in step.
//!
//! A [`Driver`] is a handle on one root. Every operation takes the root's
//! lock, reads the records, makes sure the pool is live and that no earlier
//! operation was left half done (see the `reconcile` module), then does its
//! work; but `check` and `repair`, for a pool that may not come up, do
//! their work first and that repair after it, and [`Driver::layer_size`]
//! answers without the lock while the figures it keeps are current. The
//! handle keeps nothing between operations but layer sizes, checked against
//! the kernel before each use (see the `sizes` module), so several handles,
//! threads and processes share a root safely.

mod content;
mod df;
mod grow;
mod images;
mod maintenance;
mod reconcile;
mod removal;
#[cfg(any(test, feature = "testing"))]
pub mod scenarios;
mod service;
mod sizes;
mod spares;
mod watch;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use content::{BLOB, DIFF_ID, IMPORTING, ImportLayer, ImportedLayer};
pub use df::{ContainerUsage, DiskUsage, HostFile, ImageUsage, PoolSpace, UsageSummary};
pub use grow::MAX_SIZE_LABEL;
pub use images::{ExportedImage, ImportedImage, Progress};
pub use removal::Reaped;
pub(crate) use service::is_unpack_key;
pub use service::{Committed, SnapshotSource};
pub use sizes::{LayerSize, SIZES_MAX_AGE};
pub use spares::MAX_SPARES;
pub use watch::{AutoextendWatch, LayerCounts, PoolCondition, PoolReading};

use crate::error::{Error, Result};
use crate::failpoint;
use crate::kernel::{Kernel, MountRequest};
use crate::pool::{self, Pool, PoolMode, PoolOptions, PoolStatus};
use crate::records::{Durability, Intent, Records, RootLock, Store};
use crate::thin::Thins;
use crate::tree::{Image, ImageRef, Kind, Layer, Tree, validate_container_name};
use crate::units::{Bytes, ThinId};

/// Where mount points live under the root.
const MOUNT_DIR: &str = "mnt";

/// What becomes of a layer after its unmount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    Keep,
    Remove,
}

/// A handle on one root.
pub struct Driver {
    store: Store,
    kernel: Arc<dyn Kernel>,
    sizes: sizes::SizesCache,
    /// Thin ids a thread of this process is working on outside the root's
    /// lock (see the `removal` module).
    claimed: std::sync::Mutex<std::collections::HashSet<u32>>,
    /// Devices no layer needs any more, left up for a background thread
    /// to take down (`None`: taken down at once; see
    /// [`Driver::release_devices_later`]).
    idle: std::sync::Mutex<Option<Vec<ThinId>>>,
}

/// One operation in progress: the lock is held and the records are current.
struct Op<'a> {
    driver: &'a Driver,
    rec: Records,
    lock: RootLock,
    /// Whether the root was settled (reconciled) when the operation began.
    settled: bool,
    /// Atomic saves wait for the end of [`Op::saving_once`].
    deferred: bool,
    /// A deferred atomic save is owed.
    unsaved: bool,
    /// The next operation must check every device and mount (this one
    /// left a device up that no layer needs).
    check_next: bool,
}

impl Drop for Op<'_> {
    /// An operation that returns, with its result or a handled error, has
    /// cleaned up after itself; one that panics has not, one whose start-up
    /// repair failed has not, and one killed never gets here: the next
    /// operation then checks everything. So does one that owes a save
    /// (see [`Op::saving_once`]).
    fn drop(&mut self) {
        if self.settled && !self.unsaved && !self.check_next && !std::thread::panicking() {
            self.lock.set_busy(false);
        }
    }
}

/// Reports a step that undoes part of a failed operation and itself failed.
/// The caller returns the operation's own error; what the undo left (a
/// device, a loop, files) is taken down by the next operation's
/// reconciliation, or by running the operation again.
fn undo_failed(what: &str, undo: Result<()>) {
    if let Err(e) = undo {
        tracing::warn!(undo = what, error = %e, "cannot undo a step of a failed operation");
    }
}

fn now() -> u64 {
    now_ns() / 1_000_000_000
}

/// Nanoseconds since the epoch.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What `ps` shows of a container.
#[derive(Clone, Debug, Serialize)]
pub struct ContainerInfo {
    pub name: String,
    pub image: Option<String>,
    pub kind: Kind,
    pub thin_id: ThinId,
    pub mount: Option<PathBuf>,
    pub created: u64,
    /// The size of its block device: what `df` inside shows, filesystem
    /// overhead aside.
    pub device_size: Bytes,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub size: Option<LayerSize>,
}

/// What a new layer is made with, beyond its key, parent and kind.
#[derive(Clone, Debug, Default)]
struct LayerOptions {
    /// The image a container is made from, as the user named it.
    image: Option<String>,
    labels: BTreeMap<String, String>,
    /// Its device is kept active between commands (see
    /// [`Driver::create_layer`]).
    pinned: bool,
    /// Its device's size, when larger than its parent's (see
    /// [`Driver::create_container_sized`]).
    size: Option<Bytes>,
    /// A pinned layer's device is made live later, by the caller, outside
    /// the root's lock.
    activate_later: bool,
    /// Recorded with thinlayer's own mount, which the caller makes.
    mounted: bool,
}

impl Driver {
    /// Makes a new pool under `root` with its base device, and returns a handle.
    pub fn init(root: &Path, kernel: Arc<dyn Kernel>, opts: &PoolOptions) -> Result<Driver> {
        kernel.check()?;
        opts.validate()?;
        let store = Store::new(root);
        store.create_root()?;
        let lock = store.lock()?;
        if store.exists() {
            return Err(Error::AlreadyInitialized {
                root: root.to_path_buf(),
            });
        }
        let config = pool::config_for(root, opts);
        let driver = Driver {
            store,
            kernel,
            sizes: Default::default(),
            claimed: Default::default(),
            idle: Default::default(),
        };
        let p = Pool {
            kernel: &*driver.kernel,
            config: &config,
        };
        // Without records, nothing here holds a layer: a pool device or pool
        // files are what an init killed before its records left. Take them
        // down, so that init can simply be run again.
        p.deactivate()?;
        p.remove_files()?;
        if let Err(e) = p.create(opts) {
            // Nothing was recorded: take back what was made.
            undo_failed("deactivate the new pool", p.deactivate());
            undo_failed("remove the new pool's files", p.remove_files());
            return Err(e);
        }
        failpoint::hit(failpoint::init::AFTER_POOL);
        lock.set_busy(true);
        let mut op = Op {
            driver: &driver,
            rec: Records::new(config),
            lock,
            settled: true,
            deferred: false,
            unsaved: false,
            check_next: false,
        };
        let made = (|| {
            // The pool's transaction id is ours from now on; a pool someone
            // else made (LVM) may have its own, which we adopt.
            op.rec.transaction = op.pool().kernel_status()?.transaction;
            op.save()?;
            failpoint::hit(failpoint::init::AFTER_RECORDS);
            op.make_base()
        })();
        if let Err(e) = made {
            // A pool that never became usable is taken down whole, so that
            // `pool init` can simply be run again.
            if let Err(cleanup) = op.destroy() {
                tracing::error!(error = %cleanup, "could not take down the half-made pool");
            }
            return Err(e);
        }
        drop(op);
        Ok(driver)
    }

    /// Opens an existing root: activates the pool if needed and repairs
    /// whatever an interrupted command left.
    pub fn open(root: &Path, kernel: Arc<dyn Kernel>) -> Result<Driver> {
        let driver = Driver::open_offline(root, kernel)?;
        drop(driver.begin()?);
        failpoint::hit(failpoint::activate::AFTER_RECONCILE);
        Ok(driver)
    }

    /// As [`Driver::open`], checking every device and mount whatever the
    /// last operation left: for `thinlayer serve`'s start. A server does
    /// part of its work outside the root's lock (the mount of a new
    /// snapshot, the making of a spare), so one killed there left nothing
    /// that tells the next operation to look; the next server looks.
    pub fn open_checked(root: &Path, kernel: Arc<dyn Kernel>) -> Result<Driver> {
        let driver = Driver::open_offline(root, kernel)?;
        drop(driver.begin_with(true)?);
        failpoint::hit(failpoint::activate::AFTER_RECONCILE);
        Ok(driver)
    }

    /// A handle that does not bring the pool up: for `check` and `repair`,
    /// which work on a pool that may not come up.
    pub fn open_offline(root: &Path, kernel: Arc<dyn Kernel>) -> Result<Driver> {
        kernel.check()?;
        let driver = Driver {
            store: Store::new(root),
            kernel,
            sizes: Default::default(),
            claimed: Default::default(),
            idle: Default::default(),
        };
        if !driver.store.exists() {
            return Err(Error::NotInitialized {
                root: root.to_path_buf(),
            });
        }
        Ok(driver)
    }

    pub fn root(&self) -> &Path {
        self.store.root()
    }

    /// From now on, devices that no layer needs any more after an
    /// operation (a committed containerd snapshot's) are left up for
    /// [`Driver::release_idle_devices`] to take down, off the operation's
    /// path: for `serve`, whose background thread calls it. A device left
    /// up when the process dies is taken down by the next operation that
    /// finds the root was left by a crash.
    pub fn release_devices_later(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get_or_insert_with(Vec::new);
    }

    /// Takes down the devices left up by [`Driver::release_devices_later`]
    /// that no layer has come to need since. Returns how many.
    pub fn release_idle_devices(&self) -> Result<usize> {
        let ids = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            match idle.as_mut() {
                Some(ids) if !ids.is_empty() => std::mem::take(ids),
                _ => return Ok(0),
            }
        };
        let _op = crate::op!("release");
        let op = self.begin()?;
        let pool = op.pool();
        let thins = Thins { pool: &pool };
        let mut n = 0;
        for id in ids {
            let needed = op
                .rec
                .tree
                .layers
                .values()
                .any(|l| l.thin_id == id && (l.pinned || l.mounts > 0));
            if !needed && !thins.is_open(id)? {
                thins.deactivate(id)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Where the layer of thin id `id` is mounted.
    fn mount_path_of(&self, id: ThinId) -> PathBuf {
        self.store.root().join(MOUNT_DIR).join(id.to_string())
    }

    /// Makes the device of thin id `id` (`size` bytes) live read-write and
    /// mounts its filesystem where a layer of that id is mounted, device
    /// nodes allowed, as a containerd snapshot is; returns the mount
    /// point. Without the root's lock: for a new layer or spare whose
    /// record the caller holds claimed (see the `removal` module's
    /// `Claim`), so that nothing else works on its device meanwhile.
    fn mount_unlocked(
        &self,
        id: ThinId,
        size: Bytes,
        after_activate: failpoint::Point,
    ) -> Result<PathBuf> {
        let config = self.store.peek(|rec| rec.pool.clone())?;
        let pool = Pool {
            kernel: &*self.kernel,
            config: &config,
        };
        let (dev, _) = Thins { pool: &pool }.activate(id, size, false)?;
        failpoint::hit(after_activate);
        let target = self.mount_path_of(id);
        fs::create_dir_all(&target).map_err(|e| Error::io("create mount point", &target, e))?;
        let fs = config.filesystem;
        let _s = crate::step!("mount");
        self.kernel.mount(&MountRequest {
            source: &dev,
            target: &target,
            fstype: fs.name(),
            read_only: false,
            nodev: false,
            data: fs.mount_options(false),
        })?;
        Ok(target)
    }

    /// Takes the lock, reads the records, brings the pool up and settles any
    /// interrupted operation.
    fn begin(&self) -> Result<Op<'_>> {
        self.begin_with(false)
    }

    /// [`Driver::begin`]; `check` checks every device and mount even if
    /// the last operation finished well.
    fn begin_with(&self, check: bool) -> Result<Op<'_>> {
        let lock = {
            let _s = crate::step!("lock");
            self.store.lock()?
        };
        let rec = {
            let _s = crate::step!("load");
            self.store.load()?
        };
        let interrupted = check || lock.interrupted();
        lock.set_busy(true);
        let mut op = Op {
            driver: self,
            rec,
            lock,
            settled: false,
            deferred: false,
            unsaved: false,
            check_next: false,
        };
        {
            let _s = crate::step!("reconcile");
            op.reconcile(interrupted)?;
        }
        op.settled = true;
        Ok(op)
    }

    /// Takes the lock and reads the records, and nothing more: for work on a
    /// pool that may not come up (check, repair).
    fn begin_unreconciled(&self) -> Result<Op<'_>> {
        let lock = self.store.lock()?;
        let rec = self.store.load()?;
        lock.set_busy(true);
        Ok(Op {
            driver: self,
            rec,
            lock,
            settled: true,
            deferred: false,
            unsaved: false,
            check_next: false,
        })
    }

    /// The pool's state as the kernel reports it.
    pub fn status(&self) -> Result<PoolStatus> {
        let op = self.begin()?;
        op.status()
    }

    /// Brings the pool up if it is down (after a reboot) and repairs what
    /// an interrupted operation left: what every operation does first (see
    /// the `reconcile` module), and nothing more. It does not say whether
    /// anything had to be done.
    pub fn activate(&self) -> Result<()> {
        self.begin().map(|_| ())
    }

    /// The thin ids the pool's metadata holds, from a dump of a metadata
    /// snapshot: for tests comparing the kernel with the tree.
    #[cfg(any(test, feature = "testing"))]
    pub fn kernel_thin_ids(&self) -> Result<std::collections::BTreeSet<u32>> {
        Ok(self.begin()?.kernel_mappings()?.into_keys().collect())
    }

    /// The records as they stand.
    pub fn records(&self) -> Result<Records> {
        Ok(self.begin()?.rec.clone())
    }

    /// Every layer.
    pub fn tree(&self) -> Result<Tree> {
        Ok(std::mem::take(&mut self.begin()?.rec.tree))
    }

    /// Creates a container from an image (`None`: from the empty base).
    pub fn create_container(&self, name: &str, image: Option<&ImageRef>) -> Result<Layer> {
        self.create_container_sized(name, image, None)
    }

    /// Creates a container from an image (`None`: from the empty base)
    /// whose device is `size` bytes (rounded up to whole pool blocks), its
    /// filesystem grown to fill it; `None` or the image's own size: the
    /// image's device size. A size below the image's is refused
    /// ([`Error::Invalid`]) before anything changes. Containers and image
    /// layers made from it later are at least as large.
    pub fn create_container_sized(
        &self,
        name: &str,
        image: Option<&ImageRef>,
        size: Option<Bytes>,
    ) -> Result<Layer> {
        validate_container_name(name)?;
        let mut op = self.begin()?;
        let (parent, image_name) = match image {
            Some(r) => {
                let img = op.image(r)?;
                (Some(img.top.clone()), r.to_string())
            }
            None => (None, "scratch".to_string()),
        };
        op.create_layer(
            name,
            parent.as_deref(),
            Kind::Active,
            LayerOptions {
                image: Some(image_name),
                size,
                ..LayerOptions::default()
            },
        )
    }

    /// Creates a layer of `kind` under `key` (a snapshot key, see
    /// [`crate::tree::validate_key`]) on `parent`, or on the empty base when
    /// `None`, with `labels`; it is not mounted. A `pinned` layer's device is
    /// activated at once and kept up between commands, also while the layer
    /// is not mounted, and its mounts allow device nodes. The containerd
    /// service makes its snapshots with [`Driver::create_snapshot`] instead,
    /// which also mounts an active one.
    pub fn create_layer(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: BTreeMap<String, String>,
        pinned: bool,
    ) -> Result<Layer> {
        crate::tree::validate_key(key)?;
        let mut op = self.begin()?;
        op.create_layer(
            key,
            parent,
            kind,
            LayerOptions {
                labels,
                pinned,
                ..LayerOptions::default()
            },
        )
    }

    /// Mounts a layer under the root (reference counted) and returns the path.
    pub fn mount(&self, key: &str) -> Result<PathBuf> {
        let mut op = self.begin()?;
        op.mount(key)
    }

    /// Drops one mount reference; the last one trims a writable layer's
    /// filesystem (the blocks its files freed go back to the pool, see
    /// [`crate::fs`]), unmounts it and, unless it is pinned, takes its
    /// device down.
    pub fn umount(&self, key: &str) -> Result<()> {
        let mut op = self.begin()?;
        op.umount(key)
    }

    /// Makes the layer's device live and returns its node, for a mount done
    /// by someone else. The device of a layer that is neither mounted nor
    /// pinned is one no layer needs: the next operation checks every
    /// device and takes it down.
    pub fn activate_layer(&self, key: &str) -> Result<PathBuf> {
        let mut op = self.begin()?;
        let l = op.rec.tree.get(key)?.clone();
        op.check_next = !(l.pinned || l.mounts > 0);
        op.activate(&l).map(|(p, _)| p)
    }

    /// Removes a layer. `force` unmounts it first. The blocks it held alone
    /// are discarded before its thin id is deleted: they go back to the
    /// pool and, through its data device, to the host, before this returns
    /// (see the `removal` module); so does what other removals left
    /// pending.
    pub fn remove(&self, key: &str, force: bool) -> Result<()> {
        let mut op = self.begin()?;
        if force {
            while op.rec.tree.get(key)?.mounts > 0 {
                op.umount_then(key, Then::Remove)?;
            }
        }
        let l = op.rec.tree.check_remove(key)?.clone();
        // Its space must come back before this returns: refused while
        // something else holds its device, before anything changes.
        if op.is_open(&l)? {
            return Err(Error::Busy {
                kind: "layer",
                name: key.to_string(),
                why: "its device is still open elsewhere (a mount in another namespace?); \
                      retry once it is released"
                    .into(),
            });
        }
        let id = op.remove_layer(key)?;
        op.reap_now(&[id])?;
        // And what others left pending (a crash, a server stopped early).
        let others: Vec<ThinId> = op.rec.tree.removals.values().map(|r| r.thin_id).collect();
        if !others.is_empty()
            && let Err(e) = op.reap_now(&others)
        {
            tracing::info!(error = %e, "other removals stay pending");
        }
        Ok(())
    }

    /// Turns a container into a committed image layer named `image`. The
    /// container must not be mounted: its filesystem must be clean.
    pub fn commit(&self, key: &str, image: &ImageRef) -> Result<Layer> {
        self.begin()?.commit_as_image(key, image)
    }

    /// Commits the active layer `key` as the committed layer `new_key`,
    /// keeping its labels, without naming an image. Refused while the layer
    /// is mounted. A pinned layer whose device is held open elsewhere is
    /// committed as a snapshot of it taken now (see `Op::commit`). The
    /// containerd service's Commit is [`Driver::commit_snapshot`], which
    /// releases thinlayer's own mount first and sets the request's labels.
    pub fn commit_layer(&self, key: &str, new_key: &str) -> Result<Layer> {
        crate::tree::validate_key(new_key)?;
        let mut op = self.begin()?;
        op.commit(key, new_key)
    }

    /// Removes an image name, and the layers only it used.
    pub fn remove_image(&self, image: &ImageRef) -> Result<()> {
        let mut op = self.begin()?;
        let name = image.to_string();
        op.image(image)?;
        let users = op.rec.tree.image_users(&name);
        if !users.is_empty() {
            return Err(Error::Busy {
                kind: "image",
                name,
                why: format!("used by container(s) {}", users.join(", ")),
            });
        }
        let doomed = op.rec.tree.unreferenced_below(&name);
        // The name and its layers go in one record write; a removal cut
        // short after it is finished by whoever reaps next.
        let mut ids = Vec::new();
        for key in &doomed {
            ids.push(op.queue_removal(key)?);
        }
        op.rec.tree.images.remove(&name);
        op.save()?;
        failpoint::hit(failpoint::image_rm::AFTER_MARK);
        for id in ids {
            op.reap_now(&[id])?;
            failpoint::hit(failpoint::image_rm::AFTER_LAYER);
        }
        Ok(())
    }

    /// Containers and views, with their sizes when `sizes` is set.
    pub fn containers(&self, sizes: bool) -> Result<Vec<ContainerInfo>> {
        let op = self.begin()?;
        let figures = if sizes { Some(op.sizes()?) } else { None };
        Ok(op
            .rec
            .tree
            .layers
            .values()
            .filter(|l| l.kind != Kind::Committed)
            .map(|l| ContainerInfo {
                name: l.key.clone(),
                image: l.image.clone(),
                kind: l.kind,
                thin_id: l.thin_id,
                mount: (l.mounts > 0).then(|| op.mount_path(l)),
                created: l.created,
                device_size: l.device_size,
                size: figures.as_ref().and_then(|f| f.get(&l.key).cloned()),
            })
            .collect())
    }

    /// Sizes of every layer: exact from the pool's metadata, plus, for an
    /// active layer thinlayer holds mounted, the new data its filesystem
    /// has not written back yet (see the `sizes` module).
    pub fn sizes(&self) -> Result<BTreeMap<String, LayerSize>> {
        self.begin()?.sizes()
    }

    /// Tears everything down: devices, mounts, the pool (when thinlayer made
    /// it; otherwise every thin id it made is deleted), files and records.
    pub fn destroy(self) -> Result<()> {
        let mut op = self.begin()?;
        op.destroy()
    }
}

impl Op<'_> {
    fn kernel(&self) -> &dyn Kernel {
        &*self.driver.kernel
    }

    /// The pool's status, with what the records know of it.
    fn status(&self) -> Result<PoolStatus> {
        let tree = &self.rec.tree;
        let mut st = self.pool().status(tree.thin_ids().count())?;
        st.pending_removals = tree.removals.len();
        st.spares = tree.spares.len();
        Ok(st)
    }

    fn pool(&self) -> Pool<'_> {
        Pool {
            kernel: self.kernel(),
            config: &self.rec.pool,
        }
    }

    /// Saves the records durably, with any deferred atomic save.
    fn save(&mut self) -> Result<()> {
        let _s = crate::step!("save_durable");
        self.driver.store.save(&self.rec, Durability::Durable)?;
        self.unsaved = false;
        Ok(())
    }

    /// Saves the records atomically, without waiting for the directory:
    /// for changes that a power cut may undo (see [`Durability::Atomic`]).
    /// Within [`Op::saving_once`], deferred to its end.
    fn save_atomic(&mut self) -> Result<()> {
        if self.deferred {
            self.unsaved = true;
            return Ok(());
        }
        let _s = crate::step!("save");
        self.driver.store.save(&self.rec, Durability::Atomic)?;
        self.unsaved = false;
        Ok(())
    }

    /// Runs `steps`, an operation of several steps (make a layer, then
    /// mount it), with their atomic saves folded into one at the end
    /// instead of one after each step; made whether or not the steps
    /// succeeded, as what they did must be recorded either way. The steps'
    /// error comes first. Safe for the reason an atomic save is: a save that
    /// never happens, as after a kill or a power cut between the steps,
    /// leaves what the next operation's reconciliation repairs (a finished
    /// transaction redone from its durable intent and the pool's transaction
    /// id; mount counts checked against the mounts).
    fn saving_once<T>(&mut self, steps: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.deferred = true;
        let done = steps(self);
        self.deferred = false;
        let saved = if self.unsaved {
            self.save_atomic()
        } else {
            Ok(())
        };
        let done = done?;
        saved.map(|()| done)
    }

    fn image(&self, r: &ImageRef) -> Result<&Image> {
        self.rec
            .tree
            .images
            .get(&r.to_string())
            .ok_or_else(|| Error::not_found("image", r.to_string()))
    }

    /// Where the base device is mounted while it is read or prepared.
    fn base_mount_path(&self) -> PathBuf {
        self.driver.store.root().join(MOUNT_DIR).join("base")
    }

    /// Makes the mount point and mounts the pool's filesystem from `dev`
    /// on it, with thinlayer's options for that filesystem, `nodev`.
    fn mount_fs(&self, dev: &Path, target: &Path, read_only: bool) -> Result<()> {
        self.mount_fs_with(dev, target, read_only, true)
    }

    /// As [`Op::mount_fs`]; device nodes on it can be opened unless `nodev`.
    fn mount_fs_with(&self, dev: &Path, target: &Path, read_only: bool, nodev: bool) -> Result<()> {
        fs::create_dir_all(target).map_err(|e| Error::io("create mount point", target, e))?;
        let fs = self.rec.pool.filesystem;
        self.kernel().mount(&MountRequest {
            source: dev,
            target,
            fstype: fs.name(),
            read_only,
            nodev,
            data: fs.mount_options(read_only),
        })
    }

    /// Unmounts `target`, retrying EBUSY for up to a second: a process
    /// forked elsewhere holds copies of every open file until it execs, so
    /// a mount whose files were just closed can be busy for a moment.
    fn umount_settled(&self, target: &Path) -> Result<()> {
        for _ in 0..20 {
            match self.kernel().umount(target, false) {
                Err(e) if e.errno() == Some(nix::errno::Errno::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
        self.kernel().umount(target, false)
    }

    fn mount_path(&self, l: &Layer) -> PathBuf {
        self.mount_path_of(l.thin_id)
    }

    /// Where the layer of thin id `id` is mounted.
    fn mount_path_of(&self, id: ThinId) -> PathBuf {
        self.driver.mount_path_of(id)
    }

    /// Remounts thinlayer's own mount of thin id `id` (an active snapshot
    /// or a spare, mounted as [`Driver::mount_unlocked`] mounts them)
    /// read-only or read-write again.
    fn remount_own(&self, id: ThinId, read_only: bool) -> Result<()> {
        let fs = self.rec.pool.filesystem;
        let target = self.mount_path_of(id);
        let request = MountRequest {
            source: Path::new("none"),
            target: &target,
            fstype: fs.name(),
            read_only,
            nodev: false,
            data: fs.mount_options(false),
        };
        let _s = if read_only {
            crate::step!("remount_ro")
        } else {
            crate::step!("remount_rw")
        };
        self.kernel().remount(&request)
    }

    /// Runs one change of the pool's thin ids under the protocol of
    /// [`crate::records`]: intent, kernel message, record, with a failpoint
    /// after each (`points`).
    fn transact(
        &mut self,
        points: failpoint::Transaction,
        intent: Intent,
        send: impl FnOnce(&Thins<'_>) -> Result<()>,
    ) -> Result<()> {
        self.transact_with(points, intent, |_, thins| send(thins))
    }

    /// As [`Op::transact`], with the operation at hand in `send`, which may
    /// do more than send the message: if it fails, the thin id is deleted
    /// again and whatever `send` left of it taken down.
    fn transact_with(
        &mut self,
        points: failpoint::Transaction,
        intent: Intent,
        send: impl FnOnce(&Op<'_>, &Thins<'_>) -> Result<()>,
    ) -> Result<()> {
        debug_assert!(self.rec.pending.is_none());
        let durable = intent.durable_result();
        self.rec.pending = Some(intent);
        self.save()?;
        failpoint::hit(points.after_intent);
        let sent = {
            let pool = self.pool();
            let thins = Thins { pool: &pool };
            send(self, &thins)
        };
        if let Err(e) = sent {
            // The message or a step after it failed: nothing of it stays.
            if let Err(again) = self.roll_back_pending() {
                tracing::error!(error = %again, "could not undo a failed operation; the next command will retry");
            }
            return Err(e);
        }
        failpoint::hit(points.after_message);
        let intent = self.rec.pending.take().expect("set above");
        self.apply(intent);
        // An atomic record is enough where a crash completes the intent
        // from its durable copy (see `Intent::completes`).
        if durable {
            self.save()?;
        } else {
            self.save_atomic()?;
        }
        failpoint::hit(points.after_record);
        Ok(())
    }

    /// Records the effect of an intent the kernel has carried out.
    fn apply(&mut self, intent: Intent) {
        if let Some(t) = intent.legacy_transaction() {
            self.rec.transaction = t;
        }
        match intent {
            Intent::CreateBase { thin_id, .. } => self.rec.tree.base = Some(thin_id),
            Intent::CreateLayer { layer, .. } => {
                self.rec.tree.layers.insert(layer.key.clone(), layer);
            }
            Intent::CommitCopy {
                key, origin, layer, ..
            } => {
                self.rec.tree.layers.remove(&key);
                self.rec.tree.layers.insert(layer.key.clone(), layer);
                self.rec.tree.retired.push(origin);
            }
            Intent::CommitHandOver { key, origin, layer } => {
                self.rec.tree.layers.remove(&key);
                self.rec.tree.spares.push(crate::tree::Spare {
                    thin_id: origin,
                    parent: Some(layer.key.clone()),
                    device_size: layer.device_size,
                    mounted: true,
                });
                self.rec.tree.layers.insert(layer.key.clone(), layer);
            }
            Intent::CreateSpare { spare, .. } => self.rec.tree.spares.push(spare),
            Intent::Delete { key, thin_id, .. } => {
                self.rec.tree.layers.remove(&key);
                self.rec.tree.images.retain(|_, i| i.top != key);
                self.rec.tree.retired.retain(|id| *id != thin_id);
            }
        }
    }

    fn allocate_id(&mut self) -> Result<ThinId> {
        let tree = &self.rec.tree;
        self.rec.ids.allocate_among(|| tree.thin_ids())
    }

    /// Creates the base device and its empty filesystem.
    fn make_base(&mut self) -> Result<()> {
        if self.rec.tree.base.is_none() {
            let id = self.allocate_id()?;
            let intent = Intent::CreateBase {
                transaction: None,
                thin_id: id,
            };
            self.transact(failpoint::base::TRANSACTION, intent, |t| t.create(id))?;
        }
        let id = self.rec.tree.base.expect("made above");
        let pool = self.pool();
        let thins = Thins { pool: &pool };
        let (dev, _) = thins.activate(id, self.rec.pool.base_size, false)?;
        let (program, args) = self.rec.pool.filesystem.mkfs();
        let made = self
            .kernel()
            .mkfs(&dev, program, &args)
            .and_then(|()| self.empty_base_root(&dev));
        let down = thins.deactivate(id);
        made?;
        down?;
        failpoint::hit(failpoint::base::AFTER_MKFS);
        self.rec.base_ready = true;
        self.rec.base_empty = true;
        self.save()
    }

    /// Empties the root of the base's fresh filesystem of what mkfs put
    /// there (ext4's `lost+found`; xfs makes nothing) and sets the root's
    /// times to the epoch. Every layer then starts from an empty directory,
    /// as containerd's clients expect of a snapshot with no parent (its
    /// conformance suite compares one with an empty directory), and every
    /// pool's base holds the same tree, so an image imported onto any pool
    /// has the same content. ext4 needs no `lost+found` to mount or check:
    /// e2fsck makes one when it has something to put there.
    fn empty_base_root(&self, dev: &Path) -> Result<()> {
        let target = self.base_mount_path();
        self.mount_fs(dev, &target, false)?;
        let emptied = empty_dir(&target).and_then(|()| self.kernel().reset_times(&target));
        let down = self.umount_settled(&target);
        let _ = fs::remove_dir(&target);
        emptied.and(down)
    }

    /// Empties the base of a pool made before bases were made empty (its
    /// root still holds ext4's `lost+found`), once no layer is built
    /// directly on it: those layers hold the old base's entries as part of
    /// their parent, and their diffs are taken against it. Until then each
    /// operation looks again (a scan of the records, no kernel call).
    pub(super) fn empty_old_base(&mut self) -> Result<()> {
        if self.rec.base_empty || !self.rec.base_ready {
            return Ok(());
        }
        if self.rec.tree.layers.values().any(|l| l.parent.is_none()) {
            tracing::debug!("the base keeps its lost+found while layers are built on it");
            return Ok(());
        }
        let Some(id) = self.rec.tree.base else {
            return Ok(());
        };
        tracing::info!("emptying the root of a base made by an older thinlayer");
        let pool = self.pool();
        let thins = Thins { pool: &pool };
        let (dev, _) = thins.activate(id, self.rec.pool.base_size, false)?;
        let emptied = self.empty_base_root(&dev);
        let down = thins.deactivate(id);
        emptied?;
        down?;
        self.rec.base_empty = true;
        self.save()
    }

    /// Refuses new layers when the pool is not writable or nearly full.
    fn check_space(&self) -> Result<()> {
        let _s = crate::step!("check_space");
        let st = self.pool().kernel_status()?;
        if st.mode != PoolMode::ReadWrite {
            return Err(Error::PoolMode {
                pool: self.pool().name(),
                mode: st.mode.as_str().to_string(),
                detail: "no new layers until it is read-write again (free space, `pool grow`, or `pool repair`)"
                    .into(),
            });
        }
        let min = u64::from(self.rec.pool.min_free_percent);
        for (what, used, total) in [
            ("data", st.data_used, st.data_total),
            ("metadata", st.meta_used, st.meta_total),
        ] {
            let free = total.saturating_sub(used);
            if free * 100 < total * min {
                return Err(Error::NoSpace {
                    what,
                    detail: format!(
                        "{free} of {total} {what} blocks free, below the {min}% kept in reserve; \
                         remove containers or images, or grow the pool"
                    ),
                });
            }
        }
        Ok(())
    }

    fn create_layer(
        &mut self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        opts: LayerOptions,
    ) -> Result<Layer> {
        let LayerOptions {
            image,
            labels,
            pinned,
            size,
            activate_later,
            mounted,
        } = opts;
        let origin = self.rec.tree.check_new(key, parent)?;
        if kind == Kind::View && parent.is_none() && self.rec.tree.base.is_none() {
            return Err(Error::not_found("base layer", "(pool not initialised)"));
        }
        let (device_size, grow) = self.new_layer_size(parent, size)?;
        self.check_space()?;
        let thin_id = self.allocate_id()?;
        let at = now_ns();
        let layer = Layer {
            key: key.to_string(),
            kind,
            thin_id,
            parent: parent.map(str::to_string),
            device_size,
            created: at / 1_000_000_000,
            created_ns: at,
            updated_ns: 0,
            // Pinned layers are the snapshotter API's: containerd mounts
            // their devices itself.
            snapshotter: pinned,
            image,
            labels,
            mounts: u32::from(mounted),
            pinned,
        };
        let intent = Intent::CreateLayer {
            transaction: None,
            origin,
            layer: layer.clone(),
            grow,
        };
        self.transact_with(failpoint::create::TRANSACTION, intent, |op, t| {
            t.snapshot(thin_id, origin)?;
            if grow {
                op.grow_new_layer(t, &layer)?;
            }
            Ok(())
        })?;
        if pinned && !activate_later {
            self.activate(&layer)?;
            failpoint::hit(failpoint::create::AFTER_ACTIVATE);
        }
        Ok(layer)
    }

    fn activate(&self, l: &Layer) -> Result<(PathBuf, crate::kernel::DmInfo)> {
        let pool = self.pool();
        Thins { pool: &pool }.activate(l.thin_id, l.device_size, l.kind.read_only())
    }

    /// Takes down the device of thin id `id`, which no layer needs any
    /// more, now or later (see [`Driver::release_devices_later`]).
    fn release_device(&self, id: ThinId) -> Result<()> {
        let mut idle = self.driver.idle.lock().unwrap_or_else(|e| e.into_inner());
        match idle.as_mut() {
            Some(later) => {
                later.push(id);
                Ok(())
            }
            None => {
                drop(idle);
                let pool = self.pool();
                Thins { pool: &pool }.deactivate(id)
            }
        }
    }

    /// Unmounts what spares and pending removals hold mounted (their
    /// devices go with everything else's).
    fn umount_others(&self) -> Result<()> {
        let tree = &self.rec.tree;
        let others: Vec<ThinId> = (tree.spares.iter().map(|s| s.thin_id))
            .chain(tree.removals.values().map(|r| r.thin_id))
            .collect();
        for id in others {
            self.driver.umount_id(id)?;
        }
        Ok(())
    }

    /// Whether the layer's device is live and held open (by a mount, a
    /// process).
    fn is_open(&self, l: &Layer) -> Result<bool> {
        let pool = self.pool();
        Thins { pool: &pool }.is_open(l.thin_id)
    }

    fn deactivate(&self, l: &Layer) -> Result<()> {
        let pool = self.pool();
        Thins { pool: &pool }.deactivate(l.thin_id)
    }

    fn mount(&mut self, key: &str) -> Result<PathBuf> {
        let l = self.rec.tree.get(key)?.clone();
        let target = self.mount_path(&l);
        if l.mounts == 0 {
            let (dev, _) = self.activate(&l)?;
            failpoint::hit(failpoint::mount::AFTER_ACTIVATE);
            // A containerd snapshot is a container's root, as on any
            // snapshotter: its device nodes must work.
            let nodev = !l.snapshotter;
            let _s = crate::step!("mount");
            if let Err(e) = self.mount_fs_with(&dev, &target, l.kind.read_only(), nodev) {
                let _ = fs::remove_dir(&target);
                if !l.pinned {
                    undo_failed("deactivate the layer's device", self.deactivate(&l));
                }
                return Err(e);
            }
            failpoint::hit(failpoint::mount::AFTER_MOUNT);
        }
        self.rec.tree.get_mut(key)?.mounts += 1;
        // Mount counts do not outlive a reboot.
        self.save_atomic()?;
        Ok(target)
    }

    fn umount(&mut self, key: &str) -> Result<()> {
        self.umount_then(key, Then::Keep)
    }

    /// [`Op::umount`]; the last unmount of a writable layer trims its
    /// filesystem first unless the layer is about to be removed (whose
    /// whole device is discarded then).
    fn umount_then(&mut self, key: &str, then: Then) -> Result<()> {
        let l = self.rec.tree.get(key)?.clone();
        if l.mounts == 0 {
            return Err(Error::invalid("layer", key, "it is not mounted"));
        }
        if l.mounts == 1 {
            let target = self.mount_path(&l);
            let trim = !l.kind.read_only() && then == Then::Keep;
            if trim {
                self.trim(&target);
            }
            let unmounted = {
                let _s = crate::step!("umount");
                self.umount_settled(&target)
            };
            if unmounted.is_err() && trim {
                // The trim's count must reach the records all the same.
                undo_failed("record the trim", self.save_atomic());
            }
            unmounted.map_err(|e| {
                if e.errno() == Some(nix::errno::Errno::EBUSY) {
                    Error::Busy {
                        kind: "layer",
                        name: key.to_string(),
                        why: format!("{} is in use by a process", target.display()),
                    }
                } else {
                    e
                }
            })?;
            failpoint::hit(failpoint::umount::AFTER_UMOUNT);
            let _ = fs::remove_dir(&target);
            if !l.pinned {
                self.deactivate(&l)?;
                failpoint::hit(failpoint::umount::AFTER_DEACTIVATE);
            }
        }
        self.rec.tree.get_mut(key)?.mounts -= 1;
        self.save_atomic()
    }

    /// Gives the blocks the filesystem mounted at `target` has freed back to
    /// the pool, before its last unmount (see [`crate::fs`]: batched
    /// trimming, not online discard). A trim that fails costs only space
    /// until the next one: it is logged, and the unmount goes ahead.
    fn trim(&mut self, target: &Path) {
        if trim_or_warn(self.kernel(), target) {
            // Mappings changed without a new transaction id: kept sizes
            // must not answer for them (see the `sizes` module).
            self.rec.trims += 1;
        }
    }

    /// Commits container `key` as the top layer of a new image named
    /// `image` (see [`Driver::commit`]).
    fn commit_as_image(&mut self, key: &str, image: &ImageRef) -> Result<Layer> {
        let image = image.to_string();
        let new_key = format!(
            "commit-{:016x}",
            now() << 24 | u64::from(self.rec.tree.get(key)?.thin_id.get())
        );
        // Named in memory first, so the commit's one record write carries
        // the image too: a crash leaves the container or the image, never a
        // layer without a name (`commit` saves nothing if it refuses).
        self.rec.tree.images.insert(
            image.clone(),
            Image {
                name: image.clone(),
                top: new_key.clone(),
                created: now(),
                config: None,
            },
        );
        let layer = self.commit(key, &new_key)?;
        failpoint::hit(failpoint::commit::AFTER_RECORD);
        Ok(layer)
    }

    /// Commits the active layer `key` as the committed layer `new_key`.
    ///
    /// A layer whose device nobody holds open becomes the committed layer in
    /// place: its record is renamed, and a pinned layer's device (the only
    /// kind left up between commands) is taken down first. A pinned layer
    /// whose device is still open (containerd commits snapshots its clients
    /// may still have mounted) cannot be frozen that way, since the holder
    /// could go on writing into what is now an image layer. Its committed
    /// layer is instead a snapshot of it taken at this instant: the device is
    /// suspended around `create_snap`, which freezes the filesystem on it
    /// (the kernel's suspend syncs and freezes a mounted filesystem unless
    /// told to skip that), so the copy holds a clean filesystem. The old
    /// device and thin id are left to the holder and retired: deleted once
    /// the device has closed (see [`Op::delete_retired`]).
    fn commit(&mut self, key: &str, new_key: &str) -> Result<Layer> {
        let l = self.rec.tree.get(key)?.clone();
        if l.kind != Kind::Active {
            return Err(Error::invalid(
                "layer",
                key,
                "only a writable (active) layer can be committed",
            ));
        }
        if l.mounts > 0 {
            return Err(Error::Busy {
                kind: "layer",
                name: key.to_string(),
                why: "mounted; unmount it before committing".into(),
            });
        }
        if self.rec.tree.layers.contains_key(new_key) {
            return Err(Error::Exists {
                kind: "layer",
                name: new_key.to_string(),
            });
        }
        let mut layer = l.committed_as(new_key, now_ns());
        let open = {
            let pool = self.pool();
            l.pinned && (Thins { pool: &pool }).is_open(l.thin_id)?
        };
        if open {
            layer.thin_id = self.allocate_id()?;
            self.commit_copy(key, l.thin_id, &layer)?;
            // The holder keeps the device; it goes at its last close.
            self.deactivate(&l)?;
            return Ok(layer);
        }
        if l.pinned {
            // Nobody holds it open: nobody writes to it. Taking the device
            // down waits for the kernel (a grace period or two); see
            // `Driver::release_devices_later`.
            self.release_device(l.thin_id)?;
        }
        self.rec.tree.layers.remove(key);
        self.rec
            .tree
            .layers
            .insert(new_key.to_string(), layer.clone());
        self.save()?;
        Ok(layer)
    }

    /// Commits the active layer `key`, of thin id `origin`, as `layer`, a
    /// snapshot of it taken now under a new thin id: the device is
    /// suspended around the `create_snap`, which freezes a filesystem
    /// mounted on it, so the copy is clean. `origin` is retired.
    fn commit_copy(&mut self, key: &str, origin: ThinId, layer: &Layer) -> Result<()> {
        let new = layer.thin_id;
        let intent = Intent::CommitCopy {
            transaction: None,
            key: key.to_string(),
            origin,
            layer: layer.clone(),
        };
        self.transact(failpoint::commit::TRANSACTION, intent, |t| {
            t.snapshot(new, origin)
        })
    }

    fn tag(&mut self, image: &str, key: &str, config: Option<serde_json::Value>) -> Result<()> {
        self.rec.tree.images.insert(
            image.to_string(),
            Image {
                name: image.to_string(),
                top: key.to_string(),
                created: now(),
                config,
            },
        );
        self.save()
    }

    fn destroy(&mut self) -> Result<()> {
        for key in self.rec.tree.mounted() {
            while self.rec.tree.get(&key)?.mounts > 0 {
                self.umount_then(&key, Then::Remove)?;
            }
        }
        self.umount_others()?;
        let pool = self.pool();
        let thins = Thins { pool: &pool };
        let ids: Vec<ThinId> = self.rec.tree.thin_ids().collect();
        for id in &ids {
            thins.deactivate(*id)?;
        }
        if self.rec.pool.owns_pool() {
            pool.deactivate()?;
            pool.remove_files()?;
        } else {
            // Someone else's pool: give back every id we made, newest first.
            for id in ids.iter().rev() {
                thins.discard_and_delete(*id, self.thin_size(*id))?;
            }
        }
        let _ = fs::remove_dir(self.driver.store.root().join(MOUNT_DIR));
        self.driver.store.remove()
    }
}

/// Trims the filesystem mounted at `target` (see [`Op::trim`]); a failure
/// is logged. Returns whether it trimmed.
fn trim_or_warn(kernel: &dyn Kernel, target: &Path) -> bool {
    let _s = crate::step!("trim");
    match kernel.trim(target) {
        Ok(bytes) => {
            tracing::debug!(target = %target.display(), bytes = bytes.0, "trimmed before unmounting");
            true
        }
        Err(e) => {
            tracing::warn!(
                target = %target.display(),
                error = %e,
                "cannot trim before unmounting: the blocks its files freed stay with the layer"
            );
            false
        }
    }
}

/// Removes everything inside `dir`, leaving `dir` itself.
fn empty_dir(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
    for entry in entries {
        let path = entry
            .map_err(|e| Error::io("read directory", dir, e))?
            .path();
        let removed = if path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|e| Error::io("remove", &path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
