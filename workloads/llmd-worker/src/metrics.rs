//! The worker's Prometheus metrics, under vLLM's names (label `model_name`), so dashboards,
//! alert rules and schedulers written for vLLM read an llmd worker unchanged. Counters carry
//! the `_total` suffix as vLLM's Python client exposes them. Gauges are refreshed from the
//! engine's stats at scrape time; request histograms are observed as requests finish.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

use llmd_engine::serving::EngineStats;

/// vLLM's buckets for time to first token (seconds).
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's buckets for inter-token latency / time per output token (seconds).
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// vLLM's buckets for whole-request latencies (seconds).
const REQUEST_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// Buckets for KV transfer durations (seconds): loopback pulls take milliseconds.
const KV_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why a request ended, as vLLM labels `vllm:request_success_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Stop,
    Length,
    Abort,
}

impl Finished {
    fn label(self) -> &'static str {
        match self {
            Finished::Stop => "stop",
            Finished::Length => "length",
            Finished::Abort => "abort",
        }
    }
}

/// Which side of a KV transfer a metric counts.
#[derive(Debug, Clone, Copy)]
pub enum KvSide {
    /// This worker sent blocks (prefill role).
    Sent,
    /// This worker pulled blocks (decode role).
    Received,
}

impl KvSide {
    fn label(self) -> &'static str {
        match self {
            KvSide::Sent => "sent",
            KvSide::Received => "received",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    running: IntGauge,
    waiting: IntGauge,
    kv_usage: Gauge,
    prefix_queries: IntCounter,
    prefix_hits: IntCounter,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    preemptions: IntCounter,
    success: IntCounterVec,
    ttft: Histogram,
    itl: Histogram,
    tpot: Histogram,
    e2e: Histogram,
    queue: Histogram,
    kv_bytes: IntCounterVec,
    kv_transfers: IntCounterVec,
    kv_duration: HistogramVec,
    kv_failures: IntCounterVec,
    kv_fallbacks: IntCounter,
    kv_pinned: IntGauge,
    kv_blocks: GaugeVec,
    /// Last engine counter values, so scrapes add only the difference.
    last: std::sync::Mutex<llmd_engine::scheduler::SchedulerCounters>,
}

impl Metrics {
    pub fn new(model_name: &str, role: &str) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let label = |o: Opts| o.const_label("model_name", model_name);
        let hlabel = |o: HistogramOpts| o.const_label("model_name", model_name);
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            Histogram::with_opts(hlabel(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            ))
        };
        let build = IntGauge::with_opts(
            Opts::new(
                "llmd_build_info",
                "llmd version and the worker's role (value 1)",
            )
            .const_label("version", env!("CARGO_PKG_VERSION"))
            .const_label("component", "worker")
            .const_label("role", role)
            .const_label("model_name", model_name),
        )?;
        build.set(1);
        registry.register(Box::new(build))?;
        Ok(Self {
            running: reg!(IntGauge::with_opts(label(Opts::new(
                "vllm:num_requests_running",
                "Number of requests in model execution batches."
            )))?),
            waiting: reg!(IntGauge::with_opts(label(Opts::new(
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed."
            )))?),
            kv_usage: reg!(Gauge::with_opts(label(Opts::new(
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage."
            )))?),
            prefix_queries: reg!(IntCounter::with_opts(label(Opts::new(
                "vllm:prefix_cache_queries_total",
                "Prefix cache queries, in terms of number of queried tokens."
            )))?),
            prefix_hits: reg!(IntCounter::with_opts(label(Opts::new(
                "vllm:prefix_cache_hits_total",
                "Prefix cache hits, in terms of number of cached tokens."
            )))?),
            prompt_tokens: reg!(IntCounter::with_opts(label(Opts::new(
                "vllm:prompt_tokens_total",
                "Number of prefill tokens processed."
            )))?),
            generation_tokens: reg!(IntCounter::with_opts(label(Opts::new(
                "vllm:generation_tokens_total",
                "Number of generation tokens processed."
            )))?),
            preemptions: reg!(IntCounter::with_opts(label(Opts::new(
                "vllm:num_preemptions_total",
                "Cumulative number of preemptions from the engine."
            )))?),
            success: reg!(IntCounterVec::new(
                label(Opts::new(
                    "vllm:request_success_total",
                    "Count of successfully processed requests."
                )),
                &["finished_reason"]
            )?),
            ttft: reg!(hist(
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                TTFT_BUCKETS
            )?),
            itl: reg!(hist(
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                ITL_BUCKETS
            )?),
            tpot: reg!(hist(
                "vllm:time_per_output_token_seconds",
                "Histogram of time per output token in seconds.",
                ITL_BUCKETS
            )?),
            e2e: reg!(hist(
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                REQUEST_BUCKETS
            )?),
            queue: reg!(hist(
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                REQUEST_BUCKETS
            )?),
            kv_bytes: reg!(IntCounterVec::new(
                label(Opts::new(
                    "llmd_kv_transfer_bytes_total",
                    "KV cache bytes moved between workers."
                )),
                &["direction"]
            )?),
            kv_transfers: reg!(IntCounterVec::new(
                label(Opts::new(
                    "llmd_kv_transfers_total",
                    "Completed KV cache transfers."
                )),
                &["direction"]
            )?),
            kv_duration: reg!(HistogramVec::new(
                hlabel(
                    HistogramOpts::new(
                        "llmd_kv_transfer_duration_seconds",
                        "Duration of completed KV cache transfers."
                    )
                    .buckets(KV_BUCKETS.to_vec())
                ),
                &["direction"]
            )?),
            kv_failures: reg!(IntCounterVec::new(
                label(Opts::new(
                    "llmd_kv_transfer_failures_total",
                    "KV cache transfers that failed, by reason."
                )),
                &["direction", "reason"]
            )?),
            kv_fallbacks: reg!(IntCounter::with_opts(label(Opts::new(
                "llmd_kv_recompute_fallbacks_total",
                "Decode requests that computed the prefill themselves because the KV pull failed."
            )))?),
            kv_pinned: reg!(IntGauge::with_opts(label(Opts::new(
                "llmd_kv_pinned_blocks",
                "KV blocks pinned for transfers not yet pulled, released or expired."
            )))?),
            kv_blocks: reg!(GaugeVec::new(
                label(Opts::new("llmd_kv_blocks", "KV cache blocks by state.")),
                &["state"]
            )?),
            last: Default::default(),
            registry,
        }
        .with_known_labels())
    }

    /// Series whose label values are known in advance start at 0, so dashboards and alert
    /// rules find them (and rate() works) before the first transfer or failure.
    fn with_known_labels(self) -> Self {
        for side in [KvSide::Sent, KvSide::Received] {
            let d = side.label();
            self.kv_bytes.with_label_values(&[d]);
            self.kv_transfers.with_label_values(&[d]);
            self.kv_duration.with_label_values(&[d]);
        }
        self.kv_failures
            .with_label_values(&[KvSide::Sent.label(), "aborted"]);
        for reason in llmd_kvx::KvxError::REASONS.iter().chain(&["bad_params"]) {
            self.kv_failures
                .with_label_values(&[KvSide::Received.label(), reason]);
        }
        self
    }

    /// Refreshes the gauges and engine counters, then renders the text exposition.
    pub fn render(&self, stats: &EngineStats) -> String {
        self.running.set(stats.running as i64);
        self.waiting.set(stats.waiting as i64);
        self.kv_usage.set(stats.kv_usage);
        self.kv_pinned.set(stats.kv_blocks_pinned as i64);
        self.kv_blocks
            .with_label_values(&["total"])
            .set(stats.kv_blocks_total as f64);
        self.kv_blocks
            .with_label_values(&["free"])
            .set(stats.kv_blocks_free as f64);
        self.kv_blocks
            .with_label_values(&["cached"])
            .set(stats.kv_blocks_cached as f64);
        if let Ok(mut last) = self.last.lock() {
            let c = &stats.counters;
            self.prefix_queries.inc_by(
                c.prefix_cache_queries
                    .saturating_sub(last.prefix_cache_queries),
            );
            self.prefix_hits
                .inc_by(c.prefix_cache_hits.saturating_sub(last.prefix_cache_hits));
            self.prompt_tokens
                .inc_by(c.prompt_tokens.saturating_sub(last.prompt_tokens));
            self.generation_tokens
                .inc_by(c.generation_tokens.saturating_sub(last.generation_tokens));
            self.preemptions
                .inc_by(c.preemptions.saturating_sub(last.preemptions));
            *last = *c;
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    pub fn request_finished(&self, how: Finished) {
        self.success.with_label_values(&[how.label()]).inc();
    }

    pub fn observe_request(&self, t: &llmd_engine::scheduler::Timings) {
        self.queue.observe(t.queued.as_secs_f64());
        self.e2e.observe(t.e2e.as_secs_f64());
        if let Some(x) = t.time_to_first_token {
            self.ttft.observe(x.as_secs_f64());
        }
        if let Some(x) = t.inter_token {
            self.tpot.observe(x.as_secs_f64());
        }
    }

    /// One gap between two output tokens of a request, as the client saw it.
    pub fn observe_inter_token(&self, secs: f64) {
        self.itl.observe(secs);
    }

    pub fn kv_transfer(&self, side: KvSide, bytes: usize, secs: f64) {
        let d = side.label();
        self.kv_bytes.with_label_values(&[d]).inc_by(bytes as u64);
        self.kv_transfers.with_label_values(&[d]).inc();
        self.kv_duration.with_label_values(&[d]).observe(secs);
    }

    pub fn kv_failure(&self, side: KvSide, reason: &str) {
        self.kv_failures
            .with_label_values(&[side.label(), reason])
            .inc();
    }

    pub fn kv_fallback(&self) {
        self.kv_fallbacks.inc();
    }
}
