//! Kubernetes' path on thinlayer: containerd 1.7's CRI plugin (Debian 13's
//! containerd, this machine's runc) with `snapshotter = "thinlayer"`, the
//! snapshotter being `thinlayer serve` in `[proxy_plugins]`, driven through
//! the CRI itself, as a kubelet does, by the CRI client of `vm-tests/cri`
//! (`THINLAYER_CRI_CLIENT`), whose answers are JSON.
//!
//! containerd's configuration is `vm-tests/cri/containerd.toml` (no CNI:
//! pods use the host's network; the writable layers' usage collected every
//! second) with thinlayer as the CRI's snapshotter. There is no registry:
//! each test makes a sandbox ("pause") image and a workload image from the
//! host's static busybox, sharing their one layer, and imports them with
//! `ctr -n k8s.io images import --snapshotter thinlayer`.
//!
//! - [`cri_runs_a_pod_on_thinlayer`]: one pod's life. Its container runs
//!   on a thinlayer device, ExecSync answers, `ContainerStats`' writable
//!   layer is thinlayer's own size of the container's snapshot, and
//!   `ImageFsInfo` the sum of every snapshot thinlayer holds; once the
//!   pod, the container and the images are removed, containerd's garbage
//!   collector leaves nothing in thinlayer, the kernel or the mount table.
//! - [`cri_runs_twenty_pods_at_once`]: 20 pods through their whole cycle
//!   concurrently (`cri parallel`), each writing and seeing its writes in
//!   its stats; then nothing is left either. If the run does not end, the
//!   failure says what every task of the daemons waits for.
//! - [`cri_stats_count_unflushed_writes`]: bytes a container wrote but did
//!   not sync count in its writable layer from the first collection after
//!   the write.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use thinlayer::digest::Digest;
use thinlayer::image::build::write_docker_save_running;
use thinlayer::kernel::Kernel;

use crate::crash::{records, snapshot_key};
use crate::fixture::process::{
    Daemon, containerd_root, docker_tree, docker_tree_path, kill_cgroup, kill_shims, log_tail,
    output_logged, output_text, print_logs, proxy_plugins, remove_cgroups, run_dir, shims,
    stdout_of_success,
};
use crate::fixture::{BLOCK, DEADLINE, FS_OVERHEAD, Fixture, busybox_layer, eventually, in_blocks};
use crate::served::Served;

/// The pods' sandbox image (the CRI's `sandbox_image`).
const SANDBOX_IMAGE: &str = "thinlayer.test/pause:1";
/// The containers' image.
const IMAGE: &str = "thinlayer.test/busybox:1";
/// What both images run unless told otherwise: a shell that stays up until
/// SIGTERM or SIGINT, then exits 0 (a pod's sandbox must stay up; busybox's
/// `sh` as PID 1 ignores the signals it has no trap for).
const STAY_UP: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done";
/// The Kubernetes namespace of the pods.
const NAMESPACE: &str = "thinlayer-cri";
const MIB: u64 = 1 << 20;
/// Seconds between two collections of the writable layers' usage: the
/// configuration's `stats_collect_period`.
const STATS_PERIOD: Duration = Duration::from_secs(1);
/// The longest one client or `ctr` call may take (a CRI call under
/// emulation on a loaded machine).
const COMMAND_DEADLINE: Duration = Duration::from_secs(300);
/// The longest 20 pods' whole cycles may take together.
const PARALLEL_DEADLINE: Duration = Duration::from_secs(900);

/// The CRI client that `vm-tests/cargo-runner` builds and names in
/// `THINLAYER_CRI_CLIENT`; without it, where that runner puts it (next to
/// this binary's `deps` directory).
fn cri_client() -> PathBuf {
    let client = match std::env::var_os("THINLAYER_CRI_CLIENT") {
        Some(c) => PathBuf::from(c),
        None => std::env::current_exe()
            .expect("this test's path")
            .parent()
            .and_then(Path::parent)
            .expect("target/debug/deps")
            .join("cri/cri"),
    };
    assert!(
        client.is_file(),
        "no CRI client {} (vm-tests/go-build cri OUT builds it; vm-tests/cargo-runner does)",
        client.display()
    );
    client
}

/// The images' layer: busybox with the applets the tests use, and the
/// directories a container's root needs.
fn image_layer() -> Vec<u8> {
    let mut layer = busybox_layer(&[
        "sh", "sleep", "cat", "echo", "head", "sync", "true", "rm", "ls",
    ]);
    layer
        .dir("etc", 0o755)
        .dir("tmp", 0o1777)
        .dir("proc", 0o755)
        .dir("sys", 0o755)
        .dir("dev", 0o755);
    layer.finish()
}

/// [`SANDBOX_IMAGE`] and [`IMAGE`] as two `docker save` archives in the
/// test's directory, and the chain id of their one layer. Both run
/// [`STAY_UP`]; a label tells their configurations, hence their ids,
/// apart (one image under two names would be removed by either name).
fn image_archives(fx: &Fixture) -> (Vec<PathBuf>, String) {
    let layer = image_layer();
    let archives = [(SANDBOX_IMAGE, "pause.tar"), (IMAGE, "busybox.tar")]
        .iter()
        .map(|(name, file)| {
            let process = json!({
                "Env": ["PATH=/bin"],
                "WorkingDir": "/",
                "Labels": { "thinlayer.test/image": name },
                "Entrypoint": ["/bin/sh", "-c", STAY_UP],
            });
            let path = fx.dir.join(file);
            write_docker_save_running(&path, name, std::slice::from_ref(&layer), &process).unwrap();
            path
        })
        .collect();
    // One layer: its chain id is its diff id.
    (archives, Digest::of_bytes(&layer).to_string())
}

/// `thinlayer serve` and containerd with its CRI plugin for one test, and
/// the CRI client; stopped and cleaned up when dropped.
struct Cri<'a> {
    fx: &'a Fixture,
    tree: PathBuf,
    client: PathBuf,
    /// Under /run: containerd's state and socket.
    run: PathBuf,
    sock: PathBuf,
    config: PathBuf,
    /// The pods' cgroup parent, under /sys/fs/cgroup.
    cgroup: String,
    /// The pods' log directories are made here, as the kubelet makes them.
    logs: PathBuf,
    /// `thinlayer serve` with its metrics endpoint, on `fx.dir/serve.sock`.
    serve: Option<Served>,
    containerd: Option<Daemon>,
}

impl<'a> Cri<'a> {
    fn new(fx: &'a Fixture, tag: &str) -> Cri<'a> {
        let run = run_dir(tag);
        let sock = run.join("containerd.sock");
        let config = fx.dir.join("containerd.toml");
        let serve_sock = fx.dir.join("serve.sock");
        fs::write(&config, cri_config(fx, &run, &sock, &serve_sock)).unwrap();
        let logs = fx.dir.join("pod-logs");
        fs::create_dir_all(&logs).unwrap();
        Cri {
            fx,
            tree: docker_tree(),
            client: cri_client(),
            sock,
            config,
            cgroup: run.file_name().unwrap().to_string_lossy().into_owned(),
            run,
            logs,
            serve: None,
            containerd: None,
        }
    }

    /// A fresh pool (4 GiB of data, 1 GiB bases) with thinlayer's server
    /// and containerd started on it and the images imported: the harness,
    /// the images' layer's chain id, and the pool's data used by the base
    /// alone.
    fn on_fresh_pool(fx: &'a Fixture, tag: &str) -> (Cri<'a>, String, u64) {
        fx.init_pool("4G", "64M", Some("1G"), &[]);
        let base_used = fx.data_used();
        let mut cri = Cri::new(fx, tag);
        let chain_id = cri.start();
        (cri, chain_id, base_used)
    }

    /// Starts `thinlayer serve` and containerd, and waits until the CRI
    /// answers; imports the images. Returns their layer's chain id.
    fn start(&mut self) -> String {
        let serve = Served::start(self.fx);
        assert_eq!(
            serve.socket,
            self.fx.dir.join("serve.sock"),
            "containerd's proxy"
        );
        self.serve = Some(serve);

        let mut c = Command::new(self.tree.join("usr/bin/containerd"));
        c.arg("--config")
            .arg(&self.config)
            .env("PATH", docker_tree_path(&self.tree));
        let mut containerd = Daemon::start("containerd", c, &self.fx.dir.join("containerd.log"));
        containerd.wait_until("its CRI answers Version", || self.call(&["version"]));
        self.containerd = Some(containerd);

        let (archives, chain_id) = image_archives(self.fx);
        for archive in &archives {
            let archive = archive.to_str().unwrap();
            self.ctr(&["images", "import", "--snapshotter", "thinlayer", archive]);
        }
        chain_id
    }

    /// Runs the CRI client with `args`: its JSON answer, or why it failed.
    fn call(&self, args: &[&str]) -> Result<Value, String> {
        let out = self.client_output(args, COMMAND_DEADLINE, String::new);
        if !out.status.success() {
            return Err(format!(
                "cri {} exited with {}: {}",
                args.join(" "),
                out.status,
                output_text(&out)
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "cri {}: no JSON ({e}): {}",
                args.join(" "),
                output_text(&out)
            )
        })
    }

    /// Runs the CRI client, insisting on success: its JSON answer.
    fn ok(&self, args: &[&str]) -> Value {
        self.call(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs the CRI client (each call's deadline `-timeout` 10 min, for the
    /// caller's `deadline` to come first); at the deadline, the failure
    /// says what `diagnose` finds.
    fn client_output(
        &self,
        args: &[&str],
        deadline: Duration,
        diagnose: impl FnOnce() -> String,
    ) -> Output {
        let mut c = Command::new(&self.client);
        c.arg("-endpoint")
            .arg(format!("unix://{}", self.sock.display()))
            .args(["-timeout", "10m"])
            .args(args);
        output_logged(
            &format!("cri {}", args.join(" ")),
            &mut c,
            deadline,
            diagnose,
        )
    }

    /// Runs Debian 13's `ctr` on containerd's `k8s.io` namespace (the
    /// CRI's), insisting on success; returns stdout.
    fn ctr(&self, args: &[&str]) -> String {
        let mut c = Command::new(self.tree.join("usr/bin/ctr"));
        c.arg("--address")
            .arg(&self.sock)
            .args(["-n", "k8s.io"])
            .args(args)
            .env("PATH", docker_tree_path(&self.tree));
        let what = format!("ctr {}", args.join(" "));
        let out = output_logged(&what, &mut c, COMMAND_DEADLINE, String::new);
        stdout_of_success(&what, out)
    }

    /// Runs containerd's garbage collection to its end, now: deleting a
    /// lease with `--sync` collects at once.
    fn collect_now(&self) {
        const LEASE: &str = "thinlayer-test-collect";
        self.ctr(&["leases", "create", "--id", LEASE]);
        self.ctr(&["leases", "delete", "--sync", LEASE]);
    }

    /// The pod flags of `runp` and `parallel`: the test's namespace, host
    /// network (the client's default), the cgroup parent.
    fn pod_flags(&self) -> Vec<String> {
        vec![
            "-namespace".into(),
            NAMESPACE.into(),
            "-cgroup-parent".into(),
            format!("/{}", self.cgroup),
        ]
    }

    /// Runs the pod `name` with its log directory; returns its id.
    fn run_pod(&self, name: &str) -> String {
        let logs = self.logs.join(name);
        fs::create_dir_all(&logs).unwrap();
        let mut args: Vec<String> = vec!["runp".into(), "-name".into(), name.into()];
        args.extend(self.pod_flags());
        args.extend(["-log-dir".into(), logs.display().to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        id_of(&self.ok(&args))
    }

    /// Creates and starts the container `name` of [`IMAGE`] (running its
    /// [`STAY_UP`]) in `pod`; returns its id once it runs.
    fn run_container(&self, pod: &str, name: &str) -> String {
        let id = id_of(&self.ok(&["create", "-pod", pod, "-name", name, "-image", IMAGE]));
        self.ok(&["start", &id]);
        let status = self.ok(&["inspect", &id]);
        assert_eq!(
            status["status"]["state"], "CONTAINER_RUNNING",
            "container {name}: {status}"
        );
        id
    }

    /// ExecSync of `sh -c script` in the container `id`: (stdout, stderr,
    /// exit code).
    fn exec(&self, id: &str, script: &str) -> (String, String, i64) {
        let a = self.ok(&["exec", id, "sh", "-c", script]);
        (
            a["stdout"].as_str().expect("stdout").to_string(),
            a["stderr"].as_str().expect("stderr").to_string(),
            a["exit_code"].as_i64().expect("exit_code"),
        )
    }

    /// Where containerd's CRI says its image filesystem is: the root of
    /// the snapshotter `thinlayer` under containerd's root.
    fn image_fs(&self) -> String {
        containerd_root(&self.fx.dir)
            .join("io.containerd.snapshotter.v1.thinlayer")
            .display()
            .to_string()
    }

    /// Mounts this test's containerd made (tasks' root file systems and
    /// sandboxes' /dev/shm under its state in /run; temporary mounts under
    /// its root) that are still there.
    fn leftover_mounts(&self) -> thinlayer::Result<Vec<PathBuf>> {
        let mut left = self.fx.mounts_under(&self.run)?;
        left.extend(self.fx.mounts_under(&containerd_root(&self.fx.dir))?);
        Ok(left)
    }

    /// Removes the pods' images through the CRI, waits until containerd's
    /// garbage collector has removed their content and snapshots and
    /// thinlayer has reaped the layers, then stops containerd and the
    /// server: nothing of the test may be left in thinlayer, the pool, the
    /// kernel or the mount table.
    fn remove_all_and_stop(&mut self, base_used: u64) {
        let fx = self.fx;
        assert_eq!(self.ok(&["pods"])["items"], json!([]), "no pod left");
        assert_eq!(
            self.ok(&["ps"])["containers"],
            json!([]),
            "no container left"
        );
        // The sandbox image is pinned, which only tells the kubelet not to
        // collect it: RemoveImage takes it too.
        for image in [IMAGE, SANDBOX_IMAGE] {
            self.ok(&["rmi", image]);
        }
        assert_eq!(self.ok(&["images"])["images"], json!([]), "no image left");
        assert_eq!(self.ctr(&["images", "ls", "-q"]), "", "containerd's images");
        // RemoveImage deletes the last name synchronously, which collects
        // at once; each collection after it finds nothing more.
        for what in ["content", "leases"] {
            eventually(
                &format!("containerd's collector leaves no {what} in k8s.io"),
                DEADLINE,
                || match self.ctr(&[what, "ls", "-q"]) {
                    left if left.is_empty() => Ok(()),
                    left => Err(left),
                },
            );
        }
        eventually(
            "containerd's collector removes every snapshot from thinlayer",
            DEADLINE,
            || {
                let tree = fx.json(&["tree"]);
                match tree["layers"].as_object() {
                    Some(l) if l.is_empty() => Ok(()),
                    _ => Err(format!("thinlayer holds {}", tree["layers"])),
                }
            },
        );
        eventually(
            "thinlayer reaps the removed layers: the pool holds the base alone",
            DEADLINE,
            || match fx.data_used() {
                used if used == base_used => Ok(()),
                used => Err(format!("{used} B used, {base_used} B by the base alone")),
            },
        );

        let st = self.containerd.take().expect("containerd runs").stop();
        assert!(st.success(), "containerd exited with {st}");
        assert_eq!(
            shims(&self.sock),
            Vec::<i32>::new(),
            "containerd's shims end with their pods"
        );
        let serve = self.serve.take().expect("the server runs");
        let st = serve.daemon.stop();
        assert!(st.success(), "thinlayer serve exited with {st}");
        assert!(!serve.socket.exists(), "the socket is removed on exit");

        assert_eq!(
            fx.devices(),
            vec![format!("{}-pool", fx.prefix)],
            "device-mapper devices: the pool alone"
        );
        let mut loops: Vec<PathBuf> = fx
            .kernel
            .loop_list()
            .expect("list loop devices")
            .into_iter()
            .map(|l| l.backing_file)
            .filter(|f| f.starts_with(&fx.dir))
            .collect();
        loops.sort();
        assert_eq!(
            loops,
            vec![fx.root.join("data"), fx.root.join("metadata")],
            "loop devices: the pool's alone"
        );
        assert_eq!(
            self.leftover_mounts().expect("list mounts"),
            Vec::<PathBuf>::new(),
            "mounts of containerd's"
        );
    }

    /// What the daemons' tasks wait for, for a run that does not end: every
    /// task in uninterruptible sleep (its kernel stack), every task of
    /// containerd, its shims, runc and thinlayer (state and wait channel),
    /// and the logs' ends, containerd's with its goroutines (SIGUSR1 makes
    /// it write them there).
    fn diagnose(&self) -> String {
        if let Some(c) = &self.containerd {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.pid() as i32),
                nix::sys::signal::Signal::SIGUSR1,
            );
            std::thread::sleep(Duration::from_secs(2));
        }
        let mut out = tasks_report();
        for (name, lines) in [("serve", 80), ("containerd", 600)] {
            let log = self.fx.dir.join(format!("{name}.log"));
            out += &format!(
                "--- {} (last {lines} lines)\n{}\n",
                log.display(),
                log_tail(&log, lines)
            );
        }
        out
    }
}

impl Drop for Cri<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_logs(&self.fx.dir, &["containerd", "serve"]);
        }
        // The pods' processes first (their shims outlive containerd), then
        // containerd and its shims, then the server.
        let cgroup = kill_cgroup(&self.cgroup);
        drop(self.containerd.take());
        kill_shims(&self.sock);
        drop(self.serve.take());
        // Best effort: the tests check mounts themselves on their way out.
        self.fx
            .force_umount(self.leftover_mounts().unwrap_or_default());
        remove_cgroups(&cgroup);
        let _ = fs::remove_dir_all(&self.run);
    }
}

/// `vm-tests/cri/containerd.toml` for this test: its root in the test's
/// directory, its state and socket under `run`, [`SANDBOX_IMAGE`], and
/// thinlayer's server on `serve_sock` as the CRI's snapshotter.
fn cri_config(fx: &Fixture, run: &Path, sock: &Path, serve_sock: &Path) -> String {
    let template = include_str!("../../vm-tests/cri/containerd.toml");
    let overlay = r#"snapshotter = "overlayfs""#;
    assert!(
        template.contains(overlay) && template.contains("stats_collect_period = 1\n"),
        "vm-tests/cri/containerd.toml names the CRI's snapshotter and collects stats every second"
    );
    template
        .replace("@ROOT@", &containerd_root(&fx.dir).display().to_string())
        .replace("@STATE@", &run.join("state").display().to_string())
        .replace("@SOCK@", &sock.display().to_string())
        .replace("@SANDBOX_IMAGE@", SANDBOX_IMAGE)
        .replace(overlay, r#"snapshotter = "thinlayer""#)
        + &proxy_plugins(serve_sock)
}

/// The `id` of a client's answer.
fn id_of(answer: &Value) -> String {
    answer["id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| panic!("no id in {answer}"))
        .to_string()
}

/// thinlayer's own figures (`thinlayer --json -v system df`): what the
/// committed layers (the images) and the active ones (containers and
/// pods' sandboxes) use, and each active layer's size by key.
#[derive(Debug, PartialEq)]
struct ThinSizes {
    images: u64,
    containers: u64,
    each: BTreeMap<String, u64>,
}

impl ThinSizes {
    fn read(fx: &Fixture) -> ThinSizes {
        let df = fx.json(&["-v", "system", "df"]);
        let size = |v: &Value| v["size"].as_u64().unwrap_or_else(|| panic!("size: {df}"));
        ThinSizes {
            images: size(&df["images"]),
            containers: size(&df["containers"]),
            each: df["container_list"]
                .as_array()
                .unwrap_or_else(|| panic!("container_list: {df}"))
                .iter()
                .map(|c| (c["name"].as_str().unwrap().to_string(), size(c)))
                .collect(),
        }
    }

    /// The size of containerd's snapshot `name` (a container's or a pod's
    /// id), which thinlayer keeps as `k8s.io/N/NAME`.
    fn of(&self, name: &str) -> Result<u64, String> {
        let suffix = format!("/{name}");
        let found: Vec<u64> = self
            .each
            .iter()
            .filter(|(k, _)| k.starts_with("k8s.io/") && k.ends_with(&suffix))
            .map(|(_, s)| *s)
            .collect();
        match found[..] {
            [size] => Ok(size),
            _ => Err(format!("not one snapshot {name} in thinlayer: {self:?}")),
        }
    }
}

/// `read` taken while thinlayer's sizes did not move (read before and
/// after): those sizes and what `read` gave.
fn steady<T>(
    fx: &Fixture,
    read: impl FnOnce() -> Result<T, String>,
) -> Result<(ThinSizes, T), String> {
    let before = ThinSizes::read(fx);
    let got = read()?;
    let after = ThinSizes::read(fx);
    if before != after {
        return Err(format!(
            "thinlayer's sizes moved: {before:?} then {after:?}"
        ));
    }
    Ok((before, got))
}

/// The writable layer of a `ContainerStats` answer: used bytes, inodes
/// used, its filesystem's mount point.
fn writable_layer(stats: &Value) -> Result<(u64, u64, String), String> {
    let wl = &stats["writable_layer"];
    match (
        wl["used_bytes"]["value"].as_u64(),
        wl["inodes_used"]["value"].as_u64(),
        wl["fs_id"]["mountpoint"].as_str(),
    ) {
        (Some(used), Some(inodes), Some(mnt)) => Ok((used, inodes, mnt.to_string())),
        _ => Err(format!("no writable layer in {stats}")),
    }
}

/// The container's writable layer once containerd's stats say what
/// thinlayer says of its snapshot and at least `least` bytes (containerd
/// collects them in the background, so they lag writes): checks that the
/// figure is whole pool blocks, at most `least` in blocks plus one block
/// and ext4's overhead, with no inode count (thinlayer counts blocks), on
/// the CRI's image filesystem. Returns the bytes used.
fn stats_match_thinlayer(cri: &Cri<'_>, id: &str, least: u64) -> u64 {
    let (used, inodes, mnt) = eventually(
        &format!(
            "ContainerStats of {id}: the writable layer's used bytes are thinlayer's size \
             of the container's snapshot, at least {least} B"
        ),
        DEADLINE,
        || {
            let (thin, stats) = steady(cri.fx, || cri.call(&["stats", id]))?;
            let (used, inodes, mnt) = writable_layer(&stats["stats"])?;
            let size = thin.of(id)?;
            if used == size && used >= least {
                Ok((used, inodes, mnt))
            } else {
                Err(format!("ContainerStats {used} B, thinlayer {size} B"))
            }
        },
    );
    println!("{id}: the writable layer uses {used} B (wrote {least} B)");
    assert_eq!(used % BLOCK, 0, "whole pool blocks: {used} B");
    assert!(
        used <= in_blocks(least) + BLOCK + FS_OVERHEAD,
        "wrote {least} B; the writable layer uses {used} B"
    );
    assert_eq!(inodes, 0, "thinlayer counts no inodes");
    assert_eq!(mnt, cri.image_fs(), "the writable layer's filesystem");
    used
}

/// How many snapshotter calls of each kind thinlayer's server answered,
/// and how long they took in all (its metrics): where the time of many
/// pods went.
fn print_calls(serve: &Served) {
    let m = serve.scrape();
    let series = |what: &str, method: &str| {
        m.get(&format!(
            r#"thinlayer_snapshotter_call_duration_seconds_{what}{{method="{method}"}}"#
        ))
    };
    println!("thinlayer serve's calls (count, seconds in all):");
    for method in [
        "prepare", "view", "mounts", "commit", "remove", "stat", "update", "usage", "walk", "clear",
    ] {
        if let (Some(n), Some(sum)) = (series("count", method), series("sum", method)) {
            println!("  {method}: {n}, {sum:.1} s");
        }
    }
}

/// What the tasks of the daemons and of every process in uninterruptible
/// sleep are doing: one line per task (pid, tid, name, state, wait
/// channel), with the kernel stack of those in uninterruptible sleep.
fn tasks_report() -> String {
    const DAEMONS: [&str; 5] = ["containerd", "containerd-shim", "runc", "thinlayer", "cri"];
    let mut out = String::from("tasks (pid/tid name state wchan):\n");
    let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
    let Ok(procs) = fs::read_dir("/proc") else {
        return "cannot read /proc".into();
    };
    let mut pids: Vec<u32> = procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort();
    for pid in pids {
        let comm = read(Path::new(&format!("/proc/{pid}/comm")));
        let comm = comm.trim();
        let daemon = DAEMONS.iter().any(|d| comm.starts_with(d));
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let dir = task.path();
            let stat = read(&dir.join("stat"));
            // The state follows the name in parentheses.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("?");
            if !daemon && state != "D" {
                continue;
            }
            out += &format!(
                "{pid}/{} {} {state} {}\n",
                task.file_name().to_string_lossy(),
                read(&dir.join("comm")).trim(),
                read(&dir.join("wchan"))
            );
            if state == "D" {
                out += &read(&dir.join("stack"));
            }
        }
    }
    out
}

#[test]
fn cri_runs_a_pod_on_thinlayer() {
    crate::fixture::run("cri", |fx| {
        let started = Instant::now();
        let (mut cri, chain_id, base_used) = Cri::on_fresh_pool(fx, "cri");

        let version = cri.ok(&["version"]);
        assert_eq!(version["runtime_name"], "containerd", "{version}");
        assert_eq!(version["runtime_api_version"], "v1", "{version}");
        assert!(
            version["runtime_version"]
                .as_str()
                .is_some_and(|v| v.starts_with("1.7.")),
            "Debian 13's containerd 1.7: {version}"
        );
        let listed: BTreeSet<String> = cri.ok(&["images"])["images"]
            .as_array()
            .expect("images")
            .iter()
            .flat_map(|i| i["repo_tags"].as_array().cloned().unwrap_or_default())
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            listed,
            BTreeSet::from([SANDBOX_IMAGE.to_string(), IMAGE.to_string()]),
            "the CRI's images"
        );
        // Both images' one layer, unpacked once into thinlayer.
        let layers: Vec<String> = fx.json(&["tree"])["layers"]
            .as_object()
            .expect("layers")
            .keys()
            .cloned()
            .collect();
        assert!(
            layers.len() == 1 && layers[0].starts_with("k8s.io/") && layers[0].ends_with(&chain_id),
            "thinlayer holds the images' layer {chain_id}: {layers:?}"
        );

        // 1. A pod (host network: no CNI), a container in it, ExecSync.
        let pod = cri.run_pod("one");
        let status = cri.ok(&["inspectp", &pod]);
        assert_eq!(status["status"]["state"], "SANDBOX_READY", "{status}");
        assert_eq!(
            status["status"]["linux"]["namespaces"]["options"]["network"], "NODE",
            "{status}"
        );
        let ctr = cri.run_container(&pod, "c1");
        assert_eq!(
            cri.exec(&ctr, "echo hello; echo oops >&2; exit 3"),
            ("hello\n".into(), "oops\n".into(), 3),
            "ExecSync's output and exit code"
        );
        // The container's root is a thinlayer device's ext4.
        let (mounts, _, code) = cri.exec(&ctr, "cat /proc/self/mounts");
        assert_eq!(code, 0, "{mounts}");
        let root: Vec<&str> = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(1) == Some(&"/"))
            .unwrap_or_else(|| panic!("no root in the container's mounts: {mounts}"));
        assert!(
            root[0].starts_with("/dev/") && root[2] == "ext4",
            "the container's root: {root:?}"
        );

        // 2. Written and synced: the writable layer's stats are thinlayer's
        // size of the container's snapshot.
        const WRITTEN: u64 = 8 * MIB;
        assert_eq!(
            cri.exec(
                &ctr,
                &format!("head -c {WRITTEN} /dev/urandom >/written && sync && echo written")
            ),
            ("written\n".into(), String::new(), 0),
            "write {WRITTEN} B and sync"
        );
        stats_match_thinlayer(&cri, &ctr, WRITTEN);

        // 3. ImageFsInfo: the sum of the Usage of every snapshot of the
        // k8s.io namespace on the CRI's snapshotter as last collected: here
        // every layer thinlayer holds, the images' and the active ones (the
        // container's and the pod's sandbox's).
        let (thin, fs_info) = eventually(
            "ImageFsInfo's used bytes are the sum of every layer thinlayer holds",
            DEADLINE,
            || {
                let (thin, info) = steady(fx, || cri.call(&["image-fs-info"]))?;
                let used = info["image_filesystems"][0]["used_bytes"]["value"].as_u64();
                if used == Some(thin.images + thin.containers) {
                    Ok((thin, info))
                } else {
                    Err(format!("ImageFsInfo {info}, thinlayer {thin:?}"))
                }
            },
        );
        println!("ImageFsInfo: {fs_info}\nthinlayer: {thin:?}");
        let filesystems = fs_info["image_filesystems"].as_array().unwrap();
        assert_eq!(filesystems.len(), 1, "{fs_info}");
        assert_eq!(
            filesystems[0]["fs_id"]["mountpoint"],
            cri.image_fs(),
            "{fs_info}"
        );
        assert_eq!(
            filesystems[0]["inodes_used"]["value"], 0,
            "thinlayer counts no inodes: {fs_info}"
        );
        let active: Vec<u64> = [&pod, &ctr].iter().map(|id| thin.of(id).unwrap()).collect();
        assert_eq!(
            thin.each.len(),
            2,
            "the active layers are the sandbox's and the container's: {thin:?}"
        );
        assert!(
            thin.images > 0 && active[1] >= WRITTEN,
            "the images' layer and the container's writes count: {thin:?}"
        );

        // 4. Stop and remove: SIGTERM ends the container's trap with 0.
        cri.ok(&["stop", "-t", "30", &ctr]);
        let status = cri.ok(&["inspect", &ctr]);
        assert_eq!(status["status"]["state"], "CONTAINER_EXITED", "{status}");
        assert_eq!(status["status"]["exit_code"], 0, "{status}");
        cri.ok(&["rm", &ctr]);
        cri.ok(&["stopp", &pod]);
        cri.ok(&["rmp", &pod]);
        cri.remove_all_and_stop(base_used);
        println!(
            "one pod through the CRI: {:.0} s in all",
            started.elapsed().as_secs_f64()
        );
    });
}

#[test]
fn cri_runs_twenty_pods_at_once() {
    const PODS: usize = 20;
    const WRITTEN: u64 = MIB;
    const STEPS: [&str; 9] = [
        "runp", "create", "start", "exec", "stats", "stop", "rm", "stopp", "rmp",
    ];
    crate::fixture::run("cri-many", |fx| {
        let started = Instant::now();
        let (mut cri, chain_id, base_used) = Cri::on_fresh_pool(fx, "cri-many");

        // Each pod: runp, create, start, exec (write and sync), stats until
        // they show the write, stop, rm, stopp, rmp.
        let exec = json!([
            "sh",
            "-c",
            format!("head -c {WRITTEN} /dev/urandom >/written && sync && echo written")
        ])
        .to_string();
        let mut args: Vec<String> = ["parallel", "-n", &PODS.to_string(), "-name", "many"]
            .map(String::from)
            .to_vec();
        args.extend(cri.pod_flags());
        args.extend(
            [
                "-log-dir",
                cri.logs.to_str().unwrap(),
                "-image",
                IMAGE,
                "-exec",
                &exec,
                "-stats-at-least",
                &WRITTEN.to_string(),
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cri.client_output(&args, PARALLEL_DEADLINE, || cri.diagnose());
        let answer: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("cri parallel: no JSON ({e}): {}", output_text(&out)));
        assert!(
            out.status.success() && answer["failed"] == 0,
            "cri parallel: {}\n{answer:#}",
            String::from_utf8_lossy(&out.stderr)
        );

        let pods = answer["pods"].as_array().expect("pods");
        assert_eq!(pods.len(), PODS, "{answer}");
        let mut ids = BTreeSet::new();
        let mut times: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for p in pods {
            let name = p["name"].as_str().unwrap();
            assert_eq!(p["error"], "", "{name}: {p}");
            let steps: Vec<&str> = p["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    assert_eq!(s["error"].as_str().unwrap_or_default(), "", "{name}: {s}");
                    let step = s["step"].as_str().unwrap();
                    times
                        .entry(step.to_string())
                        .or_default()
                        .push(s["seconds"].as_f64().unwrap());
                    step
                })
                .collect();
            assert_eq!(steps, STEPS, "{name}: every step ran");
            assert_eq!(
                p["exec"],
                json!({ "stdout": "written\n", "stderr": "", "exit_code": 0 }),
                "{name}: ExecSync"
            );
            let (used, inodes, mnt) = writable_layer(&p["stats"]).unwrap();
            assert_eq!(p["writable_layer_used_bytes"], used, "{name}");
            assert!(
                used >= WRITTEN
                    && used % BLOCK == 0
                    && used <= in_blocks(WRITTEN) + BLOCK + FS_OVERHEAD,
                "{name}: wrote {WRITTEN} B, its writable layer uses {used} B"
            );
            assert_eq!((inodes, mnt), (0, cri.image_fs()), "{name}");
            ids.insert(p["pod_id"].as_str().unwrap().to_string());
            ids.insert(p["container_id"].as_str().unwrap().to_string());
        }
        assert_eq!(ids.len(), 2 * PODS, "every pod and container its own id");
        println!(
            "{PODS} pods at once: {:.1} s; per step, the fastest and slowest pod:",
            answer["seconds"].as_f64().unwrap()
        );
        for step in STEPS {
            let t = &times[step];
            let (lo, hi) = t
                .iter()
                .fold((f64::MAX, 0f64), |(lo, hi), &s| (lo.min(s), hi.max(s)));
            println!("  {step}: {lo:.1}-{hi:.1} s");
        }
        let reads: Vec<u64> = pods
            .iter()
            .map(|p| p["stats_reads"].as_u64().unwrap())
            .collect();
        println!("  ContainerStats calls until the writes showed: {reads:?}");

        // containerd forgot the pods' snapshots at once; its collector
        // removes them from thinlayer. Its scheduler drops the removals
        // made while a collection runs (their time is before the
        // collection's end) and only a later removal starts another: the
        // last of 20 pods' removals, in a burst while a collection removes
        // earlier ones from thinlayer, can wait for a collection nothing
        // starts. A manual one (a lease deleted with --sync) collects them.
        let names = cri.ctr(&["snapshots", "--snapshotter", "thinlayer", "ls"]);
        let names: Vec<&str> = names
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(names, [chain_id.as_str()], "containerd's snapshots");
        cri.collect_now();
        eventually(
            "containerd's collector removes the pods' snapshots from thinlayer",
            DEADLINE,
            || match fx.json(&["tree"])["layers"].as_object().map(|l| l.len()) {
                Some(1) => Ok(()),
                n => Err(format!("{n:?} layers")),
            },
        );
        print_calls(cri.serve.as_ref().expect("the server runs"));
        cri.remove_all_and_stop(base_used);
        println!(
            "{PODS} pods through the CRI: {:.0} s in all",
            started.elapsed().as_secs_f64()
        );
    });
}

/// Bytes a container wrote without sync count in its writable layer's
/// stats from the first collection after the write: ContainerStats gives
/// the figure containerd's collector read from thinlayer's Usage, and a
/// kubelet evicting on it must not see a burst of writes only 30 s later,
/// at writeback. The first reading whose collection started after the write
/// ended is checked, whenever it comes: how soon it comes is containerd's
/// cadence (a period when its collector keeps up; when many snapshots'
/// Usage calls queue up in one collection, longer), and is printed. It
/// can be short only while the kernel writes the data back (ext4 stops
/// counting it just before the pool maps it): then the container's ext4
/// must hold less than was written in the page cache, and a later
/// collection must count it.
#[test]
fn cri_stats_count_unflushed_writes() {
    const WRITTEN: u64 = 4 * MIB;
    crate::fixture::run("cri-unflushed", |fx| {
        let (mut cri, _, base_used) = Cri::on_fresh_pool(fx, "cri-unflushed");
        let pod = cri.run_pod("unflushed");
        let ctr = cri.run_container(&pod, "c1");
        let before = stats_match_thinlayer(&cri, &ctr, 0);
        assert!(before < WRITTEN, "before the write: {before} B");

        // No sync: ext4 has not even allocated the blocks yet (it does at
        // writeback, 30 s later at the kernel's defaults).
        assert_eq!(
            cri.exec(
                &ctr,
                &format!("head -c {WRITTEN} /dev/urandom >/unflushed && echo written")
            ),
            ("written\n".into(), String::new(), 0),
            "write {WRITTEN} B without sync"
        );
        let written = Instant::now();
        let written_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        // The collector stamps a reading before it calls Usage.
        let used = eventually(
            "ContainerStats gives a reading collected after the write",
            DEADLINE,
            || {
                let stats = cri.call(&["stats", &ctr])?;
                let wl = &stats["stats"]["writable_layer"];
                match wl["timestamp"].as_u64() {
                    Some(t) if u128::from(t) > written_ns => Ok(writable_layer(&stats["stats"])?.0),
                    _ => Err(format!("a reading from before the write: {wl}")),
                }
            },
        );
        println!(
            "{used} B used in the first reading after writing {WRITTEN} B without sync, \
             {:.1} s after the write (collection period {STATS_PERIOD:?})",
            written.elapsed().as_secs_f64()
        );
        let counted = |used: u64| {
            (before + WRITTEN..=before + in_blocks(WRITTEN) + BLOCK + FS_OVERHEAD).contains(&used)
        };
        if !counted(used) {
            // Short only if the kernel was writing the data back meanwhile:
            // ext4 stops counting it just before the pool maps it (the
            // driver's sizes module bounds that window); then a later
            // collection holds it.
            let key = snapshot_key(fx, "k8s.io", &ctr);
            let mnt = fx
                .root
                .join("mnt")
                .join(records(fx).tree.layers[&key].thin_id.to_string());
            let waiting = fx
                .kernel
                .delayed_allocation(&mnt)
                .unwrap()
                .expect("the container's layer: an ext4 thinlayer holds mounted");
            assert!(
                waiting.0 < WRITTEN,
                "{WRITTEN} B written without sync on {before} B: the first collection \
                 after the write counts {used} B while {} B were not written back",
                waiting.0
            );
            let used = eventually("the collected usage once written back", DEADLINE, || {
                let used = writable_layer(&cri.call(&["stats", &ctr])?["stats"])?.0;
                if counted(used) {
                    Ok(used)
                } else {
                    Err(format!("{used} B"))
                }
            });
            println!("read while written back; once written: {used} B");
        }
        cri.ok(&["stopp", &pod]);
        cri.ok(&["rmp", &pod]);
        cri.remove_all_and_stop(base_used);
    });
}
