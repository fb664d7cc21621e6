//! Removal in two parts: the record, at once; the kernel work, later.
//!
//! Removing a layer takes it out of the tree and records it as a pending
//! [`Removal`], in one durable record write: from then on it is gone for
//! every caller (its key is free, no listing shows it), and a crash at any
//! later point only delays the rest. The rest is [`Driver::reap`]: unmount
//! thinlayer's own mount of it, discard its blocks through its device while
//! the device is still live (so the pool frees them and passes the discard
//! down to the data device: the host's file gets the space back), take the
//! device down, `delete` its thin id, and drop the record. Each step can be
//! done again, so whoever finds a removal pending (after a crash, or
//! another process) simply starts it over: an unmount of what is not
//! mounted, a device already gone and a `delete` of an id the pool lacks
//! (ENODATA) all count as done.
//!
//! The kernel work runs without the root's lock: the removal's thin id is
//! its own until its record goes (no new layer can be given it), and no
//! other operation touches its device or mount (the reconciler leaves them
//! to the removal). Only dropping the record takes the lock, briefly, so
//! other operations go on while blocks are discarded. Within a process,
//! one thread at a time works on a removal, and holds it (see
//! `Driver::claimed`) until its record is dropped: another thread that
//! found it still pending would start over on a deleted thin id. A
//! thread never waits for a removal while it holds others. A pass works
//! on up to [`REAPERS`] removals at once, each on a thread of its own.
//!
//! A removal whose device is still held open once thinlayer's own mount is
//! gone (a client's bind mount of the snapshot, a process in it) waits:
//! the device cannot be discarded or taken down under its holder, so it
//! stays pending, its space with it, until a later pass finds it released.
//!
//! `thinlayer serve` reaps in the background as removals come, and when
//! containerd calls Cleanup; the CLI's `rm` reaps its own removal before it
//! answers, so its space is back when it returns.

use std::collections::HashSet;
use std::fs;
use std::sync::Mutex;

use nix::errno::Errno;

use super::{Driver, Op, now_ns};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::thin::{self, Thins};
use crate::tree::{Kind, Removal};
use crate::units::ThinId;

/// How many removals one pass works on at once. Much of a removal's time
/// is the kernel waiting (an unmount and a device's removal wait for RCU
/// grace periods, a `delete` for a metadata commit), and removals side by
/// side share those waits: in the test VM (two CPUs), device-mapper
/// devices taken down by four processes at once took 34 to 38 ms each,
/// against 61 to 68 ms one after another.
const REAPERS: usize = 4;

/// Removals whose kernel work is done, with their claims, until their
/// records are dropped.
type Done<'a> = Vec<(ThinId, Claim<'a>)>;

/// What a pass of [`Driver::reap`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Removals done: their thin ids deleted and their records dropped.
    pub done: usize,
    /// Removals left pending because their device is held open elsewhere.
    pub held: usize,
    /// Removals left pending because a step failed (logged; retried by
    /// the next pass).
    pub failed: usize,
}

impl Reaped {
    /// Counts a removal left pending: held open elsewhere (`None`), or
    /// failed with `error`.
    fn left(&mut self, r: &Removal, error: Option<Error>) {
        match error {
            None => self.held += 1,
            Some(e) => {
                tracing::warn!(thin_id = r.thin_id.get(), layer = r.key, error = %e,
                    "cannot finish a removal yet; it stays pending");
                self.failed += 1;
            }
        }
    }
}

impl Driver {
    /// The thin ids of the pending removals, oldest first.
    pub fn pending_removals(&self) -> Result<Vec<Removal>> {
        self.store.peek(|rec| {
            let mut all: Vec<Removal> = rec.tree.removals.values().cloned().collect();
            all.sort_by_key(|r| r.removed_ns);
            all
        })
    }

    /// Does the kernel work of up to `max` pending removals, oldest first,
    /// then drops their records in one write. Removals another thread of
    /// this process is working on are skipped.
    pub fn reap(&self, max: usize) -> Result<Reaped> {
        let _op = crate::op!("reap");
        let pending = self.pending_removals()?;
        self.reap_these(pending.into_iter().take(max).collect(), false)
    }

    /// Reaps every pending removal made before this call, waiting for
    /// those another thread is working on, and returns what it did; what
    /// is held open stays pending (see the module's documentation).
    /// containerd's Cleanup.
    pub fn reap_all(&self) -> Result<Reaped> {
        let _op = crate::op!("cleanup");
        let pending = self.pending_removals()?;
        self.reap_these(pending, true)
    }

    fn reap_these(&self, pending: Vec<Removal>, wait: bool) -> Result<Reaped> {
        // Done, with their claims: a removal stays claimed until its record
        // is dropped, else another thread would find it pending and start
        // it over on a thin id already deleted.
        let (mut out, mut done, busy) = self.reap_side_by_side(pending);
        self.drop_records(&mut done, &mut out)?;
        if !wait {
            return Ok(out);
        }
        // Those another thread had: waited for one at a time, holding no
        // claim meanwhile (two Cleanups would each hold what the other
        // waits for), and done here if that thread left them pending.
        for r in busy {
            let claim = loop {
                if !self.store.peek(|rec| rec.tree.is_removal(r.thin_id))? {
                    break None;
                }
                if let Some(c) = Claim::take(self, r.thin_id) {
                    break Some(c);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            };
            let Some(claim) = claim else {
                continue;
            };
            match self.reap_claimed(&r, claim) {
                None => {}
                Some((claim, Ok(true))) => {
                    done.push((r.thin_id, claim));
                    self.drop_records(&mut done, &mut out)?;
                }
                Some((_, Ok(false))) => out.left(&r, None),
                Some((_, Err(e))) => out.left(&r, Some(e)),
            }
        }
        Ok(out)
    }

    /// Does the kernel work of `pending`, up to [`REAPERS`] removals at
    /// once, the caller's thread one of the reapers. Returns what was left
    /// pending, the removals done (still claimed, their records not yet
    /// dropped) and those another thread had claimed.
    fn reap_side_by_side(&self, pending: Vec<Removal>) -> (Reaped, Done<'_>, Vec<Removal>) {
        // A failpoint armed on this thread is hit on this thread.
        let reapers = if failpoint::armed() { 1 } else { REAPERS };
        let helpers = reapers.min(pending.len()).saturating_sub(1);
        let queue = Mutex::new(pending.into_iter());
        let shared = Mutex::new((Reaped::default(), Vec::new(), Vec::new()));
        let work = || {
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some(r) = next else { break };
                let Some(claim) = Claim::take(self, r.thin_id) else {
                    shared.lock().unwrap_or_else(|e| e.into_inner()).2.push(r);
                    continue;
                };
                let outcome = self.reap_claimed(&r, claim);
                let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
                match outcome {
                    None => {}
                    Some((claim, Ok(true))) => shared.1.push((r.thin_id, claim)),
                    Some((_, Ok(false))) => shared.0.left(&r, None),
                    Some((_, Err(e))) => shared.0.left(&r, Some(e)),
                }
            }
        };
        // The helpers' steps count under the caller's operation.
        let span = tracing::Span::current();
        std::thread::scope(|scope| {
            for _ in 0..helpers {
                let helper = std::thread::Builder::new()
                    .name("reaper".into())
                    .spawn_scoped(scope, || {
                        let _in = span.enter();
                        work();
                    });
                if let Err(e) = helper {
                    // The threads there are do the work.
                    tracing::debug!(error = %e, "cannot start a reaper thread");
                    break;
                }
            }
            work();
        });
        shared.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Driver::reap_one`] of `r`, claimed by the caller, unless it is
    /// pending no more (done by the thread that had it): the claim back
    /// with the outcome.
    fn reap_claimed<'a>(&self, r: &Removal, claim: Claim<'a>) -> Option<(Claim<'a>, Result<bool>)> {
        match self.store.peek(|rec| rec.tree.is_removal(r.thin_id)) {
            Ok(false) => None,
            Ok(true) => Some((claim, self.reap_one(r))),
            Err(e) => Some((claim, Err(e))),
        }
    }

    /// Drops the records of the removals `done`, in one write, then lets
    /// go of their claims.
    fn drop_records(&self, done: &mut Done<'_>, out: &mut Reaped) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        let mut op = self.begin()?;
        let _s = crate::step!("record");
        for (id, _) in done.iter() {
            op.rec.tree.removals.remove(&id.to_string());
        }
        op.save_atomic()?;
        failpoint::hit(failpoint::reap::AFTER_RECORD);
        out.done += done.len();
        done.clear();
        Ok(())
    }

    /// The kernel work of one removal. `Ok(false)`: its device is held
    /// open elsewhere, nothing else was done.
    fn reap_one(&self, r: &Removal) -> Result<bool> {
        let rec = self.store.peek(|rec| rec.pool.clone())?;
        let pool = crate::pool::Pool {
            kernel: &*self.kernel,
            config: &rec,
        };
        let thins = Thins { pool: &pool };
        let id = r.thin_id;
        {
            let _s = crate::step!("umount");
            self.umount_id(id)?;
        }
        failpoint::hit(failpoint::reap::AFTER_UMOUNT);
        let name = thin::dm_name(&rec.prefix, id);
        let info = self.kernel.dm_info(&name)?;
        if info.as_ref().is_some_and(|i| i.open_count > 0) {
            tracing::debug!(
                thin_id = id.get(),
                layer = r.key,
                "a removed layer's device is still open elsewhere; its removal waits"
            );
            return Ok(false);
        }
        if r.discard {
            // Through the live device when there is one (a container's),
            // else through one made for it.
            let _s = crate::step!("discard");
            let live = info
                .filter(|i| i.active_table && !i.suspended)
                .map(|i| self.kernel.discard(&i.devnum.dm_node()));
            let discarded = match live {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => {
                    tracing::debug!(thin_id = id.get(), error = %e,
                        "cannot discard through the live device; through one made for it");
                    thins
                        .deactivate(id)
                        .and_then(|()| thins.discard(id, r.device_size))
                }
                None => thins.discard(id, r.device_size),
            };
            if let Err(e) = discarded {
                tracing::warn!(thin_id = id.get(), error = %e,
                    "cannot discard a removed layer's blocks: they go back to the pool \
                     but stay allocated on the data device");
            }
        }
        failpoint::hit(failpoint::reap::AFTER_DISCARD);
        thins.deactivate(id)?;
        failpoint::hit(failpoint::reap::AFTER_DEACTIVATE);
        thins.delete(id)?;
        failpoint::hit(failpoint::reap::AFTER_DELETE);
        tracing::debug!(thin_id = id.get(), layer = r.key, "removal done");
        Ok(true)
    }

    /// Unmounts thinlayer's own mount of thin id `id`, if there is one,
    /// and its mount point. One syscall when there is none.
    pub(super) fn umount_id(&self, id: ThinId) -> Result<()> {
        let target = self.mount_path_of(id);
        match self.kernel.umount(&target, false) {
            Ok(()) => {}
            Err(e) if matches!(e.errno(), Some(Errno::EINVAL | Errno::ENOENT)) => {}
            Err(e) if e.errno() == Some(Errno::EBUSY) => {
                return Err(Error::Busy {
                    kind: "layer",
                    name: id.to_string(),
                    why: format!("{} is in use by a process", target.display()),
                });
            }
            Err(e) => return Err(e),
        }
        match fs::remove_dir(&target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove mount point", &target, e)),
        }
    }
}

/// A thin id this process is working on (a removal being reaped, a spare
/// being made); dropped when the work ends.
pub(super) struct Claim<'a> {
    claimed: &'a std::sync::Mutex<HashSet<u32>>,
    id: u32,
}

impl<'a> Claim<'a> {
    /// Claims `id`, unless another thread of this process has it.
    pub(super) fn take(driver: &'a Driver, id: ThinId) -> Option<Claim<'a>> {
        let mut set = driver.claimed.lock().unwrap_or_else(|e| e.into_inner());
        // Made only when taken: a claim dropped here would release
        // another thread's, under this very lock.
        if set.insert(id.get()) {
            Some(Claim {
                claimed: &driver.claimed,
                id: id.get(),
            })
        } else {
            None
        }
    }
}

impl Claim<'_> {
    /// Waits until no thread of this process has `id` claimed (a new
    /// snapshot's mount being made, say). Never call it holding the root's
    /// lock: the claim's holder takes it before letting go.
    pub(super) fn wait_free(driver: &Driver, id: ThinId) {
        while driver
            .claimed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id.get())
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut set = self.claimed.lock().unwrap_or_else(|e| e.into_inner());
        set.remove(&self.id);
    }
}

impl Op<'_> {
    /// Takes layer `key` out of the tree into the pending removals, with
    /// the spares made of it. The caller has checked that it may go (see
    /// [`crate::tree::Tree::check_remove`]) and saves the records.
    pub(super) fn queue_removal(&mut self, key: &str) -> Result<ThinId> {
        let l = self
            .rec
            .tree
            .layers
            .remove(key)
            .ok_or_else(|| Error::not_found("layer", key))?;
        self.rec.tree.images.retain(|_, i| i.top != key);
        self.rec.tree.add_removal(Removal {
            thin_id: l.thin_id,
            key: l.key.clone(),
            device_size: l.device_size,
            discard: l.kind != Kind::View,
            removed_ns: now_ns(),
        });
        if l.kind == Kind::Committed {
            self.drop_spares(Some(key));
        }
        Ok(l.thin_id)
    }

    /// Removes layer `key` (checked as [`Op::queue_removal`] says): one
    /// durable record write; its kernel work is left to a reap. Returns
    /// its thin id.
    pub(super) fn remove_layer(&mut self, key: &str) -> Result<ThinId> {
        let id = self.queue_removal(key)?;
        self.save()?;
        failpoint::hit(failpoint::remove::AFTER_RECORD);
        Ok(id)
    }

    /// Removes layer `key` and does its kernel work now, under this
    /// operation's lock: for removals inside other operations (a failed
    /// import's layers).
    pub(super) fn remove_layer_now(&mut self, key: &str) -> Result<()> {
        let id = self.remove_layer(key)?;
        self.reap_now(&[id])
    }

    /// Does the kernel work of the pending removals of `ids` and drops
    /// their records, under this operation's lock. The first failure is
    /// returned; a removal whose device is held open elsewhere is Busy.
    pub(super) fn reap_now(&mut self, ids: &[ThinId]) -> Result<()> {
        let mut first = None;
        // Kept until the records are saved (see `Driver::reap_these`).
        let mut claims = Vec::new();
        for id in ids {
            let Some(r) = self.rec.tree.removals.get(&id.to_string()).cloned() else {
                continue;
            };
            let Some(claim) = Claim::take(self.driver, *id) else {
                continue;
            };
            match self.driver.reap_one(&r) {
                Ok(true) => {
                    self.rec.tree.removals.remove(&id.to_string());
                    claims.push(claim);
                }
                Ok(false) => {
                    first.get_or_insert(Error::Busy {
                        kind: "layer",
                        name: r.key.clone(),
                        why: "removed, but its device is still open elsewhere (a mount in \
                              another namespace?): its space comes back once it is released"
                            .into(),
                    });
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        if !claims.is_empty() {
            self.save_atomic()?;
            failpoint::hit(failpoint::reap::AFTER_RECORD);
        }
        drop(claims);
        first.map_or(Ok(()), Err)
    }
}
