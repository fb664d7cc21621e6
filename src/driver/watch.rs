//! What `thinlayer serve` watches: the pool read without the root's lock,
//! for the metrics endpoint, and the pool grown before it fills
//! ([`Driver::autoextend`]).
//!
//! A reading never waits for an operation in progress (an import may hold
//! the lock for minutes): it reads the records as last saved (see
//! [`crate::records::Store::load`]), and the pool's status, one ioctl. It fails in no case: a
//! pool that failed, is down, or whose records cannot be read is reported
//! as such, with whatever else could be read.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::Driver;
use crate::error::{Error, Result};
use crate::pool::autoextend::{self, Autoextend, Plan, Space};
use crate::pool::{META_BLOCK, Pool, PoolConfig, PoolSource, PoolStatus, autoextend_refused};
use crate::records::RecordsId;
use crate::tree::Kind;

/// The pool as a scrape sees it.
#[derive(Clone, Debug, Serialize)]
pub struct PoolReading {
    /// The pool's figures, when it is working.
    pub status: Option<PoolStatus>,
    /// What the pool is: its mode when working, `failed`, or `unknown`
    /// when neither the records nor the kernel could say.
    pub condition: PoolCondition,
    /// Layers by kind, and image names; `None` when the records could not
    /// be read.
    pub layers: Option<LayerCounts>,
    /// The automatic growth policy, when the pool has one.
    pub autoextend: Option<Autoextend>,
}

/// The state of the pool, one of a fixed set (a metric per value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolCondition {
    ReadWrite,
    ReadOnly,
    OutOfDataSpace,
    OutOfMetadataSpace,
    /// The kernel reports the pool failed (`Fail`): no figures.
    Failed,
    /// No pool device, or records or status that could not be read.
    Unknown,
}

impl PoolCondition {
    /// Every condition, in the order metrics list them.
    pub const ALL: [PoolCondition; 6] = [
        PoolCondition::ReadWrite,
        PoolCondition::ReadOnly,
        PoolCondition::OutOfDataSpace,
        PoolCondition::OutOfMetadataSpace,
        PoolCondition::Failed,
        PoolCondition::Unknown,
    ];

    /// The name a metric label carries: `rw`, `ro`, `out_of_data_space`,
    /// `out_of_metadata_space`, `failed`, `unknown`.
    pub fn label(self) -> &'static str {
        match self {
            PoolCondition::ReadWrite => "rw",
            PoolCondition::ReadOnly => "ro",
            PoolCondition::OutOfDataSpace => "out_of_data_space",
            PoolCondition::OutOfMetadataSpace => "out_of_metadata_space",
            PoolCondition::Failed => "failed",
            PoolCondition::Unknown => "unknown",
        }
    }
}

/// How many layers of each kind the records hold, and how many image names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LayerCounts {
    pub committed: usize,
    pub active: usize,
    pub view: usize,
    pub images: usize,
    /// Removals whose kernel work is not done: space still held.
    pub removals: usize,
    /// Spares made ahead of Prepares.
    pub spares: usize,
}

impl LayerCounts {
    pub fn of_kind(&self, kind: Kind) -> usize {
        match kind {
            Kind::Committed => self.committed,
            Kind::Active => self.active,
            Kind::View => self.view,
        }
    }
}

impl Driver {
    /// Reads the pool and the layer counts without the root's lock and
    /// without starting any repair; see the module documentation.
    pub fn reading(&self) -> PoolReading {
        let rec = match self.store.load() {
            Ok(rec) => rec,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the records");
                return PoolReading {
                    status: None,
                    condition: PoolCondition::Unknown,
                    layers: None,
                    autoextend: None,
                };
            }
        };
        let mut layers = LayerCounts {
            images: rec.tree.images.len(),
            removals: rec.tree.removals.len(),
            spares: rec.tree.spares.len(),
            ..LayerCounts::default()
        };
        for l in rec.tree.layers.values() {
            match l.kind {
                Kind::Committed => layers.committed += 1,
                Kind::Active => layers.active += 1,
                Kind::View => layers.view += 1,
            }
        }
        let pool = Pool {
            kernel: &*self.kernel,
            config: &rec.pool,
        };
        let (status, condition) = match pool.status(rec.tree.thin_ids().count()) {
            Ok(st) => {
                let condition = st.mode.into();
                (Some(st), condition)
            }
            Err(Error::PoolFailed { .. }) => (None, PoolCondition::Failed),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the pool's status");
                (None, PoolCondition::Unknown)
            }
        };
        PoolReading {
            status,
            condition,
            layers: Some(layers),
            autoextend: rec.pool.autoextend,
        }
    }

    /// Changes the pool's automatic growth policy: `change` edits the one
    /// recorded (LVM's defaults, off, when there is none). Refused for a
    /// pool not on loop files, or a policy [`Autoextend::validate`]
    /// refuses. The pool's table is reloaded (the pool suspended and
    /// resumed, as `pool grow` does), since its low water mark follows the
    /// threshold. Returns the policy now recorded.
    pub fn set_autoextend(&self, change: impl FnOnce(&mut Autoextend)) -> Result<Autoextend> {
        let mut op = self.begin()?;
        if !matches!(op.rec.pool.source, PoolSource::LoopFiles { .. }) {
            return Err(autoextend_refused());
        }
        let mut policy = op.rec.pool.autoextend.unwrap_or_default();
        change(&mut policy);
        let size = op.pool().status(0)?.data_total;
        policy.validate(Some(size))?;
        op.rec.pool.autoextend = Some(policy);
        op.save()?;
        op.pool().grow(None, None)?;
        Ok(policy)
    }

    /// One look of the watcher of `thinlayer serve`: when the pool's
    /// policy says a space must grow, grows it (under the root's lock, as
    /// `pool grow`, after looking again). `None` when the pool has no
    /// policy or it is off; otherwise the plan, carried out if it grows
    /// anything. `watch` keeps the pool's configuration between looks: a
    /// look that finds nothing to do costs a `stat` of each of the records'
    /// files and of the pool's, one status ioctl and a `statvfs`.
    pub fn autoextend(&self, watch: &mut AutoextendWatch) -> Result<Option<Plan>> {
        let config = watch.config(self)?;
        let Some(policy) = config.autoextend.filter(Autoextend::enabled) else {
            return Ok(None);
        };
        let plan = self.growth_plan(config, &policy)?;
        if plan.sizes().is_none() {
            return Ok(Some(plan));
        }
        let op = self.begin()?;
        let Some(policy) = op.rec.pool.autoextend.filter(Autoextend::enabled) else {
            return Ok(None);
        };
        let plan = self.growth_plan(&op.rec.pool, &policy)?;
        if let Some((data, metadata)) = plan.sizes() {
            op.pool().grow(data, metadata)?;
        }
        Ok(Some(plan))
    }

    /// Waits for a device-mapper event (a pool crossing its low water
    /// mark) or `timeout`: the watcher's pause between looks.
    pub fn wait_pool_event(&self, timeout: Duration) -> Result<()> {
        self.kernel.dm_wait_event(timeout)
    }

    /// What the policy says of the pool as the kernel and the host show it.
    fn growth_plan(&self, config: &PoolConfig, policy: &Autoextend) -> Result<Plan> {
        let PoolSource::LoopFiles { data, metadata } = &config.source else {
            return Err(autoextend_refused());
        };
        let pool = Pool {
            kernel: &*self.kernel,
            config,
        };
        let st = pool.kernel_status()?;
        let block = config.block_size.bytes().0;
        let d = space(st.data_used * block, st.data_total * block, data)?;
        let m = space(
            st.meta_used * META_BLOCK,
            st.meta_total * META_BLOCK,
            metadata,
        )?;
        let dir = data.parent().unwrap_or(self.root());
        let host = self.kernel.fs_space(dir)?;
        Ok(autoextend::plan(policy, d, m, host, block))
    }
}

/// A space of the pool and what its file holds on the host.
fn space(used: u64, total: u64, file: &Path) -> Result<Space> {
    let m = fs::metadata(file).map_err(|e| Error::io("stat", file, e))?;
    Ok(Space {
        used,
        total,
        allocated: m.blocks().saturating_mul(512),
    })
}

/// The pool's configuration as the watcher last read it, and which
/// version of the records it came from (every save changes the files'
/// `stat`).
#[derive(Default)]
pub struct AutoextendWatch {
    seen: Option<(RecordsId, PoolConfig)>,
}

impl AutoextendWatch {
    fn config(&mut self, driver: &Driver) -> Result<&PoolConfig> {
        let stamp = driver.store.identity()?;
        if self.seen.as_ref().is_none_or(|(s, _)| *s != stamp) {
            let config = driver.store.load()?.pool;
            self.seen = Some((stamp, config));
        }
        Ok(&self.seen.as_ref().expect("just read").1)
    }
}

impl From<crate::pool::PoolMode> for PoolCondition {
    fn from(m: crate::pool::PoolMode) -> Self {
        use crate::pool::PoolMode;
        match m {
            PoolMode::ReadWrite => PoolCondition::ReadWrite,
            PoolMode::ReadOnly => PoolCondition::ReadOnly,
            PoolMode::OutOfDataSpace => PoolCondition::OutOfDataSpace,
            PoolMode::OutOfMetadataSpace => PoolCondition::OutOfMetadataSpace,
        }
    }
}
