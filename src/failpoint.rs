//! Crash injection for tests.
//!
//! Every step of a mutating operation that matters for crash safety calls
//! [`hit`] with its name, e.g. `create.after-message`. In builds with the
//! `failpoints` feature, a process whose `THINLAYER_FAILPOINT` names that
//! step kills itself there with SIGKILL: no destructor, no flush, no unwind,
//! as a crash or `kill -9` would. Unit tests arm a point for their own thread
//! with [`arm`] and get a panic instead, which stops the operation just as
//! abruptly. In other builds [`hit`] is empty.

/// The failpoints of `pool init`, in the order it reaches them: its own,
/// then those of the base device's creation.
#[cfg(any(test, feature = "testing"))]
pub const INIT_POINTS: &[&str] = &[
    "init.after-files",
    "init.after-loops",
    "init.after-pool",
    "init.after-records",
    "base.after-intent",
    "base.after-message",
    "base.after-transaction",
    "base.after-record",
    "base.after-mkfs",
];

#[cfg(any(test, feature = "failpoints"))]
mod imp {
    use std::cell::RefCell;

    thread_local! {
        static ARMED: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    /// Arms `name` for this thread (unit tests): the next [`hit`] of it panics.
    pub fn arm(name: &str) {
        ARMED.with(|a| *a.borrow_mut() = Some(name.to_string()));
    }

    pub fn hit(name: &str) {
        let armed = ARMED.with(|a| {
            let mut a = a.borrow_mut();
            if a.as_deref() == Some(name) {
                a.take()
            } else {
                None
            }
        });
        if armed.is_some() {
            panic!("failpoint {name}");
        }
        if std::env::var("THINLAYER_FAILPOINT").is_ok_and(|v| v == name) {
            tracing::warn!(failpoint = name, "killing this process at a failpoint");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

#[cfg(any(test, feature = "failpoints"))]
pub use imp::{arm, hit};

#[cfg(not(any(test, feature = "failpoints")))]
#[inline(always)]
pub fn hit(_name: &str) {}
