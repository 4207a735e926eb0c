//! A batch lost in transit: the service sees the gap in the worker's sequence numbers,
//! fetches the batch from the worker's replay socket, and the index comes out right.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use llmd_cache_manager::service::{start, ServiceConfig};
use llmd_kvevents::{topic, Publisher, PublisherConfig, SocketMode};
use llmd_protocol::{encode_batch, KvEvent};
use zeromq::{PubSocket, Socket, SocketSend, ZmqMessage};

const BS: usize = 4;

fn stored(engine: u64, parent: Option<u64>, first_token: u32) -> Vec<KvEvent> {
    vec![KvEvent::BlockStored {
        block_hashes: vec![engine],
        parent_block_hash: parent,
        token_ids: (first_token..first_token + BS as u32).collect(),
        block_size: BS,
        lora_id: None,
        medium: None,
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_batch_is_replayed() {
    let batches = [
        stored(11, None, 0),
        stored(22, Some(11), 4),
        stored(33, Some(22), 8),
    ];
    let worker = "10.9.8.7:8000";
    let t = topic(worker, "m");
    // The worker's replay socket, holding all three batches (its PUB side is unread).
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let cfg = PublisherConfig::new("tcp://127.0.0.1:0", SocketMode::Bind, t.clone())
        .with_replay("tcp://127.0.0.1:0");
    let publisher = Publisher::spawn(cfg, rx).await.unwrap();
    for b in &batches {
        tx.send(b.clone()).unwrap();
    }
    let replay = publisher.replay_endpoint().unwrap().to_string();
    // The cache-manager, told where that worker's replay socket is.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("cm.yaml");
    std::fs::write(
        &conf,
        format!("workers:\n  - id: {worker}\n    replay: {replay}\n"),
    )
    .unwrap();
    let mut sc = ServiceConfig::new("127.0.0.1", 0);
    sc.events_bind = Some("tcp://127.0.0.1:0".into());
    sc.config_file = Some(conf);
    let cm = start(sc, std::future::pending()).await.unwrap();
    // Our own PUB delivers batches 0 and 2 only: batch 1 is "lost in transit".
    let mut pubs = PubSocket::new();
    pubs.connect(cm.events_endpoint.as_deref().unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // the subscription reaches us
    for seq in [0u64, 2] {
        let mut m = ZmqMessage::from(Bytes::from(t.clone().into_bytes()));
        m.push_back(Bytes::copy_from_slice(&seq.to_be_bytes()));
        m.push_back(Bytes::from(encode_batch(
            1.0,
            &batches[seq as usize],
            Some(0),
        )));
        pubs.send(m).await.unwrap();
    }
    let http = reqwest::Client::new();
    let url = format!("http://{}", cm.http_addr);
    let mut last = String::new();
    for _ in 0..100 {
        let v: serde_json::Value = http
            .post(format!("{url}/v1/score"))
            .json(&serde_json::json!({"model": "m", "token_ids": (0..12).collect::<Vec<u32>>(), "block_size": BS}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["workers"][0]["blocks"] == 3 {
            let m = http
                .get(format!("{url}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(m.contains("llmd_cache_manager_gaps_total 1"), "{m}");
            assert!(m.contains("llmd_cache_manager_replays_total 1"), "{m}");
            assert!(m.contains("llmd_cache_manager_orphaned_blocks 0"), "{m}");
            return;
        }
        last = v.to_string();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the index never held all three blocks: {last}");
}
