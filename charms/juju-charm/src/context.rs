//! The hook context: which event Juju dispatched (from `JUJU_DISPATCH_PATH`) and the
//! unit, application, model, relation and action it concerns (from the `JUJU_*` variables).

use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::tools::HookTools;
use crate::types::RelationId;

/// The environment variable that moves the filesystem root the charm writes machine
/// files under (unit files, workload config). Juju never sets it; the test harness does, so
/// tests never touch the real `/etc`.
pub const FS_ROOT_VAR: &str = "JUJU_CHARM_FS_ROOT";

/// A Juju event: a hook (`hooks/<name>`) or an action (`actions/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Event {
    Install,
    Start,
    Stop,
    Remove,
    ConfigChanged,
    UpdateStatus,
    UpgradeCharm,
    LeaderElected,
    LeaderSettingsChanged,
    PreSeriesUpgrade,
    PostSeriesUpgrade,
    /// `<endpoint>-relation-created`.
    RelationCreated(String),
    /// `<endpoint>-relation-joined`.
    RelationJoined(String),
    /// `<endpoint>-relation-changed`.
    RelationChanged(String),
    /// `<endpoint>-relation-departed`.
    RelationDeparted(String),
    /// `<endpoint>-relation-broken`.
    RelationBroken(String),
    /// `<storage>-storage-attached`.
    StorageAttached(String),
    /// `<storage>-storage-detaching`.
    StorageDetaching(String),
    /// `actions/<name>`.
    Action(String),
    /// Any other hook (`secret-changed`, `collect-metrics`, …), by its hook name.
    Other(String),
}

const RELATION_SUFFIXES: [&str; 5] = [
    "-relation-created",
    "-relation-joined",
    "-relation-changed",
    "-relation-departed",
    "-relation-broken",
];

impl Event {
    /// Parses `JUJU_DISPATCH_PATH`: `hooks/install`, `hooks/db-relation-changed`,
    /// `actions/swap-model`.
    pub fn from_dispatch_path(path: &str) -> Result<Event> {
        let path = path.trim_start_matches("./");
        let bad = || {
            Error::Env(format!(
                "JUJU_DISPATCH_PATH {path:?} is not hooks/<name> or actions/<name>"
            ))
        };
        let (kind, name) = path.split_once('/').ok_or_else(bad)?;
        if name.is_empty() || name.contains('/') {
            return Err(bad());
        }
        match kind {
            "hooks" => Ok(Event::from_hook_name(name)),
            "actions" => Ok(Event::Action(name.to_string())),
            _ => Err(bad()),
        }
    }

    /// The event of a hook name (`install`, `kv-cache-manager-relation-joined`). Endpoint
    /// names may themselves contain dashes, so the relation suffix is matched at the end.
    pub fn from_hook_name(name: &str) -> Event {
        match name {
            "install" => return Event::Install,
            "start" => return Event::Start,
            "stop" => return Event::Stop,
            "remove" => return Event::Remove,
            "config-changed" => return Event::ConfigChanged,
            "update-status" => return Event::UpdateStatus,
            "upgrade-charm" => return Event::UpgradeCharm,
            "leader-elected" => return Event::LeaderElected,
            "leader-settings-changed" => return Event::LeaderSettingsChanged,
            "pre-series-upgrade" => return Event::PreSeriesUpgrade,
            "post-series-upgrade" => return Event::PostSeriesUpgrade,
            _ => {}
        }
        for (i, suffix) in RELATION_SUFFIXES.iter().enumerate() {
            if let Some(endpoint) = name.strip_suffix(suffix).filter(|e| !e.is_empty()) {
                let endpoint = endpoint.to_string();
                return match i {
                    0 => Event::RelationCreated(endpoint),
                    1 => Event::RelationJoined(endpoint),
                    2 => Event::RelationChanged(endpoint),
                    3 => Event::RelationDeparted(endpoint),
                    _ => Event::RelationBroken(endpoint),
                };
            }
        }
        if let Some(s) = name
            .strip_suffix("-storage-attached")
            .filter(|e| !e.is_empty())
        {
            return Event::StorageAttached(s.to_string());
        }
        if let Some(s) = name
            .strip_suffix("-storage-detaching")
            .filter(|e| !e.is_empty())
        {
            return Event::StorageDetaching(s.to_string());
        }
        Event::Other(name.to_string())
    }

    /// The hook name (`db-relation-changed`), or the action name for an action.
    pub fn name(&self) -> String {
        match self {
            Event::Install => "install".into(),
            Event::Start => "start".into(),
            Event::Stop => "stop".into(),
            Event::Remove => "remove".into(),
            Event::ConfigChanged => "config-changed".into(),
            Event::UpdateStatus => "update-status".into(),
            Event::UpgradeCharm => "upgrade-charm".into(),
            Event::LeaderElected => "leader-elected".into(),
            Event::LeaderSettingsChanged => "leader-settings-changed".into(),
            Event::PreSeriesUpgrade => "pre-series-upgrade".into(),
            Event::PostSeriesUpgrade => "post-series-upgrade".into(),
            Event::RelationCreated(e) => format!("{e}-relation-created"),
            Event::RelationJoined(e) => format!("{e}-relation-joined"),
            Event::RelationChanged(e) => format!("{e}-relation-changed"),
            Event::RelationDeparted(e) => format!("{e}-relation-departed"),
            Event::RelationBroken(e) => format!("{e}-relation-broken"),
            Event::StorageAttached(s) => format!("{s}-storage-attached"),
            Event::StorageDetaching(s) => format!("{s}-storage-detaching"),
            Event::Action(a) => a.clone(),
            Event::Other(h) => h.clone(),
        }
    }

    /// What Juju puts in `JUJU_DISPATCH_PATH` for this event.
    pub fn dispatch_path(&self) -> String {
        match self {
            Event::Action(a) => format!("actions/{a}"),
            other => format!("hooks/{}", other.name()),
        }
    }

    /// The endpoint of a relation event.
    pub fn relation_endpoint(&self) -> Option<&str> {
        match self {
            Event::RelationCreated(e)
            | Event::RelationJoined(e)
            | Event::RelationChanged(e)
            | Event::RelationDeparted(e)
            | Event::RelationBroken(e) => Some(e),
            _ => None,
        }
    }

    pub fn is_relation(&self) -> bool {
        self.relation_endpoint().is_some()
    }

    pub fn is_action(&self) -> bool {
        matches!(self, Event::Action(_))
    }

    // Constructors that read better in tests and `match` guards.
    pub fn relation_created(endpoint: &str) -> Event {
        Event::RelationCreated(endpoint.to_string())
    }
    pub fn relation_joined(endpoint: &str) -> Event {
        Event::RelationJoined(endpoint.to_string())
    }
    pub fn relation_changed(endpoint: &str) -> Event {
        Event::RelationChanged(endpoint.to_string())
    }
    pub fn relation_departed(endpoint: &str) -> Event {
        Event::RelationDeparted(endpoint.to_string())
    }
    pub fn relation_broken(endpoint: &str) -> Event {
        Event::RelationBroken(endpoint.to_string())
    }
    pub fn action(name: &str) -> Event {
        Event::Action(name.to_string())
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dispatch_path())
    }
}

/// The relation a relation hook is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRelation {
    /// `JUJU_RELATION_ID` (with `JUJU_RELATION` as the endpoint).
    pub id: RelationId,
    /// `JUJU_REMOTE_APP`.
    pub remote_app: Option<String>,
    /// `JUJU_REMOTE_UNIT` (absent in `-created` and `-broken`).
    pub remote_unit: Option<String>,
    /// `JUJU_DEPARTING_UNIT` (in `-departed`).
    pub departing_unit: Option<String>,
}

/// The action an action dispatch runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookAction {
    /// `JUJU_ACTION_NAME`.
    pub name: String,
    /// `JUJU_ACTION_UUID`.
    pub uuid: Option<String>,
}

/// Everything Juju tells a charm about the current dispatch, and the hook tools.
#[derive(Debug, Clone)]
pub struct Context {
    pub event: Event,
    /// `JUJU_DISPATCH_PATH` as given.
    pub dispatch_path: String,
    /// `JUJU_UNIT_NAME` (`llmd-decode/0`).
    pub unit: String,
    /// The application: the unit name before `/`.
    pub app: String,
    /// `JUJU_MODEL_NAME`.
    pub model: String,
    /// `JUJU_MODEL_UUID`.
    pub model_uuid: String,
    /// `JUJU_VERSION`.
    pub juju_version: Option<String>,
    /// `JUJU_MACHINE_ID` (machine charms).
    pub machine_id: Option<String>,
    /// `JUJU_CHARM_DIR` (or `CHARM_DIR`): the unpacked charm, where `dispatch` lives.
    pub charm_dir: PathBuf,
    pub relation: Option<HookRelation>,
    pub action: Option<HookAction>,
    /// Where machine files go: `/`, or [`FS_ROOT_VAR`] under the test harness.
    pub root: PathBuf,
    /// The hook tools (also reachable directly on the context: it derefs to them).
    pub tools: HookTools,
}

impl Context {
    /// Reads the process environment.
    pub fn from_env() -> Result<Context> {
        Context::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Builds the context from a variable lookup (the environment, or a map in tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Context> {
        let dispatch_path = match var("JUJU_DISPATCH_PATH") {
            Some(p) => p,
            // Juju has set JUJU_DISPATCH_PATH since 2.8; before that only the hook name.
            None => match (var("JUJU_HOOK_NAME"), var("JUJU_ACTION_NAME")) {
                (Some(h), _) => format!("hooks/{h}"),
                (None, Some(a)) => format!("actions/{a}"),
                (None, None) => {
                    return Err(Error::Env(
                        "JUJU_DISPATCH_PATH is not set: not running as a Juju hook".into(),
                    ))
                }
            },
        };
        let event = Event::from_dispatch_path(&dispatch_path)?;
        let unit =
            var("JUJU_UNIT_NAME").ok_or_else(|| Error::Env("JUJU_UNIT_NAME is not set".into()))?;
        let app = match unit.split_once('/') {
            Some((app, n)) if !app.is_empty() && n.parse::<u32>().is_ok() => app.to_string(),
            _ => return Err(Error::Env(format!("JUJU_UNIT_NAME {unit:?} is not app/N"))),
        };
        let relation = match event.relation_endpoint() {
            None => None,
            Some(endpoint) => {
                let raw = var("JUJU_RELATION_ID").ok_or_else(|| {
                    Error::Env(format!("{} without JUJU_RELATION_ID", event.name()))
                })?;
                // Juju gives `endpoint:id`; a bare number is taken with the event's endpoint.
                let id = match raw.parse::<u32>() {
                    Ok(n) => RelationId::new(
                        var("JUJU_RELATION").unwrap_or_else(|| endpoint.to_string()),
                        n,
                    ),
                    Err(_) => raw
                        .parse::<RelationId>()
                        .map_err(|e| Error::Env(format!("JUJU_RELATION_ID: {e}")))?,
                };
                if id.endpoint != endpoint {
                    return Err(Error::Env(format!(
                        "JUJU_RELATION_ID {id} is not on the event's endpoint {endpoint:?}"
                    )));
                }
                Some(HookRelation {
                    id,
                    remote_app: var("JUJU_REMOTE_APP"),
                    remote_unit: var("JUJU_REMOTE_UNIT"),
                    departing_unit: var("JUJU_DEPARTING_UNIT"),
                })
            }
        };
        let action = match &event {
            Event::Action(name) => Some(HookAction {
                name: var("JUJU_ACTION_NAME").unwrap_or_else(|| name.clone()),
                uuid: var("JUJU_ACTION_UUID"),
            }),
            _ => None,
        };
        Ok(Context {
            event,
            dispatch_path,
            unit,
            app,
            model: var("JUJU_MODEL_NAME").unwrap_or_default(),
            model_uuid: var("JUJU_MODEL_UUID").unwrap_or_default(),
            juju_version: var("JUJU_VERSION"),
            machine_id: var("JUJU_MACHINE_ID"),
            charm_dir: var("JUJU_CHARM_DIR")
                .or_else(|| var("CHARM_DIR"))
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".")),
            relation,
            action,
            root: var(FS_ROOT_VAR)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/")),
            tools: HookTools::new(),
        })
    }

    /// The relation of a relation hook.
    pub fn relation_id(&self) -> Option<&RelationId> {
        self.relation.as_ref().map(|r| &r.id)
    }

    /// The machine path of an absolute path: `/etc/llmd/x.yaml` under [`Context::root`].
    pub fn host_path(&self, path: impl AsRef<Path>) -> PathBuf {
        host_path(&self.root, path)
    }

    /// A file shipped in the charm (`bin/llmd` → `$JUJU_CHARM_DIR/bin/llmd`).
    pub fn charm_path(&self, path: impl AsRef<Path>) -> PathBuf {
        self.charm_dir.join(path)
    }
}

/// `path` (absolute, as on the machine) placed under `root`.
pub fn host_path(root: &Path, path: impl AsRef<Path>) -> PathBuf {
    let path = path.as_ref();
    root.join(path.strip_prefix("/").unwrap_or(path))
}

// The hook tools read best as methods of the context (`ctx.is_leader()`, `ctx.status_set(..)`).
impl Deref for Context {
    type Target = HookTools;
    fn deref(&self) -> &HookTools {
        &self.tools
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn hook_names_parse_and_print_back() {
        let cases = [
            ("hooks/install", Event::Install),
            ("hooks/config-changed", Event::ConfigChanged),
            ("hooks/update-status", Event::UpdateStatus),
            ("hooks/upgrade-charm", Event::UpgradeCharm),
            ("hooks/leader-elected", Event::LeaderElected),
            (
                "hooks/leader-settings-changed",
                Event::LeaderSettingsChanged,
            ),
            ("hooks/start", Event::Start),
            ("hooks/stop", Event::Stop),
            ("hooks/remove", Event::Remove),
            ("hooks/db-relation-joined", Event::relation_joined("db")),
            (
                "hooks/kv-cache-manager-relation-changed",
                Event::relation_changed("kv-cache-manager"),
            ),
            (
                "hooks/decode-worker-relation-departed",
                Event::relation_departed("decode-worker"),
            ),
            (
                "hooks/tracing-relation-broken",
                Event::relation_broken("tracing"),
            ),
            (
                "hooks/cos-agent-relation-created",
                Event::relation_created("cos-agent"),
            ),
            (
                "hooks/models-storage-attached",
                Event::StorageAttached("models".into()),
            ),
            (
                "hooks/secret-changed",
                Event::Other("secret-changed".into()),
            ),
            ("actions/swap-model", Event::action("swap-model")),
        ];
        for (path, event) in cases {
            assert_eq!(Event::from_dispatch_path(path).unwrap(), event, "{path}");
            assert_eq!(event.dispatch_path(), path);
        }
        // An endpoint literally named like a suffix still parses by the last suffix.
        assert_eq!(
            Event::from_hook_name("relation-changed-relation-changed"),
            Event::relation_changed("relation-changed")
        );
        // A bare suffix is no relation hook.
        assert_eq!(
            Event::from_hook_name("-relation-changed"),
            Event::Other("-relation-changed".into())
        );
    }

    #[test]
    fn bad_dispatch_paths_are_refused() {
        for p in ["install", "hooks/", "things/install", "hooks/a/b", ""] {
            assert!(Event::from_dispatch_path(p).is_err(), "{p:?}");
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn relation_hook_context() {
        let ctx = Context::from_vars(vars(&[
            ("JUJU_DISPATCH_PATH", "hooks/db-relation-departed"),
            ("JUJU_UNIT_NAME", "llmd-decode/2"),
            ("JUJU_MODEL_NAME", "prod"),
            ("JUJU_MODEL_UUID", "u-u-i-d"),
            (
                "JUJU_CHARM_DIR",
                "/var/lib/juju/agents/unit-llmd-decode-2/charm",
            ),
            ("JUJU_RELATION", "db"),
            ("JUJU_RELATION_ID", "db:7"),
            ("JUJU_REMOTE_APP", "pg"),
            ("JUJU_REMOTE_UNIT", "pg/1"),
            ("JUJU_DEPARTING_UNIT", "pg/1"),
            ("JUJU_VERSION", "3.6.4"),
            ("JUJU_MACHINE_ID", "4"),
        ]))
        .unwrap();
        assert_eq!(ctx.event, Event::relation_departed("db"));
        assert_eq!(ctx.unit, "llmd-decode/2");
        assert_eq!(ctx.app, "llmd-decode");
        assert_eq!(ctx.model, "prod");
        assert_eq!(ctx.machine_id.as_deref(), Some("4"));
        let rel = ctx.relation.as_ref().unwrap();
        assert_eq!(rel.id, RelationId::new("db", 7));
        assert_eq!(rel.remote_app.as_deref(), Some("pg"));
        assert_eq!(rel.remote_unit.as_deref(), Some("pg/1"));
        assert_eq!(rel.departing_unit.as_deref(), Some("pg/1"));
        assert_eq!(ctx.root, PathBuf::from("/"));
        assert_eq!(
            ctx.host_path("/etc/llmd/a.yaml"),
            PathBuf::from("/etc/llmd/a.yaml")
        );
        assert!(ctx.action.is_none());
    }

    #[test]
    fn action_context_and_fs_root() {
        let ctx = Context::from_vars(vars(&[
            ("JUJU_DISPATCH_PATH", "actions/swap-model"),
            ("JUJU_UNIT_NAME", "app/0"),
            ("JUJU_ACTION_NAME", "swap-model"),
            ("JUJU_ACTION_UUID", "42"),
            (FS_ROOT_VAR, "/tmp/root"),
        ]))
        .unwrap();
        assert_eq!(ctx.event, Event::action("swap-model"));
        let action = ctx.action.unwrap();
        assert_eq!(
            (action.name.as_str(), action.uuid.as_deref()),
            ("swap-model", Some("42"))
        );
        assert_eq!(
            host_path(&ctx.root, "/etc/x"),
            PathBuf::from("/tmp/root/etc/x")
        );
    }

    #[test]
    fn missing_or_inconsistent_environment_is_an_error() {
        assert!(Context::from_vars(vars(&[("JUJU_UNIT_NAME", "a/0")])).is_err());
        assert!(Context::from_vars(vars(&[("JUJU_DISPATCH_PATH", "hooks/install")])).is_err());
        assert!(Context::from_vars(vars(&[
            ("JUJU_DISPATCH_PATH", "hooks/install"),
            ("JUJU_UNIT_NAME", "no-number")
        ]))
        .is_err());
        // A relation hook must say which relation.
        assert!(Context::from_vars(vars(&[
            ("JUJU_DISPATCH_PATH", "hooks/db-relation-changed"),
            ("JUJU_UNIT_NAME", "a/0")
        ]))
        .is_err());
        assert!(Context::from_vars(vars(&[
            ("JUJU_DISPATCH_PATH", "hooks/db-relation-changed"),
            ("JUJU_UNIT_NAME", "a/0"),
            ("JUJU_RELATION_ID", "other:1")
        ]))
        .is_err());
        // Before JUJU_DISPATCH_PATH existed: the hook name alone.
        let ctx = Context::from_vars(vars(&[
            ("JUJU_HOOK_NAME", "start"),
            ("JUJU_UNIT_NAME", "a/0"),
        ]))
        .unwrap();
        assert_eq!(ctx.event, Event::Start);
    }
}
