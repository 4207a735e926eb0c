//! The serving loop's brain, in the style of vLLM's v1 core: waiting and running queues,
//! a token budget per step, chunked prefill mixed with decodes in one forward pass,
//! prefix-cache hits, preemption of the newest sequence when blocks run out, and
//! cancellation of sequences whose client went away.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use llmd_protocol::{block_hash, BlockHash};

use crate::backend::Backend;
use crate::block_pool::BlockPool;
use crate::engine::FinishReason;
use crate::error::Result;
use crate::kv::KvCache;
use crate::model::BatchSeq;
use crate::sampling::Sampler;

/// Limits of one step, with vLLM's names.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Tokens (prefill + decode) one forward pass may process.
    pub max_num_batched_tokens: usize,
    /// Sequences running at once.
    pub max_num_seqs: usize,
    pub enable_prefix_caching: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_num_batched_tokens: 512,
            max_num_seqs: 64,
            enable_prefix_caching: true,
        }
    }
}

/// Token counts of a finished request, as OpenAI's `usage` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

/// Per-request timings, for the latency histograms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Arrival to first scheduled (vLLM's queue time).
    pub queued: Duration,
    pub time_to_first_token: Option<Duration>,
    /// Mean time between output tokens after the first (vLLM's inter-token latency).
    pub inter_token: Option<Duration>,
    pub e2e: Duration,
}

/// Blocks a finished sequence left pinned for export: its full blocks in order, the tokens
/// they hold, and when they were pinned (for the transfer timeout).
#[derive(Debug, Clone, PartialEq)]
pub struct PinnedKv {
    pub blocks: Vec<u32>,
    pub num_tokens: usize,
    pub since: Instant,
}

/// What happened to a sequence in a step, for its owner.
#[derive(Debug, Clone, PartialEq)]
pub enum SeqUpdate {
    /// A new token was sampled.
    Token(u32),
    /// The sequence ended; its blocks are back in the pool.
    Finished {
        reason: FinishReason,
        usage: Usage,
        timings: Timings,
        /// The sequence's blocks, still referenced, when it asked to be pinned.
        pinned: Option<PinnedKv>,
    },
    /// The sequence could not be served (e.g. its prompt cannot fit in the pool at all).
    Failed(String),
}

/// A step's result: logits to sample from, or (simulated) tokens.
enum StepOut {
    Logits(Vec<f32>, usize),
    Tokens(Vec<u32>),
}

/// One sequence's state inside the scheduler.
pub struct Sequence {
    pub id: u64,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose K/V are in the cache.
    pub num_computed: usize,
    pub blocks: Vec<u32>,
    /// Chained hashes of the full blocks computed so far.
    pub hashes: Vec<BlockHash>,
    /// Blocks already registered in the prefix cache (hits included).
    num_registered: usize,
    /// Prompt tokens served from the prefix cache at admission (for usage reporting).
    pub cached_tokens: usize,
    pub sampler: Sampler,
    pub eos: Vec<u32>,
    pub max_tokens: usize,
    pub arrival: Instant,
    pub first_scheduled: Option<Instant>,
    pub first_token: Option<Instant>,
    pub num_preemptions: u32,
    /// Set by the owner to stop the sequence at the next step.
    pub cancelled: bool,
    /// Keep the blocks (pinned) when the sequence finishes, for a KV export.
    pub pin_on_finish: bool,
}

impl Sequence {
    pub fn new(id: u64, prompt: Vec<u32>, sampler: Sampler, eos: Vec<u32>) -> Self {
        let max_tokens = sampler.params().max_tokens;
        let eos = if sampler.params().ignore_eos {
            Vec::new()
        } else {
            eos
        };
        Self {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            num_computed: 0,
            blocks: Vec::new(),
            hashes: Vec::new(),
            num_registered: 0,
            cached_tokens: 0,
            sampler,
            eos,
            max_tokens,
            arrival: Instant::now(),
            first_scheduled: None,
            first_token: None,
            num_preemptions: 0,
            cancelled: false,
            pin_on_finish: false,
        }
    }

    pub fn num_generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// Prefix-cache and token counters, cumulative (vLLM's counters count tokens).
#[derive(Debug, Clone, Copy, Default)]
pub struct SchedulerCounters {
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub preemptions: u64,
    pub steps: u64,
}

pub struct Scheduler {
    pub cfg: SchedulerConfig,
    pub pool: BlockPool,
    root: BlockHash,
    max_context: usize,
    pub waiting: VecDeque<Sequence>,
    pub running: Vec<Sequence>,
    pub counters: SchedulerCounters,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, pool: BlockPool, root: BlockHash, max_context: usize) -> Self {
        Self {
            cfg,
            pool,
            root,
            max_context,
            waiting: VecDeque::new(),
            running: Vec::new(),
            counters: SchedulerCounters::default(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.pool.block_size()
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Queues a sequence, or refuses it at once when even an empty pool could not hold it.
    pub fn add(&mut self, seq: Sequence) -> std::result::Result<(), String> {
        if seq.prompt_len.div_ceil(self.block_size()) + 1 > self.pool.num_blocks() {
            let msg = format!(
                "prompt of {} tokens needs more KV blocks than the whole cache holds ({} blocks of {})",
                seq.prompt_len,
                self.pool.num_blocks(),
                self.block_size()
            );
            return Err(msg);
        }
        self.waiting.push_back(seq);
        Ok(())
    }

    fn release(&mut self, seq: &mut Sequence) {
        self.pool.free(&seq.blocks);
        seq.blocks.clear();
    }

    /// Frees a preempted sequence's blocks and requeues it for recomputation (its
    /// generated tokens are kept and become part of the recomputed prefix).
    fn preempt(&mut self, mut seq: Sequence) {
        self.release(&mut seq);
        seq.num_computed = 0;
        seq.num_registered = 0;
        seq.hashes.clear();
        seq.num_preemptions += 1;
        self.counters.preemptions += 1;
        tracing::debug!(seq = seq.id, "preempted");
        self.waiting.push_front(seq);
    }

    /// Grows a sequence's block table to hold `tokens` tokens; false if the pool is short.
    fn grow(&mut self, seq_blocks: &mut Vec<u32>, tokens: usize) -> bool {
        let need = tokens
            .div_ceil(self.block_size())
            .saturating_sub(seq_blocks.len());
        if need == 0 {
            return true;
        }
        match self.pool.allocate(need) {
            Some(b) => {
                seq_blocks.extend(b);
                true
            }
            None => false,
        }
    }

    /// Removes cancelled sequences, returning their ids.
    pub fn reap_cancelled(&mut self) -> Vec<u64> {
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].cancelled {
                let mut s = self.running.remove(i);
                self.release(&mut s);
                gone.push(s.id);
            } else {
                i += 1;
            }
        }
        let mut keep = VecDeque::new();
        while let Some(mut s) = self.waiting.pop_front() {
            if s.cancelled {
                self.release(&mut s);
                gone.push(s.id);
            } else {
                keep.push_back(s);
            }
        }
        self.waiting = keep;
        gone
    }

    /// Chooses this step's work: (index into `running`, tokens to compute).
    fn schedule(&mut self) -> Vec<(usize, usize)> {
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut plan: Vec<(usize, usize)> = Vec::new();
        let mut preempted_any = false;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let remaining = self.running[i].tokens.len() - self.running[i].num_computed;
            let n = remaining.min(budget);
            let target = self.running[i].num_computed + n;
            let mut blocks = std::mem::take(&mut self.running[i].blocks);
            let mut ok = self.grow(&mut blocks, target);
            self.running[i].blocks = blocks;
            while !ok {
                // Preempt the newest sequence not yet planned; possibly this one.
                let Some(victim) = self.running.pop() else {
                    break;
                };
                preempted_any = true;
                let victim_is_self = self.running.len() == i;
                self.preempt(victim);
                if victim_is_self {
                    break;
                }
                let mut blocks = std::mem::take(&mut self.running[i].blocks);
                ok = self.grow(&mut blocks, target);
                self.running[i].blocks = blocks;
            }
            if !ok {
                break;
            }
            plan.push((i, n));
            budget -= n;
            i += 1;
        }
        // Admit waiting sequences only when nothing had to be preempted this step.
        while !preempted_any && budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            let bs = self.block_size();
            if seq.num_computed == 0 && self.cfg.enable_prefix_caching {
                // Hash the full blocks; never count the last token as cached, since its
                // logits are needed to sample.
                let full = (seq.tokens.len() - 1) / bs;
                let mut parent = self.root;
                seq.hashes = (0..full)
                    .map(|b| {
                        parent = block_hash(parent, &seq.tokens[b * bs..(b + 1) * bs]);
                        parent
                    })
                    .collect();
                let hit = self.pool.lookup(&seq.hashes);
                self.pool.touch(&hit);
                seq.num_computed = hit.len() * bs;
                seq.num_registered = hit.len();
                seq.blocks = hit;
                self.counters.prefix_cache_queries += seq.tokens.len() as u64;
                self.counters.prefix_cache_hits += seq.num_computed as u64;
                if seq.num_preemptions == 0 {
                    seq.cached_tokens = seq.num_computed.min(seq.prompt_len);
                }
            }
            let n = (seq.tokens.len() - seq.num_computed).min(budget);
            let target = seq.num_computed + n;
            let mut blocks = std::mem::take(&mut seq.blocks);
            let ok = self.grow(&mut blocks, target);
            seq.blocks = blocks;
            if !ok {
                // Not enough room now: give back the hits and wait for blocks to free up.
                self.release(&mut seq);
                seq.num_computed = 0;
                seq.num_registered = 0;
                self.waiting.push_front(seq);
                break;
            }
            if seq.first_scheduled.is_none() {
                seq.first_scheduled = Some(Instant::now());
                // Prompt tokens count once, even if the sequence is preempted later.
                self.counters.prompt_tokens += seq.prompt_len as u64;
            }
            self.running.push(seq);
            plan.push((self.running.len() - 1, n));
            budget -= n;
        }
        plan
    }

    /// Registers the sequence's newly full, computed blocks in the prefix cache.
    fn register_blocks(&mut self, idx: usize) {
        if !self.cfg.enable_prefix_caching {
            return;
        }
        let bs = self.block_size();
        let seq = &mut self.running[idx];
        let full = seq.num_computed / bs;
        if full <= seq.num_registered {
            return;
        }
        while seq.hashes.len() < full {
            let b = seq.hashes.len();
            let parent = seq.hashes.last().copied().unwrap_or(self.root);
            seq.hashes
                .push(block_hash(parent, &seq.tokens[b * bs..(b + 1) * bs]));
        }
        let from = seq.num_registered;
        let parent = from.checked_sub(1).map(|i| seq.hashes[i]);
        self.pool.cache_blocks(
            &seq.blocks[from..full],
            &seq.hashes[from..full],
            parent,
            &seq.tokens[from * bs..full * bs],
        );
        seq.num_registered = full;
    }

    /// Runs one step: schedule, one forward pass, sample. Returns each affected sequence's
    /// update; finished sequences are removed and handed back with theirs.
    pub fn step(&mut self, backend: &Backend, cache: &KvCache) -> Result<Vec<(u64, SeqUpdate)>> {
        let mut updates = Vec::new();
        let plan = self.schedule();
        if plan.is_empty() {
            // Nothing fits: the head of the queue can never run (checked at add, so this
            // only happens if the pool is smaller than one sequence's growth).
            if let Some(seq) = self.waiting.pop_front() {
                updates.push((
                    seq.id,
                    SeqUpdate::Failed("the KV cache cannot hold this sequence".into()),
                ));
            }
            return Ok(updates);
        }
        self.counters.steps += 1;
        let batch: Vec<BatchSeq<'_>> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &self.running[i];
                BatchSeq {
                    tokens: &s.tokens[s.num_computed..s.num_computed + n],
                    start_pos: s.num_computed,
                    block_table: &s.blocks,
                }
            })
            .collect();
        let out = match backend {
            Backend::Model(model) => {
                let logits = model.forward(cache, &batch)?;
                let vocab = logits.dim(1)?;
                StepOut::Logits(logits.flatten_all()?.to_vec1::<f32>()?, vocab)
            }
            Backend::Sim(sim) => {
                // A row that computes one token at the end of its sequence is a decode.
                let is_decode = |i: usize, n: usize| {
                    n == 1 && self.running[i].num_computed + 1 == self.running[i].tokens.len()
                };
                let (mut prefill, mut decodes) = (0, 0);
                for &(i, n) in &plan {
                    if is_decode(i, n) {
                        decodes += 1;
                    } else {
                        prefill += n;
                    }
                }
                let seqs: Vec<(usize, usize)> = plan
                    .iter()
                    .map(|&(i, n)| {
                        let s = &self.running[i];
                        (s.num_computed + n, s.num_generated())
                    })
                    .collect();
                StepOut::Tokens(sim.step(prefill, decodes, &seqs))
            }
        };
        let mut finished = Vec::new();
        for (row, &(i, n)) in plan.iter().enumerate() {
            self.running[i].num_computed += n;
            self.register_blocks(i);
            let s = &mut self.running[i];
            if s.num_computed < s.tokens.len() {
                continue; // a prefill chunk; more to come
            }
            let id = match &out {
                StepOut::Logits(logits, vocab) => {
                    s.sampler.sample(&logits[row * vocab..(row + 1) * vocab])
                }
                StepOut::Tokens(t) => t[row],
            };
            s.tokens.push(id);
            if s.first_token.is_none() {
                s.first_token = Some(Instant::now());
            }
            self.counters.generation_tokens += 1;
            updates.push((s.id, SeqUpdate::Token(id)));
            let stop = s.eos.contains(&id) || s.sampler.params().stop_token_ids.contains(&id);
            if stop {
                finished.push((i, FinishReason::Stop));
            } else if s.num_generated() >= s.max_tokens || s.tokens.len() >= self.max_context {
                finished.push((i, FinishReason::Length));
            }
        }
        // Remove finished sequences, highest index first so indices stay valid.
        finished.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (i, reason) in finished {
            let mut s = self.running.remove(i);
            let pinned = if s.pin_on_finish {
                // Keep only the full blocks of computed tokens; they stay referenced
                // until released, so eviction cannot touch them.
                let bs = self.block_size();
                let full = s.num_computed / bs;
                let keep: Vec<u32> = s.blocks[..full.min(s.blocks.len())].to_vec();
                self.pool.free(&s.blocks[keep.len()..]);
                s.blocks.clear();
                Some(PinnedKv {
                    num_tokens: keep.len() * bs,
                    blocks: keep,
                    since: Instant::now(),
                })
            } else {
                self.release(&mut s);
                None
            };
            let now = Instant::now();
            let usage = Usage {
                prompt_tokens: s.prompt_len,
                completion_tokens: s.num_generated(),
                cached_tokens: s.cached_tokens,
            };
            let generated = s.num_generated() as u32;
            let timings = Timings {
                queued: s.first_scheduled.map(|t| t - s.arrival).unwrap_or_default(),
                time_to_first_token: s.first_token.map(|t| t - s.arrival),
                inter_token: s
                    .first_token
                    .filter(|_| generated > 1)
                    .map(|t| (now - t) / (generated - 1)),
                e2e: now - s.arrival,
            };
            updates.push((
                s.id,
                SeqUpdate::Finished {
                    reason,
                    usage,
                    timings,
                    pinned,
                },
            ));
        }
        Ok(updates)
    }

    /// Queues a sequence whose first `blocks.len() * block_size` tokens already have their
    /// K/V in `blocks` (written by a KV import); only the rest is computed.
    pub fn add_with_blocks(&mut self, mut seq: Sequence, blocks: Vec<u32>) {
        let bs = self.block_size();
        seq.num_computed = (blocks.len() * bs).min(seq.tokens.len().saturating_sub(1));
        seq.blocks = blocks;
        // Imported tokens were not computed here: reported as cached, as vLLM reports
        // tokens its KV connector loaded.
        seq.cached_tokens = seq.num_computed;
        self.waiting.push_back(seq);
    }

    /// Finds a sequence by id in either queue.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut Sequence> {
        if let Some(s) = self.running.iter_mut().find(|s| s.id == id) {
            return Some(s);
        }
        self.waiting.iter_mut().find(|s| s.id == id)
    }
}
