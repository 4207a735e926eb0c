//! `llmd scheduler` and `llmd up` with real processes on the default model: the official
//! `openai` client through the gateway, the P/D and single paths, greedy equality with one
//! worker, tokenization equal to the worker's, routing by prefix, load and round-robin,
//! a real Prometheus scraping the stack and feeding routing, and the fault cases (a decode
//! worker killed mid-stream, the cache-manager stopped, a prefill worker killed). Runs
//! under `tests/run e2e`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use common::{
    client, drain, enabled, eventually, free_port, id_of, post, spawn_llmd, start_cache_manager,
    start_up, start_worker, terminate, wait_line, wait_ready, Proc, Worker,
};
use serde_json::{json, Value};

/// About 150 tokens: above the P/D threshold, and 9 full blocks of shared prefix.
const SHARED: &str = "You are a careful assistant for a city library. Answer questions about opening hours, borrowing rules, late fees, the catalogue, study rooms, printing, children's events and accessibility, politely and briefly, and never invent a policy. The library opens at nine and closes at six on weekdays, opens at ten and closes at four on Saturdays, and is closed on Sundays and public holidays. Members may borrow up to twelve items at a time for three weeks, renew each item twice unless someone has reserved it, and pay twenty cents a day for each late item, up to five euros an item. Study rooms are booked at the front desk for two hours at most. Printing costs ten cents a page in black and white and fifty cents in colour.";

fn start_scheduler(args: &[&str]) -> (Proc, String) {
    let mut all = vec!["scheduler", "--host", "127.0.0.1", "--port", "0"];
    all.extend_from_slice(args);
    let (child, rx) = spawn_llmd(&all, "scheduler");
    let url = format!("http://{}", wait_line(&rx, "llmd scheduler: http://"));
    drain(rx);
    wait_ready(&url);
    (Proc(child), url)
}

/// POSTs a completion; returns the status, body and route header.
fn complete(url: &str, body: &Value) -> (u16, Value, Value) {
    let r = client()
        .post(format!("{url}/v1/completions"))
        .json(body)
        .send()
        .unwrap();
    let route = r
        .headers()
        .get("x-llmd-route")
        .map(|v| serde_json::from_str(v.to_str().unwrap()).unwrap())
        .unwrap_or(Value::Null);
    let st = r.status().as_u16();
    (st, r.json().unwrap_or(Value::Null), route)
}

fn greedy(prompt: &str, max_tokens: u32) -> Value {
    json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
}

fn text(v: &Value) -> String {
    v["choices"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn up_serves_the_openai_client_with_pd_and_single_paths_equal_to_one_worker() {
    let Some((model, python)) = enabled() else {
        return;
    };
    let mut up = start_up(&model, &[]);
    assert_eq!(up.workers.len(), 2, "one prefill and one decode worker");
    let reference = start_worker(&model, &["--threads", "1"]);
    let name = common::model_name(&reference);

    // The official client through the gateway gets exactly what one worker gives.
    let run = |base: &str| -> Value {
        let out = std::process::Command::new(&python)
            .arg(common::repo_root().join("tests/py/openai_client.py"))
            .args([base, name.as_str()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openai client against {base}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let through = run(&up.url);
    let direct = run(&reference.url);
    assert_eq!(through, direct, "scheduler vs one worker");
    assert_eq!(through["chat_stream"]["text"], through["chat"]["text"]);

    // A long cold prompt takes the P/D path; the same again is cached on the decode
    // worker and runs there alone; a short one never splits. All equal one worker.
    let long = format!("{SHARED} Question: when does the library open on Saturdays?");
    let want = text(&complete(&reference.url, &greedy(&long, 16)).1);
    let (st, v, route) = complete(&up.url, &greedy(&long, 16));
    assert_eq!(st, 200, "{v}");
    assert_eq!(route["path"], "pd", "{route}");
    assert!(route["prefill"].is_string(), "{route}");
    assert_eq!(text(&v), want);
    assert_eq!(
        route["prompt_tokens"], v["usage"]["prompt_tokens"],
        "{route}"
    );
    eventually("decode worker's blocks indexed", || {
        let (_, v, route) = complete(&up.url, &greedy(&long, 16));
        let ok = route["path"] == "single" && text(&v) == want;
        (
            ok && route["cached_blocks"].as_u64().unwrap() > 0,
            route.to_string(),
        )
    });
    let (_, v, route) = complete(&up.url, &greedy("Hi", 8));
    assert_eq!(route["path"], "single", "{route}");
    assert_eq!(
        text(&v),
        text(&complete(&reference.url, &greedy("Hi", 8)).1)
    );

    // The scheduler tokenizes exactly as the worker does.
    for body in [
        json!({"prompt": long}),
        json!({"prompt": "naïve café — 東京 🚀 <|im_start|> tabs\tand\nnewlines"}),
        json!({"prompt": "no specials", "add_special_tokens": false}),
        json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]}),
        json!({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "More"}], "add_generation_prompt": false}),
        json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}, {"type": "text", "text": " joined"}]}]}),
    ] {
        let (a, x) = post(&format!("{}/tokenize", up.url), &body);
        let (b, y) = post(&format!("{}/tokenize", reference.url), &body);
        assert_eq!((a, b), (200, 200), "{x} {y}");
        assert_eq!(x["tokens"], y["tokens"], "{body}");
    }

    // /v1/models is the workers' union; bad input is refused with OpenAI errors.
    let m: Value = client()
        .get(format!("{}/v1/models", up.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(m["data"][0]["id"], name.as_str());
    let (st, e, _) = complete(&up.url, &json!({"model": "nope", "prompt": "x"}));
    assert_eq!((st, e["error"]["code"].as_u64()), (404, Some(404)), "{e}");
    let r = client()
        .post(format!("{}/v1/completions", up.url))
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // Ctrl-C-like stop: everything goes away cleanly.
    assert!(
        terminate(&mut up.proc.0, Duration::from_secs(20)),
        "llmd up exits cleanly"
    );
    for w in up.workers.iter().chain([&up.cache_manager]) {
        assert!(
            client().get(format!("{w}/health")).send().is_err(),
            "{w} still answers after llmd up stopped"
        );
    }
}

/// Sends `n` long requests straight to `worker` in the background, to fill its queue.
fn flood(worker: &str, n: usize) -> Vec<std::thread::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let url = worker.to_string();
            std::thread::spawn(move || {
                let body = json!({"prompt": format!("Count slowly {i}:"), "max_tokens": 96, "temperature": 0, "ignore_eos": true});
                let _ = client().post(format!("{url}/v1/completions")).json(&body).send();
            })
        })
        .collect()
}

fn worker_view(sched: &str, id: &str) -> Value {
    let v: Value = client()
        .get(format!("{sched}/v1/llmd/workers"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn four_workers_prefix_goes_where_it_is_cached_load_spreads_round_robin_cycles() {
    let Some((model, _)) = enabled() else { return };
    let (cm, events) = start_cache_manager(&[]);
    let workers: Vec<Worker> = (0..4)
        .map(|_| {
            start_worker(
                &model,
                &[
                    "--threads",
                    "1",
                    "--max-num-seqs",
                    "1",
                    "--kv-events-endpoint",
                    &events,
                ],
            )
        })
        .collect();
    let flags: Vec<String> = workers
        .iter()
        .map(|w| format!("--worker={}", w.url))
        .collect();
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend([
        "--cache-manager",
        cm.url.as_str(),
        "--metrics-interval",
        "0.2",
    ]);
    let (_sched, url) = start_scheduler(&args);
    let mut rr_args: Vec<&str> = flags.iter().map(String::as_str).collect();
    rr_args.extend(["--profile", "round-robin"]);
    let (_rr, rr_url) = start_scheduler(&rr_args);

    // Round-robin: every worker in turn, the same order each round.
    let picks: Vec<String> = (0..8)
        .map(|i| {
            let (st, v, route) = complete(&rr_url, &greedy(&format!("Word {i}"), 1));
            assert_eq!(st, 200, "{v}");
            route["worker"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(picks[..4], picks[4..], "{picks:?}");
    let mut distinct = picks[..4].to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{picks:?}");

    // Precise prefix: prompts sharing a long prefix follow the worker holding it.
    let (st, v, first) = complete(&url, &greedy(&format!("{SHARED} Question 0?"), 2));
    assert_eq!(st, 200, "{v}");
    let holder = first["worker"].as_str().unwrap().to_string();
    let (_, toks) = post(
        &format!("{}/tokenize", workers[0].url),
        &json!({"prompt": SHARED}),
    );
    let ids: Vec<u32> = serde_json::from_value(toks["tokens"].clone()).unwrap();
    eventually("holder indexed", || {
        let (_, v) = post(
            &format!("{}/v1/score", cm.url),
            &json!({"model": first["model"], "token_ids": ids}),
        );
        let ok = v["workers"]
            .as_array()
            .is_some_and(|a| a.iter().any(|w| w["worker"] == holder.as_str()));
        (ok, v.to_string())
    });
    for i in 1..6 {
        let (st, _, route) = complete(&url, &greedy(&format!("{SHARED} Question {i}?"), 2));
        assert_eq!(st, 200);
        assert_eq!(route["worker"], holder.as_str(), "{route}");
        assert!(route["cached_blocks"].as_u64().unwrap() >= 8, "{route}");
        assert!(
            route["scores"][&holder]["precise-prefix-cache-scorer"]
                .as_f64()
                .unwrap()
                > 0.8,
            "{route}"
        );
    }

    // Load: one worker's queue grows; cold prompts go elsewhere.
    let busy = workers
        .iter()
        .map(|w| id_of(&w.url))
        .find(|id| *id != holder)
        .unwrap();
    let busy_url = format!("http://{busy}");
    let flooders = flood(&busy_url, 6);
    eventually("queue seen", || {
        let v = worker_view(&url, &busy);
        (v["waiting"].as_f64().unwrap_or(0.0) >= 2.0, v.to_string())
    });
    for i in 0..6 {
        let (st, _, route) = complete(&url, &greedy(&format!("Cold prompt number {i}"), 1));
        assert_eq!(st, 200);
        assert_ne!(route["worker"], busy.as_str(), "{route}");
    }
    for f in flooders {
        f.join().unwrap();
    }
}

#[test]
fn prometheus_scrapes_the_stack_and_the_scheduler_routes_on_its_numbers() {
    let Some((model, _)) = enabled() else { return };
    let prometheus = which("prometheus").expect(
        "Debian's prometheus is needed (tests/run installs it: apt-get install prometheus)",
    );
    let up = start_up(
        &model,
        &[
            "--prefill",
            "0",
            "--decode",
            "2",
            "--threads",
            "1",
            "--worker-args",
            "--max-num-seqs 1",
        ],
    );
    let targets: Vec<String> = [&up.url, &up.cache_manager]
        .into_iter()
        .chain(&up.workers)
        .map(|u| id_of(u))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n- job_name: llmd\n  static_configs:\n  - targets: {}\n",
            serde_json::to_string(&targets).unwrap()
        ),
    )
    .unwrap();
    let port = free_port();
    let prom = Proc(
        std::process::Command::new(prometheus)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom_url = format!("http://127.0.0.1:{port}");
    let (st, _, _) = complete(&up.url, &greedy("Hello", 4));
    assert_eq!(st, 200);

    // Each component's metrics are in Prometheus, labelled by instance.
    let query = |q: &str| -> Vec<(String, f64)> {
        let v: Value = client()
            .get(format!("{prom_url}/api/v1/query"))
            .query(&[("query", q)])
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null);
        v["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s["metric"]["instance"].as_str().unwrap_or("").to_string(),
                            s["value"][1]
                                .as_str()
                                .unwrap_or("nan")
                                .parse()
                                .unwrap_or(f64::NAN),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    for (q, who) in [
        ("llmd_scheduler_requests_total", vec![id_of(&up.url)]),
        ("llmd_cache_manager_workers", vec![id_of(&up.cache_manager)]),
        (
            "vllm:num_requests_waiting",
            up.workers.iter().map(|w| id_of(w)).collect(),
        ),
        (
            "vllm:kv_cache_usage_perc",
            up.workers.iter().map(|w| id_of(w)).collect(),
        ),
    ] {
        eventually(q, || {
            let got = query(q);
            let ok = who.iter().all(|i| got.iter().any(|(inst, _)| inst == i));
            (ok, format!("{got:?}"))
        });
    }

    // A second scheduler reads load from Prometheus instead of scraping: with one worker's
    // queue full, both schedulers see it and send new work to the other.
    let flags: Vec<String> = up
        .workers
        .iter()
        .map(|w| format!("--worker=decode={w}"))
        .collect();
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let source = format!("prometheus={prom_url}");
    args.extend([
        "--metrics-source",
        source.as_str(),
        "--metrics-interval",
        "0.5",
    ]);
    let (_p, purl) = start_scheduler(&args);
    let busy = id_of(&up.workers[0]);
    let idle = id_of(&up.workers[1]);
    let flooders = flood(&up.workers[0], 6);
    for sched in [&up.url, &purl] {
        eventually("queue seen", || {
            let v = worker_view(sched, &busy);
            (v["waiting"].as_f64().unwrap_or(0.0) >= 2.0, v.to_string())
        });
    }
    for sched in [&up.url, &purl] {
        for i in 0..3 {
            let (st, _, route) = complete(sched, &greedy(&format!("Cold {i}"), 1));
            assert_eq!(st, 200);
            assert_eq!(route["worker"], idle.as_str(), "{route}");
        }
    }
    for f in flooders {
        f.join().unwrap();
    }
    drop(prom);
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|p| p.is_file())
    })
}

/// Reads SSE data lines from a streamed response on a thread; `None` marks the end.
fn sse_lines(r: reqwest::blocking::Response) -> mpsc::Receiver<Option<String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            match line {
                Ok(l) => {
                    if let Some(d) = l.strip_prefix("data:") {
                        let _ = tx.send(Some(d.trim().to_string()));
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    rx
}

#[test]
fn faults_end_cleanly_and_the_next_requests_succeed() {
    let Some((model, _)) = enabled() else { return };
    let (mut cm, events) = start_cache_manager(&[]);
    let ev = ["--threads", "1", "--kv-events-endpoint", events.as_str()];
    let mut prefill = start_worker(&model, &[&ev[..], &["--role", "prefill"]].concat());
    let mut decodes: Vec<Worker> = (0..2)
        .map(|_| start_worker(&model, &[&ev[..], &["--role", "decode"]].concat()))
        .collect();
    let flags = [
        format!("--worker=prefill={}", prefill.url),
        format!("--worker=decode={}", decodes[0].url),
        format!("--worker=decode={}", decodes[1].url),
    ];
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    // Slow health checks, so that the failures below are met by requests first.
    args.extend([
        "--cache-manager",
        cm.url.as_str(),
        "--metrics-interval",
        "60",
    ]);
    let (_sched, url) = start_scheduler(&args);
    let metric = |name: &str| common::sum_metric(&common::metrics_text(&url), name);

    // A decode worker killed mid-stream: an error event, [DONE], the stream ends.
    let body = json!({"prompt": "Tell me a long story.", "max_tokens": 400, "temperature": 0, "ignore_eos": true, "stream": true});
    let r = client()
        .post(format!("{url}/v1/completions"))
        .json(&body)
        .send()
        .unwrap();
    let route: Value = serde_json::from_str(r.headers()["x-llmd-route"].to_str().unwrap()).unwrap();
    let victim = route["worker"].as_str().unwrap().to_string();
    let rx = sse_lines(r);
    for _ in 0..3 {
        let d = rx.recv_timeout(Duration::from_secs(60)).unwrap().unwrap();
        assert!(d.contains("\"text\""), "{d}");
    }
    let vi = decodes
        .iter()
        .position(|w| id_of(&w.url) == victim)
        .unwrap();
    let mut dead = decodes.remove(vi);
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let mut tail = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(d)) => tail.push(d),
            Ok(None) => break,
            Err(_) => panic!("the client hangs after the worker died: {tail:?}"),
        }
    }
    assert_eq!(tail.last().map(String::as_str), Some("[DONE]"), "{tail:?}");
    let err: Value = serde_json::from_str(&tail[tail.len() - 2]).unwrap();
    assert!(err["error"]["message"].as_str().is_some(), "{tail:?}");
    // The next requests succeed: the dead worker is retried away from, then left out.
    for i in 0..4 {
        let (st, v, route) = complete(&url, &greedy(&format!("Short {i}"), 2));
        assert_eq!(st, 200, "{v} {route}");
        assert_ne!(route["worker"], victim.as_str(), "{route}");
    }

    // Cache-manager stopped: routing on load alone, counted; requests still succeed.
    assert!(terminate(&mut cm.proc.child, Duration::from_secs(10)));
    let after = "After the index went away, the scheduler still had to route this prompt, which is long enough to fill two blocks of sixteen tokens each.";
    let (st, v, route) = complete(&url, &greedy(after, 2));
    assert_eq!(st, 200, "{v}");
    assert_eq!(route["cache_manager"], "unavailable", "{route}");
    assert!(metric("llmd_scheduler_cache_manager_errors_total") >= 1.0);

    // Prefill worker killed: the request goes whole to decode, with the right tokens.
    let survivor = &decodes[0];
    let long = format!("{SHARED} Question: can I print in colour?");
    prefill.child.kill().unwrap();
    prefill.child.wait().unwrap();
    let (st, v, route) = complete(&url, &greedy(&long, 12));
    assert_eq!(st, 200, "{v}");
    assert_eq!(route["path"], "pd-fallback", "{route}");
    assert!(metric("llmd_scheduler_fallbacks_total") >= 1.0);
    let want = text(&complete(&survivor.url, &greedy(&long, 12)).1);
    assert_eq!(text(&v), want);
}

/// One trace per request across the scheduler and both workers: the scheduler's request
/// span joins the client's `traceparent`; its `route`, `prefill_leg` and `decode_leg` spans
/// are children; each worker's request span is a child of the leg that called it, and the
/// decode worker's KV pull is under its request. Spans go to a real OTLP receiver and are
/// flushed at SIGTERM.
#[test]
fn one_trace_spans_the_scheduler_and_both_workers() {
    let Some((model, python)) = enabled() else {
        return;
    };
    let rx = common::otlp_receiver(&python);
    let otlp = format!("http://127.0.0.1:{}", rx.port);
    let (cm, events) = start_cache_manager(&[]);
    let common_args = [
        "--threads",
        "1",
        "--kv-events-endpoint",
        events.as_str(),
        "--otlp-traces-endpoint",
        otlp.as_str(),
    ];
    let mut prefill = start_worker(&model, &[&common_args[..], &["--role", "prefill"]].concat());
    let mut decode = start_worker(&model, &[&common_args[..], &["--role", "decode"]].concat());
    let flags = [
        format!("--worker=prefill={}", prefill.url),
        format!("--worker=decode={}", decode.url),
    ];
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend([
        "--cache-manager",
        cm.url.as_str(),
        "--otlp-traces-endpoint",
        otlp.as_str(),
    ]);
    let (mut sched, url) = start_scheduler(&args);

    const TRACE: &str = "6e0c63257de34c92bf9efcd03927272e";
    const CALLER: &str = "a3ce929d0e0e4736";
    const STREAM_TRACE: &str = "1f2e3d4c5b6a79880123456789abcdef";
    let long = format!("{SHARED} Question: may I renew a reserved book?");
    let r = client()
        .post(format!("{url}/v1/completions"))
        .header("traceparent", format!("00-{TRACE}-{CALLER}-01"))
        .json(&greedy(&long, 4))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let route: Value = serde_json::from_str(r.headers()["x-llmd-route"].to_str().unwrap()).unwrap();
    assert_eq!(route["path"], "pd", "{route}");
    let mut body = greedy("Stream me", 6);
    body["stream"] = json!(true);
    let text = client()
        .post(format!("{url}/v1/completions"))
        .header("traceparent", format!("00-{STREAM_TRACE}-{CALLER}-01"))
        .json(&body)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(text.contains("[DONE]"));

    for child in [&mut sched.0, &mut prefill.child, &mut decode.child] {
        assert!(terminate(child, Duration::from_secs(15)), "clean stop");
    }
    let mut all = Vec::new();
    eventually("spans exported", || {
        all = common::spans(&rx.file);
        let n = all.iter().filter(|s| s["trace_id"] == TRACE).count();
        (n >= 7, format!("{n} spans in the trace"))
    });
    let trace: Vec<&Value> = all.iter().filter(|s| s["trace_id"] == TRACE).collect();
    let one = |pred: &dyn Fn(&Value) -> bool, what: &str| -> Value {
        let found: Vec<&&Value> = trace.iter().filter(|s| pred(s)).collect();
        assert_eq!(found.len(), 1, "one {what}: {trace:#?}");
        (*found[0]).clone()
    };
    let req = one(
        &|s| s["name"] == "llmd.scheduler.request",
        "scheduler request span",
    );
    assert_eq!(req["parent_span_id"], CALLER);
    assert_eq!(req["service"], "llmd-scheduler");
    assert_eq!(req["attributes"]["llmd.path"], "pd", "{req}");
    let under = |parent: &Value, name: &str| -> Value {
        one(
            &|s| s["name"] == name && s["parent_span_id"] == parent["span_id"],
            name,
        )
    };
    under(&req, "route");
    let pre_leg = under(&req, "prefill_leg");
    let dec_leg = under(&req, "decode_leg");
    let pre_req = under(&pre_leg, "llmd.worker.request");
    assert_eq!(pre_req["attributes"]["llmd.leg"], "prefill", "{pre_req}");
    assert_eq!(pre_req["service"], "llmd-worker");
    let dec_req = under(&dec_leg, "llmd.worker.request");
    assert_eq!(dec_req["attributes"]["llmd.leg"], "decode", "{dec_req}");
    under(&dec_req, "kv_pull");

    // The streamed request's span lasts as long as its stream.
    let s_req = all
        .iter()
        .find(|s| s["trace_id"] == STREAM_TRACE && s["name"] == "llmd.scheduler.request")
        .expect("streamed request span");
    let s_leg = all
        .iter()
        .find(|s| s["trace_id"] == STREAM_TRACE && s["name"] == "decode_leg")
        .expect("streamed decode leg span");
    let s_worker = all
        .iter()
        .find(|s| s["trace_id"] == STREAM_TRACE && s["name"] == "llmd.worker.request")
        .expect("worker span of the stream");
    assert_eq!(s_worker["parent_span_id"], s_leg["span_id"]);
    let end = |s: &Value| s["end_ns"].as_u64().unwrap();
    assert!(
        end(s_req) + 1_000_000 >= end(s_worker),
        "{s_req}\n{s_worker}"
    );
    drop(cm);
}
