//! The set of call keys a data dir has rated: exactly-once rating of CDRs asks it once per
//! record, in file order (`batch.rs`, the ordered pass).
//!
//! A key is the xxh3-128 hash of a call id (`batch::call_key`): its low 64 bits are already
//! uniform, so they index an open-addressing table directly (linear probing, at most half
//! full), and the slot a key will be looked up in is known before the lookup — the ordered
//! pass prefetches it a few records ahead ([`CallKeys::prefetch`]). With a `HashSet<u128>`
//! the month file's 2M keys (a 64 MB table) were two dependent cache misses per record, the
//! control bytes and the bucket, 62% of the ordered pass's samples (`perf annotate`,
//! BENCHMARKS.md "Batch, 2026-12-05 (second session)"), and no way to ask for them ahead.

/// A set of 128-bit call keys. The empty slot is 0; a key that is 0 is kept aside.
#[derive(Debug, Clone, Default)]
pub struct CallKeys {
    /// A power of two long (or empty), at most half full.
    slots: Vec<u128>,
    /// Keys in `slots` (not counting a 0 key).
    len: usize,
    /// Whether the key 0 is in the set.
    zero: bool,
}

/// Fewest slots of a table that holds anything.
const MIN_SLOTS: usize = 64;

impl CallKeys {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys in the set.
    pub fn len(&self) -> usize {
        self.len + usize::from(self.zero)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    fn home(&self, key: u128) -> usize {
        (key as u64 as usize) & self.mask()
    }

    /// The slot holding `key`, or the empty slot where it would go. The table is never full.
    fn find(&self, key: u128) -> usize {
        let mask = self.mask();
        let mut i = self.home(key);
        loop {
            let s = self.slots[i];
            if s == key || s == 0 {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    pub fn contains(&self, key: &u128) -> bool {
        if *key == 0 {
            return self.zero;
        }
        !self.slots.is_empty() && self.slots[self.find(*key)] == *key
    }

    /// Adds `key`; false if it was there already.
    pub fn insert(&mut self, key: u128) -> bool {
        if key == 0 {
            return !std::mem::replace(&mut self.zero, true);
        }
        if (self.len + 1) * 2 > self.slots.len() {
            self.rehash_into(vec![0; slots_for(self.len + 1)]);
        }
        let i = self.find(key);
        if self.slots[i] == key {
            return false;
        }
        self.slots[i] = key;
        self.len += 1;
        true
    }

    /// Makes room for `additional` more keys without growing; an error (the set unchanged)
    /// if that memory is not to be had.
    pub fn try_reserve(
        &mut self,
        additional: usize,
    ) -> Result<(), std::collections::TryReserveError> {
        let want = slots_for(self.len.saturating_add(additional));
        if want <= self.slots.len() {
            return Ok(());
        }
        let mut table: Vec<u128> = Vec::new();
        table.try_reserve_exact(want)?;
        table.resize(want, 0);
        self.rehash_into(table);
        Ok(())
    }

    fn rehash_into(&mut self, table: Vec<u128>) {
        let old = std::mem::replace(&mut self.slots, table);
        let mask = self.mask();
        for k in old.into_iter().filter(|&k| k != 0) {
            let mut i = (k as u64 as usize) & mask;
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = k;
        }
    }

    /// Asks the CPU for the slot `key` would be looked up in (a hint: nothing changes).
    pub fn prefetch(&self, key: u128) {
        if let Some(s) = self.slots.get(self.home(key)) {
            crate::prefetch_value(s);
        }
    }
}

/// Slots of a table at most half full with `keys` keys.
fn slots_for(keys: usize) -> usize {
    // Past the largest power of two, a size no allocation can have: a reservation fails.
    keys.saturating_mul(2)
        .max(MIN_SLOTS)
        .checked_next_power_of_two()
        .unwrap_or(1 << (usize::BITS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Against std's set, key by key: random keys, repeats, keys that share a home slot
    /// (equal low bits), the key 0, growth from empty and from a reservation.
    #[test]
    fn answers_as_a_hash_set_does() {
        let mut next = crate::xorshift(0x9e37_79b9_7f4a_7c15);
        for reserve in [0usize, 10, 5_000] {
            let mut ours = CallKeys::new();
            ours.try_reserve(reserve).unwrap();
            let mut std_set: HashSet<u128> = HashSet::new();
            let mut seen: Vec<u128> = Vec::new();
            for step in 0..20_000u64 {
                let r = next();
                let key = match r % 10 {
                    // a key seen before
                    0 | 1 if !seen.is_empty() => seen[(next() as usize) % seen.len()],
                    // the same low 64 bits as another key: the same home slot
                    2 => (u128::from(next()) << 64) | u128::from(r & 0xff),
                    3 if step % 1000 == 0 => 0,
                    _ => (u128::from(next()) << 64) | u128::from(next()),
                };
                assert_eq!(ours.contains(&key), std_set.contains(&key), "{key:#x}");
                assert_eq!(ours.insert(key), std_set.insert(key), "{key:#x}");
                assert!(ours.contains(&key));
                assert_eq!(ours.len(), std_set.len());
                seen.push(key);
            }
            for k in &std_set {
                assert!(ours.contains(k));
            }
            // Never more than half full.
            assert!(ours.len * 2 <= ours.slots.len());
        }
    }

    #[test]
    fn a_reservation_holds_its_keys_without_growing() {
        let mut set = CallKeys::new();
        set.try_reserve(1000).unwrap();
        let slots = set.slots.len();
        assert!(slots >= 2000);
        for k in 1..=1000u128 {
            assert!(set.insert(k << 64 | k));
        }
        assert_eq!(set.slots.len(), slots);
        assert_eq!(set.len(), 1000);
        // Reserving what is already there changes nothing.
        set.try_reserve(0).unwrap();
        assert_eq!(set.slots.len(), slots);
        // An impossible reservation fails and leaves the set as it was.
        assert!(set.try_reserve(usize::MAX / 4).is_err());
        assert!(set.try_reserve(usize::MAX).is_err());
        assert_eq!(set.len(), 1000);
        assert!(set.contains(&(7u128 << 64 | 7)));
    }

    #[test]
    fn the_zero_key_counts_once() {
        let mut set = CallKeys::new();
        for k in [0u128, 5, 0, 5] {
            set.insert(k);
        }
        assert_eq!(set.len(), 2);
        assert!(set.contains(&0));
        assert!(!set.insert(0));
        assert!(!CallKeys::new().contains(&0));
        assert!(!CallKeys::new().contains(&5));
        set.prefetch(5);
        CallKeys::new().prefetch(5);
    }
}
