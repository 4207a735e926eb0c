//! The demo charm (src/bin/juju-charm-demo.rs) driven through the harness: every event
//! runs the real binary against the fake hook tools.
#![allow(clippy::unwrap_used)]

use juju_charm::testing::{
    Harness, HarnessError, LogLine, Output, Relation, Service, State, StatusChange, Trigger,
};
use juju_charm::{databag, Event, LogLevel, Port, Status};

const DEMO: &str = env!("CARGO_BIN_EXE_juju-charm-demo");
const CHARMCRAFT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/charmcraft.yaml");

fn harness() -> Harness {
    Harness::new(DEMO)
        .unwrap()
        .charmcraft_yaml(CHARMCRAFT)
        .unwrap()
}

fn installed() -> State {
    State::default()
        .leader(true)
        .resource_content("payload", "1.2.3\n")
}

fn ok(out: &Output) {
    assert!(
        out.succeeded(),
        "exit {}: {}\ncalls: {:#?}",
        out.exit_code,
        out.stderr,
        out.command_lines()
    );
}

#[test]
fn install_writes_and_enables_the_service() {
    let h = harness();
    let out = h.run(Event::Install, &installed()).unwrap();
    ok(&out);
    assert_eq!(out.unit_status, Status::active("serving on 8080"));
    assert_eq!(
        out.status_history,
        [
            StatusChange {
                app: false,
                status: Status::maintenance("installing")
            },
            StatusChange {
                app: false,
                status: Status::active("serving on 8080")
            },
        ]
    );
    assert_eq!(out.state.app_version.as_deref(), Some("1.2.3"));

    let unit = out.unit_file("demo").unwrap();
    assert!(
        unit.contains("ExecStart=/opt/demo/bin/demo-server --config /etc/demo/demo.json\n"),
        "{unit}"
    );
    assert!(unit.contains("Environment=DEMO_PORT=8080\n"), "{unit}");
    assert!(out
        .file("/etc/demo/demo.json")
        .unwrap()
        .contains("\"port\": 8080"));
    assert_eq!(
        h.read_file("/etc/systemd/system/demo.service").as_deref(),
        Some(unit.as_str()),
        "the file is under the harness root"
    );
    assert_eq!(
        out.systemctl(),
        [
            "daemon-reload",
            "is-active --quiet demo.service",
            "enable --now demo.service"
        ]
    );
    let svc = out.service("demo").unwrap();
    assert!(svc.enabled && svc.active);
    assert_eq!(svc.starts, 1);
    assert_eq!(svc.loaded.as_deref(), Some(unit.as_str()));
    assert_eq!(out.opened_ports(), [Port::tcp(8080)]);

    // Exactly Juju's command lines.
    let lines = out.command_lines();
    for want in [
        "state-get --format=json events-seen",
        "state-set --file -",
        "status-set --application=False maintenance -- installing",
        "resource-get payload",
        "application-version-set -- 1.2.3",
        "config-get --format=json",
        "opened-ports --format=json",
        "open-port 8080/tcp",
        "status-set --application=False active -- 'serving on 8080'",
    ] {
        assert!(
            lines.contains(&want.to_string()),
            "no {want:?} in {lines:#?}"
        );
    }
    assert!(out.refused_calls().is_empty());
    assert_eq!(
        out.state.stored.get("events-seen").map(String::as_str),
        Some("1")
    );
}

#[test]
fn install_without_the_resource_is_blocked_with_the_reason() {
    let out = harness().run(Event::Install, &State::default()).unwrap();
    ok(&out);
    assert_eq!(out.unit_status.name, juju_charm::StatusName::Blocked);
    assert!(
        out.unit_status
            .message
            .starts_with("resource payload is needed: juju attach-resource demo payload=FILE: "),
        "{}",
        out.unit_status.message
    );
    assert!(out
        .logs
        .iter()
        .any(|l| l.level == LogLevel::Warning && l.message.contains("resource payload")));
    assert!(out.files_written.is_empty());
}

#[test]
fn bad_config_blocks_then_a_fix_restarts_the_service() {
    let h = harness();
    let installed = h.run(Event::Install, &installed()).unwrap();
    ok(&installed);

    let bad = h
        .run(
            Event::ConfigChanged,
            &installed.state.clone().config("port", 80),
        )
        .unwrap();
    ok(&bad);
    assert_eq!(
        bad.unit_status,
        Status::blocked("port 80 is privileged: choose 1024 or above")
    );
    assert!(bad.logs.contains(&LogLine {
        level: LogLevel::Warning,
        message: "config-changed: blocked: port 80 is privileged: choose 1024 or above".into()
    }));
    assert!(bad.files_written.is_empty());
    assert!(bad.systemctl().is_empty());

    let fixed = h
        .run(
            Event::ConfigChanged,
            &bad.state.clone().config("port", 9000),
        )
        .unwrap();
    ok(&fixed);
    assert_eq!(fixed.unit_status, Status::active("serving on 9000"));
    assert_eq!(
        fixed.systemctl(),
        [
            "daemon-reload",
            "is-active --quiet demo.service",
            "restart demo.service"
        ]
    );
    let svc = fixed.service("demo").unwrap();
    assert_eq!((svc.starts, svc.restarts), (1, 1));
    assert!(svc.loaded.as_deref().unwrap().contains("DEMO_PORT=9000"));
    assert_eq!(fixed.opened_ports(), [Port::tcp(9000)]);
    assert!(fixed
        .command_lines()
        .contains(&"close-port 8080/tcp".to_string()));

    // The same config again changes nothing.
    let again = h.run(Event::ConfigChanged, &fixed.state).unwrap();
    assert_eq!(again.systemctl(), ["is-active --quiet demo.service"]);
    assert!(again.files_written.is_empty());
}

#[test]
fn config_types_and_keys_are_checked_against_charmcraft_yaml() {
    let h = harness();
    let err = h
        .run(
            Event::ConfigChanged,
            &State::default().config("port", "9000"),
        )
        .unwrap_err();
    assert!(matches!(err, HarnessError::Scenario(_)), "{err}");
    let err = h
        .run(
            Event::ConfigChanged,
            &State::default().config("colour", "red"),
        )
        .unwrap_err();
    assert!(err.to_string().contains("colour"), "{err}");
    let err = h.run(Event::LeaderElected, &State::default()).unwrap_err();
    assert!(matches!(err, HarnessError::Scenario(_)), "{err}");
    let err = h
        .run(Event::relation_changed("db"), &State::default())
        .unwrap_err();
    assert!(err.to_string().contains("no relation on \"db\""), "{err}");
}

fn db() -> Relation {
    Relation::new("db", "demo_db")
        .remote_app("pg")
        .remote_app_data([("url", "postgres://pg:5432/demo"), ("pool", "4")])
}

fn peers() -> Relation {
    Relation::peer("replicas", "demo_replicas").remote_unit_ids(&[1, 2])
}

#[test]
fn relation_changed_reads_the_remote_app_and_writes_unit_and_app_data_as_leader() {
    let state = State::default()
        .leader(true)
        .relation(db())
        .relation(peers());
    let out = harness()
        .run(Event::relation_changed("db"), &state)
        .unwrap();
    ok(&out);
    assert_eq!(
        out.local_unit_data("db"),
        databag([("address", "10.0.0.10"), ("port", "8080")])
    );
    assert_eq!(
        out.local_app_data("db"),
        databag([("greeting", "hello"), ("units", "3")])
    );
    assert_eq!(out.unit_status, Status::active("serving on 8080 with db"));
    assert!(out.logged("db at postgres://pg:5432/demo (pool Some(4))"));
    let lines = out.command_lines();
    for want in [
        "relation-list --format=json --app -r db:1",
        "relation-get --format=json -r db:1 --app - pg",
        "network-get --format=json db",
        "relation-set -r db:1 --file -",
        "is-leader --format=json",
        "relation-ids replicas --format=json",
        "relation-list --format=json -r replicas:2",
        "relation-set -r db:1 --app --file -",
    ] {
        assert!(
            lines.contains(&want.to_string()),
            "no {want:?} in {lines:#?}"
        );
    }
    let set = out.calls_to("relation-set").next().unwrap();
    assert_eq!(
        set.stdin.as_deref(),
        Some("{\"address\":\"10.0.0.10\",\"port\":\"8080\"}")
    );
}

#[test]
fn relation_changed_on_a_non_leader_writes_only_unit_data() {
    let state = State::default()
        .unit("demo/1")
        .relation(db())
        .relation(peers());
    let out = harness()
        .run(Event::relation_changed("db"), &state)
        .unwrap();
    ok(&out);
    assert_eq!(
        out.local_unit_data("db").get("port").map(String::as_str),
        Some("8080")
    );
    assert!(out.local_app_data("db").is_empty());
    assert!(out.refused_calls().is_empty());
}

#[test]
fn relation_changed_without_the_url_waits() {
    let state = State::default()
        .leader(true)
        .relation(Relation::new("db", "demo_db").remote_app("pg"));
    let out = harness()
        .run(Event::relation_changed("db"), &state)
        .unwrap();
    ok(&out);
    assert_eq!(out.unit_status, Status::waiting("waiting for the db url"));
    assert!(out.local_unit_data("db").is_empty());
}

#[test]
fn juju_refuses_app_data_from_a_non_leader() {
    let h = harness();
    let state = State::default().relation(db());
    let out = h.run(Trigger::action("publish"), &state).unwrap();
    ok(&out);
    let failure = out.action.as_ref().unwrap().failure.clone().unwrap();
    assert!(
        failure.starts_with("publishing the greeting: relation-set failed (exit 1): ERROR "),
        "{failure}"
    );
    assert!(failure.contains("is not the leader"), "{failure}");
    let refused = out.refused_calls();
    assert_eq!(refused.len(), 1);
    assert_eq!(
        refused[0].command_line(),
        "relation-set -r db:1 --app --file -"
    );
    assert!(out.local_app_data("db").is_empty());
    // The unit's status is the action's business only.
    assert_eq!(out.unit_status, Status::unknown());

    let out = h
        .run(Trigger::action("publish"), &state.leader(true))
        .unwrap();
    assert_eq!(
        out.action.unwrap().results,
        databag([("published", "true")])
    );
    assert_eq!(
        out.state.relation_on("db").unwrap().local_app_data,
        databag([("greeting", "hello"), ("units", "1")])
    );
}

#[test]
fn update_status_reports_the_service_health() {
    let h = harness();
    let installed = h.run(Event::Install, &installed()).unwrap();
    let out = h.run(Event::UpdateStatus, &installed.state).unwrap();
    ok(&out);
    assert_eq!(out.unit_status, Status::active("serving on 8080"));

    let mut stopped = installed.state.clone();
    stopped.services.insert(
        "demo.service".into(),
        Service {
            active: false,
            ..Service::running()
        },
    );
    let out = h.run(Event::UpdateStatus, &stopped).unwrap();
    ok(&out);
    assert_eq!(
        out.unit_status,
        Status::blocked("demo.service is not running")
    );
}

#[test]
fn an_action_sets_results_and_stored_state_survives_events() {
    let h = harness();
    let one = h.run(Event::Install, &installed()).unwrap();
    let two = h.run(Event::UpdateStatus, &one.state).unwrap();
    assert_eq!(
        two.state.stored.get("events-seen").map(String::as_str),
        Some("2")
    );
    let out = h
        .run(Trigger::action("report").param("verbose", true), &two.state)
        .unwrap();
    ok(&out);
    let action = out.action.clone().unwrap();
    assert_eq!(
        action.results,
        databag([
            ("config.greeting", "hello"),
            ("config.port", "8080"),
            ("events-seen", "3"),
            ("service.active", "true"),
        ])
    );
    assert_eq!(action.logs, ["collecting"]);
    assert_eq!(action.failure, None);
    assert!(out
        .command_lines()
        .contains(&"action-get --format=json".to_string()));
    // Defaults from charmcraft.yaml: verbose is false when not given.
    let quiet = h.run(Trigger::action("report"), &out.state).unwrap();
    assert!(!quiet.action.unwrap().results.contains_key("config.port"));
    // An undeclared action is not a scenario Juju can run.
    assert!(h.run(Trigger::action("dance"), &out.state).is_err());
}

#[test]
fn a_real_error_fails_the_hook_and_commits_nothing() {
    let h = harness();
    let before = installed()
        .config("simulate-failure", true)
        .stored("events-seen", "5");
    let out = h.run(Event::ConfigChanged, &before).unwrap();
    assert_eq!(out.exit_code, 1);
    assert_eq!(
        out.unit_status,
        Status::error("hook failed: \"config-changed\"")
    );
    assert_eq!(
        out.status_history,
        [StatusChange {
            app: false,
            status: Status::blocked("config-changed failed: simulated failure")
        }]
    );
    assert!(out.logs.contains(&LogLine {
        level: LogLevel::Error,
        message: "config-changed failed: simulated failure".into()
    }));
    assert!(out
        .stderr
        .contains("config-changed failed: simulated failure"));
    // Juju does not commit a failed hook's stored state.
    assert_eq!(
        out.state.stored.get("events-seen").map(String::as_str),
        Some("5")
    );
}

#[test]
fn departed_and_broken_change_the_relation() {
    let h = harness();
    let state = State::default().leader(true).relation(
        db().remote_unit_data("pg/0", [("x", "1")])
            .remote_unit_data("pg/1", [("x", "2")]),
    );
    let out = h
        .run(
            Trigger::new(Event::relation_departed("db")).remote_unit("pg/1"),
            &state,
        )
        .unwrap();
    ok(&out);
    let units: Vec<&String> = out.relation("db").unwrap().remote_units.keys().collect();
    assert_eq!(units, ["pg/0"]);
    assert!(out.logged("nothing to do for db-relation-departed"));

    let out = h.run(Event::relation_broken("db"), &out.state).unwrap();
    ok(&out);
    assert!(out.relation("db").is_none());
    assert_eq!(out.unit_status, Status::waiting("db relation removed"));
}

#[test]
fn remove_stops_the_service_and_deletes_its_unit_file() {
    let h = harness();
    let installed = h.run(Event::Install, &installed()).unwrap();
    let out = h.run(Event::Remove, &installed.state).unwrap();
    ok(&out);
    assert_eq!(
        out.systemctl(),
        ["disable --now demo.service", "daemon-reload"]
    );
    assert_eq!(
        out.files_removed,
        [std::path::PathBuf::from("/etc/systemd/system/demo.service")]
    );
    let svc = out.service("demo").unwrap();
    assert!(!svc.enabled && !svc.active);
    assert_eq!(svc.loaded, None);
}

#[test]
fn the_standalone_fake_tool_works_too() {
    let h = harness().tool(env!("CARGO_BIN_EXE_juju-charm-fake-tool"));
    let out = h.run(Event::Install, &installed()).unwrap();
    ok(&out);
    assert_eq!(out.unit_status, Status::active("serving on 8080"));
}

#[test]
fn a_binary_without_the_fake_tools_is_refused_up_front() {
    let h = Harness::new("/bin/true").unwrap();
    let err = h.run(Event::Install, &State::default()).unwrap_err();
    assert!(matches!(err, HarnessError::Setup(_)), "{err}");
    assert!(
        err.to_string().contains("features = [\"testing\"]"),
        "{err}"
    );
}
