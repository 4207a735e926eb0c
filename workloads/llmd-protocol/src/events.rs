//! KV cache events, as vLLM names them: what a worker's block pool tells the cluster when
//! blocks become reusable (`BlockStored`), are evicted (`BlockRemoved`) or all dropped.

use serde::{Deserialize, Serialize};

use crate::hashing::BlockHash;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvEvent {
    /// Full blocks, in chain order, now held and reusable. `parent_block_hash` is the hash
    /// of the block before the first one (none for a sequence's first block).
    BlockStored {
        block_hashes: Vec<BlockHash>,
        parent_block_hash: Option<BlockHash>,
        token_ids: Vec<u32>,
        block_size: usize,
        lora_id: Option<i64>,
        medium: Option<String>,
    },
    /// Blocks evicted from the pool.
    BlockRemoved {
        block_hashes: Vec<BlockHash>,
        medium: Option<String>,
    },
    /// The pool was reset; every block of this worker is gone.
    AllBlocksCleared,
}
