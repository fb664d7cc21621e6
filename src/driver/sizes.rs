//! Sizes as `docker ps -s` shows them: exact from the pool's metadata,
//! plus what a mounted container has not written back yet.
//!
//! - `size`: the blocks this layer maps differently from its parent, i.e.
//!   what it wrote (for a container: its own data and filesystem metadata
//!   changes; for an image layer: the layer's content).
//! - `virtual_size`: every block the layer maps, its parent's included:
//!   what a container sees, image plus its own writes.
//!
//! Both are whole pool blocks: a 4 KiB write costs one block (64 KiB by
//! default). For an active layer that thinlayer holds mounted, both also
//! count the new data its filesystem has not written back yet (next
//! section).
//!
//! # Data not written back yet
//!
//! The pool maps a block only once the filesystem writes it back from the
//! page cache: up to 30 s after the write (the kernel's
//! `dirty_expire_centisecs`), or at a sync. A sync per call would do, but
//! a flush that reaches the pool costs a commit of its metadata, and
//! Kubernetes asks for every snapshot every 10 s. So for an active layer
//! that thinlayer holds mounted (a container's, a containerd active
//! snapshot's), both figures add what its ext4 holds in the page cache
//! without blocks yet, its delayed allocation
//! ([`crate::kernel::Kernel::delayed_allocation`]), rounded up to whole
//! pool blocks. It is read afresh at every call (a few bytes of sysfs: no
//! flush, no lock, never kept with a dump), so a write shows at the next
//! call.
//!
//! What that counts, and what it does not:
//!
//! - ext4 counts data from the write until writeback allocates its
//!   blocks, and stops just before it writes them; the pool maps a block
//!   once its write is done. So no data counts twice. In between it counts
//!   nowhere: while the writes are on their way to the pool; and if a dump
//!   is taken meanwhile (the pool allocates a block when the write
//!   reaches it, so check 2 below sees the change), for as long as that
//!   dump answers: [`SIZES_MAX_AGE`] plus the dump's own duration, the
//!   bound of the next section.
//! - The count is rounded up as if the data began at a pool block
//!   boundary and filled whole blocks. Written back, it fills fewer where
//!   ext4 puts it next to the layer's own earlier data, in a block the
//!   layer already maps, and one more where a run of it starts inside a
//!   block; the filesystem's metadata about it (extent tree, bitmaps,
//!   inode, journal) counts when that is written. So the figure once
//!   written back differs from the one before by those blocks.
//! - A write over blocks a file already has (an image file rewritten in
//!   place), or into space reserved with `fallocate`, is not delayed
//!   allocation: it counts once written back, when the pool copies the
//!   blocks the layer shares with its image, or maps the reserved ones.
//!   The filesystem's own metadata (new inodes, directories) counts once
//!   written too: to ext4's journal at its commit, every 5 s, and in
//!   place later.
//! - xfs keeps no such count; nor is it read for a layer thinlayer does
//!   not hold mounted (a view, a committed layer, an active layer whose
//!   device someone else mounted). Their figures are the pool's alone:
//!   data written back only. When the count cannot be read, a warning
//!   says why and the pool's figure stands alone.
//!
//! # One dump answers many calls
//!
//! The mappings come from a metadata snapshot and a `thin_dump` of the whole
//! pool, whose cost grows with everything the pool maps; containerd's
//! `Usage` (for Kubernetes, every snapshot every 10 s) asks for one layer
//! at a time. So every layer's figures are computed from one dump, and the
//! [`Driver`] handle keeps them for later calls. Several processes share a
//! root, so what is kept is never trusted as it is: before each use it is
//! checked against the kernel and the records, and a new dump is taken
//! unless all of these hold (or, for one layer, those of the next
//! section):
//!
//! 1. the dump finished less than [`SIZES_MAX_AGE`] (2 s) ago;
//! 2. the pool's status (one ioctl, no metadata commit) shows the same
//!    transaction id, data blocks used and metadata blocks used as it did
//!    just before the dump;
//! 3. the records hold the same layers with the same thin ids and parents,
//!    the same transaction id and the same count of trims. Keys may
//!    differ: a commit that renames a layer in place keeps its figures.
//!
//! The status of 2 is read before the dump, so that a change during the
//! dump shows as a difference at the next call, never as a match.
//!
//! Why 2 and 3 see changes: thinlayer moves the pool's transaction id with
//! every thin device it creates or deletes (see [`crate::records`]), and
//! counts in the records every trim it makes at an unmount (see
//! [`crate::fs`]), which unmaps blocks and may free none (blocks shared
//! with the image stay in the pool). So between two equal fingerprints
//! only writes through the devices, and discards thinlayer did not make,
//! change mappings. A write that maps a block (a first write, or the copy
//! of a block shared with the parent) allocates a data block, so data
//! blocks used grows; a write into a block the layer already owns maps
//! nothing new. What 2 can miss, and what 1 is for:
//!
//! - discards made by others (an `fstrim` of a mounted container; layers
//!   are mounted without online discard) that unmap shared blocks, or
//!   free as many blocks as are allocated elsewhere between two calls, so
//!   that data blocks used is back where it was (metadata blocks used then
//!   usually differs, but need not);
//! - a write whose block the kernel allocated before the dump and mapped
//!   after it: a block counts as used when it is allocated, and is mapped
//!   when the write completes.
//!
//! So the rule and its bound: an answer comes from a dump taken after every
//! change to the pool's transaction id, data or metadata blocks used, or
//! the records' layers; and from a metadata snapshot reserved at most
//! [`SIZES_MAX_AGE`] plus the dump's own duration before the call. The age
//! counts from the end of the dump, not its start: a dump that takes longer
//! than the bound (a large pool, a slow machine) must still answer the
//! calls that follow it.
//!
//! # One layer unchanged
//!
//! While other layers are made, removed and written (a Prepare and a
//! Remove every few seconds, a container writing), checks 2 and 3 fail at
//! nearly every call, and a dump per call would cost far more than the
//! calls are worth. So while check 1 holds, the kept dump still answers
//! for a layer whose own mappings it shows as they are now:
//!
//! 4. the records, as the files hold them now, give the layer the thin id
//!    and the parent it had in the dump. Its size is what it maps
//!    differently from its parent, a committed layer (or the base) that
//!    nothing writes;
//! 5. if its device is live, the device maps as many blocks as the dump
//!    shows: the thin target's status, one ioctl of that device alone, the
//!    count the pool keeps in core, without a metadata commit (at
//!    `reserve_metadata_snap` it and the snapshot agree). A device that is
//!    not live passes only if the layer was committed or a view when
//!    dumped, which nothing writes: an active layer's device may have been
//!    made live, written through (or trimmed) and taken down since, with
//!    nothing in its record to show it.
//!
//! A layer the dump does not hold (made since), or one that fails 4 or 5,
//! takes a new dump under the root's lock, as any call did before; a key
//! the records do not hold is not found, without a dump.
//!
//! Writes that map blocks the layer did not map, and trims that unmap
//! some, change its count. What 5 misses is a change that leaves the count
//! as it was: a write that copies a block the layer shares with its parent
//! (an image file rewritten in place: the block is mapped to a new data
//! block instead of the shared one, so its size grows by a block and its
//! count stays), and discards that unmap as many blocks as writes map
//! between two calls. Each goes unseen for as long as the
//! dump answers: [`SIZES_MAX_AGE`] plus the dump's own duration, the bound
//! above.
//!
//! [`Driver::layer_size`], the service's `Usage`, answers from what is kept
//! without the root's lock and without start-up repair when checks 1 and 2
//! pass and the records' files (`state.json` and its journal) are still
//! what was read under the lock when its answers were computed. That costs
//! a `stat` of each and one ioctl, whatever the number of layers (and for
//! an active layer thinlayer holds mounted, the read of its count of data
//! not written back, which is never kept); files
//! saved less than 2 s before they were read are compared byte for byte
//! instead, a read of a few hundred bytes a layer (see `RecordsFile`; the
//! `stat` shortcut trusts the clock not to go back, and check 1 bounds what
//! a clock set back could hide). Failing those, it answers without the
//! lock too when checks 1, 4 and 5 pass for the layer asked: the records
//! as `Store::peek` reads them (a `stat` of their files; a long-running
//! process such as `serve` keeps them in memory, and reads the files again
//! only after another process saved) and at most one ioctl of the layer's
//! device. Anything else takes the lock and runs as every operation does.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use serde::Serialize;

use super::{Driver, Op};
use crate::error::{Error, Result};
use crate::pool::{KernelPoolStatus, Pool, PoolConfig};
use crate::records::{Records, RecordsId, Store};
use crate::thin::{Mappings, Thins, parse_thin_dump};
use crate::tree::{Kind, Layer, Tree};
use crate::units::{BlockSize, Bytes, ThinId};

/// The longest a dump's figures answer for: see the module documentation.
pub const SIZES_MAX_AGE: Duration = Duration::from_secs(2);

/// One layer's sizes: see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerSize {
    /// What it maps differently from its parent.
    pub size: Bytes,
    /// Everything it maps, its parents' blocks included.
    pub virtual_size: Bytes,
}

impl LayerSize {
    /// These sizes with `unwritten` more bytes in each: new data of the
    /// layer's that the pool does not hold yet.
    fn with_unwritten(&self, unwritten: Bytes) -> LayerSize {
        LayerSize {
            size: Bytes(self.size.0.saturating_add(unwritten.0)),
            virtual_size: Bytes(self.virtual_size.0.saturating_add(unwritten.0)),
        }
    }
}

/// The active layers thinlayer holds mounted, by key: those whose figures
/// add the data their filesystem has not written back yet.
fn mounted_active(tree: &Tree) -> BTreeMap<String, ThinId> {
    tree.layers
        .values()
        .filter(|l| l.kind == Kind::Active && l.mounts > 0)
        .map(|l| (l.key.clone(), l.thin_id))
        .collect()
}

/// What the pool's status shows of its mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PoolCounters {
    transaction: u64,
    data_used: u64,
    meta_used: u64,
}

impl PoolCounters {
    fn of(st: &KernelPoolStatus) -> Self {
        PoolCounters {
            transaction: st.transaction,
            data_used: st.data_used,
            meta_used: st.meta_used,
        }
    }
}

/// What a dump's figures depend on, read just before it is taken.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    pool: PoolCounters,
    /// The records' transaction id.
    transaction: u64,
    /// The records' count of trims.
    trims: u64,
    /// Every layer's thin id and its parent's (the base's for a layer on
    /// the base), sorted.
    layers: Vec<(u32, Option<u32>)>,
}

impl Fingerprint {
    fn of(st: &KernelPoolStatus, rec: &Records) -> Self {
        let tree = &rec.tree;
        let mut layers: Vec<(u32, Option<u32>)> = tree
            .layers
            .values()
            .map(|l| (l.thin_id.get(), parent_id(tree, l).map(ThinId::get)))
            .collect();
        layers.sort_unstable();
        Fingerprint {
            pool: PoolCounters::of(st),
            transaction: rec.transaction,
            trims: rec.trims,
            layers,
        }
    }
}

/// What a dump holds of one layer.
struct Dumped {
    /// Its figures; `virtual_size` is the blocks it maps, in bytes.
    size: LayerSize,
    /// Its parent's thin id (the base's for a layer on the base).
    parent: Option<u32>,
    /// Of a kind nothing writes (committed, a view) when dumped: its
    /// mappings stay as they are for as long as its thin id lives.
    read_only: bool,
}

/// Every layer's figures from one dump.
struct Dump {
    /// The handle's count of dumps once this one was taken: names it.
    number: u64,
    /// When it finished.
    ready: Instant,
    fingerprint: Fingerprint,
    /// By thin id.
    by_thin: BTreeMap<u32, Dumped>,
}

impl Dump {
    fn fresh(&self) -> bool {
        self.ready.elapsed() < SIZES_MAX_AGE
    }
}

/// How long the records' files must have been left alone, when read, for
/// an unchanged `stat` to mean unchanged bytes: more than any Linux
/// filesystem's timestamp granularity (a clock tick, a second, FAT's 2 s).
const SETTLED: Duration = Duration::from_secs(2);

/// The records' files (`state.json` and its journal) as read under the
/// root's lock, where nothing writes them.
///
/// A save appends to the journal, or writes new files and renames them
/// over the old, at a time no earlier than the read, give or take the
/// filesystem's timestamp granularity. So if both files were already
/// [`SETTLED`] when read, a save since shows in a `stat` (inode, size,
/// times) and equal `stat`s mean equal bytes. Files read sooner after
/// the last save are compared byte for byte.
struct RecordsFile {
    id: RecordsId,
    /// Each file's bytes (`state.json`, the journal); `None`, a file that
    /// was not there.
    bytes: [Option<Vec<u8>>; 2],
    settled: bool,
}

impl RecordsFile {
    /// The files' bytes, `None` for one that is not there.
    fn bytes(store: &Store) -> Result<[Option<Vec<u8>>; 2]> {
        let read = |path: PathBuf| match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path, e)),
        };
        Ok([read(store.path())?, read(store.journal_path())?])
    }

    fn read(store: &Store) -> Result<RecordsFile> {
        let id = store.identity()?;
        let bytes = Self::bytes(store)?;
        let now = SystemTime::now();
        let settled = std::iter::once(id.state)
            .chain(id.journal)
            .all(|stat| stat.newest() + SETTLED <= now);
        Ok(RecordsFile { id, bytes, settled })
    }

    /// Whether the files hold the same records still; `None` if they
    /// cannot be read.
    fn unchanged(&self, store: &Store) -> Option<bool> {
        if self.settled && store.identity().ok()? == self.id {
            return Some(true);
        }
        Some(Self::bytes(store).ok()? == self.bytes)
    }
}

/// The figures of dump `dump` by key, for the records `records` holds.
struct Answers {
    records: RecordsFile,
    /// Where to read the pool's status, and its block size.
    pool: PoolConfig,
    dump: u64,
    by_key: BTreeMap<String, LayerSize>,
    /// What [`mounted_active`] gives for those records.
    mounted: BTreeMap<String, ThinId>,
}

#[derive(Default)]
struct Kept {
    dump: Option<Dump>,
    answers: Option<Answers>,
}

/// The figures a [`Driver`] keeps between calls, and its count of metadata
/// dumps.
#[derive(Default)]
pub(super) struct SizesCache {
    dumps: AtomicU64,
    kept: Mutex<Kept>,
}

impl SizesCache {
    fn kept(&self) -> MutexGuard<'_, Kept> {
        // Each field is replaced whole: a panic leaves nothing half written.
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The thin id a layer is a snapshot of.
fn parent_id(tree: &Tree, l: &Layer) -> Option<ThinId> {
    match &l.parent {
        Some(p) => tree.layers.get(p).map(|p| p.thin_id),
        None => tree.base,
    }
}

impl Driver {
    /// One layer's sizes, as the service's `Usage` gives them: from the
    /// figures this handle keeps while the module documentation's rule
    /// allows, without the root's lock; otherwise every layer's, as
    /// [`Driver::sizes`] computes them, which are then kept.
    pub fn layer_size(&self, key: &str) -> Result<LayerSize> {
        if let Some(answer) = self.kept_size(key) {
            return answer;
        }
        let op = self.begin()?;
        let (dump, by_key) = op.figures()?;
        // Under the lock no one else writes the records, and `begin` saved
        // whatever it changed: the files hold the records `op` holds.
        let records = RecordsFile::read(&self.store)?;
        let mounted = mounted_active(&op.rec.tree);
        let found = by_key.get(key).cloned();
        let writes_through = mounted.get(key).copied();
        self.sizes.kept().answers = Some(Answers {
            records,
            pool: op.rec.pool.clone(),
            dump,
            by_key,
            mounted,
        });
        self.answer(key, found, writes_through, op.rec.pool.block_size)
    }

    /// `key`'s answer from its figures `found`, with what its filesystem
    /// has not written back yet when it is an active layer of thin id
    /// `mounted` that thinlayer holds mounted.
    fn answer(
        &self,
        key: &str,
        found: Option<LayerSize>,
        mounted: Option<ThinId>,
        block: BlockSize,
    ) -> Result<LayerSize> {
        let size = found.ok_or_else(|| Error::not_found("layer", key))?;
        Ok(match mounted {
            Some(id) => size.with_unwritten(self.unwritten(id, block)),
            None => size,
        })
    }

    /// The new data the filesystem of the active layer of thin id `id`,
    /// which thinlayer holds mounted, has not written back yet, in whole
    /// pool blocks of `block`: see the module documentation. 0 where it
    /// is not known (xfs, not mounted) or cannot be read (with a warning).
    fn unwritten(&self, id: ThinId, block: BlockSize) -> Bytes {
        let target = self.mount_path_of(id);
        match self.kernel.delayed_allocation(&target) {
            Ok(Some(bytes)) => {
                let blocks = block.round_up(bytes);
                if blocks.0 > 0 {
                    tracing::trace!(thin_id = %id, %bytes, "sizes: data not written back yet");
                }
                blocks
            }
            Ok(None) => Bytes(0),
            Err(e) => {
                tracing::warn!(
                    thin_id = %id,
                    error = %e,
                    "sizes: cannot read what the layer has not written back; \
                     counting what the pool holds"
                );
                Bytes(0)
            }
        }
    }

    /// How many times this handle has dumped the pool's metadata (for sizes,
    /// or for the start-up check of thin ids).
    pub fn metadata_dumps(&self) -> u64 {
        self.sizes.dumps.load(Ordering::Relaxed)
    }

    /// The kept answer for `key`, if checks 1 and 2 of the module
    /// documentation pass and the records are the answers' byte for byte;
    /// with what its filesystem has not written back yet, read now.
    fn kept_size(&self, key: &str) -> Option<Result<LayerSize>> {
        let (found, mounted, block) = self.kept_figures(key)?;
        Some(self.answer(key, found, mounted, block))
    }

    /// What [`Driver::kept_size`] answers from: `key`'s kept figures, its
    /// thin id if it is an active layer thinlayer holds mounted, and the
    /// pool's block size. From the kept answers while the pool and the
    /// records are as they were (checks 1 to 3), else from the kept dump if
    /// `key`'s layer is unchanged ([`Driver::unchanged_layer`]).
    fn kept_figures(&self, key: &str) -> Option<(Option<LayerSize>, Option<ThinId>, BlockSize)> {
        let kept = self.sizes.kept();
        let dump = kept.dump.as_ref()?;
        if !dump.fresh() {
            return None;
        }
        if let Some(answers) = kept.answers.as_ref().filter(|a| a.dump == dump.number)
            && let Some(found) = self.unchanged_answers(dump, answers, key)
        {
            return Some(found);
        }
        self.unchanged_layer(dump, key)
    }

    /// `key`'s figures from `answers`, if the records are theirs byte for
    /// byte and the pool's status shows what it showed before `dump`.
    fn unchanged_answers(
        &self,
        dump: &Dump,
        answers: &Answers,
        key: &str,
    ) -> Option<(Option<LayerSize>, Option<ThinId>, BlockSize)> {
        if !answers.records.unchanged(&self.store)? {
            tracing::debug!("sizes: the records changed since the kept answers");
            return None;
        }
        let pool = Pool {
            kernel: &*self.kernel,
            config: &answers.pool,
        };
        let now = PoolCounters::of(&pool.kernel_status().ok()?);
        if now != dump.fingerprint.pool {
            tracing::debug!(
                was = ?dump.fingerprint.pool,
                ?now,
                "sizes: the pool changed since the kept dump"
            );
            return None;
        }
        tracing::trace!(
            key,
            dump = dump.number,
            "sizes: answered from the kept dump"
        );
        Some((
            answers.by_key.get(key).cloned(),
            answers.mounted.get(key).copied(),
            answers.pool.block_size,
        ))
    }

    /// `key`'s figures from `dump` although the pool or the records
    /// changed since, if its layer did not (see the module documentation):
    /// the records, as the files hold them now, give it the thin id and
    /// parent it had in the dump, and its device, if live, maps as many
    /// blocks as the dump shows; one whose device is not live must have
    /// been committed or a view already when dumped. A key the records do
    /// not hold is not found.
    fn unchanged_layer(
        &self,
        dump: &Dump,
        key: &str,
    ) -> Option<(Option<LayerSize>, Option<ThinId>, BlockSize)> {
        let now = self.store.peek(|rec| {
            let config = rec.pool.clone();
            let Some(l) = rec.tree.layers.get(key) else {
                return (config, None);
            };
            let parent = parent_id(&rec.tree, l).map(ThinId::get);
            let mounted = l.kind == Kind::Active && l.mounts > 0;
            (config, Some((l.thin_id, parent, mounted)))
        });
        let (config, layer) = now.ok()?;
        let Some((thin, parent, mounted)) = layer else {
            return Some((None, None, config.block_size));
        };
        let Some(dumped) = dump.by_thin.get(&thin.get()) else {
            tracing::debug!(key, "sizes: a layer the kept dump does not hold");
            return None;
        };
        if dumped.parent != parent {
            tracing::debug!(key, "sizes: the layer's parent changed since the kept dump");
            return None;
        }
        let pool = Pool {
            kernel: &*self.kernel,
            config: &config,
        };
        match (Thins { pool: &pool }).mapped(thin) {
            Ok(mapped) if mapped == dumped.size.virtual_size => {}
            Ok(mapped) => {
                tracing::debug!(
                    key,
                    %mapped,
                    was = %dumped.size.virtual_size,
                    "sizes: the layer's device maps other blocks than in the kept dump"
                );
                return None;
            }
            // Not live (or failed): nothing writes through it now, and
            // nothing did since the dump if it was read-only then.
            Err(_) if dumped.read_only => {}
            Err(e) => {
                tracing::debug!(
                    key,
                    error = %e,
                    "sizes: no count of the layer's device to compare with the kept dump"
                );
                return None;
            }
        }
        tracing::trace!(
            key,
            dump = dump.number,
            "sizes: answered from the kept dump, the layer unchanged"
        );
        Some((
            Some(dumped.size.clone()),
            mounted.then_some(thin),
            config.block_size,
        ))
    }
}

impl Op<'_> {
    /// Every thin device's mappings, read from a metadata snapshot held only
    /// for the duration of the read. A step `dump` of the operation that
    /// asks: serve's metrics count and time the dumps
    /// (`thinlayer_step_duration_seconds{step="dump"}`).
    pub(super) fn kernel_mappings(&self) -> Result<BTreeMap<u32, Mappings>> {
        let _s = crate::step!("dump");
        let pool = self.pool();
        let name = pool.name();
        let meta = pool.metadata_device()?;
        if let Err(e) = self.kernel().dm_message(&name, "reserve_metadata_snap") {
            if e.errno() != Some(Errno::EBUSY) {
                return Err(e);
            }
            // Left held by a killed process: take it over.
            self.kernel().dm_message(&name, "release_metadata_snap")?;
            self.kernel().dm_message(&name, "reserve_metadata_snap")?;
        }
        self.driver.sizes.dumps.fetch_add(1, Ordering::Relaxed);
        let dump = self.kernel().thin_dump_snapshot(&meta);
        let released = self.kernel().dm_message(&name, "release_metadata_snap");
        let maps = parse_thin_dump(&dump?)?;
        released?;
        Ok(maps)
    }

    /// Every layer's sizes by key, with what active layers thinlayer holds
    /// mounted have not written back yet.
    pub(super) fn sizes(&self) -> Result<BTreeMap<String, LayerSize>> {
        let (_, mut by_key) = self.figures()?;
        let block = self.rec.pool.block_size;
        for (key, id) in mounted_active(&self.rec.tree) {
            if let Some(size) = by_key.get_mut(&key) {
                *size = size.with_unwritten(self.driver.unwritten(id, block));
            }
        }
        Ok(by_key)
    }

    /// Every layer's sizes by key, and the number of the dump they come
    /// from: the kept dump's if the module documentation's rule allows,
    /// else a new one's, which is kept.
    fn figures(&self) -> Result<(u64, BTreeMap<String, LayerSize>)> {
        let fingerprint = Fingerprint::of(&self.pool().kernel_status()?, &self.rec);
        let mut kept = self.driver.sizes.kept();
        match &kept.dump {
            Some(d) if d.fresh() && d.fingerprint == fingerprint => {
                tracing::debug!(dump = d.number, "sizes: from the kept dump");
                return Ok((d.number, self.by_key(&d.by_thin)));
            }
            Some(d) if d.fresh() => tracing::debug!(
                was = ?d.fingerprint.pool,
                now = ?fingerprint.pool,
                "sizes: the pool or the layers changed; dumping"
            ),
            Some(_) => tracing::debug!("sizes: the kept dump is too old; dumping"),
            None => tracing::debug!("sizes: nothing kept; dumping"),
        }
        let start = Instant::now();
        let maps = self.kernel_mappings()?;
        let block = self.rec.pool.block_size;
        let empty = Mappings::default();
        let tree = &self.rec.tree;
        let by_thin: BTreeMap<u32, Dumped> = tree
            .layers
            .values()
            .map(|l| {
                let mine = maps.get(&l.thin_id.get()).unwrap_or(&empty);
                let parent = parent_id(tree, l);
                let parent_maps = parent.and_then(|id| maps.get(&id.get()));
                let dumped = Dumped {
                    size: LayerSize {
                        size: block.blocks(mine.own_blocks(parent_maps)),
                        virtual_size: block.blocks(mine.mapped()),
                    },
                    parent: parent.map(ThinId::get),
                    read_only: l.kind.read_only(),
                };
                (l.thin_id.get(), dumped)
            })
            .collect();
        let by_key = self.by_key(&by_thin);
        let number = self.driver.metadata_dumps();
        tracing::debug!(
            dump = number,
            layers = by_thin.len(),
            seconds = start.elapsed().as_secs_f64(),
            "sizes: dumped"
        );
        kept.dump = Some(Dump {
            number,
            ready: Instant::now(),
            fingerprint,
            by_thin,
        });
        kept.answers = None;
        Ok((number, by_key))
    }

    fn by_key(&self, by_thin: &BTreeMap<u32, Dumped>) -> BTreeMap<String, LayerSize> {
        self.rec
            .tree
            .layers
            .values()
            .filter_map(|l| Some((l.key.clone(), by_thin.get(&l.thin_id.get())?.size.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests;
