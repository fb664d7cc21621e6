//! The records: everything thinlayer knows that the kernel does not,
//! `ROOT/state.json` and the changes made since it was written,
//! `ROOT/state.journal`.
//!
//! One store, not a database: the tree, the pool's configuration and the
//! pending intent change together, in one entry, and nothing splits them
//! (a split store is how containerd's devmapper snapshotter came to reuse
//! names of live devices).
//!
//! A save appends one line to the journal (see the `journal` module): the
//! head of the records (everything but the layers and images, a few
//! hundred bytes) and the layers and images that changed. Its cost does
//! not grow with the number of layers but for an in-memory comparison:
//! an operation among 10,000 layers writes about what one among ten does.
//! Once the journal is larger than `state.json` (and than [`COMPACT_AT`])
//! the next save writes `state.json` whole: a temporary file, fsynced, the
//! version being replaced kept as `state.json.prev`, a rename, the
//! directory fsynced, then a new journal that names the new file by its
//! hash, put in place the same way. A load reads `state.json` and replays
//! the journal on it.
//!
//! A [`Durability::Durable`] save fsyncs what it wrote: the entry, and with
//! it every earlier one. A [`Durability::Atomic`] save does not: a power
//! cut may take it and the atomic saves before it back to the last durable
//! one, never leave a torn version (an entry cut short does not verify and
//! is dropped). It serves saves whose loss the protocol below already
//! covers (the record of a finished transaction: the durable intent and
//! the kernel's transaction id redo it) or that a reboot makes moot (mount
//! counts).
//!
//! Consistency with the kernel comes from messages that can be sent again:
//! `create_thin` and `create_snap` of an id the pool has fail with EEXIST,
//! `delete` of an id it lacks with ENODATA, and each message is committed
//! to the pool's metadata before it returns. Every change to the pool's
//! thin ids goes:
//!
//! 1. record the [`Intent`], naming the thin id (saved, fsynced);
//! 2. send the pool message (`create_thin`, `create_snap`, `delete`): one
//!    metadata commit;
//! 3. record the result and no intent (atomic, or fsynced where step 2 is
//!    not the whole change, see [`Intent::durable_result`]).
//!
//! After a crash an intent still recorded is settled by sending its message
//! again, whatever step 2 did: a create that a caller may have been told
//! about is completed ([`Intent::completes`]); one that nobody can have been
//! told about, or whose later steps cannot be redone (a copy of a mounted
//! layer, a grown filesystem), is rolled back by deleting its id. Removals
//! are records of their own, done in the background (see the driver's
//! removal module) and redone from the start after a crash. See
//! [`crate::driver`] for the reconciler.
//!
//! The pool's transaction id is left as it is: records of version 3 moved
//! it with every change (`set_transaction_id`, a metadata commit of its
//! own), and an intent of theirs still pending is settled by it
//! ([`Intent::legacy_transaction`]). Any other change of it means that
//! something other than thinlayer changed the pool.

mod journal;
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
use crate::tree::{IdAllocator, Layer, Spare, Tree};
use crate::units::ThinId;

/// Format version of the records. Version 1 did not mark the layers made
/// through the snapshotter API; version 2 had no journal (a thinlayer
/// that reads version 2 would not apply one: it must not read these);
/// version 3 had no pending removals nor spares (a thinlayer that reads
/// version 3 would take their thin ids for orphans). [`Store::load`]
/// upgrades all three (see [`Records::upgrade`]).
pub const VERSION: u32 = 4;

pub const STATE_FILE: &str = "state.json";
pub const JOURNAL_FILE: &str = "state.journal";

/// The journal is folded into `state.json` once it is larger than
/// `state.json` and than this: a load then reads at most about twice what
/// `state.json` alone would be, and the cost of the rewrite is spread over
/// at least as many bytes of entries.
pub const COMPACT_AT: u64 = 64 << 10;

/// An operation on the pool's thin ids that was started and not yet recorded
/// as finished.
///
/// `transaction` is set only in intents of records of version 3, which
/// moved the pool's transaction id with every change; see
/// [`Intent::legacy_transaction`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Intent {
    /// `create_thin` of the base device.
    CreateBase {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transaction: Option<u64>,
        thin_id: ThinId,
    },
    /// `create_snap layer.thin_id origin`, then the layer is recorded;
    /// `grow`: its filesystem is grown to a larger device first.
    CreateLayer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transaction: Option<u64>,
        origin: ThinId,
        layer: Layer,
        #[serde(default)]
        grow: bool,
    },
    /// `create_snap layer.thin_id origin` of the active layer `key`, whose
    /// device (thin id `origin`) is still open: `layer` is the committed
    /// layer, a copy of `key` taken at this instant; `key` goes, and
    /// `origin` is retired until its device closes.
    CommitCopy {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transaction: Option<u64>,
        key: String,
        origin: ThinId,
        layer: Layer,
    },
    /// `create_snap layer.thin_id origin` of the active layer `key`,
    /// mounted by thinlayer alone: `layer` is the committed layer, a copy
    /// of `key` taken at this instant; `key` goes, and its device (thin id
    /// `origin`), mounted as it is, becomes a spare of `layer`.
    CommitHandOver {
        key: String,
        origin: ThinId,
        layer: Layer,
    },
    /// `create_snap spare.thin_id origin`: a spare of `spare.parent`.
    CreateSpare { origin: ThinId, spare: Spare },
    /// `delete thin_id` of the layer `key` (or of an orphan or a retired
    /// thin id, `key` empty).
    Delete {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transaction: Option<u64>,
        key: String,
        thin_id: ThinId,
    },
}

impl Intent {
    /// The transaction id an intent of version 3's records was to move
    /// the pool to; `None` for intents made since.
    pub fn legacy_transaction(&self) -> Option<u64> {
        match self {
            Intent::CreateBase { transaction, .. }
            | Intent::CreateLayer { transaction, .. }
            | Intent::CommitCopy { transaction, .. }
            | Intent::Delete { transaction, .. } => *transaction,
            Intent::CommitHandOver { .. } | Intent::CreateSpare { .. } => None,
        }
    }

    /// The thin id the intent creates or deletes.
    pub fn thin_id(&self) -> ThinId {
        match self {
            Intent::CreateBase { thin_id, .. } | Intent::Delete { thin_id, .. } => *thin_id,
            Intent::CreateLayer { layer, .. }
            | Intent::CommitCopy { layer, .. }
            | Intent::CommitHandOver { layer, .. } => layer.thin_id,
            Intent::CreateSpare { spare, .. } => spare.thin_id,
        }
    }

    /// Whether an intent found pending after a crash is completed (its
    /// message sent again, EEXIST or ENODATA taken as done) rather than
    /// rolled back (its thin id deleted). Completed: the base, a plain
    /// layer (its caller may have been told it exists, since its result
    /// is saved atomically) and a delete (which cannot be undone). Rolled
    /// back: a grown layer (its filesystem may not have been grown), a
    /// copy of a mounted layer and one that hands the layer's mount over
    /// (their caller still holds the active one) and a spare (nobody needs
    /// it); their results are saved durably, so no caller was told of them
    /// while their intent can still be found.
    pub fn completes(&self) -> bool {
        match self {
            Intent::CreateBase { .. } | Intent::Delete { .. } => true,
            Intent::CreateLayer { grow, .. } => !grow,
            Intent::CommitCopy { .. }
            | Intent::CommitHandOver { .. }
            | Intent::CreateSpare { .. } => false,
        }
    }

    /// Whether the result of the intent must be saved durably: when a
    /// crash rolls the intent back ([`Intent::completes`]), its caller may
    /// only be told once the result cannot be lost.
    pub fn durable_result(&self) -> bool {
        !self.completes() && !matches!(self, Intent::CreateSpare { .. })
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
    /// Brings older records to the current format in memory (the next
    /// save writes them whole). Version 1 did not record which layers the
    /// snapshotter API made; it only ever gave containerd the keys its
    /// metadata store sends, `NAMESPACE/ID/KEY`, and the CLI never makes
    /// such keys (its names have no `/`), so that shape marks them here,
    /// once. From version 2 on, the mark is set when a layer is made.
    /// Version 2 differs from 3 only in having no journal, and 3 from 4
    /// only in having no removals nor spares.
    pub fn upgrade(&mut self) {
        if self.version == 1 {
            for l in self.tree.layers.values_mut() {
                l.snapshotter = is_containerd_metadata_key(&l.key);
            }
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
/// A store keeps the last version it read or wrote, with the files it came
/// from held open, and answers [`Store::load`] from it while `state.json`
/// and `state.journal` are still those files, unchanged: a long-running
/// process (`serve`) then reads the records only when another process has
/// changed them, not at every operation. Held open, a file's inode cannot
/// be freed and its number given to another file, so a path naming the
/// same device and inode names the same file; an append changes the
/// journal's size, a compaction makes new files, and the change times are
/// compared too, for a file edited in place by hand.
///
/// The kept version is also what a save's journal entry is the difference
/// from: it is always the records as the files hold them.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    kept: Arc<Mutex<Option<Kept>>>,
    saves: Arc<AtomicU64>,
}

/// The version of the records a store last read or wrote.
#[derive(Debug)]
struct Kept {
    /// Held open so that their inode numbers name them alone.
    _files: (File, Option<File>),
    id: RecordsId,
    records: Records,
    /// The sizes of `state.json` and of the journal, for the rule that
    /// folds the journal in.
    state_len: u64,
    journal_len: u64,
    /// The next save writes `state.json` whole: the journal had a torn
    /// tail or extends another file, or `state.json` is of an older format.
    compact: bool,
}

/// What `stat` shows of a file: enough to tell one save of the records
/// from another (an append grows the journal; a compaction makes new
/// files).
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

/// Which version of the records the files hold, as `stat` shows them:
/// every save changes it (an append, the journal's size and times; a
/// compaction, both files).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordsId {
    pub state: FileStat,
    pub journal: Option<FileStat>,
}

/// How many times a load reads the files again when a save by another
/// process changed them while they were read (lock-free readers only:
/// under the root's lock nothing else writes them).
const READ_ATTEMPTS: usize = 5;

/// A load that saw the files change under it.
struct Raced;

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

    fn kept(&self) -> std::sync::MutexGuard<'_, Option<Kept>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `state.json`: the records as of the last compaction.
    pub fn path(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }

    /// `state.journal`: the changes since.
    pub fn journal_path(&self) -> PathBuf {
        self.root.join(JOURNAL_FILE)
    }

    /// Which version of the records the files hold now.
    pub(crate) fn identity(&self) -> Result<RecordsId> {
        let path = self.path();
        let state = fs::metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
        let path = self.journal_path();
        let journal = match fs::metadata(&path) {
            Ok(m) => Some(FileStat::of(&m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("stat", &path, e)),
        };
        Ok(RecordsId {
            state: FileStat::of(&state),
            journal,
        })
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

    /// Reads the records: `state.json`, then the journal's entries.
    /// Unreadable records are an error that names the file and leaves it,
    /// its previous version and the journal untouched.
    pub fn load(&self) -> Result<Records> {
        self.peek(Records::clone)
    }

    /// Runs `f` on the records as the files hold them, without copying
    /// them: on the kept version while the files are those it came from,
    /// else on what they hold now. Other users of the store wait for `f`:
    /// keep it short.
    pub fn peek<T>(&self, f: impl FnOnce(&Records) -> T) -> Result<T> {
        let mut kept = self.kept();
        if let Some(k) = kept.as_ref()
            && self.identity().ok() == Some(k.id)
        {
            return Ok(f(&k.records));
        }
        *kept = None;
        for attempt in 1.. {
            match self.read() {
                Ok(Ok(k)) => {
                    let out = f(&k.records);
                    *kept = Some(k);
                    return Ok(out);
                }
                Ok(Err(Raced)) if attempt < READ_ATTEMPTS => continue,
                Ok(Err(Raced)) => {
                    return Err(Error::CorruptRecords {
                        path: self.journal_path(),
                        detail: format!(
                            "changed while read, {READ_ATTEMPTS} times in a row; try again"
                        ),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }

    /// One read of both files.
    fn read(&self) -> Result<std::result::Result<Kept, Raced>> {
        let path = self.path();
        let (state_file, text) = match read_file(&path)? {
            Some(read) => read,
            None => {
                return Err(Error::NotInitialized {
                    root: self.root.clone(),
                });
            }
        };
        let state = FileStat::of(&metadata(&state_file, &path)?);
        let corrupt = |path: &Path, detail: String| Error::CorruptRecords {
            path: path.to_path_buf(),
            detail,
        };
        let mut records: Records = serde_json::from_slice(&text).map_err(|e| {
            corrupt(
                &path,
                format!(
                    "{e}; the file is kept as it is and the previous version is {}.prev",
                    path.display()
                ),
            )
        })?;
        let on_disk = records.version;
        if (1..VERSION).contains(&on_disk) {
            records.upgrade();
        }
        if records.version != VERSION {
            return Err(corrupt(
                &path,
                format!("format version {on_disk} is not {VERSION}, which this thinlayer reads"),
            ));
        }
        let jpath = self.journal_path();
        let mut compact = on_disk != VERSION;
        let (journal_file, journal, journal_len) = match read_file(&jpath)? {
            None => {
                compact = true;
                (None, None, 0)
            }
            Some((file, bytes)) => {
                let stat = FileStat::of(&metadata(&file, &jpath)?);
                if stat.size != bytes.len() as u64 {
                    return Ok(Err(Raced));
                }
                match journal::replay(&text, &bytes, &mut records) {
                    Err(journal::Damage(why)) => {
                        return Err(corrupt(
                            &jpath,
                            format!(
                                "{why}; the journal and {} are kept as they are",
                                path.display()
                            ),
                        ));
                    }
                    Ok(journal::Replay::Stale) => {
                        if self.identity().ok().map(|id| id.state) != Some(state) {
                            return Ok(Err(Raced));
                        }
                        tracing::warn!(
                            journal = %jpath.display(),
                            "the journal extends another state.json (a compaction cut \
                             short, or an edit by hand): its entries are not applied"
                        );
                        compact = true;
                    }
                    Ok(journal::Replay::Applied { entries, torn }) => {
                        if torn {
                            tracing::warn!(
                                journal = %jpath.display(),
                                entries,
                                "dropped the journal's torn last entry (an append a crash \
                                 cut short)"
                            );
                            compact = true;
                        }
                        if records.version != VERSION {
                            return Err(corrupt(
                                &jpath,
                                format!(
                                    "an entry of format version {} is not {VERSION}",
                                    records.version
                                ),
                            ));
                        }
                    }
                }
                (Some(file), Some(stat), stat.size)
            }
        };
        Ok(Ok(Kept {
            _files: (state_file, journal_file),
            id: RecordsId { state, journal },
            records,
            state_len: state.size,
            journal_len,
            compact,
        }))
    }

    /// Saves the records, and durably when asked: an entry appended to
    /// the journal, or, when the journal has grown past `state.json` (at
    /// least [`COMPACT_AT`]), or there is no kept version to tell what
    /// changed, both files written anew.
    pub fn save(&self, records: &Records, durability: Durability) -> Result<()> {
        let mut kept = self.kept();
        if let Some(k) = kept.as_mut()
            && records.version == VERSION
            && !k.compact
            && k.journal_len <= k.state_len.max(COMPACT_AT)
            && self.identity().ok() == Some(k.id)
        {
            let appended = self.append(k, records, durability);
            match appended {
                Ok(()) => _ = self.saves.fetch_add(1, Ordering::Relaxed),
                // Whatever reached the file, the next load reads it.
                Err(_) => *kept = None,
            }
            return appended;
        }
        // Whatever happens below, the kept version may no longer be the
        // files'.
        *kept = None;
        *kept = self.compact(records, durability)?;
        self.saves.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Appends the entry that takes the kept version to `records`.
    fn append(&self, k: &mut Kept, records: &Records, durability: Durability) -> Result<()> {
        let path = self.journal_path();
        let entry = journal::entry(&k.records, records);
        let line = journal::line(&entry).map_err(|e| Error::CorruptRecords {
            path: path.clone(),
            detail: format!("cannot encode: {e}"),
        })?;
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        f.write_all(&line)
            .map_err(|e| Error::io("append to", &path, e))?;
        if durability == Durability::Durable {
            f.sync_data().map_err(|e| Error::io("fsync", &path, e))?;
        }
        let stat = FileStat::of(&metadata(&f, &path)?);
        k.id.journal = Some(stat);
        k.journal_len = stat.size;
        // The kept version becomes `records` by what changed, not a copy
        // of every layer.
        journal::apply(&mut k.records, entry);
        debug_assert!(k.records == *records);
        Ok(())
    }

    /// Writes `state.json` whole and starts an empty journal that extends
    /// it. The new `state.json` is on disk (its directory synced) before
    /// the new journal replaces the old: a crash between the two leaves
    /// the old journal, which extends the old `state.json` and is not
    /// replayed on the new one, whose records already hold its entries.
    /// The other order could pair the old `state.json` with the new, empty
    /// journal and lose the old journal's entries.
    fn compact(&self, records: &Records, durability: Durability) -> Result<Option<Kept>> {
        let path = self.path();
        let prev = self.root.join(format!("{STATE_FILE}.prev"));
        let body = serde_json::to_vec(records).map_err(|e| Error::CorruptRecords {
            path: path.clone(),
            detail: format!("cannot encode: {e}"),
        })?;
        let state_file = self.write_new(STATE_FILE, &body)?;
        if path.exists() {
            // Keep the version being replaced: a hard link costs no copy.
            let _ = fs::remove_file(&prev);
            fs::hard_link(&path, &prev)
                .map_err(|e| Error::io("keep previous version as", &prev, e))?;
        }
        let tmp = self.root.join(format!("{STATE_FILE}.tmp"));
        fs::rename(&tmp, &path).map_err(|e| Error::io("replace", &path, e))?;
        sync_dir(&self.root)?;
        let header = journal::header(&body);
        let jpath = self.journal_path();
        let journal_file = self.write_new(JOURNAL_FILE, header.as_bytes())?;
        let jtmp = self.root.join(format!("{JOURNAL_FILE}.tmp"));
        fs::rename(&jtmp, &jpath).map_err(|e| Error::io("replace", &jpath, e))?;
        if durability == Durability::Durable {
            sync_dir(&self.root)?;
        }
        // Kept after the renames, which change the files' ctimes; what a
        // load would refuse or upgrade is read again.
        if records.version != VERSION {
            return Ok(None);
        }
        let state = FileStat::of(&metadata(&state_file, &path)?);
        let journal = FileStat::of(&metadata(&journal_file, &jpath)?);
        Ok(Some(Kept {
            _files: (state_file, Some(journal_file)),
            id: RecordsId {
                state,
                journal: Some(journal),
            },
            records: records.clone(),
            state_len: state.size,
            journal_len: journal.size,
            compact: false,
        }))
    }

    /// Writes `NAME.tmp` owner-only with `bytes`, synced; returns it open.
    fn write_new(&self, name: &str, bytes: &[u8]) -> Result<File> {
        let tmp = self.root.join(format!("{name}.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        Ok(f)
    }

    /// Removes the records (pool destroy).
    pub fn remove(&self) -> Result<()> {
        *self.kept() = None;
        for name in [STATE_FILE, JOURNAL_FILE] {
            for suffix in ["", ".prev", ".tmp"] {
                let p = self.root.join(format!("{name}{suffix}"));
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove", &p, e)),
                }
            }
        }
        sync_dir(&self.root)
    }
}

/// The file at `path`, open, and its bytes; `None` if there is none.
fn read_file(path: &Path) -> Result<Option<(File, Vec<u8>)>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(Some((file, bytes)))
}

fn metadata(file: &File, path: &Path) -> Result<fs::Metadata> {
    file.metadata().map_err(|e| Error::io("stat", path, e))
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

    fn layer(key: &str, id: u32) -> crate::tree::Layer {
        crate::tree::Layer {
            key: key.into(),
            kind: crate::tree::Kind::Active,
            thin_id: ThinId::new(id).unwrap(),
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
        }
    }

    /// The `n`th version of a changing set of records: layers come, change
    /// and go, an image appears and goes, the transaction moves.
    fn version(dir: &Path, n: u32) -> Records {
        let mut r = Records::new(PoolConfig::for_tests(dir));
        r.transaction = n.into();
        for i in n.saturating_sub(3)..n {
            let mut l = layer(&format!("l{i}"), i + 2);
            l.mounts = n - i;
            r.tree.layers.insert(l.key.clone(), l);
        }
        if n % 2 == 1 {
            r.tree.images.insert(
                format!("img{n}"),
                crate::tree::Image {
                    name: format!("img{n}"),
                    top: format!("l{}", n - 1),
                    created: 1,
                    config: None,
                },
            );
        }
        r
    }

    /// A root with versions `0..n` saved in turn, durably.
    fn saved(n: u32) -> (TempDir, Store) {
        let dir = TempDir::new("records");
        let store = Store::new(dir.path());
        for v in 0..n {
            store
                .save(&version(dir.path(), v), Durability::Durable)
                .unwrap();
        }
        (dir, store)
    }

    fn read(path: PathBuf) -> Vec<u8> {
        fs::read(path).unwrap()
    }

    #[test]
    fn saves_append_to_the_journal_and_fold_it_in_past_its_bound() {
        let dir = TempDir::new("records");
        let store = Store::new(dir.path());
        assert!(matches!(store.load(), Err(Error::NotInitialized { .. })));
        // The first save writes both files; then each appends one entry.
        store
            .save(&version(dir.path(), 0), Durability::Durable)
            .unwrap();
        let state = read(store.path());
        let header = read(store.journal_path());
        assert_eq!(header.iter().filter(|&&b| b == b'\n').count(), 1);
        for n in 1..6 {
            store
                .save(&version(dir.path(), n), Durability::Atomic)
                .unwrap();
            assert_eq!(read(store.path()), state, "state.json untouched");
            let journal = read(store.journal_path());
            assert!(journal.starts_with(&header));
            assert_eq!(
                journal.iter().filter(|&&b| b == b'\n').count(),
                n as usize + 1
            );
            assert_eq!(
                Store::new(dir.path()).load().unwrap(),
                version(dir.path(), n)
            );
        }
        assert!(!dir.path().join("state.json.prev").exists());
        // Saves until the journal outgrows its bound: then state.json is
        // written whole, the previous one kept, the journal started anew.
        let mut n = 6;
        while read(store.journal_path()).len() as u64 <= COMPACT_AT {
            store
                .save(&version(dir.path(), n), Durability::Atomic)
                .unwrap();
            n += 1;
        }
        assert_eq!(read(store.path()), state, "not yet");
        store
            .save(&version(dir.path(), n), Durability::Durable)
            .unwrap();
        assert_ne!(read(store.path()), state);
        let whole: Records = serde_json::from_slice(&read(store.path())).unwrap();
        assert_eq!(whole, version(dir.path(), n));
        let prev: Records =
            serde_json::from_slice(&read(dir.path().join("state.json.prev"))).unwrap();
        assert_eq!(prev, version(dir.path(), 0));
        let journal = read(store.journal_path());
        assert_eq!(journal, journal::header(&read(store.path())).into_bytes());
        assert_eq!(
            Store::new(dir.path()).load().unwrap(),
            version(dir.path(), n)
        );
        for tmp in ["state.json.tmp", "state.journal.tmp"] {
            assert!(!dir.path().join(tmp).exists(), "{tmp}");
        }
    }

    #[test]
    fn a_kept_version_is_never_read_after_the_files_changed() {
        let dir = TempDir::new("records");
        let (a, b) = (Store::new(dir.path()), Store::new(dir.path()));
        let mut r = Records::new(PoolConfig::for_tests(dir.path()));
        r.transaction = 1;
        a.save(&r, Durability::Durable).unwrap();
        assert_eq!(a.load().unwrap(), r, "its own save");
        assert_eq!(b.load().unwrap(), r, "read from the file");
        // Saves by another process append to the journal.
        for t in 2..5 {
            r.transaction = t;
            b.save(&r, Durability::Atomic).unwrap();
            assert_eq!(a.load().unwrap().transaction, t);
            assert_eq!(a.load().unwrap().transaction, t, "kept");
        }
        // Then a's own save appends after b's entries, from b's version.
        r.tree.layers.insert("x".into(), layer("x", 5));
        a.save(&r, Durability::Atomic).unwrap();
        assert_eq!(b.load().unwrap(), r);
        // An edit of state.json in place, same length: the change time
        // tells, and the journal, which extends the file as it was, is not
        // replayed on it. The coarse clock that stamps files ticks at least
        // every 10 ms.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let text = fs::read_to_string(a.path()).unwrap();
        let edited = text.replace("\"transaction\":1", "\"transaction\":9");
        assert_ne!(text, edited);
        fs::write(a.path(), edited).unwrap();
        let loaded = a.load().unwrap();
        assert_eq!(loaded.transaction, 9);
        assert!(loaded.tree.layers.is_empty(), "{loaded:?}");
        // The next save writes state.json whole, and a new journal.
        a.save(&r, Durability::Durable).unwrap();
        assert_eq!(Store::new(dir.path()).load().unwrap(), r);
        assert_eq!(
            read(a.journal_path()),
            journal::header(&read(a.path())).into_bytes()
        );
        // Gone: not kept either.
        a.remove().unwrap();
        assert!(matches!(b.load(), Err(Error::NotInitialized { .. })));
        assert!(matches!(a.load(), Err(Error::NotInitialized { .. })));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_torn_last_entry_is_dropped_and_the_next_save_starts_anew() {
        let (dir, store) = saved(4);
        let state = read(store.path());
        let journal = read(store.journal_path());
        let last = journal[..journal.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        // Cut anywhere in the last entry, or its bytes lost to zeros: the
        // version before it.
        let mut torn: Vec<Vec<u8>> = (last..journal.len())
            .map(|at| journal[..at].to_vec())
            .collect();
        let mut zeroed = journal.clone();
        zeroed[last..].fill(0);
        torn.push(zeroed);
        let mut flipped = journal.clone();
        flipped[journal.len() - 5] ^= 0x20;
        torn.push(flipped);
        for bytes in torn {
            fs::write(store.journal_path(), &bytes).unwrap();
            let got = Store::new(dir.path()).load().unwrap();
            assert_eq!(
                got,
                version(dir.path(), 2),
                "{:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
        // The next save does not append after the torn bytes.
        let other = Store::new(dir.path());
        assert_eq!(other.load().unwrap().transaction, 2);
        other
            .save(&version(dir.path(), 7), Durability::Atomic)
            .unwrap();
        assert_ne!(read(store.path()), state, "written whole");
        assert_eq!(
            Store::new(dir.path()).load().unwrap(),
            version(dir.path(), 7)
        );
    }

    #[test]
    fn damage_before_an_entry_that_verifies_is_refused_and_left() {
        let (dir, store) = saved(3);
        let mut journal = read(store.journal_path());
        let first = journal.iter().position(|&b| b == b'\n').unwrap() + 1;
        journal[first + 30] ^= 0x01;
        fs::write(store.journal_path(), &journal).unwrap();
        let err = Store::new(dir.path()).load().unwrap_err();
        assert!(matches!(err, Error::CorruptRecords { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("state.journal") && text.contains("entry 1 does not verify"),
            "{text}"
        );
        assert_eq!(read(store.journal_path()), journal, "left as it was");
        // A header that is not a journal's: refused too.
        fs::write(store.journal_path(), b"{}\n").unwrap();
        let err = Store::new(dir.path()).load().unwrap_err();
        assert!(err.to_string().contains("header"), "{err}");
    }

    #[test]
    fn a_journal_left_by_a_cut_short_compaction_is_not_replayed() {
        let (dir, store) = saved(3);
        let old = read(store.journal_path());
        // Written whole (a store with nothing kept), then the old journal
        // put back, as a crash between the two renames leaves them.
        Store::new(dir.path())
            .save(&version(dir.path(), 3), Durability::Durable)
            .unwrap();
        fs::write(store.journal_path(), &old).unwrap();
        assert_eq!(
            Store::new(dir.path()).load().unwrap(),
            version(dir.path(), 3)
        );
    }

    #[test]
    fn version_2_records_are_read_and_written_whole_at_the_next_save() {
        let dir = TempDir::new("records");
        let store = Store::new(dir.path());
        let mut r = version(dir.path(), 3);
        r.version = 2;
        fs::write(store.path(), serde_json::to_vec(&r).unwrap()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.version, VERSION);
        assert_eq!(loaded.tree, r.tree);
        store.save(&loaded, Durability::Durable).unwrap();
        let whole: Records = serde_json::from_slice(&read(store.path())).unwrap();
        assert_eq!(
            whole.version, VERSION,
            "a version 2 reader must not read it"
        );
    }

    #[test]
    fn version_3_records_keep_their_pending_intent_and_are_written_whole() {
        let dir = TempDir::new("records");
        let store = Store::new(dir.path());
        let mut r = version(dir.path(), 3);
        r.version = 3;
        r.transaction = 7;
        let mut json = serde_json::to_value(&r).unwrap();
        // As version 3 wrote it: an intent that moves the transaction id.
        json["pending"] = serde_json::json!({
            "op": "delete", "transaction": 8, "key": "web", "thin_id": 9
        });
        fs::write(store.path(), serde_json::to_vec(&json).unwrap()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.version, VERSION);
        let intent = loaded.pending.clone().expect("pending");
        assert_eq!(intent.legacy_transaction(), Some(8));
        assert_eq!(intent.thin_id(), ThinId::new(9).unwrap());
        store.save(&loaded, Durability::Durable).unwrap();
        let whole: Records = serde_json::from_slice(&read(store.path())).unwrap();
        assert_eq!(
            whole.version, VERSION,
            "a version 3 reader must not read it"
        );
        assert_eq!(whole.pending, loaded.pending);
    }

    #[test]
    fn removals_and_spares_are_journalled() {
        let dir = TempDir::new("records");
        let a = Store::new(dir.path());
        let mut r = Records::new(PoolConfig::for_tests(dir.path()));
        a.save(&r, Durability::Durable).unwrap();
        r.tree.add_removal(crate::tree::Removal {
            thin_id: ThinId::new(5).unwrap(),
            key: "ns/1/a".into(),
            device_size: crate::units::Bytes(1 << 30),
            discard: true,
            removed_ns: 42,
        });
        r.tree.spares.push(crate::tree::Spare {
            thin_id: ThinId::new(6).unwrap(),
            parent: Some("ns/2/img".into()),
            device_size: crate::units::Bytes(1 << 30),
            mounted: true,
        });
        a.save(&r, Durability::Atomic).unwrap();
        let journal = read(a.journal_path());
        assert!(journal.len() > 100, "appended, not rewritten");
        assert_eq!(Store::new(dir.path()).load().unwrap(), r);
        r.tree.removals.clear();
        a.save(&r, Durability::Atomic).unwrap();
        assert_eq!(Store::new(dir.path()).load().unwrap(), r);
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
            let layer = layer(key, i as u32 + 2);
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
