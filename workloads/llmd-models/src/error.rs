//! The crate's error type; every variant displays as one line naming what went wrong where.

use std::io;
use std::path::{Path, PathBuf};

/// Why a model source could not be parsed, fetched or recognised.
#[derive(thiserror::Error, Debug)]
pub enum ModelError {
    /// A local model path does not exist.
    #[error("model path {} does not exist", .0.display())]
    NotFound(PathBuf),

    /// Something exists at `path` but is not a model this crate recognises.
    #[error("{}: {reason}", path.display())]
    NotAModel { path: PathBuf, reason: String },

    /// Content did not hash to the expected sha256.
    #[error("checksum mismatch for {}: expected sha256 {expected}, got {actual}", path.display())]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    /// Obtaining the default model failed (pip, the wheel, ...).
    #[error("cannot fetch the default model: {0}")]
    Fetch(String),

    /// A filesystem operation failed.
    // The source is repeated in the message on purpose: the CLI prints only Display.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The source is well-formed but this build cannot serve it.
    #[error("{0}")]
    Unsupported(String),

    /// The source string itself is malformed.
    #[error("invalid model source {input:?}: {reason}")]
    InvalidSource { input: String, reason: String },
}

impl ModelError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn not_a_model(path: &Path, reason: impl Into<String>) -> Self {
        ModelError::NotAModel {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// An I/O error while opening `path`, with "does not exist" reported as [`ModelError::NotFound`].
    pub(crate) fn open(path: &Path, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound {
            ModelError::NotFound(path.to_path_buf())
        } else {
            ModelError::io(path, source)
        }
    }
}
