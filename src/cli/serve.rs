//! `thinlayer serve`: containerd's snapshotter service on a unix socket.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;
use containerd_snapshots::tonic::transport::Server;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;

use super::Ctx;
use super::output::{Done, Report};
use crate::Driver;
use crate::service::Snapshots;
use crate::service::autoextend::{INTERVAL, Watcher};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The unix socket to listen on: containerd's
    /// `[proxy_plugins.NAME] address`. A stale socket file there is
    /// replaced; one another process still answers on is refused. Made
    /// mode 0600 (only root may call it), removed on SIGTERM or SIGINT.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,

    /// Serve Prometheus metrics at http://ADDRESS/metrics: the pool's data
    /// and metadata space and mode, layers by kind, and the latency and
    /// errors of every snapshotter call. An IP address and port, e.g.
    /// 127.0.0.1:9323 (this host only) or [::]:9323 (every interface; the
    /// endpoint has no authentication). Off when not given.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_address: Option<SocketAddr>,

    /// Writable snapshots kept ready, mounted, for each of the two parents
    /// most recently prepared on a second time (at most 8 in all; a
    /// parent prepared on once, a layer of a build, gets none), so that a Prepare
    /// on them only claims one: no kernel call, no mount. Each costs a
    /// pool block or two and a mounted filesystem; 0 turns them off.
    #[arg(long, value_name = "N", default_value_t = crate::service::housekeeper::SPARES as u8,
          value_parser = clap::value_parser!(u8).range(0..=8))]
    pub spares: u8,
}

/// Answers, once stopped by a signal, with what stopped: nothing for
/// people (the log says it), an object for scripts.
pub fn serve(ctx: &Ctx, a: ServeArgs) -> anyhow::Result<Report> {
    // Opening the root brings the pool up and settles whatever a killed
    // earlier server or command left, before any request is taken.
    let driver = Arc::new(
        Driver::open_checked(&ctx.root, ctx.kernel.clone())
            .with_context(|| format!("cannot open thinlayer root {}", ctx.root.display()))?,
    );
    let snapshots = Snapshots::with_spares(driver, usize::from(a.spares))
        .with_context(|| format!("cannot read the records of {}", ctx.root.display()))?;
    let socket = std::path::absolute(&a.socket).unwrap_or(a.socket);
    // Grows the pool before it fills, when its policy says so; stopped
    // (dropped) when the server stops.
    let _watcher = Watcher::start(snapshots.driver(), snapshots.metrics(), INTERVAL);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Reaps removals and keeps spares in the background; stopped once the
    // server stops: its spares dropped, pending removals reaped for a few
    // seconds.
    let keeper = snapshots.housekeeper();
    let served = rt.block_on(run(snapshots, &socket, &ctx.root, a.metrics_address));
    keeper.stop();
    served?;
    Done::new("stopped", "server", socket.display())
        .field("root", &ctx.root)
        .report()
}

async fn run(
    snapshots: Snapshots,
    socket: &Path,
    root: &Path,
    metrics_address: Option<SocketAddr>,
) -> anyhow::Result<()> {
    // The metrics endpoint is bound first: an address in use fails the
    // start, before containerd is told anything.
    let metrics = match metrics_address {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            let addr = l.local_addr().unwrap_or(addr);
            tracing::info!(%addr, "serving metrics at http://{addr}/metrics");
            Some(tokio::spawn(crate::metrics::http::serve(
                l,
                snapshots.metrics(),
                snapshots.driver(),
            )))
        }
        None => None,
    };
    let listener = bind(socket)?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    };
    tracing::info!(socket = %socket.display(), root = %root.display(), "serving containerd snapshots");
    let served = Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(snapshots)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = fs::remove_file(socket);
    if let Some(m) = metrics {
        m.abort();
    }
    served.with_context(|| format!("serving on {} failed", socket.display()))?;
    tracing::info!("stopped");
    Ok(())
}

/// Binds `socket` with mode 0600, replacing a stale socket file.
fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    match fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                bail!(
                    "{} is in use by a running server; stop it first",
                    socket.display()
                );
            }
            tracing::info!(socket = %socket.display(), "removing a stale socket");
            fs::remove_file(socket)
                .with_context(|| format!("cannot remove stale socket {}", socket.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it",
            socket.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", socket.display())),
    }
    if let Some(dir) = socket.parent() {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    // The socket is born without group or other access (umask), so that no
    // one else can connect before the chmod below.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(socket);
    nix::sys::stat::umask(old);
    let listener = bound.with_context(|| format!("cannot listen on {}", socket.display()))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of {}", socket.display()))?;
    Ok(listener)
}
