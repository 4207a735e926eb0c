//! The llmd-scheduler charm through the state-transition harness: the worker list follows
//! the worker relations without restarts; flags restart; no decode worker means waiting.
#![allow(clippy::unwrap_used)]

#[path = "../../llmd-charm/tests/support.rs"]
mod support;

use juju_charm::testing::{Harness, Relation, State, Trigger};
use juju_charm::{Event, Status};
use serde_json::Value;

const CHARM: &str = env!("CARGO_BIN_EXE_llmd-scheduler-charm");
const CHARMCRAFT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charmcraft.yaml");
const CONFIG: &str = "/etc/llmd/llmd-scheduler.yaml";

fn harness(dir: &tempfile::TempDir) -> Harness {
    support::harness(CHARM, CHARMCRAFT, dir.path(), "llmd-scheduler")
}

fn decode(units: &[(&str, &str)]) -> Relation {
    let mut r = Relation::new("decode-worker", "llmd_decode")
        .id(11)
        .remote_app("llmd-decode");
    for (unit, url) in units {
        r = r.remote_unit_data(unit, [("url", *url), ("role", "decode"), ("model", "m")]);
    }
    r
}

#[test]
fn worker_list_follows_relations_without_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir);
    let st = State::default().unit("llmd-scheduler/0").leader(true);
    let out = h.run(Event::Install, &st).unwrap();
    assert!(out.succeeded(), "{}", out.stderr);
    assert_eq!(
        out.unit_status,
        Status::waiting("waiting for decode-worker units")
    );
    let unit = out.unit_file("llmd-scheduler").unwrap();
    assert!(unit.contains("llmd scheduler --config /etc/llmd/llmd-scheduler.yaml --host 0.0.0.0 --port 8000 --pd-threshold 16"), "{unit}");
    assert!(unit.contains("--profile default"), "{unit}");

    // Two decode units and a prefill unit join, with the cache-manager.
    let st = out
        .state
        .clone()
        .relation(decode(&[
            ("llmd-decode/0", "http://10.0.0.21:8000"),
            ("llmd-decode/1", "http://10.0.0.22:8000"),
        ]))
        .relation(
            Relation::new("prefill-worker", "llmd_prefill")
                .id(12)
                .remote_app("llmd-prefill")
                .remote_unit_data(
                    "llmd-prefill/0",
                    [
                        ("url", "http://10.0.0.31:8000"),
                        ("role", "prefill"),
                        ("kv_url", "tcp://10.0.0.31:8200"),
                    ],
                ),
        )
        .relation(
            Relation::new("kv-cache-manager", "llmd_kv_cache")
                .id(13)
                .remote_app("llmd-cache-manager")
                .remote_app_data([
                    ("url", "http://10.0.0.5:8100"),
                    ("events_endpoint", "tcp://10.0.0.5:5557"),
                ]),
        );
    let out = h
        .run(
            Trigger::relation(Event::relation_changed("decode-worker"), 11)
                .remote_unit("llmd-decode/1"),
            &st,
        )
        .unwrap();
    assert!(out.succeeded(), "{}", out.stderr);
    let cfg: Value = serde_yaml_ng::from_str(&out.file(CONFIG).unwrap()).unwrap();
    assert_eq!(cfg["cache_manager"], "http://10.0.0.5:8100");
    let urls: Vec<&str> = cfg["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            "http://10.0.0.21:8000",
            "http://10.0.0.22:8000",
            "http://10.0.0.31:8000"
        ]
    );
    assert_eq!(cfg["workers"][2]["role"], "prefill");
    assert_eq!(
        out.unit_status,
        Status::active("routing to 2 decode and 1 prefill worker(s) on :8000")
    );
    let svc = out.service("llmd-scheduler").unwrap();
    assert_eq!(
        (svc.restarts, svc.active),
        (0, true),
        "the scheduler reloads its file itself"
    );

    // A decode unit departs: gone from the list, still no restart.
    let st = out.state.clone();
    let out = h
        .run(
            Trigger::relation(Event::relation_departed("decode-worker"), 11)
                .remote_unit("llmd-decode/1")
                .departing_unit("llmd-decode/1"),
            &st,
        )
        .unwrap();
    assert!(out.succeeded(), "{}", out.stderr);
    let cfg: Value = serde_yaml_ng::from_str(&out.file(CONFIG).unwrap()).unwrap();
    assert_eq!(cfg["workers"].as_array().unwrap().len(), 2);
    assert_eq!(out.service("llmd-scheduler").unwrap().restarts, 0);

    // llm-d's knobs: scoring plugins become a routing config; Prometheus as load source.
    let st = out
        .state
        .clone()
        .config(
            "scoring-plugins",
            "queue-scorer, kv-cache-utilization-scorer",
        )
        .config("prometheus-url", "http://10.0.0.9:9090");
    let out = h.run(Event::ConfigChanged, &st).unwrap();
    assert!(out.succeeded(), "{}", out.stderr);
    let cfg: Value = serde_yaml_ng::from_str(&out.file(CONFIG).unwrap()).unwrap();
    let refs = &cfg["routing"]["schedulingProfiles"][0]["plugins"];
    assert_eq!(refs[0]["pluginRef"], "queue-scorer");
    assert_eq!(refs[0]["weight"], 2.0);
    let unit = out.unit_file("llmd-scheduler").unwrap();
    assert!(
        unit.contains("--metrics-source prometheus=http://10.0.0.9:9090"),
        "{unit}"
    );
    assert!(!unit.contains("--profile"), "{unit}");
    assert_eq!(
        out.service("llmd-scheduler").unwrap().restarts,
        1,
        "flags changed"
    );

    let bad = out
        .state
        .clone()
        .config("routing-profile", "fastest")
        .config("scoring-plugins", "");
    let out = h.run(Event::ConfigChanged, &bad).unwrap();
    assert_eq!(
        out.unit_status,
        Status::blocked("routing-profile must be default or round-robin, not \"fastest\"")
    );
}

#[test]
fn non_leader_update_status_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir);
    let st = State::default()
        .unit("llmd-scheduler/1")
        .leader(false)
        .config("port", 1)
        .relation(decode(&[("llmd-decode/0", "http://10.0.0.21:8000")]))
        .relation(
            Relation::new("metrics-endpoint", "prometheus_scrape")
                .id(20)
                .remote_app("prometheus"),
        );
    let out = h.run(Event::Install, &st).unwrap();
    assert!(out.succeeded(), "{}", out.stderr);
    // A non-leader publishes unit data only; app data is the leader's.
    assert!(out.local_app_data("metrics-endpoint").is_empty());
    assert!(!out.local_unit_data("metrics-endpoint").is_empty());
    let out = h.run(Event::UpdateStatus, &out.state).unwrap();
    assert_eq!(
        out.unit_status,
        Status::maintenance("scheduler not answering /health yet")
    );
    let out = h.run(Event::Remove, &out.state).unwrap();
    assert!(out.succeeded(), "{}", out.stderr);
    assert!(h
        .read_file("/etc/systemd/system/llmd-scheduler.service")
        .is_none());
}
