//! The llmd inference engine: llama-family decoders on candle over a paged KV block pool,
//! with the tokenizer and sampling around them.

pub mod backend;
pub mod block_pool;
pub mod config;
pub mod device;
pub mod engine;
pub mod error;
pub mod kv;
pub mod model;
pub mod ops;
pub mod sampling;
pub mod scheduler;
pub mod serving;
pub mod sim;
mod simd;

pub use backend::Backend;
pub use config::{Architecture, ModelConfig};
pub use engine::{
    load_gguf, load_gguf_with, load_model, load_model_with, model_fingerprint, Engine,
    EngineOptions, FinishReason, Generated, SeqBlocks,
};
pub use error::{EngineError, Result};
pub use kv::{BlockAllocator, KvCache, KvCacheSize, KvLayout};
pub use model::{BatchSeq, LoadOptions, Model};
pub use sampling::{Sampler, SamplingParams};
pub use sim::{load_sim, SimCost, SimModel};
