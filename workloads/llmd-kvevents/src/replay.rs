//! The replay client: fetches batches a subscriber missed from a publisher's ROUTER socket
//! (ours or vLLM's).

use std::time::Duration;

use bytes::Bytes;
use llmd_protocol::{decode_batch, EventBatch};
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

use crate::{KvEventsError, END_SEQ};

/// One batch served by a replay socket.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    pub seq: u64,
    pub batch: EventBatch,
}

/// Asks the replay socket at `endpoint` for every buffered batch from `from_seq` on and
/// returns them in the order served (ascending). Batches older than the publisher's buffer
/// are simply absent: compare the first `seq` with `from_seq`. Payloads that do not decode
/// are logged and left out. The whole exchange is bounded by `timeout`.
pub async fn replay(
    endpoint: &str,
    from_seq: u64,
    timeout: Duration,
) -> Result<Vec<Replayed>, KvEventsError> {
    tokio::time::timeout(timeout, exchange(endpoint, from_seq, timeout))
        .await
        .map_err(|_| KvEventsError::ReplayTimeout {
            endpoint: endpoint.to_owned(),
            timeout,
        })?
}

async fn exchange(
    endpoint: &str,
    from_seq: u64,
    timeout: Duration,
) -> Result<Vec<Replayed>, KvEventsError> {
    let socket_err = |op, source| KvEventsError::Socket {
        op,
        endpoint: endpoint.to_owned(),
        source,
    };
    let protocol_err = |reason: String| KvEventsError::ReplayProtocol {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let mut options = SocketOptions::default();
    options.connect_timeout(timeout);
    // DEALER, not REQ: one request gets many replies.
    let mut socket = DealerSocket::with_options(options);
    socket
        .connect(endpoint)
        .await
        .map_err(|e| socket_err("connect replay socket", e))?;
    // The empty delimiter first, as a REQ socket would send it: vLLM's publisher expects
    // exactly [identity, delimiter, start] at its ROUTER.
    let request = ZmqMessage::try_from(vec![
        Bytes::new(),
        Bytes::copy_from_slice(&from_seq.to_be_bytes()),
    ])
    .map_err(|e| protocol_err(e.to_string()))?;
    socket
        .send(request)
        .await
        .map_err(|e| socket_err("send replay request", e))?;

    let mut out = Vec::new();
    loop {
        let reply = socket
            .recv()
            .await
            .map_err(|e| socket_err("receive replay", e))?;
        let mut frames = reply.into_vec();
        if frames.first().is_some_and(|f| f.is_empty()) {
            frames.remove(0);
        }
        let [seq, payload] = frames.as_slice() else {
            return Err(protocol_err(format!(
                "expected [seq, payload], got {} frames",
                frames.len()
            )));
        };
        if seq.as_ref() == END_SEQ {
            return Ok(out);
        }
        let seq = <[u8; 8]>::try_from(seq.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| protocol_err(format!("sequence frame of {} bytes", seq.len())))?;
        match decode_batch(payload) {
            Ok(batch) => out.push(Replayed { seq, batch }),
            Err(e) => {
                tracing::warn!(%endpoint, seq, error = %e, "undecodable replayed batch skipped")
            }
        }
    }
}
