//! Prefill → decode over RDMA, in-process on a tiny random model: greedy tokens equal over
//! RDMA, over TCP and from a single worker; a wrong rkey and a server gone after its offer
//! fall back to recomputing (same tokens) and leave no pinned blocks.
//! `LLMD_RDMA_TEST_DEVICES=PREFILL,DECODE` names the devices (`tests/run rdma` runs this in
//! a VM on two soft-RoCE devices); without it the test says so and returns.
#![cfg(feature = "rdma")]
#![allow(clippy::unwrap_used)]

#[path = "../../llmd-engine/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use candle_core::Device;
use llmd_engine::serving::{LlmEngine, ServingConfig};
use llmd_engine::KvCacheSize;
use llmd_kvx::rdma::{inject_fault, transfer_counts, Fault};
use llmd_worker::{KvTransport, Role, RunningWorker, WorkerConfig};
use serde_json::{json, Value};

type Model = std::sync::Arc<(tempfile::TempDir, std::path::PathBuf)>;

struct Running {
    _dir: Model,
    _engine: LlmEngine,
    w: RunningWorker,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.w.http_addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start(dir: Model, f: impl FnOnce(&mut WorkerConfig)) -> Running {
    let resolved = common::resolve(&dir.1);
    let (model, tok) = llmd_engine::load_model(&resolved, &Device::Cpu).unwrap();
    let mut cfg = ServingConfig::new(
        "tiny",
        llmd_engine::model_fingerprint(&resolved, model.config()),
    );
    cfg.block_size = 4;
    cfg.kv_cache = KvCacheSize::Blocks(256);
    cfg.pin_timeout = Duration::from_secs(20);
    let engine = LlmEngine::start(model, tok, cfg, None).unwrap();
    let mut wc = WorkerConfig::new("127.0.0.1", 0);
    f(&mut wc);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let w = llmd_worker::start(engine.handle(), wc, None, async move {
        let _ = rx.await;
    })
    .await
    .unwrap();
    Running {
        _dir: dir,
        _engine: engine,
        w,
        stop: Some(tx),
    }
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .timeout(Duration::from_secs(120))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn metrics(r: &Running) -> String {
    reqwest::get(r.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn rdma(device: &str) -> KvTransport {
    KvTransport::Rdma {
        device: Some(device.to_string()),
        staging_bytes: 16 << 20,
    }
}

/// Runs the prefill leg on `prefill`, then the decode leg on `decode`; the decode answer.
async fn disaggregated(prefill: &Running, decode: &Running, body: &Value) -> Value {
    let mut leg1 = body.clone();
    leg1["max_tokens"] = json!(1);
    leg1["kv_transfer_params"] = json!({"do_remote_decode": true});
    let (st, first) = post(&prefill.url("/v1/completions"), leg1).await;
    assert_eq!(st, 200, "{first}");
    assert_eq!(
        first["kv_transfer_params"]["do_remote_prefill"], true,
        "{first}"
    );
    let mut leg2 = body.clone();
    leg2["kv_transfer_params"] = first["kv_transfer_params"].clone();
    let (st, second) = post(&decode.url("/v1/completions"), leg2).await;
    assert_eq!(st, 200, "{second}");
    second
}

/// Waits until the prefill worker has no pinned blocks (the engine reports at its steps).
async fn no_pinned_blocks(prefill: &Running) {
    let t = Instant::now();
    loop {
        let p = metrics(prefill).await;
        if metric(&p, "llmd_kv_pinned_blocks", "") == 0.0 {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "blocks stay pinned: {p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_kv_over_rdma_then_decode_equals_tcp_and_one_worker_and_faults_fall_back() {
    let Ok(devs) = std::env::var("LLMD_RDMA_TEST_DEVICES") else {
        eprintln!("LLMD_RDMA_TEST_DEVICES is not set: no RDMA devices to test on; skipped");
        return;
    };
    let mut it = devs.split(',');
    let pdev = it.next().unwrap().to_string();
    let ddev = it.next().unwrap_or(&pdev).to_string();
    inject_fault(Fault::None);
    let dir = {
        let d = tempfile::tempdir().unwrap();
        let p = common::write_safetensors(d.path(), 5, candle_core::DType::F32, "llama");
        std::sync::Arc::new((d, p))
    };
    let both = start(dir.clone(), |_| {}).await;
    let prefill = start(dir.clone(), |c| {
        c.role = Role::Prefill;
        c.kv_transport = rdma(&pdev);
    })
    .await;
    let decode = start(dir.clone(), |c| {
        c.role = Role::Decode;
        c.kv_transport = rdma(&ddev);
    })
    .await;
    let decode_tcp = start(dir.clone(), |c| c.role = Role::Decode).await;
    let prompt = "one two three four five six seven eight nine ten eleven twelve thirteen \
                  fourteen fifteen sixteen seventeen eighteen nineteen twenty";
    let body = json!({"model": "tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": true});
    let (st, whole) = post(&both.url("/v1/completions"), body.clone()).await;
    assert_eq!(st, 200, "{whole}");
    let want = whole["choices"][0]["text"].clone();
    assert!(want.as_str().is_some_and(|t| !t.is_empty()), "{whole}");

    // Over RDMA: same tokens, imported (cached) prompt tokens, an RDMA READ transfer.
    let before = transfer_counts();
    let r = disaggregated(&prefill, &decode, &body).await;
    assert_eq!(r["choices"][0]["text"], want, "RDMA: {r}");
    assert_eq!(
        transfer_counts().0,
        before.0 + 1,
        "the pull did not go by RDMA READ"
    );
    assert!(
        r["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{r}"
    );
    let d = metrics(&decode).await;
    assert_eq!(
        metric(&d, "llmd_kv_transfers_total", "received"),
        1.0,
        "{d}"
    );
    assert_eq!(
        metric(&d, "llmd_kv_recompute_fallbacks_total", ""),
        0.0,
        "{d}"
    );
    no_pinned_blocks(&prefill).await;

    // Over TCP from the same RDMA-serving prefill worker: same tokens.
    let before = transfer_counts();
    let r = disaggregated(&prefill, &decode_tcp, &body).await;
    assert_eq!(r["choices"][0]["text"], want, "TCP: {r}");
    assert_eq!(transfer_counts().0, before.0, "a TCP pull counted as RDMA");
    let d = metrics(&decode_tcp).await;
    assert_eq!(
        metric(&d, "llmd_kv_transfers_total", "received"),
        1.0,
        "{d}"
    );
    no_pinned_blocks(&prefill).await;

    // Faults: the pull fails, the decode worker computes the prompt, the tokens are the
    // same, and the prefill worker unpins the blocks.
    for (n, fault) in [Fault::WrongRkey, Fault::ServerGone]
        .into_iter()
        .enumerate()
    {
        inject_fault(fault);
        let r = disaggregated(&prefill, &decode, &body).await;
        inject_fault(Fault::None);
        assert_eq!(r["choices"][0]["text"], want, "{fault:?}: {r}");
        let d = metrics(&decode).await;
        assert_eq!(
            metric(&d, "llmd_kv_recompute_fallbacks_total", ""),
            (n + 1) as f64,
            "{fault:?}: {d}"
        );
        assert_eq!(
            metric(&d, "llmd_kv_transfer_failures_total", "reason=\"rdma\""),
            (n + 1) as f64,
            "{fault:?}: {d}"
        );
        no_pinned_blocks(&prefill).await;
    }

    // And RDMA works again afterwards.
    let before = transfer_counts();
    let r = disaggregated(&prefill, &decode, &body).await;
    assert_eq!(r["choices"][0]["text"], want, "RDMA after faults: {r}");
    assert_eq!(transfer_counts().0, before.0 + 1);
    no_pinned_blocks(&prefill).await;
}
