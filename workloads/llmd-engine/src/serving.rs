//! The serving engine: one thread runs the scheduler's step loop over the model and its
//! KV cache; an async, cloneable handle submits requests and streams their tokens back.
//! The server never touches tensors — it talks to the engine only through this handle.

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use llmd_protocol::{root_hash, KvEvent};
use llmd_tokenizer::{StopMatcher, Tokenizer};
use tokio::sync::mpsc;

use crate::backend::Backend;
use crate::block_pool::BlockPool;
use crate::config::ModelConfig;
use crate::engine::FinishReason;
use crate::error::{EngineError, Result};
use crate::kv::{KvCache, KvCacheSize, KvLayout};
use crate::sampling::{Sampler, SamplingParams};
use crate::scheduler::{
    PinnedKv, SchedulerConfig, SchedulerCounters, SeqUpdate, Sequence, Timings, Usage,
};
use crate::sim::SimModel;

#[derive(Debug, Clone)]
pub struct ServingConfig {
    pub scheduler: SchedulerConfig,
    pub block_size: usize,
    pub kv_cache: KvCacheSize,
    /// Name the block hashes are seeded with (the served model name).
    pub model_id: String,
    /// Identifies the exact weights; KV is only exchanged between equal fingerprints.
    pub fingerprint: String,
    /// Pinned (exported) blocks are released after this long even if nobody pulled them.
    pub pin_timeout: Duration,
}

impl ServingConfig {
    pub fn new(model_id: impl Into<String>, fingerprint: impl Into<String>) -> Self {
        Self {
            scheduler: SchedulerConfig::default(),
            block_size: crate::engine::DEFAULT_BLOCK_SIZE,
            kv_cache: KvCacheSize::Blocks(4096),
            model_id: model_id.into(),
            fingerprint: fingerprint.into(),
            pin_timeout: Duration::from_secs(30),
        }
    }
}

/// KV blocks read out of the pool: what a decode worker needs to continue a sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct KvExport {
    pub layout: KvLayout,
    pub fingerprint: String,
    /// Tokens covered (whole blocks).
    pub num_tokens: usize,
    /// Block-major bytes, as [`KvCache::read_blocks`] lays them out.
    pub data: Vec<u8>,
}

/// Extra options of a submission.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// Keep the sequence's full blocks pinned after it finishes, for [`EngineHandle::export`].
    pub pin_kv: bool,
    /// Start from KV computed elsewhere (checked against this engine's layout and weights).
    pub import: Option<KvExport>,
}

/// The pinned blocks a finished request left behind.
#[derive(Debug, Clone, PartialEq)]
pub struct PinnedInfo {
    pub block_ids: Vec<u32>,
    pub num_tokens: usize,
}

/// What a request's stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// A sampled token and the text it completes (may be empty while a UTF-8 character or
    /// a possible stop string is incomplete).
    Token { id: u32, text: String },
    Finished {
        reason: FinishReason,
        usage: Usage,
        /// Text held back until the end (decoder tail, partial stop-string prefix).
        text: String,
        /// Blocks left pinned for export (when submitted with `pin_kv`).
        pinned: Option<PinnedInfo>,
    },
}

/// Engine-level statistics for the metrics endpoint.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub kv_usage: f64,
    pub kv_blocks_total: usize,
    pub kv_blocks_free: usize,
    /// Blocks held only by pins (exports not yet pulled or released).
    pub kv_blocks_pinned: usize,
    /// Distinct block hashes in the prefix cache (what the KV events describe).
    pub kv_blocks_cached: usize,
    /// Imports that could not be used (layout or fingerprint mismatch, no room).
    pub kv_import_rejected: u64,
    pub counters: SchedulerCounters,
}

enum Command {
    Submit {
        id: u64,
        prompt: Vec<u32>,
        params: SamplingParams,
        opts: Box<SubmitOptions>,
        out: mpsc::UnboundedSender<EngineMsg>,
    },
    Cancel(u64),
    Export {
        id: u64,
        reply: tokio::sync::oneshot::Sender<Result<KvExport>>,
    },
    Release(u64),
}

#[derive(Debug)]
enum EngineMsg {
    Token(u32),
    Finished {
        reason: FinishReason,
        usage: Usage,
        timings: Timings,
        pinned: Option<PinnedInfo>,
    },
    Failed(String),
}

struct Shared {
    stats: Mutex<EngineStats>,
}

/// Cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: std_mpsc::Sender<Command>,
    shared: Arc<Shared>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
    pub tokenizer: Tokenizer,
    pub model_config: Arc<ModelConfig>,
    pub block_size: usize,
    pub model_id: String,
    pub fingerprint: String,
    pub kv_layout: KvLayout,
}

/// Owns the engine thread; dropping it stops the loop once every handle is gone.
pub struct LlmEngine {
    handle: EngineHandle,
    thread: Option<JoinHandle<()>>,
}

impl LlmEngine {
    /// Starts the engine thread. `events`, if given, receives the pool's KV events in order.
    pub fn start(
        model: impl Into<Backend>,
        tokenizer: Tokenizer,
        cfg: ServingConfig,
        events: Option<mpsc::UnboundedSender<Vec<KvEvent>>>,
    ) -> Result<Self> {
        let model: Backend = model.into();
        let mcfg = model.config().clone();
        let mut layout =
            KvLayout::new(&mcfg, cfg.block_size, cfg.kv_cache, candle_core::DType::F32)?;
        if let Backend::Sim(_) = model {
            layout = SimModel::layout(layout);
        }
        let cache = KvCache::new(layout, model.device())?;
        let pool = BlockPool::new(layout.num_blocks, layout.block_size);
        let sched = crate::scheduler::Scheduler::new(
            cfg.scheduler,
            pool,
            root_hash(&cfg.model_id, None),
            mcfg.max_position_embeddings,
        );
        let shared = Arc::new(Shared {
            stats: Mutex::new(EngineStats {
                kv_blocks_total: layout.num_blocks,
                kv_blocks_free: layout.num_blocks,
                ..Default::default()
            }),
        });
        let (tx, rx) = std_mpsc::channel();
        let eos = tokenizer.eos_token_ids().to_vec();
        let loop_shared = shared.clone();
        let ctx = LoopCtx {
            eos,
            fingerprint: cfg.fingerprint.clone(),
            pin_timeout: cfg.pin_timeout,
        };
        let thread = std::thread::Builder::new()
            .name("llmd-engine".into())
            .spawn(move || run_loop(model, cache, sched, rx, loop_shared, events, ctx))
            .map_err(|e| {
                EngineError::InvalidRequest(format!("cannot start the engine thread: {e}"))
            })?;
        Ok(Self {
            handle: EngineHandle {
                tx,
                shared,
                next_id: Arc::new(std::sync::atomic::AtomicU64::new(1)),
                tokenizer,
                model_config: Arc::new(mcfg),
                block_size: cfg.block_size,
                model_id: cfg.model_id,
                fingerprint: cfg.fingerprint,
                kv_layout: layout,
            },
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }
}

impl Drop for LlmEngine {
    fn drop(&mut self) {
        // Replace our sender so that the loop ends once the last handle is dropped.
        let (tx, _) = std_mpsc::channel();
        self.handle.tx = tx;
        if let Some(t) = self.thread.take() {
            // Other handles may still be alive (e.g. in a server); only join when it ends.
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl EngineHandle {
    pub fn stats(&self) -> EngineStats {
        self.shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Checks a request against the model's context and the sampling rules.
    pub fn validate(&self, prompt_len: usize, params: &SamplingParams) -> Result<()> {
        params.validate()?;
        let ctx = self.model_config.max_position_embeddings;
        if prompt_len == 0 {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        if prompt_len + params.max_tokens > ctx {
            return Err(EngineError::InvalidRequest(format!(
                "this model's maximum context length is {ctx} tokens, but {} were requested ({prompt_len} in the prompt, {} to generate)",
                prompt_len + params.max_tokens,
                params.max_tokens
            )));
        }
        Ok(())
    }

    /// Submits a request; its tokens arrive on the returned stream. Dropping the stream
    /// cancels the request and frees its blocks at the next step.
    pub fn submit(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<RequestStream> {
        self.submit_with(prompt, params, SubmitOptions::default())
    }

    /// Submits with options: pin the KV for export, or start from imported KV.
    pub fn submit_with(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        opts: SubmitOptions,
    ) -> Result<RequestStream> {
        self.validate(prompt.len(), &params)?;
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (out, rx) = mpsc::unbounded_channel();
        let prompt_len = prompt.len();
        let stops = StopMatcher::new(params.stop.clone());
        self.tx
            .send(Command::Submit {
                id,
                prompt,
                params,
                opts: Box::new(opts),
                out,
            })
            .map_err(|_| EngineError::InvalidRequest("the engine has stopped".into()))?;
        Ok(RequestStream {
            id,
            rx,
            tx: self.tx.clone(),
            decoder: self.tokenizer.decoder(),
            stops,
            prompt_len,
            generated: 0,
            done: false,
            timings: None,
            submitted: std::time::Instant::now(),
            first_token: None,
        })
    }
}

impl EngineHandle {
    fn ask_export(
        &self,
        request_id: u64,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<KvExport>>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Command::Export {
                id: request_id,
                reply,
            })
            .map_err(|_| EngineError::InvalidRequest("the engine has stopped".into()))?;
        Ok(rx)
    }

    /// Reads the pinned KV a finished request (submitted with `pin_kv`) left behind.
    pub async fn export(&self, request_id: u64) -> Result<KvExport> {
        self.ask_export(request_id)?
            .await
            .map_err(|_| EngineError::InvalidRequest("the engine has stopped".into()))?
    }

    /// Blocking variant of [`export`](Self::export), for threads outside a runtime.
    pub fn export_blocking(&self, request_id: u64) -> Result<KvExport> {
        self.ask_export(request_id)?
            .blocking_recv()
            .map_err(|_| EngineError::InvalidRequest("the engine has stopped".into()))?
    }

    /// Unpins a request's exported blocks (they stay in the prefix cache until evicted).
    pub fn release(&self, request_id: u64) {
        let _ = self.tx.send(Command::Release(request_id));
    }
}

/// A request's token stream, with incremental detokenization and stop strings applied.
pub struct RequestStream {
    id: u64,
    rx: mpsc::UnboundedReceiver<EngineMsg>,
    tx: std_mpsc::Sender<Command>,
    decoder: llmd_tokenizer::IncrementalDecoder,
    stops: StopMatcher,
    prompt_len: usize,
    generated: usize,
    done: bool,
    timings: Option<Timings>,
    submitted: std::time::Instant,
    first_token: Option<std::time::Instant>,
}

impl RequestStream {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Timings, once the request has finished.
    pub fn timings(&self) -> Option<Timings> {
        self.timings
    }

    /// The next item; `None` after `Finished`. Errors end the stream.
    pub async fn next(&mut self) -> Option<Result<StreamItem>> {
        if self.done {
            return None;
        }
        let Some(msg) = self.rx.recv().await else {
            self.done = true;
            return Some(Err(EngineError::InvalidRequest(
                "the engine stopped".into(),
            )));
        };
        Some(self.on_msg(msg))
    }

    /// Blocking variant for threads outside any async runtime.
    pub fn next_blocking(&mut self) -> Option<Result<StreamItem>> {
        if self.done {
            return None;
        }
        let Some(msg) = self.rx.blocking_recv() else {
            self.done = true;
            return Some(Err(EngineError::InvalidRequest(
                "the engine stopped".into(),
            )));
        };
        Some(self.on_msg(msg))
    }

    fn on_msg(&mut self, msg: EngineMsg) -> Result<StreamItem> {
        match msg {
            EngineMsg::Token(id) => {
                self.generated += 1;
                if self.first_token.is_none() {
                    self.first_token = Some(std::time::Instant::now());
                }
                let piece = self.decoder.push(id)?;
                let r = self.stops.push(&piece);
                if r.stopped {
                    // A stop string: end here and let the engine drop the sequence.
                    let _ = self.tx.send(Command::Cancel(self.id));
                    self.done = true;
                    let now = std::time::Instant::now();
                    self.timings = Some(Timings {
                        queued: Duration::ZERO,
                        time_to_first_token: self.first_token.map(|t| t - self.submitted),
                        inter_token: self
                            .first_token
                            .filter(|_| self.generated > 1)
                            .map(|t| (now - t) / (self.generated as u32 - 1)),
                        e2e: now - self.submitted,
                    });
                    return Ok(StreamItem::Finished {
                        reason: FinishReason::Stop,
                        usage: Usage {
                            prompt_tokens: self.prompt_len,
                            completion_tokens: self.generated,
                            cached_tokens: 0,
                        },
                        text: r.emit,
                        pinned: None,
                    });
                }
                Ok(StreamItem::Token { id, text: r.emit })
            }
            EngineMsg::Finished {
                reason,
                usage,
                timings,
                pinned,
            } => {
                self.done = true;
                self.timings = Some(timings);
                let r = self.stops.push(&self.decoder.flush());
                let mut text = r.emit;
                let reason = if r.stopped {
                    FinishReason::Stop
                } else {
                    text.push_str(&self.stops.finish());
                    reason
                };
                Ok(StreamItem::Finished {
                    reason,
                    usage,
                    text,
                    pinned,
                })
            }
            EngineMsg::Failed(m) => {
                self.done = true;
                Err(EngineError::InvalidRequest(m))
            }
        }
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.tx.send(Command::Cancel(self.id));
        }
    }
}

struct Live {
    out: mpsc::UnboundedSender<EngineMsg>,
}

struct LoopCtx {
    eos: Vec<u32>,
    fingerprint: String,
    pin_timeout: Duration,
}

/// Why an import cannot be used here, if it cannot.
fn import_mismatch(
    imp: &KvExport,
    layout: &KvLayout,
    fingerprint: &str,
    prompt_len: usize,
) -> Option<String> {
    let l = &imp.layout;
    if imp.fingerprint != fingerprint {
        return Some(format!(
            "model fingerprint {} != ours {fingerprint}",
            imp.fingerprint
        ));
    }
    if (
        l.num_layers,
        l.num_kv_heads,
        l.head_dim,
        l.block_size,
        l.dtype,
    ) != (
        layout.num_layers,
        layout.num_kv_heads,
        layout.head_dim,
        layout.block_size,
        layout.dtype,
    ) {
        return Some(format!("KV layout {l:?} != ours {layout:?}"));
    }
    if !imp.num_tokens.is_multiple_of(layout.block_size) || imp.num_tokens > prompt_len {
        return Some(format!(
            "{} imported tokens for a prompt of {prompt_len}",
            imp.num_tokens
        ));
    }
    if imp.data.len() != imp.num_tokens / layout.block_size * layout.bytes_per_block() {
        return Some(format!(
            "{} bytes of KV for {} tokens",
            imp.data.len(),
            imp.num_tokens
        ));
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn run_loop(
    model: Backend,
    cache: KvCache,
    mut sched: crate::scheduler::Scheduler,
    rx: std_mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    events: Option<mpsc::UnboundedSender<Vec<KvEvent>>>,
    ctx: LoopCtx,
) {
    let mut live: std::collections::HashMap<u64, Live> = std::collections::HashMap::new();
    let mut pinned: std::collections::HashMap<u64, PinnedKv> = std::collections::HashMap::new();
    let mut import_rejected = 0u64;
    loop {
        // Idle: block for the next command (waking to expire pins); busy: take whatever
        // has arrived.
        let mut cmds = Vec::new();
        if !sched.has_work() {
            if pinned.is_empty() {
                match rx.recv() {
                    Ok(c) => cmds.push(c),
                    Err(_) => break,
                }
            } else {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(c) => cmds.push(c),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        loop {
            match rx.try_recv() {
                Ok(c) => cmds.push(c),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    if !sched.has_work() && cmds.is_empty() {
                        return;
                    }
                    break;
                }
            }
        }
        for c in cmds {
            match c {
                Command::Submit {
                    id,
                    prompt,
                    params,
                    opts,
                    out,
                } => {
                    let prompt_len = prompt.len();
                    let mut seq = Sequence::new(id, prompt, Sampler::new(params), ctx.eos.clone());
                    seq.pin_on_finish = opts.pin_kv;
                    let mut imported = None;
                    if let Some(imp) = opts.import {
                        match import_mismatch(&imp, &cache.layout, &ctx.fingerprint, prompt_len) {
                            Some(why) => {
                                import_rejected += 1;
                                tracing::warn!(%why, "KV import rejected; computing the prompt instead");
                            }
                            None => {
                                let n = imp.num_tokens / cache.layout.block_size;
                                match sched.pool.allocate(n) {
                                    Some(blocks) => match cache.write_blocks(&blocks, &imp.data) {
                                        Ok(()) => imported = Some(blocks),
                                        Err(e) => {
                                            sched.pool.free(&blocks);
                                            import_rejected += 1;
                                            tracing::warn!(error = %e, "KV import failed; computing the prompt instead");
                                        }
                                    },
                                    None => {
                                        import_rejected += 1;
                                        tracing::warn!(
                                            "no room for imported KV; computing the prompt instead"
                                        );
                                    }
                                }
                            }
                        }
                    }
                    let added = match imported {
                        Some(blocks) => {
                            sched.add_with_blocks(seq, blocks);
                            Ok(())
                        }
                        None => sched.add(seq),
                    };
                    match added {
                        Ok(()) => {
                            live.insert(id, Live { out });
                        }
                        Err(msg) => {
                            let _ = out.send(EngineMsg::Failed(msg));
                        }
                    }
                }
                Command::Cancel(id) => {
                    if let Some(s) = sched.get_mut(id) {
                        s.cancelled = true;
                    }
                }
                Command::Export { id, reply } => {
                    let res = match pinned.get(&id) {
                        Some(p) => cache.read_blocks(&p.blocks).map(|data| KvExport {
                            layout: cache.layout,
                            fingerprint: ctx.fingerprint.clone(),
                            num_tokens: p.num_tokens,
                            data,
                        }),
                        None => Err(EngineError::InvalidRequest(format!(
                            "no pinned KV for request {id} (released, expired or never pinned)"
                        ))),
                    };
                    let _ = reply.send(res);
                }
                Command::Release(id) => {
                    if let Some(p) = pinned.remove(&id) {
                        sched.pool.free(&p.blocks);
                    }
                }
            }
        }
        // Pins nobody pulled in time are released, so blocks are never stranded.
        let now = std::time::Instant::now();
        pinned.retain(|id, p| {
            let keep = now.duration_since(p.since) < ctx.pin_timeout;
            if !keep {
                tracing::warn!(request = id, "pinned KV expired before it was pulled");
                sched.pool.free(&p.blocks);
            }
            keep
        });
        // A client that went away cancels its sequence.
        for s in sched.running.iter_mut().chain(sched.waiting.iter_mut()) {
            if live.get(&s.id).is_none_or(|l| l.out.is_closed()) {
                s.cancelled = true;
            }
        }
        for id in sched.reap_cancelled() {
            live.remove(&id);
        }
        let mut outgoing: Vec<(u64, EngineMsg)> = Vec::new();
        if sched.has_work() {
            match sched.step(&model, &cache) {
                Ok(updates) => {
                    for (id, u) in updates {
                        match u {
                            SeqUpdate::Token(t) => outgoing.push((id, EngineMsg::Token(t))),
                            SeqUpdate::Finished {
                                reason,
                                usage,
                                timings,
                                pinned: pin,
                            } => {
                                let info = pin.as_ref().map(|p| PinnedInfo {
                                    block_ids: p.blocks.clone(),
                                    num_tokens: p.num_tokens,
                                });
                                if let Some(p) = pin {
                                    pinned.insert(id, p);
                                }
                                outgoing.push((
                                    id,
                                    EngineMsg::Finished {
                                        reason,
                                        usage,
                                        timings,
                                        pinned: info,
                                    },
                                ));
                            }
                            SeqUpdate::Failed(m) => outgoing.push((id, EngineMsg::Failed(m))),
                        }
                    }
                }
                Err(e) => {
                    // A failed forward pass fails the sequences in it, not the engine.
                    tracing::error!(error = %e, "engine step failed");
                    for s in sched.running.iter_mut() {
                        s.cancelled = true;
                        outgoing.push((s.id, EngineMsg::Failed(format!("inference failed: {e}"))));
                    }
                    sched.reap_cancelled();
                }
            }
        }
        // Events and stats first, so that a client that sees its request finish also sees
        // its blocks back in the pool and the events that say so.
        if let Some(ev) = &events {
            let batch = sched.pool.take_events();
            if !batch.is_empty() {
                let _ = ev.send(batch);
            }
        } else {
            sched.pool.take_events();
        }

        if let Ok(mut st) = shared.stats.lock() {
            st.running = sched.running.len();
            st.waiting = sched.waiting.len();
            st.kv_usage = sched.pool.usage();
            st.kv_blocks_free = sched.pool.num_free();
            st.kv_blocks_pinned = pinned.values().map(|p| p.blocks.len()).sum();
            st.kv_blocks_cached = sched.pool.num_cached();
            st.kv_import_rejected = import_rejected;
            st.counters = sched.counters;
        }
        for (id, msg) in outgoing {
            let last = !matches!(msg, EngineMsg::Token(_));
            let target = if last { live.remove(&id) } else { None };
            match (&target, live.get(&id)) {
                (Some(l), _) | (None, Some(l)) => {
                    let _ = l.out.send(msg);
                }
                _ => {}
            }
        }
        if let Ok(mut st) = shared.stats.lock() {
            // Pins may have expired and imports been counted since the step.
            st.kv_blocks_free = sched.pool.num_free();
            st.kv_blocks_pinned = pinned.values().map(|p| p.blocks.len()).sum();
        }
    }
}
