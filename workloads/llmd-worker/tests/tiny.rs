//! The worker in-process on a tiny random model (no download): the OpenAI routes' shapes,
//! streaming, errors, metrics names, tokenizer endpoints, and prefill → KV → decode equal to
//! one worker. The real model and real clients are in the binary's `worker` e2e tests.
#![allow(clippy::unwrap_used)]

#[path = "../../llmd-engine/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use candle_core::Device;
use llmd_engine::serving::{LlmEngine, ServingConfig};
use llmd_engine::KvCacheSize;
use llmd_worker::{Role, RunningWorker, WorkerConfig};
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

fn model_dir() -> Model {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_safetensors(dir.path(), 5, candle_core::DType::F32, "llama");
    std::sync::Arc::new((dir, path))
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
    cfg.pin_timeout = Duration::from_secs(2);
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

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let r = http().post(url).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The `data:` payloads of an SSE body, in order.
async fn sse(url: &str, body: Value) -> Vec<String> {
    let r = http().post(url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.trim()
                .strip_prefix("data:")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                .trim()
                .to_string()
        })
        .collect()
}

async fn metrics(r: &Running) -> String {
    http()
        .get(r.url("/metrics"))
        .send()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_completions_whole_and_streamed() {
    let r = start(model_dir(), |_| {}).await;
    let chat = json!({"model": "tiny", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 12, "temperature": 0, "ignore_eos": true});
    let (st, whole) = post(&r.url("/v1/chat/completions"), chat.clone()).await;
    assert_eq!(st, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert!(whole["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(whole["model"], "tiny");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    assert_eq!(whole["choices"][0]["finish_reason"], "length");
    assert_eq!(whole["usage"]["completion_tokens"], 12);
    let u = &whole["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + 12
    );

    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = sse(&r.url("/v1/chat/completions"), streamed).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage["usage"][k], whole["usage"][k]);
    }
    // The same prompt again: its full blocks came from the prefix cache.
    assert!(
        usage["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            >= 24
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, vec![&json!("length")]);

    let comp = json!({"model": "tiny", "prompt": "abc abc", "max_tokens": 9, "temperature": 0, "ignore_eos": true});
    let (st, whole) = post(&r.url("/v1/completions"), comp.clone()).await;
    assert_eq!(st, 200, "{whole}");
    assert_eq!(whole["object"], "text_completion");
    let mut streamed = comp.clone();
    streamed["stream"] = json!(true);
    let events = sse(&r.url("/v1/completions"), streamed).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .inspect(|c| assert!(c["usage"].is_null(), "no usage unless asked: {c}"))
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());

    // Token-id prompts give the same answer as the text they encode.
    let (_, toks) = post(
        &r.url("/tokenize"),
        json!({"model": "tiny", "prompt": "abc abc"}),
    )
    .await;
    assert_eq!(toks["count"], toks["tokens"].as_array().unwrap().len());
    let mut by_ids = comp.clone();
    by_ids["prompt"] = toks["tokens"].clone();
    let (_, again) = post(&r.url("/v1/completions"), by_ids).await;
    assert_eq!(again["choices"][0]["text"], whole["choices"][0]["text"]);
    let (_, detok) = post(
        &r.url("/detokenize"),
        json!({"model": "tiny", "tokens": toks["tokens"]}),
    )
    .await;
    assert!(
        detok["prompt"].as_str().unwrap().ends_with("abc abc"),
        "{detok}"
    );

    let m = metrics(&r).await;
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:time_per_output_token_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:request_queue_time_seconds_bucket",
        "llmd_build_info",
    ] {
        assert!(
            m.lines()
                .any(|l| l.starts_with(name) && l.contains("model_name=\"tiny\"")),
            "{name} missing:\n{m}"
        );
    }
    assert_eq!(
        metric(
            &m,
            "vllm:request_success_total",
            "finished_reason=\"length\""
        ),
        5.0
    );
    assert!(metric(&m, "vllm:generation_tokens_total", "") >= 12.0 * 2.0 + 9.0 * 3.0);
    assert!(
        metric(&m, "vllm:prefix_cache_hits_total", "") > 0.0,
        "the repeated prompts hit the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_openai_shaped_and_the_server_keeps_serving() {
    let r = start(model_dir(), |c| c.max_body_bytes = 4096).await;
    let url = r.url("/v1/chat/completions");
    let good =
        json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3});
    let check = |st: u16, v: &Value, want: u16| {
        assert_eq!(st, want, "{v}");
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(
            e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(),
            "{v}"
        );
    };
    let raw = http()
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    check(raw.status().as_u16(), &raw.json().await.unwrap(), 400);
    let (st, v) = post(&url, json!({"messages": "nope"})).await;
    check(st, &v, 400);
    let (st, v) = post(
        &url,
        json!({"model": "other", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    check(st, &v, 404);
    let (st, v) = post(&url, json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1_000_000})).await;
    check(st, &v, 400);
    let (st, v) = post(
        &url,
        json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_p": 0}),
    )
    .await;
    check(st, &v, 400);
    assert_eq!(v["error"]["param"], "top_p");
    let (st, v) = post(
        &url,
        json!({"model": "tiny", "messages": [{"role": "user", "content": "x".repeat(8000)}]}),
    )
    .await;
    check(st, &v, 413);
    let (st, v) = post(
        &r.url("/v1/completions"),
        json!({"model": "tiny", "prompt": [999_999], "max_tokens": 2}),
    )
    .await;
    check(st, &v, 400);
    let (st, v) = post(&url, good.clone()).await;
    assert_eq!(st, 200, "still serving: {v}");

    // A worker that allows no waiting requests turns everything away with Retry-After.
    let busy = start(model_dir(), |c| c.max_waiting = 0).await;
    let res = http()
        .post(busy.url("/v1/chat/completions"))
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let v: Value = res.json().await.unwrap();
    check(503, &v, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenizer_endpoint_lets_a_scheduler_tokenize_and_hash_as_the_worker() {
    let r = start(model_dir(), |_| {}).await;
    let info: Value = http()
        .get(r.url("/v1/llmd/tokenizer"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["model"], "tiny");
    assert_eq!(info["block_size"], 4);
    let tok =
        llmd_tokenizer::Tokenizer::from_json(info["tokenizer_json"].as_str().unwrap()).unwrap();
    let (_, toks) = post(&r.url("/tokenize"), json!({"prompt": "hello world, hello"})).await;
    let ids: Vec<u32> = serde_json::from_value(toks["tokens"].clone()).unwrap();
    assert_eq!(tok.encode("hello world, hello", true).unwrap(), ids);
    let root = llmd_protocol::root_hash(info["hash_seed"].as_str().unwrap(), None);
    assert_eq!(info["hash_root"].as_u64().unwrap(), root);
    assert!(info["fingerprint"].as_str().unwrap().len() > 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_kv_over_tcp_then_decode_equals_one_worker() {
    let dir = model_dir();
    let both = start(dir.clone(), |_| {}).await;
    let prefill = start(dir.clone(), |c| c.role = Role::Prefill).await;
    let decode = start(dir.clone(), |c| c.role = Role::Decode).await;
    let prompt = "one two three four five six seven eight nine ten eleven twelve";
    let body = json!({"model": "tiny", "prompt": prompt, "max_tokens": 10, "temperature": 0, "ignore_eos": true});
    let (_, whole) = post(&both.url("/v1/completions"), body.clone()).await;
    let mut leg1 = body.clone();
    leg1["max_tokens"] = json!(1);
    leg1["kv_transfer_params"] = json!({"do_remote_decode": true});
    let (st, first) = post(&prefill.url("/v1/completions"), leg1).await;
    assert_eq!(st, 200, "{first}");
    let kv = first["kv_transfer_params"].clone();
    assert_eq!(kv["do_remote_prefill"], true, "{first}");
    for k in [
        "remote_engine_id",
        "remote_request_id",
        "remote_host",
        "remote_port",
        "remote_block_ids",
    ] {
        assert!(!kv[k].is_null(), "{k} missing: {kv}");
    }
    let mut leg2 = body.clone();
    leg2["kv_transfer_params"] = kv;
    let (st, second) = post(&decode.url("/v1/completions"), leg2).await;
    assert_eq!(st, 200, "{second}");
    assert_eq!(second["choices"][0]["text"], whole["choices"][0]["text"]);
    let d = metrics(&decode).await;
    assert_eq!(
        metric(&d, "llmd_kv_transfers_total", "received"),
        1.0,
        "{d}"
    );
    assert_eq!(metric(&d, "llmd_kv_recompute_fallbacks_total", ""), 0.0);
    let p = metrics(&prefill).await;
    assert_eq!(metric(&p, "llmd_kv_transfers_total", "sent"), 1.0, "{p}");
    assert_eq!(metric(&p, "llmd_kv_pinned_blocks", ""), 0.0, "{p}");

    // A pull that finds nothing (already pulled) falls back to computing the prompt.
    let (st, third) = post(&decode.url("/v1/completions"), {
        let mut b = body.clone();
        b["kv_transfer_params"] = first["kv_transfer_params"].clone();
        b
    })
    .await;
    assert_eq!(st, 200);
    assert_eq!(third["choices"][0]["text"], whole["choices"][0]["text"]);
    let d = metrics(&decode).await;
    assert_eq!(metric(&d, "llmd_kv_recompute_fallbacks_total", ""), 1.0);
}
