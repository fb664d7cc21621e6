//! What the containerd snapshotter service ([`crate::service`]) needs of the
//! driver beyond the CLI's operations: a snapshot made and mounted (or its
//! device made live) in one operation, a commit that carries the new labels
//! in the same record write, and labels that can be replaced and removed,
//! not only added.
//!
//! An active snapshot is mounted by thinlayer itself, under the root, from
//! Prepare until Commit or Remove; its clients bind-mount that directory.
//! A filesystem on a block device has one superblock, and the kernel
//! refuses to mount it read-only while it is mounted read-write (EBUSY):
//! a client that mounted the device itself could not be followed by a
//! second, read-only mount of the same snapshot (containerd's differ does
//! exactly that for `docker commit` of a running container). Bind mounts
//! of one mount can be read-write and read-only side by side, and a
//! read-only one never writes. A view's device is read-only: it is mounted
//! read-only from the device, any number of times.
//!
//! Zeros take no blocks in the layers containerd unpacks either: its
//! applier writes a tar's sparse files out as zeros, so the Commit of a
//! snapshot named as containerd names the ones it unpacks layers into
//! (`extract-…`, its `snapshots.UnpackKeyPrefix`) first makes holes of the
//! all-zero blocks of the files written since the snapshot was prepared
//! ([`crate::layer::punch_zeros`]), and the trim before the unmount gives
//! their blocks back to the pool.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{Driver, Op, Then, grow};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::kernel::Suspend;
use crate::records::Intent;
use crate::tree::{Kind, Layer, validate_key};
use crate::units::ThinId;

impl Driver {
    /// Creates a pinned layer `key` on `parent` (containerd's Prepare for
    /// [`Kind::Active`], View for [`Kind::View`]) and returns it with where
    /// its clients mount it from: an active snapshot is mounted here first.
    ///
    /// An active snapshot claims a spare of `parent` if there is one (see
    /// the `spares` module); otherwise it is made and recorded under the
    /// root's lock, and its device made live and mounted after the lock
    /// is let go, so that other calls go on meanwhile (the first mount of
    /// a fresh filesystem is the slowest step). Its thin id is claimed
    /// meanwhile: nothing else in this process works on its device, and
    /// if the snapshot was removed before its mount is recorded, the mount
    /// is undone and the Prepare fails.
    pub fn create_snapshot(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: BTreeMap<String, String>,
    ) -> Result<(Layer, SnapshotSource)> {
        if kind == Kind::Committed {
            return Err(Error::invalid(
                "snapshot kind",
                "committed",
                "a snapshot is created active or as a view, then committed",
            ));
        }
        validate_key(key)?;
        let mut op = self.begin()?;
        let size = grow::size_label(kind, &labels)?;
        if kind == Kind::Active {
            op.rec.tree.check_new(key, parent)?;
            let (device_size, grow) = op.new_layer_size(parent, size)?;
            if !grow {
                op.check_space()?;
                if let Some(layer) = op.claim_spare(key, parent, device_size, labels.clone()) {
                    let _s = crate::step!("claim");
                    op.save()?;
                    failpoint::hit(failpoint::claim::AFTER_RECORD);
                    let source = SnapshotSource::Mounted(op.mount_path(&layer));
                    return Ok((layer, source));
                }
                // Recorded mounted already: if this process dies before
                // its mount is made, the next look at it (a Mounts, a
                // server's start) finds it unmounted and mounts it.
                let layer = op.create_layer(
                    key,
                    parent,
                    kind,
                    super::LayerOptions {
                        labels,
                        pinned: true,
                        activate_later: true,
                        mounted: true,
                        ..Default::default()
                    },
                )?;
                drop(op);
                return self.mount_new_snapshot(layer);
            }
        }
        // A view, or a grown snapshot: the new layer and its mount count
        // are written once, at the end.
        op.saving_once(|op| {
            let layer = op.create_layer(
                key,
                parent,
                kind,
                super::LayerOptions {
                    labels,
                    pinned: true,
                    size,
                    ..Default::default()
                },
            )?;
            match op.snapshot_source(key) {
                Ok(source) => Ok((layer, source)),
                Err(e) => {
                    // Not left half made: the caller was told it failed.
                    super::undo_failed(
                        "remove the snapshot that failed to mount",
                        op.remove_layer_now(key),
                    );
                    Err(e)
                }
            }
        })
    }

    /// Makes the device of the active snapshot `layer`, just recorded as
    /// mounted, live and mounts it, without the root's lock; then checks
    /// that it is still there (see [`Driver::create_snapshot`]).
    fn mount_new_snapshot(&self, layer: Layer) -> Result<(Layer, SnapshotSource)> {
        let id = layer.thin_id;
        let claim = super::removal::Claim::take(self, id);
        debug_assert!(claim.is_some(), "a new thin id is nobody's");
        let mounted = self.mount_unlocked(id, layer.device_size, failpoint::create::AFTER_ACTIVATE);
        let ours = |rec: &crate::records::Records| {
            rec.tree
                .layers
                .get(&layer.key)
                .is_some_and(|l| l.thin_id == id)
        };
        // Read without the root's lock: a removal is saved before it
        // returns, and nothing here is written.
        let still = self.store.peek(ours)?;
        match mounted {
            Ok(target) if still => Ok((layer, SnapshotSource::Mounted(target))),
            Ok(_) => {
                // Its removal's reap waits for the claim.
                super::undo_failed("unmount a snapshot removed meanwhile", self.umount_id(id));
                drop(claim);
                Err(Error::not_found("layer", &layer.key))
            }
            Err(e) => {
                drop(claim);
                let mut op = self.begin()?;
                if ours(&op.rec) {
                    // Not left half made: the caller was told it failed.
                    super::undo_failed(
                        "remove the snapshot that failed to mount",
                        op.remove_layer_now(&layer.key),
                    );
                }
                Err(e)
            }
        }
    }

    /// Trims the filesystem of the active snapshot `key` now, if thinlayer
    /// holds it mounted, without the root's lock: a fresh mount has
    /// trimmed nothing yet, and the filesystem remembers what it trimmed
    /// while it stays mounted, so the trim at its Commit then goes over
    /// only what was freed since. `serve` does it in the background after
    /// a Prepare on a parent that keeps no spares; a Commit waits for it. It unmaps what the snapshot's
    /// filesystem had free from the start, which its parent's trim left
    /// unmapped already, and what its client freed meanwhile: a discard
    /// thinlayer does not count, whose effect on kept sizes is bounded by
    /// their age (see the `sizes` module).
    pub fn pretrim(&self, key: &str) -> Result<()> {
        let Ok(l) = self.layer(key) else {
            return Ok(());
        };
        let Some(_claim) = super::removal::Claim::take(self, l.thin_id) else {
            return Ok(());
        };
        let target = self.mount_path_of(l.thin_id);
        if l.kind != Kind::Active || l.mounts == 0 || !self.kernel.is_mount_point(&target)? {
            return Ok(());
        }
        let _op = crate::op!("pretrim");
        let _s = crate::step!("trim");
        self.kernel.trim(&target).map(|_| ())
    }

    /// The layer `key` as last recorded, read without the root's lock.
    pub fn layer(&self, key: &str) -> Result<Layer> {
        self.store.peek(|rec| rec.tree.get(key).cloned())?
    }

    /// The layers `keep` picks, as last recorded, read without the root's
    /// lock.
    pub fn layers_where(&self, keep: impl Fn(&Layer) -> bool) -> Result<Vec<Layer>> {
        self.store.peek(|rec| {
            rec.tree
                .layers
                .values()
                .filter(|l| keep(l))
                .cloned()
                .collect()
        })
    }

    /// Where the active snapshot or view `key` is mounted from, mounting or
    /// activating it again if it is not (after a reboot). `None` for a
    /// committed snapshot, which has no mounts. An active snapshot that
    /// thinlayer holds mounted is answered without the root's lock.
    pub fn snapshot_mounts(&self, key: &str) -> Result<Option<SnapshotSource>> {
        let l = self.layer(key)?;
        let target = self.mount_path_of(l.thin_id);
        if l.kind == Kind::Active && l.mounts > 0 && self.kernel.is_mount_point(&target)? {
            return Ok(Some(SnapshotSource::Mounted(target)));
        }
        // Its mount may be on its way (see `create_snapshot`).
        super::removal::Claim::wait_free(self, l.thin_id);
        let mut op = self.begin()?;
        if op.rec.tree.get(key)?.kind == Kind::Committed {
            return Ok(None);
        }
        op.snapshot_source(key).map(Some)
    }

    /// Removes the snapshot `key` (refused while it has children; an
    /// active one never has): one durable record write, after which it is
    /// gone for every caller. Its kernel work, thinlayer's own mount of it
    /// included, is a pending removal: see [`Driver::reap`]. Returns its
    /// thin id.
    pub fn remove_snapshot(&self, key: &str) -> Result<ThinId> {
        let mut op = self.begin()?;
        let l = op.rec.tree.get(key)?;
        // thinlayer's own mount goes with the rest of its kernel work.
        let own = u32::from(l.kind == Kind::Active && l.mounts > 0);
        if l.mounts > own {
            return Err(Error::Busy {
                kind: "layer",
                name: key.to_string(),
                why: format!("mounted {} time(s) through thinlayer", l.mounts - own),
            });
        }
        op.rec.tree.get_mut(key)?.mounts = 0;
        op.rec.tree.check_remove(key)?;
        op.remove_layer(key)
    }

    /// Commits the active layer `key` as the committed layer `name` with
    /// exactly `labels` (containerd's Commit: the active key is consumed and
    /// the committed snapshot gets the labels of the request).
    ///
    /// With `hand_over`, if thinlayer's own mount is the only one of the
    /// snapshot's filesystem (a look at the mount table) and the root has
    /// room for a spare, the committed layer is a snapshot of the device
    /// taken now, its filesystem remounted read-only and clean for it,
    /// then read-write again, and the device stays mounted as a spare of
    /// the committed layer (see the `spares` module): a build or an
    /// unpack prepares its next layer on the one it just committed, and
    /// that Prepare only claims it. No unmount, no device taken down.
    ///
    /// Otherwise thinlayer's own mount goes first; if a client still holds
    /// a bind mount of it, the committed layer is a copy taken now (see the
    /// driver's commit). Either way the layer, its new key and its labels
    /// are written in one record update.
    pub fn commit_snapshot(
        &self,
        key: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        hand_over: bool,
    ) -> Result<Committed> {
        validate_key(name)?;
        // A trim started after its Prepare ends first.
        if let Ok(l) = self.layer(key) {
            super::removal::Claim::wait_free(self, l.thin_id);
        }
        // Before the lock: other operations go on while the files are read.
        let punched = self.punch_unpacked_zeros(key);
        let mut op = self.begin()?;
        if op.rec.tree.layers.contains_key(name) {
            return Err(Error::Exists {
                kind: "layer",
                name: name.to_string(),
            });
        }
        if let Err(e) = punched {
            // Unless the snapshot went meanwhile: the commit says so.
            if op.rec.tree.get(key).is_ok_and(|l| l.mounts > 0) {
                return Err(e);
            }
        }
        if hand_over
            && op.may_hand_over(key)?
            && let Some(layer) = op.commit_handing_over(key, name, labels.clone())?
        {
            failpoint::hit(failpoint::commit::AFTER_RECORD);
            return Ok(Committed { layer, spare: true });
        }
        // The unmount is recorded with the commit.
        let layer = op.saving_once(|op| {
            op.release_snapshot_mount(key, Then::Keep)?;
            // Changed in memory for `commit` to write; put back if it
            // refuses, as the unmount is saved all the same.
            let old = std::mem::replace(&mut op.rec.tree.get_mut(key)?.labels, labels);
            op.commit(key, name).inspect_err(|_| {
                if let Ok(l) = op.rec.tree.get_mut(key) {
                    l.labels = old;
                }
            })
        })?;
        failpoint::hit(failpoint::commit::AFTER_RECORD);
        Ok(Committed {
            layer,
            spare: false,
        })
    }

    /// Changes a layer's labels with `edit` (which may refuse) and saves
    /// them; returns the layer as it now is.
    pub fn edit_labels(
        &self,
        key: &str,
        edit: impl FnOnce(&mut BTreeMap<String, String>) -> Result<()>,
    ) -> Result<Layer> {
        let mut op = self.begin()?;
        let l = op.rec.tree.get_mut(key)?;
        edit(&mut l.labels)?;
        l.updated_ns = super::now_ns();
        let l = l.clone();
        op.save()?;
        failpoint::hit(failpoint::labels::AFTER_RECORD);
        Ok(l)
    }
}

/// Whether `key` names a snapshot containerd unpacks a layer into:
/// `extract-UNIQUE CHAINID` after the metadata store's `NAMESPACE/ID/`.
pub(crate) fn is_unpack_key(key: &str) -> bool {
    key.rsplit('/')
        .next()
        .is_some_and(|k| k.starts_with("extract-"))
}

/// What [`Driver::commit_snapshot`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The committed layer.
    pub layer: Layer,
    /// The snapshot's mount was handed over as a spare of it.
    pub spare: bool,
}

/// Where a containerd client mounts a snapshot from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotSource {
    /// An active snapshot: thinlayer's own mount of its filesystem, to be
    /// bind-mounted, read-write or read-only, as many times as wanted.
    Mounted(PathBuf),
    /// A view: the node of its read-only device, mounted read-only.
    Device(PathBuf),
}

impl Driver {
    /// Makes holes of the zeros written as data into the snapshot `key` if
    /// containerd unpacked a layer into it (see the module's doc) and it is
    /// mounted here. Runs without the root's lock, on the records as last
    /// saved. Fails if the layer's tree cannot be read, or if a punched
    /// file's times cannot be put back (the layer's content would not be
    /// the tar's); the Commit is then refused and the snapshot stays
    /// active.
    fn punch_unpacked_zeros(&self, key: &str) -> Result<()> {
        let rec = self.store.load()?;
        let Some(l) = rec.tree.layers.get(key) else {
            return Ok(());
        };
        if !(is_unpack_key(key) && l.kind == Kind::Active && l.mounts > 0) {
            return Ok(());
        }
        // A second of slack: file times come from a coarser clock than the
        // layer's; a file of the parent read for nothing costs only time.
        let since = l.created_at_ns().saturating_sub(1_000_000_000);
        let root = self.mount_path_of(l.thin_id);
        let started = std::time::Instant::now();
        let _s = crate::step!("punch_zeros");
        let stats = crate::layer::punch_zeros(&root, since)?;
        tracing::debug!(
            key,
            files = stats.files,
            read = stats.read,
            punched = stats.punched,
            skipped = stats.skipped,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "made holes of the zeros of an unpacked layer"
        );
        Ok(())
    }
}

impl Op<'_> {
    /// Mounts an active snapshot (once: thinlayer holds one mount of it,
    /// whoever asks) or activates a view's device.
    fn snapshot_source(&mut self, key: &str) -> Result<SnapshotSource> {
        let l = self.rec.tree.get(key)?.clone();
        let target = self.mount_path(&l);
        if l.kind == Kind::Active && l.mounts > 0 && !self.kernel().is_mount_point(&target)? {
            // Unmounted behind thinlayer's back (by hand, or by a reboot
            // not yet seen): mounted again below.
            tracing::info!(layer = key, "no longer mounted; mounting it again");
            self.rec.tree.get_mut(key)?.mounts = 0;
        }
        let l = self.rec.tree.get(key)?.clone();
        match l.kind {
            Kind::Active if l.mounts > 0 => Ok(SnapshotSource::Mounted(target)),
            Kind::Active => self.mount(key).map(SnapshotSource::Mounted),
            _ => self
                .activate(&l)
                .map(|(dev, _)| SnapshotSource::Device(dev)),
        }
    }

    /// Whether the Commit of the active snapshot `key` may hand its mount
    /// over as a spare (see [`Driver::commit_snapshot`]): thinlayer holds
    /// it mounted, and that mount is the only one of its filesystem (a
    /// client's bind mount left behind would go on writing into what would
    /// become another snapshot), and the root holds fewer than
    /// [`super::MAX_SPARES`] spares.
    fn may_hand_over(&self, key: &str) -> Result<bool> {
        let l = self.rec.tree.get(key)?;
        if l.kind != Kind::Active
            || l.mounts != 1
            || self.rec.tree.spares.len() >= super::MAX_SPARES
        {
            return Ok(false);
        }
        let target = self.mount_path(l);
        if !l.snapshotter || !self.kernel().is_mount_point(&target)? {
            return Ok(false);
        }
        let name = crate::thin::dm_name(&self.rec.pool.prefix, l.thin_id);
        let Some(info) = self.kernel().dm_info(&name)? else {
            return Ok(false);
        };
        let _s = crate::step!("mounts");
        let mounts = self.kernel().mounts()?;
        let of_it = mounts
            .iter()
            .filter(|m| m.devnum == Some(info.devnum))
            .count();
        Ok(of_it == 1)
    }

    /// Commits the active snapshot `key` as `name` with `labels`, handing
    /// its mount over as a spare of it (see [`Driver::commit_snapshot`];
    /// the caller has checked [`Op::may_hand_over`] and that `name` is
    /// free). Returns `None`, with nothing changed, when its filesystem
    /// cannot be made read-only (a file on it is open for writing).
    ///
    /// The filesystem is remounted read-only, which writes it back and
    /// leaves it clean (ext4's journal, xfs's log), then trimmed (a trim
    /// works read-only, and needs no sync of its own then); with nothing
    /// in flight, the device's suspend around `create_snap` need not
    /// freeze it (a freeze waits for three of the kernel's grace
    /// periods). It is remounted read-write before the commit is
    /// recorded; an intent rolled back after a crash remounts it too.
    fn commit_handing_over(
        &mut self,
        key: &str,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Option<Layer>> {
        let l = self.rec.tree.get(key)?.clone();
        let target = self.mount_path(&l);
        // Counted before it is done (see `Op::trim`): it is done inside
        // the transaction, which saves the count with its intent.
        self.rec.trims += 1;
        let mut layer = l.committed_as(name, super::now_ns());
        layer.thin_id = self.allocate_id()?;
        layer.labels = labels;
        let intent = Intent::CommitHandOver {
            key: key.to_string(),
            origin: l.thin_id,
            layer: layer.clone(),
        };
        let (new, origin) = (layer.thin_id, l.thin_id);
        let mut busy = false;
        let committed = self.transact_with(failpoint::commit::TRANSACTION, intent, |op, t| {
            if let Err(e) = op.remount_own(origin, true) {
                busy = e.errno() == Some(nix::errno::Errno::EBUSY);
                return Err(e);
            }
            failpoint::hit(failpoint::commit::AFTER_READ_ONLY);
            // Read-only, all is written back already: no sync before it.
            super::trim_or_warn(op.kernel(), &target);
            let sent = t.snapshot_suspending(new, origin, Suspend::Flush);
            sent.and(op.remount_own(origin, false))
        });
        match committed {
            Ok(()) => Ok(Some(layer)),
            Err(e) if busy => {
                tracing::debug!(key, error = %e, "cannot hand the mount over");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Drops thinlayer's own mount of the active snapshot `key`, if it has
    /// one. Bind mounts of it that clients still hold keep the filesystem
    /// (and the device) open.
    fn release_snapshot_mount(&mut self, key: &str, then: Then) -> Result<()> {
        let l = self.rec.tree.get(key)?;
        if l.kind == Kind::Active && l.mounts > 0 {
            self.umount_then(key, then)?;
        }
        Ok(())
    }
}
