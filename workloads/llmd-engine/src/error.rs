//! The engine's error type.

use std::path::PathBuf;

/// Everything that can go wrong loading a model or running it.
#[derive(thiserror::Error, Debug)]
pub enum EngineError {
    /// The model file or directory could not be used.
    #[error("{path}: {reason}")]
    BadModel { path: PathBuf, reason: String },
    /// The model is well-formed but of an architecture we do not run.
    #[error("unsupported model architecture `{found}` (supported: {supported})")]
    UnsupportedArchitecture { found: String, supported: String },
    /// A required tensor or metadata key is missing or has the wrong shape.
    #[error("model weights: {0}")]
    Weights(String),
    /// The request cannot be served as asked (too long, bad sampling parameters).
    #[error("{0}")]
    InvalidRequest(String),
    /// The requested device cannot be used (unknown, not built in, or absent).
    #[error("device: {0}")]
    Device(String),
    /// The KV cache has too few blocks for this sequence.
    #[error("KV cache exhausted: {0}")]
    KvCacheFull(String),
    #[error(transparent)]
    Model(#[from] llmd_models::ModelError),
    #[error(transparent)]
    Tokenizer(#[from] llmd_tokenizer::TokenizerError),
    #[error(transparent)]
    Quant(#[from] llmd_quant::QuantError),
    /// A candle error, without the backtrace candle attaches when RUST_BACKTRACE is set.
    #[error("tensor: {0}")]
    Candle(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        Self::Candle(candle_text(&e))
    }
}

/// Candle's message alone: its `WithBacktrace` wrapper would print the whole stack.
pub fn candle_text(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_text(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", candle_text(inner))
        }
        other => other.to_string(),
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;
