//! Docker on thinlayer: dockerd 26 keeping its images in containerd
//! (`"features": {"containerd-snapshotter": true}`) with `thinlayer` as its
//! storage driver, on a containerd 1.7 whose `[proxy_plugins]` name
//! `thinlayer serve`'s socket. Docker and containerd are Debian 13's
//! packages, unpacked by `vm-tests/setup`; containers run with this
//! machine's runc.
//!
//! One test takes a generated image through what Docker does with its
//! storage driver: load, run, detached writers, `docker ps -s` and
//! `docker system df` (sizes read from thinlayer's `Usage`, also of
//! writes not yet written back), diff, cp, exec, commit of a running and
//! of a stopped container, build, export, save, stop and start, dockerd
//! and `thinlayer serve` restarted while containers run; then rm, rmi and
//! prune leave the pool as it was.
//!
//! Reads go through Docker's API on its socket where the command would only
//! print the same numbers rounded (and a process costs about 100 ms in the
//! VM); the command's own output is checked against them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use thinlayer::image::build::write_docker_save;
use thinlayer::kernel::Kernel;

use crate::crash::{open, records, snapshot_key};
use crate::fixture::process::{
    Daemon, docker_tree, docker_tree_path, kill_cgroup, kill_shims, output_logged, print_logs,
    remove_cgroups, stdout_of_success,
};
use crate::fixture::{
    self, BLOCK, DEADLINE, FS_OVERHEAD, Fixture, busybox_layer, eventually, in_blocks,
};

const IMAGE: &str = "tlbox:1";
const KIB: u64 = 1024;
/// The longest a docker command may take (a build, a commit, under
/// emulation on a loaded machine).
const COMMAND_DEADLINE: Duration = Duration::from_secs(300);
const GREETING: &str = "hello from thinlayer\n";
/// Size of the image's `app/data.bin`.
const DATA_LEN: usize = 1 << 20;

/// What a detached writer does once: `cmd`, then a sync and `/done`;
/// started again on a layer that has `/done`, it only says `kept`. It stops
/// at once on SIGTERM (`docker stop`).
fn writer(cmd: &str) -> String {
    format!(
        "if [ -e /done ]; then echo kept; else {cmd} && sync && touch /done && sync && echo written; fi; \
         trap 'exit 0' TERM; sleep 1000000 & wait"
    )
}

/// The image's `app/data.bin`.
fn data() -> Vec<u8> {
    (0..DATA_LEN)
        .map(|i| ((i / 4096) as u8).wrapping_mul(13) ^ (i as u8))
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// [`IMAGE`] as a `docker save` archive: busybox and `etc/greeting`, then
/// `app/data.bin`.
fn image_archive(fx: &Fixture) -> PathBuf {
    let mut l1 = busybox_layer(&[
        "sh",
        "cat",
        "ls",
        "echo",
        "test",
        "head",
        "dd",
        "sync",
        "sleep",
        "sha256sum",
        "touch",
    ]);
    l1.dir("etc", 0o755)
        .file("etc/greeting", GREETING.as_bytes(), 0o644);
    let mut l2 = thinlayer::image::build::LayerBuilder::new();
    l2.dir("app", 0o755).file("app/data.bin", &data(), 0o644);
    let path = fx.dir.join("tlbox.tar");
    write_docker_save(&path, IMAGE, &[l1.finish(), l2.finish()]).unwrap();
    path
}

/// `thinlayer serve`, containerd and dockerd for one test; stopped and
/// cleaned up when dropped.
struct Docker<'a> {
    fx: &'a Fixture,
    tree: PathBuf,
    /// Under /run: containerd's state, dockerd's exec root, the sockets.
    run: PathBuf,
    serve_sock: PathBuf,
    cd_sock: PathBuf,
    sock: PathBuf,
    data_root: PathBuf,
    daemon_json: PathBuf,
    cd_config: PathBuf,
    /// The cgroup (under /sys/fs/cgroup) of every container.
    cgroup: String,
    serve: Option<Daemon>,
    containerd: Option<Daemon>,
    dockerd: Option<Daemon>,
}

impl<'a> Docker<'a> {
    fn new(fx: &'a Fixture) -> Docker<'a> {
        let run = fixture::process::run_dir("docker");
        let tag = run.file_name().unwrap().to_string_lossy().into_owned();
        let serve_sock = run.join("thinlayer.sock");
        let cd_config = fx.dir.join("containerd.toml");
        fs::write(
            &cd_config,
            fixture::process::containerd_config(&fx.dir, &run, &serve_sock, ""),
        )
        .unwrap();
        let cd_sock = run.join("containerd.sock");
        let sock = run.join("docker.sock");
        let data_root = fx.dir.join("docker");
        let daemon = json!({
            "features": { "containerd-snapshotter": true },
            "storage-driver": "thinlayer",
            "containerd": cd_sock,
            "data-root": data_root,
            "exec-root": run.join("docker"),
            "pidfile": run.join("docker.pid"),
            "hosts": [format!("unix://{}", sock.display())],
            "live-restore": true,
            "bridge": "none",
            "iptables": false,
            "ip6tables": false,
            "cgroup-parent": tag,
        });
        let daemon_json = fx.dir.join("daemon.json");
        fs::write(&daemon_json, serde_json::to_string_pretty(&daemon).unwrap()).unwrap();
        Docker {
            fx,
            tree: docker_tree(),
            run,
            serve_sock,
            cd_sock,
            sock,
            data_root,
            daemon_json,
            cd_config,
            cgroup: tag,
            serve: None,
            containerd: None,
            dockerd: None,
        }
    }

    fn start_serve(&mut self) {
        let mut c = Command::new(env!("CARGO_BIN_EXE_thinlayer"));
        c.arg("--root")
            .arg(&self.fx.root)
            .args(["-v", "serve", "--socket"])
            .arg(&self.serve_sock);
        let log = self.fx.dir.join("serve.log");
        let mut d = Daemon::start("thinlayer serve", c, &log);
        d.wait_socket(&self.serve_sock);
        self.serve = Some(d);
    }

    /// Starts Debian 13's `bin` (a path in the tree) with `flag config`,
    /// as `name`, its log `name.log` in the test's directory.
    fn start_daemon(&self, name: &str, bin: &str, flag: &str, config: &Path) -> Daemon {
        let mut c = Command::new(self.tree.join(bin));
        c.arg(flag)
            .arg(config)
            .env("PATH", docker_tree_path(&self.tree));
        Daemon::start(name, c, &self.fx.dir.join(format!("{name}.log")))
    }

    fn start_containerd(&mut self) {
        let mut d = self.start_daemon(
            "containerd",
            "usr/bin/containerd",
            "--config",
            &self.cd_config,
        );
        d.wait_socket(&self.cd_sock);
        self.containerd = Some(d);
    }

    /// Starts dockerd and waits until its API answers; returns how long
    /// that took.
    fn start_dockerd(&mut self) -> Duration {
        let started = Instant::now();
        let mut d = self.start_daemon(
            "dockerd",
            "usr/sbin/dockerd",
            "--config-file",
            &self.daemon_json,
        );
        d.wait_until("its API answers /_ping", || {
            match http_get(&self.sock, "/_ping") {
                Ok((200, body)) if body == "OK" => Ok(()),
                Ok((status, body)) => Err(format!("HTTP {status}: {body}")),
                Err(e) => Err(e),
            }
        });
        self.dockerd = Some(d);
        started.elapsed()
    }

    /// Stops dockerd with SIGTERM; it must exit 0.
    fn stop_dockerd(&mut self) {
        let st = self.dockerd.take().expect("dockerd runs").stop();
        assert!(st.success(), "dockerd exited with {st}");
    }

    /// Stops the server with SIGTERM; it must exit 0 and remove its socket.
    fn stop_serve(&mut self) {
        let st = self.serve.take().expect("the server runs").stop();
        assert!(st.success(), "thinlayer serve exited with {st}");
        assert!(!self.serve_sock.exists(), "the socket is removed on exit");
    }

    /// Runs the docker command.
    fn docker(&self, args: &[&str]) -> Output {
        let mut c = Command::new(self.tree.join("usr/bin/docker"));
        c.args(args)
            .env("PATH", docker_tree_path(&self.tree))
            .env("DOCKER_HOST", format!("unix://{}", self.sock.display()))
            .env("DOCKER_CONFIG", self.fx.dir.join("docker-cli"))
            // The classic builder: buildx is not installed.
            .env("DOCKER_BUILDKIT", "0");
        let what = format!("docker {}", args.join(" "));
        output_logged(&what, &mut c, COMMAND_DEADLINE, String::new)
    }

    /// Runs the docker command and insists on success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        stdout_of_success(&format!("docker {args:?}"), self.docker(args))
    }

    /// `docker run --rm` of `sh -c script` in `image`; returns stdout.
    fn run_rm(&self, image: &str, script: &str) -> String {
        self.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            image,
            "sh",
            "-c",
            script,
        ])
    }

    /// GET `path` of Docker's API, insisting on 200; the body as JSON.
    fn api(&self, path: &str) -> Value {
        self.try_api(path)
            .unwrap_or_else(|e| panic!("Docker API GET {path}: {e}"))
    }

    fn try_api(&self, path: &str) -> Result<Value, String> {
        match http_get(&self.sock, path)? {
            (200, body) => serde_json::from_str(&body).map_err(|e| format!("{e}: {body}")),
            (status, body) => Err(format!("HTTP {status}: {body}")),
        }
    }

    /// Docker's view of the container `name` (`GET /containers/NAME/json`).
    fn inspect(&self, name: &str) -> Value {
        self.api(&format!("/containers/{name}/json"))
    }

    /// Waits until the container `name`'s output holds `want`.
    fn wait_output(&self, name: &str, want: &str) {
        eventually(
            &format!("container {name} prints {want:?}"),
            DEADLINE,
            || {
                let logs = http_get(
                    &self.sock,
                    &format!("/containers/{name}/logs?stdout=1&stderr=1"),
                )?;
                if logs.1.contains(want) {
                    Ok(())
                } else {
                    Err(format!("{logs:?}"))
                }
            },
        );
    }

    /// Mounts that the daemons made under /run (containerd's task root
    /// file systems, Docker's network namespaces) or in containerd's temporary
    /// directory, still there.
    fn leftover_mounts(&self) -> thinlayer::Result<Vec<PathBuf>> {
        self.fx.mounts_under(&self.run)
    }
}

impl Drop for Docker<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_logs(&self.fx.dir, &["dockerd", "containerd", "serve"]);
        }
        // dockerd first: with live-restore its containers outlive it, so
        // their cgroup is killed, then containerd and its shims, then the
        // server.
        drop(self.dockerd.take());
        let cgroup = kill_cgroup(&self.cgroup);
        drop(self.containerd.take());
        kill_shims(&self.cd_sock);
        drop(self.serve.take());
        // Best effort: the test checks mounts itself on its way out.
        let mut left = self.leftover_mounts().unwrap_or_default();
        left.extend(self.fx.mounts_under(&self.data_root).unwrap_or_default());
        self.fx.force_umount(left);
        remove_cgroups(&cgroup);
        let _ = fs::remove_dir_all(&self.run);
    }
}

/// GET `path` over HTTP/1.0 on the unix socket `sock`: (status, body).
fn http_get(sock: &Path, path: &str) -> Result<(u32, String), String> {
    let mut s =
        UnixStream::connect(sock).map_err(|e| format!("connect to {}: {e}", sock.display()))?;
    s.set_read_timeout(Some(COMMAND_DEADLINE))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .map_err(|e| format!("read the answer to GET {path}: {e}"))?;
    let resp = String::from_utf8_lossy(&resp);
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer to GET {path}: {resp:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// A byte count as Docker's commands print it (go-units'
/// `HumanSizeWithPrecision`: decimal units, `precision` significant digits
/// as Go's `%g`).
fn human(bytes: u64, precision: usize) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    let sci = format!("{:.*e}", precision - 1, v);
    let exp: i32 = sci.split_once('e').unwrap().1.parse().unwrap();
    assert!(
        (0..precision as i32).contains(&exp),
        "{bytes} B needs an exponent in Go's %g"
    );
    let mut s = format!("{:.*}", (precision as i32 - 1 - exp) as usize, v);
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s}{}", UNITS[unit])
}

/// Every layer's exclusive size, as thinlayer computes them.
fn thin_sizes(fx: &Fixture) -> BTreeMap<String, u64> {
    open(fx)
        .sizes()
        .expect("thinlayer's sizes")
        .into_iter()
        .map(|(k, s)| (k, s.size.0))
        .collect()
}

/// thinlayer's key of the snapshot Docker names `name` (containerd keeps it
/// as `moby/N/NAME`).
fn key_of(fx: &Fixture, name: &str) -> String {
    snapshot_key(fx, "moby", name)
}

/// The keys of the layers under `key`, nearest first.
fn parents_of(fx: &Fixture, key: &str) -> Vec<String> {
    let layers = records(fx).tree.layers;
    let mut out = Vec::new();
    let mut at = layers[key].parent.clone();
    while let Some(p) = at {
        at = layers[&p].parent.clone();
        out.push(p);
    }
    out
}

/// One reading of sizes through Docker, taken while thinlayer's sizes did
/// not move (nothing wrote meanwhile).
struct SizeReading {
    thin: BTreeMap<String, u64>,
    /// `GET /containers/json?all=1&size=1`, what `docker ps -s` shows.
    containers: Vec<Value>,
    ps: String,
    /// `GET /system/df`, what `docker system df` shows.
    df: Value,
    df_cli: String,
    df_verbose: String,
}

fn read_sizes(d: &Docker<'_>) -> SizeReading {
    eventually(
        "Docker's sizes read while thinlayer's did not move",
        DEADLINE,
        || {
            let thin = thin_sizes(d.fx);
            let containers = d.api("/containers/json?all=1&size=1");
            let ps = d.ok(&["ps", "-a", "-s", "--format", "{{json .}}"]);
            let df = d.api("/system/df");
            let df_cli = d.ok(&["system", "df", "--format", "{{json .}}"]);
            let df_verbose = d.ok(&["system", "df", "-v", "--format", "{{json .}}"]);
            let after = thin_sizes(d.fx);
            if after != thin {
                return Err(format!("thinlayer's sizes moved: {thin:?} then {after:?}"));
            }
            Ok(SizeReading {
                thin,
                containers: containers.as_array().expect("a list").clone(),
                ps,
                df,
                df_cli,
                df_verbose,
            })
        },
    )
}

/// `docker ps -s` and `docker system df` of the containers `written`
/// (name, bytes it wrote from a block boundary): size is what it wrote in
/// pool blocks plus filesystem metadata, virtual size its image's layers
/// plus size, all as thinlayer counts them.
fn check_sizes(d: &Docker<'_>, written: &[(&str, u64)]) {
    let fx = d.fx;
    let r = read_sizes(d);
    let ps: Vec<Value> =
        r.ps.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
    let verbose: Value = serde_json::from_str(r.df_verbose.trim())
        .unwrap_or_else(|e| panic!("docker system df -v: {e}: {}", r.df_verbose));
    let mut size_rw_total = 0;
    for (name, wrote) in written {
        let c = r
            .containers
            .iter()
            .find(|c| c["Names"][0] == format!("/{name}"))
            .unwrap_or_else(|| panic!("{name} in {:?}", r.containers));
        let id = c["Id"].as_str().unwrap();
        let size = c["SizeRw"].as_u64().expect("SizeRw");
        let virt = c["SizeRootFs"].as_u64().expect("SizeRootFs");
        let key = key_of(fx, id);
        let parents = parents_of(fx, &key);
        let image: u64 = parents.iter().map(|p| r.thin[p]).sum();
        println!(
            "{name}: wrote {wrote} B; docker: size {size} B, virtual {virt} B; \
             thinlayer: size {} B, layers below {image} B",
            r.thin[&key]
        );
        assert_eq!(size, r.thin[&key], "{name}: Docker's size is thinlayer's");
        assert_eq!(size % BLOCK, 0, "{name}: whole pool blocks");
        let least = in_blocks(*wrote);
        assert!(
            (least..=least + BLOCK + FS_OVERHEAD).contains(&size),
            "{name} wrote {wrote} B ({least} B in pool blocks): size {size} B"
        );
        assert_eq!(virt, size + image, "{name}: virtual = size + layers below");
        assert_eq!(
            parents[0],
            key_of(fx, &format!("{id}-init")),
            "{name}: Docker's init layer is right below the container's"
        );
        assert_eq!(parents.len(), 3, "{name}: init + two image layers");
        let row = ps
            .iter()
            .find(|p| p["Names"] == *name)
            .unwrap_or_else(|| panic!("{name} in docker ps: {}", r.ps));
        assert_eq!(
            row["Size"],
            format!("{} (virtual {})", human(size, 3), human(virt, 3)),
            "{name}: docker ps -s"
        );
        let row = verbose["Containers"]
            .as_array()
            .expect("containers")
            .iter()
            .find(|c| c["Names"] == *name)
            .unwrap_or_else(|| panic!("{name} in docker system df -v: {verbose}"));
        assert_eq!(row["Size"], human(size, 3), "{name}: docker system df -v");
        size_rw_total += size;
    }
    // docker system df: the images' space is every snapshot Docker has,
    // the containers' the sum of their sizes.
    let layers_size = r.df["LayersSize"].as_u64().expect("LayersSize");
    let docker_snapshots: u64 = r
        .thin
        .iter()
        .filter(|(k, _)| k.starts_with("moby/"))
        .map(|(_, s)| s)
        .sum();
    assert_eq!(
        layers_size, docker_snapshots,
        "system df: LayersSize is the sum of Docker's snapshots in thinlayer"
    );
    let all_rw: u64 = r
        .containers
        .iter()
        .map(|c| c["SizeRw"].as_u64().unwrap())
        .sum();
    assert_eq!(all_rw, size_rw_total, "the containers checked are all");
    let rows: Vec<Value> = r
        .df_cli
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let of = |ty: &str| -> String {
        rows.iter()
            .find(|row| row["Type"] == ty)
            .unwrap_or_else(|| panic!("{ty} in docker system df: {}", r.df_cli))["Size"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(of("Images"), human(layers_size, 4), "docker system df");
    assert_eq!(of("Containers"), human(all_rw, 4), "docker system df");
    print!("{}\n{}\n{}", r.ps, r.df_cli, r.df_verbose);
}

/// The lines of `docker diff NAME`, as a set.
fn diff_of(d: &Docker<'_>, name: &str) -> BTreeSet<String> {
    d.ok(&["diff", name]).lines().map(str::to_string).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The members of a tar archive and their contents (regular files only).
fn tar_files(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut archive = tar::Archive::new(f);
    let mut out = BTreeMap::new();
    for entry in archive.entries().expect("a tar archive") {
        let mut entry = entry.expect("a tar entry");
        if entry.header().entry_type().is_file() {
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.insert(name, data);
        }
    }
    out
}

#[test]
fn docker_runs_containers_on_thinlayer() {
    fixture::run("docker", |fx| {
        let started = Instant::now();
        fx.init_pool("4G", "64M", Some("1G"), &[]);
        let base_used = fx.data_used();
        let archive = image_archive(fx);
        let data = data();
        let three: Vec<u8> = [&data[..], &data[..], &data[..]].concat();
        let small = &data[..256 << 10];

        let mut d = Docker::new(fx);
        d.start_serve();
        d.start_containerd();
        let took = d.start_dockerd();
        println!("dockerd answered in {:.1} s", took.as_secs_f64());

        // What Docker runs on.
        let info = d.api("/info");
        assert_eq!(info["Driver"], "thinlayer", "{info}");
        assert!(
            info["DriverStatus"]
                .as_array()
                .expect("DriverStatus")
                .contains(&json!(["driver-type", "io.containerd.snapshotter.v1"])),
            "Docker keeps images in containerd: {info}"
        );
        let version = d.api("/version");
        assert!(
            version["Version"].as_str().unwrap().starts_with("26."),
            "{version}"
        );
        let containerd = version["Components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["Name"] == "containerd")
            .expect("containerd among Docker's components");
        assert!(
            containerd["Version"].as_str().unwrap().starts_with("1.7."),
            "{version}"
        );

        // load
        let out = d.ok(&["load", "-i", archive.to_str().unwrap()]);
        assert!(out.contains(&format!("Loaded image: {IMAGE}")), "{out}");
        let image_layers: Vec<String> = records(fx).tree.layers.into_keys().collect();
        assert!(
            image_layers.len() == 2 && image_layers.iter().all(|k| k.starts_with("moby/")),
            "the image's two layers are thinlayer's, in Docker's namespace: {image_layers:?}"
        );

        // Detached writers: 3 MiB of new data; 256 KiB; 4 KiB rewritten in
        // the middle of an image file, which copies one pool block.
        let writers = [
            (
                "w1",
                "cat /app/data.bin /app/data.bin /app/data.bin > /data",
            ),
            ("w2", "head -c 262144 /app/data.bin > /small"),
            (
                "w3",
                "dd if=/dev/zero of=/app/data.bin bs=4k count=1 seek=128 conv=notrunc",
            ),
        ];
        for (name, cmd) in writers {
            d.ok(&[
                "run",
                "-d",
                "--network",
                "none",
                "--name",
                name,
                IMAGE,
                "sh",
                "-c",
                &writer(cmd),
            ]);
        }
        for (name, _) in writers {
            d.wait_output(name, "written");
        }

        // docker ps -s, docker system df
        check_sizes(&d, &[("w1", 3 << 20), ("w2", 256 * KIB), ("w3", 4 * KIB)]);

        // A container that writes 8 MiB without a sync and exits: its size
        // counts them as soon as it is gone, before the kernel writes them
        // back.
        let unsynced = 8 << 20;
        d.ok(&[
            "run",
            "--network",
            "none",
            "--name",
            "w4",
            IMAGE,
            "dd",
            "if=/dev/zero",
            "of=/big",
            "bs=1048576",
            "count=8",
        ]);
        let w4_size = || -> (u64, String) {
            let containers = d.api("/containers/json?all=1&size=1");
            let w4 = containers
                .as_array()
                .expect("a list")
                .iter()
                .find(|c| c["Names"][0] == "/w4")
                .unwrap_or_else(|| panic!("w4 in {containers}"));
            let size = w4["SizeRw"].as_u64().expect("SizeRw");
            (size, w4["Id"].as_str().unwrap().to_string())
        };
        let (size, id) = w4_size();
        let mnt = fx.root.join("mnt").join(
            records(fx).tree.layers[&key_of(fx, &id)]
                .thin_id
                .to_string(),
        );
        let waiting = fx
            .kernel
            .delayed_allocation(&mnt)
            .unwrap()
            .expect("w4's layer: an ext4 thinlayer holds mounted");
        println!(
            "w4 wrote {unsynced} B without a sync and exited: size {size} B; \
             {} B not written back after",
            waiting.0
        );
        let least = in_blocks(unsynced);
        let counted = |size: u64| (least..=least + BLOCK + FS_OVERHEAD).contains(&size);
        if !counted(size) {
            // Short only if the kernel was writing it back meanwhile: ext4
            // stops counting data before the pool maps it (the driver's
            // sizes module bounds that window). Then the pool's figure
            // holds it once the writes are done and the dump renewed.
            assert!(
                waiting.0 < unsynced,
                "w4 wrote {unsynced} B: size {size} B while {} B were not written back",
                waiting.0
            );
            let size = eventually("w4's size once written back", DEADLINE, || {
                let (size, _) = w4_size();
                if counted(size) { Ok(size) } else { Err(size) }
            });
            println!("w4's size read while written back; once written: {size} B");
        }

        // diff
        assert_eq!(diff_of(&d, "w1"), set(&["A /data", "A /done"]), "w1");
        assert_eq!(diff_of(&d, "w2"), set(&["A /small", "A /done"]), "w2");
        assert_eq!(
            diff_of(&d, "w3"),
            set(&["C /app", "C /app/data.bin", "A /done"]),
            "w3"
        );

        // exec: in the container's root, not the VM's.
        let root: BTreeSet<String> = d
            .ok(&["exec", "w1", "ls", "/"])
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(
            root,
            set(&["app", "bin", "data", "dev", "done", "etc", "proc", "sys"]),
            "docker exec sees the container's root"
        );
        let sums = d.ok(&["exec", "w1", "sha256sum", "/data", "/etc/greeting"]);
        assert!(
            sums.contains(&format!("{}  /data", sha256_hex(&three))),
            "{sums}"
        );
        assert!(
            sums.contains(&format!(
                "{}  /etc/greeting",
                sha256_hex(GREETING.as_bytes())
            )),
            "{sums}"
        );

        // cp, both ways
        let host_file = fx.dir.join("from-host");
        fs::write(&host_file, "copied in from the host\n").unwrap();
        d.ok(&["cp", host_file.to_str().unwrap(), "w1:/from-host"]);
        let out_file = fx.dir.join("data.out");
        d.ok(&["cp", "w1:/data", out_file.to_str().unwrap()]);
        assert!(fs::read(&out_file).unwrap() == three, "docker cp w1:/data");
        let got = d.ok(&["exec", "w1", "cat", "/from-host"]);
        assert_eq!(got, "copied in from the host\n");

        // commit of a running container: the committed image holds its files.
        assert_eq!(d.inspect("w1")["State"]["Running"], true);
        d.ok(&["commit", "w1", "tlbox:running"]);
        let sums = d.run_rm(
            "tlbox:running",
            "sha256sum /data && cat /from-host /etc/greeting",
        );
        assert!(
            sums.contains(&format!("{}  /data", sha256_hex(&three))),
            "{sums}"
        );
        assert!(
            sums.contains("copied in from the host") && sums.contains(GREETING.trim()),
            "{sums}"
        );

        // commit of a stopped container
        d.ok(&["stop", "w2"]);
        assert_eq!(d.inspect("w2")["State"]["Status"], "exited");
        d.ok(&["commit", "w2", "tlbox:stopped"]);
        let sums = d.run_rm(
            "tlbox:stopped",
            "sha256sum /small; test -e /data || echo no-data",
        );
        assert!(
            sums.contains(&format!("{}  /small", sha256_hex(small))),
            "{sums}"
        );
        assert!(sums.contains("no-data"), "{sums}");

        // build
        let ctx = fx.dir.join("build");
        fs::create_dir_all(&ctx).unwrap();
        fs::write(
            ctx.join("Dockerfile"),
            format!(
                "FROM {IMAGE}\nRUN echo built by RUN > /built && cat /etc/greeting > /greeting-copy\nCOPY ctx-file /ctx-file\n"
            ),
        )
        .unwrap();
        fs::write(ctx.join("ctx-file"), "from the build context\n").unwrap();
        d.ok(&[
            "build",
            "--network",
            "none",
            "-t",
            "tlbox:built",
            ctx.to_str().unwrap(),
        ]);
        let got = d.run_rm("tlbox:built", "cat /built /ctx-file /greeting-copy");
        assert_eq!(
            got,
            format!("built by RUN\nfrom the build context\n{GREETING}"),
            "the built image"
        );

        // export: the container's file system as a tar.
        let exported = fx.dir.join("w1-export.tar");
        d.ok(&["export", "w1", "-o", exported.to_str().unwrap()]);
        let files = tar_files(&exported);
        assert!(files.get("data") == Some(&three), "data in docker export");
        assert_eq!(files["from-host"], b"copied in from the host\n");
        assert_eq!(files["etc/greeting"], GREETING.as_bytes());
        assert!(
            files["app/data.bin"] == data,
            "app/data.bin in docker export"
        );

        // save, then load again what was saved.
        let saved = fx.dir.join("running.tar");
        d.ok(&["save", "tlbox:running", "-o", saved.to_str().unwrap()]);
        let members = tar_files(&saved);
        let manifest: Value = serde_json::from_slice(&members["manifest.json"]).unwrap();
        assert_eq!(
            manifest[0]["RepoTags"],
            json!(["tlbox:running"]),
            "{manifest}"
        );
        assert_eq!(
            manifest[0]["Layers"].as_array().unwrap().len(),
            3,
            "the image's two layers and the commit's: {manifest}"
        );
        d.ok(&["rmi", "tlbox:running"]);
        let out = d.ok(&["load", "-i", saved.to_str().unwrap()]);
        assert!(out.contains("Loaded image: tlbox:running"), "{out}");
        let sums = d.run_rm("tlbox:running", "sha256sum /data");
        assert!(sums.contains(&sha256_hex(&three)), "{sums}");

        // stop and start keep the container's layer.
        let id = d.inspect("w1")["Id"].as_str().unwrap().to_string();
        let key = key_of(fx, &id);
        let thin_id = records(fx).tree.layers[&key].thin_id;
        d.ok(&["stop", "w1"]);
        d.ok(&["start", "w1"]);
        d.wait_output("w1", "kept");
        assert_eq!(
            records(fx).tree.layers[&key].thin_id,
            thin_id,
            "w1's layer after stop and start"
        );
        let sums = d.ok(&["exec", "w1", "sha256sum", "/data"]);
        assert!(sums.contains(&sha256_hex(&three)), "{sums}");

        // dockerd restarted while w1 and w3 run (live-restore).
        let pids: Vec<(String, u64)> = ["w1", "w3"]
            .iter()
            .map(|n| {
                let st = d.inspect(n)["State"].clone();
                assert_eq!(st["Running"], true, "{n}: {st}");
                (n.to_string(), st["Pid"].as_u64().unwrap())
            })
            .collect();
        d.stop_dockerd();
        for (n, pid) in &pids {
            assert!(
                Path::new(&format!("/proc/{pid}")).exists(),
                "{n} runs on without dockerd"
            );
        }
        let took = d.start_dockerd();
        println!("dockerd restarted in {:.1} s", took.as_secs_f64());
        for (n, pid) in &pids {
            let st = d.inspect(n)["State"].clone();
            assert_eq!(
                (st["Running"].clone(), st["Pid"].as_u64()),
                (json!(true), Some(*pid)),
                "{n} after dockerd's restart: {st}"
            );
        }
        let got = d.ok(&["exec", "w1", "cat", "/from-host"]);
        assert_eq!(got, "copied in from the host\n");

        // thinlayer serve restarted while w1 and w3 run.
        d.stop_serve();
        d.start_serve();
        let w1_size = eventually(
            "Docker reads w1's size through the restarted server",
            DEADLINE,
            || {
                let c = d.try_api("/containers/w1/json?size=1")?;
                c["SizeRw"]
                    .as_u64()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{c}"))
            },
        );
        println!("w1's size through the restarted server: {w1_size} B");
        d.ok(&["exec", "w3", "sh", "-c", "echo after > /after && sync"]);
        let got = d.run_rm(IMAGE, "cat /etc/greeting");
        assert_eq!(got, GREETING, "a new container after the server's restart");
        for (n, pid) in &pids {
            let st = d.inspect(n)["State"].clone();
            assert_eq!(st["Pid"].as_u64(), Some(*pid), "{n}: {st}");
        }

        // rm, rmi, prune: nothing of Docker's is left in the pool.
        d.ok(&["rm", "-f", "w1", "w2", "w3", "w4"]);
        d.ok(&["rmi", "tlbox:running", "tlbox:stopped", "tlbox:built"]);
        d.ok(&["system", "prune", "-a", "-f"]);
        assert_eq!(d.api("/containers/json?all=1"), json!([]));
        assert_eq!(d.api("/images/json?all=1"), json!([]));
        eventually(
            "containerd's collector removes every snapshot from thinlayer",
            DEADLINE,
            || {
                let keys: Vec<String> = records(fx).tree.layers.into_keys().collect();
                if keys.is_empty() {
                    Ok(())
                } else {
                    Err(format!("thinlayer holds {keys:?}"))
                }
            },
        );
        assert_eq!(
            fx.data_used(),
            base_used,
            "pool data after removing everything vs the base alone"
        );
        let pool = format!("{}-pool", fx.prefix);
        assert_eq!(fx.devices(), vec![pool.clone()], "only the pool is active");

        // Stopped, the daemons leave no device and no mount behind but
        // Docker's bind mount of its data root onto itself, which dockerd
        // keeps.
        d.stop_dockerd();
        let st = d.containerd.take().expect("containerd runs").stop();
        assert!(st.success(), "containerd exited with {st}");
        kill_shims(&d.cd_sock);
        d.stop_serve();
        assert_eq!(fx.devices(), vec![pool], "only the pool");
        assert_eq!(
            d.leftover_mounts().expect("list mounts"),
            Vec::<PathBuf>::new(),
            "mounts under {}",
            d.run.display()
        );
        let scratch_dev = fs::metadata(&fx.dir).unwrap().dev();
        for m in fx.kernel.mounts().expect("list mounts") {
            if !m.target.starts_with(&fx.dir) {
                continue;
            }
            assert_eq!(
                m.target, d.data_root,
                "a mount left under the test's directory"
            );
            assert_eq!(
                m.devnum.map(|n| libc::makedev(n.major, n.minor)),
                Some(scratch_dev),
                "Docker's data root, bound onto itself from the scratch disk: {m:?}"
            );
            fx.kernel.umount(&m.target, false).unwrap();
        }
        println!(
            "docker test: {:.0} s in all",
            started.elapsed().as_secs_f64()
        );
    });
}
