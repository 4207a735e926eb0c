//! The worker's OpenTelemetry spans (exported when the process was started with an OTLP
//! endpoint, see llmd-telemetry): one `llmd.worker.request` span per chat/completions
//! request, a child of the caller's span when the request carries a W3C `traceparent`, so
//! the scheduler's and both legs' spans form one trace. Its children: `kv_pull` (a decode
//! leg's pull, a live span in pd.rs) and `queue`, `prefill`, `decode`, which the engine's
//! timings delimit only once the request has finished, so they are built then with explicit
//! timestamps.
//!
//! Attribute names follow vLLM's (`gen_ai.*`) where it has one.

use std::time::{Duration, SystemTime};

use llmd_engine::scheduler::{Timings, Usage};
use llmd_telemetry::opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _};
use llmd_telemetry::opentelemetry::{Context, KeyValue};
use tracing::field::Empty;
use warp::http::HeaderMap;

use crate::State;

/// The request span, parented to the incoming `traceparent` (if any). Fields filled in
/// later are declared empty here: tracing only records fields a span declared.
pub(crate) fn request_span(s: &State, headers: &HeaderMap, chat: bool) -> tracing::Span {
    let span = tracing::info_span!(
        "llmd.worker.request",
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        gen_ai.response.model = s.model_name(),
        gen_ai.request.id = Empty,
        gen_ai.usage.prompt_tokens = Empty,
        gen_ai.usage.completion_tokens = Empty,
        gen_ai.usage.cached_tokens = Empty,
        gen_ai.response.finish_reasons = Empty,
        llmd.role = s.cfg.role.as_str(),
        llmd.leg = Empty,
        llmd.api = if chat {
            "chat.completions"
        } else {
            "completions"
        },
        llmd.worker_id = s.worker_id.as_str(),
    );
    llmd_telemetry::set_parent(&span, llmd_telemetry::extract_context(headers));
    span
}

/// Marks the request span failed (an error answer).
pub(crate) fn record_error(span: &tracing::Span, message: &str) {
    span.record("otel.status_description", message);
}

/// A submitted request's tracing state: its span and when it went to the engine.
pub(crate) struct RequestTrace {
    pub span: tracing::Span,
    submitted: SystemTime,
    /// A prefill leg generates its one token as the end of prefill: no decode phase.
    decode_phase: bool,
}

impl RequestTrace {
    /// Call right before submitting to the engine.
    pub fn submitted(span: &tracing::Span, decode_phase: bool) -> Self {
        Self {
            span: span.clone(),
            submitted: SystemTime::now(),
            decode_phase,
        }
    }

    /// Records the outcome on the request span and adds the phase spans.
    pub fn finished(&self, reason: &str, usage: &Usage, timings: Option<Timings>) {
        let span = &self.span;
        span.record("gen_ai.response.finish_reasons", reason);
        // i64: tracing-opentelemetry exports u64 fields as strings.
        span.record("gen_ai.usage.prompt_tokens", usage.prompt_tokens as i64);
        span.record(
            "gen_ai.usage.completion_tokens",
            usage.completion_tokens as i64,
        );
        span.record("gen_ai.usage.cached_tokens", usage.cached_tokens as i64);
        if let Some(t) = timings {
            self.phases(usage, &t);
        }
    }

    /// Ended without finishing (client gone, engine error).
    pub fn aborted(&self) {
        self.span.record("gen_ai.response.finish_reasons", "abort");
    }

    /// `queue` [submit, first scheduled], `prefill` [.., first token], `decode` [.., end],
    /// all from the engine's durations since arrival.
    fn phases(&self, usage: &Usage, t: &Timings) {
        let parent = llmd_telemetry::span_context(&self.span);
        // Not exported (no endpoint): skip building spans nobody receives.
        if !parent.span().span_context().is_valid() {
            return;
        }
        let at = |d: Duration| self.submitted + d;
        let scheduled = at(t.queued);
        child(&parent, "queue", self.submitted, scheduled, Vec::new());
        let Some(ttft) = t.time_to_first_token else {
            return;
        };
        let first = at(ttft).max(scheduled);
        child(
            &parent,
            "prefill",
            scheduled,
            first,
            vec![
                KeyValue::new("gen_ai.usage.prompt_tokens", usage.prompt_tokens as i64),
                KeyValue::new("gen_ai.usage.cached_tokens", usage.cached_tokens as i64),
            ],
        );
        if self.decode_phase {
            child(
                &parent,
                "decode",
                first,
                at(t.e2e).max(first),
                vec![KeyValue::new(
                    "gen_ai.usage.completion_tokens",
                    usage.completion_tokens as i64,
                )],
            );
        }
    }
}

impl Drop for RequestTrace {
    fn drop(&mut self) {
        // tracing-opentelemetry ends a span at its last exit, which for a streamed answer is
        // when the handler returned; entering it once more moves the end to now, when the
        // stream ends or the client has gone.
        llmd_telemetry::end_now(&self.span);
    }
}

fn child(
    parent: &Context,
    name: &'static str,
    start: SystemTime,
    end: SystemTime,
    attrs: Vec<KeyValue>,
) {
    let tracer = llmd_telemetry::tracer();
    let mut span = tracer
        .span_builder(name)
        .with_start_time(start)
        .with_attributes(attrs)
        .start_with_context(&tracer, parent);
    span.end_with_timestamp(end);
}
