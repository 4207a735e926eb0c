//! One Grafana dashboard per component, built from the metrics its workload exports. Queries
//! name the plain metrics; COS's Grafana adds the Juju topology matchers and the
//! `$prometheusds` / topology dropdowns (`inject_dropdowns`).

use serde_json::{json, Value};

use crate::Component;

/// A panel: title, unit, and (query, legend) pairs.
struct Panel {
    title: &'static str,
    unit: &'static str,
    targets: Vec<(String, &'static str)>,
}

fn panel(title: &'static str, unit: &'static str, targets: &[(&str, &'static str)]) -> Panel {
    Panel {
        title,
        unit,
        targets: targets.iter().map(|(q, l)| (q.to_string(), *l)).collect(),
    }
}

/// p50/p90/p99 of a histogram.
fn quantiles(title: &'static str, metric: &str, by: &str) -> Panel {
    let q = |p: &str| {
        format!(
            "histogram_quantile({p}, sum by (le{by}) (rate({metric}_bucket[$__rate_interval])))"
        )
    };
    Panel {
        title,
        unit: "s",
        targets: vec![(q("0.5"), "p50"), (q("0.9"), "p90"), (q("0.99"), "p99")],
    }
}

fn panels(c: Component) -> Vec<Panel> {
    match c {
        Component::Prefill | Component::Decode => vec![
            panel(
                "Requests finished per second",
                "reqps",
                &[(
                    "sum by (finished_reason) (rate(vllm:request_success_total[$__rate_interval]))",
                    "{{finished_reason}}",
                )],
            ),
            quantiles(
                "Time to first token",
                "vllm:time_to_first_token_seconds",
                "",
            ),
            quantiles(
                "Inter-token latency",
                "vllm:inter_token_latency_seconds",
                "",
            ),
            panel(
                "Queue",
                "short",
                &[
                    ("sum(vllm:num_requests_waiting)", "waiting"),
                    ("sum(vllm:num_requests_running)", "running"),
                ],
            ),
            panel(
                "KV cache usage",
                "percentunit",
                &[("max by (juju_unit) (vllm:kv_cache_usage_perc)", "{{juju_unit}}")],
            ),
            panel(
                "Prefix cache hit rate",
                "percentunit",
                &[(
                    "sum(rate(vllm:prefix_cache_hits_total[$__rate_interval])) / sum(rate(vllm:prefix_cache_queries_total[$__rate_interval]))",
                    "hits / queried tokens",
                )],
            ),
            panel(
                "Tokens per second",
                "short",
                &[
                    ("sum(rate(vllm:prompt_tokens_total[$__rate_interval]))", "prompt"),
                    (
                        "sum(rate(vllm:generation_tokens_total[$__rate_interval]))",
                        "generated",
                    ),
                ],
            ),
            panel(
                "KV transfer bytes per second",
                "Bps",
                &[(
                    "sum by (direction) (rate(llmd_kv_transfer_bytes_total[$__rate_interval]))",
                    "{{direction}}",
                )],
            ),
            quantiles(
                "KV transfer time",
                "llmd_kv_transfer_duration_seconds",
                "",
            ),
            panel(
                "KV transfer failures and recomputes",
                "short",
                &[
                    (
                        "sum by (reason) (increase(llmd_kv_transfer_failures_total[$__rate_interval]))",
                        "failed: {{reason}}",
                    ),
                    (
                        "sum(increase(llmd_kv_recompute_fallbacks_total[$__rate_interval]))",
                        "recomputed",
                    ),
                ],
            ),
            panel(
                "Preemptions per second",
                "short",
                &[(
                    "sum(rate(vllm:num_preemptions_total[$__rate_interval]))",
                    "preemptions",
                )],
            ),
        ],
        Component::Scheduler => vec![
            panel(
                "Requests per second by status",
                "reqps",
                &[(
                    "sum by (code) (rate(llmd_scheduler_requests_total[$__rate_interval]))",
                    "{{code}}",
                )],
            ),
            panel(
                "Routing decisions by path",
                "reqps",
                &[(
                    "sum by (path) (rate(llmd_scheduler_decisions_total[$__rate_interval]))",
                    "{{path}}",
                )],
            ),
            quantiles(
                "Request time through the scheduler",
                "llmd_scheduler_request_seconds",
                "",
            ),
            quantiles(
                "Routing decision time",
                "llmd_scheduler_decision_seconds",
                "",
            ),
            quantiles(
                "Cache-manager score round trip",
                "llmd_scheduler_cache_manager_seconds",
                "",
            ),
            panel(
                "Fallbacks, retries and cache-manager errors",
                "short",
                &[
                    (
                        "sum by (reason) (increase(llmd_scheduler_fallbacks_total[$__rate_interval]))",
                        "fallback: {{reason}}",
                    ),
                    (
                        "sum(increase(llmd_scheduler_retries_total[$__rate_interval]))",
                        "retries",
                    ),
                    (
                        "sum by (reason) (increase(llmd_scheduler_cache_manager_errors_total[$__rate_interval]))",
                        "cache-manager: {{reason}}",
                    ),
                ],
            ),
            panel(
                "Requests in flight",
                "short",
                &[("sum(llmd_scheduler_requests_in_flight)", "in flight")],
            ),
            panel(
                "Healthy workers",
                "short",
                &[(
                    "sum by (role) (max by (worker, role) (llmd_scheduler_worker_healthy))",
                    "{{role}}",
                )],
            ),
            panel(
                "Worker queues (as routed on)",
                "short",
                &[(
                    "max by (worker) (llmd_scheduler_worker_waiting)",
                    "{{worker}}",
                )],
            ),
            panel(
                "Worker KV cache usage (as routed on)",
                "percentunit",
                &[(
                    "max by (worker) (llmd_scheduler_worker_kv_cache_usage)",
                    "{{worker}}",
                )],
            ),
            panel(
                "Legs sent per worker",
                "reqps",
                &[(
                    "sum by (worker, leg) (rate(llmd_scheduler_routed_total[$__rate_interval]))",
                    "{{worker}} {{leg}}",
                )],
            ),
        ],
        Component::CacheManager => vec![
            panel(
                "KV events per second",
                "short",
                &[(
                    "sum by (type) (rate(llmd_cache_manager_events_total[$__rate_interval]))",
                    "{{type}}",
                )],
            ),
            panel(
                "Indexed blocks",
                "short",
                &[
                    ("sum(llmd_cache_manager_index_blocks)", "blocks"),
                    ("sum(llmd_cache_manager_evicted_blocks)", "evicted"),
                    ("sum(llmd_cache_manager_orphaned_blocks)", "orphaned"),
                ],
            ),
            panel(
                "Workers publishing",
                "short",
                &[("max(llmd_cache_manager_workers)", "workers")],
            ),
            quantiles("Score time", "llmd_cache_manager_score_seconds", ""),
            panel(
                "Gaps, replays and restarts",
                "short",
                &[
                    (
                        "sum(increase(llmd_cache_manager_gaps_total[$__rate_interval]))",
                        "gaps",
                    ),
                    (
                        "sum(increase(llmd_cache_manager_replays_total[$__rate_interval]))",
                        "replays",
                    ),
                    (
                        "sum(increase(llmd_cache_manager_replay_failures_total[$__rate_interval]))",
                        "replay failures",
                    ),
                    (
                        "sum(increase(llmd_cache_manager_worker_restarts_total[$__rate_interval]))",
                        "worker restarts",
                    ),
                ],
            ),
        ],
    }
}

fn title(c: Component) -> &'static str {
    match c {
        Component::Scheduler => "llmd scheduler",
        Component::CacheManager => "llmd cache-manager",
        Component::Prefill | Component::Decode => "llmd workers",
    }
}

/// The dashboard JSON for `c`: time-series panels two to a row.
pub fn dashboard(c: Component) -> Value {
    let panels: Vec<Value> = panels(c)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let targets: Vec<Value> = p
                .targets
                .iter()
                .enumerate()
                .map(|(k, (expr, legend))| {
                    json!({
                        "datasource": {"type": "prometheus", "uid": "${prometheusds}"},
                        "expr": expr,
                        "legendFormat": legend,
                        "refId": ((b'A' + k as u8) as char).to_string(),
                    })
                })
                .collect();
            json!({
                "id": i + 1,
                "type": "timeseries",
                "title": p.title,
                "datasource": {"type": "prometheus", "uid": "${prometheusds}"},
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i / 2) * 8},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": targets,
            })
        })
        .collect();
    json!({
        "title": title(c),
        "uid": c.stem(),
        "tags": ["llmd"],
        "timezone": "browser",
        "schemaVersion": 39,
        "editable": true,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": []},
        "panels": panels,
    })
}
