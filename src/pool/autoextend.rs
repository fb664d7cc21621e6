//! Automatic growth of a pool on loop files, with LVM's
//! `thin_pool_autoextend_threshold` and `thin_pool_autoextend_percent`
//! semantics (lvm.conf): when the used share of the data (or metadata)
//! space reaches the threshold, the space grows by the percent of its
//! current size, as many times as it takes to bring the use back under the
//! threshold; a threshold of 100 turns it off, and LVM's floor of 50 is
//! enforced. Unlike a volume group, a host filesystem has no extents to
//! count, so two limits bound every growth:
//!
//! - the maximum data size of the policy, when it has one (metadata: the
//!   kernel's 16 GiB);
//! - the host filesystem's free space, less a reserve ([`reserve`]: 5% of
//!   the filesystem, at least 1 GiB): the files are sparse, so what counts
//!   is what they could still take, their size less what they hold on the
//!   host, for both files together.
//!
//! [`plan`] decides, from figures alone; `thinlayer serve` reads them and
//! acts (see [`crate::driver::Driver::autoextend`]).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::kernel::FsSpace;
use crate::units::Bytes;

/// The policy, as `pool init` and `pool set` record it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Autoextend {
    /// Grow when this percentage of a space is used; 100: never.
    pub threshold_percent: u8,
    /// Each step adds this percentage of the space's current size.
    pub percent: u16,
    /// The data space never grows past this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Bytes>,
}

/// LVM's defaults: off, and 20% a step when turned on.
impl Default for Autoextend {
    fn default() -> Self {
        Autoextend {
            threshold_percent: 100,
            percent: 20,
            max: None,
        }
    }
}

/// The kernel accepts metadata devices up to about 16 GiB.
pub const METADATA_MAX: u64 = 16 << 30;

/// What the host filesystem holding the files must keep free: 5% of its
/// size, and at least 1 GiB.
pub fn reserve(fs_size: u64) -> u64 {
    (fs_size / 20).max(1 << 30)
}

impl Autoextend {
    pub fn enabled(&self) -> bool {
        self.threshold_percent < 100
    }

    /// Refuses a threshold outside 50..=100, a percent outside 1..=1000,
    /// or a maximum below the data space's size (`data_size`, if known).
    pub fn validate(&self, data_size: Option<Bytes>) -> Result<()> {
        if !(50..=100).contains(&self.threshold_percent) {
            return Err(Error::invalid(
                "autoextend threshold",
                &self.threshold_percent.to_string(),
                "a percentage from 50 to 100 (100 turns automatic growth off; \
                 LVM's floor of 50 keeps a pool from growing when half full)",
            ));
        }
        if !(1..=1000).contains(&self.percent) {
            return Err(Error::invalid(
                "autoextend percent",
                &self.percent.to_string(),
                "each step adds 1 to 1000 percent of the current size",
            ));
        }
        if let (Some(max), Some(size)) = (self.max, data_size) {
            if max < size {
                return Err(Error::invalid(
                    "autoextend maximum",
                    &max.to_string(),
                    &format!("the data space is {size} already; a pool never shrinks"),
                ));
            }
        }
        Ok(())
    }
}

/// One space of the pool (data or metadata), in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub used: u64,
    pub total: u64,
    /// What its file holds on the host (allocated blocks).
    pub allocated: u64,
}

/// Why a space that crossed the threshold grew less than the policy asks,
/// or not at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// The policy's maximum (data) or the kernel's 16 GiB (metadata).
    Max,
    /// The host filesystem's free space, less the reserve.
    HostSpace,
}

impl Limit {
    pub fn name(self) -> &'static str {
        match self {
            Limit::Max => "max",
            Limit::HostSpace => "host_space",
        }
    }
}

/// What to do with one space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Under the threshold, or automatic growth is off.
    Keep,
    /// Grow from `from` to `to` bytes; `limited` when a limit cut it short.
    Grow {
        from: u64,
        to: u64,
        limited: Option<Limit>,
    },
    /// Over the threshold, and a limit leaves no room at all.
    Blocked { limit: Limit },
}

/// What to do with both spaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub data: Step,
    pub metadata: Step,
}

impl Plan {
    /// The new sizes to give `Pool::grow`, if anything grows.
    pub fn sizes(&self) -> Option<(Option<Bytes>, Option<Bytes>)> {
        let to = |s: &Step| match s {
            Step::Grow { to, .. } => Some(Bytes(*to)),
            _ => None,
        };
        let (d, m) = (to(&self.data), to(&self.metadata));
        (d.is_some() || m.is_some()).then_some((d, m))
    }
}

/// Decides what to grow: metadata first (a pool out of metadata stops
/// altogether), then data with what host room is left. `block` is the
/// pool's data block size: the data space grows in whole blocks.
pub fn plan(policy: &Autoextend, data: Space, metadata: Space, host: FsSpace, block: u64) -> Plan {
    let room = host.free.saturating_sub(reserve(host.size));
    // What each file could still take on the host, as it is now.
    let unbacked = |s: &Space| s.total.saturating_sub(s.allocated);
    let meta_room = room
        .saturating_sub(unbacked(&data))
        .saturating_sub(unbacked(&metadata));
    let metadata_step = step(policy, metadata, METADATA_MAX, meta_room, META_UNIT);
    let meta_extra = match metadata_step {
        Step::Grow { to, .. } => to - metadata.total,
        _ => 0,
    };
    let data_room = meta_room.saturating_sub(meta_extra);
    let max = policy.max.map_or(u64::MAX, |b| b.0);
    Plan {
        data: step(policy, data, max, data_room, block.max(1)),
        metadata: metadata_step,
    }
}

/// Metadata grows in whole MiB.
const META_UNIT: u64 = 1 << 20;

/// One space: `cap` its largest size, `room` the host bytes it may take
/// beyond what both files could take already, `unit` its granularity.
fn step(policy: &Autoextend, s: Space, cap: u64, room: u64, unit: u64) -> Step {
    let threshold = u128::from(policy.threshold_percent);
    let over = |total: u64| u128::from(s.used) * 100 >= u128::from(total) * threshold;
    if !policy.enabled() || s.total == 0 || !over(s.total) {
        return Step::Keep;
    }
    // As many steps of `percent` as bring the use under the threshold.
    let mut want = s.total;
    while over(want) {
        let add = (u128::from(want) * u128::from(policy.percent)).div_ceil(100);
        want = u64::try_from(u128::from(want) + add).unwrap_or(u64::MAX);
        if want >= cap {
            break;
        }
    }
    want = want.div_ceil(unit).saturating_mul(unit);
    let host_cap = s.total.saturating_add(room);
    let (to, limited) = if want > cap.min(host_cap) {
        let limit = if cap <= host_cap {
            Limit::Max
        } else {
            Limit::HostSpace
        };
        (cap.min(host_cap) / unit * unit, Some(limit))
    } else {
        (want, None)
    };
    if to <= s.total {
        return Step::Blocked {
            limit: limited.unwrap_or(Limit::Max),
        };
    }
    Step::Grow {
        from: s.total,
        to,
        limited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const BLOCK: u64 = 64 << 10;

    fn policy(threshold: u8, percent: u16, max: Option<u64>) -> Autoextend {
        Autoextend {
            threshold_percent: threshold,
            percent,
            max: max.map(Bytes),
        }
    }

    fn space(used: u64, total: u64) -> Space {
        Space {
            used,
            total,
            allocated: used,
        }
    }

    /// A big, empty host filesystem.
    const ROOMY: FsSpace = FsSpace {
        free: 900 * GIB,
        size: 1000 * GIB,
    };

    /// A space whose file holds all of it on the host.
    fn written(used: u64, total: u64) -> Space {
        Space {
            used,
            total,
            allocated: total,
        }
    }

    fn data_step(p: &Autoextend, data: Space, host: FsSpace) -> Step {
        plan(p, data, written(MIB, 64 * MIB), host, BLOCK).data
    }

    #[test]
    fn under_the_threshold_or_off_nothing_grows() {
        let p = policy(70, 50, None);
        assert_eq!(
            data_step(&p, space(179 * MIB, 256 * MIB), ROOMY),
            Step::Keep
        );
        let off = policy(100, 50, None);
        assert_eq!(
            data_step(&off, space(256 * MIB, 256 * MIB), ROOMY),
            Step::Keep
        );
    }

    #[test]
    fn at_the_threshold_a_space_grows_by_the_percent_of_its_size() {
        // lvm.conf's example: 70% and 20% on 1G: at 700M, to 1.2G.
        let p = policy(70, 20, None);
        let s = data_step(&p, space(717 * MIB, GIB), ROOMY);
        assert_eq!(
            s,
            Step::Grow {
                from: GIB,
                to: (GIB * 12 / 10).div_ceil(BLOCK) * BLOCK,
                limited: None
            }
        );
        let p = policy(70, 50, None);
        assert_eq!(
            data_step(&p, space(180 * MIB, 256 * MIB), ROOMY),
            Step::Grow {
                from: 256 * MIB,
                to: 384 * MIB,
                limited: None
            }
        );
    }

    #[test]
    fn several_steps_when_one_leaves_the_use_over_the_threshold() {
        // 95% used: one 50% step gives 63%, under 70; one 20% step gives
        // 79%, so two: 1.44 times the size.
        let p = policy(70, 20, None);
        let s = data_step(&p, space(950 * MIB, 1000 * MIB), ROOMY);
        assert_eq!(
            s,
            Step::Grow {
                from: 1000 * MIB,
                to: 1440 * MIB,
                limited: None
            }
        );
    }

    #[test]
    fn the_maximum_caps_a_step_then_blocks() {
        let p = policy(70, 50, Some(GIB));
        assert_eq!(
            data_step(&p, space(700 * MIB, 768 * MIB), ROOMY),
            Step::Grow {
                from: 768 * MIB,
                to: GIB,
                limited: Some(Limit::Max)
            }
        );
        assert_eq!(
            data_step(&p, space(800 * MIB, GIB), ROOMY),
            Step::Blocked { limit: Limit::Max }
        );
    }

    #[test]
    fn the_host_keeps_its_reserve() {
        let p = policy(70, 100, None);
        // 20 GiB filesystem: the reserve is 1 GiB (5% is less); 1.5 GiB
        // free leaves 512 MiB of room. The data file holds all it uses.
        let host = FsSpace {
            free: 1536 * MIB,
            size: 20 * GIB,
        };
        assert_eq!(reserve(host.size), GIB);
        assert_eq!(
            data_step(&p, written(800 * MIB, GIB), host),
            Step::Grow {
                from: GIB,
                to: GIB + 512 * MIB,
                limited: Some(Limit::HostSpace)
            }
        );
        // 100 GiB filesystem: the reserve is 5 GiB.
        assert_eq!(reserve(100 * GIB), 5 * GIB);
        let tight = FsSpace {
            free: 5 * GIB,
            size: 100 * GIB,
        };
        assert_eq!(
            data_step(&p, written(800 * MIB, GIB), tight),
            Step::Blocked {
                limit: Limit::HostSpace
            }
        );
    }

    #[test]
    fn what_sparse_files_could_still_take_counts_against_the_room() {
        // Three times the size asked for, more than the room.
        let p = policy(70, 200, None);
        let host = FsSpace {
            free: 3 * GIB,
            size: 20 * GIB,
        };
        // 2 GiB of room; the data file holds 800 MiB of its 1 GiB and the
        // metadata file 1 MiB of its 64 MiB: 287 MiB of that room is
        // spoken for already.
        let data = Space {
            used: 800 * MIB,
            total: GIB,
            allocated: 800 * MIB,
        };
        let meta = Space {
            used: MIB,
            total: 64 * MIB,
            allocated: MIB,
        };
        let s = plan(&p, data, meta, host, BLOCK);
        assert_eq!(s.metadata, Step::Keep);
        assert_eq!(
            s.data,
            Step::Grow {
                from: GIB,
                to: GIB + 2 * GIB - 224 * MIB - 63 * MIB,
                limited: Some(Limit::HostSpace)
            }
        );
    }

    #[test]
    fn metadata_grows_first_in_whole_mib_up_to_the_kernels_limit() {
        let p = policy(80, 50, Some(2 * GIB));
        let s = plan(
            &p,
            space(900 * MIB, GIB),
            space(60 * MIB, 64 * MIB),
            ROOMY,
            BLOCK,
        );
        assert_eq!(
            s.metadata,
            Step::Grow {
                from: 64 * MIB,
                to: 96 * MIB,
                limited: None
            }
        );
        assert_eq!(
            s.data,
            Step::Grow {
                from: GIB,
                to: GIB + 512 * MIB,
                limited: None
            }
        );
        assert_eq!(
            s.sizes(),
            Some((Some(Bytes(1536 * MIB)), Some(Bytes(96 * MIB))))
        );
        let full = plan(
            &p,
            space(MIB, GIB),
            space(15 * GIB, METADATA_MAX),
            ROOMY,
            BLOCK,
        );
        assert_eq!(full.metadata, Step::Blocked { limit: Limit::Max });
        assert_eq!(full.sizes(), None);
    }

    #[test]
    fn policies_are_validated() {
        policy(70, 50, Some(GIB))
            .validate(Some(Bytes(256 * MIB)))
            .unwrap();
        policy(100, 20, None).validate(None).unwrap();
        assert!(policy(49, 20, None).validate(None).is_err());
        assert!(policy(101, 20, None).validate(None).is_err());
        assert!(policy(70, 0, None).validate(None).is_err());
        assert!(
            policy(70, 20, Some(128 * MIB))
                .validate(Some(Bytes(256 * MIB)))
                .is_err()
        );
    }
}
