//! Start-up repair: whatever a killed command left, the next one settles
//! before doing anything else.
//!
//! In order:
//! 1. the pool is brought up if it is not (after a reboot), with `thin_check`;
//! 2. a pending intent is completed or rolled back, judged by the kernel's
//!    transaction id (see [`crate::records`]);
//! 3. the base filesystem is made if its creation was cut short, and the
//!    base of a pool made by an older thinlayer is emptied when it can be;
//! 4. after a reboot or an interrupted operation, thin ids the kernel has and
//!    the tree does not are deleted; ids the tree has and the kernel lacks
//!    are reported, never silently dropped;
//! 5. device-mapper devices of this root that no layer needs are removed,
//!    and mounts under the root that no layer owns are unmounted; mount
//!    counts of layers that are no longer mounted (a reboot, an unmount by
//!    hand) are reset; after a reboot or an operation that did not finish
//!    (see [`crate::records::RootLock`]), devices left suspended are resumed;
//! 6. layers of an image import or removal that was killed are removed;
//! 7. retired thin ids (the old devices of layers committed while mounted)
//!    whose devices have closed are deleted.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;

use super::Op;
use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::failpoint;
use crate::records::Intent;
use crate::thin::{self, Thins};
use crate::units::{Bytes, ThinId};

impl Op<'_> {
    /// `interrupted`: the previous operation on this root did not finish.
    pub(super) fn reconcile(&mut self, interrupted: bool) -> Result<()> {
        let activated = self.pool().activate()?;
        if activated {
            tracing::info!(pool = self.pool().name(), "pool activated");
        }
        let had_pending = self.rec.pending.is_some();
        let deep = activated || had_pending || interrupted;
        self.settle_pending()?;
        if !self.rec.base_ready {
            tracing::info!("finishing the base device");
            self.make_base()?;
        }
        self.empty_old_base()?;
        if activated || had_pending {
            self.remove_orphans()?;
        }
        if deep {
            if interrupted {
                tracing::info!("the previous operation did not finish; checking every device");
            }
            self.drop_stale_spares()?;
            self.clean_devices()?;
            // Only a killed import leaves its marked layers behind (a
            // failed one removes them).
            self.remove_crashed_imports()?;
        }
        self.delete_retired()
    }

    /// After a crash or a reboot, every spare goes to the pending
    /// removals: it may be half made, or no longer mounted (see the
    /// `spares` module).
    fn drop_stale_spares(&mut self) -> Result<()> {
        if self.rec.tree.spares.is_empty() {
            return Ok(());
        }
        let ids = self.drop_spares_where(|_| true);
        tracing::info!(?ids, "dropping the spares a crash or a reboot left");
        self.save()
    }

    /// Deletes the retired thin ids whose devices are gone: the device of a
    /// layer committed while mounted was handed to the kernel as a deferred
    /// removal, which finishes at its holder's last close. One ioctl per
    /// retired id; none when there are none.
    ///
    /// No intent and no transaction id: a retired id is garbage whichever
    /// way a crash leaves it. Still in the pool, it is deleted by a later
    /// operation; gone from the pool but still recorded, it is dropped
    /// from the records (see [`Op::remove_orphans`]).
    pub(super) fn delete_retired(&mut self) -> Result<()> {
        let mut changed = false;
        for id in self.rec.tree.retired.clone() {
            let name = thin::dm_name(&self.rec.pool.prefix, id);
            if self.kernel().dm_info(&name)?.is_some() {
                continue;
            }
            let size = self.thin_size(id);
            let pool = self.pool();
            match (Thins { pool: &pool }).discard_and_delete(id, size) {
                Ok(_) => {
                    tracing::info!(
                        thin_id = id.get(),
                        "deleted a retired thin id: its device has closed"
                    );
                    self.rec.tree.retired.retain(|r| *r != id);
                    changed = true;
                }
                Err(e) if e.errno() == Some(nix::errno::Errno::EBUSY) => {
                    tracing::debug!(
                        thin_id = id.get(),
                        "a retired thin id is still open; kept for later"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        if changed {
            self.save_atomic()?;
        }
        Ok(())
    }

    /// The length to discard thin device `id` over: its layer's device
    /// size, or for an id no layer holds (retired, orphaned) the largest
    /// any layer or the base has, which covers every block it can map.
    pub(super) fn thin_size(&self, id: ThinId) -> Bytes {
        let layers = self.rec.tree.layers.values();
        match layers.clone().find(|l| l.thin_id == id) {
            Some(l) => l.device_size,
            None => layers
                .map(|l| l.device_size)
                .fold(self.rec.pool.base_size, Bytes::max),
        }
    }

    /// Completes or rolls back the pending intent (see
    /// [`Intent::completes`]); checks the transaction ids agree when there
    /// is none.
    pub(super) fn settle_pending(&mut self) -> Result<()> {
        let Some(intent) = self.rec.pending.clone() else {
            return self.check_transaction();
        };
        if let Some(t) = intent.legacy_transaction() {
            return self.settle_legacy(intent, t);
        }
        if !intent.completes() {
            return self.roll_back_pending();
        }
        tracing::info!(?intent, "completing an interrupted operation");
        let pool = self.pool();
        let thins = Thins { pool: &pool };
        let sent = match &intent {
            Intent::CreateBase { thin_id, .. } => thins.create(*thin_id),
            Intent::CreateLayer { origin, layer, .. } => thins.snapshot(layer.thin_id, *origin),
            Intent::Delete { thin_id, .. } => thins
                .deactivate(*thin_id)
                .and_then(|()| thins.discard_and_delete(*thin_id, self.thin_size(*thin_id)))
                .map(|_| ()),
            Intent::CommitCopy { .. }
            | Intent::CommitHandOver { .. }
            | Intent::CreateSpare { .. } => {
                unreachable!("rolled back above")
            }
        };
        match sent {
            Ok(()) => {}
            Err(e) if e.errno() == Some(Errno::EEXIST) => {}
            Err(e) => {
                tracing::warn!(?intent, error = %e, "cannot complete an interrupted create; rolling it back");
                return self.roll_back_pending();
            }
        }
        self.rec.pending = None;
        self.apply(intent);
        self.save()
    }

    /// Undoes the pending intent: deletes the thin id it creates, if the
    /// pool has it, with whatever device or mount was made of it. A
    /// pending delete is dropped: its thin id, if still there, is an
    /// orphan the next repair after a reboot deletes.
    pub(super) fn roll_back_pending(&mut self) -> Result<()> {
        let Some(intent) = self.rec.pending.clone() else {
            return Ok(());
        };
        if !matches!(intent, Intent::Delete { .. }) {
            let id = intent.thin_id();
            tracing::info!(thin_id = id.get(), "rolling back an interrupted create");
            self.release_grow_mount(id)?;
            // A Commit handing its mount over left it read-only.
            if let Intent::CommitHandOver { origin, .. } = &intent
                && self.kernel().is_mount_point(&self.mount_path_of(*origin))?
            {
                self.remount_own(*origin, false)?;
            }
            let pool = self.pool();
            let thins = Thins { pool: &pool };
            thins.deactivate(id)?;
            thins.delete(id)?;
        }
        self.rec.pending = None;
        self.save()
    }

    /// The pool's transaction id is the records': nothing else moved it.
    fn check_transaction(&self) -> Result<()> {
        let kernel_t = self.pool().kernel_status()?.transaction;
        if kernel_t != self.rec.transaction {
            return Err(Error::Inconsistent {
                pool: self.pool().name(),
                detail: format!(
                    "the pool's transaction id is {kernel_t} but the records expect {}: \
                     something other than thinlayer changed this pool",
                    self.rec.transaction
                ),
            });
        }
        Ok(())
    }

    /// Settles an intent of version 3's records, which moved the pool's
    /// transaction id to `t` once the kernel had done it: the kernel's id
    /// tells whether it did.
    fn settle_legacy(&mut self, intent: Intent, t: u64) -> Result<()> {
        let kernel_t = self.pool().kernel_status()?.transaction;
        if kernel_t == t {
            tracing::info!(
                ?intent,
                "completing an interrupted operation the kernel finished"
            );
            self.rec.pending = None;
            self.apply(intent);
        } else if kernel_t + 1 == t {
            if let Intent::Delete { thin_id, .. } = &intent {
                tracing::info!(thin_id = thin_id.get(), "finishing an interrupted delete");
                let pool = self.pool();
                let thins = Thins { pool: &pool };
                thins.deactivate(*thin_id)?;
                thins.discard_and_delete(*thin_id, self.thin_size(*thin_id))?;
                thins.set_transaction(kernel_t, t)?;
                self.rec.pending = None;
                self.apply(intent);
            } else {
                // Its records are version 3's: the id moves no more.
                self.roll_back_pending()?;
                return Ok(());
            }
        } else {
            return Err(Error::Inconsistent {
                pool: self.pool().name(),
                detail: format!(
                    "an interrupted operation expected transaction id {t}, the pool has {kernel_t}"
                ),
            });
        }
        self.save()
    }

    /// Deletes thin ids the kernel has and the tree does not.
    fn remove_orphans(&mut self) -> Result<()> {
        let kernel_ids: BTreeSet<u32> = self.kernel_mappings()?.into_keys().collect();
        // A retired id deleted by an operation that died before recording
        // it: nothing to keep.
        let gone: Vec<ThinId> = self
            .rec
            .tree
            .retired
            .iter()
            .copied()
            .filter(|id| !kernel_ids.contains(&id.get()))
            .collect();
        if !gone.is_empty() {
            tracing::info!(?gone, "dropping retired thin ids the pool no longer has");
            self.rec.tree.retired.retain(|id| !gone.contains(id));
            self.save_atomic()?;
        }
        let tree_ids: BTreeSet<u32> = self.rec.tree.thin_ids().map(ThinId::get).collect();
        // A pending removal's id may be gone already: its delete is done
        // before its record.
        let missing: Vec<String> = tree_ids
            .difference(&kernel_ids)
            .filter(|id| !self.rec.tree.removals.contains_key(&id.to_string()))
            .map(u32::to_string)
            .collect();
        if !missing.is_empty() {
            return Err(Error::Inconsistent {
                pool: self.pool().name(),
                detail: format!(
                    "thin id(s) {} are recorded but missing from the pool's metadata; \
                     the records were kept as they are",
                    missing.join(", ")
                ),
            });
        }
        for orphan in kernel_ids.difference(&tree_ids) {
            let id = ThinId::new(*orphan)?;
            tracing::warn!(thin_id = orphan, "deleting a thin id no layer owns");
            let intent = Intent::Delete {
                transaction: None,
                key: String::new(),
                thin_id: id,
            };
            let size = self.thin_size(id);
            self.transact(failpoint::orphan::TRANSACTION, intent, |t| {
                t.deactivate(id)?;
                t.discard_and_delete(id, size).map(|_| ())
            })?;
        }
        Ok(())
    }

    /// Removes devices and mounts of this root that no layer needs, and
    /// resumes devices left suspended. Linear in the number of layers,
    /// devices and mounts: it runs only after a crash, a reboot or an
    /// operation that did not finish. The devices and mounts of pending
    /// removals are theirs to take down (see the `removal` module).
    fn clean_devices(&mut self) -> Result<()> {
        let mnt = self.driver.store.root().join(super::MOUNT_DIR);
        let mounts = self.kernel().mounts()?;
        let targets: HashSet<&std::path::Path> =
            mounts.iter().map(|m| m.target.as_path()).collect();
        let mut changed = false;

        let stale: Vec<String> = self
            .rec
            .tree
            .layers
            .values()
            .filter(|l| l.mounts > 0 && !targets.contains(self.mount_path(l).as_path()))
            .map(|l| l.key.clone())
            .collect();
        for key in stale {
            tracing::info!(
                layer = key,
                "layer no longer mounted; resetting its mount count"
            );
            self.rec.tree.get_mut(&key)?.mounts = 0;
            changed = true;
        }
        // Whether each thin id's layer needs its device, and its mounts
        // (a removal's: any it has).
        let tree = &self.rec.tree;
        let by_id: BTreeMap<u32, (bool, u32)> = tree
            .layers
            .values()
            .map(|l| (l.thin_id.get(), (l.mounts > 0 || l.pinned, l.mounts)))
            .chain(
                tree.spares
                    .iter()
                    .map(|s| (s.thin_id.get(), (true, u32::from(s.mounted)))),
            )
            .chain(
                tree.removals
                    .values()
                    .map(|r| (r.thin_id.get(), (true, u32::MAX))),
            )
            .collect();
        for m in mounts
            .iter()
            .filter(|m| m.target.parent() == Some(mnt.as_path()))
        {
            let owner = m
                .target
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok())
                .and_then(|id| by_id.get(&id));
            if owner.is_none_or(|&(_, mounts)| mounts == 0) {
                tracing::warn!(target = %m.target.display(), "unmounting a mount no layer owns");
                self.kernel().umount(&m.target, true)?;
                let _ = fs::remove_dir(&m.target);
            }
        }

        let prefix = self.rec.pool.prefix.clone();
        for name in self.kernel().dm_list()? {
            let Some(id) = thin::parse_dm_name(&prefix, &name) else {
                continue;
            };
            let needed = by_id.get(&id.get()).is_some_and(|&(needed, _)| needed);
            if needed {
                if self.kernel().dm_info(&name)?.is_some_and(|i| i.suspended) {
                    tracing::warn!(device = name, "resuming a device left suspended");
                    self.kernel().dm_resume(&name)?;
                }
            } else {
                tracing::info!(device = name, "removing a device no layer needs");
                thin::deactivate_named(self.kernel(), &name)?;
            }
        }
        if changed {
            self.save_atomic()?;
        }
        Ok(())
    }
}
