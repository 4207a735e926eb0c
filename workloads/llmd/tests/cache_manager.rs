//! `llmd cache-manager` with real `llmd worker` processes publishing KV events to it: scores
//! follow what each worker caches, evictions included; a missed batch is recovered through
//! the worker's replay socket. Runs under `tests/run e2e` (see `worker.rs`).
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    client, enabled, eventually, metric, model_name, post, start_cache_manager, start_worker,
    CacheManager, Worker,
};
use serde_json::{json, Value};

fn tokens(w: &Worker, model: &str, prompt: &str) -> Vec<u32> {
    let (_, v) = post(
        &format!("{}/tokenize", w.url),
        &json!({"model": model, "prompt": prompt}),
    );
    serde_json::from_value(v["tokens"].clone()).unwrap()
}

fn score(cm: &CacheManager, model: &str, ids: &[u32]) -> Value {
    let (st, v) = post(
        &format!("{}/v1/score", cm.url),
        &json!({"model": model, "token_ids": ids}),
    );
    assert_eq!(st, 200, "{v}");
    v
}

fn blocks_of(v: &Value, worker: &Worker) -> u64 {
    let id = worker.url.trim_start_matches("http://");
    v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker"] == id)
        .map_or(0, |w| w["blocks"].as_u64().unwrap())
}

const SHARED: &str = "You are a careful assistant for a library. Answer questions about opening hours, borrowing rules, late fees and the catalogue, politely and briefly, and never invent a policy. The library opens at nine and closes at six on weekdays.";

#[test]
fn scores_follow_what_each_worker_caches() {
    let Some((model, _)) = enabled() else { return };
    let (cm, events) = start_cache_manager(&[]);
    let a = start_worker(
        &model,
        &["--kv-events-endpoint", &events, "--kv-cache-memory", "48"],
    );
    let b = start_worker(&model, &["--kv-events-endpoint", &events]);
    let name = model_name(&a);
    // A prompt to A; another sharing its prefix is then scored.
    let p1 = format!("{SHARED} Question: when do you open on Monday?");
    let (st, _) = post(
        &format!("{}/v1/completions", a.url),
        &json!({"model": name, "prompt": p1, "max_tokens": 4}),
    );
    assert_eq!(st, 200);
    let p2 = tokens(
        &a,
        &name,
        &format!("{SHARED} Question: what is the fine for a late book?"),
    );
    let shared_blocks = {
        let t1 = tokens(&a, &name, &p1);
        (t1.iter().zip(&p2).take_while(|(x, y)| x == y).count() / 16) as u64
    };
    assert!(shared_blocks >= 3);
    eventually("A holds the shared prefix, B nothing", || {
        let v = score(&cm, &name, &p2);
        (
            blocks_of(&v, &a) == shared_blocks && blocks_of(&v, &b) == 0,
            v.to_string(),
        )
    });
    let v = score(&cm, &name, &p2);
    assert_eq!(v["block_size"], 16);
    assert_eq!(v["total_blocks"].as_u64().unwrap(), p2.len() as u64 / 16);
    assert_eq!(
        v["workers"][0]["worker"],
        a.url.trim_start_matches("http://")
    );
    // The index agrees with what A reports it caches.
    eventually("index size matches A's cache", || {
        let w: Value = client()
            .get(format!("{}/v1/workers", cm.url))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let listed = w["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["worker"] == a.url.trim_start_matches("http://"))
            .map(|x| x["blocks"].as_f64().unwrap());
        let cached = metric(&a, "llmd_kv_blocks", "state=\"cached\"");
        (listed == Some(cached), format!("{w} vs {cached}"))
    });
    // Fill A's 48-block pool with other prompts: the shared blocks are evicted, and the
    // scores say so.
    for i in 0..10 {
        let p = format!(
            "Unrelated text number {i}: {} {i}",
            "lorem ipsum dolor sit amet ".repeat(8)
        );
        let (st, _) = post(
            &format!("{}/v1/completions", a.url),
            &json!({"model": name, "prompt": p, "max_tokens": 2}),
        );
        assert_eq!(st, 200);
    }
    eventually("A's evictions show up", || {
        let v = score(&cm, &name, &p2);
        (blocks_of(&v, &a) < shared_blocks, v.to_string())
    });
    // B now caches the prompt; it leads.
    let (st, _) = post(
        &format!("{}/v1/completions", b.url),
        &json!({"model": name, "prompt": p2, "max_tokens": 2}),
    );
    assert_eq!(st, 200);
    eventually("B leads", || {
        let v = score(&cm, &name, &p2);
        (
            v["workers"][0]["worker"] == b.url.trim_start_matches("http://")
                && blocks_of(&v, &b) == p2.len() as u64 / 16,
            v.to_string(),
        )
    });
    let m = client()
        .get(format!("{}/metrics", cm.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        m.contains("llmd_cache_manager_events_total{type=\"BlockStored\"}"),
        "{m}"
    );
    assert!(
        m.contains("llmd_cache_manager_events_total{type=\"BlockRemoved\"}"),
        "{m}"
    );
    assert!(m.contains("llmd_cache_manager_score_seconds_count"), "{m}");
    // Bad requests are 400s with a JSON error; the service keeps answering.
    let (st, v) = post(&format!("{}/v1/score", cm.url), &json!({"model": name}));
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"].is_string());
    let (st, _) = post(
        &format!("{}/v1/score", cm.url),
        &json!({"model": name, "token_ids": [1, 2], "block_hashes": [3]}),
    );
    assert_eq!(st, 400);
    let r = client()
        .post(format!("{}/v1/score", cm.url))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    score(&cm, &name, &p2);
}

/// A worker listening on every interface (as the charms run it) names itself in its KV
/// events by `--kv-host`, the address schedulers reach it at, not by 127.0.0.1.
#[test]
fn a_wildcard_worker_is_indexed_under_its_kv_host() {
    let Some((model, _)) = enabled() else { return };
    let (cm, events) = start_cache_manager(&[]);
    let (child, rx) = common::spawn_llmd(
        &[
            "worker",
            "--model",
            &model,
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--kv-host",
            "localhost",
            "--threads",
            "1",
            "--kv-events-endpoint",
            &events,
        ],
        "worker",
    );
    let addr = common::wait_line(&rx, "llmd worker: http://");
    common::drain(rx);
    let port = addr.rsplit(':').next().unwrap().to_string();
    let w = Worker {
        child,
        url: format!("http://127.0.0.1:{port}"),
        kv_port: None,
    };
    let name = model_name(&w);
    let (st, v) = post(
        &format!("http://127.0.0.1:{port}/v1/completions"),
        &json!({"model": name, "prompt": SHARED, "max_tokens": 1}),
    );
    assert_eq!(st, 200, "{v}");
    eventually("indexed as localhost", || {
        let v: Value = client()
            .get(format!("{}/v1/workers", cm.url))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let ok = v["workers"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["worker"] == format!("localhost:{port}")));
        (ok, v.to_string())
    });
}
