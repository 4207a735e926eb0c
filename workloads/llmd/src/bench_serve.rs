//! `llmd bench serve`: an OpenAI-API load generator for any server (ours, vLLM, a peer
//! router). Streams chat completions, measures time to first token, inter-token latency and
//! end-to-end latency per request, and reports percentiles and throughput; `--compare`
//! prints the ratios between two saved runs.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Args, Debug, Clone)]
pub struct ServeBenchArgs {
    /// The server's base URL (e.g. http://127.0.0.1:8000)
    #[arg(long, required_unless_present = "compare")]
    pub url: Option<String>,
    /// Model name to request [default: the first of the server's /v1/models]
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value_t = Workload::SharedPrefix)]
    pub workload: Workload,
    /// Open loop: requests per second (Poisson arrivals). Without it, closed loop.
    #[arg(long, conflicts_with = "concurrency")]
    pub qps: Option<f64>,
    /// Closed loop: requests in flight at once
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Requests to send (the run also stops at --duration)
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Longest run, in seconds
    #[arg(long, default_value_t = 600.0)]
    pub duration: f64,
    /// `max_tokens` of each request
    #[arg(long, default_value_t = 24)]
    pub max_tokens: u32,
    /// shared-prefix: users, each with its own growing conversation
    #[arg(long, default_value_t = 16)]
    pub users: usize,
    /// shared-prefix: groups of users; each group shares its own system prompt (user u is
    /// in group u mod groups)
    #[arg(long, default_value_t = 4)]
    pub groups: usize,
    /// shared-prefix: words of the system prompt a group's users share
    #[arg(long, default_value_t = 300)]
    pub system_words: usize,
    /// shared-prefix: words of each user turn
    #[arg(long, default_value_t = 40)]
    pub question_words: usize,
    /// shared-prefix: turns before a user starts a new conversation
    #[arg(long, default_value_t = 6)]
    pub turns: usize,
    /// random / long-prompt: words per prompt [default: 200 / 1200]
    #[arg(long)]
    pub prompt_words: Option<usize>,
    /// Seed of the generated text
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Per-request timeout, in seconds
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Name of this run in the report (e.g. the router under test)
    #[arg(long)]
    pub label: Option<String>,
    /// Write the report (and every request's timings) as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Print the ratios between two saved reports (B / A) instead of running
    #[arg(long, num_args = 2, value_names = ["A.json", "B.json"])]
    pub compare: Option<Vec<PathBuf>>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Users share a long system prompt, each with a growing multi-turn history
    SharedPrefix,
    /// Every prompt new: no reuse at all
    Random,
    /// Long prompts, short answers (favours P/D)
    LongPrompt,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Self::SharedPrefix => "shared-prefix",
            Self::Random => "random",
            Self::LongPrompt => "long-prompt",
        }
    }
}

/// One request's measurements.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Sample {
    /// Seconds from the start of the run.
    pub start: f64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub ttft: Option<f64>,
    pub e2e: f64,
    /// Gaps between streamed tokens, seconds.
    #[serde(skip)]
    pub itl: Vec<f64>,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        // Nearest rank: the smallest value with at least p% of the samples at or below it.
        let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Report {
    pub label: String,
    pub url: String,
    pub model: String,
    pub workload: Workload,
    pub mode: String,
    pub date: String,
    pub requests: usize,
    pub succeeded: usize,
    pub success_rate: f64,
    pub duration_s: f64,
    /// Milliseconds.
    pub ttft_ms: Percentiles,
    pub itl_ms: Percentiles,
    pub e2e_ms: Percentiles,
    pub output_tok_s: f64,
    pub total_tok_s: f64,
    pub requests_s: f64,
    pub mean_prompt_tokens: f64,
    /// Share of prompt tokens the server reported as cached.
    pub cached_fraction: f64,
    pub samples: Vec<Sample>,
}

pub fn run(a: ServeBenchArgs) -> anyhow::Result<()> {
    if let Some(files) = &a.compare {
        return compare(&files[0], &files[1]);
    }
    anyhow::ensure!(a.requests > 0, "--requests must be at least 1");
    anyhow::ensure!(a.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(
        a.duration.is_finite() && a.duration > 0.0,
        "--duration must be a positive number of seconds"
    );
    anyhow::ensure!(
        a.timeout.is_finite() && a.timeout > 0.0,
        "--timeout must be a positive number of seconds"
    );
    if let Some(q) = a.qps {
        anyhow::ensure!(q.is_finite() && q > 0.0, "--qps must be a positive number");
    }
    anyhow::ensure!(a.users > 0, "--users must be at least 1");
    anyhow::ensure!(a.groups > 0, "--groups must be at least 1");
    anyhow::ensure!(a.turns > 0, "--turns must be at least 1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(run_async(a.clone()))?;
    print_report(&report);
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    Ok(())
}

async fn run_async(a: ServeBenchArgs) -> anyhow::Result<Report> {
    let url = a
        .url
        .clone()
        .context("--url is required")?
        .trim_end_matches('/')
        .to_string();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(a.timeout))
        .pool_max_idle_per_host(1024)
        .build()?;
    let model = match &a.model {
        Some(m) => m.clone(),
        None => first_model(&client, &url).await?,
    };
    let gen = Arc::new(Generator::new(&a));
    let bar = indicatif::ProgressBar::new(a.requests as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {pos}/{len} requests [{elapsed_precise}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let samples = Arc::new(Mutex::new(Vec::with_capacity(a.requests)));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(a.duration);
    let endpoint = format!("{url}/v1/chat/completions");
    let one = {
        let (client, gen, samples, bar, model) = (
            client.clone(),
            gen.clone(),
            samples.clone(),
            bar.clone(),
            model.clone(),
        );
        move |i: usize| {
            let (client, gen, samples, bar, model, endpoint) = (
                client.clone(),
                gen.clone(),
                samples.clone(),
                bar.clone(),
                model.clone(),
                endpoint.clone(),
            );
            async move {
                let (turn, messages) = gen.next(i).await;
                let body = json!({
                    "model": model,
                    "messages": messages,
                    "max_tokens": gen.max_tokens,
                    "temperature": 0,
                    "stream": true,
                    "stream_options": {"include_usage": true},
                });
                let start = t0.elapsed().as_secs_f64();
                let (sample, answer) = send(&client, &endpoint, &body, start).await;
                gen.done(turn, answer, sample.ok).await;
                let failed = {
                    let mut s = samples.lock().unwrap_or_else(|e| e.into_inner());
                    s.push(sample);
                    s.iter().filter(|x| !x.ok).count()
                };
                if failed > 0 {
                    bar.set_message(format!("{failed} failed"));
                }
                bar.inc(1);
            }
        }
    };
    let mode = match a.qps {
        None => {
            // Closed loop: each slot sends its next request when the last one ends.
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut slots = Vec::new();
            for _ in 0..a.concurrency {
                let (next, one) = (next.clone(), one.clone());
                let n = a.requests;
                slots.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n || Instant::now() >= deadline {
                            break;
                        }
                        one(i).await;
                    }
                }));
            }
            for s in slots {
                s.await?;
            }
            format!("closed loop, concurrency {}", a.concurrency)
        }
        Some(qps) => {
            // Open loop: Poisson arrivals, whatever the server's pace.
            let mut rng = StdRng::seed_from_u64(a.seed ^ 0x9e37_79b9);
            let mut tasks = Vec::new();
            let mut at = Instant::now();
            for i in 0..a.requests {
                let u: f64 = rng.random_range(f64::EPSILON..1.0);
                at += Duration::from_secs_f64(-u.ln() / qps);
                if at >= deadline {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                tasks.push(tokio::spawn(one(i)));
            }
            for t in tasks {
                t.await?;
            }
            format!("open loop, {qps} requests/s")
        }
    };
    bar.finish_and_clear();
    let duration = t0.elapsed().as_secs_f64();
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(summarise(
        &a,
        url,
        model,
        mode,
        duration,
        samples,
        gen.workload,
    ))
}

async fn first_model(client: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let v: Value = client
        .get(format!("{url}/v1/models"))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?
        .error_for_status()?
        .json()
        .await?;
    v["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{url}/v1/models lists no model; pass --model"))
}

/// Sends one streamed chat request; returns its timings and the answer's text.
async fn send(client: &reqwest::Client, url: &str, body: &Value, start: f64) -> (Sample, String) {
    let t = Instant::now();
    let mut s = Sample {
        start,
        ..Default::default()
    };
    let mut text = String::new();
    let fail = |mut s: Sample, e: String, t: Instant| {
        s.ok = false;
        s.error = Some(e);
        s.e2e = t.elapsed().as_secs_f64();
        s
    };
    let resp = match client.post(url).json(body).send().await {
        Ok(r) => r,
        Err(e) => return (fail(s, e.to_string(), t), text),
    };
    if !resp.status().is_success() {
        let status = resp.status();
        let msg = resp.text().await.unwrap_or_default();
        return (fail(s, format!("{status}: {msg}"), t), text);
    }
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut last: Option<Instant> = None;
    let mut chunks = 0u64;
    let mut done = false;
    while let Some(part) = stream.next().await {
        let part = match part {
            Ok(p) => p,
            Err(e) => return (fail(s, e.to_string(), t), text),
        };
        buf.extend_from_slice(&part);
        // Server-sent events end with a blank line.
        while let Some(end) = find(&buf, b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            for line in String::from_utf8_lossy(&event).lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(data) else {
                    return (fail(s, format!("bad event: {data}"), t), text);
                };
                if let Some(err) = v.get("error") {
                    return (fail(s, format!("error event: {err}"), t), text);
                }
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    s.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
                    s.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0);
                    s.cached_tokens = u["prompt_tokens_details"]["cached_tokens"]
                        .as_u64()
                        .unwrap_or(0);
                }
                let piece = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
                if !piece.is_empty() {
                    let now = Instant::now();
                    match last {
                        None => s.ttft = Some((now - t).as_secs_f64()),
                        Some(l) => s.itl.push((now - l).as_secs_f64()),
                    }
                    last = Some(now);
                    chunks += 1;
                    text.push_str(piece);
                }
            }
        }
    }
    if !done {
        return (fail(s, "the stream ended without [DONE]".into(), t), text);
    }
    if s.output_tokens == 0 {
        s.output_tokens = chunks;
    }
    s.ok = true;
    s.e2e = t.elapsed().as_secs_f64();
    (s, text)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A user's conversation in the shared-prefix workload.
struct User {
    id: usize,
    history: Vec<Value>,
    turns: usize,
    rng: StdRng,
}

/// Makes each request's messages, and keeps the users' conversations.
struct Generator {
    workload: Workload,
    max_tokens: u32,
    /// One system prompt per group.
    systems: Vec<String>,
    question_words: usize,
    turns: usize,
    prompt_words: usize,
    seed: u64,
    /// Users not waiting for an answer; a user sends its next turn only after reading the
    /// last answer, as a person in a chat does.
    idle: tokio::sync::Mutex<VecDeque<User>>,
    returned: tokio::sync::Notify,
}

impl Generator {
    fn new(a: &ServeBenchArgs) -> Self {
        let mut rng = StdRng::seed_from_u64(a.seed);
        let systems = (0..a.groups.max(1))
            .map(|g| {
                format!(
                    "You are the assistant of public library number {g}. {}",
                    words(&mut rng, a.system_words)
                )
            })
            .collect();
        let users = (0..a.users)
            .map(|id| User {
                id,
                history: Vec::new(),
                turns: 0,
                rng: StdRng::seed_from_u64(a.seed.wrapping_mul(1_000_003).wrapping_add(id as u64)),
            })
            .collect();
        Self {
            workload: a.workload,
            max_tokens: a.max_tokens,
            systems,
            question_words: a.question_words,
            turns: a.turns,
            prompt_words: a.prompt_words.unwrap_or(match a.workload {
                Workload::LongPrompt => 1200,
                _ => 200,
            }),
            seed: a.seed,
            idle: tokio::sync::Mutex::new(users),
            returned: tokio::sync::Notify::new(),
        }
    }

    /// Request `i`'s messages, with the user it belongs to (shared-prefix).
    async fn next(&self, i: usize) -> (Option<User>, Vec<Value>) {
        match self.workload {
            Workload::SharedPrefix => {
                let mut user = loop {
                    let notified = self.returned.notified();
                    if let Some(u) = self.idle.lock().await.pop_front() {
                        break u;
                    }
                    notified.await;
                };
                if user.turns == self.turns || user.history.is_empty() {
                    user.turns = 0;
                    let system = &self.systems[user.id % self.systems.len()];
                    user.history = vec![json!({"role": "system", "content": system})];
                }
                let q = format!(
                    "Question {} from reader {}: {}?",
                    user.turns + 1,
                    user.id,
                    words(&mut user.rng, self.question_words)
                );
                user.history.push(json!({"role": "user", "content": q}));
                let messages = user.history.clone();
                (Some(user), messages)
            }
            Workload::Random | Workload::LongPrompt => {
                let mut rng = StdRng::seed_from_u64(self.seed.wrapping_add(i as u64) ^ 0x5eed);
                // A distinct first line: no two prompts share a prefix block.
                let content = format!("Request {i}. {}", words(&mut rng, self.prompt_words));
                (None, vec![json!({"role": "user", "content": content})])
            }
        }
    }

    /// Hands a user back with the answer appended (or the question dropped, on failure).
    async fn done(&self, user: Option<User>, answer: String, ok: bool) {
        let Some(mut user) = user else { return };
        if ok {
            user.history
                .push(json!({"role": "assistant", "content": answer}));
            user.turns += 1;
        } else {
            user.history.pop();
        }
        self.idle.lock().await.push_back(user);
        self.returned.notify_one();
    }
}

/// Plain English words, so prompts tokenize like text.
const WORDS: &[&str] = &[
    "the",
    "library",
    "book",
    "reader",
    "opening",
    "hours",
    "late",
    "fee",
    "catalogue",
    "shelf",
    "history",
    "science",
    "novel",
    "author",
    "chapter",
    "page",
    "loan",
    "return",
    "renew",
    "card",
    "member",
    "child",
    "adult",
    "student",
    "study",
    "room",
    "quiet",
    "computer",
    "printer",
    "copy",
    "map",
    "journal",
    "newspaper",
    "magazine",
    "archive",
    "record",
    "music",
    "film",
    "language",
    "course",
    "event",
    "talk",
    "week",
    "month",
    "year",
    "morning",
    "evening",
    "weekend",
    "holiday",
    "rule",
    "policy",
    "question",
    "answer",
    "help",
    "staff",
    "desk",
    "floor",
    "door",
    "window",
    "garden",
    "city",
    "village",
    "river",
    "bridge",
    "road",
    "train",
    "station",
    "market",
    "school",
    "museum",
    "painting",
    "poem",
    "story",
    "letter",
    "word",
    "number",
    "list",
    "table",
    "chair",
    "lamp",
    "light",
    "colour",
    "green",
    "blue",
    "red",
    "small",
    "large",
    "old",
    "new",
    "early",
    "quick",
    "slow",
    "careful",
    "kind",
    "open",
    "closed",
    "free",
    "paid",
    "borrow",
    "lend",
    "read",
    "write",
    "find",
    "search",
    "ask",
    "explain",
    "describe",
    "compare",
    "remember",
    "and",
    "or",
    "with",
    "for",
    "about",
    "from",
    "into",
    "before",
    "after",
    "during",
    "because",
    "which",
    "where",
    "when",
    "how",
];

fn words(rng: &mut StdRng, n: usize) -> String {
    let mut out = String::with_capacity(n * 7);
    for k in 0..n {
        if k > 0 {
            out.push(if k % 12 == 0 { '.' } else { ' ' });
            if k % 12 == 0 {
                out.push(' ');
            }
        }
        out.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    out
}

fn summarise(
    a: &ServeBenchArgs,
    url: String,
    model: String,
    mode: String,
    duration: f64,
    samples: Vec<Sample>,
    workload: Workload,
) -> Report {
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok).collect();
    let ms = |v: Vec<f64>| {
        let p = Percentiles::of(v);
        Percentiles {
            p50: p.p50 * 1e3,
            p90: p.p90 * 1e3,
            p99: p.p99 * 1e3,
            mean: p.mean * 1e3,
        }
    };
    let out: u64 = ok.iter().map(|s| s.output_tokens).sum();
    let prompt: u64 = ok.iter().map(|s| s.prompt_tokens).sum();
    let cached: u64 = ok.iter().map(|s| s.cached_tokens).sum();
    Report {
        label: a.label.clone().unwrap_or_else(|| url.clone()),
        url,
        model,
        workload,
        mode,
        date: utc_now(),
        requests: samples.len(),
        succeeded: ok.len(),
        success_rate: ok.len() as f64 / samples.len().max(1) as f64,
        duration_s: duration,
        ttft_ms: ms(ok.iter().filter_map(|s| s.ttft).collect()),
        itl_ms: ms(ok.iter().flat_map(|s| s.itl.iter().copied()).collect()),
        e2e_ms: ms(ok.iter().map(|s| s.e2e).collect()),
        output_tok_s: out as f64 / duration,
        total_tok_s: (out + prompt) as f64 / duration,
        requests_s: ok.len() as f64 / duration,
        mean_prompt_tokens: prompt as f64 / ok.len().max(1) as f64,
        cached_fraction: cached as f64 / prompt.max(1) as f64,
        samples,
    }
}

fn print_report(r: &Report) {
    println!(
        "{} — {}, {}, {} requests in {:.1} s, {:.1}% succeeded",
        r.label,
        r.workload.name(),
        r.mode,
        r.requests,
        r.duration_s,
        r.success_rate * 100.0
    );
    println!("| measure | p50 | p90 | p99 | mean |");
    println!("|---|---|---|---|---|");
    for (name, p) in [
        ("TTFT (ms)", &r.ttft_ms),
        ("inter-token (ms)", &r.itl_ms),
        ("end-to-end (ms)", &r.e2e_ms),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            p.p50, p.p90, p.p99, p.mean
        );
    }
    println!(
        "output {:.1} tok/s, total {:.1} tok/s, {:.2} requests/s; prompts {:.0} tokens on average, {:.0}% reported cached",
        r.output_tok_s,
        r.total_tok_s,
        r.requests_s,
        r.mean_prompt_tokens,
        r.cached_fraction * 100.0
    );
    let mut errors: Vec<&str> = r
        .samples
        .iter()
        .filter_map(|s| s.error.as_deref())
        .collect();
    errors.dedup();
    for e in errors.iter().take(3) {
        println!("error: {e}");
    }
}

pub fn load(path: &std::path::Path) -> anyhow::Result<Report> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not a `llmd bench serve --json` report",
            path.display()
        )
    })
}

fn compare(a: &std::path::Path, b: &std::path::Path) -> anyhow::Result<()> {
    let (ra, rb) = (load(a)?, load(b)?);
    println!("| measure | {} | {} | ratio |", ra.label, rb.label);
    println!("|---|---|---|---|");
    let row = |name: &str, x: f64, y: f64| {
        let ratio = if x > 0.0 { y / x } else { f64::NAN };
        println!("| {name} | {x:.1} | {y:.1} | {ratio:.2}× |");
    };
    for (name, pa, pb) in [
        ("TTFT", &ra.ttft_ms, &rb.ttft_ms),
        ("inter-token", &ra.itl_ms, &rb.itl_ms),
        ("end-to-end", &ra.e2e_ms, &rb.e2e_ms),
    ] {
        row(&format!("{name} p50 (ms)"), pa.p50, pb.p50);
        row(&format!("{name} p90 (ms)"), pa.p90, pb.p90);
        row(&format!("{name} p99 (ms)"), pa.p99, pb.p99);
    }
    row("output tok/s", ra.output_tok_s, rb.output_tok_s);
    row("total tok/s", ra.total_tok_s, rb.total_tok_s);
    row(
        "success rate (%)",
        ra.success_rate * 100.0,
        rb.success_rate * 100.0,
    );
    Ok(())
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ` (reports carry their run date).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (the proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p90, p.p99, p.mean), (50.0, 90.0, 99.0, 50.5));
        let one = Percentiles::of(vec![7.0]);
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert_eq!(Percentiles::of(Vec::new()).p90, 0.0);
    }

    #[test]
    fn utc_now_is_an_iso_date() {
        let d = utc_now();
        assert_eq!(d.len(), 20, "{d}");
        assert!(
            d.starts_with("20") && d.ends_with('Z') && &d[10..11] == "T",
            "{d}"
        );
    }

    #[test]
    fn generated_text_is_repeatable_words() {
        let a = words(&mut StdRng::seed_from_u64(3), 30);
        assert_eq!(a, words(&mut StdRng::seed_from_u64(3), 30));
        assert_ne!(a, words(&mut StdRng::seed_from_u64(4), 30));
        assert_eq!(a.split([' ', '.']).filter(|w| !w.is_empty()).count(), 30);
    }

    #[tokio::test]
    async fn shared_prefix_users_grow_their_history_and_start_over() {
        let args = ServeBenchArgs::parse_from_for_test(&["--users", "1", "--turns", "2"]);
        let g = Generator::new(&args);
        let (u, m) = g.next(0).await;
        assert_eq!(m.len(), 2, "system + question");
        g.done(u, "an answer".into(), true).await;
        let (u, m) = g.next(1).await;
        assert_eq!(m.len(), 4, "system, question, answer, question");
        assert_eq!(m[2]["content"], "an answer");
        g.done(u, "again".into(), true).await;
        let (u, m) = g.next(2).await;
        assert_eq!(m.len(), 2, "a new conversation after --turns");
        // A failed turn is dropped, not kept in the history.
        g.done(u, String::new(), false).await;
        let (_, m) = g.next(3).await;
        assert_eq!(m.len(), 2);
    }

    impl ServeBenchArgs {
        fn parse_from_for_test(extra: &[&str]) -> Self {
            use clap::Parser;
            #[derive(Parser)]
            struct Cli {
                #[command(flatten)]
                a: ServeBenchArgs,
            }
            let mut argv = vec!["bench", "--url", "http://127.0.0.1:1"];
            argv.extend_from_slice(extra);
            Cli::parse_from(argv).a
        }
    }
}
