//! The llmd-decode charm through the state-transition harness: the real charm binary
//! against fake hook tools and systemctl, and a stand-in `llmd` that answers
//! `model fetch` (tests/support.rs of llmd-charm).
#![allow(clippy::unwrap_used)]

#[path = "../../llmd-charm/tests/support.rs"]
mod support;

use juju_charm::testing::{Harness, Output, Relation, State, Trigger};
use juju_charm::{Event, Port, Status};

const CHARM: &str = env!("CARGO_BIN_EXE_llmd-decode-charm");
const CHARMCRAFT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charmcraft.yaml");
const CONFIG: &str = "/etc/llmd/llmd-decode.yaml";

fn harness(dir: &tempfile::TempDir) -> Harness {
    support::harness(CHARM, CHARMCRAFT, dir.path(), "llmd-decode")
}

fn ok(out: &Output) {
    assert!(
        out.succeeded(),
        "exit {}: {}\n{:#?}",
        out.exit_code,
        out.stderr,
        out.command_lines()
    );
}

fn state(leader: bool) -> State {
    State::default().unit("llmd-decode/0").leader(leader)
}

fn cache_manager() -> Relation {
    Relation::new("kv-cache-manager", "llmd_kv_cache")
        .id(3)
        .remote_app("llmd-cache-manager")
        .remote_app_data([
            ("events_endpoint", "tcp://10.0.0.5:5557"),
            ("url", "http://10.0.0.5:8100"),
        ])
}

#[test]
fn install_then_config_serves_the_model_and_publishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir);
    let out = h.run(Event::Install, &state(true)).unwrap();
    ok(&out);
    assert_eq!(out.state.app_version.as_deref(), Some("0.1.0"));
    assert!(out.file("/opt/llmd/bin/llmd").is_some());
    assert_eq!(
        out.unit_status,
        Status::active(
            "serving SmolLM2-135M-Instruct (no cache-manager related: prefix routing is approximate)"
        )
    );
    let unit = out.unit_file("llmd-decode").unwrap();
    assert!(
        unit.contains("ExecStart=/opt/llmd/bin/llmd worker --config /etc/llmd/llmd-decode.yaml"),
        "{unit}"
    );
    assert!(unit.contains("LLMD_HOME=/var/lib/llmd"), "{unit}");
    let cfg: serde_json::Value = serde_yaml_ng_from(&out.file(CONFIG).unwrap());
    assert_eq!(cfg["role"], "decode");
    assert_eq!(cfg["port"], 8000);
    assert_eq!(cfg["served-model-name"], "SmolLM2-135M-Instruct");
    assert!(cfg.get("kv-port").is_none(), "decode workers serve no KV");
    assert!(out.service("llmd-decode").unwrap().active);
    assert!(out.opened_ports().contains(&Port::tcp(8000)));

    // Related to the cache-manager and the scheduler: events go there, and the worker's
    // address, role and model are published.
    let st = out.state.clone().relation(cache_manager()).relation(
        Relation::new("decode-worker", "llmd_decode")
            .id(4)
            .remote_app("llmd-scheduler"),
    );
    let out = h
        .run(
            Trigger::relation(Event::relation_changed("kv-cache-manager"), 3),
            &st,
        )
        .unwrap();
    ok(&out);
    let cfg = serde_yaml_ng_from(&out.file(CONFIG).unwrap());
    assert_eq!(cfg["kv-events-endpoint"], "tcp://10.0.0.5:5557");
    assert_eq!(
        out.service("llmd-decode").unwrap().restarts,
        1,
        "new config, restarted"
    );
    assert_eq!(
        out.unit_status,
        Status::active("serving SmolLM2-135M-Instruct")
    );
    let pub_ = out.local_unit_data("decode-worker");
    assert_eq!(pub_["url"], "http://10.0.0.10:8000");
    assert_eq!(pub_["role"], "decode");
    assert_eq!(pub_["model"], "SmolLM2-135M-Instruct");
    assert!(!pub_.contains_key("kv_url"));

    // The same event again changes nothing: no restart.
    let again = h
        .run(
            Trigger::relation(Event::relation_changed("kv-cache-manager"), 3),
            &out.state,
        )
        .unwrap();
    ok(&again);
    assert_eq!(again.service("llmd-decode").unwrap().restarts, 1);
}

fn serde_yaml_ng_from(text: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(text).unwrap()
}

#[test]
fn a_bad_model_blocks_and_keeps_the_old_one_serving_then_a_fix_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir);
    let out = h.run(Event::Install, &state(true)).unwrap();
    ok(&out);
    let before = out.file(CONFIG).unwrap();
    let bad = out.state.clone().config("model-id", "/nope.gguf");
    let out = h.run(Event::ConfigChanged, &bad).unwrap();
    ok(&out);
    assert_eq!(
        out.unit_status,
        Status::blocked(
            "model-id /nope.gguf: model source /nope.gguf: no such file; still serving SmolLM2-135M-Instruct"
        )
    );
    assert!(out.file(CONFIG).is_none(), "old config untouched");
    assert_eq!(h.read_file(CONFIG).unwrap(), before);
    let svc = out.service("llmd-decode").unwrap();
    assert!(svc.active);
    assert_eq!(svc.restarts, 0);

    let fixed = out.state.clone().config("model-id", "/models/other.gguf");
    let out = h.run(Event::ConfigChanged, &fixed).unwrap();
    ok(&out);
    assert_eq!(
        out.unit_status,
        Status::active("serving other (no cache-manager related: prefix routing is approximate)")
    );
    let cfg = serde_yaml_ng_from(&out.file(CONFIG).unwrap());
    assert_eq!(cfg["model"], "/models/other.gguf");
    assert_eq!(out.service("llmd-decode").unwrap().restarts, 1);
}

#[test]
fn bad_port_blocks_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir);
    let out = h
        .run(Event::Install, &state(true).config("port", 70000))
        .unwrap();
    ok(&out);
    assert_eq!(
        out.unit_status,
        Status::blocked("port must be a port number (1-65535), not 70000")
    );
}

#[test]
fn cos_and_tracing_as_leader_and_not() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir);
    let relations = |st: State| {
        st.relation(Relation::new("metrics-endpoint", "prometheus_scrape").id(7).remote_app("prometheus"))
            .relation(Relation::new("grafana-dashboard", "grafana_dashboard").id(8).remote_app("grafana"))
            .relation(Relation::new("cos-agent", "cos_agent").id(9).remote_app("grafana-agent"))
            .relation(
                Relation::new("tracing", "tracing")
                    .id(10)
                    .remote_app("tempo")
                    .remote_app_data([(
                        "receivers",
                        r#"[{"protocol": {"name": "otlp_grpc", "type": "grpc"}, "url": "tempo:4317"}, {"protocol": {"name": "otlp_http", "type": "http"}, "url": "http://tempo:4318"}]"#,
                    )]),
            )
    };
    let out = h.run(Event::Install, &relations(state(true))).unwrap();
    ok(&out);
    let app = out.local_app_data("metrics-endpoint");
    let jobs: serde_json::Value = serde_json::from_str(&app["scrape_jobs"]).unwrap();
    assert_eq!(jobs[0]["static_configs"][0]["targets"][0], "*:8000");
    let rules: serde_json::Value = serde_json::from_str(&app["alert_rules"]).unwrap();
    assert!(rules.to_string().contains("LlmdWorkerDown"));
    assert_eq!(
        out.local_unit_data("metrics-endpoint")["prometheus_scrape_unit_address"],
        "10.0.0.10"
    );
    assert!(out
        .local_app_data("grafana-dashboard")
        .contains_key("dashboards"));
    assert!(out.local_unit_data("cos-agent").contains_key("config"));
    assert_eq!(
        out.local_app_data("tracing")["receivers"],
        r#"["otlp_http"]"#
    );
    let cfg = serde_yaml_ng_from(&out.file(CONFIG).unwrap());
    assert_eq!(cfg["otlp-traces-endpoint"], "http://tempo:4318");

    // A non-leader writes unit data only.
    let dir2 = tempfile::tempdir().unwrap();
    let h2 = harness(&dir2);
    let out = h2.run(Event::Install, &relations(state(false))).unwrap();
    ok(&out);
    assert!(out.local_app_data("metrics-endpoint").is_empty());
    assert!(!out.local_unit_data("metrics-endpoint").is_empty());
    assert!(out.local_app_data("tracing").is_empty());
}

#[test]
fn update_status_reports_a_workload_not_answering_and_stop_removes_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir);
    let out = h
        .run(Event::Install, &state(true).config("port", 1))
        .unwrap();
    ok(&out);
    // Nothing listens on port 1 here: the workload is not healthy.
    let out = h.run(Event::UpdateStatus, &out.state).unwrap();
    ok(&out);
    assert_eq!(
        out.unit_status,
        Status::maintenance("SmolLM2-135M-Instruct not answering /health yet")
    );
    let out = h.run(Event::Stop, &out.state).unwrap();
    ok(&out);
    assert!(h
        .read_file("/etc/systemd/system/llmd-decode.service")
        .is_none());
    assert_eq!(out.unit_status, Status::maintenance("stopped"));
}

#[test]
fn upgrade_restarts_only_when_the_shipped_binary_changed() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir);
    let out = h.run(Event::Install, &state(true)).unwrap();
    ok(&out);
    // The same charm again: nothing to restart.
    let out = h.run(Event::UpgradeCharm, &out.state).unwrap();
    ok(&out);
    assert_eq!(out.service("llmd-decode").unwrap().restarts, 0);
    // A new workload binary in the charm: installed and restarted into.
    let llmd = dir.path().join("bin/llmd");
    let newer = support::FAKE_LLMD.replace("llmd 0.1.0", "llmd 0.2.0");
    std::fs::write(&llmd, newer).unwrap();
    let out = h.run(Event::UpgradeCharm, &out.state).unwrap();
    ok(&out);
    assert_eq!(out.state.app_version.as_deref(), Some("0.2.0"));
    assert_eq!(out.service("llmd-decode").unwrap().restarts, 1);
    assert!(out.service("llmd-decode").unwrap().active);
}
