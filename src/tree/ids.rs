//! Thin id allocation: next-fit over the 24-bit id space.
//!
//! Ids are taken from a cursor that moves forward and wraps, so an id freed
//! by a removal is not handed out again until the whole space has been
//! walked: a device of the old layer still being removed (deferred removal)
//! never meets a new layer of the same id. Id 0 is never used.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::units::ThinId;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdAllocator {
    /// The last id handed out.
    cursor: u32,
}

impl IdAllocator {
    /// [`IdAllocator::allocate`] over the ids `used` yields, without
    /// collecting them: the id after the cursor is almost always free, so
    /// a few candidates are tried against a walk of `used` (no allocation,
    /// no sort) before the whole set is built.
    pub fn allocate_among<I: Iterator<Item = ThinId>>(
        &mut self,
        used: impl Fn() -> I,
    ) -> Result<ThinId> {
        const TRIES: u32 = 4;
        let mut candidate = self.cursor;
        for _ in 0..TRIES {
            candidate = if candidate >= ThinId::MAX {
                1
            } else {
                candidate + 1
            };
            if !used().any(|u| u.get() == candidate) {
                self.cursor = candidate;
                return ThinId::new(candidate);
            }
        }
        self.allocate(used())
    }

    /// The next id after the cursor that `used` does not hold; moves the cursor.
    pub fn allocate(&mut self, used: impl IntoIterator<Item = ThinId>) -> Result<ThinId> {
        let used: BTreeSet<u32> = used.into_iter().map(ThinId::get).collect();
        let max = ThinId::MAX;
        let start = if self.cursor >= max {
            1
        } else {
            self.cursor + 1
        };
        // Walk forward from the cursor to the end, then from 1 back to it.
        let forward = free_in(&used, start, max);
        let found = forward.or_else(|| free_in(&used, 1, start.saturating_sub(1)));
        match found {
            Some(id) => {
                self.cursor = id;
                ThinId::new(id)
            }
            None => Err(Error::NoSpace {
                what: "thin id",
                detail: format!("all {max} thin ids are in use"),
            }),
        }
    }
}

/// The smallest id in `lo..=hi` not in `used`.
fn free_in(used: &BTreeSet<u32>, lo: u32, hi: u32) -> Option<u32> {
    if lo > hi {
        return None;
    }
    let mut candidate = lo;
    for &u in used.range(lo..=hi) {
        if u != candidate {
            return Some(candidate);
        }
        candidate += 1;
    }
    (candidate <= hi).then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u32]) -> Vec<ThinId> {
        v.iter().map(|i| ThinId::new(*i).unwrap()).collect()
    }

    #[test]
    fn allocating_among_takes_what_allocate_takes() {
        let used = ids(&[1, 2, 3, 5, 6, 7, 8, 9, 10]);
        for cursor in [0, 2, 4, 6, ThinId::MAX - 1, ThinId::MAX] {
            let mut a = IdAllocator { cursor };
            let mut b = a.clone();
            assert_eq!(
                a.allocate_among(|| used.iter().copied()).unwrap(),
                b.allocate(used.clone()).unwrap(),
                "from cursor {cursor}"
            );
            assert_eq!(a, b);
        }
    }

    #[test]
    fn allocates_forward_and_skips_used_ids() {
        let mut a = IdAllocator::default();
        assert_eq!(a.allocate(ids(&[])).unwrap().get(), 1);
        assert_eq!(a.allocate(ids(&[1, 2, 3])).unwrap().get(), 4);
        // 2 was freed, but the cursor moves on.
        assert_eq!(a.allocate(ids(&[1, 3, 4])).unwrap().get(), 5);
    }

    #[test]
    fn wraps_around_at_the_24_bit_limit() {
        let mut a = IdAllocator {
            cursor: ThinId::MAX - 1,
        };
        assert_eq!(a.allocate(ids(&[])).unwrap().get(), ThinId::MAX);
        assert_eq!(a.allocate(ids(&[1, ThinId::MAX])).unwrap().get(), 2);
    }

    #[test]
    fn reports_exhaustion() {
        let used = BTreeSet::from_iter(1..=ThinId::MAX);
        let mut a = IdAllocator::default();
        let all: Vec<ThinId> = used.iter().map(|i| ThinId::new(*i).unwrap()).collect();
        assert!(matches!(a.allocate(all), Err(Error::NoSpace { .. })));
    }
}
