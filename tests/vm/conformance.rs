//! containerd's own snapshotter conformance suite (`snapshots/testsuite`
//! of containerd 1.6, from Debian's Go sources) against `thinlayer serve`
//! through containerd's proxy snapshotter client, on ext4 and on xfs; and,
//! through the same harness, against containerd's `native` and `overlay`
//! snapshotters as a control.
//!
//! The suite is the Go test binary of `vm-tests/conformance`, which
//! `vm-tests/cargo-runner` builds on the host before this binary runs. Each
//! of the suite's subtests gets a fresh thinlayer root `root-N` in the
//! fixture's directory (its own pool and server); the suite's own temporary
//! directories, where it mounts snapshots, are in the fixture's directory
//! too, so the fixture's leak checks see everything.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::fixture::{self, Fixture};

/// The subtests `SnapshotterSuite` runs: its 21 `t.Run` calls
/// (snapshots/testsuite/testsuite.go in containerd 1.6).
const SUBTESTS: usize = 21;

/// The subtests the suite skips whatever the snapshotter: `checkRename`
/// calls `t.Skip` before doing anything (issues.go). Its only other skip,
/// in 128LayersMount, is for a snapshotter named "Aufs". Any other skip
/// fails the test.
const SKIPPED: &[&str] = &["Rename"];

/// `-test.timeout` of one run of the suite: a hang ends with Go's goroutine
/// dump rather than with the VM's timeout.
const GO_TIMEOUT: &str = "30m";

#[test]
fn thinlayer_ext4() {
    thinlayer("ext4");
}

#[test]
fn thinlayer_xfs() {
    thinlayer("xfs");
}

#[test]
fn native_control() {
    fixture::run("conformance-native", |fx| {
        verdict("native", run_suite(fx, "TestNative", &[]));
    });
}

#[test]
fn overlay_control() {
    fixture::run("conformance-overlay", |fx| {
        verdict("overlay", run_suite(fx, "TestOverlay", &[]));
    });
}

fn thinlayer(fs: &str) {
    fixture::run(&format!("conformance-{fs}"), |fx| {
        let dir = fx.dir.display().to_string();
        let run = run_suite(
            fx,
            "TestThinlayer",
            &[
                ("THINLAYER_CONFORMANCE_BIN", env!("CARGO_BIN_EXE_thinlayer")),
                ("THINLAYER_CONFORMANCE_FS", fs),
                ("THINLAYER_CONFORMANCE_DIR", &dir),
            ],
        );
        // The harness numbers the roots root-1, root-2, ... in the order the
        // subtests ask for a snapshotter, one each: the fixture tears down
        // and checks for leaks whatever a subtest left of them.
        for n in 1..=run.0.ran.len() {
            fx.with_another_root(&format!("root-{n}"), |_| {});
        }
        verdict(&format!("thinlayer/{fs}"), run);
    });
}

/// The Go test binary: `conformance/suite.test` next to this build's
/// binaries (where vm-tests/cargo-runner puts it).
fn suite_binary() -> PathBuf {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_thinlayer"))
        .parent()
        .expect("thinlayer's directory")
        .join("conformance/suite.test");
    assert!(
        bin.exists(),
        "{} is missing: vm-tests/cargo-runner builds it before the device tests \
         (cargo test --features failpoints --test vm); by hand, on the host: \
         cd vm-tests/conformance && GO111MODULE=off GOPATH=/usr/share/gocode \
         go test -c -o {} . (Go and containerd's sources: vm-tests/setup)",
        bin.display(),
        bin.display()
    );
    bin
}

/// What one run of the suite printed, by subtest.
#[derive(Default)]
struct Report {
    /// Subtests started (`=== RUN`).
    ran: BTreeSet<String>,
    passed: BTreeSet<String>,
    failed: BTreeSet<String>,
    skipped: BTreeSet<String>,
    /// Each subtest's log lines.
    logs: BTreeMap<String, Vec<String>>,
}

impl Report {
    /// Takes one line of `go test -test.v` output of the test `top`.
    fn take(&mut self, top: &str, line: &str, current: &mut Option<String>) {
        let sub = |name: &str| {
            name.strip_prefix(top)?
                .strip_prefix('/')
                .map(str::to_string)
        };
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("=== ") {
            let mut words = rest.split_whitespace();
            let (event, name) = (words.next(), words.next().and_then(sub));
            if event == Some("RUN") {
                self.ran.extend(name.clone());
            }
            *current = name;
            return;
        }
        for (tag, set) in [
            ("--- PASS: ", &mut self.passed),
            ("--- FAIL: ", &mut self.failed),
            ("--- SKIP: ", &mut self.skipped),
        ] {
            if let Some(rest) = trimmed.strip_prefix(tag) {
                let name = rest.split_whitespace().next().and_then(sub);
                set.extend(name.clone());
                *current = name;
                return;
            }
        }
        if let Some(name) = current {
            self.logs
                .entry(name.clone())
                .or_default()
                .push(line.to_string());
        }
    }

    /// A failed subtest's messages, without the listing of its directory
    /// that containerd's test helpers print on failure.
    fn messages(&self, name: &str) -> Vec<&str> {
        let is_listing = |l: &&String| {
            let l = l.trim_start();
            l.starts_with("helpers.go:")
                && l.split_whitespace().nth(1).is_some_and(|mode| {
                    mode.len() == 10 && mode.chars().skip(1).all(|c| "rwxsStT-".contains(c))
                })
        };
        self.logs
            .get(name)
            .into_iter()
            .flatten()
            .filter(|l| !is_listing(l))
            .map(String::as_str)
            .collect()
    }
}

/// Runs the suite's test `top` with `env` and prints its output.
fn run_suite(fx: &Fixture, top: &str, env: &[(&str, &str)]) -> (Report, ExitStatus, Duration) {
    let bin = suite_binary();
    // The suite's temporary directories (snapshotter roots, mount points):
    // on the scratch disk, under the fixture's eye.
    let tmp = fx.dir.join("tmp");
    fs::create_dir_all(&tmp).expect("create the suite's TMPDIR");
    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut cmd = Command::new(&bin);
    cmd.args(["-test.v", "-test.timeout", GO_TIMEOUT, "-test.run"])
        .arg(format!("^{top}$"))
        .env("TMPDIR", &tmp)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(writer.try_clone().expect("pipe"))
        .stderr(writer);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    // Our ends of the pipe's write side go, so reading ends with the suite.
    drop(cmd);
    let mut report = Report::default();
    let mut current = None;
    for line in BufReader::new(reader).lines() {
        let line = line.expect("read the suite's output");
        println!("{line}");
        report.take(top, &line, &mut current);
    }
    let status = child.wait().expect("wait for the suite");
    (report, status, started.elapsed())
}

/// Prints a summary of a run of the suite and insists that every subtest
/// passed but those the suite always skips.
fn verdict(label: &str, (report, status, took): (Report, ExitStatus, Duration)) {
    println!(
        "conformance {label}: {} passed, {} failed, {} skipped",
        report.passed.len(),
        report.failed.len(),
        report.skipped.len()
    );
    println!("conformance {label}: took {:.0} s", took.as_secs_f64());
    for name in &report.failed {
        println!("--- {label} {name} failed:");
        for l in report.messages(name) {
            println!("{l}");
        }
    }
    assert!(
        report.failed.is_empty(),
        "conformance {label}: subtests failed: {:?}",
        report.failed
    );
    assert!(
        status.success(),
        "conformance {label}: the suite exited with {status}"
    );
    let expected: BTreeSet<String> = SKIPPED.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        report.skipped, expected,
        "conformance {label}: the suite skips only {SKIPPED:?}, for every snapshotter"
    );
    assert_eq!(
        report.passed.len(),
        SUBTESTS - SKIPPED.len(),
        "conformance {label}: the suite has {SUBTESTS} subtests, all to pass but {SKIPPED:?}; passed: {:?}",
        report.passed
    );
}
