//! The hook tools' behaviour over the harness state: what each prints, changes and
//! refuses, as Juju's do.

use std::collections::BTreeMap;
use std::fs;

use serde_json::{json, Map, Value};

use super::fake::World;
use super::flags::{
    at_most, emit, exactly, fail, format, parse, usage, Answer, Kind, Parsed, Refuse, APP, FILE,
    FORMAT, REL,
};
use super::{LogLine, OpenedPort, StatusChange};
use crate::types::{LogLevel, Port, Status, StatusName};

pub(crate) fn exec(w: &mut World, tool: &str, args: &[String], stdin: Option<&str>) -> Answer {
    match tool {
        "config-get" => config_get(w, args),
        "is-leader" => {
            let p = parse(args, &[FORMAT])?;
            at_most(&p, 0)?;
            emit(&Value::Bool(w.state.leader), format(&p)?)
        }
        "relation-ids" => relation_ids(w, args),
        "relation-list" => relation_list(w, args),
        "relation-get" => relation_get(w, args),
        "relation-set" => relation_set(w, args, stdin),
        "status-set" => status_set(w, args),
        "status-get" => status_get(w, args),
        "application-version-set" => {
            let p = parse(args, &[])?;
            exactly(&p, 1, "version")?;
            w.state.app_version = Some(p.pos[0].clone());
            Ok(String::new())
        }
        "open-port" | "close-port" => port(w, tool == "open-port", args),
        "opened-ports" => opened_ports(w, args),
        "juju-log" => juju_log(w, args),
        "action-get" | "action-set" | "action-fail" | "action-log" => action(w, tool, args),
        "resource-get" => {
            let p = parse(args, &[])?;
            exactly(&p, 1, "resource name")?;
            let name = &p.pos[0];
            match w.hook.resources.get(name) {
                Some(path) => Ok(format!("{}\n", path.display())),
                None => Err(fail(format!(
                    "could not download resource: HTTP request failed: resource#{}/{name} not found",
                    w.state.app
                ))),
            }
        }
        "state-get" => state_get(w, args),
        "state-set" => state_set(w, args, stdin),
        "state-delete" => {
            let p = parse(args, &[])?;
            exactly(&p, 1, "key")?;
            w.state.stored.remove(&p.pos[0]);
            Ok(String::new())
        }
        "network-get" => network_get(w, args),
        "unit-get" => {
            let p = parse(args, &[FORMAT])?;
            exactly(&p, 1, "setting")?;
            match p.pos[0].as_str() {
                "private-address" | "public-address" => emit(&json!(w.state.address), format(&p)?),
                other => Err(fail(format!("unknown setting {other:?}"))),
            }
        }
        "goal-state" => goal_state(w, args),
        other => Err(fail(format!(
            "{other}: not a hook tool the harness provides"
        ))),
    }
}

fn config_get(w: &World, args: &[String]) -> Answer {
    let p = parse(args, &[FORMAT, (&["all", "a"], Kind::Bool)])?;
    at_most(&p, 1)?;
    let fmt = format(&p)?;
    match p.pos.first() {
        Some(key) => emit(w.hook.config.get(key).unwrap_or(&Value::Null), fmt),
        None => emit(&Value::Object(w.hook.config.clone()), fmt),
    }
}

/// The relation `-r` names (`endpoint:id` or `id`), or the hook's.
fn relation_index(w: &World, p: &Parsed) -> Result<usize, Refuse> {
    let raw = match p.value("r") {
        Some(r) => r.to_string(),
        None => match w.hook.relation_id {
            Some(id) => id.to_string(),
            None => return Err(usage("no relation id specified")),
        },
    };
    let not_found = || {
        usage(format!(
            "invalid value {raw:?} for option -r: relation not found"
        ))
    };
    let (endpoint, id) = match raw.rsplit_once(':') {
        Some((e, id)) => (Some(e), id),
        None => (None, raw.as_str()),
    };
    let id: u32 = id.parse().map_err(|_| not_found())?;
    let idx = w
        .state
        .relations
        .iter()
        .position(|r| r.id == Some(id))
        .ok_or_else(not_found)?;
    if endpoint.is_some_and(|e| e != w.state.relations[idx].endpoint) {
        return Err(not_found());
    }
    Ok(idx)
}

fn relation_ids(w: &World, args: &[String]) -> Answer {
    let p = parse(args, &[FORMAT])?;
    at_most(&p, 1)?;
    let endpoint = match p.pos.first() {
        Some(e) => e.clone(),
        None => match w.hook.relation_id.and_then(|id| w.state.relation_by_id(id)) {
            Some(r) => r.endpoint.clone(),
            None => return Err(usage("no endpoint name specified")),
        },
    };
    let ids: Vec<Value> = w
        .state
        .relations
        .iter()
        .filter(|r| r.endpoint == endpoint)
        .map(|r| json!(r.reference()))
        .collect();
    emit(&Value::Array(ids), format(&p)?)
}

fn relation_list(w: &World, args: &[String]) -> Answer {
    let p = parse(args, &[FORMAT, REL, APP])?;
    at_most(&p, 0)?;
    let idx = relation_index(w, &p)?;
    let rel = &w.state.relations[idx];
    let this_hook = w.hook.relation_id == rel.id;
    if p.flag("app") {
        return emit(&json!(rel.remote_app), format(&p)?);
    }
    // In -departed the departing unit has already left the list; in -broken, all have.
    let units: Vec<Value> = if this_hook && w.hook.broken {
        Vec::new()
    } else {
        rel.remote_units
            .keys()
            .filter(|u| !(this_hook && w.hook.departing_unit.as_ref() == Some(*u)))
            .map(|u| json!(u))
            .collect()
    };
    emit(&Value::Array(units), format(&p)?)
}

fn app_of(unit: &str) -> &str {
    unit.split_once('/').map_or(unit, |(a, _)| a)
}

fn relation_get(w: &World, args: &[String]) -> Answer {
    let p = parse(args, &[FORMAT, REL, APP])?;
    at_most(&p, 2)?;
    let fmt = format(&p)?;
    let idx = relation_index(w, &p)?;
    let rel = &w.state.relations[idx];
    let key = p.pos.first().filter(|k| k.as_str() != "-");
    let app = p.flag("app");
    let target = match p.pos.get(1) {
        Some(t) => t.clone(),
        None => {
            let default = if app {
                &w.hook.remote_app
            } else {
                &w.hook.remote_unit
            };
            default
                .clone()
                .ok_or_else(|| usage("no unit or application specified"))?
        }
    };
    let bag = if app {
        let name = app_of(&target);
        if name == w.state.app {
            // Only the leader may see its own application's data (any unit on a peer relation).
            if !(w.state.leader || rel.peer) {
                return Err(fail(format!(
                    "cannot read application settings of {name:?}: permission denied"
                )));
            }
            &rel.local_app_data
        } else if name == rel.remote_app {
            &rel.remote_app_data
        } else {
            return Err(fail(format!(
                "cannot read settings for application {name:?} in relation {:?}: application not found",
                rel.reference()
            )));
        }
    } else if !target.contains('/') {
        return Err(usage(format!("invalid unit name {target:?}")));
    } else if target == w.state.unit {
        &rel.local_unit_data
    } else if let Some(bag) = rel.remote_units.get(&target) {
        bag
    } else {
        return Err(fail(format!(
            "cannot read settings for unit {target:?} in relation {:?}: unit {target:?}: settings not found",
            rel.reference()
        )));
    };
    match key {
        Some(k) => emit(&bag.get(k).map_or(Value::Null, |v| json!(v)), fmt),
        None => emit(&json!(bag), fmt),
    }
}

/// `--file` content (JSON or YAML) and `key=value` arguments as settings; `""` deletes.
fn settings(p: &Parsed, stdin: Option<&str>) -> Result<BTreeMap<String, String>, Refuse> {
    let mut out = BTreeMap::new();
    if let Some(file) = p.value("file") {
        let text = if file == "-" {
            stdin.unwrap_or_default().to_string()
        } else {
            fs::read_to_string(file).map_err(|e| fail(format!("cannot read {file}: {e}")))?
        };
        let value: Value = if text.trim().is_empty() {
            Value::Object(Map::new())
        } else {
            serde_yaml_ng::from_str(&text)
                .map_err(|e| fail(format!("cannot parse settings: {e}")))?
        };
        let map = match value {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                return Err(fail(format!(
                    "cannot parse settings: expected a map, got {other}"
                )))
            }
        };
        for (k, v) in map {
            let v = match v {
                Value::String(s) => s,
                Value::Null => String::new(),
                Value::Bool(_) | Value::Number(_) => v.to_string(),
                other => {
                    return Err(fail(format!(
                        "cannot parse settings: value of {k:?} must be a string, got {other}"
                    )))
                }
            };
            out.insert(k, v);
        }
    }
    for kv in &p.pos {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| usage(format!("expected \"key=value\", got {kv:?}")))?;
        if k.is_empty() {
            return Err(usage(format!("expected \"key=value\", got {kv:?}")));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn merge(bag: &mut BTreeMap<String, String>, changes: BTreeMap<String, String>) {
    for (k, v) in changes {
        if v.is_empty() {
            bag.remove(&k);
        } else {
            bag.insert(k, v);
        }
    }
}

fn relation_set(w: &mut World, args: &[String], stdin: Option<&str>) -> Answer {
    let p = parse(args, &[REL, APP, FILE, FORMAT])?;
    let idx = relation_index(w, &p)?;
    let changes = settings(&p, stdin)?;
    let leader = w.state.leader;
    let unit = w.state.unit.clone();
    let rel = &mut w.state.relations[idx];
    if p.flag("app") {
        if !leader {
            return Err(fail(format!(
                "cannot write application settings of relation {:?}: unit {unit:?} is not the leader",
                rel.reference()
            )));
        }
        merge(&mut rel.local_app_data, changes);
    } else {
        merge(&mut rel.local_unit_data, changes);
    }
    Ok(String::new())
}

fn status_set(w: &mut World, args: &[String]) -> Answer {
    let p = parse(args, &[(&["application"], Kind::Bool)])?;
    let Some(name) = p.pos.first() else {
        return Err(usage("invalid args, require <status> [message] [data]"));
    };
    let allowed = [
        StatusName::Maintenance,
        StatusName::Blocked,
        StatusName::Waiting,
        StatusName::Active,
    ];
    let status_name = allowed
        .into_iter()
        .find(|s| s.as_str() == name)
        .ok_or_else(|| {
            fail(format!(
                "invalid status {name:?}, expected one of [maintenance blocked waiting active]"
            ))
        })?;
    let status = Status::new(status_name, p.pos[1..].join(" "));
    let app = p.flag("application");
    if app {
        if !w.state.leader {
            return Err(fail(
                "setting application status: this unit is not the leader",
            ));
        }
        w.state.app_status = status.clone();
    } else {
        w.state.unit_status = status.clone();
    }
    w.record.status_history.push(StatusChange { app, status });
    Ok(String::new())
}

fn status_json(s: &Status) -> Value {
    json!({"message": s.message, "status": s.name.as_str(), "status-data": {}})
}

fn status_get(w: &World, args: &[String]) -> Answer {
    let p = parse(
        args,
        &[
            FORMAT,
            (&["include-data"], Kind::Bool),
            (&["application"], Kind::Bool),
        ],
    )?;
    at_most(&p, 1)?;
    let fmt = format(&p)?;
    if p.flag("application") {
        if !w.state.leader {
            return Err(fail(
                "finding application status: this unit is not the leader",
            ));
        }
        let mut app = status_json(&w.state.app_status);
        if let Value::Object(m) = &mut app {
            m.insert(
                "units".into(),
                json!({ w.state.unit.clone(): status_json(&w.state.unit_status) }),
            );
        }
        return emit(&json!({ "application-status": app }), fmt);
    }
    if p.flag("include-data") {
        emit(&status_json(&w.state.unit_status), fmt)
    } else {
        emit(&json!(w.state.unit_status.name.as_str()), fmt)
    }
}

fn port(w: &mut World, open: bool, args: &[String]) -> Answer {
    let p = parse(args, &[(&["endpoints"], Kind::Value), FORMAT])?;
    exactly(&p, 1, "port")?;
    let port: Port = p.pos[0]
        .parse()
        .map_err(|_| usage(format!("invalid port or range {:?}", p.pos[0])))?;
    let endpoints: Vec<String> = p
        .value("endpoints")
        .map(|e| {
            e.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let opened = &mut w.state.opened_ports;
    if open {
        if !opened
            .iter()
            .any(|o| o.port == port && o.endpoints == endpoints)
        {
            opened.push(OpenedPort { port, endpoints });
            opened.sort();
        }
    } else {
        opened.retain(|o| !(o.port == port && (endpoints.is_empty() || o.endpoints == endpoints)));
    }
    Ok(String::new())
}

fn opened_ports(w: &World, args: &[String]) -> Answer {
    let p = parse(args, &[FORMAT, (&["endpoints"], Kind::Bool)])?;
    at_most(&p, 0)?;
    let list: Vec<Value> = w
        .state
        .opened_ports
        .iter()
        .map(|o| {
            if p.flag("endpoints") {
                let eps = if o.endpoints.is_empty() {
                    "*".to_string()
                } else {
                    o.endpoints.join(",")
                };
                json!(format!("{} ({eps})", o.port))
            } else {
                json!(o.port.to_string())
            }
        })
        .collect();
    emit(&Value::Array(list), format(&p)?)
}

fn juju_log(w: &mut World, args: &[String]) -> Answer {
    let p = parse(
        args,
        &[
            (&["log-level", "l"], Kind::Value),
            (&["debug"], Kind::Bool),
            FORMAT,
        ],
    )?;
    if p.pos.is_empty() {
        return Err(usage("no message specified"));
    }
    let level = match p.value("log-level") {
        Some(l) => l
            .parse::<LogLevel>()
            .map_err(|_| fail(format!("unknown log level {l:?}")))?,
        None if p.flag("debug") => LogLevel::Debug,
        None => LogLevel::Info,
    };
    w.record.logs.push(LogLine {
        level,
        message: p.pos.join(" "),
    });
    Ok(String::new())
}

/// Juju's action result keys: lowercase words of letters, digits and dashes, dotted.
fn valid_result_key(key: &str) -> bool {
    key.split('.').all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !part.starts_with('-')
            && !part.ends_with('-')
    })
}

fn action(w: &mut World, tool: &str, args: &[String]) -> Answer {
    if w.hook.action.is_none() {
        return Err(fail(format!("{tool}: not running an action")));
    }
    match tool {
        "action-get" => {
            let p = parse(args, &[FORMAT])?;
            at_most(&p, 1)?;
            let fmt = format(&p)?;
            let mut v = Value::Object(w.hook.params.clone());
            if let Some(key) = p.pos.first() {
                for part in key.split('.') {
                    v = v.get(part).cloned().unwrap_or(Value::Null);
                }
            }
            emit(&v, fmt)
        }
        "action-set" => {
            let p = parse(args, &[])?;
            if p.pos.is_empty() {
                return Err(usage("no action results specified"));
            }
            let mut new = Vec::new();
            for kv in &p.pos {
                let (k, v) = kv.split_once('=').ok_or_else(|| {
                    usage(format!("argument {kv:?} must be of the form key...=value"))
                })?;
                if !valid_result_key(k) {
                    return Err(usage(format!(
                        "key {k:?} must start and end with lowercase alphanumeric, and contain only lowercase alphanumeric, hyphens and periods"
                    )));
                }
                let top = k.split('.').next().unwrap_or(k);
                if ["stdout", "stdout-encoding", "stderr", "stderr-encoding"].contains(&top) {
                    return Err(fail(format!("cannot set reserved action key {top:?}")));
                }
                new.push((k.to_string(), v.to_string()));
            }
            w.record.action.results.extend(new);
            Ok(String::new())
        }
        "action-fail" => {
            let p = parse(args, &[])?;
            let msg = if p.pos.is_empty() {
                "action failed without reason given".to_string()
            } else {
                p.pos.join(" ")
            };
            w.record.action.failure = Some(msg);
            Ok(String::new())
        }
        _ => {
            let p = parse(args, &[])?;
            if p.pos.is_empty() {
                return Err(usage("no message specified"));
            }
            w.record.action.logs.push(p.pos.join(" "));
            Ok(String::new())
        }
    }
}

fn state_get(w: &World, args: &[String]) -> Answer {
    let p = parse(args, &[FORMAT, (&["strict"], Kind::Bool)])?;
    at_most(&p, 1)?;
    let fmt = format(&p)?;
    match p.pos.first() {
        // Juju prints `null`, not `{}`, when nothing is stored.
        None if w.state.stored.is_empty() => emit(&Value::Null, fmt),
        None => emit(&json!(w.state.stored), fmt),
        Some(key) => match w.state.stored.get(key) {
            Some(v) => emit(&json!(v), fmt),
            None if p.flag("strict") => Err(fail(format!("{key:?} not found"))),
            // A missing key prints nothing.
            None => Ok(String::new()),
        },
    }
}

fn state_set(w: &mut World, args: &[String], stdin: Option<&str>) -> Answer {
    let p = parse(args, &[FILE])?;
    let changes = settings(&p, stdin)?;
    merge(&mut w.state.stored, changes);
    Ok(String::new())
}

fn network_get(w: &World, args: &[String]) -> Answer {
    let p = parse(
        args,
        &[
            FORMAT,
            REL,
            (&["primary-address"], Kind::Bool),
            (&["bind-address"], Kind::Bool),
            (&["ingress-address"], Kind::Bool),
            (&["egress-subnets"], Kind::Bool),
        ],
    )?;
    exactly(&p, 1, "binding name")?;
    let fmt = format(&p)?;
    if p.value("r").is_some() {
        relation_index(w, &p)?;
    }
    let binding = &p.pos[0];
    if let Some(known) = &w.hook.bindings {
        if !known.contains(binding) {
            return Err(fail(format!(
                "no network config found for binding {binding:?}"
            )));
        }
    }
    let addr = &w.state.address;
    let cidr = match addr.rsplit_once('.') {
        Some((net, _)) if addr.parse::<std::net::Ipv4Addr>().is_ok() => format!("{net}.0/24"),
        _ => String::new(),
    };
    let singles: Vec<(&str, Value)> = vec![
        ("primary-address", json!(addr)),
        ("bind-address", json!(addr)),
        ("ingress-address", json!(addr)),
        ("egress-subnets", json!(format!("{addr}/32"))),
    ];
    let asked: Vec<&(&str, Value)> = singles.iter().filter(|(n, _)| p.flag(n)).collect();
    if let [(_, v)] = asked.as_slice() {
        return emit(v, fmt);
    }
    let full = json!({
        "bind-addresses": [{
            "mac-address": "00:16:3e:00:00:01",
            "interface-name": "eth0",
            "addresses": [{"hostname": "", "value": addr, "cidr": cidr}],
            "macaddress": "00:16:3e:00:00:01",
            "interfacename": "eth0",
        }],
        "egress-subnets": [format!("{addr}/32")],
        "ingress-addresses": [addr],
    });
    if asked.is_empty() {
        return emit(&full, fmt);
    }
    let mut m = Map::new();
    for (n, v) in asked {
        m.insert(n.to_string(), v.clone());
    }
    emit(&Value::Object(m), fmt)
}

fn goal_state(w: &World, args: &[String]) -> Answer {
    let p = parse(args, &[FORMAT])?;
    at_most(&p, 0)?;
    let goal = || json!({"status": "active", "since": "2025-01-01 00:00:00Z"});
    let mut relations = Map::new();
    for rel in &w.state.relations {
        let entry = relations
            .entry(rel.endpoint.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(rel.remote_app.clone(), goal());
            for unit in rel.remote_units.keys() {
                m.insert(unit.clone(), goal());
            }
        }
    }
    emit(
        &json!({"units": {w.state.unit.clone(): goal()}, "relations": relations}),
        format(&p)?,
    )
}

#[cfg(test)]
#[path = "hook_tools_tests.rs"]
mod tests;
