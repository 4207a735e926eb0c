//! The prefill side: answers pulls from a [`KvSource`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{KvBlob, KvExpect, KvSource, Outcome, CHUNK, MAGIC};

/// Longest request id accepted (ids are short strings).
const MAX_ID: usize = 4096;
/// How long a connection may take to send its request or its decisions.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct KvServer {
    listener: TcpListener,
}

impl KvServer {
    /// Binds `addr` (`host:port`; port 0 picks one) and returns the bound address.
    pub async fn bind(addr: &str) -> std::io::Result<(SocketAddr, KvServer)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok((local, KvServer { listener }))
    }

    /// Serves pulls, one task per connection, until `shutdown` completes.
    pub async fn serve(self, source: Arc<dyn KvSource>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                conn = self.listener.accept() => match conn {
                    Ok((stream, peer)) => {
                        let source = source.clone();
                        tokio::spawn(async move {
                            if let Err(e) = handle(stream, source.as_ref()).await {
                                tracing::debug!(%peer, error = %e, "KV transfer connection ended");
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "KV transfer accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }
}

async fn control<T>(f: impl Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::time::timeout(CONTROL_TIMEOUT, f)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "peer too slow"))?
}

/// How long an idle connection is kept open for the puller's next request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves requests on one connection until the puller closes it, goes idle, or a transfer
/// ends in a state the connection cannot continue from.
async fn handle(mut s: TcpStream, source: &dyn KvSource) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    loop {
        let mut magic = [0u8; 8];
        match tokio::time::timeout(IDLE_TIMEOUT, s.read_exact(&mut magic)).await {
            Ok(Ok(_)) => {}
            // Closed or idle between requests: the normal end of a pooled connection.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        if &magic != MAGIC {
            tracing::warn!("KV transfer: not an llmd-kvx v1 request; closing");
            return Ok(());
        }
        if !one_request(&mut s, source).await? {
            return Ok(());
        }
    }
}

/// Reads one request after its magic and answers it; `Ok(true)` when the connection is in
/// a clean state for another request.
async fn one_request(s: &mut TcpStream, source: &dyn KvSource) -> std::io::Result<bool> {
    let len = control(s.read_u32()).await? as usize;
    if len > MAX_ID {
        tracing::warn!(len, "KV transfer: request id too long; closing");
        return Ok(false);
    }
    let mut id = vec![0u8; len];
    control(s.read_exact(&mut id)).await?;
    let Ok(id) = String::from_utf8(id) else {
        tracing::warn!("KV transfer: request id is not UTF-8; closing");
        return Ok(false);
    };
    let len = control(s.read_u32()).await? as usize;
    if len > MAX_ID {
        tracing::warn!(len, "KV transfer: expectation too long; closing");
        return Ok(false);
    }
    let mut raw = vec![0u8; len];
    control(s.read_exact(&mut raw)).await?;
    let Ok(expect) = serde_json::from_slice::<KvExpect>(&raw) else {
        tracing::warn!("KV transfer: unreadable expectation; closing");
        return Ok(false);
    };
    let blob = match source.fetch(&id).await {
        Ok(b) => b,
        Err(msg) => {
            let mut m = vec![1u8];
            m.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            m.extend_from_slice(msg.as_bytes());
            s.write_all(&m).await?;
            return Ok(true);
        }
    };
    // From here on the source hears how it ended, whatever happens.
    let (outcome, clean) = match send(s, &blob, &expect).await {
        Ok(o) => o,
        Err(e) => (Outcome::Aborted(format!("connection failed: {e}")), false),
    };
    source.finished(&id, outcome);
    Ok(clean)
}

/// Sends one transfer; the outcome, and whether the connection can serve another request.
async fn send(
    s: &mut TcpStream,
    blob: &KvBlob,
    expect: &KvExpect,
) -> std::io::Result<(Outcome, bool)> {
    if blob.header.payload_len != blob.data.len() as u64 {
        let msg = "export size does not match its header";
        let mut m = vec![1u8];
        m.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        m.extend_from_slice(msg.as_bytes());
        s.write_all(&m).await?;
        return Ok((Outcome::Aborted(msg.into()), true));
    }
    let header = serde_json::to_vec(&blob.header).map_err(std::io::Error::other)?;
    // Status, length and header in one write: one segment, one wake-up on the other side.
    let mut first = Vec::with_capacity(5 + header.len());
    first.push(0u8);
    first.extend_from_slice(&(header.len() as u32).to_be_bytes());
    first.extend_from_slice(&header);
    s.write_all(&first).await?;
    if let Some((field, want, got)) = expect.mismatch(&blob.header) {
        return Ok((
            Outcome::Aborted(format!(
                "the puller expects {field} {want}, the export has {got}"
            )),
            true,
        ));
    }
    let mut crc = crc32fast::Hasher::new();
    for chunk in blob.data.chunks(CHUNK) {
        s.write_all(chunk).await?;
        crc.update(chunk);
    }
    s.write_u32(crc.finalize()).await?;
    Ok(match control(s.read_u8()).await? {
        b'K' => (
            Outcome::Delivered {
                bytes: blob.data.len(),
            },
            true,
        ),
        b'E' => (
            Outcome::Aborted("the puller saw a bad checksum".into()),
            false,
        ),
        other => (
            Outcome::Aborted(format!("unexpected confirmation byte {other}")),
            false,
        ),
    })
}
