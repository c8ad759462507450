//! The replay cache: (keyId, signature) pairs seen within the time window. A signature older
//! than the window is refused by the window check, so an entry is needed only that long.
//!
//! Only signatures that verified against a trusted key are remembered, so only holders of
//! trusted keys can fill the cache; it is bounded all the same, and when full the oldest entry
//! gives way (counted, so an operator sees it).

use std::collections::{HashSet, VecDeque};

#[derive(Debug)]
pub struct ReplayCache {
    seen: HashSet<(String, Vec<u8>)>,
    /// Insertion order with each entry's expiry (signature time + window), unix seconds.
    order: VecDeque<(i64, (String, Vec<u8>))>,
    capacity: usize,
    evicted: u64,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        ReplayCache {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    pub fn contains(&self, key_id: &str, value: &[u8]) -> bool {
        // A lookup without allocating is not possible with a tuple key; signatures are
        // checked only where a policy asks, so one small allocation is acceptable.
        self.seen.contains(&(key_id.to_owned(), value.to_vec()))
    }

    /// Remembers a pair until `expires` (unix seconds); `false` if it was already there.
    pub fn insert(&mut self, key_id: &str, value: &[u8], expires: i64, now: i64) -> bool {
        self.expire(now);
        let entry = (key_id.to_owned(), value.to_vec());
        if self.seen.contains(&entry) {
            return false;
        }
        while self.order.len() >= self.capacity {
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
                self.evicted += 1;
            }
        }
        self.seen.insert(entry.clone());
        self.order.push_back((expires, entry));
        true
    }

    /// Drops entries whose window has passed. Entries are in arrival order, not expiry
    /// order, so one that outlives its neighbours may stay a little longer; never shorter.
    pub fn expire(&mut self, now: i64) {
        while let Some((expires, _)) = self.order.front() {
            if *expires >= now {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }

    /// Takes over another cache's entries, oldest first, within this one's bound (a reload
    /// that changes the capacity keeps refusing what was seen).
    pub fn absorb(&mut self, other: ReplayCache) {
        for (expires, (key_id, value)) in other.order {
            self.insert(&key_id, &value, expires, i64::MIN);
        }
        self.evicted += other.evicted;
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Entries pushed out unexpired because the cache was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_pairs_are_refused_until_they_expire() {
        let mut c = ReplayCache::new(10);
        assert!(c.insert("k", b"v1", 100, 0));
        assert!(!c.insert("k", b"v1", 100, 50));
        assert!(c.insert("k2", b"v1", 100, 50));
        assert!(c.contains("k", b"v1"));
        assert!(c.insert("k", b"v1", 300, 101));
        assert_eq!(c.len(), 1, "both window-old entries went");
    }

    #[test]
    fn bounded() {
        let mut c = ReplayCache::new(3);
        for i in 0..10u8 {
            assert!(c.insert("k", &[i], 1000, 0));
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.evicted(), 7);
        assert!(c.contains("k", &[9]));
        assert!(!c.contains("k", &[0]));
    }
}
