//! The llmd-cache-manager charm through the state-transition harness.
#![allow(clippy::unwrap_used)]

#[path = "../../llmd-charm/tests/support.rs"]
mod support;

use juju_charm::testing::{Harness, Relation, State, Trigger};
use juju_charm::{Event, Port, Status};

const CHARM: &str = env!("CARGO_BIN_EXE_llmd-cache-manager-charm");
const CHARMCRAFT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charmcraft.yaml");

fn harness(dir: &tempfile::TempDir) -> Harness {
    support::harness(CHARM, CHARMCRAFT, dir.path(), "llmd-cache-manager")
}

#[test]
fn serves_and_publishes_its_endpoints_to_workers_and_schedulers() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir);
    let st = State::default()
        .unit("llmd-cache-manager/0")
        .leader(true)
        .relation(
            Relation::new("kv-cache-manager", "llmd_kv_cache")
                .id(5)
                .remote_app("llmd-decode"),
        );
    let out = h.run(Event::Install, &st).unwrap();
    assert!(out.succeeded(), "{}", out.stderr);
    let unit = out.unit_file("llmd-cache-manager").unwrap();
    assert!(
        unit.contains("ExecStart=/opt/llmd/bin/llmd cache-manager --host 0.0.0.0 --port 8100 --events-bind tcp://0.0.0.0:5557 --index memory"),
        "{unit}"
    );
    assert_eq!(
        out.unit_status,
        Status::active("indexing KV events on :5557 (memory index)")
    );
    let app = out.local_app_data("kv-cache-manager");
    assert_eq!(app["events_endpoint"], "tcp://10.0.0.10:5557");
    assert_eq!(app["url"], "http://10.0.0.10:8100");
    assert_eq!(
        out.local_unit_data("kv-cache-manager")["url"],
        "http://10.0.0.10:8100"
    );
    let ports = out.opened_ports();
    assert!(ports.contains(&Port::tcp(8100)) && ports.contains(&Port::tcp(5557)));

    // A shared Redis index: the flag changes, the service restarts.
    let redis = out.state.clone().config("index", "redis://10.0.0.7:6379");
    let out = h.run(Event::ConfigChanged, &redis).unwrap();
    assert!(out.succeeded(), "{}", out.stderr);
    assert!(out
        .unit_file("llmd-cache-manager")
        .unwrap()
        .contains("--index redis://10.0.0.7:6379"));
    assert_eq!(out.service("llmd-cache-manager").unwrap().restarts, 1);

    // A bad index blocks and changes nothing.
    let bad = out.state.clone().config("index", "mysql://x");
    let out = h.run(Event::ConfigChanged, &bad).unwrap();
    assert_eq!(
        out.unit_status,
        Status::blocked("index must be memory or redis://HOST:PORT, not \"mysql://x\"")
    );
    assert!(out.unit_file("llmd-cache-manager").is_none());

    // A non-leader publishes its unit data only.
    let st = State::default()
        .unit("llmd-cache-manager/1")
        .leader(false)
        .relation(
            Relation::new("kv-cache-manager", "llmd_kv_cache")
                .id(5)
                .remote_app("llmd-decode"),
        );
    let dir2 = tempfile::tempdir().unwrap();
    let out = harness(&dir2)
        .run(
            Trigger::relation(Event::relation_joined("kv-cache-manager"), 5)
                .remote_unit("llmd-decode/0"),
            &st,
        )
        .unwrap();
    assert!(out.succeeded(), "{}", out.stderr);
    assert!(out.local_app_data("kv-cache-manager").is_empty());
    assert_eq!(
        out.local_unit_data("kv-cache-manager")["events_endpoint"],
        "tcp://10.0.0.10:5557"
    );
}

#[test]
fn update_status_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(&dir);
    // Port 1: nothing answers there, so the workload reads as not healthy.
    let out = h
        .run(
            Event::Install,
            &State::default()
                .unit("llmd-cache-manager/0")
                .leader(true)
                .config("port", 1),
        )
        .unwrap();
    assert!(out.succeeded(), "{}", out.stderr);
    let out = h.run(Event::UpdateStatus, &out.state).unwrap();
    assert_eq!(
        out.unit_status,
        Status::maintenance("cache-manager not answering /health yet")
    );
    let out = h.run(Event::Remove, &out.state).unwrap();
    assert!(out.succeeded(), "{}", out.stderr);
    assert!(h
        .read_file("/etc/systemd/system/llmd-cache-manager.service")
        .is_none());
    assert_eq!(out.unit_status, Status::maintenance("stopped"));
}
