//! The service the decode charm writes really starts the workload: the charm (through the
//! harness) installs the real `llmd` binary and writes the unit file and config; this test
//! runs the unit file's command with that config, gets a healthy `/health`, and the next
//! update-status reports the unit active. Runs under `tests/run e2e` (needs the default
//! model and the built `llmd` binary).
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use juju_charm::testing::{Harness, State};
use juju_charm::{Event, StatusName};

const CHARM: &str = env!("CARGO_BIN_EXE_llmd-decode-charm");
const CHARMCRAFT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charmcraft.yaml");

#[test]
fn the_written_unit_starts_a_healthy_worker() {
    let (Some(_), Some(model)) = (
        std::env::var_os("LLMD_E2E"),
        std::env::var("LLMD_TEST_MODEL").ok(),
    ) else {
        eprintln!("skipped: set LLMD_E2E=1 and LLMD_TEST_MODEL (tests/run e2e does)");
        return;
    };
    let llmd = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/llmd");
    assert!(
        llmd.exists(),
        "build the workload first: cargo build -p llmd"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bin")).unwrap();
    std::fs::write(dir.path().join("metadata.yaml"), "name: llmd-decode\n").unwrap();
    std::os::unix::fs::symlink(llmd.canonicalize().unwrap(), dir.path().join("bin/llmd")).unwrap();
    let h = Harness::new(CHARM)
        .unwrap()
        .charmcraft_yaml(CHARMCRAFT)
        .unwrap()
        .charm_dir(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let st = State::default()
        .unit("llmd-decode/0")
        .leader(true)
        .config("model-id", model.as_str())
        .config("port", i64::from(port))
        .config("threads", 1);
    let out = h.run(Event::Install, &st).unwrap();
    assert!(out.succeeded(), "{}", out.stderr);
    assert_eq!(
        out.unit_status.name,
        StatusName::Active,
        "{:?}",
        out.unit_status
    );

    // The unit file's command, with the machine paths under the harness's root.
    let unit = out.unit_file("llmd-decode").unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let root = h.root();
    let argv: Vec<String> = exec
        .split_whitespace()
        .map(|a| {
            if a.starts_with("/opt/") || a.starts_with("/etc/") {
                root.join(a.trim_start_matches('/')).display().to_string()
            } else {
                a.to_string()
            }
        })
        .collect();
    assert!(
        unit.contains("Environment=LLMD_HOME=/var/lib/llmd"),
        "{unit}"
    );
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("LLMD_HOME", root.join("var/lib/llmd"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !llmd_charm::healthy(port) {
        assert!(
            Instant::now() < deadline,
            "the worker never answered /health"
        );
        assert!(child.try_wait().unwrap().is_none(), "the worker exited");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = h.run(Event::UpdateStatus, &out.state).unwrap();
    assert!(out.succeeded(), "{}", out.stderr);
    assert_eq!(
        out.unit_status.name,
        StatusName::Active,
        "{:?}",
        out.unit_status
    );
    let _ = child.kill();
    let _ = child.wait();
}
