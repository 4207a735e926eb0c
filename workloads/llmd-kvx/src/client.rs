//! The decode side: pulls one transfer.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{KvBlob, KvExpect, KvLayoutHeader, KvxError, CHUNK, MAGIC};

/// Largest header accepted (a few hundred bytes in practice).
pub(crate) const MAX_HEADER: usize = 64 << 10;

pub(crate) fn eof_as_truncated(e: std::io::Error, what: &str) -> KvxError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof
        || e.kind() == std::io::ErrorKind::ConnectionReset
    {
        KvxError::Truncated(format!("{what}: {e}"))
    } else {
        KvxError::Io(e)
    }
}

/// Pulls `request_id` from the KV server at `addr` (`host:port`). The header is checked
/// against `expect` before any payload byte is accepted; the whole pull is bounded by
/// `timeout`.
pub async fn pull(
    addr: &str,
    request_id: &str,
    expect: &KvExpect,
    timeout: Duration,
) -> Result<KvBlob, KvxError> {
    tokio::time::timeout(timeout, pull_inner(addr, request_id, expect))
        .await
        .map_err(|_| KvxError::Timeout(timeout))?
}

/// Idle connections per server address, reused by later pulls (decode workers pull from
/// the same prefill workers over and over; a new connection costs more than a 1 MiB copy).
static POOL: std::sync::Mutex<Vec<(String, TcpStream)>> = std::sync::Mutex::new(Vec::new());
/// Idle connections kept per address.
const POOL_PER_ADDR: usize = 4;

fn take_pooled(addr: &str) -> Option<TcpStream> {
    let mut pool = POOL.lock().ok()?;
    let i = pool.iter().position(|(a, _)| a == addr)?;
    Some(pool.swap_remove(i).1)
}

pub(crate) fn give_back(addr: &str, s: BufReader<TcpStream>) {
    // Bytes left in the buffer would belong to nobody: only clean connections go back.
    if !s.buffer().is_empty() {
        return;
    }
    if let Ok(mut pool) = POOL.lock() {
        if pool.iter().filter(|(a, _)| a == addr).count() < POOL_PER_ADDR {
            pool.push((addr.to_string(), s.into_inner()));
        }
    }
}

/// The request's first bytes: `magic`, the request id and the expectation.
pub(crate) fn request_bytes(
    magic: &[u8; 8],
    request_id: &str,
    expect: &KvExpect,
) -> Result<Vec<u8>, KvxError> {
    let want = serde_json::to_vec(expect).map_err(|e| KvxError::Protocol(e.to_string()))?;
    let mut req = Vec::with_capacity(16 + request_id.len() + want.len());
    req.extend_from_slice(magic);
    req.extend_from_slice(&(request_id.len() as u32).to_be_bytes());
    req.extend_from_slice(request_id.as_bytes());
    req.extend_from_slice(&(want.len() as u32).to_be_bytes());
    req.extend_from_slice(&want);
    Ok(req)
}

/// Sends `req` on a pooled or new connection and reads the status byte.
pub(crate) async fn send_request(
    addr: &str,
    req: &[u8],
) -> Result<(BufReader<TcpStream>, u8), KvxError> {
    // A pooled connection the server has since closed fails before any answer byte: then
    // the request is sent again on a new connection (nothing was transferred).
    if let Some(s) = take_pooled(addr) {
        let mut s = BufReader::with_capacity(64 << 10, s);
        if s.get_mut().write_all(req).await.is_ok() {
            if let Ok(status) = s.read_u8().await {
                return Ok((s, status));
            }
        }
    }
    let s = TcpStream::connect(addr)
        .await
        .map_err(|source| KvxError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    s.set_nodelay(true)?;
    // Buffered reads for the small control fields; payload reads bypass the buffer.
    let mut s = BufReader::with_capacity(64 << 10, s);
    s.get_mut().write_all(req).await?;
    let status = s
        .read_u8()
        .await
        .map_err(|e| eof_as_truncated(e, "status"))?;
    Ok((s, status))
}

pub(crate) async fn pull_inner(
    addr: &str,
    request_id: &str,
    expect: &KvExpect,
) -> Result<KvBlob, KvxError> {
    let req = request_bytes(MAGIC, request_id, expect)?;
    let (mut s, status) = send_request(addr, &req).await?;
    let header = match read_header(&mut s, status, request_id, expect).await {
        Ok(h) => h,
        Err(e) => {
            if left_clean(&e) {
                give_back(addr, s);
            }
            return Err(e);
        }
    };
    let data = read_payload(&mut s, &header).await?;
    give_back(addr, s);
    Ok(KvBlob {
        header,
        data: data.into(),
    })
}

/// Whether a connection is still clean after `read_header` failed with `e` (a refusal or
/// a mismatched header: the server sent all it meant to).
pub(crate) fn left_clean(e: &KvxError) -> bool {
    matches!(e, KvxError::NotFound { .. } | KvxError::Mismatch { .. })
}

/// A length-prefixed message (bounded by `MAX_HEADER`).
#[cfg(feature = "rdma")]
pub(crate) async fn read_message(s: &mut BufReader<TcpStream>) -> Result<String, KvxError> {
    let buf = read_block(s, "message").await?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn read_block(s: &mut BufReader<TcpStream>, what: &str) -> Result<Vec<u8>, KvxError> {
    let len = s
        .read_u32()
        .await
        .map_err(|e| eof_as_truncated(e, &format!("{what} length")))? as usize;
    if len > MAX_HEADER {
        return Err(KvxError::Protocol(format!("a {len}-byte {what}")));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf)
        .await
        .map_err(|e| eof_as_truncated(e, what))?;
    Ok(buf)
}

/// The answer after the status byte: the message of a refusal, or the header, checked
/// against `expect`.
pub(crate) async fn read_header(
    s: &mut BufReader<TcpStream>,
    status: u8,
    request_id: &str,
    expect: &KvExpect,
) -> Result<KvLayoutHeader, KvxError> {
    let buf = read_block(s, "header").await?;
    if status != 0 {
        return Err(KvxError::NotFound {
            request_id: request_id.to_string(),
            message: String::from_utf8_lossy(&buf).into_owned(),
        });
    }
    let header: KvLayoutHeader =
        serde_json::from_slice(&buf).map_err(|e| KvxError::Protocol(format!("bad header: {e}")))?;
    // The server sends no payload after a header that does not match; check it here too.
    if let Some((field, expected, got)) = expect.mismatch(&header) {
        return Err(KvxError::Mismatch {
            field,
            expected,
            got,
        });
    }
    Ok(header)
}

/// Reads the payload and its CRC-32 and answers `K` (or `E` on a bad checksum).
pub(crate) async fn read_payload(
    s: &mut BufReader<TcpStream>,
    header: &KvLayoutHeader,
) -> Result<Vec<u8>, KvxError> {
    let len = usize::try_from(header.payload_len)
        .map_err(|_| KvxError::Protocol("payload too large for this machine".into()))?;
    let mut data = vec![0u8; len];
    let mut crc = crc32fast::Hasher::new();
    for chunk in data.chunks_mut(CHUNK) {
        s.read_exact(chunk)
            .await
            .map_err(|e| eof_as_truncated(e, "payload"))?;
        crc.update(chunk);
    }
    let got = s
        .read_u32()
        .await
        .map_err(|e| eof_as_truncated(e, "checksum"))?;
    let computed = crc.finalize();
    if got != computed {
        let _ = s.get_mut().write_u8(b'E').await;
        return Err(KvxError::Checksum { got, computed });
    }
    s.get_mut().write_u8(b'K').await?;
    Ok(data)
}
