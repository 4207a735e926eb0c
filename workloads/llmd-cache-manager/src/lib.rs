//! The cache-manager: which worker holds which KV blocks, keyed so that the scheduler can
//! ask "who already has most of this prompt?".
//!
//! This crate holds the index ([`Index`]): applied KV events in, scores out. The event
//! ingest (ZMQ), the HTTP API and the optional Redis backend build on it.

pub mod bench;
pub mod index;
pub mod redis_index;
pub mod service;

pub use index::{Index, IndexStats, Medium, Scored, WorkerScore};
