//! The HTTP routes: OpenAI's chat and completions (streamed as SSE or whole), models,
//! vLLM's tokenize/detokenize, health, metrics, and the tokenizer description a scheduler
//! needs to tokenize and hash exactly as this worker does.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream;
use llmd_engine::engine::FinishReason;
use llmd_engine::sampling::SamplingParams;
use llmd_engine::scheduler::Usage;
use llmd_engine::serving::{RequestStream, StreamItem, SubmitOptions};
use llmd_engine::EngineError;
use llmd_protocol::openai::{self, ErrorResponse};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tracing::Instrument;
use warp::http::{HeaderMap, StatusCode};
use warp::{Filter, Rejection, Reply};

use crate::error::ApiError;
use crate::metrics::Finished;
use crate::pd::PdLeg;
use crate::State;

type Shared = Arc<State>;

pub fn routes(
    state: Shared,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone + Send + Sync + 'static {
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
        .and_then(|s: Shared, h: HeaderMap, b| async move { reply(traced(s, &h, b, true).await) });
    let completions = warp::path!("v1" / "completions")
        .and(warp::post())
        .and(with.clone())
        .and(warp::header::headers_cloned())
        .and(body)
        .and_then(|s: Shared, h: HeaderMap, b| async move { reply(traced(s, &h, b, false).await) });
    let models = warp::path!("v1" / "models")
        .and(warp::get())
        .and(with.clone())
        .map(|s: Shared| warp::reply::json(&models(&s)).into_response());
    let health = warp::path!("health")
        .and(warp::get())
        .map(|| StatusCode::OK.into_response());
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with.clone())
        .map(|s: Shared| {
            let text = s.metrics.render(&s.engine.stats());
            warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4")
                .into_response()
        });
    let tokenize = warp::path!("tokenize")
        .and(warp::post())
        .and(with.clone())
        .and(body)
        .and_then(|s: Shared, b| async move { reply(tokenize(&s, b)) });
    let detokenize = warp::path!("detokenize")
        .and(warp::post())
        .and(with.clone())
        .and(body)
        .and_then(|s: Shared, b| async move { reply(detokenize(&s, b)) });
    let tokenizer = warp::path!("v1" / "llmd" / "tokenizer")
        .and(warp::get())
        .and(with.clone())
        .and_then(|s: Shared| async move { reply(tokenizer_info(&s)) });
    let render_chat = warp::path!("v1" / "chat" / "completions" / "render")
        .and(warp::post())
        .and(with.clone())
        .and(body)
        .and_then(|s: Shared, b| async move { reply(render(&s, b, true)) });
    let render_completion = warp::path!("v1" / "completions" / "render")
        .and(warp::post())
        .and(with.clone())
        .and(body)
        .and_then(|s: Shared, b| async move { reply(render(&s, b, false)) });
    let info = warp::path!("server_info")
        .or(warp::path!("get_server_info"))
        .unify()
        .and(warp::get())
        .and(with.clone())
        .map(|s: Shared| warp::reply::json(&server_info(&s)).into_response());
    let minfo = warp::path!("model_info")
        .or(warp::path!("get_model_info"))
        .unify()
        .and(warp::get())
        .and(with.clone())
        .map(|s: Shared| warp::reply::json(&model_info(&s)).into_response());
    chat.or(completions)
        .unify()
        .or(render_chat)
        .unify()
        .or(render_completion)
        .unify()
        .or(info)
        .unify()
        .or(minfo)
        .unify()
        .or(models)
        .unify()
        .or(health)
        .unify()
        .or(metrics)
        .unify()
        .or(tokenize)
        .unify()
        .or(detokenize)
        .unify()
        .or(tokenizer)
        .unify()
}

/// Handlers answer errors themselves (never reject), so that a bad request never falls
/// through to another route's rejection.
fn reply(r: Result<warp::reply::Response, ApiError>) -> Result<warp::reply::Response, Rejection> {
    Ok(match r {
        Ok(res) => res,
        Err(e) => e.into_response(),
    })
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = if e.is_syntax() || e.is_eof() {
            format!("the body is not valid JSON: {e}")
        } else {
            format!("invalid request: {e}")
        };
        ApiError::invalid(msg, None)
    })
}

fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::InvalidRequest(m) => ApiError::invalid(m, None),
        other => ApiError::from(ErrorResponse::internal(other.to_string())),
    }
}

fn check_model(s: &State, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        // vLLM accepts a missing model and uses the served one.
        None => Ok(()),
        Some(m) if s.model_names.iter().any(|n| n == m) => Ok(()),
        Some(m) => Err(ApiError::from(ErrorResponse::not_found(
            format!("The model `{m}` does not exist."),
            Some("model"),
        ))),
    }
}

/// A request ready for the engine.
struct Prepared {
    chat: bool,
    prompt: Vec<u32>,
    params: SamplingParams,
    stream: bool,
    include_usage: bool,
    kv_params: Option<Value>,
}

impl Prepared {
    fn new(
        chat: bool,
        prompt: Vec<u32>,
        params: SamplingParams,
        (stream, include_usage): (bool, bool),
        kv_params: Option<Value>,
    ) -> Self {
        Self {
            chat,
            prompt,
            params,
            stream,
            include_usage,
            kv_params,
        }
    }
}

/// Runs a chat or completions request inside its `llmd.worker.request` span (which a
/// streamed answer keeps open until the stream ends or the client goes away).
async fn traced(
    s: Shared,
    headers: &HeaderMap,
    body: Bytes,
    is_chat: bool,
) -> Result<warp::reply::Response, ApiError> {
    let span = crate::trace::request_span(&s, headers, is_chat);
    let r = async {
        if is_chat {
            chat(s, body, &span).await
        } else {
            completions(s, body, &span).await
        }
    }
    .instrument(span.clone())
    .await;
    if let Err(e) = &r {
        crate::trace::record_error(&span, &e.body.error.message);
    }
    r
}

async fn chat(
    s: Shared,
    body: Bytes,
    span: &tracing::Span,
) -> Result<warp::reply::Response, ApiError> {
    let req: openai::ChatCompletionRequest = parse(&body)?;
    check_model(&s, req.model.as_deref())?;
    let settings = req.validate().map_err(ApiError::from)?;
    // The engine applies no logprobs, penalties or min_p yet: refuse them by name.
    settings
        .check_supported(openai::Capabilities::default())
        .map_err(ApiError::from)?;
    let prompt = chat_prompt(&s, &req)?;
    let params = sampling(&s, &settings, prompt.len())?;
    let stream = (req.stream.unwrap_or(false), req.include_usage());
    generate(
        s,
        Prepared::new(true, prompt, params, stream, req.kv_transfer_params),
        span,
    )
    .await
}

/// The token ids a chat request runs on: the model's template, then its tokenizer.
fn chat_prompt(s: &State, req: &openai::ChatCompletionRequest) -> Result<Vec<u32>, ApiError> {
    let messages: Vec<llmd_tokenizer::ChatMessage> = req
        .messages
        .iter()
        .map(|m| llmd_tokenizer::ChatMessage::new(m.role.clone(), m.text()))
        .collect();
    let text = s
        .engine
        .tokenizer
        .apply_chat_template(&messages, req.add_generation_prompt.unwrap_or(true))
        .map_err(|e| {
            ApiError::invalid(
                format!("cannot apply the chat template: {e}"),
                Some("messages"),
            )
        })?;
    // The template already holds the special tokens (BOS) the model expects.
    s.engine
        .tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))
}

/// The token ids a completion request runs on: its text tokenized, or its token ids.
fn completion_prompt(s: &State, req: &openai::CompletionRequest) -> Result<Vec<u32>, ApiError> {
    Ok(match req.prompt_input().map_err(ApiError::from)? {
        openai::PromptInput::Text(t) => s
            .engine
            .tokenizer
            .encode(&t, true)
            .map_err(|e| ApiError::invalid(e.to_string(), Some("prompt")))?,
        openai::PromptInput::Tokens(ids) => {
            let vocab = s.engine.model_config.vocab_size;
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                return Err(ApiError::invalid(
                    format!("token id {bad} is outside the vocabulary of {vocab}"),
                    Some("prompt"),
                ));
            }
            ids
        }
    })
}

/// vLLM's `POST /v1/chat/completions/render` and `/v1/completions/render`: the prompt's
/// token ids without running it (vllm-router's cache-aware policy asks for them).
fn render(s: &State, body: Bytes, chat: bool) -> Result<warp::reply::Response, ApiError> {
    let (model, token_ids) = if chat {
        let req: openai::ChatCompletionRequest = parse(&body)?;
        check_model(s, req.model.as_deref())?;
        (req.model.clone(), chat_prompt(s, &req)?)
    } else {
        let req: openai::CompletionRequest = parse(&body)?;
        check_model(s, req.model.as_deref())?;
        (req.model.clone(), completion_prompt(s, &req)?)
    };
    Ok(warp::reply::json(&json!({
        "model": model.as_deref().unwrap_or(s.model_name()),
        "token_ids": token_ids,
        "features": null,
    }))
    .into_response())
}

/// What peer routers read when a worker registers (`/server_info`, `/model_info`, as
/// sglang's and vLLM's routers ask): the served model and its limits. No model path is
/// given: routers would try to load a tokenizer from it.
fn server_info(s: &State) -> serde_json::Value {
    json!({
        "served_model_name": s.model_name(),
        "max_model_len": s.engine.model_config.max_position_embeddings,
        "block_size": s.engine.block_size,
        "role": s.cfg.role.as_str(),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

fn model_info(s: &State) -> serde_json::Value {
    json!({
        "served_model_name": s.model_name(),
        "is_generation": true,
        "max_model_len": s.engine.model_config.max_position_embeddings,
    })
}

async fn completions(
    s: Shared,
    body: Bytes,
    span: &tracing::Span,
) -> Result<warp::reply::Response, ApiError> {
    let req: openai::CompletionRequest = parse(&body)?;
    check_model(&s, req.model.as_deref())?;
    let settings = req.validate().map_err(ApiError::from)?;
    // The engine applies no logprobs, penalties or min_p yet: refuse them by name.
    settings
        .check_supported(openai::Capabilities::default())
        .map_err(ApiError::from)?;
    let prompt = completion_prompt(&s, &req)?;
    let params = sampling(&s, &settings, prompt.len())?;
    let stream = (req.stream.unwrap_or(false), req.include_usage());
    generate(
        s,
        Prepared::new(false, prompt, params, stream, req.kv_transfer_params),
        span,
    )
    .await
}

/// Engine sampling parameters from the request's, defaulting `max_tokens` to the rest of
/// the context as vLLM does.
fn sampling(
    s: &State,
    st: &openai::SamplingSettings,
    prompt_len: usize,
) -> Result<SamplingParams, ApiError> {
    let ctx = s.engine.model_config.max_position_embeddings;
    let max_tokens = match st.max_tokens {
        Some(n) => n as usize,
        None => ctx.saturating_sub(prompt_len).max(1),
    };
    let params = SamplingParams {
        temperature: st.temperature.unwrap_or(1.0),
        top_k: st.top_k.unwrap_or(0),
        top_p: st.top_p.unwrap_or(1.0),
        seed: st.seed,
        max_tokens,
        stop: st.stop.clone(),
        stop_token_ids: st.stop_token_ids.clone(),
        ignore_eos: st.ignore_eos,
    };
    s.engine
        .validate(prompt_len, &params)
        .map_err(|e| match e {
            EngineError::InvalidRequest(m) => ApiError::invalid(m, Some("max_tokens")),
            other => engine_error(other),
        })?;
    Ok(params)
}

/// Submits the request (after the P/D pull, if any) and answers whole or as a stream.
async fn generate(
    s: Shared,
    mut p: Prepared,
    span: &tracing::Span,
) -> Result<warp::reply::Response, ApiError> {
    let stats = s.engine.stats();
    if stats.waiting >= s.cfg.max_waiting {
        let mut e = ApiError::from(ErrorResponse::overloaded(format!(
            "the server is overloaded ({} requests waiting); retry later",
            stats.waiting
        )));
        e.retry_after = Some(1);
        return Err(e);
    }
    let leg = crate::pd::leg(&s, p.kv_params.as_ref());
    span.record("llmd.leg", leg.name());
    let id = response_id(p.chat);
    span.record("gen_ai.request.id", id.as_str());
    let mut opts = SubmitOptions::default();
    match &leg {
        PdLeg::Prefill => {
            // vLLM's prefill leg: one token, whole answer, KV kept for the decode worker.
            p.params.max_tokens = 1;
            p.stream = false;
            opts.pin_kv = true;
        }
        PdLeg::Decode(remote) => {
            opts.import = crate::pd::pull(&s, remote).await;
        }
        PdLeg::None => {}
    }
    let prefill_leg = matches!(leg, PdLeg::Prefill);
    let trace = crate::trace::RequestTrace::submitted(span, !prefill_leg);
    let stream = s
        .engine
        .submit_with(p.prompt, p.params, opts)
        .map_err(engine_error)?;
    let guard = AbortGuard {
        s: s.clone(),
        armed: true,
        trace,
    };
    if p.stream {
        Ok(sse(s, stream, id, p.chat, p.include_usage, guard))
    } else {
        whole(s, stream, id, p.chat, prefill_leg, guard).await
    }
}

fn response_id(chat: bool) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let prefix = if chat { "chatcmpl" } else { "cmpl" };
    format!("{prefix}-{:016x}{n:08x}", t as u64 ^ 0x9e37_79b9_7f4a_7c15)
}

fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Abort => "abort",
    }
}

fn finished_metric(r: FinishReason) -> Finished {
    match r {
        FinishReason::Stop => Finished::Stop,
        FinishReason::Length => Finished::Length,
        FinishReason::Abort => Finished::Abort,
    }
}

/// Records a request that ended without a `Finished` item (client gone, engine error); holds
/// the request span open until then.
struct AbortGuard {
    s: Shared,
    armed: bool,
    trace: crate::trace::RequestTrace,
}

impl AbortGuard {
    /// The request finished: count it and trace it.
    fn finished(&mut self, stream: &RequestStream, reason: FinishReason, usage: &Usage) {
        self.armed = false;
        self.s.metrics.request_finished(finished_metric(reason));
        let timings = stream.timings();
        if let Some(tm) = &timings {
            self.s.metrics.observe_request(tm);
        }
        self.trace.finished(finish_str(reason), usage, timings);
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if self.armed {
            self.s.metrics.request_finished(Finished::Abort);
            self.trace.aborted();
        }
    }
}

async fn whole(
    s: Shared,
    mut stream: RequestStream,
    id: String,
    chat: bool,
    prefill_leg: bool,
    mut guard: AbortGuard,
) -> Result<warp::reply::Response, ApiError> {
    let mut text = String::new();
    let mut last = None::<Instant>;
    while let Some(item) = stream.next().await {
        match item.map_err(engine_error)? {
            StreamItem::Token { text: t, .. } => {
                let now = Instant::now();
                if let Some(prev) = last {
                    s.metrics.observe_inter_token((now - prev).as_secs_f64());
                }
                last = Some(now);
                text.push_str(&t);
            }
            StreamItem::Finished {
                reason,
                usage,
                text: t,
                pinned,
            } => {
                text.push_str(&t);
                guard.finished(&stream, reason, &usage);
                let usage = openai::Usage::new(
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    usage.cached_tokens,
                );
                let kv = if prefill_leg {
                    pinned.map(|p| s.pd.register_export(&s, stream.id(), &p))
                } else {
                    None
                };
                let model = s.model_name().to_string();
                let created = crate::unix_now();
                let body = if chat {
                    serde_json::to_value(openai::ChatCompletionResponse::new(
                        id,
                        created,
                        model,
                        text,
                        finish_str(reason),
                        usage,
                        kv,
                    ))
                } else {
                    serde_json::to_value(openai::CompletionResponse::new(
                        id,
                        created,
                        model,
                        text,
                        finish_str(reason),
                        usage,
                        kv,
                    ))
                };
                let body =
                    body.map_err(|e| ApiError::from(ErrorResponse::internal(e.to_string())))?;
                return Ok(warp::reply::json(&body).into_response());
            }
        }
    }
    Err(ApiError::from(ErrorResponse::internal(
        "the engine ended the request without finishing it",
    )))
}

/// State of a streamed answer: the engine stream plus what the chunks need.
struct Sse {
    s: Shared,
    stream: RequestStream,
    id: String,
    chat: bool,
    include_usage: bool,
    created: u64,
    model: String,
    sent_role: bool,
    last: Option<Instant>,
    /// Chunks ready to send, in order.
    queue: std::collections::VecDeque<String>,
    done: bool,
    guard: AbortGuard,
}

fn sse(
    s: Shared,
    stream: RequestStream,
    id: String,
    chat: bool,
    include_usage: bool,
    guard: AbortGuard,
) -> warp::reply::Response {
    let st = Sse {
        guard,
        model: s.model_name().to_string(),
        s,
        stream,
        id,
        chat,
        include_usage,
        created: crate::unix_now(),
        sent_role: false,
        last: None,
        queue: Default::default(),
        done: false,
    };
    let events = stream::unfold(st, |mut st| async move {
        loop {
            if let Some(data) = st.queue.pop_front() {
                let ev = warp::sse::Event::default().data(data);
                return Some((Ok::<_, Infallible>(ev), st));
            }
            if st.done {
                return None;
            }
            st.next_chunks().await;
        }
    });
    warp::sse::reply(events).into_response()
}

impl Sse {
    fn chunk(&self, delta: Option<&str>, role: bool, finish: Option<&str>) -> String {
        let v = if self.chat {
            serde_json::to_string(&openai::ChatCompletionChunk::new(
                &self.id,
                self.created,
                &self.model,
                role.then_some("assistant"),
                delta,
                finish,
            ))
        } else {
            serde_json::to_string(&openai::CompletionChunk::new(
                &self.id,
                self.created,
                &self.model,
                delta.unwrap_or(""),
                finish,
            ))
        };
        v.unwrap_or_default()
    }

    /// Waits for the next engine item and queues the chunks it makes.
    async fn next_chunks(&mut self) {
        if self.chat && !self.sent_role {
            // OpenAI and vLLM open a chat stream with the role and empty content.
            self.sent_role = true;
            let c = self.chunk(Some(""), true, None);
            self.queue.push_back(c);
            return;
        }
        match self.stream.next().await {
            Some(Ok(StreamItem::Token { text, .. })) => {
                let now = Instant::now();
                if let Some(prev) = self.last {
                    self.s
                        .metrics
                        .observe_inter_token((now - prev).as_secs_f64());
                }
                self.last = Some(now);
                if !text.is_empty() {
                    let c = self.chunk(Some(&text), false, None);
                    self.queue.push_back(c);
                }
            }
            Some(Ok(StreamItem::Finished {
                reason,
                usage,
                text,
                ..
            })) => {
                self.guard.finished(&self.stream, reason, &usage);
                let c = self.chunk(
                    (!text.is_empty()).then_some(text.as_str()),
                    false,
                    Some(finish_str(reason)),
                );
                self.queue.push_back(c);
                if self.include_usage {
                    let u = openai::Usage::new(
                        usage.prompt_tokens,
                        usage.completion_tokens,
                        usage.cached_tokens,
                    );
                    let body = if self.chat {
                        serde_json::to_string(&openai::ChatCompletionChunk::usage_only(
                            &self.id,
                            self.created,
                            &self.model,
                            u,
                        ))
                    } else {
                        serde_json::to_string(&openai::CompletionChunk::usage_only(
                            &self.id,
                            self.created,
                            &self.model,
                            u,
                        ))
                    };
                    self.queue.push_back(body.unwrap_or_default());
                }
                self.queue.push_back(openai::SSE_DONE_DATA.to_string());
                self.done = true;
            }
            Some(Err(e)) => {
                // Mid-stream failure: an error event as vLLM sends it, then the end.
                let body = ErrorResponse::internal(e.to_string());
                self.queue
                    .push_back(serde_json::to_string(&body).unwrap_or_default());
                self.queue.push_back(openai::SSE_DONE_DATA.to_string());
                self.done = true;
            }
            None => self.done = true,
        }
    }
}

fn models(s: &State) -> Value {
    let max = s.engine.model_config.max_position_embeddings;
    let data: Vec<Value> = s
        .model_names
        .iter()
        .map(|name| {
            json!({
                "id": name,
                "object": "model",
                "created": s.created,
                "owned_by": "llmd",
                "root": s.engine.model_id,
                "parent": null,
                "max_model_len": max,
            })
        })
        .collect();
    json!({"object": "list", "data": data})
}

fn tokenize(s: &State, body: Bytes) -> Result<warp::reply::Response, ApiError> {
    let req: openai::TokenizeRequest = parse(&body)?;
    check_model(s, req.model())?;
    let tok = &s.engine.tokenizer;
    let tokens = match req {
        openai::TokenizeRequest::Completion {
            prompt,
            add_special_tokens,
            ..
        } => tok
            .encode(&prompt, add_special_tokens.unwrap_or(true))
            .map_err(|e| ApiError::invalid(e.to_string(), Some("prompt")))?,
        openai::TokenizeRequest::Chat {
            messages,
            add_generation_prompt,
            add_special_tokens,
            ..
        } => {
            let msgs: Vec<llmd_tokenizer::ChatMessage> = messages
                .iter()
                .map(|m| llmd_tokenizer::ChatMessage::new(m.role.clone(), m.text()))
                .collect();
            let text = tok
                .apply_chat_template(&msgs, add_generation_prompt.unwrap_or(true))
                .map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?;
            tok.encode(&text, add_special_tokens.unwrap_or(false))
                .map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?
        }
    };
    Ok(warp::reply::json(&openai::TokenizeResponse {
        count: tokens.len(),
        max_model_len: s.engine.model_config.max_position_embeddings,
        tokens,
        token_strs: None,
    })
    .into_response())
}

fn detokenize(s: &State, body: Bytes) -> Result<warp::reply::Response, ApiError> {
    let req: openai::DetokenizeRequest = parse(&body)?;
    check_model(s, req.model.as_deref())?;
    let vocab = s.engine.model_config.vocab_size;
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            format!("token id {bad} is outside the vocabulary of {vocab}"),
            Some("tokens"),
        ));
    }
    let prompt = s
        .engine
        .tokenizer
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("tokens")))?;
    Ok(warp::reply::json(&openai::DetokenizeResponse { prompt }).into_response())
}

/// Everything a scheduler needs to turn a request into exactly the token ids and block
/// hashes this worker will compute.
fn tokenizer_info(s: &State) -> Result<warp::reply::Response, ApiError> {
    let tok = &s.engine.tokenizer;
    let json = tok
        .to_json()
        .map_err(|e| ApiError::from(ErrorResponse::internal(e.to_string())))?;
    Ok(warp::reply::json(&json!({
        "model": s.model_name(),
        "tokenizer_json": json,
        "chat_template": tok.chat_template(),
        "add_bos_token": tok.add_bos_token(),
        "bos_token_id": tok.bos_token_id(),
        "eos_token_ids": tok.eos_token_ids(),
        "block_size": s.engine.block_size,
        // Block hashes are chained from llmd-protocol's root_hash(hash_seed, None).
        "hash_seed": s.engine.model_id,
        "hash_root": llmd_protocol::root_hash(&s.engine.model_id, None),
        "fingerprint": s.engine.fingerprint,
        "max_model_len": s.engine.model_config.max_position_embeddings,
    }))
    .into_response())
}
