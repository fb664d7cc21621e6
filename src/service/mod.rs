//! containerd's snapshotter API over the driver: `thinlayer serve` answers
//! containerd as a proxy snapshotter plugin (`[proxy_plugins.NAME]`,
//! `type = "snapshot"`) on a unix socket.
//!
//! Every containerd snapshot is a layer of the same tree the CLI works on,
//! under the key containerd gives it (containerd's metadata store sends
//! `NAMESPACE/ID/KEY`), so `thinlayer ps` and `thinlayer tree` show them.
//! Active snapshots and views are *pinned*: their thin device stays live
//! between calls. thinlayer mounts an active snapshot's filesystem itself
//! (under the root's `mnt/`, from Prepare until Commit or Remove) and
//! returns a bind mount of it, so clients can mount it again, read-only
//! beside read-write, as `docker commit` of a running container does; a
//! view is returned as a read-only mount of its device (`ext4` or `xfs` of
//! `/dev/dm-N`).
//!
//! Each call runs the blocking driver operation on tokio's blocking pool;
//! the driver serialises them through the root's lock, with CLI commands.
//!
//! Where thinlayer departs from containerd's reference snapshotters:
//! - `list` returns every snapshot made through this API (Prepare, View and
//!   what they were committed as), whatever its key, and none of the
//!   layers the CLI made ([`Layer::snapshotter`]). containerd's garbage
//!   collector removes every listed snapshot its own metadata does not
//!   know, which would otherwise take the CLI's containers and image layers
//!   with it. Filters follow containerd's syntax (its `filter` module).
//! - `commit` of a snapshot that is still mounted is accepted: the
//!   committed snapshot is a copy taken at that instant, so nothing the
//!   mount's holder writes afterwards reaches it (see the driver's commit).
//! - `usage` gives the exact bytes of the pool blocks the snapshot maps
//!   differently from its parent (whole pool blocks, read from the pool's
//!   metadata) and, for an active snapshot on ext4, the new data its
//!   filesystem holds in the page cache, not written back yet, rounded up
//!   to pool blocks; the inode count is not known at block level and is
//!   reported as 0.
//! - `remove` returns once the removal is recorded; its kernel work is
//!   done in the background ([`Housekeeper`]) and by `clear` (containerd's
//!   Cleanup), which returns once every removal made before it is done
//!   (see the driver's `removal` module).
//! - A Prepare on a parent recently prepared on claims a spare made ahead
//!   (see the driver's `spares` module); `stat`, `list`, `usage` and the
//!   `mounts` of a mounted snapshot read the records without the root's
//!   lock.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::Status;
use containerd_snapshots::{Info, Kind as CKind, Snapshotter, Usage};
use nix::errno::Errno;

pub mod autoextend;
mod filter;
pub mod housekeeper;

pub use filter::{Fields, Filters};
pub use housekeeper::Housekeeper;

use crate::Driver;
use crate::driver::SnapshotSource;
use crate::error::Error;
use crate::fs::FsKind;
use crate::metrics::Metrics;
use crate::tree::{Kind, Layer};

/// The snapshotter: a shared driver, the pool's filesystem, and the
/// metrics every call is counted in.
pub struct Snapshots {
    driver: Arc<Driver>,
    fs: FsKind,
    metrics: Arc<Metrics>,
    keeper: Arc<Housekeeper>,
}

/// Maps a driver error to the gRPC status containerd understands (it turns
/// `NotFound`, `AlreadyExists` and `FailedPrecondition` into its own
/// `errdefs` errors, which its callers test for); the message is the error's
/// own text.
pub fn status(e: Error) -> Status {
    let msg = e.to_string();
    match e {
        Error::NotFound { .. } => Status::not_found(msg),
        Error::Exists { .. } => Status::already_exists(msg),
        Error::Busy { .. } | Error::HasChildren { .. } => Status::failed_precondition(msg),
        Error::Invalid { .. } => Status::invalid_argument(msg),
        Error::CorruptTree { .. }
        | Error::CorruptRecords { .. }
        | Error::Inconsistent { .. }
        | Error::CheckFailed { .. }
        | Error::PoolFailed { .. } => Status::data_loss(msg),
        Error::NoSpace { .. } | Error::PoolMode { .. } => Status::resource_exhausted(msg),
        Error::Kernel {
            errno: Some(Errno::EBUSY),
            ..
        } => Status::failed_precondition(msg),
        Error::Kernel {
            errno: Some(Errno::ENOSPC),
            ..
        } => Status::resource_exhausted(msg),
        _ => Status::internal(msg),
    }
}

/// The mount containerd performs for a snapshot: the filesystem of the
/// pool on the layer's device node, with thinlayer's mount options
/// ([`FsKind::mount_options`]), `noatime`, and `ro` for read-only layers. `target` is
/// empty: containerd chooses where.
pub fn mount_for(fs: FsKind, device: &Path, read_only: bool) -> Mount {
    let mut options: Vec<String> = fs
        .mount_options(read_only)
        .split(',')
        .filter(|o| !o.is_empty())
        .map(str::to_string)
        .collect();
    // As thinlayer mounts them itself (see `Linux::mount`): reading a
    // file must not write its atime into the layer.
    options.insert(0, "noatime".to_string());
    if read_only {
        options.insert(0, "ro".to_string());
    }
    Mount {
        r#type: fs.name().to_string(),
        source: device.display().to_string(),
        target: String::new(),
        options,
    }
}

/// The mount containerd performs for an active snapshot: a recursive bind
/// of thinlayer's own mount of it at `dir`, read-write. The mount's holder
/// may ask for `ro` (containerd's differ adds it): a read-only bind beside a
/// read-write one works, where a second mount of the device would not.
/// `noatime` and the filesystem's options are those of thinlayer's mount,
/// which a bind keeps.
pub fn bind_mount_for(dir: &Path) -> Mount {
    Mount {
        r#type: "bind".to_string(),
        source: dir.display().to_string(),
        target: String::new(),
        options: vec!["rbind".to_string(), "rw".to_string()],
    }
}

/// The mounts containerd performs for a snapshot served from `source`.
fn mounts_of(fs: FsKind, source: &SnapshotSource) -> Vec<Mount> {
    match source {
        SnapshotSource::Mounted(dir) => vec![bind_mount_for(dir)],
        SnapshotSource::Device(dev) => vec![mount_for(fs, dev, true)],
    }
}

/// A layer as containerd's `Info`, its times to the nanosecond.
pub fn info_of(l: &Layer) -> Info {
    Info {
        kind: match l.kind {
            Kind::Active => CKind::Active,
            Kind::View => CKind::View,
            Kind::Committed => CKind::Committed,
        },
        name: l.key.clone(),
        parent: l.parent.clone().unwrap_or_default(),
        labels: l.labels.clone().into_iter().collect(),
        created_at: UNIX_EPOCH + Duration::from_nanos(l.created_at_ns()),
        updated_at: UNIX_EPOCH + Duration::from_nanos(l.updated_at_ns()),
    }
}

/// Applies containerd's Update field paths to `labels`: none, or `labels`,
/// replaces them all with `new`; `labels.KEY` sets KEY to its value in
/// `new`, or removes it when `new` has none. Any other field is immutable.
pub fn update_labels(
    labels: &mut BTreeMap<String, String>,
    new: &HashMap<String, String>,
    fieldpaths: &[String],
) -> crate::Result<()> {
    if fieldpaths.is_empty() {
        *labels = new.clone().into_iter().collect();
        return Ok(());
    }
    for path in fieldpaths {
        if path == "labels" {
            *labels = new.clone().into_iter().collect();
        } else if let Some(k) = path.strip_prefix("labels.") {
            match new.get(k) {
                Some(v) => {
                    labels.insert(k.to_string(), v.clone());
                }
                None => {
                    labels.remove(k);
                }
            }
        } else {
            return Err(Error::invalid(
                "field path",
                path,
                "only labels (`labels` or `labels.KEY`) of a snapshot can be updated",
            ));
        }
    }
    Ok(())
}

/// What containerd's filters see of a layer.
fn fields_of(l: &Layer) -> Fields<'_> {
    Fields {
        kind: l.kind.name(),
        name: &l.key,
        parent: l.parent.as_deref().unwrap_or(""),
        labels: &l.labels,
    }
}

fn parent_of(parent: &str) -> Option<String> {
    (!parent.is_empty()).then(|| parent.to_string())
}

impl Snapshots {
    /// Serves `driver`'s root. Reads the pool's filesystem (blocking).
    /// Starts its background work (see [`housekeeper`]), with the default
    /// number of spares per parent.
    pub fn new(driver: Arc<Driver>) -> crate::Result<Snapshots> {
        Snapshots::with_spares(driver, housekeeper::SPARES)
    }

    /// As [`Snapshots::new`], keeping `spares` spares per parent (0: none).
    pub fn with_spares(driver: Arc<Driver>, spares: usize) -> crate::Result<Snapshots> {
        let fs = driver.records()?.pool.filesystem;
        driver.release_devices_later();
        let keeper = Arc::new(Housekeeper::start(driver.clone(), spares));
        Ok(Snapshots {
            driver,
            fs,
            metrics: Arc::new(Metrics::new()),
            keeper,
        })
    }

    /// The background work; [`Housekeeper::stop`] it when the server stops.
    pub fn housekeeper(&self) -> Arc<Housekeeper> {
        self.keeper.clone()
    }

    /// The metrics this service counts its calls in.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The driver this service serves.
    pub fn driver(&self) -> Arc<Driver> {
        self.driver.clone()
    }

    /// Runs the call `method`, counting its duration and, if it fails, its
    /// gRPC code.
    async fn timed<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let start = Instant::now();
        let _in_flight = self.keeper.call();
        let out = call.await;
        let code = out.as_ref().err().map(|e| format!("{:?}", e.code()));
        self.metrics.observe_call(method, start.elapsed(), code);
        out
    }

    /// Runs the call `what` as a driver operation on the blocking pool,
    /// counted in the metrics.
    async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Driver) -> crate::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        self.timed(what, self.blocking(what, f)).await
    }

    /// Runs a driver operation on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Driver) -> crate::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let driver = self.driver.clone();
        let out = tokio::task::spawn_blocking(move || {
            let _op = crate::op!(what);
            f(&driver)
        })
        .await
        .map_err(|e| Status::internal(format!("{what}: the driver task failed: {e}")))?;
        out.map_err(|e| {
            tracing::info!(call = what, error = %e, "refused");
            status(e)
        })
    }

    async fn create(
        &self,
        what: &'static str,
        kind: Kind,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        tracing::debug!(call = what, key, parent, "request");
        let fs = self.fs;
        let parent = parent_of(&parent);
        // Parents asked for again and again keep spares: not those of the
        // snapshots containerd unpacks layers into, nor sized ones.
        let spares = kind == Kind::Active
            && !crate::driver::is_unpack_key(&key)
            && !labels.contains_key(crate::driver::MAX_SIZE_LABEL);
        let on = parent.clone();
        let trim = (kind == Kind::Active).then(|| (key.clone(), parent.clone()));
        let mounts = self
            .run(what, move |d| {
                let (l, source) =
                    d.create_snapshot(&key, on.as_deref(), kind, labels.into_iter().collect())?;
                tracing::info!(call = what, key, thin_id = %l.thin_id, ?source, "created");
                Ok(mounts_of(fs, &source))
            })
            .await?;
        if let Some((key, on)) = trim {
            self.keeper.trim(key, on);
        }
        if spares {
            self.keeper.prepared(parent);
        }
        Ok(mounts)
    }
}

#[containerd_snapshots::tonic::async_trait]
impl Snapshotter for Snapshots {
    type Error = Status;

    /// Stat: the info of an active, view or committed snapshot, by key or
    /// name (one namespace in thinlayer). NotFound when there is none.
    async fn stat(&self, key: String) -> Result<Info, Status> {
        self.run("stat", move |d| Ok(info_of(&d.layer(&key)?)))
            .await
    }

    /// Update: only labels are mutable. `fieldpaths` empty or `labels`
    /// replaces them all; `labels.KEY` sets or removes one. Any other path
    /// is InvalidArgument. Returns the snapshot's info after the change.
    async fn update(&self, info: Info, fieldpaths: Option<Vec<String>>) -> Result<Info, Status> {
        tracing::debug!(key = info.name, ?fieldpaths, "update");
        self.run("update", move |d| {
            let paths = fieldpaths.unwrap_or_default();
            let l = d.edit_labels(&info.name, |labels| {
                update_labels(labels, &info.labels, &paths)
            })?;
            Ok(info_of(&l))
        })
        .await
    }

    /// Usage: what the snapshot itself uses, its parents' excluded: the
    /// exact bytes of the pool blocks it maps differently from its parent.
    /// Inodes are not counted at block level: always 0.
    ///
    /// An active snapshot (thinlayer holds its filesystem mounted from
    /// Prepare on) also counts the new data its ext4 holds in the page
    /// cache without blocks yet (delayed allocation), rounded up to whole
    /// pool blocks: read afresh at every call (a few bytes of sysfs, no
    /// flush, never kept), so a container's writes show at once, not when
    /// the kernel writes them back (up to 30 s later). A write over blocks
    /// a file already has counts once written back; xfs keeps no such
    /// count, so there only written-back data counts; neither does a view
    /// or a committed snapshot. The driver's sizes module says what the
    /// figure can miss while data is being written back.
    ///
    /// Kubernetes asks this of every snapshot every 10 s, so a call does not
    /// dump the pool's metadata each time ([`Driver::layer_size`]): every
    /// snapshot's figures come from one dump, reused while the pool's status
    /// shows the transaction id, data blocks used and metadata blocks used
    /// it showed just before that dump, the records hold the same layers
    /// (thin ids and parents), and for at most
    /// [`crate::driver::SIZES_MAX_AGE`] (2 s) after that dump finished.
    /// When the pool or the records changed, the dump still answers, for
    /// those 2 s, for a snapshot whose own layer did not: same thin id and
    /// parent, and a live device mapping as many blocks as in the dump (one
    /// status ioctl of that device), or a committed snapshot or view; a new
    /// snapshot or a changed one means a new dump. What moves none of them
    /// (discards freeing as many blocks as writes elsewhere allocate, a
    /// write allocated before the dump and mapped after it, a copy of a
    /// block shared with the parent, which keeps the snapshot's count) can
    /// go unseen for at most those 2 s plus the dump's own duration (the
    /// driver's sizes module has the details). A reused answer costs a
    /// `stat` of the records' files and one status ioctl, without the
    /// root's lock.
    async fn usage(&self, key: String) -> Result<Usage, Status> {
        self.run("usage", move |d| {
            let s = d.layer_size(&key)?;
            Ok(Usage {
                inodes: 0,
                size: i64::try_from(s.size.0).unwrap_or(i64::MAX),
            })
        })
        .await
    }

    /// Mounts: the mounts of an active snapshot or a view (again, e.g. after
    /// a reboot: it is mounted or its device made live if it is not). A
    /// committed snapshot has none: FailedPrecondition.
    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Status> {
        let fs = self.fs;
        self.timed("mounts", async {
            let source = self
                .blocking("mounts", move |d| d.snapshot_mounts(&key))
                .await?;
            match source {
                Some(source) => Ok(mounts_of(fs, &source)),
                None => Err(Status::failed_precondition(
                    "a committed snapshot has no mounts; prepare or view a child of it",
                )),
            }
        })
        .await
    }

    /// Prepare: a writable (active) snapshot `key` on the committed snapshot
    /// `parent` ("" is the empty base), to be mounted from the returned
    /// mounts and later committed or removed. AlreadyExists if `key` is
    /// taken; NotFound if `parent` is missing; InvalidArgument if it is not
    /// committed. The label `containerd.io/snapshot/max-size` (bytes, a
    /// decimal integer; [`crate::driver::MAX_SIZE_LABEL`]) asks for a
    /// device of that size, its filesystem grown to fill it;
    /// InvalidArgument if it is not a positive decimal integer or is below
    /// the parent's size.
    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        self.create("prepare", Kind::Active, key, parent, labels)
            .await
    }

    /// View: as Prepare, but read-only (mounted `ro`); it cannot be
    /// committed, only removed.
    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        self.create("view", Kind::View, key, parent, labels).await
    }

    /// Commit: the active snapshot `key` becomes the committed snapshot
    /// `name`, with the same parent and `labels`; `key` is gone afterwards.
    /// thinlayer's own mount of it goes; a client may still hold a bind
    /// mount of it: the committed snapshot is then a copy taken now, and the
    /// mount keeps the old device until it is unmounted, when thinlayer
    /// deletes it. AlreadyExists if `name` is taken.
    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        tracing::debug!(name, key, "commit");
        let hand_over = self.keeper.keeps_spares();
        let (name, spare) = self
            .run("commit", move |d| {
                let c = d.commit_snapshot(&key, &name, labels.into_iter().collect(), hand_over)?;
                tracing::info!(key, name, thin_id = %c.layer.thin_id, spare = c.spare, "committed");
                Ok((name, c.spare))
            })
            .await?;
        self.keeper.committed(name, spare);
        Ok(())
    }

    /// Remove: an active, view or committed snapshot, thinlayer's mount of
    /// it and its device. FailedPrecondition while other snapshots are built
    /// on it, or while a client still has it mounted.
    async fn remove(&self, key: String) -> Result<(), Status> {
        tracing::debug!(key, "remove");
        self.run("remove", move |d| {
            let id = d.remove_snapshot(&key)?;
            tracing::info!(key, thin_id = %id, "removed");
            Ok(())
        })
        .await?;
        self.keeper.removed();
        Ok(())
    }

    /// Cleanup: the kernel work of every snapshot removed before the call
    /// (see [`Housekeeper`]): returns once their devices, mounts and thin
    /// ids are gone and their blocks discarded, but for those a client
    /// still holds open (logged; freed once released).
    async fn clear(&self) -> Result<(), Status> {
        self.run("clear", move |d| {
            let r = d.reap_all()?;
            if r.held + r.failed > 0 {
                tracing::info!(
                    held = r.held,
                    failed = r.failed,
                    "cleanup: some removals stay pending"
                );
            }
            Ok(())
        })
        .await
    }

    type InfoStream = tokio_stream::Iter<std::vec::IntoIter<Result<Info, Status>>>;

    /// List (containerd's Walk): the snapshots made through this API that
    /// match any of `filters` (containerd's syntax; none: all of them).
    /// The CLI's layers are never listed; see the module documentation.
    /// InvalidArgument for a filter that does not parse.
    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, Status> {
        let infos = self
            .run("list", move |d| {
                let filters = Filters::parse(&filters)?;
                Ok(
                    d.layers_where(|l| l.snapshotter && filters.matches(&fields_of(l)))?
                        .iter()
                        .map(info_of)
                        .collect::<Vec<_>>(),
                )
            })
            .await?;
        Ok(tokio_stream::iter(
            infos.into_iter().map(Ok).collect::<Vec<_>>(),
        ))
    }
}

#[cfg(test)]
mod metrics_tests;
#[cfg(test)]
mod tests;
