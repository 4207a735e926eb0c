//! The library's error type: hook tools that fail or print what we cannot parse, a hook
//! environment we cannot read, databags that do not fit a type, files, systemd.

use std::path::PathBuf;

/// Everything the library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- hook tools ---
    /// A hook tool could not be started: outside a Juju hook it is not on `PATH`.
    #[error("cannot run hook tool {tool}: {source}")]
    ToolSpawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    /// A hook tool ran and exited non-zero; `stderr` is Juju's `ERROR ...` line.
    #[error("{tool} failed{}: {stderr}", code.map(|c| format!(" (exit {c})")).unwrap_or_default())]
    ToolFailed {
        tool: String,
        /// The arguments, with values that may be secret (action results) left out.
        args: Vec<String>,
        code: Option<i32>,
        stderr: String,
    },
    /// A hook tool printed something that is not what Juju prints.
    #[error("cannot parse the output of {tool} ({reason}): {output:?}")]
    ToolOutput {
        tool: String,
        output: String,
        reason: String,
    },

    // --- environment and data ---
    /// The hook environment (`JUJU_*` variables) is missing or malformed.
    #[error("hook environment: {0}")]
    Env(String),
    /// A value does not fit a databag, or a databag does not fit the type asked for.
    #[error("databag: {0}")]
    Databag(String),
    /// Config, action parameters or stored state do not fit the type asked for.
    #[error("{what}: {reason}")]
    Decode { what: String, reason: String },
    /// An argument the caller gave is not one Juju accepts (checked before calling).
    #[error("{0}")]
    Invalid(String),

    // --- the machine ---
    /// `systemctl` failed.
    #[error("systemctl {args} failed{}: {stderr}", code.map(|c| format!(" (exit {c})")).unwrap_or_default())]
    Systemctl {
        args: String,
        code: Option<i32>,
        stderr: String,
    },
    /// A file under the charm's filesystem root.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn output(tool: &str, output: &str, reason: impl ToString) -> Self {
        Error::ToolOutput {
            tool: tool.to_string(),
            output: output.to_string(),
            reason: reason.to_string(),
        }
    }
}
