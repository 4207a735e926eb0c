//! The gateway: OpenAI's endpoints in front of the workers, the routing decision, the P/D
//! legs, retries, and streaming passed through event by event.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use llmd_protocol::openai::{self, ErrorResponse};
use llmd_protocol::score::{ScoreRequest, ScoreResponse};
use serde_json::{json, Value};
use tracing::Instrument;
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::{Filter, Rejection, Reply};

use crate::pool::{ActiveGuard, Worker};
use crate::routing::{self, Leg, RequestView, Scored};
use crate::tokenize::ModelTokenizer;
use crate::State;

type Shared = Arc<State>;

/// The response header that explains each decision.
pub const ROUTE_HEADER: &str = "x-llmd-route";
/// llm-d's session affinity: the worker a session last went to (opaque to clients).
pub const SESSION_HEADER: &str = "x-session-token";
/// Candidates listed with their scores in the route header (it must stay a sane size).
const ROUTE_HEADER_SCORES: usize = 8;

pub fn routes(
    state: Shared,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let with = {
        let s = state.clone();
        warp::any().map(move || s.clone())
    };
    let body = warp::body::content_length_limit(state.cfg.max_body_bytes).and(warp::body::bytes());
    let chat = warp::path!("v1" / "chat" / "completions")
        .and(warp::post())
        .and(with.clone())
        .and(warp::header::headers_cloned())
        .and(body)
        .then(|s: Shared, h: HeaderMap, b: Bytes| async move { handle(s, Api::Chat, h, b).await });
    let completions = warp::path!("v1" / "completions")
        .and(warp::post())
        .and(with.clone())
        .and(warp::header::headers_cloned())
        .and(body)
        .then(|s: Shared, h: HeaderMap, b: Bytes| async move {
            handle(s, Api::Completions, h, b).await
        });
    let models = warp::path!("v1" / "models")
        .and(warp::get())
        .and(with.clone())
        .map(|s: Shared| warp::reply::json(&models(&s)).into_response());
    let health = warp::path!("health")
        .and(warp::get())
        .and(with.clone())
        .map(|s: Shared| health(&s));
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with.clone())
        .map(|s: Shared| {
            let text = s.metrics.render(&s.pool.workers());
            warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4")
                .into_response()
        });
    let tokenize = warp::path!("tokenize")
        .and(warp::post())
        .and(with.clone())
        .and(body)
        .map(|s: Shared, b: Bytes| tokenize(&s, &b));
    let workers = warp::path!("v1" / "llmd" / "workers")
        .and(warp::get())
        .and(with)
        .map(|s: Shared| workers(&s));
    chat.or(completions)
        .unify()
        .or(models)
        .unify()
        .or(health)
        .unify()
        .or(metrics)
        .unify()
        .or(tokenize)
        .unify()
        .or(workers)
        .unify()
        .recover(recover)
        .unify()
}

/// Unmatched routes and refused bodies as OpenAI-shaped errors.
async fn recover(r: Rejection) -> Result<warp::reply::Response, Infallible> {
    let e = if r.is_not_found() {
        ErrorResponse::not_found("no such route", None)
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        ErrorResponse::payload_too_large("the request body is too large")
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        ErrorResponse::method_not_allowed("method not allowed")
    } else if let Some(e) = r.find::<warp::reject::LengthRequired>() {
        ErrorResponse::invalid_request(e.to_string(), None)
    } else {
        ErrorResponse::invalid_request(format!("{r:?}"), None)
    };
    Ok(error_reply(e))
}

fn error_reply(e: ErrorResponse) -> warp::reply::Response {
    let st = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let retry = matches!(st.as_u16(), 429 | 503);
    let mut res = warp::reply::with_status(warp::reply::json(&e), st).into_response();
    if retry {
        res.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
    }
    res
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
}

impl Api {
    fn url(self, w: &Worker) -> &reqwest::Url {
        match self {
            Api::Chat => &w.chat_url,
            Api::Completions => &w.completions_url,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Completions => "completions",
        }
    }
}

/// Counts a request in flight through the scheduler.
struct Inflight(Shared);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.inflight.dec();
    }
}

/// What the gateway learned from the body.
struct Parsed {
    /// As named, or the one model the workers serve.
    model: String,
    stream: bool,
    /// Prompt tokens and the tokenizer that made them, when scoring wants them and the
    /// model's tokenizer is known.
    prompt: Option<(Vec<u32>, Arc<ModelTokenizer>)>,
}

async fn handle(s: Shared, api: Api, headers: HeaderMap, body: Bytes) -> warp::reply::Response {
    let start = Instant::now();
    // One trace per request: this span joins the caller's (W3C traceparent), the legs are
    // its children, and the workers' spans are theirs.
    let span = tracing::info_span!(
        "llmd.scheduler.request",
        otel.kind = "server",
        llmd.api = api.label(),
        llmd.path = tracing::field::Empty,
        llmd.worker = tracing::field::Empty,
        llmd.prefill = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    llmd_telemetry::set_parent(&span, llmd_telemetry::extract_context(&headers));
    let res = handle_inner(&s, api, &headers, body, (start, &span))
        .instrument(span.clone())
        .await;
    let res = res.unwrap_or_else(error_reply);
    // Integers as i64: tracing-opentelemetry exports u64 fields as strings.
    span.record(
        "http.response.status_code",
        i64::from(res.status().as_u16()),
    );
    s.metrics
        .requests
        .with_label_values(&[api.label(), res.status().as_str()])
        .inc();
    res
}

async fn handle_inner(
    s: &Shared,
    api: Api,
    headers: &HeaderMap,
    body: Bytes,
    (start, span): (Instant, &tracing::Span),
) -> Result<warp::reply::Response, ErrorResponse> {
    if s.inflight.fetch_add(1, Ordering::Relaxed) >= s.cfg.max_inflight {
        s.inflight.fetch_sub(1, Ordering::Relaxed);
        return Err(ErrorResponse::too_many_requests(format!(
            "the scheduler has {} requests in flight; retry later",
            s.cfg.max_inflight
        )));
    }
    s.metrics.inflight.inc();
    let guard = Inflight(s.clone());
    let live = s.live();
    // One snapshot of the pool for the whole decision.
    let workers = s.pool.workers();
    let want_tokens =
        live.profiles.needs_prefix() || workers.iter().any(|w| w.role == crate::Role::Prefill);
    let parsed = parse(s, &workers, api, &body, want_tokens)?;
    let model = parsed.model.clone();
    if !workers.iter().any(|w| w.serves(&model)) {
        return Err(ErrorResponse::model_not_found(&model));
    }
    let route_span = tracing::info_span!(
        "route",
        llmd.model = %model,
        llmd.prompt_tokens = parsed.prompt.as_ref().map(|(t, _)| t.len() as i64),
        llmd.cached_blocks = tracing::field::Empty,
        llmd.path = tracing::field::Empty,
    );
    let plan = decide(
        s,
        &live,
        &workers,
        &model,
        parsed
            .prompt
            .as_ref()
            .map(|(t, tok)| (t.as_slice(), &**tok)),
        headers,
    )
    .instrument(route_span.clone())
    .await?;
    let session = plan.decode[0].worker.id.clone();
    let path = plan.path();
    route_span.record("llmd.cached_blocks", plan.cached_blocks as i64);
    route_span.record("llmd.path", path);
    drop(route_span);
    span.record("llmd.path", path);
    span.record("llmd.worker", plan.decode[0].worker.id.as_str());
    if let Some(p) = &plan.prefill {
        span.record("llmd.prefill", p[0].worker.id.as_str());
    }
    s.metrics.decisions.with_label_values(&[path]).inc();
    s.metrics
        .decision_seconds
        .observe(start.elapsed().as_secs_f64());
    let fwd = forward_headers(headers);
    let mut route = plan.describe(&model);
    let (worker, upstream, leg) = match &plan.prefill {
        Some(prefill) => {
            let pre = &prefill[0].worker;
            match prefill_leg(s, pre, api, &body, &fwd).await {
                Ok(kv) => {
                    let decode_body = with_kv_params(&body, kv)?;
                    send(s, &plan.decode, api, decode_body, &fwd, &mut route).await?
                }
                Err(why) => {
                    tracing::warn!(prefill = %pre.id, error = %why, "prefill leg failed; sending the request whole to decode");
                    s.metrics
                        .fallbacks
                        .with_label_values(&["prefill_failed"])
                        .inc();
                    route["path"] = json!("pd-fallback");
                    route["prefill_error"] = json!(why);
                    send(s, &plan.decode, api, body, &fwd, &mut route).await?
                }
            }
        }
        None => send(s, &plan.decode, api, body, &fwd, &mut route).await?,
    };
    let route_value = HeaderValue::from_str(&route.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("{}"));
    let active = ActiveGuard::new(worker.clone());
    let path_label = route["path"].as_str().unwrap_or(path).to_string();
    let status = upstream.status();
    let is_sse = upstream
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    let mut res = if status.is_success() && is_sse && parsed.stream {
        relay_stream(
            s.clone(),
            upstream,
            (guard, active),
            (leg, span.clone()),
            start,
            path_label,
        )
    } else {
        let ctype = upstream.headers().get("content-type").cloned();
        let retry_after = upstream.headers().get("retry-after").cloned();
        let bytes = upstream.bytes().await.map_err(|e| {
            worker.mark_unreachable(&e.to_string());
            ErrorResponse::bad_gateway(format!("worker {} failed while answering: {e}", worker.id))
        })?;
        s.metrics
            .request_seconds
            .with_label_values(&[&path_label])
            .observe(start.elapsed().as_secs_f64());
        // A span's end is its last exit: the leg ends once its answer is read.
        llmd_telemetry::end_now(&leg);
        drop((guard, active, leg));
        let mut r = warp::reply::Response::new(bytes.into());
        *r.status_mut() = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        if let Some(c) = ctype {
            r.headers_mut().insert("content-type", c);
        }
        if let Some(ra) = retry_after {
            r.headers_mut().insert("retry-after", ra);
        }
        r
    };
    res.headers_mut().insert(ROUTE_HEADER, route_value);
    if let Ok(v) = HeaderValue::from_str(&session) {
        res.headers_mut().insert(SESSION_HEADER, v);
    }
    Ok(res)
}

fn parse_err(e: serde_json::Error) -> ErrorResponse {
    if e.is_syntax() || e.is_eof() {
        ErrorResponse::invalid_request(format!("the body is not valid JSON: {e}"), None)
    } else {
        ErrorResponse::invalid_request(format!("invalid request: {e}"), None)
    }
}

/// Checks the request as the workers will (so that bad input is refused here, once) and
/// tokenizes it when scoring needs the tokens.
fn parse(
    s: &State,
    workers: &[Arc<Worker>],
    api: Api,
    body: &[u8],
    want_tokens: bool,
) -> Result<Parsed, ErrorResponse> {
    match api {
        Api::Chat => {
            let req: openai::ChatCompletionRequest =
                serde_json::from_slice(body).map_err(parse_err)?;
            req.validate()?;
            let model = resolve_model(workers, req.model.as_deref())?;
            let prompt = want_tokens
                .then(|| tokenize_prompt(s, &model, |t| t.chat_tokens(&req)))
                .flatten();
            Ok(Parsed {
                model,
                stream: req.is_stream(),
                prompt,
            })
        }
        Api::Completions => {
            let req: openai::CompletionRequest = serde_json::from_slice(body).map_err(parse_err)?;
            req.validate()?;
            let model = resolve_model(workers, req.model.as_deref())?;
            let prompt = want_tokens
                .then(|| tokenize_prompt(s, &model, |t| t.completion_tokens(&req)))
                .flatten();
            Ok(Parsed {
                model,
                stream: req.is_stream(),
                prompt,
            })
        }
    }
}

fn resolve_model(workers: &[Arc<Worker>], named: Option<&str>) -> Result<String, ErrorResponse> {
    match named {
        Some(m) => Ok(m.to_string()),
        None => only_model(workers),
    }
}

/// The prompt's tokens with the model's tokenizer; `None` (counted, or left to the worker to
/// refuse precisely) when they cannot be had.
fn tokenize_prompt(
    s: &State,
    model: &str,
    f: impl FnOnce(&ModelTokenizer) -> Result<Vec<u32>, crate::SchedulerError>,
) -> Option<(Vec<u32>, Arc<ModelTokenizer>)> {
    let Some(tok) = s.pool.tokenizer(model) else {
        s.metrics
            .fallbacks
            .with_label_values(&["no_tokenizer"])
            .inc();
        return None;
    };
    match f(&tok) {
        Ok(t) => Some((t, tok)),
        Err(e) => {
            tracing::debug!(error = %e, "cannot tokenize; routing on load");
            None
        }
    }
}

/// The model when the request names none: the one the workers serve, if only one.
fn only_model(workers: &[Arc<Worker>]) -> Result<String, ErrorResponse> {
    let mut models: Vec<String> = workers.iter().filter_map(|w| w.model()).collect();
    models.sort();
    models.dedup();
    match models.len() {
        1 => Ok(models.remove(0)),
        0 => Err(ErrorResponse::overloaded(
            "no worker is serving yet; retry later",
        )),
        _ => Err(ErrorResponse::invalid_request(
            format!(
                "several models are served ({}): name one",
                models.join(", ")
            ),
            Some("model"),
        )),
    }
}

/// A routing decision.
struct Plan {
    /// Candidates for the whole request or decode leg, the picked one first.
    decode: Vec<Scored>,
    /// Set when the request is split: the prefill candidates, picked first.
    prefill: Option<Vec<Scored>>,
    profile: String,
    prompt_tokens: Option<usize>,
    block_size: usize,
    /// Leading blocks the decode worker holds.
    cached_blocks: usize,
    uncached_tokens: Option<usize>,
    /// Whether the cache-manager answered (None: not asked).
    cache_manager_ok: Option<bool>,
}

impl Plan {
    fn path(&self) -> &'static str {
        if self.prefill.is_some() {
            "pd"
        } else {
            "single"
        }
    }

    /// The decision as the route header shows it.
    fn describe(&self, model: &str) -> Value {
        let scores = |v: &[Scored]| -> Value {
            let mut m = serde_json::Map::new();
            for sc in v.iter().take(ROUTE_HEADER_SCORES) {
                let mut parts: serde_json::Map<String, Value> = sc
                    .parts
                    .iter()
                    .map(|(n, v)| (n.to_string(), json!(round(*v))))
                    .collect();
                parts.insert("total".into(), json!(round(sc.total)));
                m.insert(sc.worker.id.clone(), Value::Object(parts));
            }
            Value::Object(m)
        };
        let mut v = json!({
            "path": self.path(),
            "model": model,
            "profile": self.profile,
            "worker": self.decode[0].worker.id,
            "prefill": self.prefill.as_ref().map(|p| p[0].worker.id.clone()),
            "prompt_tokens": self.prompt_tokens,
            "block_size": self.block_size,
            "cached_blocks": self.cached_blocks,
            "uncached_tokens": self.uncached_tokens,
            "scores": scores(&self.decode),
        });
        if let Some(p) = &self.prefill {
            v["prefill_scores"] = scores(p);
        }
        if let Some(ok) = self.cache_manager_ok {
            v["cache_manager"] = json!(if ok { "ok" } else { "unavailable" });
        }
        v
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

async fn decide(
    s: &State,
    live: &crate::Live,
    workers: &[Arc<Worker>],
    model: &str,
    prompt: Option<(&[u32], &ModelTokenizer)>,
    headers: &HeaderMap,
) -> Result<Plan, ErrorResponse> {
    let profiles = &live.profiles;
    let tokens = prompt.map(|(t, _)| t);
    let (keys, block_size) = match prompt {
        Some((t, tk)) => (tk.keys(t), tk.block_size),
        None => (Vec::new(), llmd_protocol::DEFAULT_BLOCK_SIZE),
    };
    let mut cache_manager_ok = None;
    let precise = match (&live.score_url, keys.is_empty()) {
        (Some(cm), false) => {
            let r = precise_scores(s, cm, model, &keys, block_size).await;
            cache_manager_ok = Some(r.is_some());
            r
        }
        _ => None,
    };
    let approx = if keys.is_empty() {
        HashMap::new()
    } else {
        s.approx
            .lock()
            .map(|a| a.leading(&keys))
            .unwrap_or_default()
    };
    let view = RequestView {
        total_blocks: keys.len(),
        precise: precise.as_ref(),
        approx: &approx,
        has_cache_manager: live.cache_manager.is_some(),
        session: headers
            .get(crate::api::SESSION_HEADER)
            .and_then(|v| v.to_str().ok()),
    };
    let dprof = profiles.decode();
    let decode = routing::rank(
        dprof,
        routing::candidates(dprof, workers, model, Leg::Decode),
        &view,
    );
    if decode.is_empty() {
        return Err(ErrorResponse::overloaded(format!(
            "no healthy worker serves {model} now; retry later"
        )));
    }
    let cached_blocks = view.held_blocks(&decode[0].worker.id);
    let uncached = tokens.map(|t| t.len().saturating_sub(cached_blocks * block_size));
    let threshold = profiles.pd_threshold;
    let prefill = match uncached {
        Some(u) if threshold > 0 && u >= threshold => {
            let pprof = profiles.prefill();
            let p = routing::rank(
                pprof,
                routing::candidates(pprof, workers, model, Leg::Prefill),
                &view,
            );
            (!p.is_empty()).then_some(p)
        }
        _ => None,
    };
    // What the chosen workers will hold once served.
    if !keys.is_empty() {
        if let Ok(mut a) = s.approx.lock() {
            a.record(&decode[0].worker.id, &keys);
            if let Some(p) = &prefill {
                a.record(&p[0].worker.id, &keys);
            }
        }
    }
    Ok(Plan {
        profile: dprof.name.clone(),
        prompt_tokens: tokens.map(<[u32]>::len),
        block_size,
        cached_blocks,
        uncached_tokens: uncached,
        decode,
        prefill,
        cache_manager_ok,
    })
}

/// Leading blocks per worker from the cache-manager; `None` (counted) when it cannot say
/// within the timeout.
async fn precise_scores(
    s: &State,
    score_url: &reqwest::Url,
    model: &str,
    keys: &[u64],
    block_size: usize,
) -> Option<HashMap<String, usize>> {
    let t = Instant::now();
    let fail = |reason: &str| {
        s.metrics
            .cache_manager_errors
            .with_label_values(&[reason])
            .inc();
        s.metrics
            .fallbacks
            .with_label_values(&["cache_manager"])
            .inc();
        None
    };
    let r = s
        .http
        .post(score_url.clone())
        .json(&ScoreRequest {
            model: model.to_string(),
            block_hashes: Some(keys.to_vec()),
            block_size: Some(block_size),
            ..Default::default()
        })
        .timeout(s.cfg.cache_manager_timeout)
        .send()
        .await;
    let r = match r {
        Ok(r) if r.status().is_success() => r,
        Ok(_) => return fail("status"),
        Err(e) if e.is_timeout() => return fail("timeout"),
        Err(_) => return fail("connect"),
    };
    let v: ScoreResponse = match tokio::time::timeout(s.cfg.cache_manager_timeout, r.json()).await {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => return fail("decode"),
        Err(_) => return fail("timeout"),
    };
    s.metrics
        .cache_manager_seconds
        .observe(t.elapsed().as_secs_f64());
    Some(
        v.workers
            .into_iter()
            .map(|w| (w.worker, w.blocks))
            .collect(),
    )
}

/// Headers passed on to the workers.
fn forward_headers(h: &HeaderMap) -> reqwest::header::HeaderMap {
    let mut out = reqwest::header::HeaderMap::new();
    for name in ["authorization", "x-request-id", "traceparent", "tracestate"] {
        if let Some(v) = h.get(name) {
            out.insert(name, v.clone());
        }
    }
    out
}

/// Sends a leg to the first candidate; if it cannot be reached or fails before answering
/// (5xx), once more to the next. 4xx answers are the client's and pass through.
async fn send(
    s: &State,
    ranked: &[Scored],
    api: Api,
    body: Bytes,
    headers: &reqwest::header::HeaderMap,
    route: &mut Value,
) -> Result<(Arc<Worker>, reqwest::Response, tracing::Span), ErrorResponse> {
    let mut last_err = String::new();
    for (attempt, cand) in ranked.iter().take(2).enumerate() {
        let w = &cand.worker;
        // The leg's span lasts until its answer is relayed (the caller holds it).
        let leg = tracing::info_span!(
            "decode_leg",
            otel.kind = "client",
            llmd.worker = %w.id,
            llmd.attempt = attempt as i64,
            http.response.status_code = tracing::field::Empty,
        );
        let mut headers = headers.clone();
        llmd_telemetry::inject_context(&leg, &mut headers);
        if attempt > 0 {
            s.metrics.retries.with_label_values(&["decode"]).inc();
            route["worker"] = json!(w.id);
            route["retried_from"] = json!(ranked[0].worker.id);
        }
        s.metrics
            .routed
            .with_label_values(&[w.id.as_str(), "decode"])
            .inc();
        let r = s
            .http
            .post(api.url(w).clone())
            .headers(headers)
            .header("content-type", "application/json")
            .body(body.clone())
            .timeout(s.cfg.request_timeout)
            .send()
            .instrument(leg.clone())
            .await;
        if let Ok(r) = &r {
            leg.record("http.response.status_code", i64::from(r.status().as_u16()));
        }
        match r {
            Ok(r) if !r.status().is_server_error() => return Ok((w.clone(), r, leg)),
            Ok(r) => {
                last_err = format!("worker {} answered {}", w.id, r.status());
                tracing::warn!(worker = %w.id, status = %r.status(), "worker failed; retrying elsewhere");
                // Its answer is the client's if nobody else can take the request.
                if ranked.len() == 1 || attempt == 1 {
                    return Ok((w.clone(), r, leg));
                }
            }
            Err(e) => {
                last_err = format!("worker {} unreachable: {e}", w.id);
                if e.is_connect() {
                    w.mark_unreachable(&e.to_string());
                }
                tracing::warn!(worker = %w.id, error = %e, "worker failed before answering");
                if e.is_timeout() {
                    return Err(ErrorResponse::new(
                        504,
                        "Timeout",
                        format!("worker {} did not answer within the request timeout", w.id),
                        None,
                    ));
                }
            }
        }
    }
    Err(ErrorResponse::bad_gateway(last_err))
}

/// The prefill leg: the request cut to one token, unstreamed, asking for its KV to be kept
/// for a remote decode. Returns the `kv_transfer_params` the prefill worker answered.
async fn prefill_leg(
    s: &State,
    w: &Arc<Worker>,
    api: Api,
    body: &[u8],
    headers: &reqwest::header::HeaderMap,
) -> Result<Value, String> {
    let mut v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let obj = v.as_object_mut().ok_or("the body is not an object")?;
    obj.insert("max_tokens".into(), json!(1));
    if obj.contains_key("max_completion_tokens") {
        obj.insert("max_completion_tokens".into(), json!(1));
    }
    obj.insert("stream".into(), json!(false));
    obj.remove("stream_options");
    obj.remove("min_tokens");
    obj.insert(
        "kv_transfer_params".into(),
        json!({
            "do_remote_decode": true,
            "do_remote_prefill": false,
            "remote_engine_id": null,
            "remote_block_ids": null,
            "remote_host": null,
            "remote_port": null,
        }),
    );
    s.metrics
        .routed
        .with_label_values(&[w.id.as_str(), "prefill"])
        .inc();
    let _active = ActiveGuard::new(w.clone());
    let leg = tracing::info_span!("prefill_leg", otel.kind = "client", llmd.worker = %w.id);
    let mut headers = headers.clone();
    llmd_telemetry::inject_context(&leg, &mut headers);
    // Held to the end, so the span covers reading the answer too.
    let _hold = leg.clone();
    let r = s
        .http
        .post(api.url(w).clone())
        .headers(headers)
        .json(&v)
        .timeout(s.cfg.request_timeout)
        .send()
        .instrument(leg)
        .await
        .map_err(|e| {
            if e.is_connect() {
                w.mark_unreachable(&e.to_string());
            }
            format!("worker {}: {e}", w.id)
        })?;
    let status = r.status();
    let answer: Value = r
        .json()
        .await
        .map_err(|e| format!("worker {}: {e}", w.id))?;
    if !status.is_success() {
        return Err(format!("worker {} answered {status}: {answer}", w.id));
    }
    match answer.get("kv_transfer_params") {
        Some(kv) if kv.is_object() => Ok(kv.clone()),
        _ => Err(format!(
            "worker {} answered without kv_transfer_params",
            w.id
        )),
    }
}

fn with_kv_params(body: &[u8], kv: Value) -> Result<Bytes, ErrorResponse> {
    let mut v: Value = serde_json::from_slice(body).map_err(parse_err)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("kv_transfer_params".into(), kv);
    }
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|e| ErrorResponse::internal(e.to_string()))
}

/// Passes a worker's SSE stream through event by event. If the worker dies or the request
/// times out mid-stream, the client gets an OpenAI-shaped error event and `[DONE]`: the
/// stream always ends. A client that goes away drops the upstream request, which the
/// worker sees as a cancellation.
fn relay_stream(
    s: Shared,
    upstream: reqwest::Response,
    guards: (Inflight, ActiveGuard),
    spans: (tracing::Span, tracing::Span),
    start: Instant,
    path: String,
) -> warp::reply::Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    let worker_id = guards.1 .0.id.clone();
    tokio::spawn(async move {
        // Held until the stream ends, so the request's and the leg's spans end with it.
        let _guards = (guards, spans);
        let mut body = upstream.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut done = false;
        let mut failure = None;
        'read: while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    failure = Some(if e.is_timeout() {
                        "the request timed out".to_string()
                    } else {
                        format!("worker {worker_id} failed mid-stream: {e}")
                    });
                    break;
                }
            };
            buf.extend_from_slice(&chunk);
            while let Some((event, rest)) = split_event(&buf) {
                let data = event_data(event);
                buf = rest.to_vec();
                if let Some(d) = data {
                    done = d == "[DONE]";
                    if tx.send(d).await.is_err() {
                        break 'read;
                    }
                    if done {
                        break 'read;
                    }
                }
            }
        }
        if !done && !tx.is_closed() {
            let why =
                failure.unwrap_or_else(|| format!("worker {worker_id} ended the stream early"));
            tracing::warn!(error = %why, "stream cut");
            let e = ErrorResponse::bad_gateway(why);
            let _ = tx.send(serde_json::to_string(&e).unwrap_or_default()).await;
            let _ = tx.send("[DONE]".to_string()).await;
        }
        s.metrics
            .request_seconds
            .with_label_values(&[&path])
            .observe(start.elapsed().as_secs_f64());
        // A span's end is its last exit (tracing-opentelemetry): touch both now.
        let (_, (leg, req)) = _guards;
        llmd_telemetry::end_now(&leg);
        llmd_telemetry::end_now(&req);
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let data = rx.recv().await?;
        Some((
            Ok::<_, Infallible>(warp::sse::Event::default().data(data)),
            rx,
        ))
    });
    warp::sse::reply(events).into_response()
}

/// The first complete event in `buf` and what follows it.
fn split_event(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' && buf[i + 1] == b'\n' {
            return Some((&buf[..i], &buf[i + 2..]));
        }
        if buf[i] == b'\r' && buf[i..].starts_with(b"\r\n\r\n") {
            return Some((&buf[..i], &buf[i + 4..]));
        }
        i += 1;
    }
    None
}

/// The data of an SSE event (multi-line data joined by newlines), if it has any.
fn event_data(event: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(event);
    let mut data: Option<String> = None;
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("data:") {
            let d = d.strip_prefix(' ').unwrap_or(d);
            match &mut data {
                Some(acc) => {
                    acc.push('\n');
                    acc.push_str(d);
                }
                None => data = Some(d.to_string()),
            }
        }
    }
    data
}

fn models(s: &State) -> Value {
    let mut seen = std::collections::BTreeMap::new();
    for w in s.pool.workers().iter() {
        for (id, card) in w.model_cards() {
            seen.entry(id).or_insert(card);
        }
    }
    let data: Vec<Value> = seen.into_values().collect();
    json!({"object": "list", "data": data})
}

fn health(s: &State) -> warp::reply::Response {
    let workers = s.pool.workers();
    let healthy = workers.iter().filter(|w| w.healthy()).count();
    if healthy > 0 {
        warp::reply::json(
            &json!({"status": "ok", "healthy_workers": healthy, "workers": workers.len()}),
        )
        .into_response()
    } else {
        let mut r = warp::reply::with_status(
            warp::reply::json(&ErrorResponse::overloaded(format!(
                "no healthy worker ({} configured)",
                workers.len()
            ))),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .into_response();
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
        r
    }
}

fn workers(s: &State) -> warp::reply::Response {
    let list: Vec<Value> = s
        .pool
        .workers()
        .iter()
        .map(|w| {
            let l = w.load();
            json!({
                "id": w.id,
                "url": w.url,
                "role": w.role.as_str(),
                "model": w.model(),
                "healthy": w.healthy(),
                "waiting": l.waiting,
                "running": l.running,
                "kv_cache_usage": l.kv_usage,
                "active": l.active,
                "last_error": w.last_error(),
            })
        })
        .collect();
    warp::reply::json(&json!({"workers": list})).into_response()
}

/// vLLM's `/tokenize`, answered with the scheduler's own tokenizer (what routing sees).
fn tokenize(s: &State, body: &[u8]) -> warp::reply::Response {
    let run = || -> Result<Value, ErrorResponse> {
        let req: openai::TokenizeRequest = serde_json::from_slice(body).map_err(parse_err)?;
        req.validate()?;
        let model = match req.model() {
            Some(m) => m.to_string(),
            None => only_model(&s.pool.workers())?,
        };
        let tok = s.pool.tokenizer(&model).ok_or_else(|| {
            ErrorResponse::overloaded(format!("the tokenizer of {model} is not loaded yet"))
        })?;
        let tokens = match &req {
            openai::TokenizeRequest::Completion {
                prompt,
                add_special_tokens,
                ..
            } => tok.encode(prompt, add_special_tokens.unwrap_or(true)),
            openai::TokenizeRequest::Chat {
                messages,
                add_generation_prompt,
                add_special_tokens,
                ..
            } => tok.chat(
                messages,
                add_generation_prompt.unwrap_or(true),
                add_special_tokens.unwrap_or(false),
            ),
        }
        .map_err(|e| ErrorResponse::invalid_request(e.to_string(), None))?;
        Ok(json!({"count": tokens.len(), "tokens": tokens}))
    };
    match run() {
        Ok(v) => warp::reply::json(&v).into_response(),
        Err(e) => error_reply(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_and_join() {
        let buf = b"data: {\"a\":1}\n\ndata: x\ndata: y\n\n: comment\n\ndata: [DONE]\n\npartial";
        let (e1, rest) = split_event(buf).expect("one");
        assert_eq!(event_data(e1).as_deref(), Some("{\"a\":1}"));
        let (e2, rest) = split_event(rest).expect("two");
        assert_eq!(event_data(e2).as_deref(), Some("x\ny"));
        let (e3, rest) = split_event(rest).expect("three");
        assert_eq!(event_data(e3), None);
        let (e4, rest) = split_event(rest).expect("four");
        assert_eq!(event_data(e4).as_deref(), Some("[DONE]"));
        assert!(split_event(rest).is_none());
        let crlf = b"data:z\r\n\r\n";
        let (e, _) = split_event(crlf).expect("crlf");
        assert_eq!(event_data(e).as_deref(), Some("z"));
    }
}
