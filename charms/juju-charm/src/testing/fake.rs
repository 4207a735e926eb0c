//! The fake hook tools: one process per call, as Juju's are. Each call takes a lock on the
//! harness's state file, answers from it with Juju's command-line forms and outputs (or
//! Juju's refusal, on stderr with a non-zero exit), writes the changes back, and records
//! itself.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::hook_tools::exec;
use super::{ActionOutcome, LogLine, State, StatusChange, ToolCall};
use crate::run::PROBE_NAME;

/// Where the tools find the harness's state file.
pub(crate) const STATE_ENV: &str = "JUJU_CHARM_FAKE_STATE";

/// Everything the tools read and write: the state, the hook being run, and the record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct World {
    pub state: State,
    pub hook: HookInfo,
    pub record: Record,
}

/// The dispatch the tools answer for (Juju keeps this in the hook context, not the
/// charm's environment, so the charm cannot change it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct HookInfo {
    pub relation_id: Option<u32>,
    pub remote_unit: Option<String>,
    pub remote_app: Option<String>,
    pub departing_unit: Option<String>,
    /// This is the relation's `-broken` hook: it has no units left.
    pub broken: bool,
    pub action: Option<String>,
    pub params: Map<String, Value>,
    /// Config with charmcraft.yaml's defaults.
    pub config: Map<String, Value>,
    /// The machine root (unit files for `systemctl`).
    pub root: PathBuf,
    /// Resources as files.
    pub resources: BTreeMap<String, PathBuf>,
    /// Endpoints and extra bindings network-get knows, when charmcraft.yaml was given.
    pub bindings: Option<Vec<String>>,
}

/// What the charm did, beyond the state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Record {
    pub calls: Vec<ToolCall>,
    pub logs: Vec<LogLine>,
    pub status_history: Vec<StatusChange>,
    pub action: ActionOutcome,
}

/// A tool's answer.
pub(crate) struct Reply {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    pub fn ok(stdout: impl Into<String>) -> Self {
        Reply {
            code: 0,
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }
}

/// Entry of a binary started under a tool's name; `None` when no harness is around.
pub(crate) fn run_as(name: &str) -> Option<i32> {
    let state = std::env::var_os(STATE_ENV)?;
    if name == PROBE_NAME {
        println!("juju-charm-fake-tool {}", env!("CARGO_PKG_VERSION"));
        return Some(0);
    }
    let args: Option<Vec<String>> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string().ok())
        .collect();
    let Some(args) = args else {
        eprintln!("ERROR {name}: arguments are not UTF-8");
        return Some(2);
    };
    Some(run_tool(Path::new(&state), name, &args))
}

/// `main` for a standalone fake-tool binary: symlinked under each tool's name, or called
/// as `juju-charm-fake-tool <tool> [args...]`.
pub fn tool_main() -> i32 {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    if std::env::var_os(STATE_ENV).is_none() {
        eprintln!("{name}: {STATE_ENV} is not set: the juju-charm test harness runs these tools");
        return 2;
    }
    if crate::run::TOOL_NAMES.contains(&name.as_str()) {
        return run_as(&name).unwrap_or(2);
    }
    // Called by its own name: the tool is the first argument.
    let args: Option<Vec<String>> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string().ok())
        .collect();
    match args.as_deref() {
        Some([tool, rest @ ..]) if crate::run::TOOL_NAMES.contains(&tool.as_str()) => {
            let state = std::env::var_os(STATE_ENV).unwrap_or_default();
            run_tool(Path::new(&state), tool, rest)
        }
        _ => {
            eprintln!(
                "usage: juju-charm-fake-tool <hook-tool> [args...] (or run it under a tool's name)"
            );
            2
        }
    }
}

fn wants_stdin(args: &[String]) -> bool {
    args.windows(2).any(|w| w[0] == "--file" && w[1] == "-") || args.iter().any(|a| a == "--file=-")
}

fn run_tool(state_path: &Path, tool: &str, args: &[String]) -> i32 {
    let stdin = if wants_stdin(args) {
        let mut s = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut s) {
            eprintln!("ERROR reading stdin: {e}");
            return 1;
        }
        Some(s)
    } else {
        None
    };
    let reply = match with_world(state_path, |world| {
        let reply = if tool == "systemctl" {
            super::systemctl::exec(world, args)
        } else {
            match exec(world, tool, args, stdin.as_deref()) {
                Ok(out) => Reply::ok(out),
                Err(r) => Reply {
                    code: r.code,
                    stdout: String::new(),
                    stderr: format!("ERROR {}\n", r.msg),
                },
            }
        };
        world.record.calls.push(ToolCall {
            tool: tool.to_string(),
            args: args.to_vec(),
            stdin: stdin.clone(),
            code: reply.code,
            stdout: reply.stdout.clone(),
            stderr: reply.stderr.clone(),
        });
        reply
    }) {
        Ok(reply) => reply,
        Err(e) => {
            eprintln!("juju-charm fake {tool}: {e}");
            return 1;
        }
    };
    // A closed pipe is the charm's business; the call is recorded either way.
    let _ = std::io::stdout().write_all(reply.stdout.as_bytes());
    let _ = std::io::stderr().write_all(reply.stderr.as_bytes());
    reply.code
}

/// Runs `f` on the world under an exclusive lock (a charm may call tools from threads).
fn with_world<T>(path: &Path, f: impl FnOnce(&mut World) -> T) -> std::io::Result<T> {
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.with_extension("lock"))?;
    lock.lock()?;
    let text = fs::read_to_string(path)?;
    let mut world: World = serde_json::from_str(&text).map_err(std::io::Error::other)?;
    let out = f(&mut world);
    let tmp = path.with_extension("tmp");
    fs::write(
        &tmp,
        serde_json::to_vec(&world).map_err(std::io::Error::other)?,
    )?;
    fs::rename(&tmp, path)?;
    drop(lock);
    Ok(out)
}
