//! The config file is re-read when it changes: a worker taken out of it leaves the index,
//! the others keep their blocks; a broken file keeps the running configuration.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use llmd_cache_manager::service::{start_with_index, ServiceConfig};
use llmd_cache_manager::Index;
use llmd_protocol::KvEvent;

fn stored(first: u32) -> KvEvent {
    KvEvent::BlockStored {
        block_hashes: vec![u64::from(first) + 1],
        parent_block_hash: None,
        token_ids: (first..first + 4).collect(),
        block_size: 4,
        lora_id: None,
        medium: None,
    }
}

async fn workers(url: &str) -> Vec<(String, u64)> {
    let v: serde_json::Value = reqwest::get(format!("{url}/v1/workers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut w: Vec<(String, u64)> = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["worker"].as_str().unwrap().to_string(),
                w["blocks"].as_u64().unwrap(),
            )
        })
        .collect();
    w.sort();
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_drops_workers_taken_out_of_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("cm.yaml");
    std::fs::write(&conf, "workers:\n  - id: a:8000\n  - id: b:8000\n").unwrap();
    let mut index = Index::new(100);
    index.apply("a:8000", "m", &stored(0));
    index.apply("b:8000", "m", &stored(100));
    let mut cfg = ServiceConfig::new("127.0.0.1", 0);
    cfg.config_file = Some(conf.clone());
    let cm = start_with_index(cfg, index, std::future::pending())
        .await
        .unwrap();
    let url = format!("http://{}", cm.http_addr);
    assert_eq!(
        workers(&url).await,
        vec![("a:8000".into(), 1), ("b:8000".into(), 1)]
    );
    // A broken file changes nothing.
    tokio::time::sleep(Duration::from_millis(1100)).await; // a distinct modification time
    std::fs::write(&conf, "workers: [oops").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(workers(&url).await.len(), 2);
    // Taking b out drops it; a keeps its blocks.
    std::fs::write(&conf, "workers:\n  - id: a:8000\n").unwrap();
    let mut last = Vec::new();
    for _ in 0..50 {
        last = workers(&url).await;
        if last == vec![("a:8000".to_string(), 1)] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("b was not dropped: {last:?}");
}
