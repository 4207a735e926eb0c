//! The index against a simple reference model, over random interleavings of events from
//! several workers whose engine hashes differ from our keys (as vLLM's do).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};

use llmd_cache_manager::Index;
use llmd_protocol::{block_hashes, root_hash, KvEvent};
use proptest::prelude::*;

const BS: usize = 4;
const MODEL: &str = "m";

/// Base sequences with shared prefixes: sequence i is `i % 3` then its own tail.
fn sequences() -> Vec<Vec<u32>> {
    (0..8u32)
        .map(|i| {
            let mut t: Vec<u32> = (0..12).map(|j| (i % 3) * 100 + j).collect();
            t.extend((0..20).map(|j| i * 1000 + j));
            t
        })
        .collect()
}

/// A worker's engine hash for one of our keys: some other function, per worker.
fn engine_hash(worker: usize, key: u64) -> u64 {
    let mut z = key ^ (worker as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^ (z >> 31)
}

#[derive(Debug, Clone)]
enum Op {
    Store {
        worker: usize,
        seq: usize,
        blocks: usize,
    },
    Remove {
        worker: usize,
        pick: usize,
    },
    Clear {
        worker: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, 0..8usize, 1..9usize).prop_map(|(worker, seq, blocks)| Op::Store { worker, seq, blocks }),
        3 => (0..3usize, any::<usize>()).prop_map(|(worker, pick)| Op::Remove { worker, pick }),
        1 => (0..3usize).prop_map(|worker| Op::Clear { worker }),
    ]
}

fn name(w: usize) -> String {
    format!("10.0.0.{w}:8000")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn index_matches_a_reference_model(ops in proptest::collection::vec(op(), 1..80)) {
        let seqs = sequences();
        let root = root_hash(MODEL, None);
        let mut index = Index::new(1 << 20);
        // Reference: per worker, the set of our keys it holds.
        let mut held: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); 3];
        for op in &ops {
            match *op {
                Op::Store { worker, seq, blocks } => {
                    let keys = block_hashes(root, &seqs[seq][..blocks * BS], BS);
                    // The engine stores what follows the longest prefix it already holds.
                    let have = keys.iter().take_while(|k| held[worker].contains(k)).count();
                    if have == keys.len() {
                        continue;
                    }
                    let ev = KvEvent::BlockStored {
                        block_hashes: keys[have..].iter().map(|&k| engine_hash(worker, k)).collect(),
                        parent_block_hash: have.checked_sub(1).map(|i| engine_hash(worker, keys[i])),
                        token_ids: seqs[seq][have * BS..blocks * BS].to_vec(),
                        block_size: BS,
                        lora_id: None,
                        medium: None,
                    };
                    index.apply(&name(worker), MODEL, &ev);
                    held[worker].extend(&keys[have..]);
                }
                Op::Remove { worker, pick } => {
                    if held[worker].is_empty() {
                        continue;
                    }
                    let key = *held[worker].iter().nth(pick % held[worker].len()).unwrap();
                    held[worker].remove(&key);
                    let ev = KvEvent::BlockRemoved { block_hashes: vec![engine_hash(worker, key)], medium: None };
                    index.apply(&name(worker), MODEL, &ev);
                }
                Op::Clear { worker } => {
                    held[worker].clear();
                    index.apply(&name(worker), MODEL, &KvEvent::AllBlocksCleared);
                }
            }
        }
        for (w, want) in held.iter().enumerate() {
            prop_assert_eq!(index.worker_keys(&name(w)), want.iter().copied().collect::<Vec<_>>());
        }
        let all: BTreeSet<u64> = held.iter().flatten().copied().collect();
        prop_assert_eq!(index.len(), all.len());
        // Scores: each worker's run of leading blocks, for every sequence.
        for seq in &seqs {
            let keys = block_hashes(root, seq, BS);
            let scored = index.score_tokens(MODEL, seq, Some(BS), None);
            prop_assert_eq!(scored.total_blocks, keys.len());
            let got: HashMap<String, usize> = scored.workers.iter().map(|w| (w.worker.clone(), w.blocks)).collect();
            for (w, h) in held.iter().enumerate() {
                let want = keys.iter().take_while(|k| h.contains(k)).count();
                prop_assert_eq!(got.get(&name(w)).copied().unwrap_or(0), want);
            }
            prop_assert!(scored.workers.windows(2).all(|p| p[0].blocks >= p[1].blocks));
        }
    }
}

#[test]
fn lru_bound_and_tier_weights() {
    let seqs = sequences();
    let root = root_hash(MODEL, None);
    let mut index = Index::new(10);
    let store = |index: &mut Index, worker: usize, seq: usize, medium: Option<&str>| {
        let keys = block_hashes(root, &seqs[seq][..8 * BS], BS);
        index.apply(
            &name(worker),
            MODEL,
            &KvEvent::BlockStored {
                block_hashes: keys.iter().map(|&k| engine_hash(worker, k)).collect(),
                parent_block_hash: None,
                token_ids: seqs[seq][..8 * BS].to_vec(),
                block_size: BS,
                lora_id: None,
                medium: medium.map(str::to_string),
            },
        );
    };
    store(&mut index, 0, 0, None);
    store(&mut index, 1, 0, Some("CPU"));
    assert_eq!(index.len(), 8);
    let s = index.score_tokens(MODEL, &seqs[0], Some(BS), None);
    assert_eq!(s.total_blocks, 8);
    assert_eq!(
        (s.workers[0].worker.as_str(), s.workers[0].blocks),
        ("10.0.0.0:8000", 8)
    );
    assert!((s.workers[0].score - 1.0).abs() < 1e-9);
    assert_eq!(s.workers[1].blocks, 8);
    assert!(
        (s.workers[1].score - 0.8).abs() < 1e-9,
        "host-memory blocks weigh 0.8"
    );
    // Sequence 3 shares sequence 0's first three blocks; storing it evicts the oldest keys.
    store(&mut index, 2, 3, None);
    assert!(index.len() <= 10);
    assert_eq!(index.stats().evicted, 3);
    // The least recently stored keys went: sequence 0's blocks 3..6 (blocks 0..3 were just
    // stored again as sequence 3's prefix), so sequence 0's runs now stop at 3 blocks.
    let s = index.score_tokens(MODEL, &seqs[0], Some(BS), None);
    assert!(s.workers.iter().all(|w| w.blocks == 3), "{s:?}");
    let s = index.score_tokens(MODEL, &seqs[3], Some(BS), None);
    assert_eq!(s.workers[0].worker, "10.0.0.2:8000");
    assert_eq!(s.workers[0].blocks, 8);
    // Forgetting a worker drops its blocks.
    index.remove_worker("10.0.0.2:8000");
    assert_eq!(index.worker_blocks("10.0.0.2:8000"), 0);
    let s = index.score_tokens(MODEL, &seqs[3], Some(BS), None);
    assert!(s.workers.iter().all(|w| w.worker != "10.0.0.2:8000"));
    // Unknown parents (missed events) are not indexed under wrong keys.
    index.apply(
        &name(0),
        MODEL,
        &KvEvent::BlockStored {
            block_hashes: vec![42],
            parent_block_hash: Some(4242),
            token_ids: vec![1, 2, 3, 4],
            block_size: BS,
            lora_id: None,
            medium: None,
        },
    );
    assert_eq!(index.stats().orphaned, 1);
    // Another model's prompt scores nothing here.
    let s = index.score_tokens("other", &seqs[0], Some(BS), None);
    assert!(s.workers.is_empty());
}
