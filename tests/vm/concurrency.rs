//! Many writers on one root: four processes, each with its own `Driver`
//! handle and sending one operation in five through the `thinlayer`
//! command instead, and threads sharing one `Arc<Driver>`; each worker
//! does seeded random operations
//! (create from a shared or an own image, mount, write, umount, commit, rm,
//! image rm, ps, diff) on its own names over shared images. Every outcome is
//! predicted from the worker's own model: an operation refused for a
//! documented reason (commit or rm of a mounted container, rm of an image in
//! use, an image another worker removed) must be refused with that reason's
//! exit code; anything else fails the test. Afterwards the kernel's thin ids
//! are the tree's, nothing leaks, and every container and image holds
//! exactly the files its model says. A watchdog fails the test on a
//! deadlock instead of letting it hang.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thinlayer::Driver;
use thinlayer::error::Error;
use thinlayer::kernel::Linux;
use thinlayer::tree::ImageRef;

use crate::fixture::{self, Fixture, kernel_thin_ids_of, tree_thin_ids_of, write_file};

/// Operations per CLI process stream, and per thread.
const PROCESS_OPS: usize = 200;
const THREAD_OPS: usize = 200;
const PROCESSES: usize = 4;
const THREADS: usize = 4;
/// Images every worker creates containers from.
const SHARED: [&str; 2] = ["shared-a", "shared-b"];
/// Exit codes of `thinlayer` (see `thinlayer::cli::exit`).
const OK: u8 = 0;
const NOT_FOUND: u8 = 3;
const BUSY: u8 = 5;

/// Files of a layer as its model knows them: name -> (length, seed).
type Files = BTreeMap<String, (usize, u8)>;

/// xorshift64*: enough randomness, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// One of `keys`, drawn at random.
fn pick<'k>(rng: &mut Rng, keys: impl Iterator<Item = &'k String>) -> Option<String> {
    let keys: Vec<&String> = keys.collect();
    (!keys.is_empty()).then(|| keys[rng.below(keys.len())].clone())
}

/// Where the operations go: the CLI (one process each) or a shared handle.
enum Backend {
    Cli(PathBuf),
    Lib(Arc<Driver>),
}

/// The exit code the CLI gives an error of the library.
fn code_of(e: &Error) -> u8 {
    match e {
        Error::NotFound { .. } | Error::NotInitialized { .. } => 3,
        Error::Exists { .. } | Error::AlreadyInitialized { .. } => 4,
        Error::Busy { .. } | Error::HasChildren { .. } => 5,
        Error::NoSpace { .. } | Error::PoolMode { .. } => 6,
        _ => 1,
    }
}

type Outcome<T> = Result<T, (u8, String)>;

fn lib<T>(r: thinlayer::Result<T>) -> Outcome<T> {
    r.map_err(|e| (code_of(&e), e.to_string()))
}

impl Backend {
    fn cli(&self, args: &[&str]) -> Outcome<String> {
        let Backend::Cli(root) = self else {
            unreachable!()
        };
        let out = fixture::cli_at(root, args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        match out.status.code() {
            Some(0) => Ok(String::from_utf8(out.stdout).expect("utf-8")),
            Some(c) => {
                assert!(
                    stderr
                        .lines()
                        .last()
                        .unwrap_or("")
                        .starts_with("thinlayer: error: "),
                    "thinlayer {args:?} failed without a clear message: {stderr}"
                );
                Err((c as u8, stderr))
            }
            None => Err((255, format!("killed: {}", out.status))),
        }
    }

    fn create(&self, name: &str, image: &str) -> Outcome<()> {
        match self {
            Backend::Cli(_) => self.cli(&["container", "create", image, name]).map(drop),
            Backend::Lib(d) => {
                lib(d.create_container(name, Some(&ImageRef::parse(image).unwrap()))).map(drop)
            }
        }
    }

    fn mount(&self, name: &str) -> Outcome<PathBuf> {
        match self {
            Backend::Cli(_) => self
                .cli(&["container", "mount", name])
                .map(|s| PathBuf::from(s.trim())),
            Backend::Lib(d) => lib(d.mount(name)),
        }
    }

    fn umount(&self, name: &str) -> Outcome<()> {
        match self {
            Backend::Cli(_) => self.cli(&["container", "umount", name]).map(drop),
            Backend::Lib(d) => lib(d.umount(name)),
        }
    }

    fn commit(&self, name: &str, image: &str) -> Outcome<()> {
        match self {
            Backend::Cli(_) => self.cli(&["container", "commit", name, image]).map(drop),
            Backend::Lib(d) => lib(d.commit(name, &ImageRef::parse(image).unwrap())).map(drop),
        }
    }

    fn rm(&self, name: &str, force: bool) -> Outcome<()> {
        match (self, force) {
            (Backend::Cli(_), true) => self.cli(&["container", "rm", "-f", name]).map(drop),
            (Backend::Cli(_), false) => self.cli(&["container", "rm", name]).map(drop),
            (Backend::Lib(d), _) => lib(d.remove(name, force)),
        }
    }

    fn image_rm(&self, image: &str) -> Outcome<()> {
        match self {
            Backend::Cli(_) => self.cli(&["image", "rm", image]).map(drop),
            Backend::Lib(d) => lib(d.remove_image(&ImageRef::parse(image).unwrap())),
        }
    }

    /// Containers by name, with whether each is mounted.
    fn ps(&self) -> Outcome<BTreeMap<String, bool>> {
        match self {
            Backend::Cli(_) => {
                let out = self.cli(&["--json", "ps"])?;
                let v: serde_json::Value = serde_json::from_str(&out).expect("ps JSON");
                Ok(v.as_array()
                    .expect("ps array")
                    .iter()
                    .map(|c| {
                        (
                            c["name"].as_str().unwrap().to_string(),
                            !c["mount"].is_null(),
                        )
                    })
                    .collect())
            }
            Backend::Lib(d) => lib(d.containers(false)).map(|cs| {
                cs.into_iter()
                    .map(|c| (c.name, c.mount.is_some()))
                    .collect()
            }),
        }
    }

    /// The container's changes as a layer tar, as bytes.
    fn diff(&self, name: &str, scratch: &Path) -> Outcome<Vec<u8>> {
        match self {
            Backend::Cli(_) => {
                let out = scratch.join(format!("{name}.tar"));
                self.cli(&["diff", name, "-o", out.to_str().unwrap()])?;
                let tar = std::fs::read(&out).unwrap();
                std::fs::remove_file(&out).unwrap();
                Ok(tar)
            }
            Backend::Lib(d) => {
                let mut tar = Vec::new();
                lib(d.write_changes(name, &mut tar).map(|_| tar))
            }
        }
    }
}

struct Container {
    image: String,
    mount: Option<PathBuf>,
    files: Files,
    /// Files written in this container (what its diff holds).
    own: BTreeSet<String>,
}

/// The shared images' files (made by [`shared_images`]).
fn shared_files(image: &str) -> Files {
    let i = SHARED
        .iter()
        .position(|s| *s == image)
        .expect("a shared image");
    Files::from([(format!("{image}.bin"), (64 << 10, 200 + i as u8))])
}

/// What a worker leaves: its model and tallies, also sent by a worker
/// process to the test as JSON.
#[derive(Serialize, Deserialize)]
struct Model {
    /// Container -> (image, files).
    containers: BTreeMap<String, (String, Files)>,
    images: BTreeMap<String, Files>,
    tally: BTreeMap<String, (usize, usize)>,
    /// Shared images this worker removed, and those it found missing.
    removed: BTreeSet<String>,
    missing: BTreeSet<String>,
}

/// One worker: its own names (`{tag}-...`), its model, its tallies.
struct Worker {
    tag: String,
    rng: Rng,
    /// Each operation goes through one of these, drawn at random.
    backends: Vec<Backend>,
    scratch: PathBuf,
    containers: BTreeMap<String, Container>,
    images: BTreeMap<String, Files>,
    next: usize,
    /// Per operation: (succeeded, refused as predicted).
    tally: BTreeMap<&'static str, (usize, usize)>,
    removed: BTreeSet<String>,
    missing: BTreeSet<String>,
}

impl Worker {
    fn expect<T>(
        &mut self,
        op: &'static str,
        what: &str,
        allowed: &[u8],
        r: Outcome<T>,
    ) -> Option<T> {
        let code = match &r {
            Ok(_) => OK,
            Err((c, _)) => *c,
        };
        assert!(
            allowed.contains(&code),
            "{}: {op} {what}: exit {code}, expected one of {allowed:?}: {}",
            self.tag,
            r.as_ref().err().map(|e| e.1.as_str()).unwrap_or("")
        );
        let t = self.tally.entry(op).or_default();
        if code == OK {
            t.0 += 1;
        } else {
            t.1 += 1;
        }
        r.ok()
    }

    /// Expects BUSY when `busy`, success otherwise; returns whether it succeeded.
    fn done_unless_busy(
        &mut self,
        op: &'static str,
        what: &str,
        busy: bool,
        r: Outcome<()>,
    ) -> bool {
        let want = if busy { BUSY } else { OK };
        self.expect(op, what, &[want], r);
        !busy
    }

    /// The backend for the next operation: the command one time in five
    /// when the worker has it (second), else the handle.
    fn via(&mut self) -> &Backend {
        if self.backends.len() > 1 && self.rng.below(5) == 0 {
            self.tally.entry("(through the command)").or_default().0 += 1;
            return &self.backends[1];
        }
        &self.backends[0]
    }

    fn pick_mounted(&mut self) -> Option<String> {
        let mounted: Vec<String> = self.mounted().cloned().collect();
        pick(&mut self.rng, mounted.iter())
    }

    fn mounted(&self) -> impl Iterator<Item = &String> {
        self.containers
            .iter()
            .filter(|(_, c)| c.mount.is_some())
            .map(|(k, _)| k)
    }

    /// Does one random operation that applies to the model; false when the
    /// drawn one does not apply (nothing to mount, ...).
    fn step(&mut self) -> bool {
        match self.rng.below(100) {
            0..20 => self.create(),
            20..35 => {
                let unmounted: Vec<String> = self
                    .containers
                    .iter()
                    .filter(|(_, c)| c.mount.is_none())
                    .map(|(k, _)| k.clone())
                    .collect();
                let Some(name) = pick(&mut self.rng, unmounted.iter()) else {
                    return false;
                };
                let r = self.via().mount(&name);
                let m = self.expect("mount", &name, &[OK], r).unwrap();
                self.containers.get_mut(&name).unwrap().mount = Some(m);
                true
            }
            35..55 => {
                let Some(name) = self.pick_mounted() else {
                    return false;
                };
                let c = self.containers.get_mut(&name).unwrap();
                let file = format!("f{}", self.next);
                self.next += 1;
                let (len, seed) = (4096 * (1 + self.rng.below(32)), self.rng.below(256) as u8);
                write_file(&c.mount.as_ref().unwrap().join(&file), len, seed);
                c.own.insert(file.clone());
                c.files.insert(file, (len, seed));
                self.tally.entry("write").or_default().0 += 1;
                true
            }
            55..70 => {
                let Some(name) = self.pick_mounted() else {
                    return false;
                };
                let r = self.via().umount(&name);
                self.expect("umount", &name, &[OK], r);
                self.containers.get_mut(&name).unwrap().mount = None;
                true
            }
            70..78 => {
                let Some(name) = pick(&mut self.rng, self.containers.keys()) else {
                    return false;
                };
                let image = format!("{}-i{}", self.tag, self.next);
                self.next += 1;
                let mounted = self.containers[&name].mount.is_some();
                let r = self.via().commit(&name, &image);
                if self.done_unless_busy("commit", &name, mounted, r) {
                    let c = self.containers.remove(&name).unwrap();
                    self.images.insert(image, c.files);
                }
                true
            }
            78..88 => {
                let Some(name) = pick(&mut self.rng, self.containers.keys()) else {
                    return false;
                };
                let force = self.rng.below(2) == 0;
                let refused = self.containers[&name].mount.is_some() && !force;
                let r = self.via().rm(&name, force);
                if self.done_unless_busy("rm", &name, refused, r) {
                    self.containers.remove(&name);
                }
                true
            }
            88..93 => {
                if self.rng.below(4) == 0 {
                    // A shared image: in use by someone, or removed.
                    let image = SHARED[self.rng.below(SHARED.len())];
                    let r = self.via().image_rm(image);
                    if self
                        .expect("image rm", image, &[OK, BUSY, NOT_FOUND], r)
                        .is_some()
                    {
                        self.removed.insert(image.to_string());
                    }
                    return true;
                }
                let Some(image) = pick(&mut self.rng, self.images.keys()) else {
                    return false;
                };
                let in_use = self.containers.values().any(|c| c.image == image);
                let r = self.via().image_rm(&image);
                if self.done_unless_busy("image rm", &image, in_use, r) {
                    self.images.remove(&image);
                }
                true
            }
            93..97 => {
                let r = self.via().ps();
                let listed = self.expect("ps", "", &[OK], r).unwrap();
                let mine: BTreeMap<String, bool> = listed
                    .into_iter()
                    .filter(|(k, _)| k.starts_with(&format!("{}-", self.tag)))
                    .collect();
                let model: BTreeMap<String, bool> = self
                    .containers
                    .iter()
                    .map(|(k, c)| (k.clone(), c.mount.is_some()))
                    .collect();
                assert_eq!(mine, model, "{}: ps disagrees with the model", self.tag);
                true
            }
            _ => {
                let Some(name) = pick(&mut self.rng, self.containers.keys()) else {
                    return false;
                };
                let scratch = self.scratch.clone();
                let r = self.via().diff(&name, &scratch);
                let tar = self.expect("diff", &name, &[OK], r).unwrap();
                let entries: BTreeSet<String> = tar::Archive::new(&tar[..])
                    .entries()
                    .unwrap()
                    .map(|e| {
                        let p = e.unwrap().path().unwrap().display().to_string();
                        p.trim_start_matches("./").to_string()
                    })
                    .collect();
                let own = &self.containers[&name].own;
                assert!(
                    own.is_subset(&entries),
                    "{}: the diff of {name} lacks some of {own:?}: {entries:?}",
                    self.tag
                );
                true
            }
        }
    }

    fn create(&mut self) -> bool {
        if self.containers.len() >= 6 {
            return false;
        }
        let name = format!("{}-c{}", self.tag, self.next);
        self.next += 1;
        let own = self.rng.below(2) == 0;
        let image = match own
            .then(|| pick(&mut self.rng, self.images.keys()))
            .flatten()
        {
            Some(i) => i,
            None => SHARED[self.rng.below(SHARED.len())].to_string(),
        };
        let r = self.via().create(&name, &image);
        let files = match self.images.get(&image).cloned() {
            Some(f) => {
                self.expect("create", &name, &[OK], r);
                f
            }
            None => {
                if self.expect("create", &name, &[OK, NOT_FOUND], r).is_none() {
                    // Some worker must have removed it: checked at the end.
                    self.missing.insert(image);
                    return true;
                }
                shared_files(&image)
            }
        };
        self.containers.insert(
            name,
            Container {
                image,
                mount: None,
                files,
                own: BTreeSet::new(),
            },
        );
        true
    }

    fn run(mut self, ops: usize) -> Model {
        let mut done = 0;
        while done < ops {
            if self.step() {
                done += 1;
            }
        }
        // Leave every container unmounted for the checks.
        let mounted: Vec<String> = self.mounted().cloned().collect();
        for name in mounted {
            let r = self.via().umount(&name);
            self.expect("umount", &name, &[OK], r);
            self.containers.get_mut(&name).unwrap().mount = None;
        }
        Model {
            containers: self
                .containers
                .into_iter()
                .map(|(k, c)| (k, (c.image, c.files)))
                .collect(),
            images: self.images,
            tally: self
                .tally
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            removed: self.removed,
            missing: self.missing,
        }
    }
}

/// Checks that the files under `dir` are exactly `files`, byte for byte.
fn assert_files(dir: &Path, files: &Files, what: &str) {
    let found: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "lost+found")
        .collect();
    let want: BTreeSet<String> = files.keys().cloned().collect();
    assert_eq!(found, want, "{what}: files differ from the model");
    for (f, (len, seed)) in files {
        let data = std::fs::read(dir.join(f)).unwrap();
        let expected: Vec<u8> = (0..*len)
            .map(|i| ((i % (1 << 20)) as u8).wrapping_mul(31).wrapping_add(*seed))
            .collect();
        assert!(data == expected, "{what}: {f} has other content");
    }
}

/// Runs `work` on another thread and fails the test if it takes longer than
/// `limit`: a deadlock ends the run (the process exits, since the stuck
/// threads hold the root's lock and no teardown could proceed).
fn with_watchdog<T: Send + 'static>(
    limit: Duration,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        let _ = tx.send(());
        r
    });
    if rx.recv_timeout(limit).is_err() {
        eprintln!("{what}: no end after {limit:?}: deadlock; giving up");
        std::process::exit(101);
    }
    match handle.join().unwrap() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Builds the shared images: each a committed layer with a file of its own.
fn shared_images(fx: &Fixture) {
    for name in SHARED {
        let c = format!("build-{name}");
        fx.ok(&["container", "create", "scratch", &c]);
        let m = fx.ok(&["container", "mount", &c]);
        for (file, (len, seed)) in shared_files(name) {
            write_file(&Path::new(m.trim()).join(&file), len, seed);
        }
        fx.ok(&["container", "umount", &c]);
        fx.ok(&["container", "commit", &c, name]);
    }
}

/// Afterwards: ids agree, every container and image holds what its model
/// says, and nothing else is there. Returns the number of layers checked.
fn check_models(fx: &Fixture, models: &[Model]) -> usize {
    // Every removal finished: each `rm` reaps what it removed.
    assert_eq!(
        kernel_thin_ids_of(fx),
        tree_thin_ids_of(fx),
        "kernel ids vs tree ids"
    );
    let (removals, others) = fixture::other_thin_ids_of(fx);
    assert!(
        removals.is_empty() && others.is_empty(),
        "pending removals {removals:?}, spares and retired {others:?}"
    );
    let removed: BTreeSet<String> = models.iter().flat_map(|m| m.removed.clone()).collect();
    for m in models {
        assert!(
            m.missing.is_subset(&removed),
            "shared images found missing {:?}, removed {removed:?}",
            m.missing
        );
    }
    // Checked in-process: a process per mount costs ~100 ms in the VM.
    let d = Driver::open(&fx.root, Arc::new(Linux::new())).unwrap();
    let tree = d.tree().unwrap();
    let check = |key: &str, files: &Files, what: &str| {
        assert_files(&d.mount(key).unwrap(), files, what);
        d.umount(key).unwrap();
    };
    let mut checked = 0;
    for (name, (_, files)) in models.iter().flat_map(|m| m.containers.iter()) {
        check(name, files, name);
        checked += 1;
    }
    let shared: BTreeMap<String, Files> = SHARED
        .iter()
        .filter(|s| !removed.contains(**s))
        .map(|s| (s.to_string(), shared_files(s)))
        .collect();
    let images: Vec<(&String, &Files)> = models
        .iter()
        .flat_map(|m| m.images.iter())
        .chain(shared.iter())
        .collect();
    for (image, files) in &images {
        let full = ImageRef::parse(image).unwrap().to_string();
        let top = &tree
            .images
            .get(&full)
            .unwrap_or_else(|| panic!("image {full} is gone"))
            .top;
        check(top, files, image);
        checked += 1;
    }
    // Every image and container is known to some model, and no other.
    let names = |v: serde_json::Value| -> BTreeSet<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect()
    };
    let known: BTreeSet<String> = images
        .iter()
        .map(|(n, _)| ImageRef::parse(n).unwrap().to_string())
        .collect();
    assert_eq!(
        names(fx.json(&["image", "ls"])),
        known,
        "images listed vs the models'"
    );
    let known: BTreeSet<String> = models
        .iter()
        .flat_map(|m| m.containers.keys().cloned())
        .collect();
    assert_eq!(
        names(fx.json(&["ps"])),
        known,
        "containers listed vs the models'"
    );
    checked
}

fn report(what: &str, models: &[Model], took: Duration) {
    let mut total: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for m in models {
        for (op, (ok, refused)) in &m.tally {
            let t = total.entry(op).or_default();
            t.0 += ok;
            t.1 += refused;
        }
    }
    let n: usize = total
        .iter()
        .filter(|(k, _)| !k.starts_with('('))
        .map(|(_, (a, b))| a + b)
        .sum();
    println!("{what}: {n} operations in {took:?} (succeeded, refused as documented): {total:?}");
}

fn worker(i: usize, backends: Vec<Backend>, scratch: &Path) -> Worker {
    Worker {
        tag: format!("w{i}"),
        rng: Rng(0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x1000_0001)),
        backends,
        scratch: scratch.to_path_buf(),
        containers: BTreeMap::new(),
        images: BTreeMap::new(),
        next: 0,
        tally: BTreeMap::new(),
        removed: BTreeSet::new(),
        missing: BTreeSet::new(),
    }
}

/// Runs the workers (given as closures that return their models) under the
/// watchdog, reports and checks.
fn run_workers(fx: &Fixture, what: &str, workers: Vec<Box<dyn FnOnce() -> Model + Send>>) {
    let started = Instant::now();
    let models = with_watchdog(Duration::from_secs(900), what, move || {
        let handles: Vec<_> = workers.into_iter().map(std::thread::spawn).collect();
        // All joined before the first failure is raised: the teardown must
        // not start under running workers.
        let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        joined
            .into_iter()
            .map(|j| j.unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Vec<_>>()
    });
    report(what, &models, started.elapsed());
    let checked = check_models(fx, &models);
    println!("{what}: {checked} containers and images checked file by file");
}

const WORKER: &str = "THINLAYER_CONCURRENCY_WORKER";
const PROCESS_TEST: &str = "concurrency::four_processes_doing_random_operations_on_one_root";

#[test]
fn four_processes_doing_random_operations_on_one_root() {
    // In a worker process (this binary run again by the test below): one
    // worker on its own handle, its model printed for the test.
    if let Ok(spec) = std::env::var(WORKER) {
        let (i, root) = spec.split_once(':').expect("N:ROOT");
        let root = PathBuf::from(root);
        let driver = Arc::new(Driver::open(&root, Arc::new(Linux::new())).unwrap());
        let scratch = root.parent().unwrap().to_path_buf();
        let w = worker(
            i.parse().unwrap(),
            vec![Backend::Lib(driver), Backend::Cli(root)],
            &scratch,
        );
        let model = w.run(PROCESS_OPS);
        println!("worker-model: {}", serde_json::to_string(&model).unwrap());
        return;
    }
    fixture::run("conc-proc", |fx| {
        fx.init_pool("6G", "64M", Some("256M"), &[]);
        shared_images(fx);
        let exe = std::env::current_exe().unwrap();
        let workers: Vec<Box<dyn FnOnce() -> Model + Send>> = (0..PROCESSES)
            .map(|i| {
                let (exe, root) = (exe.clone(), fx.root.clone());
                Box::new(move || {
                    let out = std::process::Command::new(exe)
                        .args(["--exact", PROCESS_TEST, "--nocapture", "--test-threads=1"])
                        .env(WORKER, format!("{i}:{}", root.display()))
                        .output()
                        .expect("run a worker process");
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    assert!(
                        out.status.success(),
                        "worker process {i} failed:\n{stdout}{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let line = stdout
                        .lines()
                        // After libtest's "test NAME ... " on the same line.
                        .find_map(|l| l.split_once("worker-model: ").map(|(_, m)| m))
                        .unwrap_or_else(|| panic!("worker {i} printed no model: {stdout}"));
                    serde_json::from_str(line).unwrap()
                }) as Box<dyn FnOnce() -> Model + Send>
            })
            .collect();
        run_workers(fx, "4 processes", workers);
    });
}

#[test]
fn threads_sharing_one_driver_doing_random_operations() {
    fixture::run("conc-threads", |fx| {
        fx.init_pool("6G", "64M", Some("256M"), &[]);
        shared_images(fx);
        let driver = Arc::new(Driver::open(&fx.root, Arc::new(Linux::new())).unwrap());
        let workers: Vec<Box<dyn FnOnce() -> Model + Send>> = (0..THREADS)
            .map(|i| {
                let w = worker(i, vec![Backend::Lib(driver.clone())], &fx.dir);
                Box::new(move || w.run(THREAD_OPS)) as Box<dyn FnOnce() -> Model + Send>
            })
            .collect();
        run_workers(fx, "4 threads on one handle", workers);
    });
}
