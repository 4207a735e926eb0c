//! `init` with an endpoint: spans reach an HTTP listener as OTLP/protobuf when the guard
//! drops, in the trace of the `traceparent` they were parented to. (One test per file: the
//! subscriber is global to the process.)
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

/// Accepts connections and sends each request's (head, body) back; answers 200.
fn listener() -> (u16, mpsc::Receiver<(String, Vec<u8>)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            // Several requests may share a keep-alive connection.
            loop {
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                if head.is_empty() {
                    break;
                }
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let _ = tx.send((head, body));
                conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .unwrap();
            }
        }
    });
    (port, rx)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn spans_are_exported_in_the_callers_trace_when_the_guard_drops() {
    let (port, rx) = listener();
    let guard =
        llmd_telemetry::init("llmd-test", Some(&format!("http://127.0.0.1:{port}"))).unwrap();
    assert_eq!(
        guard.endpoint(),
        Some(format!("http://127.0.0.1:{port}/v1/traces").as_str())
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut incoming = http::HeaderMap::new();
    incoming.insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    {
        let span = tracing::info_span!(target: "llmd_test", "llmd.test.request");
        assert!(llmd_telemetry::set_parent(
            &span,
            llmd_telemetry::extract_context(&incoming)
        ));
        // An outgoing call from inside the span carries the same trace, a new parent.
        let mut out = http::HeaderMap::new();
        llmd_telemetry::inject_context(&span, &mut out);
        let tp = out["traceparent"].to_str().unwrap().to_string();
        assert!(tp.starts_with(&format!("00-{trace_id}-")), "{tp}");
        assert!(!tp.contains("00f067aa0ba902b7"), "{tp}");
        // Spans from other targets (HTTP stacks) are not exported.
        let _ = tracing::info_span!(target: "hyper", "noise").entered();
    }
    // Nothing is sent before the batch is due or the guard drops.
    drop(guard);
    let (head, body) = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    assert!(head.starts_with("POST /v1/traces HTTP/1.1"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/x-protobuf"),
        "{head}"
    );
    let tid: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(contains(&body, &tid), "the trace id is in the export");
    assert!(contains(&body, b"llmd.test.request"));
    assert!(contains(&body, b"llmd-test"), "service.name");
    assert!(!contains(&body, b"noise"));
}
