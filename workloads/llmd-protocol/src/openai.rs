//! The OpenAI HTTP API as vLLM serves it (`vllm/entrypoints/openai/protocol.py`), shared by
//! the worker (server) and the scheduler (gateway and client).
//!
//! - Requests are lenient: unknown fields are kept in `extra` and otherwise ignored, as
//!   OpenAI and vLLM accept them (clients send many). Numbers are read wide (`i64`/`f64`)
//!   so an out-of-range value gets a message naming its field rather than a serde error.
//! - `validate()` turns a request into [`SamplingSettings`]; every error is a 400 whose
//!   `param` names the offending field. Ranges are vLLM's (`SamplingParams._verify_args`).
//!   Whether the engine *applies* a setting is the server's business:
//!   [`SamplingSettings::check_supported`] refuses what it cannot do, with a clear message.
//! - Responses serialise as vLLM's do. Whole responses are pydantic `model_dump()`: every
//!   field, `null` included. Chat chunks are `model_dump_json(exclude_unset=True)`: only
//!   what vLLM sets (`usage` absent, `stop_reason` only on the finishing chunk).
//!   Completion chunks are `exclude_unset=False`: every field (`"usage": null`). Usage-only
//!   chunks add `exclude_none=True` (no `prompt_tokens_details` unless it is set).

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The data of the event that ends an OpenAI stream, for SSE writers that add `data: `.
pub const SSE_DONE_DATA: &str = "[DONE]";

/// The whole event that ends an OpenAI stream.
pub const SSE_DONE: &str = "data: [DONE]\n\n";

/// The most logprobs alternatives a request may ask for: vLLM's `--max-logprobs` default.
pub const MAX_LOGPROBS: u32 = 20;

/// Completions' `max_tokens` when the request leaves it out (OpenAI's and vLLM's default;
/// chat has none: it runs to the end of the context).
pub const DEFAULT_COMPLETION_MAX_TOKENS: u32 = 16;

/// `data: {json}\n\n`, one server-sent event.
pub fn sse_data<T: Serialize>(v: &T) -> String {
    // Serialising these types cannot fail (no non-string map keys); `null` keeps the
    // stream well-formed if a caller's own type ever does.
    let json = serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    format!("data: {json}\n\n")
}

// ---------------------------------------------------------------------------------------
// Errors

/// `{"error": {"message", "type", "param", "code"}}`: OpenAI's shape with vLLM's numeric
/// `code` (the HTTP status). `type` is OpenAI's error type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub param: Option<String>,
    /// The HTTP status. OpenAI itself sends a string code here ("model_not_found"); a
    /// client reading one gets `None` rather than a parse failure.
    #[serde(default, deserialize_with = "lenient_code")]
    pub code: Option<u16>,
}

fn lenient_code<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    Ok(Value::deserialize(d)?
        .as_u64()
        .and_then(|c| u16::try_from(c).ok()))
}

impl ErrorResponse {
    pub fn new(status: u16, kind: &str, message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            error: ErrorBody {
                message: message.into(),
                kind: kind.to_string(),
                param: param.map(str::to_string),
                code: Some(status),
            },
        }
    }

    /// 400: the request is malformed or asks for something invalid; `param` names the
    /// field when one is to blame.
    pub fn invalid_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(400, "invalid_request_error", message, param)
    }

    /// 404: no such route or resource.
    pub fn not_found(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(404, "invalid_request_error", message, param)
    }

    /// 404 for a `model` this server does not serve, in vLLM's words.
    pub fn model_not_found(model: &str) -> Self {
        Self::not_found(
            format!("The model `{model}` does not exist."),
            Some("model"),
        )
    }

    /// 405: the route exists, the method does not.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "invalid_request_error", message, None)
    }

    /// 413: the body is over the server's limit.
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(413, "invalid_request_error", message, None)
    }

    /// 429: this client sent too much; retry later.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(429, "rate_limit_exceeded", message, None)
    }

    /// 503: too much queued; the client should retry later (with Retry-After).
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(503, "server_overloaded", message, None)
    }

    /// 502: an upstream (worker) failed.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(502, "server_error", message, None)
    }

    /// 500: our fault.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "server_error", message, None)
    }

    /// The HTTP status to send it with.
    pub fn status(&self) -> u16 {
        self.error.code.unwrap_or(500)
    }

    /// The offending field, if one is named.
    pub fn param(&self) -> Option<&str> {
        self.error.param.as_deref()
    }
}

impl std::fmt::Display for ErrorResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status(),
            self.error.kind,
            self.error.message
        )?;
        if let Some(p) = &self.error.param {
            write!(f, " (param {p})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ErrorResponse {}

fn bad(message: impl Into<String>, param: &str) -> ErrorResponse {
    ErrorResponse::invalid_request(message, Some(param))
}

// ---------------------------------------------------------------------------------------
// Request pieces

/// `stop`: one string or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`. As in vLLM, giving it at all means `include_usage` unless that is
/// set false.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    /// vLLM's extension: usage in every chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous_usage_stats: Option<bool>,
}

impl StreamOptions {
    fn is_empty(&self) -> bool {
        self.include_usage.is_none() && self.continuous_usage_stats.is_none()
    }
}

/// `stream`, `stream_options` → (include a final usage chunk, usage in every chunk).
fn usage_flags(stream: Option<bool>, opts: Option<&StreamOptions>) -> (bool, bool) {
    match (stream.unwrap_or(false), opts) {
        (true, Some(o)) => {
            let final_usage = o.include_usage.unwrap_or(true);
            (
                final_usage,
                final_usage && o.continuous_usage_stats.unwrap_or(false),
            )
        }
        _ => (false, false),
    }
}

/// vLLM refuses `stream_options` without `stream: true`.
fn check_stream_options(
    stream: Option<bool>,
    opts: Option<&StreamOptions>,
) -> Result<(), ErrorResponse> {
    match opts {
        Some(o) if !o.is_empty() && !stream.unwrap_or(false) => Err(bad(
            "stream_options can only be set when stream is true",
            "stream_options",
        )),
        _ => Ok(()),
    }
}

/// vLLM types `kv_transfer_params` as a dict: anything else but null is refused.
fn check_kv_transfer_params(v: Option<&Value>) -> Result<(), ErrorResponse> {
    match v {
        None | Some(Value::Null) | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(bad(
            "kv_transfer_params must be a JSON object",
            "kv_transfer_params",
        )),
    }
}

/// Reads a field that may be absent (outer `None`) or explicitly `null` (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The sampling fields chat and completions share, as sent (flattened into both requests).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingFields {
    /// Outer `None`: absent; `Some(None)`: explicit `null`. The difference matters for
    /// completions only: absent means 16, null means "to the end of the context" (vLLM).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_tokens: Option<Option<i64>>,
    /// Chat only (completions ignore it, as vLLM does); wins over `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// vLLM's extension; 0 (and -1) disable it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    /// vLLM's extension; 0 disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f64>,
    /// -1 means none, as in vLLM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// vLLM's extension: token ids that also end generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_token_ids: Option<Vec<i64>>,
    /// Only 1 is accepted: one choice per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<i64>,
    /// Chat: a bool; completions: the number of top alternatives. Read as JSON so that the
    /// wrong kind gets a message naming the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
    /// Chat only: alternatives per token when `logprobs` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<i64>,
    /// In [-2, 2]. The llmd engine does not apply penalties yet: validation only checks
    /// the range and keeps the value; [`SamplingSettings::check_supported`] refuses a
    /// non-zero one until the engine applies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    /// As `presence_penalty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// vLLM's extension, > 0 (1 = off); as the penalties above, not applied yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    /// vLLM's extension: keep generating past EOS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// What a validated request asks the engine for. The worker maps it to engine parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingSettings {
    /// Chat: `max_completion_tokens` if given, else `max_tokens`; `None`: up to the end of
    /// the context. Completions: `max_tokens`, 16 when absent.
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// `None`: off.
    pub top_k: Option<usize>,
    /// `None`: off.
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// `Some(k)`: return the sampled token's logprob and its `k` top alternatives.
    pub logprobs: Option<u32>,
    /// 0 when not given.
    pub presence_penalty: f32,
    /// 0 when not given.
    pub frequency_penalty: f32,
    /// `None` when not given (1 = off).
    pub repetition_penalty: Option<f32>,
}

/// What a server's engine can apply beyond the basics (temperature, top-p/k, seed, stops,
/// max tokens). `Default`: nothing more, which is the llmd engine today.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub logprobs: bool,
    /// presence, frequency and repetition penalties.
    pub penalties: bool,
    pub min_p: bool,
}

impl SamplingSettings {
    /// Refuses, naming the field, what the request asks for and `caps` cannot do, instead
    /// of silently ignoring it.
    pub fn check_supported(&self, caps: Capabilities) -> Result<(), ErrorResponse> {
        let refuse = |param: &str, off: &str| {
            bad(
                format!("{param} is not supported by this server yet; send {off} or leave it out"),
                param,
            )
        };
        if !caps.logprobs && self.logprobs.is_some() {
            return Err(bad(
                "logprobs are not supported by this server yet",
                "logprobs",
            ));
        }
        if !caps.penalties {
            if self.presence_penalty != 0.0 {
                return Err(refuse("presence_penalty", "0"));
            }
            if self.frequency_penalty != 0.0 {
                return Err(refuse("frequency_penalty", "0"));
            }
            if self.repetition_penalty.is_some_and(|r| r != 1.0) {
                return Err(refuse("repetition_penalty", "1"));
            }
        }
        if !caps.min_p && self.min_p.is_some() {
            return Err(refuse("min_p", "0"));
        }
        Ok(())
    }
}

/// Which API a request came in on: the same field means different things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
}

fn in_range(v: f64, lo: f64, hi: f64) -> bool {
    (lo..=hi).contains(&v)
}

fn token_limit(v: i64, param: &str) -> Result<u32, ErrorResponse> {
    match u32::try_from(v) {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(bad(format!("{param} must be at least 1, got {v}"), param)),
    }
}

fn logprobs_count(v: i64, param: &str) -> Result<u32, ErrorResponse> {
    match u32::try_from(v) {
        Ok(n) if n <= MAX_LOGPROBS => Ok(n),
        _ => Err(bad(
            format!("{param} must be between 0 and {MAX_LOGPROBS}, got {v}"),
            param,
        )),
    }
}

impl SamplingFields {
    /// Sets the number of tokens to generate, whatever the request said (a gateway's
    /// prefill leg asks for 1).
    pub fn set_max_tokens(&mut self, n: u32) {
        self.max_tokens = Some(Some(i64::from(n)));
        self.max_completion_tokens = None;
    }

    fn settings(&self, api: Api) -> Result<SamplingSettings, ErrorResponse> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(bad(
                    format!("n must be 1, got {n}: this server returns one choice per request"),
                    "n",
                ));
            }
        }
        let max_tokens = match (api, self.max_completion_tokens, self.max_tokens) {
            (Api::Chat, Some(v), _) => Some(token_limit(v, "max_completion_tokens")?),
            (_, _, Some(Some(v))) => Some(token_limit(v, "max_tokens")?),
            (Api::Completions, _, None) => Some(DEFAULT_COMPLETION_MAX_TOKENS),
            _ => None,
        };
        // Ranges as vLLM's SamplingParams checks them (the message names the field).
        let range = |name: &str, v: Option<f64>, lo: f64, hi: f64, shown: &str| match v {
            Some(x) if !in_range(x, lo, hi) => {
                Err(bad(format!("{name} must be in {shown}, got {x}"), name))
            }
            _ => Ok(v.map(|x| x as f32)),
        };
        let temperature = range("temperature", self.temperature, 0.0, 2.0, "[0, 2]")?;
        let top_p = match self.top_p {
            Some(p) if !(p > 0.0 && p <= 1.0) => {
                return Err(bad(format!("top_p must be in (0, 1], got {p}"), "top_p"))
            }
            p => p.map(|p| p as f32),
        };
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => None,
            Some(k) => match usize::try_from(k) {
                Ok(k) => Some(k),
                Err(_) => {
                    return Err(bad(
                        format!("top_k must be 0 (off) or at least 1, got {k}"),
                        "top_k",
                    ))
                }
            },
        };
        let min_p = range("min_p", self.min_p, 0.0, 1.0, "[0, 1]")?.filter(|&p| p > 0.0);
        let presence_penalty = range(
            "presence_penalty",
            self.presence_penalty,
            -2.0,
            2.0,
            "[-2, 2]",
        )?;
        let frequency_penalty = range(
            "frequency_penalty",
            self.frequency_penalty,
            -2.0,
            2.0,
            "[-2, 2]",
        )?;
        let repetition_penalty = match self.repetition_penalty {
            Some(r) if r <= 0.0 => {
                return Err(bad(
                    format!("repetition_penalty must be greater than 0, got {r}"),
                    "repetition_penalty",
                ))
            }
            r => r.map(|r| r as f32),
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        // An empty stop string would end every generation at once; vLLM refuses it too.
        // The count is not limited (OpenAI's limit is 4; vLLM has none and evaluation
        // harnesses send more).
        if stop.iter().any(String::is_empty) {
            return Err(bad("stop cannot contain an empty string", "stop"));
        }
        let mut stop_token_ids: Vec<u32> = Vec::new();
        for &id in self.stop_token_ids.iter().flatten() {
            let id = u32::try_from(id).map_err(|_| {
                bad(
                    format!("stop_token_ids must be token ids (0 or more), got {id}"),
                    "stop_token_ids",
                )
            })?;
            if !stop_token_ids.contains(&id) {
                stop_token_ids.push(id);
            }
        }
        let logprobs = match api {
            Api::Chat => self.chat_logprobs()?,
            Api::Completions => self.completion_logprobs()?,
        };
        Ok(SamplingSettings {
            max_tokens,
            temperature,
            top_p,
            top_k,
            min_p,
            // -1 is "no seed" in vLLM; other seeds are 64-bit patterns, a negative one as
            // good as its bits.
            seed: self.seed.filter(|&s| s != -1).map(|s| s as u64),
            stop,
            stop_token_ids,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            logprobs,
            presence_penalty: presence_penalty.unwrap_or(0.0),
            frequency_penalty: frequency_penalty.unwrap_or(0.0),
            repetition_penalty,
        })
    }

    /// Chat: `logprobs` is a bool, `top_logprobs` the alternatives (needs `logprobs`).
    fn chat_logprobs(&self) -> Result<Option<u32>, ErrorResponse> {
        let on = match &self.logprobs {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                return Err(bad(
                    format!("logprobs must be true or false for chat completions, got {v}"),
                    "logprobs",
                ))
            }
        };
        let top = match self.top_logprobs {
            None => 0,
            Some(n) => logprobs_count(n, "top_logprobs")?,
        };
        if top > 0 && !on {
            return Err(bad(
                "when using top_logprobs, logprobs must be set to true",
                "top_logprobs",
            ));
        }
        Ok(on.then_some(top))
    }

    /// Completions: `logprobs` is the number of alternatives.
    fn completion_logprobs(&self) -> Result<Option<u32>, ErrorResponse> {
        match &self.logprobs {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(n) => logprobs_count(n, "logprobs").map(Some),
                None => Err(bad(
                    format!("logprobs must be an integer, got {n}"),
                    "logprobs",
                )),
            },
            Some(v) => Err(bad(
                format!(
                    "logprobs must be the number of alternatives (0 to {MAX_LOGPROBS}) for completions, got {v}"
                ),
                "logprobs",
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Chat requests

/// A chat message's content: a string, or content parts of which only text is supported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// `{"type": "text", "text": ...}`; other part types parse (their other fields are
/// ignored) so validation can refuse them by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl ContentPart {
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            kind: "text".into(),
            text: Some(text.into()),
        }
    }
}

/// The roles a message may have.
pub const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "developer"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    /// May be null (an assistant message that only called tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A tool message's answer to this call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// An assistant message's tool calls, kept as sent for the chat template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: Some(Content::Text(content.into())),
            name: None,
            tool_call_id: None,
            tool_calls: None,
        }
    }

    /// The message's text: its string, or its text parts joined by newlines (as vLLM
    /// flattens parts for string-content chat templates).
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(s)) => s.clone(),
            Some(Content::Parts(p)) => p
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    fn validate(&self, i: usize) -> Result<(), ErrorResponse> {
        if !ROLES.contains(&self.role.as_str()) {
            return Err(bad(
                format!(
                    "messages[{i}].role must be one of {}, got {:?}",
                    ROLES.join(", "),
                    self.role
                ),
                &format!("messages[{i}].role"),
            ));
        }
        if let Some(Content::Parts(parts)) = &self.content {
            if let Some(p) = parts.iter().find(|p| p.kind != "text" || p.text.is_none()) {
                let why = if p.kind == "text" {
                    "a text part has no text".to_string()
                } else {
                    format!(
                        "content parts of type {:?} are not supported (text only)",
                        p.kind
                    )
                };
                return Err(bad(
                    format!("messages[{i}]: {why}"),
                    &format!("messages[{i}].content"),
                ));
            }
        }
        Ok(())
    }
}

fn validate_messages(messages: &[Message]) -> Result<(), ErrorResponse> {
    if messages.is_empty() {
        return Err(bad("messages must not be empty", "messages"));
    }
    messages
        .iter()
        .enumerate()
        .try_for_each(|(i, m)| m.validate(i))
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// vLLM's extension (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_generation_prompt: Option<bool>,
    /// vLLM's extension: special tokens on top of the template's (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_special_tokens: Option<bool>,
    /// vLLM's extension: extra variables for the chat template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// vLLM's P/D field, passed through opaque (must be an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_transfer_params: Option<Value>,
    /// Every other field, unvalidated and unused, kept so a gateway can pass it on.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatCompletionRequest {
    pub fn new(model: impl Into<String>, messages: Vec<Message>) -> Self {
        Self {
            model: Some(model.into()),
            messages,
            sampling: SamplingFields::default(),
            stream: None,
            stream_options: None,
            add_generation_prompt: None,
            add_special_tokens: None,
            chat_template_kwargs: None,
            kv_transfer_params: None,
            extra: Map::new(),
        }
    }

    pub fn validate(&self) -> Result<SamplingSettings, ErrorResponse> {
        validate_messages(&self.messages)?;
        check_stream_options(self.stream, self.stream_options.as_ref())?;
        check_kv_transfer_params(self.kv_transfer_params.as_ref())?;
        self.sampling.settings(Api::Chat)
    }

    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// A final chunk with the usage and no choices.
    pub fn include_usage(&self) -> bool {
        usage_flags(self.stream, self.stream_options.as_ref()).0
    }

    /// Usage in every chunk too (vLLM's `continuous_usage_stats`).
    pub fn continuous_usage(&self) -> bool {
        usage_flags(self.stream, self.stream_options.as_ref()).1
    }
}

// ---------------------------------------------------------------------------------------
// Completion requests

/// A completions prompt after validation.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A string, token ids, or a one-element array of either; read as JSON so that the
    /// wrong shape gets a message naming `prompt`.
    #[serde(default)]
    pub prompt: Value,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Refused when true: this server does not echo the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    /// Refused when given, as vLLM refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// vLLM's extension: add BOS etc. to a text prompt (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_special_tokens: Option<bool>,
    /// vLLM's P/D field, passed through opaque (must be an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_transfer_params: Option<Value>,
    /// Every other field, unvalidated and unused, kept so a gateway can pass it on.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn token_ids(v: &[Value]) -> Option<Vec<u32>> {
    v.iter()
        .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect()
}

impl CompletionRequest {
    pub fn new(model: impl Into<String>, prompt: impl Into<Value>) -> Self {
        Self {
            model: Some(model.into()),
            prompt: prompt.into(),
            sampling: SamplingFields::default(),
            stream: None,
            stream_options: None,
            echo: None,
            suffix: None,
            add_special_tokens: None,
            kv_transfer_params: None,
            extra: Map::new(),
        }
    }

    pub fn validate(&self) -> Result<SamplingSettings, ErrorResponse> {
        self.prompt_input()?;
        if self.echo == Some(true) {
            return Err(bad("echo is not supported by this server", "echo"));
        }
        if self.suffix.is_some() {
            return Err(bad("suffix is not currently supported", "suffix"));
        }
        check_stream_options(self.stream, self.stream_options.as_ref())?;
        check_kv_transfer_params(self.kv_transfer_params.as_ref())?;
        self.sampling.settings(Api::Completions)
    }

    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// A final chunk with the usage and no choices.
    pub fn include_usage(&self) -> bool {
        usage_flags(self.stream, self.stream_options.as_ref()).0
    }

    /// Usage in every chunk too (vLLM's `continuous_usage_stats`).
    pub fn continuous_usage(&self) -> bool {
        usage_flags(self.stream, self.stream_options.as_ref()).1
    }

    /// The one prompt: a string, token ids, or a one-element array of either. Batches are
    /// refused: one request, one prompt, one choice.
    pub fn prompt_input(&self) -> Result<PromptInput, ErrorResponse> {
        let shape_error = || {
            bad(
                "prompt must be a string, an array of token ids, or a one-element array of either",
                "prompt",
            )
        };
        let one = |v: &Value| -> Result<PromptInput, ErrorResponse> {
            match v {
                Value::String(s) if s.is_empty() => Err(bad("prompt must not be empty", "prompt")),
                Value::String(s) => Ok(PromptInput::Text(s.clone())),
                Value::Array(a) if a.is_empty() => Err(bad("prompt must not be empty", "prompt")),
                Value::Array(a) => token_ids(a).map(PromptInput::Tokens).ok_or_else(|| {
                    bad(
                        "prompt token ids must be integers from 0 to 4294967295",
                        "prompt",
                    )
                }),
                _ => Err(shape_error()),
            }
        };
        match &self.prompt {
            Value::Null => Err(bad("prompt is required", "prompt")),
            // An array of numbers is one tokenized prompt; of strings or arrays, a batch.
            Value::Array(a) if a.first().is_some_and(|x| x.is_string() || x.is_array()) => {
                match a.as_slice() {
                    [only] => one(only),
                    _ if a.iter().all(|x| x.is_string() || x.is_array()) => Err(bad(
                        format!(
                            "{} prompts in one request are not supported; send one request per prompt",
                            a.len()
                        ),
                        "prompt",
                    )),
                    _ => Err(shape_error()),
                }
            }
            v => one(v),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tokenize / detokenize (vLLM's own routes)

/// vLLM's `POST /tokenize`: a prompt, or chat messages rendered with the template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, try_from = "RawTokenizeRequest")]
pub enum TokenizeRequest {
    Chat {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        messages: Vec<Message>,
        /// Default true.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        add_generation_prompt: Option<bool>,
        /// Default false (the template carries them).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        add_special_tokens: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        return_token_strs: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chat_template_kwargs: Option<Map<String, Value>>,
    },
    Completion {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        prompt: String,
        /// Default true.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        add_special_tokens: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        return_token_strs: Option<bool>,
    },
}

/// Both shapes' fields, so a body with neither or both gets a clear message rather than
/// "did not match any variant".
#[derive(Deserialize)]
struct RawTokenizeRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    add_generation_prompt: Option<bool>,
    #[serde(default)]
    add_special_tokens: Option<bool>,
    #[serde(default)]
    return_token_strs: Option<bool>,
    #[serde(default)]
    chat_template_kwargs: Option<Map<String, Value>>,
}

impl TryFrom<RawTokenizeRequest> for TokenizeRequest {
    type Error = String;

    fn try_from(r: RawTokenizeRequest) -> Result<Self, String> {
        match (r.prompt, r.messages) {
            (Some(_), Some(_)) => Err("give either prompt or messages, not both".into()),
            (None, None) => Err("prompt or messages is required".into()),
            (Some(prompt), None) => Ok(TokenizeRequest::Completion {
                model: r.model,
                prompt,
                add_special_tokens: r.add_special_tokens,
                return_token_strs: r.return_token_strs,
            }),
            (None, Some(messages)) => Ok(TokenizeRequest::Chat {
                model: r.model,
                messages,
                add_generation_prompt: r.add_generation_prompt,
                add_special_tokens: r.add_special_tokens,
                return_token_strs: r.return_token_strs,
                chat_template_kwargs: r.chat_template_kwargs,
            }),
        }
    }
}

impl TokenizeRequest {
    pub fn model(&self) -> Option<&str> {
        match self {
            TokenizeRequest::Chat { model, .. } | TokenizeRequest::Completion { model, .. } => {
                model.as_deref()
            }
        }
    }

    /// Chat messages as a chat request's are checked.
    pub fn validate(&self) -> Result<(), ErrorResponse> {
        match self {
            TokenizeRequest::Chat { messages, .. } => validate_messages(messages),
            TokenizeRequest::Completion { .. } => Ok(()),
        }
    }
}

/// `{"count", "max_model_len", "tokens", "token_strs"}` (`token_strs` null unless asked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
    #[serde(default)]
    pub token_strs: Option<Vec<String>>,
}

/// vLLM's `POST /detokenize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetokenizeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

// ---------------------------------------------------------------------------------------
// Models

/// `GET /v1/models`: `{"object": "list", "data": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

impl ModelList {
    pub fn new(data: Vec<ModelCard>) -> Self {
        Self {
            object: "list".into(),
            data,
        }
    }
}

/// One served model, with vLLM's fields (`root`, `parent`, `max_model_len`, `permission`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub owned_by: String,
    #[serde(default)]
    pub root: Option<String>,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub max_model_len: Option<usize>,
    #[serde(default)]
    pub permission: Vec<ModelPermission>,
}

impl ModelCard {
    /// A base model (`parent` null) with one permission entry, as vLLM lists it.
    pub fn new(
        id: impl Into<String>,
        created: u64,
        owned_by: impl Into<String>,
        root: impl Into<String>,
        max_model_len: usize,
    ) -> Self {
        let id = id.into();
        Self {
            permission: vec![ModelPermission::new(format!("modelperm-{id}"), created)],
            id,
            object: "model".into(),
            created,
            owned_by: owned_by.into(),
            root: Some(root.into()),
            parent: None,
            max_model_len: Some(max_model_len),
        }
    }
}

/// vLLM's fixed permission entry (clients do not read it; some expect the array).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelPermission {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub allow_create_engine: bool,
    pub allow_sampling: bool,
    pub allow_logprobs: bool,
    pub allow_search_indices: bool,
    pub allow_view: bool,
    pub allow_fine_tuning: bool,
    pub organization: String,
    pub group: Option<String>,
    pub is_blocking: bool,
}

impl ModelPermission {
    pub fn new(id: impl Into<String>, created: u64) -> Self {
        Self {
            id: id.into(),
            object: "model_permission".into(),
            created,
            allow_create_engine: false,
            allow_sampling: true,
            allow_logprobs: true,
            allow_search_indices: false,
            allow_view: true,
            allow_fine_tuning: false,
            organization: "*".into(),
            group: None,
            is_blocking: false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Responses: shared pieces

/// vLLM's `stop_reason`: the stop string or stop token id that ended the choice; null for
/// EOS, length, or anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StopReason {
    Token(u32),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

/// Token counts, in vLLM's field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
    pub completion_tokens: usize,
    /// Set only when some prompt tokens came from cache (vLLM with
    /// `--enable-prompt-tokens-details`): `null` in whole responses otherwise, absent in
    /// chunks.
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            completion_tokens,
            prompt_tokens_details: (cached_tokens > 0)
                .then_some(PromptTokensDetails { cached_tokens }),
        }
    }
}

/// Usage in a chunk: vLLM dumps chunks with `exclude_unset`/`exclude_none`, so an unset
/// `prompt_tokens_details` is left out rather than sent as null.
fn chunk_usage<S: Serializer>(u: &Option<Usage>, s: S) -> Result<S::Ok, S::Error> {
    let Some(u) = u else {
        return s.serialize_none();
    };
    let n = if u.prompt_tokens_details.is_some() {
        4
    } else {
        3
    };
    let mut st = s.serialize_struct("Usage", n)?;
    st.serialize_field("prompt_tokens", &u.prompt_tokens)?;
    st.serialize_field("total_tokens", &u.total_tokens)?;
    st.serialize_field("completion_tokens", &u.completion_tokens)?;
    if let Some(d) = &u.prompt_tokens_details {
        st.serialize_field("prompt_tokens_details", d)?;
    }
    st.end()
}

/// vLLM replaces -inf (and NaN) logprobs by -9999 so that they are valid JSON.
fn clamp_logprob(lp: f32) -> f64 {
    if lp.is_nan() {
        -9999.0
    } else {
        f64::from(lp).max(-9999.0)
    }
}

/// One alternative in chat logprobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f64,
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
}

impl ChatTopLogprob {
    /// `bytes` are the token's UTF-8, as vLLM sends them.
    pub fn new(token: impl Into<String>, logprob: f32) -> Self {
        let token = token.into();
        Self {
            bytes: Some(token.as_bytes().to_vec()),
            token,
            logprob: clamp_logprob(logprob),
        }
    }
}

/// One sampled token in chat logprobs, with its alternatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatLogprob {
    pub token: String,
    pub logprob: f64,
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
    #[serde(default)]
    pub top_logprobs: Vec<ChatTopLogprob>,
}

impl ChatLogprob {
    pub fn new(token: impl Into<String>, logprob: f32, top_logprobs: Vec<ChatTopLogprob>) -> Self {
        let t = ChatTopLogprob::new(token, logprob);
        Self {
            token: t.token,
            logprob: t.logprob,
            bytes: t.bytes,
            top_logprobs,
        }
    }
}

/// Chat logprobs: `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatLogprobs {
    #[serde(default)]
    pub content: Option<Vec<ChatLogprob>>,
}

/// A completions step's alternatives, `{token: logprob}` in rank order. A JSON object
/// cannot repeat a key: when two token ids decode alike the better-ranked one is kept,
/// as a Python dict keeps the first insertion's position.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopLogprobMap(pub Vec<(String, f64)>);

impl Serialize for TopLogprobMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if !self.0[..i].iter().any(|(seen, _)| seen == k) {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for TopLogprobMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLogprobMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of token → logprob")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<TopLogprobMap, A::Error> {
                let mut v = Vec::new();
                while let Some((k, lp)) = a.next_entry::<String, f64>()? {
                    v.push((k, lp));
                }
                Ok(TopLogprobMap(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Completions logprobs: parallel arrays, in vLLM's field order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    #[serde(default)]
    pub text_offset: Vec<usize>,
    #[serde(default)]
    pub token_logprobs: Vec<Option<f64>>,
    #[serde(default)]
    pub tokens: Vec<String>,
    #[serde(default)]
    pub top_logprobs: Vec<Option<TopLogprobMap>>,
    /// Where the next token starts, in characters of the choice's text.
    #[serde(skip)]
    next_offset: usize,
}

impl CompletionLogprobs {
    /// Empty, for text that starts `offset` characters into the choice (a stream chunk
    /// after earlier ones).
    pub fn starting_at(offset: usize) -> Self {
        Self {
            next_offset: offset,
            ..Self::default()
        }
    }

    /// Appends a token, its logprob and its alternatives (best first); `text_offset`
    /// advances by the token's length in characters, as vLLM counts it.
    pub fn push(&mut self, token: &str, logprob: f32, top: &[(String, f32)]) {
        self.text_offset.push(self.next_offset);
        self.next_offset += token.chars().count();
        self.tokens.push(token.to_string());
        self.token_logprobs.push(Some(clamp_logprob(logprob)));
        self.top_logprobs.push(Some(TopLogprobMap(
            top.iter()
                .map(|(t, lp)| (t.clone(), clamp_logprob(*lp)))
                .collect(),
        )));
    }
}

// ---------------------------------------------------------------------------------------
// Chat responses

/// The prefix of chat completion ids.
pub const CHAT_ID_PREFIX: &str = "chatcmpl-";
/// The prefix of completion ids.
pub const COMPLETION_ID_PREFIX: &str = "cmpl-";

/// The assistant's message, with every field vLLM's `ChatMessage` dumps (nulls and an
/// empty `tool_calls` included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub refusal: Option<String>,
    #[serde(default)]
    pub annotations: Option<Value>,
    #[serde(default)]
    pub audio: Option<Value>,
    #[serde(default)]
    pub function_call: Option<Value>,
    #[serde(default)]
    pub tool_calls: Vec<Value>,
    #[serde(default)]
    pub reasoning_content: Option<String>,
}

impl AssistantMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: Some(content.into()),
            refusal: None,
            annotations: None,
            audio: None,
            function_call: None,
            tool_calls: Vec::new(),
            reasoning_content: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    #[serde(default)]
    pub logprobs: Option<ChatLogprobs>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub stop_reason: Option<StopReason>,
}

/// A whole chat answer (`"object": "chat.completion"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    #[serde(default)]
    pub service_tier: Option<String>,
    #[serde(default)]
    pub system_fingerprint: Option<String>,
    pub usage: Usage,
    #[serde(default)]
    pub prompt_logprobs: Option<Value>,
    /// vLLM's P/D field: what the prefill leg hands the decode leg.
    #[serde(default)]
    pub kv_transfer_params: Option<Value>,
}

impl ChatCompletionResponse {
    pub fn new(
        id: String,
        created: u64,
        model: String,
        text: String,
        finish_reason: &str,
        usage: Usage,
        kv_transfer_params: Option<Value>,
    ) -> Self {
        Self {
            id,
            object: "chat.completion".into(),
            created,
            model,
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage::new("assistant", text),
                logprobs: None,
                finish_reason: Some(finish_reason.into()),
                stop_reason: None,
            }],
            service_tier: None,
            system_fingerprint: None,
            usage,
            prompt_logprobs: None,
            kv_transfer_params,
        }
    }

    pub fn with_logprobs(mut self, logprobs: ChatLogprobs) -> Self {
        if let Some(c) = self.choices.first_mut() {
            c.logprobs = Some(logprobs);
        }
        self
    }

    pub fn with_stop_reason(mut self, stop_reason: Option<StopReason>) -> Self {
        if let Some(c) = self.choices.first_mut() {
            c.stop_reason = stop_reason;
        }
        self
    }
}

/// A chunk's delta: only what changed (vLLM leaves unset fields out).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a chat chunk. `logprobs` and `finish_reason` are always sent (null
/// until set); `stop_reason` only on the chunk that finishes, as vLLM sets it there only.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    #[serde(default)]
    pub logprobs: Option<ChatLogprobs>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub stop_reason: Option<StopReason>,
}

impl Serialize for ChunkChoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let finishing = self.finish_reason.is_some();
        let mut st = s.serialize_struct("ChunkChoice", if finishing { 5 } else { 4 })?;
        st.serialize_field("index", &self.index)?;
        st.serialize_field("delta", &self.delta)?;
        st.serialize_field("logprobs", &self.logprobs)?;
        st.serialize_field("finish_reason", &self.finish_reason)?;
        if finishing {
            st.serialize_field("stop_reason", &self.stop_reason)?;
        }
        st.end()
    }
}

/// A chat stream chunk (`"object": "chat.completion.chunk"`). `usage` is left out unless
/// set: in the final usage chunk (no choices), or in every chunk with continuous usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "chunk_usage"
    )]
    pub usage: Option<Usage>,
}

impl ChatCompletionChunk {
    /// One choice's delta. vLLM opens a stream with `role: "assistant"` and empty content.
    pub fn new(
        id: &str,
        created: u64,
        model: &str,
        role: Option<&str>,
        content: Option<&str>,
        finish_reason: Option<&str>,
    ) -> Self {
        Self {
            id: id.into(),
            object: "chat.completion.chunk".into(),
            created,
            model: model.into(),
            choices: vec![ChunkChoice {
                index: 0,
                delta: Delta {
                    role: role.map(Into::into),
                    content: content.map(Into::into),
                },
                logprobs: None,
                finish_reason: finish_reason.map(Into::into),
                stop_reason: None,
            }],
            usage: None,
        }
    }

    /// The last chunk when `stream_options.include_usage`: no choices, the usage.
    pub fn usage_only(id: &str, created: u64, model: &str, usage: Usage) -> Self {
        Self {
            id: id.into(),
            object: "chat.completion.chunk".into(),
            created,
            model: model.into(),
            choices: Vec::new(),
            usage: Some(usage),
        }
    }

    pub fn with_logprobs(mut self, logprobs: ChatLogprobs) -> Self {
        if let Some(c) = self.choices.first_mut() {
            c.logprobs = Some(logprobs);
        }
        self
    }

    /// Sent only on a finishing chunk (one with a `finish_reason`).
    pub fn with_stop_reason(mut self, stop_reason: Option<StopReason>) -> Self {
        if let Some(c) = self.choices.first_mut() {
            c.stop_reason = stop_reason;
        }
        self
    }

    /// Usage so far, for `continuous_usage_stats`.
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = Some(usage);
        self
    }
}

// ---------------------------------------------------------------------------------------
// Completion responses

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    #[serde(default)]
    pub logprobs: Option<CompletionLogprobs>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub stop_reason: Option<StopReason>,
    #[serde(default)]
    pub prompt_logprobs: Option<Value>,
}

/// A whole completions answer (`"object": "text_completion"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(default)]
    pub service_tier: Option<String>,
    #[serde(default)]
    pub system_fingerprint: Option<String>,
    pub usage: Usage,
    /// vLLM's P/D field: what the prefill leg hands the decode leg.
    #[serde(default)]
    pub kv_transfer_params: Option<Value>,
}

impl CompletionResponse {
    pub fn new(
        id: String,
        created: u64,
        model: String,
        text: String,
        finish_reason: &str,
        usage: Usage,
        kv_transfer_params: Option<Value>,
    ) -> Self {
        Self {
            id,
            object: "text_completion".into(),
            created,
            model,
            choices: vec![CompletionChoice {
                index: 0,
                text,
                logprobs: None,
                finish_reason: Some(finish_reason.into()),
                stop_reason: None,
                prompt_logprobs: None,
            }],
            service_tier: None,
            system_fingerprint: None,
            usage,
            kv_transfer_params,
        }
    }

    pub fn with_logprobs(mut self, logprobs: CompletionLogprobs) -> Self {
        if let Some(c) = self.choices.first_mut() {
            c.logprobs = Some(logprobs);
        }
        self
    }

    pub fn with_stop_reason(mut self, stop_reason: Option<StopReason>) -> Self {
        if let Some(c) = self.choices.first_mut() {
            c.stop_reason = stop_reason;
        }
        self
    }
}

/// One choice of a completions chunk: every field, nulls included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionStreamChoice {
    pub index: u32,
    pub text: String,
    #[serde(default)]
    pub logprobs: Option<CompletionLogprobs>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub stop_reason: Option<StopReason>,
}

/// A completions stream chunk: `"usage": null` except in the final usage chunk (no
/// choices) or with continuous usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionStreamChoice>,
    #[serde(default, serialize_with = "chunk_usage")]
    pub usage: Option<Usage>,
}

impl CompletionChunk {
    pub fn new(
        id: &str,
        created: u64,
        model: &str,
        text: &str,
        finish_reason: Option<&str>,
    ) -> Self {
        Self {
            id: id.into(),
            object: "text_completion".into(),
            created,
            model: model.into(),
            choices: vec![CompletionStreamChoice {
                index: 0,
                text: text.into(),
                logprobs: None,
                finish_reason: finish_reason.map(Into::into),
                stop_reason: None,
            }],
            usage: None,
        }
    }

    /// The last chunk when `stream_options.include_usage`: no choices, the usage.
    pub fn usage_only(id: &str, created: u64, model: &str, usage: Usage) -> Self {
        Self {
            id: id.into(),
            object: "text_completion".into(),
            created,
            model: model.into(),
            choices: Vec::new(),
            usage: Some(usage),
        }
    }

    pub fn with_logprobs(mut self, logprobs: CompletionLogprobs) -> Self {
        if let Some(c) = self.choices.first_mut() {
            c.logprobs = Some(logprobs);
        }
        self
    }

    pub fn with_stop_reason(mut self, stop_reason: Option<StopReason>) -> Self {
        if let Some(c) = self.choices.first_mut() {
            c.stop_reason = stop_reason;
        }
        self
    }

    /// Usage so far, for `continuous_usage_stats`.
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = Some(usage);
        self
    }
}
