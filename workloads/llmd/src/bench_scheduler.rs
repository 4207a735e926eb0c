//! `llmd bench scheduler`: what the scheduler adds to each request, measured as the peers'
//! routers are (non-streaming chat, ~2 KB prompt, instant backends): latency through the
//! scheduler minus latency straight to a backend, at concurrency 1 and 32, and the
//! scheduler's CPU time per request — all in one run on this machine.
//!
//! The backends answer at once (a fixed completion; `/metrics`, `/health` and the
//! tokenizer description as a worker serves them), so that only the routing path is
//! measured. The scheduler and the cache-manager run as separate `llmd` processes, so their
//! CPU time is read from /proc apart from the load generator's.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use serde_json::{json, Value};
use warp::Filter;

#[derive(Args, Debug)]
pub struct SchedulerBenchArgs {
    /// Model whose tokenizer the backends describe (the scheduler tokenizes with it).
    #[arg(long, env = "LLMD_MODEL")]
    pub model: Option<String>,
    /// Instant backends behind the scheduler.
    #[arg(long, default_value_t = 4)]
    pub backends: usize,
    /// Concurrency levels to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    pub concurrency: Vec<usize>,
    /// Requests per measurement.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Prompt size in bytes (the peers were measured at ~2 KB).
    #[arg(long, default_value_t = 2048)]
    pub prompt_bytes: usize,
    /// A Python with `sglang-router` installed (`pip install sglang-router`): its router is
    /// measured the same way in the same run, cache_aware and round_robin.
    #[arg(long)]
    pub sglang_python: Option<String>,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    profile: String,
    /// `repeated`: 64 prompts in turn (the tokenizer's piece cache hits); `unique`: every
    /// prompt new (tokenized from scratch).
    prompts: String,
    concurrency: usize,
    direct_p50_ms: f64,
    direct_p99_ms: f64,
    via_p50_ms: f64,
    via_p99_ms: f64,
    added_p50_ms: f64,
    added_p99_ms: f64,
    requests_per_s: f64,
    scheduler_cpu_us_per_request: f64,
    cache_manager_cpu_us_per_request: f64,
}

/// A child `llmd` process, stopped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `llmd ARGS` and returns it with the URL it prints on the line after `ready`.
fn spawn(args: &[String], ready: &str) -> anyhow::Result<(Proc, String)> {
    use std::io::{BufRead, BufReader};
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(rest) = l.strip_prefix(ready) {
                    break rest.trim().to_string();
                }
            }
            _ => anyhow::bail!("{} exited before it was ready", args[0]),
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Ok((Proc(child), url))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Until the scheduler has every backend healthy and the tokenizer loaded.
async fn wait_ready(http: &reqwest::Client, url: &str, backends: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h: Value = match http.get(format!("{url}/health")).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let tok_ok = http
            .post(format!("{url}/tokenize"))
            .json(&json!({"prompt": "x"}))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if h["healthy_workers"].as_u64() == Some(backends as u64) && tok_ok {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the scheduler did not get ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Until a router answers a chat request.
async fn wait_serving(http: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(r) = http
            .post(format!("{url}/v1/chat/completions"))
            .json(body)
            .send()
            .await
        {
            if r.status().is_success() {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the router at {url} never answered"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What one measurement needs.
struct Measure<'a> {
    a: &'a SchedulerBenchArgs,
    http: &'a reqwest::Client,
    backends: &'a [String],
    name: &'a str,
    cm_pid: Option<u32>,
}

impl Measure<'_> {
    /// Warms the router up, then one row per concurrency level.
    #[allow(clippy::too_many_arguments)]
    async fn rows(
        &self,
        label: &str,
        prompts: &str,
        url: &str,
        pid: u32,
        repeated: &Arc<Vec<Value>>,
        next_unique: &mut usize,
        rows: &mut Vec<Row>,
    ) -> anyhow::Result<()> {
        let a = self.a;
        drive(self.http, url, repeated, 300.min(a.requests), 8).await?;
        for &c in &a.concurrency {
            let bodies = if prompts == "unique" {
                *next_unique += a.requests;
                Arc::new(bodies(
                    self.name,
                    a.prompt_bytes,
                    *next_unique - a.requests,
                    a.requests,
                ))
            } else {
                repeated.clone()
            };
            let (mut direct, _) =
                drive(self.http, &self.backends[0], &bodies, a.requests, c).await?;
            let s0 = cpu_seconds(pid)?;
            let c0 = self.cm_pid.map(cpu_seconds).transpose()?.unwrap_or(0.0);
            let (mut via, wall) = drive(self.http, url, &bodies, a.requests, c).await?;
            let s1 = cpu_seconds(pid)?;
            let c1 = self.cm_pid.map(cpu_seconds).transpose()?.unwrap_or(0.0);
            let n = a.requests as f64;
            let (d50, d99) = (pct(&mut direct, 0.5), pct(&mut direct, 0.99));
            let (v50, v99) = (pct(&mut via, 0.5), pct(&mut via, 0.99));
            rows.push(Row {
                profile: label.to_string(),
                prompts: prompts.to_string(),
                concurrency: c,
                direct_p50_ms: d50 * 1e3,
                direct_p99_ms: d99 * 1e3,
                via_p50_ms: v50 * 1e3,
                via_p99_ms: v99 * 1e3,
                added_p50_ms: (v50 - d50) * 1e3,
                added_p99_ms: (v99 - d99) * 1e3,
                requests_per_s: n / wall,
                scheduler_cpu_us_per_request: (s1 - s0) / n * 1e6,
                cache_manager_cpu_us_per_request: (c1 - c0) / n * 1e6,
            });
        }
        Ok(())
    }
}

/// User + system CPU seconds of a process (all threads), from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces, so split after its ')').
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).context("no utime")?.parse()?;
    let stime: f64 = f.get(12).context("no stime")?.parse()?;
    // USER_HZ is 100 on every Linux ABI.
    Ok((utime + stime) / 100.0)
}

/// Instant backends: a fixed answer to every completion, a worker's other routes.
async fn start_backend(model: String, tokenizer: Arc<Value>) -> anyhow::Result<String> {
    let answer = Arc::new(json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "finish_reason": "stop", "logprobs": null}],
        "usage": {"prompt_tokens": 512, "completion_tokens": 1, "total_tokens": 513},
    }));
    let m = model.clone();
    let models = warp::path!("v1" / "models").map(move || {
        warp::reply::json(&json!({"object": "list", "data": [{"id": m, "object": "model"}]}))
    });
    let health = warp::path!("health").map(warp::reply);
    let metrics = warp::path!("metrics").map(|| {
        "vllm:num_requests_waiting{model_name=\"m\"} 0\nvllm:num_requests_running{model_name=\"m\"} 0\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0\n"
    });
    let tok = warp::path!("v1" / "llmd" / "tokenizer").map(move || warp::reply::json(&*tokenizer));
    let chat = warp::path!("v1" / "chat" / "completions")
        .and(warp::post())
        .and(warp::body::bytes())
        .map(move |_b: bytes::Bytes| warp::reply::json(&*answer));
    let routes = models.or(health).or(metrics).or(tok).or(chat);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    Ok(format!("http://{addr}"))
}

/// Sends `n` requests from `c` tasks; returns each latency (seconds) and the wall time.
async fn drive(
    http: &reqwest::Client,
    url: &str,
    bodies: &Arc<Vec<Value>>,
    n: usize,
    c: usize,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..c {
        let (http, url, bodies, next) =
            (http.clone(), url.to_string(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let t = Instant::now();
                let r = http
                    .post(format!("{url}/v1/chat/completions"))
                    .json(&bodies[i % bodies.len()])
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "answer {}", r.status());
                r.bytes().await?;
                lat.push(t.elapsed().as_secs_f64());
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, t.elapsed().as_secs_f64()))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// `count` chat bodies of about `bytes` bytes each, all different from the first word on,
/// numbered from `from`.
fn bodies(model: &str, bytes: usize, from: usize, count: usize) -> Vec<Value> {
    const WORDS: &[&str] = &[
        "library",
        "opening",
        "hours",
        "borrow",
        "renew",
        "late",
        "fee",
        "catalogue",
        "study",
        "room",
        "printing",
        "colour",
        "children",
        "events",
        "access",
        "member",
        "reserve",
        "weekday",
        "holiday",
        "desk",
        "quiet",
        "floor",
        "journal",
        "archive",
        "map",
        "music",
    ];
    (from..from + count)
        .map(|i| {
            let mut text = format!("Request {i}: ");
            let mut k = i * 7 + 3;
            while text.len() < bytes {
                text.push_str(WORDS[k % WORDS.len()]);
                text.push(' ');
                k = k * 31 + 17;
            }
            json!({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 1})
        })
        .collect()
}

pub fn run(a: SchedulerBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.backends > 0, "--backends must be at least 1");
    anyhow::ensure!(a.requests > 0, "--requests must be at least 1");
    anyhow::ensure!(
        !a.concurrency.is_empty() && a.concurrency.iter().all(|&c| c > 0),
        "--concurrency needs levels of at least 1"
    );
    let source = llmd_models::ModelSource::parse_opt(a.model.as_deref())?;
    let resolved = llmd_models::resolve(&source, &llmd_models::FetchOptions::from_env())?;
    let (_model, tok) = llmd_engine::load_model(&resolved, &candle_core::Device::Cpu)?;
    let name = resolved.name.clone();
    // The fields of a worker's tokenizer description the scheduler reads.
    let description = Arc::new(json!({
        "model": name,
        "tokenizer_json": tok.to_json()?,
        "block_size": llmd_engine::engine::DEFAULT_BLOCK_SIZE,
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let backends: Vec<String> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..a.backends {
            v.push(start_backend(name.clone(), description.clone()).await?);
        }
        Ok::<_, anyhow::Error>(v)
    })?;
    let (cm, cm_url) = spawn(
        &["cache-manager".into(), "--port".into(), "0".into()],
        "llmd cache-manager: ",
    )?;
    let workers: Vec<String> = backends.iter().map(|b| format!("--worker={b}")).collect();
    let repeated = Arc::new(bodies(&name, a.prompt_bytes, 0, 64));
    let mut next_unique = 64;
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let mut rows = Vec::new();
    // `approximate`: the default scorers without a cache-manager (the scheduler's own
    // record of what went where), to show what the cache-manager hop costs.
    for (label, prompts) in [
        ("default", "repeated"),
        ("default", "unique"),
        ("approximate", "repeated"),
        ("round-robin", "repeated"),
    ] {
        let profile = if label == "approximate" {
            "default"
        } else {
            label
        };
        let mut args: Vec<String> = vec![
            "scheduler".into(),
            "--port".into(),
            "0".into(),
            "--profile".into(),
            profile.into(),
        ];
        if label != "approximate" {
            args.extend(["--cache-manager".into(), cm_url.clone()]);
        }
        args.extend(workers.iter().cloned());
        let (sched, url) = spawn(&args, "llmd scheduler: ")?;
        let m = Measure {
            a: &a,
            http: &http,
            backends: &backends,
            name: &name,
            cm_pid: Some(cm.0.id()),
        };
        rt.block_on(async {
            wait_ready(&http, &url, a.backends).await?;
            m.rows(
                label,
                prompts,
                &url,
                sched.0.id(),
                &repeated,
                &mut next_unique,
                &mut rows,
            )
            .await
        })?;
        drop(sched);
    }
    if let Some(py) = &a.sglang_python {
        for policy in ["cache_aware", "round_robin"] {
            let port = free_port()?;
            let mut cmd = Command::new(py);
            cmd.args(["-m", "sglang_router.launch_router", "--worker-urls"])
                .args(&backends)
                .args(["--policy", policy, "--host", "127.0.0.1", "--port"])
                .arg(port.to_string())
                .args(["--prometheus-host", "127.0.0.1", "--prometheus-port"])
                .arg(free_port()?.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let peer = Proc(cmd.spawn().context("cannot start sglang-router")?);
            let url = format!("http://127.0.0.1:{port}");
            let m = Measure {
                a: &a,
                http: &http,
                backends: &backends,
                name: &name,
                cm_pid: None,
            };
            let label = format!("sglang {policy}");
            rt.block_on(async {
                wait_serving(&http, &url, &repeated[0]).await?;
                m.rows(
                    &label,
                    "repeated",
                    &url,
                    peer.0.id(),
                    &repeated,
                    &mut next_unique,
                    &mut rows,
                )
                .await?;
                m.rows(
                    &label,
                    "unique",
                    &url,
                    peer.0.id(),
                    &repeated,
                    &mut next_unique,
                    &mut rows,
                )
                .await
            })?;
        }
    }
    drop(cm);
    if a.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    println!(
        "scheduler overhead: {} instant backends, non-streaming chat, {}-byte prompts, {} requests per row",
        a.backends, a.prompt_bytes, a.requests
    );
    println!(
        "{:<12} {:<9} {:>4}  {:>17}  {:>17}  {:>17}  {:>8}  {:>14}  {:>10}",
        "profile",
        "prompts",
        "conc",
        "direct p50/p99 ms",
        "via p50/p99 ms",
        "added p50/p99 ms",
        "req/s",
        "sched CPU µs/req",
        "cm µs/req"
    );
    for r in &rows {
        println!(
            "{:<12} {:<9} {:>4}  {:>8.3} {:>8.3}  {:>8.3} {:>8.3}  {:>8.3} {:>8.3}  {:>8.0}  {:>14.0}  {:>10.0}",
            r.profile,
            r.prompts,
            r.concurrency,
            r.direct_p50_ms,
            r.direct_p99_ms,
            r.via_p50_ms,
            r.via_p99_ms,
            r.added_p50_ms,
            r.added_p99_ms,
            r.requests_per_s,
            r.scheduler_cpu_us_per_request,
            r.cache_manager_cpu_us_per_request
        );
    }
    Ok(())
}
