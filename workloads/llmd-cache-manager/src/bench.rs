//! `llmd bench cache-manager`: how fast the index ingests block events, and how long a
//! score takes for a long prompt over many workers, in-process and over HTTP on loopback.

use std::time::{Duration, Instant};

use llmd_protocol::{block_hashes, root_hash, KvEvent};

use crate::service::{start_with_index, ServiceConfig, ServiceError};
use crate::Index;

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub workers: usize,
    pub indexed_blocks: usize,
    pub prompt_tokens: usize,
    pub ingest_block_events_per_s: f64,
    /// Token ids in (hashing them included: ~35 µs of FNV-1a for 8k tokens).
    pub score_p50_us: f64,
    pub score_p99_us: f64,
    /// Block hashes in (what a scheduler that hashes prompts itself sends).
    pub score_keys_p50_us: f64,
    pub score_keys_p99_us: f64,
    pub http_score_p50_us: f64,
    pub http_score_p99_us: f64,
}

const MODEL: &str = "bench-model";
const BS: usize = 16;

/// Deterministic token ids for sequence `s` (distinct sequences share nothing).
fn seq_tokens(s: u64, n: usize) -> Vec<u32> {
    let mut x = s.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 49_152) as u32
        })
        .collect()
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

/// Builds an index of `workers` × `blocks_per_worker` blocks (events of 16 blocks, as an
/// engine step emits them), then times scores of a `prompt_tokens` prompt that worker `w`
/// holds the first `w * k` blocks of.
pub async fn run(
    workers: usize,
    blocks_per_worker: usize,
    prompt_tokens: usize,
    iters: usize,
) -> Result<BenchResult, ServiceError> {
    let prompt = seq_tokens(u64::MAX, prompt_tokens);
    let prompt_blocks = prompt_tokens / BS;
    // Events per worker: a prefix of the prompt (deeper for higher-numbered workers), then
    // its own sequences until it holds `blocks_per_worker` blocks.
    let mut events: Vec<(String, KvEvent)> = Vec::new();
    for w in 0..workers {
        let name = format!("10.0.{}.{}:8000", w / 256, w % 256);
        let held = (w * prompt_blocks / workers.max(1)).min(blocks_per_worker);
        let mut seqs = vec![prompt[..held * BS].to_vec()];
        let mut left = blocks_per_worker - held;
        let mut s = (w as u64) << 32;
        while left > 0 {
            let n = left.min(512);
            seqs.push(seq_tokens(s, n * BS));
            s += 1;
            left -= n;
        }
        for toks in seqs {
            let keys = block_hashes(root_hash(MODEL, None), &toks, BS);
            // Engine hashes of this worker: anything but our keys.
            let engine: Vec<u64> = keys.iter().map(|k| k.rotate_left(17) ^ w as u64).collect();
            for (i, chunk) in engine.chunks(16).enumerate() {
                let first = i * 16;
                events.push((
                    name.clone(),
                    KvEvent::BlockStored {
                        block_hashes: chunk.to_vec(),
                        parent_block_hash: first.checked_sub(1).map(|p| engine[p]),
                        token_ids: toks[first * BS..(first + chunk.len()) * BS].to_vec(),
                        block_size: BS,
                        lora_id: None,
                        medium: None,
                    },
                ));
            }
        }
    }
    let total: usize = events
        .iter()
        .map(|(_, e)| match e {
            KvEvent::BlockStored { block_hashes, .. } => block_hashes.len(),
            _ => 0,
        })
        .sum();
    let mut index = Index::new(total + 1);
    let t = Instant::now();
    for (w, e) in &events {
        index.apply(w, MODEL, e);
    }
    let ingest = total as f64 / t.elapsed().as_secs_f64();
    drop(events);
    let mut lat = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let s = index.score_tokens(MODEL, &prompt, Some(BS), None);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(s);
    }
    let keys = block_hashes(root_hash(MODEL, None), &prompt, BS);
    let mut klat = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let s = index.score_keys(MODEL, &keys, BS, None);
        klat.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(s);
    }
    let indexed = index.len();
    let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
    // The same over HTTP: the service on 127.0.0.1 with this index.
    let mut cfg = ServiceConfig::new("127.0.0.1", 0);
    cfg.max_blocks = total + 1;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let svc = start_with_index(cfg, index, async {
        let _ = stop_rx.await;
    })
    .await?;
    let body = serde_json::to_vec(&serde_json::json!({"model": MODEL, "token_ids": prompt}))
        .map_err(|e| ServiceError::Config(e.to_string()))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| ServiceError::Config(e.to_string()))?;
    let url = format!("http://{}/v1/score", svc.http_addr);
    let mut hl = Vec::with_capacity(iters);
    for i in 0..iters + 10 {
        let t = Instant::now();
        let r = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .map_err(|e| ServiceError::Config(e.to_string()))?;
        let bytes = r
            .bytes()
            .await
            .map_err(|e| ServiceError::Config(e.to_string()))?;
        if i >= 10 {
            hl.push(t.elapsed().as_secs_f64() * 1e6);
        }
        std::hint::black_box(bytes);
    }
    let _ = stop_tx.send(());
    Ok(BenchResult {
        workers,
        indexed_blocks: indexed,
        prompt_tokens,
        ingest_block_events_per_s: ingest,
        score_p50_us: p50,
        score_p99_us: p99,
        score_keys_p50_us: percentile(&mut klat, 0.5),
        score_keys_p99_us: percentile(&mut klat, 0.99),
        http_score_p50_us: percentile(&mut hl, 0.5),
        http_score_p99_us: percentile(&mut hl, 0.99),
    })
}
