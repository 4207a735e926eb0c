//! The cache-manager's score API (`POST /v1/score`), one definition for the cache-manager
//! that answers it and the schedulers that ask.

use serde::{Deserialize, Serialize};

/// Which workers hold how much of a prompt: give its `token_ids` (the cache-manager hashes
/// them) or its `block_hashes` (llmd-protocol's keys, rooted in `model`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_hashes: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<usize>,
    /// Only these workers (ids `host:port`); all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Vec<String>>,
}

/// One worker's standing for a prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerScore {
    pub worker: String,
    /// Consecutive leading blocks of the prompt the worker holds.
    pub blocks: usize,
    /// Those blocks weighted by medium, over the prompt's blocks (0 to 1).
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreResponse {
    pub model: String,
    pub block_size: usize,
    pub total_blocks: usize,
    /// Sorted by blocks, then score, descending; workers holding nothing are absent.
    pub workers: Vec<WorkerScore>,
}
