//! Bounded property-based fuzzing of the input parsers and the layer code,
//! run with the normal test suite (natively, as root for ownership).
//!
//! Each target runs a fixed number of generated cases (`CASES_*`, or
//! `PROPTEST_CASES` for all of them) and prints how many ran. Failing cases
//! are saved by proptest in `tests/fuzz.proptest-regressions` and replayed
//! first on every run; hand-made seeds are the `seed_*` tests.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;
use tar::EntryType;

use thinlayer::Error;
use thinlayer::image::build::{
    LayerBuilder, compress, read_layer, write_docker_save, write_oci_archive,
};
use thinlayer::image::{Compression, ImageArchive};
use thinlayer::layer::{apply_layer, compare_trees, write_diff};
use thinlayer::pool::{PoolOptions, SourceOptions, config_for};
use thinlayer::records::{Durability, Intent, Records, Store};
use thinlayer::tree::{Image, ImageRef, Kind, Layer, validate_container_name, validate_key};
use thinlayer::units::{BlockSize, Bytes, ThinId};

const CASES_APPLY: u32 = 2000;
const CASES_ROUND_TRIP: u32 = 600;
const CASES_ARCHIVE: u32 = 2000;
const CASES_RECORDS: u32 = 3000;
const CASES_JOURNAL: u32 = 1000;
const CASES_NAMES: u32 = 20000;

static RAN_APPLY: AtomicU64 = AtomicU64::new(0);
static RAN_ROUND_TRIP: AtomicU64 = AtomicU64::new(0);
static RAN_ARCHIVE: AtomicU64 = AtomicU64::new(0);
static RAN_RECORDS: AtomicU64 = AtomicU64::new(0);
static RAN_JOURNAL: AtomicU64 = AtomicU64::new(0);
static RAN_NAMES: AtomicU64 = AtomicU64::new(0);
/// Outcomes, to show the generators reach both sides.
static APPLY_OK: AtomicU64 = AtomicU64::new(0);
static ARCHIVE_OPENED: AtomicU64 = AtomicU64::new(0);
static ARCHIVE_LAYERS_OK: AtomicU64 = AtomicU64::new(0);
static RECORDS_LOADED: AtomicU64 = AtomicU64::new(0);
static JOURNAL_LOADED: AtomicU64 = AtomicU64::new(0);

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // Shrinking a failure stays bounded too.
        max_shrink_iters: 2000,
        // tests/fuzz.proptest-regressions, replayed first on every run.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Scratch directories

/// A directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let base = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let p = base.join(format!(
            "fuzz-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create scratch directory");
        Scratch(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn cp_a(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp -a");
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

fn listing(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Layer applier

/// Components names are made of: few, so that entries collide.
const COMPONENTS: &[&str] = &["a", "b", "c", ".wh.a", ".wh..wh..opq", "d.wh.", "e e"];

#[derive(Clone, Debug)]
enum Op {
    Dir(String, u32),
    File(String, Vec<u8>, u32),
    Symlink(String, String),
    Hardlink(String, String),
    Whiteout(String),
    Opaque(String),
    /// Name and link name bytes as given, through `raw_entry`.
    Raw {
        name: Vec<u8>,
        kind: u8,
        link: Option<Vec<u8>>,
        data: Vec<u8>,
    },
}

fn clean_path() -> impl Strategy<Value = String> {
    prop::collection::vec(select(COMPONENTS), 1..4).prop_map(|c| c.join("/"))
}

/// Where hostile names and link targets point. `@JAIL@` is replaced by the
/// absolute path of the jail directory when the layer is built.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        clean_path(),
        select(vec![
            "..",
            "../sentinel/escaped",
            "../sentinel",
            "a/../../sentinel/x",
            "a/../b",
            "./a",
            ".",
            "./",
            "",
            "/",
            "/@JAIL@/sentinel/abs",
            "@JAIL@/sentinel/abs",
            "a/./b/../c",
            "a//b",
            ".wh.",
            ".wh...",
            ".wh./x",
            "a/.wh.",
            "a/.wh...",
            "a/.wh../x",
            "a/..",
            "a",
            "a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a",
        ])
        .prop_map(str::to_string),
        // Long names (GNU long-name entries), near and past the limits.
        (1usize..300, select(vec!["a", "x/", "../"])).prop_map(|(n, s)| s.repeat(n)),
        "[a/.\\\\~ -]{0,12}",
    ]
}

/// NUL-free random bytes, biased to path punctuation.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        hostile_string().prop_map(String::into_bytes),
        prop::collection::vec(
            prop_oneof![
                4 => select(b"ab./".to_vec()),
                1 => 1u8..=255u8,
            ],
            0..40
        ),
    ]
}

fn symlink_target() -> impl Strategy<Value = String> {
    prop_oneof![
        hostile_string(),
        // Loops and chains through names of this layer.
        clean_path(),
        Just("a".to_string()),
        Just("../a".to_string()),
        Just("/".to_string()),
        Just("/@JAIL@".to_string()),
        Just("/@JAIL@/sentinel".to_string()),
        Just("../../..".to_string()),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (clean_path(), select(vec![0o755u32, 0o700, 0o1777, 0o000, 0o2755]))
            .prop_map(|(p, m)| Op::Dir(p, m)),
        4 => (clean_path(), prop::collection::vec(any::<u8>(), 0..64), select(vec![0o644u32, 0o4755, 0o000, 0o600]))
            .prop_map(|(p, d, m)| Op::File(p, d, m)),
        3 => (clean_path(), symlink_target()).prop_map(|(p, t)| Op::Symlink(p, t)),
        2 => (clean_path(), clean_path()).prop_map(|(p, t)| Op::Hardlink(p, t)),
        2 => clean_path().prop_map(Op::Whiteout),
        1 => clean_path().prop_map(Op::Opaque),
        4 => (
            hostile_bytes(),
            select(vec![b'0', b'5', b'2', b'1', b'6', b'x', b'g', b'L', b'Z']),
            prop::option::of(hostile_bytes()),
            prop::collection::vec(any::<u8>(), 0..16),
        )
            .prop_map(|(name, kind, link, data)| Op::Raw { name, kind, link, data }),
    ]
}

fn jailed(s: &str, jail: &Path) -> String {
    let j = jail.to_string_lossy();
    s.replace("/@JAIL@", &j).replace("@JAIL@", &j)
}

fn build_layer(ops: &[Op], jail: &Path) -> Vec<u8> {
    let mut b = LayerBuilder::new();
    for op in ops {
        match op {
            Op::Dir(p, m) => {
                b.dir(p, *m);
            }
            Op::File(p, d, m) => {
                b.file(p, d, *m);
            }
            Op::Symlink(p, t) => {
                let t = jailed(t, jail);
                if t.is_empty() || t.len() > 100 {
                    // tar::Builder refuses these; write them raw instead.
                    b.raw_entry(
                        p.as_bytes(),
                        EntryType::Symlink,
                        0o777,
                        &[],
                        Some(t.as_bytes()),
                    );
                } else {
                    b.symlink(p, &t);
                }
            }
            Op::Hardlink(p, t) => {
                b.hardlink(p, t);
            }
            Op::Whiteout(p) => {
                b.whiteout(p);
            }
            Op::Opaque(p) => {
                b.opaque(p);
            }
            Op::Raw {
                name,
                kind,
                link,
                data,
            } => {
                let name = jailed(&String::from_utf8_lossy(name), jail).into_bytes();
                let link = link
                    .as_ref()
                    .map(|l| jailed(&String::from_utf8_lossy(l), jail).into_bytes());
                let kind = EntryType::new(*kind);
                // Only regular files carry data in a well-formed tar.
                let data: &[u8] = if kind == EntryType::Regular {
                    data
                } else {
                    &[]
                };
                b.raw_entry(&name, kind, 0o644, data, link.as_deref());
            }
        }
    }
    b.finish()
}

/// The errors an applier may give for bad input.
fn acceptable_apply_error(e: &Error) -> bool {
    matches!(
        e,
        Error::UnsafeEntry { .. }
            | Error::Archive { .. }
            | Error::Io { .. }
            | Error::Invalid { .. }
    )
}

/// Applies `tar` into `JAIL/NAME` and checks nothing left it. Returns the result.
fn apply_jailed(jail: &Path, name: &str, tar: &[u8]) -> Result<(), String> {
    let target = jail.join(name);
    fs::create_dir(&target).unwrap();
    let before = listing(jail);
    let res = std::panic::catch_unwind(|| apply_layer(&target, tar));
    let res = match res {
        Ok(r) => r,
        Err(_) => panic!("apply_layer panicked"),
    };
    // Nothing outside the target.
    assert!(
        listing(&jail.join("sentinel")).is_empty(),
        "an entry escaped into the sentinel directory: {:?} (apply gave {res:?})",
        listing(&jail.join("sentinel"))
    );
    assert_eq!(
        listing(jail),
        before,
        "new files in the jail (apply gave {res:?})"
    );
    let md = fs::symlink_metadata(&target).unwrap();
    assert!(
        md.is_dir(),
        "the layer root was replaced (apply gave {res:?})"
    );
    match res {
        Ok(_) => Ok(()),
        Err(e) => {
            assert!(acceptable_apply_error(&e), "unexpected error kind: {e:?}");
            let msg = e.to_string();
            assert!(!msg.is_empty());
            Err(msg)
        }
    }
}

/// Parent directories the layer does not name are made at apply time and
/// keep that time as their mtime (documented: "created, mode 0755,
/// root-owned"); every time the generated layers give is far older. Sets
/// such directories, where both trees have one, to the same time.
fn settle_implicit_dir_times(a: &Path, b: &Path) {
    let recent = |p: &Path| {
        fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.mtime() > APPLY_TIME_FLOOR as i64)
    };
    for pa in all_paths(a) {
        let pb = b.join(pa.strip_prefix(a).unwrap());
        if recent(&pa) && recent(&pb) {
            set_mtime(&pa, 1, 0);
            set_mtime(&pb, 1, 0);
        }
    }
}

/// Later than every mtime the generated layers carry (`DEFAULT_MTIME`).
const APPLY_TIME_FLOOR: u64 = thinlayer::image::build::DEFAULT_MTIME + 1;

fn check_apply(ops: &[Op]) {
    let s = Scratch::new("apply");
    let jail = s.path().join("jail");
    fs::create_dir(&jail).unwrap();
    fs::create_dir(jail.join("sentinel")).unwrap();
    let tar = build_layer(ops, &jail);
    // Absolute names outside the jail: none may come into existence.
    let absolute: Vec<(PathBuf, bool)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Raw { name, .. } if name.first() == Some(&b'/') => {
                let p = PathBuf::from(jailed(&String::from_utf8_lossy(name), &jail));
                let existed = fs::symlink_metadata(&p).is_ok();
                Some((p, existed))
            }
            _ => None,
        })
        .collect();
    let first = apply_jailed(&jail, "one", &tar);
    if first.is_ok() {
        APPLY_OK.fetch_add(1, Ordering::Relaxed);
    }
    let second = apply_jailed(&jail, "two", &tar);
    assert_eq!(
        first.is_ok(),
        second.is_ok(),
        "the same layer gave {first:?} then {second:?}"
    );
    if first.is_ok() {
        settle_implicit_dir_times(&jail.join("one"), &jail.join("two"));
        if let Err(d) = compare_trees(&jail.join("one"), &jail.join("two")) {
            panic!("the same layer applied twice gave different trees:\n{d}");
        }
    }
    // Applying onto its own result must not escape either.
    let again = apply_layer(&jail.join("one"), tar.as_slice());
    if let Err(e) = &again {
        assert!(acceptable_apply_error(e), "unexpected error kind: {e:?}");
    }
    for (p, existed) in &absolute {
        assert_eq!(
            fs::symlink_metadata(p).is_ok(),
            *existed,
            "{} appeared or vanished",
            p.display()
        );
    }
    assert!(
        listing(&jail.join("sentinel")).is_empty(),
        "escaped on re-apply"
    );
}

proptest! {
    #![proptest_config(config(CASES_APPLY))]
    fn prop_layer_applier(ops in prop::collection::vec(op(), 0..12)) {
        RAN_APPLY.fetch_add(1, Ordering::Relaxed);
        check_apply(&ops);
    }
}

#[test]
fn fuzz_layer_applier() {
    prop_layer_applier();
    println!(
        "fuzz layer applier: {} cases executed ({} layers applied, the rest refused with an error)",
        RAN_APPLY.load(Ordering::Relaxed),
        APPLY_OK.load(Ordering::Relaxed)
    );
}

#[test]
fn seed_apply_escapes() {
    use Op::*;
    let raw = |name: &str, kind: u8, link: Option<&str>| Raw {
        name: name.as_bytes().to_vec(),
        kind,
        link: link.map(|l| l.as_bytes().to_vec()),
        data: b"x".to_vec(),
    };
    let seeds: Vec<Vec<Op>> = vec![
        vec![raw("/@JAIL@/sentinel/abs", b'0', None)],
        vec![raw("../sentinel/up", b'0', None)],
        vec![
            Symlink("a".into(), "../sentinel".into()),
            raw("a/x", b'0', None),
        ],
        vec![
            Symlink("a".into(), "/@JAIL@/sentinel".into()),
            raw("a/x", b'0', None),
        ],
        vec![
            Symlink("a".into(), "b".into()),
            Symlink("b".into(), "a".into()),
            raw("a/x", b'0', None),
        ],
        vec![
            Symlink("a".into(), "a".into()),
            File("a/b".into(), b"x".to_vec(), 0o644),
        ],
        vec![raw("h", b'1', Some("../sentinel/x"))],
        vec![raw("h", b'1', Some("/etc/passwd"))],
        vec![
            Symlink("a".into(), "../sentinel".into()),
            raw("h", b'1', Some("a")),
        ],
        vec![
            Symlink("a".into(), "..".into()),
            raw("a/sentinel/x", b'0', None),
        ],
        vec![raw("./", b'2', Some("../sentinel"))],
        vec![raw(".", b'2', Some("/"))],
        vec![raw(&"x/".repeat(200), b'0', None)],
        vec![
            raw(".wh.sentinel", b'0', None),
            raw("../.wh.sentinel", b'0', None),
        ],
        vec![
            Dir("a".into(), 0o755),
            Whiteout("a".into()),
            Opaque("a".into()),
            File("a/b".into(), vec![], 0),
        ],
        vec![raw("a/.wh..wh..opq", b'5', None), raw("", b'0', None)],
    ];
    for ops in seeds {
        check_apply(&ops);
    }
}

// ---------------------------------------------------------------------------
// 2. write_diff <-> apply_layer round trip

#[derive(Clone, Debug)]
enum Node {
    File(Vec<u8>, u32),
    Dir(u32),
    Symlink(String),
}

#[derive(Clone, Debug)]
enum Change {
    Remove(usize),
    Rewrite(usize, Vec<u8>),
    Chmod(usize, u32),
    Chown(usize, u32),
    Touch(usize, i64),
    Add(String, Node),
    /// Remove what is there and make a directory (or a file over a directory).
    Replace(usize),
}

fn node() -> impl Strategy<Value = Node> {
    prop_oneof![
        3 => (prop::collection::vec(any::<u8>(), 0..200), select(vec![0o644u32, 0o755, 0o600, 0o4755, 0o1644]))
            .prop_map(|(d, m)| Node::File(d, m)),
        2 => select(vec![0o755u32, 0o700, 0o1777, 0o2750]).prop_map(Node::Dir),
        1 => select(vec!["a".to_string(), "../b".into(), "/abs/target".into(), "c/d".into(), "x".repeat(150)])
            .prop_map(Node::Symlink),
    ]
}

fn tree_path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        select(vec!["a", "b", "c", "dd", "long-name-of-a-directory"]),
        1..4,
    )
    .prop_map(|c| c.join("/"))
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0usize..64).prop_map(Change::Remove),
        (0usize..64, prop::collection::vec(any::<u8>(), 0..100))
            .prop_map(|(i, d)| Change::Rewrite(i, d)),
        (0usize..64, select(vec![0o700u32, 0o755, 0o2755, 0o444]))
            .prop_map(|(i, m)| Change::Chmod(i, m)),
        (0usize..64, 0u32..3000).prop_map(|(i, u)| Change::Chown(i, u)),
        (0usize..64, 0i64..2_000_000_000).prop_map(|(i, t)| Change::Touch(i, t)),
        (tree_path(), node()).prop_map(|(p, n)| Change::Add(p, n)),
        (0usize..64).prop_map(Change::Replace),
    ]
}

fn set_mtime(path: &Path, secs: i64, nsec: i64) {
    let ts = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsec,
        },
    ];
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path and a two-element timespec array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", path.display());
}

/// Creates `node` at `root/rel`, making parents; skips a path whose parent is not a directory.
fn make(root: &Path, rel: &str, node: &Node, mtime: i64) {
    let p = root.join(rel);
    if fs::symlink_metadata(&p).is_ok() {
        return;
    }
    let mut parent = root.to_path_buf();
    for comp in Path::new(rel)
        .parent()
        .into_iter()
        .flat_map(|p| p.components())
    {
        parent.push(comp);
        match fs::symlink_metadata(&parent) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => return,
            Err(_) => fs::create_dir(&parent).unwrap(),
        }
    }
    match node {
        Node::File(d, m) => {
            fs::write(&p, d).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(*m)).unwrap();
        }
        Node::Dir(m) => {
            fs::create_dir(&p).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(*m)).unwrap();
        }
        Node::Symlink(t) => symlink(t, &p).unwrap(),
    }
    set_mtime(&p, mtime, 123_456_789);
}

/// Every path below `root`, sorted, without following symlinks.
fn all_paths(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            out.push(p.clone());
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                walk(&p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

fn apply_change(upper: &Path, c: &Change) {
    let paths = all_paths(upper);
    let pick = |i: usize| (!paths.is_empty()).then(|| paths[i % paths.len()].clone());
    match c {
        Change::Remove(i) => {
            if let Some(p) = pick(*i) {
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    fs::remove_dir_all(&p).unwrap();
                } else {
                    fs::remove_file(&p).unwrap();
                }
            }
        }
        Change::Rewrite(i, d) => {
            if let Some(p) = pick(*i)
                && fs::symlink_metadata(&p).unwrap().is_file()
            {
                fs::write(&p, d).unwrap();
            }
        }
        Change::Chmod(i, m) => {
            if let Some(p) = pick(*i)
                && !fs::symlink_metadata(&p).unwrap().file_type().is_symlink()
            {
                fs::set_permissions(&p, fs::Permissions::from_mode(*m)).unwrap();
            }
        }
        Change::Chown(i, u) => {
            if let Some(p) = pick(*i) {
                std::os::unix::fs::lchown(&p, Some(*u), Some(*u + 1)).unwrap();
            }
        }
        Change::Touch(i, t) => {
            if let Some(p) = pick(*i) {
                set_mtime(&p, *t, 0);
            }
        }
        Change::Add(rel, n) => make(upper, rel, n, 1_600_000_000),
        Change::Replace(i) => {
            if let Some(p) = pick(*i) {
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    fs::remove_dir_all(&p).unwrap();
                    fs::write(&p, b"was a directory").unwrap();
                } else {
                    fs::remove_file(&p).unwrap();
                    fs::create_dir(&p).unwrap();
                    fs::write(p.join("inside"), b"new").unwrap();
                }
            }
        }
    }
}

fn check_round_trip(lower_spec: &[(String, Node)], changes: &[Change]) {
    let s = Scratch::new("diff");
    let lower = s.path().join("lower");
    let upper = s.path().join("upper");
    let check = s.path().join("check");
    fs::create_dir(&lower).unwrap();
    for (rel, n) in lower_spec {
        make(&lower, rel, n, 1_500_000_000);
    }
    cp_a(&lower, &upper);
    for c in changes {
        apply_change(&upper, c);
    }
    let mut tar = Vec::new();
    write_diff(Some(&lower), &upper, &mut tar).expect("write_diff of a plain tree");
    cp_a(&lower, &check);
    apply_layer(&check, tar.as_slice()).expect("apply the diff");
    if let Err(d) = compare_trees(&check, &upper) {
        panic!("round trip differs:\n{d}");
    }
}

proptest! {
    #![proptest_config(config(CASES_ROUND_TRIP))]
    fn prop_diff_round_trip(
        lower in prop::collection::vec((tree_path(), node()), 0..12),
        changes in prop::collection::vec(change(), 0..8),
    ) {
        RAN_ROUND_TRIP.fetch_add(1, Ordering::Relaxed);
        check_round_trip(&lower, &changes);
    }
}

#[test]
fn fuzz_diff_round_trip() {
    prop_diff_round_trip();
    println!(
        "fuzz write_diff/apply round trip: {} cases executed",
        RAN_ROUND_TRIP.load(Ordering::Relaxed)
    );
}

#[test]
fn seed_round_trips() {
    let f = |d: &[u8]| Node::File(d.to_vec(), 0o644);
    check_round_trip(&[], &[]);
    check_round_trip(
        &[
            ("a/b".into(), f(b"x")),
            ("c".into(), Node::Symlink("a/b".into())),
        ],
        &[Change::Replace(0), Change::Remove(2)],
    );
    check_round_trip(
        &[("a".into(), Node::Dir(0o755)), ("a/b/c".into(), f(b"y"))],
        &[Change::Remove(0), Change::Add("a/b".into(), f(b"z"))],
    );
    check_round_trip(
        &[("a".into(), f(b"1"))],
        &[
            Change::Chown(0, 1000),
            Change::Touch(0, -5),
            Change::Chmod(0, 0o4755),
        ],
    );
}

// ---------------------------------------------------------------------------
// 3. Archive parsing

#[derive(Clone, Copy, Debug)]
enum Format {
    OciTar(Compression),
    OciDir(Compression),
    DockerTar,
    DockerDir,
}

#[derive(Clone, Debug)]
enum Mutation {
    /// Flip bits `mask` of the byte at this fraction of the file.
    Flip(f64, u8),
    Truncate(f64),
    Insert(f64, Vec<u8>),
    /// Directories: edit a JSON file (index.json, manifest.json, a blob).
    Json(usize, JsonEdit),
}

#[derive(Clone, Debug)]
enum JsonEdit {
    RemoveKey(usize),
    SetValue(usize, serde_json::Value),
    EditString(usize, usize, char),
    SwapArray(usize),
}

fn format() -> impl Strategy<Value = Format> {
    let c = select(vec![
        Compression::None,
        Compression::Gzip,
        Compression::Zstd,
    ]);
    prop_oneof![
        c.clone().prop_map(Format::OciTar),
        c.prop_map(Format::OciDir),
        Just(Format::DockerTar),
        Just(Format::DockerDir),
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        Just(json!(null)),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
        Just(json!([])),
        Just(json!({})),
        Just(json!(
            "sha256:0000000000000000000000000000000000000000000000000000000000000000"
        )),
        Just(json!("../../../etc/passwd")),
        Just(json!("/etc/passwd")),
        Just(json!("application/vnd.oci.image.layer.v1.tar+gzip")),
        Just(json!("application/vnd.oci.image.layer.v1.tar")),
        Just(json!("application/vnd.oci.image.manifest.v1+json")),
        "[a-z:0-9/.]{0,20}".prop_map(serde_json::Value::String),
    ]
}

fn byte_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0.0f64..1.0, 1u8..=255).prop_map(|(a, m)| Mutation::Flip(a, m)),
        (0.0f64..1.0).prop_map(Mutation::Truncate),
        (0.0f64..1.0, prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(a, b)| Mutation::Insert(a, b)),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => byte_mutation(),
        1 => (
            any::<usize>(),
            prop_oneof![
                any::<usize>().prop_map(JsonEdit::RemoveKey),
                (any::<usize>(), json_value()).prop_map(|(i, v)| JsonEdit::SetValue(i, v)),
                (
                    any::<usize>(),
                    any::<usize>(),
                    select(vec!['0', 'f', '/', '.', 'z', '"'])
                )
                    .prop_map(|(i, j, c)| JsonEdit::EditString(i, j, c)),
                any::<usize>().prop_map(JsonEdit::SwapArray),
            ]
        )
            .prop_map(|(i, e)| Mutation::Json(i, e)),
    ]
}

fn mutate_bytes(b: &mut Vec<u8>, m: &Mutation) {
    let at = |f: f64, len: usize| ((f * len as f64) as usize).min(len);
    match m {
        Mutation::Flip(f, mask) if !b.is_empty() => {
            let i = at(*f, b.len() - 1);
            b[i] ^= mask;
        }
        Mutation::Truncate(f) => {
            let n = at(*f, b.len());
            b.truncate(n);
        }
        Mutation::Insert(f, bytes) => {
            let i = at(*f, b.len());
            b.splice(i..i, bytes.iter().copied());
        }
        _ => {}
    }
}

/// Every value slot in a JSON document, as a path of keys/indices.
fn json_slots(
    v: &serde_json::Value,
    here: Vec<serde_json::Value>,
    out: &mut Vec<Vec<serde_json::Value>>,
) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, c) in m {
                let mut p = here.clone();
                p.push(serde_json::Value::String(k.clone()));
                out.push(p.clone());
                json_slots(c, p, out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                let mut p = here.clone();
                p.push(serde_json::Value::from(i));
                out.push(p.clone());
                json_slots(c, p, out);
            }
        }
        _ => {}
    }
}

fn slot<'a>(v: &'a mut serde_json::Value, path: &[serde_json::Value]) -> &'a mut serde_json::Value {
    let mut cur = v;
    for k in path {
        cur = match k {
            serde_json::Value::String(s) => cur.get_mut(s.as_str()).unwrap(),
            n => cur.get_mut(n.as_u64().unwrap() as usize).unwrap(),
        };
    }
    cur
}

fn edit_json(text: &[u8], e: &JsonEdit) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(text).ok()?;
    let mut slots = Vec::new();
    json_slots(&v, Vec::new(), &mut slots);
    if slots.is_empty() {
        return None;
    }
    match e {
        JsonEdit::RemoveKey(i) => {
            let p = &slots[i % slots.len()];
            let (last, parent) = p.split_last().unwrap();
            match (slot(&mut v, parent), last) {
                (serde_json::Value::Object(m), serde_json::Value::String(k)) => {
                    m.remove(k);
                }
                (serde_json::Value::Array(a), n) => {
                    a.remove(n.as_u64().unwrap() as usize);
                }
                _ => {}
            }
        }
        JsonEdit::SetValue(i, val) => *slot(&mut v, &slots[i % slots.len()]) = val.clone(),
        JsonEdit::EditString(i, j, c) => {
            let strings: Vec<_> = slots
                .iter()
                .filter(|p| slot(&mut v.clone(), p).is_string())
                .cloned()
                .collect();
            if strings.is_empty() {
                return None;
            }
            let s = slot(&mut v, &strings[i % strings.len()]);
            let mut chars: Vec<char> = s.as_str().unwrap().chars().collect();
            if chars.is_empty() {
                chars.push(*c);
            } else {
                let n = j % chars.len();
                chars[n] = *c;
            }
            *s = serde_json::Value::String(chars.into_iter().collect());
        }
        JsonEdit::SwapArray(i) => {
            let arrays: Vec<_> = std::iter::once(Vec::new())
                .chain(slots.iter().cloned())
                .filter(|p| {
                    slot(&mut v.clone(), p)
                        .as_array()
                        .is_some_and(|a| a.len() > 1)
                })
                .collect();
            if arrays.is_empty() {
                return None;
            }
            let a = slot(&mut v, &arrays[i % arrays.len()])
                .as_array_mut()
                .unwrap();
            a.swap(0, 1);
        }
    }
    Some(serde_json::to_vec(&v).unwrap())
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    all_paths(dir)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).unwrap().is_file())
        .collect()
}

fn sample_layers(which: u8) -> Vec<Vec<u8>> {
    let mut one = LayerBuilder::new();
    one.dir("etc", 0o755)
        .file("etc/hosts", b"127.0.0.1 localhost\n", 0o644)
        .file("bin/tool", &[0x7f; 3000], 0o755);
    let mut two = LayerBuilder::new();
    two.whiteout("etc/hosts")
        .symlink("bin/link", "tool")
        .file("data", &[which; 700], 0o600);
    let layers = vec![one.finish(), two.finish()];
    if which.is_multiple_of(2) {
        layers[..1].to_vec()
    } else {
        layers
    }
}

fn check_archive(fmt: Format, which: u8, mutations: &[Mutation]) {
    let s = Scratch::new("archive");
    let layers = sample_layers(which);
    let dest = match fmt {
        Format::OciTar(c) => {
            let d = s.path().join("image.tar");
            write_oci_archive(&d, "fuzz:1", &layers, c, true).unwrap();
            d
        }
        Format::OciDir(c) => {
            let d = s.path().join("image");
            write_oci_archive(&d, "fuzz:1", &layers, c, false).unwrap();
            d
        }
        Format::DockerTar => {
            let d = s.path().join("save.tar");
            write_docker_save(&d, "fuzz:1", &layers).unwrap();
            d
        }
        Format::DockerDir => {
            let d = s.path().join("save");
            write_docker_save(&d, "fuzz:1", &layers).unwrap();
            d
        }
    };
    // The unmutated archive reads back exactly.
    {
        let a = ImageArchive::open(&dest).expect("open a valid archive");
        let img = a.image(None).expect("one image");
        assert_eq!(img.layers.len(), layers.len());
        for (l, want) in img.layers.iter().zip(&layers) {
            assert_eq!(&read_layer(&a, l).expect("read a valid layer"), want);
        }
    }
    for m in mutations {
        if dest.is_dir() {
            let files = files_below(&dest);
            let (k, json_edit) = match m {
                Mutation::Json(k, e) => (*k, Some(e)),
                Mutation::Flip(f, _) | Mutation::Truncate(f) | Mutation::Insert(f, _) => {
                    ((f * 1e6) as usize, None)
                }
            };
            let file = &files[k % files.len()];
            let mut bytes = fs::read(file).unwrap();
            match json_edit {
                Some(e) => {
                    // index.json and manifest.json first, then any JSON blob.
                    let json_files: Vec<_> = files
                        .iter()
                        .filter(|p| {
                            serde_json::from_slice::<serde_json::Value>(&fs::read(p).unwrap())
                                .is_ok()
                        })
                        .collect();
                    let target = json_files
                        .iter()
                        .find(|p| {
                            (k % 2 == 0)
                                && matches!(
                                    p.file_name().and_then(|n| n.to_str()),
                                    Some("index.json" | "manifest.json")
                                )
                        })
                        .or_else(|| json_files.get(k % json_files.len().max(1)))
                        .copied();
                    if let Some(t) = target
                        && let Some(new) = edit_json(&fs::read(t).unwrap(), e)
                    {
                        fs::write(t, new).unwrap();
                    }
                }
                None => {
                    mutate_bytes(&mut bytes, m);
                    fs::write(file, bytes).unwrap();
                }
            }
        } else {
            let mut bytes = fs::read(&dest).unwrap();
            mutate_bytes(&mut bytes, m);
            fs::write(&dest, bytes).unwrap();
        }
    }
    let opened = std::panic::catch_unwind(|| ImageArchive::open(&dest))
        .unwrap_or_else(|_| panic!("ImageArchive::open panicked on {fmt:?} after {mutations:?}"));
    let Ok(archive) = opened else { return };
    ARCHIVE_OPENED.fetch_add(1, Ordering::Relaxed);
    for img in archive.images() {
        for (n, l) in img.layers.iter().enumerate() {
            let got = std::panic::catch_unwind(|| read_layer(&archive, l))
                .unwrap_or_else(|_| panic!("reading layer {n} panicked"));
            if let Ok(bytes) = got {
                ARCHIVE_LAYERS_OK.fetch_add(1, Ordering::Relaxed);
                assert!(
                    layers.get(n) == Some(&bytes),
                    "{fmt:?} after {mutations:?}: layer {n} ({}) read back {} bytes that are not the original layer {n}",
                    l.label,
                    bytes.len()
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(config(CASES_ARCHIVE))]
    fn prop_archive_parsing(
        fmt in format(),
        which in any::<u8>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        RAN_ARCHIVE.fetch_add(1, Ordering::Relaxed);
        check_archive(fmt, which, &mutations);
    }
}

#[test]
fn fuzz_archive_parsing() {
    prop_archive_parsing();
    println!(
        "fuzz archive parsing: {} cases executed ({} mutated archives opened, {} layers read back intact)",
        RAN_ARCHIVE.load(Ordering::Relaxed),
        ARCHIVE_OPENED.load(Ordering::Relaxed),
        ARCHIVE_LAYERS_OK.load(Ordering::Relaxed)
    );
}

#[test]
fn seed_archives() {
    use Mutation::*;
    for fmt in [
        Format::OciTar(Compression::Gzip),
        Format::OciTar(Compression::None),
        Format::OciDir(Compression::Zstd),
        Format::DockerTar,
        Format::DockerDir,
    ] {
        for m in [
            Truncate(0.0),
            Truncate(0.5),
            Truncate(0.999),
            Flip(0.5, 0xff),
            Flip(0.0, 1),
            Insert(0.5, vec![0; 512]),
            Json(0, JsonEdit::SwapArray(0)),
            Json(0, JsonEdit::RemoveKey(3)),
            Json(
                1,
                JsonEdit::SetValue(5, serde_json::json!("../../../etc/passwd")),
            ),
        ] {
            check_archive(fmt, 1, &[m]);
        }
    }
}

// ---------------------------------------------------------------------------
// 4. Records

fn sample_records(root: &Path, n: u32) -> Records {
    let opts = PoolOptions {
        source: SourceOptions::LoopFiles {
            data_size: Bytes(10 << 30),
            metadata_size: Bytes(1 << 30),
        },
        block_size: BlockSize::DEFAULT,
        filesystem: Default::default(),
        base_size: Bytes(10 << 30),
        min_free_percent: 10,
    };
    let mut r = Records::new(config_for(root, &opts));
    r.transaction = u64::from(n) + 3;
    r.base_ready = true;
    r.tree.base = Some(ThinId::new(1).unwrap());
    let mut parent: Option<String> = None;
    for i in 0..n {
        let key = format!("sha256:{i:064x}");
        r.tree.layers.insert(
            key.clone(),
            Layer {
                key: key.clone(),
                kind: Kind::Committed,
                thin_id: ThinId::new(i + 2).unwrap(),
                parent: parent.clone(),
                device_size: Bytes(10 << 30),
                created: 1_700_000_000 + u64::from(i),
                created_ns: (1_700_000_000 + u64::from(i)) * 1_000_000_000 + 7,
                updated_ns: 0,
                snapshotter: i % 2 == 0,
                image: None,
                labels: [("k".to_string(), format!("v{i} é \"quoted\""))].into(),
                mounts: 0,
                pinned: false,
            },
        );
        parent = Some(key);
    }
    if let Some(top) = &parent {
        r.tree.images.insert(
            "app:latest".into(),
            Image {
                name: "app:latest".into(),
                top: top.clone(),
                created: 1_700_000_100,
                config: Some(serde_json::json!({"architecture": "amd64"})),
            },
        );
        r.tree.layers.insert(
            "web".into(),
            Layer {
                key: "web".into(),
                kind: Kind::Active,
                thin_id: ThinId::new(n + 2).unwrap(),
                parent: Some(top.clone()),
                device_size: Bytes(10 << 30),
                created: 1_700_000_200,
                created_ns: 1_700_000_200_000_000_123,
                updated_ns: 1_700_000_300_000_000_456,
                snapshotter: false,
                image: Some("app:latest".into()),
                labels: Default::default(),
                mounts: 1,
                pinned: true,
            },
        );
    }
    r.pending = Some(Intent::Delete {
        transaction: None,
        key: "web".into(),
        thin_id: ThinId::new(n + 2).unwrap(),
    });
    r
}

fn check_records(layers: u32, mutations: &[Mutation]) {
    let s = Scratch::new("records");
    let store = Store::new(s.path());
    let records = sample_records(s.path(), layers);
    store.save(&records, Durability::Durable).unwrap();
    assert_eq!(store.load().unwrap(), records, "save/load round trip");
    let mut bytes = fs::read(store.path()).unwrap();
    for m in mutations {
        match m {
            Mutation::Json(_, e) => {
                if let Some(new) = edit_json(&bytes, e) {
                    bytes = new;
                }
            }
            other => mutate_bytes(&mut bytes, other),
        }
    }
    fs::write(store.path(), &bytes).unwrap();
    let got = match std::panic::catch_unwind(|| store.load()) {
        Ok(got) => got,
        Err(_) => panic!("Store::load panicked after {mutations:?}"),
    };
    let parses = serde_json::from_slice::<Records>(&bytes).ok();
    match got {
        Ok(r) => {
            RECORDS_LOADED.fetch_add(1, Ordering::Relaxed);
            let mut p = parses.expect("load gave Ok for a file serde cannot parse");
            // Older formats are read, brought to the current one.
            if p.version < thinlayer::records::VERSION {
                p.upgrade();
            }
            assert_eq!(p, r);
            assert_eq!(r.version, thinlayer::records::VERSION);
        }
        Err(e) => {
            assert!(
                matches!(e, Error::CorruptRecords { .. }),
                "load failed with {e:?}, not CorruptRecords"
            );
            assert!(
                e.to_string().contains("state.json"),
                "message does not name the file: {e}"
            );
            if let Some(p) = parses {
                assert_ne!(
                    p.version,
                    thinlayer::records::VERSION,
                    "parseable records refused: {e}"
                );
            }
        }
    }
    assert_eq!(
        fs::read(store.path()).unwrap(),
        bytes,
        "load changed the file"
    );
}

proptest! {
    #![proptest_config(config(CASES_RECORDS))]
    fn prop_records(layers in 0u32..5, mutations in prop::collection::vec(mutation(), 1..4)) {
        RAN_RECORDS.fetch_add(1, Ordering::Relaxed);
        check_records(layers, &mutations);
    }
}

#[test]
fn fuzz_records() {
    prop_records();
    println!(
        "fuzz records: {} cases executed ({} mutated files still loaded)",
        RAN_RECORDS.load(Ordering::Relaxed),
        RECORDS_LOADED.load(Ordering::Relaxed)
    );
}

/// Versions 0..=4 saved in turn (the first writes `state.json`, each
/// other appends an entry to the journal), then the journal's bytes
/// mutated. A load must never panic, never change a file, and give either
/// exactly the version of the last entry left intact before the first
/// changed byte (what a torn tail leaves), or corrupt records that name
/// the journal.
fn check_journal(mutations: &[Mutation]) {
    let s = Scratch::new("journal");
    let store = Store::new(s.path());
    let versions: Vec<Records> = (0..5).map(|n| sample_records(s.path(), n)).collect();
    for v in &versions {
        store.save(v, Durability::Atomic).unwrap();
    }
    let original = fs::read(store.journal_path()).unwrap();
    assert_eq!(
        original.iter().filter(|&&b| b == b'\n').count(),
        versions.len(),
        "a header and four entries"
    );
    let mut bytes = original.clone();
    for m in mutations {
        mutate_bytes(&mut bytes, m);
    }
    fs::write(store.journal_path(), &bytes).unwrap();
    let state = fs::read(store.path()).unwrap();
    let got = match std::panic::catch_unwind(|| Store::new(s.path()).load()) {
        Ok(got) => got,
        Err(_) => panic!("Store::load panicked after {mutations:?}"),
    };
    let changed = original
        .iter()
        .zip(&bytes)
        .position(|(a, b)| a != b)
        .unwrap_or(original.len().min(bytes.len()));
    // Lines (the header, then entries) that end before the first change.
    let intact = original[..changed].iter().filter(|&&b| b == b'\n').count();
    match got {
        Ok(r) => {
            JOURNAL_LOADED.fetch_add(1, Ordering::Relaxed);
            let expected = &versions[intact.saturating_sub(1)];
            assert!(
                r == *expected,
                "{intact} lines intact, loaded transaction {} after {mutations:?}",
                r.transaction
            );
        }
        Err(e) => {
            assert!(
                matches!(e, Error::CorruptRecords { .. }),
                "load failed with {e:?}, not CorruptRecords"
            );
            assert!(
                e.to_string().contains("state.journal"),
                "message does not name the journal: {e}"
            );
        }
    }
    assert_eq!(
        fs::read(store.path()).unwrap(),
        state,
        "load changed state.json"
    );
    assert_eq!(
        fs::read(store.journal_path()).unwrap(),
        bytes,
        "load changed the journal"
    );
}

proptest! {
    #![proptest_config(config(CASES_JOURNAL))]
    fn prop_journal(mutations in prop::collection::vec(byte_mutation(), 1..3)) {
        RAN_JOURNAL.fetch_add(1, Ordering::Relaxed);
        check_journal(&mutations);
    }
}

#[test]
fn fuzz_journal() {
    prop_journal();
    println!(
        "fuzz journal: {} cases executed ({} mutated journals still loaded)",
        RAN_JOURNAL.load(Ordering::Relaxed),
        JOURNAL_LOADED.load(Ordering::Relaxed)
    );
}

#[test]
fn seed_records() {
    use Mutation::*;
    for m in [
        Truncate(0.0),
        Truncate(0.5),
        Insert(0.0, b"\xef\xbb\xbf".to_vec()),
        Insert(1.0, b"\n\n".to_vec()),
        Insert(1.0, b"{}".to_vec()),
        Json(0, JsonEdit::SetValue(0, serde_json::json!(2))),
        Json(0, JsonEdit::SetValue(3, serde_json::json!(-1))),
        Json(0, JsonEdit::SetValue(3, serde_json::json!(u64::MAX))),
        Json(0, JsonEdit::RemoveKey(1)),
        Flip(0.3, 0x80),
    ] {
        check_records(2, &[m]);
    }
    // A thin id past 24 bits is refused as corrupt, not accepted.
    let s = Scratch::new("records-seed");
    let store = Store::new(s.path());
    store
        .save(&sample_records(s.path(), 1), Durability::Durable)
        .unwrap();
    let text = fs::read_to_string(store.path()).unwrap();
    let edited = text.replacen("\"thin_id\":2", "\"thin_id\":16777216", 1);
    assert_ne!(edited, text, "the records hold thin id 2");
    fs::write(store.path(), &edited).unwrap();
    assert!(matches!(store.load(), Err(Error::CorruptRecords { .. })));
}

/// `"block_size"` (sectors) too large for a byte count is refused as
/// corrupt records, not an overflow (found by `fuzz_records`).
#[test]
fn records_with_a_huge_block_size_are_corrupt() {
    let s = Scratch::new("records-huge");
    let store = Store::new(s.path());
    store
        .save(&sample_records(s.path(), 1), Durability::Durable)
        .unwrap();
    let mut v: serde_json::Value =
        serde_json::from_slice(&fs::read(store.path()).unwrap()).unwrap();
    let mut wrong = Vec::new();
    for sectors in [u64::MAX, (1u64 << 55) + 128] {
        v["pool"]["block_size"] = serde_json::json!(sectors);
        fs::write(store.path(), serde_json::to_vec(&v).unwrap()).unwrap();
        match std::panic::catch_unwind(|| store.load()) {
            Err(_) => wrong.push(format!("block_size {sectors}: Store::load panicked")),
            Ok(Ok(r)) => wrong.push(format!(
                "block_size {sectors}: loaded as {} bytes",
                r.pool.block_size.bytes().0
            )),
            Ok(Err(Error::CorruptRecords { .. })) => {}
            Ok(Err(e)) => wrong.push(format!("block_size {sectors}: {e:?}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------
// 5. Names and units

/// The documented rule, written out: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128 bytes.
fn container_name_rule(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

fn name_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9_.:/@ -]{0,20}",
        "[a-z0-9._/-]{1,40}(:[A-Za-z0-9_.-]{0,10})?",
        "([a-z0-9]+\\.)?[a-z0-9]+(:[0-9]{1,5})?/[a-z0-9._-]{1,20}(:[a-zA-Z0-9_.:-]{0,12})?",
        "[a-zA-Z0-9][a-zA-Z0-9_.-]{100,140}",
        "[0-9.]{0,25} ?[kKmMgGtTbBiI]{0,3}",
        "[0-9]{15,25}",
    ]
}

fn check_names(s: &str, n: u64) {
    assert_eq!(
        validate_container_name(s).is_ok(),
        container_name_rule(s),
        "container name {s:?}"
    );
    if let Err(e) = validate_container_name(s) {
        assert!(matches!(e, Error::Invalid { .. }));
    }
    assert_eq!(
        validate_key(s).is_ok(),
        !s.is_empty() && s.len() <= 4096 && !s.contains(['\0', '\n']),
        "key {s:?}"
    );
    if let Ok(r) = ImageRef::parse(s) {
        let shown = r.to_string();
        let again = ImageRef::parse(&shown).unwrap_or_else(|e| {
            panic!("{s:?} parsed as {r:?}, displayed as {shown:?}, which fails: {e}")
        });
        assert_eq!(again, r, "{s:?} does not round-trip through {shown:?}");
        assert_eq!(again.to_string(), shown);
    }
    if let Ok(b) = s.parse::<Bytes>() {
        // A plain integer small enough for an f64 parses exactly.
        if let Ok(v) = s.trim().parse::<u64>()
            && v < (1u64 << 53)
        {
            assert_eq!(b.0, v, "{s:?}");
        }
    }
    let accepted = BlockSize::from_bytes(Bytes(n));
    let rule = n.is_multiple_of(65536) && (65536..=1 << 30).contains(&n);
    assert_eq!(accepted.is_ok(), rule, "block size {n}");
    if let Ok(bs) = accepted {
        assert_eq!(bs.bytes(), Bytes(n));
        assert_eq!(BlockSize::try_from(bs.sectors().0).unwrap(), bs);
    }
}

fn block_size_number() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        (0u64..20_000).prop_map(|k| k * 65536),
        (0u64..20_000).prop_map(|k| k * 512),
        select(vec![
            0u64,
            65535,
            65536,
            65537,
            1 << 30,
            (1 << 30) + 65536,
            u64::MAX
        ]),
    ]
}

proptest! {
    #![proptest_config(config(CASES_NAMES))]
    fn prop_names(s in name_string(), n in block_size_number()) {
        RAN_NAMES.fetch_add(1, Ordering::Relaxed);
        check_names(&s, n);
    }
}

#[test]
fn fuzz_names() {
    prop_names();
    println!(
        "fuzz names and units: {} cases executed",
        RAN_NAMES.load(Ordering::Relaxed)
    );
}

#[test]
fn seed_names() {
    for s in [
        "",
        "a",
        "A",
        "a:",
        ":a",
        "a::b",
        "localhost:5000/a:b",
        "a.b:c/d",
        "-a",
        "a-",
        "registry.io/a/b:v1",
        "r.io:/a",
        "x:1/y",
        "é",
        "a\0b",
        "a\nb",
        "1.5GiB",
        " 10G ",
        "1e3",
        "NaN",
        "inf",
        "0.5",
        "18446744073709551615",
        ".",
        "..",
        "k",
    ] {
        check_names(s, 65536);
    }
}

/// Sizes at and above 2^53 bytes parse exactly, and 2^64 is refused
/// (found by `fuzz_names`).
#[test]
fn sizes_above_2_pow_53_parse_exactly() {
    let mut wrong = Vec::new();
    for (s, want) in [
        ("9007199254740993", Some(9_007_199_254_740_993u64)),
        ("18446744073709551615", Some(u64::MAX)),
        ("18446744073709551616", None),
        ("16777216T", None),
    ] {
        let got = s.parse::<Bytes>().ok().map(|b| b.0);
        if got != want {
            wrong.push(format!("{s:?} parsed as {got:?}, expected {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn compressors_round_trip() {
    // A sanity check of the test aid the archive fuzzing relies on.
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        assert!(!compress(b"abc", c).unwrap().is_empty());
    }
}
