//! Images: import of OCI layouts and `docker save` archives, layers shared
//! between images, a diff round trip, export, and hostile archives.

use std::fs;
use std::path::{Path, PathBuf};

use tar::EntryType;
use thinlayer::image::build::{
    Faults, LayerBuilder, flip_byte, write_docker_save, write_oci_archive, write_oci_archive_with,
};
use thinlayer::image::{Compression, ImageArchive};
use thinlayer::layer::compare_trees;

use crate::fixture::{self, Fixture};

const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(17).wrapping_add(seed))
        .collect()
}

/// A three-layer image: a base tree; a layer that changes, deletes (a
/// whiteout) and makes a directory opaque; a layer with every entry type.
fn app_layers() -> Vec<Vec<u8>> {
    let mut l1 = LayerBuilder::new();
    l1.dir("etc", 0o755);
    l1.file("etc/os-release", b"NAME=test\n", 0o644);
    l1.dir("usr", 0o755);
    l1.dir("usr/lib", 0o755);
    l1.file("usr/lib/big.bin", &pattern(4 * MIB, 1), 0o644);
    l1.file("usr/lib/gone.txt", b"deleted by layer 2\n", 0o644);
    l1.dir("var", 0o755);
    l1.dir("var/cache", 0o755);
    l1.file("var/cache/old-1", b"old\n", 0o644);
    l1.file("var/cache/old-2", b"old\n", 0o644);
    let mut l2 = LayerBuilder::new();
    l2.whiteout("usr/lib/gone.txt");
    l2.opaque("var/cache");
    l2.file("var/cache/new", b"new\n", 0o600);
    l2.file("etc/os-release", b"NAME=test\nVERSION=2\n", 0o644);
    let mut l3 = LayerBuilder::new();
    l3.dir("app", 0o755);
    l3.xattr("user.origin", b"test");
    l3.file_owned(
        "app/run",
        b"#!/bin/sh\necho hi\n",
        0o4755,
        1000,
        1000,
        1_600_000_000,
    );
    l3.symlink("app/lib", "/usr/lib");
    l3.hardlink("app/run-again", "app/run");
    l3.fifo("app/pipe");
    vec![l1.finish(), l2.finish(), l3.finish()]
}

fn status(fx: &Fixture) -> serde_json::Value {
    fx.json(&["pool", "status"])
}

fn small_pool(fx: &Fixture) {
    fx.init_pool("2G", "32M", Some("512M"), &[]);
}

fn mounted(fx: &Fixture, name: &str) -> PathBuf {
    PathBuf::from(fx.ok(&["container", "mount", name]).trim())
}

fn check_app_tree(root: &Path) {
    assert_eq!(
        fs::read(root.join("etc/os-release")).unwrap(),
        b"NAME=test\nVERSION=2\n"
    );
    assert_eq!(
        fs::read(root.join("usr/lib/big.bin")).unwrap(),
        pattern(4 * MIB, 1)
    );
    assert!(!root.join("usr/lib/gone.txt").exists(), "whiteout honoured");
    let cache: Vec<_> = fs::read_dir(root.join("var/cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(cache, ["new"], "opaque directory");
    use std::os::unix::fs::MetadataExt;
    let run = fs::symlink_metadata(root.join("app/run")).unwrap();
    assert_eq!(
        (run.uid(), run.gid(), run.mode() & 0o7777),
        (1000, 1000, 0o4755)
    );
    assert_eq!(run.mtime(), 1_600_000_000);
    assert_eq!(
        run.ino(),
        fs::symlink_metadata(root.join("app/run-again"))
            .unwrap()
            .ino(),
        "hard link"
    );
    assert_eq!(
        fs::read_link(root.join("app/lib")).unwrap(),
        Path::new("/usr/lib")
    );
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::symlink_metadata(root.join("app/pipe"))
            .unwrap()
            .file_type()
    ));
}

#[test]
fn imports_oci_layouts_and_docker_save_archives() {
    fixture::run("import", |fx| {
        small_pool(fx);
        let layers = app_layers();
        let oci_tar = fx.dir.join("app-oci.tar");
        let oci_dir = fx.dir.join("app-oci");
        let docker = fx.dir.join("app-docker.tar");
        write_oci_archive(&oci_tar, "app:1", &layers, Compression::Gzip, true).unwrap();
        write_oci_archive(&oci_dir, "app:zstd", &layers, Compression::Zstd, false).unwrap();
        write_docker_save(&docker, "app:docker", &layers).unwrap();

        let out = fx.json(&["image", "import", oci_tar.to_str().unwrap()]);
        assert_eq!(out[0]["name"], "app:1");
        assert!(
            out[0]["layers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["reused"] == false)
        );
        // The same layers in other formats: stored once, nothing applied again.
        let used = status(fx)["data_used"].as_u64().unwrap();
        for (path, name) in [(&oci_dir, "app:zstd"), (&docker, "app:docker")] {
            let out = fx.json(&["image", "import", path.to_str().unwrap()]);
            assert_eq!(out[0]["name"], name);
            assert!(
                out[0]["layers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|l| l["reused"] == true),
                "{out}"
            );
        }
        assert_eq!(status(fx)["data_used"].as_u64().unwrap(), used);
        let ls = fx.json(&["image", "ls"]);
        let tops: Vec<_> = ls
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["thin_id"].clone())
            .collect();
        assert!(
            tops.windows(2).all(|w| w[0] == w[1]),
            "one top layer for all three: {ls}"
        );

        let inspect = fx.json(&["image", "inspect", "app:1"]);
        let ilayers = inspect["layers"].as_array().unwrap();
        assert_eq!(ilayers.len(), 3);
        assert!(
            ilayers
                .iter()
                .all(|l| l["diff_id"].as_str().unwrap().starts_with("sha256:"))
        );
        assert!(
            ilayers[0]["size"].as_u64().unwrap() >= 4 * MIB as u64,
            "{inspect}"
        );
        let history = fx.ok(&["image", "history", "app:1"]);
        assert!(history.contains("CREATED BY"), "{history}");

        fx.ok(&["container", "create", "app:docker", "c"]);
        check_app_tree(&mounted(fx, "c"));
        fx.ok(&["container", "umount", "c"]);
        let e = fx.fails(&["image", "rm", "app:docker"], 5);
        assert!(e.contains("used by"), "{e}");
        fx.ok(&["container", "rm", "c"]);
        for n in ["app:1", "app:zstd", "app:docker"] {
            fx.ok(&["image", "rm", n]);
        }
        assert_eq!(status(fx)["thin_devices"], 1);
    });
}

#[test]
fn a_layer_two_images_share_is_stored_once() {
    fixture::run("shared", |fx| {
        small_pool(fx);
        let mut base = LayerBuilder::new();
        base.file("big", &pattern(16 * MIB, 7), 0o644);
        let base = base.finish();
        let mut a = LayerBuilder::new();
        a.file("a", &pattern(MIB, 1), 0o644);
        let mut b = LayerBuilder::new();
        b.file("b", &pattern(MIB, 2), 0o644);
        let (pa, pb) = (fx.dir.join("a.tar"), fx.dir.join("b.tar"));
        write_oci_archive(
            &pa,
            "a:1",
            &[base.clone(), a.finish()],
            Compression::Gzip,
            true,
        )
        .unwrap();
        write_oci_archive(&pb, "b:1", &[base, b.finish()], Compression::Gzip, true).unwrap();
        let before = status(fx)["data_used"].as_u64().unwrap();
        fx.ok(&["image", "import", pa.to_str().unwrap()]);
        let after_a = status(fx)["data_used"].as_u64().unwrap();
        fx.ok(&["image", "import", pb.to_str().unwrap()]);
        let after_b = status(fx)["data_used"].as_u64().unwrap();
        assert!(
            after_a - before >= 17 * MIB as u64,
            "image a took {}",
            after_a - before
        );
        assert!(
            after_b - after_a < 4 * MIB as u64,
            "image b took {} more: its 16 MiB base was stored again",
            after_b - after_a
        );
        let ia = fx.json(&["image", "inspect", "a:1"]);
        let ib = fx.json(&["image", "inspect", "b:1"]);
        assert_eq!(
            ia["layers"][0]["thin_id"], ib["layers"][0]["thin_id"],
            "same thin device for the shared layer"
        );
        assert_ne!(ia["layers"][1]["thin_id"], ib["layers"][1]["thin_id"]);
        let tree = fx.ok(&["tree"]);
        println!("{tree}");
    });
}

/// import → container → changes → diff → import that layer on the same
/// parent under another root: the two trees are identical.
#[test]
fn a_diff_round_trips_through_another_root() {
    fixture::run("roundtrip", |fx| {
        small_pool(fx);
        let layers = app_layers();
        let archive = fx.dir.join("app.tar");
        write_oci_archive(&archive, "app:1", &layers, Compression::Gzip, true).unwrap();
        fx.ok(&["image", "import", archive.to_str().unwrap()]);
        fx.ok(&["container", "create", "app:1", "work"]);
        let m = mounted(fx, "work");
        // Add, modify, delete, replace.
        fs::write(m.join("etc/added"), b"added\n").unwrap();
        fs::write(m.join("etc/os-release"), b"NAME=changed\n").unwrap();
        fs::remove_file(m.join("usr/lib/big.bin")).unwrap();
        fs::remove_dir_all(m.join("var/cache")).unwrap();
        fs::create_dir(m.join("var/cache")).unwrap();
        fs::write(m.join("var/cache/fresh"), b"fresh\n").unwrap();
        fs::remove_dir_all(m.join("app")).unwrap();
        fs::write(m.join("app"), b"a file where a directory was\n").unwrap();
        fs::remove_file(m.join("etc/os-release")).unwrap();
        fs::create_dir(m.join("etc/os-release")).unwrap();
        std::os::unix::fs::symlink("../etc/added", m.join("usr/link")).unwrap();
        fs::hard_link(m.join("etc/added"), m.join("usr/added-again")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(m.join("usr/lib"), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(m.join("etc/added"), Some(42), Some(43)).unwrap();
        xattr_set(&m.join("etc/added"), "user.note", b"v1");
        fx.ok(&["container", "umount", "work"]);

        let diff = fx.dir.join("work.tar");
        fx.ok(&["diff", "work", "-o", diff.to_str().unwrap()]);

        // Another root: the original image, then the diff on top of it.
        let mut all = layers.clone();
        all.push(fs::read(&diff).unwrap());
        let archive2 = fx.dir.join("app2.tar");
        write_oci_archive(&archive2, "app:2", &all, Compression::None, true).unwrap();
        fx.with_another_root("other", |fx2| {
            fx2.init_pool("2G", "32M", Some("512M"), &[]);
            fx2.ok(&["image", "import", archive2.to_str().unwrap()]);
            fx2.ok(&["container", "create", "app:2", "again"]);
            let m2 = mounted(fx2, "again");
            let m1 = mounted(fx, "work");
            compare_trees(&m1, &m2).unwrap_or_else(|e| panic!("trees differ: {e}"));
            fx.ok(&["container", "umount", "work"]);
            fx2.ok(&["container", "umount", "again"]);

            // Export writes the image back; importing it elsewhere gives the same tree.
            let exported = fx.dir.join("export.tar");
            fx.ok(&["image", "export", "app:1", "-o", exported.to_str().unwrap()]);
            fx2.ok(&[
                "image",
                "import",
                exported.to_str().unwrap(),
                "--name",
                "back:1",
            ]);
            fx2.ok(&["container", "create", "back:1", "back"]);
            fx.ok(&["container", "create", "app:1", "orig"]);
            let (a, b) = (mounted(fx, "orig"), mounted(fx2, "back"));
            compare_trees(&a, &b).unwrap_or_else(|e| panic!("exported image differs: {e}"));
        });
    });
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a live buffer of value.len() bytes.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

#[test]
fn hostile_archives_are_refused_and_change_nothing() {
    fixture::run("hostile", |fx| {
        small_pool(fx);
        let good = app_layers();
        let archive = fx.dir.join("ok.tar");
        write_oci_archive(&archive, "ok:1", &good[..1], Compression::Gzip, true).unwrap();
        fx.ok(&["image", "import", archive.to_str().unwrap()]);
        let sentinel = fx.dir.join("outside");
        fs::create_dir_all(&sentinel).unwrap();
        let before = (
            fx.json(&["tree"]),
            status(fx)["data_used"].clone(),
            status(fx)["thin_devices"].clone(),
        );

        let raw = |name: &str| {
            let mut l = LayerBuilder::new();
            l.raw_entry(name.as_bytes(), EntryType::Regular, 0o644, b"x", None);
            l.finish()
        };
        let escape = format!("../../../../../..{}/pwned", sentinel.display());
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("traversal", raw(&escape), "pwned"),
            (
                "absolute",
                raw(&format!("{}/pwned", sentinel.display())),
                "pwned",
            ),
            (
                "symlink-escape",
                {
                    let mut l = LayerBuilder::new();
                    l.symlink("evil", &sentinel.display().to_string());
                    l.file("evil/pwned", b"x", 0o644);
                    l.finish()
                },
                "evil/pwned",
            ),
            (
                "symlink-climb",
                {
                    let mut l = LayerBuilder::new();
                    l.symlink("up", "../../../../../../../../..");
                    let name = format!("up{}/pwned", sentinel.display());
                    l.raw_entry(name.as_bytes(), EntryType::Regular, 0o644, b"x", None);
                    l.finish()
                },
                "up",
            ),
            (
                "hardlink-escape",
                {
                    let mut l = LayerBuilder::new();
                    l.hardlink("passwd", "/etc/passwd");
                    l.finish()
                },
                "passwd",
            ),
        ];
        for (what, layer, needle) in cases {
            let path = fx.dir.join(format!("{what}.tar"));
            let mut layers = good[..1].to_vec();
            layers.push(layer);
            write_oci_archive(
                &path,
                &format!("{what}:1"),
                &layers,
                Compression::Gzip,
                true,
            )
            .unwrap();
            let e = fx.fails(&["image", "import", path.to_str().unwrap()], 9);
            assert!(e.contains(needle), "{what}: {e}");
            assert_eq!(
                fs::read_dir(&sentinel).unwrap().count(),
                0,
                "{what} wrote outside its layer"
            );
            let now = (
                fx.json(&["tree"]),
                status(fx)["data_used"].clone(),
                status(fx)["thin_devices"].clone(),
            );
            assert_eq!(now, before, "{what} changed the pool");
        }

        // Bad digests and a truncated archive.
        let full = fx.dir.join("full.tar");
        write_oci_archive(&full, "full:1", &good, Compression::Gzip, true).unwrap();
        let bytes = fs::read(&full).unwrap();
        let cut = fx.dir.join("cut.tar");
        fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = fx.fails(&["image", "import", cut.to_str().unwrap()], 9);
        assert!(e.contains("cut.tar"), "{e}");
        let bad_diff = fx.dir.join("bad-diff.tar");
        let faults = Faults {
            wrong_diff_id: Some(1),
            ..Faults::default()
        };
        write_oci_archive_with(&bad_diff, "bad:1", &good, Compression::Gzip, true, &faults)
            .unwrap();
        let bad_blob = fx.dir.join("bad-blob.tar");
        fs::copy(&full, &bad_blob).unwrap();
        let member = ImageArchive::open(&bad_blob).unwrap().images()[0].layers[2]
            .path
            .clone();
        flip_byte(&bad_blob, &member).unwrap();
        for (what, corrupt) in [("wrong diff id", bad_diff), ("flipped blob byte", bad_blob)] {
            let e = fx.fails(&["image", "import", corrupt.to_str().unwrap()], 9);
            assert!(
                e.contains("digest") || e.contains("image archive"),
                "{what}: {e}"
            );
            let now = (
                fx.json(&["tree"]),
                status(fx)["data_used"].clone(),
                status(fx)["thin_devices"].clone(),
            );
            assert_eq!(now, before, "{what} changed the pool");
        }
    });
}

#[test]
fn commit_records_the_layer_digest_and_a_killed_import_leaves_nothing() {
    fixture::run("digest", |fx| {
        small_pool(fx);
        fx.ok(&["container", "create", "scratch", "c"]);
        let m = mounted(fx, "c");
        fs::write(m.join("hello"), b"hello\n").unwrap();
        fx.ok(&["container", "umount", "c"]);
        let layer = fx.json(&["container", "commit", "--digest", "c", "img:1"]);
        let recorded = layer["labels"]["thinlayer.io/diff-id"]
            .as_str()
            .unwrap()
            .to_string();
        let key = layer["key"].as_str().unwrap().to_string();
        let tar = fx.dir.join("layer.tar");
        fx.ok(&["diff", &key, "-o", tar.to_str().unwrap()]);
        let actual = thinlayer::image::Digest::of_bytes(&fs::read(&tar).unwrap());
        assert_eq!(recorded, actual.to_string());
        let inspect = fx.json(&["image", "inspect", "img:1"]);
        assert_eq!(inspect["layers"][0]["diff_id"], recorded.as_str());

        // An import killed right after applying a layer: the next command
        // removes what it made, and the pool is as before.
        let before = (fx.json(&["tree"]), status(fx)["data_used"].clone());
        let archive = fx.dir.join("app.tar");
        write_oci_archive(&archive, "app:1", &app_layers(), Compression::Gzip, true).unwrap();
        let out = fx.cli_env(
            &["image", "import", archive.to_str().unwrap()],
            &[(
                "THINLAYER_FAILPOINT",
                thinlayer::failpoint::import::AFTER_APPLY.name(),
            )],
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            (fx.json(&["tree"]), status(fx)["data_used"].clone()),
            before
        );
        fx.ok(&["image", "import", archive.to_str().unwrap()]);
    });
}

/// Reading never writes: a container in which every file of an imported
/// image was read has the same size as a twin container of the same image
/// that was mounted and unmounted as often and read one file each time,
/// on ext4 and xfs. (A read-write mount costs a container something of its
/// own, the superblock and journal writes of mount and unmount, and ext4
/// records where it is mounted at the first file open after each mount
/// (`s_last_mounted`); the twin pays both, and the figure is printed.)
/// Imported files carry atime == mtime, which `relatime` would update at
/// the first read, copying a pool block of inode table per group of
/// inodes read: layers are mounted `noatime`.
#[test]
fn reading_every_file_of_an_image_does_not_grow_a_container() {
    for fs_kind in ["ext4", "xfs"] {
        fixture::run(&format!("read-only-reads-{fs_kind}"), |fx| {
            fx.init_pool("2G", "32M", Some("512M"), &["--fs", fs_kind]);
            let mut l = LayerBuilder::new();
            for d in 0..20 {
                l.dir(&format!("d{d}"), 0o755);
                for f in 0..100 {
                    l.file(&format!("d{d}/f{f}"), &pattern(100 + f, d as u8), 0o644);
                }
            }
            let archive = fx.dir.join("many.tar");
            write_oci_archive(&archive, "many:1", &[l.finish()], Compression::Gzip, true).unwrap();
            fx.ok(&["image", "import", archive.to_str().unwrap()]);
            let mut read = 0;
            for name in ["reader", "twin"] {
                fx.ok(&["container", "create", "many:1", name]);
                for _ in 0..2 {
                    let root = mounted(fx, name);
                    let (dirs, files) = if name == "reader" { (20, 100) } else { (1, 1) };
                    for d in 0..dirs {
                        for f in 0..files {
                            let got = fs::read(root.join(format!("d{d}/f{f}"))).unwrap();
                            assert_eq!(got.len(), 100 + f);
                            read += usize::from(name == "reader");
                        }
                    }
                    fx.ok(&["container", "umount", name]);
                }
            }
            let ps = fx.json(&["ps", "-s"]);
            let size = |name: &str| -> u64 {
                ps.as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["name"] == name)
                    .unwrap()["size"]
                    .as_u64()
                    .unwrap()
            };
            println!(
                "{fs_kind}: two mounts reading one file each cost a container {} bytes; reading {read} files in them: {} bytes",
                size("twin"),
                size("reader")
            );
            assert_eq!(
                size("reader"),
                size("twin"),
                "{fs_kind}: reading {read} files wrote to the layer"
            );
            fx.ok(&["container", "rm", "reader"]);
            fx.ok(&["container", "rm", "twin"]);
            fx.ok(&["image", "rm", "many:1"]);
        });
    }
}

/// The tar's mtime of [`holes_layer`]'s `var/sparse.img`.
pub const SPARSE_MTIME: u64 = 1_600_000_000;

/// A layer of 80 MiB of files holding 1 MiB of data: `var/sparse.img`,
/// 64 MiB of zeros written out (mtime [`SPARSE_MTIME`]), and
/// `var/head-then-zeros`, 1 MiB of data then 15 MiB of zeros (returned too).
pub fn holes_layer() -> (Vec<u8>, Vec<u8>) {
    let mut l = LayerBuilder::new();
    l.dir("var", 0o755);
    l.file_owned(
        "var/sparse.img",
        &vec![0u8; 64 * MIB],
        0o644,
        0,
        0,
        SPARSE_MTIME,
    );
    let mut head = pattern(MIB, 3);
    head.extend(vec![0u8; 15 * MIB]);
    l.file("var/head-then-zeros", &head, 0o644);
    (l.finish(), head)
}

/// A file of zeros in a layer (a sparse file written out, as image
/// builders write it) is stored as holes: it takes no pool blocks and reads
/// back as zeros.
#[test]
fn zeros_in_a_layer_take_no_pool_blocks() {
    fixture::run("holes", |fx| {
        small_pool(fx);
        let (layer, head) = holes_layer();
        let archive = fx.dir.join("holes.tar");
        write_oci_archive(&archive, "holes:1", &[layer], Compression::Gzip, true).unwrap();
        let before = status(fx)["data_used"].as_u64().unwrap();
        fx.ok(&["image", "import", archive.to_str().unwrap()]);
        let took = status(fx)["data_used"].as_u64().unwrap() - before;
        println!("80 MiB of files, 1 MiB of it data: the import took {took} bytes of pool");
        assert!(
            took < 4 * MIB as u64,
            "the import took {took} bytes of pool for 1 MiB of data in 80 MiB of files"
        );
        fx.ok(&["container", "create", "holes:1", "c"]);
        let root = mounted(fx, "c");
        let sparse = root.join("var/sparse.img");
        let meta = fs::metadata(&sparse).unwrap();
        assert_eq!(meta.len(), 64 * MIB as u64);
        assert_eq!(
            std::os::unix::fs::MetadataExt::blocks(&meta),
            0,
            "a file of zeros holds blocks"
        );
        assert!(fs::read(&sparse).unwrap().iter().all(|&b| b == 0));
        assert_eq!(fs::read(root.join("var/head-then-zeros")).unwrap(), head);
        fx.ok(&["container", "umount", "c"]);
        fx.ok(&["container", "rm", "c"]);
    });
}
