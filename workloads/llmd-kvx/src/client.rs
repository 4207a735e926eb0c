//! The decode side: pulls one transfer.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{KvBlob, KvExpect, KvLayoutHeader, KvxError, CHUNK, MAGIC};

/// Largest header accepted (a few hundred bytes in practice).
const MAX_HEADER: usize = 64 << 10;

fn eof_as_truncated(e: std::io::Error, what: &str) -> KvxError {
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

async fn pull_inner(addr: &str, request_id: &str, expect: &KvExpect) -> Result<KvBlob, KvxError> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|source| KvxError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    s.set_nodelay(true)?;
    // Buffered reads for the small control fields; payload reads bypass the buffer.
    let mut s = tokio::io::BufReader::with_capacity(64 << 10, s);
    let want = serde_json::to_vec(expect).map_err(|e| KvxError::Protocol(e.to_string()))?;
    let mut req = Vec::with_capacity(16 + request_id.len() + want.len());
    req.extend_from_slice(MAGIC);
    req.extend_from_slice(&(request_id.len() as u32).to_be_bytes());
    req.extend_from_slice(request_id.as_bytes());
    req.extend_from_slice(&(want.len() as u32).to_be_bytes());
    req.extend_from_slice(&want);
    s.get_mut().write_all(&req).await?;
    let status = s
        .read_u8()
        .await
        .map_err(|e| eof_as_truncated(e, "status"))?;
    let len = s
        .read_u32()
        .await
        .map_err(|e| eof_as_truncated(e, "header length"))? as usize;
    if len > MAX_HEADER {
        return Err(KvxError::Protocol(format!(
            "a {len}-byte header or message"
        )));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf)
        .await
        .map_err(|e| eof_as_truncated(e, "header"))?;
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
    Ok(KvBlob {
        header,
        data: data.into(),
    })
}
