//! The peers workload: thinlayer against containerd's own `overlayfs` and
//! `devmapper` snapshotters, all three through one containerd's snapshots
//! API. Each snapshotter has loop devices of its own, so that the bytes
//! written to each backing store can be compared:
//!
//! - thinlayer: `thinlayer serve` as containerd's proxy plugin, on a pool
//!   made by `thinlayer pool init` (sparse data and metadata files on loop
//!   devices);
//! - overlayfs: its root on ext4 on a loop device over a sparse file;
//! - devmapper: a thin pool made as containerd's documentation makes it
//!   (sparse data and metadata files on loop devices, `dmsetup create` of a
//!   `thin-pool` target, 64 KiB blocks as thinlayer's pool).
//!
//! The workloads themselves are the Go program of `vm-tests/peers`
//! (containerd's client, built by `vm-tests/go-build`), which prints its
//! figures as JSON; this side sets the backends up, starts containerd and
//! the server, runs it and takes everything down again.

use std::fs;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::mount::MsFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use thinlayer::image::{Compression, build};
use thinlayer::kernel::{Kernel, Linux};

use super::workloads::{Config, Figure, Results, Unit};

/// The three snapshotters, thinlayer first (ratios are thinlayer's).
pub const PEERS: [&str; 3] = ["thinlayer", "overlayfs", "devmapper"];

pub const PREPARE_CYCLE: &str = "prepare cycle";
pub const PARALLEL: &str = "parallel prepare cycles";
pub const SHAPE_2988: &str = "containerd #2988 shape";
pub const PEER_FIRST_WRITE: &str = "first write (containerd)";
pub const IDLE_COST: &str = "idle cost";
pub const SPACE_BACK: &str = "space back after a removal";
pub const TEARDOWN: &str = "teardown";
pub const CREATE_COST: &str = "create cost against live snapshots";
pub const UNPACK: &str = "unpack (realistic image)";

/// Where the unpack workload's Debian root filesystem is: a tar made by
/// `vm-tests/rootfs` on the host, whose path `vm-tests/bench` and
/// `vm-tests/cargo-runner` pass in this variable.
pub const ROOTFS_ENV: &str = "THINLAYER_BENCH_ROOTFS";

/// A peers workload: its name in the Go program, ours, and its metrics
/// with their units.
pub type PeerWorkload = (&'static str, &'static str, &'static [(&'static str, Unit)]);

/// Every figure the Go program makes.
pub const PEER_METRICS: [PeerWorkload; 9] = [
    (
        "prepare cycle",
        PREPARE_CYCLE,
        &[
            ("prepare", Unit::Seconds),
            ("mount", Unit::Seconds),
            ("unmount", Unit::Seconds),
            ("remove call", Unit::Seconds),
            ("remove until collected", Unit::Seconds),
            ("total", Unit::Seconds),
        ],
    ),
    (
        "parallel prepare cycles",
        PARALLEL,
        &[
            ("cycles per second", Unit::PerSecond),
            ("wall time", Unit::Seconds),
            ("cycle", Unit::Seconds),
        ],
    ),
    (
        "containerd #2988 shape",
        SHAPE_2988,
        &[
            ("build time", Unit::Seconds),
            ("build bytes written", Unit::Bytes),
            ("write time", Unit::Seconds),
            ("write bytes written", Unit::Bytes),
            ("total time", Unit::Seconds),
            ("total bytes written", Unit::Bytes),
            ("prepare call", Unit::Seconds),
            ("commit call", Unit::Seconds),
        ],
    ),
    (
        "first write",
        PEER_FIRST_WRITE,
        &[("time", Unit::Seconds), ("bytes written", Unit::Bytes)],
    ),
    (
        "idle cost",
        IDLE_COST,
        &[("space per idle container", Unit::Bytes)],
    ),
    (
        "space back",
        SPACE_BACK,
        &[
            ("space taken", Unit::Bytes),
            ("host files' growth", Unit::Bytes),
            ("remove until collected", Unit::Seconds),
            ("space back", Unit::Seconds),
            ("host space back", Unit::Seconds),
        ],
    ),
    (
        "teardown",
        TEARDOWN,
        &[
            ("teardown of all N", Unit::Seconds),
            ("teardown per container", Unit::Seconds),
            ("unmount + remove call", Unit::Seconds),
            ("space back after the last removal", Unit::Seconds),
            ("host space back after the last removal", Unit::Seconds),
        ],
    ),
    ("create cost", CREATE_COST, &[("create", Unit::Seconds)]),
    (
        "unpack",
        UNPACK,
        &[
            ("import", Unit::Seconds),
            ("unpack", Unit::Seconds),
            ("unpack + sync", Unit::Seconds),
            ("bytes written", Unit::Bytes),
            ("space in use", Unit::Bytes),
            ("entries", Unit::Count),
        ],
    ),
];

/// How long a daemon may take to listen or to stop, and the Go program
/// to see a removal reach a snapshotter: generous, for a loaded machine
/// under emulation.
const DEADLINE: Duration = Duration::from_secs(300);

/// The pool block size of both thin pools: 64 KiB, in 512-byte sectors.
const BLOCK_SECTORS: u64 = 128;

/// containerd's documentation's low-water mark of the devmapper pool.
const LOW_WATER_MARK: u64 = 32768;

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Sizes of the backing stores: data of each pool and the overlayfs
/// filesystem, metadata of each pool, base device of each pool.
fn sizes(cfg: &Config) -> (u64, u64, &'static str) {
    if cfg.quick {
        (8 << 30, 256 << 20, "1G")
    } else {
        (24 << 30, 1 << 30, "8G")
    }
}

/// The Go program: `peers/peers` in the build's target directory (next to
/// its `deps`), where `vm-tests/go-build` puts it.
fn program() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("this program's path")?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .context("no target directory above this program")?
        .join("peers/peers");
    if !bin.exists() {
        bail!(
            "{} is missing: vm-tests/bench and vm-tests/cargo-runner build it \
             (vm-tests/go-build peers {})",
            bin.display(),
            bin.display()
        );
    }
    Ok(bin)
}

/// The three backends, containerd and the server; whatever is up of them.
pub struct Peers {
    kernel: Linux,
    pub base: PathBuf,
    pub run: PathBuf,
    pub thin_root: PathBuf,
    overlay_fs: PathBuf,
    dm_pool: String,
    /// Where `thinlayer serve` serves its metrics.
    pub metrics: SocketAddr,
    serve: Option<Child>,
    containerd: Option<Child>,
}

/// The device-mapper pool name of thinlayer's pool at `root`.
pub fn thin_pool_name(root: &Path) -> String {
    format!("{}-pool", thinlayer::pool::prefix_for(root))
}

pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A sparse file of `len` bytes.
fn sparse(path: &Path, len: u64) -> Result<()> {
    fs::File::create(path)
        .and_then(|f| f.set_len(len))
        .with_context(|| format!("create {}", path.display()))
}

impl Peers {
    pub fn new(dir: &Path) -> Result<Peers> {
        let base = dir.join("peers");
        fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
        let dm_root = base.join("devmapper");
        Ok(Peers {
            kernel: Linux::new(),
            run: PathBuf::from(format!("/run/peers-{}", std::process::id())),
            thin_root: base.join("thinlayer"),
            overlay_fs: base.join("overlayfs"),
            dm_pool: format!("{}-pool", thinlayer::pool::prefix_for(&dm_root)),
            // A port the kernel just gave out and took back: free unless
            // something else takes it in between, which fails serve's start.
            metrics: TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context("a free port for serve's metrics")?,
            base,
            serve: None,
            containerd: None,
        })
    }

    /// Loop devices over files under `under`, as `loopN` names.
    fn loops_under(&self, under: &Path) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for l in self.kernel.loop_list().map_err(|e| anyhow!("{e}"))? {
            if l.backing_file.starts_with(under) {
                let n = l.device.file_name().and_then(|n| n.to_str());
                names.push(n.context("a loop device without a name")?.to_string());
            }
        }
        if names.is_empty() {
            bail!("no loop device over files under {}", under.display());
        }
        names.sort();
        Ok(names)
    }

    pub fn thinlayer(&self, args: &[&str]) -> Result<String> {
        run_ok(
            Command::new(env!("CARGO_BIN_EXE_thinlayer"))
                .arg("--root")
                .arg(&self.thin_root)
                .args(args),
        )
    }

    /// thinlayer's pool, by its own command.
    pub fn make_thin(&self, data: u64, meta: u64, base_size: &str) -> Result<()> {
        self.thinlayer(&[
            "pool",
            "init",
            "--data-size",
            &data.to_string(),
            "--metadata-size",
            &meta.to_string(),
            "--base-size",
            base_size,
        ])
        .map(drop)
    }

    /// ext4 on a loop device, mounted where overlayfs's root goes.
    fn make_overlay(&self, size: u64) -> Result<()> {
        let file = self.base.join("overlayfs.img");
        sparse(&file, size)?;
        let attached = self.kernel.loop_attach(&file).map_err(|e| anyhow!("{e}"))?;
        let dev = attached.info.device.clone();
        run_ok(
            Command::new("mkfs.ext4")
                .args([
                    "-q",
                    "-F",
                    "-E",
                    "nodiscard,lazy_itable_init=1,lazy_journal_init=1,assume_storage_prezeroed=1",
                ])
                .arg(&dev),
        )?;
        fs::create_dir_all(&self.overlay_fs)?;
        nix::mount::mount(
            Some(&dev),
            &self.overlay_fs,
            Some("ext4"),
            MsFlags::empty(),
            Some("noinit_itable"),
        )
        .with_context(|| format!("mount {} on {}", dev.display(), self.overlay_fs.display()))?;
        // The mount holds the loop now; autoclear detaches it at unmount.
        drop(attached);
        Ok(())
    }

    /// The devmapper snapshotter's pool, as containerd's documentation
    /// makes it: `dmsetup create POOL --table "0 SECTORS thin-pool META
    /// DATA BLOCK LOW_WATER_MARK"` over two loop devices.
    fn make_devmapper(&self, data: u64, meta: u64) -> Result<()> {
        let dir = self.base.join("devmapper");
        fs::create_dir_all(&dir)?;
        let (data_file, meta_file) = (dir.join("data"), dir.join("metadata"));
        sparse(&data_file, data)?;
        sparse(&meta_file, meta)?;
        let d = self
            .kernel
            .loop_attach(&data_file)
            .map_err(|e| anyhow!("{e}"))?;
        let m = self
            .kernel
            .loop_attach(&meta_file)
            .map_err(|e| anyhow!("{e}"))?;
        let table = format!(
            "0 {} thin-pool {} {} {BLOCK_SECTORS} {LOW_WATER_MARK}",
            data / 512,
            m.info.device.display(),
            d.info.device.display()
        );
        run_ok(Command::new("dmsetup").env("DM_DISABLE_UDEV", "1").args([
            "create",
            &self.dm_pool,
            "--table",
            &table,
        ]))?;
        // The pool holds the loops now; autoclear detaches them when it goes.
        drop((d, m));
        Ok(())
    }

    fn containerd_config(&self, base_size: &str) -> String {
        format!(
            r#"version = 2
root = "{root}"
state = "{run}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{run}/containerd.sock"

[ttrpc]
  address = "{run}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"

# Every removal starts a collection at once, for every snapshotter alike.
[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1
  schedule_delay = "0s"

[plugins."io.containerd.snapshotter.v1.overlayfs"]
  root_path = "{overlay}/root"

[plugins."io.containerd.snapshotter.v1.devmapper"]
  root_path = "{base}/devmapper/root"
  pool_name = "{pool}"
  base_image_size = "{base_size}"

[proxy_plugins]
  [proxy_plugins.thinlayer]
    type = "snapshot"
    address = "{run}/thinlayer.sock"
"#,
            root = self.base.join("containerd").display(),
            run = self.run.display(),
            base = self.base.display(),
            overlay = self.overlay_fs.display(),
            pool = self.dm_pool,
        )
    }

    /// Starts `cmd` with its output to `log` and waits until it accepts
    /// connections on `sock`.
    fn start(what: &str, mut cmd: Command, log: &Path, sock: &Path) -> Result<Child> {
        let out = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .env("PATH", PATH)
            .env("DM_DISABLE_UDEV", "1");
        let mut child = cmd.spawn().with_context(|| format!("start {what}"))?;
        let started = Instant::now();
        while UnixStream::connect(sock).is_err() {
            if let Some(st) = child.try_wait()? {
                bail!("{what} exited with {st} before it listened; {}", tail(log));
            }
            if started.elapsed() > DEADLINE {
                stop(what, child)?;
                bail!(
                    "never happened: {what} listens on {} (deadline {DEADLINE:?}); {}",
                    sock.display(),
                    tail(log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "cow: peers: {what} listens after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(child)
    }

    fn up(&mut self, cfg: &Config) -> Result<()> {
        let (data, meta, base_size) = sizes(cfg);
        self.make_thin(data, meta, base_size)?;
        self.make_overlay(data)?;
        self.make_devmapper(data, meta)?;
        fs::create_dir_all(&self.run)?;
        let config = self.base.join("containerd.toml");
        fs::write(&config, self.containerd_config(base_size))?;
        self.start_serve()?;
        self.start_containerd(Path::new("containerd"), &config)
    }

    /// `thinlayer serve` on thinlayer's pool, its socket under the run
    /// directory, its metrics on [`Peers::metrics`].
    pub fn start_serve(&mut self) -> Result<()> {
        fs::create_dir_all(&self.run)?;
        let mut serve = Command::new(env!("CARGO_BIN_EXE_thinlayer"));
        serve
            .arg("--root")
            .arg(&self.thin_root)
            .args(["serve", "--metrics-address", &self.metrics.to_string()])
            .arg("--socket")
            .arg(self.serve_socket());
        self.serve = Some(Self::start(
            "thinlayer serve",
            serve,
            &self.base.join("serve.log"),
            &self.serve_socket(),
        )?);
        Ok(())
    }

    /// The containerd of `binary` with the configuration file `config`,
    /// which must put its socket at [`Peers::containerd_socket`].
    pub fn start_containerd(&mut self, binary: &Path, config: &Path) -> Result<()> {
        let mut containerd = Command::new(binary);
        containerd.arg("--config").arg(config);
        self.containerd = Some(Self::start(
            "containerd",
            containerd,
            &self.base.join("containerd.log"),
            &self.containerd_socket(),
        )?);
        Ok(())
    }

    /// Where `thinlayer serve` listens (containerd's proxy plugin address).
    pub fn serve_socket(&self) -> PathBuf {
        self.run.join("thinlayer.sock")
    }

    /// Where containerd listens.
    pub fn containerd_socket(&self) -> PathBuf {
        self.run.join("containerd.sock")
    }

    /// The process id of `thinlayer serve`, once started.
    pub fn serve_pid(&self) -> Option<u32> {
        self.serve.as_ref().map(Child::id)
    }

    /// The logs of serve and containerd, their last lines each, for an
    /// error.
    pub fn logs(&self) -> String {
        format!(
            "{}\n{}",
            tail(&self.base.join("serve.log")),
            tail(&self.base.join("containerd.log"))
        )
    }

    /// The Go program's `-peers` argument: per snapshotter its loop
    /// devices, where its space in use is read, how its backend is asked,
    /// the host files behind its data (the pools' data files, the
    /// overlay's filesystem image; not the pools' metadata files) and its
    /// metrics endpoint (thinlayer's only).
    fn peer_args(&self) -> Result<String> {
        let block = BLOCK_SECTORS * 512;
        let overlay_img = self.base.join("overlayfs.img");
        let dm_dir = self.base.join("devmapper");
        let thin = format!(
            "thinlayer;{};pool:{}:{block};proxy:{};{};http://{}/metrics",
            self.loops_under(&self.thin_root)?.join(","),
            thin_pool_name(&self.thin_root),
            self.serve_socket().display(),
            self.thin_root.join("data").display(),
            self.metrics
        );
        let overlay = format!(
            "overlayfs;{};statfs:{};overlayfs;{};",
            self.loops_under(&overlay_img)?.join(","),
            self.overlay_fs.display(),
            overlay_img.display()
        );
        let dm = format!(
            "devmapper;{};pool:{}:{block};devmapper;{};",
            self.loops_under(&dm_dir)?.join(","),
            self.dm_pool,
            dm_dir.join("data").display()
        );
        Ok([thin, overlay, dm].join("|"))
    }

    fn measure(&self, cfg: &Config, image: &UnpackImage) -> Result<(Vec<Figure>, Vec<Steps>)> {
        let mounts = self.base.join("mnt");
        fs::create_dir_all(&mounts)?;
        let bin = program()?;
        let live: Vec<String> = cfg.peer_live.iter().map(usize::to_string).collect();
        let live = live.join(",");
        let mut cmd = Command::new(&bin);
        cmd.arg("-socket")
            .arg(self.containerd_socket())
            .arg("-dir")
            .arg(&mounts)
            .arg("-peers")
            .arg(self.peer_args()?)
            .arg("-unpack-archive")
            .arg(&image.path)
            .args([
                "-cycles",
                &cfg.peer_cycles.to_string(),
                "-layers",
                &cfg.peer_layers.to_string(),
                "-files",
                &cfg.peer_files.to_string(),
                "-file-size",
                &cfg.peer_file_size.to_string(),
                "-first-write-size",
                &cfg.peer_write_size.to_string(),
                "-reps",
                &cfg.peer_reps.to_string(),
                "-idle",
                &cfg.peer_idle.to_string(),
                "-live",
                &live,
                "-live-devmapper",
                &cfg.peer_live_devmapper.unwrap_or(0).to_string(),
                "-unpack-entries",
                &image.entries.to_string(),
                "-unpack-reps",
                &cfg.peer_unpack_reps.to_string(),
                "-clients",
                &cfg.peer_clients.to_string(),
                "-parallel-cycles",
                &cfg.peer_parallel_cycles.to_string(),
                "-space-size",
                &cfg.peer_space_size.to_string(),
                "-space-reps",
                &cfg.peer_space_reps.to_string(),
                "-space-deadline",
                &format!("{}s", cfg.peer_space_deadline),
                "-deadline",
                &format!("{}s", DEADLINE.as_secs()),
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        let out = cmd
            .output()
            .with_context(|| format!("run {}", bin.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed with {}\n{}",
                bin.display(),
                out.status,
                self.logs()
            );
        }
        figures(&out.stdout)
    }

    /// Takes everything down; the first error, after trying all.
    pub fn down(mut self) -> Result<()> {
        let mut errors = Vec::new();
        if let Some(c) = self.containerd.take() {
            errors.extend(stop("containerd", c).err());
        }
        if let Some(s) = self.serve.take() {
            errors.extend(stop("thinlayer serve", s).err());
        }
        // What a failed workload left mounted.
        let mnt = self.base.join("mnt");
        if let Ok(mut left) = self.kernel.mounts() {
            left.retain(|m| m.target.starts_with(&mnt));
            left.sort_by_key(|m| std::cmp::Reverse(m.target.as_os_str().len()));
            for m in left {
                errors.extend(
                    self.kernel.umount(&m.target, false).err().map(|e| {
                        anyhow!("unmount {} left by the workload: {e}", m.target.display())
                    }),
                );
            }
        }
        if self.thin_root.join("state.json").exists() {
            errors.extend(self.thinlayer(&["pool", "destroy"]).err());
        }
        // devmapper's thin devices (`POOL-snap-N`), then its pool.
        if let Ok(mut names) = self.kernel.dm_list() {
            names.retain(|n| n.starts_with(&self.dm_pool));
            names.sort_by_key(|n| *n == self.dm_pool);
            for n in names {
                errors.extend(
                    run_ok(
                        Command::new("dmsetup")
                            .env("DM_DISABLE_UDEV", "1")
                            .args(["remove", &n]),
                    )
                    .err(),
                );
            }
        }
        if self.overlay_fs.exists() {
            let mounted = self
                .kernel
                .mounts()
                .map_err(|e| anyhow!("{e}"))?
                .iter()
                .any(|m| m.target == self.overlay_fs);
            if mounted {
                errors.extend(
                    self.kernel
                        .umount(&self.overlay_fs, false)
                        .err()
                        .map(|e| anyhow!("unmount {}: {e}", self.overlay_fs.display())),
                );
            }
        }
        let _ = fs::remove_dir_all(&self.run);
        if errors.is_empty() {
            let _ = fs::remove_dir_all(&self.base);
        }
        errors.into_iter().next().map_or(Ok(()), Err)
    }
}

/// Stops a daemon with SIGTERM; kills it if it has not stopped by the
/// deadline, and says so.
fn stop(what: &str, mut child: Child) -> Result<()> {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let started = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            bail!("never happened: {what} stops on SIGTERM (deadline {DEADLINE:?}); killed it");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of a log, for an error.
pub fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "{} ends:\n{}",
        log.display(),
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

/// What `thinlayer serve`'s metrics say one peers workload cost on one
/// snapshotter (thinlayer alone has them): every series that counted calls
/// between a scrape before the workload and one after it, or why they
/// could not be read.
#[derive(Clone, Debug)]
pub struct Steps {
    pub snapshotter: String,
    pub workload: &'static str,
    pub rows: std::result::Result<Vec<StepRow>, String>,
}

/// One series of `thinlayer_step_duration_seconds` (`call` false: an
/// operation's step) or of `thinlayer_snapshotter_call_duration_seconds`
/// (`call` true: `op` is the method, `step` empty), over one workload.
#[derive(Clone, Debug)]
pub struct StepRow {
    pub call: bool,
    pub op: String,
    pub step: String,
    pub calls: f64,
    pub seconds: f64,
}

/// The peers workload of the Go program's name.
fn peer_workload(name: &str) -> Result<&'static PeerWorkload> {
    PEER_METRICS
        .iter()
        .find(|(w, ..)| *w == name)
        .with_context(|| format!("unknown workload {name:?}"))
}

/// The Go program's JSON as figures and steps.
fn figures(json: &[u8]) -> Result<(Vec<Figure>, Vec<Steps>)> {
    let all: serde_json::Value =
        serde_json::from_slice(json).context("the peers program printed no JSON")?;
    let mut out = Vec::new();
    for f in all["figures"].as_array().context("a list of figures")? {
        let s = |k: &str| {
            f[k].as_str()
                .with_context(|| format!("figure without {k}: {f}"))
        };
        let (workload, metric) = (s("workload")?, s("metric")?);
        let (_, ours, metrics) = peer_workload(workload)?;
        let &(metric, unit) = metrics
            .iter()
            .find(|(m, _)| *m == metric)
            .with_context(|| format!("unknown metric {metric:?} of {workload:?}"))?;
        let snapshotter = s("snapshotter")?;
        let values: Vec<f64> = f["values"]
            .as_array()
            .context("values")?
            .iter()
            .map(|v| v.as_f64().context("a value that is not a number"))
            .collect::<Result<_>>()?;
        let error = f["error"].as_str().filter(|e| !e.is_empty());
        out.push(Figure {
            workload: ours,
            metric,
            unit,
            param: f["param"].as_u64().context("param")?,
            baseline: snapshotter.to_string(),
            values: error.map_or(Ok(values), |e| Err(e.to_string())),
        });
    }
    let mut steps: Vec<Steps> = Vec::new();
    for r in all["steps"].as_array().map_or(&[][..], Vec::as_slice) {
        let s = |k: &str| {
            r[k].as_str()
                .with_context(|| format!("steps without {k}: {r}"))
        };
        let snapshotter = s("snapshotter")?.to_string();
        let workload = peer_workload(s("workload")?)?.1;
        let at = match steps
            .iter()
            .position(|x| x.snapshotter == snapshotter && x.workload == workload)
        {
            Some(i) => i,
            None => {
                steps.push(Steps {
                    snapshotter,
                    workload,
                    rows: Ok(Vec::new()),
                });
                steps.len() - 1
            }
        };
        let n = |k: &str| {
            r[k].as_f64()
                .with_context(|| format!("steps without {k}: {r}"))
        };
        let row = match r["error"].as_str().filter(|e| !e.is_empty()) {
            Some(e) => Err(e.to_string()),
            None => Ok(StepRow {
                call: s("kind")? == "call",
                op: s("op")?.to_string(),
                step: s("step")?.to_string(),
                calls: n("calls")?,
                seconds: n("seconds")?,
            }),
        };
        let entry = &mut steps[at].rows;
        match (entry.as_mut(), row) {
            (Ok(rows), Ok(row)) => rows.push(row),
            (_, Err(e)) => *entry = Err(e),
            (Err(_), Ok(_)) => {}
        }
    }
    Ok((out, steps))
}

/// The unpack workload's image: an OCI archive of one gzip layer.
pub struct UnpackImage {
    pub path: PathBuf,
    /// Entries of its layer (every file, directory, link... but the root).
    pub entries: u64,
    /// How it was made, for the report.
    pub what: String,
}

/// The first entries of a tar.
pub struct TarPrefix {
    /// Entries (`.` left out).
    pub entries: u64,
    /// Where the last one's data ends in the tar.
    pub end: usize,
    /// Bytes of regular files' data.
    pub data: u64,
}

/// The first `limit` entries of a tar (all if None), read from `tar` as
/// far as they go.
pub fn tar_entries(tar: impl Read, limit: Option<usize>) -> Result<TarPrefix> {
    let mut archive = tar::Archive::new(tar);
    let mut p = TarPrefix {
        entries: 0,
        end: 0,
        data: 0,
    };
    for e in archive
        .entries()
        .context("read the root filesystem's tar")?
    {
        let e = e.context("read an entry of the root filesystem's tar")?;
        let path = e.path().context("an entry's path")?;
        if path.components().all(|c| c == std::path::Component::CurDir) {
            continue;
        }
        if limit.is_some_and(|l| p.entries as usize == l) {
            break;
        }
        p.entries += 1;
        p.end = (e.raw_file_position() + e.size().div_ceil(512) * 512) as usize;
        if e.header().entry_type().is_file() {
            p.data += e.size();
        }
    }
    Ok(p)
}

/// Builds the unpack workload's image under `dir` from the root
/// filesystem of [`ROOTFS_ENV`]: all of it, or its first entries in the
/// tar's order (parents come before their children, link targets before
/// the links: a prefix is a tree of its own).
pub fn unpack_image(dir: &Path, cfg: &Config) -> Result<UnpackImage> {
    let rootfs = std::env::var_os(ROOTFS_ENV)
        .map(PathBuf::from)
        .with_context(|| {
            format!(
                "{ROOTFS_ENV} is not set: it names the Debian root filesystem tar the unpack \
             workload imports, which vm-tests/bench and vm-tests/cargo-runner make with \
             vm-tests/rootfs"
            )
        })?;
    let started = Instant::now();
    let read = || format!("read {}", rootfs.display());
    let (layer, part) = match cfg.peer_unpack_entries {
        // Only as much of the file as the first entries take.
        Some(l) => {
            let file = fs::File::open(&rootfs).with_context(read)?;
            let p = tar_entries(io::BufReader::new(&file), Some(l))?;
            let mut layer = vec![0u8; p.end];
            file.read_exact_at(&mut layer, 0).with_context(read)?;
            // The end-of-archive marker.
            layer.extend([0u8; 1024]);
            (
                layer,
                format!("its first {} entries in the tar's order", p.entries),
            )
        }
        None => {
            let tar = fs::read(&rootfs).with_context(read)?;
            (tar, "all of it".to_string())
        }
    };
    let entries = tar_entries(&layer[..], None)?.entries;
    let path = dir.join("unpack.oci.tar");
    build::write_oci_archive(
        &path,
        "debian:bookworm-rootfs",
        std::slice::from_ref(&layer),
        Compression::Gzip,
        true,
    )
    .with_context(|| format!("write {}", path.display()))?;
    let archive = fs::metadata(&path)?.len();
    let what = format!(
        "a Debian 12 root filesystem made by debootstrap (`vm-tests/rootfs`, {}): {part}, {entries} entries, one gzip layer, {} uncompressed, archive {}",
        mib(fs::metadata(&rootfs).with_context(read)?.len()),
        mib(layer.len() as u64),
        mib(archive)
    );
    eprintln!(
        "cow: peers: unpack image: {what}; made in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(UnpackImage {
        path,
        entries,
        what,
    })
}

/// Runs the workload: sets the three snapshotters up, measures, takes
/// them down.
pub fn run(dir: &Path, cfg: &Config, res: &mut Results) -> Result<()> {
    let mut peers = Peers::new(dir)?;
    let image = unpack_image(&peers.base, cfg)?;
    let measured = peers.up(cfg).and_then(|()| peers.measure(cfg, &image));
    let down = peers.down();
    let (figures, steps) = measured?;
    for f in figures {
        res.push(f);
    }
    res.peer_steps = steps;
    down.context("tear down the peers")?;
    res.setup.push(("peers' unpack image".into(), image.what));
    let (data, meta, base_size) = sizes(cfg);
    res.setup.push((
        "peers".into(),
        format!(
            "one containerd ({}), its `overlayfs` and `devmapper` snapshotters and `thinlayer serve` as proxy plugin; overlayfs on ext4 on a loop device over a {} sparse file; devmapper and thinlayer each on a thin pool of 64 KiB blocks over loop devices on sparse files ({} data, {} metadata), base devices {base_size}; devmapper's pool made as containerd's documentation says (low-water mark {LOW_WATER_MARK} blocks, block zeroing on); garbage collection after every removal (`deletion_threshold = 1`)",
            containerd_version(),
            mib(data),
            mib(data),
            mib(meta)
        ),
    ));
    Ok(())
}

fn mib(b: u64) -> String {
    format!("{} MiB", b >> 20)
}

fn containerd_version() -> String {
    Command::new("containerd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8(o.stdout)
                .ok()?
                .split_whitespace()
                .nth(2)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown version".into())
}
