//! The charm's entry point: builds the context, runs the charm, and turns its error into
//! what the operator sees — a `blocked`/`waiting` status with the reason, an action
//! failure, or (for real errors) the reason in the log and status and a non-zero exit so
//! Juju marks the hook failed and retries it. Nothing ends silently.

use std::error::Error as StdError;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;

use crate::context::Context;
use crate::tools::HookTools;
use crate::types::{LogLevel, Status};

/// Why a hook did not do its job.
pub enum CharmError {
    /// The charm needs the operator (bad config, missing resource): status `blocked`.
    Blocked(String),
    /// The charm waits for something that will come (a relation, its data): `waiting`.
    Waiting(String),
    /// Anything else: logged, status `blocked` with the reason, exit 1 (Juju retries).
    Failed(Box<dyn StdError + Send + Sync + 'static>),
}

/// The charm's `Result`.
pub type CharmResult<T = ()> = Result<T, CharmError>;

impl CharmError {
    pub fn blocked(message: impl Into<String>) -> Self {
        CharmError::Blocked(message.into())
    }
    pub fn waiting(message: impl Into<String>) -> Self {
        CharmError::Waiting(message.into())
    }
    pub fn failed(message: impl Into<String>) -> Self {
        CharmError::Failed(message.into().into())
    }
}

// Any error converts, so `?` works on library, io and serde errors alike. (CharmError is
// therefore not itself a std Error: the blanket impl would overlap.)
impl<E: StdError + Send + Sync + 'static> From<E> for CharmError {
    fn from(e: E) -> Self {
        CharmError::Failed(Box::new(e))
    }
}

impl fmt::Display for CharmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CharmError::Blocked(m) | CharmError::Waiting(m) => f.write_str(m),
            CharmError::Failed(e) => f.write_str(&chain(e.as_ref())),
        }
    }
}

impl fmt::Debug for CharmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CharmError::Blocked(m) => write!(f, "Blocked({m:?})"),
            CharmError::Waiting(m) => write!(f, "Waiting({m:?})"),
            CharmError::Failed(_) => write!(f, "Failed({:?})", self.to_string()),
        }
    }
}

/// An error with what the charm was doing when it happened.
#[derive(Debug)]
struct Contextual {
    message: String,
    source: Box<dyn StdError + Send + Sync + 'static>,
}

impl fmt::Display for Contextual {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for Contextual {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}

/// Adds the charm's view to an error: `.context("writing the worker config")?`, or makes
/// it the operator's problem: `.or_blocked("model-id")?` → `blocked: model-id: <error>`.
pub trait ResultExt<T> {
    fn context(self, message: impl fmt::Display) -> CharmResult<T>;
    fn or_blocked(self, message: impl fmt::Display) -> CharmResult<T>;
    fn or_waiting(self, message: impl fmt::Display) -> CharmResult<T>;
}

impl<T, E: StdError + Send + Sync + 'static> ResultExt<T> for Result<T, E> {
    fn context(self, message: impl fmt::Display) -> CharmResult<T> {
        self.map_err(|e| {
            CharmError::Failed(Box::new(Contextual {
                message: message.to_string(),
                source: Box::new(e),
            }))
        })
    }
    fn or_blocked(self, message: impl fmt::Display) -> CharmResult<T> {
        self.map_err(|e| CharmError::Blocked(format!("{message}: {}", chain(&e))))
    }
    fn or_waiting(self, message: impl fmt::Display) -> CharmResult<T> {
        self.map_err(|e| CharmError::Waiting(format!("{message}: {}", chain(&e))))
    }
}

/// `outer: inner: root`, skipping a cause whose text the outer message already repeats.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cur = s.source();
    }
    text
}

/// Runs the charm for the current dispatch and exits: `fn main() { juju_charm::run(charm) }`.
/// Call it first thing in `main` (before printing anything): under the test harness the same
/// binary also answers as the fake hook tools.
pub fn run<F>(charm: F) -> !
where
    F: FnOnce(&Context) -> CharmResult,
{
    std::process::exit(dispatch(charm))
}

/// [`run`] without the exit: returns the exit code.
pub fn dispatch<F>(charm: F) -> i32
where
    F: FnOnce(&Context) -> CharmResult,
{
    if let Some(code) = answer_as_hook_tool() {
        return code;
    }
    let ctx = match Context::from_env() {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("charm: {e}");
            let _ = HookTools::new().log(LogLevel::Error, &format!("charm: {e}"));
            return 1;
        }
    };
    let outcome = match panic::catch_unwind(AssertUnwindSafe(|| charm(&ctx))) {
        Ok(outcome) => outcome,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(CharmError::failed(format!("panicked: {what}")))
        }
    };
    finish(&ctx, outcome)
}

/// Juju shows one status line; long error chains are cut.
fn status_message(text: &str) -> String {
    const MAX: usize = 240;
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() <= MAX {
        return line.to_string();
    }
    let cut: String = line.chars().take(MAX - 1).collect();
    format!("{cut}…")
}

fn finish(ctx: &Context, outcome: CharmResult) -> i32 {
    let Err(err) = outcome else { return 0 };
    let event = ctx.event.name();
    let message = err.to_string();
    // Logging is best effort: the status or action result below carries the reason too.
    let log = |level, text: &str| {
        if ctx.log(level, text).is_err() {
            eprintln!("{text}");
        }
    };
    if ctx.event.is_action() {
        // An action's failure belongs to the action, not to the unit's status.
        log(
            LogLevel::Error,
            &format!("action {event} failed: {message}"),
        );
        return match ctx.action_fail(&message) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("action {event} failed: {message} (and action-fail failed: {e})");
                1
            }
        };
    }
    let (status, level, code, line) = match &err {
        CharmError::Blocked(m) => (
            Status::blocked(status_message(m)),
            LogLevel::Warning,
            0,
            format!("{event}: blocked: {message}"),
        ),
        CharmError::Waiting(m) => (
            Status::waiting(status_message(m)),
            LogLevel::Info,
            0,
            format!("{event}: waiting: {message}"),
        ),
        CharmError::Failed(_) => {
            let line = format!("{event} failed: {message}");
            eprintln!("{line}");
            (
                Status::blocked(status_message(&line)),
                LogLevel::Error,
                1,
                line,
            )
        }
    };
    log(level, &line);
    if let Err(e) = ctx.status_set(&status) {
        eprintln!("{event}: cannot set status {status}: {e}");
        return 1;
    }
    code
}

/// Every hook tool name (and `systemctl`, which the harness also fakes). A charm binary is
/// never run under one of these names except by the harness's symlinks.
pub(crate) const TOOL_NAMES: &[&str] = &[
    "action-fail",
    "action-get",
    "action-log",
    "action-set",
    "application-version-set",
    "close-port",
    "config-get",
    "goal-state",
    "is-leader",
    "juju-log",
    "network-get",
    "open-port",
    "opened-ports",
    "relation-get",
    "relation-ids",
    "relation-list",
    "relation-set",
    "resource-get",
    "state-delete",
    "state-get",
    "state-set",
    "status-get",
    "status-set",
    "unit-get",
    "systemctl",
    PROBE_NAME,
];

/// What the harness runs to check that a binary embeds the fake tools.
pub(crate) const PROBE_NAME: &str = "juju-charm-fake-probe";

fn answer_as_hook_tool() -> Option<i32> {
    let argv0 = std::env::args_os().next()?;
    let name = Path::new(&argv0).file_name()?.to_str()?.to_string();
    if !TOOL_NAMES.contains(&name.as_str()) {
        return None;
    }
    #[cfg(feature = "testing")]
    if let Some(code) = crate::testing::run_as(&name) {
        return Some(code);
    }
    // Without the harness, running the charm as a tool would dispatch the hook again from
    // inside itself; refuse instead.
    eprintln!(
        "{name}: this is a charm binary, not a Juju hook tool (the test harness needs it built with juju-charm's `testing` feature)"
    );
    Some(127)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug)]
    struct Inner;
    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("connection refused")
        }
    }
    impl StdError for Inner {}

    #[test]
    fn errors_read_as_a_chain() {
        let r: Result<(), Inner> = Err(Inner);
        let e = r.context("fetching the model").unwrap_err();
        assert_eq!(e.to_string(), "fetching the model: connection refused");
        let r: Result<(), Inner> = Err(Inner);
        match r.or_blocked("model-id").unwrap_err() {
            CharmError::Blocked(m) => assert_eq!(m, "model-id: connection refused"),
            other => panic!("{other:?}"),
        }
        let io: CharmError = std::io::Error::other("disk full").into();
        assert_eq!(io.to_string(), "disk full");
    }

    #[test]
    fn status_messages_are_one_short_line() {
        assert_eq!(status_message("a\nb"), "a");
        let long = "x".repeat(500);
        assert_eq!(status_message(&long).chars().count(), 240);
    }
}
