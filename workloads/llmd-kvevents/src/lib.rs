//! KV event transport, wire-compatible with vLLM's `ZmqEventPublisher`, so that vLLM workers
//! and llmd workers feed the same cache-manager.
//!
//! - Messages: ZMQ PUB/SUB, multipart `[topic, seq, payload]`: the topic
//!   `kv@<host:port>@<model>` ([`topic`]), `seq` a u64 big-endian counting batches from 0 per
//!   publisher, the payload one msgpack batch ([`llmd_protocol::encode_batch`]).
//! - Replay: the publisher keeps its last N payloads and serves them on a ROUTER socket. A
//!   client sends `[empty delimiter, start seq (8 bytes big-endian)]` (what a REQ socket
//!   sends for a one-frame request); the publisher answers one message
//!   `[delimiter, seq, payload]` per buffered batch with `seq >= start`, then the end marker
//!   `[delimiter, -1 as 8 bytes big-endian, empty payload]`.
//!
//! Built on `zeromq` (pure Rust, ZMTP 3.0, tokio), so no C library is needed; it speaks to
//! libzmq peers (pyzmq, as vLLM uses) over TCP.

mod publisher;
mod replay;
mod subscriber;

pub use publisher::{Publisher, PublisherConfig, PublisherHandle, PublisherStats, SocketMode};
pub use replay::{replay, Replayed};
pub use subscriber::{Received, Subscriber, SubscriberStats};

/// What every KV event topic starts with; subscribers filter on it.
pub const TOPIC_PREFIX: &str = "kv@";

/// The replay stream's end marker: -1 as a signed 8-byte big-endian integer (vLLM's
/// `END_SEQ`). Publishers never reach this sequence number.
pub const END_SEQ: [u8; 8] = [0xff; 8];

/// The topic a worker publishes under: `kv@<worker_id>@<model>`, the worker id being the
/// `host:port` of its HTTP server (llm-d's convention, which its indexer parses).
pub fn topic(worker_id: &str, model: &str) -> String {
    format!("{TOPIC_PREFIX}{worker_id}@{model}")
}

/// Splits a topic into `(worker_id, model)`. The worker id holds no `@` (it is `host:port`);
/// the model name may.
pub fn parse_topic(topic: &str) -> Option<(&str, &str)> {
    topic.strip_prefix(TOPIC_PREFIX)?.split_once('@')
}

#[derive(Debug, thiserror::Error)]
pub enum KvEventsError {
    #[error("cannot {op} {endpoint}: {source}")]
    Socket {
        op: &'static str,
        endpoint: String,
        #[source]
        source: zeromq::ZmqError,
    },
    #[error("replay from {endpoint} timed out after {timeout:?}")]
    ReplayTimeout {
        endpoint: String,
        timeout: std::time::Duration,
    },
    #[error("replay from {endpoint}: {reason}")]
    ReplayProtocol { endpoint: String, reason: String },
    #[error("the publisher task failed: {0}")]
    Task(String),
}

/// ZMQ's wildcard host (`tcp://*:5557`, vLLM's default) as an address a listener can take.
fn bind_address(endpoint: &str) -> String {
    match endpoint.strip_prefix("tcp://*:") {
        Some(port) => format!("tcp://0.0.0.0:{port}"),
        None => endpoint.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        let t = topic("10.0.0.7:8000", "org/model@v2");
        assert_eq!(t, "kv@10.0.0.7:8000@org/model@v2");
        assert_eq!(parse_topic(&t), Some(("10.0.0.7:8000", "org/model@v2")));
        assert_eq!(parse_topic("kv-events"), None);
    }

    #[test]
    fn wildcard_binds_every_interface() {
        assert_eq!(bind_address("tcp://*:5557"), "tcp://0.0.0.0:5557");
        assert_eq!(bind_address("tcp://127.0.0.1:0"), "tcp://127.0.0.1:0");
    }
}
