//! The `thinlayer` command: argument wiring and presentation only; the work
//! is the [`crate::driver`]'s.

mod container;
mod diff;
mod image;
mod output;
mod pool;
mod progress;
mod ps;
mod serve;
mod system;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::Driver;
use crate::error::Error;
use crate::kernel::{Kernel, Linux};
use crate::metrics::steps::StepTimer;

/// Block-level copy-on-write storage for containers.
///
/// Image layers and container layers are thin snapshots in a device-mapper
/// thin pool: two containers of one image share every block of it, and the
/// first write to a big file copies one pool block, not the whole file.
///
/// Start with `thinlayer pool init`, then `container create scratch NAME`,
/// `container mount NAME`, write into the printed path, `container umount NAME`,
/// `container commit NAME IMAGE` and `container create IMAGE OTHER`.
/// `ps -s` shows each container's size and virtual size, as `docker ps -s`.
#[derive(Parser, Debug)]
#[command(
    name = "thinlayer",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Directory holding the pool's files, records and mount points.
    #[arg(
        long,
        global = true,
        env = "THINLAYER_ROOT",
        default_value = "/var/lib/thinlayer"
    )]
    pub root: PathBuf,

    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output on stderr (-v info, -vv debug, -vvv trace); or set THINLAYER_LOG.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create, activate, inspect and destroy the thin pool.
    #[command(subcommand)]
    Pool(pool::PoolCmd),
    /// Create, mount, commit and remove containers.
    #[command(subcommand)]
    Container(container::ContainerCmd),
    /// Import, export, inspect, list and remove images.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Write a container's changes against its image as an OCI layer tar.
    Diff(diff::DiffArgs),
    /// List containers, with their sizes given -s.
    ///
    /// DEVICE SIZE is the container's block device: what `df` inside shows,
    /// filesystem overhead aside (its image's, or its `container create
    /// --size`).
    Ps(ps::PsArgs),
    /// Show the layer tree with thin device ids.
    Tree,
    /// Serve containerd's snapshotter API on a unix socket.
    ///
    /// Add `[proxy_plugins.thinlayer]` with `type = "snapshot"` and
    /// `address = "SOCKET"` to containerd's config, then use
    /// `ctr --snapshotter thinlayer` (or the CRI plugin's `snapshotter`).
    /// Runs until SIGTERM or SIGINT; `ps` and `tree` show containerd's snapshots.
    /// It also grows the pool by its autoextend policy (`pool set --help`), and
    /// serves Prometheus metrics with --metrics-address.
    Serve(serve::ServeArgs),
    /// Disk usage of images, containers and the pool (`system df`).
    #[command(subcommand)]
    System(system::SystemCmd),
}

/// Exit codes, for scripts.
pub mod exit {
    /// Anything not listed below.
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: u8 = 2;
    /// A name, image or pool that does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// A name that is taken, or a pool that is already there.
    pub const EXISTS: u8 = 4;
    /// A layer that is mounted, in use or has children.
    pub const BUSY: u8 = 5;
    /// The pool is out of space, or below its free-space reserve.
    pub const NO_SPACE: u8 = 6;
    /// This system cannot run thinlayer: no device-mapper, or not root.
    pub const ENVIRONMENT: u8 = 7;
    /// The pool or the records need repair.
    pub const DAMAGED: u8 = 8;
    /// An image archive or layer that is malformed, unsafe or fails its digest.
    pub const BAD_INPUT: u8 = 9;
    /// The kernel or a tool answered something thinlayer cannot read.
    pub const UNEXPECTED: u8 = 10;
}

fn exit_code(err: &anyhow::Error) -> u8 {
    let Some(e) = err.chain().find_map(|c| c.downcast_ref::<Error>()) else {
        return exit::FAILURE;
    };
    match e {
        Error::NotFound { .. } | Error::NotInitialized { .. } => exit::NOT_FOUND,
        Error::Exists { .. } | Error::AlreadyInitialized { .. } => exit::EXISTS,
        Error::Busy { .. } | Error::HasChildren { .. } => exit::BUSY,
        Error::NoSpace { .. } | Error::PoolMode { .. } => exit::NO_SPACE,
        Error::NoDeviceMapper { .. } | Error::NotRoot => exit::ENVIRONMENT,
        Error::Inconsistent { .. }
        | Error::CheckFailed { .. }
        | Error::PoolFailed { .. }
        | Error::CorruptRecords { .. }
        | Error::CorruptTree { .. } => exit::DAMAGED,
        Error::Unexpected { .. } => exit::UNEXPECTED,
        Error::Invalid { .. } => exit::USAGE,
        Error::UnsafeEntry { .. } | Error::Archive { .. } | Error::Digest { .. } => exit::BAD_INPUT,
        Error::Kernel {
            errno: Some(nix::errno::Errno::ENOSPC),
            ..
        } => exit::NO_SPACE,
        _ => exit::FAILURE,
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _};
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter =
        EnvFilter::try_from_env("THINLAYER_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_filter(filter);
    // Operations and their steps are timed whatever is logged: `serve`
    // shows them in its metrics.
    let steps = StepTimer.with_filter(StepTimer::filter());
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(steps)
        .try_init();
}

/// What every subcommand gets.
pub struct Ctx {
    pub root: PathBuf,
    pub json: bool,
    /// How many times `-v` was given: more logs, and more detail where a
    /// command has it (`system df -v`).
    pub verbose: u8,
    pub kernel: Arc<dyn Kernel>,
}

impl Ctx {
    /// Opens the root, activating the pool and repairing leftovers.
    pub fn open(&self) -> anyhow::Result<Driver> {
        Driver::open(&self.root, self.kernel.clone())
            .with_context(|| format!("cannot open thinlayer root {}", self.root.display()))
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let ctx = Ctx {
        root: absolute(&cli.root),
        json: cli.json,
        verbose: cli.verbose,
        kernel: Arc::new(Linux::new()),
    };
    match run(&ctx, cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thinlayer: error: {}", error_text(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The error and its causes, as `{:#}` joins them, but without the cause of
/// a kernel error: its message already says what that cause says.
fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for (i, cause) in err.chain().enumerate() {
        if i > 0 {
            text.push_str(": ");
        }
        text.push_str(&cause.to_string());
        if let Some(Error::Kernel { .. }) = cause.downcast_ref::<Error>() {
            break;
        }
    }
    text
}

fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Runs a command and prints its answer: the one place where commands'
/// answers reach stdout.
pub fn run(ctx: &Ctx, command: Command) -> anyhow::Result<()> {
    answer(ctx, command)?.print(ctx.json)
}

fn answer(ctx: &Ctx, command: Command) -> anyhow::Result<output::Report> {
    match command {
        Command::Pool(c) => pool::run(ctx, c),
        Command::Container(c) => container::run(ctx, c),
        Command::Image(c) => image::run(ctx, c),
        Command::Diff(a) => diff::diff(ctx, a),
        Command::Ps(a) => ps::ps(ctx, a),
        Command::Tree => ps::tree(ctx),
        Command::Serve(a) => serve::serve(ctx, a),
        Command::System(c) => system::run(ctx, c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn errors_map_to_exit_codes() {
        let code = |e: Error| exit_code(&anyhow::Error::from(e).context("while testing"));
        assert_eq!(code(Error::not_found("layer", "x")), exit::NOT_FOUND);
        assert_eq!(code(Error::NotRoot), exit::ENVIRONMENT);
        assert_eq!(
            code(Error::HasChildren {
                name: "a".into(),
                children: vec!["b".into()]
            }),
            exit::BUSY
        );
        assert_eq!(
            code(Error::NoSpace {
                what: "data",
                detail: String::new()
            }),
            exit::NO_SPACE
        );
        // Three kinds of "cannot read this": the user's, the kernel's, ours.
        assert_eq!(code(Error::invalid("size", "x", "not a size")), exit::USAGE);
        assert_eq!(
            code(Error::unexpected("thin-pool status", "?", "no fields")),
            exit::UNEXPECTED
        );
        assert_eq!(
            code(Error::CorruptTree {
                key: "a".into(),
                why: "loops".into()
            }),
            exit::DAMAGED
        );
        assert_eq!(exit_code(&anyhow::anyhow!("other")), exit::FAILURE);
    }

    #[test]
    fn a_kernel_error_is_told_without_its_source() {
        let kernel = Error::Kernel {
            op: "remove device",
            object: "pool".into(),
            errno: None,
            detail: "gone".into(),
            source: Some("the library's words".into()),
        };
        let e = anyhow::Error::from(kernel).context("cannot remove");
        assert_eq!(error_text(&e), "cannot remove: remove device pool: gone");
        let io = Error::io("read", "/r", std::io::Error::other("bad"));
        let e = anyhow::Error::from(io).context("cannot open");
        assert_eq!(error_text(&e), format!("{e:#}"));
    }
}
