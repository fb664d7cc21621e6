//! The tree's layers by key, each held behind an [`Arc`]: a copy of the
//! records (every operation starts from one) copies pointers, not layers,
//! and telling what an operation changed compares pointers before values.
//! A change to a layer copies that layer alone, when it is shared.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::ops::Index;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Layer;

/// Layers by key, as a map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Layers(BTreeMap<String, Arc<Layer>>);

impl Layers {
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&Layer>
    where
        String: Borrow<Q>,
    {
        self.0.get(key).map(|l| &**l)
    }

    /// The layer, to change: copied first if another copy of the records
    /// shares it.
    pub fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut Layer>
    where
        String: Borrow<Q>,
    {
        self.0.get_mut(key).map(Arc::make_mut)
    }

    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        String: Borrow<Q>,
    {
        self.0.contains_key(key)
    }

    pub fn insert(&mut self, key: String, layer: Layer) -> Option<Layer> {
        self.0
            .insert(key, Arc::new(layer))
            .map(Arc::unwrap_or_clone)
    }

    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<Layer>
    where
        String: Borrow<Q>,
    {
        self.0.remove(key).map(Arc::unwrap_or_clone)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &String> + Clone {
        self.0.keys()
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Layer> + Clone {
        self.0.values().map(|l| &**l)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Layer> {
        self.0.values_mut().map(Arc::make_mut)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&String, &Layer)> + Clone {
        self.0.iter().map(|(k, l)| (k, &**l))
    }

    pub fn into_keys(self) -> impl Iterator<Item = String> {
        self.0.into_keys()
    }

    /// What takes `from` to `self`: each layer that differs, `None` for
    /// those gone. A layer neither changed is one pointer compared.
    pub fn changes_from(&self, from: &Layers) -> BTreeMap<String, Option<Layer>> {
        use std::cmp::Ordering::{Equal, Greater, Less};
        let mut out = BTreeMap::new();
        let (mut a, mut b) = (from.0.iter().peekable(), self.0.iter().peekable());
        loop {
            let order = match (a.peek(), b.peek()) {
                (None, None) => return out,
                (Some(_), None) => Less,
                (None, Some(_)) => Greater,
                (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
            };
            match order {
                Less => {
                    let (k, _) = a.next().expect("peeked");
                    out.insert(k.clone(), None);
                }
                Greater => {
                    let (k, v) = b.next().expect("peeked");
                    out.insert(k.clone(), Some(Layer::clone(v)));
                }
                Equal => {
                    let ((_, va), (k, vb)) = (a.next().expect("peeked"), b.next().expect("peeked"));
                    if !Arc::ptr_eq(va, vb) && va != vb {
                        out.insert(k.clone(), Some(Layer::clone(vb)));
                    }
                }
            }
        }
    }
}

impl<Q: Ord + ?Sized> Index<&Q> for Layers
where
    String: Borrow<Q>,
{
    type Output = Layer;

    fn index(&self, key: &Q) -> &Layer {
        self.get(key).expect("no such layer")
    }
}

impl FromIterator<(String, Layer)> for Layers {
    fn from_iter<I: IntoIterator<Item = (String, Layer)>>(iter: I) -> Self {
        Layers(iter.into_iter().map(|(k, l)| (k, Arc::new(l))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Kind;
    use crate::units::{Bytes, ThinId};

    fn layer(key: &str, id: u32) -> Layer {
        Layer {
            key: key.into(),
            kind: Kind::Active,
            thin_id: ThinId::new(id).unwrap(),
            parent: None,
            device_size: Bytes(1 << 30),
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

    #[test]
    fn a_copy_shares_its_layers_until_one_changes() {
        let mut a = Layers::default();
        a.insert("x".into(), layer("x", 2));
        a.insert("y".into(), layer("y", 3));
        let mut b = a.clone();
        assert!(Arc::ptr_eq(&a.0["x"], &b.0["x"]));
        assert!(b.changes_from(&a).is_empty());
        b.get_mut("x").unwrap().mounts = 1;
        assert_eq!(a["x"].mounts, 0, "the other copy is left alone");
        assert!(Arc::ptr_eq(&a.0["y"], &b.0["y"]));
        b.remove("y");
        b.insert("z".into(), layer("z", 4));
        let changes = b.changes_from(&a);
        assert_eq!(changes.len(), 3);
        assert_eq!(changes["x"].as_ref().unwrap().mounts, 1);
        assert_eq!(changes["y"], None);
        assert_eq!(changes["z"].as_ref().unwrap().thin_id.get(), 4);
        // Changed and changed back: equal again, though copied.
        b.get_mut("x").unwrap().mounts = 0;
        assert!(!b.changes_from(&a).contains_key("x"));
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<Layers>(&json).unwrap(), b);
    }
}
