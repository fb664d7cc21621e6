//! Disk usage as `docker system df` shows it: images, containers, what
//! removing the unused ones would give back, and the pool's space with
//! what the host really holds for it.
//!
//! Sizes are the exact figures of the sizes module (whole pool blocks, from
//! the pool's metadata): an image layer's size is what it adds to its
//! parent, so the images' total counts a layer several images share once.
//!
//! Reclaimable, as Docker means it:
//! - images: the image layers no container (or view) is built on, whose
//!   blocks removing the images no container uses would free;
//! - containers: the size of the containers that are not in use (neither
//!   mounted nor held by containerd), which removing them would free.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Driver, LayerSize};
use crate::error::{Error, Result};
use crate::pool::PoolSource;
use crate::tree::{Kind, Layer, Tree};
use crate::units::Bytes;

/// One line of the summary: images or containers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsageSummary {
    pub total: usize,
    /// Images: used by at least one container. Containers: mounted, or
    /// held by containerd.
    pub active: usize,
    pub size: Bytes,
    pub reclaimable: Bytes,
}

/// One image of the detailed list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageUsage {
    pub name: String,
    /// Every layer of its chain.
    pub size: Bytes,
    /// The layers of its chain that another image's chain has too.
    pub shared_size: Bytes,
    /// `size` less `shared_size`: what removing it alone would free.
    pub unique_size: Bytes,
    /// How many containers are made from it.
    pub containers: usize,
}

/// One container (or view) of the detailed list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerUsage {
    pub name: String,
    pub image: Option<String>,
    pub kind: Kind,
    /// What it wrote.
    pub size: Bytes,
    /// Its image and what it wrote.
    pub virtual_size: Bytes,
    pub device_size: Bytes,
    /// Mounted, or held by containerd.
    pub active: bool,
}

/// A file the pool lives in, as the host's filesystem holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostFile {
    pub path: PathBuf,
    /// Its length: the space the pool may grow into.
    pub size: Bytes,
    /// The blocks the host's filesystem has given it (`st_blocks` × 512):
    /// what it really holds of the sparse file. It can be below the pool's
    /// use (new pool blocks are not zeroed, so a block written in part is
    /// allocated in part) or above it (blocks the pool freed stay
    /// allocated unless discards reach the file).
    pub allocated: Bytes,
}

/// The pool's space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolSpace {
    pub data_used: Bytes,
    pub data_total: Bytes,
    pub metadata_used: Bytes,
    pub metadata_total: Bytes,
    /// The sparse files of a pool on loop files, data then metadata; empty
    /// for a pool on block devices or someone else's pool.
    pub files: Vec<HostFile>,
    /// Removed layers whose kernel work is not done yet (see the
    /// `removal` module).
    pub pending_removals: usize,
    /// The data space they still hold: the blocks no other thin device
    /// maps, which their reap frees.
    pub pending_bytes: Bytes,
}

/// What `system df` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiskUsage {
    pub images: UsageSummary,
    pub containers: UsageSummary,
    pub pool: PoolSpace,
    /// Every named image, by name.
    pub image_list: Vec<ImageUsage>,
    /// Every container and view, by name.
    pub container_list: Vec<ContainerUsage>,
}

impl Driver {
    /// Disk usage of images, containers and the pool, as `docker system df`
    /// shows it (see the module documentation for what is reclaimable).
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let op = self.begin()?;
        let sizes = op.sizes()?;
        let n = op.rec.tree.thin_ids().count();
        let status = op.pool().status(n)?;
        let files = match &op.rec.pool.source {
            PoolSource::LoopFiles { data, metadata } => {
                vec![host_file(data)?, host_file(metadata)?]
            }
            PoolSource::Devices { .. } | PoolSource::Existing { .. } => Vec::new(),
        };
        let pending = &op.rec.tree.removals;
        let pending_bytes = if pending.is_empty() {
            Bytes(0)
        } else {
            let maps = op.kernel_mappings()?;
            let (theirs, others): (Vec<_>, Vec<_>) = maps
                .iter()
                .partition(|(id, _)| pending.contains_key(&id.to_string()));
            let blocks = crate::thin::held_only_by(
                theirs.into_iter().map(|(_, m)| m),
                others.into_iter().map(|(_, m)| m),
            );
            op.rec.pool.block_size.blocks(blocks)
        };
        let pool = PoolSpace {
            data_used: status.data_used,
            data_total: status.data_total,
            metadata_used: status.metadata_used,
            metadata_total: status.metadata_total,
            files,
            pending_removals: pending.len(),
            pending_bytes,
        };
        Ok(usage_of(&op.rec.tree, &sizes, pool))
    }
}

fn host_file(path: &Path) -> Result<HostFile> {
    let m = std::fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    Ok(HostFile {
        path: path.to_path_buf(),
        size: Bytes(m.len()),
        allocated: Bytes(m.blocks() * 512),
    })
}

/// Whether a container or view is in use: mounted, or held by containerd.
fn in_use(l: &Layer) -> bool {
    l.mounts > 0 || l.pinned
}

/// The keys of a chain: `key` and every layer below it.
fn chain(tree: &Tree, key: &str) -> Result<BTreeSet<String>> {
    Ok(tree
        .ancestry(key)?
        .into_iter()
        .map(|l| l.key.clone())
        .collect())
}

/// The figures, from the tree and every layer's sizes.
fn usage_of(tree: &Tree, sizes: &BTreeMap<String, LayerSize>, pool: PoolSpace) -> DiskUsage {
    let size = |key: &str| sizes.get(key).map_or(Bytes(0), |s| s.size);
    let sum = |keys: &mut dyn Iterator<Item = &String>| Bytes(keys.map(|k| size(k).0).sum());
    let containers: Vec<&Layer> = tree
        .layers
        .values()
        .filter(|l| l.kind != Kind::Committed)
        .collect();

    // Image layers some container is built on.
    let mut needed = BTreeSet::new();
    for c in &containers {
        if let Some(p) = &c.parent {
            needed.extend(chain(tree, p).unwrap_or_default());
        }
    }
    let committed: Vec<&String> = tree
        .layers
        .values()
        .filter(|l| l.kind == Kind::Committed)
        .map(|l| &l.key)
        .collect();
    let chains: BTreeMap<&str, BTreeSet<String>> = tree
        .images
        .values()
        .map(|i| (i.name.as_str(), chain(tree, &i.top).unwrap_or_default()))
        .collect();
    let image_list: Vec<ImageUsage> = chains
        .iter()
        .map(|(name, keys)| {
            let shared: BTreeSet<&String> = chains
                .iter()
                .filter(|(other, _)| other != &name)
                .flat_map(|(_, k)| k.intersection(keys))
                .collect();
            let size = sum(&mut keys.iter());
            let shared_size = sum(&mut shared.into_iter());
            ImageUsage {
                name: name.to_string(),
                size,
                shared_size,
                unique_size: Bytes(size.0 - shared_size.0),
                containers: tree.image_users(name).len(),
            }
        })
        .collect();
    let images = UsageSummary {
        total: image_list.len(),
        active: image_list.iter().filter(|i| i.containers > 0).count(),
        size: sum(&mut committed.iter().copied()),
        reclaimable: sum(&mut committed.iter().copied().filter(|k| !needed.contains(*k))),
    };

    let container_list: Vec<ContainerUsage> = containers
        .iter()
        .map(|l| {
            let s = sizes.get(&l.key);
            ContainerUsage {
                name: l.key.clone(),
                image: l.image.clone(),
                kind: l.kind,
                size: s.map_or(Bytes(0), |s| s.size),
                virtual_size: s.map_or(Bytes(0), |s| s.virtual_size),
                device_size: l.device_size,
                active: in_use(l),
            }
        })
        .collect();
    let containers = UsageSummary {
        total: container_list.len(),
        active: container_list.iter().filter(|c| c.active).count(),
        size: Bytes(container_list.iter().map(|c| c.size.0).sum()),
        reclaimable: Bytes(
            container_list
                .iter()
                .filter(|c| !c.active)
                .map(|c| c.size.0)
                .sum(),
        ),
    };
    DiskUsage {
        images,
        containers,
        pool,
        image_list,
        container_list,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::driver::scenarios;
    use crate::kernel::{Kernel, Sim};
    use crate::testutil::TempDir;
    use crate::tree::ImageRef;

    fn image(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    /// Writes `blocks` pool blocks into the layer `key` through its
    /// device, from virtual block `from`.
    fn write(sim: &Sim, d: &Driver, key: &str, from: u64, blocks: u64) {
        d.mount(key).unwrap();
        let rec = d.records().unwrap();
        let name = crate::thin::dm_name(&rec.pool.prefix, rec.tree.layers[key].thin_id);
        sim.write(&name, from, blocks).unwrap();
        d.umount(key).unwrap();
    }

    #[test]
    fn images_containers_and_what_is_reclaimable_as_docker_counts_them() {
        let dir = TempDir::new("df");
        let sim = Sim::new();
        let opts = crate::driver::tests::opts();
        let kernel: Arc<dyn Kernel> = Arc::new(sim.clone());
        let (w, d) = scenarios::World::new(kernel, dir.path(), &opts);
        let block = 64 << 10;
        // base layer (10 blocks) under two images: app (+5) and tool (+3).
        d.create_container("b", None).unwrap();
        write(&sim, &d, "b", 100, 10);
        d.commit("b", &image("base")).unwrap();
        d.create_container("a", Some(&image("base"))).unwrap();
        write(&sim, &d, "a", 200, 5);
        d.commit("a", &image("app")).unwrap();
        d.create_container("t", Some(&image("base"))).unwrap();
        write(&sim, &d, "t", 300, 3);
        d.commit("t", &image("tool")).unwrap();
        // Two containers of app: one mounted (2 blocks), one not (4).
        d.create_container("web", Some(&image("app"))).unwrap();
        write(&sim, &d, "web", 400, 2);
        d.mount("web").unwrap();
        d.create_container("idle", Some(&image("app"))).unwrap();
        write(&sim, &d, "idle", 500, 4);

        let u = d.disk_usage().unwrap();
        let blocks = |n: u64| Bytes(n * block);
        assert_eq!(
            u.images,
            UsageSummary {
                total: 3,
                active: 1,
                size: blocks(18),
                // Only tool's own layer: base's is under app's.
                reclaimable: blocks(3),
            }
        );
        assert_eq!(
            u.containers,
            UsageSummary {
                total: 2,
                active: 1,
                size: blocks(6),
                reclaimable: blocks(4),
            }
        );
        let app = u
            .image_list
            .iter()
            .find(|i| i.name == "app:latest")
            .unwrap();
        assert_eq!(
            (app.size, app.shared_size, app.unique_size, app.containers),
            (blocks(15), blocks(10), blocks(5), 2)
        );
        let idle = u.container_list.iter().find(|c| c.name == "idle").unwrap();
        assert_eq!((idle.size, idle.active), (blocks(4), false));
        // Its own, app's, base's layers and the base's filesystem (2 blocks).
        assert_eq!(idle.virtual_size, blocks(21));
        assert_eq!(idle.device_size, Bytes(1 << 30));
        assert!(u.pool.data_used >= blocks(26), "{:?}", u.pool);
        assert_eq!(u.pool.data_total, Bytes(1 << 30));
        let files: Vec<&Path> = u.pool.files.iter().map(|f| f.path.as_path()).collect();
        assert_eq!(files, [w.root.join("data"), w.root.join("metadata")]);
        assert_eq!(u.pool.files[0].size, Bytes(1 << 30));
        assert!(
            u.pool.files[0].allocated < u.pool.files[0].size,
            "a sparse file: {:?}",
            u.pool.files[0]
        );
        d.umount("web").unwrap();
        w.check_invariants();
    }
}
