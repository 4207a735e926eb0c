//! KV cache transfer between workers: a decode worker pulls the blocks a prefill worker
//! computed and pinned. The bytes are opaque here (the worker maps the engine's export onto
//! [`KvBlob`]); this crate moves them, checks what they are before taking them, and checks
//! that they arrived whole.
//!
//! Wire protocol (TCP, integers big-endian), version 1:
//! 1. client → server: `b"LLMDKVX1"`, request id (u32 length + UTF-8), then what it expects
//!    of the header ([`KvExpect`] as JSON, u32 length + bytes).
//! 2. server → client: status (u8). 1: not found / error, a message (u32 length + UTF-8)
//!    follows and the connection closes. 0: the header (u32 length + JSON,
//!    [`KvLayoutHeader`]); if it does not match the expectation, nothing follows — so a
//!    mismatched layout or model never costs a payload byte, and no extra round trip is
//!    spent on asking — otherwise the payload (`payload_len` bytes, streamed in large
//!    chunks) and its CRC-32 (u32).
//! 3. The client checks the header itself too (it trusts no server to have checked), reads
//!    the payload, and answers `K` when the checksum matched, `E` when it did not.
//!
//! The server reports each fetched transfer's end exactly once through
//! [`KvSource::finished`] — delivered (`K`) or aborted (mismatch, bad checksum,
//! disconnect, error) — so the prefill side can unpin the blocks at once.
//!
//! With the `rdma` feature, [`rdma`] adds RDMA READs of the payload over the same control
//! connection (its module docs describe the exchange); builds without it refuse RDMA
//! requests with status 2, and the puller falls back to TCP.
//!
//! The header is JSON because it is small, read once per transfer, and readable in a packet
//! capture; the payload is raw bytes. CRC-32 (crc32fast, SIMD) checks at memory speed, and
//! catches truncation and corruption, which is what it is for here (not tampering).

pub mod bench;
mod client;
#[cfg(feature = "rdma")]
pub mod rdma;
mod server;

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

pub use client::pull;
pub use server::KvServer;

/// First bytes of every request: the protocol and its version.
pub const MAGIC: &[u8; 8] = b"LLMDKVX1";
/// First bytes of an RDMA request (the `rdma` module; refused by servers without it).
pub const MAGIC_RDMA: &[u8; 8] = b"LLMDKVR1";
/// Payload bytes per write and read.
pub(crate) const CHUNK: usize = 1 << 20;

/// What the transferred bytes are: the exporting engine's KV layout and model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvLayoutHeader {
    /// Identifies the exact weights; KV is only usable by an engine with the same.
    pub fingerprint: String,
    pub num_layers: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    /// `f32`, `f16` or `bf16`.
    pub dtype: String,
    pub block_size: u32,
    pub num_blocks: u32,
    /// Tokens the blocks hold.
    pub num_tokens: u32,
    pub payload_len: u64,
}

/// A header and its payload (`Bytes`: the server hands out the same export without
/// copying it, and a `Vec<u8>` converts both ways without a copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvBlob {
    pub header: KvLayoutHeader,
    pub data: bytes::Bytes,
}

/// What the puller requires of the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvExpect {
    pub fingerprint: String,
    pub num_layers: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    pub dtype: String,
    pub block_size: u32,
}

impl KvExpect {
    /// The first field that differs from `h`, as (field, expected, got).
    pub fn mismatch(&self, h: &KvLayoutHeader) -> Option<(&'static str, String, String)> {
        let checks: [(&'static str, String, String); 6] = [
            (
                "fingerprint",
                self.fingerprint.clone(),
                h.fingerprint.clone(),
            ),
            (
                "num_layers",
                self.num_layers.to_string(),
                h.num_layers.to_string(),
            ),
            (
                "num_kv_heads",
                self.num_kv_heads.to_string(),
                h.num_kv_heads.to_string(),
            ),
            (
                "head_dim",
                self.head_dim.to_string(),
                h.head_dim.to_string(),
            ),
            ("dtype", self.dtype.clone(), h.dtype.clone()),
            (
                "block_size",
                self.block_size.to_string(),
                h.block_size.to_string(),
            ),
        ];
        checks.into_iter().find(|(_, a, b)| a != b)
    }
}

/// How a fetched transfer ended, for [`KvSource::finished`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The puller has the payload and its checksum matched.
    Delivered { bytes: usize },
    /// Refused, failed or cut off; the reason, for logs.
    Aborted(String),
}

/// The prefill side: finds the blocks of a request id and hears how their transfer ended.
pub trait KvSource: Send + Sync + 'static {
    /// The export for `request_id`, or why there is none (sent to the puller).
    fn fetch(
        &self,
        request_id: &str,
    ) -> Pin<Box<dyn Future<Output = Result<KvBlob, String>> + Send + '_>>;
    /// Called exactly once for every successful `fetch`.
    fn finished(&self, request_id: &str, outcome: Outcome);
}

#[derive(Debug, thiserror::Error)]
pub enum KvxError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("KV pull took longer than {0:?}")]
    Timeout(std::time::Duration),
    #[error("the KV source has no transfer {request_id}: {message}")]
    NotFound { request_id: String, message: String },
    #[error("KV header mismatch: {field} is {got}, expected {expected}")]
    Mismatch {
        field: &'static str,
        expected: String,
        got: String,
    },
    #[error("the KV stream ended early: {0}")]
    Truncated(String),
    #[error("KV checksum mismatch: got {got:08x}, computed {computed:08x}")]
    Checksum { got: u32, computed: u32 },
    #[error("KV protocol error: {0}")]
    Protocol(String),
    #[error("KV transfer I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("KV RDMA transfer: {0}")]
    Rdma(String),
}

impl KvxError {
    /// A short label for metrics.
    /// Every value [`KvxError::reason`] can take (metric labels are set up from it).
    pub const REASONS: &'static [&'static str] = &[
        "connect",
        "timeout",
        "not_found",
        "mismatch",
        "truncated",
        "checksum",
        "protocol",
        "io",
        "rdma",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            KvxError::Connect { .. } => "connect",
            KvxError::Timeout(_) => "timeout",
            KvxError::NotFound { .. } => "not_found",
            KvxError::Mismatch { .. } => "mismatch",
            KvxError::Truncated(_) => "truncated",
            KvxError::Checksum { .. } => "checksum",
            KvxError::Protocol(_) => "protocol",
            KvxError::Io(_) => "io",
            KvxError::Rdma(_) => "rdma",
        }
    }
}

/// How a puller moves the payload.
#[derive(Debug, Clone, Default)]
pub enum Transport {
    #[default]
    Tcp,
    /// RDMA READs into this node's staging memory (TCP when the server has no RDMA).
    #[cfg(feature = "rdma")]
    Rdma(std::sync::Arc<rdma::RdmaNode>),
}

impl Transport {
    /// `tcp` or `rdma`, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            #[cfg(feature = "rdma")]
            Transport::Rdma(_) => "rdma",
        }
    }
}

/// [`pull`] over `transport`.
pub async fn pull_via(
    transport: &Transport,
    addr: &str,
    request_id: &str,
    expect: &KvExpect,
    timeout: std::time::Duration,
) -> Result<KvBlob, KvxError> {
    match transport {
        Transport::Tcp => pull(addr, request_id, expect, timeout).await,
        #[cfg(feature = "rdma")]
        Transport::Rdma(node) => rdma::pull(node, addr, request_id, expect, timeout).await,
    }
}
