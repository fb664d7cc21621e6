//! What the containerd snapshotter service ([`crate::service`]) needs of the
//! driver beyond the CLI's operations: a snapshot made and its device made
//! live in one operation, a commit that carries the new labels in the same
//! record write, and labels that can be replaced and removed, not only added.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::Driver;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::tree::{Kind, Layer, validate_key};

impl Driver {
    /// Creates a pinned layer `key` on `parent` (containerd's Prepare for
    /// [`Kind::Active`], View for [`Kind::View`]) and returns it with the node
    /// of its live device, which the caller mounts itself.
    pub fn create_snapshot(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: BTreeMap<String, String>,
    ) -> Result<(Layer, PathBuf)> {
        if kind == Kind::Committed {
            return Err(Error::invalid(
                "snapshot kind",
                "committed",
                "a snapshot is created active or as a view, then committed",
            ));
        }
        validate_key(key)?;
        let mut op = self.begin()?;
        let layer = op.create_layer(key, parent, kind, None, labels, true)?;
        let (dev, _) = op.activate(&layer)?;
        Ok((layer, dev))
    }

    /// Commits the active layer `key` as the committed layer `name` with
    /// exactly `labels` (containerd's Commit: the active key is consumed and
    /// the committed snapshot gets the labels of the request). The device is
    /// deactivated first, so whoever mounted it must have unmounted it. The
    /// layer, its new key and its labels are written in one record update.
    pub fn commit_snapshot(
        &self,
        key: &str,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Layer> {
        validate_key(name)?;
        let mut op = self.begin()?;
        // Changed in memory only: `commit` checks the layer before it writes,
        // and the records are not saved if it refuses.
        op.rec.tree.get_mut(key)?.labels = labels;
        let layer = op.commit(key, name)?;
        failpoint::hit("commit.after-record");
        Ok(layer)
    }

    /// Changes a layer's labels with `edit` (which may refuse) and saves
    /// them; returns the layer as it now is.
    pub fn edit_labels(
        &self,
        key: &str,
        edit: impl FnOnce(&mut BTreeMap<String, String>) -> Result<()>,
    ) -> Result<Layer> {
        let mut op = self.begin()?;
        let l = op.rec.tree.get_mut(key)?;
        edit(&mut l.labels)?;
        l.updated_ns = super::now_ns();
        let l = l.clone();
        op.save()?;
        failpoint::hit("labels.after-record");
        Ok(l)
    }
}
