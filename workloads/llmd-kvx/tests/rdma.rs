//! The RDMA transport on real verbs devices: `LLMD_RDMA_TEST_DEVICES=SERVER,PULLER` names
//! them (`tests/run rdma` runs these in a VM on two soft-RoCE devices); without it the tests
//! say so and return, since a host without RDMA cannot run them.
//! Run one at a time (`--test-threads=1`): the fault switch and counters are per process.
#![cfg(feature = "rdma")]
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llmd_kvx::rdma::{inject_fault, transfer_counts, Fault, RdmaNode};
use llmd_kvx::{KvBlob, KvExpect, KvLayoutHeader, KvSource, KvxError, Outcome};

/// Serialises the tests: they share the process-wide fault switch and counters.
static SERIAL: Mutex<()> = Mutex::new(());

fn devices() -> Option<(String, String)> {
    let v = std::env::var("LLMD_RDMA_TEST_DEVICES").ok()?;
    let mut it = v.split(',');
    let a = it.next()?.to_string();
    let b = it.next().map(str::to_string).unwrap_or_else(|| a.clone());
    Some((a, b))
}

fn nodes(staging: usize) -> Option<(Arc<RdmaNode>, Arc<RdmaNode>)> {
    let Some((a, b)) = devices() else {
        eprintln!("LLMD_RDMA_TEST_DEVICES is not set: no RDMA devices to test on; skipped");
        return None;
    };
    Some((
        RdmaNode::open(Some(&a), staging).unwrap(),
        RdmaNode::open(Some(&b), staging).unwrap(),
    ))
}

fn header(len: usize) -> KvLayoutHeader {
    KvLayoutHeader {
        fingerprint: "fp".into(),
        num_layers: 2,
        num_kv_heads: 2,
        head_dim: 8,
        dtype: "f32".into(),
        block_size: 4,
        num_blocks: 3,
        num_tokens: 12,
        payload_len: len as u64,
    }
}

fn expect() -> KvExpect {
    KvExpect {
        fingerprint: "fp".into(),
        num_layers: 2,
        num_kv_heads: 2,
        head_dim: 8,
        dtype: "f32".into(),
        block_size: 4,
    }
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[derive(Default)]
struct Source {
    blobs: Mutex<Vec<(String, KvBlob)>>,
    outcomes: Mutex<Vec<(String, Outcome)>>,
}

impl Source {
    fn with(id: &str, len: usize) -> Arc<Source> {
        let s = Source::default();
        s.add(id, len);
        Arc::new(s)
    }
    fn add(&self, id: &str, len: usize) {
        self.blobs.lock().unwrap().push((
            id.to_string(),
            KvBlob {
                header: header(len),
                data: payload(len).into(),
            },
        ));
    }
    fn outcomes(&self) -> Vec<(String, Outcome)> {
        self.outcomes.lock().unwrap().clone()
    }
}

impl KvSource for Source {
    fn fetch(
        &self,
        id: &str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<KvBlob, String>> + Send + '_>>
    {
        let found = self
            .blobs
            .lock()
            .unwrap()
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, b)| b.clone());
        Box::pin(async move { found.ok_or_else(|| "no such transfer".to_string()) })
    }
    fn finished(&self, id: &str, outcome: Outcome) {
        self.outcomes
            .lock()
            .unwrap()
            .push((id.to_string(), outcome));
    }
}

async fn serve(src: Arc<Source>, node: Option<Arc<RdmaNode>>) -> String {
    let (addr, server) = llmd_kvx::KvServer::bind("127.0.0.1:0").await.unwrap();
    let server = match node {
        Some(n) => server.with_rdma(n),
        None => server,
    };
    tokio::spawn(server.serve(src, std::future::pending()));
    addr.to_string()
}

async fn outcomes_eventually(src: &Source, n: usize) -> Vec<(String, Outcome)> {
    let t = Instant::now();
    while src.outcomes().len() < n && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    src.outcomes()
}

const T: Duration = Duration::from_secs(60);

/// Runs `f` on a fresh runtime, one test at a time.
fn serial(f: impl std::future::Future<Output = ()>) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f);
}

#[test]
fn reads_payloads_of_any_size_and_reports_once() {
    serial(reads_payloads_of_any_size_and_reports_once_());
}

async fn reads_payloads_of_any_size_and_reports_once_() {
    inject_fault(Fault::None);
    let Some((srv, pul)) = nodes(64 << 20) else {
        return;
    };
    // Empty, one partial READ, several, and more READs than the send queue holds at once.
    let sizes = [0usize, 1000, (3 << 20) + 17, (34 << 20) + 5];
    let src = Arc::new(Source::default());
    for (i, &len) in sizes.iter().enumerate() {
        src.add(&format!("r{i}"), len);
    }
    let addr = serve(src.clone(), Some(srv.clone())).await;
    for (i, &len) in sizes.iter().enumerate() {
        let before = transfer_counts();
        let b = llmd_kvx::rdma::pull(&pul, &addr, &format!("r{i}"), &expect(), T)
            .await
            .unwrap();
        assert_eq!(b.header, header(len));
        assert!(b.data == payload(len), "payload {len} differs");
        let after = transfer_counts();
        assert_eq!(after.0, before.0 + 1, "pull {i} did not go by RDMA READ");
    }
    let out = outcomes_eventually(&src, sizes.len()).await;
    assert_eq!(out.len(), sizes.len(), "{out:?}");
    for (i, &len) in sizes.iter().enumerate() {
        assert_eq!(out[i], (format!("r{i}"), Outcome::Delivered { bytes: len }));
    }
    assert_eq!(srv.staging_in_use(), 0);
    assert_eq!(pul.staging_in_use(), 0);
}

#[test]
fn header_checks_refusals_and_a_server_without_rdma() {
    serial(header_checks_refusals_and_a_server_without_rdma_());
}

async fn header_checks_refusals_and_a_server_without_rdma_() {
    inject_fault(Fault::None);
    let Some((srv, pul)) = nodes(8 << 20) else {
        return;
    };
    let src = Source::with("a", 4096);
    let addr = serve(src.clone(), Some(srv.clone())).await;
    // A mismatched header: refused before any payload is staged or read.
    let mut wrong = expect();
    wrong.fingerprint = "other".into();
    let e = llmd_kvx::rdma::pull(&pul, &addr, "a", &wrong, T)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            KvxError::Mismatch {
                field: "fingerprint",
                ..
            }
        ),
        "{e}"
    );
    let out = outcomes_eventually(&src, 1).await;
    assert!(matches!(out[0].1, Outcome::Aborted(_)), "{out:?}");
    // Unknown ids are refused.
    let e = llmd_kvx::rdma::pull(&pul, &addr, "nope", &expect(), T)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "not_found", "{e}");
    // A server without RDMA: the same call pulls over TCP.
    let src2 = Source::with("b", 5000);
    let addr2 = serve(src2.clone(), None).await;
    let before = transfer_counts();
    let b = llmd_kvx::rdma::pull(&pul, &addr2, "b", &expect(), T)
        .await
        .unwrap();
    assert!(b.data == payload(5000));
    assert_eq!(transfer_counts().0, before.0, "counted as an RDMA pull");
    // A puller whose staging cannot hold the payload gets it over TCP from an RDMA server.
    let small = RdmaNode::open(Some(pul.device()), 4096).unwrap();
    src.add("big", 64 << 10);
    let b = llmd_kvx::rdma::pull(&small, &addr, "big", &expect(), T)
        .await
        .unwrap();
    assert!(b.data == payload(64 << 10));
    assert_eq!(srv.staging_in_use(), 0);
    assert_eq!(pul.staging_in_use(), 0);
}

#[test]
fn a_wrong_rkey_fails_the_pull_and_releases_everything() {
    serial(a_wrong_rkey_fails_the_pull_and_releases_everything_());
}

async fn a_wrong_rkey_fails_the_pull_and_releases_everything_() {
    let Some((srv, pul)) = nodes(8 << 20) else {
        return;
    };
    let src = Source::with("a", 100_000);
    src.add("b", 100_000);
    let addr = serve(src.clone(), Some(srv.clone())).await;
    inject_fault(Fault::WrongRkey);
    let e = llmd_kvx::rdma::pull(&pul, &addr, "a", &expect(), T).await;
    inject_fault(Fault::None);
    let e = e.unwrap_err();
    assert_eq!(e.reason(), "rdma", "{e}");
    let out = outcomes_eventually(&src, 1).await;
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        matches!(&out[0].1, Outcome::Aborted(r) if r.contains("READ")),
        "{out:?}"
    );
    assert_eq!(srv.staging_in_use(), 0);
    assert_eq!(pul.staging_in_use(), 0);
    // The next transfer works.
    let b = llmd_kvx::rdma::pull(&pul, &addr, "b", &expect(), T)
        .await
        .unwrap();
    assert!(b.data == payload(100_000));
}

#[test]
fn the_server_going_away_mid_read_fails_the_pull_and_releases_everything() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    inject_fault(Fault::None);
    let Some((srv, pul)) = nodes(64 << 20) else {
        return;
    };
    // Large enough that the READs are still running when the server goes.
    let len = 48 << 20;
    let src = Source::with("a", len);
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addr = server_rt.block_on(serve(src.clone(), Some(srv.clone())));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pul2 = pul.clone();
    let pull = rt.spawn(async move { llmd_kvx::rdma::pull(&pul2, &addr, "a", &expect(), T).await });
    // The puller holds staging once it has the offer and is reading.
    let t = Instant::now();
    while pul.staging_in_use() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the READs never started"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(30));
    // Everything the server side had goes: its tasks, QP and connection.
    drop(server_rt);
    let t = Instant::now();
    let e = rt.block_on(pull).unwrap().unwrap_err();
    assert_eq!(e.reason(), "rdma", "{e}");
    eprintln!("mid-read loss noticed after {:?}: {e}", t.elapsed());
    assert_eq!(pul.staging_in_use(), 0);
    assert_eq!(srv.staging_in_use(), 0);
    let out = src.outcomes();
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(matches!(out[0].1, Outcome::Aborted(_)), "{out:?}");
}
