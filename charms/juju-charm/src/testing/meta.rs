//! What the harness reads from a charm's `charmcraft.yaml`: config options with their types
//! and defaults, endpoints, actions with their parameters, resources. With it the harness
//! adds defaults as Juju does and refuses scenarios Juju could not produce (an undeclared
//! endpoint, config key or action; a value of the wrong type; a missing required param).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Map, Value};

use super::harness::HarnessError;
use super::{State, Trigger};
use crate::context::Event;

/// Whether an endpoint provides, requires or is a peer relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointRole {
    Provides,
    Requires,
    Peers,
}

/// A declared relation endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub role: EndpointRole,
    pub interface: String,
    pub limit: Option<u64>,
}

/// A declared config option.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigOption {
    /// `string`, `int`, `float`, `boolean` or `secret`.
    pub kind: String,
    pub default: Option<Value>,
}

/// A declared action.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActionSpec {
    /// Parameter name → its JSON schema (`type`, `default`, …).
    pub params: Map<String, Value>,
    pub required: Vec<String>,
}

/// The parts of `charmcraft.yaml` the harness checks scenarios against.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CharmMeta {
    pub name: String,
    pub endpoints: BTreeMap<String, Endpoint>,
    pub extra_bindings: Vec<String>,
    pub config: BTreeMap<String, ConfigOption>,
    pub actions: BTreeMap<String, ActionSpec>,
    pub resources: BTreeSet<String>,
}

fn bad(msg: impl Into<String>) -> HarnessError {
    HarnessError::Setup(format!("charmcraft.yaml: {}", msg.into()))
}

impl CharmMeta {
    /// Reads a `charmcraft.yaml`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, HarnessError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| HarnessError::io(path.display().to_string(), e))?;
        Self::from_yaml(&text)
    }

    /// Parses `charmcraft.yaml` text.
    pub fn from_yaml(text: &str) -> Result<Self, HarnessError> {
        let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| bad(e.to_string()))?;
        let name = doc
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no name"))?
            .to_string();
        let mut meta = CharmMeta {
            name,
            ..CharmMeta::default()
        };
        for (key, role) in [
            ("provides", EndpointRole::Provides),
            ("requires", EndpointRole::Requires),
            ("peers", EndpointRole::Peers),
        ] {
            for (ep, spec) in doc
                .get(key)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let interface = spec
                    .get("interface")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("endpoint {ep:?} has no interface")))?;
                meta.endpoints.insert(
                    ep.clone(),
                    Endpoint {
                        role,
                        interface: interface.to_string(),
                        limit: spec.get("limit").and_then(Value::as_u64),
                    },
                );
            }
        }
        if let Some(b) = doc.get("extra-bindings").and_then(Value::as_object) {
            meta.extra_bindings = b.keys().cloned().collect();
        }
        let options = doc.pointer("/config/options").and_then(Value::as_object);
        for (key, spec) in options.into_iter().flatten() {
            let kind = spec
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("config option {key:?} has no type")))?;
            if !["string", "int", "float", "boolean", "secret"].contains(&kind) {
                return Err(bad(format!(
                    "config option {key:?} has unknown type {kind:?}"
                )));
            }
            let default = spec.get("default").filter(|d| !d.is_null()).cloned();
            if let Some(d) = &default {
                if !fits(kind, d) {
                    return Err(bad(format!("default of {key:?} is not a {kind}: {d}")));
                }
            }
            meta.config.insert(
                key.clone(),
                ConfigOption {
                    kind: kind.to_string(),
                    default,
                },
            );
        }
        for (name, spec) in doc
            .get("actions")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let params = spec
                .get("params")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let required = spec
                .get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            meta.actions
                .insert(name.clone(), ActionSpec { params, required });
        }
        if let Some(r) = doc.get("resources").and_then(Value::as_object) {
            meta.resources = r.keys().cloned().collect();
        }
        Ok(meta)
    }

    /// The config `config-get` shows: the state's values over the declared defaults.
    pub(crate) fn config_with_defaults(&self, config: &Map<String, Value>) -> Map<String, Value> {
        let mut out: Map<String, Value> = self
            .config
            .iter()
            .filter_map(|(k, o)| o.default.clone().map(|d| (k.clone(), d)))
            .collect();
        out.extend(config.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }

    /// The params `action-get` shows: the given ones over the declared defaults.
    pub(crate) fn params_with_defaults(
        &self,
        action: &str,
        params: &Map<String, Value>,
    ) -> Map<String, Value> {
        let mut out: Map<String, Value> = self
            .actions
            .get(action)
            .map(|a| {
                a.params
                    .iter()
                    .filter_map(|(k, schema)| schema.get("default").map(|d| (k.clone(), d.clone())))
                    .collect()
            })
            .unwrap_or_default();
        out.extend(params.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }

    /// Bindings `network-get` accepts.
    pub(crate) fn bindings(&self) -> Vec<String> {
        self.endpoints
            .keys()
            .chain(&self.extra_bindings)
            .cloned()
            .collect()
    }

    /// Refuses a scenario Juju could not produce for this charm.
    pub(crate) fn check(&self, state: &State, trigger: &Trigger) -> Result<(), String> {
        for (key, value) in &state.config {
            let opt = self.config.get(key).ok_or_else(|| {
                format!("config option {key:?} is not declared in charmcraft.yaml")
            })?;
            if !fits(&opt.kind, value) {
                return Err(format!(
                    "config option {key:?} is a {}, not {value}",
                    opt.kind
                ));
            }
        }
        for rel in &state.relations {
            let ep = self.endpoints.get(&rel.endpoint).ok_or_else(|| {
                format!(
                    "endpoint {:?} is not declared in charmcraft.yaml",
                    rel.endpoint
                )
            })?;
            if !rel.interface.is_empty() && rel.interface != ep.interface {
                return Err(format!(
                    "relation on {:?} has interface {:?}; charmcraft.yaml says {:?}",
                    rel.endpoint, rel.interface, ep.interface
                ));
            }
            if rel.peer != (ep.role == EndpointRole::Peers) {
                return Err(format!(
                    "relation on {:?}: use Relation::{} for a {:?} endpoint",
                    rel.endpoint,
                    if ep.role == EndpointRole::Peers {
                        "peer"
                    } else {
                        "new"
                    },
                    ep.role
                ));
            }
        }
        for name in state.resources.keys() {
            if !self.resources.contains(name) {
                return Err(format!(
                    "resource {name:?} is not declared in charmcraft.yaml"
                ));
            }
        }
        if let Some(ep) = trigger.event.relation_endpoint() {
            if !self.endpoints.contains_key(ep) {
                return Err(format!(
                    "event {}: endpoint {ep:?} is not declared",
                    trigger.event.name()
                ));
            }
        }
        if let Event::Action(name) = &trigger.event {
            let spec = self
                .actions
                .get(name)
                .ok_or_else(|| format!("action {name:?} is not declared in charmcraft.yaml"))?;
            for req in &spec.required {
                if !trigger.params.contains_key(req) {
                    return Err(format!("action {name:?} requires param {req:?}"));
                }
            }
        }
        Ok(())
    }
}

fn fits(kind: &str, v: &Value) -> bool {
    match kind {
        "string" | "secret" => v.is_string(),
        "int" => v.is_i64() || v.is_u64(),
        "float" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing::Relation;

    const YAML: &str = r#"
name: llmd-decode
type: charm
provides:
  decode-worker: {interface: llmd_decode}
requires:
  kv-cache-manager: {interface: llmd_kv_cache, limit: 1}
peers:
  replicas: {interface: llmd_replicas}
config:
  options:
    model-id: {type: string, default: "", description: x}
    port: {type: int, default: 8000, description: x}
    hf-token: {type: secret, description: x}
actions:
  swap-model:
    description: x
    params:
      source: {type: string}
      drain: {type: boolean, default: true}
    required: [source]
resources:
  model: {type: file, filename: model.gguf}
"#;

    #[test]
    fn reads_charmcraft_yaml() {
        let m = CharmMeta::from_yaml(YAML).unwrap();
        assert_eq!(m.name, "llmd-decode");
        assert_eq!(m.endpoints["kv-cache-manager"].limit, Some(1));
        assert_eq!(m.endpoints["replicas"].role, EndpointRole::Peers);
        assert_eq!(m.config["port"].default, Some(Value::from(8000)));
        assert_eq!(m.config["hf-token"].default, None);
        let cfg = m.config_with_defaults(&State::default().config("port", 9000).config);
        assert_eq!(cfg.get("port"), Some(&Value::from(9000)));
        assert_eq!(cfg.get("model-id"), Some(&Value::from("")));
        assert!(!cfg.contains_key("hf-token"));
        let params = m.params_with_defaults(
            "swap-model",
            &Trigger::action("swap-model").param("source", "x").params,
        );
        assert_eq!(params.get("drain"), Some(&Value::from(true)));
        assert!(m.resources.contains("model"));
    }

    #[test]
    fn refuses_impossible_scenarios() {
        let m = CharmMeta::from_yaml(YAML).unwrap();
        let ok = Trigger::new(Event::ConfigChanged);
        assert!(m.check(&State::default().config("port", 8001), &ok).is_ok());
        assert!(m
            .check(&State::default().config("port", "8001"), &ok)
            .is_err());
        assert!(m.check(&State::default().config("nope", 1), &ok).is_err());
        assert!(m
            .check(
                &State::default().relation(Relation::new("decode-worker", "llmd_decode")),
                &ok
            )
            .is_ok());
        assert!(m
            .check(
                &State::default().relation(Relation::new("decode-worker", "other")),
                &ok
            )
            .is_err());
        assert!(m
            .check(
                &State::default().relation(Relation::new("replicas", "llmd_replicas")),
                &ok
            )
            .is_err());
        assert!(m
            .check(&State::default().resource_content("weights", "x"), &ok)
            .is_err());
        assert!(m
            .check(
                &State::default(),
                &Trigger::new(Event::relation_changed("db"))
            )
            .is_err());
        assert!(m
            .check(&State::default(), &Trigger::action("swap-model"))
            .is_err());
        assert!(m
            .check(
                &State::default(),
                &Trigger::action("swap-model").param("source", "hf:x/y")
            )
            .is_ok());
        assert!(CharmMeta::from_yaml("name: x\nconfig: {options: {a: {default: 1}}}").is_err());
    }
}
