//! A bounded map ordered by last use: a hash map from key to slot, and the slots in a `Vec`
//! linked into a list by index, most recently seen first. Looking up, moving a key to the
//! front, evicting the coldest key and dropping a stale one each touch a fixed number of
//! slots, so no operation scans the table.

use std::{collections::HashMap, hash::Hash};

/// No slot.
const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Slot<K, V> {
    key: K,
    value: V,
    last_ns: u64,
    /// Towards the most recently seen end.
    newer: u32,
    /// Towards the least recently seen end.
    older: u32,
}

/// At most `capacity` keys with their values, least recently seen evicted first.
#[derive(Debug)]
pub(super) struct Lru<K, V> {
    index: HashMap<K, u32>,
    slots: Vec<Slot<K, V>>,
    /// Slots of removed keys, reused before the `Vec` grows.
    free: Vec<u32>,
    /// Most recently seen.
    head: u32,
    /// Least recently seen.
    tail: u32,
    capacity: usize,
    evicted: u64,
    touched: u64,
}

impl<K: Copy + Eq + Hash, V> Lru<K, V> {
    /// An empty map for at most `capacity` keys (at least one).
    pub(super) fn new(capacity: usize) -> Self {
        Lru {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity: capacity.clamp(1, NIL as usize - 1),
            evicted: 0,
            touched: 0,
        }
    }

    /// Changes the size; keys beyond a smaller one go, least recently seen first.
    pub(super) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.clamp(1, NIL as usize - 1);
        while self.index.len() > self.capacity {
            self.evict_coldest();
        }
    }

    /// Number of keys.
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// Keys evicted to make room for others.
    pub(super) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Slots touched so far (looked up, linked, evicted or expired): the work done.
    #[cfg(test)]
    pub(super) fn touched(&self) -> u64 {
        self.touched
    }

    /// The value of `key`, now the most recently seen at `now_ns`; a new key gets `new()`,
    /// evicting the least recently seen key when the map is full.
    pub(super) fn touch_or_insert(
        &mut self,
        key: K,
        now_ns: u64,
        new: impl FnOnce() -> V,
    ) -> &mut V {
        self.touched += 1;
        let i = match self.index.get(&key) {
            Some(&i) => {
                self.unlink(i);
                i
            }
            None => {
                if self.index.len() >= self.capacity {
                    self.evict_coldest();
                }
                let slot = Slot {
                    key,
                    value: new(),
                    last_ns: now_ns,
                    newer: NIL,
                    older: NIL,
                };
                let i = match self.free.pop() {
                    Some(i) => {
                        self.slots[i as usize] = slot;
                        i
                    }
                    None => {
                        self.slots.push(slot);
                        // Below NIL: `capacity` is.
                        (self.slots.len() - 1) as u32
                    }
                };
                self.index.insert(key, i);
                i
            }
        };
        self.push_front(i);
        let slot = &mut self.slots[i as usize];
        slot.last_ns = now_ns;
        &mut slot.value
    }

    /// Forgets `key`.
    pub(super) fn remove(&mut self, key: &K) {
        if let Some(i) = self.index.remove(key) {
            self.touched += 1;
            self.unlink(i);
            self.free.push(i);
        }
    }

    /// Drops up to `limit` keys last seen `horizon_ns` or longer before `now_ns`, coldest
    /// first; stops at the first key seen more recently.
    pub(super) fn expire(&mut self, now_ns: u64, horizon_ns: u64, limit: usize) {
        for _ in 0..limit {
            let Some(slot) = self.slots.get(self.tail as usize) else {
                return;
            };
            self.touched += 1;
            if now_ns.saturating_sub(slot.last_ns) < horizon_ns {
                return;
            }
            let key = slot.key;
            self.remove(&key);
        }
    }

    fn evict_coldest(&mut self) {
        if let Some(slot) = self.slots.get(self.tail as usize) {
            let key = slot.key;
            self.remove(&key);
            self.evicted += 1;
        }
    }

    /// Takes slot `i` out of the list.
    fn unlink(&mut self, i: u32) {
        let (newer, older) = {
            let s = &self.slots[i as usize];
            (s.newer, s.older)
        };
        match newer {
            NIL => self.head = older,
            n => self.slots[n as usize].older = older,
        }
        match older {
            NIL => self.tail = newer,
            o => self.slots[o as usize].newer = newer,
        }
        let s = &mut self.slots[i as usize];
        s.newer = NIL;
        s.older = NIL;
    }

    /// Links slot `i` (out of the list) in as the most recently seen.
    fn push_front(&mut self, i: u32) {
        let old_head = self.head;
        self.slots[i as usize].older = old_head;
        self.slots[i as usize].newer = NIL;
        match old_head {
            NIL => self.tail = i,
            h => self.slots[h as usize].newer = i,
        }
        self.head = i;
    }

    /// Keys from the least to the most recently seen.
    #[cfg(test)]
    pub(super) fn keys_coldest_first(&self) -> Vec<K> {
        let mut keys = Vec::with_capacity(self.index.len());
        let mut i = self.tail;
        while i != NIL && keys.len() <= self.index.len() {
            keys.push(self.slots[i as usize].key);
            i = self.slots[i as usize].newer;
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_seen() {
        let mut lru: Lru<u32, ()> = Lru::new(3);
        for k in [1, 2, 3] {
            lru.touch_or_insert(k, u64::from(k), || ());
        }
        // Seeing 1 again makes 2 the coldest.
        lru.touch_or_insert(1, 4, || ());
        assert_eq!(lru.keys_coldest_first(), [2, 3, 1]);
        lru.touch_or_insert(4, 5, || ());
        assert_eq!(lru.keys_coldest_first(), [3, 1, 4]);
        assert_eq!(lru.evicted(), 1);
        // A removed key's slot is reused, and the order holds.
        lru.remove(&1);
        lru.touch_or_insert(5, 6, || ());
        assert_eq!(lru.keys_coldest_first(), [3, 4, 5]);
        assert_eq!(lru.slots.len(), 3);
        lru.set_capacity(1);
        assert_eq!(lru.keys_coldest_first(), [5]);
        assert_eq!(lru.evicted(), 3);
    }

    #[test]
    fn expiry_takes_only_stale_keys_from_the_cold_end() {
        let mut lru: Lru<u32, ()> = Lru::new(10);
        for k in 0..6 {
            lru.touch_or_insert(k, u64::from(k) * 10, || ());
        }
        // Horizon 25 at t = 50: keys seen at 0, 10 and 20 are stale; at most 2 go per call.
        lru.expire(50, 25, 2);
        assert_eq!(lru.keys_coldest_first(), [2, 3, 4, 5]);
        lru.expire(50, 25, usize::MAX);
        assert_eq!(lru.keys_coldest_first(), [3, 4, 5]);
        assert_eq!(lru.evicted(), 0, "expiry is not eviction");
    }
}
