//! Contracts every llmd component shares: how KV blocks are hashed (one function, used by
//! workers, the cache-manager, the scheduler and tests) and the KV events workers publish.

pub mod events;
pub mod hashing;
mod msgpack;
pub mod openai;
pub mod score;

pub use events::{decode_batch, encode_batch, EventBatch, EventDecodeError, KvEvent};
pub use hashing::{block_hash, block_hashes, root_hash, BlockHash, DEFAULT_BLOCK_SIZE};
