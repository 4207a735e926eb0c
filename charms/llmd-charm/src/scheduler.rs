//! The scheduler charm: `llmd scheduler` as a systemd service. The worker list in its
//! config file is rewritten from the `prefill-worker` and `decode-worker` relations as units
//! join and leave; the scheduler reloads the file itself (no restart, nothing in flight is
//! dropped). Flags (port, P/D threshold, profile, metrics source) are in the unit file: a
//! change restarts the service, which drains in-flight requests first.

use juju_charm::{CharmError, CharmResult, Context, Port};
use llmd_cos::Component;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    ensure_service, lifecycle, port, publish_cos, remote_app_value, serving_status,
    tracing_endpoint, write_config,
};

const SERVICE: &str = "llmd-scheduler";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SchedulerOptions {
    #[serde(default = "default_port")]
    pub port: i64,
    /// Uncached prompt tokens from which requests split into prefill and decode legs.
    #[serde(default = "default_threshold")]
    pub pd_threshold: i64,
    /// `default` or `round-robin` (built in), used when `scoring-plugins` is empty.
    #[serde(default = "default_profile")]
    pub routing_profile: String,
    /// As the original llm-d charms: comma-separated scorer plugin types (weights as llm-d
    /// ships them); empty for the profile.
    #[serde(default)]
    pub scoring_plugins: String,
    /// Read worker load from this Prometheus instead of scraping the workers.
    #[serde(default)]
    pub prometheus_url: String,
    /// Seconds between health checks and load reads.
    #[serde(default = "default_interval")]
    pub metrics_interval: f64,
    #[serde(default = "default_kv_metric")]
    pub kv_cache_usage_metric: String,
    #[serde(default)]
    pub extra_args: String,
}

fn default_port() -> i64 {
    8000
}
fn default_threshold() -> i64 {
    16
}
fn default_profile() -> String {
    "default".into()
}
fn default_interval() -> f64 {
    1.0
}
fn default_kv_metric() -> String {
    "vllm:kv_cache_usage_perc".into()
}

/// llm-d's shipped weights, for `scoring-plugins`.
fn weight(plugin: &str) -> f64 {
    match plugin {
        "prefix-cache-scorer" | "precise-prefix-cache-scorer" => 3.0,
        "queue-scorer" | "kv-cache-utilization-scorer" => 2.0,
        _ => 1.0,
    }
}

/// The routing config for `scoring-plugins` (llm-d's EndpointPickerConfig shape).
fn routing(plugins: &str, threshold: i64) -> Option<Value> {
    let names: Vec<&str> = plugins
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if names.is_empty() {
        return None;
    }
    let mut defs: Vec<Value> = names.iter().map(|n| json!({"type": n})).collect();
    defs.push(json!({"type": "max-score-picker"}));
    defs.push(json!({"type": "pd-profile-handler", "parameters": {"threshold": threshold}}));
    let mut refs: Vec<Value> = names
        .iter()
        .map(|n| json!({"pluginRef": n, "weight": weight(n)}))
        .collect();
    refs.push(json!({"pluginRef": "max-score-picker"}));
    Some(json!({
        "plugins": defs,
        "schedulingProfiles": [{"name": "default", "plugins": refs}],
    }))
}

pub fn run() -> ! {
    juju_charm::run(handle)
}

pub fn handle(ctx: &Context) -> CharmResult {
    let Some(new_binary) = lifecycle(ctx, SERVICE)? else {
        return Ok(());
    };
    let o: SchedulerOptions = ctx.config()?;
    let http = port("port", o.port)?;
    if o.pd_threshold < 0 {
        return Err(CharmError::blocked("pd-threshold must not be negative"));
    }
    if !(o.metrics_interval >= 0.05 && o.metrics_interval.is_finite()) {
        return Err(CharmError::blocked(
            "metrics-interval must be at least 0.05 seconds",
        ));
    }
    let prom = o.prometheus_url.trim();
    if !prom.is_empty() && !prom.starts_with("http://") && !prom.starts_with("https://") {
        return Err(CharmError::blocked(format!(
            "prometheus-url must be http(s)://HOST:PORT, not {prom:?}"
        )));
    }
    let scoring = routing(&o.scoring_plugins, o.pd_threshold);
    let profile = o.routing_profile.trim();
    if scoring.is_none() && profile != "default" && profile != "round-robin" {
        return Err(CharmError::blocked(format!(
            "routing-profile must be default or round-robin, not {profile:?}"
        )));
    }

    // Workers as their units publish themselves; units that left are gone from the list.
    let departing = ctx.relation.as_ref().and_then(|r| r.departing_unit.clone());
    let mut workers = Vec::new();
    for (endpoint, role) in [("prefill-worker", "prefill"), ("decode-worker", "decode")] {
        for (_, unit, data) in ctx.remote_units(endpoint)? {
            // A departing unit may still be listed during its -departed hook.
            if departing.as_deref() == Some(unit.as_str()) {
                continue;
            }
            if let Some(url) = data.get("url").filter(|u| !u.is_empty()) {
                workers.push(
                    json!({"url": url, "role": data.get("role").map_or(role, |r| r.as_str())}),
                );
            }
        }
    }
    workers.sort_by_key(|w| w["url"].as_str().map(str::to_string));
    let decoders = workers.iter().filter(|w| w["role"] != "prefill").count();
    let prefillers = workers.len() - decoders;
    let mut file = json!({"workers": workers});
    if let Some(url) = remote_app_value(ctx, "kv-cache-manager", "url")? {
        file["cache_manager"] = json!(url);
    }
    if let Some(r) = &scoring {
        file["routing"] = r.clone();
    }
    let text = serde_yaml_ng::to_string(&file).map_err(|e| CharmError::failed(e.to_string()))?;
    // The scheduler re-reads the file when it changes: no restart for worker churn.
    write_config(ctx, SERVICE, &text)?;

    let mut args: Vec<String> = vec![
        "scheduler".into(),
        "--config".into(),
        format!("{}/{SERVICE}.yaml", crate::CONFIG_DIR),
        "--host".into(),
        "0.0.0.0".into(),
        "--port".into(),
        http.to_string(),
        "--pd-threshold".into(),
        o.pd_threshold.to_string(),
        "--metrics-interval".into(),
        o.metrics_interval.to_string(),
        "--kv-cache-usage-metric".into(),
        o.kv_cache_usage_metric.clone(),
    ];
    if scoring.is_none() {
        args.extend(["--profile".into(), profile.to_string()]);
    }
    if !prom.is_empty() {
        args.extend(["--metrics-source".into(), format!("prometheus={prom}")]);
    }
    if let Some(otlp) = tracing_endpoint(ctx)? {
        args.extend(["--otlp-traces-endpoint".into(), otlp]);
    }
    args.extend(o.extra_args.split_whitespace().map(str::to_string));
    ensure_service(SERVICE, "llmd scheduler", args, new_binary)?;
    ctx.open_port(&Port::tcp(http))?;
    let address = ctx
        .unit_address("api")
        .unwrap_or_else(|_| "127.0.0.1".into());
    for rel in ctx.relation_ids("api")? {
        ctx.relation_set(
            &rel,
            &juju_charm::databag([("url", format!("http://{address}:{http}/v1"))]),
        )?;
    }
    publish_cos(ctx, Component::Scheduler, http, &address)?;
    if decoders == 0 {
        return Err(CharmError::waiting("waiting for decode-worker units"));
    }
    serving_status(
        ctx,
        http,
        "scheduler",
        format!("routing to {decoders} decode and {prefillers} prefill worker(s) on :{http}"),
    )
}
