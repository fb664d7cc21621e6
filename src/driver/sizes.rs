//! Sizes as `docker ps -s` shows them, exact from the pool's metadata.
//!
//! - `size`: the blocks this layer maps differently from its parent, i.e.
//!   what it wrote (for a container: its own data and filesystem metadata
//!   changes; for an image layer: the layer's content).
//! - `virtual_size`: every block the layer maps, its parent's included:
//!   what a container sees, image plus its own writes.
//!
//! Both are whole pool blocks: a 4 KiB write costs one block (64 KiB by
//! default). Data a container has written but not yet flushed from the page
//! cache is not in the pool yet and not counted.

use std::collections::BTreeMap;

use nix::errno::Errno;
use serde::Serialize;

use super::Op;
use crate::error::Result;
use crate::thin::{Mappings, parse_thin_dump};
use crate::units::Bytes;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerSize {
    pub size: Bytes,
    pub virtual_size: Bytes,
}

impl Op<'_> {
    /// Every thin device's mappings, read from a metadata snapshot held only
    /// for the duration of the read.
    pub(super) fn kernel_mappings(&self) -> Result<BTreeMap<u32, Mappings>> {
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
        let dump = self.kernel().thin_dump_snapshot(&meta, None);
        let released = self.kernel().dm_message(&name, "release_metadata_snap");
        let maps = parse_thin_dump(&dump?)?;
        released?;
        Ok(maps)
    }

    pub(super) fn sizes(&self) -> Result<BTreeMap<String, LayerSize>> {
        let maps = self.kernel_mappings()?;
        let block = self.rec.pool.block_size;
        let empty = Mappings::default();
        let tree = &self.rec.tree;
        let mut out = BTreeMap::new();
        for l in tree.layers.values() {
            let mine = maps.get(&l.thin_id.get()).unwrap_or(&empty);
            let parent_id = match &l.parent {
                Some(p) => tree.layers.get(p).map(|p| p.thin_id),
                None => tree.base,
            };
            let parent = parent_id.and_then(|id| maps.get(&id.get()));
            out.insert(
                l.key.clone(),
                LayerSize {
                    size: block.blocks(mine.own_blocks(parent)),
                    virtual_size: block.blocks(mine.mapped()),
                },
            );
        }
        Ok(out)
    }
}
