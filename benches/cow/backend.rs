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
    /// Turns an unmounted container into image `image`. No workload of
    /// this part commits yet; the device test checks it on both drivers.
    #[allow(dead_code)]
    fn commit(&mut self, container: &str, image: &str) -> Result<()>;
    fn remove(&mut self, container: &str) -> Result<()>;
    fn remove_image(&mut self, image: &str) -> Result<()>;
    /// Takes down every device, mount and file.
    fn destroy(self: Box<Self>) -> Result<()>;
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

    fn destroy(mut self: Box<Self>) -> Result<()> {
        let driver = self.driver.take().expect("destroyed once");
        let root = driver.root().to_path_buf();
        driver.destroy().map_err(|e| anyhow!("pool destroy: {e}"))?;
        let _ = fs::remove_dir_all(&root);
        Ok(())
    }
}
