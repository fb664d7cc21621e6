//! A faulty data disk under the pool: the pool's data device is a
//! device-mapper `linear` device over a loop device, reloaded as `flakey`
//! with `error_writes` (writes fail, reads pass), then as `error` (every
//! I/O fails), then restored. Kernel behaviour observed and asserted here
//! (Debian 6.1): dm-thin fails the I/O promptly (EIO to `fsync` and to
//! O_DIRECT reads, well under a second) and either keeps the pool
//! `read_write`, or, when the error hit a block being provisioned, makes it
//! `read_only` with `needs_check`; `pool check` (thin_check clearing the
//! flag) brings it back to read-write.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use thinlayer::kernel::{Kernel, Target};
use thinlayer::units::Sectors;

use crate::fixture::{self, Fixture, write_file};

const DATA_SIZE: u64 = 1 << 30;

fn sparse(path: &Path, size: u64) {
    fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// Swaps the live table of `name` for `table`, as `dmsetup reload; suspend; resume` does.
fn swap_table(fx: &Fixture, name: &str, table: &[Target]) {
    fx.kernel.dm_load(name, table).unwrap();
    fx.kernel
        .dm_suspend(name, thinlayer::kernel::Suspend::NoFlush)
        .unwrap();
    fx.kernel.dm_resume(name).unwrap();
}

/// `pool status --json`, printing and returning its mode and needs_check.
/// What dm-thin does on a data-device error: it fails the I/O and either
/// keeps the pool read-write, or, when the error hit while it was changing
/// its metadata (provisioning a block), turns it read-only and flags the
/// metadata as needing a check. Which of the two depends on timing.
fn degraded_as_documented(state: &(String, bool)) -> bool {
    matches!(
        (state.0.as_str(), state.1),
        ("read_write", false) | ("read_only", true)
    )
}

fn pool_mode(fx: &Fixture, when: &str) -> (String, bool) {
    let st = fx.json(&["pool", "status"]);
    let mode = st["mode"]
        .as_str()
        .unwrap_or_else(|| panic!("no mode in {st}"));
    let needs_check = st["needs_check"]
        .as_bool()
        .unwrap_or_else(|| panic!("no needs_check in {st}"));
    println!("pool status {when}: mode {mode}, needs_check {needs_check}");
    (mode.to_string(), needs_check)
}

/// Runs `timeout 60 dd ...` writing into `path` with fsync; returns whether
/// it succeeded, how long it took and its stderr.
fn dd_fsync(path: &Path) -> (bool, Duration, String) {
    let started = Instant::now();
    let out = Command::new("timeout")
        .arg("60")
        .arg("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", path.display()))
        .args(["bs=1M", "count=16", "conv=fsync", "status=none"])
        .output()
        .expect("run timeout dd");
    (
        out.status.success(),
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `timeout 60 dd` reading `path` with O_DIRECT.
fn dd_direct_read(path: &Path) -> (bool, Duration, String) {
    let started = Instant::now();
    let out = Command::new("timeout")
        .arg("60")
        .arg("dd")
        .arg(format!("if={}", path.display()))
        .args(["of=/dev/null", "bs=1M", "iflag=direct", "status=none"])
        .output()
        .expect("run timeout dd");
    (
        out.status.success(),
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Removes the test's own data device at the end, or on a panic after the
/// pool (which holds it) is destroyed.
struct DataDevice<'a> {
    fx: &'a Fixture,
    name: String,
}

impl Drop for DataDevice<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.fx.cli(&["pool", "destroy"]);
        }
        if self.fx.kernel.dm_info(&self.name).ok().flatten().is_some() {
            let _ = self.fx.kernel.dm_resume(&self.name);
            let removed = self.fx.kernel.dm_remove(&self.name, false);
            if !std::thread::panicking() {
                removed.unwrap_or_else(|e| panic!("remove {}: {e}", self.name));
            }
        }
    }
}

#[test]
fn a_failing_data_disk_errors_promptly_and_the_pool_recovers() {
    fixture::run("faults", |fx| {
        let (d, m) = (fx.dir.join("data.img"), fx.dir.join("meta.img"));
        sparse(&d, DATA_SIZE);
        sparse(&m, 16 << 20);
        let data_loop = fx.kernel.loop_attach(&d).unwrap();
        let meta_loop = fx.kernel.loop_attach(&m).unwrap();
        let loop_dev = data_loop.info.device.display().to_string();
        let len = Sectors(DATA_SIZE / 512);
        let linear = [Target::new(len, "linear", format!("{loop_dev} 0"))];
        let failing = [Target::new(len, "error", String::new())];
        // Up 0 s, down 1 s: always down; while down, writes fail and reads pass.
        let write_errors = [Target::new(
            len,
            "flakey",
            format!("{loop_dev} 0 0 1 1 error_writes"),
        )];

        let name = format!("{}-faultydata", fx.prefix);
        let info = fx.kernel.dm_create(&name, &linear, false).unwrap();
        let dev = DataDevice { fx, name };
        let data_path = format!("/dev/dm-{}", info.devnum.minor);
        fx.ok(&[
            "pool",
            "init",
            "--data-device",
            &data_path,
            "--metadata-device",
            meta_loop.info.device.to_str().unwrap(),
            "--base-size",
            "256M",
        ]);
        assert_eq!(pool_mode(fx, "after init"), ("read_write".into(), false));

        // An image layer committed before the fault.
        fx.ok(&["container", "create", "scratch", "src"]);
        let mnt = fx.ok(&["container", "mount", "src"]);
        write_file(&Path::new(mnt.trim()).join("payload"), 2 << 20, 42);
        let payload = fs::read(Path::new(mnt.trim()).join("payload")).unwrap();
        fx.ok(&["container", "umount", "src"]);
        fx.ok(&["container", "commit", "src", "base-img"]);

        // A container in use when the disk fails.
        fx.ok(&["container", "create", "base-img", "victim"]);
        let victim = fx.ok(&["container", "mount", "victim"]);
        let victim = Path::new(victim.trim()).to_path_buf();
        let (ok, took, err) = dd_fsync(&victim.join("before"));
        assert!(ok, "a write before the fault failed: {err}");

        // A second container, for a disk that fails writes only.
        fx.ok(&["container", "create", "base-img", "flaky"]);
        let flaky = fx.ok(&["container", "mount", "flaky"]);
        let flaky = Path::new(flaky.trim()).to_path_buf();

        swap_table(fx, &dev.name, &write_errors);
        let (ok, took_bad, err) = dd_fsync(&flaky.join("after"));
        println!("dd with conv=fsync, disk failing writes: ok={ok} in {took_bad:?}: {err}");
        assert!(!ok, "a write and fsync on a disk failing writes succeeded");
        assert!(took_bad < Duration::from_secs(30), "took {took_bad:?}");
        assert!(err.contains("Input/output error"), "{err}");
        let (ok, took_read, err) = dd_direct_read(&flaky.join("payload"));
        println!("direct read, disk failing writes: ok={ok} in {took_read:?}: {err}");
        assert!(ok, "reads failed on a disk that fails writes only: {err}");
        let state = pool_mode(fx, "with writes failing");
        assert!(degraded_as_documented(&state), "{state:?}");

        swap_table(fx, &dev.name, &failing);
        let (ok, took_bad, err) = dd_fsync(&victim.join("after"));
        println!(
            "dd with conv=fsync on the failed disk: ok={ok} in {took_bad:?} ({took:?} before the fault): {err}"
        );
        assert!(!ok, "a write and fsync on a failed data disk succeeded");
        assert!(
            took_bad < Duration::from_secs(30),
            "the failing write took {took_bad:?}: it hung until the timeout"
        );
        assert!(
            err.contains("Input/output error") || err.contains("Read-only file system"),
            "dd failed without an I/O error: {err}"
        );

        // Reads of blocks shared with the image fail too (O_DIRECT: not from the cache).
        let (ok, took_read, err) = dd_direct_read(&victim.join("payload"));
        println!("direct read on the failed disk: ok={ok} in {took_read:?}: {err}");
        assert!(!ok && took_read < Duration::from_secs(30), "{err}");
        assert!(err.contains("Input/output error"), "{err}");

        // The pool still answers, and says what the kernel made of it.
        let (mode_failed, needs_check_failed) = pool_mode(fx, "with the data disk failing");
        assert!(
            degraded_as_documented(&(mode_failed.clone(), needs_check_failed)),
            "the kernel reported another mode for data errors: {mode_failed} {needs_check_failed}"
        );

        // The user restores the disk, unmounts, and brings the pool back.
        swap_table(fx, &dev.name, &linear);
        let (mode_restored, needs_check_restored) = pool_mode(fx, "after the disk is restored");
        assert_eq!(
            mode_restored, mode_failed,
            "the kernel changed the pool's mode by itself after the disk came back"
        );
        assert_eq!(needs_check_restored, needs_check_failed);
        for c in ["victim", "flaky"] {
            fx.ok(&["container", "umount", c]);
        }

        // Repair is for loop-file pools only, and says so.
        let err = fx.fails(&["pool", "repair"], 2);
        assert!(
            err.contains("only pools on loop files are repaired by thinlayer")
                && err.contains("thin_repair"),
            "{err}"
        );

        // check takes the pool offline, runs thin_check, reactivates it.
        let started = Instant::now();
        fx.ok(&["pool", "check"]);
        println!("pool check took {:?}", started.elapsed());
        assert_eq!(
            pool_mode(fx, "after pool check"),
            ("read_write".into(), false),
            "pool check did not bring the pool back to read-write"
        );
        // Read-write again: removal works.
        for c in ["victim", "flaky"] {
            fx.ok(&["container", "rm", c]);
        }

        // The image committed before the fault reads back exactly.
        fx.ok(&["container", "create", "base-img", "reader"]);
        let r = fx.ok(&["container", "mount", "reader"]);
        assert_eq!(
            fs::read(Path::new(r.trim()).join("payload")).unwrap(),
            payload,
            "image layer content changed across the fault"
        );
        // And the pool takes writes again.
        let (ok, _, err) = dd_fsync(&Path::new(r.trim()).join("new"));
        assert!(ok, "a write after recovery failed: {err}");
        fx.ok(&["container", "umount", "reader"]);
        fx.ok(&["container", "rm", "-f", "reader"]);
        fx.ok(&["image", "rm", "base-img"]);

        fx.ok(&["pool", "destroy"]);
        drop(dev);
        // Both loops are held to the end, as a user's disks stay attached:
        // with autoclear, the data loop would go while the `error` table is
        // live (nothing else holds it), and the metadata loop while `pool
        // check` has the pool down.
        drop((data_loop, meta_loop));
        assert!(fx.leaks().is_empty(), "{:#?}", fx.leaks());
    });
}

/// Copies the first 4 KiB of `dev` to `file`, or back (`to_dev`), with O_DIRECT.
fn dd_block(dev: &Path, file: &Path, to_dev: bool) {
    let (from, to, flag) = if to_dev {
        (file, dev, "oflag=direct")
    } else {
        (dev, file, "iflag=direct")
    };
    let st = Command::new("dd")
        .arg(format!("if={}", from.display()))
        .arg(format!("of={}", to.display()))
        .args([
            "bs=4096",
            "count=1",
            "conv=fsync,notrunc",
            "status=none",
            flag,
        ])
        .status()
        .expect("run dd");
    assert!(st.success(), "dd {} -> {}", from.display(), to.display());
}

/// Damaged metadata on a pool of block devices: activation refuses it, as it
/// should, and the message points to a repair that works for such a pool
/// (thin_repair by hand), not to `thinlayer pool repair`, which refuses
/// pools on block devices.
#[test]
fn a_device_pool_failing_its_check_points_to_a_repair_that_works() {
    fixture::run("devcheck", |fx| {
        let (d, m) = (fx.dir.join("data.img"), fx.dir.join("meta.img"));
        sparse(&d, DATA_SIZE);
        sparse(&m, 16 << 20);
        let data_loop = fx.kernel.loop_attach(&d).unwrap();
        let meta_loop = fx.kernel.loop_attach(&m).unwrap();
        let meta_dev = meta_loop.info.device.clone();
        fx.ok(&[
            "pool",
            "init",
            "--data-device",
            data_loop.info.device.to_str().unwrap(),
            "--metadata-device",
            meta_dev.to_str().unwrap(),
            "--base-size",
            "256M",
        ]);
        fx.ok(&["container", "create", "scratch", "c"]);
        fx.kernel
            .dm_remove(&format!("{}-pool", fx.prefix), false)
            .unwrap();
        // Damage the metadata superblock through the loop device, with
        // O_DIRECT: the device's page cache may hold what init wrote.
        let saved = fx.dir.join("superblock");
        let junk = fx.dir.join("junk");
        fs::write(&junk, [0x5au8; 4096]).unwrap();
        dd_block(&meta_dev, &saved, false);
        dd_block(&meta_dev, &junk, true);
        let check = fx.fails(&["pool", "activate"], 8);
        let repair = fx.cli(&["pool", "repair"]);
        let repair_err = String::from_utf8_lossy(&repair.stderr).into_owned();
        println!("activate: {check}repair: {} {repair_err}", repair.status);
        // Put the superblock back so the pool can be destroyed.
        dd_block(&meta_dev, &saved, true);
        fx.ok(&["pool", "activate"]);
        fx.ok(&["pool", "destroy"]);
        drop((data_loop, meta_loop));
        assert!(
            repair.status.success() || !check.contains("thinlayer pool repair"),
            "the check failure recommends `thinlayer pool repair`, which then refuses:\n{check}{repair_err}"
        );
        assert!(
            check.contains("thin_repair -i"),
            "no working repair named: {check}"
        );
    });
}

/// Overwrites 4 KiB at every `step` bytes of `path` (a file shared with the
/// image), then fsyncs: each write breaks the sharing of one pool block and
/// of the metadata leaf that maps it. Returns the fsync's outcome and the
/// time the whole pass took.
fn scatter_writes(path: &Path, len: u64, step: u64, seed: u8) -> (std::io::Result<()>, Duration) {
    use std::os::unix::fs::FileExt;
    let started = Instant::now();
    let r = (|| {
        let f = fs::OpenOptions::new().write(true).open(path)?;
        let buf = [seed; 4096];
        for off in (0..len).step_by(step as usize) {
            f.write_at(&buf, off)?;
        }
        f.sync_all()
    })();
    (r, started.elapsed())
}

/// Metadata space runs out: a pool with the smallest metadata thinlayer
/// takes (2 MiB) and the smallest block (64 KiB); containers of one image
/// each overwrite scattered blocks of a shared file, so that each copies a
/// share of the mapping tree. The containers are made up front, while
/// metadata is plentiful; then they write one after the other. Asserted,
/// as the kernel (Debian 6.1) does it: the guard refuses new containers
/// with a clear message while the pool is still read-write; when the
/// kernel runs out (its own reserve is a tenth of the metadata), the pool
/// turns read-only without `needs_check` (`pool status`: out of metadata
/// space) and writers needing new blocks get EIO at once (no hang); the
/// committed image and the other containers read back intact; `pool grow
/// --metadata-size` alone brings the pool back to read-write (no check or
/// repair), and new containers work again.
#[test]
fn metadata_space_runs_out_and_grow_brings_the_pool_back() {
    use thinlayer::pool::PoolMode;
    use thinlayer::tree::ImageRef;
    const BIG: u64 = 128 << 20;
    /// Every 4 MiB: each write lands in a different leaf of the mapping tree.
    const STEP: u64 = 4 << 20;
    const CONTAINERS: usize = 100;
    fixture::run("metafull", |fx| {
        fx.init_pool(
            "4G",
            "2M",
            Some("256M"),
            &["--block-size", "64K", "--min-free-percent", "25"],
        );
        let driver = thinlayer::Driver::open(
            &fx.root,
            fx.kernel.clone() as std::sync::Arc<dyn thinlayer::kernel::Kernel>,
        )
        .unwrap();
        let meta = || {
            let st = driver.status().unwrap();
            (
                st.metadata_used.0 * 100 / st.metadata_total.0,
                st.mode,
                st.needs_check,
            )
        };
        // The image: one 128 MiB file, 2048 pool blocks.
        fx.ok(&["container", "create", "scratch", "src"]);
        let m = driver.mount("src").unwrap();
        write_file(&m.join("big"), BIG as usize, 9);
        driver.umount("src").unwrap();
        fx.ok(&["container", "commit", "src", "img"]);
        let top = image_top(fx, "img");
        let image_hash = fixture::tree_hash(&driver.mount(&top).unwrap());
        driver.umount(&top).unwrap();
        // A container whose data must come through unharmed.
        fx.ok(&["container", "create", "img", "keeper"]);
        let m = driver.mount("keeper").unwrap();
        write_file(&m.join("kept"), 1 << 20, 7);
        let kept_hash = fixture::tree_hash(&m);
        driver.umount("keeper").unwrap();
        let intact = |when: &str| {
            for (key, hash) in [(top.as_str(), &image_hash), ("keeper", &kept_hash)] {
                let h = fixture::tree_hash(&driver.mount(key).unwrap());
                driver.umount(key).unwrap();
                assert_eq!(&h, hash, "{key} changed ({when})");
            }
        };
        let img = ImageRef::parse("img").unwrap();
        let names: Vec<String> = (0..CONTAINERS).map(|i| format!("c{i}")).collect();
        for n in &names {
            driver.create_container(n, Some(&img)).unwrap();
        }
        println!("{CONTAINERS} containers made; metadata {:?}", meta());

        // Writers until the guard refuses a new container.
        let mut next = 0;
        let refusal = loop {
            assert!(next < CONTAINERS, "the guard never refused: {:?}", meta());
            let m = driver.mount(&names[next]).unwrap();
            let (r, took) = scatter_writes(&m.join("big"), BIG, STEP, next as u8);
            r.unwrap_or_else(|e| panic!("c{next}: a write before the guard: {e} after {took:?}"));
            next += 1;
            let out = fx.cli(&["container", "create", "img", "probe"]);
            if out.status.success() {
                driver.remove("probe", false).unwrap();
            } else {
                break (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                );
            }
        };
        let (pct, mode, _) = meta();
        println!(
            "guard refused a new container after {next} writers, {pct}% metadata used, pool {mode:?}: {}",
            refusal.1.trim()
        );
        assert_eq!(refusal.0, Some(6), "{}", refusal.1);
        assert!(
            refusal
                .1
                .contains("metadata blocks free, below the 25% kept in reserve"),
            "{}",
            refusal.1
        );
        assert_eq!(
            mode,
            PoolMode::ReadWrite,
            "the guard refuses before the pool is full"
        );

        // More writers, until the kernel runs out.
        let (err, took) = loop {
            assert!(next < CONTAINERS, "metadata never ran out: {:?}", meta());
            let name = &names[next];
            next += 1;
            let started = Instant::now();
            let m = match driver.mount(name) {
                Ok(m) => m,
                Err(e) => {
                    println!("mounting {name} failed after {:?}: {e}", started.elapsed());
                    break (std::io::Error::other(e.to_string()), started.elapsed());
                }
            };
            let (r, took) = scatter_writes(&m.join("big"), BIG, STEP, next as u8);
            if let Err(e) = r {
                break (e, took);
            }
        };
        let (pct, mode, needs_check) = meta();
        println!(
            "writer {next} failed after {took:?}: {err} (errno {:?}); pool {mode:?}, needs_check {needs_check}, metadata {pct}%",
            err.raw_os_error()
        );
        assert!(took < Duration::from_secs(30), "the writer hung {took:?}");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        // A writer in a container mounted before: new blocks fail too.
        let started = Instant::now();
        let r = fs::File::create(driver.mount("c0").unwrap().join("late")).and_then(|mut f| {
            use std::io::Write;
            f.write_all(&[1u8; 1 << 20])?;
            f.sync_all()
        });
        println!("another writer: {r:?} after {:?}", started.elapsed());
        assert!(
            r.is_err(),
            "a write needing new blocks succeeded with metadata exhausted"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        driver.umount("c0").unwrap();
        let st = fx.json(&["pool", "status"]);
        println!("pool status, metadata exhausted: {st}");
        assert_eq!(st["mode"], "out_of_metadata_space", "{st}");
        assert_eq!(st["needs_check"], false, "{st}");
        let e = fx.fails(&["container", "create", "img", "refused"], 6);
        println!("create, metadata exhausted: {}", e.trim());
        assert!(e.contains("is out of metadata space: no new layers"), "{e}");

        // Reads are served: the committed image and the keeper intact.
        intact("metadata exhausted");

        // Grow the metadata.
        let grown = fx.cli(&["--json", "pool", "grow", "--metadata-size", "16M"]);
        println!(
            "pool grow --metadata-size 16M: {} {}{}",
            grown.status,
            String::from_utf8_lossy(&grown.stdout).trim(),
            String::from_utf8_lossy(&grown.stderr).trim()
        );
        assert!(grown.status.success());
        // No check or repair needed: the kernel never flagged the metadata.
        let after = meta();
        println!("after grow: {after:?}");
        assert_eq!((after.1, after.2), (PoolMode::ReadWrite, false));

        // Everything committed before is intact; new containers work.
        intact("after recovery");
        fx.ok(&["container", "create", "img", "after"]);
        let m = driver.mount("after").unwrap();
        let (r, _) = scatter_writes(&m.join("big"), BIG, STEP, 1);
        r.unwrap();
        driver.umount("after").unwrap();
        println!("after recovery: {:?}", meta());
        drop(driver);
    });
}

/// The key of an image's top layer.
fn image_top(fx: &Fixture, image: &str) -> String {
    let tree = fx.json(&["tree"]);
    let full = format!("{image}:latest");
    tree["images"][&full]["top"]
        .as_str()
        .unwrap_or_else(|| panic!("no image {full} in {tree}"))
        .to_string()
}
