//! `llmd worker`: an OpenAI-compatible HTTP server over the batching engine, a drop-in for a
//! vLLM server as far as clients, schedulers, Prometheus and the cache-manager can tell —
//! vLLM's endpoints, error shapes, metric names, KV event wire format and P/D
//! `kv_transfer_params`. The prefill and decode charms run it with `--role prefill|decode`.

mod api;
mod error;
pub mod metrics;
mod pd;
mod trace;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use llmd_engine::serving::EngineHandle;
use warp::Filter;

pub use error::ApiError;
pub use pd::KvTransport;

/// Which legs of a disaggregated request this worker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs prompts and hands their KV over (`do_remote_decode` requests).
    Prefill,
    /// Pulls KV from prefill workers (`do_remote_prefill` requests) and generates.
    Decode,
    /// Both, and whole requests.
    Both,
}

impl Role {
    pub fn parse(s: &str) -> Result<Self, WorkerError> {
        match s {
            "prefill" => Ok(Role::Prefill),
            "decode" => Ok(Role::Decode),
            "both" => Ok(Role::Both),
            other => Err(WorkerError::Config(format!(
                "role must be prefill, decode or both, not {other:?}"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Prefill => "prefill",
            Role::Decode => "decode",
            Role::Both => "both",
        }
    }

    fn serves_prefill_legs(self) -> bool {
        matches!(self, Role::Prefill | Role::Both)
    }

    fn pulls_kv(self) -> bool {
        matches!(self, Role::Decode | Role::Both)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("KV events: {0}")]
    Events(String),
}

/// How the worker serves, beyond the engine's own settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub host: String,
    pub port: u16,
    /// Names clients may use in `model` (the first is the one reported); defaults to the
    /// engine's model id.
    pub served_model_names: Vec<String>,
    pub role: Role,
    /// Requests allowed to wait for the engine before new ones get 503 + Retry-After.
    pub max_waiting: usize,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: u64,
    /// KV transfer port (prefill and both roles); 0 picks a free one.
    pub kv_port: Option<u16>,
    /// This machine's address as others reach it: where decode workers pull KV from, and the
    /// host in this worker's id (its KV event topic). Default: `host`, or 127.0.0.1 when
    /// `host` is a wildcard address.
    pub kv_advertise_host: Option<String>,
    /// How long a decode worker's pull may take before it computes the prompt itself.
    pub kv_transfer_timeout: Duration,
    /// How KV moves between workers (TCP unless RDMA is asked for and usable).
    pub kv_transport: KvTransport,
    /// `tcp://HOST:PORT` the KV event publisher binds or connects to.
    pub kv_events_endpoint: Option<String>,
    /// Connect to the endpoint (llm-d: workers connect to the cache-manager) or bind it.
    pub kv_events_connect: bool,
    /// `tcp://HOST:PORT` for the replay socket (bound), if any.
    pub kv_events_replay_endpoint: Option<String>,
    /// Batches kept for replay.
    pub kv_events_buffer: usize,
}

impl WorkerConfig {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            served_model_names: Vec::new(),
            role: Role::Both,
            max_waiting: 256,
            max_body_bytes: 16 << 20,
            kv_port: None,
            kv_advertise_host: None,
            kv_transfer_timeout: Duration::from_secs(30),
            kv_transport: KvTransport::Tcp,
            kv_events_endpoint: None,
            kv_events_connect: true,
            kv_events_replay_endpoint: None,
            kv_events_buffer: 10_000,
        }
    }
}

/// What every handler shares.
pub(crate) struct State {
    pub engine: EngineHandle,
    pub cfg: WorkerConfig,
    pub model_names: Vec<String>,
    pub metrics: Arc<metrics::Metrics>,
    pub created: u64,
    /// This worker's id in the cluster: the `host:port` of its HTTP server.
    pub worker_id: String,
    pub pd: pd::PdState,
}

impl State {
    pub fn model_name(&self) -> &str {
        self.model_names
            .first()
            .map(String::as_str)
            .unwrap_or(&self.engine.model_id)
    }
}

/// A running worker: where it listens, and the task serving it.
pub struct RunningWorker {
    pub http_addr: SocketAddr,
    pub kv_addr: Option<SocketAddr>,
    /// The KV event publisher, when an endpoint was configured.
    pub events: Option<llmd_kvevents::PublisherHandle>,
    pub server: tokio::task::JoinHandle<()>,
}

/// Starts serving on the configured addresses and returns once listening. `events`, if
/// given, is the engine's KV event stream (what `LlmEngine::start` was handed the sender
/// of). Serving stops when `shutdown` completes.
pub async fn start(
    engine: EngineHandle,
    cfg: WorkerConfig,
    events: Option<tokio::sync::mpsc::UnboundedReceiver<Vec<llmd_protocol::KvEvent>>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningWorker, WorkerError> {
    let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
        .await
        .map_err(|source| WorkerError::Bind {
            addr: format!("{}:{}", cfg.host, cfg.port),
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| WorkerError::Bind {
        addr: format!("{}:{}", cfg.host, cfg.port),
        source,
    })?;
    let model_names = if cfg.served_model_names.is_empty() {
        vec![engine.model_id.clone()]
    } else {
        cfg.served_model_names.clone()
    };
    let advertise = advertised_host(&cfg.host);
    // The id schedulers know this worker by (the host:port of its URL), which its KV events
    // carry: behind a wildcard listen address only `--kv-host` (this machine's address, as
    // the charm sets it) says what that is.
    let id_host = cfg
        .kv_advertise_host
        .clone()
        .unwrap_or_else(|| advertise.clone());
    let worker_id = format!("{id_host}:{}", http_addr.port());
    let metrics = Arc::new(metrics::Metrics::new(&model_names[0], cfg.role.as_str())?);
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);

    // KV transfer server (prefill side).
    let (pd_state, kv_addr) =
        pd::PdState::start(&engine, &cfg, &advertise, metrics.clone(), shutdown_rx).await?;

    // KV event publisher: stops when the engine (the sender) goes away.
    let events = match (cfg.kv_events_endpoint.clone(), events) {
        (Some(endpoint), Some(rx)) => {
            Some(pd::start_events(&cfg, endpoint, &worker_id, &model_names[0], rx).await?)
        }
        _ => None,
    };

    let state = Arc::new(State {
        engine,
        cfg,
        model_names,
        metrics,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        worker_id,
        pd: pd_state,
    });
    let routes = api::routes(state).recover(error::recover);
    let server = tokio::spawn(async move {
        let stop = async move {
            shutdown.await;
            let _ = shutdown_tx.send(true);
        };
        warp::serve(routes)
            .incoming(listener)
            .graceful(stop)
            .run()
            .await;
    });
    tracing::info!(%http_addr, ?kv_addr, "llmd worker listening");
    Ok(RunningWorker {
        http_addr,
        kv_addr,
        events,
        server,
    })
}

/// The address other machines should use for a host we listen on.
fn advertised_host(host: &str) -> String {
    match host {
        "0.0.0.0" | "::" | "[::]" | "" => "127.0.0.1".to_string(),
        h => h.to_string(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
