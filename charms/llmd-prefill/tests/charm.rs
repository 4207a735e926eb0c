//! The llmd-prefill charm through the state-transition harness (the decode charm's tests
//! cover what the two share; these cover what a prefill worker adds: the KV port).
#![allow(clippy::unwrap_used)]

#[path = "../../llmd-charm/tests/support.rs"]
mod support;

use juju_charm::testing::{Relation, State, Trigger};
use juju_charm::{Event, Port, Status};

const CHARM: &str = env!("CARGO_BIN_EXE_llmd-prefill-charm");
const CHARMCRAFT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charmcraft.yaml");

#[test]
fn prefill_opens_and_publishes_its_kv_port() {
    let dir = tempfile::tempdir().unwrap();
    let h = support::harness(CHARM, CHARMCRAFT, dir.path(), "llmd-prefill");
    let st = State::default()
        .unit("llmd-prefill/1")
        .leader(false)
        .config("kv-port", 8300)
        .relation(
            Relation::new("prefill-worker", "llmd_prefill")
                .id(2)
                .remote_app("llmd-scheduler"),
        );
    let out = h.run(Event::Install, &st).unwrap();
    assert!(out.succeeded(), "{}", out.stderr);
    let cfg: serde_json::Value =
        serde_yaml_ng::from_str(&out.file("/etc/llmd/llmd-prefill.yaml").unwrap()).unwrap();
    assert_eq!(cfg["role"], "prefill");
    assert_eq!(cfg["kv-port"], 8300);
    assert_eq!(cfg["kv-host"], "10.0.0.10");
    let ports = out.opened_ports();
    assert!(
        ports.contains(&Port::tcp(8000)) && ports.contains(&Port::tcp(8300)),
        "{ports:?}"
    );
    let data = out.local_unit_data("prefill-worker");
    assert_eq!(data["kv_url"], "tcp://10.0.0.10:8300");
    assert_eq!(data["role"], "prefill");
    assert!(matches!(
        out.unit_status.name,
        juju_charm::StatusName::Active
    ));

    // The scheduler leaving changes nothing for the worker but the relation.
    let out = h
        .run(
            Trigger::relation(Event::relation_departed("prefill-worker"), 2)
                .remote_unit("llmd-scheduler/0")
                .departing_unit("llmd-scheduler/0"),
            &out.state,
        )
        .unwrap();
    assert!(out.succeeded(), "{}", out.stderr);
    assert_eq!(out.service("llmd-prefill").unwrap().restarts, 0);
    assert_ne!(out.unit_status, Status::unknown());
}

#[test]
fn prefill_model_swap_good_and_bad() {
    let dir = tempfile::tempdir().unwrap();
    let h = support::harness(CHARM, CHARMCRAFT, dir.path(), "llmd-prefill");
    let st = State::default()
        .unit("llmd-prefill/0")
        .leader(true)
        .relation(
            Relation::new("prefill-worker", "llmd_prefill")
                .id(2)
                .remote_app("llmd-scheduler"),
        );
    let out = h.run(Event::Install, &st).unwrap();
    assert!(out.succeeded(), "{}", out.stderr);
    let out = h
        .run(
            Event::ConfigChanged,
            &out.state.clone().config("model-id", "/models/other.gguf"),
        )
        .unwrap();
    assert!(out.succeeded(), "{}", out.stderr);
    assert_eq!(out.local_unit_data("prefill-worker")["model"], "other");
    assert_eq!(out.service("llmd-prefill").unwrap().restarts, 1);
    let out = h
        .run(
            Event::ConfigChanged,
            &out.state.clone().config("model-id", "hf:nobody/nothing"),
        )
        .unwrap();
    assert_eq!(
        out.unit_status,
        Status::blocked("model-id hf:nobody/nothing: model source hf:nobody/nothing: no such file; still serving other")
    );
    assert_eq!(out.service("llmd-prefill").unwrap().restarts, 1);
}
