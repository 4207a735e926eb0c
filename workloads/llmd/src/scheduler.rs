//! `llmd scheduler`: the gateway and router (llmd-scheduler).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use llmd_scheduler::{MetricsSource, RoutingConfig, SchedulerConfig, WorkerSpec};

#[derive(Args, Debug, Clone)]
pub struct SchedulerArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// A worker, `[ROLE=]URL` with ROLE prefill, decode or both (the default); repeatable
    #[arg(long = "worker", value_name = "[ROLE=]URL")]
    pub workers: Vec<String>,
    /// YAML file with `workers: [{url, role, model}]`, optionally `cache_manager: URL` and
    /// `routing:` (as --routing-config); reloaded on SIGHUP or when it changes
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The cache-manager's URL, for precise prefix scores
    #[arg(long)]
    pub cache_manager: Option<String>,
    /// Routing plugins and profiles, in llm-d's EndpointPickerConfig shape
    #[arg(long)]
    pub routing_config: Option<PathBuf>,
    /// Routing profile for every request (built in: `default`, `round-robin`)
    #[arg(long)]
    pub profile: Option<String>,
    /// Uncached prompt tokens from which a request runs as a prefill and a decode leg
    /// (0: never); default: the routing config's, else 16
    #[arg(long)]
    pub pd_threshold: Option<usize>,
    /// Where worker load comes from: `scrape` (each worker's /metrics) or
    /// `prometheus=URL` (a Prometheus server's query API)
    #[arg(long, default_value = "scrape")]
    pub metrics_source: String,
    /// Seconds between health checks and load reads
    #[arg(long, default_value_t = 1.0)]
    pub metrics_interval: f64,
    /// Metric read as each worker's waiting queue
    #[arg(long, default_value = "vllm:num_requests_waiting")]
    pub queue_metric: String,
    /// Metric read as each worker's running requests
    #[arg(long, default_value = "vllm:num_requests_running")]
    pub running_metric: String,
    /// Metric read as each worker's KV cache usage (0..1)
    #[arg(long, default_value = "vllm:kv_cache_usage_perc")]
    pub kv_cache_usage_metric: String,
    /// Milliseconds a cache-manager score may take before routing on load alone
    #[arg(long, default_value_t = 20)]
    pub cache_manager_timeout_ms: u64,
    /// Seconds a request may take at the workers, streaming included
    #[arg(long, default_value_t = 600.0)]
    pub request_timeout: f64,
    /// Requests in flight beyond which new ones get 429 and Retry-After
    #[arg(long, default_value_t = 4096)]
    pub max_inflight: usize,
    /// Threads serving requests
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// OpenTelemetry collector for traces (OTLP/HTTP, e.g. http://127.0.0.1:4318)
    #[arg(long)]
    pub otlp_traces_endpoint: Option<String>,
}

impl SchedulerArgs {
    pub fn to_config(&self) -> anyhow::Result<SchedulerConfig> {
        let mut cfg = SchedulerConfig::new(self.host.clone(), self.port);
        for w in &self.workers {
            cfg.workers.push(WorkerSpec::parse_flag(w)?);
        }
        cfg.config_file = self.config.clone();
        cfg.cache_manager = self.cache_manager.clone();
        if let Some(p) = &self.routing_config {
            cfg.routing = RoutingConfig::read(p)?;
        }
        cfg.profile = self.profile.clone();
        cfg.pd_threshold = self.pd_threshold;
        cfg.pool.source = match self.metrics_source.as_str() {
            "scrape" => MetricsSource::Scrape,
            s => match s.strip_prefix("prometheus=") {
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                    MetricsSource::Prometheus(url.to_string())
                }
                _ => anyhow::bail!(
                    "--metrics-source must be scrape or prometheus=http://HOST:PORT, not {s:?}"
                ),
            },
        };
        anyhow::ensure!(
            self.metrics_interval.is_finite() && self.metrics_interval >= 0.05,
            "--metrics-interval must be at least 0.05 seconds"
        );
        cfg.pool.interval = Duration::from_secs_f64(self.metrics_interval);
        cfg.pool.names.queue = self.queue_metric.clone();
        cfg.pool.names.running = self.running_metric.clone();
        cfg.pool.names.kv_usage = self.kv_cache_usage_metric.clone();
        cfg.cache_manager_timeout = Duration::from_millis(self.cache_manager_timeout_ms.max(1));
        anyhow::ensure!(
            self.request_timeout.is_finite() && self.request_timeout > 0.0,
            "--request-timeout must be a positive number of seconds"
        );
        cfg.request_timeout = Duration::from_secs_f64(self.request_timeout);
        anyhow::ensure!(self.max_inflight > 0, "--max-inflight must be at least 1");
        cfg.max_inflight = self.max_inflight;
        anyhow::ensure!(
            !cfg.workers.is_empty() || cfg.config_file.is_some(),
            "give workers with --worker [ROLE=]URL or --config FILE"
        );
        Ok(cfg)
    }
}

pub fn run(args: SchedulerArgs) -> anyhow::Result<()> {
    let cfg = args.to_config()?;
    let _telemetry = crate::init_telemetry("llmd-scheduler", args.otlp_traces_endpoint.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let s = llmd_scheduler::start(cfg, crate::shutdown_signal()).await?;
        eprintln!("llmd scheduler: http://{}", s.addr);
        s.server.await?;
        Ok(())
    })
}
