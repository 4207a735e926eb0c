//! The cache-manager side: a SUB socket on the `kv@` prefix that binds (workers connect to
//! it) and/or connects to publishers, and turns messages into decoded batches, noting the
//! sequence numbers it did not see.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use llmd_protocol::{decode_batch, EventBatch};
use zeromq::{Socket, SocketRecv, SubSocket, ZmqError};

use crate::{bind_address, KvEventsError, TOPIC_PREFIX};

/// One batch as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub topic: String,
    pub seq: u64,
    pub batch: EventBatch,
    /// Sequence numbers of this stream that never arrived before this one: its start when
    /// the subscriber joined late, or a gap (a slow subscriber's dropped messages). Fetch
    /// them with [`crate::replay`] from the publisher's replay socket before applying
    /// this batch, to keep the stream's order.
    pub missed: Option<Range<u64>>,
    /// The sequence went backwards: the publisher restarted, so everything it said before
    /// is void (its cache started empty).
    pub restarted: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    pub received: u64,
    /// Messages skipped: not three frames, a sequence frame not 8 bytes, a topic not UTF-8.
    pub malformed: u64,
    /// Messages skipped because the payload did not decode.
    pub undecodable: u64,
    /// Times `missed` was reported.
    pub gaps: u64,
}

pub struct Subscriber {
    socket: SubSocket,
    /// The last sequence number per stream: (topic, data-parallel rank). vLLM's ranks
    /// share a topic but number their batches independently.
    last_seq: HashMap<(String, Option<i64>), u64>,
    stats: SubscriberStats,
}

impl Subscriber {
    /// A SUB socket subscribed to [`TOPIC_PREFIX`].
    pub async fn new() -> Result<Self, KvEventsError> {
        Self::with_prefix(TOPIC_PREFIX).await
    }

    /// A SUB socket subscribed to `prefix` (`""` for every topic, e.g. vLLM's default
    /// `topic=""`).
    pub async fn with_prefix(prefix: &str) -> Result<Self, KvEventsError> {
        let mut socket = SubSocket::new();
        // Before any peer exists: remembered, and sent to each peer as it connects.
        socket
            .subscribe(prefix)
            .await
            .map_err(|source| KvEventsError::Socket {
                op: "subscribe",
                endpoint: prefix.to_owned(),
                source,
            })?;
        Ok(Self {
            socket,
            last_seq: HashMap::new(),
            stats: SubscriberStats::default(),
        })
    }

    /// Listens on `endpoint` (`tcp://*:port` for every interface) for publishers that
    /// connect; returns the bound endpoint with its actual port.
    pub async fn bind(&mut self, endpoint: &str) -> Result<String, KvEventsError> {
        let bound = self
            .socket
            .bind(&bind_address(endpoint))
            .await
            .map_err(|source| KvEventsError::Socket {
                op: "bind",
                endpoint: endpoint.to_owned(),
                source,
            })?;
        tracing::info!(endpoint = %bound, "KV event subscriber listening");
        Ok(bound.to_string())
    }

    /// Connects to a publisher's bound endpoint. Waits for the first connection (retrying
    /// while it is refused, up to the `zeromq` crate's 30 s connect timeout); after that
    /// the socket reconnects by itself whenever the connection drops.
    pub async fn connect(&mut self, endpoint: &str) -> Result<(), KvEventsError> {
        self.socket
            .connect(endpoint)
            .await
            .map_err(|source| KvEventsError::Socket {
                op: "connect",
                endpoint: endpoint.to_owned(),
                source,
            })?;
        tracing::info!(%endpoint, "KV event subscriber connected");
        Ok(())
    }

    pub fn stats(&self) -> SubscriberStats {
        self.stats
    }

    /// The next well-formed batch from any publisher; malformed messages are logged,
    /// counted and skipped. Waits as long as it takes (wrap it in a timeout if needed).
    pub async fn recv(&mut self) -> Received {
        loop {
            let message = match self.socket.recv().await {
                Ok(message) => message,
                Err(ZmqError::NoMessage) => {
                    // No peer to read from; don't spin until one connects.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(e) => {
                    // One peer's connection failed; the others (and reconnects) go on.
                    tracing::debug!(error = %e, "KV event subscriber receive error");
                    continue;
                }
            };
            let frames = message.into_vec();
            let [topic, seq, payload] = frames.as_slice() else {
                self.malformed(format_args!("{} frames instead of 3", frames.len()));
                continue;
            };
            let Ok(seq) = <[u8; 8]>::try_from(seq.as_ref()).map(u64::from_be_bytes) else {
                self.malformed(format_args!("sequence frame of {} bytes", seq.len()));
                continue;
            };
            let Ok(topic) = std::str::from_utf8(topic) else {
                self.malformed(format_args!("topic is not UTF-8"));
                continue;
            };
            let batch = match decode_batch(payload) {
                Ok(batch) => batch,
                Err(e) => {
                    self.stats.undecodable += 1;
                    tracing::warn!(%topic, seq, error = %e, "undecodable KV event batch skipped");
                    continue;
                }
            };
            if batch.unknown_events > 0 {
                tracing::warn!(%topic, seq, unknown = batch.unknown_events, "KV events of unknown kinds skipped");
            }
            self.stats.received += 1;
            return self.sequence(topic.to_owned(), seq, batch);
        }
    }

    fn malformed(&mut self, reason: std::fmt::Arguments<'_>) {
        self.stats.malformed += 1;
        tracing::warn!(%reason, "malformed KV event message skipped");
    }

    fn sequence(&mut self, topic: String, seq: u64, batch: EventBatch) -> Received {
        let key = (topic, batch.data_parallel_rank);
        let (expected, restarted) = match self.last_seq.get(&key) {
            None => (0, false),
            Some(&last) if seq > last => (last + 1, false),
            Some(&last) => {
                tracing::info!(topic = %key.0, last, seq, "KV event publisher restarted");
                (0, true)
            }
        };
        let missed = (seq > expected).then_some(expected..seq);
        if let Some(range) = &missed {
            self.stats.gaps += 1;
            tracing::info!(topic = %key.0, missed = ?range, "KV event batches missed");
        }
        let topic = key.0.clone();
        self.last_seq.insert(key, seq);
        Received {
            topic,
            seq,
            batch,
            missed,
            restarted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(rank: Option<i64>) -> EventBatch {
        EventBatch {
            ts: 0.0,
            events: Vec::new(),
            data_parallel_rank: rank,
            unknown_events: 0,
        }
    }

    #[tokio::test]
    async fn gaps_and_restarts_are_reported_per_stream() {
        let mut sub = Subscriber::new().await.unwrap();
        let mut next = |topic: &str, seq, rank| {
            let r = sub.sequence(topic.to_owned(), seq, batch(rank));
            (r.missed, r.restarted)
        };
        assert_eq!(next("kv@a@m", 0, Some(0)), (None, false));
        assert_eq!(next("kv@a@m", 1, Some(0)), (None, false));
        assert_eq!(next("kv@a@m", 5, Some(0)), (Some(2..5), false));
        // Another rank under the same topic numbers its batches on its own.
        assert_eq!(next("kv@a@m", 3, Some(1)), (Some(0..3), false));
        // Joining a stream late.
        assert_eq!(next("kv@b@m", 7, None), (Some(0..7), false));
        // Backwards: the publisher restarted.
        assert_eq!(next("kv@a@m", 0, Some(0)), (None, true));
        assert_eq!(next("kv@b@m", 2, None), (Some(0..2), true));
        assert_eq!(sub.stats().gaps, 4);
    }
}
