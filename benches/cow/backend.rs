//! The two copy-on-write drivers compared, behind one small trait, and the
//! thinlayer side of it: the library's [`Driver`] on a pool of sparse files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use thinlayer::Driver;
use thinlayer::driver::ImportLayer;
use thinlayer::kernel::{Kernel, Linux};
use thinlayer::pool::{PoolOptions, PoolSource, SourceOptions};
use thinlayer::tree::ImageRef;
use thinlayer::units::Bytes;

use super::measure::BlockDev;

/// Fills the directory of layer `index` (bottom first) of an image.
pub type Fill<'a> = &'a mut dyn FnMut(usize, &Path) -> Result<()>;

/// What a benchmark does with a copy-on-write driver.
pub trait Cow {
    /// `thin`, `overlay-ext4`, ...
    fn name(&self) -> &str;
    /// The block device that takes this driver's writes.
    fn device(&self) -> &BlockDev;
    /// Builds image `image` of `layers` layers, each filled by `fill`.
    fn build_image(&mut self, image: &str, layers: usize, fill: Fill<'_>) -> Result<()>;
    /// A new container of `image`.
    fn create(&mut self, container: &str, image: &str) -> Result<()>;
    /// Mounts a container; returns where.
    fn mount(&mut self, container: &str) -> Result<PathBuf>;
    fn umount(&mut self, container: &str) -> Result<()>;
    /// Turns an unmounted container into image `image`.
    fn commit(&mut self, container: &str, image: &str) -> Result<()>;
    fn remove(&mut self, container: &str) -> Result<()>;
    fn remove_image(&mut self, image: &str) -> Result<()>;
    /// Bytes of the backing store in use: for thin the pool's data in use
    /// as the kernel reports it, for overlay the filesystem's used blocks
    /// (statvfs).
    fn used(&mut self) -> Result<u64>;
    /// What containers left behind that nothing owns any more: devices,
    /// mounts, directories; one line each.
    fn leaks(&mut self) -> Result<Vec<String>>;
    /// Takes down every device, mount and file.
    fn destroy(self: Box<Self>) -> Result<()>;
    /// thinlayer's driver, for what only thin has (sizes from the pool's
    /// metadata); `None` for the other baselines.
    fn thin_driver(&self) -> Option<&Driver> {
        None
    }
}

/// thinlayer: a thin pool on sparse files under `dir`.
pub struct Thin {
    driver: Option<Driver>,
    data: BlockDev,
    pub block_size: String,
}

fn image_ref(image: &str) -> Result<ImageRef> {
    ImageRef::parse(image).map_err(|e| anyhow!("{e}"))
}

impl Thin {
    pub fn new(dir: &Path) -> Result<Thin> {
        let root = dir.join("thin");
        let kernel: Arc<dyn Kernel> = Arc::new(Linux::new());
        let opts = PoolOptions {
            source: SourceOptions::LoopFiles {
                data_size: Bytes(64 << 30),
                metadata_size: Bytes(1 << 30),
            },
            base_size: Bytes(8 << 30),
            ..PoolOptions::default()
        };
        let block_size = format!("{} KiB", opts.block_size.bytes().0 / 1024);
        let driver =
            Driver::init(&root, kernel.clone(), &opts).map_err(|e| anyhow!("pool init: {e}"))?;
        let rec = driver.records().map_err(|e| anyhow!("{e}"))?;
        let PoolSource::LoopFiles { data, .. } = &rec.pool.source else {
            return Err(anyhow!("the pool is not on loop files"));
        };
        let dev = kernel
            .loop_list()
            .map_err(|e| anyhow!("{e}"))?
            .into_iter()
            .find(|l| &l.backing_file == data)
            .with_context(|| format!("no loop device over {}", data.display()))?;
        Ok(Thin {
            driver: Some(driver),
            data: BlockDev::of(&dev.device)?,
            block_size,
        })
    }

    fn d(&self) -> &Driver {
        self.driver.as_ref().expect("driver lives until destroy")
    }
}

impl Cow for Thin {
    fn name(&self) -> &str {
        "thin"
    }

    fn device(&self) -> &BlockDev {
        &self.data
    }

    fn build_image(&mut self, image: &str, layers: usize, fill: Fill<'_>) -> Result<()> {
        let r = image_ref(image)?;
        let keys: Vec<ImportLayer> = (0..layers)
            .map(|i| ImportLayer {
                key: format!("{image}/{i}"),
                labels: BTreeMap::new(),
            })
            .collect();
        let mut failure = None;
        let made = self.d().import_image(&r, &keys, None, |i, dir| {
            fill(i, dir).map_err(|e| {
                let msg = format!("{e:#}");
                failure = Some(e);
                thinlayer::Error::invalid("layer", &i.to_string(), &msg)
            })
        });
        match (made, failure) {
            (Ok(_), _) => Ok(()),
            (Err(_), Some(e)) => Err(e),
            (Err(e), None) => Err(anyhow!("import {image}: {e}")),
        }
    }

    fn create(&mut self, container: &str, image: &str) -> Result<()> {
        let r = image_ref(image)?;
        self.d()
            .create_container(container, Some(&r))
            .map(|_| ())
            .map_err(|e| anyhow!("create {container}: {e}"))
    }

    fn mount(&mut self, container: &str) -> Result<PathBuf> {
        self.d()
            .mount(container)
            .map_err(|e| anyhow!("mount {container}: {e}"))
    }

    fn umount(&mut self, container: &str) -> Result<()> {
        self.d()
            .umount(container)
            .map_err(|e| anyhow!("umount {container}: {e}"))
    }

    fn commit(&mut self, container: &str, image: &str) -> Result<()> {
        let r = image_ref(image)?;
        self.d()
            .commit(container, &r)
            .map(|_| ())
            .map_err(|e| anyhow!("commit {container}: {e}"))
    }

    fn remove(&mut self, container: &str) -> Result<()> {
        self.d()
            .remove(container, false)
            .map_err(|e| anyhow!("remove {container}: {e}"))
    }

    fn remove_image(&mut self, image: &str) -> Result<()> {
        let r = image_ref(image)?;
        self.d()
            .remove_image(&r)
            .map_err(|e| anyhow!("remove image {image}: {e}"))
    }

    fn used(&mut self) -> Result<u64> {
        let st = self.d().status().map_err(|e| anyhow!("pool status: {e}"))?;
        Ok(st.data_used.0)
    }

    /// Device-mapper devices of the pool's prefix other than the pool and
    /// the base device, loop devices over files of the pool's root other
    /// than its data and metadata files, mounts under the root.
    fn leaks(&mut self) -> Result<Vec<String>> {
        let d = self.d();
        let rec = d.records().map_err(|e| anyhow!("{e}"))?;
        let root = d.root().to_path_buf();
        let prefix = &rec.pool.prefix;
        let pool = format!("{prefix}-pool");
        let base = rec.tree.base.map(|id| thinlayer::thin::dm_name(prefix, id));
        let kernel = Linux::new();
        let mut out = Vec::new();
        for name in kernel.dm_list().map_err(|e| anyhow!("{e}"))? {
            if name.starts_with(prefix.as_str())
                && name != pool
                && base.as_deref() != Some(name.as_str())
            {
                out.push(format!("device-mapper device {name}"));
            }
        }
        let owned: Vec<&PathBuf> = match &rec.pool.source {
            PoolSource::LoopFiles { data, metadata } => vec![data, metadata],
            _ => Vec::new(),
        };
        for l in kernel.loop_list().map_err(|e| anyhow!("{e}"))? {
            if l.backing_file.starts_with(&root) && !owned.contains(&&l.backing_file) {
                out.push(format!(
                    "loop device {} over {}",
                    l.device.display(),
                    l.backing_file.display()
                ));
            }
        }
        for m in kernel.mounts().map_err(|e| anyhow!("{e}"))? {
            if m.target.starts_with(&root) {
                out.push(format!("mount on {}", m.target.display()));
            }
        }
        Ok(out)
    }

    fn thin_driver(&self) -> Option<&Driver> {
        self.driver.as_ref()
    }

    fn destroy(mut self: Box<Self>) -> Result<()> {
        let driver = self.driver.take().expect("destroyed once");
        let root = driver.root().to_path_buf();
        driver.destroy().map_err(|e| anyhow!("pool destroy: {e}"))?;
        let _ = fs::remove_dir_all(&root);
        Ok(())
    }
}
