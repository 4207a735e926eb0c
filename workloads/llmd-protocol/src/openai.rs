//! The OpenAI HTTP API as vLLM serves it: request bodies (lenient: unknown fields are
//! ignored, as clients send many), their validation into sampling settings (errors name the
//! offending `param`), responses and stream chunks shaped as vLLM sends them, and
//! OpenAI-shaped errors. Shared by the worker (server) and the scheduler (gateway, client).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The data of the event that ends an OpenAI stream (`data: [DONE]`).
pub const SSE_DONE_DATA: &str = "[DONE]";

/// `data: {json}\n\n`, one server-sent event.
pub fn sse_data<T: Serialize>(v: &T) -> String {
    format!(
        "data: {}\n\n",
        serde_json::to_string(v).unwrap_or_else(|_| "null".into())
    )
}

// ---------------------------------------------------------------------------------------
// Errors

/// `{"error": {"message", "type", "param", "code"}}`; `code` is the HTTP status, as vLLM
/// sets it, and `type` OpenAI's error type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<u16>,
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

    /// 400: the request is malformed or asks for something invalid.
    pub fn invalid_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(400, "invalid_request_error", message, param)
    }

    /// 404: no such model (or route).
    pub fn not_found(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(404, "invalid_request_error", message, param)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "invalid_request_error", message, None)
    }

    /// 413: the body is over the server's limit.
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(413, "invalid_request_error", message, None)
    }

    /// 503: too much queued; the client should retry later (with Retry-After).
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(503, "server_overloaded", message, None)
    }

    /// 502: an upstream (worker) failed.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(502, "server_error", message, None)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "server_error", message, None)
    }

    /// The HTTP status to send it with.
    pub fn status(&self) -> u16 {
        self.error.code.unwrap_or(500)
    }
}

// ---------------------------------------------------------------------------------------
// Requests

/// `stop`: one string or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
    #[serde(default)]
    pub continuous_usage_stats: Option<bool>,
}

/// The sampling fields chat and completions share. Numbers are read wide (i64 / f64) so
/// that out-of-range values get our message naming the field, not a serde type error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingFields {
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// vLLM's extension; -1 or 0 disable it.
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    /// vLLM's extension: token ids that also end generation.
    pub stop_token_ids: Option<Vec<u32>>,
    pub n: Option<i64>,
    /// Chat: a bool; completions: the number of top logprobs. Not supported yet.
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<i64>,
    /// Accepted at 0 (what clients send by default); the engine applies no penalties yet.
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    /// vLLM's extension: keep generating past EOS.
    pub ignore_eos: Option<bool>,
    pub user: Option<String>,
}

/// What the engine needs from a validated request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingSettings {
    /// `max_completion_tokens` if given, else `max_tokens`; `None`: up to the context.
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
}

fn bad(message: impl Into<String>, param: &str) -> ErrorResponse {
    ErrorResponse::invalid_request(message, Some(param))
}

impl SamplingFields {
    pub fn validate(&self) -> Result<SamplingSettings, ErrorResponse> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(bad(
                    format!("n must be 1 (got {n}): one choice per request"),
                    "n",
                ));
            }
        }
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => Some(("max_completion_tokens", v)),
            (None, Some(v)) => Some(("max_tokens", v)),
            (None, None) => None,
        };
        let max_tokens = match max_tokens {
            None => None,
            Some((p, v)) => match u32::try_from(v) {
                Ok(v) if v >= 1 => Some(v),
                _ => return Err(bad(format!("{p} must be at least 1, got {v}"), p)),
            },
        };
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(bad(
                    format!("temperature must be in [0, 2], got {t}"),
                    "temperature",
                ));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(bad(format!("top_p must be in (0, 1], got {p}"), "top_p"));
            }
        }
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => None,
            Some(k) if k > 0 => Some(k as usize),
            Some(k) => {
                return Err(bad(
                    format!("top_k must be -1 (off) or at least 1, got {k}"),
                    "top_k",
                ))
            }
        };
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            match v {
                Some(x) if !(-2.0..=2.0).contains(&x) => {
                    return Err(bad(format!("{name} must be in [-2, 2], got {x}"), name))
                }
                Some(x) if x != 0.0 => {
                    return Err(bad(
                        format!(
                            "{name} is not supported by this server yet; send 0 or leave it out"
                        ),
                        name,
                    ))
                }
                _ => {}
            }
        }
        if let Some(r) = self.repetition_penalty {
            if r != 1.0 {
                return Err(bad("repetition_penalty is not supported by this server yet; send 1 or leave it out", "repetition_penalty"));
            }
        }
        let wants_logprobs = match &self.logprobs {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Number(n)) => n.as_i64() != Some(0),
            Some(_) => true,
        };
        if wants_logprobs || self.top_logprobs.is_some_and(|n| n > 0) {
            return Err(bad(
                "logprobs are not supported by this server yet",
                "logprobs",
            ));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
        Ok(SamplingSettings {
            max_tokens,
            temperature: self.temperature.map(|t| t as f32),
            top_p: self.top_p.map(|p| p as f32),
            top_k,
            // Seeds are 64-bit patterns; a negative one is as good as its bits.
            seed: self.seed.map(|s| s as u64),
            stop,
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
        })
    }
}

/// A chat message's content: a string, or content parts of which only text is supported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub name: Option<String>,
}

impl Message {
    /// The message's text: its string, or its text parts joined by newlines (vLLM's way).
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
        const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "developer"];
        if !ROLES.contains(&self.role.as_str()) {
            return Err(bad(
                format!(
                    "messages[{i}].role must be one of {}, got {:?}",
                    ROLES.join(", "),
                    self.role
                ),
                "messages",
            ));
        }
        if let Some(Content::Parts(parts)) = &self.content {
            if let Some(p) = parts.iter().find(|p| p.kind != "text" || p.text.is_none()) {
                return Err(bad(
                    format!(
                        "messages[{i}]: content parts of type {:?} are not supported (text only)",
                        p.kind
                    ),
                    "messages",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// vLLM's extension (default true).
    #[serde(default)]
    pub add_generation_prompt: Option<bool>,
    /// vLLM's P/D field, passed through opaque.
    #[serde(default)]
    pub kv_transfer_params: Option<Value>,
}

impl ChatCompletionRequest {
    pub fn validate(&self) -> Result<SamplingSettings, ErrorResponse> {
        if self.messages.is_empty() {
            return Err(bad("messages must not be empty", "messages"));
        }
        for (i, m) in self.messages.iter().enumerate() {
            m.validate(i)?;
        }
        self.sampling.validate()
    }

    pub fn include_usage(&self) -> bool {
        self.stream.unwrap_or(false)
            && self
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false)
    }
}

/// A completions prompt after validation.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// A string, token ids, or a one-element array of either.
    pub prompt: Value,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub kv_transfer_params: Option<Value>,
}

fn token_ids(v: &[Value]) -> Option<Vec<u32>> {
    v.iter()
        .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect()
}

impl CompletionRequest {
    pub fn validate(&self) -> Result<SamplingSettings, ErrorResponse> {
        if self.echo == Some(true) {
            return Err(bad("echo is not supported by this server", "echo"));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(bad("suffix is not supported by this server", "suffix"));
        }
        self.prompt_input()?;
        self.sampling.validate()
    }

    pub fn include_usage(&self) -> bool {
        self.stream.unwrap_or(false)
            && self
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false)
    }

    pub fn prompt_input(&self) -> Result<PromptInput, ErrorResponse> {
        let one = |v: &Value| -> Option<PromptInput> {
            match v {
                Value::String(s) => Some(PromptInput::Text(s.clone())),
                Value::Array(a) if !a.is_empty() => token_ids(a).map(PromptInput::Tokens),
                _ => None,
            }
        };
        let shape_error = || {
            bad(
                "prompt must be a string, an array of token ids, or a one-element array of either",
                "prompt",
            )
        };
        match &self.prompt {
            Value::Array(a) if a.len() == 1 && !a[0].is_number() => {
                one(&a[0]).ok_or_else(shape_error)
            }
            Value::Array(a) if a.len() > 1 && a.iter().all(|x| x.is_string() || x.is_array()) => {
                Err(bad(
                    "several prompts in one request are not supported; send one request per prompt",
                    "prompt",
                ))
            }
            Value::String(s) if s.is_empty() => Err(bad("prompt must not be empty", "prompt")),
            v => one(v).ok_or_else(shape_error),
        }
    }
}

/// vLLM's `POST /tokenize`: a prompt, or chat messages rendered with the template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenizeRequest {
    Chat {
        #[serde(default)]
        model: Option<String>,
        messages: Vec<Message>,
        #[serde(default)]
        add_generation_prompt: Option<bool>,
        #[serde(default)]
        add_special_tokens: Option<bool>,
    },
    Completion {
        #[serde(default)]
        model: Option<String>,
        prompt: String,
        #[serde(default)]
        add_special_tokens: Option<bool>,
    },
}

impl TokenizeRequest {
    pub fn model(&self) -> Option<&str> {
        match self {
            TokenizeRequest::Chat { model, .. } | TokenizeRequest::Completion { model, .. } => {
                model.as_deref()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
    pub token_strs: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetokenizeRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

// ---------------------------------------------------------------------------------------
// Responses

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: String,
    pub content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<Value>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
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
                message: AssistantMessage {
                    role: "assistant".into(),
                    content: Some(text),
                },
                logprobs: None,
                finish_reason: Some(finish_reason.into()),
            }],
            usage,
            kv_transfer_params,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<Value>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl ChatCompletionChunk {
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<Value>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Usage,
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
            }],
            usage,
            kv_transfer_params,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
            choices: vec![CompletionChoice {
                index: 0,
                text: text.into(),
                logprobs: None,
                finish_reason: finish_reason.map(Into::into),
            }],
            usage: None,
        }
    }

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(v: Value) -> ChatCompletionRequest {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_what_the_openai_client_sends() {
        let r = chat(json!({
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ],
            "model": "m", "max_tokens": 8, "stream": true,
            "stream_options": {"include_usage": true}, "temperature": 0, "stop": "\n",
            "frequency_penalty": 0, "presence_penalty": 0, "logprobs": false,
            "tools": [], "metadata": {"x": 1}
        }));
        assert_eq!(r.messages[1].text(), "a\nb");
        assert!(r.include_usage());
        let s = r.validate().unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(s.max_tokens, Some(8));
        assert_eq!(s.stop, vec!["\n".to_string()]);
        assert_eq!(s.temperature, Some(0.0));
    }

    #[test]
    fn validation_names_the_param() {
        let base = json!({"messages": [{"role": "user", "content": "x"}]});
        let case = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            chat(b).validate().err().and_then(|e| e.error.param)
        };
        assert_eq!(case("n", json!(2)).as_deref(), Some("n"));
        assert_eq!(
            case("temperature", json!(2.5)).as_deref(),
            Some("temperature")
        );
        assert_eq!(case("top_p", json!(0)).as_deref(), Some("top_p"));
        assert_eq!(case("max_tokens", json!(0)).as_deref(), Some("max_tokens"));
        assert_eq!(
            case("max_completion_tokens", json!(-3)).as_deref(),
            Some("max_completion_tokens")
        );
        assert_eq!(case("top_k", json!(-2)).as_deref(), Some("top_k"));
        assert_eq!(case("logprobs", json!(true)).as_deref(), Some("logprobs"));
        assert_eq!(
            case("presence_penalty", json!(0.5)).as_deref(),
            Some("presence_penalty")
        );
        assert_eq!(case("n", json!(1)), None);
        let e = chat(json!({"messages": [{"role": "robot", "content": "x"}]})).validate();
        assert_eq!(e.err().map(|e| e.status()), Some(400));
        let e = chat(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}))
            .validate();
        assert!(e.is_err());
        assert!(chat(json!({"messages": []})).validate().is_err());
        // max_completion_tokens wins over max_tokens, as in OpenAI's API.
        let s = chat(json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "max_completion_tokens": 7}))
            .validate()
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(s.max_tokens, Some(7));
    }

    #[test]
    fn completion_prompts() {
        let p = |v: Value| {
            serde_json::from_value::<CompletionRequest>(json!({"prompt": v}))
                .unwrap_or_else(|e| panic!("{e}"))
                .prompt_input()
        };
        assert_eq!(p(json!("hi")).ok(), Some(PromptInput::Text("hi".into())));
        assert_eq!(p(json!(["hi"])).ok(), Some(PromptInput::Text("hi".into())));
        assert_eq!(
            p(json!([1, 2, 3])).ok(),
            Some(PromptInput::Tokens(vec![1, 2, 3]))
        );
        assert_eq!(
            p(json!([[4, 5]])).ok(),
            Some(PromptInput::Tokens(vec![4, 5]))
        );
        assert_eq!(p(json!([7])).ok(), Some(PromptInput::Tokens(vec![7])));
        for bad in [
            json!(["a", "b"]),
            json!([-1]),
            json!(""),
            json!(3),
            json!([]),
            json!({"a": 1}),
        ] {
            let e = p(bad.clone())
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(e.error.param.as_deref(), Some("prompt"));
        }
    }

    #[test]
    fn responses_and_errors_serialize_as_vllm() {
        let r = ChatCompletionResponse::new(
            "chatcmpl-1".into(),
            5,
            "m".into(),
            "hi".into(),
            "stop",
            Usage::new(3, 1, 0),
            None,
        );
        let v = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(
            v["choices"][0]["message"],
            json!({"role": "assistant", "content": "hi"})
        );
        assert_eq!(v["choices"][0]["logprobs"], Value::Null);
        assert_eq!(v["usage"]["total_tokens"], 4);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        let c = ChatCompletionChunk::new("x", 1, "m", Some("assistant"), Some(""), None);
        let v = serde_json::to_value(&c).unwrap_or_default();
        assert_eq!(
            v["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert!(v.get("usage").is_none());
        let u = CompletionChunk::usage_only("x", 1, "m", Usage::new(1, 2, 0));
        let v = serde_json::to_value(&u).unwrap_or_default();
        assert_eq!(v["choices"], json!([]));
        assert_eq!(v["usage"]["completion_tokens"], 2);
        let e = ErrorResponse::not_found("The model `x` does not exist.", Some("model"));
        assert_eq!(
            serde_json::to_value(&e).unwrap_or_default(),
            json!({"error": {"message": "The model `x` does not exist.", "type": "invalid_request_error", "param": "model", "code": 404}})
        );
        assert_eq!(sse_data(&json!({"a": 1})), "data: {\"a\":1}\n\n");
    }

    #[test]
    fn tokenize_requests() {
        let t: TokenizeRequest = serde_json::from_value(json!({"model": "m", "prompt": "hi"}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(t, TokenizeRequest::Completion { .. }));
        assert_eq!(t.model(), Some("m"));
        let t: TokenizeRequest =
            serde_json::from_value(json!({"messages": [{"role": "user", "content": "x"}]}))
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(t, TokenizeRequest::Chat { .. }));
    }
}
