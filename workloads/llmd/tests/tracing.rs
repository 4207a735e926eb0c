//! OpenTelemetry tracing end to end: real `llmd worker` processes started with
//! `--otlp-traces-endpoint` export their spans over OTLP/HTTP to a real receiver
//! (tests/py/otlp_receiver.py, decoding with the official `opentelemetry-proto` package).
//! Requests carry a W3C `traceparent` as a scheduler sends them; each worker's request span
//! must join that trace under the given parent, with its phases (`queue`, `prefill`,
//! `kv_pull`, `decode`) as children. The workers are stopped with SIGTERM, which must flush
//! every span. Needs LLMD_E2E=1, LLMD_TEST_MODEL and LLMD_TEST_PYTHON (a venv with
//! `opentelemetry-proto`), as `tests/run e2e` sets.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::io::Read;
use std::time::{Duration, Instant};

use common::{
    client, drain, enabled, model_name, otlp_receiver as receiver, spans, spawn_llmd, start_worker,
    terminate, wait_line,
};
use serde_json::{json, Value};

const PROMPT: &str = "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined movable metal type, oil-based inks and a wooden press adapted from those used for wine. Within fifty years printing had spread across Europe, and";

/// The callers' traces: (trace id, the caller's span id), one per request.
const CHAT: (&str, &str) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
const STREAM: (&str, &str) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
const ABANDONED: (&str, &str) = ("7d3f1e0c9a4b4e21b0c6a1d2e3f40516", "1a2b3c4d5e6f7081");
const BAD: (&str, &str) = ("d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6", "99aa88bb77cc66dd");
/// Both legs of one disaggregated request share a trace, each under its own scheduler span.
const PD_TRACE: &str = "5b8efff798038103d269b633813fc60c";
const PD_PREFILL_PARENT: &str = "eee19b7ec3c1b174";
const PD_DECODE_PARENT: &str = "eee19b7ec3c1b175";

fn traceparent((trace, parent): (&str, &str)) -> String {
    format!("00-{trace}-{parent}-01")
}

fn post_traced(url: &str, body: &Value, tp: &str) -> (u16, Value) {
    let r = client()
        .post(url)
        .header("traceparent", tp)
        .json(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn ns(span: &Value, key: &str) -> u64 {
    span[key].as_u64().unwrap()
}

/// The worker request span a caller's span is the parent of, checked, with its children.
fn request<'a>(
    all: &'a [Value],
    (trace, parent): (&str, &str),
    leg: Option<&str>,
) -> (&'a Value, Vec<&'a Value>) {
    let found: Vec<&Value> = all
        .iter()
        .filter(|s| s["trace_id"] == trace && s["parent_span_id"] == parent)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one span under {trace}/{parent}: {found:#?}"
    );
    let req = found[0];
    assert_eq!(req["name"], "llmd.worker.request", "{req}");
    assert_eq!(req["service"], "llmd-worker", "{req}");
    assert_eq!(req["kind"], 2, "SPAN_KIND_SERVER: {req}");
    // A request refused before it was read has no leg.
    match leg {
        Some(leg) => assert_eq!(attr(req, "llmd.leg"), leg, "{req}"),
        None => assert!(attr(req, "llmd.leg").is_null(), "{req}"),
    }
    assert!(ns(req, "end_ns") >= ns(req, "start_ns"), "{req}");
    let children: Vec<&Value> = all
        .iter()
        .filter(|s| s["parent_span_id"] == req["span_id"])
        .collect();
    for c in &children {
        assert_eq!(c["trace_id"], trace, "{c}");
        assert_eq!(c["service"], "llmd-worker", "{c}");
        // Within the request span (a millisecond of slack: wall-clock arithmetic).
        assert!(
            ns(c, "start_ns") + 1_000_000 >= ns(req, "start_ns"),
            "{c}\n{req}"
        );
        assert!(
            ns(c, "end_ns") <= ns(req, "end_ns") + 1_000_000,
            "{c}\n{req}"
        );
        assert!(ns(c, "end_ns") >= ns(c, "start_ns"), "{c}");
    }
    (req, children)
}

fn child<'a>(children: &[&'a Value], name: &str) -> &'a Value {
    let found: Vec<&&Value> = children.iter().filter(|c| c["name"] == name).collect();
    assert_eq!(found.len(), 1, "one {name} span: {children:#?}");
    found[0]
}

/// A finished request: its usage, and the engine phases back to back.
fn check_finished(req: &Value, children: &[&Value], decode_phase: bool) {
    assert!(
        attr(req, "gen_ai.usage.prompt_tokens").as_i64().unwrap() > 0,
        "{req}"
    );
    assert!(
        attr(req, "gen_ai.usage.completion_tokens")
            .as_i64()
            .unwrap()
            >= 1,
        "{req}"
    );
    let reason = attr(req, "gen_ai.response.finish_reasons");
    assert!(reason == "length" || reason == "stop", "{req}");
    assert!(
        attr(req, "gen_ai.request.id").as_str().unwrap().len() > 8,
        "{req}"
    );
    let queue = child(children, "queue");
    let prefill = child(children, "prefill");
    assert!(
        ns(queue, "end_ns") <= ns(prefill, "start_ns") + 1_000,
        "{queue}\n{prefill}"
    );
    if decode_phase {
        let decode = child(children, "decode");
        assert!(ns(prefill, "end_ns") <= ns(decode, "start_ns") + 1_000);
    } else {
        assert!(
            children.iter().all(|c| c["name"] != "decode"),
            "{children:#?}"
        );
    }
}

#[test]
fn worker_spans_join_the_callers_trace_and_are_flushed_on_sigterm() {
    let Some((model, py)) = enabled() else { return };
    let rx = receiver(&py);
    let ep = format!("http://127.0.0.1:{}", rx.port);
    let mut prefill = start_worker(
        &model,
        &["--role", "prefill", "--otlp-traces-endpoint", &ep],
    );
    let mut decode = start_worker(&model, &["--role", "decode", "--otlp-traces-endpoint", &ep]);
    let name = model_name(&prefill);
    let chat = json!({"model": name, "messages": [{"role": "user", "content": "Write one sentence about the sea."}], "max_tokens": 8, "temperature": 0});

    // A whole chat completion.
    let (st, body) = post_traced(
        &format!("{}/v1/chat/completions", prefill.url),
        &chat,
        &traceparent(CHAT),
    );
    assert_eq!(st, 200, "{body}");

    // Streamed: the span ends with the stream.
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let text = client()
        .post(format!("{}/v1/chat/completions", decode.url))
        .header("traceparent", traceparent(STREAM))
        .json(&streamed)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(text.contains("[DONE]"), "{text}");

    // Refused: the span says so.
    let mut bad = chat.clone();
    bad["max_tokens"] = json!(-1);
    let (st, _) = post_traced(
        &format!("{}/v1/chat/completions", prefill.url),
        &bad,
        &traceparent(BAD),
    );
    assert_eq!(st, 400);

    // The two legs of one request, as a scheduler sends them.
    let leg1 = json!({"model": name, "prompt": PROMPT, "max_tokens": 1, "temperature": 0,
        "kv_transfer_params": {"do_remote_decode": true, "do_remote_prefill": false}});
    let (st, first) = post_traced(
        &format!("{}/v1/completions", prefill.url),
        &leg1,
        &traceparent((PD_TRACE, PD_PREFILL_PARENT)),
    );
    assert_eq!(st, 200, "{first}");
    let leg2 = json!({"model": name, "prompt": PROMPT, "max_tokens": 8, "temperature": 0,
        "kv_transfer_params": first["kv_transfer_params"]});
    let (st, second) = post_traced(
        &format!("{}/v1/completions", decode.url),
        &leg2,
        &traceparent((PD_TRACE, PD_DECODE_PARENT)),
    );
    assert_eq!(st, 200, "{second}");

    // A stream the client abandons: the span still ends, as an abort.
    let long = json!({"model": name, "prompt": PROMPT, "max_tokens": 2000, "temperature": 0, "stream": true, "ignore_eos": true});
    let mut r = client()
        .post(format!("{}/v1/completions", decode.url))
        .header("traceparent", traceparent(ABANDONED))
        .json(&long)
        .send()
        .unwrap();
    let mut buf = [0u8; 256];
    let _ = r.read(&mut buf).unwrap();
    drop(r);

    // Nothing is lost at a clean stop: the batch processor flushes before exit.
    assert!(terminate(&mut prefill.child, Duration::from_secs(30)));
    assert!(terminate(&mut decode.child, Duration::from_secs(30)));
    let mut all = spans(&rx.file);
    let deadline = Instant::now() + Duration::from_secs(10);
    while all.len() < 18 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        all = spans(&rx.file);
    }

    // Shown when the test fails.
    for s in &all {
        eprintln!("exported: {s}");
    }
    // Every span is in one of the callers' traces: the workers start none of their own.
    let ours: HashSet<&str> = [CHAT.0, STREAM.0, ABANDONED.0, BAD.0, PD_TRACE].into();
    for s in &all {
        assert!(
            ours.contains(s["trace_id"].as_str().unwrap()),
            "a span outside the callers' traces: {s}"
        );
    }

    let (req, children) = request(&all, CHAT, Some("whole"));
    assert_eq!(attr(req, "llmd.role"), "prefill");
    assert_eq!(attr(req, "llmd.api"), "chat.completions");
    assert_eq!(attr(req, "gen_ai.response.model"), name.as_str());
    assert!(attr(req, "gen_ai.request.id")
        .as_str()
        .unwrap()
        .starts_with("chatcmpl-"));
    check_finished(req, &children, true);
    assert_eq!(children.len(), 3, "{children:#?}");

    let (req, children) = request(&all, STREAM, Some("whole"));
    assert_eq!(attr(req, "llmd.role"), "decode");
    check_finished(req, &children, true);

    let (req, children) = request(&all, BAD, None);
    assert_eq!(req["status"]["code"], 2, "STATUS_CODE_ERROR: {req}");
    assert!(children.is_empty(), "{children:#?}");

    // Prefill leg: the prompt and its one token; no decode phase, no pull.
    let (req, children) = request(&all, (PD_TRACE, PD_PREFILL_PARENT), Some("prefill"));
    check_finished(req, &children, false);
    assert!(children.iter().all(|c| c["name"] != "kv_pull"));
    // Decode leg: the pull, then the engine's phases.
    let (req, children) = request(&all, (PD_TRACE, PD_DECODE_PARENT), Some("decode"));
    check_finished(req, &children, true);
    let pull = child(&children, "kv_pull");
    assert_eq!(attr(pull, "llmd.kv.outcome"), "ok", "{pull}");
    assert_eq!(attr(pull, "llmd.kv.fallback"), false, "{pull}");
    assert!(attr(pull, "llmd.kv.bytes").as_i64().unwrap() > 0, "{pull}");
    assert!(ns(pull, "end_ns") <= ns(child(&children, "queue"), "start_ns") + 1_000);
    // The decode worker used the pulled KV: its prompt was mostly cached.
    assert!(
        attr(req, "gen_ai.usage.cached_tokens").as_i64().unwrap() > 0,
        "{req}"
    );

    let (req, _) = request(&all, ABANDONED, Some("whole"));
    assert_eq!(
        attr(req, "gen_ai.response.finish_reasons"),
        "abort",
        "{req}"
    );
}

#[test]
fn cache_manager_scores_join_the_callers_trace() {
    let Some((_, py)) = enabled() else { return };
    let rx = receiver(&py);
    let ep = format!("http://127.0.0.1:{}", rx.port);
    let (mut cm, lines) = spawn_llmd(
        &[
            "cache-manager",
            "--port",
            "0",
            "--otlp-traces-endpoint",
            &ep,
        ],
        "cache-manager",
    );
    let url = format!(
        "http://{}",
        wait_line(&lines, "llmd cache-manager: http://")
    );
    drain(lines);
    let (trace, parent) = ("c0ffee00c0ffee00c0ffee00c0ffee00", "5ca1ab1e5ca1ab1e");
    let (st, body) = post_traced(
        &format!("{url}/v1/score"),
        &json!({"model": "m", "token_ids": (0..40).collect::<Vec<u32>>(), "block_size": 16}),
        &traceparent((trace, parent)),
    );
    assert_eq!(st, 200, "{body}");
    assert!(terminate(&mut cm, Duration::from_secs(30)));
    let all = spans(&rx.file);
    assert_eq!(all.len(), 1, "{all:#?}");
    let s = &all[0];
    assert_eq!(s["name"], "llmd.cache_manager.score", "{s}");
    assert_eq!(s["service"], "llmd-cache-manager", "{s}");
    assert_eq!(s["trace_id"], trace, "{s}");
    assert_eq!(s["parent_span_id"], parent, "{s}");
    assert_eq!(attr(s, "gen_ai.request.model"), "m", "{s}");
    assert_eq!(attr(s, "llmd.total_blocks"), 2, "{s}");
    assert_eq!(attr(s, "http.response.status_code"), 200, "{s}");
}
