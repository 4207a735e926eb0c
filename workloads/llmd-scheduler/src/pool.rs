//! The worker pool: who serves what, who is healthy, and how loaded each is.
//!
//! Each worker gets a probe task: `GET /health` every interval (failures mark it unhealthy,
//! success brings it back), its models from `/v1/models`, its tokenizer description from
//! `/v1/llmd/tokenizer` the first time its model is seen, and — when load is scraped —
//! its `/metrics`. With a Prometheus source, one task reads the same metrics from
//! Prometheus's query API instead (the `instance` label names the worker).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use serde_json::Value;

use crate::config::{worker_id, Role, WorkerSpec};
use crate::tokenize::ModelTokenizer;
use crate::SchedulerError;

/// Where load metrics come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsSource {
    /// Each worker's `/metrics`.
    Scrape,
    /// A Prometheus server's `/api/v1/query` (base URL).
    Prometheus(String),
}

/// Metric names read for load: vLLM's by default.
#[derive(Debug, Clone)]
pub struct MetricNames {
    pub queue: String,
    pub running: String,
    pub kv_usage: String,
}

impl Default for MetricNames {
    fn default() -> Self {
        Self {
            queue: "vllm:num_requests_waiting".into(),
            running: "vllm:num_requests_running".into(),
            kv_usage: "vllm:kv_cache_usage_perc".into(),
        }
    }
}

/// A worker's load as the scorers see it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    pub waiting: f64,
    pub running: f64,
    /// Fraction of the KV cache in use, 0..=1.
    pub kv_usage: f64,
    /// Requests this scheduler has in flight there.
    pub active: usize,
}

#[derive(Debug, Default)]
struct WorkerState {
    healthy: bool,
    /// Model ids the worker serves, and their `/v1/models` cards.
    models: Vec<(String, Value)>,
    waiting: f64,
    running: f64,
    kv_usage: f64,
    last_error: Option<String>,
    /// Health probes in a row that timed out.
    probe_timeouts: u32,
}

#[derive(Debug)]
pub struct Worker {
    /// `host:port`, as its KV events and the cache-manager name it.
    pub id: String,
    /// Base URL, no trailing slash.
    pub url: String,
    pub role: Role,
    /// The two endpoints requests go to, parsed once (URL parsing shows in the profile).
    pub chat_url: reqwest::Url,
    pub completions_url: reqwest::Url,
    configured_model: Option<String>,
    state: Mutex<WorkerState>,
    pub active: AtomicUsize,
}

impl Worker {
    pub fn new(spec: &WorkerSpec) -> Result<Self, SchedulerError> {
        let url = spec.url.trim_end_matches('/').to_string();
        let endpoint = |path: &str| {
            reqwest::Url::parse(&format!("{url}{path}"))
                .map_err(|e| SchedulerError::Config(format!("worker url {url:?}: {e}")))
        };
        Ok(Self {
            id: worker_id(&spec.url)?,
            chat_url: endpoint("/v1/chat/completions")?,
            completions_url: endpoint("/v1/completions")?,
            url,
            role: spec.role,
            configured_model: spec.model.clone(),
            state: Mutex::new(WorkerState::default()),
            active: AtomicUsize::new(0),
        })
    }

    fn st(&self) -> std::sync::MutexGuard<'_, WorkerState> {
        // A panic while holding this lock leaves plain numbers behind: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn healthy(&self) -> bool {
        self.st().healthy
    }

    /// Whether it serves `model` (the configured one, else what `/v1/models` lists).
    pub fn serves(&self, model: &str) -> bool {
        match &self.configured_model {
            Some(m) => m == model,
            None => self.st().models.iter().any(|(id, _)| id == model),
        }
    }

    /// The model it serves (first listed).
    pub fn model(&self) -> Option<String> {
        self.configured_model
            .clone()
            .or_else(|| self.st().models.first().map(|(id, _)| id.clone()))
    }

    pub fn model_cards(&self) -> Vec<(String, Value)> {
        self.st().models.clone()
    }

    pub fn load(&self) -> Load {
        let s = self.st();
        Load {
            waiting: s.waiting,
            running: s.running,
            kv_usage: s.kv_usage,
            active: self.active.load(Ordering::Relaxed),
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.st().last_error.clone()
    }

    /// A request to it failed to connect: out of rotation until a probe succeeds.
    pub fn mark_unreachable(&self, why: &str) {
        let mut s = self.st();
        if s.healthy {
            tracing::warn!(worker = %self.id, error = why, "worker unreachable; out of rotation");
        }
        s.healthy = false;
        s.last_error = Some(why.to_string());
    }

    fn set_load(&self, waiting: Option<f64>, running: Option<f64>, kv: Option<f64>) {
        let mut s = self.st();
        if let Some(v) = waiting {
            s.waiting = v;
        }
        if let Some(v) = running {
            s.running = v;
        }
        if let Some(v) = kv {
            s.kv_usage = v;
        }
    }

    #[cfg(test)]
    pub fn set_healthy_for_test(&self, l: Load) {
        let mut s = self.st();
        s.healthy = true;
        s.waiting = l.waiting;
        s.running = l.running;
        s.kv_usage = l.kv_usage;
        self.active.store(l.active, Ordering::Relaxed);
    }
}

/// Counts a request in flight at a worker for as long as it lives.
pub struct ActiveGuard(pub Arc<Worker>);

impl ActiveGuard {
    pub fn new(w: Arc<Worker>) -> Self {
        w.active.fetch_add(1, Ordering::Relaxed);
        Self(w)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub interval: Duration,
    pub source: MetricsSource,
    pub names: MetricNames,
}

pub struct Pool {
    workers: RwLock<Arc<Vec<Arc<Worker>>>>,
    tokenizers: RwLock<HashMap<String, Arc<ModelTokenizer>>>,
    http: reqwest::Client,
    opts: PoolOptions,
    self_ref: Weak<Pool>,
}

impl Pool {
    pub fn new(http: reqwest::Client, opts: PoolOptions) -> Arc<Self> {
        let pool = Arc::new_cyclic(|me| Pool {
            workers: RwLock::new(Arc::new(Vec::new())),
            tokenizers: RwLock::new(HashMap::new()),
            http,
            opts,
            self_ref: me.clone(),
        });
        if let MetricsSource::Prometheus(url) = &pool.opts.source {
            tokio::spawn(prometheus_loop(Arc::downgrade(&pool), url.clone()));
        }
        pool
    }

    /// The current workers, sorted by id; in-flight requests keep theirs alive across
    /// reloads.
    pub fn workers(&self) -> Arc<Vec<Arc<Worker>>> {
        self.workers
            .read()
            .map(|w| w.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Replaces the worker list. Workers that stay (same URL, role and model) keep their
    /// state and probe; new ones start unhealthy and are probed at once; removed ones
    /// leave rotation now and finish what they were sent.
    pub fn set_workers(&self, specs: &[WorkerSpec]) -> Result<(), SchedulerError> {
        let old = self.workers();
        let mut next = Vec::with_capacity(specs.len());
        let mut fresh = Vec::new();
        for spec in specs {
            let url = spec.url.trim_end_matches('/');
            if let Some(w) = old
                .iter()
                .find(|w| w.url == url && w.role == spec.role && w.configured_model == spec.model)
            {
                next.push(w.clone());
                continue;
            }
            let w = Arc::new(Worker::new(spec)?);
            if next.iter().any(|o: &Arc<Worker>| o.id == w.id) {
                return Err(SchedulerError::Config(format!(
                    "worker {} is listed twice",
                    w.id
                )));
            }
            fresh.push(Arc::downgrade(&w));
            next.push(w);
        }
        next.sort_by(|a, b| a.id.cmp(&b.id));
        tracing::info!(workers = next.len(), "worker list set");
        match self.workers.write() {
            Ok(mut g) => *g = Arc::new(next),
            Err(e) => *e.into_inner() = Arc::new(next),
        }
        // Probes start once the list holds their worker (they stop when it no longer does).
        for w in fresh {
            tokio::spawn(probe_loop(self.self_ref.clone(), w));
        }
        Ok(())
    }

    pub fn tokenizer(&self, model: &str) -> Option<Arc<ModelTokenizer>> {
        self.tokenizers.read().ok()?.get(model).cloned()
    }

    fn is_current(&self, w: &Arc<Worker>) -> bool {
        self.workers().iter().any(|o| Arc::ptr_eq(o, w))
    }

    /// One round of checks on one worker.
    async fn probe(&self, w: &Worker) {
        let timeout = self
            .opts
            .interval
            .clamp(Duration::from_millis(500), Duration::from_secs(5));
        let health = self
            .http
            .get(format!("{}/health", w.url))
            .timeout(timeout)
            .send()
            .await;
        let ok = match health {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("/health answered {}", r.status())),
            Err(e) if e.is_timeout() => {
                // A slow answer is not a dead worker: a busy machine (or a worker busy
                // with a long prompt on few cores) misses a probe now and then. Only
                // several in a row take it out of rotation; a refused connection at once.
                let mut s = w.st();
                s.probe_timeouts += 1;
                if s.probe_timeouts < PROBE_TIMEOUTS_TO_FAIL {
                    return;
                }
                drop(s);
                Err(format!("/health: {}", error_chain(&e)))
            }
            Err(e) => Err(format!("/health: {}", error_chain(&e))),
        };
        if let Err(why) = ok {
            w.mark_unreachable(&why);
            return;
        }
        if w.st().models.is_empty() {
            match self
                .get_json(&format!("{}/v1/models", w.url), timeout)
                .await
            {
                Ok(v) => {
                    let cards: Vec<(String, Value)> = v["data"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|c| Some((c["id"].as_str()?.to_string(), c.clone())))
                                .collect()
                        })
                        .unwrap_or_default();
                    w.st().models = cards;
                }
                Err(e) => {
                    w.mark_unreachable(&format!("/v1/models: {e}"));
                    return;
                }
            }
        }
        if let Some(model) = w.model() {
            if self.tokenizer(&model).is_none() {
                self.fetch_tokenizer(w, &model).await;
            }
        }
        if self.opts.source == MetricsSource::Scrape {
            match self
                .http
                .get(format!("{}/metrics", w.url))
                .timeout(timeout)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    if let Ok(text) = r.text().await {
                        let n = &self.opts.names;
                        w.set_load(
                            sum_metric(&text, &n.queue),
                            sum_metric(&text, &n.running),
                            sum_metric(&text, &n.kv_usage),
                        );
                    }
                }
                Ok(r) => tracing::debug!(worker = %w.id, status = %r.status(), "metrics scrape"),
                Err(e) => tracing::debug!(worker = %w.id, error = %e, "metrics scrape"),
            }
        }
        let mut s = w.st();
        if !s.healthy {
            tracing::info!(worker = %w.id, role = w.role.as_str(), "worker healthy");
        }
        s.healthy = true;
        s.last_error = None;
        s.probe_timeouts = 0;
    }

    async fn get_json(&self, url: &str, timeout: Duration) -> Result<Value, String> {
        let r = self
            .http
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("answered {}", r.status()));
        }
        r.json().await.map_err(|e| e.to_string())
    }

    /// Learns to tokenize and hash as the worker does. A worker without the endpoint (a
    /// plain vLLM server) is routed to on load alone.
    async fn fetch_tokenizer(&self, w: &Worker, model: &str) {
        let url = format!("{}/v1/llmd/tokenizer", w.url);
        let info = match self.get_json(&url, Duration::from_secs(30)).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(worker = %w.id, error = %e, "no tokenizer description; prefix scoring off for {model}");
                return;
            }
        };
        // Building a tokenizer is CPU work (parsing a large JSON): off the async threads.
        let built = tokio::task::spawn_blocking(move || ModelTokenizer::from_info(&info)).await;
        match built {
            Ok(Ok(t)) => {
                tracing::info!(
                    model,
                    block_size = t.block_size,
                    "tokenizer loaded from worker"
                );
                if let Ok(mut m) = self.tokenizers.write() {
                    m.insert(model.to_string(), Arc::new(t));
                }
            }
            Ok(Err(e)) => tracing::warn!(worker = %w.id, error = %e, "bad tokenizer description"),
            Err(e) => tracing::warn!(error = %e, "tokenizer build task failed"),
        }
    }
}

async fn probe_loop(pool: Weak<Pool>, worker: Weak<Worker>) {
    loop {
        let (Some(p), Some(w)) = (pool.upgrade(), worker.upgrade()) else {
            return;
        };
        if !p.is_current(&w) {
            return;
        }
        p.probe(&w).await;
        let interval = p.opts.interval;
        drop((p, w));
        tokio::time::sleep(interval).await;
    }
}

/// The sum over label sets of a metric in Prometheus's text format; `None` if absent.
pub fn sum_metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let rest = match rest.as_bytes().first() {
            Some(b'{') => match rest.find('}') {
                Some(i) => &rest[i + 1..],
                None => continue,
            },
            Some(b' ') => rest,
            _ => continue,
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Reads the load metrics of every worker from Prometheus, as llm-d's original charms do.
async fn prometheus_loop(pool: Weak<Pool>, base: String) {
    let base = base.trim_end_matches('/').to_string();
    loop {
        let Some(p) = pool.upgrade() else {
            return;
        };
        let names = p.opts.names.clone();
        let mut per: HashMap<String, [Option<f64>; 3]> = HashMap::new();
        for (i, name) in [&names.queue, &names.running, &names.kv_usage]
            .into_iter()
            .enumerate()
        {
            match query_prometheus(&p.http, &base, name).await {
                Ok(values) => {
                    for (instance, v) in values {
                        let slot = &mut per.entry(instance).or_default()[i];
                        *slot = Some(slot.unwrap_or(0.0) + v);
                    }
                }
                Err(e) => tracing::warn!(error = %e, metric = %name, "Prometheus query failed"),
            }
        }
        for w in p.workers().iter() {
            if let Some([q, r, kv]) = per.get(&w.id) {
                w.set_load(*q, *r, *kv);
            }
        }
        let interval = p.opts.interval;
        drop(p);
        tokio::time::sleep(interval).await;
    }
}

/// `(instance, value)` of each series of an instant query.
async fn query_prometheus(
    http: &reqwest::Client,
    base: &str,
    query: &str,
) -> Result<Vec<(String, f64)>, String> {
    let r = http
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", query)])
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("answered {}", r.status()));
    }
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    parse_prometheus_vector(&v)
}

pub fn parse_prometheus_vector(v: &Value) -> Result<Vec<(String, f64)>, String> {
    if v["status"] != "success" {
        return Err(format!("query failed: {}", v["error"]));
    }
    let result = v["data"]["result"]
        .as_array()
        .ok_or("no data.result in the answer")?;
    Ok(result
        .iter()
        .filter_map(|s| {
            let instance = s["metric"]["instance"].as_str()?.to_string();
            let value = s["value"][1].as_str()?.parse::<f64>().ok()?;
            Some((instance, value))
        })
        .collect())
}

/// Health probes that must time out in a row before a worker leaves the rotation.
const PROBE_TIMEOUTS_TO_FAIL: u32 = 3;

/// An error with its causes: reqwest's own message ("error sending request") hides why.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sums_metric_lines() {
        let text = "# HELP vllm:num_requests_waiting x\n# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"a\"} 3\nvllm:num_requests_waiting{model_name=\"b\"} 2\nvllm:num_requests_waiting_other 9\nvllm:kv_cache_usage_perc 0.25\n";
        assert_eq!(sum_metric(text, "vllm:num_requests_waiting"), Some(5.0));
        assert_eq!(sum_metric(text, "vllm:kv_cache_usage_perc"), Some(0.25));
        assert_eq!(sum_metric(text, "vllm:num_requests_running"), None);
    }

    #[test]
    fn parses_prometheus_answers() {
        let v: Value = serde_json::from_str(r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"vllm:num_requests_waiting","instance":"127.0.0.1:8001","model_name":"m"},"value":[1700000000.1,"4"]}]}}"#).unwrap();
        assert_eq!(
            parse_prometheus_vector(&v).unwrap(),
            vec![("127.0.0.1:8001".to_string(), 4.0)]
        );
        let bad: Value =
            serde_json::from_str(r#"{"status":"error","error":"parse error"}"#).unwrap();
        assert!(parse_prometheus_vector(&bad).is_err());
    }

    /// A worker that stops answering its probes (accepts, never replies) stays in rotation
    /// through one or two timeouts and leaves it at the third; one that refuses
    /// connections leaves at once.
    #[tokio::test]
    async fn slow_probes_need_three_timeouts_refused_one() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = silent.accept().await {
                conns.push(c);
            }
        });
        let pool = Pool::new(
            reqwest::Client::new(),
            PoolOptions {
                interval: Duration::from_millis(100),
                source: MetricsSource::Scrape,
                names: MetricNames::default(),
            },
        );
        let spec = |url: String| WorkerSpec {
            url,
            role: Role::Both,
            model: None,
        };
        let w = Worker::new(&spec(format!("http://{addr}"))).unwrap();
        w.set_healthy_for_test(Load::default());
        pool.probe(&w).await;
        pool.probe(&w).await;
        assert!(w.healthy(), "two slow probes do not take it out");
        pool.probe(&w).await;
        assert!(!w.healthy(), "the third does");

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        let w = Worker::new(&spec(format!("http://{gone}"))).unwrap();
        w.set_healthy_for_test(Load::default());
        pool.probe(&w).await;
        assert!(!w.healthy(), "a refused connection takes it out at once");
    }
}
