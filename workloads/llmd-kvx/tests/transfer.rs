//! Pulls over 127.0.0.1: delivery, each refusal and failure the decode side must survive,
//! and the server's report of how each transfer ended.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmd_kvx::{pull, KvBlob, KvExpect, KvLayoutHeader, KvServer, KvSource, KvxError, Outcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn header(len: usize) -> KvLayoutHeader {
    KvLayoutHeader {
        fingerprint: "sha256:abc".into(),
        num_layers: 2,
        num_kv_heads: 3,
        head_dim: 64,
        dtype: "f32".into(),
        block_size: 16,
        num_blocks: 4,
        num_tokens: 64,
        payload_len: len as u64,
    }
}

fn expect() -> KvExpect {
    KvExpect {
        fingerprint: "sha256:abc".into(),
        num_layers: 2,
        num_kv_heads: 3,
        head_dim: 64,
        dtype: "f32".into(),
        block_size: 16,
    }
}

#[derive(Default)]
struct Source {
    blobs: Mutex<std::collections::HashMap<String, KvBlob>>,
    outcomes: Mutex<Vec<(String, Outcome)>>,
}

impl KvSource for Source {
    fn fetch(
        &self,
        id: &str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<KvBlob, String>> + Send + '_>>
    {
        let b = self.blobs.lock().unwrap().get(id).cloned();
        Box::pin(async move { b.ok_or_else(|| "no such transfer".to_string()) })
    }
    fn finished(&self, id: &str, outcome: Outcome) {
        self.outcomes
            .lock()
            .unwrap()
            .push((id.to_string(), outcome));
    }
}

async fn serve(src: Arc<Source>) -> String {
    let (addr, server) = KvServer::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(server.serve(src, std::future::pending()));
    addr.to_string()
}

fn blob(len: usize) -> KvBlob {
    KvBlob {
        header: header(len),
        data: (0..len)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect::<Vec<u8>>()
            .into(),
    }
}

async fn outcomes_eventually(src: &Source, n: usize) -> Vec<(String, Outcome)> {
    for _ in 0..200 {
        if src.outcomes.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    src.outcomes.lock().unwrap().clone()
}

#[tokio::test]
async fn delivers_and_reports_once() {
    let src = Arc::new(Source::default());
    let b = blob(3 << 20 | 123);
    src.blobs.lock().unwrap().insert("r1".into(), b.clone());
    let addr = serve(src.clone()).await;
    let got = pull(&addr, "r1", &expect(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(got, b);
    let o = outcomes_eventually(&src, 1).await;
    assert_eq!(
        o,
        vec![(
            "r1".to_string(),
            Outcome::Delivered {
                bytes: b.data.len()
            }
        )]
    );
    // Unknown ids are refused without a report.
    let e = pull(&addr, "nope", &expect(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(e, KvxError::NotFound { .. }), "{e}");
    assert_eq!(e.reason(), "not_found");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(src.outcomes.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_mismatched_header_is_refused_before_the_payload() {
    let src = Arc::new(Source::default());
    src.blobs.lock().unwrap().insert("r".into(), blob(64 << 20));
    let addr = serve(src.clone()).await;
    for (field, e) in [
        (
            "fingerprint",
            KvExpect {
                fingerprint: "sha256:other".into(),
                ..expect()
            },
        ),
        (
            "head_dim",
            KvExpect {
                head_dim: 128,
                ..expect()
            },
        ),
        (
            "dtype",
            KvExpect {
                dtype: "f16".into(),
                ..expect()
            },
        ),
    ] {
        let t = std::time::Instant::now();
        let err = pull(&addr, "r", &e, Duration::from_secs(10))
            .await
            .unwrap_err();
        match err {
            KvxError::Mismatch { field: f, .. } => assert_eq!(f, field),
            other => panic!("{other}"),
        }
        // 64 MiB never crossed the socket: the server heard the refusal instead.
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    let o = outcomes_eventually(&src, 3).await;
    assert_eq!(o.len(), 3);
    assert!(
        o.iter()
            .all(|(_, x)| matches!(x, Outcome::Aborted(r) if r.contains("expects"))),
        "{o:?}"
    );
}

/// A server speaking the protocol up to the payload, then misbehaving.
async fn fake(behaviour: &'static str) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut req = [0u8; 12];
                if s.read_exact(&mut req).await.is_err() {
                    return;
                }
                let n = u32::from_be_bytes([req[8], req[9], req[10], req[11]]) as usize;
                let mut id = vec![0u8; n];
                let _ = s.read_exact(&mut id).await;
                let n = s.read_u32().await.unwrap_or(0) as usize;
                let mut want = vec![0u8; n];
                let _ = s.read_exact(&mut want).await;
                if behaviour == "stall" {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
                let h = serde_json::to_vec(&header(4096)).unwrap();
                s.write_u8(0).await.unwrap();
                s.write_u32(h.len() as u32).await.unwrap();
                s.write_all(&h).await.unwrap();
                let data = vec![5u8; 4096];
                match behaviour {
                    "truncate" => {
                        s.write_all(&data[..1000]).await.unwrap();
                    }
                    "checksum" => {
                        s.write_all(&data).await.unwrap();
                        s.write_u32(0xdead_beef).await.unwrap();
                        let _ = s.read_u8().await;
                    }
                    _ => {}
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn truncation_corruption_stalls_and_refusals_are_errors() {
    let e = pull(
        &fake("truncate").await,
        "x",
        &expect(),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, KvxError::Truncated(_)), "{e}");
    let e = pull(
        &fake("checksum").await,
        "x",
        &expect(),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            KvxError::Checksum {
                got: 0xdead_beef,
                ..
            }
        ),
        "{e}"
    );
    let t = std::time::Instant::now();
    let e = pull(
        &fake("stall").await,
        "x",
        &expect(),
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, KvxError::Timeout(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // Nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = pull(
        &format!("127.0.0.1:{port}"),
        "x",
        &expect(),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, KvxError::Connect { .. }), "{e}");
}

#[tokio::test]
async fn garbage_and_disconnects_do_not_stop_the_server() {
    let src = Arc::new(Source::default());
    src.blobs.lock().unwrap().insert("r".into(), blob(8 << 20));
    let addr = serve(src.clone()).await;
    // Not our protocol.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    assert!(buf.is_empty());
    // A puller that accepts, then goes away mid-payload: reported as aborted.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let want = serde_json::to_vec(&expect()).unwrap();
    s.write_all(b"LLMDKVX1").await.unwrap();
    s.write_u32(1).await.unwrap();
    s.write_all(b"r").await.unwrap();
    s.write_u32(want.len() as u32).await.unwrap();
    s.write_all(&want).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), 0);
    let n = s.read_u32().await.unwrap() as usize;
    let mut h = vec![0u8; n];
    s.read_exact(&mut h).await.unwrap();
    let mut some = vec![0u8; 1 << 16];
    s.read_exact(&mut some).await.unwrap();
    drop(s);
    let o = outcomes_eventually(&src, 1).await;
    assert!(matches!(&o[0].1, Outcome::Aborted(_)), "{o:?}");
    // Still serving.
    let got = pull(&addr, "r", &expect(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(got.data.len(), 8 << 20);
}
