//! The scheduler in-process in front of small fake workers (a vLLM-like server without the
//! tokenizer endpoint, so routing runs on load alone): config reloads swap workers without
//! dropping a stream in flight, a broken file changes nothing, the in-flight limit answers
//! 429 with Retry-After, a worker answering 5xx is retried elsewhere, unknown models get 404.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use llmd_scheduler::{SchedulerConfig, WorkerSpec};
use serde_json::{json, Value};
use warp::Filter;

/// A fake worker: streams `chunks` completion chunks 50 ms apart, or answers whole; when
/// `fail` is set, every completion gets a 500. Counts the completions it was sent.
async fn fake_worker(chunks: usize, fail: bool) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let models = warp::path!("v1" / "models").map(|| {
        warp::reply::json(&json!({"object": "list", "data": [{"id": "m", "object": "model"}]}))
    });
    let health = warp::path!("health").map(warp::reply);
    let metrics = warp::path!("metrics").map(|| "vllm:num_requests_waiting{model_name=\"m\"} 0\n");
    let completions = warp::path!("v1" / "completions")
        .and(warp::post())
        .and(warp::body::json())
        .map(move |body: Value| -> warp::reply::Response {
            h.fetch_add(1, Ordering::Relaxed);
            if fail {
                return warp::reply::with_status(
                    warp::reply::json(&json!({"error": {"message": "boom", "type": "InternalServerError", "code": 500}})),
                    warp::http::StatusCode::INTERNAL_SERVER_ERROR,
                )
                .into_response();
            }
            if body["stream"] == true {
                let events = futures_util::stream::iter(0..=chunks).then(move |i| async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let data = if i == chunks {
                        "[DONE]".to_string()
                    } else {
                        json!({"object": "text_completion", "choices": [{"index": 0, "text": format!("t{i} ")}]}).to_string()
                    };
                    Ok::<_, Infallible>(warp::sse::Event::default().data(data))
                });
                warp::sse::reply(events).into_response()
            } else {
                warp::reply::json(&json!({"object": "text_completion", "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]})).into_response()
            }
        });
    use warp::Reply;
    let routes = models.or(health).or(metrics).or(completions);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    (format!("http://{addr}"), hits)
}

fn spec(url: &str) -> WorkerSpec {
    WorkerSpec {
        url: url.to_string(),
        role: llmd_scheduler::Role::Both,
        model: None,
    }
}

async fn start(cfg: SchedulerConfig) -> String {
    let s = llmd_scheduler::start(cfg, std::future::pending())
        .await
        .unwrap();
    format!("http://{}", s.addr)
}

async fn workers(url: &str) -> Vec<Value> {
    let v: Value = reqwest::get(format!("{url}/v1/llmd/workers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["workers"].as_array().unwrap().clone()
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(interval_ms: u64) -> SchedulerConfig {
    let mut cfg = SchedulerConfig::new("127.0.0.1", 0);
    cfg.pool.interval = Duration::from_millis(interval_ms);
    cfg
}

async fn complete(url: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_workers_without_dropping_a_stream() {
    let (a, _) = fake_worker(10, false).await;
    let (b, b_hits) = fake_worker(10, false).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scheduler.yaml");
    std::fs::write(&file, format!("workers:\n- url: {a}\n")).unwrap();
    let mut cfg = config(100);
    cfg.config_file = Some(file.clone());
    let url = start(cfg).await;
    until("worker a healthy", async || {
        workers(&url).await.iter().any(|w| w["healthy"] == true)
    })
    .await;

    // A stream in flight at A while the file switches to B.
    let r = complete(&url, json!({"model": "m", "prompt": "x", "stream": true})).await;
    assert_eq!(r.status(), 200);
    let route: Value = serde_json::from_str(r.headers()["x-llmd-route"].to_str().unwrap()).unwrap();
    assert_eq!(route["worker"], a.trim_start_matches("http://"));
    let reader = tokio::spawn(async move { r.text().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&file, format!("workers:\n- url: {b}\n  role: decode\n")).unwrap();
    until("reloaded to b", async || {
        let w = workers(&url).await;
        w.len() == 1 && w[0]["url"] == b.as_str() && w[0]["healthy"] == true
    })
    .await;
    let text = reader.await.unwrap();
    assert_eq!(text.matches("data:").count(), 11, "{text}");
    assert!(text.trim_end().ends_with("data:[DONE]"), "{text}");

    // New requests go to B; a broken file changes nothing.
    let r = complete(&url, json!({"model": "m", "prompt": "y"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(b_hits.load(Ordering::Relaxed), 1);
    std::fs::write(&file, "workers: [{url: 12").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = complete(&url, json!({"model": "m", "prompt": "z"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(b_hits.load(Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_limit_answers_429_with_retry_after() {
    let (a, _) = fake_worker(10, false).await;
    let mut cfg = config(100);
    cfg.workers = vec![spec(&a)];
    cfg.max_inflight = 1;
    let url = start(cfg).await;
    until("healthy", async || {
        workers(&url).await.iter().all(|w| w["healthy"] == true)
    })
    .await;
    let first = complete(&url, json!({"model": "m", "prompt": "x", "stream": true})).await;
    assert_eq!(first.status(), 200);
    let second = complete(&url, json!({"model": "m", "prompt": "x"})).await;
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["retry-after"], "1");
    let e: Value = second.json().await.unwrap();
    assert_eq!(e["error"]["code"], 429);
    // Once the stream ends, requests are taken again.
    first.text().await.unwrap();
    let third = complete(&url, json!({"model": "m", "prompt": "x"})).await;
    assert_eq!(third.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_worker_is_retried_on_another_and_bad_requests_never_reach_one() {
    let (bad, bad_hits) = fake_worker(3, true).await;
    let (good, good_hits) = fake_worker(3, false).await;
    let mut cfg = config(100);
    cfg.workers = vec![spec(&bad), spec(&good)];
    cfg.profile = Some("round-robin".into());
    let url = start(cfg).await;
    until("healthy", async || {
        workers(&url).await.iter().all(|w| w["healthy"] == true)
    })
    .await;
    for _ in 0..4 {
        let r = complete(&url, json!({"model": "m", "prompt": "x"})).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(good_hits.load(Ordering::Relaxed), 4);
    assert_eq!(
        bad_hits.load(Ordering::Relaxed),
        2,
        "round-robin tried it every other time"
    );
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("llmd_scheduler_retries_total{leg=\"decode\"} 2"),
        "{metrics}"
    );

    let before = good_hits.load(Ordering::Relaxed) + bad_hits.load(Ordering::Relaxed);
    let r = complete(&url, json!({"model": "nope", "prompt": "x"})).await;
    assert_eq!(r.status(), 404);
    let r = complete(
        &url,
        json!({"model": "m", "prompt": "x", "temperature": -1}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "temperature", "{e}");
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        good_hits.load(Ordering::Relaxed) + bad_hits.load(Ordering::Relaxed),
        before
    );
}
