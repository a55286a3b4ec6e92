//! A map kept in a vector, for the few entries a connection has (the conversations it
//! follows, the rooms it joined, its typing indicators): an empty one allocates nothing
//! and one entry costs one element, where a `HashMap` allocates room for three at least
//! (≈ 300 bytes for a subscription) on every connection in a room. Lookups scan, which
//! for a handful of entries is as fast as hashing; the API is the `HashMap` subset the
//! sessions use.

use std::borrow::Borrow;

#[derive(Debug, Clone)]
pub struct VecMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap {
            entries: Vec::new(),
        }
    }
}

impl<K: Eq, V> VecMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    fn position<Q: ?Sized + Eq>(&self, k: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
    {
        self.entries.iter().position(|(key, _)| key.borrow() == k)
    }

    pub fn get<Q: ?Sized + Eq>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.position(k).map(|i| &self.entries[i].1)
    }

    pub fn get_mut<Q: ?Sized + Eq>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.position(k).map(|i| &mut self.entries[i].1)
    }

    pub fn get_key_value<Q: ?Sized + Eq>(&self, k: &Q) -> Option<(&K, &V)>
    where
        K: Borrow<Q>,
    {
        self.position(k)
            .map(|i| (&self.entries[i].0, &self.entries[i].1))
    }

    pub fn contains_key<Q: ?Sized + Eq>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.position(k).is_some()
    }

    /// Insert or replace; the value replaced, if any.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        match self.position(&k) {
            Some(i) => Some(std::mem::replace(&mut self.entries[i].1, v)),
            None => {
                // One more element, not a doubling: a connection rarely has many.
                self.entries.reserve_exact(1);
                self.entries.push((k, v));
                None
            }
        }
    }

    pub fn remove<Q: ?Sized + Eq>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let v = self.position(k).map(|i| self.entries.swap_remove(i).1);
        if self.entries.is_empty() {
            self.entries = Vec::new(); // give the memory back
        }
        v
    }

    /// The value for `k`, inserted with `make` when missing.
    pub fn get_or_insert_with(&mut self, k: K, make: impl FnOnce() -> V) -> &mut V {
        let i = match self.position(&k) {
            Some(i) => i,
            None => {
                self.entries.reserve_exact(1);
                self.entries.push((k, make()));
                self.entries.len() - 1
            }
        };
        &mut self.entries[i].1
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn into_keys(self) -> impl Iterator<Item = K> {
        self.entries.into_iter().map(|(k, _)| k)
    }

    /// Keep the entries `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }
}

impl<K, V> IntoIterator for VecMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn behaves_like_the_map_it_replaces() {
        let mut m: VecMap<Arc<str>, u32> = VecMap::new();
        assert_eq!(m.insert(Arc::from("a"), 1), None);
        assert_eq!(m.insert(Arc::from("b"), 2), None);
        assert_eq!(m.insert(Arc::from("a"), 3), Some(1));
        assert_eq!(m.get("a"), Some(&3));
        assert!(m.contains_key("b") && !m.contains_key("c"));
        *m.get_mut("b").unwrap() += 10;
        assert_eq!(*m.get_or_insert_with(Arc::from("c"), || 7), 7);
        assert_eq!(m.len(), 3);
        assert_eq!(m.remove("b"), Some(12));
        assert_eq!(m.remove("b"), None);
        m.retain(|k, _| &**k != "c");
        assert_eq!(m.keys().map(|k| k.to_string()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(m.remove("a"), Some(3));
        assert!(m.is_empty());
    }
}
