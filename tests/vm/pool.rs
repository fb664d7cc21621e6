//! Pool sources other than the default loop files, metadata checks on
//! activation, and read-only views.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use thinlayer::Driver;
use thinlayer::driver::{MAX_SIZE_LABEL, SnapshotSource};
use thinlayer::kernel::Kernel;
use thinlayer::pool::{Pool, PoolConfig, PoolOptions, PoolSource, SourceOptions};
use thinlayer::tree::Kind;
use thinlayer::units::{BlockSize, Bytes};

use crate::fixture::{self, Fixture, write_file};

fn sparse(path: &Path, size: u64) {
    fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// Create, write, commit, derive and remove on whatever pool the root has.
fn exercise(fx: &Fixture) {
    fx.ok(&["container", "create", "scratch", "a"]);
    let m = fx.ok(&["container", "mount", "a"]);
    write_file(&Path::new(m.trim()).join("f"), 300 << 10, 9);
    fx.ok(&["container", "umount", "a"]);
    fx.ok(&["container", "commit", "a", "img"]);
    fx.ok(&["container", "create", "img", "b"]);
    let m = fx.ok(&["container", "mount", "b"]);
    assert_eq!(
        fs::read(Path::new(m.trim()).join("f")).unwrap().len(),
        300 << 10
    );
    fx.ok(&["container", "rm", "-f", "b"]);
    fx.ok(&["image", "rm", "img"]);
}

#[test]
fn a_pool_on_given_block_devices() {
    fixture::run("devices", |fx| {
        let (d, m) = (fx.dir.join("data.img"), fx.dir.join("meta.img"));
        sparse(&d, 1 << 30);
        sparse(&m, 16 << 20);
        // Garbage at the start of the metadata device: init must zero it.
        fs::write(&m, vec![0xffu8; 4096]).unwrap();
        fs::File::options()
            .write(true)
            .open(&m)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let data = fx.kernel.loop_attach(&d).unwrap();
        let meta = fx.kernel.loop_attach(&m).unwrap();
        fx.ok(&[
            "pool",
            "init",
            "--data-device",
            data.info.device.to_str().unwrap(),
            "--metadata-device",
            meta.info.device.to_str().unwrap(),
            "--base-size",
            "256M",
        ]);
        assert_eq!(fx.json(&["pool", "status"])["data_total"], 1u64 << 30);
        exercise(fx);
        // Reboot: the pool goes, the devices stay; any command brings it back.
        fx.kernel
            .dm_remove(&format!("{}-pool", fx.prefix), false)
            .unwrap();
        assert_eq!(fx.json(&["pool", "status"])["thin_devices"], 1);
        fx.ok(&["pool", "destroy"]);
        assert!(
            fx.kernel
                .dm_info(&format!("{}-pool", fx.prefix))
                .unwrap()
                .is_none()
        );
        drop((data, meta)); // autoclear detaches the loops
    });
}

#[test]
fn an_existing_pool_is_used_and_left_in_place() {
    fixture::run("existing", |fx| {
        let ext_dir = fx.dir.join("ext");
        fs::create_dir_all(&ext_dir).unwrap();
        let config = PoolConfig {
            prefix: format!("{}x", fx.prefix),
            source: PoolSource::LoopFiles {
                data: ext_dir.join("data"),
                metadata: ext_dir.join("metadata"),
            },
            block_size: BlockSize::DEFAULT,
            low_water_blocks: 32,
            filesystem: thinlayer::fs::FsKind::Ext4,
            base_size: Bytes(256 << 20),
            min_free_percent: 10,
            autoextend: None,
        };
        let pool = Pool {
            kernel: &*fx.kernel,
            config: &config,
        };
        let opts = PoolOptions {
            source: SourceOptions::LoopFiles {
                data_size: Bytes(1 << 30),
                metadata_size: Bytes(16 << 20),
            },
            ..PoolOptions::default()
        };
        pool.create(&opts).unwrap();
        // Someone else's transaction id: thinlayer adopts it.
        fx.kernel
            .dm_message(&pool.name(), "set_transaction_id 0 41")
            .unwrap();

        fx.ok(&[
            "pool",
            "init",
            "--existing-pool",
            &pool.name(),
            "--base-size",
            "256M",
        ]);
        assert_eq!(fx.json(&["pool", "status"])["transaction_id"], 41);
        exercise(fx);
        fx.ok(&["pool", "destroy"]);
        // The pool is still there, with every thin device thinlayer made deleted.
        let st = pool.kernel_status().unwrap();
        assert_eq!(st.data_used, 0, "blocks left in the pool");
        // Adopted and left alone: thinlayer's changes do not move it.
        assert_eq!(st.transaction, 41);
        pool.deactivate().unwrap();
        pool.remove_files().unwrap();
    });
}

#[test]
fn damaged_metadata_refuses_activation() {
    fixture::run("check", |fx| {
        fx.init_pool("1G", "16M", Some("256M"), &[]);
        fx.ok(&["container", "create", "scratch", "c"]);
        fx.kernel
            .dm_remove(&format!("{}-pool", fx.prefix), false)
            .unwrap();
        let meta = fx.root.join("metadata");
        let mut f = fs::File::options()
            .read(true)
            .write(true)
            .open(&meta)
            .unwrap();
        let mut saved = vec![0u8; 4096];
        std::io::Read::read_exact(&mut f, &mut saved).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&[0x5au8; 4096]).unwrap();
        f.sync_all().unwrap();

        let e = fx.fails(&["pool", "activate"], 8);
        assert!(e.contains("thin_check") && e.contains("pool repair"), "{e}");
        let e = fx.fails(&["ps"], 8);
        assert!(e.contains("metadata check failed"), "{e}");
        assert!(
            fx.kernel
                .dm_info(&format!("{}-pool", fx.prefix))
                .unwrap()
                .is_none(),
            "not activated"
        );

        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&saved).unwrap();
        f.sync_all().unwrap();
        assert_eq!(fx.json(&["ps"])[0]["name"], "c");
    });
}

#[test]
fn views_are_read_only() {
    fixture::run("view", |fx| {
        fx.init_pool("1G", "16M", Some("256M"), &[]);
        fx.ok(&["container", "create", "scratch", "a"]);
        let m = fx.ok(&["container", "mount", "a"]);
        write_file(&Path::new(m.trim()).join("f"), 4096, 1);
        fx.ok(&["container", "umount", "a"]);
        fx.ok(&["container", "commit", "a", "img"]);
        let top = fx.json(&["tree"])["images"]["img:latest"]["top"]
            .as_str()
            .unwrap()
            .to_string();

        let d = Driver::open(&fx.root, fx.kernel.clone()).unwrap();
        d.create_layer("view", Some(&top), Kind::View, BTreeMap::new(), false)
            .unwrap();
        let p = d.mount("view").unwrap();
        assert_eq!(fs::read(p.join("f")).unwrap().len(), 4096);
        let err = fs::write(p.join("g"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        let err = d.commit_layer("view", "nope").unwrap_err();
        assert!(err.to_string().contains("only a writable"), "{err}");
        d.umount("view").unwrap();
        d.remove("view", false).unwrap();
    });
}

#[test]
fn check_and_repair_run_offline() {
    fixture::run("repair", |fx| {
        fx.init_pool("1G", "16M", Some("256M"), &[]);
        fx.ok(&["container", "create", "scratch", "c"]);
        let m = fx.ok(&["container", "mount", "c"]);
        write_file(&Path::new(m.trim()).join("f"), 1 << 20, 4);
        let e = fx.fails(&["pool", "check"], 5);
        assert!(e.contains("mounted"), "{e}");
        fx.ok(&["container", "umount", "c"]);
        fx.ok(&["pool", "check"]);
        let out = fx.ok(&["pool", "repair"]);
        assert!(out.contains("damaged metadata is kept"), "{out}");
        let kept: Vec<_> = fs::read_dir(&fx.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("metadata.damaged-"))
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        // Everything is still there after the repair.
        let m = fx.ok(&["container", "mount", "c"]);
        assert_eq!(
            fs::read(Path::new(m.trim()).join("f")).unwrap().len(),
            1 << 20
        );
        fx.ok(&["container", "umount", "c"]);
        assert_eq!(fx.json(&["pool", "status"])["thin_devices"], 2);
    });
}

/// A layer on the base is an empty directory, on ext4 (whose mkfs makes
/// `lost+found`) and on xfs; it stays empty after an unmount, a second
/// mount.
#[test]
fn a_layer_on_the_base_starts_empty() {
    for fs_kind in ["ext4", "xfs"] {
        fixture::run(&format!("empty-{fs_kind}"), |fx| {
            fx.init_pool("2G", "32M", Some("1G"), &["--fs", fs_kind]);
            fx.ok(&["container", "create", "scratch", "a"]);
            for _ in 0..2 {
                let m = fx.ok(&["container", "mount", "a"]);
                let entries: Vec<String> = fs::read_dir(m.trim())
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                assert!(
                    entries.is_empty(),
                    "{fs_kind}: a fresh layer holds {entries:?}"
                );
                fx.ok(&["container", "umount", "a"]);
            }
            fx.ok(&["container", "rm", "a"]);
        });
    }
}

/// containerd commits snapshots its clients may still have mounted. The
/// committed layer is what the snapshot held at the commit, on ext4 and
/// xfs: whatever the mount's holder writes afterwards never reaches it or
/// its children, its filesystem is clean (a read-only view of it mounts),
/// and the old device is deleted once the holder unmounts.
#[test]
fn a_layer_committed_while_mounted_is_frozen_at_the_commit() {
    for fs_kind in ["ext4", "xfs"] {
        fixture::run(&format!("commit-mounted-{fs_kind}"), |fx| {
            fx.init_pool("2G", "32M", Some("1G"), &["--fs", fs_kind]);
            let d = Driver::open(&fx.root, fx.kernel.clone()).unwrap();
            let (_, source) = d
                .create_snapshot("a", None, Kind::Active, BTreeMap::new())
                .unwrap();
            let SnapshotSource::Mounted(dir) = source else {
                panic!("thinlayer mounts an active snapshot itself: {source:?}");
            };
            // A client's bind mount of it, as containerd makes.
            let held = fx.dir.join("held");
            fs::create_dir_all(&held).unwrap();
            let fs_opts = match fs_kind {
                "xfs" => thinlayer::fs::FsKind::Xfs,
                _ => thinlayer::fs::FsKind::Ext4,
            };
            nix::mount::mount(
                Some(&dir),
                &held,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap();
            // Written, not synced: the commit itself must get it to the disk.
            fs::write(held.join("before"), b"in the layer").unwrap();
            // Asked to hand its mount over as a spare, it cannot: the
            // client's mount would write into another snapshot.
            let c = d.commit_snapshot("a", "c", BTreeMap::new(), true).unwrap();
            assert!(!c.spare, "{fs_kind}: a held mount was handed over");
            fs::write(held.join("after"), b"not in the layer").unwrap();
            fs::write(held.join("before"), b"changed after the commit").unwrap();
            nix::unistd::sync();

            committed_as_written(fx, &d, fs_opts, "c");

            let retired = d.tree().unwrap().retired;
            assert_eq!(retired.len(), 1, "the held device's thin id is kept");
            fx.kernel.umount(&held, false).unwrap();
            // The kernel finishes the deferred removal in a worker after the
            // last close; the first operation after that deletes the id.
            fixture::eventually(
                "the retired thin id deleted after its device closed",
                fixture::DEADLINE,
                || {
                    let retired = d.tree().unwrap().retired;
                    if retired.is_empty() {
                        Ok(())
                    } else {
                        Err(format!("retired {retired:?}"))
                    }
                },
            );
            assert!(!fixture::kernel_thin_ids_of(fx).contains(&u64::from(retired[0].get())));
            d.remove("c", false).unwrap();
        });
    }
}

/// A Commit hands the snapshot's mount over as a spare of the committed
/// layer, and the next Prepare on it claims that mount. The committed
/// layer is what was written before the Commit, synced by it, on a clean
/// filesystem (a read-only view mounts without recovery); what the new
/// snapshot writes reaches neither it nor its view.
#[test]
fn a_commit_hands_its_mount_over_to_the_next_prepare() {
    for fs_kind in ["ext4", "xfs"] {
        fixture::run(&format!("commit-hand-over-{fs_kind}"), |fx| {
            fx.init_pool("2G", "32M", Some("1G"), &["--fs", fs_kind]);
            let fs_opts = match fs_kind {
                "xfs" => thinlayer::fs::FsKind::Xfs,
                _ => thinlayer::fs::FsKind::Ext4,
            };
            let d = Driver::open(&fx.root, fx.kernel.clone()).unwrap();
            let (a, source) = d
                .create_snapshot("a", None, Kind::Active, BTreeMap::new())
                .unwrap();
            let SnapshotSource::Mounted(dir) = source else {
                panic!("thinlayer mounts an active snapshot itself: {source:?}");
            };
            // Written, not synced: the commit itself must get it to the disk.
            fs::write(dir.join("before"), b"in the layer").unwrap();
            let c = d.commit_snapshot("a", "c", BTreeMap::new(), true).unwrap();
            assert!(c.spare, "{fs_kind}: nothing else held the mount");
            assert_ne!(c.layer.thin_id, a.thin_id, "the committed layer is a copy");
            let spares = d.spares().unwrap();
            assert_eq!(spares.len(), 1, "{spares:?}");
            assert_eq!(
                (
                    spares[0].thin_id,
                    spares[0].parent.as_deref(),
                    spares[0].mounted
                ),
                (a.thin_id, Some("c"), true)
            );
            assert!(fx.kernel.is_mount_point(&dir).unwrap(), "still mounted");

            let (b, source) = d
                .create_snapshot("b", Some("c"), Kind::Active, BTreeMap::new())
                .unwrap();
            assert_eq!(b.thin_id, a.thin_id, "the Prepare claimed the spare");
            assert_eq!(source, SnapshotSource::Mounted(dir.clone()));
            assert!(d.spares().unwrap().is_empty());
            assert_eq!(fs::read(dir.join("before")).unwrap(), b"in the layer");
            fs::write(dir.join("after"), b"not in the layer").unwrap();
            fs::write(dir.join("before"), b"changed in the child").unwrap();
            nix::unistd::sync();

            committed_as_written(fx, &d, fs_opts, "c");
            // A larger child: ext4 is grown unmounted by resize2fs, which
            // refuses a filesystem whose journal needs recovery.
            let size = (c.layer.device_size.0 + (512 << 20)).to_string();
            let labels = BTreeMap::from([(MAX_SIZE_LABEL.to_string(), size)]);
            d.create_snapshot("g", Some("c"), Kind::Active, labels)
                .unwrap();
            for key in ["g", "b", "c"] {
                d.remove_snapshot(key).unwrap();
            }
            let r = d.reap_all().unwrap();
            assert_eq!((r.done, r.held, r.failed), (3, 0, 0), "{fs_kind}");
        });
    }
}

/// Checks, through a read-only view mounted without log recovery (as
/// every view is, so the committed layer's filesystem must be clean), that
/// the committed layer `parent` holds the file `before` as written before
/// its Commit and no file `after`.
fn committed_as_written(fx: &Fixture, d: &Driver, fs_kind: thinlayer::fs::FsKind, parent: &str) {
    let (_, source) = d
        .create_snapshot("v", Some(parent), Kind::View, BTreeMap::new())
        .unwrap();
    let SnapshotSource::Device(vdev) = source else {
        panic!("a view is its read-only device: {source:?}");
    };
    let seen = fx.dir.join("seen");
    fs::create_dir_all(&seen).unwrap();
    fx.kernel
        .mount(&thinlayer::kernel::MountRequest {
            source: &vdev,
            target: &seen,
            fstype: fs_kind.name(),
            read_only: true,
            nodev: true,
            data: fs_kind.mount_options(true),
        })
        .unwrap();
    assert_eq!(fs::read(seen.join("before")).unwrap(), b"in the layer");
    assert!(
        !seen.join("after").exists(),
        "{fs_kind:?}: a write after the commit reached the committed layer"
    );
    fx.kernel.umount(&seen, false).unwrap();
    d.remove("v", false).unwrap();
}
