//! Tests of applying layer tars.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nix::sys::stat::makedev;
use tar::EntryType;

use super::header::parse_pax_time;
use super::*;
use crate::layer::sparse::HOLE_GRANULE;
use crate::layer::xattr::read_xattrs;
use crate::testutil::TempDir;

/// Builds layer tars entry by entry, with names and targets verbatim.
pub struct Layer(tar::Builder<Vec<u8>>);

pub struct E<'a> {
    pub name: &'a [u8],
    pub kind: EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub link: Option<&'a [u8]>,
    pub data: &'a [u8],
    pub pax: Vec<(&'a str, &'a [u8])>,
    pub dev: (u32, u32),
}

pub fn e(name: &str, kind: EntryType) -> E<'_> {
    E {
        name: name.as_bytes(),
        kind,
        mode: if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        },
        uid: 0,
        gid: 0,
        mtime: 1_000_000,
        link: None,
        data: b"",
        pax: Vec::new(),
        dev: (0, 0),
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    pub fn add(&mut self, e: E<'_>) -> &mut Self {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(e.data.len() as u64);
        let mut pax = e.pax;
        let n = e.name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&e.name[..n]);
        if e.name.len() > 100 {
            pax.push(("path", e.name));
        }
        if let Some(l) = e.link {
            let n = l.len().min(100);
            h.as_old_mut().linkname[..n].copy_from_slice(&l[..n]);
            if l.len() > 100 {
                pax.push(("linkpath", l));
            }
        }
        if matches!(e.kind, EntryType::Char | EntryType::Block) {
            h.set_device_major(e.dev.0).expect("major");
            h.set_device_minor(e.dev.1).expect("minor");
        }
        if !pax.is_empty() {
            self.0.append_pax_extensions(pax).expect("pax");
        }
        h.set_cksum();
        self.0.append(&h, e.data).expect("append");
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.add(E {
            data,
            ..e(name, EntryType::Regular)
        })
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.add(e(name, EntryType::Directory))
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.add(E {
            link: Some(target.as_bytes()),
            ..e(name, EntryType::Symlink)
        })
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.add(E {
            link: Some(target.as_bytes()),
            ..e(name, EntryType::Link)
        })
    }

    pub fn bytes(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        b.into_inner().expect("finish tar")
    }
}

fn md(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    read_xattrs(p)
        .expect("xattrs")
        .into_iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| v)
}

#[test]
fn applies_every_entry_type() {
    let t = TempDir::new("apply-types");
    let root = t.path();
    let long = format!("deep/{}/{}", "d".repeat(80), "f".repeat(120));
    let tar = Layer::new()
        .add(E {
            mtime: 1_000,
            ..e("etc/", EntryType::Directory)
        })
        .add(E {
            data: b"root:x:0:0\n",
            pax: vec![
                ("mtime", b"1600000000.123456789"),
                ("atime", b"1500000000.5"),
            ],
            ..e("etc/passwd", EntryType::Regular)
        })
        .add(E {
            mode: 0o4755,
            gid: 12,
            data: b"\x7fELF",
            ..e("usr/bin/su", EntryType::Regular)
        })
        .add(E {
            mode: 0o600,
            uid: 1000,
            gid: 1001,
            data: b"secret",
            pax: vec![
                ("SCHILY.xattr.user.a", b"one"),
                ("SCHILY.xattr.trusted.b", b"\x00two"),
            ],
            ..e("home/u/f", EntryType::Regular)
        })
        .add(E {
            mode: 0o2775,
            uid: 1000,
            gid: 1000,
            pax: vec![("SCHILY.xattr.user.d", b"dir")],
            mtime: 2_000,
            ..e("home/u", EntryType::Directory)
        })
        .add(E {
            data: b"long",
            ..e(&long, EntryType::Regular)
        })
        .add(E {
            link: Some(b"../usr/bin/su"),
            uid: 5,
            gid: 6,
            mtime: 12_345,
            pax: vec![("SCHILY.xattr.trusted.sym", b"s")],
            ..e("etc/su-link", EntryType::Symlink)
        })
        .add(E {
            link: Some(b"etc/passwd"),
            ..e("etc/passwd-hard", EntryType::Link)
        })
        .add(E {
            link: Some(long.as_bytes()),
            ..e("long-hard", EntryType::Link)
        })
        .add(E {
            mode: 0o640,
            uid: 3,
            ..e("run/fifo", EntryType::Fifo)
        })
        .add(E {
            mode: 0o666,
            dev: (1, 3),
            pax: vec![("SCHILY.xattr.trusted.dev", b"d")],
            ..e("dev/null", EntryType::Char)
        })
        .add(E {
            mode: 0o1777,
            ..e("tmp", EntryType::Directory)
        })
        .bytes();
    let stats = apply_layer(root, &tar[..]).expect("apply");
    assert_eq!(
        stats,
        ApplyStats {
            entries: 12,
            bytes: 11 + 4 + 6 + 4,
            holes: 0,
            whiteouts: 0
        }
    );

    let m = md(&root.join("etc/passwd"));
    assert_eq!(
        fs::read(root.join("etc/passwd")).expect("read"),
        b"root:x:0:0\n"
    );
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 123_456_789));
    assert_eq!((m.atime(), m.atime_nsec()), (1_500_000_000, 500_000_000));
    assert_eq!(m.mode() & 0o7777, 0o644);
    assert_eq!(m.nlink(), 2);
    assert_eq!(md(&root.join("etc/passwd-hard")).ino(), m.ino());
    assert_eq!(md(&root.join("etc")).mtime(), 1_000, "dir times set last");

    let m = md(&root.join("usr/bin/su"));
    assert_eq!(m.mode() & 0o7777, 0o4755, "setuid survives chown");
    assert_eq!((m.uid(), m.gid()), (0, 12));
    assert_eq!(
        md(&root.join("usr")).mode() & 0o7777,
        0o755,
        "implicit parent"
    );

    let f = root.join("home/u/f");
    let m = md(&f);
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1001, 0o600));
    assert_eq!(xattr(&f, "user.a").as_deref(), Some(&b"one"[..]));
    assert_eq!(xattr(&f, "trusted.b").as_deref(), Some(&b"\x00two"[..]));
    let m = md(&root.join("home/u"));
    assert_eq!(
        (m.uid(), m.mode() & 0o7777, m.mtime()),
        (1000, 0o2775, 2_000)
    );
    assert_eq!(
        xattr(&root.join("home/u"), "user.d").as_deref(),
        Some(&b"dir"[..])
    );

    assert_eq!(fs::read(root.join(&long)).expect("read long"), b"long");
    assert_eq!(
        md(&root.join("long-hard")).ino(),
        md(&root.join(&long)).ino()
    );

    let l = root.join("etc/su-link");
    let m = md(&l);
    assert!(m.file_type().is_symlink());
    assert_eq!(
        fs::read_link(&l).expect("readlink"),
        Path::new("../usr/bin/su")
    );
    assert_eq!((m.uid(), m.gid(), m.mtime()), (5, 6, 12_345));
    assert_eq!(xattr(&l, "trusted.sym").as_deref(), Some(&b"s"[..]));

    let m = md(&root.join("run/fifo"));
    assert!(m.file_type().is_fifo());
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o640, 3));
    let m = md(&root.join("dev/null"));
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), makedev(1, 3));
    assert_eq!(
        xattr(&root.join("dev/null"), "trusted.dev").as_deref(),
        Some(&b"d"[..])
    );
    assert_eq!(m.mode() & 0o7777, 0o666);
    assert_eq!(md(&root.join("tmp")).mode() & 0o7777, 0o1777);
}

#[test]
fn whiteouts_and_opaque_directories() {
    let t = TempDir::new("apply-whiteouts");
    let root = t.path();
    let l1 = Layer::new()
        .file("a/f1", b"1")
        .file("a/sub/f2", b"2")
        .file("b/x", b"x")
        .file("b/deeper/y", b"y")
        .file("c/old1", b"o")
        .file("c/olddir/old2", b"o")
        .file("d/old", b"o")
        .file("d/keepdir/x", b"o")
        .file("e/kept", b"k")
        .bytes();
    apply_layer(root, &l1[..]).expect("layer 1");
    let l2 = Layer::new()
        .file("a/.wh.f1", b"")
        .file(".wh.b", b"")
        .file("a/.wh.never-existed", b"")
        // Marker before the layer's own entries.
        .file("c/.wh..wh..opq", b"")
        .file("c/new1", b"n")
        .file("c/olddir/new2", b"n")
        // Marker after them.
        .file("d/new", b"n")
        .dir("d/keepdir")
        .file("d/keepdir/y", b"n")
        .file("d/.wh..wh..opq", b"")
        .file("e/.wh..wh.plnk", b"")
        .bytes();
    let stats = apply_layer(root, &l2[..]).expect("layer 2");
    assert_eq!(stats.whiteouts, 5);
    assert_eq!(stats.entries, 5);
    let names = |d: &str| {
        let mut v: Vec<String> = fs::read_dir(root.join(d))
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(""), ["a", "c", "d", "e"]);
    assert_eq!(names("a"), ["sub"]);
    assert_eq!(names("c"), ["new1", "olddir"]);
    assert_eq!(names("c/olddir"), ["new2"]);
    assert_eq!(names("d"), ["keepdir", "new"]);
    assert_eq!(names("d/keepdir"), ["y"]);
    assert_eq!(
        names("e"),
        ["kept"],
        "aufs metadata is ignored, not written"
    );
}

#[test]
fn replaces_entries_of_other_types() {
    let t = TempDir::new("apply-replace");
    let root = t.path();
    let l1 = Layer::new()
        .file("p", b"file")
        .file("q/inner/f", b"f")
        .add(E {
            mode: 0o700,
            ..e("r/", EntryType::Directory)
        })
        .file("r/kept", b"k")
        .symlink("s", "q")
        .bytes();
    apply_layer(root, &l1[..]).expect("layer 1");
    let l2 = Layer::new()
        .dir("p")
        .file("p/child", b"c")
        .file("q", b"now a file")
        .add(E {
            mode: 0o750,
            uid: 4,
            ..e("r", EntryType::Directory)
        })
        .file("s", b"no longer a link")
        .bytes();
    apply_layer(root, &l2[..]).expect("layer 2");
    assert_eq!(fs::read(root.join("p/child")).expect("p/child"), b"c");
    assert_eq!(fs::read(root.join("q")).expect("q"), b"now a file");
    let m = md(&root.join("r"));
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o750, 4));
    assert_eq!(
        fs::read(root.join("r/kept")).expect("kept"),
        b"k",
        "dir over dir keeps content"
    );
    assert!(md(&root.join("s")).is_file());
    assert!(md(&root.join("q")).is_file());
}

#[test]
fn keeps_times_of_directories_it_does_not_name() {
    let t = TempDir::new("apply-times");
    let root = t.path();
    apply_layer(
        root,
        &Layer::new()
            .add(E {
                mtime: 777,
                ..e("a", EntryType::Directory)
            })
            .file("a/old", b"o")
            .file("a/gone", b"g")
            .bytes()[..],
    )
    .expect("layer 1");
    crate::layer::testtree::set_mtime(root, 555, 5);
    assert_eq!(md(&root.join("a")).mtime(), 777);
    apply_layer(
        root,
        &Layer::new()
            .file("a/old", b"new")
            .file("a/.wh.gone", b"")
            .file("a/b/c", b"implicit parent")
            .bytes()[..],
    )
    .expect("layer 2");
    let m = md(&root.join("a"));
    assert_eq!((m.mtime(), m.mtime_nsec()), (777, 0));
    let m = md(root);
    assert_eq!((m.mtime(), m.mtime_nsec()), (555, 5));
}

/// Applies a hostile layer in `base/root`, next to an empty
/// `base/sentinel`, and returns the error.
fn hostile(tar: &[u8]) -> (TempDir, Error) {
    let base = TempDir::new("apply-hostile");
    fs::create_dir(base.path().join("root")).expect("root");
    fs::create_dir(base.path().join("sentinel")).expect("sentinel");
    let err = apply_layer(&base.path().join("root"), tar).expect_err("hostile layer applied");
    let left: Vec<_> = fs::read_dir(base.path().join("sentinel"))
        .expect("sentinel")
        .collect();
    assert!(left.is_empty(), "wrote outside the root: {left:?}");
    (base, err)
}

fn assert_unsafe(err: &Error, name: &str) {
    match err {
        Error::UnsafeEntry { entry, .. } => assert_eq!(entry, name, "{err}"),
        other => panic!("expected UnsafeEntry for {name}, got {other:?}"),
    }
}

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "thinlayer-escape-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[test]
fn refuses_names_outside_the_root() {
    let u = unique("abs");
    let abs = format!("/tmp/{u}");
    let (_t, err) = hostile(&Layer::new().file(&abs, b"x").bytes());
    assert_unsafe(&err, &abs);
    assert!(!Path::new(&abs).exists());

    let (t, err) = hostile(&Layer::new().file("../x", b"x").bytes());
    assert_unsafe(&err, "../x");
    assert!(!t.path().join("x").exists());

    let (t, err) = hostile(&Layer::new().file("a/../../x", b"x").bytes());
    assert_unsafe(&err, "a/../../x");
    assert!(!t.path().join("x").exists());
    assert!(
        err.to_string().starts_with("layer entry \"a/../../x\": "),
        "{err}"
    );

    let (_t, err) = hostile(&Layer::new().file("ok", b"x").dir("../sentinel/d").bytes());
    assert_unsafe(&err, "../sentinel/d");

    let (_t, err) = hostile(&Layer::new().file("a/.wh...", b"").bytes());
    assert_unsafe(&err, "a/.wh...");

    let (t, err) = hostile(&Layer::new().file("a/.wh.b/c", b"").bytes());
    assert_unsafe(&err, "a/.wh.b/c");
    assert!(!t.path().join("root/a/.wh.b").exists());
}

#[test]
fn refuses_parents_that_leave_through_symlinks() {
    let u = unique("up");
    let name = format!("evil/{u}");
    let (_t, err) = hostile(
        &Layer::new()
            .symlink("evil", "../../..")
            .file(&name, b"x")
            .bytes(),
    );
    assert_unsafe(&err, &name);
    assert!(!Path::new("/").join(&u).exists());

    let u = unique("tmp");
    let name = format!("evil/{u}");
    let (_t, err) = hostile(
        &Layer::new()
            .symlink("evil", "/tmp")
            .file(&name, b"x")
            .bytes(),
    );
    assert_unsafe(&err, &name);
    assert!(!Path::new("/tmp").join(&u).exists());

    let (_t, err) = hostile(
        &Layer::new()
            .symlink("evil", "../sentinel")
            .file("evil/x", b"x")
            .bytes(),
    );
    assert_unsafe(&err, "evil/x");

    let (_t, err) = hostile(
        &Layer::new()
            .symlink("evil", "/")
            .file("evil/etc/passwd", b"pwned")
            .bytes(),
    );
    assert_unsafe(&err, "evil/etc/passwd");

    let before = fs::read("/etc/passwd").expect("read /etc/passwd");
    let (_t, err) = hostile(
        &Layer::new()
            .symlink("link", "/etc")
            .file("link/passwd", b"pwned")
            .bytes(),
    );
    assert_unsafe(&err, "link/passwd");
    assert_eq!(fs::read("/etc/passwd").expect("read /etc/passwd"), before);

    let (_t, err) = hostile(
        &Layer::new()
            .symlink("a", "b")
            .symlink("b", "a")
            .file("a/x", b"x")
            .bytes(),
    );
    assert_unsafe(&err, "a/x");

    // A dangling relative symlink as parent is refused too.
    let (_t, err) = hostile(
        &Layer::new()
            .symlink("dl", "nowhere")
            .file("dl/x", b"x")
            .bytes(),
    );
    assert_unsafe(&err, "dl/x");
}

#[test]
fn whiteouts_do_not_reach_through_symlinks() {
    let base = TempDir::new("apply-hostile-wh");
    let root = base.path().join("root");
    let sentinel = base.path().join("sentinel");
    fs::create_dir(&root).expect("root");
    fs::create_dir(&sentinel).expect("sentinel");
    fs::write(sentinel.join("keep"), b"k").expect("keep");
    for (tar, name) in [
        (
            Layer::new()
                .symlink("evil", "../sentinel")
                .file("evil/.wh.keep", b"")
                .bytes(),
            "evil/.wh.keep",
        ),
        (
            Layer::new()
                .symlink("evil2", "../sentinel")
                .file("evil2/.wh..wh..opq", b"")
                .bytes(),
            "evil2/.wh..wh..opq",
        ),
    ] {
        let err = apply_layer(&root, &tar[..]).expect_err("applied");
        assert_unsafe(&err, name);
        assert!(sentinel.join("keep").exists());
    }
    // A whiteout of the symlink itself removes the symlink only.
    apply_layer(&root, &Layer::new().file(".wh.evil", b"").bytes()[..]).expect("whiteout");
    assert!(!root.join("evil").exists());
    assert!(sentinel.join("keep").exists());
}

#[test]
fn replaces_final_symlinks_instead_of_following_them() {
    let base = TempDir::new("apply-final-link");
    let root = base.path().join("root");
    let sentinel = base.path().join("sentinel");
    fs::create_dir(&root).expect("root");
    fs::create_dir(&sentinel).expect("sentinel");
    let tar = Layer::new()
        .symlink("f", "../sentinel/target")
        .file("f", b"inside")
        .symlink("d", "../sentinel")
        .dir("d")
        .file("d/x", b"inside too")
        .symlink("s", "/etc/passwd")
        .hardlink("h", "s")
        .symlink("n", "../sentinel/node")
        .add(e("n", EntryType::Fifo))
        .bytes();
    apply_layer(&root, &tar[..]).expect("apply");
    assert_eq!(fs::read(root.join("f")).expect("f"), b"inside");
    assert_eq!(fs::read(root.join("d/x")).expect("d/x"), b"inside too");
    assert!(
        md(&root.join("h")).file_type().is_symlink(),
        "links the symlink itself"
    );
    assert!(md(&root.join("n")).file_type().is_fifo());
    assert_eq!(fs::read_dir(&sentinel).expect("sentinel").count(), 0);
}

#[test]
fn refuses_hard_links_outside_the_layer() {
    let (_t, err) = hostile(&Layer::new().hardlink("h", "/etc/passwd").bytes());
    assert_unsafe(&err, "h");
    assert!(err.to_string().contains("absolute"), "{err}");

    let (_t, err) = hostile(&Layer::new().hardlink("h", "../x").bytes());
    assert_unsafe(&err, "h");

    let (_t, err) = hostile(&Layer::new().hardlink("h", "missing").bytes());
    assert_unsafe(&err, "h");
    assert!(err.to_string().contains("does not exist"), "{err}");

    let (_t, err) = hostile(
        &Layer::new()
            .symlink("evil", "../sentinel")
            .hardlink("h", "evil/x")
            .bytes(),
    );
    assert_unsafe(&err, "h");

    let (_t, err) = hostile(&Layer::new().dir("d").hardlink("h", "d").bytes());
    assert_unsafe(&err, "h");
}

fn archive_error(tar: &[u8]) -> String {
    let t = TempDir::new("apply-corrupt");
    match apply_layer(t.path(), tar) {
        Err(e @ Error::Archive { .. }) => e.to_string(),
        other => panic!("expected an archive error, got {other:?}"),
    }
}

#[test]
fn refuses_truncated_and_corrupt_archives() {
    let tar = Layer::new()
        .file("a", &[7u8; 10_000])
        .file("b", b"b")
        .bytes();
    let msg = archive_error(&tar[..tar.len() / 2]);
    assert!(msg.contains("truncated"), "{msg}");
    assert!(msg.contains("\"a\""), "{msg}");

    // Cut at an entry boundary: only the end-of-archive marker tells.
    let cut = 512 + 10_240;
    assert_eq!(&tar[cut..cut + 100][..1], b"b");
    let msg = archive_error(&tar[..cut]);
    assert!(msg.contains("end-of-archive"), "{msg}");

    // Cut inside a header.
    archive_error(&tar[..cut + 100]);

    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let msg = archive_error(&garbage);
    assert!(msg.starts_with("image archive layer: "), "{msg}");

    archive_error(b"");

    let mut bad_time = Layer::new();
    bad_time.add(E {
        pax: vec![("mtime", b"12x")],
        ..e("t", EntryType::Regular)
    });
    archive_error(&bad_time.bytes());
}

#[test]
fn pax_times() {
    let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec(), t.tv_nsec()));
    assert_eq!(t("5"), Some((5, 0)));
    assert_eq!(t("5.25"), Some((5, 250_000_000)));
    assert_eq!(t("5.1234567891"), Some((5, 123_456_789)));
    assert_eq!(t("-1.5"), Some((-2, 500_000_000)));
    assert_eq!(t("-3"), Some((-3, 0)));
    assert_eq!(t(""), None);
    assert_eq!(t("1e3"), None);
}

#[test]
fn root_entry_sets_root_metadata() {
    let t = TempDir::new("apply-root");
    let tar = Layer::new()
        .add(E {
            mode: 0o711,
            uid: 9,
            mtime: 4_242,
            ..e("./", EntryType::Directory)
        })
        .file("./x", b"x")
        .bytes();
    apply_layer(t.path(), &tar[..]).expect("apply");
    let m = md(t.path());
    assert_eq!((m.mode() & 0o7777, m.uid(), m.mtime()), (0o711, 9, 4_242));
    let t2 = TempDir::new("apply-root-file");
    let err = apply_layer(t2.path(), &Layer::new().file(".", b"x").bytes()[..])
        .expect_err("root as a file");
    assert_unsafe(&err, ".");
}

#[test]
fn zeros_become_holes() {
    let t = TempDir::new("apply-holes");
    // Data, three zero granules, data across a granule boundary, then zeros
    // past the copy buffer's end: the zeros read back and take no blocks.
    let g = HOLE_GRANULE;
    let mut mixed = vec![0u8; 4 * g + 300 * 1024];
    mixed[..10].fill(b'a');
    mixed[4 * g - 5..4 * g + 5].fill(b'b');
    let empty = vec![0u8; 1 << 20];
    let tar = Layer::new()
        .file("mixed", &mixed)
        .file("empty", &empty)
        .file("short", b"\0\0\0")
        .bytes();
    let stats = apply_layer(t.path(), &tar[..]).expect("apply");
    for (name, want) in [
        ("mixed", &mixed[..]),
        ("empty", &empty[..]),
        ("short", b"\0\0\0"),
    ] {
        assert_eq!(fs::read(t.path().join(name)).unwrap(), want, "{name}");
    }
    // Three granules of data in `mixed` (0, and 3 and 4 across the
    // boundary), none in the others.
    let data = 3 * g as u64;
    assert_eq!(stats.bytes, (mixed.len() + empty.len() + 3) as u64);
    assert_eq!(stats.holes, stats.bytes - data);
    assert_eq!(md(&t.path().join("empty")).blocks(), 0);
    assert_eq!(md(&t.path().join("short")).blocks(), 0);
    let blocks = md(&t.path().join("mixed")).blocks() * 512;
    assert!(
        blocks <= data + 2 * g as u64,
        "`mixed` holds {blocks} bytes of blocks for {data} bytes of data"
    );
}
