//! Power cuts: the VM is reset with no sync and no shutdown while containers
//! write and fsync and while `thinlayer` creates, commits and removes, then
//! booted again on the same scratch disk, several times.
//!
//! This binary runs on the host (its name is not `vm-*`) and boots the VM
//! itself through `vm-tests/run`, once per boot, with the scratch disk kept
//! in one file (`THINLAYER_VM_SCRATCH`). In the VM it runs again, as this
//! same test with `THINLAYER_POWERCUT_BOOT` set, and plays one boot:
//!
//! - boot 0 makes the pool and two committed image layers and records their
//!   content hashes;
//! - every later boot first checks what the last one left: the first command
//!   activates the pool (thin_check runs: the pool device is absent before
//!   it and the log says it was activated), the kernel's thin ids are the
//!   tree's, every committed image has its recorded hash, every file the
//!   journal lists (written and fsynced in a container before its line was
//!   appended and fsynced) is there with its content, every image whose
//!   removal the journal lists is gone (one whose removal started but is
//!   not listed as done, because the cut fell between the command and its
//!   line, is either whole or gone), and the pool still creates, mounts
//!   and removes;
//! - every boot but the last then starts the workload (three containers
//!   writing and fsyncing files, one stream of `thinlayer` processes
//!   creating, committing and removing images) and after a delay that
//!   differs per boot cuts the power: `echo b > /proc/sysrq-trigger`, an
//!   immediate reset of the guest without syncing or unmounting anything,
//!   which ends QEMU (`-no-reboot`); everything in the guest's page cache is
//!   lost. What the guest had written to its virtual disk stays: the scratch
//!   disk is a file on the host (`cache=unsafe`), so the cut models a power
//!   loss on a disk without a volatile write cache;
//! - the last boot checks, then tears the pool down and looks for leaks.

#[allow(dead_code)]
#[path = "vm/fixture.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thinlayer::Driver;
use thinlayer::kernel::Kernel;

use fixture::{Fixture, check_thin_ids, tree_hash, tree_thin_ids_of, write_file};

/// Delays from the start of the workload to the cut, one per cut.
const CUTS_MS: [u64; 3] = [3000, 6000, 10000];
const BOOT: &str = "THINLAYER_POWERCUT_BOOT";
/// What `vm-tests/run` exits with when the guest was reset as asked
/// (`THINLAYER_VM_POWER_CUT=1`).
const RESET: i32 = 120;

#[test]
fn power_cuts_during_writes_keep_what_was_fsynced_and_committed() {
    match std::env::var(BOOT) {
        Ok(boot) => guest(boot.parse().expect("boot number")),
        Err(_) => host(),
    }
}

/// Deletes the kept scratch disk, however the test ends.
struct ScratchFile(PathBuf);

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn host() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(&dir).unwrap();
    let scratch = ScratchFile(dir.join(format!("powercut-{}.img", std::process::id())));
    let _ = fs::remove_file(&scratch.0);
    let run = concat!(env!("CARGO_MANIFEST_DIR"), "/vm-tests/run");
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    for boot in 0..=CUTS_MS.len() {
        let t = Instant::now();
        let out = Command::new(run)
            .arg(&exe)
            .args([
                "--exact",
                "power_cuts_during_writes_keep_what_was_fsynced_and_committed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(BOOT, boot.to_string())
            .env("THINLAYER_VM_SCRATCH", &scratch.0)
            .env("THINLAYER_VM_POWER_CUT", "1")
            .env("THINLAYER_VM_TIMEOUT", "300")
            .output()
            .expect("run vm-tests/run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = if boot < CUTS_MS.len() { RESET } else { 0 };
        println!(
            "boot {boot}: vm-tests/run exited {:?} in {:?}",
            out.status.code(),
            t.elapsed()
        );
        // The first may follow libtest's "test NAME ... " on its line.
        for l in stdout
            .lines()
            .filter_map(|l| l.find("powercut: ").map(|i| &l[i..]))
        {
            println!("  {l}");
        }
        assert_eq!(
            out.status.code(),
            Some(want),
            "boot {boot}:\n{stdout}\n{stderr}"
        );
    }
    println!(
        "{} power cuts survived, {} boots in {:?}",
        CUTS_MS.len(),
        CUTS_MS.len() + 1,
        started.elapsed()
    );
}

/// Appends fsynced lines to the journal on the scratch disk (outside the
/// pool): a line is there after a cut only if it was written before.
struct Journal(Mutex<fs::File>);

impl Journal {
    fn open(path: &Path) -> Journal {
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        fs::File::open(path.parent().unwrap())
            .unwrap()
            .sync_all()
            .unwrap();
        Journal(Mutex::new(f))
    }

    fn append(&self, line: &str) {
        let mut f = self.0.lock().unwrap();
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
        f.sync_data().unwrap();
    }
}

/// The journal's whole lines (a line cut short by the power is left out).
fn journal_lines(path: &Path) -> Vec<Vec<String>> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let whole = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => "",
    };
    whole
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect()
}

fn say(msg: &str) {
    println!("powercut: {msg}");
    let _ = std::io::stdout().flush();
}

fn guest(boot: usize) {
    let scratch = std::env::var_os("SCRATCH").expect("SCRATCH in the VM");
    let dir = Path::new(&scratch).join("powercut");
    fixture::run_in(&dir, |fx| {
        let journal_path = fx.dir.join("journal");
        if boot == 0 {
            first_boot(fx, &journal_path);
        } else {
            check_after_cut(fx, boot, &journal_path);
        }
        if let Some(&delay) = CUTS_MS.get(boot) {
            workload_then_cut(fx, boot, &journal_path, Duration::from_millis(delay));
        }
    });
}

fn driver(fx: &Fixture) -> Driver {
    Driver::open(&fx.root, fx.kernel.clone() as Arc<dyn Kernel>).unwrap()
}

/// The content hash of an image: its top layer mounted read-only.
fn image_hash(d: &Driver, image: &str) -> String {
    let tree = d.tree().unwrap();
    let top = tree
        .images
        .get(image)
        .unwrap_or_else(|| panic!("no image {image}"))
        .top
        .clone();
    let m = d.mount(&top).unwrap();
    let h = tree_hash(&m);
    d.umount(&top).unwrap();
    h
}

fn first_boot(fx: &Fixture, journal_path: &Path) {
    fx.init_pool("4G", "64M", Some("256M"), &[]);
    let d = driver(fx);
    let journal = Journal::open(journal_path);
    for (i, (parent, image)) in [("scratch", "base"), ("base", "app")].iter().enumerate() {
        let c = format!("build-{image}");
        fx.ok(&["container", "create", parent, &c]);
        let m = d.mount(&c).unwrap();
        fs::create_dir_all(m.join("etc")).unwrap();
        write_file(&m.join(format!("{image}.bin")), 3 << 20, i as u8);
        write_file(&m.join("etc").join(image), 1000 + i, 40 + i as u8);
        d.umount(&c).unwrap();
        fx.ok(&["container", "commit", &c, image]);
        let full = format!("{image}:latest");
        journal.append(&format!("image {full} {}", image_hash(&d, &full)));
    }
    say("boot 0: pool and two image layers made");
}

fn check_after_cut(fx: &Fixture, boot: usize, journal_path: &Path) {
    let pool = format!("{}-pool", fx.prefix);
    assert!(
        fx.kernel.dm_info(&pool).unwrap().is_none(),
        "the pool is live before any command: this is not a fresh boot"
    );
    let out = fx.cli_env(&["--json", "pool", "status"], &[("THINLAYER_LOG", "info")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "first command after the cut: {stderr}"
    );
    assert!(
        stderr.contains("pool activated"),
        "the first command did not activate (and thin_check) the pool: {stderr}"
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["mode"], "read_write", "{st}");
    assert_eq!(st["needs_check"], false, "{st}");
    // A removal the cut interrupted is pending: finished by the `rm`
    // below.
    check_thin_ids(fx, &format!("boot {boot}"));

    let d = driver(fx);
    let mut images = BTreeMap::new();
    // Removals the cut may have interrupted: started, never journaled as
    // done (the cut can fall between `image rm` returning and its line).
    let mut removing = BTreeMap::new();
    let mut removed = Vec::new();
    let mut files: BTreeMap<String, Vec<(String, usize, u8)>> = BTreeMap::new();
    for l in journal_lines(journal_path) {
        match l[0].as_str() {
            "image" => {
                images.insert(l[1].clone(), l[2].clone());
            }
            "removing" => {
                if let Some(hash) = images.remove(&l[1]) {
                    removing.insert(l[1].clone(), hash);
                }
            }
            "rmimage" => {
                images.remove(&l[1]);
                removing.remove(&l[1]);
                removed.push(l[1].clone());
            }
            "file" => files.entry(l[1].clone()).or_default().push((
                l[2].clone(),
                l[3].parse().unwrap(),
                l[4].parse().unwrap(),
            )),
            other => panic!("journal line {other}"),
        }
    }
    for (image, hash) in &images {
        assert_eq!(&image_hash(&d, image), hash, "image {image} changed");
    }
    let tree = d.tree().unwrap();
    // Either there with its content or gone, never in between.
    let mut interrupted = 0;
    for (image, hash) in &removing {
        if tree.images.contains_key(image) {
            assert_eq!(&image_hash(&d, image), hash, "image {image} changed");
            interrupted += 1;
        }
    }
    for image in &removed {
        assert!(
            !tree.images.contains_key(image),
            "removed image {image} is back"
        );
    }
    let mut nfiles = 0;
    for (container, list) in &files {
        let m = d.mount(container).unwrap();
        for (name, len, seed) in list {
            let data = fs::read(m.join(name))
                .unwrap_or_else(|e| panic!("{container}/{name}, fsynced before the cut: {e}"));
            assert_eq!(data.len(), *len, "{container}/{name}: length");
            assert!(
                data.iter().enumerate().all(
                    |(i, b)| *b == ((i % (1 << 20)) as u8).wrapping_mul(31).wrapping_add(*seed)
                ),
                "{container}/{name}: content differs"
            );
            nfiles += 1;
        }
        d.umount(container).unwrap();
    }
    // Still usable.
    let probe = format!("probe-{boot}");
    fx.ok(&["container", "create", "app", &probe]);
    let m = d.mount(&probe).unwrap();
    write_file(&m.join("p"), 1 << 20, 5);
    d.umount(&probe).unwrap();
    fx.ok(&["container", "rm", &probe]);
    // That removal took what the cut left pending with it.
    let (removals, _) = fixture::other_thin_ids_of(fx);
    assert!(removals.is_empty(), "boot {boot}: pending {removals:?}");
    check_thin_ids(fx, &format!("boot {boot}, after a removal"));
    say(&format!(
        "boot {boot}: pool activated with thin_check; {} images with their hashes, {} removed images absent, {} of {} removals the cut interrupted left whole, {nfiles} fsynced files in {} containers intact, {} thin ids as in the tree",
        images.len(),
        removed.len(),
        interrupted,
        removing.len(),
        files.len(),
        tree_thin_ids_of(fx).len()
    ));
}

/// Writers and a stream of commands, then the cut after `delay`.
fn workload_then_cut(fx: &Fixture, boot: usize, journal_path: &Path, delay: Duration) {
    let d = Arc::new(driver(fx));
    let journal = Arc::new(Journal::open(journal_path));
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let mut mounts = Vec::new();
    for w in 0..3 {
        let name = format!("w{boot}-{w}");
        fx.ok(&["container", "create", "app", &name]);
        mounts.push((name.clone(), d.mount(&name).unwrap()));
    }
    let started = Instant::now();
    for (w, (name, m)) in mounts.into_iter().enumerate() {
        let (journal, stop, written) = (journal.clone(), stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let file = format!("f{n}");
                let len = (64 << 10) * (1 + (n as usize * 7 + w) % 16);
                let seed = (n as u8).wrapping_mul(13).wrapping_add(w as u8);
                write_file(&m.join(&file), len, seed);
                fs::File::open(&m).unwrap().sync_all().unwrap();
                journal.append(&format!("file {name} {file} {len} {seed}"));
                written.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        });
    }
    let commands = Arc::new(AtomicUsize::new(0));
    {
        let (journal, stop, commands) = (journal.clone(), stop.clone(), commands.clone());
        let root = fx.root.clone();
        let d = d.clone();
        let journal_path = journal_path.to_path_buf();
        std::thread::spawn(move || {
            let cli = |args: &[&str]| {
                let out = fixture::cli_at(&root, args, &[]);
                assert!(
                    out.status.success(),
                    "{args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                commands.fetch_add(1, Ordering::Relaxed);
            };
            // Churn images left by earlier boots, oldest first.
            let mut live: Vec<String> = Vec::new();
            for l in journal_lines(&journal_path) {
                match (l[0].as_str(), l[1].starts_with("churn-")) {
                    ("image", true) => live.push(l[1].clone()),
                    // An interrupted removal is not tried again.
                    ("rmimage" | "removing", _) => live.retain(|i| *i != l[1]),
                    _ => {}
                }
            }
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("churn-{boot}-{i}");
                cli(&["container", "create", "app", &name]);
                let m = d.mount(&name).unwrap();
                write_file(&m.join("churn"), 256 << 10, i as u8);
                let hash = tree_hash(&m);
                d.umount(&name).unwrap();
                cli(&["container", "commit", &name, &name]);
                journal.append(&format!("image {name}:latest {hash}"));
                live.push(format!("{name}:latest"));
                // The newest kept, the one before it removed (often from an earlier boot).
                if live.len() > 1 {
                    let old = live.remove(0);
                    journal.append(&format!("removing {old}"));
                    cli(&["image", "rm", &old]);
                    journal.append(&format!("rmimage {old}"));
                }
                i += 1;
            }
        });
    }
    std::thread::sleep(delay);
    say(&format!(
        "boot {boot}: cutting the power after {:?}: {} files fsynced, {} commands done",
        started.elapsed(),
        written.load(Ordering::Relaxed),
        commands.load(Ordering::Relaxed)
    ));
    // Writing to the trigger is always allowed to root; the sysctl only
    // gates the keyboard. Set anyway, for kernels built otherwise.
    let _ = fs::write("/proc/sys/kernel/sysrq", "1");
    // 'b': reboot at once, without syncing or unmounting; -no-reboot turns
    // the reboot into QEMU's exit.
    fs::write("/proc/sysrq-trigger", "b").unwrap();
    std::thread::sleep(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    panic!("sysrq b did not reset the VM");
}
