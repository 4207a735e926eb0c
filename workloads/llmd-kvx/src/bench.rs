//! `llmd bench kvx`: transfer speed over loopback TCP against a raw socket copy of the same
//! bytes, in the same process, so the ratio is what to read; with the `rdma` feature, kvx
//! over RDMA against kvx over TCP in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{KvBlob, KvExpect, KvLayoutHeader, KvSource, KvxError, Outcome, CHUNK};

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    pub bytes: usize,
    pub kvx_gbps: f64,
    pub raw_gbps: f64,
    /// Median time of one kvx pull, seconds.
    pub kvx_latency_s: f64,
}

struct Source(KvBlob);

impl KvSource for Source {
    fn fetch(
        &self,
        _id: &str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<KvBlob, String>> + Send + '_>>
    {
        let b = self.0.clone();
        Box::pin(async move { Ok(b) })
    }
    fn finished(&self, _id: &str, _outcome: Outcome) {}
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// For each size: `iters` kvx pulls and `iters` raw copies over 127.0.0.1, interleaved.
pub async fn loopback(sizes: &[usize], iters: usize) -> Result<Vec<BenchRow>, KvxError> {
    let mut rows = Vec::new();
    for &bytes in sizes {
        let data: Vec<u8> = (0..bytes).map(|i| (i * 131 + 7) as u8).collect();
        let header = KvLayoutHeader {
            fingerprint: "bench".into(),
            num_layers: 1,
            num_kv_heads: 1,
            head_dim: 1,
            dtype: "f32".into(),
            block_size: 1,
            num_blocks: 1,
            num_tokens: 1,
            payload_len: bytes as u64,
        };
        let expect = KvExpect {
            fingerprint: "bench".into(),
            num_layers: 1,
            num_kv_heads: 1,
            head_dim: 1,
            dtype: "f32".into(),
            block_size: 1,
        };
        let (addr, server) = crate::KvServer::bind("127.0.0.1:0").await?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let src = Arc::new(Source(KvBlob {
            header,
            data: bytes::Bytes::from(data.clone()),
        }));
        let task = tokio::spawn(server.serve(src, async {
            let _ = stop_rx.await;
        }));
        let raw_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let raw_addr = raw_listener.local_addr()?;
        let payload = Arc::new(data);
        let p2 = payload.clone();
        // The raw side: a plain socket that writes the bytes for each one-byte request. Both
        // sides keep their connection between transfers (kvx pools its connections), so
        // what is compared is the transfer, not connection set-up.
        let raw_task = tokio::spawn(async move {
            while let Ok((mut s, _)) = raw_listener.accept().await {
                let _ = s.set_nodelay(true);
                let p = p2.clone();
                tokio::spawn(async move {
                    while s.read_u8().await.is_ok() {
                        for chunk in p.chunks(CHUNK) {
                            if s.write_all(chunk).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let mut raw_conn = tokio::net::TcpStream::connect(raw_addr).await?;
        raw_conn.set_nodelay(true)?;
        let (mut kvx, mut raw, mut lat) = (Vec::new(), Vec::new(), Vec::new());
        // One untimed round of each first: connections made, buffers warm.
        for i in 0..=iters {
            let t = Instant::now();
            let b = crate::pull(
                &addr.to_string(),
                "bench",
                &expect,
                Duration::from_secs(120),
            )
            .await?;
            let dt = t.elapsed().as_secs_f64();
            if b.data.len() != bytes {
                return Err(KvxError::Protocol("short benchmark transfer".into()));
            }
            let t = Instant::now();
            raw_conn.write_u8(1).await?;
            let mut buf = vec![0u8; bytes];
            for chunk in buf.chunks_mut(CHUNK) {
                raw_conn.read_exact(chunk).await?;
            }
            let rt = t.elapsed().as_secs_f64();
            if i > 0 {
                kvx.push(bytes as f64 / dt / 1e9);
                lat.push(dt);
                raw.push(bytes as f64 / rt / 1e9);
            }
        }
        let _ = stop_tx.send(());
        let _ = task.await;
        raw_task.abort();
        rows.push(BenchRow {
            bytes,
            kvx_gbps: median(kvx),
            raw_gbps: median(raw),
            kvx_latency_s: median(lat),
        });
    }
    Ok(rows)
}

/// One size of [`rdma_vs_tcp`]: kvx over RDMA and kvx over TCP, the same payload.
#[cfg(feature = "rdma")]
#[derive(Debug, Clone, serde::Serialize)]
pub struct TransportRow {
    pub bytes: usize,
    pub rdma_gbps: f64,
    pub tcp_gbps: f64,
    /// Median time of one pull, seconds (request to verified payload).
    pub rdma_latency_s: f64,
    pub tcp_latency_s: f64,
}

/// For each size: `iters` kvx pulls over RDMA (server on `server`, puller on `puller`)
/// and `iters` over TCP to the same server, interleaved, after one untimed round of each.
/// Fails if an RDMA pull fell back to TCP, so the numbers are what they claim.
#[cfg(feature = "rdma")]
pub async fn rdma_vs_tcp(
    server: std::sync::Arc<crate::rdma::RdmaNode>,
    puller: std::sync::Arc<crate::rdma::RdmaNode>,
    sizes: &[usize],
    iters: usize,
) -> Result<Vec<TransportRow>, KvxError> {
    let mut rows = Vec::new();
    for &bytes in sizes {
        let data: Vec<u8> = (0..bytes).map(|i| (i * 131 + 7) as u8).collect();
        let header = KvLayoutHeader {
            fingerprint: "bench".into(),
            num_layers: 1,
            num_kv_heads: 1,
            head_dim: 1,
            dtype: "f32".into(),
            block_size: 1,
            num_blocks: 1,
            num_tokens: 1,
            payload_len: bytes as u64,
        };
        let expect = KvExpect {
            fingerprint: "bench".into(),
            num_layers: 1,
            num_kv_heads: 1,
            head_dim: 1,
            dtype: "f32".into(),
            block_size: 1,
        };
        let (addr, srv) = crate::KvServer::bind("127.0.0.1:0").await?;
        let srv = srv.with_rdma(server.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let src = Arc::new(Source(KvBlob {
            header,
            data: bytes::Bytes::from(data),
        }));
        let task = tokio::spawn(srv.serve(src, async {
            let _ = stop_rx.await;
        }));
        let addr = addr.to_string();
        let timeout = Duration::from_secs(600);
        let (mut rdma, mut tcp, mut rlat, mut tlat) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..=iters {
            let before = crate::rdma::transfer_counts().0;
            let t = Instant::now();
            let b = crate::rdma::pull(&puller, &addr, "bench", &expect, timeout).await?;
            let dt = t.elapsed().as_secs_f64();
            if b.data.len() != bytes || crate::rdma::transfer_counts().0 != before + 1 {
                return Err(KvxError::Rdma(
                    "a benchmark pull did not complete by RDMA READ".into(),
                ));
            }
            let t = Instant::now();
            let b = crate::pull(&addr, "bench", &expect, timeout).await?;
            let tt = t.elapsed().as_secs_f64();
            if b.data.len() != bytes {
                return Err(KvxError::Protocol("short benchmark transfer".into()));
            }
            if i > 0 {
                rdma.push(bytes as f64 / dt / 1e9);
                rlat.push(dt);
                tcp.push(bytes as f64 / tt / 1e9);
                tlat.push(tt);
            }
        }
        let _ = stop_tx.send(());
        let _ = task.await;
        rows.push(TransportRow {
            bytes,
            rdma_gbps: median(rdma),
            tcp_gbps: median(tcp),
            rdma_latency_s: median(rlat),
            tcp_latency_s: median(tlat),
        });
    }
    Ok(rows)
}
