//! Per-connection state keyed by channel name, kept in a vector.
//!
//! A connection usually holds a handful of subscriptions (at most `client.channel_limit`).
//! hashbrown's smallest table has four slots, which every idle connection with one
//! subscription paid for twice (the session's and the handle's map); a vector grown from one
//! slot costs what is used. Looking a name up among a few is also cheaper than hashing it, and
//! that lookup sits on the delivery path.

/// Channel name → `V`, unordered.
#[derive(Debug)]
pub struct ChannelMap<V> {
    entries: Vec<(String, V)>,
}

impl<V> Default for ChannelMap<V> {
    fn default() -> Self {
        Self { entries: Vec::new() }
    }
}

impl<V> ChannelMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, channel: &str) -> Option<usize> {
        self.entries.iter().position(|(name, _)| name == channel)
    }

    pub fn contains_key(&self, channel: &str) -> bool {
        self.position(channel).is_some()
    }

    pub fn get(&self, channel: &str) -> Option<&V> {
        self.entries.iter().find(|(name, _)| name == channel).map(|(_, value)| value)
    }

    pub fn get_mut(&mut self, channel: &str) -> Option<&mut V> {
        self.entries.iter_mut().find(|(name, _)| name == channel).map(|(_, value)| value)
    }

    /// Inserts or replaces; returns the replaced value.
    pub fn insert(&mut self, channel: String, value: V) -> Option<V> {
        if let Some(index) = self.position(&channel) {
            return Some(std::mem::replace(&mut self.entries[index].1, value));
        }
        if self.entries.len() == self.entries.capacity() {
            // Double from one slot (a plain push would start at four).
            self.entries.reserve_exact(self.entries.len().max(1));
        }
        self.entries.push((channel, value));
        None
    }

    pub fn remove(&mut self, channel: &str) -> Option<V> {
        let index = self.position(channel)?;
        let (_, value) = self.entries.swap_remove(index);
        // Give memory back after a client drops most of its subscriptions.
        if self.entries.capacity() > 4 && self.entries.len() <= self.entries.capacity() / 4 {
            self.entries.shrink_to(self.entries.len() * 2);
        }
        Some(value)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.iter().map(|(name, _)| name)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, value)| value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.entries.iter().map(|(name, value)| (name, value))
    }
}

impl<'a, V> IntoIterator for &'a ChannelMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (String, V)>, fn(&'a (String, V)) -> (&'a String, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(name, value)| (name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_map_and_grows_from_one_slot() {
        let mut map = ChannelMap::new();
        assert!(map.insert("a".to_owned(), 1).is_none());
        assert_eq!(map.entries.capacity(), 1);
        assert_eq!(map.insert("a".to_owned(), 2), Some(1));
        assert_eq!(map.len(), 1);
        for (i, name) in ["b", "c", "d", "e"].into_iter().enumerate() {
            map.insert(name.to_owned(), i + 10);
        }
        assert_eq!(map.get("a"), Some(&2));
        *map.get_mut("c").unwrap() += 100;
        assert_eq!(map.get("c"), Some(&111));
        assert!(map.contains_key("e") && !map.contains_key("z"));
        assert_eq!(map.remove("a"), Some(2));
        assert_eq!(map.remove("a"), None);
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        assert_eq!(keys, ["b", "c", "d", "e"]);
        assert_eq!(map.values().sum::<usize>(), 10 + 111 + 12 + 13);
        assert_eq!((&map).into_iter().count(), 4);
    }

    #[test]
    fn gives_memory_back_after_most_entries_go() {
        let mut map = ChannelMap::new();
        for i in 0..64 {
            map.insert(format!("ch{i}"), i);
        }
        for i in 1..64 {
            map.remove(&format!("ch{i}"));
        }
        assert_eq!(map.len(), 1);
        assert!(map.entries.capacity() <= 4, "{}", map.entries.capacity());
        assert_eq!(map.get("ch0"), Some(&0));
    }
}
