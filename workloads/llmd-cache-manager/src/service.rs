//! `llmd cache-manager`: KV events in (ZMQ SUB: workers connect to our bound endpoint, or
//! we connect to the publishers the config lists), the index in the middle, scores out
//! over HTTP.
//!
//! Order and gaps: the subscriber reports, per worker stream, the sequence numbers it did
//! not see. Before applying a batch that follows a gap the missed batches are fetched from
//! the worker's replay socket (when the config gives one) and applied first; if they cannot
//! be had, the worker's entries are cleared and rebuilt from its new events — a worker
//! shown holding less than it has only costs a cache miss, one shown holding what it lost
//! would attract traffic it cannot serve fast. A stream that restarts (sequence numbers
//! going backwards: the worker restarted with an empty cache) clears the worker too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use llmd_kvevents::{parse_topic, Received, Subscriber};
use llmd_protocol::openai::ErrorResponse;
use llmd_protocol::score::{ScoreRequest, ScoreResponse};
use llmd_protocol::{EventBatch, KvEvent};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::Index;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cache-manager configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("KV events: {0}")]
    Events(#[from] llmd_kvevents::KvEventsError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A worker the config lists: its id (`host:port` of its HTTP server) and, optionally, its
/// KV event publisher to connect to and its replay socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerEntry {
    pub id: String,
    #[serde(default)]
    pub events: Option<String>,
    #[serde(default)]
    pub replay: Option<String>,
}

/// The YAML file the charm writes (`--config`), reloaded on SIGHUP or when it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub workers: Vec<WorkerEntry>,
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub host: String,
    pub port: u16,
    /// `tcp://HOST:PORT` to bind the SUB socket on (workers connect their publishers).
    pub events_bind: Option<String>,
    pub max_blocks: usize,
    /// Workers silent longer than this are dropped from the index.
    pub worker_ttl: Duration,
    pub config_file: Option<PathBuf>,
    /// How long a replay may take before the worker is cleared instead.
    pub replay_timeout: Duration,
    /// `redis://HOST:PORT[/DB]` to keep the index in Redis/Valkey (shared by several
    /// units); none keeps it in memory.
    pub index_url: Option<String>,
}

impl ServiceConfig {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            events_bind: None,
            max_blocks: 1 << 20,
            worker_ttl: Duration::from_secs(3600),
            config_file: None,
            replay_timeout: Duration::from_secs(5),
            index_url: None,
        }
    }
}

pub fn read_config(path: &std::path::Path) -> Result<FileConfig, ServiceError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ServiceError::Config(format!("cannot read {}: {e}", path.display())))?;
    serde_yaml_ng::from_str(&text)
        .map_err(|e| ServiceError::Config(format!("invalid {}: {e}", path.display())))
}

struct Metrics {
    registry: Registry,
    events: IntCounterVec,
    gaps: IntCounter,
    replays: IntCounter,
    replay_failures: IntCounter,
    restarts: IntCounter,
    blocks: IntGauge,
    workers: IntGauge,
    evicted: IntGauge,
    orphaned: IntGauge,
    score_latency: Histogram,
}

impl Metrics {
    fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        let build = IntGauge::with_opts(
            Opts::new("llmd_build_info", "llmd version (value 1)")
                .const_label("version", env!("CARGO_PKG_VERSION"))
                .const_label("component", "cache-manager"),
        )?;
        build.set(1);
        registry.register(Box::new(build))?;
        Ok(Self {
            events: reg!(IntCounterVec::new(
                Opts::new(
                    "llmd_cache_manager_events_total",
                    "KV events applied, by type."
                ),
                &["type"]
            )?),
            gaps: reg!(IntCounter::new(
                "llmd_cache_manager_gaps_total",
                "Gaps seen in workers' event sequence numbers."
            )?),
            replays: reg!(IntCounter::new(
                "llmd_cache_manager_replays_total",
                "Gaps filled from a worker's replay socket."
            )?),
            replay_failures: reg!(IntCounter::new(
                "llmd_cache_manager_replay_failures_total",
                "Gaps that could not be filled (the worker's entries were cleared)."
            )?),
            restarts: reg!(IntCounter::new(
                "llmd_cache_manager_worker_restarts_total",
                "Event streams that started over (the worker's entries were cleared)."
            )?),
            blocks: reg!(IntGauge::new(
                "llmd_cache_manager_index_blocks",
                "Distinct blocks in the index."
            )?),
            workers: reg!(IntGauge::new(
                "llmd_cache_manager_workers",
                "Workers known to the index."
            )?),
            evicted: reg!(IntGauge::new(
                "llmd_cache_manager_evicted_blocks",
                "Blocks dropped to keep the index within --max-blocks (since start)."
            )?),
            orphaned: reg!(IntGauge::new(
                "llmd_cache_manager_orphaned_blocks",
                "Stored blocks not indexed because their parent was unknown (since start)."
            )?),
            score_latency: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "llmd_cache_manager_score_seconds",
                    "Time to score one request (index lookup only)."
                )
                .buckets(vec![
                    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3
                ])
            )?),
            registry,
        })
    }
}

/// What the ingest knows of one worker stream.
#[derive(Debug, Clone, Serialize)]
struct StreamState {
    model: String,
    last_seq: u64,
    #[serde(skip)]
    last_event: Instant,
}

/// Where the index lives: this process, or a Redis/Valkey shared by several units. One of
/// these exists per process, so the variants' size difference does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Store {
    Memory(RwLock<Index>),
    Redis(crate::redis_index::RedisIndex),
}

impl Store {
    async fn apply(&self, worker: &str, model: &str, events: &[KvEvent]) {
        match self {
            Store::Memory(i) => {
                if let Ok(mut i) = i.write() {
                    for ev in events {
                        i.apply(worker, model, ev);
                    }
                }
            }
            Store::Redis(r) => {
                for ev in events {
                    if let Err(e) = r.apply(worker, model, ev).await {
                        tracing::error!(error = %e, "index update failed");
                    }
                }
            }
        }
    }

    async fn clear_worker(&self, worker: &str) {
        match self {
            Store::Memory(i) => {
                if let Ok(mut i) = i.write() {
                    i.clear_worker(worker);
                }
            }
            Store::Redis(r) => {
                if let Err(e) = r.clear_worker(worker).await {
                    tracing::error!(error = %e, "index update failed");
                }
            }
        }
    }

    async fn remove_worker(&self, worker: &str) {
        match self {
            Store::Memory(i) => {
                if let Ok(mut i) = i.write() {
                    i.remove_worker(worker);
                }
            }
            Store::Redis(r) => {
                if let Err(e) = r.remove_worker(worker).await {
                    tracing::error!(error = %e, "index update failed");
                }
            }
        }
    }

    async fn workers(&self) -> Vec<(String, String, usize)> {
        match self {
            Store::Memory(i) => i.read().map(|i| i.workers()).unwrap_or_default(),
            Store::Redis(r) => r.workers().await.unwrap_or_default(),
        }
    }

    /// (blocks, evicted, orphaned)
    async fn summary(&self) -> (usize, u64, u64) {
        match self {
            Store::Memory(i) => i
                .read()
                .map(|i| (i.len(), i.stats().evicted, i.stats().orphaned))
                .unwrap_or_default(),
            Store::Redis(r) => r.summary().await.unwrap_or_default(),
        }
    }
}

struct Shared {
    index: Store,
    streams: Mutex<HashMap<String, StreamState>>,
    file: Mutex<FileConfig>,
    metrics: Metrics,
    cfg: ServiceConfig,
}

pub struct RunningCacheManager {
    pub http_addr: SocketAddr,
    /// The bound events endpoint with its actual port.
    pub events_endpoint: Option<String>,
    pub server: tokio::task::JoinHandle<()>,
}

/// Applies one batch to the index, counting its events.
async fn apply_batch(sh: &Shared, worker: &str, model: &str, batch: &EventBatch) {
    for ev in &batch.events {
        let kind = match ev {
            KvEvent::BlockStored { .. } => "BlockStored",
            KvEvent::BlockRemoved { .. } => "BlockRemoved",
            KvEvent::AllBlocksCleared => "AllBlocksCleared",
        };
        sh.metrics.events.with_label_values(&[kind]).inc();
    }
    sh.index.apply(worker, model, &batch.events).await;
}

async fn ingest(sh: Arc<Shared>, mut sub: Subscriber) {
    loop {
        let r: Received = sub.recv().await;
        let Some((worker, model)) = parse_topic(&r.topic) else {
            tracing::warn!(topic = %r.topic, "KV events under a topic that names no worker; skipped");
            continue;
        };
        let (worker, model) = (worker.to_string(), model.to_string());
        if r.restarted {
            sh.metrics.restarts.inc();
            sh.index.clear_worker(&worker).await;
        }
        if let Some(missed) = r.missed.clone() {
            sh.metrics.gaps.inc();
            let replay = sh
                .file
                .lock()
                .ok()
                .and_then(|f| f.workers.iter().find(|w| w.id == worker)?.replay.clone());
            let mut filled = false;
            if let Some(ep) = replay {
                match llmd_kvevents::replay(&ep, missed.start, sh.cfg.replay_timeout).await {
                    Ok(batches) if batches.first().is_some_and(|b| b.seq <= missed.start) => {
                        for b in batches.iter().filter(|b| b.seq < missed.end) {
                            apply_batch(&sh, &worker, &model, &b.batch).await;
                        }
                        filled = true;
                        sh.metrics.replays.inc();
                    }
                    Ok(_) => {
                        tracing::warn!(%worker, ?missed, "the replay buffer no longer holds the missed batches")
                    }
                    Err(e) => tracing::warn!(%worker, error = %e, "replay failed"),
                }
            }
            // A late join with nothing to replay loses nothing we ever had.
            if !filled && missed.start > 0 {
                sh.metrics.replay_failures.inc();
                tracing::warn!(%worker, ?missed, "missed KV events; clearing the worker's entries to rebuild them");
                sh.index.clear_worker(&worker).await;
            }
        }
        apply_batch(&sh, &worker, &model, &r.batch).await;
        if let Ok(mut s) = sh.streams.lock() {
            s.insert(
                worker,
                StreamState {
                    model,
                    last_seq: r.seq,
                    last_event: Instant::now(),
                },
            );
        }
    }
}

/// Drops workers silent past the TTL, and those the config no longer lists (when it lists
/// any).
async fn sweep(sh: &Shared) {
    let ttl = sh.cfg.worker_ttl;
    let listed: Option<Vec<String>> = sh.file.lock().ok().and_then(|f| {
        (!f.workers.is_empty()).then(|| f.workers.iter().map(|w| w.id.clone()).collect())
    });
    let mut gone = Vec::new();
    if let Ok(mut streams) = sh.streams.lock() {
        streams.retain(|id, st| {
            let keep =
                st.last_event.elapsed() < ttl && listed.as_ref().is_none_or(|l| l.contains(id));
            if !keep {
                gone.push(id.clone());
            }
            keep
        });
    }
    for id in &gone {
        tracing::info!(worker = %id, "dropping worker from the index");
        sh.index.remove_worker(id).await;
    }
    if let Some(l) = &listed {
        for (id, _, _) in sh.index.workers().await {
            if !l.contains(&id) {
                sh.index.remove_worker(&id).await;
            }
        }
    }
}

fn bad(msg: impl Into<String>, param: Option<&str>) -> warp::reply::Response {
    let e = ErrorResponse::invalid_request(msg, param);
    warp::reply::with_status(warp::reply::json(&e), StatusCode::BAD_REQUEST).into_response()
}

async fn score(sh: &Shared, body: &[u8], span: &tracing::Span) -> warp::reply::Response {
    let req: ScoreRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad(format!("invalid score request: {e}"), None),
    };
    if req.token_ids.is_some() == req.block_hashes.is_some() {
        return bad(
            "give exactly one of token_ids and block_hashes",
            Some("token_ids"),
        );
    }
    if req.block_size == Some(0) {
        return bad("block_size must be at least 1", Some("block_size"));
    }
    let t = Instant::now();
    let only = req.workers.as_deref();
    let scored = match &sh.index {
        Store::Memory(index) => {
            let Ok(index) = index.read() else {
                return ErrorResponse::internal("index unavailable").status_reply();
            };
            match (&req.token_ids, &req.block_hashes) {
                (Some(t), _) => index.score_tokens(&req.model, t, req.block_size, only),
                (_, Some(h)) => {
                    let bs = req
                        .block_size
                        .or_else(|| index.block_size(&req.model))
                        .unwrap_or(llmd_protocol::DEFAULT_BLOCK_SIZE);
                    index.score_keys(&req.model, h, bs, only)
                }
                _ => {
                    return bad(
                        "give exactly one of token_ids and block_hashes",
                        Some("token_ids"),
                    )
                }
            }
        }
        Store::Redis(r) => {
            let bs = match req.block_size {
                Some(b) => b,
                None => r
                    .block_size(&req.model)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(llmd_protocol::DEFAULT_BLOCK_SIZE),
            };
            let keys = match (&req.token_ids, &req.block_hashes) {
                (Some(t), _) => {
                    llmd_protocol::block_hashes(llmd_protocol::root_hash(&req.model, None), t, bs)
                }
                (_, Some(h)) => h.clone(),
                _ => {
                    return bad(
                        "give exactly one of token_ids and block_hashes",
                        Some("token_ids"),
                    )
                }
            };
            match r.score_keys(&req.model, &keys, bs, only).await {
                Ok(s) => s,
                Err(e) => return ErrorResponse::internal(e.to_string()).status_reply(),
            }
        }
    };
    sh.metrics.score_latency.observe(t.elapsed().as_secs_f64());
    span.record("gen_ai.request.model", req.model.as_str());
    // i64: tracing-opentelemetry exports u64 fields as strings.
    span.record("llmd.total_blocks", scored.total_blocks as i64);
    span.record("llmd.workers", scored.workers.len() as i64);
    warp::reply::json(&ScoreResponse {
        model: req.model,
        block_size: scored.block_size,
        total_blocks: scored.total_blocks,
        workers: scored.workers,
    })
    .into_response()
}

trait StatusReply {
    fn status_reply(self) -> warp::reply::Response;
}

impl StatusReply for ErrorResponse {
    fn status_reply(self) -> warp::reply::Response {
        let st = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        warp::reply::with_status(warp::reply::json(&self), st).into_response()
    }
}

async fn workers(sh: &Shared) -> warp::reply::Response {
    let streams = sh.streams.lock().map(|s| s.clone()).unwrap_or_default();
    let index_workers = sh.index.workers().await;
    let list: Vec<serde_json::Value> = index_workers
        .into_iter()
        .map(|(id, model, blocks)| {
            let st = streams.get(&id);
            serde_json::json!({
                "worker": id,
                "model": model,
                "blocks": blocks,
                "last_seq": st.map(|s| s.last_seq),
                "last_event_age_s": st.map(|s| s.last_event.elapsed().as_secs_f64()),
            })
        })
        .collect();
    warp::reply::json(&serde_json::json!({ "workers": list })).into_response()
}

async fn metrics_text(sh: &Shared) -> String {
    let (blocks, evicted, orphaned) = sh.index.summary().await;
    sh.metrics.blocks.set(blocks as i64);
    sh.metrics
        .workers
        .set(sh.index.workers().await.len() as i64);
    sh.metrics.evicted.set(evicted as i64);
    sh.metrics.orphaned.set(orphaned as i64);
    let mut out = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&sh.metrics.registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Binds, starts ingesting and serving, and returns once listening.
pub async fn start(
    cfg: ServiceConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunningCacheManager, ServiceError> {
    let store = match &cfg.index_url {
        Some(url) => Store::Redis(
            crate::redis_index::RedisIndex::connect(url, cfg.max_blocks)
                .await
                .map_err(|e| ServiceError::Config(format!("index {url}: {e}")))?,
        ),
        None => Store::Memory(RwLock::new(Index::new(cfg.max_blocks))),
    };
    start_with_store(cfg, store, shutdown).await
}

/// [`start`] over an index built elsewhere (benchmarks load a million blocks directly).
pub async fn start_with_index(
    cfg: ServiceConfig,
    index: Index,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunningCacheManager, ServiceError> {
    start_with_store(cfg, Store::Memory(RwLock::new(index)), shutdown).await
}

async fn start_with_store(
    cfg: ServiceConfig,
    store: Store,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunningCacheManager, ServiceError> {
    let file = match &cfg.config_file {
        Some(p) => read_config(p)?,
        None => FileConfig::default(),
    };
    let mut sub = Subscriber::new().await?;
    let events_endpoint = match &cfg.events_bind {
        Some(ep) => Some(sub.bind(ep).await?),
        None => None,
    };
    for w in &file.workers {
        if let Some(ep) = &w.events {
            sub.connect(ep).await?;
        }
    }
    let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
        .await
        .map_err(|source| ServiceError::Bind {
            addr: format!("{}:{}", cfg.host, cfg.port),
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| ServiceError::Bind {
        addr: format!("{}:{}", cfg.host, cfg.port),
        source,
    })?;
    let sh = Arc::new(Shared {
        index: store,
        streams: Mutex::new(HashMap::new()),
        file: Mutex::new(file),
        metrics: Metrics::new()?,
        cfg,
    });
    let ingest_task = tokio::spawn(ingest(sh.clone(), sub));
    // Sweeps and config reloads (SIGHUP, or the file's modification time changing).
    let sweeper = {
        let sh = sh.clone();
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut mtime = sh
                .cfg
                .config_file
                .as_ref()
                .and_then(|p| std::fs::metadata(p).ok()?.modified().ok());
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                let hupped = tokio::select! {
                    _ = tick.tick() => false,
                    _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
                };
                if let Some(p) = &sh.cfg.config_file {
                    let now = std::fs::metadata(p).ok().and_then(|m| m.modified().ok());
                    if hupped || now != mtime {
                        mtime = now;
                        match read_config(p) {
                            Ok(f) => {
                                tracing::info!(workers = f.workers.len(), "config reloaded");
                                if let Ok(mut cur) = sh.file.lock() {
                                    *cur = f;
                                }
                            }
                            // A bad file leaves the running configuration in place.
                            Err(e) => tracing::error!(error = %e, "config not reloaded"),
                        }
                    }
                }
                sweep(&sh).await;
            }
        })
    };
    let with = {
        let sh = sh.clone();
        warp::any().map(move || sh.clone())
    };
    let score_route = warp::path!("v1" / "score")
        .and(warp::post())
        .and(with.clone())
        .and(warp::header::headers_cloned())
        .and(warp::body::content_length_limit(16 << 20))
        .and(warp::body::bytes())
        .then(
            |sh: Arc<Shared>, h: warp::http::HeaderMap, b: bytes::Bytes| async move {
                // In the caller's (the scheduler's) trace when it sends a traceparent.
                let span = tracing::info_span!(
                    "llmd.cache_manager.score",
                    otel.kind = "server",
                    gen_ai.request.model = tracing::field::Empty,
                    llmd.total_blocks = tracing::field::Empty,
                    llmd.workers = tracing::field::Empty,
                    http.response.status_code = tracing::field::Empty,
                );
                llmd_telemetry::set_parent(&span, llmd_telemetry::extract_context(&h));
                let res = score(&sh, &b, &span).instrument(span.clone()).await;
                span.record(
                    "http.response.status_code",
                    i64::from(res.status().as_u16()),
                );
                res
            },
        );
    let workers_route = warp::path!("v1" / "workers")
        .and(warp::get())
        .and(with.clone())
        .then(|sh: Arc<Shared>| async move { workers(&sh).await });
    let health = warp::path!("health")
        .and(warp::get())
        .map(|| StatusCode::OK.into_response());
    let metrics =
        warp::path!("metrics")
            .and(warp::get())
            .and(with)
            .then(|sh: Arc<Shared>| async move {
                warp::reply::with_header(
                    metrics_text(&sh).await,
                    "content-type",
                    "text/plain; version=0.0.4",
                )
                .into_response()
            });
    let routes = score_route
        .or(workers_route)
        .unify()
        .or(health)
        .unify()
        .or(metrics)
        .unify()
        .recover(|r: warp::Rejection| async move {
            let e = if r.is_not_found() {
                ErrorResponse::not_found("not found", None)
            } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
                ErrorResponse::payload_too_large("the request body is too large")
            } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
                ErrorResponse::method_not_allowed("method not allowed")
            } else {
                ErrorResponse::invalid_request(format!("{r:?}"), None)
            };
            Ok::<_, std::convert::Infallible>(e.status_reply())
        });
    let server = tokio::spawn(async move {
        warp::serve(routes)
            .incoming(listener)
            .graceful(shutdown)
            .run()
            .await;
        ingest_task.abort();
        sweeper.abort();
    });
    tracing::info!(%http_addr, ?events_endpoint, "llmd cache-manager listening");
    Ok(RunningCacheManager {
        http_addr,
        events_endpoint,
        server,
    })
}
