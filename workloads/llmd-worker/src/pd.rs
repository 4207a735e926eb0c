//! Prefill/decode disaggregation with vLLM's `kv_transfer_params`, and the KV event
//! publisher.
//!
//! Prefill leg (`do_remote_decode: true`): the engine runs the prompt for one token and keeps
//! its full blocks pinned; the answer carries `do_remote_prefill: true` and where to pull
//! them (`remote_host`, `remote_port` — this worker's KV port —, `remote_request_id`,
//! `remote_block_ids`, `remote_engine_id`). The pinned blocks are released when the pull
//! completes or is aborted, or by the engine's pin timeout if it never comes.
//!
//! Decode leg (`do_remote_prefill: true`): pull those blocks over `llmd-kvx` (the header is
//! checked against our layout and model fingerprint before any payload byte is read) and
//! start the sequence from them. Any failure — refused, timeout, mismatch, truncation, bad
//! checksum, a failed RDMA READ — falls back to computing the prompt here: slower, never
//! wrong.
//!
//! Transport: TCP, or RDMA READs (`--kv-transport rdma`, builds with the `rdma` feature)
//! when the worker finds a usable device at start; otherwise it says so and uses TCP.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use llmd_engine::serving::{EngineHandle, KvExport, PinnedInfo};
use llmd_kvx::{KvBlob, KvExpect, KvLayoutHeader, KvSource, Outcome};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::metrics::{KvSide, Metrics};
use crate::{State, WorkerConfig, WorkerError};

/// The KV transport a worker is asked to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvTransport {
    Tcp,
    /// RDMA on `device` (the first usable one when `None`), with `staging_bytes` of
    /// registered staging memory.
    Rdma {
        device: Option<String>,
        staging_bytes: usize,
    },
}

/// Opens the asked-for transport; without a usable RDMA device (or RDMA support in this
/// build) that is logged and TCP is used.
fn open_transport(asked: &KvTransport) -> llmd_kvx::Transport {
    let KvTransport::Rdma {
        device,
        staging_bytes,
    } = asked
    else {
        return llmd_kvx::Transport::Tcp;
    };
    #[cfg(feature = "rdma")]
    match llmd_kvx::rdma::RdmaNode::open(device.as_deref(), *staging_bytes) {
        Ok(node) => {
            tracing::info!(
                device = node.device(),
                staging_mib = node.staging_bytes() >> 20,
                "KV transfer over RDMA"
            );
            llmd_kvx::Transport::Rdma(node)
        }
        Err(e) => {
            tracing::warn!(error = %e, ?device, "no usable RDMA device; KV transfer uses TCP");
            llmd_kvx::Transport::Tcp
        }
    }
    #[cfg(not(feature = "rdma"))]
    {
        tracing::warn!(
            ?device,
            staging_bytes,
            "this build has no RDMA support (feature `rdma`); KV transfer uses TCP"
        );
        llmd_kvx::Transport::Tcp
    }
}

/// Where a decode leg pulls its KV from.
#[derive(Debug, Clone)]
pub struct Remote {
    pub host: String,
    pub port: u16,
    pub request_id: String,
}

/// What a request's `kv_transfer_params` ask of this worker.
#[derive(Debug)]
pub enum PdLeg {
    None,
    Prefill,
    Decode(Remote),
}

impl PdLeg {
    /// The span attribute: which leg this worker runs.
    pub fn name(&self) -> &'static str {
        match self {
            PdLeg::None => "whole",
            PdLeg::Prefill => "prefill",
            PdLeg::Decode(_) => "decode",
        }
    }
}

fn flag(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// Reads the leg from `kv_transfer_params`; a leg this worker's role does not serve is run
/// as a whole request (logged), as a vLLM server without that connector role would.
pub fn leg(s: &State, params: Option<&Value>) -> PdLeg {
    let Some(p) = params else {
        return PdLeg::None;
    };
    if flag(p, "do_remote_decode") {
        if s.cfg.role.serves_prefill_legs() && s.pd.kv_addr.is_some() {
            return PdLeg::Prefill;
        }
        tracing::warn!(
            role = s.cfg.role.as_str(),
            "prefill leg sent to a worker that does not serve them; running it whole"
        );
        return PdLeg::None;
    }
    if flag(p, "do_remote_prefill") {
        if !s.cfg.role.pulls_kv() {
            tracing::warn!(
                role = s.cfg.role.as_str(),
                "decode leg sent to a prefill-only worker; running it whole"
            );
            return PdLeg::None;
        }
        let host = p.get("remote_host").and_then(Value::as_str);
        let port = p
            .get("remote_port")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok());
        let id = p.get("remote_request_id").and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        return match (host, port, id) {
            (Some(h), Some(port), Some(request_id)) => PdLeg::Decode(Remote {
                host: h.to_string(),
                port,
                request_id,
            }),
            _ => {
                s.metrics.kv_failure(KvSide::Received, "bad_params");
                s.metrics.kv_fallback();
                tracing::warn!(params = %p, "decode leg without remote_host/remote_port/remote_request_id; computing the prompt here");
                PdLeg::None
            }
        };
    }
    PdLeg::None
}

/// Exports awaiting a pull: the `remote_request_id` we handed out → the engine request.
#[derive(Default)]
struct Exports {
    by_id: HashMap<String, (u64, Instant)>,
}

/// The prefill side's KV source for the transfer server.
struct Source {
    engine: EngineHandle,
    exports: Arc<Mutex<Exports>>,
    metrics: Arc<Metrics>,
}

impl KvSource for Source {
    fn fetch(
        &self,
        request_id: &str,
    ) -> Pin<Box<dyn Future<Output = Result<KvBlob, String>> + Send + '_>> {
        let found = self
            .exports
            .lock()
            .ok()
            .and_then(|e| e.by_id.get(request_id).map(|x| x.0));
        let request_id = request_id.to_string();
        Box::pin(async move {
            let Some(engine_id) = found else {
                return Err("no such transfer (released, expired or never exported)".to_string());
            };
            match self.engine.export(engine_id).await {
                Ok(ex) => Ok(blob(ex)),
                Err(e) => {
                    // The engine no longer holds it (expired): nothing left to track.
                    if let Ok(mut x) = self.exports.lock() {
                        x.by_id.remove(&request_id);
                    }
                    Err(e.to_string())
                }
            }
        })
    }

    fn finished(&self, request_id: &str, outcome: Outcome) {
        let entry = self
            .exports
            .lock()
            .ok()
            .and_then(|mut e| e.by_id.remove(request_id));
        let Some((engine_id, since)) = entry else {
            return;
        };
        self.engine.release(engine_id);
        match outcome {
            Outcome::Delivered { bytes } => {
                self.metrics
                    .kv_transfer(KvSide::Sent, bytes, since.elapsed().as_secs_f64())
            }
            Outcome::Aborted(reason) => {
                tracing::info!(request_id, %reason, "KV transfer aborted; blocks released");
                self.metrics.kv_failure(KvSide::Sent, "aborted")
            }
        }
    }
}

fn dtype_name(d: candle_core::DType) -> &'static str {
    match d {
        candle_core::DType::F16 => "f16",
        candle_core::DType::BF16 => "bf16",
        _ => "f32",
    }
}

fn blob(ex: KvExport) -> KvBlob {
    let l = ex.layout;
    let num_blocks = ex.num_tokens / l.block_size.max(1);
    KvBlob {
        header: KvLayoutHeader {
            fingerprint: ex.fingerprint,
            num_layers: l.num_layers as u32,
            num_kv_heads: l.num_kv_heads as u32,
            head_dim: l.head_dim as u32,
            dtype: dtype_name(l.dtype).to_string(),
            block_size: l.block_size as u32,
            num_blocks: num_blocks as u32,
            num_tokens: ex.num_tokens as u32,
            payload_len: ex.data.len() as u64,
        },
        data: ex.data.into(),
    }
}

/// Per-worker P/D state.
pub struct PdState {
    pub kv_addr: Option<std::net::SocketAddr>,
    /// How this worker's pulls move the payload (and whether its server offers RDMA).
    pub transport: llmd_kvx::Transport,
    advertise: String,
    exports: Arc<Mutex<Exports>>,
}

impl PdState {
    /// Starts the KV transfer server for roles that serve prefill legs.
    pub async fn start(
        engine: &EngineHandle,
        cfg: &WorkerConfig,
        advertise: &str,
        metrics: Arc<Metrics>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(Self, Option<std::net::SocketAddr>), WorkerError> {
        let exports = Arc::new(Mutex::new(Exports::default()));
        let transport = open_transport(&cfg.kv_transport);
        let mut kv_addr = None;
        if cfg.role.serves_prefill_legs() {
            let addr = format!("{}:{}", cfg.host, cfg.kv_port.unwrap_or(0));
            let (local, server) = llmd_kvx::KvServer::bind(&addr)
                .await
                .map_err(|e| WorkerError::Config(format!("KV transfer port {addr}: {e}")))?;
            #[cfg(feature = "rdma")]
            let server = match &transport {
                llmd_kvx::Transport::Rdma(node) => server.with_rdma(node.clone()),
                llmd_kvx::Transport::Tcp => server,
            };
            kv_addr = Some(local);
            let source = Arc::new(Source {
                engine: engine.clone(),
                exports: exports.clone(),
                metrics,
            });
            tokio::spawn(async move {
                let stop = async move {
                    while !*shutdown.borrow() {
                        if shutdown.changed().await.is_err() {
                            break;
                        }
                    }
                };
                server.serve(source, stop).await;
            });
        }
        Ok((
            Self {
                kv_addr,
                transport,
                advertise: advertise.to_string(),
                exports,
            },
            kv_addr,
        ))
    }

    /// Records a finished prefill leg's pinned blocks and returns the `kv_transfer_params`
    /// for its answer.
    pub fn register_export(&self, s: &State, engine_id: u64, p: &PinnedInfo) -> Value {
        let request_id = format!("{}-{engine_id}", s.worker_id);
        if let Ok(mut e) = self.exports.lock() {
            // Exports never pulled were unpinned by the engine's timeout; forget them too.
            let keep = s.cfg.kv_transfer_timeout * 2;
            e.by_id.retain(|_, (_, since)| since.elapsed() < keep);
            e.by_id
                .insert(request_id.clone(), (engine_id, Instant::now()));
        }
        let host = s
            .cfg
            .kv_advertise_host
            .clone()
            .unwrap_or_else(|| self.advertise.clone());
        json!({
            "do_remote_prefill": true,
            "do_remote_decode": false,
            "remote_block_ids": p.block_ids,
            "remote_engine_id": s.worker_id,
            "remote_request_id": request_id,
            "remote_host": host,
            "remote_port": self.kv_addr.map(|a| a.port()),
            "remote_num_tokens": p.num_tokens,
        })
    }
}

/// Pulls a decode leg's KV; `None` (counted, logged) means compute the prompt here.
pub async fn pull(s: &State, r: &Remote) -> Option<KvExport> {
    let l = s.engine.kv_layout;
    let expect = KvExpect {
        fingerprint: s.engine.fingerprint.clone(),
        num_layers: l.num_layers as u32,
        num_kv_heads: l.num_kv_heads as u32,
        head_dim: l.head_dim as u32,
        dtype: dtype_name(l.dtype).to_string(),
        block_size: l.block_size as u32,
    };
    let t0 = Instant::now();
    let addr = format!("{}:{}", r.host, r.port);
    // A child of the request span (the caller's current span).
    let span = tracing::info_span!(
        "kv_pull",
        llmd.kv.remote = %addr,
        llmd.kv.transport = s.pd.transport.name(),
        llmd.kv.request_id = %r.request_id,
        llmd.kv.bytes = tracing::field::Empty,
        llmd.kv.tokens = tracing::field::Empty,
        llmd.kv.outcome = tracing::field::Empty,
        llmd.kv.fallback = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    let pulled = llmd_kvx::pull_via(
        &s.pd.transport,
        &addr,
        &r.request_id,
        &expect,
        s.cfg.kv_transfer_timeout,
    )
    .instrument(span.clone())
    .await;
    match pulled {
        Ok(b) => {
            // i64: tracing-opentelemetry exports u64 fields as strings.
            span.record("llmd.kv.bytes", b.data.len() as i64);
            span.record("llmd.kv.tokens", i64::from(b.header.num_tokens));
            span.record("llmd.kv.outcome", "ok");
            span.record("llmd.kv.fallback", false);
            s.metrics
                .kv_transfer(KvSide::Received, b.data.len(), t0.elapsed().as_secs_f64());
            let mut layout = l;
            layout.num_blocks = b.header.num_blocks as usize;
            Some(KvExport {
                layout,
                fingerprint: b.header.fingerprint,
                num_tokens: b.header.num_tokens as usize,
                data: b.data.into(),
            })
        }
        Err(e) => {
            span.record("llmd.kv.outcome", e.reason());
            span.record("llmd.kv.fallback", true);
            span.record("otel.status_description", e.to_string());
            s.metrics.kv_failure(KvSide::Received, e.reason());
            s.metrics.kv_fallback();
            tracing::warn!(%addr, request_id = %r.request_id, error = %e, "KV pull failed; computing the prompt here");
            None
        }
    }
}

/// Starts the KV event publisher on the engine's event stream.
pub async fn start_events(
    cfg: &WorkerConfig,
    endpoint: String,
    worker_id: &str,
    model: &str,
    rx: tokio::sync::mpsc::UnboundedReceiver<Vec<llmd_protocol::KvEvent>>,
) -> Result<llmd_kvevents::PublisherHandle, WorkerError> {
    let mode = if cfg.kv_events_connect {
        llmd_kvevents::SocketMode::Connect
    } else {
        llmd_kvevents::SocketMode::Bind
    };
    let mut pc =
        llmd_kvevents::PublisherConfig::new(endpoint, mode, llmd_kvevents::topic(worker_id, model));
    pc.buffer_steps = cfg.kv_events_buffer;
    if let Some(r) = &cfg.kv_events_replay_endpoint {
        pc = pc.with_replay(r.clone());
    }
    llmd_kvevents::Publisher::spawn(pc, rx)
        .await
        .map_err(|e| WorkerError::Events(e.to_string()))
}
