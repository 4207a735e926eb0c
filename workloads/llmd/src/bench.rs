//! `llmd bench …`: repeatable speed measurements, printed as a table or one JSON line.

use clap::{Args, Subcommand};
use llmd_engine::SamplingParams;

use crate::EngineArgs;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Single-stream prefill and decode speed of the engine.
    Engine(EngineBenchArgs),
    /// KV transfer speed (llmd-kvx over loopback TCP) next to a raw socket copy; with
    /// `--transport rdma`, kvx over RDMA next to kvx over TCP.
    Kvx(KvxBenchArgs),
    /// The cache-manager's index: block-event ingest rate, score latency in-process and
    /// over HTTP.
    CacheManager(CacheManagerBenchArgs),
    /// What the scheduler adds per request (latency, CPU) in front of instant backends,
    /// with precise prefix scoring on and with round-robin.
    Scheduler(crate::bench_scheduler::SchedulerBenchArgs),
    /// Load on an OpenAI-compatible server (ours, a peer router, vLLM): TTFT, inter-token
    /// and end-to-end latency, throughput; `--compare A.json B.json` prints ratios.
    Serve(Box<crate::bench_serve::ServeBenchArgs>),
    /// SVG charts of benchmark results (TTFT distributions, x/y series from CSV).
    Plot(crate::bench_plot::PlotArgs),
}

#[derive(Args, Debug)]
pub struct CacheManagerBenchArgs {
    /// Workers in the index.
    #[arg(long, default_value_t = 64)]
    pub workers: usize,
    /// Blocks each worker holds (64 × 16384 = 1M blocks).
    #[arg(long, default_value_t = 16384)]
    pub blocks_per_worker: usize,
    /// Length of the scored prompt.
    #[arg(long, default_value_t = 8192)]
    pub prompt_tokens: usize,
    /// Scores timed (each way).
    #[arg(long, default_value_t = 2000)]
    pub iters: usize,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn cache_manager(a: CacheManagerBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.workers > 0 && a.iters > 0,
        "--workers and --iters must be at least 1"
    );
    anyhow::ensure!(
        a.prompt_tokens >= 16,
        "--prompt-tokens must be at least one block (16)"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let r = rt.block_on(llmd_cache_manager::bench::run(
        a.workers,
        a.blocks_per_worker,
        a.prompt_tokens,
        a.iters,
    ))?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "index: {} workers, {} blocks; prompt {} tokens",
        r.workers, r.indexed_blocks, r.prompt_tokens
    );
    println!(
        "ingest            {:>12.0} block events/s",
        r.ingest_block_events_per_s
    );
    println!(
        "score in-process  p50 {:>8.1} µs   p99 {:>8.1} µs   (token ids in)",
        r.score_p50_us, r.score_p99_us
    );
    println!(
        "score in-process  p50 {:>8.1} µs   p99 {:>8.1} µs   (block hashes in)",
        r.score_keys_p50_us, r.score_keys_p99_us
    );
    println!(
        "score over HTTP   p50 {:>8.1} µs   p99 {:>8.1} µs",
        r.http_score_p50_us, r.http_score_p99_us
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct KvxBenchArgs {
    /// Transfer sizes in MiB (one block of the default model is 0.7 MiB; a 1024-token
    /// prompt's KV is 45 MiB).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 16, 64, 256])]
    pub mib: Vec<usize>,
    /// Measured transfers per size (each of kvx and raw).
    #[arg(long, default_value_t = 7)]
    pub iters: usize,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// tcp: kvx over loopback TCP next to a raw socket copy. rdma: kvx over RDMA READs next
    /// to kvx over TCP, in the same run (builds with the `rdma` feature).
    #[arg(long, default_value = "tcp")]
    pub transport: String,
    /// Sizes as block counts of the default model (16 tokens, 720 KiB in f32) instead of
    /// --mib.
    #[arg(long, value_delimiter = ',')]
    pub blocks: Vec<usize>,
    /// RDMA device of the serving side [default: the first usable]
    #[arg(long)]
    pub rdma_device: Option<String>,
    /// RDMA device of the pulling side [default: --rdma-device]
    #[arg(long)]
    pub rdma_peer_device: Option<String>,
}

/// KV bytes of one 16-token block of the default model (30 layers × K and V × 3 KV heads
/// × 64 dims × 16 tokens × 4 bytes).
const DEFAULT_MODEL_BLOCK_BYTES: usize = 30 * 2 * 3 * 64 * 16 * 4;

#[cfg(not(feature = "rdma"))]
fn kvx_rdma(_: &KvxBenchArgs, _: &[usize]) -> anyhow::Result<()> {
    anyhow::bail!("--transport rdma needs a build with the `rdma` feature")
}

/// kvx over RDMA against kvx over TCP, same payloads, same process.
#[cfg(feature = "rdma")]
fn kvx_rdma(a: &KvxBenchArgs, sizes: &[usize]) -> anyhow::Result<()> {
    use llmd_kvx::rdma::RdmaNode;
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let server = RdmaNode::open(a.rdma_device.as_deref(), largest)?;
    let peer = a.rdma_peer_device.as_deref().or(a.rdma_device.as_deref());
    let puller = RdmaNode::open(peer, largest)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rows = rt.block_on(llmd_kvx::bench::rdma_vs_tcp(
        server.clone(),
        puller.clone(),
        sizes,
        a.iters,
    ))?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"transport": "rdma", "server_device": server.device(),
                "puller_device": puller.device(), "iters": a.iters, "rows": rows})
        );
        return Ok(());
    }
    println!(
        "KV transfer, RDMA READ ({} -> {}) and TCP to the same server, median of {} transfers",
        server.device(),
        puller.device(),
        a.iters
    );
    println!(
        "{:>10} {:>7} {:>11} {:>11} {:>9} {:>13} {:>13}",
        "size", "blocks", "rdma GB/s", "tcp GB/s", "rdma/tcp", "rdma latency", "tcp latency"
    );
    for r in rows {
        println!(
            "{:>6.1} MiB {:>7.1} {:>11.4} {:>11.4} {:>8.2}x {:>10.2} ms {:>10.2} ms",
            r.bytes as f64 / (1 << 20) as f64,
            r.bytes as f64 / DEFAULT_MODEL_BLOCK_BYTES as f64,
            r.rdma_gbps,
            r.tcp_gbps,
            r.rdma_gbps / r.tcp_gbps,
            r.rdma_latency_s * 1e3,
            r.tcp_latency_s * 1e3
        );
    }
    Ok(())
}

fn kvx(a: KvxBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.iters > 0, "--iters must be at least 1");
    anyhow::ensure!(
        a.mib.iter().all(|&m| (1..=4096).contains(&m)),
        "--mib values must be between 1 and 4096"
    );
    let sizes: Vec<usize> = if a.blocks.is_empty() {
        a.mib.iter().map(|m| m << 20).collect()
    } else {
        anyhow::ensure!(
            a.blocks.iter().all(|&b| (1..=4096).contains(&b)),
            "--blocks values must be between 1 and 4096"
        );
        a.blocks
            .iter()
            .map(|b| b * DEFAULT_MODEL_BLOCK_BYTES)
            .collect()
    };
    match a.transport.as_str() {
        "tcp" => {}
        "rdma" => return kvx_rdma(&a, &sizes),
        other => anyhow::bail!("--transport must be tcp or rdma, not {other:?}"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rows = rt.block_on(llmd_kvx::bench::loopback(&sizes, a.iters))?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"transport": "tcp", "iters": a.iters, "rows": rows})
        );
        return Ok(());
    }
    println!(
        "KV transfer over loopback TCP, median of {} transfers",
        a.iters
    );
    println!(
        "{:>10} {:>12} {:>12} {:>10} {:>14}",
        "size", "kvx GB/s", "raw GB/s", "kvx/raw", "kvx latency"
    );
    for r in rows {
        println!(
            "{:>6} MiB {:>12.2} {:>12.2} {:>9.0}% {:>11.1} ms",
            r.bytes >> 20,
            r.kvx_gbps,
            r.raw_gbps,
            100.0 * r.kvx_gbps / r.raw_gbps,
            r.kvx_latency_s * 1e3
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct EngineBenchArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens generated for the decode measurement.
    #[arg(long, default_value_t = 128)]
    pub decode_tokens: usize,
    /// Measured runs (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Instead of single-stream: aggregate decode speed at these concurrencies (e.g.
    /// `1,4,16`) through the batching engine, and cached vs cold time to first token.
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Prefix length for the cached-vs-cold TTFT measurement.
    #[arg(long, default_value_t = 1024)]
    pub cached_prefix: usize,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Engine(a) => engine(a),
        BenchCommand::Kvx(a) => kvx(a),
        BenchCommand::CacheManager(a) => cache_manager(a),
        BenchCommand::Scheduler(a) => crate::bench_scheduler::run(a),
        BenchCommand::Serve(a) => crate::bench_serve::run(*a),
        BenchCommand::Plot(a) => crate::bench_plot::run(a),
    }
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], median, v[n - 1])
}

/// A deterministic prompt of exactly `n` tokens: varied English text, repeated as needed.
pub fn bench_prompt(tok: &llmd_tokenizer::Tokenizer, n: usize) -> anyhow::Result<Vec<u32>> {
    const TEXT: &str = "The history of computing is a story of people who wanted machines to do arithmetic \
        faster than any clerk could. Early mechanical calculators gave way to relays, then vacuum tubes, \
        transistors and integrated circuits. Each step made machines smaller, cheaper and more reliable, \
        and each opened new uses: weather forecasts, payroll, airline bookings, games, and the networks \
        that now connect billions of phones. ";
    let base = tok.encode(TEXT, false)?;
    anyhow::ensure!(
        !base.is_empty(),
        "tokenizer produced no tokens for the bench prompt"
    );
    Ok(base.iter().copied().cycle().take(n).collect())
}

fn engine(a: EngineBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.runs > 0, "--runs must be at least 1");
    if !a.concurrency.is_empty() {
        return serving(a);
    }
    anyhow::ensure!(
        a.prompt_tokens > 0 && a.decode_tokens > 1,
        "need a prompt and at least 2 decode tokens"
    );
    let engine = a.engine.load()?;
    let prompt = bench_prompt(&engine.tokenizer, a.prompt_tokens)?;
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(a.decode_tokens)
    };
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for run in 0..=a.runs {
        let g = engine.generate(&prompt, &params, |_| true)?;
        anyhow::ensure!(
            g.token_ids.len() == a.decode_tokens,
            "generation ended early"
        );
        if run > 0 {
            prefill.push(g.prefill_tok_s());
            decode.push(g.decode_tok_s());
        }
    }
    let (pmin, pmed, pmax) = stats(prefill);
    let (dmin, dmed, dmax) = stats(decode);
    let threads = rayon::current_num_threads();
    let simd = llmd_quant::SimdLevel::detect().name();
    let device = llmd_engine::device::name(engine.model.device());
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "prefill_tok_s": pmed, "decode_tok_s": dmed,
                "prefill_tok_s_min": pmin, "prefill_tok_s_max": pmax,
                "decode_tok_s_min": dmin, "decode_tok_s_max": dmax,
                "prompt_tokens": a.prompt_tokens, "decode_tokens": a.decode_tokens,
                "runs": a.runs, "threads": threads, "simd": simd, "model": engine.name,
                "device": device,
            })
        );
    } else {
        println!(
            "model {} | {device} | {threads} threads | kernels {simd} | {} runs",
            engine.name, a.runs
        );
        println!("{:<28} {:>10} {:>10} {:>10}", "", "min", "median", "max");
        println!(
            "{:<28} {pmin:>10.1} {pmed:>10.1} {pmax:>10.1}",
            format!("prefill {} tok (tok/s)", a.prompt_tokens)
        );
        println!(
            "{:<28} {dmin:>10.1} {dmed:>10.1} {dmax:>10.1}",
            format!("decode {} tok (tok/s)", a.decode_tokens)
        );
    }
    Ok(())
}

/// What one batch of requests measured.
struct BatchRun {
    /// From submitting the first request to the last token.
    wall: f64,
    /// Tokens generated, first tokens included.
    tokens: usize,
    /// Median and slowest time to first token (seconds from submission).
    ttft_median: f64,
    ttft_max: f64,
}

impl BatchRun {
    /// Decode speed of the batch: the tokens after each request's first, over the time from
    /// the last first token (every prompt prefilled) to the end, so that the prompts'
    /// prefill, which grows with the batch, is not counted as decode time.
    fn decode_tok_s(&self, requests: usize) -> f64 {
        self.tokens.saturating_sub(requests) as f64 / (self.wall - self.ttft_max).max(1e-9)
    }
}

/// Runs `prompts` at once through the batching engine.
fn run_batch(
    h: &llmd_engine::serving::EngineHandle,
    prompts: &[Vec<u32>],
    max_tokens: usize,
) -> anyhow::Result<BatchRun> {
    use llmd_engine::serving::StreamItem;
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(max_tokens)
    };
    let t0 = std::time::Instant::now();
    let mut streams = Vec::new();
    for p in prompts {
        streams.push(h.submit(p.clone(), params.clone())?);
    }
    let mut tokens = 0;
    let mut ttfts = Vec::new();
    for s in &mut streams {
        while let Some(item) = s.next_blocking() {
            if let StreamItem::Token { .. } = item? {
                tokens += 1;
            }
        }
        if let Some(t) = s.timings().and_then(|t| t.time_to_first_token) {
            ttfts.push(t.as_secs_f64());
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let ttft_max = ttfts.iter().copied().fold(0.0, f64::max);
    let ttft_median = if ttfts.is_empty() {
        0.0
    } else {
        stats(ttfts).1
    };
    Ok(BatchRun {
        wall,
        tokens,
        ttft_median,
        ttft_max,
    })
}

fn serving(a: EngineBenchArgs) -> anyhow::Result<()> {
    use llmd_engine::serving::{LlmEngine, ServingConfig};
    anyhow::ensure!(
        a.concurrency.iter().all(|&c| c > 0),
        "--concurrency values must be at least 1"
    );
    let (resolved, model, tok) = a.engine.load_parts()?;
    let device = llmd_engine::device::name(model.device());
    let max_c = a.concurrency.iter().copied().max().unwrap_or(1);
    let base = bench_prompt(&tok, 4096)?;
    let mut cfg = ServingConfig::new(
        resolved.name.clone(),
        llmd_engine::model_fingerprint(&resolved, model.config()),
    );
    cfg.scheduler.max_num_seqs = max_c.max(16);
    cfg.block_size = a.engine.block_size;
    if let Some(kv) = a.engine.kv_cache()? {
        cfg.kv_cache = kv;
    }
    let engine = LlmEngine::start(model, tok, cfg, None)?;
    let h = engine.handle();
    // Short, distinct prompts: the measurement is decode, not prefill.
    let prompt_for = |i: usize| -> Vec<u32> { base[i * 37 % 1000..][..32].to_vec() };
    run_batch(&h, &[prompt_for(999)], 8)?; // warm-up
    let mut rows = Vec::new();
    for &c in &a.concurrency {
        let mut speeds = Vec::new();
        let mut overall = Vec::new();
        for run in 0..a.runs {
            let prompts: Vec<Vec<u32>> = (0..c).map(|i| prompt_for(run * 100 + i)).collect();
            let r = run_batch(&h, &prompts, a.decode_tokens)?;
            speeds.push(r.decode_tok_s(c));
            overall.push(r.tokens as f64 / r.wall);
        }
        let (min, med, max) = stats(speeds);
        rows.push((c, min, med, max, stats(overall).1));
    }
    // Time to first token for a long prompt, cold, then with its prefix cached.
    anyhow::ensure!(
        a.cached_prefix + 64 < base.len(),
        "--cached-prefix too long"
    );
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for run in 0..a.runs {
        // Each run uses a prefix the cache has not seen (shifted start), then reuses it.
        let start = run * 13 % 50;
        let prefix = &base[start..start + a.cached_prefix];
        let with = |suffix: usize| -> Vec<u32> {
            let mut p = prefix.to_vec();
            p.extend_from_slice(&base[3000 + suffix * 16..3000 + suffix * 16 + 16]);
            p
        };
        cold.push(run_batch(&h, &[with(run * 2)], 1)?.ttft_median);
        warm.push(run_batch(&h, &[with(run * 2 + 1)], 1)?.ttft_median);
    }
    let (_, cold_med, _) = stats(cold);
    let (_, warm_med, _) = stats(warm);
    let single = rows.iter().find(|r| r.0 == 1).map(|r| r.2);
    if a.json {
        let conc: Vec<serde_json::Value> = rows
            .iter()
            .map(|&(c, min, med, max, overall)| {
                serde_json::json!({"concurrency": c, "aggregate_decode_tok_s": med, "min": min, "max": max,
                    "vs_single": single.map(|s| med / s), "output_tok_s_with_prefill": overall})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "concurrency": conc, "decode_tokens": a.decode_tokens, "runs": a.runs,
                "cached_prefix_tokens": a.cached_prefix,
                "ttft_cold_s": cold_med, "ttft_cached_s": warm_med, "ttft_cached_vs_cold": warm_med / cold_med,
                "threads": rayon::current_num_threads(), "model": resolved.name, "device": device,
            })
        );
    } else {
        println!(
            "model {} | {device} | {} threads | {} runs, {} tokens each",
            resolved.name,
            rayon::current_num_threads(),
            a.runs,
            a.decode_tokens
        );
        println!("aggregate decode tok/s (after every prompt is prefilled); last column counts prefill time too");
        println!(
            "{:<12} {:>12} {:>12} {:>12} {:>10} {:>14}",
            "concurrency", "min tok/s", "median", "max", "vs c=1", "with prefill"
        );
        for (c, min, med, max, overall) in &rows {
            let ratio = single
                .map(|s| format!("{:.2}x", med / s))
                .unwrap_or_default();
            println!("{c:<12} {min:>12.1} {med:>12.1} {max:>12.1} {ratio:>10} {overall:>14.1}");
        }
        println!(
            "TTFT with a {}-token prefix: cold {:.3} s, cached {:.3} s ({:.3}x)",
            a.cached_prefix,
            cold_med,
            warm_med,
            warm_med / cold_med
        );
    }
    Ok(())
}
