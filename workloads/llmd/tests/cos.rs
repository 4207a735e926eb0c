//! What the charms give COS, checked with the real tools against the real workloads of
//! `llmd up`: every dashboard query and alert rule names a metric the workloads export;
//! Debian's `promtool` accepts the rules and a Prometheus config built from the published
//! scrape jobs (as the Prometheus charm builds it: `*:PORT` becomes each unit's address);
//! a real Prometheus with that config scrapes every component and evaluates the rules.
//! Runs under `tests/run e2e`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use common::{client, enabled, eventually, free_port, id_of, start_up, Proc};
use llmd_cos::{
    alert_rules, dashboard, dashboard_queries, metric_names, scrape_jobs, Component, Topology,
};
use serde_json::{json, Value};

/// Metric names a `/metrics` page declares, histogram series included.
fn exported(url: &str) -> BTreeSet<String> {
    let text = common::metrics_text(url);
    let mut out = BTreeSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap(), it.next().unwrap_or(""));
            out.insert(name.to_string());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{s}"));
                }
            }
        }
    }
    out
}

fn topo(c: Component) -> Topology {
    Topology {
        model: "test".into(),
        model_uuid: "5b8efff7-9803-4103-d269-b633813fc60c".into(),
        application: c.charm().into(),
        unit: format!("{}/0", c.charm()),
        charm_name: c.charm().into(),
    }
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("Debian's promtool is needed (tests/run installs the prometheus package)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dashboards_rules_and_scrape_jobs_hold_against_the_running_stack() {
    let Some((model, _)) = enabled() else { return };
    let up = start_up(&model, &["--threads", "1"]);
    let (prefill, decode) = (&up.workers[0], &up.workers[1]);
    let components = [
        (Component::Scheduler, up.url.clone()),
        (Component::CacheManager, up.cache_manager.clone()),
        (Component::Prefill, prefill.clone()),
        (Component::Decode, decode.clone()),
    ];
    // Traffic on both paths, so per-request series exist.
    let long = "The library opens at nine and closes at six on weekdays, opens at ten on Saturdays and is closed on Sundays. Members may borrow twelve items for three weeks. When does it open on Saturdays?";
    for prompt in [long, "Hi"] {
        let r = client()
            .post(format!("{}/v1/completions", up.url))
            .json(&json!({"prompt": prompt, "max_tokens": 4, "temperature": 0}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rule_files = Vec::new();
    let mut jobs = Vec::new();
    for (c, url) in &components {
        let names = exported(url);
        // Dashboards: every query reads metrics this component exports.
        let d = dashboard(*c);
        let queries = dashboard_queries(&d);
        assert!(queries.len() >= 5, "{c:?}: {} queries", queries.len());
        for q in &queries {
            for m in metric_names(q) {
                assert!(
                    names.contains(&m),
                    "{c:?} dashboard reads {m}, not exported: {q}"
                );
            }
        }
        // Alert rules: valid for promtool, and reading exported metrics only.
        let rules = alert_rules(*c, &topo(*c)).unwrap();
        for r in rules["groups"][0]["rules"].as_array().unwrap() {
            for m in metric_names(r["expr"].as_str().unwrap()) {
                assert!(names.contains(&m), "{c:?} rule {} reads {m}", r["alert"]);
            }
        }
        let path = dir.path().join(format!("{}.rules.yaml", c.charm()));
        std::fs::write(&path, serde_yaml_ng::to_string(&rules).unwrap()).unwrap();
        promtool(&["check", "rules", path.to_str().unwrap()]);
        rule_files.push(path.to_str().unwrap().to_string());
        // Scrape jobs as published, with the wildcard expanded to this unit's address and
        // the topology labels the Prometheus charm adds.
        let port = url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        let mut job = scrape_jobs(port)[0].clone();
        let target = job["static_configs"][0]["targets"][0]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(target, format!("*:{port}"));
        job["job_name"] = json!(c.charm());
        job["static_configs"][0]["targets"] = json!([id_of(url)]);
        job["static_configs"][0]["labels"] = json!(topo(*c).labels());
        job["static_configs"][0]["labels"]["juju_unit"] = json!(topo(*c).unit);
        job["scrape_interval"] = json!("1s");
        jobs.push(job);
    }
    let cfg = json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": rule_files,
        "scrape_configs": jobs,
    });
    let cfg_path = dir.path().join("prometheus.yml");
    std::fs::write(&cfg_path, serde_yaml_ng::to_string(&cfg).unwrap()).unwrap();
    promtool(&["check", "config", cfg_path.to_str().unwrap()]);

    // A real Prometheus with that config scrapes every component and loads every rule.
    let port = free_port();
    let _prom = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let get = |path: &str, q: &[(&str, &str)]| -> Value {
        client()
            .get(format!("{api}/{path}"))
            .query(q)
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null)
    };
    eventually("every component scraped", || {
        let v = get("query", &[("query", "up == 1")]);
        let jobs: BTreeSet<String> = v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["metric"]["job"].as_str().map(str::to_string))
            .collect();
        (jobs.len() == 4, format!("{jobs:?}"))
    });
    for q in [
        "llmd_scheduler_requests_in_flight",
        "llmd_cache_manager_workers",
        "vllm:kv_cache_usage_perc{juju_application=\"llmd-decode\"}",
        "vllm:kv_cache_usage_perc{juju_application=\"llmd-prefill\"}",
    ] {
        eventually(q, || {
            let v = get("query", &[("query", q)]);
            let n = v["data"]["result"].as_array().map_or(0, Vec::len);
            (n >= 1, v.to_string())
        });
    }
    eventually("rules loaded and evaluated", || {
        let v = get("rules", &[]);
        let groups = v["data"]["groups"].as_array().cloned().unwrap_or_default();
        let healthy = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .filter(|r| r["health"] == "ok")
            .count();
        let total: usize = groups
            .iter()
            .map(|g| g["rules"].as_array().map_or(0, Vec::len))
            .sum();
        (
            groups.len() == 4 && total > 0 && healthy == total,
            format!("{healthy}/{total}"),
        )
    });
}
