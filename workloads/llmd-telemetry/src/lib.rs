//! Logging and OpenTelemetry tracing for the llmd servers.
//!
//! - [`init`]`(service_name, otlp_traces_endpoint)` installs the global `tracing` subscriber:
//!   human-readable logs on stderr filtered by `LLMD_LOG` (default `warn`), plus, when an
//!   endpoint is given (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set), an OpenTelemetry
//!   layer exporting spans in batches over OTLP/HTTP with protobuf bodies. Keep the returned
//!   [`TelemetryGuard`] alive until the process ends: dropping it flushes the spans still
//!   queued and shuts the exporter down. [`init_logs_only`] is the same without export
//!   (and without reading the environment), for the commands that are not servers.
//! - [`extract_context`]`(&headers)` reads W3C `traceparent`/`tracestate` from an incoming
//!   request; [`set_parent`]`(&span, cx)` makes a `tracing` span a child of it, so the
//!   span joins the caller's trace.
//! - [`inject_context`]`(&span, &mut headers)` writes `traceparent` (and `tracestate`) for an
//!   outgoing request, so the callee's spans join this span's trace;
//!   [`inject_otel_context`] does the same from an OpenTelemetry [`Context`].
//! - [`tracer`]`()` is the global OpenTelemetry tracer, for spans whose start and end are
//!   only known afterwards (build them with explicit timestamps, parented with
//!   [`span_context`]`(&tracing_span)`).
//!
//! Only `tracing` spans and events at INFO or above from llmd's own crates (targets starting
//! with `llmd`) are exported; the logs on stderr keep their own `LLMD_LOG` filter, so
//! exporting spans never makes the logs noisier, and a quiet log level never hides spans.
//!
//! Without an endpoint nothing is exported and the span helpers cost next to nothing: spans
//! below the log level are disabled and [`inject_context`] writes no header.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

pub use opentelemetry;

/// The standard variable naming the traces endpoint, read when no endpoint is passed (as
/// vLLM does for `--otlp-traces-endpoint`).
pub const TRACES_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";

/// The instrumentation scope of llmd's spans.
const SCOPE: &str = "llmd";

/// How long the guard waits for the last spans to go out at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "invalid OTLP traces endpoint {value:?}{}: {reason}",
        if *from_env { " (from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)" } else { "" }
    )]
    Endpoint {
        value: String,
        reason: String,
        /// The value came from the environment, not the flag.
        from_env: bool,
    },
    #[error("cannot create the OTLP trace exporter: {0}")]
    Exporter(String),
    #[error("cannot install the tracing subscriber: {0}")]
    Subscriber(String),
}

/// Keeps span export running; dropping it flushes the queued spans and stops the exporter.
#[must_use = "spans are flushed when the guard is dropped; keep it until the process ends"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    endpoint: Option<String>,
}

impl TelemetryGuard {
    /// Where spans go (the resolved URL, `/v1/traces` included), if anywhere.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            // The batch processor's thread does the export; this waits for it (bounded).
            if let Err(e) = p.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
                eprintln!("warning: flushing spans to the OTLP endpoint failed: {e}");
            }
        }
    }
}

/// Installs the global `tracing` subscriber (stderr logs, and OTLP span export when an
/// endpoint is given or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set) and the global W3C
/// TraceContext propagator. `service_name` becomes the spans' `service.name`. An empty
/// endpoint counts as none. Call it (or [`init_logs_only`]) once per process.
pub fn init(
    service_name: &str,
    otlp_traces_endpoint: Option<&str>,
) -> Result<TelemetryGuard, TelemetryError> {
    let endpoint = match otlp_traces_endpoint {
        Some(v) => resolve_endpoint(Some(v))?,
        None => {
            let env = std::env::var(TRACES_ENDPOINT_ENV).ok();
            resolve_endpoint(env.as_deref()).map_err(|e| match e {
                TelemetryError::Endpoint { value, reason, .. } => TelemetryError::Endpoint {
                    value,
                    reason,
                    from_env: true,
                },
                other => other,
            })?
        }
    };
    install(service_name, endpoint)
}

/// Stderr logs only, whatever the environment says: for the commands that are not
/// servers (`generate`, `bench`, `model`).
pub fn init_logs_only() -> Result<TelemetryGuard, TelemetryError> {
    install("llmd", None)
}

fn install(service_name: &str, endpoint: Option<String>) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_env("LLMD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        );

    let provider = match &endpoint {
        Some(url) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(url.clone())
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    Resource::builder()
                        .with_service_name(service_name.to_string())
                        .build(),
                )
                .build();
            opentelemetry::global::set_tracer_provider(provider.clone());
            Some(provider)
        }
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(SCOPE))
            // Our spans, not the HTTP stacks' (nor the exporter's own, which would loop).
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.target().starts_with("llmd") && *m.level() <= tracing::Level::INFO
            }))
    });
    let guard = TelemetryGuard { provider, endpoint };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    Ok(guard)
}

/// The URL spans are posted to: `http://HOST:PORT` gets OTLP's `/v1/traces`; a URL with a
/// path is used as given. `None` for no (or an empty) endpoint.
pub fn resolve_endpoint(value: Option<&str>) -> Result<Option<String>, TelemetryError> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let bad = |reason: &str| TelemetryError::Endpoint {
        value: v.to_string(),
        reason: reason.to_string(),
        from_env: false,
    };
    let uri: http::Uri = v
        .parse()
        .map_err(|_| bad("expected a URL like http://HOST:4318"))?;
    match uri.scheme_str() {
        Some("http") => {}
        // Our reqwest is built without TLS; a local collector or sidecar speaks plain HTTP.
        Some("https") => {
            return Err(bad(
                "https is not supported (built without TLS); use an http:// collector",
            ))
        }
        _ => return Err(bad("expected a URL like http://HOST:4318")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("the URL has no host"));
    }
    let base = v.trim_end_matches('/');
    Ok(Some(match uri.path() {
        "" | "/" if uri.query().is_none() => format!("{base}/v1/traces"),
        _ => v.to_string(),
    }))
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// The trace context an incoming request carries in `traceparent`/`tracestate` (W3C Trace
/// Context); an empty context when it has none or a malformed one.
pub fn extract_context(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes `traceparent` (and `tracestate`) for `span` into an outgoing request's headers;
/// writes nothing when the span is not exported (no endpoint, or filtered out).
pub fn inject_context(span: &tracing::Span, headers: &mut http::HeaderMap) {
    inject_otel_context(&span_context(span), headers);
}

/// [`inject_context`] for an OpenTelemetry context (e.g. one from [`extract_context`], or a
/// span built with [`tracer`]).
pub fn inject_otel_context(cx: &Context, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// Makes `span` a child of `cx` (from [`extract_context`]). Call it right after creating
/// the span, before entering it or creating children. Returns false when the span is not
/// exported (no endpoint, filtered out) or already started: nothing to do then.
pub fn set_parent(span: &tracing::Span, cx: Context) -> bool {
    span.set_parent(cx).is_ok()
}

/// The OpenTelemetry context of a `tracing` span, to parent spans made with [`tracer`] or
/// to propagate; empty when the span is not exported.
pub fn span_context(span: &tracing::Span) -> Context {
    span.context()
}

/// Marks `span` as ending now. tracing-opentelemetry ends a span at its last *exit*, not
/// when its last handle drops, so a span that outlives its last poll (a streamed answer
/// relayed after the handler returned) must be entered once more when its work ends.
pub fn end_now(span: &tracing::Span) {
    drop(span.enter());
}

/// The global OpenTelemetry tracer (a no-op one without an endpoint), for spans built with
/// explicit start and end times.
pub fn tracer() -> opentelemetry::global::BoxedTracer {
    opentelemetry::global::tracer(SCOPE)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn endpoints() {
        let r = |v| resolve_endpoint(Some(v)).unwrap();
        assert_eq!(
            r("http://127.0.0.1:4318").as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            r("http://collector:4318/").as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            r("http://c:4318/otlp/v1/traces").as_deref(),
            Some("http://c:4318/otlp/v1/traces")
        );
        assert_eq!(r(""), None);
        assert_eq!(resolve_endpoint(None).unwrap(), None);
        for bad in [
            "not a url",
            "localhost:4318",
            "grpc://h:4317",
            "https://h:4318",
            "http://",
        ] {
            let e = resolve_endpoint(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("invalid OTLP traces endpoint"), "{bad}: {e}");
        }
    }

    #[test]
    fn traceparent_round_trips() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut h = http::HeaderMap::new();
        h.insert("traceparent", tp.parse().unwrap());
        h.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
        let cx = extract_context(&h);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            format!("{:032x}", sc.trace_id()),
            "0af7651916cd43dd8448eb211c80319c"
        );
        let mut out = http::HeaderMap::new();
        inject_otel_context(&cx, &mut out);
        assert_eq!(out["traceparent"], tp);
        assert_eq!(out["tracestate"], "congo=t61rcWkgMzE");
        // Garbage is no context, not an error; nothing is injected from it.
        let mut h = http::HeaderMap::new();
        h.insert("traceparent", "00-zz-yy-01".parse().unwrap());
        let cx = extract_context(&h);
        assert!(!cx.span().span_context().is_valid());
        let mut out = http::HeaderMap::new();
        inject_otel_context(&cx, &mut out);
        assert!(out.is_empty());
    }
}
