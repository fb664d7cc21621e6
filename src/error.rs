//! The library's error type. Every variant names what was being done and to
//! what; kernel failures also carry the errno, so the binary can explain them
//! and map them to exit codes.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed: a device-mapper ioctl, a mount or unmount, a
    /// loop device call, a sync, trim or discard, `statvfs`, setting file
    /// times, or `openat2` while applying a layer.
    #[error("{op} {object}: {detail}")]
    Kernel {
        op: &'static str,
        object: String,
        errno: Option<Errno>,
        detail: String,
        /// The library's own error, where one came (device-mapper's); the
        /// message above already says what it says.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// `/dev/mapper/control` cannot be opened, or this kernel lacks the
    /// thin-pool target.
    #[error(
        "device-mapper is not available in this kernel ({detail}); load dm-thin-pool, \
         or run inside a VM that has it, e.g. `vm-tests/run thinlayer ...`"
    )]
    NoDeviceMapper { detail: String },

    /// The process is not root: device-mapper, loop devices and mounts need it.
    #[error("thinlayer needs root: device-mapper, loop devices and mounts are privileged")]
    NotRoot,

    /// An argument, name or option that cannot be accepted: the caller's
    /// input, never the kernel's or a tool's answer (see
    /// [`Error::Unexpected`]) or the records' content (see
    /// [`Error::CorruptTree`]).
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: String,
    },

    /// A layer, image, device or loop device, or the pool's device, table or
    /// status, that an operation needs is not there; `kind` says which.
    #[error("{kind} {name:?} does not exist")]
    NotFound { kind: &'static str, name: String },

    /// A layer of that key already exists, or an export would overwrite a
    /// file.
    #[error("{kind} {name:?} already exists")]
    Exists { kind: &'static str, name: String },

    /// A layer, image or pool is in use: a layer that is mounted, open
    /// elsewhere or an image's top; an image that containers use; a pool
    /// with mounted layers or removals still held open.
    #[error("{kind} {name:?} is busy: {why}")]
    Busy {
        kind: &'static str,
        name: String,
        why: String,
    },

    /// Removing a layer that other layers are built on.
    #[error("cannot remove layer {name:?}: it has children: {}", children.join(", "))]
    HasChildren { name: String, children: Vec<String> },

    /// The pool's free data or metadata space is below its reserve, or every
    /// thin id is in use.
    #[error("pool is out of {what} space: {detail}")]
    NoSpace { what: &'static str, detail: String },

    /// The root has no records: `pool init` was never run there.
    #[error("no pool at {}: run `thinlayer pool init` first", root.display())]
    NotInitialized { root: PathBuf },

    /// `pool init` on a root that already has records.
    #[error("a pool already exists at {}", root.display())]
    AlreadyInitialized { root: PathBuf },

    /// The kernel's pool and the records disagree in a way that no
    /// interrupted operation explains (a transaction id, a missing thin
    /// device), or an import finds a layer of its key that is not the one it
    /// would make.
    #[error("pool {pool}: {detail}")]
    Inconsistent { pool: String, detail: String },

    /// `thin_check` failed on the pool's metadata before activation: it
    /// needs repair.
    #[error("pool {pool} metadata check failed: {detail}")]
    CheckFailed { pool: String, detail: String },

    /// The kernel failed the pool: its status has nothing to read until its
    /// metadata is checked or repaired.
    #[error(
        "pool {pool} has failed: the kernel reports nothing of it; run `thinlayer pool check`, then `pool repair` if the check fails"
    )]
    PoolFailed { pool: String },

    /// A new layer was asked for while the pool is not read-write.
    #[error("pool {pool} is {mode}: {detail}")]
    PoolMode {
        pool: String,
        mode: String,
        detail: String,
    },

    /// A file operation failed: on the records, the pool's backing files, an
    /// image or layer being read or written, or any other file.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The kernel or a tool answered something thinlayer cannot read (a
    /// status line, a table, `thin_dump` output): a version it does not
    /// know, or a bug on either side. `text` is the answer as given.
    #[error("unexpected {from} {text:?}: {why}")]
    Unexpected {
        from: &'static str,
        text: String,
        why: String,
    },

    /// The layer tree in the records contradicts itself (a parent chain
    /// that loops): they were damaged or edited by hand.
    #[error("the layer tree is damaged at {key:?}: {why}")]
    CorruptTree { key: String, why: String },

    /// The records or their journal cannot be parsed or serialised, or kept
    /// changing while read; a file that cannot be parsed is left as it is.
    #[error("records {} are unreadable: {detail}", path.display())]
    CorruptRecords { path: PathBuf, detail: String },

    /// A layer tar entry that would write outside the layer, or cannot be
    /// applied; named by its path in the archive.
    #[error("layer entry {entry:?}: {why}")]
    UnsafeEntry { entry: String, why: String },

    /// An image archive that is malformed, truncated or of an unknown format.
    #[error("image archive {what}: {detail}")]
    Archive { what: String, detail: String },

    /// Content whose digest is not the one its manifest or config names.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },

    /// An external tool (mkfs, thin_check, thin_dump) could not be run,
    /// exited non-zero, or printed output that is not UTF-8.
    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },
}

impl Error {
    pub fn invalid(what: &'static str, value: &str, why: &str) -> Self {
        Error::Invalid {
            what,
            value: value.to_string(),
            why: why.to_string(),
        }
    }

    pub fn unexpected(from: &'static str, text: &str, why: &str) -> Self {
        Error::Unexpected {
            from,
            text: text.to_string(),
            why: why.to_string(),
        }
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub fn kernel(
        op: &'static str,
        object: impl Into<String>,
        errno: Option<Errno>,
        detail: impl Into<String>,
    ) -> Self {
        Error::Kernel {
            op,
            object: object.into(),
            errno,
            detail: detail.into(),
            source: None,
        }
    }

    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            name: name.into(),
        }
    }

    /// The kernel's errno, where the failure came from the kernel.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Kernel { errno, .. } => *errno,
            Error::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }
}
