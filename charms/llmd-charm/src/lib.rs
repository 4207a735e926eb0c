//! What the four llmd charms share: the `llmd` binary shipped inside the charm (installed
//! to `/opt/llmd/bin/llmd`), the workload as a systemd service with a YAML config the charm
//! writes, model fetching through `llmd model fetch`, the workload's health, and the COS and
//! tracing relations. [`worker`] is the prefill and decode charms' logic.

pub mod cache_manager;
pub mod pack;
pub mod scheduler;
pub mod worker;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use juju_charm::systemd::Change;
use juju_charm::{CharmError, CharmResult, Context, Databag, Event, ServiceUnit, Status, Systemd};
use llmd_cos::{Component, Topology};

/// Where the workload binary is installed (outside the charm directory, which upgrades
/// replace).
pub const BINARY: &str = "/opt/llmd/bin/llmd";
/// `LLMD_HOME` of the services: fetched models live under it.
pub const HOME: &str = "/var/lib/llmd";
/// The workloads' config files.
pub const CONFIG_DIR: &str = "/etc/llmd";

/// Copies the `llmd` binary shipped in the charm (`bin/llmd`) to [`BINARY`], atomically
/// (a running service keeps the old file until it restarts). Returns `llmd --version` and
/// whether the installed binary changed (an upgrade then restarts the service).
pub fn install_binary(ctx: &Context) -> CharmResult<(String, bool)> {
    let shipped = ctx.charm_path("bin/llmd");
    let dest = ctx.host_path(BINARY);
    let changed = match (std::fs::read(&shipped), std::fs::read(&dest)) {
        (Ok(new), Ok(old)) => new != old,
        _ => true,
    };
    let dir = dest
        .parent()
        .ok_or_else(|| CharmError::failed("bad binary path"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dest.with_extension("new");
    std::fs::copy(&shipped, &tmp).map_err(|e| {
        CharmError::failed(format!(
            "cannot copy the shipped llmd binary {}: {e}",
            shipped.display()
        ))
    })?;
    set_executable(&tmp)?;
    std::fs::rename(&tmp, &dest)?;
    let out = Command::new(&dest).arg("--version").output()?;
    let version = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .unwrap_or("unknown")
        .to_string();
    Ok((version, changed))
}

fn set_executable(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
}

/// A model `llmd model fetch` resolved: the name it serves under and where it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FetchedModel {
    pub source: String,
    pub name: String,
    pub path: String,
}

/// Fetches and checks a model with the installed binary (so a bad source fails here, before
/// the running service is touched). The error is the workload's own one-line message.
pub fn fetch_model(ctx: &Context, source: &str) -> Result<FetchedModel, String> {
    let out = Command::new(ctx.host_path(BINARY))
        .args(["model", "fetch", source])
        .env("LLMD_HOME", ctx.host_path(HOME))
        .output()
        .map_err(|e| format!("cannot run llmd: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("llmd model fetch failed");
        return Err(line.trim_start_matches("error: ").to_string());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut f = stdout.trim().split('\t');
    match (f.next(), f.next(), f.next()) {
        (Some(name), Some(_arch), Some(path)) => Ok(FetchedModel {
            source: source.to_string(),
            name: name.to_string(),
            path: path.to_string(),
        }),
        _ => Err(format!(
            "unexpected output from llmd model fetch: {stdout:?}"
        )),
    }
}

/// Whether the workload answers `GET /health` with 200 on `port` (loopback).
pub fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 16];
    matches!(s.read(&mut head), Ok(n) if n >= 12 && head[9..12] == *b"200")
}

/// The unit's topology for COS.
pub fn topology(ctx: &Context) -> Topology {
    Topology {
        model: ctx.model.clone(),
        model_uuid: ctx.model_uuid.clone(),
        application: ctx.app.clone(),
        unit: ctx.unit.clone(),
        charm_name: charm_name(ctx),
    }
}

/// The charm's name, from the packed charm's `metadata.yaml` (the application may be named
/// otherwise); the application's name if it cannot be read.
pub fn charm_name(ctx: &Context) -> String {
    std::fs::read_to_string(ctx.charm_path("metadata.yaml"))
        .ok()
        .and_then(|t| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&t).ok())
        .and_then(|v| v.get("name")?.as_str().map(str::to_string))
        .unwrap_or_else(|| ctx.app.clone())
}

/// Publishes the COS data on every related `metrics-endpoint`, `grafana-dashboard` and
/// `cos-agent`: app data from the leader, unit data from every unit.
pub fn publish_cos(ctx: &Context, component: Component, port: u16, address: &str) -> CharmResult {
    let topo = topology(ctx);
    let leader = ctx.is_leader()?;
    let err = |e: llmd_cos::CosError| CharmError::failed(e.to_string());
    for rel in ctx.relation_ids("metrics-endpoint")? {
        if leader {
            let app = llmd_cos::metrics_endpoint_app_data(component, &topo, port).map_err(err)?;
            ctx.relation_set_app(&rel, &bag(app))?;
        }
        ctx.relation_set(
            &rel,
            &bag(llmd_cos::metrics_endpoint_unit_data(&topo, address)),
        )?;
    }
    if leader {
        for rel in ctx.relation_ids("grafana-dashboard")? {
            // The uuid follows the content, so Grafana reloads only what changed.
            let content = llmd_cos::dashboard(component).to_string();
            let uuid = format!("{:016x}", fnv(content.as_bytes()));
            let app = llmd_cos::grafana_dashboard_app_data(component, &topo, &uuid).map_err(err)?;
            ctx.relation_set_app(&rel, &bag(app))?;
        }
    }
    for rel in ctx.relation_ids("cos-agent")? {
        let unit = llmd_cos::cos_agent_config(component, &topo, port).map_err(err)?;
        ctx.relation_set(&rel, &bag(unit))?;
    }
    Ok(())
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn bag(m: BTreeMap<String, String>) -> Databag {
    juju_charm::databag(m)
}

/// The OTLP/HTTP endpoint a related tracing provider (Tempo, an otel collector) offers, and
/// the requirer's ask (`receivers: ["otlp_http"]`, from the leader), as COS's `tracing`
/// interface (v2) has them.
pub fn tracing_endpoint(ctx: &Context) -> CharmResult<Option<String>> {
    let leader = ctx.is_leader()?;
    let mut found = None;
    for rel in ctx.relation_ids("tracing")? {
        if leader {
            ctx.relation_set_app(
                &rel,
                &juju_charm::databag([("receivers", r#"["otlp_http"]"#)]),
            )?;
        }
        if let Some(app) = ctx.relation_remote_app(&rel)? {
            let data = ctx.relation_get_app(&rel, &app)?;
            if let Some(url) = otlp_http_url(&data) {
                found = Some(url);
            }
        }
    }
    Ok(found)
}

/// The `otlp_http` receiver's URL in a tracing provider's app databag.
pub fn otlp_http_url(data: &Databag) -> Option<String> {
    let receivers: serde_json::Value = serde_json::from_str(data.get("receivers")?).ok()?;
    receivers.as_array()?.iter().find_map(|r| {
        (r["protocol"]["name"] == "otlp_http")
            .then(|| r["url"].as_str().map(str::to_string))
            .flatten()
    })
}

/// The first value of `key` in the remote app databags of `endpoint`'s relations.
pub fn remote_app_value(ctx: &Context, endpoint: &str, key: &str) -> CharmResult<Option<String>> {
    for rel in ctx.relation_ids(endpoint)? {
        if let Some(app) = ctx.relation_remote_app(&rel)? {
            if let Some(v) = ctx.relation_get_app(&rel, &app)?.get(key) {
                if !v.is_empty() {
                    return Ok(Some(v.clone()));
                }
            }
        }
    }
    Ok(None)
}

/// Install, upgrade, stop and remove, as every llmd charm handles them. `None` when the
/// hook stopped the service (nothing more to do); else whether the workload binary changed
/// (so a running service must restart to run it).
pub fn lifecycle(ctx: &Context, service: &str) -> CharmResult<Option<bool>> {
    match &ctx.event {
        Event::Stop | Event::Remove => {
            Systemd::new().remove(service)?;
            ctx.status_set(&Status::maintenance("stopped"))?;
            Ok(None)
        }
        Event::Install | Event::UpgradeCharm => {
            ctx.status_set(&Status::maintenance("installing llmd"))?;
            let (version, changed) = install_binary(ctx)?;
            ctx.application_version_set(&version)?;
            Ok(Some(changed))
        }
        _ => Ok(Some(false)),
    }
}

/// A port option, checked.
pub fn port(name: &str, v: i64) -> CharmResult<u16> {
    u16::try_from(v).ok().filter(|&p| p > 0).ok_or_else(|| {
        CharmError::blocked(format!("{name} must be a port number (1-65535), not {v}"))
    })
}

/// Writes `text` to `/etc/llmd/<service>.yaml`; whether it changed.
pub fn write_config(ctx: &Context, service: &str, text: &str) -> CharmResult<bool> {
    let path = ctx.host_path(format!("{CONFIG_DIR}/{service}.yaml"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    Ok(juju_charm::files::write_if_changed(&path, text.as_bytes())?)
}

/// The service running `llmd ARGS` with [`HOME`]: started, or restarted when its unit file
/// changed or `restart` says its config did. A stop gives in-flight requests
/// `TimeoutStopSec` to drain.
pub fn ensure_service(
    service: &str,
    description: &str,
    args: Vec<String>,
    restart: bool,
) -> CharmResult {
    let mut argv = vec![BINARY.to_string()];
    argv.extend(args);
    let unit = ServiceUnit::new(description, argv)
        .env("LLMD_HOME", HOME)
        .timeout_stop_sec(120);
    let systemd = Systemd::new();
    if systemd.ensure(service, &unit)? == Change::Unchanged && restart {
        systemd.restart(service)?;
    }
    Ok(())
}

/// `active: <message>`, or on update-status `maintenance` while `/health` does not answer.
pub fn serving_status(ctx: &Context, http_port: u16, what: &str, message: String) -> CharmResult {
    let status = if matches!(ctx.event, Event::UpdateStatus) && !healthy(http_port) {
        Status::maintenance(format!("{what} not answering /health yet"))
    } else {
        Status::active(message)
    };
    ctx.status_set(&status)?;
    Ok(())
}
