//! Batches as vLLM's own msgspec structs encode them (fixtures made by msgspec, every layout
//! vLLM has used) index to our keys, step by step.
#![allow(clippy::unwrap_used)]

use llmd_cache_manager::Index;
use llmd_protocol::{block_hash, block_hashes, decode_batch, root_hash};

const FIXTURES: &[(&str, &[u8])] = &[
    (
        "v0.11 arrays",
        include_bytes!("../../llmd-protocol/tests/fixtures/vllm_v0_11_array.msgpack"),
    ),
    (
        "last array layout",
        include_bytes!("../../llmd-protocol/tests/fixtures/vllm_array_last.msgpack"),
    ),
    (
        "map events",
        include_bytes!("../../llmd-protocol/tests/fixtures/vllm_main_map_events.msgpack"),
    ),
    (
        "map batch",
        include_bytes!("../../llmd-protocol/tests/fixtures/vllm_map_batch.msgpack"),
    ),
];

const TOKENS_A: [u32; 8] = [128000, 9125, 271, 0, 1, 127, 128, 65536];
const TOKENS_B: [u32; 4] = [100, 101, 102, 103];

#[test]
fn vllm_batches_index_to_our_keys() {
    let model = "meta-llama/Llama-3.1-8B-Instruct";
    let a = block_hashes(root_hash(model, None), &TOKENS_A, 4);
    let b = block_hash(a[1], &TOKENS_B);
    let prompt: Vec<u32> = TOKENS_A.iter().chain(&TOKENS_B).copied().collect();
    for (name, bytes) in FIXTURES {
        let batch = decode_batch(bytes).unwrap();
        assert_eq!(batch.events.len(), 4, "{name}");
        let mut index = Index::new(1000);
        let w = "10.1.2.3:8000";
        // BlockStored of A's two blocks (engine hashes vLLM's, not ours), on the GPU.
        index.apply(w, model, &batch.events[0]);
        assert_eq!(
            index.worker_keys(w),
            {
                let mut k = a.clone();
                k.sort_unstable();
                k
            },
            "{name}"
        );
        // A child block whose parent is named by its engine hash, in host memory.
        index.apply(w, model, &batch.events[1]);
        let s = index.score_tokens(model, &prompt, Some(4), None);
        assert_eq!((s.total_blocks, s.workers[0].blocks), (3, 3), "{name}");
        assert!(
            (s.workers[0].score - 2.8 / 3.0).abs() < 1e-9,
            "{name}: {s:?}"
        );
        assert!(index.worker_keys(w).contains(&b));
        // BlockRemoved of an unknown hash and of the child: A's blocks remain.
        index.apply(w, model, &batch.events[2]);
        assert_eq!(index.worker_blocks(w), 2, "{name}");
        assert_eq!(
            index.score_tokens(model, &prompt, Some(4), None).workers[0].blocks,
            2
        );
        index.apply(w, model, &batch.events[3]);
        assert!(index.is_empty(), "{name}: AllBlocksCleared");
    }
}
