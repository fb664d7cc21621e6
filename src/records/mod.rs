//! The records: everything thinlayer knows that the kernel does not, in one
//! file, `ROOT/state.json`.
//!
//! One file, not a database: the tree, the pool's configuration and the
//! pending intent change together, and a single atomic replace keeps them
//! from ever disagreeing with each other (a split store is how containerd's
//! devmapper snapshotter came to reuse names of live devices). Each save
//! writes a temporary file, fsyncs it, keeps the previous version as
//! `state.json.prev`, renames the new one over the old and, for a
//! [`Durability::Durable`] save, fsyncs the directory. Saves are whole-file;
//! at 10,000 layers the file is about 3 MB and a save with its fsync takes
//! about 10 ms (`cargo bench --bench tree`).
//!
//! A [`Durability::Atomic`] save skips the directory's fsync: a power cut
//! may bring back the version before it, never a torn file. It serves
//! saves whose loss the protocol below already covers (the record of a
//! finished transaction: the durable intent and the kernel's transaction id
//! redo it) or that a reboot makes moot (mount counts).
//!
//! Consistency with the kernel comes from the pool's transaction id, which
//! the kernel stores in the pool's own metadata and changes only through a
//! compare-and-swap message. Every change to the pool's thin ids goes:
//!
//! 1. record the [`Intent`] with transaction `T + 1` (saved, fsynced);
//! 2. send the pool message (`create_thin`, `create_snap`, `delete`);
//! 3. `set_transaction_id T T+1`;
//! 4. record the result with transaction `T + 1` and no intent (atomic).
//!
//! After a crash the kernel's id tells how far it got: `T + 1` means the
//! kernel finished and step 4 is replayed; `T` means it did not, and the
//! intent is rolled back (a create) or driven to the end (a delete, which
//! cannot be undone). See [`crate::driver`] for the reconciler.

mod lock;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use lock::RootLock;

use crate::error::{Error, Result};
use crate::pool::PoolConfig;
use crate::tree::{IdAllocator, Layer, Tree};
use crate::units::ThinId;

/// Format version of `state.json`. Version 1 did not mark the layers made
/// through the snapshotter API; [`Store::load`] upgrades it (see
/// [`Records::upgrade`]).
pub const VERSION: u32 = 2;

pub const STATE_FILE: &str = "state.json";

/// An operation on the pool's thin ids that was started and not yet recorded
/// as finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Intent {
    /// `create_thin` of the base device.
    CreateBase { transaction: u64, thin_id: ThinId },
    /// `create_snap layer.thin_id origin`, then the layer is recorded.
    CreateLayer {
        transaction: u64,
        origin: ThinId,
        layer: Layer,
    },
    /// `create_snap layer.thin_id origin` of the active layer `key`, whose
    /// device (thin id `origin`) is still open: `layer` is the committed
    /// layer, a copy of `key` taken at this instant; `key` goes, and
    /// `origin` is retired until its device closes.
    CommitCopy {
        transaction: u64,
        key: String,
        origin: ThinId,
        layer: Layer,
    },
    /// `delete thin_id` of the layer `key` (or of an orphan or a retired
    /// thin id, `key` empty).
    Delete {
        transaction: u64,
        key: String,
        thin_id: ThinId,
    },
}

impl Intent {
    pub fn transaction(&self) -> u64 {
        match self {
            Intent::CreateBase { transaction, .. }
            | Intent::CreateLayer { transaction, .. }
            | Intent::CommitCopy { transaction, .. }
            | Intent::Delete { transaction, .. } => *transaction,
        }
    }
}

/// The whole record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    pub version: u32,
    pub pool: PoolConfig,
    /// The pool's transaction id as of the last finished operation.
    pub transaction: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Intent>,
    /// Whether the base device holds its filesystem yet.
    #[serde(default)]
    pub base_ready: bool,
    /// Whether the base's root is empty (no `lost+found`): always for pools
    /// made by this version; older ones are emptied when nothing is built
    /// directly on the base.
    #[serde(default)]
    pub base_empty: bool,
    #[serde(default)]
    pub ids: IdAllocator,
    pub tree: Tree,
    /// How many times thinlayer has trimmed a layer's filesystem. A trim
    /// changes the layer's mappings and no transaction id, so the kept
    /// layer sizes (`driver::sizes`) compare this count too.
    #[serde(default)]
    pub trims: u64,
}

impl Records {
    pub fn new(pool: PoolConfig) -> Self {
        Records {
            version: VERSION,
            pool,
            transaction: 0,
            pending: None,
            base_ready: false,
            base_empty: false,
            ids: IdAllocator::default(),
            tree: Tree::default(),
            trims: 0,
        }
    }
}

impl Records {
    /// Brings version-1 records to the current format in memory (the next
    /// save writes them). Version 1 did not record which layers the
    /// snapshotter API made; it only ever gave containerd the keys its
    /// metadata store sends, `NAMESPACE/ID/KEY`, and the CLI never makes
    /// such keys (its names have no `/`), so that shape marks them here,
    /// once. From version 2 on, the mark is set when a layer is made.
    pub fn upgrade(&mut self) {
        for l in self.tree.layers.values_mut() {
            l.snapshotter = is_containerd_metadata_key(&l.key);
        }
        self.version = VERSION;
    }
}

/// Whether `key` has the shape containerd's metadata store gives backend
/// keys: `NAMESPACE/ID/KEY`, ID decimal.
pub fn is_containerd_metadata_key(key: &str) -> bool {
    let mut parts = key.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ns), Some(id), Some(rest)) => {
            !ns.is_empty()
                && !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_digit())
                && !rest.is_empty()
        }
        _ => false,
    }
}

/// How far a save must have reached the disk when it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The new version survives a power cut (file and directory fsynced).
    Durable,
    /// The new version replaced the old one atomically; after a power cut
    /// either may be found, whole (the file is fsynced before the rename).
    Atomic,
}

/// Where the records of one root live.
///
/// A store keeps the last version it read or wrote, with the file it came
/// from held open, and answers [`Store::load`] from it while `state.json`
/// is still that file, unchanged: a long-running process (`serve`) then
/// parses the records only when another process has changed them, not at
/// every operation. Held open, the file's inode cannot be freed and its
/// number given to another file, so a path naming the same device and
/// inode names the same file; every save makes a new file and renames it
/// over the old, and the size and change times are compared too, for a
/// file edited in place by hand.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    kept: Arc<Mutex<Option<Kept>>>,
    saves: Arc<AtomicU64>,
}

/// The version of the records a store last read or wrote.
#[derive(Debug)]
struct Kept {
    /// Held open so that its inode number names it alone.
    _file: File,
    id: FileStat,
    records: Records,
}

/// What `stat` shows of a file: enough to tell one save of the records
/// from another (each save is a new file renamed over the old).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileStat {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl FileStat {
    pub fn of(m: &fs::Metadata) -> FileStat {
        FileStat {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// The later of the change and modification times.
    pub fn newest(&self) -> SystemTime {
        let at = |(s, ns): (i64, i64)| {
            UNIX_EPOCH
                + Duration::from_secs(u64::try_from(s).unwrap_or(0))
                + Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
        };
        at(self.mtime).max(at(self.ctime))
    }
}

impl Store {
    pub fn new(root: &Path) -> Self {
        Store {
            root: root.to_path_buf(),
            kept: Arc::default(),
            saves: Arc::default(),
        }
    }

    /// How many saves this store (and its clones) has made.
    pub fn saves(&self) -> u64 {
        self.saves.load(Ordering::Relaxed)
    }

    /// The kept version, if `state.json` is still its file.
    fn kept(&self, path: &Path) -> Option<Records> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let kept = kept.as_ref()?;
        let now = fs::metadata(path).ok()?;
        (FileStat::of(&now) == kept.id).then(|| kept.records.clone())
    }

    fn keep(&self, file: File, records: &Records) {
        let kept = file.metadata().ok().map(|m| Kept {
            id: FileStat::of(&m),
            _file: file,
            records: records.clone(),
        });
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = kept;
    }

    fn forget(&self) {
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }

    /// Makes the root directory, owner-only (0700).
    pub fn create_root(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| Error::io("create directory", &self.root, e))
    }

    /// Takes the root's lock, waiting for other processes and threads.
    pub fn lock(&self) -> Result<RootLock> {
        RootLock::acquire(&self.root)
    }

    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Reads the records. Unreadable records are an error that names the file
    /// and leaves it, and its previous version, untouched.
    pub fn load(&self) -> Result<Records> {
        let path = self.path();
        if let Some(records) = self.kept(&path) {
            return Ok(records);
        }
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget();
                return Err(Error::NotInitialized {
                    root: self.root.clone(),
                });
            }
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let mut text = Vec::new();
        file.read_to_end(&mut text)
            .map_err(|e| Error::io("read", &path, e))?;
        let mut records: Records =
            serde_json::from_slice(&text).map_err(|e| Error::CorruptRecords {
                path: path.clone(),
                detail: format!(
                    "{e}; the file is kept as it is and the previous version is {}.prev",
                    path.display()
                ),
            })?;
        if records.version == 1 {
            records.upgrade();
        }
        if records.version != VERSION {
            return Err(Error::CorruptRecords {
                path,
                detail: format!(
                    "format version {} is not {VERSION}, which this thinlayer reads",
                    records.version
                ),
            });
        }
        self.keep(file, &records);
        Ok(records)
    }

    /// Replaces the records atomically, and durably when asked.
    pub fn save(&self, records: &Records, durability: Durability) -> Result<()> {
        let path = self.path();
        let tmp = self.root.join(format!("{STATE_FILE}.tmp"));
        let prev = self.root.join(format!("{STATE_FILE}.prev"));
        let body = serde_json::to_vec(records).map_err(|e| Error::CorruptRecords {
            path: path.clone(),
            detail: format!("cannot encode: {e}"),
        })?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(&body)
            .map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        // Whatever happens below, the kept version may no longer be the
        // file's.
        self.forget();
        if path.exists() {
            // Keep the version being replaced: a hard link costs no copy.
            let _ = fs::remove_file(&prev);
            fs::hard_link(&path, &prev)
                .map_err(|e| Error::io("keep previous version as", &prev, e))?;
        }
        fs::rename(&tmp, &path).map_err(|e| Error::io("replace", &path, e))?;
        self.saves.fetch_add(1, Ordering::Relaxed);
        // Kept after the rename, which changes the file's ctime; what a
        // load would refuse or upgrade is read again.
        if records.version == VERSION {
            self.keep(f, records);
        }
        match durability {
            Durability::Durable => sync_dir(&self.root),
            Durability::Atomic => Ok(()),
        }
    }

    /// Removes the records (pool destroy).
    pub fn remove(&self) -> Result<()> {
        self.forget();
        for name in [
            STATE_FILE.to_string(),
            format!("{STATE_FILE}.prev"),
            format!("{STATE_FILE}.tmp"),
        ] {
            let p = self.root.join(name);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", &p, e)),
            }
        }
        sync_dir(&self.root)
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolConfig;
    use crate::testutil::TempDir;

    #[test]
    fn saves_atomically_and_keeps_the_previous_version() {
        let dir = TempDir::new("records");
        let store = Store::new(dir.path());
        assert!(matches!(store.load(), Err(Error::NotInitialized { .. })));
        let mut r = Records::new(PoolConfig::for_tests(dir.path()));
        store.save(&r, Durability::Durable).unwrap();
        r.transaction = 7;
        store.save(&r, Durability::Durable).unwrap();
        assert_eq!(store.load().unwrap().transaction, 7);
        let prev: Records =
            serde_json::from_slice(&fs::read(dir.path().join("state.json.prev")).unwrap()).unwrap();
        assert_eq!(prev.transaction, 0);
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn refuses_corrupt_records_and_keeps_them() {
        let dir = TempDir::new("records");
        let store = Store::new(dir.path());
        let r = Records::new(PoolConfig::for_tests(dir.path()));
        store.save(&r, Durability::Durable).unwrap();
        let full = fs::read(store.path()).unwrap();
        fs::write(store.path(), &full[..full.len() / 2]).unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, Error::CorruptRecords { .. }), "{err}");
        assert!(err.to_string().contains("state.json"), "{err}");
        assert_eq!(
            fs::read(store.path()).unwrap(),
            &full[..full.len() / 2],
            "left as it was"
        );
    }

    #[test]
    fn a_kept_version_is_never_read_after_the_file_changed() {
        let dir = TempDir::new("records");
        let (a, b) = (Store::new(dir.path()), Store::new(dir.path()));
        let mut r = Records::new(PoolConfig::for_tests(dir.path()));
        r.transaction = 1;
        a.save(&r, Durability::Durable).unwrap();
        assert_eq!(a.load().unwrap(), r, "its own save");
        assert_eq!(b.load().unwrap(), r, "read from the file");
        // Saves by another process replace the file.
        for t in 2..5 {
            r.transaction = t;
            b.save(&r, Durability::Atomic).unwrap();
            assert_eq!(a.load().unwrap().transaction, t);
            assert_eq!(a.load().unwrap().transaction, t, "kept");
        }
        // An edit in place, same length: the change time tells. The coarse
        // clock that stamps files ticks at least every 10 ms.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let text = fs::read_to_string(a.path()).unwrap();
        let edited = text.replace("\"transaction\":4", "\"transaction\":9");
        assert_ne!(text, edited);
        fs::write(a.path(), edited).unwrap();
        assert_eq!(a.load().unwrap().transaction, 9);
        // Gone: not kept either.
        a.remove().unwrap();
        assert!(matches!(b.load(), Err(Error::NotInitialized { .. })));
        assert!(matches!(a.load(), Err(Error::NotInitialized { .. })));
    }

    #[test]
    fn containerd_metadata_keys_are_recognised() {
        assert!(is_containerd_metadata_key("default/3/sha256:abc"));
        assert!(is_containerd_metadata_key("k8s.io/12/extract-1 sha256:abc"));
        assert!(!is_containerd_metadata_key("web1"));
        assert!(!is_containerd_metadata_key("sha256:abc"));
        assert!(!is_containerd_metadata_key("a/b/c"));
        assert!(!is_containerd_metadata_key("default/3/"));
    }

    #[test]
    fn version_1_records_mark_the_snapshotter_layers_once() {
        let dir = TempDir::new("records");
        let store = Store::new(dir.path());
        let mut r = Records::new(PoolConfig::for_tests(dir.path()));
        r.version = 1;
        for (i, key) in ["default/4/sha256:abc", "web1"].into_iter().enumerate() {
            let layer = crate::tree::Layer {
                key: key.into(),
                kind: crate::tree::Kind::Active,
                thin_id: ThinId::new(i as u32 + 2).unwrap(),
                parent: None,
                device_size: crate::units::Bytes(1 << 30),
                created: 1,
                created_ns: 0,
                updated_ns: 0,
                snapshotter: false,
                image: None,
                labels: Default::default(),
                mounts: 0,
                pinned: false,
            };
            r.tree.layers.insert(key.into(), layer);
        }
        store.save(&r, Durability::Durable).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.version, VERSION);
        assert!(loaded.tree.layers["default/4/sha256:abc"].snapshotter);
        assert!(!loaded.tree.layers["web1"].snapshotter);
        // From version 2 on the mark is what was recorded, whatever the key.
        let mut again = loaded.clone();
        again
            .tree
            .get_mut("default/4/sha256:abc")
            .unwrap()
            .snapshotter = false;
        again.tree.get_mut("web1").unwrap().snapshotter = true;
        store.save(&again, Durability::Durable).unwrap();
        let loaded = store.load().unwrap();
        assert!(!loaded.tree.layers["default/4/sha256:abc"].snapshotter);
        assert!(loaded.tree.layers["web1"].snapshotter);
    }

    #[test]
    fn refuses_unknown_versions() {
        let dir = TempDir::new("records");
        let store = Store::new(dir.path());
        let mut r = Records::new(PoolConfig::for_tests(dir.path()));
        r.version = 99;
        store.save(&r, Durability::Durable).unwrap();
        assert!(matches!(store.load(), Err(Error::CorruptRecords { .. })));
    }
}
