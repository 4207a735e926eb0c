//! The scheduler's own metrics, prefixed `llmd_scheduler_`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::pool::Worker;

/// Decision latencies are sub-millisecond when the cache-manager is near.
// Fine around 1-3 ms: the benchmarks read the decision p99 from these buckets.
const DECISION_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25,
];
const REQUEST_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub decisions: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub cache_manager_errors: IntCounterVec,
    pub retries: IntCounterVec,
    pub routed: IntCounterVec,
    pub decision_seconds: Histogram,
    pub cache_manager_seconds: Histogram,
    pub request_seconds: HistogramVec,
    pub inflight: IntGauge,
    worker_up: IntGaugeVec,
    worker_waiting: prometheus::GaugeVec,
    worker_kv: prometheus::GaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        Ok(Self {
            requests: reg!(IntCounterVec::new(
                Opts::new(
                    "llmd_scheduler_requests_total",
                    "Requests answered, by endpoint and HTTP status."
                ),
                &["endpoint", "code"]
            )?),
            decisions: reg!(IntCounterVec::new(
                Opts::new(
                    "llmd_scheduler_decisions_total",
                    "Routing decisions by path: single (one worker), pd (prefill then decode)."
                ),
                &["path"]
            )?),
            fallbacks: reg!(IntCounterVec::new(
                Opts::new(
                    "llmd_scheduler_fallbacks_total",
                    "Times a plan was degraded: prefill leg failed (sent whole to decode), no cache-manager answer (load only), no tokenizer."
                ),
                &["reason"]
            )?),
            cache_manager_errors: reg!(IntCounterVec::new(
                Opts::new(
                    "llmd_scheduler_cache_manager_errors_total",
                    "Cache-manager score requests that failed, by reason."
                ),
                &["reason"]
            )?),
            retries: reg!(IntCounterVec::new(
                Opts::new(
                    "llmd_scheduler_retries_total",
                    "Requests sent again to another worker after one failed before answering."
                ),
                &["leg"]
            )?),
            routed: reg!(IntCounterVec::new(
                Opts::new(
                    "llmd_scheduler_routed_total",
                    "Legs sent to each worker."
                ),
                &["worker", "leg"]
            )?),
            decision_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "llmd_scheduler_decision_seconds",
                    "Time to decide a route: tokenizing, scoring (cache-manager included) and picking."
                )
                .buckets(DECISION_BUCKETS.to_vec())
            )?),
            cache_manager_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "llmd_scheduler_cache_manager_seconds",
                    "Round trip of one cache-manager score request."
                )
                .buckets(DECISION_BUCKETS.to_vec())
            )?),
            request_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "llmd_scheduler_request_seconds",
                    "Whole request time through the scheduler, by path."
                )
                .buckets(REQUEST_BUCKETS.to_vec()),
                &["path"]
            )?),
            inflight: reg!(IntGauge::new(
                "llmd_scheduler_requests_in_flight",
                "Requests being served through this scheduler."
            )?),
            worker_up: reg!(IntGaugeVec::new(
                Opts::new(
                    "llmd_scheduler_worker_healthy",
                    "1 when the worker passes health checks and is in rotation."
                ),
                &["worker", "role"]
            )?),
            worker_waiting: reg!(prometheus::GaugeVec::new(
                Opts::new(
                    "llmd_scheduler_worker_waiting",
                    "Each worker's waiting queue as the scheduler last read it."
                ),
                &["worker"]
            )?),
            worker_kv: reg!(prometheus::GaugeVec::new(
                Opts::new(
                    "llmd_scheduler_worker_kv_cache_usage",
                    "Each worker's KV cache usage (0..1) as the scheduler last read it."
                ),
                &["worker"]
            )?),
            registry,
        }
        .with_known_labels())
    }

    /// Series for the label values known in advance start at 0, so they are exported (and
    /// rate() works) before the first event of their kind.
    fn with_known_labels(self) -> Self {
        for path in ["single", "pd"] {
            self.decisions.with_label_values(&[path]);
        }
        for path in ["single", "pd", "pd-fallback"] {
            self.request_seconds.with_label_values(&[path]);
        }
        for reason in ["prefill_failed", "cache_manager", "no_tokenizer"] {
            self.fallbacks.with_label_values(&[reason]);
        }
        for reason in ["timeout", "connect", "status", "decode"] {
            self.cache_manager_errors.with_label_values(&[reason]);
        }
        self.retries.with_label_values(&["decode"]);
        self
    }

    pub fn render(&self, workers: &[std::sync::Arc<Worker>]) -> String {
        self.worker_up.reset();
        self.worker_waiting.reset();
        self.worker_kv.reset();
        for w in workers {
            let l = w.load();
            self.worker_up
                .with_label_values(&[w.id.as_str(), w.role.as_str()])
                .set(i64::from(w.healthy()));
            self.worker_waiting
                .with_label_values(&[w.id.as_str()])
                .set(l.waiting);
            self.worker_kv
                .with_label_values(&[w.id.as_str()])
                .set(l.kv_usage);
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
