//! The service against the simulated kernel: containerd's call sequences
//! (unpack: prepare, commit; run: prepare on the image, remove), the error
//! codes containerd tests for, labels, and what `list` shows.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use containerd_snapshots::tonic::Code;
use tokio_stream::StreamExt;

use super::*;
use crate::kernel::{Kernel, Sim};
use crate::pool::{PoolOptions, SourceOptions};
use crate::testutil::TempDir;
use crate::units::Bytes;

fn service() -> (TempDir, Snapshots) {
    let (dir, _, s) = service_on_sim();
    (dir, s)
}

/// The service and the simulated kernel under it.
/// A service on a pool of the simulated kernel, without spares: its
/// mounts are those the calls make.
pub(super) fn service_on_sim() -> (TempDir, Arc<Sim>, Snapshots) {
    service_with_spares(0)
}

pub(super) fn service_with_spares(spares: usize) -> (TempDir, Arc<Sim>, Snapshots) {
    let dir = TempDir::new("service");
    let opts = PoolOptions {
        source: SourceOptions::LoopFiles {
            data_size: Bytes(1 << 30),
            metadata_size: Bytes(16 << 20),
        },
        base_size: Bytes(1 << 30),
        ..PoolOptions::default()
    };
    let sim = Arc::new(Sim::new());
    let d = Driver::init(dir.path(), sim.clone(), &opts).unwrap();
    (
        dir,
        sim,
        Snapshots::with_spares(Arc::new(d), spares).unwrap(),
    )
}

async fn listed(s: &Snapshots, filters: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = s
        .list(
            String::new(),
            filters.iter().map(|f| f.to_string()).collect(),
        )
        .await
        .unwrap()
        .map(|i| i.unwrap().name)
        .collect()
        .await;
    names.sort();
    names
}

#[tokio::test]
async fn list_shows_what_the_api_made_whatever_the_key_and_never_the_cli_layers() {
    let (_dir, s) = service();
    s.driver.create_container("cli-container", None).unwrap();
    s.prepare("plain".into(), String::new(), labels(&[("l", "1")]))
        .await
        .unwrap();
    s.commit("base-layer".into(), "plain".into(), labels(&[("l", "2")]))
        .await
        .unwrap();
    s.view("default/7/v".into(), "base-layer".into(), HashMap::new())
        .await
        .unwrap();
    s.prepare("a".into(), "base-layer".into(), HashMap::new())
        .await
        .unwrap();
    assert_eq!(
        listed(&s, &[]).await,
        ["a", "base-layer", "default/7/v"],
        "the CLI's container must never reach containerd's collector"
    );
    assert_eq!(listed(&s, &["kind==committed"]).await, ["base-layer"]);
    assert_eq!(
        listed(&s, &["parent==base-layer,kind==view"]).await,
        ["default/7/v"]
    );
    assert_eq!(
        listed(&s, &["labels.l==2", "name==a"]).await,
        ["a", "base-layer"]
    );
    let e = s
        .list(String::new(), vec!["kind==".into()])
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

#[tokio::test]
async fn times_have_nanoseconds_and_updates_move_only_updated() {
    let (_dir, s) = service();
    let before = std::time::SystemTime::now();
    s.prepare("a".into(), String::new(), HashMap::new())
        .await
        .unwrap();
    let st = s.stat("a".into()).await.unwrap();
    assert_eq!(st.created_at, st.updated_at);
    assert!(
        st.created_at >= before,
        "created at the call, to the nanosecond"
    );
    let (created, updated) = (st.created_at, st.updated_at);
    let info = Info {
        name: "a".into(),
        labels: labels(&[("x", "1")]),
        ..st
    };
    let up = s.update(info, None).await.unwrap();
    assert_eq!(up.created_at, created);
    assert!(up.updated_at > updated);
    assert_eq!(s.stat("a".into()).await.unwrap().updated_at, up.updated_at);
    s.commit("c".into(), "a".into(), HashMap::new())
        .await
        .unwrap();
    let c = s.stat("c".into()).await.unwrap();
    assert_eq!(c.created_at, c.updated_at, "a commit makes a new snapshot");
    assert!(c.created_at > up.updated_at);
}

#[tokio::test]
async fn a_snapshot_committed_while_mounted_is_a_copy_and_its_old_device_goes_at_unmount() {
    let (dir, sim, s) = service_on_sim();
    s.prepare("a".into(), String::new(), HashMap::new())
        .await
        .unwrap();
    // A client's mount that outlives thinlayer's own (a bind mount of it
    // would keep the filesystem open the same way).
    let old = s.driver.tree().unwrap().get("a").unwrap().thin_id;
    let prefix = s.driver.records().unwrap().pool.prefix;
    let dev = sim
        .dm_info(&crate::thin::dm_name(&prefix, old))
        .unwrap()
        .expect("an active snapshot's device is live")
        .devnum
        .dm_node();
    let target = dir.path().join("held");
    std::fs::create_dir(&target).unwrap();
    let fs = s.fs;
    sim.mount(&crate::kernel::MountRequest {
        source: &dev,
        target: &target,
        fstype: fs.name(),
        read_only: false,
        nodev: true,
        data: fs.mount_options(false),
    })
    .unwrap();
    s.commit("c".into(), "a".into(), HashMap::new())
        .await
        .unwrap();
    let tree = s.driver.tree().unwrap();
    let c = tree.get("c").unwrap();
    assert_ne!(
        c.thin_id, old,
        "the committed layer is a copy, not the held device"
    );
    assert_eq!(tree.retired, [old]);
    // The holder's writes go to the old thin id, never the committed one.
    let old_dev = crate::thin::dm_name(&prefix, old);
    sim.write(&old_dev, 0, 2).unwrap();
    assert_eq!(s.driver.sizes().unwrap()["c"].size, Bytes(0));
    // A child of the committed layer works while the old mount lives.
    s.prepare("b".into(), "c".into(), HashMap::new())
        .await
        .unwrap();
    sim.umount(&target, false).unwrap();
    let tree = s.driver.tree().unwrap();
    assert!(
        tree.retired.is_empty(),
        "deleted at the first operation after its last close"
    );
    assert!(
        !sim.thin_ids(&dir.path().join("metadata"))
            .contains(&old.get())
    );
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn errors_map_to_the_codes_containerd_tests_for() {
    let code = |e: Error| status(e).code();
    assert_eq!(code(Error::not_found("layer", "x")), Code::NotFound);
    assert_eq!(
        code(Error::Exists {
            kind: "layer",
            name: "x".into()
        }),
        Code::AlreadyExists
    );
    assert_eq!(
        code(Error::HasChildren {
            name: "a".into(),
            children: vec!["b".into()]
        }),
        Code::FailedPrecondition
    );
    // containerd's conformance suite wants the refusal to say what failed.
    let refused = status(Error::HasChildren {
        name: "a".into(),
        children: vec!["b".into()],
    });
    assert!(
        refused.message().starts_with("cannot remove layer \"a\""),
        "{}",
        refused.message()
    );
    assert_eq!(
        code(Error::Busy {
            kind: "layer",
            name: "a".into(),
            why: "mounted".into()
        }),
        Code::FailedPrecondition
    );
    assert_eq!(code(Error::invalid("x", "y", "z")), Code::InvalidArgument);
    assert_eq!(
        code(Error::unexpected("thin_dump output", "<x", "no number")),
        Code::Internal
    );
    assert_eq!(
        code(Error::CorruptTree {
            key: "a".into(),
            why: "loops".into()
        }),
        Code::DataLoss
    );
    assert_eq!(
        code(Error::NoSpace {
            what: "data",
            detail: String::new()
        }),
        Code::ResourceExhausted
    );
    assert_eq!(
        code(Error::kernel("remove", "dev", Some(Errno::EBUSY), "busy")),
        Code::FailedPrecondition
    );
    assert_eq!(code(Error::NotRoot), Code::Internal);
    let s = status(Error::not_found("layer", "x"));
    assert_eq!(s.message(), Error::not_found("layer", "x").to_string());
}

#[test]
fn mounts_carry_the_filesystem_options_and_ro_for_views() {
    let dev = Path::new("/dev/dm-7");
    let m = mount_for(FsKind::Ext4, dev, false);
    assert_eq!(
        (m.r#type.as_str(), m.source.as_str(), m.target.as_str()),
        ("ext4", "/dev/dm-7", "")
    );
    assert_eq!(m.options, ["noatime", "noinit_itable"]);
    assert_eq!(
        mount_for(FsKind::Ext4, dev, true).options,
        ["ro", "noatime", "noload"]
    );
    assert_eq!(
        mount_for(FsKind::Xfs, dev, false).options,
        ["noatime", "nouuid"]
    );
    assert_eq!(
        mount_for(FsKind::Xfs, dev, true).options,
        ["ro", "noatime", "nouuid", "norecovery"]
    );
}

#[test]
fn label_updates_follow_field_paths() {
    let mut l: BTreeMap<String, String> = [("a", "1"), ("b", "2")]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
    let new = labels(&[("b", "3"), ("c", "4")]);
    update_labels(&mut l, &new, &["labels.b".into(), "labels.a".into()]).unwrap();
    assert_eq!(l, BTreeMap::from([("b".into(), "3".into())]));
    update_labels(&mut l, &new, &[]).unwrap();
    assert_eq!(l.len(), 2);
    update_labels(&mut l, &HashMap::new(), &["labels".into()]).unwrap();
    assert!(l.is_empty());
    let e = update_labels(&mut l, &new, &["parent".into()]).unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
}

#[tokio::test]
async fn unpack_then_run_then_clean_up() {
    let (_dir, s) = service();
    // Unpack: prepare on the base, commit under the chain id.
    let m = s
        .prepare("default/1/extract-1".into(), String::new(), HashMap::new())
        .await
        .unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].r#type, "bind");
    s.commit(
        "default/2/sha256:l1".into(),
        "default/1/extract-1".into(),
        labels(&[("containerd.io/snapshot/x", "y")]),
    )
    .await
    .unwrap();
    let e = s.stat("default/1/extract-1".into()).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "commit consumes the key");
    let i = s.stat("default/2/sha256:l1".into()).await.unwrap();
    assert_eq!(i.kind, CKind::Committed);
    assert_eq!(i.parent, "");
    assert_eq!(i.labels["containerd.io/snapshot/x"], "y");
    let e = s.mounts("default/2/sha256:l1".into()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // Run: an active snapshot and a view on the image.
    s.prepare(
        "default/3/c1".into(),
        "default/2/sha256:l1".into(),
        HashMap::new(),
    )
    .await
    .unwrap();
    let e = s
        .prepare(
            "default/3/c1".into(),
            "default/2/sha256:l1".into(),
            HashMap::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let v = s
        .view(
            "default/4/v".into(),
            "default/2/sha256:l1".into(),
            HashMap::new(),
        )
        .await
        .unwrap();
    assert_eq!(v[0].options[0], "ro");
    assert_eq!(
        s.mounts("default/4/v".into()).await.unwrap()[0].options,
        v[0].options
    );
    let e = s
        .commit("default/5/x".into(), "default/4/v".into(), HashMap::new())
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "a view cannot be committed"
    );
    let e = s
        .prepare("default/6/d".into(), "default/3/c1".into(), HashMap::new())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "parent not committed");
    let e = s
        .prepare(
            "default/6/d".into(),
            "default/9/none".into(),
            HashMap::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // A CLI container on the same root is not listed.
    s.driver.create_container("cli", None).unwrap();
    let listed: Vec<String> = s
        .list(String::new(), Vec::new())
        .await
        .unwrap()
        .map(|i| i.unwrap().name)
        .collect()
        .await;
    assert_eq!(
        listed,
        ["default/2/sha256:l1", "default/3/c1", "default/4/v"]
    );
    assert_eq!(s.usage("default/3/c1".into()).await.unwrap().inodes, 0);
    assert_eq!(
        s.usage("nope".into()).await.unwrap_err().code(),
        Code::NotFound
    );

    // Labels.
    let mut info = s.stat("default/3/c1".into()).await.unwrap();
    info.labels = labels(&[("k", "v")]);
    let i = s.update(info, Some(vec!["labels.k".into()])).await.unwrap();
    assert_eq!(i.labels, labels(&[("k", "v")]));
    let i = s.stat("default/3/c1".into()).await.unwrap();
    let e = s.update(i, Some(vec!["kind".into()])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Removal: children first.
    let e = s.remove("default/2/sha256:l1".into()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    s.remove("default/3/c1".into()).await.unwrap();
    s.remove("default/4/v".into()).await.unwrap();
    s.remove("default/2/sha256:l1".into()).await.unwrap();
    s.clear().await.unwrap();
    let tree = s.driver.tree().unwrap();
    assert_eq!(tree.layers.keys().collect::<Vec<_>>(), ["cli"]);
}

#[tokio::test]
async fn a_commit_stopped_after_its_record_is_whole() {
    let (_dir, s) = service();
    // Unmounted, and with the mount handed over as a spare.
    for (n, hand_over) in [(1, false), (2, true)] {
        let (key, name) = (format!("default/{n}/a"), format!("default/{n}/b"));
        s.prepare(key.clone(), String::new(), HashMap::new())
            .await
            .unwrap();
        let origin = s.driver.layer(&key).unwrap().thin_id;
        // Armed on the blocking thread that runs the commit: it panics there.
        let d = s.driver.clone();
        let (k, c) = (key.clone(), name.clone());
        let crashed = tokio::task::spawn_blocking(move || {
            crate::failpoint::arm(crate::failpoint::commit::AFTER_RECORD);
            d.commit_snapshot(
                &k,
                &c,
                [("k".to_string(), "v".to_string())].into(),
                hand_over,
            )
        })
        .await;
        assert!(crashed.is_err(), "the failpoint stopped the commit");
        // The driver keeps nothing in memory: this reads the records afresh.
        let tree = s.driver.tree().unwrap();
        assert!(!tree.layers.contains_key(&key));
        let b = tree.get(&name).unwrap();
        assert_eq!((b.kind, b.pinned), (Kind::Committed, false));
        assert_eq!(b.labels["k"], "v");
        // Handed over: a copy, and the old device a spare, dropped to
        // the pending removals when the crash is found.
        assert_eq!(b.thin_id != origin, hand_over, "{b:?}");
        if hand_over {
            assert!(tree.is_removal(origin), "{tree:?}");
        }
    }
}

#[tokio::test]
async fn an_active_snapshot_is_a_bind_of_thinlayers_own_mount_until_commit_or_remove() {
    let (dir, sim, s) = service_on_sim();
    let mounted = |target: &str| {
        sim.mounts()
            .unwrap()
            .iter()
            .any(|m| m.target == Path::new(target))
    };
    let m = s
        .prepare("a".into(), String::new(), HashMap::new())
        .await
        .unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].r#type.as_str(), &m[0].options[..]),
        ("bind", &["rbind".to_string(), "rw".to_string()][..])
    );
    let src = m[0].source.clone();
    assert!(
        Path::new(&src).starts_with(dir.path()),
        "{src} is under the root"
    );
    assert!(mounted(&src), "thinlayer mounted {src} itself");
    let l = s.driver.tree().unwrap().get("a").unwrap().clone();
    assert_eq!(l.mounts, 1);
    // Asked again: the same mount, not a second one.
    assert_eq!(s.mounts("a".into()).await.unwrap(), m);
    assert_eq!(s.driver.tree().unwrap().get("a").unwrap().mounts, 1);
    let n = sim.mounts().unwrap().len();

    // The mount is gone (a reboot): the next Mounts makes it again.
    sim.umount(Path::new(&src), false).unwrap();
    assert_eq!(s.mounts("a".into()).await.unwrap(), m);
    assert!(mounted(&src));
    assert_eq!(sim.mounts().unwrap().len(), n);

    // Commit unmounts it, and with nothing else holding the device the
    // committed layer is the same thin device.
    s.commit("c".into(), "a".into(), HashMap::new())
        .await
        .unwrap();
    assert!(!mounted(&src), "{src} unmounted by the commit");
    let tree = s.driver.tree().unwrap();
    assert_eq!(tree.get("c").unwrap().thin_id, l.thin_id);
    assert!(tree.retired.is_empty());

    // Remove of a mounted active snapshot: gone at once; thinlayer's
    // mount goes with the rest of its removal, which Cleanup waits for.
    let m = s
        .prepare("b".into(), "c".into(), HashMap::new())
        .await
        .unwrap();
    assert!(mounted(&m[0].source));
    s.remove("b".into()).await.unwrap();
    assert!(s.driver.tree().unwrap().get("b").is_err());
    assert_eq!(s.stat("b".into()).await.unwrap_err().code(), Code::NotFound);
    s.clear().await.unwrap();
    assert!(!mounted(&m[0].source));
    assert!(s.driver.pending_removals().unwrap().is_empty());

    // A view is its read-only device, and thinlayer does not mount it.
    let v = s
        .view("v".into(), "c".into(), HashMap::new())
        .await
        .unwrap();
    assert_eq!(v[0].r#type, "ext4");
    assert!(v[0].source.starts_with("/dev/dm-"), "{}", v[0].source);
    assert!(!mounted(&v[0].source));
    assert_eq!(sim.mounts().unwrap().len(), n - 1);
}

#[tokio::test]
async fn a_prepare_whose_mount_fails_leaves_no_snapshot_behind() {
    let (dir, sim, s) = service_on_sim();
    let ids = sim.thin_ids(&dir.path().join("metadata"));
    sim.fail_once("mount:");
    let e = s
        .prepare("a".into(), String::new(), HashMap::new())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e}");
    assert!(e.message().contains("mount"), "{e}");
    assert_eq!(s.stat("a".into()).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(sim.thin_ids(&dir.path().join("metadata")), ids);
    // The key is free again.
    s.prepare("a".into(), String::new(), HashMap::new())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_background_keeps_spares_and_reaps_removals() {
    let (_dir, sim, s) = service_with_spares(2);
    let none = HashMap::new;
    // The base asked for twice keeps spares.
    s.prepare("a".into(), String::new(), none()).await.unwrap();
    s.prepare("a2".into(), String::new(), none()).await.unwrap();
    let ready = |n: usize| {
        let spares = s.driver.spares().unwrap();
        spares.iter().filter(|x| x.mounted).count() >= n
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ready(2) {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: two spares of the base"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Neither the spares nor a2, prepared once the base keeps spares, were
    // trimmed: at most a was, if it was seen before a2.
    let trims = sim.take_calls().get("trim").copied().unwrap_or(0);
    assert!(trims <= 1, "{trims} trims");
    // A Prepare on the base now claims one: no pool message, no mount.
    s.prepare("b".into(), String::new(), none()).await.unwrap();
    let calls = sim.take_calls();
    assert!(!calls.contains_key("dm_message"), "{calls:?}");
    assert!(!calls.contains_key("mount"), "{calls:?}");
    // Removed, then reaped in the background.
    for key in ["a", "a2", "b"] {
        s.remove(key.into()).await.unwrap();
    }
    while !s.driver.pending_removals().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: the removals reaped in the background"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Stopping drops the spares.
    s.housekeeper().stop();
    assert!(s.driver.spares().unwrap().is_empty());
    assert!(s.driver.pending_removals().unwrap().is_empty());
}
