//! `llmd scheduler`: the one address clients use. An OpenAI-compatible gateway in front of
//! the workers that routes each request, as llm-d's scheduler does, by how much of its
//! prompt each worker already caches (the cache-manager's index, or the scheduler's own
//! record) weighed against load (scraped from the workers' `/metrics` or read from
//! Prometheus), and splits long uncached prompts into a prefill leg and a decode leg with
//! vLLM's `kv_transfer_params`.
//!
//! Nothing here needs a leader: several schedulers may serve side by side over one
//! cache-manager (their approximate records differ; the precise index is shared).

mod api;
pub mod config;
mod metrics;
pub mod pool;
pub mod prefix;
pub mod routing;
pub mod tokenize;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use warp::Filter;

pub use config::{FileConfig, Role, RoutingConfig, WorkerSpec};
pub use pool::{MetricNames, MetricsSource, PoolOptions};

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("scheduler configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
}

/// How the scheduler runs. Workers come from `workers` (the `--worker` flags) plus the
/// config file's list; the file may also set the cache-manager and the routing.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub host: String,
    pub port: u16,
    pub workers: Vec<WorkerSpec>,
    pub config_file: Option<PathBuf>,
    pub cache_manager: Option<String>,
    pub routing: RoutingConfig,
    /// Profile for every leg (`--profile`); see [`routing::Profiles::build`].
    pub profile: Option<String>,
    /// Overrides the routing config's P/D threshold (uncached prompt tokens; 0: never split).
    pub pd_threshold: Option<usize>,
    pub pool: PoolOptions,
    /// How long a score request to the cache-manager may take before routing on load alone.
    pub cache_manager_timeout: Duration,
    /// A request's whole time at the workers, stream included.
    pub request_timeout: Duration,
    /// Requests in flight beyond which new ones get 429 + Retry-After.
    pub max_inflight: usize,
    pub max_body_bytes: u64,
    /// Blocks the approximate prefix index remembers.
    pub approx_capacity: usize,
}

impl SchedulerConfig {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            workers: Vec::new(),
            config_file: None,
            cache_manager: None,
            routing: RoutingConfig::builtin(),
            profile: None,
            pd_threshold: None,
            pool: PoolOptions {
                interval: Duration::from_secs(1),
                source: MetricsSource::Scrape,
                names: MetricNames::default(),
            },
            cache_manager_timeout: Duration::from_millis(20),
            request_timeout: Duration::from_secs(600),
            max_inflight: 4096,
            max_body_bytes: 16 << 20,
            approx_capacity: 1 << 20,
        }
    }
}

/// What reloads replace together.
struct Live {
    profiles: Arc<routing::Profiles>,
    cache_manager: Option<String>,
    /// The cache-manager's `/v1/score`, parsed once.
    score_url: Option<reqwest::Url>,
}

pub(crate) struct State {
    cfg: SchedulerConfig,
    pool: Arc<pool::Pool>,
    live: RwLock<Arc<Live>>,
    approx: Mutex<prefix::ApproxIndex>,
    http: reqwest::Client,
    metrics: metrics::Metrics,
    inflight: AtomicUsize,
}

impl State {
    fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .map(|l| l.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }
}

/// Builds what a (re)load sets: the worker list, the routing profiles, the cache-manager.
fn load(cfg: &SchedulerConfig) -> Result<(Vec<WorkerSpec>, Live), SchedulerError> {
    let file = match &cfg.config_file {
        Some(p) => config::read_config(p)?,
        None => FileConfig::default(),
    };
    let mut workers = cfg.workers.clone();
    workers.extend(file.workers);
    let routing = file.routing.as_ref().unwrap_or(&cfg.routing);
    let mut profiles = routing::Profiles::build(routing, cfg.profile.as_deref())?;
    if let Some(t) = cfg.pd_threshold {
        profiles.pd_threshold = t;
    }
    let cache_manager = file
        .cache_manager
        .or_else(|| cfg.cache_manager.clone())
        .map(|u| u.trim_end_matches('/').to_string());
    let score_url = match &cache_manager {
        Some(u) => Some(
            reqwest::Url::parse(&format!("{u}/v1/score"))
                .map_err(|e| SchedulerError::Config(format!("cache-manager url {u:?}: {e}")))?,
        ),
        None => None,
    };
    Ok((
        workers,
        Live {
            profiles: Arc::new(profiles),
            cache_manager,
            score_url,
        },
    ))
}

pub struct RunningScheduler {
    pub addr: SocketAddr,
    pub server: tokio::task::JoinHandle<()>,
}

/// Starts serving and returns once listening. Stops when `shutdown` completes, after the
/// requests in flight finish.
pub async fn start(
    cfg: SchedulerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningScheduler, SchedulerError> {
    let (workers, live) = load(&cfg)?;
    let bind_err = |source| SchedulerError::Bind {
        addr: format!("{}:{}", cfg.host, cfg.port),
        source,
    };
    let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
        .await
        .map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()?;
    let pool = pool::Pool::new(http.clone(), cfg.pool.clone());
    pool.set_workers(&workers)?;
    let state = Arc::new(State {
        approx: Mutex::new(prefix::ApproxIndex::new(cfg.approx_capacity)),
        cfg,
        pool,
        live: RwLock::new(Arc::new(live)),
        http,
        metrics: metrics::Metrics::new()?,
        inflight: AtomicUsize::new(0),
    });
    if state.cfg.config_file.is_some() {
        tokio::spawn(reload_loop(Arc::downgrade(&state)));
    }
    let routes = api::routes(state);
    let server = tokio::spawn(async move {
        warp::serve(routes.with(warp::log::custom(|_| {})))
            .incoming(listener)
            .graceful(shutdown)
            .run()
            .await;
    });
    tracing::info!(%addr, "llmd scheduler listening");
    Ok(RunningScheduler { addr, server })
}

/// Reloads the config file on SIGHUP or when its modification time changes. A file that
/// does not parse changes nothing (the error is logged); requests in flight keep the
/// workers they were sent to.
async fn reload_loop(state: std::sync::Weak<State>) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mtime = |s: &State| {
        s.cfg
            .config_file
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok()?.modified().ok())
    };
    let mut seen = match state.upgrade() {
        Some(s) => mtime(&s),
        None => return,
    };
    loop {
        let hupped = tokio::select! {
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
            _ = tokio::time::sleep(Duration::from_millis(500)) => false,
        };
        let Some(s) = state.upgrade() else {
            return;
        };
        let now = mtime(&s);
        if !hupped && now == seen {
            continue;
        }
        seen = now;
        match load(&s.cfg).and_then(|(workers, live)| {
            s.pool.set_workers(&workers)?;
            Ok((workers.len(), live))
        }) {
            Ok((n, live)) => {
                if let Ok(mut l) = s.live.write() {
                    *l = Arc::new(live);
                }
                tracing::info!(workers = n, "config reloaded");
            }
            Err(e) => tracing::error!(error = %e, "config not reloaded; keeping the old one"),
        }
    }
}
