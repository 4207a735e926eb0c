//! The block index. Keys are our own chained block hashes (`llmd-protocol`), computed from
//! the token ids each `BlockStored` carries and the parent's key — never the engine's
//! hashes, which differ between engines (vLLM hashes with its own function and seed). Each
//! worker's engine hashes map to keys so that `BlockRemoved` (engine hashes only) and later
//! `BlockStored` parents resolve. Bounded: beyond `max_blocks` keys, the least recently
//! stored key is dropped with all its holders.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use llmd_protocol::{block_hash, root_hash, BlockHash, KvEvent};

/// Keys and engine hashes are already well-mixed 64-bit hashes: hash them as themselves.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Where a worker holds a block, for tier weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Medium {
    Gpu,
    Cpu,
}

impl Medium {
    /// vLLM names media "GPU" / "CPU" (None means the device's own memory).
    pub fn parse(m: Option<&str>) -> Medium {
        match m {
            Some(s) if s.eq_ignore_ascii_case("cpu") => Medium::Cpu,
            _ => Medium::Gpu,
        }
    }

    /// llm-d's tier weights: a block in host memory is worth less than one on the device.
    pub fn weight(self) -> f64 {
        match self {
            Medium::Gpu => 1.0,
            Medium::Cpu => 0.8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Holder {
    worker: u32,
    medium: Medium,
    /// The worker's engine hash for this block, to unmap it on eviction.
    engine: BlockHash,
}

struct Entry {
    holders: Vec<Holder>,
    tick: u64,
}

struct Worker {
    name: String,
    model: String,
    /// Engine hash → our key.
    keys: IdMap<BlockHash>,
}

/// Counters for the metrics endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IndexStats {
    pub stored: u64,
    pub removed: u64,
    pub cleared: u64,
    /// Stored blocks whose parent this index did not know (missed events): not indexed.
    pub orphaned: u64,
    /// Events whose token ids do not cover their blocks.
    pub malformed: u64,
    pub evicted: u64,
}

pub use llmd_protocol::score::WorkerScore;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Scored {
    pub block_size: usize,
    pub total_blocks: usize,
    /// Sorted by blocks, then score, descending; ties by name.
    pub workers: Vec<WorkerScore>,
}

impl Scored {
    /// From `(worker, leading blocks held, their summed tier weights)`: the scores, sorted.
    /// Shared by every index backend, so they rank workers the same way.
    pub fn new(block_size: usize, total_blocks: usize, runs: Vec<(String, usize, f64)>) -> Self {
        let mut workers: Vec<WorkerScore> = runs
            .into_iter()
            .map(|(worker, blocks, weighted)| WorkerScore {
                worker,
                blocks,
                score: if total_blocks == 0 {
                    0.0
                } else {
                    weighted / total_blocks as f64
                },
            })
            .collect();
        workers.sort_by(|a, b| {
            b.blocks
                .cmp(&a.blocks)
                .then(b.score.total_cmp(&a.score))
                .then(a.worker.cmp(&b.worker))
        });
        Self {
            block_size,
            total_blocks,
            workers,
        }
    }
}

pub struct Index {
    max_blocks: usize,
    keys: IdMap<Entry>,
    /// tick → key, oldest first.
    lru: BTreeMap<u64, BlockHash>,
    tick: u64,
    workers: Vec<Option<Worker>>,
    ids: HashMap<String, u32>,
    block_sizes: HashMap<String, usize>,
    stats: IndexStats,
}

impl Index {
    pub fn new(max_blocks: usize) -> Self {
        Self {
            max_blocks: max_blocks.max(1),
            keys: IdMap::default(),
            lru: BTreeMap::new(),
            tick: 0,
            workers: Vec::new(),
            ids: HashMap::new(),
            block_sizes: HashMap::new(),
            stats: IndexStats::default(),
        }
    }

    pub fn stats(&self) -> IndexStats {
        self.stats
    }

    /// Distinct keys held by at least one worker.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Blocks the named worker holds.
    pub fn worker_blocks(&self, worker: &str) -> usize {
        self.ids
            .get(worker)
            .and_then(|&w| self.workers.get(w as usize)?.as_ref())
            .map_or(0, |w| w.keys.len())
    }

    /// The keys the named worker holds, sorted.
    pub fn worker_keys(&self, worker: &str) -> Vec<BlockHash> {
        let mut v: Vec<BlockHash> = self
            .ids
            .get(worker)
            .and_then(|&w| self.workers.get(w as usize)?.as_ref())
            .map(|w| w.keys.values().copied().collect())
            .unwrap_or_default();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Every known worker with its model and block count.
    pub fn workers(&self) -> Vec<(String, String, usize)> {
        self.workers
            .iter()
            .flatten()
            .map(|w| (w.name.clone(), w.model.clone(), w.keys.len()))
            .collect()
    }

    /// The block size events for `model` used (the scorer must chunk prompts the same way).
    pub fn block_size(&self, model: &str) -> Option<usize> {
        self.block_sizes.get(model).copied()
    }

    fn intern(&mut self, worker: &str, model: &str) -> u32 {
        if let Some(&w) = self.ids.get(worker) {
            if let Some(Some(st)) = self.workers.get_mut(w as usize) {
                if st.model != model {
                    // The worker now serves another model: its old blocks are gone.
                    st.model = model.to_string();
                    self.clear(w);
                }
                return w;
            }
        }
        let id = self.workers.len() as u32;
        self.workers.push(Some(Worker {
            name: worker.to_string(),
            model: model.to_string(),
            keys: IdMap::default(),
        }));
        self.ids.insert(worker.to_string(), id);
        id
    }

    fn touch(&mut self, key: BlockHash) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.keys.get_mut(&key) {
            self.lru.remove(&e.tick);
            e.tick = tick;
            self.lru.insert(tick, key);
        }
    }

    fn drop_holder(&mut self, key: BlockHash, worker: u32) {
        let Some(e) = self.keys.get_mut(&key) else {
            return;
        };
        e.holders.retain(|h| h.worker != worker);
        if e.holders.is_empty() {
            let tick = e.tick;
            self.keys.remove(&key);
            self.lru.remove(&tick);
        }
    }

    fn clear(&mut self, w: u32) {
        let keys: Vec<BlockHash> = match self.workers.get_mut(w as usize) {
            Some(Some(st)) => st.keys.drain().map(|(_, k)| k).collect(),
            _ => return,
        };
        for k in keys {
            self.drop_holder(k, w);
        }
    }

    fn evict(&mut self) {
        while self.keys.len() > self.max_blocks {
            let Some((_, key)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.keys.remove(&key) {
                for h in e.holders {
                    if let Some(Some(st)) = self.workers.get_mut(h.worker as usize) {
                        if st.keys.get(&h.engine) == Some(&key) {
                            st.keys.remove(&h.engine);
                        }
                    }
                }
                self.stats.evicted += 1;
            }
        }
    }

    /// Applies one event from `worker` (its `host:port`) serving `model`.
    pub fn apply(&mut self, worker: &str, model: &str, event: &KvEvent) {
        let w = self.intern(worker, model);
        match event {
            KvEvent::BlockStored {
                block_hashes,
                parent_block_hash,
                token_ids,
                block_size,
                lora_id,
                medium,
            } => {
                let bs = *block_size;
                if bs == 0 || token_ids.len() != block_hashes.len() * bs {
                    self.stats.malformed += 1;
                    return;
                }
                self.block_sizes.insert(model.to_string(), bs);
                let medium = Medium::parse(medium.as_deref());
                let parent = match parent_block_hash {
                    None => Some(root_hash(model, adapter(*lora_id).as_deref())),
                    Some(p) => match self.workers.get(w as usize) {
                        Some(Some(st)) => st.keys.get(p).copied(),
                        _ => None,
                    },
                };
                let Some(mut parent) = parent else {
                    self.stats.orphaned += block_hashes.len() as u64;
                    return;
                };
                for (engine, chunk) in block_hashes.iter().zip(token_ids.chunks_exact(bs)) {
                    let key = block_hash(parent, chunk);
                    parent = key;
                    let old = match self.workers.get_mut(w as usize) {
                        Some(Some(st)) => st.keys.insert(*engine, key),
                        _ => None,
                    };
                    if let Some(old) = old.filter(|&o| o != key) {
                        self.drop_holder(old, w);
                    }
                    let tick = self.tick + 1;
                    let e = self.keys.entry(key).or_insert_with(|| Entry {
                        holders: Vec::new(),
                        tick,
                    });
                    match e.holders.iter_mut().find(|h| h.worker == w) {
                        Some(h) => {
                            h.medium = medium;
                            h.engine = *engine;
                        }
                        None => e.holders.push(Holder {
                            worker: w,
                            medium,
                            engine: *engine,
                        }),
                    }
                    if e.tick == tick {
                        // New entry: register it with the LRU at its tick.
                        self.tick = tick;
                        self.lru.insert(tick, key);
                    } else {
                        self.touch(key);
                    }
                    self.stats.stored += 1;
                }
                self.evict();
            }
            KvEvent::BlockRemoved { block_hashes, .. } => {
                for engine in block_hashes {
                    let key = match self.workers.get_mut(w as usize) {
                        Some(Some(st)) => st.keys.remove(engine),
                        _ => None,
                    };
                    if let Some(key) = key {
                        self.drop_holder(key, w);
                        self.stats.removed += 1;
                    }
                }
            }
            KvEvent::AllBlocksCleared => {
                self.clear(w);
                self.stats.cleared += 1;
            }
        }
    }

    /// Forgets a worker and everything it held (gone silent, removed from the config, or
    /// its event stream broke beyond replay).
    pub fn remove_worker(&mut self, worker: &str) {
        if let Some(w) = self.ids.remove(worker) {
            self.clear(w);
            if let Some(slot) = self.workers.get_mut(w as usize) {
                *slot = None;
            }
        }
    }

    /// Drops a worker's blocks but keeps it known (a gap that replay could not fill: the
    /// index rebuilds from its next events).
    pub fn clear_worker(&mut self, worker: &str) {
        if let Some(&w) = self.ids.get(worker) {
            self.clear(w);
        }
    }

    /// Scores a prompt's token ids for `model`: each worker's run of leading blocks.
    pub fn score_tokens(
        &self,
        model: &str,
        token_ids: &[u32],
        block_size: Option<usize>,
        only: Option<&[String]>,
    ) -> Scored {
        let bs = block_size
            .or_else(|| self.block_size(model))
            .unwrap_or(llmd_protocol::DEFAULT_BLOCK_SIZE);
        // Keys are hashed as the walk needs them: it stops at the first block nobody holds,
        // and the table lookups overlap with the (latency-bound) hashing of the next block.
        let mut parent = root_hash(model, None);
        let keys = token_ids.chunks_exact(bs).map(|chunk| {
            parent = block_hash(parent, chunk);
            parent
        });
        self.score_iter(model, keys, token_ids.len() / bs, bs, only)
    }

    /// Scores a prompt given as its block keys (chained `llmd-protocol` hashes).
    pub fn score_keys(
        &self,
        model: &str,
        keys: &[BlockHash],
        block_size: usize,
        only: Option<&[String]>,
    ) -> Scored {
        self.score_iter(model, keys.iter().copied(), keys.len(), block_size, only)
    }

    fn score_iter(
        &self,
        model: &str,
        mut keys: impl Iterator<Item = BlockHash>,
        total: usize,
        block_size: usize,
        only: Option<&[String]>,
    ) -> Scored {
        let wanted = |w: &Worker| w.model == model && only.is_none_or(|o| o.contains(&w.name));
        // (worker, blocks, weighted), extended while every earlier block was held.
        let mut run: Vec<(u32, usize, f64)> = Vec::new();
        if let Some(first) = keys.next().and_then(|k| self.keys.get(&k)) {
            for h in &first.holders {
                if matches!(self.workers.get(h.worker as usize), Some(Some(w)) if wanted(w)) {
                    run.push((h.worker, 1, h.medium.weight()));
                }
            }
        }
        let mut done: Vec<(u32, usize, f64)> = Vec::new();
        // Per worker id: the block index it was last seen holding, and that block's weight.
        // Marking holders then filtering the run is linear per block (a nested search was
        // quadratic in the number of holders, which is the worker count for hot prefixes).
        let mut seen: Vec<(usize, f64)> = vec![(usize::MAX, 0.0); self.workers.len()];
        for (i, key) in keys.enumerate().map(|(i, k)| (i + 1, k)) {
            if run.is_empty() {
                break;
            }
            if let Some(e) = self.keys.get(&key) {
                for h in &e.holders {
                    if let Some(slot) = seen.get_mut(h.worker as usize) {
                        *slot = (i, h.medium.weight());
                    }
                }
            }
            let mut j = 0;
            while j < run.len() {
                match seen.get(run[j].0 as usize) {
                    Some(&(at, weight)) if at == i => {
                        run[j].1 += 1;
                        run[j].2 += weight;
                        j += 1;
                    }
                    _ => done.push(run.swap_remove(j)),
                }
            }
        }
        done.extend(run);
        let out: Vec<(String, usize, f64)> = self
            .workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let w = w.as_ref().filter(|w| wanted(w))?;
                let (blocks, weighted) = done
                    .iter()
                    .find(|d| d.0 as usize == i)
                    .map_or((0, 0.0), |d| (d.1, d.2));
                Some((w.name.clone(), blocks, weighted))
            })
            .collect();
        Scored::new(block_size, total, out)
    }
}

/// The adapter name LoRA blocks are rooted in (the engine seeds its hashes the same way).
fn adapter(lora_id: Option<i64>) -> Option<String> {
    lora_id.map(|id| format!("lora-{id}"))
}
