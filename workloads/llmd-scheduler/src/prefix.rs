//! The approximate prefix index (llm-d's `prefix-cache-scorer`): which worker the scheduler
//! sent each prompt block to, bounded LRU. It knows nothing of evictions on the workers, so
//! it is a guess; the precise scorer reads the cache-manager's index of KV events instead.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use llmd_protocol::BlockHash;

struct Entry {
    workers: Vec<Arc<str>>,
    tick: u64,
}

pub struct ApproxIndex {
    map: HashMap<BlockHash, Entry>,
    /// Keys in the order they were last touched; stale pairs (older tick) are skipped.
    order: VecDeque<(BlockHash, u64)>,
    tick: u64,
    capacity: usize,
}

/// Workers listed per block at most (the most recent win).
const MAX_HOLDERS: usize = 8;

impl ApproxIndex {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            tick: 0,
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Records that `worker` now holds the blocks `keys` (a prompt's leading blocks).
    pub fn record(&mut self, worker: &str, keys: &[BlockHash]) {
        for &k in keys {
            self.tick += 1;
            let tick = self.tick;
            let e = self.map.entry(k).or_insert_with(|| Entry {
                workers: Vec::new(),
                tick,
            });
            e.tick = tick;
            if let Some(i) = e.workers.iter().position(|w| &**w == worker) {
                let w = e.workers.remove(i);
                e.workers.push(w);
            } else {
                if e.workers.len() == MAX_HOLDERS {
                    e.workers.remove(0);
                }
                e.workers.push(Arc::from(worker));
            }
            self.order.push_back((k, tick));
        }
        while self.map.len() > self.capacity {
            let Some((k, t)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|e| e.tick == t) {
                self.map.remove(&k);
            }
        }
        // Stale pairs pile up when the same keys are touched again and again.
        if self.order.len() > 4 * self.capacity.max(self.map.len()) {
            let map = &self.map;
            self.order
                .retain(|(k, t)| map.get(k).is_some_and(|e| e.tick == *t));
        }
    }

    /// For each worker, how many leading blocks of `keys` it holds.
    pub fn leading(&self, keys: &[BlockHash]) -> HashMap<String, usize> {
        let mut out: HashMap<String, usize> = HashMap::new();
        let mut alive: Option<Vec<Arc<str>>> = None;
        for (i, k) in keys.iter().enumerate() {
            let Some(e) = self.map.get(k) else {
                break;
            };
            let now: Vec<Arc<str>> = match &alive {
                None => e.workers.clone(),
                Some(prev) => prev
                    .iter()
                    .filter(|w| e.workers.contains(w))
                    .cloned()
                    .collect(),
            };
            if now.is_empty() {
                break;
            }
            for w in &now {
                out.insert(w.to_string(), i + 1);
            }
            alive = Some(now);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_leading_run_per_worker() {
        let mut ix = ApproxIndex::new(100);
        ix.record("a", &[1, 2, 3, 4]);
        ix.record("b", &[1, 2, 9]);
        let l = ix.leading(&[1, 2, 3, 5]);
        assert_eq!(l["a"], 3);
        assert_eq!(l["b"], 2);
        assert!(ix.leading(&[7, 1]).is_empty());
    }

    #[test]
    fn bounded_lru() {
        let mut ix = ApproxIndex::new(10);
        for round in 0..100u64 {
            ix.record("a", &[round * 3, round * 3 + 1, round * 3 + 2]);
            // A hot key touched every round stays.
            ix.record("a", &[1_000_000]);
            assert!(ix.len() <= 10);
        }
        assert_eq!(ix.leading(&[1_000_000])["a"], 1);
        assert!(ix.leading(&[0]).is_empty());
        assert!(ix.order.len() <= 4 * 10 + 4);
    }
}
