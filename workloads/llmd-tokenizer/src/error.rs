//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while building a tokenizer, tokenizing, or rendering a chat.
#[derive(thiserror::Error, Debug)]
pub enum TokenizerError {
    /// An error from the `tokenizers` library (building, encoding, decoding).
    #[error("tokenizer: {0}")]
    Backend(String),
    /// The GGUF vocabulary is malformed (empty, inconsistent lengths, bad ids).
    #[error("invalid vocabulary: {0}")]
    InvalidVocab(String),
    /// A vocabulary kind we cannot build (`tokenizer.ggml.model` other than gpt2/llama).
    #[error("unsupported tokenizer model {0:?} (supported: \"gpt2\", \"llama\")")]
    UnsupportedModel(String),
    /// A configuration file is malformed.
    #[error("invalid config {path}: {msg}")]
    InvalidConfig { path: PathBuf, msg: String },
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// JSON (de)serialization of the portable tokenizer form failed.
    #[error("tokenizer json: {0}")]
    Json(#[from] serde_json::Error),
    /// `apply_chat_template` on a model that ships no chat template.
    #[error("model has no chat template")]
    NoChatTemplate,
    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// The chat template called `raise_exception(msg)`, e.g. for an unsupported role order.
    #[error("chat template raised: {0}")]
    TemplateRaised(String),
}

pub(crate) fn backend(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Backend(e.to_string())
}
