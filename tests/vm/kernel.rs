//! The kernel layer on its own, through the library (not dmsetup): a thin
//! pool on two loop devices over sparse files, a thin device, a write, a
//! snapshot that sees the data and diverges after its own write.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;

use thinlayer::fs::FsKind;
use thinlayer::kernel::Kernel;
use thinlayer::pool::{Pool, PoolConfig, PoolOptions, PoolSource, SourceOptions};
use thinlayer::thin::Thins;
use thinlayer::units::{BlockSize, Bytes, ThinId};

use crate::fixture;

const BLOCK: usize = 65536;

fn read_at(dev: &std::path::Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = File::open(dev).expect("open device");
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

fn write_at(dev: &std::path::Path, offset: u64, data: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .expect("open device");
    f.seek(SeekFrom::Start(offset)).unwrap();
    // O_DIRECT wants an aligned buffer: copy into one.
    let layout = std::alloc::Layout::from_size_align(data.len(), 4096).unwrap();
    // SAFETY: the layout is non-zero and valid; the buffer is freed below.
    let ptr = unsafe { std::alloc::alloc(layout) };
    // SAFETY: ptr is valid for data.len() bytes, freshly allocated.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, data.len()) };
    buf.copy_from_slice(data);
    f.write_all(buf).unwrap();
    f.sync_all().unwrap();
    // SAFETY: allocated above with the same layout.
    unsafe { std::alloc::dealloc(ptr, layout) };
}

#[test]
fn pool_thin_and_snapshot_through_the_library() {
    fixture::run("kernel", |fx| {
        std::fs::create_dir_all(&fx.root).unwrap();
        let config = PoolConfig {
            prefix: fx.prefix.clone(),
            source: PoolSource::LoopFiles {
                data: fx.root.join("data"),
                metadata: fx.root.join("metadata"),
            },
            block_size: BlockSize::DEFAULT,
            low_water_blocks: 32,
            filesystem: FsKind::Ext4,
            base_size: Bytes(256 << 20),
            min_free_percent: 10,
            autoextend: None,
        };
        let opts = PoolOptions {
            source: SourceOptions::LoopFiles {
                data_size: Bytes(512 << 20),
                metadata_size: Bytes(8 << 20),
            },
            ..PoolOptions::default()
        };
        let pool = Pool {
            kernel: &*fx.kernel,
            config: &config,
        };
        pool.create(&opts).expect("create pool");
        let st = pool.kernel_status().unwrap();
        assert_eq!(st.data_total, 512 * 1024 * 1024 / BLOCK as u64);
        assert_eq!(st.data_used, 0);
        assert!(st.error_if_no_space);

        let thins = Thins { pool: &pool };
        let origin = ThinId::new(1).unwrap();
        let snap = ThinId::new(2).unwrap();
        thins.create(origin).unwrap();
        let (odev, _) = thins.activate(origin, config.base_size, false).unwrap();
        let first = vec![0xA5u8; BLOCK];
        write_at(&odev, 0, &first);
        assert_eq!(read_at(&odev, 0, BLOCK), first);
        assert_eq!(thins.mapped(origin).unwrap(), Bytes(BLOCK as u64));

        // Snapshot of an active origin: suspended around create_snap, then resumed.
        thins.snapshot(snap, origin).unwrap();
        let oname = thinlayer::thin::dm_name(&fx.prefix, origin);
        assert!(
            !fx.kernel.dm_info(&oname).unwrap().unwrap().suspended,
            "origin resumed"
        );
        let (sdev, _) = thins.activate(snap, config.base_size, false).unwrap();
        assert_eq!(
            read_at(&sdev, 0, BLOCK),
            first,
            "snapshot sees the origin's data"
        );

        // Diverge: the snapshot's write is its own.
        let second = vec![0x5Au8; 4096];
        write_at(&sdev, 0, &second);
        assert_eq!(read_at(&sdev, 0, 4096), second);
        assert_eq!(read_at(&odev, 0, 4096), first[..4096], "origin unchanged");
        assert_eq!(
            read_at(&sdev, 4096, 4096),
            first[4096..8192],
            "rest of the block copied"
        );
        // One block shared, one copied: 2 blocks used in the pool.
        assert_eq!(pool.kernel_status().unwrap().data_used, 2);

        // Unmapped space reads as zeros.
        assert!(read_at(&sdev, 1 << 20, 4096).iter().all(|b| *b == 0));

        thins.deactivate(snap).unwrap();
        thins.deactivate(origin).unwrap();
        assert!(thins.delete(snap).unwrap());
        assert!(
            !thins.delete(snap).unwrap(),
            "second delete reports the id gone"
        );
        assert!(thins.delete(origin).unwrap());
        assert_eq!(pool.kernel_status().unwrap().data_used, 0);
        pool.deactivate().unwrap();
        pool.remove_files().unwrap();
        assert!(fx.leaks().is_empty(), "leaked: {:?}", fx.leaks());
    });
}

#[test]
fn busy_devices_are_removed_deferred() {
    fixture::run("deferred", |fx| {
        fx.init_pool("1G", "16M", Some("256M"), &[]);
        fx.ok(&["container", "create", "scratch", "c"]);
        let ps = fx.json(&["ps"]);
        let id = ps[0]["thin_id"].as_u64().unwrap();
        // Activate the device and hold it open, as a leaked mount elsewhere would.
        let path = fx.ok(&["container", "mount", "c"]);
        let name = format!("{}-{id}", fx.prefix);
        let node = fx
            .kernel
            .dm_info(&name)
            .unwrap()
            .expect("active")
            .devnum
            .dm_node();
        let holder = File::open(&node).unwrap();
        fx.ok(&["container", "umount", "c"]);
        assert!(
            !std::path::Path::new(path.trim()).exists(),
            "mount point removed"
        );
        // Still held: removal is deferred, and rm says the layer is busy.
        let err = fx.fails(&["container", "rm", "c"], 5);
        assert!(err.contains("still open"), "{err}");
        drop(holder);
        fx.ok(&["container", "rm", "c"]);
        assert!(fx.kernel.dm_info(&name).unwrap().is_none());
    });
}

/// The contract the simulated kernel is held to on the host
/// (`thinlayer::kernel::contract`), on the real one: what every host test
/// assumes of device-mapper, loop devices and mounts is checked here.
#[test]
fn the_real_kernel_keeps_the_simulators_contract() {
    fixture::run("contract", |fx| {
        thinlayer::kernel::contract::check(
            &thinlayer::kernel::Linux::new(),
            &fx.root.join("contract"),
            &fx.prefix,
        );
    });
}
