//! A kernel simulated in memory, faithful where thinlayer depends on the
//! kernel's behaviour: device-mapper devices with inactive and live tables,
//! suspend and open counts; a thin pool whose metadata (thin ids, their block
//! mappings, the transaction id) lives with its metadata file and so survives
//! a simulated reboot; loop devices with autoclear; a mount table. Tests of
//! the snapshot tree, the records and crash recovery run on it on any host.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;

use super::{
    DevNum, DmInfo, Kernel, LoopAttachment, LoopInfo, MountEntry, MountRequest, Suspend, Target,
};
use crate::error::{Error, Result};
use crate::units::Bytes;

const DM_MAJOR: u32 = 253;
const LOOP_MAJOR: u32 = 7;

/// A shareable simulated kernel. Clones see the same state, as two processes
/// see one kernel.
#[derive(Clone, Default)]
pub struct Sim {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    devices: BTreeMap<String, Device>,
    next_minor: u32,
    loops: BTreeMap<u32, PathBuf>,
    mounts: Vec<MountEntry>,
    /// Pool metadata, keyed by the metadata backing file: it persists as the
    /// on-disk metadata does.
    metadata: HashMap<PathBuf, PoolMeta>,
    /// Operations that fail once, by `op:detail` prefix.
    failures: Vec<String>,
    /// Tools that were run, for assertions.
    tool_runs: Vec<String>,
    /// Blocks a filesystem freed but the device still maps, by device
    /// name: what a trim of its mount gives back (see [`Sim::free`]).
    freed: BTreeMap<String, Vec<u64>>,
    /// New data the filesystem on a device holds in the page cache
    /// without blocks yet (ext4's delayed allocation), by device name:
    /// see [`Sim::cache`].
    cached: BTreeMap<String, Bytes>,
    /// What `fs_space` answers instead of the host's own figures.
    fs_space: Option<super::FsSpace>,
    /// Calls of each [`Kernel`] method, for tests that bound them.
    calls: BTreeMap<&'static str, u64>,
}

struct Device {
    minor: u32,
    live: Option<Vec<Target>>,
    inactive: Option<Vec<Target>>,
    suspended: bool,
    deferred: bool,
}

#[derive(Clone, Default)]
struct PoolMeta {
    transaction: u64,
    /// thin id → (virtual block → data block)
    thins: BTreeMap<u32, BTreeMap<u64, u64>>,
    data_blocks: u64,
    /// Sectors in a data block.
    block_sectors: u64,
    /// data block → reference count
    refs: BTreeMap<u64, u32>,
    held_snapshot: bool,
    needs_check: bool,
}

impl PoolMeta {
    fn used(&self) -> u64 {
        self.refs.len() as u64
    }

    fn alloc(&mut self) -> Option<u64> {
        (0..self.data_blocks)
            .find(|b| !self.refs.contains_key(b))
            .inspect(|b| {
                self.refs.insert(*b, 1);
            })
    }

    /// Unmaps virtual blocks of thin `id`; returns how many were mapped.
    fn unmap(&mut self, id: u32, blocks: impl IntoIterator<Item = u64>) -> u64 {
        let mut n = 0;
        for v in blocks {
            let old = self.thins.get_mut(&id).and_then(|m| m.remove(&v));
            if let Some(old) = old {
                self.unref(old);
                n += 1;
            }
        }
        n
    }

    fn unref(&mut self, block: u64) {
        if let Some(r) = self.refs.get_mut(&block) {
            *r -= 1;
            if *r == 0 {
                self.refs.remove(&block);
            }
        }
    }
}

/// N of a simulated loop device's path, `/dev/loopN`.
fn loop_minor(device: &Path) -> Option<u32> {
    device
        .to_string_lossy()
        .strip_prefix("/dev/loop")?
        .parse()
        .ok()
}

fn kerr(op: &'static str, object: &str, errno: Errno) -> Error {
    Error::kernel(op, object, Some(errno), errno.desc())
}

impl Sim {
    pub fn new() -> Self {
        Sim::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, call: &'static str) {
        *self.lock().calls.entry(call).or_default() += 1;
    }

    /// How many times each [`Kernel`] method was called, since the last
    /// time this was asked.
    pub fn take_calls(&self) -> BTreeMap<&'static str, u64> {
        std::mem::take(&mut self.lock().calls)
    }

    /// Makes the next operation whose `op:detail` starts with `prefix` fail
    /// with EIO, e.g. `message:create_snap` or `resume:`.
    pub fn fail_once(&self, prefix: &str) {
        self.lock().failures.push(prefix.to_string());
    }

    /// Forgets every device, loop and mount, as a reboot does; pool metadata
    /// stays with its file.
    pub fn reboot(&self) {
        let mut s = self.lock();
        s.devices.clear();
        s.loops.clear();
        s.mounts.clear();
        s.cached.clear();
        for m in s.metadata.values_mut() {
            m.held_snapshot = false;
        }
    }

    /// Marks the pool whose metadata lives in `file` as needing a check.
    pub fn set_needs_check(&self, file: &Path, value: bool) {
        if let Some(m) = self.lock().metadata.get_mut(file) {
            m.needs_check = value;
        }
    }

    /// Simulates a write of `blocks` pool blocks, from virtual block `from`,
    /// through the live thin device `name`.
    pub fn write(&self, name: &str, from: u64, blocks: u64) -> Result<()> {
        self.lock().write(name, from, blocks)
    }

    /// Simulates `bytes` of new data written to the filesystem mounted
    /// from the live thin device `name`, left in the page cache: an ext4
    /// there counts them as delayed allocation until they are written
    /// back, by [`Sim::write_back`], a trim (which syncs first), a
    /// read-only remount or the last unmount.
    pub fn cache(&self, name: &str, bytes: Bytes) {
        let mut s = self.lock();
        let cached = s.cached.entry(name.to_string()).or_default();
        cached.0 += bytes.0;
    }

    /// Writes back what [`Sim::cache`] left for the device `name`: as many
    /// whole pool blocks, mapped after the last block the device maps.
    pub fn write_back(&self, name: &str) -> Result<()> {
        self.lock().write_back(name)
    }

    /// Simulates a filesystem on the live thin device `name` freeing
    /// `blocks` pool blocks from virtual block `from`: they stay mapped
    /// until a trim of its mount discards them.
    pub fn free(&self, name: &str, from: u64, blocks: u64) {
        self.lock()
            .freed
            .entry(name.to_string())
            .or_default()
            .extend(from..from + blocks);
    }

    /// The thin ids in the pool whose metadata is `file`.
    pub fn thin_ids(&self, file: &Path) -> Vec<u32> {
        self.lock()
            .metadata
            .get(file)
            .map(|m| m.thins.keys().copied().collect())
            .unwrap_or_default()
    }

    pub fn tool_runs(&self) -> Vec<String> {
        self.lock().tool_runs.clone()
    }

    /// Makes `fs_space` answer `space` for every path (`None`: the host's
    /// own figures).
    pub fn set_fs_space(&self, space: Option<super::FsSpace>) {
        self.lock().fs_space = space;
    }
}

impl State {
    fn write(&mut self, name: &str, from: u64, blocks: u64) -> Result<()> {
        let (meta_file, id) = self.thin_target(name)?;
        let meta = self.metadata.get_mut(&meta_file).expect("pool metadata");
        for v in from..from + blocks {
            let new = meta
                .alloc()
                .ok_or_else(|| kerr("write", name, Errno::ENOSPC))?;
            let map = meta.thins.get_mut(&id).expect("thin exists");
            if let Some(old) = map.insert(v, new) {
                meta.unref(old);
            }
        }
        Ok(())
    }

    fn write_back(&mut self, name: &str) -> Result<()> {
        let Some(bytes) = self.cached.remove(name) else {
            return Ok(());
        };
        let (meta_file, id) = self.thin_target(name)?;
        let meta = &self.metadata[&meta_file];
        let block = meta.block_sectors * 512;
        let from = meta.thins[&id].keys().last().map_or(0, |v| v + 1);
        self.write(name, from, bytes.0.div_ceil(block))
    }

    /// Writes back what the filesystem mounted from the device of minor
    /// `minor` holds in the page cache.
    fn write_back_minor(&mut self, minor: u32) -> Result<()> {
        match self.name_of_minor(minor) {
            Some(name) => self.write_back(&name),
            None => Ok(()),
        }
    }

    fn fail(&mut self, op: &str, detail: &str) -> Result<()> {
        let key = format!("{op}:{detail}");
        if let Some(i) = self
            .failures
            .iter()
            .position(|p| key.starts_with(p.as_str()))
        {
            self.failures.remove(i);
            return Err(kerr("simulated failure of", &key, Errno::EIO));
        }
        Ok(())
    }

    /// The name of the device-mapper device of this minor number.
    fn name_of_minor(&self, minor: u32) -> Option<String> {
        self.devices
            .iter()
            .find(|(_, d)| d.minor == minor)
            .map(|(n, _)| n.clone())
    }

    fn dev(&self, name: &str) -> Result<&Device> {
        self.devices
            .get(name)
            .ok_or_else(|| kerr("find device", name, Errno::ENXIO))
    }

    fn loop_file(&self, devnum: &str) -> Option<PathBuf> {
        let (ma, mi) = devnum.split_once(':')?;
        if ma.parse::<u32>().ok()? != LOOP_MAJOR {
            return None;
        }
        self.loops.get(&mi.parse().ok()?).cloned()
    }

    fn pool_by_devnum(&self, devnum: &str) -> Option<(String, PathBuf)> {
        let minor: u32 = devnum.split_once(':')?.1.parse().ok()?;
        let (name, dev) = self.devices.iter().find(|(_, d)| d.minor == minor)?;
        let t = dev.live.as_ref()?.first()?;
        if t.kind != "thin-pool" {
            return None;
        }
        Some((name.clone(), self.loop_file(t.params.split(' ').next()?)?))
    }

    fn pool_meta_file(&self, name: &str) -> Result<PathBuf> {
        let t = self
            .dev(name)?
            .live
            .as_ref()
            .and_then(|t| t.first().cloned())
            .ok_or_else(|| kerr("message", name, Errno::EINVAL))?;
        if t.kind != "thin-pool" {
            return Err(kerr("message", name, Errno::EINVAL));
        }
        self.loop_file(t.params.split(' ').next().unwrap_or(""))
            .ok_or_else(|| kerr("message", name, Errno::ENODEV))
    }

    /// (metadata file, thin id) of a live thin device.
    fn thin_target(&self, name: &str) -> Result<(PathBuf, u32)> {
        let t = self
            .dev(name)?
            .live
            .as_ref()
            .and_then(|t| t.first().cloned())
            .ok_or_else(|| kerr("write", name, Errno::ENXIO))?;
        let mut p = t.params.split(' ');
        let (pool, id) = (p.next().unwrap_or(""), p.next().unwrap_or(""));
        let (_, file) = self
            .pool_by_devnum(pool)
            .ok_or_else(|| kerr("write", name, Errno::ENODEV))?;
        Ok((
            file,
            id.parse().map_err(|_| kerr("write", name, Errno::EINVAL))?,
        ))
    }

    /// Validates a table as the kernel's target constructors would.
    fn construct(&mut self, name: &str, table: &[Target]) -> Result<()> {
        for t in table {
            let p: Vec<&str> = t.params.split(' ').collect();
            match t.kind.as_str() {
                "thin-pool" => {
                    let (meta, data) = (
                        p.first().copied().unwrap_or(""),
                        p.get(1).copied().unwrap_or(""),
                    );
                    let meta_file = self
                        .loop_file(meta)
                        .ok_or_else(|| kerr("load table of", name, Errno::ENODEV))?;
                    self.loop_file(data)
                        .ok_or_else(|| kerr("load table of", name, Errno::ENODEV))?;
                    let block: u64 = p.get(2).and_then(|b| b.parse().ok()).unwrap_or(128);
                    let blocks = t.length.0 / block;
                    let m = self.metadata.entry(meta_file).or_default();
                    m.data_blocks = blocks;
                    m.block_sectors = block;
                }
                "thin" => {
                    let (pool, id) = (
                        p.first().copied().unwrap_or(""),
                        p.get(1).copied().unwrap_or(""),
                    );
                    let (_, file) = self
                        .pool_by_devnum(pool)
                        .ok_or_else(|| kerr("load table of", name, Errno::ENODEV))?;
                    let id: u32 = id
                        .parse()
                        .map_err(|_| kerr("load table of", name, Errno::EINVAL))?;
                    if !self.metadata[&file].thins.contains_key(&id) {
                        return Err(kerr("load table of", name, Errno::ENODATA));
                    }
                }
                "linear" | "error" | "zero" | "flakey" => {}
                other => {
                    return Err(kerr(
                        "load table of",
                        &format!("{name} ({other})"),
                        Errno::EINVAL,
                    ));
                }
            }
        }
        Ok(())
    }

    /// The name and minor of the device whose node is `node` (`/dev/dm-N`).
    fn dm_node(&self, node: &Path) -> Option<(String, u32)> {
        let minor: u32 = node
            .to_string_lossy()
            .strip_prefix("/dev/dm-")?
            .parse()
            .ok()?;
        self.name_of_minor(minor).map(|n| (n, minor))
    }

    fn open_count(&self, name: &str, minor: u32) -> i32 {
        let me = format!("{DM_MAJOR}:{minor}");
        let held = self
            .devices
            .iter()
            .filter(|(n, d)| {
                n.as_str() != name
                    && d.live
                        .as_ref()
                        .is_some_and(|t| t.iter().any(|t| t.params.split(' ').any(|f| f == me)))
            })
            .count();
        let mounted = self
            .mounts
            .iter()
            .filter(|m| {
                m.devnum
                    == Some(DevNum {
                        major: DM_MAJOR,
                        minor,
                    })
            })
            .count();
        (held + mounted) as i32
    }

    fn loop_held(&self, minor: u32) -> bool {
        let me = format!("{LOOP_MAJOR}:{minor}");
        self.devices.values().any(|d| {
            d.live
                .iter()
                .chain(d.inactive.iter())
                .flatten()
                .any(|t| t.params.split(' ').any(|f| f == me))
        })
    }

    /// Autoclear: loops no device holds any more go away.
    fn autoclear(&mut self) {
        let unheld: Vec<u32> = self
            .loops
            .keys()
            .copied()
            .filter(|m| !self.loop_held(*m))
            .collect();
        for m in unheld {
            self.loops.remove(&m);
        }
    }
}

impl Kernel for Sim {
    fn check(&self) -> Result<()> {
        self.count("check");
        Ok(())
    }

    fn dm_create(&self, name: &str, table: &[Target], _read_only: bool) -> Result<DmInfo> {
        self.count("dm_create");
        let mut s = self.lock();
        s.fail("create", name)?;
        if s.devices.contains_key(name) {
            return Err(kerr("create device", name, Errno::EBUSY));
        }
        s.construct(name, table)?;
        let minor = s.next_minor;
        s.next_minor += 1;
        s.devices.insert(
            name.to_string(),
            Device {
                minor,
                live: Some(table.to_vec()),
                inactive: None,
                suspended: false,
                deferred: false,
            },
        );
        Ok(DmInfo {
            devnum: DevNum {
                major: DM_MAJOR,
                minor,
            },
            suspended: false,
            open_count: 0,
            active_table: true,
            deferred_remove: false,
        })
    }

    fn dm_load(&self, name: &str, table: &[Target]) -> Result<()> {
        self.count("dm_load");
        let mut s = self.lock();
        s.fail("load", name)?;
        s.dev(name)?;
        s.construct(name, table)?;
        s.devices.get_mut(name).expect("checked").inactive = Some(table.to_vec());
        Ok(())
    }

    fn dm_suspend(&self, name: &str, _how: Suspend) -> Result<()> {
        self.count("dm_suspend");
        let mut s = self.lock();
        s.fail("suspend", name)?;
        s.dev(name)?;
        s.devices.get_mut(name).expect("checked").suspended = true;
        Ok(())
    }

    fn dm_resume(&self, name: &str) -> Result<()> {
        self.count("dm_resume");
        let mut s = self.lock();
        s.fail("resume", name)?;
        let d = s
            .devices
            .get_mut(name)
            .ok_or_else(|| kerr("resume", name, Errno::ENXIO))?;
        if let Some(t) = d.inactive.take() {
            d.live = Some(t);
        }
        d.suspended = false;
        Ok(())
    }

    fn dm_remove(&self, name: &str, deferred: bool) -> Result<()> {
        self.count("dm_remove");
        let mut s = self.lock();
        s.fail("remove", name)?;
        let minor = s.dev(name)?.minor;
        if s.open_count(name, minor) > 0 {
            if deferred {
                s.devices.get_mut(name).expect("checked").deferred = true;
                return Ok(());
            }
            return Err(kerr("remove device", name, Errno::EBUSY));
        }
        s.devices.remove(name);
        s.cached.remove(name);
        s.autoclear();
        Ok(())
    }

    fn dm_message(&self, name: &str, message: &str) -> Result<Option<String>> {
        self.count("dm_message");
        let mut s = self.lock();
        s.fail("message", message)?;
        let file = s.pool_meta_file(name)?;
        // Thin ids that a device's table (live or loaded) opens: the
        // kernel refuses to delete those.
        let pool_dev = format!("{DM_MAJOR}:{}", s.dev(name)?.minor);
        let open_ids: Vec<String> = s
            .devices
            .values()
            .flat_map(|d| d.live.iter().chain(d.inactive.iter()))
            .filter_map(|t| t.first())
            .filter(|t| t.kind == "thin")
            .filter_map(|t| {
                let mut p = t.params.split(' ');
                (p.next() == Some(pool_dev.as_str())).then(|| p.next().unwrap_or("").to_string())
            })
            .collect();
        let m = s.metadata.get_mut(&file).expect("pool metadata");
        let words: Vec<&str> = message.split(' ').collect();
        let num = |i: usize| -> Result<u64> {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| kerr("message", message, Errno::EINVAL))
        };
        match words[0] {
            "create_thin" => {
                let id = num(1)? as u32;
                if m.thins.contains_key(&id) {
                    return Err(kerr("message", message, Errno::EEXIST));
                }
                m.thins.insert(id, BTreeMap::new());
            }
            "create_snap" => {
                let (id, origin) = (num(1)? as u32, num(2)? as u32);
                if m.thins.contains_key(&id) {
                    return Err(kerr("message", message, Errno::EEXIST));
                }
                let map = m
                    .thins
                    .get(&origin)
                    .cloned()
                    .ok_or_else(|| kerr("message", message, Errno::ENODATA))?;
                for b in map.values() {
                    *m.refs.entry(*b).or_default() += 1;
                }
                m.thins.insert(id, map);
            }
            "delete" => {
                let id = num(1)? as u32;
                if open_ids.iter().any(|o| o == words[1]) {
                    return Err(kerr("message", message, Errno::EBUSY));
                }
                let map = m
                    .thins
                    .remove(&id)
                    .ok_or_else(|| kerr("message", message, Errno::ENODATA))?;
                for b in map.values() {
                    m.unref(*b);
                }
            }
            "set_transaction_id" => {
                let (old, new) = (num(1)?, num(2)?);
                if m.transaction != old {
                    return Err(kerr("message", message, Errno::EINVAL));
                }
                m.transaction = new;
            }
            "reserve_metadata_snap" => {
                if m.held_snapshot {
                    return Err(kerr("message", message, Errno::EBUSY));
                }
                m.held_snapshot = true;
            }
            "release_metadata_snap" => {
                if !m.held_snapshot {
                    return Err(kerr("message", message, Errno::EINVAL));
                }
                m.held_snapshot = false;
            }
            _ => return Err(kerr("message", message, Errno::EINVAL)),
        }
        Ok(None)
    }

    fn dm_status(&self, name: &str) -> Result<Vec<Target>> {
        self.count("dm_status");
        let s = self.lock();
        let d = s.dev(name)?;
        let Some(table) = d.live.clone() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for t in table {
            let params = match t.kind.as_str() {
                "thin-pool" => {
                    let file = s.pool_meta_file(name)?;
                    let m = &s.metadata[&file];
                    let mode = if m.used() >= m.data_blocks {
                        "out_of_data_space"
                    } else {
                        "rw"
                    };
                    let no_space = if t.params.split(' ').any(|f| f == "error_if_no_space") {
                        "error_if_no_space"
                    } else {
                        "queue_if_no_space"
                    };
                    format!(
                        "{} {}/{} {}/{} {} {mode} discard_passdown {no_space} {} 1024",
                        m.transaction,
                        10 + m.thins.len(),
                        4096,
                        m.used(),
                        m.data_blocks,
                        if m.held_snapshot { "17" } else { "-" },
                        if m.needs_check { "needs_check" } else { "-" },
                    )
                }
                "thin" => {
                    let (file, id) = s.thin_target(name)?;
                    let p: Vec<&str> = t.params.split(' ').collect();
                    let (pool, _) = s.pool_by_devnum(p[0]).expect("live thin has a pool");
                    let block: u64 = s.devices[&pool].live.as_ref().expect("live")[0]
                        .params
                        .split(' ')
                        .nth(2)
                        .and_then(|b| b.parse().ok())
                        .unwrap_or(128);
                    let map = &s.metadata[&file].thins[&id];
                    match map.keys().last() {
                        None => "0 -".to_string(),
                        Some(last) => {
                            format!("{} {}", map.len() as u64 * block, (last + 1) * block - 1)
                        }
                    }
                }
                _ => String::new(),
            };
            out.push(Target { params, ..t });
        }
        Ok(out)
    }

    fn dm_table(&self, name: &str) -> Result<Vec<Target>> {
        self.count("dm_table");
        Ok(self.lock().dev(name)?.live.clone().unwrap_or_default())
    }

    fn dm_info(&self, name: &str) -> Result<Option<DmInfo>> {
        self.count("dm_info");
        let s = self.lock();
        Ok(s.devices.get(name).map(|d| DmInfo {
            devnum: DevNum {
                major: DM_MAJOR,
                minor: d.minor,
            },
            suspended: d.suspended,
            open_count: s.open_count(name, d.minor),
            active_table: d.live.is_some(),
            deferred_remove: d.deferred,
        }))
    }

    fn dm_list(&self) -> Result<Vec<String>> {
        self.count("dm_list");
        Ok(self.lock().devices.keys().cloned().collect())
    }

    fn loop_attach(&self, file: &Path) -> Result<LoopAttachment> {
        self.count("loop_attach");
        std::fs::metadata(file).map_err(|e| Error::io("attach loop device to", file, e))?;
        let mut s = self.lock();
        s.fail("loop_attach", &file.to_string_lossy())?;
        let minor = (0..)
            .find(|m| !s.loops.contains_key(m))
            .expect("a free minor");
        s.loops.insert(minor, file.to_path_buf());
        Ok(LoopAttachment {
            info: LoopInfo {
                device: PathBuf::from(format!("/dev/loop{minor}")),
                devnum: DevNum {
                    major: LOOP_MAJOR,
                    minor,
                },
                backing_file: file.to_path_buf(),
            },
            _hold: None,
        })
    }

    fn loop_list(&self) -> Result<Vec<LoopInfo>> {
        self.count("loop_list");
        Ok(self
            .lock()
            .loops
            .iter()
            .map(|(minor, file)| LoopInfo {
                device: PathBuf::from(format!("/dev/loop{minor}")),
                devnum: DevNum {
                    major: LOOP_MAJOR,
                    minor: *minor,
                },
                backing_file: file.clone(),
            })
            .collect())
    }

    fn loop_refresh_size(&self, _device: &Path) -> Result<()> {
        self.count("loop_refresh_size");
        Ok(())
    }

    /// Block devices here are the simulated loop devices: `/dev/loopN`, as
    /// long as the file behind it.
    fn block_device(&self, path: &Path) -> Result<(DevNum, Bytes)> {
        self.count("block_device");
        let s = self.lock();
        let not_block =
            || Error::invalid("device", &path.display().to_string(), "not a block device");
        let minor = loop_minor(path).ok_or_else(not_block)?;
        let file = s.loops.get(&minor).cloned().ok_or_else(not_block)?;
        let len = std::fs::metadata(&file)
            .map_err(|e| Error::io("stat", &file, e))?
            .len();
        Ok((
            DevNum {
                major: LOOP_MAJOR,
                minor,
            },
            Bytes(len),
        ))
    }

    /// Forgets the pool metadata kept for the device's file: the kernel
    /// formats afresh a metadata device whose start is zero.
    fn zero_start(&self, device: &Path) -> Result<()> {
        self.count("zero_start");
        let mut s = self.lock();
        let file = s
            .loop_file_of_path(device)
            .ok_or_else(|| kerr("open", &device.to_string_lossy(), Errno::ENOENT))?;
        s.metadata.remove(&file);
        Ok(())
    }

    fn fs_space(&self, path: &Path) -> Result<super::FsSpace> {
        self.count("fs_space");
        match self.lock().fs_space {
            Some(space) => Ok(space),
            None => super::linux::statvfs(path),
        }
    }

    /// Simulated pools raise no events: the wait is the timeout.
    fn dm_wait_event(&self, timeout: std::time::Duration) -> Result<()> {
        self.count("dm_wait_event");
        std::thread::sleep(timeout);
        Ok(())
    }

    fn reset_times(&self, path: &Path) -> Result<()> {
        self.count("reset_times");
        let epoch = std::time::SystemTime::UNIX_EPOCH;
        std::fs::File::open(path)
            .and_then(|f| {
                f.set_times(
                    std::fs::FileTimes::new()
                        .set_accessed(epoch)
                        .set_modified(epoch),
                )
            })
            .map_err(|e| Error::io("set times of", path, e))
    }

    fn loop_detach(&self, device: &Path) -> Result<()> {
        self.count("loop_detach");
        let mut s = self.lock();
        let minor = loop_minor(device)
            .ok_or_else(|| kerr("detach", &device.to_string_lossy(), Errno::ENXIO))?;
        s.loops.remove(&minor);
        Ok(())
    }

    fn mount(&self, r: &MountRequest<'_>) -> Result<()> {
        self.count("mount");
        let mut s = self.lock();
        s.fail("mount", &r.target.to_string_lossy())?;
        let minor: u32 = r
            .source
            .to_string_lossy()
            .trim_start_matches("/dev/dm-")
            .parse()
            .map_err(|_| kerr("mount", &r.source.to_string_lossy(), Errno::ENOTBLK))?;
        if !s.devices.values().any(|d| d.minor == minor) {
            return Err(kerr("mount", &r.source.to_string_lossy(), Errno::ENXIO));
        }
        if !r.target.is_dir() {
            return Err(kerr("mount", &r.target.to_string_lossy(), Errno::ENOENT));
        }
        s.mounts.push(MountEntry {
            devnum: Some(DevNum {
                major: DM_MAJOR,
                minor,
            }),
            target: r.target.to_path_buf(),
            fstype: r.fstype.to_string(),
        });
        Ok(())
    }

    fn remount(&self, r: &MountRequest<'_>) -> Result<()> {
        self.count("remount");
        let mut s = self.lock();
        s.fail("remount", &r.target.to_string_lossy())?;
        let Some(minor) = s
            .mounts
            .iter()
            .rfind(|m| m.target == r.target)
            .map(|m| m.devnum.map_or(u32::MAX, |d| d.minor))
        else {
            return Err(kerr("remount", &r.target.to_string_lossy(), Errno::EINVAL));
        };
        // Read-only writes everything back first.
        if r.read_only {
            s.write_back_minor(minor)?;
        }
        Ok(())
    }

    fn umount(&self, target: &Path, _lazy: bool) -> Result<()> {
        self.count("umount");
        let mut s = self.lock();
        s.fail("umount", &target.to_string_lossy())?;
        let i = s
            .mounts
            .iter()
            .rposition(|m| m.target == target)
            .ok_or_else(|| kerr("unmount", &target.to_string_lossy(), Errno::EINVAL))?;
        // The filesystem's last unmount writes everything back.
        let dev = s.mounts[i].devnum;
        if let Some(d) = dev
            && s.mounts.iter().filter(|m| m.devnum == dev).count() == 1
        {
            s.write_back_minor(d.minor)?;
        }
        s.mounts.remove(i);
        // A deferred removal finishes at the device's last close.
        let closed: Vec<String> = s
            .devices
            .iter()
            .filter(|(n, d)| d.deferred && s.open_count(n, d.minor) == 0)
            .map(|(n, _)| n.clone())
            .collect();
        for name in closed {
            s.devices.remove(&name);
        }
        Ok(())
    }

    fn mounts(&self) -> Result<Vec<MountEntry>> {
        self.count("mounts");
        Ok(self.lock().mounts.clone())
    }

    fn is_mount_point(&self, path: &Path) -> Result<bool> {
        self.count("is_mount_point");
        Ok(self.lock().mounts.iter().any(|m| m.target == path))
    }

    fn discard(&self, device: &Path) -> Result<()> {
        self.count("discard");
        let mut s = self.lock();
        let node = device.to_string_lossy();
        s.fail("discard", &node)?;
        let (name, minor) = s
            .dm_node(device)
            .ok_or_else(|| kerr("open exclusively", &node, Errno::ENXIO))?;
        if s.open_count(&name, minor) > 0 {
            return Err(kerr("open exclusively", &node, Errno::EBUSY));
        }
        let (file, id) = s.thin_target(&name)?;
        let meta = s.metadata.get_mut(&file).expect("pool metadata");
        let all: Vec<u64> = meta
            .thins
            .get(&id)
            .into_iter()
            .flat_map(|m| m.keys().copied())
            .collect();
        meta.unmap(id, all);
        s.freed.remove(&name);
        Ok(())
    }

    fn trim(&self, target: &Path) -> Result<Bytes> {
        self.count("trim");
        let mut s = self.lock();
        s.fail("trim", &target.to_string_lossy())?;
        let minor = s
            .mounts
            .iter()
            .rfind(|m| m.target == target)
            .and_then(|m| m.devnum)
            .ok_or_else(|| kerr("trim", &target.to_string_lossy(), Errno::ENOTTY))?
            .minor;
        let node = DevNum {
            major: DM_MAJOR,
            minor,
        }
        .dm_node();
        let (name, _) = s
            .dm_node(&node)
            .ok_or_else(|| kerr("trim", &target.to_string_lossy(), Errno::ENXIO))?;
        // A trim syncs the filesystem first.
        s.write_back(&name)?;
        let (file, id) = s.thin_target(&name)?;
        let freed = s.freed.remove(&name).unwrap_or_default();
        let meta = s.metadata.get_mut(&file).expect("pool metadata");
        let n = meta.unmap(id, freed);
        Ok(Bytes(n * meta.block_sectors * 512))
    }

    /// What [`Sim::cache`] left for the device of an `ext4` mounted at
    /// `target`; `None` for another filesystem or none.
    fn delayed_allocation(&self, target: &Path) -> Result<Option<Bytes>> {
        self.count("delayed_allocation");
        let mut s = self.lock();
        s.fail("delayed_allocation", &target.to_string_lossy())?;
        let Some(m) = s.mounts.iter().rfind(|m| m.target == target) else {
            return Ok(None);
        };
        if m.fstype != "ext4" {
            return Ok(None);
        }
        let name = m.devnum.and_then(|d| s.name_of_minor(d.minor));
        Ok(Some(
            name.and_then(|n| s.cached.get(&n).copied())
                .unwrap_or_default(),
        ))
    }

    fn mkfs(&self, device: &Path, program: &str, _args: &[String]) -> Result<()> {
        self.count("mkfs");
        let name = {
            let mut s = self.lock();
            s.tool_runs.push(format!("{program} {}", device.display()));
            s.dm_node(device).map(|(n, _)| n)
        };
        // A fresh filesystem maps a few blocks: superblock, group descriptors, journal.
        match name {
            Some(n) => self.write(&n, 0, 2),
            None => Err(kerr("mkfs", &device.to_string_lossy(), Errno::ENXIO)),
        }
    }

    /// A device must be live and unmounted, a mount point mounted; the
    /// tool writes one block (the grown filesystem's new descriptors).
    fn grow_fs(&self, target: &Path, program: &str, _args: &[String]) -> Result<()> {
        self.count("grow_fs");
        let name = {
            let mut s = self.lock();
            s.tool_runs.push(format!("{program} {}", target.display()));
            s.fail("grow", &target.to_string_lossy())?;
            let minor = match target.to_string_lossy().strip_prefix("/dev/dm-") {
                Some(n) => {
                    let minor: u32 = n.parse().unwrap_or(u32::MAX);
                    if s.mounts
                        .iter()
                        .any(|m| m.devnum.is_some_and(|d| d.minor == minor))
                    {
                        return Err(kerr("grow", &target.to_string_lossy(), Errno::EBUSY));
                    }
                    Some(minor)
                }
                None => s
                    .mounts
                    .iter()
                    .rfind(|m| m.target == target)
                    .and_then(|m| m.devnum.map(|d| d.minor)),
            };
            minor.and_then(|minor| s.name_of_minor(minor))
        };
        match name {
            Some(n) => self.write(&n, 0, 1),
            None => Err(kerr("grow", &target.to_string_lossy(), Errno::ENXIO)),
        }
    }

    fn thin_check(&self, metadata: &Path) -> Result<()> {
        self.count("thin_check");
        let mut s = self.lock();
        s.tool_runs
            .push(format!("thin_check {}", metadata.display()));
        s.fail("thin_check", "")?;
        let file = s
            .loop_file_of_path(metadata)
            .unwrap_or_else(|| metadata.to_path_buf());
        if let Some(m) = s.metadata.get_mut(&file) {
            m.needs_check = false;
        }
        Ok(())
    }

    fn thin_repair(&self, metadata: &Path, into: &Path) -> Result<()> {
        self.count("thin_repair");
        let mut s = self.lock();
        s.tool_runs.push(format!(
            "thin_repair {} {}",
            metadata.display(),
            into.display()
        ));
        Ok(())
    }

    fn thin_dump_snapshot(&self, metadata: &Path) -> Result<String> {
        self.count("thin_dump_snapshot");
        let s = self.lock();
        let m = s.meta_of(metadata, "thin_dump")?;
        if !m.held_snapshot {
            return Err(Error::Tool {
                tool: "thin_dump".into(),
                detail: "no metadata snapshot is held".into(),
            });
        }
        let mut x = format!(
            "<superblock uuid=\"\" time=\"0\" transaction=\"{}\" data_block_size=\"128\" nr_data_blocks=\"{}\">\n",
            m.transaction, m.data_blocks
        );
        for (id, map) in &m.thins {
            let _ = writeln!(
                x,
                "  <device dev_id=\"{id}\" mapped_blocks=\"{}\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">",
                map.len()
            );
            for (v, d) in map {
                let _ = writeln!(
                    x,
                    "    <single_mapping origin_block=\"{v}\" data_block=\"{d}\" time=\"0\"/>"
                );
            }
            x.push_str("  </device>\n");
        }
        x.push_str("</superblock>\n");
        Ok(x)
    }

    fn thin_ls_snapshot(&self, metadata: &Path) -> Result<String> {
        self.count("thin_ls_snapshot");
        let s = self.lock();
        let m = s.meta_of(metadata, "thin_ls")?;
        if !m.held_snapshot {
            return Err(Error::Tool {
                tool: "thin_ls".into(),
                detail: "no metadata snapshot is held".into(),
            });
        }
        let mut out = String::new();
        for (id, map) in &m.thins {
            let excl = map.values().filter(|b| m.refs.get(b) == Some(&1)).count();
            let _ = writeln!(out, "{id} {} {excl} {}", map.len(), map.len() - excl);
        }
        Ok(out)
    }
}

impl State {
    /// The pool metadata behind a metadata device (a loop) or file.
    fn meta_of(&self, metadata: &Path, tool: &'static str) -> Result<&PoolMeta> {
        let file = self
            .loop_file_of_path(metadata)
            .unwrap_or_else(|| metadata.to_path_buf());
        self.metadata
            .get(&file)
            .ok_or_else(|| kerr(tool, &metadata.to_string_lossy(), Errno::ENOENT))
    }

    fn loop_file_of_path(&self, device: &Path) -> Option<PathBuf> {
        self.loops.get(&loop_minor(device)?).cloned()
    }
}
