//! Shared by the end-to-end tests that start real `llmd` server processes on 127.0.0.1.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub fn enabled() -> Option<(String, String)> {
    match (
        std::env::var("LLMD_E2E").ok(),
        std::env::var("LLMD_TEST_MODEL").ok(),
        std::env::var("LLMD_TEST_PYTHON").ok(),
    ) {
        (Some(_), Some(m), Some(py)) => Some((m, py)),
        _ => {
            eprintln!("skipped: set LLMD_E2E=1, LLMD_TEST_MODEL and LLMD_TEST_PYTHON (tests/run e2e does)");
            None
        }
    }
}

pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A worker process, killed when dropped.
pub struct Worker {
    pub child: Child,
    pub url: String,
    pub kv_port: Option<u16>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `llmd ARGS`, echoing its stderr; returns the process and its stderr lines.
pub fn spawn_llmd(args: &[&str], tag: &'static str) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args(args)
        .env("LLMD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Waits for the line starting with `prefix`; returns the rest of it.
pub fn wait_line(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no line starting with {prefix:?}"));
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.trim().to_string();
        }
    }
}

/// Keeps draining a process's lines so its stderr never blocks it.
pub fn drain(rx: mpsc::Receiver<String>) {
    std::thread::spawn(move || while rx.recv().is_ok() {});
}

pub fn start_worker(model: &str, extra: &[&str]) -> Worker {
    let mut args = vec![
        "worker",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ];
    args.extend_from_slice(extra);
    let (child, rx) = spawn_llmd(&args, "worker");
    let url = format!("http://{}", wait_line(&rx, "llmd worker: http://"));
    // Roles that serve prefill legs print their KV port next.
    let kv_port = rx
        .recv_timeout(Duration::from_millis(300))
        .ok()
        .and_then(|l| {
            l.strip_prefix("llmd worker: kv transfer on ")
                .map(str::to_string)
        })
        .and_then(|a| a.rsplit(':').next()?.parse().ok());
    drain(rx);
    Worker {
        child,
        url,
        kv_port,
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

pub fn post(url: &str, body: &Value) -> (u16, Value) {
    let r = client().post(url).json(body).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// One metric's value from a worker's /metrics (summing over label sets matching `labels`).
pub fn metric(w: &Worker, name: &str, labels: &str) -> f64 {
    metrics_text(&w.url)
        .lines()
        .filter(|l| {
            l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn model_name(w: &Worker) -> String {
    let v: Value = client()
        .get(format!("{}/v1/models", w.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["data"][0]["id"].as_str().unwrap().to_string()
}

/// Stops a process as systemd does (SIGTERM) and waits for it; true when it exited
/// successfully within `within` (a clean stop: servers flush what they hold then).
pub fn terminate(child: &mut Child, within: Duration) -> bool {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct CacheManager {
    pub proc: Worker,
    pub url: String,
}

pub fn start_cache_manager(extra: &[&str]) -> (CacheManager, String) {
    let events = format!("tcp://127.0.0.1:{}", free_port());
    let mut args = vec![
        "cache-manager",
        "--port",
        "0",
        "--events-bind",
        events.as_str(),
    ];
    args.extend_from_slice(extra);
    let (child, rx) = spawn_llmd(&args, "cache-manager");
    let url = format!("http://{}", wait_line(&rx, "llmd cache-manager: http://"));
    drain(rx);
    (
        CacheManager {
            proc: Worker {
                child,
                url: url.clone(),
                kv_port: None,
            },
            url,
        },
        events,
    )
}

/// Polls until `f` holds (events travel asynchronously), or fails with the last value.
pub fn eventually(what: &str, mut f: impl FnMut() -> (bool, String)) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, last) = f();
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {last}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A metric's value in Prometheus text, summed over its label sets (0 if absent): the
/// scheduler's own reading of worker metrics.
pub fn sum_metric(text: &str, name: &str) -> f64 {
    llmd_scheduler::pool::sum_metric(text, name).unwrap_or(0.0)
}

/// tests/py/otlp_receiver.py: the OTLP receiver process and the file it appends spans to.
pub struct Receiver {
    pub child: Child,
    pub port: u16,
    pub file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn otlp_receiver(py: &str) -> Receiver {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spans.jsonl");
    let mut child = Command::new(py)
        .arg(repo_root().join("tests/py/otlp_receiver.py"))
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the receiver did not print its port: {line:?}"));
    Receiver {
        child,
        port,
        file,
        _dir: dir,
    }
}

pub fn spans(file: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A process killed (SIGKILL) when dropped, unless stopped before.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every worker healthy and the tokenizer loaded.
pub fn wait_ready(url: &str) {
    eventually("scheduler ready", || {
        let h: Value = client()
            .get(format!("{url}/health"))
            .send()
            .ok()
            .and_then(|r| r.json().ok())
            .unwrap_or(Value::Null);
        let (st, _) = post(&format!("{url}/tokenize"), &json!({"prompt": "hi"}));
        (
            h["status"] == "ok" && h["healthy_workers"] == h["workers"] && st == 200,
            h.to_string(),
        )
    });
}

pub fn id_of(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// `llmd up` as a child, its component URLs read from its (prefixed) log.
pub struct Up {
    pub proc: Proc,
    pub url: String,
    pub cache_manager: String,
    pub workers: Vec<String>,
}

pub fn start_up(model: &str, extra: &[&str]) -> Up {
    let mut args = vec!["up", "--model", model, "--port", "0"];
    args.extend_from_slice(extra);
    let (child, rx) = spawn_llmd(&args, "up");
    let mut workers = Vec::new();
    let mut cache_manager = String::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let url = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("llmd up did not get ready");
        if let Some(rest) = line.strip_prefix("llmd up: ready at ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        if let Some((_, u)) = line.split_once("] llmd worker: http://") {
            workers.push(format!("http://{u}"));
        }
        if let Some((_, u)) = line.split_once("] llmd cache-manager: http://") {
            cache_manager = format!("http://{u}");
        }
    };
    drain(rx);
    wait_ready(&url);
    Up {
        proc: Proc(child),
        url,
        cache_manager,
        workers,
    }
}

/// A server's `/metrics` page.
pub fn metrics_text(base: &str) -> String {
    client()
        .get(format!("{base}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}
