//! The fake hook tools answering, refusing and recording as Juju's do.
#![allow(clippy::unwrap_used)]
use super::*;
use crate::testing::{LogLine, Relation, State};

fn world() -> World {
    let state = State::default()
        .unit("demo/0")
        .relation(
            Relation::new("db", "pg")
                .id(3)
                .remote_app("pg")
                .remote_unit_data("pg/0", [("host", "h")]),
        )
        .relation(Relation::peer("peers", "demo_peers").id(4));
    let mut w = World {
        state,
        ..World::default()
    };
    w.state.relations[1].remote_app = "demo".into();
    w.hook.relation_id = Some(3);
    w.hook.remote_unit = Some("pg/0".into());
    w.hook.remote_app = Some("pg".into());
    w
}

fn call(w: &mut World, tool: &str, args: &[&str]) -> Result<String, (i32, String)> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    exec(w, tool, &args, None).map_err(|r| (r.code, r.msg))
}

fn call_in(w: &mut World, tool: &str, args: &[&str], stdin: &str) -> Result<String, (i32, String)> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    exec(w, tool, &args, Some(stdin)).map_err(|r| (r.code, r.msg))
}

#[test]
fn relation_tools_answer_as_juju() {
    let mut w = world();
    assert_eq!(
        call(&mut w, "relation-ids", &["db", "--format=json"]).unwrap(),
        "[\"db:3\"]\n"
    );
    assert_eq!(
        call(&mut w, "relation-list", &["--format=json", "-r", "db:3"]).unwrap(),
        "[\"pg/0\"]\n"
    );
    assert_eq!(
        call(
            &mut w,
            "relation-list",
            &["--format=json", "--app", "-r", "3"]
        )
        .unwrap(),
        "\"pg\"\n"
    );
    assert_eq!(
        call(
            &mut w,
            "relation-get",
            &["--format=json", "-r", "db:3", "-", "pg/0"]
        )
        .unwrap(),
        "{\"host\":\"h\"}\n"
    );
    // Defaults: the hook's relation and remote unit.
    assert_eq!(
        call(&mut w, "relation-get", &["--format=json", "host"]).unwrap(),
        "\"h\"\n"
    );
    assert_eq!(
        call(&mut w, "relation-get", &["--format=json", "port"]).unwrap(),
        "null\n"
    );
    assert_eq!(call(&mut w, "relation-get", &["host"]).unwrap(), "h\n");
    // Unknown relation, unit, wrong endpoint.
    assert_eq!(
        call(
            &mut w,
            "relation-get",
            &["--format=json", "-r", "db:9", "-", "pg/0"]
        )
        .unwrap_err()
        .0,
        2
    );
    assert!(call(
        &mut w,
        "relation-get",
        &["--format=json", "-r", "peers:3", "-", "pg/0"]
    )
    .is_err());
    assert!(call(
        &mut w,
        "relation-get",
        &["--format=json", "-r", "db:3", "-", "pg/7"]
    )
    .is_err());
    // Own app data: leader only; peer app data: everyone.
    assert!(call(
        &mut w,
        "relation-get",
        &["--format=json", "-r", "db:3", "--app", "-", "demo"]
    )
    .is_err());
    assert!(call(
        &mut w,
        "relation-get",
        &["--format=json", "-r", "peers:4", "--app", "-", "demo"]
    )
    .is_ok());
    w.state.leader = true;
    assert_eq!(
        call(
            &mut w,
            "relation-get",
            &["--format=json", "-r", "db:3", "--app", "-", "demo"]
        )
        .unwrap(),
        "{}\n"
    );
}

#[test]
fn relation_set_merges_deletes_and_needs_leadership_for_app_data() {
    let mut w = world();
    call_in(
        &mut w,
        "relation-set",
        &["-r", "db:3", "--file", "-"],
        "{\"a\":\"1\",\"b\":\"2\"}",
    )
    .unwrap();
    call_in(
        &mut w,
        "relation-set",
        &["-r", "db:3", "--file", "-"],
        "{\"a\":\"\",\"c\":\"3\"}",
    )
    .unwrap();
    call(&mut w, "relation-set", &["-r", "db:3", "d=4"]).unwrap();
    let bag = &w.state.relations[0].local_unit_data;
    assert_eq!(bag, &crate::databag([("b", "2"), ("c", "3"), ("d", "4")]));
    let err = call_in(
        &mut w,
        "relation-set",
        &["-r", "db:3", "--app", "--file", "-"],
        "{\"x\":\"1\"}",
    )
    .unwrap_err();
    assert!(err.1.contains("not the leader"), "{}", err.1);
    w.state.leader = true;
    call_in(
        &mut w,
        "relation-set",
        &["-r", "db:3", "--app", "--file", "-"],
        "{\"x\":\"1\"}",
    )
    .unwrap();
    assert_eq!(
        w.state.relations[0].local_app_data,
        crate::databag([("x", "1")])
    );
    assert!(call_in(
        &mut w,
        "relation-set",
        &["-r", "db:3", "--file", "-"],
        "{\"x\":{\"n\":1}}"
    )
    .is_err());
}

#[test]
fn status_log_ports_state_and_actions() {
    let mut w = world();
    call(
        &mut w,
        "status-set",
        &["--application=False", "blocked", "--", "need", "a model"],
    )
    .unwrap();
    assert_eq!(w.state.unit_status, Status::blocked("need a model"));
    assert!(
        call(&mut w, "status-set", &["--application=False", "broken"])
            .unwrap_err()
            .1
            .contains("invalid status")
    );
    assert!(call(&mut w, "status-set", &["--application=True", "active"]).is_err());
    assert_eq!(
        call(
            &mut w,
            "status-get",
            &["--include-data", "--format=json", "--application=false"]
        )
        .unwrap(),
        "{\"message\":\"need a model\",\"status\":\"blocked\",\"status-data\":{}}\n"
    );

    call(
        &mut w,
        "juju-log",
        &["--log-level", "WARNING", "--", "-odd", "message"],
    )
    .unwrap();
    assert_eq!(
        w.record.logs[0],
        LogLine {
            level: LogLevel::Warning,
            message: "-odd message".into()
        }
    );
    assert!(call(&mut w, "juju-log", &["--log-level", "LOUD", "--", "x"]).is_err());

    call(&mut w, "open-port", &["8000/tcp"]).unwrap();
    call(&mut w, "open-port", &["9000-9010/udp"]).unwrap();
    call(&mut w, "open-port", &["--endpoints", "api", "443"]).unwrap();
    assert_eq!(
        call(&mut w, "opened-ports", &["--format=json"]).unwrap(),
        "[\"443/tcp\",\"8000/tcp\",\"9000-9010/udp\"]\n"
    );
    call(&mut w, "close-port", &["8000/tcp"]).unwrap();
    assert!(call(&mut w, "open-port", &["99999"]).is_err());

    assert_eq!(
        call(&mut w, "state-get", &["--format=json"]).unwrap(),
        "null\n"
    );
    call_in(&mut w, "state-set", &["--file", "-"], "{\"k\":\"v\"}").unwrap();
    assert_eq!(
        call(&mut w, "state-get", &["--format=json", "k"]).unwrap(),
        "\"v\"\n"
    );
    assert_eq!(
        call(&mut w, "state-get", &["--format=json", "nope"]).unwrap(),
        ""
    );
    assert!(call(&mut w, "state-get", &["--format=json", "--strict", "nope"]).is_err());
    call(&mut w, "state-delete", &["k"]).unwrap();
    assert!(w.state.stored.is_empty());

    assert!(call(&mut w, "action-get", &["--format=json"]).is_err());
    w.hook.action = Some("go".into());
    w.hook.params = json!({"a": {"b": 1}}).as_object().cloned().unwrap();
    assert_eq!(
        call(&mut w, "action-get", &["--format=json", "a.b"]).unwrap(),
        "1\n"
    );
    call(&mut w, "action-set", &["result.ms=12", "model=x"]).unwrap();
    assert!(call(&mut w, "action-set", &["Bad=1"]).is_err());
    assert!(call(&mut w, "action-set", &["stdout=1"]).is_err());
    assert!(call(&mut w, "action-set", &["novalue"]).is_err());
    call(&mut w, "action-fail", &["--", "no luck"]).unwrap();
    assert_eq!(w.record.action.failure.as_deref(), Some("no luck"));
    assert_eq!(
        w.record.action.results.get("result.ms").map(String::as_str),
        Some("12")
    );
}

#[test]
fn leadership_config_network_and_resources() {
    let mut w = world();
    assert_eq!(
        call(&mut w, "is-leader", &["--format=json"]).unwrap(),
        "false\n"
    );
    assert_eq!(call(&mut w, "is-leader", &[]).unwrap(), "False\n");
    w.hook.config = json!({"model-id": "x", "port": 8000})
        .as_object()
        .cloned()
        .unwrap();
    assert_eq!(
        call(&mut w, "config-get", &["--format=json"]).unwrap(),
        "{\"model-id\":\"x\",\"port\":8000}\n"
    );
    assert_eq!(
        call(&mut w, "config-get", &["--format=json", "port"]).unwrap(),
        "8000\n"
    );
    assert_eq!(
        call(&mut w, "config-get", &["--format=json", "nope"]).unwrap(),
        "null\n"
    );
    let net: crate::Network =
        serde_json::from_str(&call(&mut w, "network-get", &["--format=json", "db"]).unwrap())
            .unwrap();
    assert_eq!(net.ingress_addresses, ["10.0.0.10"]);
    assert_eq!(
        call(
            &mut w,
            "network-get",
            &["--format=json", "--ingress-address", "db"]
        )
        .unwrap(),
        "\"10.0.0.10\"\n"
    );
    w.hook.bindings = Some(vec!["db".into()]);
    assert!(call(&mut w, "network-get", &["--format=json", "nope"]).is_err());
    assert_eq!(
        call(&mut w, "unit-get", &["--format=json", "private-address"]).unwrap(),
        "\"10.0.0.10\"\n"
    );
    assert!(call(&mut w, "resource-get", &["model"]).is_err());
    w.hook
        .resources
        .insert("model".into(), "/r/model.gguf".into());
    assert_eq!(
        call(&mut w, "resource-get", &["model"]).unwrap(),
        "/r/model.gguf\n"
    );
}
