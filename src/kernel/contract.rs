//! Test aid: the kernel contract every host test relies on, checked against
//! any [`Kernel`]. The host's unit tests run it on [`super::Sim`]; the device
//! tests run it on [`super::Linux`] in the VM, so the simulator cannot drift
//! from what device-mapper, loop devices and mounts really do.
//!
//! [`check`] builds a thin pool on two loop devices over sparse files in a
//! directory, walks it through every call the crate makes (messages and
//! their errors, devices, suspend and reload, mounts, deferred removal, the
//! metadata snapshot and the tools that read it) and takes it all down
//! again. Failures panic with what was expected, as test helpers do.

use std::path::Path;
use std::str::FromStr;

use nix::errno::Errno;

use super::{Kernel, MountRequest, Suspend, Target};
use crate::error::Result;
use crate::pool::{KernelPoolStatus, PoolState};
use crate::units::{Bytes, Sectors};

const DATA: u64 = 64 << 20;
const METADATA: u64 = 16 << 20;
const THIN: u64 = 32 << 20;
/// 64 KiB pool blocks.
const BLOCK_SECTORS: u64 = 128;

fn sectors(bytes: u64) -> Sectors {
    Bytes(bytes).whole_sectors()
}

/// The errno of a call expected to fail.
fn errno_of<T: std::fmt::Debug>(what: &str, r: Result<T>) -> Option<Errno> {
    match r {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(e) => e.errno(),
    }
}

fn working(k: &dyn Kernel, pool: &str) -> KernelPoolStatus {
    let st = k.dm_status(pool).expect("pool status");
    assert_eq!(st.len(), 1, "one status line: {st:?}");
    match PoolState::parse(&st[0].params).expect("a status line the crate reads") {
        PoolState::Working(w) => w,
        PoolState::Failed => panic!("the pool failed"),
    }
}

fn mapped(k: &dyn Kernel, thin: &str) -> (u64, Option<u64>) {
    let st = k.dm_status(thin).expect("thin status");
    let w = match devicemapper::ThinStatus::from_str(st[0].params.trim()) {
        Ok(devicemapper::ThinStatus::Working(w)) => w,
        other => panic!("thin status {:?}: {other:?}", st[0].params),
    };
    (w.nr_mapped_sectors.0, w.highest_mapped_sector.map(|s| s.0))
}

/// Waits until `pending` says nothing is left (`None`); after a minute,
/// panics with what never happened and what was still there.
fn eventually(what: &str, mut pending: impl FnMut() -> Option<String>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Some(left) = pending() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened within a minute: {what}; still there: {left}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs the whole contract on `k`, with its files in `dir` and its devices
/// named `PREFIX-contract-*`. Leaves nothing behind when it passes.
pub fn check(k: &dyn Kernel, dir: &Path, prefix: &str) {
    std::fs::create_dir_all(dir).expect("contract dir");
    let (data, metadata) = (dir.join("data"), dir.join("metadata"));
    for (f, len) in [(&data, DATA), (&metadata, METADATA)] {
        std::fs::File::create(f)
            .and_then(|file| file.set_len(len))
            .expect("sparse file");
    }
    // The filesystem holding the files, as the autoextend watcher sees it;
    // a wait for device-mapper events that times out.
    let space = k.fs_space(dir).expect("statvfs of the contract dir");
    assert!(space.size > 0 && space.free <= space.size, "{space:?}");
    k.dm_wait_event(std::time::Duration::from_millis(1))
        .expect("wait for device-mapper events");
    let pool = format!("{prefix}-contract-pool");
    let thin = format!("{prefix}-contract-0");
    let missing = format!("{prefix}-contract-missing");

    // Loop devices: attached, listed with their backing files.
    let lm = k.loop_attach(&metadata).expect("attach metadata loop");
    let ld = k.loop_attach(&data).expect("attach data loop");
    let loops = k.loop_list().expect("loop list");
    for l in [&lm.info, &ld.info] {
        assert!(
            loops
                .iter()
                .any(|x| x.devnum == l.devnum && x.backing_file == l.backing_file),
            "{l:?} not in the loop list {loops:?}"
        );
    }

    // A device that does not exist.
    assert_eq!(k.dm_info(&missing).expect("info of a missing device"), None);
    assert_eq!(
        errno_of("remove a missing device", k.dm_remove(&missing, false)),
        Some(Errno::ENXIO)
    );

    // The pool: created live, its table as loaded, its status fresh.
    let params = format!(
        "{} {} {BLOCK_SECTORS} 32 2 skip_block_zeroing error_if_no_space",
        lm.info.devnum, ld.info.devnum
    );
    let info = k
        .dm_create(
            &pool,
            &[Target::new(sectors(DATA), "thin-pool", params.clone())],
            false,
        )
        .expect("create the pool");
    assert!(info.active_table && !info.suspended, "{info:?}");
    assert_eq!(k.dm_info(&pool).expect("pool info"), Some(info.clone()));
    assert!(k.dm_list().expect("dm list").contains(&pool));
    assert_eq!(
        errno_of(
            "create a name that exists",
            k.dm_create(
                &pool,
                &[Target::new(sectors(DATA), "thin-pool", params.clone())],
                false
            )
        ),
        Some(Errno::EBUSY)
    );
    let table = k.dm_table(&pool).expect("pool table");
    assert_eq!(table.len(), 1);
    assert_eq!(
        (table[0].kind.as_str(), table[0].length),
        ("thin-pool", sectors(DATA))
    );
    assert_eq!(table[0].params.trim(), params);
    drop(lm);
    drop(ld);
    let st = working(k, &pool);
    assert_eq!(st.transaction, 0);
    assert_eq!(st.data_used, 0);
    assert_eq!(st.data_total, DATA / (BLOCK_SECTORS * 512));
    assert!(
        st.error_if_no_space && !st.needs_check && !st.held_metadata_snapshot,
        "{st:?}"
    );
    assert!(
        st.meta_total > 0 && st.meta_used > 0 && st.meta_used < st.meta_total,
        "{st:?}"
    );

    // Messages and their errors.
    let msg = |m: &str| k.dm_message(&pool, m);
    msg("create_thin 0").expect("create_thin 0");
    assert_eq!(
        errno_of("create_thin of an id in use", msg("create_thin 0")),
        Some(Errno::EEXIST)
    );
    assert_eq!(
        errno_of("create_snap of a missing origin", msg("create_snap 1 9")),
        Some(Errno::ENODATA)
    );
    msg("set_transaction_id 0 1").expect("set_transaction_id 0 1");
    assert_eq!(
        errno_of(
            "set_transaction_id from a wrong id",
            msg("set_transaction_id 0 2")
        ),
        Some(Errno::EINVAL)
    );
    assert_eq!(working(k, &pool).transaction, 1);

    // A thin device: live, unopened, nothing mapped.
    let pool_dev = info.devnum;
    let thin_table = |len: u64| [Target::new(sectors(len), "thin", format!("{pool_dev} 0"))];
    let t = k
        .dm_create(&thin, &thin_table(THIN), false)
        .expect("create the thin device");
    assert!(
        t.active_table && t.open_count == 0 && !t.deferred_remove,
        "{t:?}"
    );
    assert_eq!(mapped(k, &thin), (0, None));
    // An id a live device uses cannot be deleted; a snapshot of it can be
    // taken and deleted, once.
    assert_eq!(
        errno_of("delete a live thin id", msg("delete 0")),
        Some(Errno::EBUSY)
    );
    k.dm_suspend(&thin, Suspend::Freeze)
        .expect("suspend the origin");
    assert!(k.dm_info(&thin).unwrap().is_some_and(|i| i.suspended));
    msg("create_snap 1 0").expect("create_snap 1 0");
    k.dm_resume(&thin).expect("resume the origin");
    assert!(k.dm_info(&thin).unwrap().is_some_and(|i| !i.suspended));
    msg("delete 1").expect("delete 1");
    assert_eq!(
        errno_of("delete a deleted id", msg("delete 1")),
        Some(Errno::ENODATA)
    );

    // A table loaded is not live until a resume.
    k.dm_load(&thin, &thin_table(THIN * 2))
        .expect("load a longer table");
    assert_eq!(k.dm_table(&thin).unwrap()[0].length, sectors(THIN));
    k.dm_suspend(&thin, Suspend::Freeze)
        .expect("suspend for the reload");
    k.dm_resume(&thin).expect("resume with the new table");
    assert_eq!(k.dm_table(&thin).unwrap()[0].length, sectors(THIN * 2));

    // A filesystem, mounted: the device is open, its blocks are mapped, it
    // cannot be removed but can be handed to the kernel for removal at its
    // last close.
    let node = t.devnum.dm_node();
    k.mkfs(&node, "mkfs.ext4", &["-q".to_string(), "-F".to_string()])
        .expect("mkfs");
    let (sectors_mapped, highest) = mapped(k, &thin);
    assert!(
        sectors_mapped > 0 && highest.is_some(),
        "mkfs mapped nothing"
    );
    assert_eq!(
        sectors_mapped % BLOCK_SECTORS,
        0,
        "mapped in whole pool blocks"
    );
    assert!(working(k, &pool).data_used > 0);
    // A longer table, and the filesystem grown to it on the unmounted
    // device; what was mapped stays mapped.
    k.dm_load(&thin, &thin_table(THIN * 3))
        .expect("load a longer table");
    k.dm_suspend(&thin, Suspend::Freeze)
        .expect("suspend for the reload");
    k.dm_resume(&thin).expect("resume with the new table");
    k.grow_fs(&node, "resize2fs", &["-f".to_string()])
        .expect("grow the filesystem");
    assert!(
        mapped(k, &thin).0 >= sectors_mapped,
        "the grow unmapped blocks"
    );
    let target = dir.join("mnt");
    std::fs::create_dir_all(&target).expect("mount point");
    // `noinit_itable`, as the driver mounts: without it the kernel's
    // lazy-init thread zeroes the inode tables of the groups the grow
    // added, mapping blocks at a moment of its choosing, and the trim's
    // figure below would race it.
    k.mount(&MountRequest {
        source: &node,
        target: &target,
        fstype: "ext4",
        read_only: false,
        nodev: true,
        data: "noinit_itable",
    })
    .expect("mount");
    let mounts = k.mounts().expect("mounts");
    assert!(
        mounts
            .iter()
            .any(|m| m.target == target && m.devnum == Some(t.devnum) && m.fstype == "ext4"),
        "{target:?} not in {mounts:?}"
    );
    assert!(k.is_mount_point(&target).expect("is a mount point"));
    assert!(!k.is_mount_point(dir).expect("is not a mount point"));
    assert!(
        !k.is_mount_point(&dir.join("nowhere"))
            .expect("does not exist")
    );
    // ext4's count of data waiting for blocks: kept for a mounted ext4,
    // none where nothing is mounted.
    assert!(
        k.delayed_allocation(&target)
            .expect("delayed allocation of a mounted ext4")
            .is_some()
    );
    for nothing in [dir.to_path_buf(), dir.join("nowhere")] {
        assert_eq!(
            k.delayed_allocation(&nothing)
                .expect("delayed allocation where nothing is mounted"),
            None,
            "{nothing:?}"
        );
    }
    assert!(k.dm_info(&thin).unwrap().is_some_and(|i| i.open_count > 0));
    assert_eq!(
        errno_of("remove a mounted device", k.dm_remove(&thin, false)),
        Some(Errno::EBUSY)
    );
    // A mounted filesystem is trimmed; its device is never discarded whole.
    k.trim(&target).expect("trim a mounted filesystem");
    assert_eq!(
        errno_of("discard a mounted device", k.discard(&node)),
        Some(Errno::EBUSY)
    );
    // A fresh ext4 leaves some blocks mkfs wrote free: a trim may drop them.
    let trimmed = mapped(k, &thin).0;
    assert!(
        trimmed <= sectors_mapped,
        "{trimmed} sectors mapped after the trim, {sectors_mapped} before the mount: \
         a trim maps nothing"
    );
    let sectors_mapped = trimmed;
    k.dm_remove(&thin, true).expect("deferred removal");
    let i = k
        .dm_info(&thin)
        .unwrap()
        .expect("still there while mounted");
    assert!(i.deferred_remove, "{i:?}");
    assert_eq!(
        errno_of(
            "unmount what is not mounted",
            k.umount(&dir.join("data"), false)
        ),
        Some(Errno::EINVAL)
    );
    k.umount(&target, false).expect("umount");
    assert!(!k.mounts().unwrap().iter().any(|m| m.target == target));
    assert!(!k.is_mount_point(&target).expect("no longer a mount point"));
    assert_eq!(
        k.delayed_allocation(&target)
            .expect("delayed allocation once unmounted"),
        None
    );
    // The kernel queues the removal at the last close and runs it a moment
    // later (a work queue): soon, not at once.
    eventually("the deferred removal, after the last close", || {
        k.dm_info(&thin).unwrap().map(|i| format!("{i:?}"))
    });

    // The metadata snapshot, and the tools that read it.
    let meta_dev = k
        .loop_list()
        .unwrap()
        .into_iter()
        .find(|l| l.backing_file == metadata)
        .expect("the metadata loop, held by the pool")
        .device;
    assert!(
        k.thin_ls_snapshot(&meta_dev).is_err(),
        "thin_ls of the snapshot without one held"
    );
    msg("reserve_metadata_snap").expect("reserve_metadata_snap");
    assert!(working(k, &pool).held_metadata_snapshot);
    assert_eq!(
        errno_of("reserve a second snapshot", msg("reserve_metadata_snap")),
        Some(Errno::EBUSY)
    );
    let ls = k.thin_ls_snapshot(&meta_dev).expect("thin_ls");
    let row: Vec<u64> = ls
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect::<Vec<u64>>()
        })
        .find(|r| r.first() == Some(&0))
        .unwrap_or_else(|| panic!("thin id 0 not in thin_ls output:\n{ls}"));
    assert_eq!(row.len(), 4, "DEV MAPPED EXCLUSIVE SHARED: {row:?}");
    assert_eq!(
        row[1] * BLOCK_SECTORS,
        sectors_mapped,
        "thin_ls against the thin status"
    );
    let dump = k.thin_dump_snapshot(&meta_dev).expect("thin_dump");
    assert!(
        dump.contains("dev_id=\"0\""),
        "thin id 0 not in the dump:\n{dump}"
    );
    msg("release_metadata_snap").expect("release_metadata_snap");
    assert_eq!(
        errno_of("release with none held", msg("release_metadata_snap")),
        Some(Errno::EINVAL)
    );
    // A discard of the whole device unmaps every block, and the pool frees
    // those no other thin device maps.
    let t = k
        .dm_create(&thin, &thin_table(THIN * 2), false)
        .expect("thin 0 again");
    k.discard(&t.devnum.dm_node()).expect("discard thin 0");
    assert_eq!(mapped(k, &thin).0, 0, "a discarded device maps nothing");
    assert_eq!(working(k, &pool).data_used, 0, "its blocks are free");
    k.dm_remove(&thin, false).expect("remove thin 0");
    msg("delete 0").expect("delete 0 once no device uses it");
    assert_eq!(
        working(k, &pool).data_used,
        0,
        "deleting the only thin frees its blocks"
    );

    // Down: the pool's loops detach themselves (autoclear) at its removal.
    k.dm_remove(&pool, false).expect("remove the pool");
    assert_eq!(k.dm_info(&pool).unwrap(), None);
    eventually("the pool's loops detach themselves", || {
        let left: Vec<_> = k
            .loop_list()
            .unwrap()
            .into_iter()
            .filter(|l| l.backing_file == data || l.backing_file == metadata)
            .collect();
        (!left.is_empty()).then(|| format!("{left:?}"))
    });
    std::fs::remove_dir_all(dir).expect("remove the contract dir");
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_simulated_kernel_keeps_the_contract() {
        let dir = crate::testutil::TempDir::new("contract");
        super::check(
            &super::super::Sim::new(),
            &dir.path().join("k"),
            "thinlayer-test",
        );
    }
}
