//! Space goes back: blocks a layer's filesystem freed return to the pool
//! by its unmount, blocks a removed layer held alone return to the host
//! (holes punched in the pool's data file), and no layer ever reads the
//! data of blocks that were discarded and handed out again.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use thinlayer::kernel::Kernel;

use crate::fixture::{self, Fixture, write_file};

const MIB: u64 = 1 << 20;

/// What a container writes and deletes: the figure users report.
const WRITTEN: u64 = 512 * MIB;

/// How far above its figure before the writes the pool may stay once the
/// written file is deleted and the layer unmounted: the blocks of the
/// journal (ext4) or log (xfs) the writes went through, and of the inode
/// tables, bitmaps and directories they changed, are still the layer's,
/// and each costs a whole 64 KiB pool block. Measured: a few MiB; against
/// 512 MiB written.
const KEPT: u64 = 32 * MIB;

/// Bytes the host holds for a file (`du`: its allocated blocks).
fn allocated(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .blocks()
        * 512
}

/// The pool's data used, in bytes.
fn pool_used(fx: &Fixture) -> u64 {
    fx.json(&["pool", "status"])["data_used"]
        .as_u64()
        .expect("data_used")
}

/// The figures the checks compare, printed for the record.
struct Figures<'a> {
    fx: &'a Fixture,
    data: PathBuf,
}

impl Figures<'_> {
    fn take(&self, when: &str) -> (u64, u64) {
        let (used, du) = (pool_used(self.fx), allocated(&self.data));
        println!(
            "{when}: pool data used {:.1} MiB, data file allocated {:.1} MiB",
            used as f64 / MIB as f64,
            du as f64 / MIB as f64
        );
        (used, du)
    }
}

fn mount(fx: &Fixture, name: &str) -> PathBuf {
    PathBuf::from(fx.ok(&["container", "mount", name]).trim())
}

fn gives_space_back(fs_kind: &str) {
    fixture::run(&format!("space-{fs_kind}"), |fx| {
        fx.init_pool("4G", "64M", Some("2G"), &["--fs", fs_kind]);
        let fig = Figures {
            fx,
            data: fx.root.join("data"),
        };
        let (used0, du0) = fig.take("empty pool");

        // Written, deleted, unmounted: back in the pool and on the host.
        fx.ok(&["container", "create", "scratch", "c"]);
        let m = mount(fx, "c");
        write_file(&m.join("big"), WRITTEN as usize, 7);
        let (used1, du1) = fig.take("512 MiB written");
        assert!(used1 >= used0 + WRITTEN, "the pool holds what was written");
        assert!(du1 >= du0 + WRITTEN, "so does the data file");
        fs::remove_file(m.join("big")).unwrap();
        nix::unistd::sync();
        let (used2, _) = fig.take("deleted, still mounted");
        // Trimmed at unmount, not at each delete (see the README).
        assert!(
            used2 >= used0 + WRITTEN,
            "a mounted layer keeps what its files freed until its unmount"
        );
        fx.ok(&["container", "umount", "c"]);
        let (used3, du3) = fig.take("unmounted");
        assert!(
            used3 <= used0 + KEPT,
            "the unmount gives the freed blocks back to the pool: {used3} bytes used, {used0} before"
        );
        assert!(
            du3 <= du0 + KEPT,
            "and the host gets them back: the data file holds {du3} bytes, {du0} before"
        );

        // A container holding 512 MiB is removed: the host gets it back.
        let m = mount(fx, "c");
        write_file(&m.join("big"), WRITTEN as usize, 8);
        fx.ok(&["container", "umount", "c"]);
        let (used4, du4) = fig.take("512 MiB held");
        fx.ok(&["container", "rm", "c"]);
        let (used5, du5) = fig.take("container removed");
        assert!(
            used5 + WRITTEN <= used4,
            "the pool frees the removed layer's blocks"
        );
        assert!(
            du5 + WRITTEN <= du4,
            "the data file gives back at least the 512 MiB the container held: {du4} -> {du5}"
        );

        // An image layer's removal gives back the blocks it held alone.
        fx.ok(&["container", "create", "scratch", "i"]);
        let m = mount(fx, "i");
        write_file(&m.join("layer"), 64 << 20, 9);
        fx.ok(&["container", "umount", "i"]);
        fx.ok(&["container", "commit", "i", "img"]);
        let (_, du6) = fig.take("64 MiB image");
        fx.ok(&["image", "rm", "img"]);
        let (used7, du7) = fig.take("image removed");
        assert!(
            du7 + (64 << 20) <= du6,
            "the image's removal gives its 64 MiB back: {du6} -> {du7}"
        );
        assert!(
            used7 <= used0 + KEPT,
            "{used7} bytes used, {used0} at first"
        );
    });
}

#[test]
fn freed_blocks_go_back_to_the_pool_at_unmount_and_to_the_host_at_removal_ext4() {
    gives_space_back("ext4");
}

#[test]
fn freed_blocks_go_back_to_the_pool_at_unmount_and_to_the_host_at_removal_xfs() {
    gives_space_back("xfs");
}

/// What the removed layer wrote: every 8-byte word of it. A stale block,
/// or any sector of one, would show it at an 8-byte-aligned offset of a
/// file (files start on filesystem blocks) or of a device.
const MARK: &[u8; 8] = b"STALE!!\x01";

fn marked(bytes: &[u8]) -> bool {
    bytes.chunks_exact(8).any(|w| w == MARK)
}

/// Reads `path` whole; panics if any of it is the removed layer's.
fn check_clean(path: &Path) -> u64 {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            return total;
        }
        // Whole words only: a read returns whole pages until the end.
        assert!(
            !marked(&buf[..n]),
            "{} reads another layer's old data near offset {total}",
            path.display()
        );
        total += n as u64;
    }
}

/// Every regular file under `dir`, read whole.
fn check_tree(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    for entry in fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        let t = fs::symlink_metadata(&p).unwrap().file_type();
        if t.is_dir() {
            let (f, b) = check_tree(&p);
            files += f;
            bytes += b;
        } else if t.is_file() {
            files += 1;
            bytes += check_clean(&p);
        }
    }
    (files, bytes)
}

/// Writes the shapes of file that leave parts of a pool block unwritten.
fn write_small_and_partial(dir: &Path, seed: u64) {
    fs::create_dir_all(dir).unwrap();
    // Small files of every size up to a few pool blocks: tails of blocks.
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    for i in 0..1000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = (x >> 33) as usize % 200_000;
        fs::write(dir.join(format!("small-{i}")), vec![b'n'; len]).unwrap();
    }
    let d = dir.join("dirs");
    for i in 0..200 {
        fs::create_dir_all(d.join(format!("{i}/a/b"))).unwrap();
    }
    // Reserved, never written: unwritten extents read as zeros.
    let f = fs::File::create(dir.join("fallocated")).unwrap();
    nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, 64 << 20).unwrap();
    // A byte every 1 MiB and 300 KiB: holes between writes in one block.
    let mut f = fs::File::create(dir.join("sparse")).unwrap();
    for i in 0..64u64 {
        f.seek(SeekFrom::Start(i * (1_300 << 10) + 77)).unwrap();
        f.write_all(b"x").unwrap();
    }
    // Grown by truncate: a hole to the end.
    let f = fs::File::create(dir.join("extended")).unwrap();
    (&f).write_all(b"ten bytes!").unwrap();
    f.set_len(48 << 20).unwrap();
    // Unaligned writes into a new file.
    let mut f = fs::File::create(dir.join("unaligned")).unwrap();
    for off in [70_000u64, 200_003, 1_000_001, 5_000_000] {
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&[b'u'; 100]).unwrap();
    }
    f.sync_all().unwrap();
    nix::unistd::sync();
}

/// The node of the device mounted at `target`.
fn device_of(fx: &Fixture, target: &Path) -> PathBuf {
    fx.kernel
        .mounts()
        .unwrap()
        .into_iter()
        .find(|m| m.target == target)
        .and_then(|m| m.devnum)
        .map(|d| d.dm_node())
        .unwrap_or_else(|| panic!("nothing mounted on {}", target.display()))
}

/// Reads a whole device: a reused block that the pool handed out without
/// its old content being discarded would show here even where no file
/// reads it (a journal's unused slots, the unwritten rest of a pool block).
fn check_device(dev: &Path) {
    let mut f = fs::File::open(dev).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let mut at = 0u64;
    loop {
        let n = f.read(&mut buf).expect("read device");
        if n == 0 {
            return;
        }
        assert!(
            !marked(&buf[..n]),
            "{} holds another layer's old data near byte {at}",
            dev.display()
        );
        at += n as u64;
    }
}

fn never_reads_old_data(fs_kind: &str) {
    fixture::run(&format!("stale-{fs_kind}"), |fx| {
        // A small pool, mostly filled with the mark: what comes after
        // must reuse its blocks.
        fx.init_pool("1G", "64M", Some("1G"), &["--fs", fs_kind]);
        fx.ok(&["container", "create", "scratch", "old"]);
        let m = mount(fx, "old");
        {
            let chunk: Vec<u8> = MARK.repeat(1 << 17);
            let mut f = fs::File::create(m.join("mark")).unwrap();
            for _ in 0..800 {
                f.write_all(&chunk).unwrap();
            }
            f.sync_all().unwrap();
        }
        fx.ok(&["container", "umount", "old"]);
        let used_full = pool_used(fx);
        let total = fx.json(&["pool", "status"])["data_total"]
            .as_u64()
            .expect("data_total");
        fx.ok(&["container", "rm", "old"]);
        let used_empty = pool_used(fx);
        println!(
            "marked {:.0} MiB of the pool, {:.0} MiB after its removal",
            used_full as f64 / MIB as f64,
            used_empty as f64 / MIB as f64
        );

        // New layers write every shape of partial block, one of them is
        // committed and read through a container of it.
        let mut reused = 0;
        for round in 0..4 {
            let name = format!("new{round}");
            fx.ok(&["container", "create", "scratch", &name]);
            let m = mount(fx, &name);
            write_small_and_partial(&m.join("w"), round);
            reused = reused.max(pool_used(fx));
            fx.ok(&["container", "umount", &name]);
        }
        fx.ok(&["container", "commit", "new0", "img"]);
        fx.ok(&["container", "create", "img", "child"]);
        let m = mount(fx, "child");
        write_small_and_partial(&m.join("more"), 9);
        fx.ok(&["container", "umount", "child"]);
        println!(
            "new layers used up to {:.0} MiB of the pool",
            reused as f64 / MIB as f64
        );
        // More than the marked layer left free: some of its blocks were
        // handed out again.
        assert!(
            reused - used_empty > total - used_full,
            "the new layers did not need the removed layer's blocks: \
             {reused} used at most, {used_empty} after the removal, {used_full} of {total} while marked"
        );

        // Read back from the devices, not the page cache: mounted afresh.
        let mut all = (0, 0);
        for name in ["new1", "new2", "new3", "child"] {
            let m = mount(fx, name);
            let (files, bytes) = check_tree(&m);
            all = (all.0 + files, all.1 + bytes);
            check_device(&device_of(fx, &m));
            fx.ok(&["container", "umount", name]);
        }
        println!(
            "read {} files, {} bytes: none of the old data",
            all.0, all.1
        );
        assert!(all.0 > 2000, "the files were read");
    });
}

#[test]
fn no_layer_reads_the_data_of_a_removed_one_ext4() {
    never_reads_old_data("ext4");
}

#[test]
fn no_layer_reads_the_data_of_a_removed_one_xfs() {
    never_reads_old_data("xfs");
}
