//! Spares: snapshots made ahead of the Prepares that will want them.
//!
//! A Prepare of a writable snapshot costs a `create_snap` (a commit of the
//! pool's metadata), a device made live and, above all, the first mount of
//! a fresh filesystem, which writes its superblock (a pool block copied, a
//! flush, another metadata commit). Containers are mostly made from a few
//! images, again and again: so `thinlayer serve` keeps, for the parents it
//! has recently been asked for again, a few [`Spare`]s already made, live and
//! mounted under the root, and a Prepare on such a parent only claims one:
//! a record write, nothing asked of the kernel.
//!
//! A Commit through the snapshotter API also leaves one (see
//! [`Driver::commit_snapshot`]): the committed layer is a snapshot of the
//! device taken at the Commit, and the device itself, still mounted, is
//! recorded as a spare of it, for the next layer of a build or an unpack.
//!
//! A spare is not a layer: it has no key, is never listed, counted in no
//! size, and nothing can be built on it. It holds a thin id and, once
//! mounted, a pool block or two. At most [`MAX_SPARES`] exist at once.
//! Crash safety: a spare is made under the protocol of [`crate::records`]
//! (its intent is rolled back after a crash: nobody was told of it), and
//! whenever an operation finds the root was left by a crash or a reboot,
//! every spare goes to the pending removals: what a spare holds is then
//! freed like any removed layer's. So are the spares of a layer removed,
//! before the layer itself, and every spare when the server stops.

use std::collections::BTreeMap;

use super::removal::Claim;
use super::{Driver, Op, now_ns};
use crate::error::Result;
use crate::failpoint;
use crate::records::Intent;
use crate::tree::{Kind, Layer, Removal, Spare};
use crate::units::{Bytes, ThinId};

/// The most spares a root holds at once.
pub const MAX_SPARES: usize = 8;

impl Driver {
    /// Makes one spare of `parent` (a committed layer; `None`: the base)
    /// if it has fewer than `want` and the root fewer than [`MAX_SPARES`],
    /// and the pool has room for new layers. Returns whether it made one.
    /// A parent that is gone, or not committed, gets none.
    pub fn make_spare(&self, parent: Option<&str>, want: usize) -> Result<bool> {
        // Mostly there are enough: seen without the root's lock, which
        // the Prepares this is for would wait behind.
        let enough = self.store.peek(|rec| {
            let spares = &rec.tree.spares;
            spares.len() >= MAX_SPARES
                || spares
                    .iter()
                    .filter(|s| s.parent.as_deref() == parent)
                    .count()
                    >= want
        })?;
        if enough {
            return Ok(false);
        }
        let _op = crate::op!("spare");
        let (id, device_size) = {
            let mut op = self.begin()?;
            let tree = &op.rec.tree;
            let (origin, device_size) = match parent {
                None => match tree.base {
                    Some(id) => (id, op.rec.pool.base_size),
                    None => return Ok(false),
                },
                Some(p) => match tree.layers.get(p) {
                    Some(l) if l.kind == Kind::Committed => (l.thin_id, l.device_size),
                    _ => return Ok(false),
                },
            };
            let have = tree
                .spares
                .iter()
                .filter(|s| s.parent.as_deref() == parent)
                .count();
            if have >= want || tree.spares.len() >= MAX_SPARES || op.check_space().is_err() {
                return Ok(false);
            }
            let id = op.allocate_id()?;
            let spare = Spare {
                thin_id: id,
                parent: parent.map(str::to_string),
                device_size,
                mounted: false,
            };
            op.transact(
                failpoint::spare::TRANSACTION,
                Intent::CreateSpare { origin, spare },
                |t| t.snapshot(id, origin),
            )?;
            (id, device_size)
        };
        // Its device and mount without the root's lock; nothing can claim
        // it until it is recorded mounted, and a reap waits for this
        // thread's claim.
        let claim = Claim::take(self, id);
        debug_assert!(claim.is_some(), "a new thin id is nobody's");
        // Not trimmed (see `Driver::pretrim`): the containers spares become
        // are seldom committed, and the trim would walk the whole
        // filesystem on the CPUs they need.
        let mounted = self.mount_unlocked(id, device_size, failpoint::spare::AFTER_ACTIVATE);
        failpoint::hit(failpoint::spare::AFTER_MOUNT);
        let mut op = self.begin()?;
        let at = op.rec.tree.spares.iter().position(|s| s.thin_id == id);
        match (mounted, at) {
            (Ok(_), Some(i)) => {
                op.rec.tree.spares[i].mounted = true;
                op.save_atomic()?;
                Ok(true)
            }
            // Dropped meanwhile: a pending removal now, reaped as any.
            (Ok(_), None) => Ok(false),
            (Err(e), at) => {
                // Not left half made: what it holds is freed as a removal.
                if at.is_some() {
                    op.drop_spares_where(|s| s.thin_id == id);
                    op.save()?;
                }
                Err(e)
            }
        }
    }

    /// Drops the spares of `parent` (`None`: of the base) to the pending
    /// removals, for a reap to free.
    pub fn drop_spares_of(&self, parent: Option<&str>) -> Result<()> {
        // Mostly there are none (claimed already): seen without the lock.
        let none = self.store.peek(|rec| {
            !rec.tree
                .spares
                .iter()
                .any(|s| s.parent.as_deref() == parent)
        })?;
        if none {
            return Ok(());
        }
        let mut op = self.begin()?;
        if op.drop_spares(parent).is_empty() {
            return Ok(());
        }
        op.save()
    }

    /// The spares, as recorded.
    pub fn spares(&self) -> Result<Vec<Spare>> {
        self.store.peek(|rec| rec.tree.spares.clone())
    }

    /// Drops every spare (to the pending removals, then reaped): what
    /// `serve` does when it stops.
    pub fn drop_spares(&self) -> Result<()> {
        let ids = {
            let mut op = self.begin()?;
            if op.rec.tree.spares.is_empty() {
                return Ok(());
            }
            let ids = op.drop_spares_where(|_| true);
            op.save()?;
            ids
        };
        let mut op = self.begin()?;
        op.reap_now(&ids)
    }
}

impl Op<'_> {
    /// Claims a ready spare of `parent` of `device_size` bytes as the new
    /// active layer `key` (made through the snapshotter API, pinned,
    /// mounted once) with `labels`; the caller has checked that `key` may
    /// be made on `parent` and saves. `None` when there is no such spare.
    pub(super) fn claim_spare(
        &mut self,
        key: &str,
        parent: Option<&str>,
        device_size: Bytes,
        labels: BTreeMap<String, String>,
    ) -> Option<Layer> {
        let i = self.rec.tree.spares.iter().position(|s| {
            s.mounted && s.parent.as_deref() == parent && s.device_size == device_size
        })?;
        let spare = self.rec.tree.spares.remove(i);
        let at = now_ns();
        let layer = Layer {
            key: key.to_string(),
            kind: Kind::Active,
            thin_id: spare.thin_id,
            parent: parent.map(str::to_string),
            device_size,
            created: at / 1_000_000_000,
            created_ns: at,
            updated_ns: 0,
            snapshotter: true,
            image: None,
            labels,
            mounts: 1,
            pinned: true,
        };
        self.rec.tree.layers.insert(key.to_string(), layer.clone());
        Some(layer)
    }

    /// Moves the spares of `parent` (`None`: of the base) to the pending
    /// removals; the caller saves.
    pub(super) fn drop_spares(&mut self, parent: Option<&str>) -> Vec<ThinId> {
        self.drop_spares_where(|s| s.parent.as_deref() == parent)
    }

    /// Moves the spares `which` picks to the pending removals; the caller
    /// saves. Returns their thin ids.
    pub(super) fn drop_spares_where(&mut self, which: impl Fn(&Spare) -> bool) -> Vec<ThinId> {
        let (gone, kept) = std::mem::take(&mut self.rec.tree.spares)
            .into_iter()
            .partition::<Vec<_>, _>(|s| which(s));
        self.rec.tree.spares = kept;
        let at = now_ns();
        gone.into_iter()
            .map(|s| {
                self.rec.tree.add_removal(Removal {
                    thin_id: s.thin_id,
                    key: String::new(),
                    device_size: s.device_size,
                    discard: true,
                    removed_ns: at,
                });
                s.thin_id
            })
            .collect()
    }
}
