//! The one fixture every device test runs in.
//!
//! Each test gets its own directory on the VM's scratch disk and its own
//! device-mapper name prefix (derived from the root path, as thinlayer
//! does). After the test body, whether it passed or panicked, the fixture
//! destroys the pool through thinlayer if one is left, then looks for leaks:
//! device-mapper devices with the test's prefix, loop devices over files in
//! its directory, mounts under it. Any leak fails the test, and is cleaned up
//! by force so the next test starts clean. A leak check that cannot list
//! what it looks for fails the test with the listing's error.
//!
//! [`eventually`] is the one way a test waits for asynchronous work.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use thinlayer::kernel::{Kernel, Linux};

/// How long a test waits for asynchronous work before it fails: containerd's
/// garbage collector, a socket appearing, a process stopping, loop devices
/// detaching. Generous, so that the suite passes on a machine loaded three
/// times over (60 s for containerd's collector once was not enough); a wait
/// lasts this long only when what it waits for never happens.
pub const DEADLINE: Duration = Duration::from_secs(300);

/// The pool's data block at thinlayer's default block size: the unit of
/// every size thinlayer reports.
#[allow(dead_code)] // tests/powercut.rs, which includes this file, counts no sizes
pub const BLOCK: u64 = 64 << 10;

/// What ext4 itself writes around a container's files: journal blocks,
/// bitmaps, inode table blocks, directories, the superblock. Each lands in
/// its own pool block, so the bound is in pool blocks.
#[allow(dead_code)] // tests/powercut.rs, which includes this file, counts no sizes
pub const FS_OVERHEAD: u64 = 32 * BLOCK;

/// Pool blocks holding `bytes` written from a block boundary.
#[allow(dead_code)] // tests/powercut.rs, which includes this file, counts no sizes
pub fn in_blocks(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK) * BLOCK
}

/// Polls `check` until it returns `Ok`, sleeping a little between calls
/// (50 ms, doubling up to 1 s), for at most `deadline`. Returns the value,
/// or, when time runs out, the last state `check` reported.
pub fn within<T, E>(deadline: Duration, mut check: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(last) if started.elapsed() >= deadline => return Err(last),
            Err(_) => {}
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Waits until `check` returns `Ok` (see [`within`]) and returns its value;
/// fails the test if it has not after `deadline`, saying what never
/// happened, how long it waited, and the last state `check` reported.
#[allow(dead_code)] // tests/powercut.rs, which includes this file, waits for nothing
pub fn eventually<T, E: std::fmt::Display>(
    what: &str,
    deadline: Duration,
    check: impl FnMut() -> Result<T, E>,
) -> T {
    let started = Instant::now();
    within(deadline, check).unwrap_or_else(|last| {
        panic!(
            "never happened: {what} (waited {:.1} s, deadline {deadline:?}); last seen: {last}",
            started.elapsed().as_secs_f64()
        )
    })
}

pub struct Fixture {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub prefix: String,
    pub kernel: Arc<Linux>,
    /// Further roots made with [`Fixture::with_another_root`]: torn down and
    /// checked for leaks with this one.
    others: RefCell<Vec<Fixture>>,
}

/// Device tests run side by side (two at a time in the VM), each in its
/// fixture holding this lock shared; a test whose figures read counters of
/// the whole machine holds it alone (see [`run_alone`]).
static SIDE_BY_SIDE: RwLock<()> = RwLock::new(());

/// Runs `body` in a fresh fixture named `name`.
pub fn run(name: &str, body: impl FnOnce(&Fixture)) {
    let _shared = SIDE_BY_SIDE.read().unwrap_or_else(PoisonError::into_inner);
    run_with(Fixture::new(name), name, body);
}

/// Like [`run`], while no other device test runs: for figures read from
/// counters of the whole machine (the page cache's size in
/// `/proc/meminfo`), which another test's reads and writes would move.
/// The tests already running finish first; none starts until this one ends.
#[allow(dead_code)] // tests/powercut.rs, which includes this file, runs alone anyway
pub fn run_alone(name: &str, body: impl FnOnce(&Fixture)) {
    let _only = SIDE_BY_SIDE.write().unwrap_or_else(PoisonError::into_inner);
    run_with(Fixture::new(name), name, body);
}

/// Runs `body` in a fixture on `dir`, which is kept as it is: for a root
/// that outlives one boot of the VM. Torn down and checked like any other.
/// (Used by `tests/powercut.rs`, which includes this file.)
#[allow(dead_code)]
pub fn run_in(dir: &Path, body: impl FnOnce(&Fixture)) {
    fs::create_dir_all(dir).expect("create test directory");
    let name = dir.display().to_string();
    run_with(Fixture::at(dir.to_path_buf()), &name, body);
}

fn run_with(fx: Fixture, name: &str, body: impl FnOnce(&Fixture)) {
    let outcome = catch_unwind(AssertUnwindSafe(|| body(&fx)));
    let teardown = catch_unwind(AssertUnwindSafe(|| fx.teardown()));
    // A leak check that cannot list devices, loops or mounts panics.
    let leaks = catch_unwind(AssertUnwindSafe(|| fx.leaks()));
    fx.force_clean();
    if let Err(panic) = outcome {
        resume_unwind(panic);
    }
    if let Err(panic) = teardown {
        resume_unwind(panic);
    }
    let leaks = leaks.unwrap_or_else(|panic| resume_unwind(panic));
    assert!(leaks.is_empty(), "test {name} leaked: {leaks:#?}");
    let _ = fs::remove_dir_all(&fx.dir);
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        static N: AtomicU32 = AtomicU32::new(0);
        let scratch = std::env::var_os("SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        let dir = scratch.join(format!(
            "t-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create test directory");
        Fixture::at(dir)
    }

    /// The fixture of `dir` as it is, its root at `dir/root`.
    fn at(dir: PathBuf) -> Fixture {
        let kernel = Arc::new(Linux::new());
        // Never skip: a device test without device-mapper is a failure.
        kernel.check().unwrap_or_else(|e| {
            panic!("device tests need device-mapper and root; run them through vm-tests/run: {e}")
        });
        let root = dir.join("root");
        Fixture {
            prefix: thinlayer::pool::prefix_for(&root),
            dir,
            root,
            kernel,
            others: RefCell::new(Vec::new()),
        }
    }

    /// A second root in the same test directory (e.g. to import what this
    /// one exported). Runs `body` with it; the fixture tears it down.
    pub fn with_another_root(&self, name: &str, body: impl FnOnce(&Fixture)) {
        let root = self.dir.join(name);
        let other = Fixture {
            prefix: thinlayer::pool::prefix_for(&root),
            dir: self.dir.clone(),
            root,
            kernel: self.kernel.clone(),
            others: RefCell::new(Vec::new()),
        };
        // Registered first, so a panic in `body` still tears it down.
        self.others.borrow_mut().push(other);
        let others = self.others.borrow();
        body(others.last().expect("just pushed"));
    }

    /// Runs the thinlayer binary on this fixture's root.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_env(args, &[])
    }

    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        cli_at(&self.root, args, env)
    }

    /// Runs thinlayer and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "thinlayer {args:?} failed with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// `pool init` with these sizes (`base`: the default 10G when `None`).
    pub fn init_pool(&self, data: &str, metadata: &str, base: Option<&str>, extra: &[&str]) {
        let mut args = vec![
            "pool",
            "init",
            "--data-size",
            data,
            "--metadata-size",
            metadata,
        ];
        if let Some(b) = base {
            args.extend(["--base-size", b]);
        }
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    /// Runs thinlayer with `--json` and parses its output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("thinlayer {args:?} printed no JSON ({e}):\n{out}"))
    }

    /// The pool's data space in use (`pool status`).
    #[allow(dead_code)] // tests/powercut.rs, which includes this file, reads none
    pub fn data_used(&self) -> u64 {
        self.json(&["pool", "status"])["data_used"]
            .as_u64()
            .expect("data_used in pool status")
    }

    /// Runs thinlayer expecting failure with `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "thinlayer {args:?}: expected exit {code}, got {}: {stderr}",
            out.status
        );
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("thinlayer: error: "),
            "unclear error: {stderr}"
        );
        stderr
    }

    fn teardown(&self) {
        for other in self.others.borrow().iter() {
            other.teardown();
        }
        if self.root.join("state.json").exists() {
            let out = self.cli(&["pool", "destroy"]);
            assert!(
                out.status.success(),
                "pool destroy failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// What is left of this test in the kernel. Fails the test if a listing
    /// of device-mapper devices, loop devices or mounts fails.
    pub fn leaks(&self) -> Vec<String> {
        let mut out = Vec::new();
        let prefixes: Vec<String> = std::iter::once(self.prefix.clone())
            .chain(self.others.borrow().iter().map(|o| o.prefix.clone()))
            .collect();
        for name in listed("device-mapper devices", self.kernel.dm_list()) {
            if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                out.push(format!("device-mapper device {name}"));
            }
        }
        // Autoclear detaches a loop when its pool goes, a moment later.
        let loops = within(DEADLINE, || {
            let left = listed("loop devices", self.loops());
            if left.is_empty() { Ok(left) } else { Err(left) }
        })
        .unwrap_or_else(|left| left);
        for l in loops {
            out.push(format!(
                "loop device {} over {}",
                l.0.display(),
                l.1.display()
            ));
        }
        for m in listed("mounts", self.mounts()) {
            out.push(format!("mount on {}", m.display()));
        }
        out
    }

    /// This root's device-mapper devices, thin devices before their pool.
    pub fn devices(&self) -> Vec<String> {
        listed("device-mapper devices", self.try_devices())
    }

    fn try_devices(&self) -> thinlayer::Result<Vec<String>> {
        let mut devices: Vec<String> = self
            .kernel
            .dm_list()?
            .into_iter()
            .filter(|n| n.starts_with(&self.prefix))
            .collect();
        devices.sort_by_key(|n| n.ends_with("-pool"));
        Ok(devices)
    }

    /// Loop devices over files in this test's directory: (device, file).
    fn loops(&self) -> thinlayer::Result<Vec<(PathBuf, PathBuf)>> {
        Ok(self
            .kernel
            .loop_list()?
            .into_iter()
            .filter(|l| l.backing_file.starts_with(&self.dir))
            .map(|l| (l.device, l.backing_file))
            .collect())
    }

    /// Mount points under this test's directory.
    fn mounts(&self) -> thinlayer::Result<Vec<PathBuf>> {
        self.mounts_under(&self.dir)
    }

    /// Mount points under `dir`.
    pub fn mounts_under(&self, dir: &Path) -> thinlayer::Result<Vec<PathBuf>> {
        Ok(self
            .kernel
            .mounts()?
            .into_iter()
            .map(|m| m.target)
            .filter(|t| t.starts_with(dir))
            .collect())
    }

    /// Unmounts `mounts` by force, deepest first (best effort: the
    /// clean-up of a test, which checks mounts itself).
    pub fn force_umount(&self, mut mounts: Vec<PathBuf>) {
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            let _ = self.kernel.umount(&m, true);
        }
    }

    /// Removes by force what the test left, as far as the kernel lets it
    /// list it (the leak check has failed the test on a listing error).
    fn force_clean(&self) {
        if let Ok(mounts) = self.mounts() {
            self.force_umount(mounts);
        }
        for d in self.try_devices().into_iter().flatten() {
            let _ = self.kernel.dm_resume(&d);
            let _ = self.kernel.dm_remove(&d, false);
        }
        for (dev, _) in self.loops().into_iter().flatten() {
            let _ = self.kernel.loop_detach(&dev);
        }
    }
}

/// A listing's result, or a test failure naming what could not be listed.
fn listed<T>(what: &str, r: thinlayer::Result<Vec<T>>) -> Vec<T> {
    r.unwrap_or_else(|e| panic!("cannot list {what}: {e}"))
}

/// Runs the thinlayer binary on `root` (for threads, which cannot share a
/// [`Fixture`]).
pub fn cli_at(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_thinlayer"));
    c.arg("--root").arg(root).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run thinlayer")
}

/// An image layer holding static busybox (the host's, from busybox-static)
/// as `bin/busybox`, with `bin/APPLET` links to it; add more to it.
#[allow(dead_code)] // tests/powercut.rs, which includes this file, builds no image
pub fn busybox_layer(applets: &[&str]) -> thinlayer::image::build::LayerBuilder {
    let busybox = fs::read("/bin/busybox").expect("busybox-static is installed on the host");
    let mut layer = thinlayer::image::build::LayerBuilder::new();
    layer.dir("bin", 0o755).file("bin/busybox", &busybox, 0o755);
    for applet in applets {
        layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    layer
}

/// Writes `len` bytes of a pattern seeded by `seed` to `path`, and fsyncs.
pub fn write_file(path: &Path, len: usize, seed: u8) {
    use std::io::Write;
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let chunk: Vec<u8> = (0..1 << 20)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n]).expect("write");
        left -= n;
    }
    f.sync_all().expect("fsync");
}

/// The pool's thin ids as the kernel's metadata holds them (thin_ls on a
/// metadata snapshot, taken and released through the live pool).
pub fn kernel_thin_ids_of(fx: &Fixture) -> BTreeSet<u64> {
    let pool = format!("{}-pool", fx.prefix);
    let meta = fx
        .kernel
        .loop_list()
        .unwrap()
        .into_iter()
        .find(|l| l.backing_file == fx.root.join("metadata"))
        .expect("metadata loop")
        .device;
    fx.kernel
        .dm_message(&pool, "reserve_metadata_snap")
        .unwrap();
    let ls = fx.kernel.thin_ls_snapshot(&meta);
    fx.kernel
        .dm_message(&pool, "release_metadata_snap")
        .unwrap();
    ls.unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The tree's thin ids, base included, as `thinlayer tree` reports them.
pub fn tree_thin_ids_of(fx: &Fixture) -> BTreeSet<u64> {
    let tree = fx.json(&["tree"]);
    let mut ids: BTreeSet<u64> = tree["layers"]
        .as_object()
        .unwrap()
        .values()
        .map(|l| l["thin_id"].as_u64().unwrap())
        .collect();
    ids.insert(tree["base"].as_u64().unwrap());
    ids
}

/// The thin ids of pending removals, spares and retired ids in `thinlayer
/// tree --json`: ids the records hold that are no layer's.
pub fn other_thin_ids_of(fx: &Fixture) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let tree = fx.json(&["tree"]);
    let id = |v: &serde_json::Value| v["thin_id"].as_u64().unwrap();
    let removals = tree["removals"]
        .as_object()
        .map(|m| m.values().map(id).collect())
        .unwrap_or_default();
    let mut others: BTreeSet<u64> = tree["spares"]
        .as_array()
        .map(|a| a.iter().map(id).collect())
        .unwrap_or_default();
    others.extend(
        tree["retired"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_u64().unwrap()).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    (removals, others)
}

/// The kernel's thin ids are the records' (layers, base, spares, retired
/// ids, pending removals), but that a pending removal's may be gone
/// already (its delete comes before its record). Returns the layers'.
/// (Used by `tests/powercut.rs`.)
#[allow(dead_code)]
pub fn check_thin_ids(fx: &Fixture, what: &str) -> BTreeSet<u64> {
    let kernel = kernel_thin_ids_of(fx);
    let layers = tree_thin_ids_of(fx);
    let (removals, others) = other_thin_ids_of(fx);
    let mut all = layers.clone();
    all.extend(removals.iter().chain(&others));
    let missing: BTreeSet<u64> = all.difference(&kernel).copied().collect();
    assert!(
        kernel.is_subset(&all) && missing.is_subset(&removals),
        "{what}: kernel thin ids {kernel:?}, layers {layers:?}, pending removals \
         {removals:?}, spares and retired {others:?}"
    );
    layers
}

/// The sha256 of the regular files under `dir` (paths and contents, in
/// path order; `lost+found` left out), as hex. (Used by `tests/powercut.rs`.)
#[allow(dead_code)]
pub fn tree_hash(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    fn walk(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry"))
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            if rel.as_os_str().is_empty() && name == "lost+found" {
                continue;
            }
            let ty = e.file_type().expect("file type");
            if ty.is_dir() {
                walk(&e.path(), &rel.join(&name), out);
            } else if ty.is_file() {
                out.push(rel.join(&name));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, Path::new(""), &mut files);
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update([0]);
        let data = fs::read(dir.join(&f)).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        h.update((data.len() as u64).to_le_bytes());
        h.update(&data);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Processes a test runs beside thinlayer: daemons (a server, containerd,
/// dockerd) and commands with a deadline.
#[allow(dead_code)] // tests/powercut.rs, which includes this file, runs none
pub mod process {
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitStatus, Output, Stdio};
    use std::time::{Duration, Instant};

    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    use super::{DEADLINE, eventually, within};

    /// How long the clean-up of a failing test gives a [`Daemon`] to stop on
    /// SIGTERM before it kills it.
    pub const STOP_GRACE: Duration = Duration::from_secs(20);

    /// A long-running process of a test (a server, containerd, dockerd), its
    /// stdout and stderr appended to a log file. Dropped while it runs (the
    /// clean-up of a failing test), it gets SIGTERM, then SIGKILL after
    /// [`STOP_GRACE`].
    pub struct Daemon {
        what: String,
        child: Option<Child>,
        log: PathBuf,
    }

    impl Daemon {
        /// Starts `cmd` as `what`, stdin from /dev/null, output to `log`.
        pub fn start(what: &str, mut cmd: Command, log: &Path) -> Daemon {
            let out = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
            let err = out.try_clone().expect("clone the log's handle");
            cmd.stdin(Stdio::null()).stdout(out).stderr(err);
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("start {what} ({cmd:?}): {e}"));
            Daemon {
                what: what.to_string(),
                child: Some(child),
                log: log.to_path_buf(),
            }
        }

        pub fn pid(&self) -> u32 {
            self.child.as_ref().expect("running").id()
        }

        /// Waits until `check` passes (see [`eventually`]); fails the test at
        /// once, with the end of the log, if the daemon exits meanwhile.
        /// Returns `check`'s value.
        pub fn wait_until<T, E: std::fmt::Display>(
            &mut self,
            what: &str,
            mut check: impl FnMut() -> Result<T, E>,
        ) -> T {
            let started = Instant::now();
            let v = eventually(&format!("{}: {what}", self.what), DEADLINE, || {
                let child = self.child.as_mut().expect("running");
                if let Some(st) = child.try_wait().expect("wait for a daemon") {
                    panic!(
                        "{} exited with {st} while waiting until {what}; its log ends:\n{}",
                        self.what,
                        self.log_tail(40)
                    );
                }
                check()
            });
            eprintln!(
                "{}: {what} after {:.1} s",
                self.what,
                started.elapsed().as_secs_f64()
            );
            v
        }

        /// Waits until something accepts connections on `sock`.
        pub fn wait_socket(&mut self, sock: &Path) {
            self.wait_until(&format!("{} accepts connections", sock.display()), || {
                std::os::unix::net::UnixStream::connect(sock)
            });
        }

        /// Sends SIGTERM and waits until the daemon exits; returns its status.
        pub fn stop(self) -> ExitStatus {
            signal(self.child.as_ref().expect("running"), Signal::SIGTERM);
            self.wait_exit("on SIGTERM")
        }

        /// Waits until the daemon exits by itself (`what` says why it
        /// should); returns its status.
        pub fn wait_exit(mut self, what: &str) -> ExitStatus {
            let mut child = self.child.take().expect("running");
            let what = format!("{} exits: {what}", self.what);
            eventually(&what, DEADLINE, || exited(&mut child))
        }

        /// The last `lines` lines of the log.
        pub fn log_tail(&self, lines: usize) -> String {
            log_tail(&self.log, lines)
        }
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            let Some(mut child) = self.child.take() else {
                return;
            };
            signal(&child, Signal::SIGTERM);
            if within(STOP_GRACE, || exited(&mut child)).is_err() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    fn signal(child: &Child, sig: nix::sys::signal::Signal) {
        let _ = kill(Pid::from_raw(child.id() as i32), sig);
    }

    /// The last `lines` lines of the log file `log`.
    pub fn log_tail(log: &Path, lines: usize) -> String {
        let text = fs::read_to_string(log)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", log.display()));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Prints the last 60 lines of each log `NAME.log` in `dir`: the
    /// clean-up of a failing test, to say what its daemons did.
    pub fn print_logs(dir: &Path, names: &[&str]) {
        for name in names {
            let log = dir.join(format!("{name}.log"));
            eprintln!(
                "--- {} (last 60 lines)\n{}",
                log.display(),
                log_tail(&log, 60)
            );
        }
    }

    /// The child's exit status, or, while it runs, that it does.
    fn exited(child: &mut Child) -> Result<ExitStatus, String> {
        child
            .try_wait()
            .expect("wait for a child")
            .ok_or_else(|| format!("process {} still running", child.id()))
    }

    /// Runs `cmd` (stdin from /dev/null) and returns its output; fails the
    /// test, killing it, if it has not finished after `deadline`.
    pub fn output_within(cmd: &mut Command, deadline: Duration) -> Output {
        output_watched(cmd, deadline, String::new)
    }

    /// [`output_within`], whose failure at the deadline also says what
    /// `diagnose` finds while the command still runs (what it waits for).
    pub fn output_watched(
        cmd: &mut Command,
        deadline: Duration,
        diagnose: impl FnOnce() -> String,
    ) -> Output {
        let what = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {what}: {e}"));
        let pid = Pid::from_raw(child.id() as i32);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(deadline) {
            Ok(out) => out.unwrap_or_else(|e| panic!("wait for {what}: {e}")),
            Err(_) => {
                let found = diagnose();
                let _ = kill(pid, Signal::SIGKILL);
                panic!(
                    "never happened: {what} finishes (deadline {deadline:?}); killed it{}{found}",
                    if found.is_empty() {
                        ""
                    } else {
                        "; meanwhile:\n"
                    }
                )
            }
        }
    }

    /// [`output_watched`], saying on stderr what ran (`what`), how it
    /// ended and how long it took.
    pub fn output_logged(
        what: &str,
        cmd: &mut Command,
        deadline: Duration,
        diagnose: impl FnOnce() -> String,
    ) -> Output {
        let started = Instant::now();
        let out = output_watched(cmd, deadline, diagnose);
        eprintln!(
            "{what} -> {} in {:.1} s",
            out.status,
            started.elapsed().as_secs_f64()
        );
        out
    }

    /// The stdout of `what`, which must have succeeded (else the test
    /// fails with its status and output).
    pub fn stdout_of_success(what: &str, out: Output) -> String {
        assert!(
            out.status.success(),
            "{what} failed with {}:\n{}",
            out.status,
            output_text(&out)
        );
        String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{what}: output not UTF-8: {e}"))
    }

    /// A command's stdout then stderr, as text.
    pub fn output_text(out: &Output) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The root of the containerd whose config [`containerd_config`] made
    /// for the test directory `dir` (its temporary mounts are under it).
    pub fn containerd_root(dir: &Path) -> PathBuf {
        dir.join("containerd")
    }

    /// A containerd configuration (version 2: containerd 1.6 and 1.7) with
    /// thinlayer's server on `serve_sock` as the proxy snapshotter `thinlayer`,
    /// without the CRI plugin: containerd's root and `opt` directory in `dir`,
    /// its state and its socket (`run/containerd.sock`) under `run`. `extra`
    /// is appended.
    pub fn containerd_config(dir: &Path, run: &Path, serve_sock: &Path, extra: &str) -> String {
        let sock = run.join("containerd.sock");
        format!(
            r#"version = 2
    root = "{root}"
    state = "{state}"
    disabled_plugins = ["io.containerd.grpc.v1.cri"]

    [grpc]
      address = "{sock}"

    [ttrpc]
      address = "{sock}.ttrpc"

    [plugins."io.containerd.internal.v1.opt"]
      path = "{opt}"
    {proxy}{extra}"#,
            root = containerd_root(dir).display(),
            state = run.join("state").display(),
            sock = sock.display(),
            opt = dir.join("opt").display(),
            proxy = proxy_plugins(serve_sock),
        )
    }

    /// A fresh, empty directory `/run/tl-NAME-PID` for the state and
    /// sockets of a test's daemons (the VM's /run is a tmpfs: no disk
    /// file system's path length or speed).
    pub fn run_dir(name: &str) -> PathBuf {
        let run = PathBuf::from(format!("/run/tl-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&run);
        fs::create_dir_all(&run).unwrap_or_else(|e| panic!("create {}: {e}", run.display()));
        run
    }

    /// The `[proxy_plugins]` section of a containerd configuration that
    /// names thinlayer's server on `serve_sock` as the snapshotter
    /// `thinlayer`.
    pub fn proxy_plugins(serve_sock: &Path) -> String {
        format!(
            r#"
    [proxy_plugins]
      [proxy_plugins.thinlayer]
        type = "snapshot"
        address = "{}"
    "#,
            serve_sock.display()
        )
    }

    /// The containerd shims started for the containerd whose socket is
    /// `sock` (their command line names it): their pids.
    pub fn shims(sock: &Path) -> Vec<i32> {
        let needle = sock.to_string_lossy().into_owned();
        let Ok(procs) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        procs
            .flatten()
            .filter_map(|p| {
                let pid: i32 = p.file_name().to_str()?.parse().ok()?;
                let cmdline = fs::read(p.path().join("cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline);
                (cmdline.contains("containerd-shim") && cmdline.contains(&needle)).then_some(pid)
            })
            .collect()
    }

    /// Kills (SIGKILL) the containerd shims started for the containerd whose
    /// socket is `sock`: shims outlive containerd by design.
    pub fn kill_shims(sock: &Path) {
        for pid in shims(sock) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// Debian 13's Docker and containerd 1.7 as `vm-tests/setup` unpacked
    /// them: `THINLAYER_VM_DOCKER`, which `vm-tests/run` sets in the VM, or
    /// else (on a host with dm-thin, where the tests run directly) what
    /// setup names.
    pub fn docker_tree() -> PathBuf {
        let tree = match std::env::var_os("THINLAYER_VM_DOCKER") {
            Some(t) => PathBuf::from(t),
            None => {
                let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("vm-tests/setup");
                let out = Command::new("bash")
                    .arg("-c")
                    .arg(r#"eval "$("$0" --quiet --print-env)" && printf %s "$VM_DOCKER""#)
                    .arg(&setup)
                    .output()
                    .expect("run vm-tests/setup");
                assert!(
                    out.status.success(),
                    "vm-tests/setup --print-env: {}",
                    output_text(&out)
                );
                PathBuf::from(String::from_utf8(out.stdout).unwrap())
            }
        };
        assert!(
            tree.join("usr/sbin/dockerd").is_file(),
            "no dockerd in {} (vm-tests/setup unpacks Debian 13's Docker there)",
            tree.display()
        );
        tree
    }

    /// `PATH` for the daemons of [`docker_tree`]: Debian 13's binaries first
    /// (containerd's shim among them), then this machine's (runc: Debian
    /// 13's needs a newer glibc).
    pub fn docker_tree_path(tree: &Path) -> String {
        format!(
            "{t}/usr/bin:{t}/usr/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
            t = tree.display()
        )
    }

    /// The cgroup `name` (a directory under /sys/fs/cgroup), whose every
    /// process is killed at once if it exists (`cgroup.kill`; best
    /// effort): what a test's containers ran, which outlives the daemons
    /// that started it.
    pub fn kill_cgroup(name: &str) -> PathBuf {
        let cgroup = Path::new("/sys/fs/cgroup").join(name);
        if cgroup.exists() {
            let _ = fs::write(cgroup.join("cgroup.kill"), "1");
        }
        cgroup
    }

    /// Removes the cgroup `dir` and those below it, deepest first (best
    /// effort).
    pub fn remove_cgroups(dir: &Path) {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_cgroups(&e.path());
                }
            }
        }
        let _ = fs::remove_dir(dir);
    }
}
