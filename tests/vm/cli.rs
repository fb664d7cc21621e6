//! The `thinlayer` command on a real pool: pool lifecycle, the layer rules
//! and their errors, idle cost, xfs, a full pool, concurrency.

use std::path::Path;
use std::process::Command;

use crate::fixture::{self, Fixture, write_file};

/// A small pool: 1 GiB of data, 256 MiB layers.
fn small_pool(fx: &Fixture, extra: &[&str]) {
    fx.init_pool("1G", "16M", Some("256M"), extra);
}

#[test]
fn pool_lifecycle_and_reactivation() {
    fixture::run("pool", |fx| {
        small_pool(fx, &["--block-size", "128K"]);
        let st = fx.json(&["pool", "status"]);
        assert_eq!(st["data_total"], 1u64 << 30);
        assert_eq!(st["block_size"], 128 * 1024);
        assert_eq!(st["mode"], "read_write");
        assert_eq!(st["thin_devices"], 1, "the base");
        // The base's creation left the pool's transaction id alone.
        assert_eq!(st["transaction_id"], 0);
        assert!(st["metadata_total"].as_u64().unwrap() > 0);
        let text = fx.ok(&["pool", "status"]);
        assert!(text.contains("transaction id:  0"), "{text}");
        fx.fails(&["pool", "init"], 4);

        // A reboot, as far as the pool sees it: its device and loops are gone.
        fx.ok(&["container", "create", "scratch", "keep"]);
        let pool = format!("{}-pool", fx.prefix);
        use thinlayer::kernel::Kernel;
        fx.kernel.dm_remove(&pool, false).unwrap();
        assert!(fx.kernel.dm_info(&pool).unwrap().is_none());
        fx.ok(&["pool", "activate"]);
        assert!(fx.kernel.dm_info(&pool).unwrap().is_some());
        // Any command activates by itself too.
        fx.kernel.dm_remove(&pool, false).unwrap();
        let ps = fx.json(&["ps"]);
        assert_eq!(ps[0]["name"], "keep");

        fx.ok(&["pool", "destroy"]);
        assert!(!fx.root.join("data").exists() && !fx.root.join("metadata").exists());
        fx.fails(&["pool", "status"], 3);
    });
}

#[test]
fn layer_rules_and_clear_errors() {
    fixture::run("rules", |fx| {
        small_pool(fx, &[]);
        fx.ok(&["container", "create", "scratch", "a"]);
        let e = fx.fails(&["container", "create", "scratch", "a"], 4);
        assert!(e.contains("already exists"), "{e}");
        let e = fx.fails(&["container", "create", "nope:1", "b"], 3);
        assert!(e.contains("image \"nope:1\" does not exist"), "{e}");
        let e = fx.fails(&["container", "create", "scratch", "bad/name"], 2);
        assert!(e.contains("container name"), "{e}");
        fx.fails(&["container", "mount", "ghost"], 3);
        fx.fails(&["container", "rm", "ghost"], 3);

        let mnt = fx.ok(&["container", "mount", "a"]);
        let mnt = Path::new(mnt.trim());
        write_file(&mnt.join("hello"), 1000, 1);
        let e = fx.fails(&["container", "rm", "a"], 5);
        assert!(e.contains("mounted"), "{e}");
        let e = fx.fails(&["container", "commit", "a", "img"], 5);
        assert!(e.contains("unmount"), "{e}");
        fx.ok(&["container", "umount", "a"]);
        fx.ok(&["container", "commit", "a", "img:1"]);
        fx.ok(&["container", "create", "img:1", "b"]);
        let tree = fx.json(&["tree"]);
        let top = tree["images"]["img:1"]["top"].as_str().unwrap().to_string();
        let e = fx.fails(&["container", "rm", &top], 5);
        assert!(e.contains("has children"), "{e}");
        let e = fx.fails(&["image", "rm", "img:1"], 5);
        assert!(e.contains("used by container"), "{e}");
        let text = fx.ok(&["tree"]);
        assert!(
            text.contains("[img:1]") && text.contains("b (thin"),
            "{text}"
        );

        // The child sees the committed file.
        let mb = fx.ok(&["container", "mount", "b"]);
        assert_eq!(
            std::fs::read(Path::new(mb.trim()).join("hello"))
                .unwrap()
                .len(),
            1000
        );
        fx.ok(&["container", "umount", "b"]);
        fx.ok(&["container", "rm", "b"]);
        fx.ok(&["image", "rm", "img:1"]);
        assert_eq!(fx.json(&["image", "ls"]).as_array().unwrap().len(), 0);
        assert_eq!(fx.json(&["pool", "status"])["thin_devices"], 1);
    });
}

#[test]
fn an_idle_container_costs_a_few_blocks() {
    fixture::run("idle", |fx| {
        // The default 10 GiB layers: ext4's lazy inode-table init would cost
        // thousands of blocks per mounted snapshot if it ran.
        fx.init_pool("4G", "32M", None, &[]);
        let before = fx.data_used();
        for i in 0..5 {
            let name = format!("idle{i}");
            fx.ok(&["container", "create", "scratch", &name]);
            fx.ok(&["container", "mount", &name]);
        }
        // Give a background init thread time to show itself.
        std::thread::sleep(std::time::Duration::from_secs(5));
        let after = fx.data_used();
        let per = (after - before) / 5;
        println!("an idle container, created and mounted, costs {per} bytes of pool data");
        assert!(
            per <= 256 * 1024,
            "an idle mounted container costs {per} bytes of pool data"
        );
    });
}

#[test]
fn xfs_layers_mount_side_by_side() {
    fixture::run("xfs", |fx| {
        fx.init_pool("2G", "16M", Some("512M"), &["--fs", "xfs"]);
        fx.ok(&["container", "create", "scratch", "x"]);
        let m = fx.ok(&["container", "mount", "x"]);
        write_file(&Path::new(m.trim()).join("f"), 1 << 20, 3);
        fx.ok(&["container", "umount", "x"]);
        fx.ok(&["container", "commit", "x", "xi"]);
        fx.ok(&["container", "create", "xi", "y1"]);
        fx.ok(&["container", "create", "xi", "y2"]);
        // Same filesystem UUID on both: needs nouuid.
        let m1 = fx.ok(&["container", "mount", "y1"]);
        let m2 = fx.ok(&["container", "mount", "y2"]);
        assert_eq!(
            std::fs::read(Path::new(m1.trim()).join("f")).unwrap().len(),
            1 << 20
        );
        assert_eq!(
            std::fs::read(Path::new(m2.trim()).join("f")).unwrap().len(),
            1 << 20
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            mounts
                .lines()
                .filter(|l| l.contains(fx.root.to_str().unwrap()) && l.contains(" xfs "))
                .count()
                == 2
        );
        fx.ok(&["container", "rm", "-f", "y1"]);
        fx.ok(&["container", "rm", "-f", "y2"]);
    });
}

#[test]
fn a_full_pool_fails_writes_promptly_and_refuses_new_layers() {
    fixture::run("full", |fx| {
        fx.init_pool("96M", "4M", Some("256M"), &[]);
        fx.ok(&["container", "create", "scratch", "hog"]);
        let m = fx.ok(&["container", "mount", "hog"]);
        // Most of the pool first, untimed, so that the timed writer reaches
        // the end of the pool soon: what is timed is how long a writer
        // waits once the pool is full, not how fast the VM writes.
        let pre = Command::new("dd")
            .args(["if=/dev/zero", "bs=1M", "count=64", "conv=fsync"])
            .arg(format!("of={}/most", m.trim()))
            .output()
            .unwrap();
        assert!(pre.status.success(), "64 MiB fit in a 96 MiB pool: {pre:?}");
        let st = fx.json(&["pool", "status"]);
        assert_eq!(st["mode"], "read_write", "{st}");
        // Direct I/O: each write reaches the pool before dd goes on, so the
        // write that finds the pool full is the one that fails (buffered,
        // the error would wait for writeback and the final fsync).
        let started = std::time::Instant::now();
        let out = Command::new("dd")
            .args([
                "if=/dev/zero",
                "bs=1M",
                "count=200",
                "oflag=direct",
                "conv=fsync",
            ])
            .arg(format!("of={}/fill", m.trim()))
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "a write past the pool's end must fail"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(45),
            "the writer hung {:?} (queue_if_no_space?)",
            started.elapsed()
        );
        println!(
            "the writer failed after {:?}: {}",
            started.elapsed(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
        );
        let st = fx.json(&["pool", "status"]);
        assert_eq!(st["mode"], "out_of_data_space", "{st}");
        let e = fx.fails(&["container", "create", "scratch", "more"], 6);
        assert!(
            e.contains("out of data space") || e.contains("no new layers"),
            "{e}"
        );
        // Growing the pool brings it back to read-write, with the data kept.
        let e = fx.fails(&["pool", "grow", "--data-size", "64M"], 2);
        assert!(e.contains("never shrinks"), "{e}");
        let st = fx.json(&[
            "pool",
            "grow",
            "--data-size",
            "512M",
            "--metadata-size",
            "8M",
        ]);
        assert_eq!(st["mode"], "read_write", "{st}");
        assert_eq!(st["data_total"], 512u64 << 20);
        assert_eq!(st["metadata_total"], 8u64 << 20);
        fx.ok(&["container", "create", "scratch", "more"]);
        let m2 = fx.ok(&["container", "mount", "more"]);
        write_file(&Path::new(m2.trim()).join("after"), 8 << 20, 1);
        fx.ok(&["container", "rm", "-f", "more"]);
        fx.ok(&["container", "rm", "-f", "hog"]);
    });
}

#[test]
fn several_processes_share_a_root() {
    fixture::run("concurrent", |fx| {
        small_pool(fx, &[]);
        let bin = env!("CARGO_BIN_EXE_thinlayer");
        let children: Vec<_> = (0..4)
            .map(|p| {
                let root = fx.root.clone();
                std::thread::spawn(move || {
                    for i in 0..5 {
                        let name = format!("p{p}-{i}");
                        for args in [
                            vec!["container", "create", "scratch", name.as_str()],
                            vec!["container", "mount", name.as_str()],
                            vec!["container", "umount", name.as_str()],
                        ] {
                            let out = Command::new(bin)
                                .arg("--root")
                                .arg(&root)
                                .args(&args)
                                .output()
                                .unwrap();
                            assert!(
                                out.status.success(),
                                "{args:?}: {}",
                                String::from_utf8_lossy(&out.stderr)
                            );
                        }
                        if i % 2 == 1 {
                            let out = Command::new(bin)
                                .arg("--root")
                                .arg(&root)
                                .args(["container", "rm", &name])
                                .output()
                                .unwrap();
                            assert!(
                                out.status.success(),
                                "rm: {}",
                                String::from_utf8_lossy(&out.stderr)
                            );
                        }
                    }
                })
            })
            .collect();
        for c in children {
            c.join().unwrap();
        }
        let ps = fx.json(&["ps"]);
        assert_eq!(ps.as_array().unwrap().len(), 12);
        assert_eq!(fx.json(&["pool", "status"])["thin_devices"], 13);
    });
}

#[test]
fn refuses_to_run_without_root() {
    fixture::run("nonroot", |fx| {
        small_pool(fx, &[]);
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_thinlayer"))
            .arg("--root")
            .arg(&fx.root)
            .arg("ps")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(7));
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains("needs root"), "{e}");
        // The root and its records are not open to others.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&fx.root).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "root directory mode {mode:o}");
        for file in ["state.json", "state.journal"] {
            let mode = std::fs::metadata(fx.root.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{file} mode {mode:o}");
        }
    });
}

/// The commands that change one thing and print a line (or nothing) answer
/// `--json` with one object: what was done, to what kind of thing, its name,
/// and the command's own fields.
#[test]
fn commands_that_print_a_line_answer_json_too() {
    fixture::run("json", |fx| {
        small_pool(fx, &[]);
        let done = |args: &[&str], done: &str, kind: &str, name: &str| {
            let v = fx.json(args);
            assert_eq!(
                (v["done"].as_str(), v["kind"].as_str(), v["name"].as_str()),
                (Some(done), Some(kind), Some(name)),
                "thinlayer --json {args:?}: {v}"
            );
            v
        };
        fx.ok(&["container", "create", "scratch", "c"]);
        fx.ok(&["container", "mount", "c"]);
        done(&["container", "umount", "c"], "unmounted", "container", "c");
        fx.ok(&["container", "commit", "c", "img:1"]);
        let image = fx.json(&["image", "ls"])[0]["name"]
            .as_str()
            .unwrap()
            .to_string();
        let out = fx.dir.join("img.tar");
        let v = done(
            &["image", "export", "img:1", "-o", out.to_str().unwrap()],
            "exported",
            "image",
            &image,
        );
        assert_eq!(v["layers"], 1, "{v}");
        assert_eq!(v["path"].as_str(), out.to_str(), "{v}");
        assert!(out.is_file());
        done(&["image", "rm", "img:1"], "removed", "image", &image);
        fx.ok(&["container", "create", "scratch", "d"]);
        done(&["container", "rm", "d"], "removed", "container", "d");

        let root = fx.root.display().to_string();
        done(&["pool", "activate"], "activated", "pool", &root);
        let v = done(&["pool", "check"], "checked", "pool", &root);
        assert_eq!(v["sound"], true, "{v}");
        let v = done(&["pool", "repair"], "repaired", "pool", &root);
        let kept = v["damaged_metadata"].as_str().unwrap_or_default();
        assert!(Path::new(kept).is_file(), "{v}");
        done(&["pool", "destroy"], "destroyed", "pool", &root);
    });
}
