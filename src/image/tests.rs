//! Tests for image archives: every format read back, exports round-tripped,
//! and every kind of damage reported as an error.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::build::{
    Faults, LayerBuilder, compress, flip_byte, read_layer, write_docker_save,
    write_docker_save_running, write_docker_save_with, write_oci_archive, write_oci_archive_with,
};
use super::source::tar_member;
use super::*;
use crate::error::Error;
use crate::testutil::TempDir;

fn layer_one() -> Vec<u8> {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .file("etc/hosts", b"127.0.0.1 localhost\n", 0o644)
        .dir("bin", 0o755)
        .file("bin/sh", &vec![0x7f; 70_000], 0o755)
        .symlink("bin/ash", "sh")
        .dir("var/cache", 0o755)
        .file("var/cache/old", b"stale", 0o600);
    b.finish()
}

fn layer_two() -> Vec<u8> {
    let mut b = LayerBuilder::new();
    b.whiteout("etc/hosts")
        .opaque("var/cache")
        .xattr("user.note", b"hello")
        .file_owned("etc/motd", b"welcome\n", 0o644, 1000, 1000, 1234)
        .hardlink("etc/motd2", "etc/motd")
        .fifo("run-fifo");
    b.finish()
}

fn layers() -> Vec<Vec<u8>> {
    vec![layer_one(), layer_two()]
}

/// The chain id of two layers, computed by hand from the spec's formula.
fn hand_chain(a: &Digest, b: &Digest) -> Digest {
    use sha2::Digest as _;
    let text = format!("sha256:{} sha256:{}", a.hex(), b.hex());
    let raw: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
    Digest::from_sha256(&raw)
}

/// Opens `path` and checks one image named `name` holding `layers`.
fn check_archive(path: &Path, name: &str, layers: &[Vec<u8>], compression: Compression) {
    let ar = ImageArchive::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    assert_eq!(ar.images().len(), 1);
    let img = &ar.images()[0];
    assert_eq!(img.name.as_deref(), Some(name));
    assert_eq!(ar.image(None).unwrap().name.as_deref(), Some(name));
    assert_eq!(
        ar.image(Some(name)).unwrap().config_digest,
        img.config_digest
    );
    let diffs: Vec<Digest> = layers.iter().map(|l| Digest::of_bytes(l)).collect();
    assert_eq!(img.config.diff_ids, diffs);
    assert_eq!(img.layers.len(), layers.len());
    assert_eq!(img.layers[0].chain_id, diffs[0]);
    assert_eq!(img.layers[1].chain_id, hand_chain(&diffs[0], &diffs[1]));
    assert_eq!(img.top_chain_id(), Some(&img.layers[1].chain_id));
    assert_eq!(img.config.os.as_deref(), Some("linux"));
    assert_eq!(img.config.history.len(), layers.len());
    assert_eq!(img.config.history[1].created_by.as_deref(), Some("layer 2"));
    assert_eq!(img.config.raw["config"]["Cmd"][0], "/bin/sh");
    for (n, (l, want)) in img.layers.iter().zip(layers).enumerate() {
        assert_eq!(l.compression, compression, "{}", l.label);
        assert_eq!(l.diff_id, diffs[n]);
        assert!(
            l.label.starts_with(&format!("layer {} of {name} (", n + 1)),
            "{}",
            l.label
        );
        let got = read_layer(&ar, l).unwrap_or_else(|e| panic!("{}: {e}", l.label));
        assert!(got == *want, "{} differs", l.label);
    }
}

const ALL: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zstd];

#[test]
fn oci_directory_in_every_compression() {
    let t = TempDir::new("img-oci-dir");
    let ls = layers();
    for c in ALL {
        let dest = t.path().join(format!("oci-{c}"));
        write_oci_archive(&dest, "app:1", &ls, c, false).unwrap();
        assert!(dest.join("oci-layout").is_file());
        check_archive(&dest, "app:1", &ls, c);
        let ar = ImageArchive::open(&dest).unwrap();
        assert_eq!(ar.format(), ArchiveFormat::OciLayout);
        let img = &ar.images()[0];
        assert!(img.manifest_digest.is_some());
        assert_eq!(img.layers[0].path, img.layers[0].blob.blob_path());
        assert_eq!(
            img.layers[0].size,
            compress(&ls[0], c).unwrap().len() as u64
        );
    }
}

#[test]
fn oci_tar_in_every_compression() {
    let t = TempDir::new("img-oci-tar");
    let ls = layers();
    for c in ALL {
        let dest = t.path().join(format!("oci-{c}.tar"));
        write_oci_archive(&dest, "registry.example/app:1", &ls, c, true).unwrap();
        assert!(dest.is_file());
        check_archive(&dest, "registry.example/app:1", &ls, c);
    }
    // No staging leftovers next to the archives.
    let names: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn docker_save_tar_and_directory() {
    let t = TempDir::new("img-docker");
    let ls = layers();
    let tar = t.path().join("save.tar");
    write_docker_save(&tar, "app:1", &ls).unwrap();
    check_archive(&tar, "app:1", &ls, Compression::None);
    let ar = ImageArchive::open(&tar).unwrap();
    assert_eq!(ar.format(), ArchiveFormat::DockerSave);
    let img = &ar.images()[0];
    assert_eq!(img.manifest_digest, None);
    assert!(img.layers[0].path.ends_with("/layer.tar"));
    // An uncompressed member is its own blob.
    assert_eq!(img.layers[0].blob, img.layers[0].diff_id);

    let dir = t.path().join("save-dir");
    write_docker_save(&dir, "app:1", &ls).unwrap();
    assert!(dir.join("repositories").is_file());
    check_archive(&dir, "app:1", &ls, Compression::None);
}

#[test]
fn docker_save_running_a_given_process() {
    let t = TempDir::new("img-docker-process");
    let ls = layers();
    let dir = t.path().join("d");
    let process = json!({ "Env": ["PATH=/bin"], "Entrypoint": ["/bin/sleep", "1000"] });
    write_docker_save_running(&dir, "app:1", &ls, &process).unwrap();
    let ar = ImageArchive::open(&dir).unwrap();
    let img = &ar.images()[0];
    assert_eq!(img.name.as_deref(), Some("app:1"));
    assert_eq!(img.config.raw["config"], process, "{}", img.config.raw);
    let diffs: Vec<Digest> = ls.iter().map(|l| Digest::of_bytes(l)).collect();
    assert_eq!(img.config.diff_ids, diffs);
    assert_eq!(img.config.history.len(), ls.len());
    for (l, want) in img.layers.iter().zip(&ls) {
        assert!(read_layer(&ar, l).unwrap() == *want, "{} differs", l.label);
    }
}

#[test]
fn docker_save_with_oci_blobs_and_both_indexes() {
    // Docker 25+ writes an OCI layout plus a manifest.json naming blobs.
    let t = TempDir::new("img-docker25");
    let ls = layers();
    let dir = t.path().join("d");
    write_oci_archive(&dir, "app:1", &ls, Compression::Gzip, false).unwrap();
    let ar = ImageArchive::open(&dir).unwrap();
    let img = &ar.images()[0];
    let manifest = json!([{
        "Config": img.config_digest.blob_path(),
        "RepoTags": ["docker.io/library/app:1"],
        "Layers": img.layers.iter().map(|l| l.path.clone()).collect::<Vec<_>>(),
    }]);
    fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    // Both present: OCI wins.
    let both = ImageArchive::open(&dir).unwrap();
    assert_eq!(both.format(), ArchiveFormat::OciLayout);
    assert_eq!(both.images()[0].name.as_deref(), Some("app:1"));
    // Without index.json: read through manifest.json.
    fs::remove_file(dir.join("index.json")).unwrap();
    let docker = ImageArchive::open(&dir).unwrap();
    assert_eq!(docker.format(), ArchiveFormat::DockerSave);
    let dimg = &docker.images()[0];
    assert_eq!(dimg.name.as_deref(), Some("docker.io/library/app:1"));
    assert_eq!(dimg.config_digest, img.config_digest);
    for (a, b) in dimg.layers.iter().zip(&img.layers) {
        assert_eq!(a.blob, b.blob);
        assert_eq!(a.compression, Compression::Gzip);
        assert_eq!(a.chain_id, b.chain_id);
    }
    assert_eq!(read_layer(&docker, &dimg.layers[1]).unwrap(), ls[1]);
}

#[test]
fn docker_save_compressed_member_gets_its_digest() {
    let t = TempDir::new("img-docker-gz");
    let ls = layers();
    let dir = t.path().join("d");
    write_docker_save(&dir, "app:1", &ls).unwrap();
    let ar = ImageArchive::open(&dir).unwrap();
    let path = ar.images()[0].layers[1].path.clone();
    let gz = compress(&ls[1], Compression::Gzip).unwrap();
    fs::write(dir.join(&path), &gz).unwrap();
    let ar = ImageArchive::open(&dir).unwrap();
    let l = &ar.images()[0].layers[1];
    assert_eq!(l.compression, Compression::Gzip);
    assert_eq!(l.blob, Digest::of_bytes(&gz));
    assert_eq!(read_layer(&ar, l).unwrap(), ls[1]);
}

fn write_layer_files(dir: &Path, layers: &[Vec<u8>]) -> Vec<PathBuf> {
    layers
        .iter()
        .enumerate()
        .map(|(n, l)| {
            let p = dir.join(format!("layer{n}.tar"));
            fs::write(&p, l).unwrap();
            p
        })
        .collect()
}

#[test]
fn export_round_trip_directory_and_tar() {
    let t = TempDir::new("img-export");
    let ls = layers();
    let mut extra = LayerBuilder::new();
    extra.file("app/bin", b"#!/bin/sh\necho hi\n", 0o755);
    let third = extra.finish();
    let files = write_layer_files(t.path(), &[ls[0].clone(), ls[1].clone(), third.clone()]);
    let base = json!({
        "architecture": "riscv64",
        "os": "linux",
        "config": { "Env": ["A=1"] },
        "history": [{ "created_by": "base" }],
        "rootfs": { "type": "layers", "diff_ids": [] },
    });
    let images = vec![
        ExportImage {
            name: "app:1".into(),
            layers: files[..2].to_vec(),
            config: Some(base.clone()),
        },
        ExportImage {
            name: "tool:2".into(),
            layers: vec![files[0].clone(), files[2].clone()],
            config: None,
        },
    ];
    for dest in [t.path().join("out"), t.path().join("out.tar")] {
        write_oci_layout(&dest, &images).unwrap();
        let ar = ImageArchive::open(&dest).unwrap();
        assert_eq!(ar.images().len(), 2);
        let app = ar.image(Some("app:1")).unwrap();
        let tool = ar.image(Some("tool:2")).unwrap();
        assert_eq!(
            app.config.diff_ids,
            vec![Digest::of_bytes(&ls[0]), Digest::of_bytes(&ls[1])]
        );
        assert_eq!(
            tool.config.diff_ids,
            vec![Digest::of_bytes(&ls[0]), Digest::of_bytes(&third)]
        );
        assert_eq!(
            app.layers[1].chain_id,
            hand_chain(&app.config.diff_ids[0], &app.config.diff_ids[1])
        );
        assert_eq!(app.layers[0].blob, tool.layers[0].blob);
        assert_eq!(app.config.architecture.as_deref(), Some("riscv64"));
        assert_eq!(app.config.raw["config"]["Env"][0], "A=1");
        // History padded to one entry per layer.
        assert_eq!(app.config.history.len(), 2);
        assert_eq!(app.config.history[0].created_by.as_deref(), Some("base"));
        assert_eq!(
            tool.config.architecture.as_deref(),
            Some(host_architecture())
        );
        for l in app.layers.iter().chain(&tool.layers) {
            assert_eq!(l.compression, Compression::Gzip);
        }
        assert_eq!(read_layer(&ar, &app.layers[0]).unwrap(), ls[0]);
        assert_eq!(read_layer(&ar, &app.layers[1]).unwrap(), ls[1]);
        assert_eq!(read_layer(&ar, &tool.layers[1]).unwrap(), third);
        ar.image(Some("nope")).unwrap_err();
        assert!(matches!(ar.image(None), Err(Error::Invalid { .. })));
    }
    // The shared bottom layer is stored once: 3 layers, 2 configs, 2 manifests.
    let blobs = fs::read_dir(t.path().join("out/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 7);
    let leftovers: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn export_refuses_bad_destinations_and_inputs() {
    let t = TempDir::new("img-export-bad");
    let files = write_layer_files(t.path(), &layers());
    let img = |layers: Vec<PathBuf>| ExportImage {
        name: "app:1".into(),
        layers,
        config: None,
    };
    let full = t.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("x"), b"x").unwrap();
    let e = write_oci_layout(&full, &[img(files.clone())]).unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
    let tar = t.path().join("exists.tar");
    fs::write(&tar, b"").unwrap();
    let e = write_oci_layout(&tar, &[img(files.clone())]).unwrap_err();
    assert!(matches!(e, Error::Exists { .. }), "{e}");
    // An empty existing directory is fine.
    let empty = t.path().join("empty");
    fs::create_dir(&empty).unwrap();
    write_oci_layout(&empty, &[img(files.clone())]).unwrap();
    ImageArchive::open(&empty).unwrap();
    // Compressed input, missing input, duplicate names, no images.
    let gz = t.path().join("l.tar.gz");
    fs::write(&gz, compress(&layers()[0], Compression::Gzip).unwrap()).unwrap();
    let e = write_oci_layout(&t.path().join("o1"), &[img(vec![gz])]).unwrap_err();
    assert!(e.to_string().contains("compressed"), "{e}");
    assert!(!t.path().join("o1").exists());
    let e =
        write_oci_layout(&t.path().join("o2"), &[img(vec![t.path().join("nope")])]).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    let e = write_oci_layout(
        &t.path().join("o3"),
        &[img(files.clone()), img(files.clone())],
    )
    .unwrap_err();
    assert!(e.to_string().contains("named twice"), "{e}");
    write_oci_layout(&t.path().join("o4"), &[]).unwrap_err();
    let bad_cfg = ExportImage {
        config: Some(json!([1])),
        ..img(files)
    };
    let e = write_oci_layout(&t.path().join("o5"), &[bad_cfg]).unwrap_err();
    assert!(e.to_string().contains("not a JSON object"), "{e}");
    let leftovers = fs::read_dir(t.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("partial")
        })
        .count();
    assert_eq!(leftovers, 0);
}

fn expect_archive_err(path: &Path, needle: &str) -> String {
    match ImageArchive::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e @ Error::Archive { .. }) => {
            let s = e.to_string();
            assert!(s.contains(needle), "{s:?} does not mention {needle:?}");
            s
        }
        Err(e) => panic!("{}: wrong error kind: {e:?}", path.display()),
    }
}

#[test]
fn flipped_byte_in_a_layer_blob_is_a_digest_error() {
    let t = TempDir::new("img-flip");
    let ls = layers();
    for c in ALL {
        for as_tar in [false, true] {
            let dest = t.path().join(format!("a-{c}-{as_tar}"));
            write_oci_archive(&dest, "app:1", &ls, c, as_tar).unwrap();
            let path = ImageArchive::open(&dest).unwrap().images()[0].layers[1]
                .path
                .clone();
            flip_byte(&dest, &path).unwrap();
            // Sizes still match: the archive opens; reading finds the damage.
            let ar = ImageArchive::open(&dest).unwrap();
            let l = &ar.images()[0].layers[1];
            let mut r = ar.open_layer(l).unwrap();
            let mut sink = Vec::new();
            let read = r.read_to_end(&mut sink);
            let err = r.finish().unwrap_err();
            match &err {
                Error::Digest { what, expected, .. } => {
                    assert_eq!(what, &format!("layer 2 of app:1 ({path})"), "{c}");
                    assert_eq!(expected, l.blob.as_str());
                }
                other => panic!("{c} {as_tar}: {other:?}"),
            }
            assert!(
                err.to_string()
                    .starts_with("layer 2 of app:1 (blobs/sha256/")
            );
            assert!(err.to_string().contains("digest mismatch"), "{err}");
            if let Err(e) = read {
                // A read error carries the same error.
                let inner = e.downcast::<Error>().unwrap();
                assert!(matches!(inner, Error::Digest { .. }), "{inner:?}");
            }
            // The first layer is untouched.
            assert_eq!(read_layer(&ar, &ar.images()[0].layers[0]).unwrap(), ls[0]);
        }
    }
}

#[test]
fn wrong_diff_id_is_a_digest_error() {
    let t = TempDir::new("img-diffid");
    let ls = layers();
    let faults = Faults {
        wrong_diff_id: Some(0),
        ..Faults::default()
    };
    for c in ALL {
        let dest = t.path().join(format!("a-{c}.tar"));
        write_oci_archive_with(&dest, "app:1", &ls, c, true, &faults).unwrap();
        let ar = ImageArchive::open(&dest).unwrap();
        let l = &ar.images()[0].layers[0];
        let err = read_layer(&ar, l).unwrap_err();
        match &err {
            Error::Digest { what, actual, .. } => {
                assert!(
                    what.starts_with("layer 1 of app:1 (blobs/sha256/"),
                    "{what}"
                );
                assert!(what.contains("diff_id"), "{what}");
                assert_eq!(actual, Digest::of_bytes(&ls[0]).as_str());
            }
            other => panic!("{other:?}"),
        }
        // Layer 2 is fine.
        assert_eq!(read_layer(&ar, &ar.images()[0].layers[1]).unwrap(), ls[1]);
    }
    // docker save: the member is checked against the (wrong) diff id.
    let dest = t.path().join("save.tar");
    write_docker_save_with(&dest, "app:1", &ls, &faults).unwrap();
    let ar = ImageArchive::open(&dest).unwrap();
    let err = read_layer(&ar, &ar.images()[0].layers[0]).unwrap_err();
    assert!(matches!(err, Error::Digest { .. }), "{err:?}");
    assert!(err.to_string().starts_with("layer 1 of app:1 ("), "{err}");
}

#[test]
fn wrong_config_digest_fails_open() {
    let t = TempDir::new("img-config");
    let ls = layers();
    for as_tar in [false, true] {
        let dest = t.path().join(format!("a-{as_tar}"));
        write_oci_archive(&dest, "app:1", &ls, Compression::Gzip, as_tar).unwrap();
        let cfg = ImageArchive::open(&dest).unwrap().images()[0]
            .config_digest
            .blob_path();
        flip_byte(&dest, &cfg).unwrap();
        match ImageArchive::open(&dest) {
            Err(Error::Digest { what, .. }) => {
                assert_eq!(what, format!("config of app:1 ({cfg})"));
            }
            other => panic!("{other:?}"),
        }
    }
    let dest = t.path().join("save.tar");
    write_docker_save(&dest, "app:1", &ls).unwrap();
    let ar = ImageArchive::open(&dest).unwrap();
    let cfg = format!("{}.json", ar.images()[0].config_digest.hex());
    flip_byte(&dest, &cfg).unwrap();
    match ImageArchive::open(&dest) {
        Err(e @ Error::Digest { .. }) => {
            assert!(e.to_string().starts_with("config of app:1 ("), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_manifest_digest_fails_open() {
    let t = TempDir::new("img-manifest");
    let dest = t.path().join("a");
    write_oci_archive(&dest, "app:1", &layers(), Compression::Gzip, false).unwrap();
    let m = ImageArchive::open(&dest).unwrap().images()[0]
        .manifest_digest
        .clone()
        .unwrap();
    flip_byte(&dest, &m.blob_path()).unwrap();
    match ImageArchive::open(&dest) {
        Err(e @ Error::Digest { .. }) => {
            assert!(e.to_string().starts_with("manifest of app:1"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncated_archives_fail_and_never_read_short() {
    let t = TempDir::new("img-trunc");
    let ls = layers();
    for c in ALL {
        let whole = t.path().join(format!("whole-{c}.tar"));
        write_oci_archive(&whole, "app:1", &ls, c, true).unwrap();
        let bytes = fs::read(&whole).unwrap();
        let half = t.path().join(format!("half-{c}.tar"));
        fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
        expect_archive_err(&half, "truncated");
        // Every cut either fails to open or reads back intact.
        let cut = t.path().join(format!("cut-{c}.tar"));
        for n in (0..bytes.len()).step_by(bytes.len() / 61 + 1) {
            fs::write(&cut, &bytes[..n]).unwrap();
            if let Ok(ar) = ImageArchive::open(&cut) {
                for (l, want) in ar.images()[0].layers.iter().zip(&ls) {
                    assert_eq!(&read_layer(&ar, l).unwrap(), want);
                }
            }
        }
    }
    let save = t.path().join("save.tar");
    write_docker_save(&save, "app:1", &ls).unwrap();
    let bytes = fs::read(&save).unwrap();
    let half = t.path().join("save-half.tar");
    fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        ImageArchive::open(&half),
        Err(Error::Archive { .. })
    ));
}

#[test]
fn blob_cut_after_open_is_an_error() {
    let t = TempDir::new("img-cut-late");
    let ls = layers();
    for c in ALL {
        let dest = t.path().join(format!("a-{c}.tar"));
        write_oci_archive(&dest, "app:1", &ls, c, true).unwrap();
        let ar = ImageArchive::open(&dest).unwrap();
        let l = ar.images()[0].layers[0].clone();
        let m = tar_member(&dest, &l.path).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&dest)
            .unwrap()
            .set_len(m.offset + m.size / 2)
            .unwrap();
        let err = read_layer(&ar, &l).unwrap_err();
        assert!(matches!(err, Error::Archive { .. }), "{c}: {err:?}");
        assert!(err.to_string().contains("layer 1 of app:1"), "{err}");
        // finish() alone (no reads) reports it too.
        let r = ar.open_layer(&l).unwrap();
        assert!(r.finish().is_err());
    }
    // Directory layout: the blob file shrinks.
    let dest = t.path().join("dir");
    write_oci_archive(&dest, "app:1", &ls, Compression::None, false).unwrap();
    let ar = ImageArchive::open(&dest).unwrap();
    let l = ar.images()[0].layers[1].clone();
    let p = dest.join(&l.path);
    let half = fs::read(&p).unwrap();
    fs::write(&p, &half[..half.len() / 2]).unwrap();
    let err = read_layer(&ar, &l).unwrap_err();
    assert!(err.to_string().contains("layer 2 of app:1"), "{err}");
}

#[test]
fn missing_blob_fails_open() {
    let t = TempDir::new("img-missing");
    let ls = layers();
    let faults = Faults {
        missing_layer: Some(1),
        ..Faults::default()
    };
    for as_tar in [false, true] {
        let dest = t.path().join(format!("a-{as_tar}"));
        write_oci_archive_with(&dest, "app:1", &ls, Compression::Gzip, as_tar, &faults).unwrap();
        let s = expect_archive_err(&dest, "is missing");
        assert!(s.contains("blobs/sha256/"), "{s}");
        assert!(s.contains("layer 2 of app:1"), "{s}");
    }
    let dest = t.path().join("save.tar");
    write_docker_save_with(&dest, "app:1", &ls, &faults).unwrap();
    expect_archive_err(&dest, "layer.tar is missing");
}

#[test]
fn layer_count_mismatch_fails_open() {
    let t = TempDir::new("img-count");
    let faults = Faults {
        extra_diff_id: true,
        ..Faults::default()
    };
    let dest = t.path().join("a.tar");
    write_oci_archive_with(&dest, "app:1", &layers(), Compression::Zstd, true, &faults).unwrap();
    expect_archive_err(&dest, "lists 2 layers but the config has 3 diff_ids");
    let dest = t.path().join("save.tar");
    write_docker_save_with(&dest, "app:1", &layers(), &faults).unwrap();
    expect_archive_err(&dest, "lists 2 layers but the config has 3 diff_ids");
}

#[test]
fn descriptor_size_and_media_type_are_checked() {
    let t = TempDir::new("img-desc");
    let ls = layers();
    let dest = t.path().join("size");
    let faults = Faults {
        wrong_layer_size: Some(0),
        ..Faults::default()
    };
    write_oci_archive_with(&dest, "app:1", &ls, Compression::Gzip, false, &faults).unwrap();
    expect_archive_err(&dest, "but the manifest says");

    let dest = t.path().join("unknown");
    let faults = Faults {
        layer_media_type: Some("application/vnd.example.thing".into()),
        ..Faults::default()
    };
    write_oci_archive_with(&dest, "app:1", &ls, Compression::Gzip, false, &faults).unwrap();
    expect_archive_err(&dest, "unsupported layer media type");

    // The media type says gzip, the bytes are zstd.
    let dest = t.path().join("liar");
    let faults = Faults {
        layer_media_type: Some(media_type::OCI_LAYER_GZIP.into()),
        ..Faults::default()
    };
    write_oci_archive_with(&dest, "app:1", &ls, Compression::Zstd, false, &faults).unwrap();
    expect_archive_err(
        &dest,
        "the media type says gzip but the blob holds zstd data",
    );

    // Docker's gzip type over plain bytes is accepted by magic.
    let dest = t.path().join("docker-type");
    let faults = Faults {
        layer_media_type: Some(media_type::DOCKER_LAYER_GZIP.into()),
        ..Faults::default()
    };
    write_oci_archive_with(&dest, "app:1", &ls, Compression::None, false, &faults).unwrap();
    check_archive(&dest, "app:1", &ls, Compression::None);
}

#[test]
fn not_archives_are_refused() {
    let t = TempDir::new("img-garbage");
    let empty_dir = t.path().join("empty");
    fs::create_dir(&empty_dir).unwrap();
    expect_archive_err(&empty_dir, "neither an OCI image layout");

    let garbage: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let g = t.path().join("garbage");
    fs::write(&g, &garbage).unwrap();
    expect_archive_err(&g, "not a tar archive");
    fs::write(&g, b"hello").unwrap();
    expect_archive_err(&g, "not a tar archive");
    fs::write(&g, b"").unwrap();
    expect_archive_err(&g, "empty file");

    // A tar of something else.
    let mut b = LayerBuilder::new();
    b.file("hello.txt", b"hi", 0o644);
    fs::write(&g, b.finish()).unwrap();
    expect_archive_err(&g, "nor a docker save archive");

    // A compressed outer archive.
    let whole = t.path().join("a.tar");
    write_oci_archive(&whole, "app:1", &layers(), Compression::None, true).unwrap();
    let gz = t.path().join("a.tar.gz");
    fs::write(
        &gz,
        compress(&fs::read(&whole).unwrap(), Compression::Gzip).unwrap(),
    )
    .unwrap();
    expect_archive_err(&gz, "gzip-compressed; decompress it first");
    let zst = t.path().join("a.tar.zst");
    fs::write(
        &zst,
        compress(&fs::read(&whole).unwrap(), Compression::Zstd).unwrap(),
    )
    .unwrap();
    expect_archive_err(&zst, "zstd-compressed");

    match ImageArchive::open(&t.path().join("absent")) {
        Err(Error::NotFound {
            kind: "image archive",
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_layout_documents_are_refused() {
    let t = TempDir::new("img-docs");
    let fresh = |n: &str| {
        let d = t.path().join(n);
        write_oci_archive(&d, "app:1", &layers(), Compression::Gzip, false).unwrap();
        d
    };
    let d = fresh("version");
    fs::write(d.join("oci-layout"), br#"{"imageLayoutVersion":"2.0.0"}"#).unwrap();
    expect_archive_err(&d, "unsupported imageLayoutVersion");

    let d = fresh("nolayout");
    fs::remove_file(d.join("oci-layout")).unwrap();
    expect_archive_err(&d, "oci-layout is missing");

    let d = fresh("noindex");
    fs::remove_file(d.join("index.json")).unwrap();
    expect_archive_err(&d, "index.json is missing");

    let d = fresh("badjson");
    fs::write(d.join("index.json"), b"{\"manifests\": [").unwrap();
    expect_archive_err(&d, "index.json: invalid JSON");

    let d = fresh("nothing");
    fs::write(
        d.join("index.json"),
        br#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .unwrap();
    expect_archive_err(&d, "lists no images");

    let d = fresh("baddigest");
    fs::write(
        d.join("index.json"),
        br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:XYZ","size":1}]}"#,
    )
    .unwrap();
    expect_archive_err(&d, "invalid digest");

    let d = fresh("artifact");
    let idx: Value = serde_json::from_slice(&fs::read(d.join("index.json")).unwrap()).unwrap();
    let mut idx2 = idx.clone();
    idx2["manifests"][0]["mediaType"] = json!("application/vnd.example.artifact");
    fs::write(d.join("index.json"), idx2.to_string()).unwrap();
    expect_archive_err(&d, "unsupported media type");

    // Hostile docker manifest paths stay inside the archive.
    let d = t.path().join("hostile");
    fs::create_dir(&d).unwrap();
    fs::write(
        d.join("manifest.json"),
        br#"[{"Config":"../../etc/passwd","RepoTags":["x:1"],"Layers":[]}]"#,
    )
    .unwrap();
    expect_archive_err(&d, "not a relative path inside the archive");
    fs::write(d.join("manifest.json"), b"{}").unwrap();
    expect_archive_err(&d, "manifest.json: invalid JSON");
}

/// Rewrites index.json to point at a nested index listing `platforms`, the
/// host's one (if listed) being the real manifest.
fn nest_index(d: &Path, platforms: &[(&str, &str)]) {
    let idx: Value = serde_json::from_slice(&fs::read(d.join("index.json")).unwrap()).unwrap();
    let real = idx["manifests"][0].clone();
    let other_manifest = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
    let other = Digest::of_bytes(other_manifest);
    fs::write(d.join(other.blob_path()), other_manifest).unwrap();
    let entries: Vec<Value> = platforms
        .iter()
        .map(|(os, arch)| {
            let mut e = if *os == "linux" && *arch == host_architecture() {
                real.clone()
            } else {
                json!({
                    "mediaType": media_type::OCI_MANIFEST,
                    "digest": other,
                    "size": other_manifest.len(),
                })
            };
            e["platform"] = json!({ "os": os, "architecture": arch });
            e
        })
        .collect();
    let nested =
        json!({ "schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": entries });
    let bytes = nested.to_string().into_bytes();
    let nd = Digest::of_bytes(&bytes);
    fs::write(d.join(nd.blob_path()), &bytes).unwrap();
    let top = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type::OCI_INDEX,
            "digest": nd,
            "size": bytes.len(),
            "annotations": { media_type::REF_NAME: "multi:1" },
        }],
    });
    fs::write(d.join("index.json"), top.to_string()).unwrap();
}

#[test]
fn nested_index_is_followed_for_the_host_platform() {
    let t = TempDir::new("img-nested");
    let ls = layers();
    let d = t.path().join("multi");
    write_oci_archive(&d, "app:1", &ls, Compression::Gzip, false).unwrap();
    nest_index(
        &d,
        &[
            ("linux", "mips64"),
            ("linux", host_architecture()),
            ("unknown", "unknown"),
        ],
    );
    let ar = ImageArchive::open(&d).unwrap();
    let img = &ar.images()[0];
    assert_eq!(img.name.as_deref(), Some("multi:1"));
    assert_eq!(read_layer(&ar, &img.layers[1]).unwrap(), ls[1]);

    let d = t.path().join("foreign");
    write_oci_archive(&d, "app:1", &ls, Compression::Gzip, false).unwrap();
    nest_index(&d, &[("linux", "mips64"), ("windows", host_architecture())]);
    let s = expect_archive_err(&d, "no image for linux/");
    assert!(s.contains("linux/mips64"), "{s}");
}

#[test]
fn random_damage_never_panics_or_reads_wrong_content() {
    let t = TempDir::new("img-fuzz");
    let ls = layers();
    for c in ALL {
        let whole = t.path().join(format!("w-{c}.tar"));
        write_oci_archive(&whole, "app:1", &ls, c, true).unwrap();
        let bytes = fs::read(&whole).unwrap();
        let bad = t.path().join(format!("bad-{c}.tar"));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..150 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b = bytes.clone();
            let at = (x % b.len() as u64) as usize;
            b[at] ^= 1 << (x >> 60 & 7);
            fs::write(&bad, &b).unwrap();
            let Ok(ar) = ImageArchive::open(&bad) else {
                continue;
            };
            for img in ar.images() {
                for (l, want) in img.layers.iter().zip(&ls) {
                    if let Ok(got) = read_layer(&ar, l) {
                        assert_eq!(&got, want, "flip at {at} read back different content");
                    }
                }
            }
        }
    }
}

#[test]
fn layer_reader_partial_read_then_finish() {
    fn is_send<T: Send>(_: &T) {}
    let t = TempDir::new("img-partial");
    let ls = layers();
    for c in ALL {
        let dest = t.path().join(format!("a-{c}"));
        write_oci_archive(&dest, "app:1", &ls, c, false).unwrap();
        let ar = ImageArchive::open(&dest).unwrap();
        let l = &ar.images()[0].layers[0];
        let mut r = ar.open_layer(l).unwrap();
        is_send(&r);
        assert!(r.label().starts_with("layer 1 of app:1"));
        let mut head = [0u8; 100];
        r.read_exact(&mut head).unwrap();
        assert_eq!(&head[..], &ls[0][..100]);
        assert_eq!(r.uncompressed_len(), 100);
        r.finish().unwrap();
        // A tar reader stopping at the end-of-archive blocks, then finish.
        let mut r = ar.open_layer(l).unwrap();
        let mut entries = 0;
        {
            let mut t = tar::Archive::new(&mut r);
            for e in t.entries().unwrap() {
                e.unwrap();
                entries += 1;
            }
        }
        assert_eq!(entries, 7);
        r.finish().unwrap();
    }
}

#[test]
fn layer_builder_writes_what_tests_need() {
    let mut b = LayerBuilder::new();
    let long = format!("deep/{}/file", "d".repeat(120));
    b.dir("a", 0o700)
        .xattr("security.capability", b"\x01\x02\x00")
        .xattr("user.x", b"y")
        .file("a/f", b"data", 0o640)
        .file(&long, b"long", 0o644)
        .whiteout("a/gone")
        .whiteout("top")
        .opaque("a")
        .symlink("a/up", "../../etc/passwd")
        .hardlink("a/h", "a/f")
        .fifo("a/p")
        .char_device("a/null", 1, 3)
        .raw_entry(b"../escape", tar::EntryType::Regular, 0o644, b"x", None)
        .raw_entry(b"/abs/path", tar::EntryType::Regular, 0o644, b"", None)
        .raw_entry(
            b"link",
            tar::EntryType::Link,
            0o644,
            b"",
            Some(b"../../outside"),
        )
        .raw_entry(
            format!("{}/../x", "n".repeat(150)).as_bytes(),
            tar::EntryType::Regular,
            0o644,
            b"",
            None,
        );
    let bytes = b.finish();
    let mut ar = tar::Archive::new(&bytes[..]);
    let mut seen = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let mut xattrs = Vec::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                xattrs.push((x.key().unwrap().to_string(), x.value_bytes().to_vec()));
            }
        }
        seen.push((
            path,
            e.header().entry_type(),
            link,
            xattrs,
            e.header().mode().unwrap(),
        ));
    }
    let find = |p: &str| {
        seen.iter()
            .find(|s| s.0 == p)
            .unwrap_or_else(|| panic!("{p} not in {seen:?}"))
    };
    assert_eq!(find("a/").1, tar::EntryType::Directory);
    assert_eq!(find("a/").4, 0o700);
    let f = find("a/f");
    assert_eq!(
        f.3,
        vec![
            (
                "SCHILY.xattr.security.capability".to_string(),
                b"\x01\x02\x00".to_vec()
            ),
            ("SCHILY.xattr.user.x".to_string(), b"y".to_vec()),
        ]
    );
    assert!(find("a/").3.is_empty());
    find(&long);
    find("a/.wh.gone");
    find(".wh.top");
    find("a/.wh..wh..opq");
    assert_eq!(find("a/up").2.as_deref(), Some("../../etc/passwd"));
    assert_eq!(find("a/h").1, tar::EntryType::Link);
    assert_eq!(find("a/p").1, tar::EntryType::Fifo);
    assert_eq!(find("a/null").1, tar::EntryType::Char);
    find("../escape");
    find("/abs/path");
    assert_eq!(find("link").2.as_deref(), Some("../../outside"));
    find(&format!("{}/../x", "n".repeat(150)));
}

/// Packs `dir` with the system's tar (`./`-prefixed names, GNU format),
/// or returns false if there is none.
fn system_tar(dir: &Path, out: &Path) -> bool {
    match std::process::Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
    {
        Ok(s) => {
            assert!(s.success(), "tar failed");
            true
        }
        Err(_) => false,
    }
}

#[test]
fn layout_packed_by_system_tar() {
    let t = TempDir::new("img-systar");
    let ls = layers();
    let dir = t.path().join("d");
    write_oci_archive(&dir, "app:1", &ls, Compression::Gzip, false).unwrap();
    let out = t.path().join("x.tar");
    assert!(
        system_tar(&dir, &out),
        "this test needs the system's tar (`tar` on PATH; vm-tests/setup's Debian has it)"
    );
    check_archive(&out, "app:1", &ls, Compression::Gzip);
}

#[test]
fn docker_save_with_symlinked_layer() {
    // Older docker saves link a repeated layer to its first copy.
    let t = TempDir::new("img-symlink");
    let l1 = layer_one();
    let l2 = layer_two();
    let ls = vec![l1.clone(), l2, l1.clone()];
    let dir = t.path().join("d");
    write_docker_save(&dir, "app:1", &ls).unwrap();
    let ar = ImageArchive::open(&dir).unwrap();
    let first = ar.images()[0].layers[0].path.clone();
    let third = ar.images()[0].layers[2].path.clone();
    fs::remove_file(dir.join(&third)).unwrap();
    let first_dir = first.split('/').next().unwrap();
    std::os::unix::fs::symlink(format!("../{first_dir}/layer.tar"), dir.join(&third)).unwrap();
    let out = t.path().join("x.tar");
    assert!(
        system_tar(&dir, &out),
        "this test needs the system's tar (`tar` on PATH; vm-tests/setup's Debian has it)"
    );
    let ar = ImageArchive::open(&out).unwrap();
    let img = &ar.images()[0];
    assert_eq!(img.layers.len(), 3);
    assert_eq!(img.layers[2].diff_id, img.layers[0].diff_id);
    assert_ne!(img.layers[2].chain_id, img.layers[0].chain_id);
    assert_eq!(read_layer(&ar, &img.layers[2]).unwrap(), l1);
    // The directory form reads through the symlink too.
    let ar = ImageArchive::open(&dir).unwrap();
    assert_eq!(read_layer(&ar, &ar.images()[0].layers[2]).unwrap(), l1);
}

/// containerd and buildkit annotate an exported image with both its full
/// name (`io.containerd.image.name`) and only its tag (`ref.name`): the
/// image is named as containerd names it.
#[test]
fn oci_layouts_are_named_as_containerd_names_them() {
    let t = TempDir::new("img-names");
    let d = t.path().join("named");
    write_oci_archive(&d, "app:1", &layers(), Compression::Gzip, false).unwrap();
    let mut idx: Value = serde_json::from_slice(&fs::read(d.join("index.json")).unwrap()).unwrap();
    idx["manifests"][0]["annotations"] = json!({
        media_type::REF_NAME: "oci",
        media_type::CONTAINERD_NAME: "docker.io/library/realimg:oci",
    });
    fs::write(d.join("index.json"), idx.to_string()).unwrap();
    let ar = ImageArchive::open(&d).unwrap();
    assert_eq!(
        ar.images()[0].name.as_deref(),
        Some("docker.io/library/realimg:oci")
    );
    // Only the OCI annotation: taken as given.
    idx["manifests"][0]["annotations"] = json!({ media_type::REF_NAME: "other:2" });
    fs::write(d.join("index.json"), idx.to_string()).unwrap();
    let ar = ImageArchive::open(&d).unwrap();
    assert_eq!(ar.images()[0].name.as_deref(), Some("other:2"));
}
