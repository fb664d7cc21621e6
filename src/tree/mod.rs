//! The snapshot tree: which layers exist, what each is built on, and which
//! thin device id holds it. Pure data and rules, no kernel: the driver asks
//! the tree whether an operation is allowed and what it changes, then makes
//! the kernel agree.
//!
//! Every layer is a thin snapshot of its parent; a layer without a parent is
//! a snapshot of the pool's base device (an empty filesystem). Kinds follow
//! containerd's: an *active* layer is writable (a container), a *view* is a
//! read-only active layer, a *committed* layer is read-only and may have
//! children (an image layer).

mod ids;
mod layers;
mod names;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use ids::IdAllocator;
pub use layers::Layers;
pub use names::{ImageRef, validate_container_name, validate_key};

use crate::error::{Error, Result};
use crate::units::{Bytes, ThinId};

/// What a layer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Writable: a container's layer.
    Active,
    /// Read-only snapshot of a committed layer, for looking at it.
    View,
    /// Read-only, the parent of other layers: an image layer.
    Committed,
}

impl Kind {
    /// Its name as records, the CLI and containerd's filters spell it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "committed",
        }
    }

    pub fn read_only(self) -> bool {
        !matches!(self, Kind::Active)
    }
}

/// One layer of the tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// The layer's key: a container name, an image layer id or a containerd
    /// snapshot key.
    pub key: String,
    pub kind: Kind,
    pub thin_id: ThinId,
    /// The key of the committed layer this one is a snapshot of; `None` for
    /// a snapshot of the base device.
    pub parent: Option<String>,
    /// Size of the block device (what `df` inside sees).
    pub device_size: Bytes,
    /// Seconds since the epoch.
    pub created: u64,
    /// The creation time to the nanosecond, since the epoch (`created` is
    /// the same instant in whole seconds); 0 in records made before
    /// thinlayer kept it.
    #[serde(default)]
    pub created_ns: u64,
    /// When its labels or its kind last changed, in nanoseconds since the
    /// epoch (containerd's `updated`); 0 when never, i.e. at creation.
    #[serde(default)]
    pub updated_ns: u64,
    /// Made through the containerd snapshotter API (`thinlayer serve`),
    /// whatever its key. Only these are listed to containerd, whose garbage
    /// collector removes every listed snapshot it has no record of: the
    /// CLI's containers and images must never be among them.
    #[serde(default)]
    pub snapshotter: bool,
    /// The image a container was made from, as the user named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// How many times it is mounted through thinlayer (mount/umount pairs).
    #[serde(default)]
    pub mounts: u32,
    /// Whether its device is kept active between commands (a containerd
    /// snapshot whose mounts containerd performs itself).
    #[serde(default)]
    pub pinned: bool,
}

impl Layer {
    /// The committed layer `key` this active layer becomes, at `at_ns`
    /// nanoseconds since the epoch: unpinned, unmounted, its thin id and
    /// labels still this one's.
    pub fn committed_as(&self, key: &str, at_ns: u64) -> Layer {
        Layer {
            key: key.to_string(),
            kind: Kind::Committed,
            pinned: false,
            mounts: 0,
            created: at_ns / 1_000_000_000,
            created_ns: at_ns,
            updated_ns: 0,
            ..self.clone()
        }
    }

    /// The creation time in nanoseconds since the epoch (whole seconds
    /// for layers recorded before nanoseconds were kept).
    pub fn created_at_ns(&self) -> u64 {
        if self.created_ns != 0 {
            self.created_ns
        } else {
            self.created.saturating_mul(1_000_000_000)
        }
    }

    /// The time of the last change, in nanoseconds since the epoch: the
    /// creation time until its labels or kind change.
    pub fn updated_at_ns(&self) -> u64 {
        if self.updated_ns != 0 {
            self.updated_ns
        } else {
            self.created_at_ns()
        }
    }
}

/// A named image: a reference to its top committed layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `name:tag`
    pub name: String,
    pub top: String,
    pub created: u64,
    /// The image's OCI config, when it came from an archive (for history,
    /// inspect and export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
}

/// A layer taken out of the tree whose device, mount and thin id have not
/// all gone yet: it is gone for every caller, and its kernel work is done
/// later, in the background or by whoever asks for the space (see the
/// driver's removal module). Its thin id stays taken until it is done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub thin_id: ThinId,
    /// The key the layer had (for logs and `thinlayer tree`).
    pub key: String,
    /// Its device's size: what a discard covers.
    pub device_size: Bytes,
    /// Whether its blocks are discarded before the thin id is deleted (a
    /// view's device is read-only and maps nothing of its own).
    pub discard: bool,
    /// When it was removed, nanoseconds since the epoch.
    pub removed_ns: u64,
}

/// A snapshot of a committed layer (or of the base) made ahead of the
/// Prepare that will want it, mounted under the root, so that the Prepare
/// only claims it: see the driver's spares module. Never a layer: no key,
/// never listed, dropped before its parent goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spare {
    pub thin_id: ThinId,
    /// The committed layer it holds a copy of (a snapshot of it, or the
    /// device the layer was itself snapshotted from at its Commit); `None`
    /// for the base.
    pub parent: Option<String>,
    /// Its device's size (its parent's).
    pub device_size: Bytes,
    /// Mounted under the root and ready to be claimed.
    #[serde(default)]
    pub mounted: bool,
}

/// The whole tree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// The base device: an empty filesystem every parentless layer starts from.
    pub base: Option<ThinId>,
    pub layers: Layers,
    pub images: BTreeMap<String, Image>,
    /// Thin ids no layer owns any more whose devices were still open when
    /// they were let go: an active layer committed while mounted keeps
    /// its old device (and thin id) for whoever holds the mount, while the
    /// committed layer is a snapshot of it taken at commit time. Each is
    /// deleted once its device has closed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<ThinId>,
    /// Layers removed whose kernel work is still to do, by thin id (in
    /// decimal).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub removals: BTreeMap<String, Removal>,
    /// Snapshots made ahead of Prepares.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spares: Vec<Spare>,
}

impl Tree {
    pub fn get(&self, key: &str) -> Result<&Layer> {
        self.layers
            .get(key)
            .ok_or_else(|| Error::not_found("layer", key))
    }

    pub fn get_mut(&mut self, key: &str) -> Result<&mut Layer> {
        self.layers
            .get_mut(key)
            .ok_or_else(|| Error::not_found("layer", key))
    }

    /// Keys of the layers built directly on `key`.
    pub fn children(&self, key: &str) -> Vec<String> {
        self.layers
            .values()
            .filter(|l| l.parent.as_deref() == Some(key))
            .map(|l| l.key.clone())
            .collect()
    }

    /// Keys of the layers mounted through thinlayer.
    pub fn mounted(&self) -> Vec<String> {
        self.layers
            .values()
            .filter(|l| l.mounts > 0)
            .map(|l| l.key.clone())
            .collect()
    }

    /// Every thin id in use: the base's, the layers', and the retired,
    /// removed and spare ones.
    pub fn thin_ids(&self) -> impl Iterator<Item = ThinId> + '_ {
        self.base
            .into_iter()
            .chain(self.layers.values().map(|l| l.thin_id))
            .chain(self.retired.iter().copied())
            .chain(self.removals.values().map(|r| r.thin_id))
            .chain(self.spares.iter().map(|s| s.thin_id))
    }

    /// Whether thin id `id` belongs to a removal not yet done.
    pub fn is_removal(&self, id: ThinId) -> bool {
        self.removals.contains_key(&id.to_string())
    }

    /// Records the removal of thin id `id`.
    pub fn add_removal(&mut self, r: Removal) {
        self.removals.insert(r.thin_id.to_string(), r);
    }

    /// The chain from `key` down to the layer just above the base.
    pub fn ancestry(&self, key: &str) -> Result<Vec<&Layer>> {
        let mut chain = Vec::new();
        let mut next = Some(key.to_string());
        while let Some(k) = next {
            let l = self.get(&k)?;
            if chain.len() > self.layers.len() {
                return Err(Error::CorruptTree {
                    key: key.to_string(),
                    why: "its parent chain loops".into(),
                });
            }
            next = l.parent.clone();
            chain.push(l);
        }
        Ok(chain)
    }

    /// Checks that a new layer `key` may be made on `parent`, and returns the
    /// parent's thin id (the base's when `parent` is `None`).
    pub fn check_new(&self, key: &str, parent: Option<&str>) -> Result<ThinId> {
        if self.layers.contains_key(key) {
            return Err(Error::Exists {
                kind: "layer",
                name: key.to_string(),
            });
        }
        match parent {
            None => self
                .base
                .ok_or_else(|| Error::not_found("base layer", "(pool not initialised)")),
            Some(p) => {
                let l = self.get(p)?;
                if l.kind != Kind::Committed {
                    return Err(Error::invalid(
                        "parent",
                        p,
                        "only committed layers can have children; commit it first",
                    ));
                }
                Ok(l.thin_id)
            }
        }
    }

    /// Checks that `key` may be removed: it exists, is not mounted, has no children.
    pub fn check_remove(&self, key: &str) -> Result<&Layer> {
        let l = self.get(key)?;
        // Only a committed layer can have children.
        let children = if l.kind == Kind::Committed {
            self.children(key)
        } else {
            Vec::new()
        };
        if !children.is_empty() {
            return Err(Error::HasChildren {
                name: key.to_string(),
                children,
            });
        }
        if l.mounts > 0 {
            return Err(Error::Busy {
                kind: "layer",
                name: key.to_string(),
                why: format!("mounted {} time(s); unmount it first", l.mounts),
            });
        }
        if let Some(img) = self.images.values().find(|i| i.top == key) {
            return Err(Error::Busy {
                kind: "layer",
                name: key.to_string(),
                why: format!("it is the top layer of image {}", img.name),
            });
        }
        Ok(l)
    }

    /// Image layers that nothing needs once `image` is gone: walking down from
    /// its top, each layer with no other child, no other image on it.
    pub fn unreferenced_below(&self, image: &str) -> Vec<String> {
        let Some(img) = self.images.get(image) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut next = Some(img.top.clone());
        while let Some(k) = next {
            let Some(l) = self.layers.get(&k) else { break };
            let other_children = self
                .children(&k)
                .into_iter()
                .filter(|c| !out.contains(c))
                .count();
            let other_images = self
                .images
                .values()
                .filter(|i| i.name != image && i.top == k)
                .count();
            if other_children > 0 || other_images > 0 || l.kind != Kind::Committed {
                break;
            }
            out.push(k);
            next = l.parent.clone();
        }
        out
    }

    /// Containers (active layers) made from any layer of this image's chain
    /// that would otherwise be removed.
    pub fn image_users(&self, image: &str) -> Vec<String> {
        let Some(img) = self.images.get(image) else {
            return Vec::new();
        };
        self.layers
            .values()
            .filter(|l| l.kind != Kind::Committed)
            .filter(|l| {
                l.image.as_deref() == Some(image) || l.parent.as_deref() == Some(img.top.as_str())
            })
            .map(|l| l.key.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(key: &str, id: u32, parent: Option<&str>, kind: Kind) -> Layer {
        Layer {
            key: key.into(),
            kind,
            thin_id: ThinId::new(id).unwrap(),
            parent: parent.map(Into::into),
            device_size: Bytes(10 << 30),
            created: 0,
            created_ns: 0,
            updated_ns: 0,
            snapshotter: false,
            image: None,
            labels: BTreeMap::new(),
            mounts: 0,
            pinned: false,
        }
    }

    fn sample() -> Tree {
        let mut t = Tree {
            base: Some(ThinId::new(1).unwrap()),
            ..Tree::default()
        };
        for l in [
            layer("l1", 2, None, Kind::Committed),
            layer("l2", 3, Some("l1"), Kind::Committed),
            layer("c1", 4, Some("l2"), Kind::Active),
        ] {
            t.layers.insert(l.key.clone(), l);
        }
        t.images.insert(
            "app:latest".into(),
            Image {
                name: "app:latest".into(),
                top: "l2".into(),
                created: 0,
                config: None,
            },
        );
        t
    }

    #[test]
    fn new_layers_need_a_committed_parent_and_a_free_key() {
        let t = sample();
        assert_eq!(t.check_new("c2", Some("l2")).unwrap().get(), 3);
        assert_eq!(t.check_new("c2", None).unwrap().get(), 1);
        assert!(matches!(
            t.check_new("c1", Some("l2")),
            Err(Error::Exists { .. })
        ));
        assert!(matches!(
            t.check_new("c2", Some("c1")),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(
            t.check_new("c2", Some("nope")),
            Err(Error::NotFound { .. })
        ));
    }

    #[test]
    fn removal_is_refused_with_children_mounts_or_tags() {
        let mut t = sample();
        assert!(matches!(
            t.check_remove("l1"),
            Err(Error::HasChildren { .. })
        ));
        assert!(matches!(
            t.check_remove("l2"),
            Err(Error::HasChildren { .. })
        ));
        t.get_mut("c1").unwrap().mounts = 1;
        assert!(matches!(t.check_remove("c1"), Err(Error::Busy { .. })));
        t.get_mut("c1").unwrap().mounts = 0;
        assert!(t.check_remove("c1").is_ok());
        t.layers.remove("c1");
        assert!(
            matches!(t.check_remove("l2"), Err(Error::Busy { .. })),
            "tagged image top"
        );
    }

    #[test]
    fn image_removal_frees_only_unshared_layers() {
        let mut t = sample();
        t.layers.remove("c1");
        assert_eq!(
            t.unreferenced_below("app:latest"),
            vec!["l2".to_string(), "l1".to_string()]
        );
        // A second image on l1 keeps it.
        t.images.insert(
            "base:1".into(),
            Image {
                name: "base:1".into(),
                top: "l1".into(),
                created: 0,
                config: None,
            },
        );
        assert_eq!(t.unreferenced_below("app:latest"), vec!["l2".to_string()]);
    }

    #[test]
    fn ancestry_walks_to_the_base() {
        let t = sample();
        let keys: Vec<_> = t
            .ancestry("c1")
            .unwrap()
            .iter()
            .map(|l| l.key.as_str())
            .collect();
        assert_eq!(keys, ["c1", "l2", "l1"]);
    }

    #[test]
    fn a_looping_parent_chain_is_a_damaged_tree_not_bad_input() {
        let mut t = sample();
        t.get_mut("l1").unwrap().parent = Some("l2".into());
        let e = t.ancestry("c1").unwrap_err();
        assert!(
            matches!(&e, Error::CorruptTree { key, .. } if key == "c1"),
            "{e}"
        );
    }
}
