//! `llmd worker` end to end, on the real default model with real processes: the official
//! `openai` Python client, prefill → KV over TCP → decode equal to one worker, the P/D fault
//! paths, KV events read by a plain ZMQ SUB socket (pyzmq, i.e. libzmq), and bad input.
//! `tests/run e2e` sets LLMD_E2E=1, LLMD_TEST_MODEL and LLMD_TEST_PYTHON (a venv with
//! `openai`, `pyzmq` and `msgspec`); elsewhere these tests print why they did not run.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{client, enabled, metric, model_name, post, repo_root, start_worker, Worker};
use serde_json::{json, Value};

const PROMPT: &str = "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined movable metal type, oil-based inks and a wooden press adapted from those used for wine. Within fifty years printing had spread across Europe, and";

fn completion(prompt: &str, model: &str, kv: Option<Value>) -> Value {
    let mut b = json!({"model": model, "prompt": prompt, "max_tokens": 24, "temperature": 0});
    if let Some(kv) = kv {
        b["kv_transfer_params"] = kv;
    }
    b
}

/// Runs the two legs as llm-d's scheduler does; returns the decode answer.
fn disaggregated(prefill: &Worker, decode: &Worker, model: &str) -> (Value, Value) {
    let mut leg1 = completion(
        PROMPT,
        model,
        Some(
            json!({"do_remote_decode": true, "do_remote_prefill": false, "remote_engine_id": null, "remote_block_ids": null, "remote_host": null, "remote_port": null}),
        ),
    );
    leg1["max_tokens"] = json!(1);
    let (st, first) = post(&format!("{}/v1/completions", prefill.url), &leg1);
    assert_eq!(st, 200, "{first}");
    let kv = first["kv_transfer_params"].clone();
    assert_eq!(kv["do_remote_prefill"], json!(true), "{first}");
    let (st, second) = post(
        &format!("{}/v1/completions", decode.url),
        &completion(PROMPT, model, Some(kv.clone())),
    );
    assert_eq!(st, 200, "{second}");
    (kv, second)
}

fn text(v: &Value) -> String {
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

#[test]
fn openai_client_chat_and_completions() {
    let Some((model, py)) = enabled() else { return };
    let w = start_worker(&model, &[]);
    let name = model_name(&w);
    let out = Command::new(&py)
        .arg(repo_root().join("tests/py/openai_client.py"))
        .args([&w.url, &name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Greedy: streamed and whole answers are the same text.
    assert_eq!(got["chat"]["text"], got["chat_stream"]["text"], "{got}");
    assert_eq!(got["chat"]["usage"], got["chat_stream"]["usage"], "{got}");
    assert_eq!(
        got["completion"]["text"], got["completion_stream"]["text"],
        "{got}"
    );
    assert!(
        got["completion"]["text"]
            .as_str()
            .unwrap()
            .contains("Paris"),
        "{got}"
    );
    // The requests were counted under vLLM's names.
    assert!(metric(&w, "vllm:request_success_total", "") >= 8.0);
    assert!(metric(&w, "vllm:time_to_first_token_seconds_count", "") >= 8.0);
    assert!(metric(&w, "vllm:generation_tokens_total", "") > 0.0);
}

#[test]
fn prefill_to_decode_over_tcp_equals_one_worker() {
    let Some((model, _)) = enabled() else { return };
    let both = start_worker(&model, &[]);
    let prefill = start_worker(&model, &["--role", "prefill"]);
    let decode = start_worker(&model, &["--role", "decode"]);
    let name = model_name(&both);
    let (st, whole) = post(
        &format!("{}/v1/completions", both.url),
        &completion(PROMPT, &name, None),
    );
    assert_eq!(st, 200);
    let (kv, split) = disaggregated(&prefill, &decode, &name);
    assert_eq!(
        text(&split),
        text(&whole),
        "P/D must give the same greedy tokens"
    );
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(split["usage"][k], whole["usage"][k]);
    }
    let blocks = kv["remote_block_ids"].as_array().unwrap().len();
    assert!(blocks >= 2, "{kv}");
    // The decode worker pulled, did not recompute; the prefill side let go of its blocks.
    assert_eq!(metric(&decode, "llmd_kv_transfers_total", "received"), 1.0);
    assert_eq!(
        metric(&decode, "llmd_kv_recompute_fallbacks_total", ""),
        0.0
    );
    assert!(metric(&decode, "llmd_kv_transfer_bytes_total", "received") > 0.0);
    assert_eq!(metric(&prefill, "llmd_kv_transfers_total", "sent"), 1.0);
    assert_eq!(metric(&prefill, "llmd_kv_pinned_blocks", ""), 0.0);
    // The decode worker computed only what the prefill did not hand over: the imported
    // tokens are reported as cached, as vLLM reports tokens its KV connector loaded.
    let cached = split["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(cached, blocks as u64 * 16, "{split}");
}

/// A TCP proxy to `target` that passes the client's bytes through and the server's first
/// `limit` bytes back, each after `delay`, then closes: a KV stream cut short or too slow.
fn proxy(target: u16, limit: usize, delay: Duration) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut client) = conn else { continue };
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            let mut c2 = client.try_clone().unwrap();
            let mut s2 = server.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut s2);
            });
            std::thread::spawn(move || {
                let mut sent = 0;
                let mut buf = vec![0u8; 4096];
                while sent < limit {
                    let Ok(n) = server.read(&mut buf) else { break };
                    if n == 0 {
                        break;
                    }
                    std::thread::sleep(delay);
                    let n = n.min(limit - sent);
                    if client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n;
                }
                let _ = client.shutdown(std::net::Shutdown::Both);
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    port
}

#[test]
fn kv_pull_failures_fall_back_to_correct_tokens() {
    let Some((model, _)) = enabled() else { return };
    let both = start_worker(&model, &[]);
    let prefill = start_worker(&model, &["--role", "prefill", "--kv-transfer-timeout", "3"]);
    let decode = start_worker(&model, &["--role", "decode", "--kv-transfer-timeout", "2"]);
    let name = model_name(&both);
    let (_, whole) = post(
        &format!("{}/v1/completions", both.url),
        &completion(PROMPT, &name, None),
    );
    let want = text(&whole);
    let kv_port = prefill.kv_port.unwrap();
    let mut fallbacks = 0.0;
    let run_leg1 = || {
        let mut leg1 = completion(PROMPT, &name, Some(json!({"do_remote_decode": true})));
        leg1["max_tokens"] = json!(1);
        let (st, first) = post(&format!("{}/v1/completions", prefill.url), &leg1);
        assert_eq!(st, 200, "{first}");
        first["kv_transfer_params"].clone()
    };
    let decode_with = |kv: &Value| {
        let (st, v) = post(
            &format!("{}/v1/completions", decode.url),
            &completion(PROMPT, &name, Some(kv.clone())),
        );
        assert_eq!(st, 200, "{v}");
        text(&v)
    };
    // 1. A truncated KV stream (the connection cut after 2 KB).
    let mut kv = run_leg1();
    kv["remote_port"] = json!(proxy(kv_port, 2048, Duration::ZERO));
    assert_eq!(decode_with(&kv), want, "truncated stream");
    fallbacks += 1.0;
    assert_eq!(
        metric(&decode, "llmd_kv_recompute_fallbacks_total", ""),
        fallbacks
    );
    // 2. A pull slower than the decode side's timeout.
    let mut kv = run_leg1();
    kv["remote_port"] = json!(proxy(kv_port, usize::MAX, Duration::from_millis(700)));
    assert_eq!(decode_with(&kv), want, "slow pull");
    fallbacks += 1.0;
    assert_eq!(
        metric(&decode, "llmd_kv_recompute_fallbacks_total", ""),
        fallbacks
    );
    // 3. A prefill worker of another model: the header's fingerprint does not match.
    let mut kv = run_leg1();
    kv["remote_port"] = json!(fake_kv_server("other-model-fingerprint"));
    assert_eq!(decode_with(&kv), want, "wrong fingerprint");
    fallbacks += 1.0;
    assert_eq!(
        metric(&decode, "llmd_kv_recompute_fallbacks_total", ""),
        fallbacks
    );
    // The prefill worker released every pinned block: aborted transfers at once, the
    // never-pulled export of case 3 after its timeout.
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&prefill, "llmd_kv_pinned_blocks", "") > 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(metric(&prefill, "llmd_kv_pinned_blocks", ""), 0.0);
    // 4. The prefill worker killed between the legs.
    let kv = run_leg1();
    drop(prefill);
    assert_eq!(decode_with(&kv), want, "prefill worker gone");
    fallbacks += 1.0;
    assert_eq!(
        metric(&decode, "llmd_kv_recompute_fallbacks_total", ""),
        fallbacks
    );
    assert!(metric(&decode, "llmd_kv_transfer_failures_total", "received") >= 4.0);
}

/// A KV server for another model: answers every pull with a header whose fingerprint is
/// `fingerprint` (the decode side must reject it before reading the payload).
fn fake_kv_server(fingerprint: &str) -> u16 {
    let (tx, rx) = mpsc::channel();
    let fp = fingerprint.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (addr, server) = llmd_kvx::KvServer::bind("127.0.0.1:0").await.unwrap();
            tx.send(addr.port()).unwrap();
            server
                .serve(std::sync::Arc::new(FakeSource(fp)), std::future::pending())
                .await;
        });
    });
    rx.recv().unwrap()
}

struct FakeSource(String);

impl llmd_kvx::KvSource for FakeSource {
    fn fetch(
        &self,
        _request_id: &str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<llmd_kvx::KvBlob, String>> + Send + '_>,
    > {
        let fp = self.0.clone();
        Box::pin(async move {
            let data = vec![0u8; 1 << 20];
            Ok(llmd_kvx::KvBlob {
                header: llmd_kvx::KvLayoutHeader {
                    fingerprint: fp,
                    num_layers: 30,
                    num_kv_heads: 3,
                    head_dim: 64,
                    dtype: "f32".into(),
                    block_size: 16,
                    num_blocks: 1,
                    num_tokens: 16,
                    payload_len: data.len() as u64,
                },
                data: data.into(),
            })
        })
    }

    fn finished(&self, _request_id: &str, _outcome: llmd_kvx::Outcome) {}
}

#[test]
fn kv_events_reach_a_plain_zmq_subscriber_and_replay_recovers_a_gap() {
    let Some((model, py)) = enabled() else { return };
    let port = |l: TcpListener| l.local_addr().unwrap().port();
    let (ev, rp) = (
        port(TcpListener::bind("127.0.0.1:0").unwrap()),
        port(TcpListener::bind("127.0.0.1:0").unwrap()),
    );
    let w = start_worker(
        &model,
        &[
            "--kv-events-endpoint",
            &format!("tcp://127.0.0.1:{ev}"),
            "--kv-events-mode",
            "bind",
            "--kv-events-replay-endpoint",
            &format!("tcp://127.0.0.1:{rp}"),
            "--kv-cache-memory",
            "32",
        ],
    );
    let name = model_name(&w);
    // The subscriber drops one batch on purpose and recovers it through the replay socket.
    let mut sub = Command::new(&py)
        .arg(repo_root().join("tests/py/kv_events_sub.py"))
        .args([
            format!("tcp://127.0.0.1:{ev}"),
            format!("tcp://127.0.0.1:{rp}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut sub_out = BufReader::new(sub.stdout.take().unwrap());
    let mut ready = String::new();
    sub_out.read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    std::thread::sleep(Duration::from_millis(500)); // SUB joins are asynchronous in ZMQ
                                                    // Enough distinct prompts to fill the 64-block pool and force evictions.
    for i in 0..12 {
        let p = format!("{i} {PROMPT} {i}");
        let (st, v) = post(
            &format!("{}/v1/completions", w.url),
            &completion(&p, &name, None),
        );
        assert_eq!(st, 200, "{v}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let cached = metric(&w, "llmd_kv_blocks", "state=\"cached\"");
    sub.stdin.take().unwrap().write_all(b"done\n").unwrap();
    let mut result = String::new();
    sub_out.read_to_string(&mut result).unwrap();
    assert!(sub.wait().unwrap().success(), "{result}");
    let r: Value = serde_json::from_str(result.trim()).unwrap();
    assert!(r["batches"].as_u64().unwrap() > 10, "{r}");
    assert!(
        r["removed"].as_u64().unwrap() > 0,
        "the pool must have evicted: {r}"
    );
    assert_eq!(r["recovered_gap"], json!(true), "{r}");
    assert_eq!(
        r["topic"].as_str().unwrap(),
        format!("kv@{}@{name}", w.url.trim_start_matches("http://"))
    );
    // Replaying every event gives exactly the worker's cached block set.
    assert_eq!(r["live_blocks"].as_f64().unwrap(), cached, "{r}");
    // And the hashes are ours: the first block of a prompt is keyed as llmd-protocol says.
    let toks: Value = client()
        .post(format!("{}/tokenize", w.url))
        .json(&json!({"model": name, "prompt": format!("11 {PROMPT} 11")}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let ids: Vec<u32> = serde_json::from_value(toks["tokens"].clone()).unwrap();
    let root = llmd_protocol::root_hash(&name, None);
    let want = llmd_protocol::block_hashes(root, &ids, 16);
    let seen: Vec<u64> = serde_json::from_value(r["live"].clone()).unwrap();
    assert!(
        want.iter().all(|h| seen.contains(h)),
        "the last prompt's blocks are cached and announced"
    );
}

#[test]
fn bad_input_gets_openai_errors_and_the_server_keeps_serving() {
    let Some((model, _)) = enabled() else { return };
    let w = start_worker(&model, &["--max-waiting", "1", "--max-num-seqs", "1"]);
    let name = model_name(&w);
    let chat = format!("{}/v1/chat/completions", w.url);
    let good =
        json!({"model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
    let check_good = || {
        let (st, v) = post(&chat, &good);
        assert_eq!(st, 200, "after a bad request: {v}");
    };
    let expect = |st: u16, v: &Value, want: u16, param: Option<&str>| {
        assert_eq!(st, want, "{v}");
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
        if let Some(p) = param {
            assert_eq!(e["param"], json!(p), "{v}");
        }
    };
    let raw = |body: &'static str| {
        let r = client()
            .post(&chat)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let (st, v) = raw("{\"model\": ");
    expect(st, &v, 400, None);
    check_good();
    let (st, v) = raw("[1, 2]");
    expect(st, &v, 400, None);
    let (st, v) = post(&chat, &json!({"model": name}));
    expect(st, &v, 400, None);
    check_good();
    let (st, v) = post(
        &chat,
        &json!({"model": name, "messages": [{"role": "user", "content": "Hi"}], "temperature": -1}),
    );
    expect(st, &v, 400, Some("temperature"));
    let (st, v) = post(
        &chat,
        &json!({"model": name, "messages": [{"role": "user", "content": "Hi"}], "n": 2}),
    );
    expect(st, &v, 400, Some("n"));
    let (st, v) = post(
        &chat,
        &json!({"model": "nope", "messages": [{"role": "user", "content": "Hi"}]}),
    );
    expect(st, &v, 404, Some("model"));
    check_good();
    let (st, v) = post(
        &chat,
        &json!({"model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100000}),
    );
    expect(st, &v, 400, None);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("context"),
        "{v}"
    );
    // A body over the 16 MiB limit is refused from its Content-Length, before it is read.
    let addr = w.url.trim_start_matches("http://").to_string();
    let mut sock = TcpStream::connect(&addr).unwrap();
    write!(sock, "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", 20 << 20).unwrap();
    let mut head = String::new();
    BufReader::new(sock.try_clone().unwrap())
        .read_line(&mut head)
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    drop(sock);
    check_good();
    let r = client()
        .get(format!("{}/v1/nothing", w.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // Overload: one running, one waiting; the next request is turned away with Retry-After.
    let long = json!({"model": name, "prompt": PROMPT, "max_tokens": 200, "temperature": 0, "ignore_eos": true});
    let url = format!("{}/v1/completions", w.url);
    let bg: Vec<_> = (0..2)
        .map(|_| {
            let (u, b) = (url.clone(), long.clone());
            std::thread::spawn(move || post(&u, &b).0)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&w, "vllm:num_requests_waiting", "") < 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = client().post(&url).json(&long).send().unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    expect(503, &r.json::<Value>().unwrap(), 503, None);
    for t in bg {
        assert_eq!(t.join().unwrap(), 200);
    }
    check_good();
}

#[test]
fn a_client_that_disconnects_frees_its_kv() {
    let Some((model, _)) = enabled() else { return };
    let w = start_worker(&model, &[]);
    let name = model_name(&w);
    let free0 = metric(&w, "llmd_kv_blocks", "state=\"free\"");
    let body = json!({"model": name, "prompt": PROMPT, "max_tokens": 2000, "temperature": 0, "stream": true, "ignore_eos": true});
    let mut r = client()
        .post(format!("{}/v1/completions", w.url))
        .json(&body)
        .send()
        .unwrap();
    let mut buf = [0u8; 256];
    let _ = r.read(&mut buf).unwrap();
    assert!(metric(&w, "vllm:num_requests_running", "") >= 1.0);
    drop(r);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&w, "vllm:num_requests_running", "") > 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(&w, "vllm:num_requests_running", ""), 0.0);
    // Its blocks are back in the pool (those holding full prompt blocks stay cached, free).
    assert_eq!(metric(&w, "llmd_kv_blocks", "state=\"free\""), free0);
    assert_eq!(metric(&w, "vllm:request_success_total", "abort"), 1.0);
}

/// The series a /metrics page exposes (names and labels, values dropped).
fn series(url: &str) -> std::collections::BTreeSet<String> {
    common::metrics_text(url)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
        .collect()
}

/// `llmd worker --sim` (two replicas in one process) looks like a real worker to
/// Prometheus, the cache-manager and a P/D scheduler: the same metric series, the same KV
/// events for the same prompt, and a prefill → decode hand-off that continues with the
/// same tokens as one simulated worker alone.
#[test]
fn a_simulated_worker_matches_a_real_one() {
    let Some((model, _)) = enabled() else { return };
    let (cm, events) = common::start_cache_manager(&[]);
    let ev = ["--kv-events-endpoint", events.as_str()];
    let real = start_worker(&model, &ev);
    // --port 0: each replica on a free port of its own.
    let port = "0".to_string();
    let mut args = vec![
        "worker",
        "--sim",
        "--sim-replicas",
        "2",
        "--model",
        &model,
        "--host",
        "127.0.0.1",
        "--port",
        &port,
    ];
    args.extend_from_slice(&ev);
    let (child, rx) = common::spawn_llmd(&args, "sim");
    let mut urls = Vec::new();
    let mut kv_ports = Vec::new();
    while urls.len() < 2 || kv_ports.len() < 2 {
        let line = common::wait_line(&rx, "llmd worker: ");
        if let Some(u) = line.strip_prefix("http://") {
            urls.push(format!("http://{u}"));
        } else if let Some(a) = line.strip_prefix("kv transfer on ") {
            kv_ports.push(a.rsplit(':').next().unwrap().parse::<u16>().unwrap());
        }
    }
    common::drain(rx);
    let sim = Worker {
        child,
        url: urls[0].clone(),
        kv_port: Some(kv_ports[0]),
    };
    // The second replica is a plain handle on the same process (killed with the first).
    let sim2 = Worker {
        child: Command::new("true").spawn().unwrap(),
        url: urls[1].clone(),
        kv_port: Some(kv_ports[1]),
    };
    let name = model_name(&real);
    assert_eq!(model_name(&sim), name);

    let body = completion(PROMPT, &name, None);
    let (st, r) = post(&format!("{}/v1/completions", real.url), &body);
    assert_eq!(st, 200, "{r}");
    let (st, s) = post(&format!("{}/v1/completions", sim.url), &body);
    assert_eq!(st, 200, "{s}");
    assert_eq!(r["usage"]["prompt_tokens"], s["usage"]["prompt_tokens"]);
    assert_eq!(s["usage"]["completion_tokens"], json!(24), "{s}");
    assert!(!text(&s).is_empty());

    // Same series on /metrics, label sets included.
    assert_eq!(series(&real.url), series(&sim.url));

    // Same KV events: the cache-manager scores both workers alike for the prompt.
    let toks: Value = client()
        .post(format!("{}/tokenize", real.url))
        .json(&json!({"model": name, "prompt": PROMPT}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let blocks = |w: &Worker, v: &Value| {
        let id = w.url.trim_start_matches("http://");
        v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["worker"] == id)
            .map_or(0, |x| x["blocks"].as_u64().unwrap())
    };
    common::eventually("both workers indexed", || {
        let (_, v) = post(
            &format!("{}/v1/score", cm.url),
            &json!({"model": name, "token_ids": toks["tokens"]}),
        );
        let (a, b) = (blocks(&real, &v), blocks(&sim, &v));
        (a > 0 && a == b, v.to_string())
    });

    // What peer routers ask of a worker: vLLM's render endpoints give the ids the
    // request runs on (as /tokenize does), and the registration probes answer.
    let messages = json!([{"role": "user", "content": PROMPT}]);
    let (st, rendered) = post(
        &format!("{}/v1/chat/completions/render", real.url),
        &json!({"model": name, "messages": messages, "max_tokens": 5}),
    );
    assert_eq!(st, 200, "{rendered}");
    let (_, tokenized) = post(
        &format!("{}/tokenize", real.url),
        &json!({"model": name, "messages": messages}),
    );
    assert_eq!(rendered["token_ids"], tokenized["tokens"]);
    let (st, rendered) = post(
        &format!("{}/v1/completions/render", sim.url),
        &json!({"model": name, "prompt": PROMPT}),
    );
    assert_eq!(st, 200, "{rendered}");
    assert_eq!(rendered["token_ids"], toks["tokens"]);
    let (st, bad) = post(
        &format!("{}/v1/chat/completions/render", real.url),
        &json!({"model": "nope", "messages": messages}),
    );
    assert_eq!(st, 404, "{bad}");
    for path in [
        "server_info",
        "model_info",
        "get_server_info",
        "get_model_info",
    ] {
        let v: Value = client()
            .get(format!("{}/{path}", real.url))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(v["served_model_name"], json!(name), "{path}: {v}");
    }

    // P/D between the two replicas: the decode leg imports the KV and continues exactly
    // as one simulated worker did.
    let (_, second) = disaggregated(&sim, &sim2, &name);
    assert_eq!(text(&second), text(&s));
    assert!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{second}"
    );
    // A real worker refuses simulated KV (different fingerprint) and computes the prompt.
    let (_, mixed) = disaggregated(&sim, &real, &name);
    assert_eq!(text(&mixed), text(&r));
    drop(sim2);
}

/// `llmd bench serve` against a simulated worker: every request of the shared-prefix
/// workload succeeds, timings are measured, and the users' shared prefixes are reported
/// cached by the worker.
#[test]
fn bench_serve_measures_a_simulated_worker() {
    let Some((model, _)) = enabled() else { return };
    let sim = start_worker(&model, &["--sim", "--sim-step-ms", "1"]);
    let dir = std::env::temp_dir().join(format!("llmd-bench-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("run.json");
    let out = Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args([
            "bench",
            "serve",
            "--url",
            &sim.url,
            "--requests",
            "24",
            "--concurrency",
            "4",
        ])
        .args(["--users", "4", "--label", "sim", "--json"])
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| TTFT (ms) |"), "{stdout}");
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["requests"], json!(24), "{r}");
    assert_eq!(r["succeeded"], json!(24), "{r}");
    assert_eq!(r["workload"], json!("shared-prefix"));
    for s in r["samples"].as_array().unwrap() {
        assert_eq!(s["output_tokens"], json!(24), "{s}");
        assert!(s["ttft"].as_f64().unwrap() > 0.0);
    }
    assert!(r["ttft_ms"]["p50"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["cached_fraction"].as_f64().unwrap() > 0.3, "{r}");
    // --compare reads two reports back.
    let cmp = Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args(["bench", "serve", "--compare"])
        .args([&report, &report])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&cmp.stdout);
    assert!(
        cmp.status.success() && text.contains("| TTFT p90 (ms) |"),
        "{text}"
    );
    // A bad report is a one-line error, not a panic.
    std::fs::write(dir.join("bad.json"), "{}").unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args(["bench", "serve", "--compare"])
        .args([&report, &dir.join("bad.json")])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
