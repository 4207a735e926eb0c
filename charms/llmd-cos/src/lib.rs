//! What each llmd charm gives the Canonical Observability Stack, in the formats COS's charm
//! libraries exchange (`prometheus_scrape`, `grafana_dashboard`, `cos_agent`):
//!
//! - scrape jobs (`*:PORT` meaning every unit) and scrape metadata;
//! - alert rules per component (files under `alert_rules/`, with `%%juju_topology%%`
//!   filled in with the unit's topology as COS's libraries do);
//! - a Grafana dashboard per component, built here from the metrics the workloads export,
//!   sent as base64(xz(JSON));
//! - the `cos-agent` unit databag for a grafana-agent / opentelemetry-collector subordinate.

mod dashboards;

use std::collections::BTreeMap;
use std::io::Cursor;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use dashboards::dashboard;

#[derive(Debug, thiserror::Error)]
pub enum CosError {
    #[error("alert rules of {0}: {1}")]
    Rules(&'static str, String),
    #[error("xz: {0}")]
    Xz(String),
    #[error("base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// The four workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Scheduler,
    CacheManager,
    Prefill,
    Decode,
}

impl Component {
    /// The charm's name (the `charm_name` in COS metadata).
    pub fn charm(self) -> &'static str {
        match self {
            Component::Scheduler => "llmd-scheduler",
            Component::CacheManager => "llmd-cache-manager",
            Component::Prefill => "llmd-prefill",
            Component::Decode => "llmd-decode",
        }
    }

    /// File stem of its rules and dashboard (prefill and decode workers share them).
    pub fn stem(self) -> &'static str {
        match self {
            Component::Scheduler => "llmd-scheduler",
            Component::CacheManager => "llmd-cache-manager",
            Component::Prefill | Component::Decode => "llmd-worker",
        }
    }

    fn rules_source(self) -> &'static str {
        match self {
            Component::Scheduler => include_str!("../alert_rules/scheduler.rules"),
            Component::CacheManager => include_str!("../alert_rules/cache_manager.rules"),
            Component::Prefill | Component::Decode => include_str!("../alert_rules/worker.rules"),
        }
    }
}

/// Where a unit sits in Juju: COS labels every series and rule with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub model: String,
    pub model_uuid: String,
    pub application: String,
    pub unit: String,
    pub charm_name: String,
}

impl Topology {
    /// `juju_model="…",juju_model_uuid="…",juju_application="…"`: what COS puts in place of
    /// `%%juju_topology%%` in rule expressions.
    pub fn promql_matchers(&self) -> String {
        format!(
            "juju_model=\"{}\",juju_model_uuid=\"{}\",juju_application=\"{}\"",
            esc(&self.model),
            esc(&self.model_uuid),
            esc(&self.application)
        )
    }

    /// The labels COS adds to each rule and series.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("juju_model".into(), self.model.clone()),
            ("juju_model_uuid".into(), self.model_uuid.clone()),
            ("juju_application".into(), self.application.clone()),
            ("juju_charm".into(), self.charm_name.clone()),
        ])
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `{"groups": [...]}` for `component`, with the topology in every expression and in every
/// rule's labels. Each group's name is prefixed with the topology, as COS does, so two
/// applications' rules never collide in one Prometheus.
pub fn alert_rules(component: Component, topo: &Topology) -> Result<Value, CosError> {
    let src = component
        .rules_source()
        .replace("%%juju_topology%%", &topo.promql_matchers());
    let mut v: Value = serde_yaml_ng::from_str(&src)
        .map_err(|e| CosError::Rules(component.stem(), e.to_string()))?;
    let prefix = format!(
        "{}_{}_{}",
        topo.model,
        &topo.model_uuid[..topo.model_uuid.len().min(8)],
        topo.application
    );
    let groups = v["groups"]
        .as_array_mut()
        .ok_or_else(|| CosError::Rules(component.stem(), "no groups".into()))?;
    for g in groups {
        let name = g["name"].as_str().unwrap_or("rules").to_string();
        g["name"] = json!(format!("{prefix}_{name}_alerts"));
        for r in g["rules"].as_array_mut().into_iter().flatten() {
            let labels = r
                .as_object_mut()
                .ok_or_else(|| CosError::Rules(component.stem(), "a rule is not a map".into()))?
                .entry("labels")
                .or_insert_with(|| json!({}));
            for (k, val) in topo.labels() {
                labels[k] = json!(val);
            }
        }
    }
    Ok(v)
}

/// Scrape jobs for `prometheus_scrape`: every unit's `/metrics` on `port`.
pub fn scrape_jobs(port: u16) -> Value {
    json!([{
        "metrics_path": "/metrics",
        "static_configs": [{"targets": [format!("*:{port}")]}],
    }])
}

/// `scrape_metadata` for `prometheus_scrape`.
pub fn scrape_metadata(topo: &Topology) -> Value {
    json!({
        "model": topo.model,
        "model_uuid": topo.model_uuid,
        "application": topo.application,
        "unit": topo.unit,
        "charm_name": topo.charm_name,
    })
}

/// The provider's app databag on `metrics-endpoint` (values JSON-encoded, as Juju databags
/// hold strings).
pub fn metrics_endpoint_app_data(
    component: Component,
    topo: &Topology,
    port: u16,
) -> Result<BTreeMap<String, String>, CosError> {
    Ok(BTreeMap::from([
        ("scrape_metadata".into(), scrape_metadata(topo).to_string()),
        ("scrape_jobs".into(), scrape_jobs(port).to_string()),
        (
            "alert_rules".into(),
            alert_rules(component, topo)?.to_string(),
        ),
    ]))
}

/// The provider's unit databag on `metrics-endpoint`.
pub fn metrics_endpoint_unit_data(topo: &Topology, address: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("prometheus_scrape_unit_address".into(), address.to_string()),
        ("prometheus_scrape_unit_name".into(), topo.unit.clone()),
        ("prometheus_scrape_unit_path".into(), String::new()),
        ("prometheus_scrape_unit_fqdn".into(), address.to_string()),
    ])
}

/// base64(xz(text)): how COS ships dashboards.
pub fn lzma_base64(text: &str) -> Result<String, CosError> {
    let mut out = Vec::new();
    lzma_rs::xz_compress(&mut Cursor::new(text.as_bytes()), &mut out)
        .map_err(|e| CosError::Xz(e.to_string()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(out))
}

/// The inverse of [`lzma_base64`].
pub fn unlzma_base64(s: &str) -> Result<String, CosError> {
    let xz = base64::engine::general_purpose::STANDARD.decode(s)?;
    let mut out = Vec::new();
    lzma_rs::xz_decompress(&mut Cursor::new(xz), &mut out)
        .map_err(|e| CosError::Xz(e.to_string()))?;
    String::from_utf8(out).map_err(|e| CosError::Xz(e.to_string()))
}

/// The provider's app databag on `grafana-dashboard`: key `dashboards`. `uuid` changes
/// when the content does, so Grafana reloads it.
pub fn grafana_dashboard_app_data(
    component: Component,
    topo: &Topology,
    uuid: &str,
) -> Result<BTreeMap<String, String>, CosError> {
    let content = lzma_base64(&dashboard(component).to_string())?;
    let v = json!({
        "templates": {
            format!("file:{}", component.stem()): {
                "charm": topo.charm_name,
                "content": content,
                "juju_topology": {
                    "model": topo.model,
                    "model_uuid": topo.model_uuid,
                    "application": topo.application,
                    "unit": topo.unit,
                },
                "inject_dropdowns": true,
            }
        },
        "uuid": uuid,
    });
    Ok(BTreeMap::from([("dashboards".into(), v.to_string())]))
}

/// The unit databag key `config` on `cos-agent`: the subordinate agent scrapes the workload
/// on localhost, forwards the rules and dashboards, and collects the journal's logs.
pub fn cos_agent_config(
    component: Component,
    topo: &Topology,
    port: u16,
) -> Result<BTreeMap<String, String>, CosError> {
    let v = json!({
        "metrics_alert_rules": alert_rules(component, topo)?,
        "log_alert_rules": {},
        "dashboards": [lzma_base64(&dashboard(component).to_string())?],
        "metrics_scrape_jobs": [{
            "job_name": component.stem(),
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [format!("localhost:{port}")]}],
        }],
        "log_slots": [],
        "tracing_protocols": null,
    });
    Ok(BTreeMap::from([("config".into(), v.to_string())]))
}

/// Every PromQL expression in a dashboard (for checks).
pub fn dashboard_queries(d: &Value) -> Vec<String> {
    d["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

/// Metric names a PromQL expression reads (`vllm:*` and `llmd_*`; histogram suffixes kept).
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let rest = &expr[i..];
        let starts = (rest.starts_with("vllm:") || rest.starts_with("llmd_"))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'));
        if starts {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            out.push(rest[..end].to_string());
            i += end;
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn topo() -> Topology {
        Topology {
            model: "prod".into(),
            model_uuid: "0b5e1c2a-7d3f-4e21-b0c6-a1d2e3f40516".into(),
            application: "llmd-decode".into(),
            unit: "llmd-decode/0".into(),
            charm_name: "llmd-decode".into(),
        }
    }

    #[test]
    fn rules_get_the_topology() {
        for c in [
            Component::Scheduler,
            Component::CacheManager,
            Component::Decode,
        ] {
            let r = alert_rules(c, &topo()).unwrap();
            let text = r.to_string();
            assert!(!text.contains("%%juju_topology%%"));
            assert!(
                text.contains("juju_application=\\\"llmd-decode\\\""),
                "{text}"
            );
            for g in r["groups"].as_array().unwrap() {
                assert!(g["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("prod_0b5e1c2a_llmd-decode_"));
                for rule in g["rules"].as_array().unwrap() {
                    assert_eq!(rule["labels"]["juju_model"], "prod");
                    assert!(rule["alert"].is_string());
                }
            }
        }
    }

    #[test]
    fn dashboards_round_trip_through_lzma_base64() {
        let d = grafana_dashboard_app_data(Component::Scheduler, &topo(), "u-1").unwrap();
        let v: Value = serde_json::from_str(&d["dashboards"]).unwrap();
        let t = &v["templates"]["file:llmd-scheduler"];
        assert_eq!(t["charm"], "llmd-decode");
        let json: Value =
            serde_json::from_str(&unlzma_base64(t["content"].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(json, dashboard(Component::Scheduler));
    }

    #[test]
    fn metric_names_are_found() {
        assert_eq!(
            metric_names("histogram_quantile(0.9, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket[5m]))) / llmd_x_total"),
            vec!["vllm:time_to_first_token_seconds_bucket", "llmd_x_total"]
        );
    }

    #[test]
    fn scrape_data_shapes() {
        let app = metrics_endpoint_app_data(Component::Prefill, &topo(), 8000).unwrap();
        let jobs: Value = serde_json::from_str(&app["scrape_jobs"]).unwrap();
        assert_eq!(jobs[0]["static_configs"][0]["targets"][0], "*:8000");
        let cfg = cos_agent_config(Component::Prefill, &topo(), 8000).unwrap();
        let v: Value = serde_json::from_str(&cfg["config"]).unwrap();
        assert_eq!(
            v["metrics_scrape_jobs"][0]["static_configs"][0]["targets"][0],
            "localhost:8000"
        );
        assert_eq!(v["dashboards"].as_array().unwrap().len(), 1);
    }
}
