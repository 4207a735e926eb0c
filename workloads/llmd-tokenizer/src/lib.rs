//! Tokenization exactly as the served model does it: vocabularies from GGUF metadata or HF
//! `tokenizer.json`, chat templates, streaming detokenization and stop strings.
//!
//! The engine builds a [`Tokenizer`] from the model; the scheduler gets the same tokenizer
//! through [`Tokenizer::to_json`] / [`Tokenizer::from_json`] so that both tokenize identically.

mod cache;
mod chat;
mod error;
mod gguf;
mod hf;
mod stop;
mod stream;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use cache::CachedEncoder;
pub use chat::ChatMessage;
pub use error::TokenizerError;
pub use gguf::GgufVocab;
pub use stop::{StopMatcher, StopResult};
pub use stream::IncrementalDecoder;

use chat::{ChatTemplate, TemplateTokens};
use error::backend;

/// Identifies the portable JSON form; bump on incompatible changes.
const FORMAT: &str = "llmd-tokenizer/1";

/// What besides tokenizer.json is needed to tokenize and render chats identically.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub(crate) struct Meta {
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
    pub bos_token_id: Option<u32>,
    /// Ids that end generation: the eos token first, then others the model declares.
    pub eos_token_ids: Vec<u32>,
    /// Whether `encode(.., add_special_tokens = true)` prepends BOS.
    pub add_bos_token: bool,
    pub vocab_size: usize,
}

/// The portable form written by `to_json`.
#[derive(Serialize, Deserialize)]
struct Portable {
    format: String,
    #[serde(flatten)]
    meta: Meta,
    /// The content of a tokenizer.json.
    tokenizer: serde_json::Value,
}

struct Inner {
    tok: tokenizers::Tokenizer,
    meta: Meta,
    /// The compiled template, or why it failed to compile (reported on use: a model with a
    /// broken template can still serve completions).
    template: Option<Result<ChatTemplate, String>>,
}

/// A model's tokenizer. Cheap to clone; shareable across threads.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.inner.meta.vocab_size)
            .field("bos_token_id", &self.inner.meta.bos_token_id)
            .field("eos_token_ids", &self.inner.meta.eos_token_ids)
            .field("add_bos_token", &self.inner.meta.add_bos_token)
            .field("chat_template", &self.inner.meta.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    fn new(tok: tokenizers::Tokenizer, meta: Meta) -> Self {
        let template = meta.chat_template.as_deref().map(|src| {
            ChatTemplate::compile(src).map_err(|e| {
                tracing::warn!(error = %e, "the model's chat template does not compile");
                e.to_string()
            })
        });
        Self {
            inner: Arc::new(Inner {
                tok,
                meta,
                template,
            }),
        }
    }

    /// Builds the tokenizer described by GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(v: GgufVocab) -> Result<Self, TokenizerError> {
        let (tok, meta) = gguf::build(v)?;
        Ok(Self::new(tok, meta))
    }

    /// Loads the HF layout: tokenizer.json, with bos/eos and the chat template from
    /// tokenizer_config.json and eos ids also from generation_config.json.
    pub fn from_files(
        tokenizer_json: &Path,
        tokenizer_config_json: Option<&Path>,
        generation_config_json: Option<&Path>,
    ) -> Result<Self, TokenizerError> {
        let (tok, meta) = hf::load(
            tokenizer_json,
            tokenizer_config_json,
            generation_config_json,
        )?;
        Ok(Self::new(tok, meta))
    }

    /// Rebuilds a tokenizer from [`Tokenizer::to_json`] output.
    pub fn from_json(s: &str) -> Result<Self, TokenizerError> {
        let p: Portable = serde_json::from_str(s)?;
        if p.format != FORMAT {
            return Err(TokenizerError::Json(serde::de::Error::custom(format!(
                "unsupported tokenizer json format {:?} (expected {FORMAT:?})",
                p.format
            ))));
        }
        // Through a string: some tokenizers deserializers need borrowed input.
        let tok: tokenizers::Tokenizer = p.tokenizer.to_string().parse().map_err(backend)?;
        Ok(Self::new(tok, p.meta))
    }

    /// Everything needed to tokenize identically elsewhere: the tokenizer.json content, the
    /// chat template, bos/eos and whether BOS is added.
    pub fn to_json(&self) -> Result<String, TokenizerError> {
        let tokenizer = serde_json::from_str(&self.inner.tok.to_string(false).map_err(backend)?)?;
        Ok(serde_json::to_string(&Portable {
            format: FORMAT.to_owned(),
            meta: self.inner.meta.clone(),
            tokenizer,
        })?)
    }

    /// Token ids of `text`. Special-token text (e.g. "<|im_start|>") becomes its single id.
    /// `add_special_tokens` adds what the model wants around a prompt (BOS when
    /// `add_bos_token`), as vLLM does for completions; rendered chat templates already carry
    /// their special tokens, so encode those with `false`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .tok
            .encode_fast(text, add_special_tokens)
            .map_err(backend)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; unknown ids are skipped.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        self.inner
            .tok
            .decode(ids, skip_special_tokens)
            .map_err(backend)
    }

    /// Number of token ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.meta.vocab_size
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.inner.meta.bos_token_id
    }

    /// Whether `encode(text, true)` prepends BOS.
    pub fn add_bos_token(&self) -> bool {
        self.inner.meta.add_bos_token
    }

    /// Ids that end generation: eos first, then end-of-turn tokens the model declares.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.inner.meta.eos_token_ids
    }

    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.tok.token_to_id(s)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.tok.id_to_token(id)
    }

    /// The model's chat template source, if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.inner.meta.chat_template.as_deref()
    }

    /// Renders `messages` with the model's chat template (HF transformers semantics).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template = match &self.inner.template {
            None => return Err(TokenizerError::NoChatTemplate),
            Some(Err(e)) => return Err(TokenizerError::Template(e.clone())),
            Some(Ok(t)) => t,
        };
        let m = &self.inner.meta;
        let tokens = TemplateTokens {
            bos_token: m.bos_token.as_deref(),
            eos_token: m.eos_token.as_deref(),
            unk_token: m.unk_token.as_deref(),
            pad_token: m.pad_token.as_deref(),
        };
        template.render(messages, add_generation_prompt, &tokens)
    }

    /// A streaming detokenizer for one generated sequence.
    pub fn decoder(&self) -> IncrementalDecoder {
        IncrementalDecoder::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn tokenizer_is_send_sync_clone() {
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<IncrementalDecoder>();
    }
}
