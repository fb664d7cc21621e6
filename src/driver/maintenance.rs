//! Pool maintenance: growing it, checking its metadata offline, repairing it.

use std::fs;
use std::path::PathBuf;

use super::{Driver, Op, now};
use crate::error::{Error, Result};
use crate::pool::{PoolSource, PoolStatus};
use crate::records::sync_dir;
use crate::thin;
use crate::units::Bytes;

impl Driver {
    /// Grows the pool's data and metadata space (loop files are extended;
    /// block devices are reread after the user grew them). Brings a pool
    /// that ran out of data space back to read-write.
    pub fn grow(&self, data: Option<Bytes>, metadata: Option<Bytes>) -> Result<PoolStatus> {
        let op = self.begin()?;
        op.pool().grow(data, metadata)?;
        op.status()
    }

    /// Takes the pool offline, checks its metadata with `thin_check`, and
    /// brings it back. Refused while layers are mounted.
    pub fn check(&self) -> Result<()> {
        let mut op = self.begin_unreconciled()?;
        op.take_offline()?;
        op.pool().activate()?;
        op.reconcile(true)
    }

    /// Rebuilds damaged pool metadata with `thin_repair` into a new file,
    /// keeps the damaged one beside it, and brings the pool up on the
    /// repaired copy. Loop-file pools only. Returns the damaged copy's path.
    pub fn repair(&self) -> Result<PathBuf> {
        let mut op = self.begin_unreconciled()?;
        let PoolSource::LoopFiles { metadata, .. } = op.rec.pool.source.clone() else {
            return Err(Error::invalid(
                "pool",
                &op.pool().name(),
                "only pools on loop files are repaired by thinlayer; run thin_repair on the metadata device yourself",
            ));
        };
        op.take_offline()?;
        let repaired = metadata.with_extension("repairing");
        let damaged = metadata.with_extension(format!("damaged-{}", now()));
        let _ = fs::remove_file(&repaired);
        let len = fs::metadata(&metadata)
            .map_err(|e| Error::io("stat", &metadata, e))?
            .len();
        fs::File::create(&repaired)
            .and_then(|f| f.set_len(len))
            .map_err(|e| Error::io("create", &repaired, e))?;
        let made = (|| {
            let from = op.kernel().loop_attach(&metadata)?;
            let into = op.kernel().loop_attach(&repaired)?;
            op.kernel()
                .thin_repair(&from.info.device, &into.info.device)
            // Both loops detach themselves as the attachments drop.
        })();
        if let Err(e) = made {
            let _ = fs::remove_file(&repaired);
            return Err(e);
        }
        fs::rename(&metadata, &damaged)
            .map_err(|e| Error::io("keep damaged metadata as", &damaged, e))?;
        fs::rename(&repaired, &metadata)
            .map_err(|e| Error::io("install repaired metadata as", &metadata, e))?;
        if let Some(dir) = metadata.parent() {
            sync_dir(dir)?;
        }
        op.pool().activate()?;
        op.reconcile(true)?;
        Ok(damaged)
    }
}

impl Op<'_> {
    /// Unmounts nothing: refuses while a layer is mounted, and refuses a
    /// pool thinlayer did not make; otherwise deactivates every thin device
    /// and the pool.
    fn take_offline(&mut self) -> Result<()> {
        let mounted = self.rec.tree.mounted();
        if !mounted.is_empty() {
            return Err(Error::Busy {
                kind: "pool",
                name: self.pool().name(),
                why: format!(
                    "layers are mounted: {}; unmount them first",
                    mounted.join(", ")
                ),
            });
        }
        if !self.rec.pool.owns_pool() {
            return Err(Error::invalid(
                "pool",
                &self.pool().name(),
                "thinlayer does not take down a pool it did not make",
            ));
        }
        // The spares are freed after the check, the removals redone.
        self.umount_others()?;
        let prefix = self.rec.pool.prefix.clone();
        for name in self.kernel().dm_list()? {
            if thin::parse_dm_name(&prefix, &name).is_some() {
                thin::deactivate_named(self.kernel(), &name)?;
            }
        }
        self.pool().deactivate()
    }
}
