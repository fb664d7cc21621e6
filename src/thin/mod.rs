//! Thin devices: creating, snapshotting and deleting them in the pool's
//! metadata, and activating them as device-mapper devices.
//!
//! A thin device's table is `0 <sectors> thin <pool maj:min> <thin id>`. It is
//! named `<prefix>-<thin id>`; its node is `/dev/dm-<minor>` (no udev).

mod usage;

use std::path::PathBuf;
use std::str::FromStr;

use devicemapper::ThinStatus;
use nix::errno::Errno;

pub use usage::{Mappings, held_only_by, parse_thin_dump};

use crate::error::{Error, Result};
use crate::kernel::{DmInfo, Kernel, Suspend, Target};
use crate::pool::Pool;
use crate::units::{Bytes, Sectors, ThinId};

pub fn dm_name(prefix: &str, id: ThinId) -> String {
    format!("{prefix}-{id}")
}

/// The id in a device name of this prefix, if it is one of ours.
pub fn parse_dm_name(prefix: &str, name: &str) -> Option<ThinId> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    ThinId::new(rest.parse().ok()?).ok()
}

/// Thin devices of one pool.
pub struct Thins<'a> {
    pub pool: &'a Pool<'a>,
}

impl Thins<'_> {
    fn kernel(&self) -> &dyn Kernel {
        self.pool.kernel
    }

    fn message(&self, msg: &str) -> Result<()> {
        self.kernel().dm_message(&self.pool.name(), msg).map(|_| ())
    }

    /// `create_thin`: a new empty thin device.
    pub fn create(&self, id: ThinId) -> Result<()> {
        self.message(&format!("create_thin {id}"))
    }

    /// `create_snap new origin`. An origin that is active and held open (a
    /// mount, a process) is suspended around the message so no write is in
    /// flight while its mappings are shared, and is resumed whatever the
    /// message's outcome; the suspend freezes a filesystem mounted on it,
    /// so the snapshot holds it clean. One that nobody holds open has
    /// nothing in flight (a block device's last close writes back what it
    /// cached) and is left as it is: a suspend and resume each wait for the
    /// kernel's grace periods.
    pub fn snapshot(&self, new: ThinId, origin: ThinId) -> Result<()> {
        self.snapshot_suspending(new, origin, Suspend::Freeze)
    }

    /// As [`Thins::snapshot`], an open origin suspended as `how` says:
    /// [`Suspend::Flush`] where its filesystem is mounted read-only, which
    /// left it clean, so that no freeze (and its grace periods) is needed.
    pub fn snapshot_suspending(&self, new: ThinId, origin: ThinId, how: Suspend) -> Result<()> {
        let origin_dev = dm_name(&self.pool.config.prefix, origin);
        let active = self
            .kernel()
            .dm_info(&origin_dev)?
            .is_some_and(|i| i.active_table && !i.suspended && i.open_count > 0);
        if active {
            let _s = crate::step!("suspend_origin");
            self.kernel().dm_suspend(&origin_dev, how)?;
        }
        let sent = {
            let _s = crate::step!("create_snap");
            self.message(&format!("create_snap {new} {origin}"))
        };
        if active {
            let resumed = self.kernel().dm_resume(&origin_dev);
            if let Err(e) = &resumed {
                tracing::error!(device = origin_dev, error = %e, "could not resume the origin after a snapshot");
            }
            sent.and(resumed)
        } else {
            sent
        }
    }

    /// `delete id`. Returns false when the pool had no such id (ENODATA), so
    /// that an interrupted delete can be replayed.
    ///
    /// The pool refuses to delete a thin device that is still open (EBUSY).
    /// A device-mapper device leaves the name list before its table is
    /// torn down, and a deferred removal finishes in a kernel worker, so a
    /// delete sent right after the device went can meet the closing table:
    /// EBUSY is retried for up to a second before it is returned.
    pub fn delete(&self, id: ThinId) -> Result<bool> {
        const TRIES: u32 = 40;
        let _s = crate::step!("delete");
        let msg = format!("delete {id}");
        for _ in 1..TRIES {
            match self.message(&msg) {
                Err(e) if e.errno() == Some(Errno::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                other => return deleted(other),
            }
        }
        deleted(self.message(&msg))
    }

    /// Discards every block thin device `id` (of `size` bytes, or longer)
    /// maps, through a device made live read-write for it and taken down
    /// after. The pool unmaps them all and passes the discard down to its
    /// data device for the blocks no other thin device maps: on a loop
    /// device over a file, a hole is punched, the host gets the space back,
    /// and the block reads as zeros when the pool hands it out again.
    ///
    /// The kernel's `delete` does neither: it frees the blocks in the
    /// pool's metadata only, so a removed layer's blocks would stay
    /// allocated in the data file, holding its data until reused. The
    /// caller makes sure no layer needs the device any more.
    pub fn discard(&self, id: ThinId, size: Bytes) -> Result<()> {
        let _s = crate::step!("discard");
        let (dev, _) = self.activate(id, size, false)?;
        let discarded = self.kernel().discard(&dev);
        let down = self.deactivate(id);
        discarded.and(down)
    }

    /// [`Thins::delete`] after [`Thins::discard`]. A discard that fails
    /// (a pool whose data device takes none, a pool out of space) costs
    /// only space: it is logged and the delete goes ahead.
    pub fn discard_and_delete(&self, id: ThinId, size: Bytes) -> Result<bool> {
        if let Err(e) = self.discard(id, size) {
            tracing::warn!(
                thin_id = id.get(),
                error = %e,
                "cannot discard a thin device before deleting it: its blocks go back to the pool \
                 but stay allocated on the data device"
            );
        }
        self.delete(id)
    }

    /// `set_transaction_id old new`: the kernel's compare-and-swap.
    pub fn set_transaction(&self, old: u64, new: u64) -> Result<()> {
        let _s = crate::step!("set_transaction_id");
        self.message(&format!("set_transaction_id {old} {new}"))
    }

    /// Makes the device live (if it is not) and returns its node. A device of
    /// that name with another table (left by a crash) is replaced; a
    /// suspended one is resumed.
    pub fn activate(&self, id: ThinId, size: Bytes, read_only: bool) -> Result<(PathBuf, DmInfo)> {
        let _s = crate::step!("activate");
        let name = dm_name(&self.pool.config.prefix, id);
        let pool = self.pool.devnum()?;
        let sectors = size.to_sectors().ok_or_else(|| {
            Error::invalid(
                "device size",
                &size.0.to_string(),
                "not a whole number of sectors",
            )
        })?;
        let table = [Target::new(sectors, "thin", format!("{pool} {id}"))];
        if let Some(info) = self.kernel().dm_info(&name)? {
            // A table that cannot be read is not a stale one: replacing it
            // could take a live device from under its mount.
            let live = self.kernel().dm_table(&name)?;
            let same = live.len() == 1
                && live[0].kind == "thin"
                && live[0].params == table[0].params
                && live[0].length == sectors;
            if same {
                if info.suspended {
                    self.kernel().dm_resume(&name)?;
                }
                let info = self
                    .kernel()
                    .dm_info(&name)?
                    .ok_or_else(|| Error::not_found("device", &name))?;
                return Ok((info.devnum.dm_node(), info));
            }
            tracing::warn!(device = name, "replacing a stale device of the same name");
            self.deactivate(id)?;
        }
        let info = self.kernel().dm_create(&name, &table, read_only)?;
        Ok((info.devnum.dm_node(), info))
    }

    /// Removes the device if it exists. A busy device is retried a bounded
    /// number of times, then removed deferred: the kernel finishes the
    /// removal when the last holder (a mount in another namespace, say)
    /// lets go, and the thin id can still be deleted from the pool meanwhile.
    pub fn deactivate(&self, id: ThinId) -> Result<()> {
        let _s = crate::step!("deactivate");
        let name = dm_name(&self.pool.config.prefix, id);
        deactivate_named(self.kernel(), &name)
    }

    pub fn is_active(&self, id: ThinId) -> Result<bool> {
        Ok(self
            .kernel()
            .dm_info(&dm_name(&self.pool.config.prefix, id))?
            .is_some_and(|i| i.active_table))
    }

    /// Whether the device is live and held open by someone (a mount, a
    /// process).
    pub fn is_open(&self, id: ThinId) -> Result<bool> {
        Ok(self
            .kernel()
            .dm_info(&dm_name(&self.pool.config.prefix, id))?
            .is_some_and(|i| i.open_count > 0))
    }

    /// Mapped sectors of a live thin device, from its status line
    /// `<mapped sectors> <highest mapped sector>` (or `Fail`).
    pub fn mapped(&self, id: ThinId) -> Result<Bytes> {
        let name = dm_name(&self.pool.config.prefix, id);
        let st = self.kernel().dm_status(&name)?;
        let params = st.first().map(|t| t.params.trim()).unwrap_or_default();
        let bad = |why: &str| Error::unexpected("thin status", params, why);
        match ThinStatus::from_str(params).map_err(|e| bad(&e.to_string()))? {
            ThinStatus::Working(w) => Ok(Sectors(w.nr_mapped_sectors.0).bytes()),
            ThinStatus::Fail | ThinStatus::Error => Err(bad("the thin device has failed")),
        }
    }
}

fn deleted(sent: Result<()>) -> Result<bool> {
    match sent {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(Errno::ENODATA) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes a device-mapper device by name, if it exists. A busy device
/// gets one bounded round of retries (the `devicemapper` crate retries EBUSY
/// five times, 200 ms apart), then is handed to the kernel as a deferred
/// removal: it goes when its last holder (a mount in another namespace, a
/// process with it open) lets go. A removal already deferred is left to the
/// kernel.
pub fn deactivate_named(kernel: &dyn Kernel, name: &str) -> Result<()> {
    let Some(info) = kernel.dm_info(name)? else {
        return Ok(());
    };
    if info.deferred_remove {
        return Ok(());
    }
    if info.suspended {
        // A suspended device cannot finish its I/O, so it would never close.
        kernel.dm_resume(name)?;
    }
    match kernel.dm_remove(name, false) {
        Ok(()) => Ok(()),
        Err(e) if e.errno() == Some(Errno::ENXIO) => Ok(()),
        Err(e) if e.errno() == Some(Errno::EBUSY) => {
            tracing::warn!(
                device = name,
                "device busy; its removal is deferred to its last close"
            );
            match kernel.dm_remove(name, true) {
                Err(e) if e.errno() == Some(Errno::ENXIO) => Ok(()),
                other => other,
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let id = ThinId::new(42).unwrap();
        let n = dm_name("thinlayer-0badf00d", id);
        assert_eq!(n, "thinlayer-0badf00d-42");
        assert_eq!(parse_dm_name("thinlayer-0badf00d", &n), Some(id));
        assert_eq!(
            parse_dm_name("thinlayer-0badf00d", "thinlayer-0badf00d-pool"),
            None
        );
        assert_eq!(
            parse_dm_name("thinlayer-0badf00d", "thinlayer-ffffffff-42"),
            None
        );
    }
}
