//! The prefill and decode charms: `llmd worker --role prefill|decode` as a systemd service.
//!
//! Every hook converges the unit on what config and relations say: fetch the model
//! (`maintenance` meanwhile), write the worker's YAML config and unit file, (re)start the
//! service when either changed (SIGTERM: the worker drains in-flight requests first), open
//! the ports, publish `url`, `role`, `kv_url`, `model` on the worker endpoint, and the COS
//! data. A model that cannot be fetched leaves the running service and its config alone and
//! blocks with the reason; fixing `model-id` clears it.

use juju_charm::{CharmError, CharmResult, Context, Port, Status};
use llmd_cos::Component;
use serde::Deserialize;

use crate::{
    ensure_service, fetch_model, lifecycle, port, publish_cos, remote_app_value, serving_status,
    tracing_endpoint, write_config, FetchedModel,
};

/// Which worker charm this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Prefill,
    Decode,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Prefill => "prefill",
            Role::Decode => "decode",
        }
    }

    /// The endpoint it provides to the scheduler.
    pub fn endpoint(self) -> &'static str {
        match self {
            Role::Prefill => "prefill-worker",
            Role::Decode => "decode-worker",
        }
    }

    fn component(self) -> Component {
        match self {
            Role::Prefill => Component::Prefill,
            Role::Decode => Component::Decode,
        }
    }

    fn service(self) -> &'static str {
        match self {
            Role::Prefill => "llmd-prefill",
            Role::Decode => "llmd-decode",
        }
    }
}

/// The charm's config options (charmcraft.yaml), as `config-get` returns them.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct WorkerOptions {
    /// Model source: `default`, a path on the machine, `hf:ORG/REPO[:FILE]`, or `resource`
    /// (the file attached with `juju attach-resource`).
    #[serde(default)]
    pub model_id: String,
    #[serde(default = "default_port")]
    pub port: i64,
    #[serde(default = "default_kv_port")]
    pub kv_port: i64,
    #[serde(default)]
    pub kv_cache_memory: String,
    #[serde(default)]
    pub max_num_seqs: i64,
    #[serde(default)]
    pub threads: i64,
    #[serde(default)]
    pub served_model_name: String,
    /// More `llmd worker` flags, as the original charms' `extra-args`.
    #[serde(default)]
    pub extra_args: String,
}

fn default_port() -> i64 {
    8000
}

fn default_kv_port() -> i64 {
    8200
}

/// The worker's YAML config (the `llmd worker --config` keys).
fn render_config(
    role: Role,
    o: &WorkerOptions,
    model: &FetchedModel,
    address: &str,
    events: Option<&str>,
    otlp: Option<&str>,
) -> CharmResult<String> {
    let mut m = serde_yaml_ng::Mapping::new();
    let mut put = |k: &str, v: serde_yaml_ng::Value| {
        m.insert(k.into(), v);
    };
    put("model", model.path.clone().into());
    put("role", role.as_str().into());
    put("host", "0.0.0.0".into());
    put("port", port("port", o.port)?.into());
    put("kv-host", address.into());
    if role == Role::Prefill {
        put("kv-port", port("kv-port", o.kv_port)?.into());
    }
    let served = if o.served_model_name.is_empty() {
        model.name.clone()
    } else {
        o.served_model_name.clone()
    };
    put("served-model-name", served.into());
    if !o.kv_cache_memory.is_empty() {
        put("kv-cache-memory", o.kv_cache_memory.clone().into());
    }
    if o.max_num_seqs > 0 {
        put("max-num-seqs", o.max_num_seqs.into());
    }
    if o.threads > 0 {
        put("threads", o.threads.into());
    }
    if let Some(e) = events {
        put("kv-events-endpoint", e.into());
    }
    if let Some(e) = otlp {
        put("otlp-traces-endpoint", e.into());
    }
    serde_yaml_ng::to_string(&m).map_err(|e| CharmError::failed(e.to_string()))
}

/// The source to fetch: `resource` means the attached file.
fn model_source(ctx: &Context, o: &WorkerOptions) -> CharmResult<String> {
    match o.model_id.trim() {
        "" | "default" => Ok("default".into()),
        "resource" => {
            let p = ctx.resource_get("model").map_err(|e| {
                CharmError::blocked(format!("model-id=resource but no model resource: {e}"))
            })?;
            Ok(p.display().to_string())
        }
        s => Ok(s.to_string()),
    }
}

/// The charm: `llmd_charm::worker::run(Role::Decode)` from `main`.
pub fn run(role: Role) -> ! {
    juju_charm::run(|ctx| handle(ctx, role))
}

pub fn handle(ctx: &Context, role: Role) -> CharmResult {
    let service = role.service();
    let Some(new_binary) = lifecycle(ctx, service)? else {
        return Ok(());
    };
    let o: WorkerOptions = ctx.config()?;
    let http_port = port("port", o.port)?;
    let address = ctx
        .unit_address(role.endpoint())
        .unwrap_or_else(|_| "127.0.0.1".into());

    // The model: fetched (and checked) before anything running is touched.
    let source = model_source(ctx, &o)?;
    let current: Option<FetchedModel> = ctx.stored("model")?;
    let model = match &current {
        Some(m) if m.source == source => m.clone(),
        _ => {
            ctx.status_set(&Status::maintenance(format!("fetching model {source}")))?;
            match fetch_model(ctx, &source) {
                Ok(m) => m,
                Err(why) => {
                    let still = current
                        .as_ref()
                        .map(|m| format!("; still serving {}", m.name))
                        .unwrap_or_default();
                    return Err(CharmError::blocked(format!(
                        "model-id {source}: {why}{still}"
                    )));
                }
            }
        }
    };

    let events = remote_app_value(ctx, "kv-cache-manager", "events_endpoint")?;
    let otlp = tracing_endpoint(ctx)?;
    let config = render_config(
        role,
        &o,
        &model,
        &address,
        events.as_deref(),
        otlp.as_deref(),
    )?;
    let changed = write_config(ctx, service, &config)?;
    let mut args = vec![
        "worker".to_string(),
        "--config".into(),
        format!("{}/{service}.yaml", crate::CONFIG_DIR),
    ];
    args.extend(o.extra_args.split_whitespace().map(str::to_string));
    ensure_service(
        service,
        &format!("llmd {} worker", role.as_str()),
        args,
        changed || new_binary,
    )?;
    ctx.store("model", &model)?;
    ctx.open_port(&Port::tcp(http_port))?;
    let mut data = vec![
        ("url", format!("http://{address}:{http_port}")),
        ("role", role.as_str().to_string()),
        ("model", model.name.clone()),
    ];
    if role == Role::Prefill {
        let kv = port("kv-port", o.kv_port)?;
        ctx.open_port(&Port::tcp(kv))?;
        data.push(("kv_url", format!("tcp://{address}:{kv}")));
    }
    for rel in ctx.relation_ids(role.endpoint())? {
        ctx.relation_set(&rel, &juju_charm::databag(data.clone()))?;
    }
    publish_cos(ctx, role.component(), http_port, &address)?;

    let note = if events.is_none() {
        " (no cache-manager related: prefix routing is approximate)"
    } else {
        ""
    };
    serving_status(
        ctx,
        http_port,
        &model.name,
        format!("serving {}{note}", model.name),
    )
}
