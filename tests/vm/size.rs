//! A container's own size (`container create --size`, containerd's
//! `containerd.io/snapshot/max-size` label on Prepare) and `system df`,
//! on the real kernel and filesystems.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use containerd_snapshots::tonic::Code;
use thinlayer::kernel::Kernel;
use thinlayer::units::Bytes;

use crate::fixture::{self, Fixture, write_file};
use crate::served::{Client, Served};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// What the filesystem mounted at `path` says its size is (statvfs).
fn fs_bytes(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path)
        .unwrap_or_else(|e| panic!("statvfs {}: {e}", path.display()));
    st.blocks() * st.fragment_size()
}

fn mount(fx: &Fixture, name: &str) -> PathBuf {
    PathBuf::from(fx.ok(&["container", "mount", name]).trim())
}

/// The device size `ps --json` shows for each container.
fn device_sizes(fx: &Fixture) -> HashMap<String, u64> {
    fx.json(&["ps"])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["device_size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Reserves `len` bytes for a new file at `path` (fallocate): only a
/// filesystem that large has room for it.
fn fallocate(path: &Path, len: u64) -> nix::Result<()> {
    let f = fs::File::create(path).unwrap();
    nix::fcntl::fallocate(
        &f,
        nix::fcntl::FallocateFlags::empty(),
        0,
        i64::try_from(len).unwrap(),
    )
}

/// A 20 GiB container on a pool whose layers are 2 GiB: its filesystem
/// is 20 GiB, holds more than 2 GiB, and what is made from it keeps the
/// size.
fn a_20g_container_on_a_2g_base(fs_kind: &str) {
    fixture::run(&format!("size-{fs_kind}"), |fx| {
        fx.init_pool("4G", "64M", Some("2G"), &["--fs", fs_kind]);
        fx.ok(&["container", "create", "scratch", "small"]);
        let small = mount(fx, "small");
        let base = fs_bytes(&small);
        assert!(
            base > 3 * GIB / 2 && base <= 2 * GIB,
            "{fs_kind}: the base size's filesystem is {base} bytes"
        );
        fx.ok(&["container", "umount", "small"]);

        let before = fx.data_used();
        fx.ok(&["container", "create", "--size", "20G", "scratch", "big"]);
        let grown = fx.data_used() - before;
        let big = mount(fx, "big");
        let size = fs_bytes(&big);
        println!(
            "{fs_kind}: 2 GiB base, --size 20G: the filesystem inside is {size} bytes \
             ({:.2} GiB), its grow took {grown} bytes of pool",
            size as f64 / GIB as f64
        );
        assert!(
            size > 19 * GIB && size <= 20 * GIB,
            "{fs_kind}: a 20 GiB device holds a filesystem of {size} bytes"
        );
        assert!(
            grown < 64 * MIB,
            "{fs_kind}: growing the filesystem took {grown} bytes of pool"
        );
        // Room beyond the base size: 4 GiB reserved in one file.
        fallocate(&big.join("big.bin"), 4 * GIB)
            .unwrap_or_else(|e| panic!("{fs_kind}: fallocate 4 GiB: {e}"));
        fx.ok(&["container", "umount", "big"]);

        let sizes = device_sizes(fx);
        assert_eq!(sizes["big"], 20 * GIB, "{sizes:?}");
        assert_eq!(sizes["small"], 2 * GIB, "{sizes:?}");
        let table = fx.ok(&["ps"]);
        assert!(
            table.contains("DEVICE SIZE") && table.contains("20.0 GiB"),
            "{table}"
        );

        // Its image and a container of that: 20 GiB too, nothing to grow.
        fx.ok(&["container", "commit", "big", "big"]);
        fx.ok(&["container", "create", "big", "child"]);
        assert_eq!(device_sizes(fx)["child"], 20 * GIB);
        let child = mount(fx, "child");
        assert_eq!(fs_bytes(&child), size, "{fs_kind}: the child's filesystem");
        assert_eq!(
            fs::metadata(child.join("big.bin")).unwrap().len(),
            4 * GIB,
            "{fs_kind}: the image's file"
        );
        fx.ok(&["container", "umount", "child"]);
        // Below its image's 20 GiB: refused.
        let err = fx.fails(&["container", "create", "--size", "10G", "big", "c"], 2);
        assert!(err.contains("20.0 GiB (21474836480 B)"), "{err}");
        fx.ok(&["container", "rm", "child"]);
        fx.ok(&["container", "rm", "small"]);
        fx.ok(&["image", "rm", "big"]);
    });
}

#[test]
fn a_20g_container_on_a_2g_base_has_a_20g_ext4() {
    a_20g_container_on_a_2g_base("ext4");
}

#[test]
fn a_20g_container_on_a_2g_base_has_a_20g_xfs() {
    a_20g_container_on_a_2g_base("xfs");
}

#[test]
fn a_size_below_the_image_is_refused_and_changes_nothing() {
    fixture::run("size-refused", |fx| {
        fx.init_pool("1G", "16M", Some("512M"), &[]);
        fx.ok(&["container", "create", "scratch", "img"]);
        fx.ok(&["container", "commit", "img", "app"]);
        let files = [fx.root.join("state.json"), fx.root.join("state.journal")];
        let records = files.each_ref().map(|f| fs::read(f).unwrap());
        let devices = fx.devices();
        let used = fx.data_used();
        for (from, size, asked) in [
            ("app", "256M", "256.0 MiB"),
            ("scratch", "511M", "511.0 MiB"),
        ] {
            let err = fx.fails(&["container", "create", "--size", size, from, "c"], 2);
            assert!(
                err.contains(asked) && err.contains("512.0 MiB (536870912 B)"),
                "both sizes: {err}"
            );
        }
        let out = fx.cli(&["container", "create", "--size", "lots", "app", "c"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("invalid size \"lots\""), "{err}");
        assert_eq!(
            files.each_ref().map(|f| fs::read(f).unwrap()),
            records,
            "the records changed"
        );
        assert_eq!(fx.devices(), devices);
        assert_eq!(fx.data_used(), used);
        assert!(!device_sizes(fx).contains_key("c"));
        fx.ok(&["image", "rm", "app"]);
    });
}

/// A client of `thinlayer serve`'s socket, as containerd dials it.
#[test]
fn the_max_size_label_on_prepare_sizes_the_snapshot() {
    fixture::run("size-label", |fx| {
        fx.init_pool("2G", "32M", Some("512M"), &["--fs", "xfs"]);
        let served = Served::start(fx);
        let mut client = Client::connect(&served.socket);
        let label = "containerd.io/snapshot/max-size";
        let big = (3 * GIB).to_string();
        let source = client
            .prepare_labeled("default/1/big", "", &[(label, &big)])
            .expect("prepare with a size label");
        let size = fs_bytes(Path::new(&source));
        println!("label max-size 3 GiB on a 512 MiB base: an xfs of {size} bytes");
        assert!(size > 2 * GIB + GIB / 2 && size <= 3 * GIB, "{size}");
        for (bad, says) in [
            ("20G", "positive decimal integer"),
            ("-5", "positive decimal integer"),
            ("1048576", "536870912 B"),
        ] {
            let e = client
                .prepare_labeled("default/2/bad", "", &[(label, bad)])
                .expect_err(bad);
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
            assert!(e.message().contains(says), "{bad}: {}", e.message());
        }
        client.remove("default/1/big");
        drop(client);
        assert!(fx.json(&["ps"]).as_array().unwrap().is_empty());
        served.daemon.stop();
    });
}

/// The figures of one line of `system df --json`: total, active, size,
/// reclaimable.
fn line(df: &serde_json::Value, what: &str) -> (u64, u64, u64, u64) {
    let l = &df[what];
    let n = |k: &str| l[k].as_u64().unwrap_or_else(|| panic!("{what}.{k}: {l}"));
    (n("total"), n("active"), n("size"), n("reclaimable"))
}

#[test]
fn system_df_shows_images_containers_and_what_the_host_holds() {
    fixture::run("system-df", |fx| {
        fx.init_pool("2G", "32M", Some("512M"), &[]);
        let layer = |name: &str, from: &str, mib: usize| {
            fx.ok(&["container", "create", from, name]);
            let m = mount(fx, name);
            write_file(&m.join("f"), mib << 20, 1);
        };
        layer("img", "scratch", 8);
        fx.ok(&["container", "umount", "img"]);
        fx.ok(&["container", "commit", "img", "app"]);
        layer("other", "scratch", 3);
        fx.ok(&["container", "umount", "other"]);
        fx.ok(&["container", "commit", "other", "unused"]);
        layer("web", "app", 4); // stays mounted: in use
        layer("idle", "app", 2);
        fx.ok(&["container", "umount", "idle"]);

        let df = fx.json(&["system", "df"]);
        let (total, active, size, reclaimable) = line(&df, "images");
        assert_eq!((total, active), (2, 1), "{df}");
        assert!((11 * MIB..12 * MIB).contains(&size), "{df}");
        // unused's own layer: its 3 MiB file and the filesystem's metadata.
        assert!((3 * MIB..4 * MIB).contains(&reclaimable), "{df}");
        let (total, active, size, reclaimable) = line(&df, "containers");
        assert_eq!((total, active), (2, 1), "{df}");
        assert!((6 * MIB..7 * MIB).contains(&size), "{df}");
        assert!((2 * MIB..3 * MIB).contains(&reclaimable), "{df}");
        assert!(df.get("image_list").is_none(), "lists only with -v: {df}");

        let pool = &df["pool"];
        let used = pool["data_used"].as_u64().unwrap();
        assert!(used >= 17 * MIB, "{pool}");
        assert_eq!(pool["data_total"].as_u64().unwrap(), 2 * GIB);
        let data = &pool["files"][0];
        assert_eq!(
            data["path"].as_str().unwrap(),
            fx.root.join("data").to_str().unwrap()
        );
        let (allocated, length) = (
            data["allocated"].as_u64().unwrap(),
            data["size"].as_u64().unwrap(),
        );
        println!(
            "system df: data file {length} bytes long, {allocated} allocated, pool data used {used}"
        );
        assert_eq!(length, 2 * GIB);
        // The host holds what was written to the pool's blocks: a block
        // written in part (new blocks are not zeroed) is allocated in part.
        assert!(
            allocated > used / 2 && allocated < length / 2,
            "the sparse file holds about what the pool wrote: {pool}"
        );
        assert!(
            pool["files"][1]["allocated"].as_u64().unwrap() > 0,
            "{pool}"
        );

        let df = fx.json(&["system", "df", "-v"]);
        let images = df["image_list"].as_array().unwrap();
        let app = images.iter().find(|i| i["name"] == "app:latest").unwrap();
        assert_eq!(app["containers"], 2, "{app}");
        let containers = df["container_list"].as_array().unwrap();
        assert_eq!(containers.len(), 2, "{df}");
        let text = fx.ok(&["system", "df", "-v"]);
        println!("system df -v:\n{text}");
        for want in [
            "RECLAIMABLE",
            "HOST ALLOCATED",
            "Images space usage",
            "idle",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }

        // Removing what no container uses gives back what was reclaimable.
        fx.ok(&["image", "rm", "unused"]);
        fx.ok(&["container", "rm", "idle"]);
        let df = fx.json(&["system", "df"]);
        assert_eq!(line(&df, "images").3, 0, "{df}");
        assert_eq!(line(&df, "containers").3, 0, "{df}");
        fx.ok(&["container", "umount", "web"]);
        fx.ok(&["container", "rm", "web"]);
        fx.ok(&["image", "rm", "app"]);
    });
}

/// What `ps -s --json` shows as the container `name`'s size.
fn ps_size(fx: &Fixture, name: &str) -> u64 {
    let ps = fx.json(&["ps", "-s"]);
    let c = ps
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {ps}"))
        .clone();
    c["size"].as_u64().unwrap_or_else(|| panic!("{c}"))
}

/// A mounted container's new data counts in its size as soon as it is
/// written, before the kernel writes it back, in whole pool blocks; once
/// written back the pool holds it, and the figure is as large, but for
/// what ext4 writes about it.
#[test]
fn a_containers_writes_count_before_they_are_written_back() {
    const BLOCK: u64 = 64 << 10;
    // What ext4 writes around a file, each piece in its own pool block
    // (as in `scenario.rs`).
    const FS_OVERHEAD: u64 = 32 * BLOCK;
    const WRITTEN: u64 = 8 * MIB;
    fixture::run("size-unwritten", |fx| {
        fx.init_pool("1G", "16M", Some("512M"), &[]);
        fx.ok(&["container", "create", "scratch", "c"]);
        let m = mount(fx, "c");
        // containerd's Usage: the library's answer, from a kept dump.
        let d = crate::crash::open(fx);
        let usage = || d.layer_size("c").unwrap();
        let before = usage();
        assert_eq!(before.size.0, ps_size(fx, "c"));

        fs::write(m.join("new.bin"), vec![0x5a; WRITTEN as usize]).unwrap();
        let dumps = d.metadata_dumps();
        let pending = usage();
        let ps = ps_size(fx, "c");
        // Still in the page cache once both are read: the pool had none
        // of it when they were.
        let waiting = fx
            .kernel
            .delayed_allocation(&m)
            .unwrap()
            .expect("ext4 counts its delayed allocation");
        println!(
            "8 MiB written: size {} B before, {} B through Usage ({} dumps), \
             {ps} B in ps -s, {} B not written back after both",
            before.size.0,
            pending.size.0,
            d.metadata_dumps() - dumps,
            waiting.0
        );
        assert!(
            waiting.0 >= WRITTEN,
            "written back before the sizes were read: {} B left",
            waiting.0
        );
        for (what, size) in [("Usage", pending.size.0), ("ps -s", ps)] {
            assert!(
                (before.size.0 + WRITTEN..=before.size.0 + WRITTEN + FS_OVERHEAD).contains(&size),
                "{what}: {size} B, {} B before the write",
                before.size.0
            );
            assert_eq!(size % BLOCK, 0, "{what}: whole pool blocks");
        }
        assert_eq!(
            pending.virtual_size.0 - pending.size.0,
            before.virtual_size.0 - before.size.0,
            "the new data is the container's own"
        );

        // Written back: the pool's figure, exact, holds it.
        let dir = fs::File::open(&m).unwrap();
        nix::unistd::syncfs(&dir).unwrap();
        assert_eq!(fx.kernel.delayed_allocation(&m).unwrap(), Some(Bytes(0)));
        let flushed = usage();
        let ps = ps_size(fx, "c");
        println!(
            "synced: size {} B through Usage, {ps} B in ps -s",
            flushed.size.0
        );
        assert_eq!(flushed.size.0, ps);
        assert!(
            flushed.size.0 >= before.size.0 + WRITTEN,
            "{} B, {} B before the write",
            flushed.size.0,
            before.size.0
        );
        assert!(
            flushed.size.0.abs_diff(pending.size.0) <= BLOCK + FS_OVERHEAD,
            "{} B written back, {} B counted before",
            flushed.size.0,
            pending.size.0
        );
        drop(dir);
        fx.ok(&["container", "umount", "c"]);
        fx.ok(&["container", "rm", "c"]);
    });
}
