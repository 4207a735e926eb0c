//! A tiny charm built on juju-charm (metadata in `demo/charmcraft.yaml`): a pretend web
//! service under systemd, a `db` relation, a peer relation, two actions. The crate's
//! tests drive it through the harness; it is also the shortest worked example.

use juju_charm::{
    files, CharmError, CharmResult, Context, Event, LogLevel, Port, RelationId, ResultExt,
    ServiceUnit, Status, Systemd,
};
use serde::{Deserialize, Serialize};

const SERVICE: &str = "demo";
const CONFIG_FILE: &str = "/etc/demo/demo.json";

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
struct Config {
    port: u16,
    greeting: String,
    simulate_failure: bool,
}

/// What the database publishes in its application databag.
#[derive(Debug, Deserialize)]
struct DbApp {
    url: Option<String>,
    pool: Option<u32>,
}

/// What each of our units publishes.
#[derive(Debug, Serialize)]
struct UnitInfo {
    address: String,
    port: u16,
}

/// What the leader publishes for the application.
#[derive(Debug, Serialize)]
struct AppInfo {
    greeting: String,
    units: u32,
}

#[derive(Debug, Deserialize)]
struct ReportParams {
    verbose: bool,
}

fn main() {
    juju_charm::run(charm)
}

fn charm(ctx: &Context) -> CharmResult {
    // Stored state across events: how many this unit has seen.
    let seen: u64 = ctx.stored("events-seen")?.unwrap_or(0);
    ctx.store("events-seen", &(seen + 1))?;

    match &ctx.event {
        Event::Install => install(ctx),
        Event::ConfigChanged | Event::UpgradeCharm => configure(ctx),
        Event::RelationChanged(ep) | Event::RelationJoined(ep) if ep == "db" => db_changed(ctx),
        Event::RelationBroken(ep) if ep == "db" => {
            ctx.status_set(&Status::waiting("db relation removed"))?;
            Ok(())
        }
        Event::UpdateStatus => update_status(ctx),
        Event::Remove | Event::Stop => {
            Systemd::new().remove(SERVICE)?;
            Ok(())
        }
        Event::Action(name) if name == "report" => report(ctx, seen + 1),
        Event::Action(name) if name == "publish" => publish(ctx),
        other => {
            ctx.log(
                LogLevel::Debug,
                &format!("nothing to do for {}", other.name()),
            )?;
            Ok(())
        }
    }
}

fn install(ctx: &Context) -> CharmResult {
    ctx.status_set(&Status::maintenance("installing"))?;
    let payload = ctx
        .resource_get("payload")
        .or_blocked("resource payload is needed: juju attach-resource demo payload=FILE")?;
    let content = std::fs::read_to_string(&payload).context("reading the payload resource")?;
    ctx.application_version_set(content.trim())?;
    configure(ctx)
}

fn configure(ctx: &Context) -> CharmResult {
    let config: Config = ctx.config()?;
    if config.port < 1024 {
        return Err(CharmError::blocked(format!(
            "port {} is privileged: choose 1024 or above",
            config.port
        )));
    }
    if config.simulate_failure {
        return Err(CharmError::failed("simulated failure"));
    }
    let text = serde_json::to_string_pretty(&config)?;
    files::write_if_changed(&ctx.host_path(CONFIG_FILE), text.as_bytes())?;
    let unit = ServiceUnit::new(
        "demo web service",
        ["/opt/demo/bin/demo-server", "--config", CONFIG_FILE],
    )
    .env("DEMO_PORT", config.port.to_string());
    Systemd::new().ensure(SERVICE, &unit)?;
    for open in ctx.opened_ports()? {
        if open != Port::tcp(config.port) {
            ctx.close_port(&open)?;
        }
    }
    ctx.open_port(&Port::tcp(config.port))?;
    ctx.status_set(&Status::active(format!("serving on {}", config.port)))?;
    Ok(())
}

fn db_relation(ctx: &Context) -> CharmResult<RelationId> {
    match ctx.relation_id() {
        Some(id) => Ok(id.clone()),
        None => ctx
            .relation_ids("db")?
            .into_iter()
            .next()
            .ok_or_else(|| CharmError::waiting("waiting for a db relation")),
    }
}

fn db_changed(ctx: &Context) -> CharmResult {
    let rel = db_relation(ctx)?;
    let remote_app = ctx
        .relation_remote_app(&rel)?
        .ok_or_else(|| CharmError::waiting("db has no remote application yet"))?;
    let db: DbApp = ctx.relation_read_app(&rel, &remote_app)?;
    let Some(url) = db.url else {
        return Err(CharmError::waiting("waiting for the db url"));
    };
    let config: Config = ctx.config()?;
    ctx.relation_write(
        &rel,
        &UnitInfo {
            address: ctx.unit_address("db")?,
            port: config.port,
        },
    )?;
    if ctx.is_leader()? {
        // Peers are the application's other units.
        let units = ctx.remote_units("replicas")?.len() as u32 + 1;
        ctx.relation_write_app(
            &rel,
            &AppInfo {
                greeting: config.greeting,
                units,
            },
        )?;
    }
    ctx.log(LogLevel::Info, &format!("db at {url} (pool {:?})", db.pool))?;
    ctx.status_set(&Status::active(format!(
        "serving on {} with db",
        config.port
    )))?;
    Ok(())
}

fn update_status(ctx: &Context) -> CharmResult {
    if Systemd::new().is_active(SERVICE)? {
        let config: Config = ctx.config()?;
        ctx.status_set(&Status::active(format!("serving on {}", config.port)))?;
        Ok(())
    } else {
        Err(CharmError::blocked("demo.service is not running"))
    }
}

fn report(ctx: &Context, seen: u64) -> CharmResult {
    let params: ReportParams = ctx.action_params()?;
    let config: Config = ctx.config()?;
    ctx.action_log("collecting")?;
    let mut results = serde_json::json!({
        "events-seen": seen,
        "service": {"active": Systemd::new().is_active(SERVICE)?},
    });
    if params.verbose {
        results["config"] = serde_json::json!({"port": config.port, "greeting": config.greeting});
    }
    ctx.action_set(&results)?;
    Ok(())
}

fn publish(ctx: &Context) -> CharmResult {
    // Deliberately no leadership check: Juju refuses a non-leader, and the action fails.
    let rel = db_relation(ctx)?;
    let config: Config = ctx.config()?;
    ctx.relation_write_app(
        &rel,
        &AppInfo {
            greeting: config.greeting,
            units: 1,
        },
    )
    .context("publishing the greeting")?;
    ctx.action_set(&serde_json::json!({"published": true}))?;
    Ok(())
}
