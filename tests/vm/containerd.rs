//! containerd on thinlayer: `thinlayer serve` as containerd's proxy
//! snapshotter, driven with `ctr` (Debian's containerd 1.6 and runc), and
//! the server killed at a failpoint in the middle of a Prepare and of a
//! Commit, then restarted; containerd's garbage collector, which walks
//! thinlayer, leaving the layers made with the `thinlayer` command alone.
//!
//! Each test starts its own containerd (root on the scratch disk, state and
//! sockets under a fresh directory in /run) and its own `thinlayer serve`.
//! A guard stops both, kills shims they left and unmounts containerd's
//! mounts even when the test panics, before the fixture destroys the pool.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use thinlayer::image::Compression;
use thinlayer::image::build::{LayerBuilder, write_oci_archive};
use thinlayer::kernel::Kernel;

use crate::crash::{
    CONTAINERD_ROWS, check_content, check_root, kills_during, layer_digest, note_kill, open,
    records,
};
use crate::fixture::process::{Daemon, kill_shims, output_text as text};
use crate::fixture::{self, DEADLINE, Fixture, eventually, write_file};

const IMAGE: &str = "localhost/tlbox:1";
const IMAGE2: &str = "localhost/tlbox:2";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Layer 1: static busybox with a few applet links, `etc/greeting` and a
/// file layer 2 deletes. Layer 2: the whiteout of `etc/removed` and a new
/// file. Layer 3 (second image only): one more file.
fn layers(third: bool) -> Vec<Vec<u8>> {
    let busybox = fs::read("/bin/busybox").expect("busybox-static is installed on the host");
    let mut l1 = LayerBuilder::new();
    l1.dir("bin", 0o755);
    l1.file("bin/busybox", &busybox, 0o755);
    for applet in ["sh", "cat", "ls", "echo", "test"] {
        l1.symlink(&format!("bin/{applet}"), "busybox");
    }
    l1.dir("etc", 0o755);
    l1.file("etc/greeting", b"hello from thinlayer\n", 0o644);
    l1.file("etc/removed", b"layer 2 deletes this\n", 0o644);
    let mut l2 = LayerBuilder::new();
    l2.whiteout("etc/removed");
    l2.file("etc/added", b"added by layer 2\n", 0o644);
    let mut out = vec![l1.finish(), l2.finish()];
    if third {
        let mut l3 = LayerBuilder::new();
        l3.file("etc/third", b"layer 3\n", 0o644);
        out.push(l3.finish());
    }
    out
}

/// An OCI archive in the test's directory: [`IMAGE`] of [`layers`], or
/// with the third layer [`IMAGE2`].
fn tlbox_archive(fx: &Fixture, third: bool) -> PathBuf {
    let (image, file) = if third {
        (IMAGE2, "tlbox2.tar")
    } else {
        (IMAGE, "tlbox.tar")
    };
    let path = fx.dir.join(file);
    write_oci_archive(&path, image, &layers(third), Compression::Gzip, true).unwrap();
    path
}

fn small_pool(fx: &Fixture) {
    fx.ok(&[
        "pool",
        "init",
        "--data-size",
        "2G",
        "--metadata-size",
        "32M",
        "--base-size",
        "512M",
    ]);
}

/// A containerd and a `thinlayer serve` for one test; stopped and cleaned
/// up when dropped.
struct Cluster<'a> {
    fx: &'a Fixture,
    /// Under /run: containerd's state and both sockets.
    run: PathBuf,
    serve_sock: PathBuf,
    cd_sock: PathBuf,
    config: PathBuf,
    serve: Option<Daemon>,
    containerd: Option<Daemon>,
    /// How many servers were started, to name their logs.
    serves: u32,
    /// `serve --spares`: the server's default when `None`.
    spares: Option<u8>,
}

impl<'a> Cluster<'a> {
    fn new(fx: &'a Fixture, tag: &str) -> Cluster<'a> {
        Cluster::with_config(fx, tag, "")
    }

    /// As [`Cluster::new`], with `extra` appended to containerd's config.
    fn with_config(fx: &'a Fixture, tag: &str, extra: &str) -> Cluster<'a> {
        let run = fixture::process::run_dir(tag);
        let serve_sock = run.join("thinlayer.sock");
        let cd_sock = run.join("containerd.sock");
        let config = fx.dir.join("containerd.toml");
        fs::write(
            &config,
            fixture::process::containerd_config(&fx.dir, &run, &serve_sock, extra),
        )
        .unwrap();
        Cluster {
            fx,
            run,
            serve_sock,
            cd_sock,
            config,
            serve: None,
            containerd: None,
            serves: 0,
            spares: None,
        }
    }

    /// Starts `thinlayer serve` (with `env`) and waits for its socket.
    fn start_serve(&mut self, env: &[(&str, &str)]) {
        assert!(self.serve.is_none(), "a server is running");
        self.serves += 1;
        let log = self.fx.dir.join(format!("serve-{}.log", self.serves));
        let mut c = Command::new(env!("CARGO_BIN_EXE_thinlayer"));
        c.arg("--root")
            .arg(&self.fx.root)
            .arg("-vv")
            .arg("serve")
            .arg("--socket")
            .arg(&self.serve_sock);
        if let Some(n) = self.spares {
            c.arg("--spares").arg(n.to_string());
        }
        for (k, v) in env {
            c.env(k, v);
        }
        let mut serve = Daemon::start("thinlayer serve", c, &log);
        let sock = self.serve_sock.clone();
        serve.wait_socket(&sock);
        self.serve = Some(serve);
        let mode = fs::metadata(&sock).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    /// Restarts the server armed to die at `point`, runs `call` (which must
    /// make it reach the point), insists that it was killed there, then
    /// starts a healthy server and waits until containerd reaches it.
    fn kill_serve_at(&mut self, point: &str, call: impl FnOnce(&Self)) {
        self.stop_serve();
        self.start_serve(&[("THINLAYER_FAILPOINT", point)]);
        self.wait_reconnected();
        call(self);
        let st = self
            .serve
            .take()
            .expect("a server was started")
            .wait_exit(&format!("killed at {point}"));
        assert_eq!(
            st.signal(),
            Some(9),
            "the server was to be killed at {point}"
        );
        note_kill(point);
        // The killed server's socket file is left; the next one replaces it.
        assert!(self.serve_sock.exists());
        self.start_serve(&[]);
        self.wait_reconnected();
    }

    /// Stops the server with SIGTERM; it must exit 0 and remove its socket.
    fn stop_serve(&mut self) {
        let st = self.serve.take().expect("a server was started").stop();
        assert!(st.success(), "thinlayer serve exited with {st}");
        assert!(!self.serve_sock.exists(), "the socket is removed on exit");
    }

    fn start_containerd(&mut self) {
        let log = self.fx.dir.join("containerd.log");
        let mut c = Command::new("containerd");
        c.arg("--config").arg(&self.config).env("PATH", PATH);
        let mut containerd = Daemon::start("containerd", c, &log);
        containerd.wait_socket(&self.cd_sock);
        self.containerd = Some(containerd);
    }

    /// Stops containerd with SIGTERM (if it does not stop, the test fails
    /// and the clean-up kills it).
    fn stop_containerd(&mut self) {
        self.containerd
            .take()
            .expect("containerd was started")
            .stop();
    }

    /// Runs `ctr ARGS` on containerd.
    fn ctr(&self, args: &[&str]) -> Output {
        ctr_at(&self.cd_sock, args)
    }

    /// Runs ctr and insists on success; returns stdout.
    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn import(&self, archive: &Path) -> Output {
        self.ctr(&[
            "images",
            "import",
            "--snapshotter",
            "thinlayer",
            archive.to_str().unwrap(),
        ])
    }

    /// `ctr run` of `sh -c script` in container `id`; returns stdout.
    fn run_sh(&self, image: &str, id: &str, rm: bool, script: &str) -> Output {
        let mut args = vec!["run", "--snapshotter", "thinlayer"];
        if rm {
            args.push("--rm");
        }
        args.extend([image, id, "sh", "-c", script]);
        self.ctr(&args)
    }

    /// Imports `archive`, insisting on success.
    fn import_ok(&self, archive: &Path) {
        let out = self.import(archive);
        assert!(out.status.success(), "{}", text(&out));
    }

    /// `ctr run --rm` of `sh -c script`, insisting on success and on `want`
    /// in its output.
    fn run_rm_prints(&self, image: &str, id: &str, script: &str, want: &str) {
        let out = self.run_sh(image, id, true, script);
        assert!(
            out.status.success() && text(&out).contains(want),
            "{}",
            text(&out)
        );
    }

    /// Waits until containerd reaches the (restarted) server: its gRPC
    /// client reconnects with a back-off. `snapshots usage` calls the
    /// snapshotter for every snapshot.
    fn wait_reconnected(&self) {
        eventually(
            "containerd reaches the (re)started server",
            DEADLINE,
            || {
                let out = self.ctr(&["snapshots", "--snapshotter", "thinlayer", "usage"]);
                if out.status.success() {
                    Ok(())
                } else {
                    Err(text(&out))
                }
            },
        );
    }

    /// Mounts this test's containerd made (rootfs of tasks under its state
    /// directory, temporary mounts for unpacking under its root) that are
    /// still there. Only its own: other tests in the VM run containerds of
    /// their own at the same time.
    fn leftover_mounts(&self) -> thinlayer::Result<Vec<PathBuf>> {
        Ok(self
            .fx
            .kernel
            .mounts()?
            .into_iter()
            .map(|m| m.target)
            .filter(|t| {
                t.starts_with(&self.run)
                    || t.starts_with(fixture::process::containerd_root(&self.fx.dir))
            })
            .collect())
    }

    /// After a test: containerd and the server stopped, no thin device of
    /// the pool active, no mount of containerd's left.
    fn stopped_clean(&mut self) {
        self.stop_containerd();
        self.stop_serve();
        kill_shims(&self.cd_sock);
        assert_eq!(self.thin_devices(), Vec::<String>::new());
        assert_eq!(
            self.leftover_mounts().expect("list mounts"),
            Vec::<PathBuf>::new()
        );
    }

    /// The pool's device-mapper devices other than the pool.
    fn thin_devices(&self) -> Vec<String> {
        let pool = format!("{}-pool", self.fx.prefix);
        self.fx
            .kernel
            .dm_list()
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with(&self.fx.prefix) && *n != pool)
            .collect()
    }

    fn print_logs(&self) {
        let mut logs: Vec<PathBuf> = vec![self.fx.dir.join("containerd.log")];
        logs.extend((1..=self.serves).map(|n| self.fx.dir.join(format!("serve-{n}.log"))));
        for log in logs {
            let text = fs::read_to_string(&log).unwrap_or_default();
            // gRPC's own frames at debug level would hide thinlayer's lines.
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains("Connection{peer"))
                .collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "--- {} (last 60 lines but gRPC frames)\n{}",
                log.display(),
                tail.join("\n")
            );
        }
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        // Dropped, a daemon is stopped (SIGTERM, then SIGKILL).
        drop(self.containerd.take());
        // Shims outlive containerd by design; ours name our socket.
        kill_shims(&self.cd_sock);
        drop(self.serve.take());
        // Best effort: a test that checks mounts fails on a listing error.
        self.fx
            .force_umount(self.leftover_mounts().unwrap_or_default());
        let _ = fs::remove_dir_all(&self.run);
    }
}

/// Runs `ctr -a SOCKET ARGS` (at most 180 s).
fn ctr_at(sock: &Path, args: &[&str]) -> Output {
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["-k", "5", "180", "ctr", "-a"])
        .arg(sock)
        .args(args)
        .env("PATH", PATH)
        .stdin(Stdio::null())
        .output()
        .expect("run ctr");
    eprintln!(
        "ctr -a {} {} -> {} in {:.1} s",
        sock.display(),
        args.join(" "),
        out.status,
        started.elapsed().as_secs_f64()
    );
    out
}

/// `ctr snapshots usage`: KEY, SIZE (a number and a unit), INODES.
fn usage_rows(out: &str) -> Vec<(String, String, i64)> {
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["KEY", "SIZE", "INODES"], "{out}");
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() >= 3, "usage row {l:?}");
            (
                f[0].to_string(),
                f[1..f.len() - 1].join(" "),
                f[f.len() - 1].parse().expect("inodes"),
            )
        })
        .collect()
}

/// Every layer's parent is a committed layer of the tree (and the command
/// itself fails if the records and the kernel disagree).
fn check_tree(fx: &Fixture) -> serde_json::Value {
    let tree = fx.json(&["tree"]);
    let layers = tree["layers"].as_object().unwrap();
    for (key, l) in layers {
        if let Some(p) = l["parent"].as_str() {
            assert_eq!(
                layers.get(p).map(|p| p["kind"].clone()),
                Some(serde_json::json!("committed")),
                "parent of {key}: {tree}"
            );
        }
    }
    tree
}

#[test]
fn containerd_runs_containers_on_thinlayer() {
    fixture::run("containerd", |fx| {
        small_pool(fx);
        let archive = tlbox_archive(fx, false);
        let mut cl = Cluster::new(fx, "cd");
        cl.start_serve(&[]);
        cl.start_containerd();
        let plugins = cl.ctr_ok(&["plugins", "ls"]);
        assert!(
            plugins
                .lines()
                .any(|l| l.contains("thinlayer") && l.contains("ok")),
            "{plugins}"
        );

        cl.import_ok(&archive);
        let images = cl.ctr_ok(&["images", "ls", "-q"]);
        assert!(images.lines().any(|l| l == IMAGE), "{images}");

        let c1 = cl.run_sh(
            IMAGE,
            "c1",
            false,
            "echo one > /c1-file && cat /etc/greeting /etc/added && \
             (test -e /etc/removed && echo REMOVED-VISIBLE || echo removed-gone) && cat /c1-file",
        );
        let c1 = text(&c1);
        for want in [
            "hello from thinlayer",
            "added by layer 2",
            "removed-gone",
            "one",
        ] {
            assert!(c1.contains(want), "c1 printed {c1:?}");
        }
        assert!(!c1.contains("REMOVED-VISIBLE"), "{c1}");
        let c2 = text(&cl.run_sh(
            IMAGE,
            "c2",
            false,
            "(test -e /c1-file && echo SEES-C1 || echo no-c1) && echo two > /c2-file && cat /c2-file",
        ));
        assert!(
            c2.contains("no-c1") && c2.contains("two") && !c2.contains("SEES-C1"),
            "c2 printed {c2:?}"
        );
        let c3 = text(&cl.run_sh(
            IMAGE,
            "c3",
            true,
            "echo three > /c3-file && cat /c3-file && ls /",
        ));
        assert!(
            c3.contains("three") && !c3.contains("c1-file") && !c3.contains("c2-file"),
            "c3 printed {c3:?}"
        );

        // c1 and c2 keep their snapshots (no --rm): containerd's usage and
        // thinlayer's own view of the same tree.
        // c3 ran with --rm: containerd drops it from its own records at
        // once, and its garbage collector removes the snapshot from
        // thinlayer in the background, a moment later on a busy machine.
        let usage = eventually(
            "containerd's collector removes the --rm container c3's snapshot from thinlayer",
            DEADLINE,
            || {
                let usage = cl.ctr_ok(&["snapshots", "--snapshotter", "thinlayer", "usage"]);
                let ps = fx.json(&["ps"]).to_string();
                if usage_rows(&usage).iter().any(|r| r.0 == "c3") || ps.contains("/c3\"") {
                    Err(format!("{usage}\nthinlayer ps: {ps}"))
                } else {
                    Ok(usage)
                }
            },
        );
        eprintln!("{usage}");
        let rows = usage_rows(&usage);
        for id in ["c1", "c2"] {
            let row = rows
                .iter()
                .find(|r| r.0 == id)
                .unwrap_or_else(|| panic!("{id} in {usage}"));
            assert_eq!(row.2, 0, "inodes are not counted: {usage}");
            let n: f64 = row.1.split_whitespace().next().unwrap().parse().unwrap();
            assert!(n > 0.0, "{id} wrote a file: {usage}");
        }
        assert_eq!(rows.len(), 4, "two image layers and c1, c2: {usage}");
        let ps = fx.json(&["ps"]);
        let names: Vec<&str> = ps
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{ps}");
        assert!(
            names.iter().any(|n| n.ends_with("/c1")) && names.iter().any(|n| n.ends_with("/c2")),
            "{ps}"
        );
        let tree = fx.ok(&["tree"]);
        eprintln!("{tree}");
        assert!(tree.contains("/c1") && tree.contains("sha256:"), "{tree}");
        assert_eq!(check_tree(fx)["layers"].as_object().unwrap().len(), 4);

        // Removing a parent that has children is refused.
        let snaps = cl.ctr_ok(&["snapshots", "--snapshotter", "thinlayer", "ls"]);
        let committed = snaps
            .lines()
            .find(|l| l.contains("Committed"))
            .and_then(|l| l.split_whitespace().next())
            .expect("a committed snapshot")
            .to_string();
        let out = cl.ctr(&["snapshots", "--snapshotter", "thinlayer", "rm", &committed]);
        assert!(!out.status.success(), "{}", text(&out));

        cl.ctr_ok(&["containers", "rm", "c1", "c2"]);
        cl.ctr_ok(&["images", "rm", "--sync", IMAGE]);
        let snaps = cl.ctr_ok(&["snapshots", "--snapshotter", "thinlayer", "ls"]);
        assert_eq!(snaps.lines().count(), 1, "only the header is left: {snaps}");
        assert!(
            fx.json(&["tree"])["layers"].as_object().unwrap().is_empty(),
            "containerd removed every snapshot"
        );

        cl.stopped_clean();
    });
}

/// Zeros a layer's tar holds as data (a sparse file, as image builders
/// write it) take no pool blocks when containerd unpacks the image either:
/// its applier writes them out, the Commit makes holes of them.
#[test]
fn zeros_containerd_unpacks_take_no_pool_blocks() {
    fixture::run("cd-holes", |fx| {
        small_pool(fx);
        const MIB: usize = 1 << 20;
        let (layer, head) = crate::images::holes_layer();
        let mut all = layers(false);
        all.push(layer);
        let image = "localhost/holes:1";
        let archive = fx.dir.join("holes.tar");
        write_oci_archive(&archive, image, &all, Compression::Gzip, true).unwrap();
        let expected = fx.dir.join("head-then-zeros");
        fs::write(&expected, &head).unwrap();
        let sum = |path: &Path| {
            let out = Command::new("md5sum").arg(path).output().unwrap();
            assert!(out.status.success(), "{}", text(&out));
            String::from_utf8(out.stdout).unwrap()[..32].to_string()
        };
        let (head_sum, zeros_sum) = (sum(&expected), {
            let zeros = fx.dir.join("zeros");
            fs::write(&zeros, vec![0u8; 64 * MIB]).unwrap();
            sum(&zeros)
        });

        let mut cl = Cluster::new(fx, "holes");
        cl.start_serve(&[]);
        cl.start_containerd();
        let used = || fx.json(&["pool", "status"])["data_used"].as_u64().unwrap();
        let before = used();
        cl.import_ok(&archive);
        let took = used() - before;
        println!(
            "containerd unpacked 80 MiB of files, 1 MiB of it data, and busybox: {took} bytes of pool"
        );
        assert!(
            took < 8 * MIB as u64,
            "the unpack took {took} bytes of pool for 1 MiB of data in 80 MiB of files"
        );
        let log = fs::read_to_string(fx.dir.join("serve-1.log")).unwrap();
        let punched: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("made holes of the zeros of an unpacked layer"))
            .collect();
        println!("{}", punched.join("\n"));
        assert_eq!(punched.len(), 3, "one line per layer unpacked:\n{log}");

        // The content and the tar's modification time, as the container sees them.
        let out = cl.run_sh(
            image,
            "holes",
            true,
            "busybox md5sum /var/sparse.img /var/head-then-zeros && busybox stat -c 'mtime %Y' /var/sparse.img",
        );
        let printed = text(&out);
        assert!(out.status.success(), "{printed}");
        for want in [
            format!("{zeros_sum}  /var/sparse.img"),
            format!("{head_sum}  /var/head-then-zeros"),
            format!("mtime {}", crate::images::SPARSE_MTIME),
        ] {
            assert!(printed.contains(&want), "{want:?} in {printed}");
        }

        cl.ctr_ok(&["images", "rm", "--sync", image]);
        cl.stopped_clean();
    });
}

#[test]
fn serve_recovers_after_being_killed_in_prepare_and_commit() {
    fixture::run("containerd-kill", |fx| {
        small_pool(fx);
        let archive = tlbox_archive(fx, false);
        let archive2 = tlbox_archive(fx, true);
        let mut cl = Cluster::new(fx, "cdk");
        cl.start_serve(&[]);
        cl.start_containerd();
        cl.import_ok(&archive);

        // Killed in a Prepare, after the kernel made the thin device and
        // before the transaction id confirmed it.
        cl.kill_serve_at("create.after-message", |cl| {
            let out = cl.run_sh(IMAGE, "k1", true, "echo never");
            assert!(!out.status.success(), "{}", text(&out));
        });
        check_tree(fx);
        cl.run_rm_prints(IMAGE, "k1", "cat /etc/greeting", "hello from thinlayer");

        // Killed in a Commit (unpacking layer 3), after the records were
        // written and before containerd heard back.
        cl.kill_serve_at("commit.after-record", |cl| {
            let out = cl.import(&archive2);
            assert!(!out.status.success(), "{}", text(&out));
        });
        check_tree(fx);
        cl.import_ok(&archive2);
        cl.run_rm_prints(IMAGE2, "k2", "cat /etc/third /etc/added", "layer 3");
        eprintln!("{}", fx.ok(&["tree"]));
        check_tree(fx);

        // containerd's garbage collector removes what the killed calls
        // left (the layer committed under a name containerd never stored).
        cl.ctr_ok(&["images", "rm", "--sync", IMAGE, IMAGE2]);
        let tree = check_tree(fx);
        assert!(
            tree["layers"].as_object().unwrap().is_empty(),
            "every snapshot is gone: {tree}"
        );
        cl.stopped_clean();
    });
}

/// The names of the entries of a JSON array that thinlayer printed.
fn names_of(list: &serde_json::Value) -> BTreeSet<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|e| e["name"].as_str().expect("a name").to_string())
        .collect()
}

/// containerd's garbage collector walks thinlayer and removes what it has
/// no record of, yet never a layer made with the `thinlayer` command: an
/// image imported and a container created through the CLI are still there,
/// with their content, after a collection that removed a stray snapshot
/// (made on the server's socket behind containerd's back, under a plain
/// key, as any client of the snapshotter API could).
#[test]
fn containerd_collector_never_removes_cli_layers() {
    fixture::run("containerd-gc", |fx| {
        small_pool(fx);
        let archive = tlbox_archive(fx, false);

        // Through the CLI: the image, and a container of it with a file.
        fx.ok(&["image", "import", archive.to_str().unwrap()]);
        fx.ok(&["container", "create", IMAGE, "cli-ctr"]);
        let mnt = PathBuf::from(fx.ok(&["container", "mount", "cli-ctr"]).trim());
        fs::write(mnt.join("cli-file"), "written through the CLI\n").unwrap();
        fx.ok(&["container", "umount", "cli-ctr"]);
        let image = thinlayer::tree::ImageRef::parse(IMAGE).unwrap().to_string();
        let cli_keys: BTreeSet<String> = records(fx).tree.layers.into_keys().collect();
        assert_eq!(
            cli_keys.len(),
            3,
            "two image layers and the container: {cli_keys:?}"
        );
        let d = open(fx);
        let digests: BTreeMap<String, String> = cli_keys
            .iter()
            .map(|k| (k.clone(), layer_digest(&d, k)))
            .collect();
        drop(d);

        let mut cl = Cluster::new(fx, "cdgc");
        cl.start_serve(&[]);
        cl.start_containerd();
        // On thinlayer's own socket, bypassing containerd: a snapshot
        // containerd's metadata has no record of.
        let out = ctr_at(
            &cl.serve_sock,
            &[
                "snapshots",
                "--snapshotter",
                "thinlayer",
                "prepare",
                "stray",
            ],
        );
        assert!(
            out.status.success(),
            "ctr prepare on thinlayer's socket: {}",
            text(&out)
        );
        let rec = records(fx);
        assert_eq!(
            rec.tree.layers.get("stray").map(|l| l.parent.clone()),
            Some(None),
            "stray, on the base, in thinlayer's records"
        );
        let known = cl.ctr_ok(&["snapshots", "--snapshotter", "thinlayer", "ls"]);
        assert!(
            !known
                .lines()
                .any(|l| l.split_whitespace().next() == Some("stray")),
            "containerd does not know stray: {known}"
        );

        // containerd collects after removing its own snapshots: an image
        // and a container through containerd, then the image removed with
        // a synchronous collection.
        cl.import_ok(&archive);
        cl.run_rm_prints(IMAGE, "gc1", "cat /etc/greeting", "hello from thinlayer");
        cl.ctr_ok(&["images", "rm", "--sync", IMAGE]);
        eventually(
            "containerd's collector removes the stray snapshot",
            DEADLINE,
            || {
                let keys: Vec<String> = records(fx).tree.layers.into_keys().collect();
                if keys.iter().any(|k| k == "stray") {
                    Err(format!("thinlayer holds {keys:?}"))
                } else {
                    Ok(())
                }
            },
        );
        converged(fx, "containerd's image removed", &[]);

        // The CLI's layers, untouched.
        let keys: BTreeSet<String> = records(fx).tree.layers.into_keys().collect();
        assert_eq!(keys, cli_keys, "thinlayer's layers after the collection");
        check_content(fx, &digests, "after containerd's collection");
        let images = names_of(&fx.json(&["image", "ls"]));
        assert_eq!(images, BTreeSet::from([image.clone()]), "image ls");
        let ps = names_of(&fx.json(&["ps"]));
        assert_eq!(ps, BTreeSet::from(["cli-ctr".to_string()]), "ps");
        let mnt = PathBuf::from(fx.ok(&["container", "mount", "cli-ctr"]).trim());
        assert_eq!(
            fs::read_to_string(mnt.join("cli-file")).unwrap(),
            "written through the CLI\n"
        );
        assert_eq!(
            fs::read_to_string(mnt.join("etc/greeting")).unwrap(),
            "hello from thinlayer\n"
        );
        assert!(!mnt.join("etc/removed").exists(), "layer 2's whiteout");
        fx.ok(&["container", "umount", "cli-ctr"]);
        cl.stopped_clean();
        fx.ok(&["container", "rm", "cli-ctr"]);
        fx.ok(&["image", "rm", &image]);
    });
}

/// containerd removes a snapshot from its own records at once and from the
/// snapshotter in its garbage collection, which this runs after every
/// removal, so a Remove reaches the server without an image removal.
const EAGER_GC: &str = r#"
[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1
  schedule_delay = "0s"
"#;

/// A label containerd passes on to the snapshotter.
const LABEL: &str = "containerd.io/snapshot/tl-crash=yes";

/// What `Usage` reports for containerd's snapshot `name`, in bytes.
fn usage_bytes(fx: &Fixture, name: &str) -> u64 {
    open(fx).layer_size(&backend_key(fx, name)).unwrap().size.0
}

/// The errno of a failed filesystem call, or what it did instead.
fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> Result<i32, String> {
    match r {
        Err(e) => e.raw_os_error().ok_or_else(|| e.to_string()),
        Ok(v) => Err(format!("succeeded: {v:?}")),
    }
}

#[test]
fn a_snapshot_mounts_again_read_only_beside_read_write() {
    fixture::run("containerd-remount", |fx| {
        small_pool(fx);
        let mut cl = Cluster::new(fx, "cdre");
        cl.start_serve(&[]);
        cl.start_containerd();
        snap_ok(&cl, &["prepare", "act"]);
        let [rw, ro, rw2] = ["rw", "ro", "rw2"].map(|d| fx.dir.join(d));
        assert_eq!(mount_as_client(&cl, "act", &rw, false), "bind");
        write_file(&rw.join("first"), 1 << 20, 1);
        // As containerd's differ mounts a running container's snapshot for
        // `docker commit`: read-only, while the container has it read-write.
        assert_eq!(mount_as_client(&cl, "act", &ro, true), "bind");
        assert_eq!(mount_as_client(&cl, "act", &rw2, false), "bind");
        write_file(&rw2.join("second"), 64 << 10, 2);
        nix::unistd::sync();
        for f in ["first", "second"] {
            assert_eq!(
                fs::read(ro.join(f)).unwrap(),
                fs::read(rw.join(f)).unwrap(),
                "{f} is the same through every mount"
            );
        }

        // The read-only mount never writes: every change is refused, and
        // reading everything through it leaves the snapshot's blocks as
        // they were.
        let before = usage_bytes(fx, "act");
        let erofs = nix::errno::Errno::EROFS as i32;
        let refused = [
            ("create", errno_of(fs::write(ro.join("new"), b"x"))),
            ("mkdir", errno_of(fs::create_dir(ro.join("dir")))),
            ("unlink", errno_of(fs::remove_file(ro.join("first")))),
            (
                "open for writing",
                errno_of(fs::OpenOptions::new().append(true).open(ro.join("first"))),
            ),
            (
                "chmod",
                errno_of(fs::set_permissions(
                    ro.join("first"),
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )),
            ),
        ];
        for (what, r) in refused {
            assert_eq!(r, Ok(erofs), "{what} through the read-only mount");
        }
        for e in fs::read_dir(&ro).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                fs::read(&p).unwrap();
            }
        }
        nix::unistd::sync();
        assert_eq!(
            usage_bytes(fx, "act"),
            before,
            "reading through the read-only mount wrote nothing"
        );
        assert!(before >= 1 << 20, "the writes reached the pool: {before}");

        // Committed while all three are mounted: a copy taken now, which
        // later writes through the old mounts never reach.
        let contents = ["first", "second"].map(|f| (f, fs::read(rw.join(f)).unwrap()));
        snap_ok(&cl, &["commit", "done", "act"]);
        write_file(&rw.join("after-commit"), 64 << 10, 3);
        assert_eq!(
            records(fx).tree.retired.len(),
            1,
            "the committed snapshot is a copy: the mounted thin id is retired"
        );
        release_held(fx, &[&rw, &ro, &rw2], "commit while mounted three times");

        // A view of it, mounted twice from its read-only device.
        snap_ok(&cl, &["view", "v", "done"]);
        let [v1, v2] = ["v1", "v2"].map(|d| fx.dir.join(d));
        let fs_kind = records(fx).pool.filesystem.name().to_string();
        assert_eq!(mount_as_client(&cl, "v", &v1, false), fs_kind);
        assert_eq!(mount_as_client(&cl, "v", &v2, true), fs_kind);
        for v in [&v1, &v2] {
            let mut names: Vec<String> = fs::read_dir(v)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, ["first", "second"], "the view of the commit");
            for (f, data) in &contents {
                assert_eq!(&fs::read(v.join(f)).unwrap(), data, "{f} in the view");
            }
            assert_eq!(errno_of(fs::write(v.join("new"), b"x")), Ok(erofs));
        }
        for v in [&v1, &v2] {
            fx.kernel.umount(v, false).unwrap();
        }
        snap_ok(&cl, &["rm", "v"]);
        // containerd 1.6's collector drops a removal made while it runs:
        // the commit goes once the view is gone.
        converged(fx, "the view removed", &["done"]);
        snap_ok(&cl, &["rm", "done"]);
        converged(fx, "every snapshot removed", &[]);
        cl.stopped_clean();
    });
}

/// `ctr snapshots --snapshotter thinlayer ARGS`.
fn snap(cl: &Cluster<'_>, args: &[&str]) -> Output {
    let mut all = vec!["snapshots", "--snapshotter", "thinlayer"];
    all.extend_from_slice(args);
    cl.ctr(&all)
}

fn snap_ok(cl: &Cluster<'_>, args: &[&str]) {
    let out = snap(cl, args);
    assert!(
        out.status.success(),
        "ctr snapshots {args:?}: {}",
        text(&out)
    );
}

/// The name of containerd's snapshot that thinlayer keeps under `key`:
/// containerd's metadata store gives its snapshotters keys of the form
/// `NAMESPACE/ID/NAME`, ID decimal.
fn containerd_name(key: &str) -> Option<&str> {
    let mut parts = key.splitn(3, '/');
    let (ns, id, name) = (parts.next()?, parts.next()?, parts.next()?);
    let shaped = !ns.is_empty()
        && !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty();
    shaped.then_some(name)
}

/// The names of containerd's snapshots in thinlayer's records, sorted,
/// with repeats.
fn names_in_thinlayer(fx: &Fixture) -> Vec<String> {
    let mut names: Vec<String> = records(fx)
        .tree
        .layers
        .keys()
        .filter_map(|k| containerd_name(k).map(str::to_string))
        .collect();
    names.sort();
    names
}

/// The thinlayer key of containerd's snapshot `name`.
fn backend_key(fx: &Fixture, name: &str) -> String {
    let keys: Vec<String> = records(fx)
        .tree
        .layers
        .into_keys()
        .filter(|k| k.ends_with(&format!("/{name}")))
        .collect();
    assert_eq!(keys.len(), 1, "one snapshot {name}: {keys:?}");
    keys[0].clone()
}

/// Removes every snapshot but `base` from containerd's records.
fn remove_all_but_base(cl: &Cluster<'_>) {
    let out = snap(cl, &["ls"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    for name in listed
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
    {
        if name != "base" {
            snap_ok(cl, &["rm", name]);
        }
    }
    collect_now(cl);
}

/// Runs containerd's garbage collection to its end: its scheduler may drop
/// the event of a removal made while a collection runs (seen with 1.6), so
/// after several removals in a row the last may wait for a collection
/// nothing else starts. Deleting a lease with `--sync` collects at once.
fn collect_now(cl: &Cluster<'_>) {
    const LEASE: &str = "thinlayer-test-collect";
    cl.ctr_ok(&["leases", "create", "--id", LEASE]);
    cl.ctr_ok(&["leases", "delete", "--sync", LEASE]);
}

/// Waits until thinlayer holds only containerd's snapshots `want`: the
/// garbage collector removed what containerd does not know of.
fn converged(fx: &Fixture, what: &str, want: &[&str]) {
    eventually(
        &format!("{what}: the collector leaves thinlayer with {want:?}"),
        DEADLINE,
        || {
            let names = names_in_thinlayer(fx);
            if names == want {
                Ok(())
            } else {
                Err(format!("{names:?}"))
            }
        },
    );
}

/// Mounts containerd's snapshot `name` on `target` as containerd's own
/// mount code does, from the mounts `ctr snapshots mounts` prints (one
/// `mount -t TYPE SOURCE TARGET -o OPTIONS` line): a bind mount (recursive
/// for `rbind`), remounted read-only when `read_only` (containerd's differ
/// adds `ro`), or a filesystem from a device. Returns the mount's type.
fn mount_as_client(cl: &Cluster<'_>, name: &str, target: &Path, read_only: bool) -> String {
    use nix::mount::{MsFlags, mount};
    fs::create_dir_all(target).unwrap();
    let out = snap(cl, &["mounts", target.to_str().unwrap(), name]);
    assert!(out.status.success(), "ctr snapshots mounts: {}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 1, "one mount for {name}: {printed}");
    let words: Vec<&str> = lines[0].split_whitespace().collect();
    let [cmd, "-t", fstype, source, _, "-o", options] = words[..] else {
        panic!("not a mount command: {printed}");
    };
    assert_eq!(cmd, "mount", "{printed}");
    let options: Vec<&str> = options.split(',').collect();
    if fstype == "bind" {
        let mut flags = MsFlags::MS_BIND;
        if options.contains(&"rbind") {
            flags |= MsFlags::MS_REC;
        }
        mount(Some(source), target, None::<&str>, flags, None::<&str>)
            .unwrap_or_else(|e| panic!("bind {source} on {}: {e}", target.display()));
        if read_only || options.contains(&"ro") {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
                .unwrap_or_else(|e| panic!("remount {} read-only: {e}", target.display()));
        }
    } else {
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        for o in &options {
            match *o {
                "ro" => flags |= MsFlags::MS_RDONLY,
                "rw" => {}
                "noatime" => flags |= MsFlags::MS_NOATIME,
                other => data.push(other),
            }
        }
        if read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        let data = data.join(",");
        mount(
            Some(source),
            target,
            Some(fstype),
            flags,
            Some(data.as_str()),
        )
        .unwrap_or_else(|e| panic!("mount {printed}: {e}"));
    }
    fstype.to_string()
}

/// Mounts containerd's active snapshot `name` as its client would, under
/// the test's directory, and writes into it; returns the mount point.
fn hold_mounted(cl: &Cluster<'_>, name: &str) -> PathBuf {
    let held = cl.fx.dir.join("held");
    assert_eq!(mount_as_client(cl, name, &held, false), "bind");
    write_file(&held.join("written-while-held"), 64 << 10, 5);
    held
}

/// Unmounts what [`hold_mounted`] (or a test) mounted and waits until
/// thinlayer has deleted the thin id the mounts kept (it goes at the first
/// operation after the kernel finished removing the device).
fn release_held(fx: &Fixture, held: &[&Path], what: &str) {
    for m in held {
        fx.kernel.umount(m, false).unwrap();
    }
    eventually(
        &format!("{what}: the retired thin id deleted once unmounted"),
        DEADLINE,
        || {
            fx.ok(&["tree"]);
            let retired = records(fx).tree.retired;
            if retired.is_empty() {
                Ok(())
            } else {
                Err(format!("retired {retired:?}"))
            }
        },
    );
}

/// One call killed at one point: set up, kill, recover, check, redo, undo.
fn containerd_point(
    cl: &mut Cluster<'_>,
    digests: &BTreeMap<String, String>,
    call: &str,
    point: &str,
) {
    let fx = cl.fx;
    let args: &[&str] = match call {
        "Prepare" | "PrepareSpare" | "PrepareClaim" => &["prepare", "victim", "base"],
        "View" => &["view", "victim", "base"],
        "Commit" | "CommitMounted" | "CommitHandOver" => &["commit", "victim-c", "victim"],
        "Update" => &["label", "victim", LABEL],
        "Remove" => &["rm", "victim"],
        other => panic!("no such call {other}"),
    };
    // Spares only where they are what is killed.
    cl.spares = Some(u8::from(matches!(
        call,
        "PrepareSpare" | "PrepareClaim" | "CommitHandOver"
    )));
    let needs_victim = !matches!(call, "Prepare" | "View" | "PrepareSpare" | "PrepareClaim");
    if needs_victim {
        snap_ok(cl, &["prepare", "victim", "base"]);
    }
    let held = (call == "CommitMounted").then(|| hold_mounted(cl, "victim"));
    cl.kill_serve_at(point, |cl| {
        if matches!(call, "PrepareSpare" | "PrepareClaim") {
            // A parent keeps spares from its second Prepare: the victim's
            // makes one of `base`, or claims the one the second made.
            snap_ok(cl, &["prepare", "warm", "base"]);
        }
        if call == "PrepareClaim" {
            snap_ok(cl, &["prepare", "warm2", "base"]);
            eventually("a spare of base", DEADLINE, || {
                let spares = records(fx).tree.spares;
                if spares.iter().any(|s| s.mounted) {
                    Ok(())
                } else {
                    Err(format!("{spares:?}"))
                }
            });
        }
        let out = snap(cl, args);
        // Remove is called by the garbage collector after `rm` succeeded;
        // a spare is made after the Prepare that asked for it returned.
        if !matches!(call, "Remove" | "PrepareSpare") {
            assert!(!out.status.success(), "{point}: {}", text(&out));
        }
    });
    let what = format!("{call} killed at {point}");
    if let Some(held) = &held {
        release_held(fx, &[held], &what);
    }
    let rec = check_root(fx, &what);
    check_content(fx, digests, &what);
    if call == "CommitHandOver" && point != "commit.after-record" {
        // The Commit rolled back left the snapshot's mount writable.
        let l = &rec.tree.layers[&backend_key(fx, "victim")];
        let mnt = fx.root.join("mnt").join(l.thin_id.to_string());
        assert!(fx.kernel.is_mount_point(&mnt).unwrap(), "{what}: {mnt:?}");
        let st = nix::sys::statvfs::statvfs(&mnt).unwrap();
        assert!(
            !st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY),
            "{what}: {mnt:?} left read-only"
        );
    }
    assert!(
        rec.tree.spares.is_empty(),
        "{what}: spares outlived the crash"
    );
    let names = names_in_thinlayer(fx);
    let has = |n: &str| names.iter().filter(|x| *x == n).count();
    // Complete or absent, in thinlayer's records.
    match call {
        // The intent is durable before the kernel is told: complete at
        // every point (containerd's collector removes it if containerd's
        // own Prepare failed).
        "Prepare" | "View" | "PrepareSpare" => {
            assert_eq!(has("victim"), 1, "{what}: {names:?}")
        }
        "PrepareClaim" => assert_eq!(has("victim"), 1, "{what}: {names:?}"),
        "Commit" | "CommitMounted" | "CommitHandOver" => {
            let done = point == "commit.after-record";
            assert_eq!(
                (has("victim-c"), has("victim")),
                (usize::from(done), usize::from(!done)),
                "{what}: {names:?}"
            );
        }
        "Update" => {
            let l = &rec.tree.layers[&backend_key(fx, "victim")];
            assert!(
                l.labels.contains_key(LABEL.split('=').next().unwrap()),
                "{what}: {l:?}"
            );
        }
        _ => assert_eq!(has("victim"), 0, "{what}: {names:?}"),
    }
    // Done again from a clean start, then undone.
    if matches!(call, "Commit" | "CommitMounted" | "CommitHandOver") {
        // A Commit killed after thinlayer's record leaves containerd with
        // the consumed active key: its listing skips it (the snapshotter
        // no longer knows it), its removal clears it.
        snap_ok(cl, &["rm", "victim"]);
    }
    remove_all_but_base(cl);
    if needs_victim {
        snap_ok(cl, &["prepare", "victim", "base"]);
    }
    let held = (call == "CommitMounted").then(|| hold_mounted(cl, "victim"));
    snap_ok(cl, args);
    if let Some(held) = &held {
        release_held(fx, &[held], &format!("{what}: redone"));
    }
    if call == "Update" {
        let l = &records(fx).tree.layers[&backend_key(fx, "victim")];
        assert!(
            l.labels.contains_key(LABEL.split('=').next().unwrap()),
            "{what}: redone"
        );
    }
    remove_all_but_base(cl);
    converged(fx, &what, &["base"]);
    reaped(cl, &what);
    check_root(fx, &what);
}

/// Waits until the server has reaped every pending removal (containerd's
/// collector calls Cleanup after its removals; the server's background
/// reaps as they come).
fn reaped(cl: &Cluster<'_>, what: &str) {
    eventually(
        &format!("{what}: every pending removal reaped"),
        DEADLINE,
        || {
            let pending = records(cl.fx).tree.removals;
            if pending.is_empty() {
                Ok(())
            } else {
                Err(format!("{pending:?}"))
            }
        },
    );
}

#[test]
fn serve_killed_at_every_failpoint_of_every_call_recovers() {
    fixture::run("containerd-crash", |fx| {
        small_pool(fx);
        let mut cl = Cluster::with_config(fx, "cdc", EAGER_GC);
        cl.start_serve(&[]);
        cl.start_containerd();
        // The parent of every snapshot below: committed, with content.
        snap_ok(&cl, &["prepare", "base-a"]);
        let key = backend_key(fx, "base-a");
        let mnt = PathBuf::from(fx.ok(&["container", "mount", &key]).trim());
        write_file(&mnt.join("data.bin"), 2 << 20, 3);
        fx.ok(&["container", "umount", &key]);
        snap_ok(&cl, &["commit", "base", "base-a"]);
        let base = backend_key(fx, "base");
        let digests = BTreeMap::from([(base.clone(), layer_digest(&open(fx), &base))]);

        let started = Instant::now();
        let mut ran = 0;
        for (call, points) in CONTAINERD_ROWS {
            for point in points.iter().map(|p| p.name()) {
                let t = Instant::now();
                let killed = kills_during(|| containerd_point(&mut cl, &digests, call, point));
                assert_eq!(
                    killed,
                    [point],
                    "{call}: the points at which the server was killed"
                );
                ran += 1;
                eprintln!(
                    "{call}, serve killed at {point}: recovered ({:.1} s)",
                    t.elapsed().as_secs_f64()
                );
            }
        }
        println!(
            "crash matrix (containerd): {ran} points × calls recovered in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        snap_ok(&cl, &["rm", "base"]);
        converged(fx, "base removed", &[]);
        cl.stopped_clean();
    });
}
