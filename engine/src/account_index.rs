//! Accounts of one kind laid out for finding many at a time (the CDR rater's runs of 64
//! records).
//!
//! A `HashMap<String, u32>` lookup is a chain of dependent cache misses: the control
//! group, then the bucket (the key's length: 83% of `Subscribers::owner_at`'s samples in
//! `ratel rate` of 2M calls over 100k accounts), then the key's bytes. One record after
//! another, nothing overlaps them. Here the slots are 8 bytes (a hash tag and an entry)
//! and the keys sit in one buffer, so a run of lookups goes in rounds: every key's slot
//! is prefetched, then every slot read and its candidate key prefetched, then every
//! candidate compared — each round reads what the one before asked for.
//!
//! A snapshot: [`crate::batch::Subscribers`] drops it on any change of its accounts.

use std::collections::HashMap;

use crate::prefetch;

/// Slot value of an empty slot.
const EMPTY: u64 = 0;
const TAG_MASK: u64 = 0xFFFF_FFFF_0000_0000;

/// One kind of account (account name → subscriber index), in open addressing.
pub(crate) struct AccountIndex {
    hasher: ahash::RandomState,
    mask: usize,
    /// The hash bits a slot keeps as its tag ([`TAG_MASK`]; none in a test of colliding
    /// tags).
    tag_mask: u64,
    /// [`EMPTY`], or the key's hash tag (its high 32 bits) and entry + 1 (low 32 bits).
    slots: Vec<u64>,
    /// Entry `e`'s key is `keys[starts[e]..starts[e + 1]]`; its subscriber `owners[e]`.
    keys: Vec<u8>,
    starts: Vec<u32>,
    owners: Vec<u32>,
}

/// A lookup between rounds.
#[derive(Clone, Copy)]
enum Probe {
    /// Not found.
    Missing,
    /// The slot at this position holds a candidate (its tag matched).
    Candidate(usize),
}

impl AccountIndex {
    /// The index of `map`, or `None` when its entries or its keys' bytes do not fit 32
    /// bits (the caller then looks accounts up in the map).
    pub(crate) fn new(map: &HashMap<String, u32, ahash::RandomState>) -> Option<Self> {
        Self::with_tag_mask(map, TAG_MASK)
    }

    fn with_tag_mask(
        map: &HashMap<String, u32, ahash::RandomState>,
        tag_mask: u64,
    ) -> Option<Self> {
        let total: usize = map.keys().map(String::len).sum();
        if total >= u32::MAX as usize || map.len() >= u32::MAX as usize {
            return None;
        }
        // At most half full: a miss ends at the first empty slot, a probe or two away.
        let cap = (map.len() * 2).next_power_of_two().max(16);
        let mut ix = AccountIndex {
            hasher: ahash::RandomState::new(),
            mask: cap - 1,
            tag_mask,
            slots: vec![EMPTY; cap],
            keys: Vec::with_capacity(total),
            starts: Vec::with_capacity(map.len() + 1),
            owners: Vec::with_capacity(map.len()),
        };
        ix.starts.push(0);
        for (key, &owner) in map {
            let entry = ix.owners.len() as u64;
            ix.keys.extend_from_slice(key.as_bytes());
            ix.starts.push(ix.keys.len() as u32);
            ix.owners.push(owner);
            let h = ix.hash(key);
            let mut pos = h as usize & ix.mask;
            while ix.slots[pos] != EMPTY {
                pos = (pos + 1) & ix.mask;
            }
            ix.slots[pos] = (h & tag_mask) | (entry + 1);
        }
        Some(ix)
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The entry of a full slot.
    fn entry_at(&self, pos: usize) -> usize {
        (self.slots[pos] & !TAG_MASK) as usize - 1
    }

    fn key(&self, entry: usize) -> &[u8] {
        &self.keys[self.starts[entry] as usize..self.starts[entry + 1] as usize]
    }

    /// The first slot from `pos` on holding `h`'s tag, or `Missing` at an empty slot.
    fn probe_from(&self, h: u64, mut pos: usize) -> Probe {
        loop {
            let s = self.slots[pos];
            if s == EMPTY {
                return Probe::Missing;
            }
            if s & self.tag_mask == h & self.tag_mask {
                return Probe::Candidate(pos);
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// The owner of `key`, one lookup (the same answer as `find_many`).
    #[cfg(test)]
    pub(crate) fn find(&self, key: &str) -> Option<u32> {
        let mut out = [None];
        self.find_many(&[key], &mut out, &mut Vec::new());
        out[0]
    }

    /// The owner of each of `keys` into `out` (same length), found in rounds (module
    /// doc). `hashes` is scratch.
    pub(crate) fn find_many(&self, keys: &[&str], out: &mut [Option<u32>], hashes: &mut Vec<u64>) {
        debug_assert_eq!(keys.len(), out.len());
        hashes.clear();
        for key in keys {
            let h = self.hash(key);
            prefetch(
                self.slots
                    .as_ptr()
                    .wrapping_add(h as usize & self.mask)
                    .cast(),
                8,
            );
            hashes.push(h);
        }
        // Each slot (prefetched above) to its first candidate; the candidate's key asked for.
        let mut probes: Vec<Probe> = Vec::with_capacity(keys.len());
        for &h in hashes.iter() {
            let p = self.probe_from(h, h as usize & self.mask);
            if let Probe::Candidate(pos) = p {
                let entry = self.entry_at(pos);
                prefetch(
                    self.keys.as_ptr().wrapping_add(self.starts[entry] as usize),
                    1,
                );
            }
            probes.push(p);
        }
        for (((key, &h), probe), o) in keys.iter().zip(hashes.iter()).zip(probes).zip(out) {
            let mut probe = probe;
            *o = loop {
                match probe {
                    Probe::Missing => break None,
                    Probe::Candidate(pos) => {
                        let entry = self.entry_at(pos);
                        if self.key(entry) == key.as_bytes() {
                            break Some(self.owners[entry]);
                        }
                        // Another key with the same tag: go on probing.
                        probe = self.probe_from(h, (pos + 1) & self.mask);
                    }
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_the_map_finds() {
        let mut next = crate::xorshift(0x9E37_79B9_7F4A_7C15);
        for round in 0..20 {
            let n = [0, 1, 2, 7, 100, 3000][round % 6];
            let mut map: HashMap<String, u32, ahash::RandomState> = HashMap::default();
            for i in 0..n {
                // Short and long names, shared prefixes, the empty name, non-ASCII.
                let name = match next() % 5 {
                    0 => format!("acc{}", next() % 5000),
                    1 => format!("{}", next() % 100),
                    2 => String::new(),
                    3 => format!("ünïcode-{}", next() % 50),
                    _ => "x".repeat((next() % 40) as usize),
                };
                map.insert(name, i as u32);
            }
            let ix = AccountIndex::new(&map).expect("fits");
            let mut queries: Vec<String> = map.keys().cloned().collect();
            for _ in 0..500 {
                queries.push(format!("acc{}", next() % 6000));
                queries.push(format!("{}", next() % 120));
            }
            queries.push(String::new());
            queries.push("x".repeat(41));
            for chunk in queries.chunks(1 + (next() % 80) as usize) {
                let keys: Vec<&str> = chunk.iter().map(String::as_str).collect();
                let mut out = vec![Some(u32::MAX); keys.len()];
                ix.find_many(&keys, &mut out, &mut Vec::new());
                for (k, o) in keys.iter().zip(&out) {
                    assert_eq!(*o, map.get(*k).copied(), "key {k:?}, {n} accounts");
                }
                for k in &keys {
                    assert_eq!(ix.find(k), map.get(*k).copied(), "key {k:?} alone");
                }
            }
        }
    }

    #[test]
    fn keys_sharing_a_tag_are_told_apart() {
        // Real tags collide rarely; with no tag bits every slot is a candidate, so only the
        // key compare tells entries apart and every probe runs on past mismatches.
        let mut map: HashMap<String, u32, ahash::RandomState> = HashMap::default();
        for i in 0..300u32 {
            map.insert(format!("k{i}"), i);
        }
        let ix = AccountIndex::with_tag_mask(&map, 0).expect("fits");
        let keys: Vec<String> = (0..400).map(|i| format!("k{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        for chunk in refs.chunks(64) {
            let mut out = vec![None; chunk.len()];
            ix.find_many(chunk, &mut out, &mut Vec::new());
            for (k, o) in chunk.iter().zip(&out) {
                assert_eq!(*o, map.get(*k).copied(), "key {k}");
            }
        }
    }
}
