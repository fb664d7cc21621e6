//! The kubelet workload: what Kubernetes' polling of container statistics
//! costs `thinlayer serve`.
//!
//! The kubelet reads a container's writable-layer usage from containerd's
//! CRI plugin, which keeps it from a snapshots syncer: every
//! `stats_collect_period` seconds (10, as a kubelet's default set-up has
//! it) it Walks the CRI snapshotter's snapshots in the `k8s.io` namespace
//! and asks `Usage` of every active one (and once of each other kind).
//! containerd's Walk is its own metadata's, which asks the snapshotter
//! `Stat` of each snapshot in turn: so each poll of N containers reaches
//! serve as N + 1 Stat calls (the image's layer too) and N Usage calls.
//!
//! Here: thinlayer's pool and `thinlayer serve` with metrics as the peers
//! workload makes them, Debian 13's containerd 1.7 with its CRI plugin on
//! the `thinlayer` proxy snapshotter, one small image imported by `ctr`
//! into `k8s.io`, then windows of polling, each the same length: with the
//! image only, then with N active snapshots of it (some with data
//! written); each twice, polling alone and with a Prepare and a
//! Remove through containerd every [`CHURN_EVERY`], as a node starts and
//! removes containers. Over each window: serve's CPU time (its own and its children's, `thin_dump`),
//! the calls serve counted, the metadata dumps (its step `dump`), the
//! Usage calls' time, and how long Prepares waited for the root's lock.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use containerd_snapshots::api::snapshots::v1 as api;
use containerd_snapshots::tonic;
use thinlayer::image::build::{LayerBuilder, write_docker_save};

use super::peers::{Peers, run_ok};
use super::workloads::{Config, Figure, Results, Unit};

pub const KUBELET: &str = "kubelet polling";

/// The CRI plugin's `stats_collect_period`, seconds: a kubelet's default.
pub const POLL_PERIOD: u64 = 10;

/// How often a Prepare (and its Remove) runs during a window.
pub const CHURN_EVERY: Duration = Duration::from_secs(2);

/// Every Nth container snapshot gets [`WRITTEN`] bytes written and synced.
pub const WRITE_EVERY: usize = 4;
pub const WRITTEN: u64 = 1 << 20;

/// serve's CPU time per minute that polling 200 snapshots may cost, above
/// the image alone: [`KUBELET_DUMP_CPU`] for each of the 6 polls a minute,
/// and as much again for the 2 × 200 Stat and Usage calls of each poll and
/// the measurement's noise (the report says why).
pub const KUBELET_CPU_TARGET: f64 = 12.0 * KUBELET_DUMP_CPU;

/// What one metadata dump of the workload's pool costs serve in CPU time
/// under the VM's emulation, about: a `thin_dump` process, its parse, the
/// messages around it.
pub const KUBELET_DUMP_CPU: f64 = 0.6;

/// How long the set-up may wait for serve to see a poll.
const DEADLINE: Duration = Duration::from_secs(300);

/// The image: its name in `k8s.io`.
const IMAGE: &str = "docker.io/library/kubelet-bench:1";

/// The workload's figures: name and unit.
pub const KUBELET_METRICS: [(&str, Unit); 15] = [
    ("serve CPU per minute", Unit::Seconds),
    ("children's CPU per minute", Unit::Seconds),
    ("window", Unit::Seconds),
    ("usage calls per minute", Unit::Count),
    ("stat calls per minute", Unit::Count),
    ("list calls per minute", Unit::Count),
    ("metadata dumps per minute", Unit::Count),
    ("dump, mean", Unit::Seconds),
    ("usage call, mean", Unit::Seconds),
    ("usage call, max", Unit::Seconds),
    ("usage calls that took the lock per minute", Unit::Count),
    ("prepare lock wait, mean", Unit::Seconds),
    ("prepare lock wait, max", Unit::Seconds),
    ("prepare through containerd", Unit::Seconds),
    ("prepares", Unit::Count),
];

/// Where Debian 13's containerd 1.7 is: the tree `vm-tests/setup` unpacks,
/// which the VM names in `THINLAYER_VM_DOCKER`.
fn containerd_tree() -> Result<PathBuf> {
    let tree = std::env::var_os("THINLAYER_VM_DOCKER")
        .map(PathBuf::from)
        .context(
            "THINLAYER_VM_DOCKER is not set: it names the tree of Debian 13's containerd 1.7 \
             that vm-tests/setup unpacks and the VM exports",
        )?;
    let bin = tree.join("usr/bin/containerd");
    ensure!(
        bin.is_file(),
        "no containerd at {} (vm-tests/setup unpacks Debian 13's containerd there)",
        bin.display()
    );
    Ok(tree)
}

/// containerd 1.7 with its CRI plugin on the thinlayer proxy snapshotter,
/// polling every [`POLL_PERIOD`] s; nothing of it on the VM's read-only
/// root; a collection after every removal, as the peers workload has it.
fn containerd_config(p: &Peers) -> String {
    format!(
        r#"version = 2
root = "{base}/containerd"
state = "{run}/state"

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"

[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1
  schedule_delay = "0s"

[plugins."io.containerd.grpc.v1.cri"]
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  stats_collect_period = {POLL_PERIOD}

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "thinlayer"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{run}/cni/bin"
    conf_dir = "{run}/cni/net.d"

[proxy_plugins]
  [proxy_plugins.thinlayer]
    type = "snapshot"
    address = "{serve}"
"#,
        base = p.base.display(),
        run = p.run.display(),
        sock = p.containerd_socket().display(),
        serve = p.serve_socket().display(),
    )
}

/// A client of containerd's snapshots API in `k8s.io`, on the thinlayer
/// snapshotter, on a runtime of its own.
struct Snapshots {
    rt: tokio::runtime::Runtime,
    client: api::snapshots_client::SnapshotsClient<tonic::transport::Channel>,
}

impl Snapshots {
    fn connect(socket: &Path) -> Result<Snapshots> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a runtime for the snapshots client")?;
        let channel = super::channel::unix_channel(&rt, socket).context("connect to containerd")?;
        Ok(Snapshots {
            rt,
            client: api::snapshots_client::SnapshotsClient::new(channel),
        })
    }

    /// A request in containerd's `k8s.io` namespace.
    fn request<T>(msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            "containerd-namespace",
            tonic::metadata::MetadataValue::from_static("k8s.io"),
        );
        r
    }

    /// Prepare `key` on `parent`: the mounts.
    fn prepare(
        &mut self,
        key: &str,
        parent: &str,
    ) -> Result<Vec<containerd_snapshots::api::types::Mount>> {
        let req = Self::request(api::PrepareSnapshotRequest {
            snapshotter: "thinlayer".into(),
            key: key.into(),
            parent: parent.into(),
            // Held from containerd's garbage collection, as a container's
            // record holds its writable layer.
            labels: [(
                "containerd.io/gc.root".to_string(),
                "kubelet-bench".to_string(),
            )]
            .into(),
        });
        let r = self
            .rt
            .block_on(self.client.prepare(req))
            .with_context(|| format!("prepare {key} on {parent} through containerd"))?;
        Ok(r.into_inner().mounts)
    }

    fn remove(&mut self, key: &str) -> Result<()> {
        let req = Self::request(api::RemoveSnapshotRequest {
            snapshotter: "thinlayer".into(),
            key: key.into(),
        });
        self.rt
            .block_on(self.client.remove(req))
            .with_context(|| format!("remove {key} through containerd"))?;
        Ok(())
    }

    /// The committed snapshots of the namespace, by name.
    fn committed(&mut self) -> Result<Vec<String>> {
        let req = Self::request(api::ListSnapshotsRequest {
            snapshotter: "thinlayer".into(),
            filters: Vec::new(),
        });
        let mut stream = self
            .rt
            .block_on(self.client.list(req))
            .context("list the snapshots through containerd")?
            .into_inner();
        let mut names = Vec::new();
        while let Some(page) = self
            .rt
            .block_on(stream.message())
            .context("list the snapshots through containerd")?
        {
            names.extend(
                page.info
                    .into_iter()
                    .filter(|i| i.kind == api::Kind::Committed as i32)
                    .map(|i| i.name),
            );
        }
        Ok(names)
    }
}

/// One sample line of the Prometheus text: its metric name, its labels.
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// serve's metrics at one moment.
struct Scrape(Vec<Series>);

impl Scrape {
    fn take(addr: SocketAddr) -> Result<Scrape> {
        let mut c = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
        c.set_read_timeout(Some(Duration::from_secs(60)))?;
        write!(c, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut answer = String::new();
        c.read_to_string(&mut answer)
            .with_context(|| format!("read the metrics of {addr}"))?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .with_context(|| format!("no HTTP head in the metrics of {addr}"))?;
        ensure!(
            head.starts_with("HTTP/1.1 200"),
            "the metrics of {addr} answered {head:?}"
        );
        let mut all = Vec::new();
        for l in body
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (series, value) = l
                .rsplit_once(' ')
                .with_context(|| format!("not a sample line: {l:?}"))?;
            let value: f64 = value
                .parse()
                .with_context(|| format!("bad value in {l:?}"))?;
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let rest = rest.trim_end_matches('}');
                    let labels = rest
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv
                                .split_once('=')
                                .with_context(|| format!("bad label in {l:?}"))?;
                            Ok((k.to_string(), v.trim_matches('"').to_string()))
                        })
                        .collect::<Result<_>>()?;
                    (name, labels)
                }
            };
            all.push(Series {
                name: name.to_string(),
                labels,
                value,
            });
        }
        Ok(Scrape(all))
    }

    /// The sum of the series of `name` whose labels include `want`.
    fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| {
                s.name == name
                    && want
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// A histogram's cumulative bucket counts by upper bound (`+Inf` as
    /// infinity), summed over the series whose labels include `want`.
    fn buckets(&self, name: &str, want: &[(&str, &str)]) -> BTreeMap<u64, f64> {
        let mut b = BTreeMap::new();
        for s in self.0.iter().filter(|s| {
            s.name == format!("{name}_bucket")
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        }) {
            let le: f64 = s
                .labels
                .get("le")
                .and_then(|le| le.parse().ok())
                .unwrap_or(f64::INFINITY);
            // Bounds as bit patterns sort as the numbers do (all positive).
            *b.entry(le.to_bits()).or_insert(0.0) += s.value;
        }
        b
    }
}

/// What a histogram counted between two scrapes: observations, their sum,
/// and the upper bound of the bucket that holds the largest (infinity if
/// it is above the last bound; zero if none).
#[derive(Clone, Copy, Debug)]
struct Between {
    count: f64,
    sum: f64,
    max_bound: f64,
}

impl Between {
    fn of(before: &Scrape, after: &Scrape, name: &str, want: &[(&str, &str)]) -> Between {
        let count =
            after.sum(&format!("{name}_count"), want) - before.sum(&format!("{name}_count"), want);
        let sum =
            after.sum(&format!("{name}_sum"), want) - before.sum(&format!("{name}_sum"), want);
        let (b0, b1) = (before.buckets(name, want), after.buckets(name, want));
        let max_bound = if count <= 0.0 {
            0.0
        } else {
            b1.iter()
                .find(|(le, n)| **n - b0.get(le).copied().unwrap_or(0.0) >= count)
                .map_or(f64::INFINITY, |(le, _)| f64::from_bits(*le))
        };
        Between {
            count,
            sum,
            max_bound,
        }
    }

    fn mean(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count
        } else {
            0.0
        }
    }
}

const CALLS: &str = "thinlayer_snapshotter_call_duration_seconds";
const STEPS: &str = "thinlayer_step_duration_seconds";

/// serve's CPU time so far, seconds: its own (user + system) and that of
/// its children it waited for (`thin_dump` and the other tools it runs).
fn cpu_of(pid: u32) -> Result<(f64, f64)> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // After the command's name (in parentheses, which may hold spaces):
    // state is field 3; utime, stime, cutime, cstime are fields 14 to 17.
    let rest = stat
        .rsplit_once(')')
        .with_context(|| format!("no command name in {path}"))?
        .1;
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().with_context(|| format!("a bad field in {path}")))
        .collect::<Result<_>>()?;
    ensure!(f.len() == 4, "{path} has too few fields");
    // In clock ticks of USER_HZ, which Linux fixes at 100 for /proc.
    Ok(((f[0] + f[1]) / 100.0, (f[2] + f[3]) / 100.0))
}

/// Waits until serve has seen a whole poll of the `expected` snapshots
/// the namespace holds: as many Stat calls as them since `from`, then no
/// more for a while (the poll is over).
fn await_poll(p: &Peers, from: f64, expected: usize) -> Result<()> {
    let started = Instant::now();
    let stats = || -> Result<f64> {
        Ok(Scrape::take(p.metrics)?.sum(&format!("{CALLS}_count"), &[("method", "stat")]))
    };
    let mut last = stats()?;
    let mut still = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = stats()?;
        if now != last {
            last = now;
            still = Instant::now();
        } else if now - from >= expected as f64 && still.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "cow: {KUBELET}: a poll of {expected} snapshots seen after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() > DEADLINE {
            bail!(
                "never happened: serve sees a poll of {expected} snapshots (Stat calls {} since the start, deadline {DEADLINE:?}); {}",
                now - from,
                p.logs()
            );
        }
    }
}

/// Prepares and removes a snapshot through containerd every
/// [`CHURN_EVERY`] until `stop`: each Prepare's time.
fn churn(socket: &Path, parent: &str, tag: &str, stop: &AtomicBool) -> Result<Vec<f64>> {
    let mut c = Snapshots::connect(socket)?;
    let mut times = Vec::new();
    let mut next = Instant::now();
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("kubelet-churn-{tag}-{i}");
        let t = Instant::now();
        c.prepare(&key, parent)?;
        times.push(t.elapsed().as_secs_f64());
        c.remove(&key)?;
        next += CHURN_EVERY;
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(times)
}

/// The two kinds of window, as the figures' column: polling alone, and
/// polling with a Prepare and a Remove every [`CHURN_EVERY`].
pub const QUIET: &str = "polling alone";
pub const CHURNED: &str = "with Prepares";

/// A window's snapshots, whether Prepares ran in it, and its figures.
type Window = (u64, bool, Vec<Vec<f64>>);

/// One window of polling with `n` container snapshots live, with Prepares
/// and Removes if `churned`: the figures of [`KUBELET_METRICS`], in order.
fn window(p: &Peers, parent: &str, n: usize, seconds: u64, churned: bool) -> Result<Vec<Vec<f64>>> {
    let pid = p.serve_pid().context("serve is not running")?;
    let stop = AtomicBool::new(false);
    let socket = p.containerd_socket();
    let tag = n.to_string();
    let (before, after, cpu0, cpu1, wall, prepares) = std::thread::scope(|s| {
        let churner = churned.then(|| s.spawn(|| churn(&socket, parent, &tag, &stop)));
        let measured = (|| -> Result<_> {
            let before = Scrape::take(p.metrics)?;
            let cpu0 = cpu_of(pid)?;
            let t = Instant::now();
            std::thread::sleep(Duration::from_secs(seconds));
            let after = Scrape::take(p.metrics)?;
            let cpu1 = cpu_of(pid)?;
            Ok((before, after, cpu0, cpu1, t.elapsed().as_secs_f64()))
        })();
        stop.store(true, Ordering::Relaxed);
        let prepares = match churner {
            Some(c) => c
                .join()
                .map_err(|_| anyhow!("the Prepare thread panicked"))?,
            None => Ok(Vec::new()),
        };
        let (before, after, cpu0, cpu1, wall) = measured?;
        Ok::<_, anyhow::Error>((before, after, cpu0, cpu1, wall, prepares?))
    })?;
    let per_minute = |v: f64| v * 60.0 / wall;
    let calls = |m: &str| {
        after.sum(&format!("{CALLS}_count"), &[("method", m)])
            - before.sum(&format!("{CALLS}_count"), &[("method", m)])
    };
    let usage = Between::of(&before, &after, CALLS, &[("method", "usage")]);
    let dumps = Between::of(&before, &after, STEPS, &[("step", "dump")]);
    let usage_locks = Between::of(&before, &after, STEPS, &[("op", "usage"), ("step", "lock")]);
    let prepare_lock = Between::of(
        &before,
        &after,
        STEPS,
        &[("op", "prepare"), ("step", "lock")],
    );
    eprintln!(
        "cow: {KUBELET}: {n} snapshots, {}, {wall:.0} s: serve CPU {:.2} s + children {:.2} s; {} usage, {} stat calls; {} dumps; {} prepares",
        if churned { CHURNED } else { QUIET },
        cpu1.0 - cpu0.0,
        cpu1.1 - cpu0.1,
        usage.count,
        calls("stat"),
        dumps.count,
        prepares.len()
    );
    Ok(vec![
        vec![per_minute(cpu1.0 - cpu0.0)],
        vec![per_minute(cpu1.1 - cpu0.1)],
        vec![wall],
        vec![per_minute(usage.count)],
        vec![per_minute(calls("stat"))],
        vec![per_minute(calls("list"))],
        vec![per_minute(dumps.count)],
        vec![dumps.mean()],
        vec![usage.mean()],
        vec![usage.max_bound],
        vec![per_minute(usage_locks.count)],
        vec![prepare_lock.mean()],
        vec![prepare_lock.max_bound],
        prepares.clone(),
        vec![prepares.len() as f64],
    ])
}

/// The image: static busybox and a few small files, one layer, as a
/// `docker save` archive.
fn image(dir: &Path) -> Result<PathBuf> {
    let busybox = fs::read("/bin/busybox").context("read /bin/busybox (busybox-static)")?;
    let mut l = LayerBuilder::new();
    l.dir("bin", 0o755).file("bin/busybox", &busybox, 0o755);
    for applet in ["sh", "cat", "ls", "sleep"] {
        l.symlink(&format!("bin/{applet}"), "busybox");
    }
    l.dir("etc", 0o755)
        .file("etc/hostname", b"kubelet-bench\n", 0o644);
    let path = dir.join("kubelet-image.tar");
    write_docker_save(&path, IMAGE, &[l.finish()])
        .map_err(|e| anyhow!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// Writes [`WRITTEN`] bytes into the snapshot of `mounts` and syncs: into
/// the directory a bind mount names (thinlayer's own mount of it), else
/// through a mount of it of our own.
fn write_into(mounts: &[containerd_snapshots::api::types::Mount], at: &Path) -> Result<()> {
    let m = mounts.first().context("a Prepare without mounts")?;
    let (dir, ours) = if m.r#type == "bind" {
        (PathBuf::from(&m.source), false)
    } else {
        fs::create_dir_all(at)?;
        let opts = m.options.join(",");
        nix::mount::mount(
            Some(m.source.as_str()),
            at,
            Some(m.r#type.as_str()),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .with_context(|| format!("mount {} on {}", m.source, at.display()))?;
        (at.to_path_buf(), true)
    };
    let wrote = super::workloads::write_file(&dir.join("written"), WRITTEN);
    if ours {
        nix::mount::umount(at).with_context(|| format!("unmount {}", at.display()))?;
    }
    wrote
}

/// Sets up, measures both windows, takes down.
fn measure(p: &mut Peers, cfg: &Config, res: &mut Results) -> Result<Vec<Window>> {
    let tree = containerd_tree()?;
    p.make_thin(8 << 30, 256 << 20, "1G")?;
    p.start_serve()?;
    let config = p.base.join("containerd.toml");
    fs::write(&config, containerd_config(p))?;
    p.start_containerd(&tree.join("usr/bin/containerd"), &config)?;
    let archive = image(&p.base)?;
    let t = Instant::now();
    run_ok(
        Command::new(tree.join("usr/bin/ctr"))
            .arg("--address")
            .arg(p.containerd_socket())
            .args([
                "-n",
                "k8s.io",
                "images",
                "import",
                "--snapshotter",
                "thinlayer",
            ])
            .arg(&archive),
    )
    .with_context(|| format!("import the image; {}", p.logs()))?;
    eprintln!(
        "cow: {KUBELET}: image imported in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut c = Snapshots::connect(&p.containerd_socket())?;
    let committed = c.committed()?;
    let [parent] = &committed[..] else {
        bail!("the image should have one committed snapshot in k8s.io, not {committed:?}");
    };
    let n = cfg.kubelet_snapshots;
    let seconds = cfg.kubelet_seconds;
    let stat_count = || -> Result<f64> {
        Ok(Scrape::take(p.metrics)?.sum(&format!("{CALLS}_count"), &[("method", "stat")]))
    };
    // The image alone: its layer.
    await_poll(p, stat_count()?, 1)?;
    let mut out = Vec::new();
    for churned in [false, true] {
        out.push((0, churned, window(p, parent, 0, seconds, churned)?));
    }
    let t = Instant::now();
    let mnt = p.base.join("mnt");
    for i in 0..n {
        // As the CRI plugin names a container's writable layer.
        let key = format!("kubelet-container-{i:04}");
        let mounts = c.prepare(&key, parent)?;
        if i % WRITE_EVERY == 0 {
            write_into(&mounts, &mnt)?;
        }
        if (i + 1) % 50 == 0 {
            eprintln!(
                "cow: {KUBELET}: {} snapshots made in {:.0} s",
                i + 1,
                t.elapsed().as_secs_f64()
            );
        }
    }
    let made = t.elapsed().as_secs_f64();
    await_poll(p, stat_count()?, n + 1)?;
    for churned in [false, true] {
        out.push((n as u64, churned, window(p, parent, n, seconds, churned)?));
    }
    res.setup.push((
        "kubelet".into(),
        format!(
            "containerd {} (Debian 13's) with its CRI plugin, `snapshotter = \"thinlayer\"` (proxy plugin), `stats_collect_period = {POLL_PERIOD}`; `thinlayer serve` with `--metrics-address` on a thin pool of 64 KiB blocks (8 GiB data, 256 MiB metadata, base devices 1G); {n} container snapshots of a one-layer image (busybox) made through containerd's snapshots API in {made:.0} s, every {WRITE_EVERY}th with {} written and synced; a collection after every removal",
            containerd_version(&tree),
            WRITTEN >> 20
        ),
    ));
    Ok(out)
}

fn containerd_version(tree: &Path) -> String {
    run_ok(Command::new(tree.join("usr/bin/containerd")).arg("--version"))
        .ok()
        .and_then(|o| o.split_whitespace().nth(2).map(str::to_string))
        .unwrap_or_else(|| "of unknown version".into())
}

/// Runs the workload.
pub fn run(dir: &Path, cfg: &Config, res: &mut Results) -> Result<()> {
    let mut p = Peers::new(dir)?;
    let measured = measure(&mut p, cfg, res);
    let down = p.down();
    let windows = measured?;
    for (n, churned, values) in windows {
        for ((metric, unit), v) in KUBELET_METRICS.into_iter().zip(values) {
            res.push(Figure {
                workload: KUBELET,
                metric,
                unit,
                param: n,
                baseline: if churned { CHURNED } else { QUIET }.into(),
                values: Ok(v),
            });
        }
    }
    down.context("tear down the kubelet workload")
}
