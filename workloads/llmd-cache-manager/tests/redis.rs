//! The Redis backend against a real `redis-server` (Debian's; `tests/run` installs it) that
//! the test starts on 127.0.0.1 and stops: the same events give the same index and scores
//! as the in-memory index, and a second connection (another cache-manager unit) sees it.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use llmd_cache_manager::redis_index::RedisIndex;
use llmd_cache_manager::Index;
use llmd_protocol::{block_hashes, root_hash, KvEvent};

/// The server process and its (kept until drop) working directory.
struct Server(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> Option<(Server, String)> {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: redis-server is not installed (tests/run installs Debian's)");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--dir", dir.path().to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((Server(child, dir), format!("redis://127.0.0.1:{port}/")))
}

const BS: usize = 4;

fn seq(i: u32) -> Vec<u32> {
    let mut t: Vec<u32> = (0..12).map(|j| (i % 3) * 100 + j).collect();
    t.extend((0..20).map(|j| i * 1000 + j));
    t
}

fn engine(worker: usize, key: u64) -> u64 {
    key.rotate_left(13) ^ (worker as u64 + 1)
}

/// A deterministic mix of stores, removals and clears from three workers.
fn events() -> Vec<(String, KvEvent)> {
    let root = root_hash("m", None);
    let mut held: Vec<Vec<u64>> = vec![Vec::new(); 3];
    let mut out = Vec::new();
    let mut x = 12345u64;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let w = (x % 3) as usize;
        let name = format!("10.0.0.{w}:8000");
        match (x >> 8) % 10 {
            0..=5 => {
                let s = seq(((x >> 16) % 8) as u32);
                let blocks = 1 + ((x >> 24) % 8) as usize;
                let keys = block_hashes(root, &s[..blocks * BS], BS);
                let have = keys.iter().take_while(|k| held[w].contains(k)).count();
                if have < keys.len() {
                    out.push((
                        name,
                        KvEvent::BlockStored {
                            block_hashes: keys[have..].iter().map(|&k| engine(w, k)).collect(),
                            parent_block_hash: have.checked_sub(1).map(|i| engine(w, keys[i])),
                            token_ids: s[have * BS..blocks * BS].to_vec(),
                            block_size: BS,
                            lora_id: None,
                            medium: Some(if x.is_multiple_of(7) { "CPU" } else { "GPU" }.into()),
                        },
                    ));
                    held[w].extend(&keys[have..]);
                }
            }
            6..=8 if !held[w].is_empty() => {
                let i = ((x >> 32) as usize) % held[w].len();
                let k = held[w].swap_remove(i);
                out.push((
                    name,
                    KvEvent::BlockRemoved {
                        block_hashes: vec![engine(w, k)],
                        medium: None,
                    },
                ));
            }
            9 => {
                held[w].clear();
                out.push((name, KvEvent::AllBlocksCleared));
            }
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backend_matches_the_in_memory_index() {
    let Some((_server, url)) = redis_server() else {
        return;
    };
    let redis = RedisIndex::connect(&url, 1 << 20).await.unwrap();
    let mut mem = Index::new(1 << 20);
    for (w, ev) in events() {
        mem.apply(&w, "m", &ev);
        redis.apply(&w, "m", &ev).await.unwrap();
    }
    // Another unit sharing the same Redis sees the same index.
    let other = RedisIndex::connect(&url, 1 << 20).await.unwrap();
    let (n, _, orphaned) = other.summary().await.unwrap();
    assert_eq!(n, mem.len());
    assert_eq!(orphaned, mem.stats().orphaned);
    let mut workers = other.workers().await.unwrap();
    workers.sort();
    let mut want = mem.workers();
    want.sort();
    assert_eq!(workers, want);
    assert_eq!(other.block_size("m").await.unwrap(), Some(BS));
    for i in 0..8 {
        let keys = block_hashes(root_hash("m", None), &seq(i), BS);
        let a = mem.score_keys("m", &keys, BS, None);
        let b = other.score_keys("m", &keys, BS, None).await.unwrap();
        assert_eq!(a, b, "sequence {i}");
    }
    // The service over this Redis answers scores as the in-memory index does.
    let mut cfg = llmd_cache_manager::service::ServiceConfig::new("127.0.0.1", 0);
    cfg.index_url = Some(url.clone());
    let svc = llmd_cache_manager::service::start(cfg, std::future::pending())
        .await
        .unwrap();
    let keys = block_hashes(root_hash("m", None), &seq(0), BS);
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/v1/score", svc.http_addr))
        .json(&serde_json::json!({"model": "m", "block_hashes": keys}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let want = mem.score_keys("m", &keys, BS, None);
    assert_eq!(v["total_blocks"], want.total_blocks);
    assert_eq!(v["block_size"], BS);
    for (got, w) in v["workers"].as_array().unwrap().iter().zip(&want.workers) {
        assert_eq!(got["worker"], w.worker.as_str());
        assert_eq!(got["blocks"], w.blocks);
    }
    // Bounded like the in-memory index: the oldest keys go.
    let small = RedisIndex::connect(&url, 5).await.unwrap();
    small
        .apply("10.0.0.9:8000", "m", &KvEvent::AllBlocksCleared)
        .await
        .unwrap();
    let s = seq(7);
    let keys = block_hashes(root_hash("m", None), &s, BS);
    small
        .apply(
            "10.0.0.9:8000",
            "m",
            &KvEvent::BlockStored {
                block_hashes: keys.iter().map(|&k| engine(9, k)).collect(),
                parent_block_hash: None,
                token_ids: s.clone(),
                block_size: BS,
                lora_id: None,
                medium: None,
            },
        )
        .await
        .unwrap();
    let (n, evicted, _) = small.summary().await.unwrap();
    assert_eq!(n, 5);
    assert!(evicted > 0);
    // Removing a worker forgets it.
    other.remove_worker("10.0.0.1:8000").await.unwrap();
    assert!(other
        .workers()
        .await
        .unwrap()
        .iter()
        .all(|w| w.0 != "10.0.0.1:8000"));
}
