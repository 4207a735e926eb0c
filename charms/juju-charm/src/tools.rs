//! Typed wrappers for Juju's hook tools. Each call is the command line Juju documents
//! (`--format=json` wherever the tool takes it) and each output is parsed as Juju prints it.
//! The argument builders and parsers are plain functions so tests can check both exactly.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::databag::{from_databag, to_databag};
use crate::error::{Error, Result};
use crate::types::{Databag, LogLevel, Port, RelationId, Status, StatusName};

/// One network binding as `network-get --format=json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Network {
    #[serde(rename = "bind-addresses", default)]
    pub bind_addresses: Vec<BindAddress>,
    #[serde(rename = "egress-subnets", default)]
    pub egress_subnets: Vec<String>,
    #[serde(rename = "ingress-addresses", default)]
    pub ingress_addresses: Vec<String>,
}

/// An interface of a [`Network`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BindAddress {
    #[serde(rename = "mac-address", default)]
    pub mac_address: String,
    #[serde(rename = "interface-name", default)]
    pub interface_name: String,
    #[serde(default)]
    pub addresses: Vec<Address>,
}

/// An address of a [`BindAddress`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Address {
    #[serde(default)]
    pub hostname: String,
    pub value: String,
    #[serde(default)]
    pub cidr: String,
}

/// A goal (`status`, `since`) in `goal-state` output.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Goal {
    pub status: String,
    #[serde(default)]
    pub since: String,
}

/// `goal-state --format=json`: the units of this application and, per endpoint, the
/// related applications and units Juju intends to exist.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GoalState {
    #[serde(default)]
    pub units: BTreeMap<String, Goal>,
    #[serde(default)]
    pub relations: BTreeMap<String, BTreeMap<String, Goal>>,
}

/// The hook tools, found on `PATH` (where Juju puts them for the hook) or in a given
/// directory.
#[derive(Debug, Clone, Default)]
pub struct HookTools {
    dir: Option<PathBuf>,
}

impl HookTools {
    /// Tools from `PATH`.
    pub fn new() -> Self {
        HookTools { dir: None }
    }

    /// Tools from one directory (Juju's `tools/<unit>` directory, or a test's).
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        HookTools {
            dir: Some(dir.into()),
        }
    }

    fn program(&self, tool: &str) -> PathBuf {
        match &self.dir {
            Some(d) => d.join(tool),
            None => PathBuf::from(tool),
        }
    }

    /// Runs a tool and returns its stdout. `shown` is what an error may repeat of the
    /// arguments (action results can be secrets).
    fn run_shown(
        &self,
        tool: &str,
        args: &[String],
        stdin: Option<&str>,
        shown: &[String],
    ) -> Result<String> {
        let mut cmd = Command::new(self.program(tool));
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_err = |source| Error::ToolSpawn {
            tool: tool.to_string(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // Hook tools read all of stdin before answering, so writing first cannot block
            // on a full stdout pipe.
            pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if !out.status.success() {
            return Err(Error::ToolFailed {
                tool: tool.to_string(),
                args: shown.to_vec(),
                code: out.status.code(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        String::from_utf8(out.stdout).map_err(|e| Error::output(tool, "<bytes>", e))
    }

    fn run(&self, tool: &str, args: &[String], stdin: Option<&str>) -> Result<String> {
        self.run_shown(tool, args, stdin, args)
    }

    // --- config ---

    /// `config-get --format=json`: every option that is set or has a default.
    pub fn config_get_all(&self) -> Result<Map<String, Value>> {
        let out = self.run("config-get", &args(["--format=json"]), None)?;
        parse::object_or_null("config-get", &out)
    }

    /// `config-get --format=json <key>`: `None` when the option has no value.
    pub fn config_get(&self, key: &str) -> Result<Option<Value>> {
        let out = self.run("config-get", &args(["--format=json", key]), None)?;
        parse::optional_value("config-get", &out)
    }

    /// The whole config as a type (`#[serde(rename_all = "kebab-case")]` matches option
    /// names like `model-id`).
    pub fn config<T: DeserializeOwned>(&self) -> Result<T> {
        let map = self.config_get_all()?;
        serde_json::from_value(Value::Object(map)).map_err(|e| Error::Decode {
            what: "config".into(),
            reason: e.to_string(),
        })
    }

    // --- leadership ---

    /// `is-leader --format=json`.
    pub fn is_leader(&self) -> Result<bool> {
        let out = self.run("is-leader", &args(["--format=json"]), None)?;
        parse::json("is-leader", &out)
    }

    // --- relations ---

    /// `relation-ids <endpoint> --format=json`.
    pub fn relation_ids(&self, endpoint: &str) -> Result<Vec<RelationId>> {
        let out = self.run("relation-ids", &args([endpoint, "--format=json"]), None)?;
        parse::relation_ids(&out)
    }

    /// `relation-list --format=json -r <rel>`: the remote units in the relation.
    pub fn relation_list(&self, rel: &RelationId) -> Result<Vec<String>> {
        let out = self.run(
            "relation-list",
            &args(["--format=json", "-r", &rel.to_string()]),
            None,
        )?;
        Ok(parse::json::<Option<Vec<String>>>("relation-list", &out)?.unwrap_or_default())
    }

    /// `relation-list --format=json --app -r <rel>`: the remote application.
    pub fn relation_remote_app(&self, rel: &RelationId) -> Result<Option<String>> {
        let out = self.run(
            "relation-list",
            &args(["--format=json", "--app", "-r", &rel.to_string()]),
            None,
        )?;
        parse::optional_string("relation-list", &out)
    }

    /// `relation-get --format=json -r <rel> - <unit>`: a unit's whole databag (the remote
    /// unit's, or this unit's own).
    pub fn relation_get(&self, rel: &RelationId, unit: &str) -> Result<Databag> {
        let out = self.run(
            "relation-get",
            &relation_get_args(rel, "-", unit, false),
            None,
        )?;
        parse::databag("relation-get", &out)
    }

    /// `relation-get --format=json -r <rel> --app - <app>`: an application's databag (the
    /// remote one's; this application's own only on the leader, or on a peer relation).
    pub fn relation_get_app(&self, rel: &RelationId, app: &str) -> Result<Databag> {
        let out = self.run(
            "relation-get",
            &relation_get_args(rel, "-", app, true),
            None,
        )?;
        parse::databag("relation-get", &out)
    }

    /// `relation-get --format=json -r <rel> <key> <unit>`: one key, `None` when unset.
    pub fn relation_get_key(
        &self,
        rel: &RelationId,
        key: &str,
        unit: &str,
    ) -> Result<Option<String>> {
        if key == "-" {
            return Err(Error::Invalid(
                "relation_get_key: use relation_get for all keys".into(),
            ));
        }
        let out = self.run(
            "relation-get",
            &relation_get_args(rel, key, unit, false),
            None,
        )?;
        Ok(parse::optional_string("relation-get", &out)?.filter(|v| !v.is_empty()))
    }

    /// Every remote unit on every relation of `endpoint`, with its databag (the
    /// scheduler's worker list, for example): `relation-ids`, then `relation-list` and
    /// `relation-get` per relation and unit.
    pub fn remote_units(&self, endpoint: &str) -> Result<Vec<(RelationId, String, Databag)>> {
        let mut out = Vec::new();
        for rel in self.relation_ids(endpoint)? {
            for unit in self.relation_list(&rel)? {
                let data = self.relation_get(&rel, &unit)?;
                out.push((rel.clone(), unit, data));
            }
        }
        Ok(out)
    }

    /// `relation-set -r <rel> --file -`: merges into this unit's databag; `""` deletes a key.
    pub fn relation_set(&self, rel: &RelationId, data: &Databag) -> Result<()> {
        self.run(
            "relation-set",
            &relation_set_args(rel, false),
            Some(&json_object(data)?),
        )?;
        Ok(())
    }

    /// `relation-set -r <rel> --app --file -`: merges into this application's databag
    /// (Juju allows it on the leader only).
    pub fn relation_set_app(&self, rel: &RelationId, data: &Databag) -> Result<()> {
        self.run(
            "relation-set",
            &relation_set_args(rel, true),
            Some(&json_object(data)?),
        )?;
        Ok(())
    }

    /// A unit's databag as a type (see [`from_databag`]).
    pub fn relation_read<T: DeserializeOwned>(&self, rel: &RelationId, unit: &str) -> Result<T> {
        from_databag(&self.relation_get(rel, unit)?)
    }

    /// An application's databag as a type.
    pub fn relation_read_app<T: DeserializeOwned>(&self, rel: &RelationId, app: &str) -> Result<T> {
        from_databag(&self.relation_get_app(rel, app)?)
    }

    /// Writes a value into this unit's databag (see [`to_databag`]; `None` fields delete).
    pub fn relation_write<T: Serialize>(&self, rel: &RelationId, value: &T) -> Result<()> {
        self.relation_set(rel, &to_databag(value)?)
    }

    /// Writes a value into this application's databag (leader only).
    pub fn relation_write_app<T: Serialize>(&self, rel: &RelationId, value: &T) -> Result<()> {
        self.relation_set_app(rel, &to_databag(value)?)
    }

    // --- status ---

    /// `status-set --application=False <status> [-- <message>]`.
    pub fn status_set(&self, status: &Status) -> Result<()> {
        self.run("status-set", &status_set_args(status, false)?, None)?;
        Ok(())
    }

    /// `status-set --application=True <status> [-- <message>]` (leader only).
    pub fn app_status_set(&self, status: &Status) -> Result<()> {
        self.run("status-set", &status_set_args(status, true)?, None)?;
        Ok(())
    }

    /// `status-get --include-data --format=json --application=false`.
    pub fn status_get(&self) -> Result<Status> {
        let out = self.run(
            "status-get",
            &args(["--include-data", "--format=json", "--application=false"]),
            None,
        )?;
        parse::status("status-get", &out, false)
    }

    /// `status-get --include-data --format=json --application=true` (leader only).
    pub fn app_status_get(&self) -> Result<Status> {
        let out = self.run(
            "status-get",
            &args(["--include-data", "--format=json", "--application=true"]),
            None,
        )?;
        parse::status("status-get", &out, true)
    }

    /// `application-version-set -- <version>`.
    pub fn application_version_set(&self, version: &str) -> Result<()> {
        self.run("application-version-set", &args(["--", version]), None)?;
        Ok(())
    }

    // --- ports ---

    /// `open-port <port>[-<to>]/<proto>` on every endpoint.
    pub fn open_port(&self, port: &Port) -> Result<()> {
        self.run("open-port", &port_args(port, &[]), None)?;
        Ok(())
    }

    /// `open-port --endpoints a,b <port>`.
    pub fn open_port_on(&self, port: &Port, endpoints: &[&str]) -> Result<()> {
        self.run("open-port", &port_args(port, endpoints), None)?;
        Ok(())
    }

    /// `close-port <port>`.
    pub fn close_port(&self, port: &Port) -> Result<()> {
        self.run("close-port", &port_args(port, &[]), None)?;
        Ok(())
    }

    /// `opened-ports --format=json`.
    pub fn opened_ports(&self) -> Result<Vec<Port>> {
        let out = self.run("opened-ports", &args(["--format=json"]), None)?;
        parse::opened_ports(&out)
    }

    // --- logging ---

    /// `juju-log --log-level <LEVEL> -- <message>`.
    pub fn log(&self, level: LogLevel, message: &str) -> Result<()> {
        self.run(
            "juju-log",
            &args(["--log-level", level.as_str(), "--", message]),
            None,
        )?;
        Ok(())
    }

    /// `juju-log` at INFO.
    pub fn info(&self, message: &str) -> Result<()> {
        self.log(LogLevel::Info, message)
    }

    // --- actions ---

    /// `action-get --format=json`: the action's parameters.
    pub fn action_get(&self) -> Result<Map<String, Value>> {
        let out = self.run("action-get", &args(["--format=json"]), None)?;
        parse::object_or_null("action-get", &out)
    }

    /// The action's parameters as a type.
    pub fn action_params<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(Value::Object(self.action_get()?)).map_err(|e| Error::Decode {
            what: "action parameters".into(),
            reason: e.to_string(),
        })
    }

    /// `action-set k=v ...`: a serializable value (a struct or map) as results; nested
    /// objects become dotted keys (`a.b=1`), as Juju wants them.
    pub fn action_set<T: Serialize>(&self, results: &T) -> Result<()> {
        let flat = flatten_results(results)?;
        if flat.is_empty() {
            return Ok(());
        }
        let argv: Vec<String> = flat.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // Results may be secrets: an error repeats only their keys.
        let shown: Vec<String> = flat.keys().map(|k| format!("{k}=<redacted>")).collect();
        self.run_shown("action-set", &argv, None, &shown)?;
        Ok(())
    }

    /// `action-fail -- <message>`.
    pub fn action_fail(&self, message: &str) -> Result<()> {
        self.run("action-fail", &args(["--", message]), None)?;
        Ok(())
    }

    /// `action-log -- <message>`: progress the operator sees while the action runs.
    pub fn action_log(&self, message: &str) -> Result<()> {
        self.run("action-log", &args(["--", message]), None)?;
        Ok(())
    }

    // --- resources ---

    /// `resource-get <name>`: the local path of an attached resource.
    pub fn resource_get(&self, name: &str) -> Result<PathBuf> {
        let out = self.run("resource-get", &args([name]), None)?;
        let path = out.trim();
        if path.is_empty() {
            return Err(Error::output("resource-get", &out, "no path"));
        }
        Ok(PathBuf::from(path))
    }

    // --- stored state (Juju's server-side unit state) ---

    /// `state-get --format=json`: every stored key.
    pub fn state_get_all(&self) -> Result<BTreeMap<String, String>> {
        let out = self.run("state-get", &args(["--format=json"]), None)?;
        parse::string_map("state-get", &out)
    }

    /// `state-get --format=json <key>`: `None` when unset.
    pub fn state_get(&self, key: &str) -> Result<Option<String>> {
        let out = self.run("state-get", &args(["--format=json", key]), None)?;
        parse::optional_string("state-get", &out)
    }

    /// `state-set --file -`: merges the given keys.
    pub fn state_set(&self, data: &BTreeMap<String, String>) -> Result<()> {
        self.run(
            "state-set",
            &args(["--file", "-"]),
            Some(&json_object(data)?),
        )?;
        Ok(())
    }

    /// `state-delete <key>`.
    pub fn state_delete(&self, key: &str) -> Result<()> {
        self.run("state-delete", &args([key]), None)?;
        Ok(())
    }

    /// A stored value (JSON-encoded under `key`) as a type; `None` when unset.
    pub fn stored<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.state_get(key)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| Error::Decode {
                    what: format!("stored state {key:?}"),
                    reason: e.to_string(),
                }),
        }
    }

    /// Stores a value JSON-encoded under `key`; it survives between hooks.
    pub fn store<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let encoded = serde_json::to_string(value).map_err(|e| Error::Decode {
            what: format!("stored state {key:?}"),
            reason: e.to_string(),
        })?;
        self.state_set(&BTreeMap::from([(key.to_string(), encoded)]))
    }

    // --- network ---

    /// `network-get --format=json [-r <id>] <binding>`.
    pub fn network_get(&self, binding: &str, rel: Option<&RelationId>) -> Result<Network> {
        let mut a = args(["--format=json"]);
        if let Some(rel) = rel {
            a.extend(args(["-r", &rel.id.to_string()]));
        }
        a.push(binding.to_string());
        let out = self.run("network-get", &a, None)?;
        parse::json("network-get", &out)
    }

    /// The address other units reach this one at on `binding`: the first ingress address
    /// (or the first bound address).
    pub fn unit_address(&self, binding: &str) -> Result<String> {
        let net = self.network_get(binding, None)?;
        net.ingress_addresses
            .first()
            .cloned()
            .or_else(|| {
                net.bind_addresses
                    .iter()
                    .flat_map(|b| b.addresses.iter())
                    .map(|a| a.value.clone())
                    .next()
            })
            .ok_or_else(|| Error::output("network-get", binding, "no address for the binding"))
    }

    /// `unit-get --format=json <private-address|public-address>` (older; prefer
    /// [`HookTools::unit_address`]).
    pub fn unit_get(&self, setting: &str) -> Result<String> {
        let out = self.run("unit-get", &args(["--format=json", setting]), None)?;
        parse::json("unit-get", &out)
    }

    /// `goal-state --format=json`.
    pub fn goal_state(&self) -> Result<GoalState> {
        let out = self.run("goal-state", &args(["--format=json"]), None)?;
        parse::json("goal-state", &out)
    }
}

fn args<const N: usize>(a: [&str; N]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn json_object<T: Serialize>(data: &T) -> Result<String> {
    serde_json::to_string(data).map_err(|e| Error::Databag(e.to_string()))
}

/// `relation-get --format=json -r REF [--app] <key|-> <unit|app>`.
pub(crate) fn relation_get_args(
    rel: &RelationId,
    key: &str,
    target: &str,
    app: bool,
) -> Vec<String> {
    let mut a = args(["--format=json", "-r", &rel.to_string()]);
    if app {
        a.push("--app".into());
    }
    a.extend(args([key, target]));
    a
}

/// `relation-set -r REF [--app] --file -`.
pub(crate) fn relation_set_args(rel: &RelationId, app: bool) -> Vec<String> {
    let mut a = args(["-r", &rel.to_string()]);
    if app {
        a.push("--app".into());
    }
    a.extend(args(["--file", "-"]));
    a
}

/// `status-set --application=True|False <status> [-- <msg>]`.
pub(crate) fn status_set_args(status: &Status, app: bool) -> Result<Vec<String>> {
    if !status.name.settable() {
        return Err(Error::Invalid(format!(
            "status-set cannot set {:?}: Juju sets it",
            status.name.as_str()
        )));
    }
    let flag = if app {
        "--application=True"
    } else {
        "--application=False"
    };
    let mut a = args([flag, status.name.as_str()]);
    if !status.message.is_empty() {
        a.extend(args(["--", &status.message]));
    }
    Ok(a)
}

/// `open-port`/`close-port [--endpoints a,b] <port>`.
pub(crate) fn port_args(port: &Port, endpoints: &[&str]) -> Vec<String> {
    let mut a = Vec::new();
    if !endpoints.is_empty() {
        a.extend(args(["--endpoints", &endpoints.join(",")]));
    }
    a.push(port.to_string());
    a
}

/// Flattens action results to `action-set`'s dotted keys; strings stay as they are, other
/// scalars and lists are written as JSON.
pub(crate) fn flatten_results<T: Serialize>(results: &T) -> Result<BTreeMap<String, String>> {
    let value = serde_json::to_value(results)
        .map_err(|e| Error::Invalid(format!("action results: {e}")))?;
    let Value::Object(map) = value else {
        return Err(Error::Invalid("action results must be an object".into()));
    };
    let mut out = BTreeMap::new();
    flatten_into(&map, "", &mut out)?;
    Ok(out)
}

fn flatten_into(
    map: &Map<String, Value>,
    prefix: &str,
    out: &mut BTreeMap<String, String>,
) -> Result<()> {
    for (k, v) in map {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let text = match v {
            Value::Object(inner) => {
                flatten_into(inner, &key, out)?;
                continue;
            }
            Value::Null => continue,
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if out.insert(key.clone(), text).is_some() {
            return Err(Error::Invalid(format!(
                "action results: duplicate key {key:?}"
            )));
        }
    }
    Ok(())
}

/// Parsers for hook tool output, as Juju prints it with `--format=json`.
pub(crate) mod parse {
    use super::*;

    pub fn json<T: DeserializeOwned>(tool: &str, out: &str) -> Result<T> {
        serde_json::from_str(out.trim()).map_err(|e| Error::output(tool, out, e))
    }

    /// A JSON object; `null` or nothing (Juju prints `null` for an empty map) is empty.
    pub fn object_or_null(tool: &str, out: &str) -> Result<Map<String, Value>> {
        if out.trim().is_empty() {
            return Ok(Map::new());
        }
        Ok(json::<Option<Map<String, Value>>>(tool, out)?.unwrap_or_default())
    }

    /// One value; `null` or no output means unset.
    pub fn optional_value(tool: &str, out: &str) -> Result<Option<Value>> {
        if out.trim().is_empty() {
            return Ok(None);
        }
        Ok(json::<Value>(tool, out)?).map(|v| if v.is_null() { None } else { Some(v) })
    }

    /// One string; `null` or no output means unset.
    pub fn optional_string(tool: &str, out: &str) -> Result<Option<String>> {
        match optional_value(tool, out)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(Error::output(
                tool,
                out,
                format!("expected a string, got {other}"),
            )),
        }
    }

    /// A string → string map (`state-get`: Juju prints `null` when nothing is stored).
    pub fn string_map(tool: &str, out: &str) -> Result<BTreeMap<String, String>> {
        object_or_null(tool, out)?
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                other => Err(Error::output(
                    tool,
                    out,
                    format!("value of {k:?} is {other}, not a string"),
                )),
            })
            .collect()
    }

    /// A databag from `relation-get --format=json ... -`.
    pub fn databag(tool: &str, out: &str) -> Result<Databag> {
        string_map(tool, out)
    }

    /// `relation-ids --format=json`: `["db:3", ...]`.
    pub fn relation_ids(out: &str) -> Result<Vec<RelationId>> {
        let ids: Option<Vec<String>> = json("relation-ids", out)?;
        ids.unwrap_or_default()
            .iter()
            .map(|s| s.parse().map_err(|e| Error::output("relation-ids", out, e)))
            .collect()
    }

    /// `opened-ports --format=json`: `["8000/tcp", "9000-9010/udp", "icmp"]`.
    pub fn opened_ports(out: &str) -> Result<Vec<Port>> {
        let ports: Option<Vec<String>> = json("opened-ports", out)?;
        ports
            .unwrap_or_default()
            .iter()
            .map(|s| {
                // With --endpoints each entry ends in " (ep1,ep2)"; we only want the port.
                let port = s.split(' ').next().unwrap_or(s);
                port.parse()
                    .map_err(|e| Error::output("opened-ports", out, e))
            })
            .collect()
    }

    /// `status-get --include-data --format=json`: `{"status","message","status-data"}` for
    /// the unit, under `"application-status"` for the application.
    pub fn status(tool: &str, out: &str, app: bool) -> Result<Status> {
        #[derive(Deserialize)]
        struct Raw {
            status: String,
            #[serde(default)]
            message: String,
        }
        #[derive(Deserialize)]
        struct AppRaw {
            #[serde(rename = "application-status")]
            application_status: Raw,
        }
        let raw = if app {
            json::<AppRaw>(tool, out)?.application_status
        } else {
            json::<Raw>(tool, out)?
        };
        let name: StatusName = raw
            .status
            .parse()
            .map_err(|e| Error::output(tool, out, e))?;
        Ok(Status::new(name, raw.message))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn rel() -> RelationId {
        RelationId::new("db", 3)
    }

    #[test]
    fn command_lines_are_jujus() {
        assert_eq!(
            relation_get_args(&rel(), "-", "app/0", false),
            ["--format=json", "-r", "db:3", "-", "app/0"]
        );
        assert_eq!(
            relation_get_args(&rel(), "-", "pg", true),
            ["--format=json", "-r", "db:3", "--app", "-", "pg"]
        );
        assert_eq!(
            relation_get_args(&rel(), "url", "pg/1", false),
            ["--format=json", "-r", "db:3", "url", "pg/1"]
        );
        assert_eq!(
            relation_set_args(&rel(), false),
            ["-r", "db:3", "--file", "-"]
        );
        assert_eq!(
            relation_set_args(&rel(), true),
            ["-r", "db:3", "--app", "--file", "-"]
        );
        assert_eq!(
            status_set_args(&Status::blocked("no model"), false).unwrap(),
            ["--application=False", "blocked", "--", "no model"]
        );
        assert_eq!(
            status_set_args(&Status::active(""), true).unwrap(),
            ["--application=True", "active"]
        );
        assert!(status_set_args(&Status::error("x"), false).is_err());
        assert_eq!(port_args(&Port::tcp(8000), &[]), ["8000/tcp"]);
        assert_eq!(
            port_args(&Port::udp(9000).to(9010), &["a", "b"]),
            ["--endpoints", "a,b", "9000-9010/udp"]
        );
        assert_eq!(port_args(&Port::icmp(), &[]), ["icmp"]);
    }

    #[test]
    fn action_results_flatten_to_dotted_keys() {
        let flat = flatten_results(&json!({"model": "smollm", "load": {"ms": 12, "ok": true}, "tags": ["a"], "none": null}))
            .unwrap();
        let want: BTreeMap<String, String> = [
            ("load.ms", "12"),
            ("load.ok", "true"),
            ("model", "smollm"),
            ("tags", "[\"a\"]"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(flat, want);
        assert!(flatten_results(&json!({"a": {"b": 1}, "a.b": 2})).is_err());
        assert!(flatten_results(&json!([1])).is_err());
    }

    #[test]
    fn outputs_parse() {
        assert_eq!(
            parse::relation_ids("[\"db:3\",\"db:10\"]\n").unwrap(),
            [RelationId::new("db", 3), RelationId::new("db", 10)]
        );
        assert!(parse::relation_ids("null").unwrap().is_empty());
        assert!(parse::relation_ids("[\"db\"]").is_err());
        assert!(parse::json::<bool>("is-leader", "true\n").unwrap());
        assert!(!parse::json::<bool>("is-leader", "false").unwrap());
        assert!(parse::json::<bool>("is-leader", "True").is_err());

        let bag =
            parse::databag("relation-get", "{\"url\":\"http://x:8000\",\"n\":\"2\"}\n").unwrap();
        assert_eq!(bag.get("url").map(String::as_str), Some("http://x:8000"));
        assert!(parse::databag("relation-get", "null").unwrap().is_empty());
        assert!(parse::databag("relation-get", "{\"n\":2}").is_err());

        // state-get prints `null` when nothing is stored, nothing for a missing key.
        assert!(parse::string_map("state-get", "null\n").unwrap().is_empty());
        assert_eq!(parse::optional_string("state-get", "").unwrap(), None);
        assert_eq!(
            parse::optional_string("state-get", "\"v\"")
                .unwrap()
                .as_deref(),
            Some("v")
        );
        assert_eq!(parse::optional_value("config-get", "null").unwrap(), None);
        assert_eq!(
            parse::optional_value("config-get", "8000").unwrap(),
            Some(json!(8000))
        );
        assert_eq!(
            parse::object_or_null(
                "config-get",
                "{\"model-id\":\"x\",\"port\":8000,\"debug\":false}"
            )
            .unwrap()
            .get("port"),
            Some(&json!(8000))
        );

        assert_eq!(
            parse::opened_ports("[\"8000/tcp\",\"9000-9010/udp\",\"icmp\",\"80/tcp (*)\"]")
                .unwrap(),
            [
                Port::tcp(8000),
                Port::udp(9000).to(9010),
                Port::icmp(),
                Port::tcp(80)
            ]
        );
        assert_eq!(
            parse::status(
                "status-get",
                "{\"message\":\"ok\",\"status\":\"active\",\"status-data\":{}}",
                false
            )
            .unwrap(),
            Status::active("ok")
        );
        assert_eq!(
            parse::status(
                "status-get",
                "{\"application-status\":{\"message\":\"\",\"status\":\"waiting\",\"status-data\":{},\"units\":{}}}",
                true
            )
            .unwrap(),
            Status::waiting("")
        );

        let net: Network = parse::json(
            "network-get",
            r#"{"bind-addresses":[{"mac-address":"00:16:3e:aa:bb:cc","interface-name":"eth0",
                "addresses":[{"hostname":"","value":"10.0.0.5","cidr":"10.0.0.0/24"}],
                "macaddress":"00:16:3e:aa:bb:cc","interfacename":"eth0"}],
                "egress-subnets":["10.0.0.5/32"],"ingress-addresses":["10.0.0.5"]}"#,
        )
        .unwrap();
        assert_eq!(net.ingress_addresses, ["10.0.0.5"]);
        assert_eq!(net.bind_addresses[0].addresses[0].cidr, "10.0.0.0/24");
    }

    #[test]
    fn ports_and_relation_ids_round_trip() {
        for s in ["8000/tcp", "53/udp", "9000-9010/tcp", "icmp"] {
            assert_eq!(s.parse::<Port>().unwrap().to_string(), s);
        }
        assert_eq!("80".parse::<Port>().unwrap(), Port::tcp(80));
        for bad in ["0", "70000/tcp", "80/sctp", "90-80", "x"] {
            assert!(bad.parse::<Port>().is_err(), "{bad}");
        }
        let id: RelationId = "kv-cache-manager:12".parse().unwrap();
        assert_eq!((id.endpoint.as_str(), id.id), ("kv-cache-manager", 12));
        assert_eq!(id.to_string(), "kv-cache-manager:12");
    }

    #[test]
    fn a_missing_tool_is_a_spawn_error() {
        let tools = HookTools::in_dir("/nonexistent-juju-tools");
        assert!(matches!(tools.is_leader(), Err(Error::ToolSpawn { .. })));
    }
}
