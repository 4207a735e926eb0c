//! The KV block pool: reference counts, the map from block hash to cached block, the LRU
//! list of blocks nobody uses (free or cached-but-evictable), and the KV events that say
//! how the set of cached blocks changes — emitted exactly when it changes.

use std::collections::{HashMap, HashSet};

use llmd_protocol::{BlockHash, KvEvent};

const NIL: u32 = u32::MAX;

#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    ref_cnt: Vec<u32>,
    hash: Vec<Option<BlockHash>>,
    // Intrusive doubly linked LRU list of blocks with ref_cnt == 0: head is evicted first.
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    num_free: usize,
    cached: HashMap<BlockHash, u32>,
    events: Vec<KvEvent>,
}

impl BlockPool {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        let n = num_blocks as u32;
        let mut pool = Self {
            block_size,
            ref_cnt: vec![0; num_blocks],
            hash: vec![None; num_blocks],
            prev: vec![NIL; num_blocks],
            next: vec![NIL; num_blocks],
            head: NIL,
            tail: NIL,
            num_free: 0,
            cached: HashMap::new(),
            events: Vec::new(),
        };
        for b in 0..n {
            pool.push_tail(b);
        }
        pool
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_cnt.len()
    }

    /// Blocks that can be handed out now (free or evictable).
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Fraction of blocks in use by sequences, as vLLM's `kv_cache_usage_perc`.
    pub fn usage(&self) -> f64 {
        if self.ref_cnt.is_empty() {
            return 0.0;
        }
        1.0 - self.num_free as f64 / self.ref_cnt.len() as f64
    }

    pub fn ref_count(&self, block: u32) -> u32 {
        self.ref_cnt.get(block as usize).copied().unwrap_or(0)
    }

    /// Sum of all reference counts: zero whenever no sequence or export holds blocks.
    pub fn total_refs(&self) -> u64 {
        self.ref_cnt.iter().map(|&r| r as u64).sum()
    }

    fn unlink(&mut self, b: u32) {
        let (p, n) = (self.prev[b as usize], self.next[b as usize]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[b as usize] = NIL;
        self.next[b as usize] = NIL;
        self.num_free -= 1;
    }

    fn push_tail(&mut self, b: u32) {
        self.prev[b as usize] = self.tail;
        self.next[b as usize] = NIL;
        if self.tail == NIL {
            self.head = b;
        } else {
            self.next[self.tail as usize] = b;
        }
        self.tail = b;
        self.num_free += 1;
    }

    /// The blocks caching the longest run of leading `hashes` (no references taken).
    pub fn lookup(&self, hashes: &[BlockHash]) -> Vec<u32> {
        hashes
            .iter()
            .map_while(|h| self.cached.get(h).copied())
            .collect()
    }

    /// Takes one reference on each block (a cache hit, or an export pin).
    pub fn touch(&mut self, blocks: &[u32]) {
        for &b in blocks {
            if self.ref_cnt[b as usize] == 0 {
                self.unlink(b);
            }
            self.ref_cnt[b as usize] += 1;
        }
    }

    /// Hands out `n` blocks, evicting the least recently used cached ones if needed;
    /// `None` (and nothing changed) when fewer than `n` are available.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.num_free {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        let mut removed = Vec::new();
        for _ in 0..n {
            let b = self.head;
            self.unlink(b);
            if let Some(h) = self.hash[b as usize].take() {
                if self.cached.get(&h) == Some(&b) {
                    self.cached.remove(&h);
                    removed.push(h);
                }
            }
            self.ref_cnt[b as usize] = 1;
            out.push(b);
        }
        if !removed.is_empty() {
            self.events.push(KvEvent::BlockRemoved {
                block_hashes: removed,
                medium: Some("GPU".into()),
            });
        }
        Some(out)
    }

    /// Drops one reference from each block. Give a sequence's blocks in order: they are
    /// queued last-first, so a sequence's tail is evicted before its shared prefix.
    pub fn free(&mut self, blocks: &[u32]) {
        for &b in blocks.iter().rev() {
            let r = &mut self.ref_cnt[b as usize];
            debug_assert!(*r > 0, "double free of block {b}");
            if *r == 0 {
                continue;
            }
            *r -= 1;
            if *r == 0 {
                self.push_tail(b);
            }
        }
    }

    /// Registers newly full blocks (consecutive in one sequence's chain) as cached, and
    /// emits one `BlockStored` for them. A hash already cached by another block keeps its
    /// block; the new one stays private to its sequence, as in vLLM.
    pub fn cache_blocks(
        &mut self,
        blocks: &[u32],
        hashes: &[BlockHash],
        parent: Option<BlockHash>,
        tokens: &[u32],
    ) {
        debug_assert_eq!(blocks.len(), hashes.len());
        debug_assert_eq!(tokens.len(), blocks.len() * self.block_size);
        let mut stored = Vec::new();
        let mut stored_tokens = Vec::new();
        let mut stored_parent = parent;
        for (i, (&b, &h)) in blocks.iter().zip(hashes).enumerate() {
            if self.hash[b as usize].is_some() || self.cached.contains_key(&h) {
                // Already cached (a hit, or a duplicate): the chain of stored blocks breaks
                // here, so a later run starts a new event with its own parent.
                if !stored.is_empty() {
                    self.events.push(KvEvent::BlockStored {
                        block_hashes: std::mem::take(&mut stored),
                        parent_block_hash: stored_parent,
                        token_ids: std::mem::take(&mut stored_tokens),
                        block_size: self.block_size,
                        lora_id: None,
                        medium: Some("GPU".into()),
                    });
                }
                stored_parent = Some(h);
                continue;
            }
            self.hash[b as usize] = Some(h);
            self.cached.insert(h, b);
            stored.push(h);
            stored_tokens
                .extend_from_slice(&tokens[i * self.block_size..(i + 1) * self.block_size]);
        }
        if !stored.is_empty() {
            self.events.push(KvEvent::BlockStored {
                block_hashes: stored,
                parent_block_hash: stored_parent,
                token_ids: stored_tokens,
                block_size: self.block_size,
                lora_id: None,
                medium: Some("GPU".into()),
            });
        }
    }

    /// Forgets every cached hash (only when no block is in use); emits `AllBlocksCleared`.
    pub fn reset_prefix_cache(&mut self) -> bool {
        if self.num_free != self.ref_cnt.len() {
            return false;
        }
        self.cached.clear();
        self.hash.iter_mut().for_each(|h| *h = None);
        self.events.push(KvEvent::AllBlocksCleared);
        true
    }

    pub fn take_events(&mut self) -> Vec<KvEvent> {
        std::mem::take(&mut self.events)
    }

    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    pub fn cached_hashes(&self) -> HashSet<BlockHash> {
        self.cached.keys().copied().collect()
    }
}

/// Applies events to a set of hashes, as a consumer of the event stream would.
pub fn replay_events(set: &mut HashSet<BlockHash>, events: &[KvEvent]) {
    for e in events {
        match e {
            KvEvent::BlockStored { block_hashes, .. } => set.extend(block_hashes.iter().copied()),
            KvEvent::BlockRemoved { block_hashes, .. } => {
                for h in block_hashes {
                    set.remove(h);
                }
            }
            KvEvent::AllBlocksCleared => set.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmd_protocol::{block_hashes, root_hash};
    use proptest::prelude::*;

    #[test]
    fn evicts_least_recently_freed_and_reports_it() {
        let mut p = BlockPool::new(4, 2);
        let a = p.allocate(2).unwrap();
        let hs = block_hashes(root_hash("m", None), &[1, 2, 3, 4], 2);
        p.cache_blocks(&a, &hs, None, &[1, 2, 3, 4]);
        p.free(&a);
        assert_eq!(p.num_free(), 4);
        assert_eq!(p.lookup(&hs), a);
        // Two never-used blocks go first, then the sequence's tail, then its head.
        let b = p.allocate(3).unwrap();
        assert_eq!(b, vec![2, 3, a[1]]);
        assert_eq!(p.lookup(&hs), vec![a[0]]);
        let ev = p.take_events();
        assert!(matches!(&ev[0], KvEvent::BlockStored { block_hashes, .. } if block_hashes == &hs));
        assert!(
            matches!(&ev[1], KvEvent::BlockRemoved { block_hashes, .. } if block_hashes == &vec![hs[1]])
        );
        assert!(p.allocate(2).is_none(), "only one block left");
    }

    #[test]
    fn hits_take_references_and_are_not_evicted() {
        let mut p = BlockPool::new(2, 1);
        let a = p.allocate(1).unwrap();
        p.cache_blocks(&a, &[7], None, &[5]);
        p.free(&a);
        let hit = p.lookup(&[7]);
        p.touch(&hit);
        assert_eq!(p.num_free(), 1);
        assert_eq!(p.allocate(1).unwrap(), vec![1]);
        assert!(p.allocate(1).is_none());
        assert_eq!(p.cached_hashes().len(), 1);
    }

    proptest! {
        /// Replaying the events reproduces exactly the cached set, over random mixes of
        /// sequences with shared prefixes, hits, frees and evictions.
        #[test]
        fn events_replay_to_the_cached_set(ops in proptest::collection::vec((0u8..4, 1usize..6, 0u32..3), 1..120)) {
            let bs = 2;
            let mut pool = BlockPool::new(12, bs);
            let root = root_hash("m", None);
            let mut live: Vec<Vec<u32>> = Vec::new();
            let mut seen = HashSet::new();
            for (op, nblocks, prefix) in ops {
                match op {
                    0..=2 => {
                        // A sequence whose tokens share a prefix family `prefix`.
                        let tokens: Vec<u32> = (0..(nblocks * bs) as u32).map(|i| if i < 4 { prefix } else { i * 7 + prefix }).collect();
                        let hashes = block_hashes(root, &tokens, bs);
                        let hit = pool.lookup(&hashes);
                        pool.touch(&hit);
                        let Some(new) = pool.allocate(hashes.len() - hit.len()) else {
                            pool.free(&hit);
                            continue;
                        };
                        let parent = hit.len().checked_sub(1).map(|i| hashes[i]);
                        pool.cache_blocks(&new, &hashes[hit.len()..], parent, &tokens[hit.len() * bs..]);
                        let mut blocks = hit;
                        blocks.extend(new);
                        live.push(blocks);
                    }
                    _ => {
                        if !live.is_empty() {
                            let i = nblocks % live.len();
                            let b = live.swap_remove(i);
                            pool.free(&b);
                        }
                    }
                }
                replay_events(&mut seen, &pool.take_events());
                prop_assert_eq!(&seen, &pool.cached_hashes());
                prop_assert!(pool.num_free() <= pool.num_blocks());
            }
            for b in live.drain(..) {
                pool.free(&b);
            }
            prop_assert_eq!(pool.total_refs(), 0);
            prop_assert_eq!(pool.num_free(), 12);
            prop_assert!(pool.reset_prefix_cache());
            replay_events(&mut seen, &pool.take_events());
            prop_assert!(seen.is_empty());
        }
    }
}
