//! The background work of `thinlayer serve`: new snapshots trimmed while
//! their clients fill them ([`Driver::pretrim`]; not those of parents
//! that keep spares, nor the spares), pending removals
//! reaped, spares kept for the parents Prepares ask for, and the devices
//! of committed snapshots taken down (see the driver's `removal` and
//! `spares` modules, and [`Driver::release_devices_later`]).
//!
//! One thread. It wakes when a snapshot is removed or prepared, and at
//! least every [`IDLE`] while removals are pending (one whose device a
//! client still holds open is tried again then). Calls come first: before
//! each piece of work it waits while calls are in flight, up to
//! [`YIELD`], so a Prepare never queues behind a spare being made; past
//! that it goes ahead, so that a server under constant load still frees
//! space.
//!
//! Spares: for each of the last [`PARENTS`] parents asked for by a second
//! Prepare, up to [`SPARES`] spares (or as many as `serve --spares` says;
//! 0: none), and never more than [`crate::driver::MAX_SPARES`] in all. A
//! parent asked for once gets none: a build or an unpack prepares each
//! layer it commits once, on the one before, and a spare made of it would
//! only cost its making and its removal, on the same CPUs as the build.
//! Containers of one image ask for its top again and again: from the
//! second on, they find spares. The parents of snapshots containerd
//! unpacks layers into are left out, as are Prepares that ask for their
//! own size. Spares of a parent that drops out of the list are dropped.
//! A Commit hands the committed snapshot's mount over as a spare of it
//! (see [`Driver::commit_snapshot`]), for the Prepare of the next layer
//! of a build or an unpack: kept [`HANDED`], then dropped unless the layer
//! has become a parent that keeps spares.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Driver;

/// The longest the thread sleeps while removals are pending.
pub const IDLE: Duration = Duration::from_secs(1);
/// The longest a piece of background work waits for calls in flight.
pub const YIELD: Duration = Duration::from_millis(100);
/// How many parents keep spares.
pub const PARENTS: usize = 2;
/// How many parents asked for once are remembered, waiting for a second
/// Prepare that makes them keep spares.
const SEEN: usize = 16;
/// Spares per parent, unless told otherwise (`serve --spares`).
pub const SPARES: usize = 2;
/// How long a spare a Commit handed over waits for a Prepare on the
/// committed snapshot.
pub const HANDED: Duration = Duration::from_secs(10);
/// Removals reaped per record write.
const BATCH: usize = 16;
/// How long stopping may spend on pending removals before leaving them to
/// the next start.
const STOP_BUDGET: Duration = Duration::from_secs(10);

/// What the thread has been told since it last looked.
#[derive(Default)]
struct Todo {
    /// Something arrived.
    news: bool,
    removed: bool,
    /// The parents that keep spares, the most recent first.
    parents: VecDeque<Option<String>>,
    /// Parents asked for once, the most recent first.
    seen: VecDeque<Option<String>>,
    /// Parents that dropped out of `parents`: their spares go.
    dropped: Vec<Option<String>>,
    /// Committed snapshots whose Commit handed a spare over, and when.
    handed: VecDeque<(String, Instant)>,
    /// New active snapshots to trim (see [`Driver::pretrim`]), with
    /// their parents.
    trims: Vec<(String, Option<String>)>,
    stop: bool,
}

struct Shared {
    todo: Mutex<Todo>,
    wake: Condvar,
    calls: AtomicUsize,
    /// Spares per parent.
    spares: usize,
}

impl Todo {
    /// A Prepare on `parent`: from its second, the parent keeps spares.
    fn prepared(&mut self, parent: Option<String>) {
        let again = self.parents.contains(&parent) || self.seen.contains(&parent);
        self.seen.retain(|q| *q != parent);
        if !again {
            self.seen.push_front(parent);
            self.seen.truncate(SEEN);
            return;
        }
        self.parents.retain(|q| *q != parent);
        self.parents.push_front(parent);
        while self.parents.len() > PARENTS {
            let gone = self.parents.pop_back().expect("longer than PARENTS");
            self.dropped.push(gone);
        }
    }
}

impl Shared {
    fn todo(&self) -> MutexGuard<'_, Todo> {
        self.todo.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tell(&self, f: impl FnOnce(&mut Todo)) {
        let mut t = self.todo();
        f(&mut t);
        t.news = true;
        self.wake.notify_one();
    }

    /// Whether something arrived that the thread has not looked at.
    fn news(&self) -> bool {
        self.todo().news
    }
}

/// The running thread; [`Housekeeper::stop`] ends it.
pub struct Housekeeper {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A call in flight, counted while it lives.
pub struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Housekeeper {
    /// Starts the thread for `driver`, keeping `spares` spares per parent.
    pub fn start(driver: Arc<Driver>, spares: usize) -> Housekeeper {
        let shared = Arc::new(Shared {
            todo: Mutex::new(Todo {
                // Removals a previous server left.
                removed: true,
                news: true,
                ..Todo::default()
            }),
            wake: Condvar::new(),
            calls: AtomicUsize::new(0),
            spares,
        });
        let mine = shared.clone();
        let thread = std::thread::Builder::new()
            .name("housekeeper".into())
            .spawn(move || run(&driver, &mine))
            .expect("start the housekeeper thread");
        Housekeeper {
            shared,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Counts a call in flight until the returned value drops.
    pub fn call(&self) -> InFlight {
        self.shared.calls.fetch_add(1, Ordering::Relaxed);
        InFlight(self.shared.clone())
    }

    /// A snapshot was removed: its removal is pending.
    pub fn removed(&self) {
        self.shared.tell(|t| t.removed = true);
    }

    /// The active snapshot `key` was prepared on `parent`: its filesystem
    /// is trimmed in the background, unless the parent keeps spares.
    pub fn trim(&self, key: String, parent: Option<String>) {
        self.shared.tell(|t| t.trims.push((key, parent)));
    }

    /// Whether Commits hand their mounts over as spares (see
    /// [`Driver::commit_snapshot`]): unless `serve --spares 0`.
    pub fn keeps_spares(&self) -> bool {
        self.shared.spares > 0
    }

    /// The snapshot `name` was committed: its device may be idle, or,
    /// if its Commit handed its mount over (`spare`), that spare is kept
    /// for [`HANDED`].
    pub fn committed(&self, name: String, spare: bool) {
        self.shared.tell(|t| {
            if spare {
                t.handed.push_back((name, Instant::now()));
            }
        });
    }

    /// A snapshot was prepared on `parent` (`None`: the base): from the
    /// second time, it keeps spares.
    pub fn prepared(&self, parent: Option<String>) {
        if self.shared.spares == 0 {
            return;
        }
        self.shared.tell(|t| t.prepared(parent));
    }

    /// Stops the thread: drops the spares and reaps pending removals for
    /// a few seconds (the rest waits for the next start). Blocks until done.
    pub fn stop(&self) {
        self.shared.tell(|t| t.stop = true);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for Housekeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(driver: &Driver, shared: &Shared) {
    let mut removals = false;
    loop {
        let (parents, dropped, trims, stop) = {
            let mut t = shared.todo();
            if !t.news {
                let mut timeout = if removals {
                    IDLE
                } else {
                    Duration::from_secs(3600)
                };
                if let Some((_, at)) = t.handed.front() {
                    timeout = timeout.min((*at + HANDED).saturating_duration_since(Instant::now()));
                }
                t = shared
                    .wake
                    .wait_timeout(t, timeout)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            t.news = false;
            removals |= std::mem::take(&mut t.removed);
            // Handed-over spares no Prepare claimed in time go, unless
            // their layer now keeps spares.
            while let Some((name, at)) = t.handed.front() {
                if at.elapsed() < HANDED {
                    break;
                }
                let name = Some(name.clone());
                t.handed.pop_front();
                if !t.parents.contains(&name) {
                    t.dropped.push(name);
                }
            }
            (
                t.parents.clone(),
                std::mem::take(&mut t.dropped),
                std::mem::take(&mut t.trims),
                t.stop,
            )
        };
        if stop {
            stop_work(driver);
            return;
        }
        for p in dropped {
            if let Err(e) = driver.drop_spares_of(p.as_deref()) {
                tracing::warn!(error = %e, "cannot drop spares");
            }
            removals = true;
        }
        // First: a Commit may come soon and wait for them. Not those of
        // parents that keep spares: their containers are seldom committed
        // (the Commit then trims it all), and each is a walk of a whole
        // filesystem on the CPUs the containers need.
        for (key, parent) in trims {
            if parents.contains(&parent) {
                continue;
            }
            if let Err(e) = driver.pretrim(&key) {
                tracing::debug!(key, error = %e, "cannot trim a new snapshot");
            }
        }
        // Spares first: a Prepare waits for them; space can wait a little.
        'parents: for p in &parents {
            loop {
                if shared.news() {
                    break 'parents;
                }
                yield_to_calls(shared);
                match driver.make_spare(p.as_deref(), shared.spares) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(parent = ?p, error = %e, "cannot make a spare");
                        break;
                    }
                }
            }
        }
        if removals {
            removals = reap(driver, shared);
        }
        if !shared.news() {
            yield_to_calls(shared);
            if let Err(e) = driver.release_idle_devices() {
                tracing::warn!(error = %e, "cannot take down idle devices");
            }
        }
    }
}

/// Reaps pending removals in batches until none is left that can be done
/// now, or something else arrives. Returns whether removals are still
/// pending.
fn reap(driver: &Driver, shared: &Shared) -> bool {
    loop {
        yield_to_calls(shared);
        match driver.reap(BATCH) {
            Ok(r) if r.done > 0 && !shared.news() => {}
            Ok(r) if r.done > 0 => return true,
            Ok(r) => return r.held + r.failed > 0,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reap pending removals");
                return true;
            }
        }
    }
}

/// Waits while calls are in flight, at most [`YIELD`].
fn yield_to_calls(shared: &Shared) {
    let until = Instant::now() + YIELD;
    while shared.calls.load(Ordering::Relaxed) > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn stop_work(driver: &Driver) {
    if let Err(e) = driver.release_idle_devices() {
        tracing::warn!(error = %e, "cannot take down idle devices while stopping");
    }
    if let Err(e) = driver.drop_spares() {
        tracing::warn!(error = %e, "cannot drop the spares while stopping");
    }
    let until = Instant::now() + STOP_BUDGET;
    while Instant::now() < until {
        match driver.reap(BATCH) {
            Ok(r) if r.done > 0 => {}
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reap pending removals while stopping");
                break;
            }
        }
    }
    match driver.pending_removals() {
        Ok(left) if !left.is_empty() => tracing::info!(
            pending = left.len(),
            "stopping with removals pending; the next start finishes them"
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn a_parent_keeps_spares_from_its_second_prepare() {
        let mut t = Todo::default();
        // A build: each layer prepared on once.
        for l in ["l0", "l1", "l2", "l3"] {
            t.prepared(some(l));
        }
        assert!(t.parents.is_empty(), "{:?}", t.parents);
        // Containers of one image.
        t.prepared(some("l3"));
        assert_eq!(t.parents, [some("l3")]);
        t.prepared(some("l3"));
        assert_eq!(t.parents, [some("l3")]);
        // The base, twice, then a third parent twice: the oldest drops out.
        t.prepared(None);
        t.prepared(None);
        assert_eq!(t.parents, [None, some("l3")]);
        t.prepared(some("l1"));
        assert_eq!(t.parents, [some("l1"), None]);
        assert_eq!(t.dropped, [some("l3")]);
        assert!(!t.seen.contains(&some("l1")));
    }

    #[test]
    fn parents_asked_for_once_are_remembered_up_to_a_bound() {
        let mut t = Todo::default();
        for i in 0..SEEN + 4 {
            t.prepared(Some(format!("l{i}")));
        }
        assert_eq!(t.seen.len(), SEEN);
        // The oldest were forgotten: a second Prepare counts as a first.
        t.prepared(some("l0"));
        assert!(t.parents.is_empty());
        t.prepared(Some(format!("l{}", SEEN + 3)));
        assert_eq!(t.parents, [Some(format!("l{}", SEEN + 3))]);
    }
}
