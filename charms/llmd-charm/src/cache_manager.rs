//! The cache-manager charm: `llmd cache-manager` as a systemd service. Workers related on
//! `kv-cache-manager` read `events_endpoint` (where their KV event publishers connect) and
//! schedulers read `url` (the score API), from the leader's app databag and every unit's.

use juju_charm::{CharmError, CharmResult, Context, Port};
use llmd_cos::Component;
use serde::Deserialize;

use crate::{ensure_service, lifecycle, port, publish_cos, serving_status, tracing_endpoint};

const SERVICE: &str = "llmd-cache-manager";
const ENDPOINT: &str = "kv-cache-manager";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CacheManagerOptions {
    #[serde(default = "default_port")]
    pub port: i64,
    #[serde(default = "default_events_port")]
    pub events_port: i64,
    /// `memory`, or `redis://HOST:PORT[/DB]` to share one index between units.
    #[serde(default = "default_index")]
    pub index: String,
    #[serde(default)]
    pub max_blocks: i64,
    #[serde(default)]
    pub worker_ttl: f64,
    #[serde(default)]
    pub extra_args: String,
}

fn default_port() -> i64 {
    8100
}
fn default_events_port() -> i64 {
    5557
}
fn default_index() -> String {
    "memory".into()
}

pub fn run() -> ! {
    juju_charm::run(handle)
}

pub fn handle(ctx: &Context) -> CharmResult {
    let Some(new_binary) = lifecycle(ctx, SERVICE)? else {
        return Ok(());
    };
    let o: CacheManagerOptions = ctx.config()?;
    let http = port("port", o.port)?;
    let events = port("events-port", o.events_port)?;
    let index = o.index.trim();
    if index != "memory" && !index.starts_with("redis://") && !index.starts_with("rediss://") {
        return Err(CharmError::blocked(format!(
            "index must be memory or redis://HOST:PORT, not {index:?}"
        )));
    }
    if o.max_blocks < 0 || !(o.worker_ttl >= 0.0 && o.worker_ttl.is_finite()) {
        return Err(CharmError::blocked(
            "max-blocks and worker-ttl must not be negative",
        ));
    }
    let address = ctx
        .unit_address(ENDPOINT)
        .unwrap_or_else(|_| "127.0.0.1".into());
    let mut args: Vec<String> = vec![
        "cache-manager".into(),
        "--host".into(),
        "0.0.0.0".into(),
        "--port".into(),
        http.to_string(),
        "--events-bind".into(),
        format!("tcp://0.0.0.0:{events}"),
        "--index".into(),
        index.to_string(),
    ];
    if o.max_blocks > 0 {
        args.extend(["--max-blocks".into(), o.max_blocks.to_string()]);
    }
    if o.worker_ttl > 0.0 {
        args.extend(["--worker-ttl".into(), o.worker_ttl.to_string()]);
    }
    if let Some(otlp) = tracing_endpoint(ctx)? {
        args.extend(["--otlp-traces-endpoint".into(), otlp]);
    }
    args.extend(o.extra_args.split_whitespace().map(str::to_string));
    // Every setting is a flag: a changed unit file restarts the service.
    ensure_service(SERVICE, "llmd cache-manager", args, new_binary)?;
    ctx.open_port(&Port::tcp(http))?;
    ctx.open_port(&Port::tcp(events))?;
    let data = juju_charm::databag([
        ("events_endpoint", format!("tcp://{address}:{events}")),
        ("url", format!("http://{address}:{http}")),
    ]);
    let leader = ctx.is_leader()?;
    for rel in ctx.relation_ids(ENDPOINT)? {
        ctx.relation_set(&rel, &data)?;
        if leader {
            ctx.relation_set_app(&rel, &data)?;
        }
    }
    publish_cos(ctx, Component::CacheManager, http, &address)?;
    serving_status(
        ctx,
        http,
        "cache-manager",
        format!("indexing KV events on :{events} ({index} index)"),
    )
}
