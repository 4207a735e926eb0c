//! `llmd worker`: loads the model, starts the batching engine and serves it (llmd-worker).
//! Every flag can also come from a YAML file (`--config`, keys as the flags without `--`);
//! flags win over the file, which is what the charms write.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

use crate::EngineArgs;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// prefill, decode or both [default: both]
    #[arg(long)]
    pub role: Option<String>,
    /// Address to listen on [default: 127.0.0.1]
    #[arg(long)]
    pub host: Option<String>,
    /// HTTP port [default: 8000]
    #[arg(long)]
    pub port: Option<u16>,
    /// Model name(s) clients use in `model` (default: the model's own name). Block hashes
    /// are seeded with the first.
    #[arg(long)]
    pub served_model_name: Vec<String>,
    /// Sequences running at once [default: 64]
    #[arg(long)]
    pub max_num_seqs: Option<usize>,
    /// Tokens one engine step may process (chunked prefill budget) [default: 512]
    #[arg(long)]
    pub max_num_batched_tokens: Option<usize>,
    /// Requests allowed to wait before new ones get 503 with Retry-After [default: 256]
    #[arg(long)]
    pub max_waiting: Option<usize>,
    /// KV transfer port for prefill legs (prefill and both roles) [default: a free port]
    #[arg(long)]
    pub kv_port: Option<u16>,
    /// This machine's address as others reach it: where decode workers pull KV from, and
    /// the host of this worker's id in its KV events [default: --host, or 127.0.0.1 for
    /// 0.0.0.0]
    #[arg(long)]
    pub kv_host: Option<String>,
    /// Seconds a KV pull may take, and an unpulled export stays pinned [default: 30]
    #[arg(long)]
    pub kv_transfer_timeout: Option<f64>,
    /// tcp, or rdma: RDMA READs (builds with the `rdma` feature); without a usable device
    /// the worker says so at start and uses TCP [default: tcp]
    #[arg(long)]
    pub kv_transport: Option<String>,
    /// RDMA device for --kv-transport rdma, e.g. mlx5_0 or rxe0 [default: the first usable]
    #[arg(long)]
    pub rdma_device: Option<String>,
    /// Registered staging memory for RDMA transfers, in MiB [default: 256]
    #[arg(long)]
    pub rdma_staging_mib: Option<usize>,
    /// Publish KV events to this ZMQ endpoint, e.g. tcp://cache-manager:5557
    #[arg(long)]
    pub kv_events_endpoint: Option<String>,
    /// connect (to a cache-manager's bound socket, llm-d's way) or bind (vLLM's default)
    /// [default: connect]
    #[arg(long)]
    pub kv_events_mode: Option<String>,
    /// Bind a replay socket here (e.g. tcp://*:5558) serving missed event batches
    #[arg(long)]
    pub kv_events_replay_endpoint: Option<String>,
    /// Export OpenTelemetry spans over OTLP/HTTP (protobuf) to this collector, e.g.
    /// http://127.0.0.1:4318 [default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else none]
    #[arg(long)]
    pub otlp_traces_endpoint: Option<String>,
    /// YAML file with any of these settings (flags take precedence)
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub sim: SimArgs,
}

/// A simulated worker: the real server, scheduler, KV pool, prefix cache, KV events and
/// P/D hand-off, with the forward pass replaced by a latency model (only the model's
/// tokenizer and configuration are read), for load tests with many workers on one machine.
#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Simulate inference instead of running the model
    #[arg(long)]
    pub sim: bool,
    /// Simulated cost of every engine step, in ms
    #[arg(long, requires = "sim", default_value_t = ms(llmd_engine::SimCost::default().step))]
    pub sim_step_ms: f64,
    /// Simulated cost of each prompt token computed, in ms
    #[arg(long, requires = "sim", default_value_t = ms(llmd_engine::SimCost::default().prefill_token))]
    pub sim_prefill_ms_per_token: f64,
    /// Simulated cost of each sequence decoded in a step, in ms
    #[arg(long, requires = "sim", default_value_t = ms(llmd_engine::SimCost::default().decode_seq))]
    pub sim_decode_ms_per_seq: f64,
    /// Tokens a simulated answer has before its end-of-sequence token
    #[arg(long, requires = "sim", default_value_t = 128)]
    pub sim_output_len: usize,
    /// Simulated workers in this process, on consecutive HTTP (and KV) ports
    #[arg(long, requires = "sim", default_value_t = 1)]
    pub sim_replicas: u16,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl SimArgs {
    fn cost(&self) -> anyhow::Result<llmd_engine::SimCost> {
        let d = |v: f64, flag: &str| {
            anyhow::ensure!(
                v.is_finite() && v >= 0.0,
                "--{flag} must be a non-negative number of milliseconds"
            );
            Ok(Duration::from_secs_f64(v / 1e3))
        };
        Ok(llmd_engine::SimCost {
            step: d(self.sim_step_ms, "sim-step-ms")?,
            prefill_token: d(self.sim_prefill_ms_per_token, "sim-prefill-ms-per-token")?,
            decode_seq: d(self.sim_decode_ms_per_seq, "sim-decode-ms-per-seq")?,
        })
    }
}

/// The YAML file's keys: the flags' names.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    model: Option<String>,
    threads: Option<usize>,
    kv_cache_memory: Option<String>,
    block_size: Option<usize>,
    role: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    served_model_name: Option<StringOrList>,
    max_num_seqs: Option<usize>,
    max_num_batched_tokens: Option<usize>,
    max_waiting: Option<usize>,
    kv_port: Option<u16>,
    kv_host: Option<String>,
    kv_transfer_timeout: Option<f64>,
    kv_transport: Option<String>,
    rdma_device: Option<String>,
    rdma_staging_mib: Option<usize>,
    kv_events_endpoint: Option<String>,
    kv_events_mode: Option<String>,
    kv_events_replay_endpoint: Option<String>,
    otlp_traces_endpoint: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl WorkerArgs {
    /// Fills every unset flag from the config file.
    fn merge_file(mut self) -> anyhow::Result<Self> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let f: FileConfig = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        macro_rules! fill {
            ($dst:expr, $src:expr) => {
                if $dst.is_none() {
                    $dst = $src;
                }
            };
        }
        fill!(self.engine.model, f.model);
        fill!(self.engine.threads, f.threads);
        fill!(self.engine.kv_cache_memory, f.kv_cache_memory);
        if let Some(bs) = f.block_size {
            if self.engine.block_size == llmd_engine::engine::DEFAULT_BLOCK_SIZE {
                self.engine.block_size = bs;
            }
        }
        fill!(self.role, f.role);
        fill!(self.host, f.host);
        fill!(self.port, f.port);
        if self.served_model_name.is_empty() {
            self.served_model_name = match f.served_model_name {
                Some(StringOrList::One(s)) => vec![s],
                Some(StringOrList::Many(v)) => v,
                None => Vec::new(),
            };
        }
        fill!(self.max_num_seqs, f.max_num_seqs);
        fill!(self.max_num_batched_tokens, f.max_num_batched_tokens);
        fill!(self.max_waiting, f.max_waiting);
        fill!(self.kv_port, f.kv_port);
        fill!(self.kv_host, f.kv_host);
        fill!(self.kv_transfer_timeout, f.kv_transfer_timeout);
        fill!(self.kv_transport, f.kv_transport);
        fill!(self.rdma_device, f.rdma_device);
        fill!(self.rdma_staging_mib, f.rdma_staging_mib);
        fill!(self.kv_events_endpoint, f.kv_events_endpoint);
        fill!(self.kv_events_mode, f.kv_events_mode);
        fill!(self.kv_events_replay_endpoint, f.kv_events_replay_endpoint);
        fill!(self.otlp_traces_endpoint, f.otlp_traces_endpoint);
        Ok(self)
    }
}

pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let a = args.merge_file()?;
    // Dropped last, after the server has stopped: flushes the spans.
    let _telemetry = crate::init_telemetry("llmd-worker", a.otlp_traces_endpoint.as_deref())?;
    let role = llmd_worker::Role::parse(a.role.as_deref().unwrap_or("both"))?;
    let host = a.host.clone().unwrap_or_else(|| "127.0.0.1".into());
    let port = a.port.unwrap_or(8000);
    let timeout = a.kv_transfer_timeout.unwrap_or(30.0);
    anyhow::ensure!(
        timeout.is_finite() && timeout > 0.0,
        "--kv-transfer-timeout must be a positive number of seconds"
    );
    let timeout = Duration::from_secs_f64(timeout);
    let kv_transport = match a.kv_transport.as_deref().unwrap_or("tcp") {
        "tcp" => llmd_worker::KvTransport::Tcp,
        "rdma" => {
            let mib = a.rdma_staging_mib.unwrap_or(256);
            anyhow::ensure!(
                (1..=1 << 20).contains(&mib),
                "--rdma-staging-mib must be between 1 and 1048576"
            );
            llmd_worker::KvTransport::Rdma {
                device: a.rdma_device.clone(),
                staging_bytes: mib << 20,
            }
        }
        other => anyhow::bail!("--kv-transport must be tcp or rdma, not {other:?}"),
    };
    let connect = match a.kv_events_mode.as_deref().unwrap_or("connect") {
        "connect" => true,
        "bind" => false,
        other => anyhow::bail!("--kv-events-mode must be connect or bind, not {other:?}"),
    };
    if let Some(ep) = &a.kv_events_endpoint {
        anyhow::ensure!(
            ep.starts_with("tcp://"),
            "--kv-events-endpoint must be tcp://HOST:PORT, not {ep:?}"
        );
    }
    let replicas = a.sim.sim_replicas;
    anyhow::ensure!(replicas >= 1, "--sim-replicas must be at least 1");
    // Replicas take consecutive ports; with --port 0 each gets a free one of its own.
    let port_of = |i: u16| -> anyhow::Result<u16> {
        if port == 0 {
            return Ok(0);
        }
        port.checked_add(i)
            .with_context(|| format!("--port {port} + {i} replicas is past 65535"))
    };
    // Fail on a busy port before spending time on the model.
    for i in 0..replicas {
        let p = port_of(i)?;
        std::net::TcpListener::bind((host.as_str(), p))
            .with_context(|| format!("cannot listen on {host}:{p}"))?;
    }

    // One engine per (simulated) worker; a real worker loads the weights once.
    let (resolved, tok, fingerprint, backends) = if a.sim.sim {
        let source = llmd_models::ModelSource::parse_opt(a.engine.model.as_deref())?;
        let resolved = llmd_models::resolve(&source, &llmd_models::FetchOptions::from_env())?;
        let (sim, tok) = llmd_engine::load_sim(&resolved, a.sim.cost()?, a.sim.sim_output_len)?;
        // Never exchange KV with a real worker of the same model.
        let fp = format!(
            "sim:{}",
            llmd_engine::model_fingerprint(&resolved, sim.config())
        );
        let backends: Vec<llmd_engine::Backend> =
            (0..replicas).map(|_| sim.clone().into()).collect();
        (resolved, tok, fp, backends)
    } else {
        let (resolved, model, tok) = a.engine.load_parts()?;
        let fp = llmd_engine::model_fingerprint(&resolved, model.config());
        (resolved, tok, fp, vec![model.into()])
    };
    let served = if a.served_model_name.is_empty() {
        vec![resolved.name.clone()]
    } else {
        a.served_model_name.clone()
    };
    let mut cfg = llmd_engine::serving::ServingConfig::new(served[0].clone(), fingerprint);
    cfg.block_size = a.engine.block_size;
    if let Some(kv) = a.engine.kv_cache()? {
        cfg.kv_cache = kv;
    }
    if let Some(n) = a.max_num_seqs {
        anyhow::ensure!(n > 0, "--max-num-seqs must be at least 1");
        cfg.scheduler.max_num_seqs = n;
    }
    if let Some(n) = a.max_num_batched_tokens {
        anyhow::ensure!(n > 0, "--max-num-batched-tokens must be at least 1");
        cfg.scheduler.max_num_batched_tokens = n;
    }
    cfg.pin_timeout = timeout;
    let mut workers = Vec::new();
    for (i, backend) in (0..replicas).zip(backends) {
        let (events_tx, events_rx) = match a.kv_events_endpoint {
            Some(_) => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let engine =
            llmd_engine::serving::LlmEngine::start(backend, tok.clone(), cfg.clone(), events_tx)?;
        let mut wc = llmd_worker::WorkerConfig::new(host.clone(), port_of(i)?);
        wc.served_model_names = served.clone();
        wc.role = role;
        if let Some(n) = a.max_waiting {
            wc.max_waiting = n;
        }
        wc.kv_port = match a.kv_port {
            Some(p) if p != 0 => Some(
                p.checked_add(i)
                    .with_context(|| format!("--kv-port {p} + {i} replicas is past 65535"))?,
            ),
            other => other,
        };
        wc.kv_advertise_host = a.kv_host.clone();
        wc.kv_transfer_timeout = timeout;
        wc.kv_transport = kv_transport.clone();
        wc.kv_events_endpoint = a.kv_events_endpoint.clone();
        wc.kv_events_connect = connect;
        wc.kv_events_replay_endpoint = a.kv_events_replay_endpoint.clone();
        workers.push((engine, wc, events_rx));
    }

    // The engine has its own thread and rayon pool; two runtime threads are plenty for HTTP.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // One shutdown signal, fanned out to every replica.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            crate::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        let mut servers = Vec::new();
        let mut engines = Vec::new();
        for (engine, wc, events_rx) in workers {
            let mut rx = stop_rx.clone();
            let shutdown = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let w = llmd_worker::start(engine.handle(), wc, events_rx, shutdown).await?;
            // Log lines a supervisor (and the tests) can read to find the ports.
            eprintln!("llmd worker: http://{}", w.http_addr);
            if let Some(kv) = w.kv_addr {
                eprintln!("llmd worker: kv transfer on {kv}");
            }
            servers.push(w.server);
            engines.push(engine);
        }
        for s in servers {
            s.await?;
        }
        drop(engines);
        anyhow::Ok(())
    })
}
