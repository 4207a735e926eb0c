//! `llmd cache-manager`: the cluster's KV block index (llmd-cache-manager).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

#[derive(Args, Debug)]
pub struct CacheManagerArgs {
    /// Address to listen on for HTTP
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// HTTP port
    #[arg(long, default_value_t = 8100)]
    pub port: u16,
    /// Bind the KV event SUB socket here (workers connect to it), e.g. tcp://0.0.0.0:5557
    #[arg(long)]
    pub events_bind: Option<String>,
    /// Where the index lives: `memory`, or `redis://HOST:PORT[/DB]` (Redis or Valkey) to
    /// share one index between several cache-manager units
    #[arg(long, default_value = "memory")]
    pub index: String,
    /// Most blocks the index holds; the least recently stored go first
    #[arg(long, default_value_t = 1 << 22)]
    pub max_blocks: usize,
    /// Seconds after which a silent worker is dropped from the index
    #[arg(long, default_value_t = 3600.0)]
    pub worker_ttl: f64,
    /// YAML file listing workers (`workers: [{id: host:port, events: tcp://…, replay: tcp://…}]`),
    /// reloaded on SIGHUP or change
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Export OpenTelemetry spans over OTLP/HTTP (protobuf) to this collector, e.g.
    /// http://127.0.0.1:4318 [default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else none]
    #[arg(long)]
    pub otlp_traces_endpoint: Option<String>,
}

pub fn run(a: CacheManagerArgs) -> anyhow::Result<()> {
    // Dropped last, after the server has stopped: flushes the spans.
    let _telemetry =
        crate::init_telemetry("llmd-cache-manager", a.otlp_traces_endpoint.as_deref())?;
    anyhow::ensure!(
        a.worker_ttl.is_finite() && a.worker_ttl > 0.0,
        "--worker-ttl must be a positive number of seconds"
    );
    anyhow::ensure!(a.max_blocks > 0, "--max-blocks must be at least 1");
    if let Some(ep) = &a.events_bind {
        anyhow::ensure!(
            ep.starts_with("tcp://"),
            "--events-bind must be tcp://HOST:PORT, not {ep:?}"
        );
    }
    let index_url = match a.index.as_str() {
        "memory" => None,
        u if u.starts_with("redis://") || u.starts_with("rediss://") => Some(u.to_string()),
        other => anyhow::bail!("--index must be memory or redis://HOST:PORT, not {other:?}"),
    };
    let mut cfg = llmd_cache_manager::service::ServiceConfig::new(a.host, a.port);
    cfg.index_url = index_url;
    cfg.events_bind = a.events_bind;
    cfg.max_blocks = a.max_blocks;
    cfg.worker_ttl = Duration::from_secs_f64(a.worker_ttl);
    cfg.config_file = a.config;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = crate::shutdown_signal();
        let cm = llmd_cache_manager::service::start(cfg, shutdown).await?;
        eprintln!("llmd cache-manager: http://{}", cm.http_addr);
        if let Some(ep) = &cm.events_endpoint {
            eprintln!("llmd cache-manager: events on {ep}");
        }
        cm.server.await?;
        anyhow::Ok(())
    })
}
