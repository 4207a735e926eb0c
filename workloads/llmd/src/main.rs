//! The `llmd` binary: one executable for every llmd workload and tool.

mod bench;
mod bench_plot;
mod bench_scheduler;
mod bench_serve;
mod cache_manager;
mod generate;
mod scheduler;
mod up;
mod worker;

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "llmd",
    version,
    about = "Disaggregated LLM serving: engine, workers, scheduler, cache-manager"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text for one prompt, without a server; streams to stdout.
    Generate(generate::GenerateArgs),
    /// Manage models.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Serve the model over an OpenAI-compatible HTTP API (what the prefill and decode
    /// charms run).
    Worker(Box<worker::WorkerArgs>),
    /// The cluster's KV block index: KV events in, prefix scores out (what the
    /// cache-manager charm runs).
    CacheManager(cache_manager::CacheManagerArgs),
    /// The OpenAI-compatible gateway: routes each request by cached prefix and load, runs
    /// prefill and decode legs (what the scheduler charm runs).
    Scheduler(Box<scheduler::SchedulerArgs>),
    /// The whole stack on this machine: cache-manager, prefill and decode workers,
    /// scheduler on 127.0.0.1:8000.
    Up(up::UpArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Fetch and check a model (default: SmolLM2-135M-Instruct Q4_1), print where it is.
    Fetch {
        /// `default`, a path to a .gguf file or a safetensors directory, or hf:ORG/REPO[:FILE].
        source: Option<String>,
    },
}

/// Options shared by every command that runs the engine.
#[derive(Args, Clone, Debug)]
pub struct EngineArgs {
    /// Model source: `default`, a .gguf file, a safetensors directory, hf:ORG/REPO[:FILE].
    #[arg(long, env = "LLMD_MODEL")]
    pub model: Option<String>,
    /// CPU threads for inference (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// KV cache size: a block count (`4096`) or bytes (`2GiB`); default: one full context.
    #[arg(long)]
    pub kv_cache_memory: Option<String>,
    /// Tokens per KV block.
    #[arg(long, default_value_t = llmd_engine::engine::DEFAULT_BLOCK_SIZE)]
    pub block_size: usize,
    /// Where inference runs: `cpu`, `cuda` or `cuda:N` (default: CUDA device 0 when this
    /// build has the `cuda` feature and a GPU is present, else the CPU).
    #[arg(long, env = "LLMD_DEVICE")]
    pub device: Option<String>,
    /// Dtype of float weights on CUDA: `f32`, `f16` or `bf16` (default: a safetensors
    /// checkpoint's own, f32 for GGUF; the CPU always computes in f32).
    #[arg(long)]
    pub dtype: Option<String>,
}

impl EngineArgs {
    /// Sets up threads, resolves (fetching if needed) and loads the model.
    pub fn load_parts(
        &self,
    ) -> anyhow::Result<(
        llmd_models::ResolvedModel,
        llmd_engine::Model,
        llmd_tokenizer::Tokenizer,
    )> {
        if let Some(n) = self.threads {
            anyhow::ensure!(n > 0, "--threads must be at least 1");
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global()?;
        }
        // Device and dtype first: a wrong one fails before any model is fetched.
        let device = llmd_engine::device::parse_device(self.device.as_deref())?;
        let opts = llmd_engine::LoadOptions {
            dtype: self
                .dtype
                .as_deref()
                .map(llmd_engine::device::parse_dtype)
                .transpose()?,
            ..Default::default()
        };
        let source = llmd_models::ModelSource::parse_opt(self.model.as_deref())?;
        let resolved = llmd_models::resolve(&source, &llmd_models::FetchOptions::from_env())?;
        let (model, tok) = llmd_engine::load_model_with(&resolved, &device, &opts)?;
        tracing::info!(device = %llmd_engine::device::name(&device), "model loaded");
        Ok((resolved, model, tok))
    }

    pub fn kv_cache(&self) -> anyhow::Result<Option<llmd_engine::KvCacheSize>> {
        Ok(match &self.kv_cache_memory {
            Some(s) => Some(llmd_engine::KvCacheSize::parse(s)?),
            None => None,
        })
    }

    /// The single-sequence engine (the plain path).
    pub fn load(&self) -> anyhow::Result<llmd_engine::Engine> {
        let (resolved, model, tok) = self.load_parts()?;
        let opts = llmd_engine::EngineOptions {
            block_size: self.block_size,
            kv_cache: self.kv_cache()?,
            ..Default::default()
        };
        Ok(llmd_engine::Engine::new(resolved.name, model, tok, &opts)?)
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Model {
            command: ModelCommand::Fetch { source },
        } => {
            let source = llmd_models::ModelSource::parse_opt(source.as_deref())?;
            let m = llmd_models::resolve(&source, &llmd_models::FetchOptions::from_env())?;
            let path = match &m.format {
                llmd_models::ModelFormat::Gguf { file } => file.clone(),
                llmd_models::ModelFormat::Safetensors { dir, .. } => dir.clone(),
            };
            // Check that the engine can run it too, so that a bad model fails here, not later.
            llmd_engine::Architecture::parse(&m.architecture)?;
            println!("{}\t{}\t{}", m.name, m.architecture, path.display());
            Ok(())
        }
        Command::Worker(args) => worker::run(*args),
        Command::CacheManager(args) => cache_manager::run(args),
        Command::Scheduler(args) => scheduler::run(*args),
        Command::Up(args) => up::run(args),
        Command::Bench { command } => bench::run(command),
    }
}

/// Completes on Ctrl-C or SIGTERM (what systemd sends on stop): servers shut down
/// gracefully then.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminated => {}
    }
    tracing::info!("shutting down");
}

/// Installs the process's logging (stderr, filtered by `LLMD_LOG`, default `warn`) and, when
/// an OTLP endpoint is given (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set), span export
/// as `service`. Call once; keep the guard until the command ends (dropping it flushes).
pub fn init_telemetry(
    service: &str,
    otlp_traces_endpoint: Option<&str>,
) -> anyhow::Result<llmd_telemetry::TelemetryGuard> {
    Ok(llmd_telemetry::init(service, otlp_traces_endpoint)?)
}

/// The error and its causes on one line, skipping causes whose text the outer message
/// already includes (our library errors print their source themselves).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if !out.contains(&msg) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&msg);
        }
    }
    out.replace('\n', " ")
}

fn main() -> ExitCode {
    // Our heavy kernels run on rayon's pool. candle's small element-wise ops would otherwise
    // use its own spinning barrier pool, whose threads compete with rayon's for the same
    // cores; on small machines that costs more than it saves.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    up::die_with_parent();
    let cli = Cli::parse();
    // The servers set logging up themselves (init_telemetry) once their config is read,
    // since it names their OTLP endpoint; every other command logs to stderr only.
    let _telemetry = match &cli.command {
        Command::Worker(_) | Command::CacheManager(_) | Command::Scheduler(_) => None,
        _ => match llmd_telemetry::init_logs_only() {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}
