//! Layers larger than their parent: a container's own size.
//!
//! Every layer's device is at least as large as its parent's (the base's
//! is the pool's `base_size`). A thin snapshot can be given a longer table
//! than its origin: what lies beyond the origin's end was never written
//! and reads as zeros. A layer asked to be larger gets its filesystem grown
//! to the device's end before anyone sees it, and everything made from it
//! later (its commit, containers of that image) inherits the size.
//!
//! The grow runs inside the layer's creation, between its `create_snap`
//! and the move of the pool's transaction id (see [`crate::records`]): a
//! crash before the id moved rolls the new thin id back, and with it
//! whatever a half-done grow wrote, so a layer is either absent or
//! recorded with its filesystem grown, never in between. The grow itself
//! is the filesystem's own tool, run where it works (see
//! [`FsKind::grow`]).

use std::collections::BTreeMap;
use std::fs;

use super::Op;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::fs::GrowOn;
use crate::thin::Thins;
use crate::tree::{Kind, Layer};
use crate::units::{Bytes, ThinId};

/// The label containerd's clients set on a Prepare to ask for an active
/// snapshot of a given size, in bytes (a decimal integer), as containerd
/// defines it (`snapshots.LabelSnapshotMaxSize`). thinlayer gives the
/// snapshot a device of that size, rounded up to whole pool blocks.
pub const MAX_SIZE_LABEL: &str = "containerd.io/snapshot/max-size";

/// The size a snapshot's labels ask for: [`MAX_SIZE_LABEL`] on an active
/// snapshot; a view is its parent's size, whatever its labels say. A
/// value that is not a positive decimal number of bytes is
/// [`Error::Invalid`].
pub(super) fn size_label(kind: Kind, labels: &BTreeMap<String, String>) -> Result<Option<Bytes>> {
    let Some(value) = labels.get(MAX_SIZE_LABEL).filter(|_| kind == Kind::Active) else {
        return Ok(None);
    };
    match value.parse::<u64>() {
        Ok(n) if n > 0 && i64::try_from(n).is_ok() => Ok(Some(Bytes(n))),
        _ => Err(Error::invalid(
            "snapshot size label",
            value,
            &format!(
                "{MAX_SIZE_LABEL} takes the snapshot's size in bytes, a positive decimal integer"
            ),
        )),
    }
}

/// Whole pool blocks of `block` bytes holding at least `size`; `None` on
/// overflow.
fn round_up(size: Bytes, block: Bytes) -> Option<Bytes> {
    size.0.div_ceil(block.0).checked_mul(block.0).map(Bytes)
}

/// Shows a size as the CLI and the error messages do: `2.0 GiB (2147483648 B)`.
fn both(b: Bytes) -> String {
    format!("{b} ({} B)", b.0)
}

impl Op<'_> {
    /// The device size of a new layer on `parent` (the base when `None`):
    /// its parent's, or `asked` rounded up to whole pool blocks when that
    /// is larger; and whether the filesystem must then be grown. A size
    /// below the parent's is refused.
    pub(super) fn new_layer_size(
        &self,
        parent: Option<&str>,
        asked: Option<Bytes>,
    ) -> Result<(Bytes, bool)> {
        let inherited = match parent {
            Some(p) => self.rec.tree.get(p)?.device_size,
            None => self.rec.pool.base_size,
        };
        let Some(asked) = asked else {
            return Ok((inherited, false));
        };
        let block = self.rec.pool.block_size.bytes();
        let size = round_up(asked, block)
            .filter(|s| s.to_sectors().is_some_and(|s| i64::try_from(s.0).is_ok()))
            .ok_or_else(|| Error::invalid("size", &asked.0.to_string(), "too large"))?;
        if size < inherited {
            let of = if parent.is_some() {
                "its image's device size"
            } else {
                "the pool's base size"
            };
            return Err(Error::invalid(
                "size",
                &both(asked),
                &format!("a container's device is at least {of}, {}", both(inherited)),
            ));
        }
        Ok((size, size > inherited))
    }

    /// Grows the filesystem of the new layer `l` to its device's size: its
    /// thin id exists, the transaction id has not moved yet (see the
    /// module docs). The device is made live for it and taken down after.
    pub(super) fn grow_new_layer(&self, thins: &Thins<'_>, l: &Layer) -> Result<()> {
        let (dev, _) = thins.activate(l.thin_id, l.device_size, false)?;
        failpoint::hit(failpoint::grow::AFTER_ACTIVATE);
        let fs = self.rec.pool.filesystem;
        let grown = match fs.grow() {
            (program, args, GrowOn::Device) => self
                .kernel()
                .grow_fs(&dev, program, &args)
                .inspect(|()| failpoint::hit(failpoint::grow::AFTER_RESIZE)),
            (program, args, GrowOn::MountPoint) => {
                let target = self.mount_path(l);
                self.mount_fs(&dev, &target, false)?;
                let grown = self
                    .kernel()
                    .grow_fs(&target, program, &args)
                    .inspect(|()| failpoint::hit(failpoint::grow::AFTER_RESIZE));
                let down = self.umount_settled(&target);
                let _ = fs::remove_dir(&target);
                grown.and(down)
            }
        };
        let down = thins.deactivate(l.thin_id);
        grown?;
        tracing::info!(layer = l.key, size = l.device_size.0, %fs, "filesystem grown");
        down
    }

    /// Unmounts what a grow killed midway left mounted at the mount point
    /// of thin id `id`, so that the id can be rolled back.
    pub(super) fn release_grow_mount(&self, id: ThinId) -> Result<()> {
        let target = self.mount_path_of(id);
        if self.kernel().mounts()?.iter().any(|m| m.target == target) {
            tracing::info!(target = %target.display(), "unmounting an interrupted grow");
            self.umount_settled(&target)?;
            let _ = fs::remove_dir(&target);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::Arc;

    use super::*;
    use crate::Driver;
    use crate::driver::scenarios;
    use crate::fs::FsKind;
    use crate::kernel::{Kernel, Sim};
    use crate::pool::PoolOptions;
    use crate::testutil::TempDir;
    use crate::tree::ImageRef;

    const GIB: u64 = 1 << 30;

    fn world(fs: FsKind) -> (TempDir, Sim, scenarios::World, Driver) {
        let dir = TempDir::new("grow");
        let sim = Sim::new();
        let opts = PoolOptions {
            filesystem: fs,
            ..crate::driver::tests::opts()
        };
        let (w, d) = scenarios::World::new(Arc::new(sim.clone()), dir.path(), &opts);
        (dir, sim, w, d)
    }

    fn image(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    fn grows(sim: &Sim, program: &str) -> usize {
        sim.tool_runs()
            .iter()
            .filter(|r| r.starts_with(program))
            .count()
    }

    #[test]
    fn a_container_can_be_larger_than_its_image_and_what_is_made_from_it_inherits() {
        let (_dir, sim, w, d) = world(FsKind::Ext4);
        let big = d
            .create_container_sized("big", None, Some(Bytes(3 * GIB)))
            .unwrap();
        assert_eq!(big.device_size, Bytes(3 * GIB));
        assert_eq!(
            grows(&sim, "resize2fs /dev/dm-"),
            1,
            "{:?}",
            sim.tool_runs()
        );
        d.commit("big", &image("bigimg")).unwrap();
        let c = d.create_container("c", Some(&image("bigimg"))).unwrap();
        assert_eq!(c.device_size, Bytes(3 * GIB), "a container of the image");
        // Its image's size exactly: nothing to grow.
        let same = d
            .create_container_sized("same", Some(&image("bigimg")), Some(Bytes(3 * GIB)))
            .unwrap();
        assert_eq!(same.device_size, Bytes(3 * GIB));
        assert_eq!(grows(&sim, "resize2fs"), 1);
        // Rounded up to whole pool blocks.
        let odd = d
            .create_container_sized("odd", Some(&image("bigimg")), Some(Bytes(3 * GIB + 1)))
            .unwrap();
        assert_eq!(odd.device_size, Bytes(3 * GIB + (64 << 10)));
        let sizes: BTreeMap<String, Bytes> = d
            .containers(false)
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.device_size))
            .collect();
        assert_eq!(sizes["c"], Bytes(3 * GIB), "ps shows the device size");
        w.check_invariants();
    }

    #[test]
    fn a_size_below_the_images_is_refused_and_changes_nothing() {
        let (_dir, sim, w, d) = world(FsKind::Ext4);
        d.create_container_sized("big", None, Some(Bytes(2 * GIB)))
            .unwrap();
        d.commit("big", &image("bigimg")).unwrap();
        let before = d.records().unwrap();
        let runs = sim.tool_runs().len();
        let e = d
            .create_container_sized("small", Some(&image("bigimg")), Some(Bytes(GIB)))
            .unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{e}");
        let said = e.to_string();
        assert!(
            said.contains("1.0 GiB (1073741824 B)") && said.contains("2.0 GiB (2147483648 B)"),
            "both sizes: {said}"
        );
        let e = d
            .create_container_sized("small", None, Some(Bytes(GIB / 2)))
            .unwrap_err();
        assert!(e.to_string().contains("base size"), "{e}");
        assert_eq!(d.records().unwrap(), before);
        assert_eq!(sim.tool_runs().len(), runs, "no tool ran");
        w.check_invariants();
    }

    #[test]
    fn xfs_grows_mounted_and_leaves_no_mount() {
        let (_dir, sim, w, d) = world(FsKind::Xfs);
        d.create_container_sized("big", None, Some(Bytes(2 * GIB)))
            .unwrap();
        let runs = sim.tool_runs();
        let mnt = w.root.join("mnt");
        assert!(
            runs.iter()
                .any(|r| r.starts_with(&format!("xfs_growfs {}", mnt.display()))),
            "{runs:?}"
        );
        w.check_invariants();
    }

    #[test]
    fn a_grow_that_fails_or_is_cut_short_leaves_no_layer() {
        for fs in [FsKind::Ext4, FsKind::Xfs] {
            let (_dir, sim, w, d) = world(fs);
            sim.fail_once("grow");
            let e = d
                .create_container_sized("big", None, Some(Bytes(2 * GIB)))
                .unwrap_err();
            assert!(matches!(e, Error::Kernel { .. }), "{fs}: {e}");
            assert!(!d.tree().unwrap().layers.contains_key("big"), "{fs}");
            w.check_invariants();
            // Killed with the device up (and, for xfs, mounted).
            for point in failpoint::grow::POINTS {
                failpoint::arm(*point);
                let cut = catch_unwind(AssertUnwindSafe(|| {
                    d.create_container_sized("big", None, Some(Bytes(2 * GIB)))
                }));
                failpoint::disarm();
                assert!(cut.is_err(), "{fs}: {point} was reached");
                let d = w.open();
                assert!(
                    !d.tree().unwrap().layers.contains_key("big"),
                    "{fs} {point}"
                );
                w.check_invariants();
                assert!(
                    sim.mounts()
                        .unwrap()
                        .iter()
                        .all(|m| !m.target.starts_with(&w.root)),
                    "{fs} {point}: mounts left"
                );
            }
            d.create_container_sized("big", None, Some(Bytes(2 * GIB)))
                .unwrap();
            w.check_invariants();
        }
    }

    fn labels(v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(MAX_SIZE_LABEL.to_string(), v.to_string())])
    }

    #[test]
    fn the_size_label_is_bytes_in_decimal_on_active_snapshots() {
        assert_eq!(
            size_label(Kind::Active, &labels("21474836480")).unwrap(),
            Some(Bytes(20 << 30))
        );
        assert_eq!(size_label(Kind::Active, &BTreeMap::new()).unwrap(), None);
        assert_eq!(size_label(Kind::View, &labels("nonsense")).unwrap(), None);
        for bad in ["", "0", "-1", "20G", "1.5", " 5", "9223372036854775808"] {
            let e = size_label(Kind::Active, &labels(bad)).unwrap_err();
            assert!(matches!(e, Error::Invalid { .. }), "{bad:?}: {e}");
            assert!(e.to_string().contains(MAX_SIZE_LABEL), "{e}");
        }
    }

    #[test]
    fn sizes_round_up_to_whole_blocks() {
        let b = Bytes(64 << 10);
        assert_eq!(round_up(Bytes(1), b), Some(b));
        assert_eq!(round_up(Bytes(20 << 30), b), Some(Bytes(20 << 30)));
        assert_eq!(round_up(Bytes(u64::MAX), b), None);
    }
}
