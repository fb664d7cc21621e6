//! Crash injection for tests.
//!
//! Every step of a mutating operation that matters for crash safety calls
//! [`hit`] with its [`Point`], e.g. [`create::AFTER_MESSAGE`]
//! (`create.after-message`). The points are the constants declared here,
//! one module per operation; no other code can make one, so [`ALL`] lists
//! every point there is, and the crash tests check that they kill at each.
//!
//! In builds with the `failpoints` feature, a process whose
//! `THINLAYER_FAILPOINT` names that step kills itself there with SIGKILL: no
//! destructor, no flush, no unwind, as a crash or `kill -9` would. Unit
//! tests arm a point for their own thread with `arm` and get a panic
//! instead, which stops the operation just as abruptly. In other builds
//! [`hit`] is empty.

use std::fmt;

/// A step of an operation at which a test may kill it: `OPERATION.STEP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Point(&'static str);

impl Point {
    /// The name `THINLAYER_FAILPOINT` takes.
    pub const fn name(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The points of one change of the pool's thin ids under the protocol of
/// [`crate::records`]: after the intent is saved, after the kernel message
/// (and whatever the operation does with it), after the record.
#[derive(Clone, Copy, Debug)]
pub struct Transaction {
    pub after_intent: Point,
    pub after_message: Point,
    pub after_record: Point,
}

impl Transaction {
    /// The three points, in the order the protocol reaches them.
    pub const fn points(&self) -> [Point; 3] {
        [self.after_intent, self.after_message, self.after_record]
    }
}

/// Declares one module of points per operation, with its `POINTS`, and
/// [`ALL`]. An operation marked `[transaction]` starts with the three points
/// of its transaction, `AFTER_INTENT` to `AFTER_RECORD`, also given as its
/// `TRANSACTION`.
macro_rules! operations {
    ($(
        $(#[$doc:meta])*
        $op:ident = $name:literal $([$tx:ident])? {
            $($point:ident = $step:literal,)*
        }
    )*) => {
        $(operations!(@op $(#[$doc])* $op $name [$($tx)?] { $($point = $step,)* });)*

        /// Every point, operation by operation.
        pub const ALL: &[&[Point]] = &[$($op::POINTS),*];
    };
    (@op $(#[$doc:meta])* $op:ident $name:literal [transaction] {
        $($point:ident = $step:literal,)*
    }) => {
        operations!(@module $(#[$doc])* $op $name {
            AFTER_INTENT = "after-intent",
            AFTER_MESSAGE = "after-message",
            AFTER_RECORD = "after-record",
            $($point = $step,)*
        } {
            /// The points of the operation's transaction.
            pub const TRANSACTION: super::Transaction = super::Transaction {
                after_intent: AFTER_INTENT,
                after_message: AFTER_MESSAGE,
                after_record: AFTER_RECORD,
            };
        });
    };
    (@op $(#[$doc:meta])* $op:ident $name:literal [] {
        $($point:ident = $step:literal,)*
    }) => {
        operations!(@module $(#[$doc])* $op $name { $($point = $step,)* } {});
    };
    (@module $(#[$doc:meta])* $op:ident $name:literal {
        $($point:ident = $step:literal,)*
    } {
        $($more:item)*
    }) => {
        $(#[$doc])*
        pub mod $op {
            use super::Point;

            $(
                #[doc = concat!("`", $name, ".", $step, "`")]
                pub const $point: Point = Point(concat!($name, ".", $step));
            )*

            /// Every point of the operation.
            pub const POINTS: &[Point] = &[$($point),*];

            $($more)*
        }
    };
}

operations! {
    /// `pool init`, before the base device's creation ([`base`]).
    init = "init" {
        AFTER_FILES = "after-files",
        AFTER_LOOPS = "after-loops",
        AFTER_POOL = "after-pool",
        AFTER_RECORDS = "after-records",
    }
    /// Making the base device: its transaction, then its filesystem.
    base = "base" [transaction] {
        AFTER_MKFS = "after-mkfs",
    }
    /// Bringing the pool up and repairing the root when it is opened.
    activate = "activate" {
        AFTER_LOOPS = "after-loops",
        AFTER_CHECK = "after-check",
        AFTER_LOAD = "after-load",
        AFTER_RECONCILE = "after-reconcile",
    }
    /// Deleting a thin id the records do not know, found on activation.
    orphan = "orphan" [transaction] {}
    /// Creating a layer; a pinned one is then activated.
    create = "create" [transaction] {
        AFTER_ACTIVATE = "after-activate",
    }
    /// Growing a new layer's filesystem to a device larger than its
    /// parent's: inside the layer's creation, after its `create_snap` and
    /// before its record, so a crash rolls the layer back.
    grow = "grow" {
        AFTER_ACTIVATE = "after-activate",
        AFTER_RESIZE = "after-resize",
    }
    /// Mounting a layer that is not mounted yet.
    mount = "mount" {
        AFTER_ACTIVATE = "after-activate",
        AFTER_MOUNT = "after-mount",
    }
    /// Dropping a layer's last mount.
    umount = "umount" {
        AFTER_UMOUNT = "after-umount",
        AFTER_DEACTIVATE = "after-deactivate",
    }
    /// Committing a layer: in place (`AFTER_RECORD` where the caller names
    /// an image or sets labels), or, for a layer whose device is open, as a
    /// snapshot (the transaction); one that hands its mount over is
    /// remounted read-only inside the transaction, before the message.
    commit = "commit" [transaction] {
        AFTER_READ_ONLY = "after-read-only",
    }
    /// Removing a layer: it leaves the tree for the pending removals, in
    /// one record write (see [`reap`] for the rest).
    remove = "remove" {
        AFTER_RECORD = "after-record",
    }
    /// Doing a pending removal's kernel work: its mount, its blocks, its
    /// device, its thin id, then its record.
    reap = "reap" {
        AFTER_UMOUNT = "after-umount",
        AFTER_DISCARD = "after-discard",
        AFTER_DEACTIVATE = "after-deactivate",
        AFTER_DELETE = "after-delete",
        AFTER_RECORD = "after-record",
    }
    /// Making a spare: its transaction, then its device and mount.
    spare = "spare" [transaction] {
        AFTER_ACTIVATE = "after-activate",
        AFTER_MOUNT = "after-mount",
    }
    /// A Prepare claiming a spare: one record write.
    claim = "claim" {
        AFTER_RECORD = "after-record",
    }
    /// Removing an image and the layers only it used ([`remove`] for each).
    image_rm = "image-rm" {
        AFTER_MARK = "after-mark",
        AFTER_LAYER = "after-layer",
    }
    /// Importing an image, layer by layer.
    import = "import" {
        AFTER_CREATE = "after-create",
        AFTER_MOUNT = "after-mount",
        AFTER_APPLY = "after-apply",
        AFTER_COMMIT = "after-commit",
        AFTER_LAYERS = "after-layers",
    }
    /// Changing a layer's labels.
    labels = "labels" {
        AFTER_RECORD = "after-record",
    }
}

/// The failpoints of `pool init`, in the order it reaches them: its own,
/// then those of the base device's creation.
#[cfg(any(test, feature = "testing"))]
pub const INIT_POINTS: &[Point] = &[
    init::AFTER_FILES,
    init::AFTER_LOOPS,
    init::AFTER_POOL,
    init::AFTER_RECORDS,
    base::AFTER_INTENT,
    base::AFTER_MESSAGE,
    base::AFTER_RECORD,
    base::AFTER_MKFS,
];

#[cfg(any(test, feature = "failpoints"))]
mod imp {
    use std::cell::RefCell;

    use super::Point;

    thread_local! {
        static ARMED: RefCell<Option<Point>> = const { RefCell::new(None) };
    }

    /// Arms `point` for this thread (unit tests): the next [`hit`] of it
    /// panics.
    pub fn arm(point: Point) {
        ARMED.with(|a| *a.borrow_mut() = Some(point));
    }

    /// Disarms this thread's point, if it was not hit.
    pub fn disarm() {
        ARMED.with(|a| *a.borrow_mut() = None);
    }

    /// Whether this thread has a point armed: work that would go to other
    /// threads stays on this one, so that the point is hit where armed.
    pub fn armed() -> bool {
        ARMED.with(|a| a.borrow().is_some())
    }

    pub fn hit(point: Point) {
        let armed = ARMED.with(|a| {
            let mut a = a.borrow_mut();
            if *a == Some(point) { a.take() } else { None }
        });
        if armed.is_some() {
            panic!("failpoint {point}");
        }
        if std::env::var("THINLAYER_FAILPOINT").is_ok_and(|v| v == point.name()) {
            tracing::warn!(
                failpoint = point.name(),
                "killing this process at a failpoint"
            );
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

#[cfg(any(test, feature = "failpoints"))]
pub use imp::{arm, armed, disarm, hit};

#[cfg(not(any(test, feature = "failpoints")))]
#[inline(always)]
pub fn hit(_point: Point) {}

/// Whether this thread has a point armed: never, without failpoints.
#[cfg(not(any(test, feature = "failpoints")))]
#[inline(always)]
pub fn armed() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_point_has_a_name_of_its_own() {
        let names: Vec<&str> = ALL
            .iter()
            .flat_map(|op| op.iter().map(|p| p.name()))
            .collect();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert!(INIT_POINTS.iter().all(|p| names.contains(&p.name())));
    }
}
