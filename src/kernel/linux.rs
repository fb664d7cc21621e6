//! The real kernel: device-mapper ioctls through the `devicemapper` crate,
//! loop devices through `loopdev-3`, mounts through `nix`. The block tools
//! (mkfs, thin_check, thin_dump, thin_ls) are processes: they run once per
//! pool or per size query, never on a per-layer hot path.

use std::fs::{self, File};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use devicemapper::{DM, DevId, DmError, DmFlags, DmName, DmOptions, errors as dmerrors};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use super::{
    DevNum, DmInfo, Kernel, LoopAttachment, LoopInfo, MountEntry, MountRequest, Suspend, Target,
};
use crate::error::{Error, Result};
use crate::units::{Bytes, Sectors};

/// The running kernel. Opening `/dev/mapper/control` is deferred to the first
/// device-mapper call, so commands that need none (help, records) work anywhere.
#[derive(Default)]
pub struct Linux {
    dm: OnceLock<std::result::Result<DM, String>>,
}

impl Linux {
    pub fn new() -> Self {
        Linux::default()
    }

    fn dm(&self) -> Result<&DM> {
        self.dm
            .get_or_init(|| DM::new().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::NoDeviceMapper {
                detail: format!("cannot open /dev/mapper/control: {e}"),
            })
    }
}

fn dm_errno(err: &DmError) -> Option<Errno> {
    match err {
        DmError::Core(dmerrors::Error::Ioctl(_, _, _, errno)) => {
            Some(Errno::from_raw(**errno as i32))
        }
        _ => None,
    }
}

fn dm_err(op: &'static str, object: &str, err: DmError) -> Error {
    let errno = dm_errno(&err);
    let detail = match errno {
        Some(e) => format!("{} ({})", e.desc(), e),
        None => err.to_string(),
    };
    Error::Kernel {
        op,
        object: object.to_string(),
        errno,
        detail,
        source: Some(Box::new(err)),
    }
}

fn dm_name(name: &str) -> Result<&DmName> {
    DmName::new(name).map_err(|e| Error::invalid("device-mapper name", name, &e.to_string()))
}

fn to_dm_targets(table: &[Target]) -> Vec<(u64, u64, String, String)> {
    table
        .iter()
        .map(|t| (t.start.0, t.length.0, t.kind.clone(), t.params.clone()))
        .collect()
}

fn from_dm_targets(lines: Vec<(u64, u64, String, String)>) -> Vec<Target> {
    lines
        .into_iter()
        .map(|(start, length, kind, params)| Target {
            start: Sectors(start),
            length: Sectors(length),
            kind,
            params,
        })
        .collect()
}

fn nix_err(op: &'static str, object: &Path, errno: Errno) -> Error {
    Error::kernel(op, object.display().to_string(), Some(errno), errno.desc())
}

/// Runs `program` with `args` and then `path`, its output dropped.
fn run_tool_on(program: &str, args: &[String], path: &Path) -> Result<()> {
    let path = path.to_string_lossy();
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.push(&path);
    run_tool(program, &all).map(|_| ())
}

/// Runs `program` with `args` to completion and returns its output. A
/// non-zero exit becomes [`Error::Tool`] with what the tool printed.
fn run_tool(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::Tool {
            tool: program.to_string(),
            detail: format!("cannot run it: {e} (is it installed?)"),
        })?;
    if !output.status.success() {
        // Tools print several lines; an error message is one.
        let said: Vec<String> = [&output.stderr, &output.stdout]
            .iter()
            .flat_map(|b| {
                String::from_utf8_lossy(b)
                    .lines()
                    .map(|l| l.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .filter(|l| !l.is_empty())
            .collect();
        return Err(Error::Tool {
            tool: format!("{program} {}", args.join(" ")),
            detail: format!("{}: {}", output.status, said.join("; ")),
        });
    }
    String::from_utf8(output.stdout).map_err(|e| Error::Tool {
        tool: program.to_string(),
        detail: format!("output is not UTF-8: {e}"),
    })
}

// LOOP_SET_BLOCK_SIZE from <linux/loop.h>; loopdev-3 does not wrap it.
nix::ioctl_write_int_bad!(loop_set_block_size, 0x4C09);

// BLKDISCARD from <linux/fs.h>: `_IO(0x12, 119)`, given the byte range
// `{start, length}`.
nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);

/// `struct fstrim_range` from <linux/fs.h>.
#[repr(C)]
struct FstrimRange {
    start: u64,
    len: u64,
    minlen: u64,
}

// FITRIM from <linux/fs.h>: `_IOWR('X', 121, struct fstrim_range)`.
nix::ioctl_readwrite!(fitrim, b'X', 121, FstrimRange);

/// Reads a `/sys/block/<dev>/dev` style `major:minor` file.
fn read_devnum(path: &Path) -> Option<DevNum> {
    let s = fs::read_to_string(path).ok()?;
    let (ma, mi) = s.trim().split_once(':')?;
    Some(DevNum {
        major: ma.parse().ok()?,
        minor: mi.parse().ok()?,
    })
}

impl Kernel for Linux {
    fn check(&self) -> Result<()> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::NotRoot);
        }
        self.dm()?;
        Ok(())
    }

    fn dm_create(&self, name: &str, table: &[Target], read_only: bool) -> Result<DmInfo> {
        let dm = self.dm()?;
        let dmname = dm_name(name)?;
        let id = DevId::Name(dmname);
        let flags = if read_only {
            DmFlags::DM_READONLY
        } else {
            DmFlags::empty()
        };
        dm.device_create(dmname, None, DmOptions::default().set_flags(flags))
            .map_err(|e| dm_err("create device", name, e))?;
        let live = dm
            .table_load(
                &id,
                &to_dm_targets(table),
                DmOptions::default().set_flags(flags),
            )
            .map_err(|e| dm_err("load table of", name, e))
            .and_then(|_| {
                dm.device_suspend(&id, DmOptions::default())
                    .map_err(|e| dm_err("resume", name, e))
            });
        match live {
            Ok(_) => self
                .dm_info(name)?
                .ok_or_else(|| Error::not_found("device", name)),
            Err(e) => {
                if let Err(cleanup) = dm.device_remove(&id, DmOptions::default()) {
                    tracing::warn!(device = name, error = %cleanup, "could not remove a half-made device");
                }
                Err(e)
            }
        }
    }

    fn dm_load(&self, name: &str, table: &[Target]) -> Result<()> {
        let dm = self.dm()?;
        dm.table_load(
            &DevId::Name(dm_name(name)?),
            &to_dm_targets(table),
            DmOptions::default(),
        )
        .map_err(|e| dm_err("load table of", name, e))?;
        Ok(())
    }

    fn dm_suspend(&self, name: &str, how: Suspend) -> Result<()> {
        let dm = self.dm()?;
        let flags = DmFlags::DM_SUSPEND
            | match how {
                Suspend::Freeze => DmFlags::empty(),
                Suspend::Flush => DmFlags::DM_SKIP_LOCKFS,
                Suspend::NoFlush => DmFlags::DM_NOFLUSH | DmFlags::DM_SKIP_LOCKFS,
            };
        dm.device_suspend(
            &DevId::Name(dm_name(name)?),
            DmOptions::default().set_flags(flags),
        )
        .map_err(|e| dm_err("suspend", name, e))?;
        Ok(())
    }

    fn dm_resume(&self, name: &str) -> Result<()> {
        let dm = self.dm()?;
        dm.device_suspend(&DevId::Name(dm_name(name)?), DmOptions::default())
            .map_err(|e| dm_err("resume", name, e))?;
        Ok(())
    }

    fn dm_remove(&self, name: &str, deferred: bool) -> Result<()> {
        let dm = self.dm()?;
        let flags = if deferred {
            DmFlags::DM_DEFERRED_REMOVE
        } else {
            DmFlags::empty()
        };
        dm.device_remove(
            &DevId::Name(dm_name(name)?),
            DmOptions::default().set_flags(flags),
        )
        .map_err(|e| dm_err("remove device", name, e))?;
        Ok(())
    }

    fn dm_message(&self, name: &str, message: &str) -> Result<Option<String>> {
        let dm = self.dm()?;
        let (_, out) = dm
            .target_msg(&DevId::Name(dm_name(name)?), None, message)
            .map_err(|e| {
                let mut err = dm_err("send message to", name, e);
                if let Error::Kernel { detail, .. } = &mut err {
                    *detail = format!("message {message:?}: {detail}");
                }
                err
            })?;
        Ok(out)
    }

    fn dm_status(&self, name: &str) -> Result<Vec<Target>> {
        let dm = self.dm()?;
        let (_, lines) = dm
            .table_status(
                &DevId::Name(dm_name(name)?),
                DmOptions::default().set_flags(DmFlags::DM_NOFLUSH),
            )
            .map_err(|e| dm_err("read status of", name, e))?;
        Ok(from_dm_targets(lines))
    }

    fn dm_table(&self, name: &str) -> Result<Vec<Target>> {
        let dm = self.dm()?;
        let (_, lines) = dm
            .table_status(
                &DevId::Name(dm_name(name)?),
                DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
            )
            .map_err(|e| dm_err("read table of", name, e))?;
        Ok(from_dm_targets(lines))
    }

    fn dm_info(&self, name: &str) -> Result<Option<DmInfo>> {
        let dm = self.dm()?;
        match dm.device_info(&DevId::Name(dm_name(name)?)) {
            Ok(info) => {
                let d = info.device();
                Ok(Some(DmInfo {
                    devnum: DevNum {
                        major: d.major,
                        minor: d.minor,
                    },
                    suspended: info.flags().contains(DmFlags::DM_SUSPEND),
                    open_count: info.open_count(),
                    active_table: info.flags().contains(DmFlags::DM_ACTIVE_PRESENT),
                    deferred_remove: info.flags().contains(DmFlags::DM_DEFERRED_REMOVE),
                }))
            }
            Err(e) if dm_errno(&e) == Some(Errno::ENXIO) => Ok(None),
            Err(e) => Err(dm_err("query device", name, e)),
        }
    }

    fn dm_list(&self) -> Result<Vec<String>> {
        let dm = self.dm()?;
        let list = dm
            .list_devices()
            .map_err(|e| dm_err("list devices", "", e))?;
        Ok(list.into_iter().map(|(n, _, _)| n.to_string()).collect())
    }

    fn loop_attach(&self, file: &Path) -> Result<LoopAttachment> {
        let control = loopdev::LoopControl::open()
            .map_err(|e| Error::io("open loop control", "/dev/loop-control", e))?;
        // Another process can take the device between next_free and attach:
        // the attach then fails with EBUSY and we ask for the next one.
        let mut last = None;
        for _ in 0..16 {
            let dev = control
                .next_free()
                .map_err(|e| Error::io("find a free loop device", "/dev/loop-control", e))?;
            let path = dev.path().unwrap_or_default();
            match dev.with().autoclear(true).attach(file) {
                Ok(()) => {
                    let devnum = DevNum {
                        major: dev.major().map_err(|e| Error::io("stat", &path, e))?,
                        minor: dev.minor().map_err(|e| Error::io("stat", &path, e))?,
                    };
                    // Direct I/O keeps pool data out of the host page cache
                    // twice over. The kernel accepts it only when the loop's
                    // logical block size matches the backing filesystem's, so
                    // set 4 KiB first; where it still refuses, buffered I/O
                    // is correct, only slower.
                    // SAFETY: the fd belongs to `dev`, which is alive; the ioctl takes an integer.
                    let bs =
                        unsafe { loop_set_block_size(std::os::fd::AsRawFd::as_raw_fd(&dev), 4096) };
                    if let Err(e) = bs.map(|_| ()).and_then(|_| {
                        dev.set_direct_io(true)
                            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))
                    }) {
                        tracing::debug!(device = %path.display(), error = %e, "direct I/O not available, using buffered I/O");
                    }
                    // SAFETY: into_raw_fd hands over the only owner of this fd.
                    let hold = unsafe { File::from_raw_fd(dev.into_raw_fd()) };
                    return Ok(LoopAttachment {
                        info: LoopInfo {
                            device: path,
                            devnum,
                            backing_file: file.to_path_buf(),
                        },
                        _hold: Some(hold),
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = Some(e),
                Err(e) => return Err(Error::io("attach loop device to", file, e)),
            }
        }
        Err(Error::io(
            "attach loop device to",
            file,
            last.unwrap_or_else(|| std::io::Error::other("no free loop device")),
        ))
    }

    fn loop_list(&self) -> Result<Vec<LoopInfo>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir("/sys/block") {
            Ok(e) => e,
            Err(e) => return Err(Error::io("list", "/sys/block", e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            let sys = entry.path();
            let Ok(backing) = fs::read_to_string(sys.join("loop/backing_file")) else {
                continue; // not attached
            };
            let Some(devnum) = read_devnum(&sys.join("dev")) else {
                continue;
            };
            let backing = backing.trim_end_matches('\n');
            out.push(LoopInfo {
                device: PathBuf::from(format!("/dev/{name}")),
                devnum,
                backing_file: PathBuf::from(backing.strip_suffix(" (deleted)").unwrap_or(backing)),
            });
        }
        Ok(out)
    }

    fn loop_refresh_size(&self, device: &Path) -> Result<()> {
        let dev = loopdev::LoopDevice::open(device).map_err(|e| Error::io("open", device, e))?;
        dev.set_capacity()
            .map_err(|e| Error::io("refresh capacity of", device, e))
    }

    fn loop_detach(&self, device: &Path) -> Result<()> {
        let dev = loopdev::LoopDevice::open(device).map_err(|e| Error::io("open", device, e))?;
        dev.detach().map_err(|e| Error::io("detach", device, e))
    }

    fn block_device(&self, path: &Path) -> Result<(DevNum, Bytes)> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let m = fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
        if !m.file_type().is_block_device() {
            return Err(Error::invalid(
                "device",
                &path.display().to_string(),
                "not a block device",
            ));
        }
        let devnum = DevNum {
            major: libc::major(m.rdev()),
            minor: libc::minor(m.rdev()),
        };
        let len = File::open(path)
            .and_then(|mut f| f.seek(SeekFrom::End(0)))
            .map_err(|e| Error::io("size", path, e))?;
        Ok((devnum, Bytes(len)))
    }

    fn zero_start(&self, device: &Path) -> Result<()> {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(device)
            .map_err(|e| Error::io("open", device, e))?;
        f.write_all(&[0u8; 4096])
            .map_err(|e| Error::io("zero the start of", device, e))?;
        f.sync_all().map_err(|e| Error::io("fsync", device, e))
    }

    fn fs_space(&self, path: &Path) -> Result<super::FsSpace> {
        statvfs(path)
    }

    fn dm_wait_event(&self, timeout: std::time::Duration) -> Result<()> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd as _;
        let dm = self.dm()?;
        let mut fds = [PollFd::new(dm.file().as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(0) | Err(Errno::EINTR) => Ok(()),
            Ok(_) => {
                // Readable until re-armed: re-arm before the caller looks,
                // so an event during its look is not lost.
                dm.arm_poll()
                    .map(|_| ())
                    .map_err(|e| dm_err("arm the event poll of", "/dev/mapper/control", e))
            }
            Err(e) => Err(Error::kernel(
                "wait for an event of",
                "/dev/mapper/control",
                Some(e),
                e.desc(),
            )),
        }
    }

    fn reset_times(&self, path: &Path) -> Result<()> {
        let epoch = nix::sys::time::TimeSpec::new(0, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &epoch,
            &epoch,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| {
            Error::kernel(
                "set times of",
                path.display().to_string(),
                Some(e),
                e.desc(),
            )
        })
    }

    /// Every layer is mounted `nodev` and `noatime`: under the default
    /// `relatime`, the first read of each imported file (whose atime is
    /// its mtime) would write its inode, copying a pool block of inode
    /// table into the container's layer: reading must not write.
    fn mount(&self, r: &MountRequest<'_>) -> Result<()> {
        let data = (!r.data.is_empty()).then_some(r.data);
        nix::mount::mount(
            Some(r.source),
            r.target,
            Some(r.fstype),
            mount_flags(r),
            data,
        )
        .map_err(|e| {
            Error::kernel(
                "mount",
                format!("{} on {}", r.source.display(), r.target.display()),
                Some(e),
                format!("{} (type {}, options {:?})", e.desc(), r.fstype, r.data),
            )
        })
    }

    fn remount(&self, r: &MountRequest<'_>) -> Result<()> {
        let data = (!r.data.is_empty()).then_some(r.data);
        // The mount's own flags are set again with the filesystem's.
        let flags = mount_flags(r) | MsFlags::MS_REMOUNT;
        nix::mount::mount(None::<&str>, r.target, None::<&str>, flags, data).map_err(|e| {
            Error::kernel(
                "remount",
                r.target.display().to_string(),
                Some(e),
                format!(
                    "{} (read-only: {}, options {:?})",
                    e.desc(),
                    r.read_only,
                    r.data
                ),
            )
        })
    }

    fn umount(&self, target: &Path, lazy: bool) -> Result<()> {
        let flags = if lazy {
            MntFlags::MNT_DETACH
        } else {
            MntFlags::empty()
        };
        nix::mount::umount2(target, flags).map_err(|e| nix_err("unmount", target, e))
    }

    fn mounts(&self) -> Result<Vec<MountEntry>> {
        let text = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
        Ok(parse_mountinfo(&text))
    }

    fn is_mount_point(&self, path: &Path) -> Result<bool> {
        let here = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("stat", path, e)),
        };
        mount_root(path, &here)
    }

    fn discard(&self, device: &Path) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_EXCL)
            .open(device)
            .map_err(|e| Error::io("open exclusively", device, e))?;
        let len = f
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io("size", device, e))?;
        let range = [0, len];
        // SAFETY: `f` stays open for the call; the kernel reads the two u64
        // of `range`, which outlives it.
        unsafe { blkdiscard(f.as_raw_fd(), &range) }.map_err(|e| nix_err("discard", device, e))?;
        Ok(())
    }

    fn trim(&self, target: &Path) -> Result<Bytes> {
        use std::os::fd::AsRawFd;
        let dir = File::open(target).map_err(|e| Error::io("open", target, e))?;
        // Blocks freed by a transaction not yet committed are not free to
        // ext4's trim yet: commit them first.
        {
            let _s = crate::step!("sync");
            nix::unistd::syncfs(&dir).map_err(|e| nix_err("sync", target, e))?;
        }
        let _s = crate::step!("fitrim");
        // The whole filesystem; `minlen` 0 lets it use the device's
        // discard granularity (a pool block on a thin device).
        let mut range = FstrimRange {
            start: 0,
            len: u64::MAX,
            minlen: 0,
        };
        // SAFETY: `dir` stays open for the call; the kernel reads and
        // writes `range`, a `struct fstrim_range` that outlives it.
        unsafe { fitrim(dir.as_raw_fd(), &mut range) }.map_err(|e| nix_err("trim", target, e))?;
        Ok(Bytes(range.len))
    }

    fn delayed_allocation(&self, target: &Path) -> Result<Option<Bytes>> {
        use std::io::ErrorKind::NotFound;
        use std::os::unix::fs::MetadataExt;
        // The checks and the counts all go through one open directory: the
        // filesystem cannot change under them.
        let dir = match File::open(target) {
            Ok(d) => d,
            Err(e) if e.kind() == NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open", target, e)),
        };
        let here = dir.metadata().map_err(|e| Error::io("stat", target, e))?;
        if !mount_root(target, &here)? {
            return Ok(None);
        }
        // The filesystem's directory in sysfs is named after its block
        // device as the kernel names it (`dm-7`): the last part of the
        // device's own sysfs path.
        let dev = DevNum {
            major: libc::major(here.dev()),
            minor: libc::minor(here.dev()),
        };
        let link = PathBuf::from(format!("/sys/dev/block/{dev}"));
        let device = match fs::read_link(&link) {
            Ok(l) => l,
            // Not a block device (tmpfs, overlayfs).
            Err(e) if e.kind() == NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read link", &link, e)),
        };
        let Some(name) = device.file_name() else {
            return Err(Error::unexpected(
                "sysfs link",
                &device.display().to_string(),
                "names no block device",
            ));
        };
        let counter = Path::new("/sys/fs/ext4")
            .join(name)
            .join("delayed_allocation_blocks");
        let text = match fs::read_to_string(&counter) {
            Ok(t) => t,
            // Not ext4, or unmounted since the open.
            Err(e) if e.kind() == NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", &counter, e)),
        };
        let blocks: u64 = text.trim().parse().map_err(|_| {
            Error::unexpected(
                "ext4's delayed_allocation_blocks",
                &text,
                "not a count of blocks",
            )
        })?;
        // ext4's statfs gives its block size as `f_bsize`.
        let st = nix::sys::statvfs::fstatvfs(&dir).map_err(|e| nix_err("statvfs", target, e))?;
        #[allow(clippy::unnecessary_cast)]
        let block = st.block_size() as u64;
        Ok(Some(Bytes(blocks.saturating_mul(block))))
    }

    fn mkfs(&self, device: &Path, program: &str, args: &[String]) -> Result<()> {
        run_tool_on(program, args, device)
    }

    fn grow_fs(&self, target: &Path, program: &str, args: &[String]) -> Result<()> {
        run_tool_on(program, args, target)
    }

    fn thin_check(&self, metadata: &Path) -> Result<()> {
        // As LVM does on activation: a sound check also clears the
        // needs_check flag the kernel set after an error, without which the
        // pool would come up read-only again.
        run_tool(
            "thin_check",
            &["--clear-needs-check-flag", &metadata.to_string_lossy()],
        )
        .map(|_| ())
    }

    fn thin_repair(&self, metadata: &Path, into: &Path) -> Result<()> {
        run_tool(
            "thin_repair",
            &[
                "-i",
                &metadata.to_string_lossy(),
                "-o",
                &into.to_string_lossy(),
            ],
        )
        .map(|_| ())
    }

    fn thin_dump_snapshot(&self, metadata: &Path) -> Result<String> {
        run_tool(
            "thin_dump",
            &["--metadata-snap", &metadata.to_string_lossy()],
        )
    }

    fn thin_ls_snapshot(&self, metadata: &Path) -> Result<String> {
        run_tool(
            "thin_ls",
            &[
                "--metadata-snap",
                "--no-headers",
                "-o",
                "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS",
                &metadata.to_string_lossy(),
            ],
        )
    }
}

/// Whether `path`, whose metadata is `here`, is the root of a filesystem
/// mounted there: on another device than its parent (`/` is its own
/// parent).
fn mount_root(path: &Path, here: &fs::Metadata) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let parent = path.parent().unwrap_or(Path::new("/"));
    let up = fs::symlink_metadata(parent).map_err(|e| Error::io("stat", parent, e))?;
    Ok(here.dev() != up.dev() || here.ino() == up.ino())
}

/// The flags of a mount `r` asks for: never atime updates.
fn mount_flags(r: &MountRequest<'_>) -> MsFlags {
    let mut flags = MsFlags::MS_NOATIME;
    if r.nodev {
        flags |= MsFlags::MS_NODEV;
    }
    if r.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    flags
}

/// Parses `/proc/self/mountinfo`: `ID PARENT MAJ:MIN ROOT TARGET OPTS ... - FSTYPE SOURCE SUPER`.
/// Targets escape space, tab, newline and backslash as octal.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let _id = fields.next()?;
            let _parent = fields.next()?;
            let (ma, mi) = fields.next()?.split_once(':')?;
            let _root = fields.next()?;
            let target = unescape_mount(fields.next()?);
            let fstype = fields.skip_while(|f| *f != "-").nth(1)?.to_string();
            Some(MountEntry {
                devnum: Some(DevNum {
                    major: ma.parse().ok()?,
                    minor: mi.parse().ok()?,
                }),
                target: PathBuf::from(target),
                fstype,
            })
        })
        .collect()
}

fn unescape_mount(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The free space (to unprivileged users) and size of the filesystem
/// holding `path`.
// statvfs's counts are u64 here, not on every target.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn statvfs(path: &Path) -> Result<super::FsSpace> {
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| Error::kernel("statvfs", path.display().to_string(), Some(e), e.desc()))?;
    let frag = st.fragment_size() as u64;
    Ok(super::FsSpace {
        free: (st.blocks_available() as u64).saturating_mul(frag),
        size: (st.blocks() as u64).saturating_mul(frag),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let text = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    99 22 253:4 / /var/lib/thinlayer/mnt/my\\040ctr rw,relatime shared:1 - ext4 /dev/dm-4 rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].target, PathBuf::from("/var/lib/thinlayer/mnt/my ctr"));
        assert_eq!(
            m[1].devnum,
            Some(DevNum {
                major: 253,
                minor: 4
            })
        );
        assert_eq!(m[1].fstype, "ext4");
    }
}
