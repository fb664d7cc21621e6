//! What `thinlayer serve` watches: the pool read without the root's lock,
//! for the metrics endpoint.
//!
//! A reading never waits for an operation in progress (an import may hold
//! the lock for minutes): it reads `state.json`, which every save replaces
//! atomically, and the pool's status, one ioctl. It fails in no case: a
//! pool that failed, is down, or whose records cannot be read is reported
//! as such, with whatever else could be read.

use serde::Serialize;

use super::Driver;
use crate::error::Error;
use crate::pool::{Pool, PoolStatus};
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
                };
            }
        };
        let mut layers = LayerCounts {
            images: rec.tree.images.len(),
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
        }
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
