//! The file-level baseline, the way Docker's overlay2 does it: one directory
//! per image layer, used as overlayfs lower directories; an upper and a work
//! directory per container; `mount -t overlay` from this process. The
//! directories live on a filesystem of their own (ext4, or xfs with
//! reflink) on a loop device over a sparse file, so its writes can be
//! counted.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use nix::mount::{MntFlags, MsFlags};
use thinlayer::kernel::{Kernel, Linux};

use super::backend::{Cow, Fill};
use super::measure::BlockDev;

/// The kernel reads at most one page of mount options.
const MOUNT_DATA_MAX: usize = 4096;

/// The filesystem under the overlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Under {
    Ext4,
    XfsReflink,
}

impl Under {
    pub fn label(self) -> &'static str {
        match self {
            Under::Ext4 => "overlay-ext4",
            Under::XfsReflink => "overlay-xfs-reflink",
        }
    }

    /// How it is made and mounted.
    pub fn describe(self) -> &'static str {
        match self {
            Under::Ext4 => {
                "ext4, `mkfs.ext4 -E nodiscard,lazy_itable_init=1,lazy_journal_init=1,assume_storage_prezeroed=1`, mounted `noinit_itable`"
            }
            Under::XfsReflink => "xfs, `mkfs.xfs -m reflink=1 -K`",
        }
    }
}

struct Container {
    layers: Vec<u32>,
    mounted: bool,
}

pub struct Overlay {
    under: Under,
    file: PathBuf,
    fs_mount: PathBuf,
    dev: BlockDev,
    /// A short path to the layer directories (a symlink), so that many
    /// lower directories fit in the one page of mount options.
    short: PathBuf,
    images: BTreeMap<String, Vec<u32>>,
    containers: BTreeMap<String, Container>,
    next: u32,
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Overlay {
    /// Makes the filesystem in a sparse file of `size` bytes under `dir` and
    /// mounts it there.
    pub fn new(dir: &Path, under: Under, size: u64) -> Result<Overlay> {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = dir.join(under.label());
        fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
        let file = base.join("disk");
        fs::File::create(&file)
            .and_then(|f| f.set_len(size))
            .with_context(|| format!("create {}", file.display()))?;
        let kernel = Linux::new();
        let attached = kernel.loop_attach(&file).map_err(|e| anyhow!("{e}"))?;
        let devpath = attached.info.device.clone();
        match under {
            Under::Ext4 => run(Command::new("mkfs.ext4")
                .args([
                    "-q",
                    "-F",
                    "-E",
                    "nodiscard,lazy_itable_init=1,lazy_journal_init=1,assume_storage_prezeroed=1",
                ])
                .arg(&devpath))?,
            Under::XfsReflink => run(Command::new("mkfs.xfs")
                .args(["-q", "-f", "-K", "-m", "reflink=1"])
                .arg(&devpath))?,
        }
        let fs_mount = base.join("fs");
        fs::create_dir_all(&fs_mount)?;
        let (fstype, data) = match under {
            Under::Ext4 => ("ext4", Some("noinit_itable")),
            Under::XfsReflink => ("xfs", None),
        };
        nix::mount::mount(
            Some(&devpath),
            &fs_mount,
            Some(fstype),
            MsFlags::empty(),
            data,
        )
        .with_context(|| format!("mount {} on {}", devpath.display(), fs_mount.display()))?;
        // The mount holds the loop now; autoclear detaches it at unmount.
        drop(attached);
        for d in ["l", "c"] {
            fs::create_dir_all(fs_mount.join(d))?;
        }
        let short = PathBuf::from(format!("/tmp/o{}", N.fetch_add(1, Ordering::Relaxed)));
        let _ = fs::remove_file(&short);
        std::os::unix::fs::symlink(fs_mount.join("l"), &short)
            .with_context(|| format!("symlink {}", short.display()))?;
        Ok(Overlay {
            under,
            file,
            dev: BlockDev::of(&devpath)?,
            fs_mount,
            short,
            images: BTreeMap::new(),
            containers: BTreeMap::new(),
            next: 0,
        })
    }

    fn layer_dir(&self, id: u32) -> PathBuf {
        self.fs_mount.join("l").join(id.to_string())
    }

    fn container_dir(&self, name: &str) -> PathBuf {
        self.fs_mount.join("c").join(name)
    }

    fn container(&self, name: &str) -> Result<&Container> {
        self.containers
            .get(name)
            .with_context(|| format!("no container {name}"))
    }

    /// The overlay mount options of a container: lower directories top first.
    fn mount_data(&self, name: &str, layers: &[u32]) -> String {
        let lower: Vec<String> = layers
            .iter()
            .rev()
            .map(|id| format!("{}/{id}", self.short.display()))
            .collect();
        let c = self.container_dir(name);
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            c.join("u").display(),
            c.join("w").display()
        )
    }
}

impl Cow for Overlay {
    fn name(&self) -> &str {
        self.under.label()
    }

    fn device(&self) -> &BlockDev {
        &self.dev
    }

    fn build_image(&mut self, image: &str, layers: usize, fill: Fill<'_>) -> Result<()> {
        let mut ids = Vec::with_capacity(layers);
        for i in 0..layers {
            let id = self.next;
            self.next += 1;
            let d = self.layer_dir(id);
            fs::create_dir(&d).with_context(|| format!("create {}", d.display()))?;
            ids.push(id);
            fill(i, &d)?;
        }
        self.images.insert(image.to_string(), ids);
        Ok(())
    }

    fn create(&mut self, container: &str, image: &str) -> Result<()> {
        let layers = self
            .images
            .get(image)
            .with_context(|| format!("no image {image}"))?
            .clone();
        let c = self.container_dir(container);
        fs::create_dir(&c).with_context(|| format!("create {}", c.display()))?;
        for d in ["u", "w", "m"] {
            fs::create_dir(c.join(d))?;
        }
        self.containers.insert(
            container.to_string(),
            Container {
                layers,
                mounted: false,
            },
        );
        Ok(())
    }

    fn mount(&mut self, container: &str) -> Result<PathBuf> {
        let layers = self.container(container)?.layers.clone();
        let data = self.mount_data(container, &layers);
        if data.len() >= MOUNT_DATA_MAX {
            bail!(
                "overlay mount options for {} lower directories are {} bytes; the kernel reads one page ({MOUNT_DATA_MAX})",
                layers.len(),
                data.len()
            );
        }
        let target = self.container_dir(container).join("m");
        nix::mount::mount(
            Some("overlay"),
            &target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| {
            anyhow!(
                "overlay mount of {} lower directories: {}",
                layers.len(),
                e.desc()
            )
        })?;
        self.containers.get_mut(container).expect("checked").mounted = true;
        Ok(target)
    }

    fn umount(&mut self, container: &str) -> Result<()> {
        let target = self.container_dir(container).join("m");
        umount_settled(&target).with_context(|| format!("unmount {}", target.display()))?;
        if let Some(c) = self.containers.get_mut(container) {
            c.mounted = false;
        }
        Ok(())
    }

    fn commit(&mut self, container: &str, image: &str) -> Result<()> {
        let c = self.container(container)?;
        if c.mounted {
            bail!("{container} is mounted");
        }
        let mut layers = c.layers.clone();
        let id = self.next;
        self.next += 1;
        fs::rename(self.container_dir(container).join("u"), self.layer_dir(id))?;
        layers.push(id);
        self.images.insert(image.to_string(), layers);
        self.remove(container)
    }

    fn remove(&mut self, container: &str) -> Result<()> {
        if self.container(container)?.mounted {
            bail!("{container} is mounted");
        }
        let c = self.container_dir(container);
        fs::remove_dir_all(&c).with_context(|| format!("remove {}", c.display()))?;
        self.containers.remove(container);
        Ok(())
    }

    fn remove_image(&mut self, image: &str) -> Result<()> {
        let ids = self
            .images
            .remove(image)
            .with_context(|| format!("no image {image}"))?;
        for id in ids {
            if self.images.values().all(|l| !l.contains(&id)) {
                fs::remove_dir_all(self.layer_dir(id))?;
            }
        }
        Ok(())
    }

    fn used(&mut self) -> Result<u64> {
        let st = nix::sys::statvfs::statvfs(&self.fs_mount)
            .with_context(|| format!("statvfs {}", self.fs_mount.display()))?;
        Ok((st.blocks() - st.blocks_free()) as u64 * st.fragment_size() as u64)
    }

    /// Mounts under the filesystem other than its own, and container
    /// directories left.
    fn leaks(&mut self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for m in Linux::new().mounts().map_err(|e| anyhow!("{e}"))? {
            if m.target.starts_with(&self.fs_mount) && m.target != self.fs_mount {
                out.push(format!("mount on {}", m.target.display()));
            }
        }
        let c = self.fs_mount.join("c");
        for e in fs::read_dir(&c).with_context(|| format!("read {}", c.display()))? {
            out.push(format!("directory {}", e?.path().display()));
        }
        Ok(out)
    }

    fn destroy(self: Box<Self>) -> Result<()> {
        for (name, c) in &self.containers {
            if c.mounted {
                let _ = nix::mount::umount2(&self.container_dir(name).join("m"), MntFlags::empty());
            }
        }
        let _ = fs::remove_file(&self.short);
        umount_settled(&self.fs_mount)
            .with_context(|| format!("unmount {}", self.fs_mount.display()))?;
        fs::remove_file(&self.file)?;
        if let Some(base) = self.file.parent() {
            let _ = fs::remove_dir_all(base);
        }
        Ok(())
    }
}

/// Unmounts `target`, retrying EBUSY for up to 10 s, as the driver does
/// for its own mounts: a process forked elsewhere in the same program (a
/// parallel test starting a command) holds copies of every open file until
/// it execs, so a mount whose files were just closed can be busy for a
/// moment, longer on a loaded machine. Any other error, or EBUSY after
/// that, is returned.
fn umount_settled(target: &Path) -> nix::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Err(nix::errno::Errno::EBUSY) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}
