//! State-transition tests for charms, in the spirit of ops-scenario: describe the Juju
//! state before ([`State`]), fire one event ([`Trigger`]) at the real charm binary through a
//! [`Harness`], and assert on the state after ([`Output`]).
//!
//! The harness puts fake hook tools (and `systemctl`) on the charm's `PATH`; they answer with
//! Juju's command-line forms and outputs, refuse what Juju refuses, and record every call.
//! They live in this library: a charm built on [`crate::run`] with this feature on answers as
//! the tools itself when run under a tool's name, so a charm crate needs nothing but
//!
//! ```toml
//! [dev-dependencies]
//! juju-charm = { workspace = true, features = ["testing"] }
//! ```
//!
//! (cargo turns the feature on for the charm binary too while it builds the tests; a
//! release build has no trace of it) and, in `tests/*.rs`:
//!
//! ```no_run
//! use juju_charm::testing::{Harness, Relation, State, Trigger};
//! use juju_charm::{Event, Status};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // In a charm crate's tests/*.rs: env!("CARGO_BIN_EXE_<charm bin>") and
//! // concat!(env!("CARGO_MANIFEST_DIR"), "/charmcraft.yaml").
//! let harness = Harness::new("target/debug/llmd-decode-charm")?.charmcraft_yaml("charmcraft.yaml")?;
//! let state = State::default()
//!     .leader(true)
//!     .config("model-id", "default")
//!     .relation(Relation::new("kv-cache-manager", "llmd_kv_cache").remote_app_data([("url", "http://cm:8200")]));
//! let out = harness.run(Event::ConfigChanged, &state)?;
//! assert_eq!(out.unit_status, Status::active("serving default"));
//! // The state after is the state before the next event.
//! let out = harness.run(Trigger::action("swap-model").param("source", "hf:org/repo"), &out.state)?;
//! assert_eq!(out.action.unwrap().failure, None);
//! # Ok(())
//! # }
//! ```
//!
//! A charm not built on [`crate::run`] can use the standalone `juju-charm-fake-tool` binary
//! of this crate (or a one-line binary of its own calling [`tool_main`]) via
//! [`Harness::tool`] or the `JUJU_CHARM_FAKE_TOOL` environment variable.

mod fake;
mod flags;
mod harness;
mod hook_tools;
mod meta;
mod systemctl;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::context::Event;
use crate::types::{Databag, LogLevel, Port, Status};

pub(crate) use fake::run_as;
pub use fake::tool_main;
pub use harness::TOOL_ENV;
pub use harness::{Harness, HarnessError};
pub use meta::{ActionSpec, CharmMeta, ConfigOption, Endpoint, EndpointRole};

/// The Juju state around one unit before (or after) an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// This unit (`llmd-decode/0`); empty: `<app>/0`.
    pub unit: String,
    /// This application; empty: the charm's name from charmcraft.yaml, else `charm`.
    pub app: String,
    pub model: String,
    pub model_uuid: String,
    pub leader: bool,
    /// Config values set by the operator (defaults from charmcraft.yaml are added).
    pub config: Map<String, Value>,
    pub relations: Vec<Relation>,
    /// Attached resources: name → file.
    pub resources: BTreeMap<String, Resource>,
    /// Juju's server-side unit state (`state-get`/`state-set`).
    pub stored: BTreeMap<String, String>,
    pub unit_status: Status,
    pub app_status: Status,
    pub app_version: Option<String>,
    pub opened_ports: Vec<OpenedPort>,
    /// This unit's address (network-get, unit-get).
    pub address: String,
    /// systemd's view of services (unit files themselves are files under the root).
    pub services: BTreeMap<String, Service>,
    /// Files to put under the machine root before the event (absolute paths as on the
    /// machine). Written once by the run that is given this state; not carried over.
    #[serde(skip)]
    pub files: BTreeMap<PathBuf, Vec<u8>>,
}

impl Default for State {
    fn default() -> Self {
        State {
            unit: String::new(),
            app: String::new(),
            model: "test-model".into(),
            model_uuid: "4f5a9c1e-3b2d-4e6f-8a7b-9c0d1e2f3a4b".into(),
            leader: false,
            config: Map::new(),
            relations: Vec::new(),
            resources: BTreeMap::new(),
            stored: BTreeMap::new(),
            unit_status: Status::unknown(),
            app_status: Status::unknown(),
            app_version: None,
            opened_ports: Vec::new(),
            address: "10.0.0.10".into(),
            services: BTreeMap::new(),
            files: BTreeMap::new(),
        }
    }
}

impl State {
    /// This unit's name; also sets the application.
    pub fn unit(mut self, unit: &str) -> Self {
        self.unit = unit.to_string();
        if let Some((app, _)) = unit.split_once('/') {
            self.app = app.to_string();
        }
        self
    }
    pub fn app(mut self, app: &str) -> Self {
        self.app = app.to_string();
        self
    }
    pub fn model(mut self, model: &str) -> Self {
        self.model = model.to_string();
        self
    }
    pub fn leader(mut self, leader: bool) -> Self {
        self.leader = leader;
        self
    }
    /// One config value (string, number or boolean, as `juju config` sets them).
    pub fn config(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.config.insert(key.to_string(), value.into());
        self
    }
    /// Adds a relation; one without an explicit id gets the next free one.
    pub fn relation(mut self, mut relation: Relation) -> Self {
        if relation.id.is_none() {
            let next = self
                .relations
                .iter()
                .filter_map(|r| r.id)
                .max()
                .map_or(1, |m| m + 1);
            relation.id = Some(next);
        }
        self.relations.push(relation);
        self
    }
    /// A resource attached from a file.
    pub fn resource(mut self, name: &str, path: impl Into<PathBuf>) -> Self {
        self.resources
            .insert(name.to_string(), Resource::Path(path.into()));
        self
    }
    /// A resource attached with this content (the harness writes it to a file).
    pub fn resource_content(mut self, name: &str, content: impl Into<Vec<u8>>) -> Self {
        self.resources
            .insert(name.to_string(), Resource::Content(content.into()));
        self
    }
    /// A stored-state value, as `state-set` would have stored it.
    pub fn stored(mut self, key: &str, value: &str) -> Self {
        self.stored.insert(key.to_string(), value.to_string());
        self
    }
    pub fn unit_status(mut self, status: Status) -> Self {
        self.unit_status = status;
        self
    }
    pub fn address(mut self, address: &str) -> Self {
        self.address = address.to_string();
        self
    }
    /// A service systemd already knows (for example running since an earlier install).
    pub fn service(mut self, name: &str, service: Service) -> Self {
        self.services
            .insert(crate::systemd::unit_name(name), service);
        self
    }
    /// A file on the machine before the event.
    pub fn file(mut self, path: impl Into<PathBuf>, content: impl Into<Vec<u8>>) -> Self {
        self.files.insert(path.into(), content.into());
        self
    }

    /// The relation with this id.
    pub fn relation_by_id(&self, id: u32) -> Option<&Relation> {
        self.relations.iter().find(|r| r.id == Some(id))
    }
    /// The (first) relation on this endpoint.
    pub fn relation_on(&self, endpoint: &str) -> Option<&Relation> {
        self.relations.iter().find(|r| r.endpoint == endpoint)
    }
    fn relation_mut(&mut self, id: u32) -> Option<&mut Relation> {
        self.relations.iter_mut().find(|r| r.id == Some(id))
    }
}

/// A relation of this unit, with every databag it can see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relation {
    /// Assigned by [`State::relation`] unless set with [`Relation::id`].
    pub id: Option<u32>,
    pub endpoint: String,
    pub interface: String,
    pub remote_app: String,
    /// Remote unit → its databag.
    pub remote_units: BTreeMap<String, Databag>,
    pub remote_app_data: Databag,
    pub local_unit_data: Databag,
    pub local_app_data: Databag,
    /// A peer relation: the "remote" application is this one.
    pub peer: bool,
}

impl Relation {
    /// A relation on `endpoint` (interface `interface`) to the application `remote` with
    /// one unit, `remote/0`.
    pub fn new(endpoint: &str, interface: &str) -> Self {
        Relation {
            id: None,
            endpoint: endpoint.to_string(),
            interface: interface.to_string(),
            remote_app: "remote".into(),
            remote_units: BTreeMap::from([("remote/0".to_string(), Databag::new())]),
            remote_app_data: Databag::new(),
            local_unit_data: Databag::new(),
            local_app_data: Databag::new(),
            peer: false,
        }
    }

    /// A peer relation (its remote units are this application's other units; the harness
    /// sets the application when it runs).
    pub fn peer(endpoint: &str, interface: &str) -> Self {
        Relation {
            peer: true,
            remote_app: String::new(),
            remote_units: BTreeMap::new(),
            ..Relation::new(endpoint, interface)
        }
    }

    pub fn id(mut self, id: u32) -> Self {
        self.id = Some(id);
        self
    }

    /// The remote application; its units are renamed to match (`remote/0` → `app/0`).
    pub fn remote_app(mut self, app: &str) -> Self {
        let old = std::mem::take(&mut self.remote_units);
        self.remote_units = old
            .into_iter()
            .map(|(unit, bag)| {
                let n = unit.rsplit_once('/').map_or("0", |(_, n)| n).to_string();
                (format!("{app}/{n}"), bag)
            })
            .collect();
        self.remote_app = app.to_string();
        self
    }

    /// Exactly these remote units (numbers), with empty databags.
    pub fn remote_unit_ids(mut self, ids: &[u32]) -> Self {
        self.remote_units = ids
            .iter()
            .map(|n| (format!("{}/{n}", self.remote_app), Databag::new()))
            .collect();
        self
    }

    /// A remote unit's databag (adds the unit if new).
    pub fn remote_unit_data<I, K, V>(mut self, unit: &str, data: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.remote_units
            .insert(unit.to_string(), crate::databag(data));
        self
    }

    pub fn remote_app_data<I, K, V>(mut self, data: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.remote_app_data = crate::databag(data);
        self
    }

    pub fn local_unit_data<I, K, V>(mut self, data: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.local_unit_data = crate::databag(data);
        self
    }

    pub fn local_app_data<I, K, V>(mut self, data: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.local_app_data = crate::databag(data);
        self
    }

    /// No remote units (as in `-created`, or once all have departed).
    pub fn no_remote_units(mut self) -> Self {
        self.remote_units.clear();
        self
    }

    /// `endpoint:id`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.endpoint, self.id.unwrap_or_default())
    }
}

/// An attached resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resource {
    Path(PathBuf),
    Content(Vec<u8>),
}

/// A port the unit has opened.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpenedPort {
    pub port: Port,
    /// The endpoints it is opened for; empty means all (`*`).
    pub endpoints: Vec<String>,
}

/// systemd's state of one service, as the fake `systemctl` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Service {
    pub enabled: bool,
    pub active: bool,
    /// Counters over the service's life (compare with the state before for one event).
    pub starts: u32,
    pub restarts: u32,
    pub stops: u32,
    /// The unit file as systemd last loaded it (at daemon-reload or first use): what a
    /// start would run. Differs from the file on disk until the next daemon-reload.
    pub loaded: Option<String>,
}

impl Service {
    /// Enabled and running.
    pub fn running() -> Self {
        Service {
            enabled: true,
            active: true,
            ..Service::default()
        }
    }
}

/// The event to fire and, for relation events and actions, its details.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub event: Event,
    /// The relation (by id) of a relation event; default: the only one on the endpoint.
    pub relation_id: Option<u32>,
    /// `JUJU_REMOTE_UNIT`; default for joined/changed/departed: the relation's first unit.
    pub remote_unit: Option<String>,
    /// `JUJU_DEPARTING_UNIT` of `-departed`; default: the remote unit.
    pub departing_unit: Option<String>,
    /// Action parameters (defaults from charmcraft.yaml are added).
    pub params: Map<String, Value>,
}

impl Trigger {
    pub fn new(event: Event) -> Self {
        Trigger {
            event,
            relation_id: None,
            remote_unit: None,
            departing_unit: None,
            params: Map::new(),
        }
    }
    /// An action.
    pub fn action(name: &str) -> Self {
        Trigger::new(Event::action(name))
    }
    /// A relation event on the relation with this id.
    pub fn relation(event: Event, relation_id: u32) -> Self {
        Trigger::new(event).relation_id(relation_id)
    }
    pub fn relation_id(mut self, id: u32) -> Self {
        self.relation_id = Some(id);
        self
    }
    pub fn remote_unit(mut self, unit: &str) -> Self {
        self.remote_unit = Some(unit.to_string());
        self
    }
    pub fn departing_unit(mut self, unit: &str) -> Self {
        self.departing_unit = Some(unit.to_string());
        self
    }
    pub fn param(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.params.insert(key.to_string(), value.into());
        self
    }
}

impl From<Event> for Trigger {
    fn from(event: Event) -> Self {
        Trigger::new(event)
    }
}

/// One hook tool call the charm made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub tool: String,
    pub args: Vec<String>,
    /// What the charm wrote to stdin (`--file -`).
    pub stdin: Option<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl ToolCall {
    /// The command line, words quoted where a shell would need it:
    /// `relation-get --format=json -r db:3 - app/0`.
    pub fn command_line(&self) -> String {
        std::iter::once(self.tool.clone())
            .chain(self.args.iter().map(|a| shell_word(a)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=:/.,+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A `juju-log` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// One `status-set` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    /// `--application=True`.
    pub app: bool,
    pub status: Status,
}

/// What an action reported.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ActionOutcome {
    /// `action-set` results with their dotted keys (`load.ms` → `12`).
    pub results: BTreeMap<String, String>,
    /// `action-fail`'s message (or Juju's for a non-zero exit).
    pub failure: Option<String>,
    /// `action-log` messages.
    pub logs: Vec<String>,
}

/// The state after an event and everything the charm did on the way.
#[derive(Debug, Clone)]
pub struct Output {
    pub event: Event,
    /// The state after: feed it to the next run.
    pub state: State,
    pub unit_status: Status,
    pub app_status: Status,
    /// Every `status-set`, in order.
    pub status_history: Vec<StatusChange>,
    pub logs: Vec<LogLine>,
    /// Every tool call (hook tools and `systemctl`), in order.
    pub calls: Vec<ToolCall>,
    /// For an action.
    pub action: Option<ActionOutcome>,
    /// Files created or changed under the machine root (machine paths → content).
    pub files_written: BTreeMap<PathBuf, Vec<u8>>,
    pub files_removed: Vec<PathBuf>,
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The charm exited 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == 0
    }

    /// The relation (after) on this endpoint.
    pub fn relation(&self, endpoint: &str) -> Option<&Relation> {
        self.state.relation_on(endpoint)
    }

    /// This unit's databag on the endpoint's relation (empty if none).
    pub fn local_unit_data(&self, endpoint: &str) -> Databag {
        self.relation(endpoint)
            .map(|r| r.local_unit_data.clone())
            .unwrap_or_default()
    }

    /// This application's databag on the endpoint's relation (empty if none).
    pub fn local_app_data(&self, endpoint: &str) -> Databag {
        self.relation(endpoint)
            .map(|r| r.local_app_data.clone())
            .unwrap_or_default()
    }

    /// A file this event wrote, as text.
    pub fn file(&self, path: impl AsRef<Path>) -> Option<String> {
        self.files_written
            .get(path.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// A unit file this event wrote (`demo` → `/etc/systemd/system/demo.service`).
    pub fn unit_file(&self, name: &str) -> Option<String> {
        self.file(Path::new(crate::systemd::UNIT_DIR).join(crate::systemd::unit_name(name)))
    }

    /// A service as systemd sees it after the event.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.state.services.get(&crate::systemd::unit_name(name))
    }

    /// The `systemctl` calls, arguments only: `["daemon-reload", "enable --now demo.service"]`.
    pub fn systemctl(&self) -> Vec<String> {
        self.calls
            .iter()
            .filter(|c| c.tool == "systemctl")
            .map(|c| c.args.join(" "))
            .collect()
    }

    /// Every call's command line.
    pub fn command_lines(&self) -> Vec<String> {
        self.calls.iter().map(ToolCall::command_line).collect()
    }

    /// The calls of one tool.
    pub fn calls_to<'a>(&'a self, tool: &'a str) -> impl Iterator<Item = &'a ToolCall> + 'a {
        self.calls.iter().filter(move |c| c.tool == tool)
    }

    /// The hook tool calls Juju refused (non-zero exit). `systemctl` is left out: its
    /// queries answer "no" with an exit code (`is-active` exits 3 for inactive).
    pub fn refused_calls(&self) -> Vec<&ToolCall> {
        self.calls
            .iter()
            .filter(|c| c.code != 0 && c.tool != "systemctl")
            .collect()
    }

    /// Whether some `juju-log` line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.iter().any(|l| l.message.contains(needle))
    }

    pub fn opened_ports(&self) -> Vec<Port> {
        self.state.opened_ports.iter().map(|p| p.port).collect()
    }
}
