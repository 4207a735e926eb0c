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
    /// Serves RDMA requests when set; without it they are refused (the puller uses TCP).
    #[cfg(feature = "rdma")]
    rdma: Option<Arc<crate::rdma::RdmaNode>>,
}

impl KvServer {
    /// Binds `addr` (`host:port`; port 0 picks one) and returns the bound address.
    pub async fn bind(addr: &str) -> std::io::Result<(SocketAddr, KvServer)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok((
            local,
            KvServer {
                listener,
                #[cfg(feature = "rdma")]
                rdma: None,
            },
        ))
    }

    /// Serves RDMA pulls from `node`'s registered staging memory as well as TCP pulls.
    #[cfg(feature = "rdma")]
    pub fn with_rdma(mut self, node: Arc<crate::rdma::RdmaNode>) -> Self {
        self.rdma = Some(node);
        self
    }

    /// Serves pulls, one task per connection, until `shutdown` completes.
    pub async fn serve(self, source: Arc<dyn KvSource>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let rdma = Rdma {
            #[cfg(feature = "rdma")]
            node: self.rdma.clone(),
        };
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                conn = self.listener.accept() => match conn {
                    Ok((stream, peer)) => {
                        let source = source.clone();
                        let rdma = rdma.clone();
                        tokio::spawn(async move {
                            if let Err(e) = handle(stream, source.as_ref(), &rdma).await {
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
async fn handle(mut s: TcpStream, source: &dyn KvSource, rdma: &Rdma) -> std::io::Result<()> {
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
        let is_rdma = &magic == crate::MAGIC_RDMA;
        if &magic != MAGIC && !is_rdma {
            tracing::warn!("KV transfer: not an llmd-kvx v1 request; closing");
            return Ok(());
        }
        if !one_request(&mut s, source, rdma, is_rdma).await? {
            return Ok(());
        }
    }
}

/// The server's RDMA side, when it has one.
#[derive(Clone)]
struct Rdma {
    #[cfg(feature = "rdma")]
    node: Option<Arc<crate::rdma::RdmaNode>>,
}

/// A length-prefixed field of a request, at most `MAX_ID` bytes; `None` (logged) when
/// longer.
async fn read_field(s: &mut TcpStream, what: &str) -> std::io::Result<Option<Vec<u8>>> {
    let len = control(s.read_u32()).await? as usize;
    if len > MAX_ID {
        tracing::warn!(len, "KV transfer: {what} too long; closing");
        return Ok(None);
    }
    let mut buf = vec![0u8; len];
    control(s.read_exact(&mut buf)).await?;
    Ok(Some(buf))
}

/// Reads one request after its magic and answers it; `Ok(true)` when the connection is in
/// a clean state for another request.
async fn one_request(
    s: &mut TcpStream,
    source: &dyn KvSource,
    rdma: &Rdma,
    is_rdma: bool,
) -> std::io::Result<bool> {
    let Some(id) = read_field(s, "request id").await? else {
        return Ok(false);
    };
    let Ok(id) = String::from_utf8(id) else {
        tracing::warn!("KV transfer: request id is not UTF-8; closing");
        return Ok(false);
    };
    let Some(raw) = read_field(s, "expectation").await? else {
        return Ok(false);
    };
    let Ok(expect) = serde_json::from_slice::<KvExpect>(&raw) else {
        tracing::warn!("KV transfer: unreadable expectation; closing");
        return Ok(false);
    };
    if is_rdma {
        let Some(endpoint) = read_field(s, "RDMA endpoint").await? else {
            return Ok(false);
        };
        #[cfg(feature = "rdma")]
        if let Some(node) = &rdma.node {
            return crate::rdma::serve(s, source, node, &id, &expect, &endpoint).await;
        }
        let _ = (rdma, endpoint);
        // Status 2: no RDMA here; the connection stays clean for the puller's TCP request.
        write_status(s, 2, "this KV server does not serve RDMA").await?;
        return Ok(true);
    }
    let blob = match source.fetch(&id).await {
        Ok(b) => b,
        Err(msg) => {
            write_status(s, 1, &msg).await?;
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

/// A status byte other than 0 and its message.
pub(crate) async fn write_status(s: &mut TcpStream, status: u8, msg: &str) -> std::io::Result<()> {
    let mut m = vec![status];
    m.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    m.extend_from_slice(msg.as_bytes());
    s.write_all(&m).await
}

/// Sends one transfer; the outcome, and whether the connection can serve another request.
async fn send(
    s: &mut TcpStream,
    blob: &KvBlob,
    expect: &KvExpect,
) -> std::io::Result<(Outcome, bool)> {
    if let Some(ended) = send_header(s, blob, expect).await? {
        return Ok(ended);
    }
    stream_payload(s, blob).await
}

/// Sends status 0 and the header; `Some(outcome)` when the transfer ends there (the export
/// is inconsistent, or the header does not match what the puller expects).
pub(crate) async fn send_header(
    s: &mut TcpStream,
    blob: &KvBlob,
    expect: &KvExpect,
) -> std::io::Result<Option<(Outcome, bool)>> {
    if blob.header.payload_len != blob.data.len() as u64 {
        let msg = "export size does not match its header";
        write_status(s, 1, msg).await?;
        return Ok(Some((Outcome::Aborted(msg.into()), true)));
    }
    let header = serde_json::to_vec(&blob.header).map_err(std::io::Error::other)?;
    // Status, length and header in one write: one segment, one wake-up on the other side.
    let mut first = Vec::with_capacity(5 + header.len());
    first.push(0u8);
    first.extend_from_slice(&(header.len() as u32).to_be_bytes());
    first.extend_from_slice(&header);
    s.write_all(&first).await?;
    if let Some((field, want, got)) = expect.mismatch(&blob.header) {
        return Ok(Some((
            Outcome::Aborted(format!(
                "the puller expects {field} {want}, the export has {got}"
            )),
            true,
        )));
    }
    Ok(None)
}

/// Streams the payload and its CRC-32, then reads the puller's confirmation.
pub(crate) async fn stream_payload(
    s: &mut TcpStream,
    blob: &KvBlob,
) -> std::io::Result<(Outcome, bool)> {
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
