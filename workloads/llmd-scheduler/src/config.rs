//! What the scheduler reads: the worker list (YAML the charm writes, or `--worker` flags) and
//! the routing configuration, in the shape of llm-d's `EndpointPickerConfig` (plugins, then
//! scheduling profiles that reference them with weights).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::SchedulerError;

/// Which legs a worker serves (the worker's `--role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Prefill,
    Decode,
    /// Both legs, and whole requests.
    #[default]
    Both,
}

impl Role {
    pub fn parse(s: &str) -> Result<Self, SchedulerError> {
        match s {
            "prefill" => Ok(Role::Prefill),
            "decode" => Ok(Role::Decode),
            "both" => Ok(Role::Both),
            other => Err(SchedulerError::Config(format!(
                "a worker's role is prefill, decode or both, not {other:?}"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Prefill => "prefill",
            Role::Decode => "decode",
            Role::Both => "both",
        }
    }

    /// Whether whole requests and decode legs may go here.
    pub fn decodes(self) -> bool {
        matches!(self, Role::Decode | Role::Both)
    }
}

/// One worker: its base URL, role, and (optionally) the model it serves; unset, the model
/// is read from the worker's `/v1/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    pub url: String,
    #[serde(default)]
    pub role: Role,
    #[serde(default)]
    pub model: Option<String>,
}

impl WorkerSpec {
    /// `--worker [ROLE=]URL`.
    pub fn parse_flag(s: &str) -> Result<Self, SchedulerError> {
        let (role, url) = match s.split_once('=') {
            Some((r, u)) if !r.contains('/') => (Role::parse(r)?, u),
            _ => (Role::Both, s),
        };
        let spec = WorkerSpec {
            url: url.to_string(),
            role,
            model: None,
        };
        spec.check()?;
        Ok(spec)
    }

    /// The URL without a trailing slash, checked to be `http://HOST:PORT`.
    pub fn check(&self) -> Result<(), SchedulerError> {
        worker_id(&self.url).map(|_| ())
    }
}

/// A worker's id in the cluster, as its KV events name it: the `host:port` of its URL.
pub fn worker_id(url: &str) -> Result<String, SchedulerError> {
    let u = reqwest::Url::parse(url)
        .map_err(|e| SchedulerError::Config(format!("worker url {url:?}: {e}")))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(SchedulerError::Config(format!(
            "worker url {url:?} must be http:// or https://"
        )));
    }
    let host = u
        .host_str()
        .ok_or_else(|| SchedulerError::Config(format!("worker url {url:?} has no host")))?;
    let port = u
        .port_or_known_default()
        .ok_or_else(|| SchedulerError::Config(format!("worker url {url:?} has no port")))?;
    Ok(format!("{host}:{port}"))
}

/// The YAML file `--config` names (the charm writes it); reloaded on SIGHUP or change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub workers: Vec<WorkerSpec>,
    /// The cache-manager's base URL (its `/v1/score`); none: approximate prefix routing.
    #[serde(default)]
    pub cache_manager: Option<String>,
    /// Routing plugins and profiles, inline (or in the file `--routing-config` names).
    #[serde(default)]
    pub routing: Option<RoutingConfig>,
}

pub fn read_config(path: &Path) -> Result<FileConfig, SchedulerError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SchedulerError::Config(format!("{}: {e}", path.display())))?;
    let cfg: FileConfig = serde_yaml_ng::from_str(&text)
        .map_err(|e| SchedulerError::Config(format!("{}: {e}", path.display())))?;
    for w in &cfg.workers {
        w.check()?;
    }
    if let Some(r) = &cfg.routing {
        r.validate()?;
    }
    Ok(cfg)
}

/// llm-d's `EndpointPickerConfig`: plugin instances, and profiles that use them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub plugins: Vec<PluginSpec>,
    #[serde(default)]
    pub scheduling_profiles: Vec<ProfileSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    #[serde(rename = "type")]
    pub kind: String,
    /// Defaults to the type.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub parameters: Option<serde_json::Value>,
}

impl PluginSpec {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.kind)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    pub name: String,
    pub plugins: Vec<PluginRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginRef {
    pub plugin_ref: String,
    #[serde(default)]
    pub weight: Option<f64>,
}

impl RoutingConfig {
    pub fn read(path: &Path) -> Result<Self, SchedulerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SchedulerError::Config(format!("{}: {e}", path.display())))?;
        let cfg: RoutingConfig = serde_yaml_ng::from_str(&text)
            .map_err(|e| SchedulerError::Config(format!("{}: {e}", path.display())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Built in: `default` as llm-d ships it (prefix 3, queue 2, kv-cache utilization 2,
    /// max score) and `round-robin` for comparison. The prefix scorer is the precise one;
    /// without a cache-manager it reads the scheduler's own record of what went where.
    pub fn builtin() -> Self {
        let plugin = |kind: &str| PluginSpec {
            kind: kind.to_string(),
            name: None,
            parameters: None,
        };
        let r = |name: &str, weight: Option<f64>| PluginRef {
            plugin_ref: name.to_string(),
            weight,
        };
        RoutingConfig {
            api_version: None,
            kind: None,
            plugins: vec![
                plugin("precise-prefix-cache-scorer"),
                plugin("queue-scorer"),
                plugin("kv-cache-utilization-scorer"),
                plugin("max-score-picker"),
                plugin("round-robin-picker"),
                PluginSpec {
                    kind: "pd-profile-handler".into(),
                    name: None,
                    parameters: Some(serde_json::json!({"threshold": 16})),
                },
            ],
            scheduling_profiles: vec![
                ProfileSpec {
                    name: "default".into(),
                    plugins: vec![
                        r("precise-prefix-cache-scorer", Some(3.0)),
                        r("queue-scorer", Some(2.0)),
                        r("kv-cache-utilization-scorer", Some(2.0)),
                        r("max-score-picker", None),
                    ],
                },
                ProfileSpec {
                    name: "round-robin".into(),
                    plugins: vec![r("round-robin-picker", None)],
                },
            ],
        }
    }

    /// Every reference names a plugin, every plugin type is known, every weight is finite
    /// and non-negative, and every profile has at most one picker.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        crate::routing::Profiles::build(self, None).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn worker_flags() {
        let w = WorkerSpec::parse_flag("prefill=http://127.0.0.1:8001").unwrap();
        assert_eq!(w.role, Role::Prefill);
        assert_eq!(w.url, "http://127.0.0.1:8001");
        let w = WorkerSpec::parse_flag("http://10.0.0.1:8000/").unwrap();
        assert_eq!(w.role, Role::Both);
        assert_eq!(worker_id(&w.url).unwrap(), "10.0.0.1:8000");
        assert_eq!(worker_id("http://h").unwrap(), "h:80");
        assert!(WorkerSpec::parse_flag("gpu=http://x:1").is_err());
        assert!(WorkerSpec::parse_flag("not a url").is_err());
        assert!(WorkerSpec::parse_flag("ftp://x:1").is_err());
    }

    #[test]
    fn llm_d_style_config_parses() {
        let y = r#"
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
  parameters:
    lruCapacityPerServer: 31250
- type: max-score-picker
- type: prefill-filter
- type: decode-filter
- type: pd-profile-handler
  parameters:
    threshold: 32
schedulingProfiles:
- name: prefill
  plugins:
  - pluginRef: prefill-filter
  - pluginRef: queue-scorer
    weight: 1.0
  - pluginRef: prefix-cache-scorer
    weight: 2
  - pluginRef: max-score-picker
- name: decode
  plugins:
  - pluginRef: decode-filter
  - pluginRef: queue-scorer
    weight: 1
  - pluginRef: prefix-cache-scorer
    weight: 2
  - pluginRef: max-score-picker
"#;
        let c: RoutingConfig = serde_yaml_ng::from_str(y).unwrap();
        c.validate().unwrap();
        let bad = y.replace(
            "pluginRef: queue-scorer\n    weight: 1\n",
            "pluginRef: nope\n",
        );
        let c: RoutingConfig = serde_yaml_ng::from_str(&bad).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("nope"));
    }

    #[test]
    fn builtin_is_valid() {
        RoutingConfig::builtin().validate().unwrap();
    }

    #[test]
    fn file_config() {
        let y = "workers:\n- url: http://127.0.0.1:9\n  role: decode\n  model: m\ncache_manager: http://127.0.0.1:8100\n";
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, y).unwrap();
        let c = read_config(&p).unwrap();
        assert_eq!(c.workers[0].role, Role::Decode);
        std::fs::write(&p, "workers:\n- url: http://x:1\n  colour: red\n").unwrap();
        assert!(read_config(&p).is_err());
    }
}
