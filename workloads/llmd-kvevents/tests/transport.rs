#![allow(clippy::unwrap_used)]
//! Publisher and subscriber over TCP on 127.0.0.1 (ports picked by the OS: bind to port 0,
//! read the bound endpoint back). PUB/SUB drops what is sent before a subscription reaches
//! the publisher, so tests keep publishing until the subscriber hears something instead of
//! sleeping; every wait has a generous timeout and no test asserts on speed.

use std::time::Duration;

use bytes::Bytes;
use llmd_kvevents::{replay, topic, Publisher, PublisherConfig, Received, SocketMode, Subscriber};
use llmd_protocol::{encode_batch, KvEvent};
use tokio::sync::mpsc;
use tokio::time::timeout;
use zeromq::{PubSocket, Socket, SocketSend, ZmqMessage};

const WAIT: Duration = Duration::from_secs(20);

/// Batch number `n`, recognisable on the other side.
fn batch(n: u64) -> Vec<KvEvent> {
    vec![KvEvent::BlockStored {
        block_hashes: vec![n, n + 1_000_000],
        parent_block_hash: n.checked_sub(1),
        token_ids: (0..32).map(|t| t + n as u32).collect(),
        block_size: 16,
        lora_id: None,
        medium: Some("GPU".into()),
    }]
}

/// Publishes batch after batch (numbered from `first`) until the subscriber receives one;
/// returns it and how many were sent.
async fn publish_until_heard(
    tx: &mpsc::UnboundedSender<Vec<KvEvent>>,
    sub: &mut Subscriber,
    first: u64,
) -> (Received, u64) {
    let mut n = first;
    let received = timeout(WAIT, async {
        loop {
            tx.send(batch(n)).unwrap();
            n += 1;
            if let Ok(r) = timeout(Duration::from_millis(50), sub.recv()).await {
                return r;
            }
        }
    })
    .await
    .expect("the subscriber never heard the publisher");
    (received, n)
}

async fn recv(sub: &mut Subscriber) -> Received {
    timeout(WAIT, sub.recv()).await.expect("no batch arrived")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_in_order_with_topic_and_seq() {
    // llm-d's layout: the cache-manager binds, the worker's PUB connects to it.
    let mut sub = Subscriber::new().await.unwrap();
    let endpoint = sub.bind("tcp://127.0.0.1:0").await.unwrap();
    let topic = topic("127.0.0.1:8000", "smollm2");
    let (tx, rx) = mpsc::unbounded_channel();
    let publisher = Publisher::spawn(
        PublisherConfig::new(&endpoint, SocketMode::Connect, &topic),
        rx,
    )
    .await
    .unwrap();

    let (first, sent) = publish_until_heard(&tx, &mut sub, 0).await;
    assert_eq!(first.topic, topic);
    // Sequence numbers are the batch numbers: both count from 0.
    assert_eq!(first.batch.events, batch(first.seq));
    assert_eq!(first.missed, (first.seq > 0).then_some(0..first.seq));
    assert_eq!(first.batch.data_parallel_rank, Some(0));

    for n in sent..sent + 50 {
        tx.send(batch(n)).unwrap();
    }
    for seq in first.seq + 1..sent + 50 {
        let r = recv(&mut sub).await;
        assert_eq!((r.topic.as_str(), r.seq), (topic.as_str(), seq));
        assert_eq!(r.batch.events, batch(seq));
        assert_eq!(r.missed, None);
        assert!(!r.restarted);
    }
    assert_eq!(sub.stats().malformed + sub.stats().undecodable, 0);

    let stats = timeout(WAIT, publisher.shutdown()).await.unwrap().unwrap();
    assert_eq!(stats.batches, sent + 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_subscriber_detects_the_gap_and_replays_it() {
    // vLLM's layout: the publisher binds, subscribers connect.
    let (tx, rx) = mpsc::unbounded_channel();
    let mut config = PublisherConfig::new("tcp://127.0.0.1:0", SocketMode::Bind, topic("w:1", "m"))
        .with_replay("tcp://127.0.0.1:0");
    config.buffer_steps = 1_000;
    let publisher = Publisher::spawn(config, rx).await.unwrap();
    let pub_endpoint = publisher.endpoint().unwrap().to_owned();
    let replay_endpoint = publisher.replay_endpoint().unwrap().to_owned();

    // Published before anyone listens: lost on PUB/SUB, kept in the replay buffer.
    for n in 0..5 {
        tx.send(batch(n)).unwrap();
    }
    let mut sub = Subscriber::new().await.unwrap();
    sub.connect(&pub_endpoint).await.unwrap();
    let (first, _) = publish_until_heard(&tx, &mut sub, 5).await;
    assert!(
        first.seq >= 5,
        "batches 0..5 were sent before the subscriber existed"
    );
    assert_eq!(first.missed, Some(0..first.seq));
    assert_eq!(sub.stats().gaps, 1);

    let missed = first.missed.clone().unwrap();
    let replayed = replay(&replay_endpoint, missed.start, WAIT).await.unwrap();
    // Everything buffered from the start on, in order; the missed range is covered.
    let seqs: Vec<u64> = replayed.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    assert!(seqs.len() as u64 > first.seq);
    for r in &replayed {
        assert_eq!(r.batch.events, batch(r.seq));
    }
    // A start past the end: just the end marker.
    assert!(replay(&replay_endpoint, u64::MAX - 1, WAIT)
        .await
        .unwrap()
        .is_empty());

    let stats = timeout(WAIT, publisher.shutdown()).await.unwrap().unwrap();
    assert_eq!(stats.replays, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_buffer_keeps_the_latest_batches() {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut config = PublisherConfig::new("tcp://127.0.0.1:0", SocketMode::Bind, topic("w:1", "m"))
        .with_replay("tcp://127.0.0.1:0");
    config.buffer_steps = 3;
    let publisher = Publisher::spawn(config, rx).await.unwrap();
    let replay_endpoint = publisher.replay_endpoint().unwrap().to_owned();
    for n in 0..10 {
        tx.send(batch(n)).unwrap();
    }
    // Batches are numbered asynchronously; poll until the last one is buffered.
    let replayed = timeout(WAIT, async {
        loop {
            let r = replay(&replay_endpoint, 0, WAIT).await.unwrap();
            if r.last().is_some_and(|r| r.seq == 9) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let seqs: Vec<u64> = replayed.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![7, 8, 9]);
    drop(tx);
    // The channel closed: the task ends by itself.
    let stats = timeout(WAIT, publisher.join()).await.unwrap().unwrap();
    assert_eq!(stats.batches, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_skipped() {
    let mut raw = PubSocket::new();
    let endpoint = raw.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let mut sub = Subscriber::new().await.unwrap();
    sub.connect(&endpoint).await.unwrap();

    let topic = Bytes::from_static(b"kv@w:1@m");
    let good_payload = Bytes::from(encode_batch(1.0, &batch(0), None));
    let message = |frames: Vec<Bytes>| ZmqMessage::try_from(frames).unwrap();
    // One round: every kind of bad message, then a good one. ZMQ keeps one peer's order,
    // so once the good one arrives the bad ones before it were seen first.
    let round = |seq: u64| {
        vec![
            vec![topic.clone(), good_payload.clone()],
            vec![
                topic.clone(),
                Bytes::from_static(b"\0\0\0\x01"),
                good_payload.clone(),
            ],
            vec![
                topic.clone(),
                Bytes::copy_from_slice(&seq.to_be_bytes()),
                Bytes::from_static(b"\x93\xc1"),
            ],
            vec![
                Bytes::from_static(b"kv@\xff"),
                Bytes::copy_from_slice(&seq.to_be_bytes()),
                good_payload.clone(),
            ],
            vec![
                topic.clone(),
                Bytes::copy_from_slice(&seq.to_be_bytes()),
                good_payload.clone(),
            ],
        ]
    };
    // Until the subscription is up (PUB drops what it sends before that), rounds are
    // repeated; a round cut short by the join may have lost some bad messages.
    let mut seq = 0u64;
    let first = timeout(WAIT, async {
        loop {
            for m in round(seq) {
                raw.send(message(m)).await.unwrap();
            }
            seq += 1;
            if let Ok(r) = timeout(Duration::from_millis(50), sub.recv()).await {
                return r;
            }
        }
    })
    .await
    .expect("the good message never arrived");
    assert_eq!(first.topic, "kv@w:1@m");
    // Drain good messages of rounds still in flight, then one whole round on the live
    // subscription: its bad messages all arrive before its good one.
    while timeout(Duration::from_millis(200), sub.recv())
        .await
        .is_ok()
    {}
    let before = sub.stats();
    for m in round(seq) {
        raw.send(message(m)).await.unwrap();
    }
    let got = timeout(WAIT, sub.recv())
        .await
        .expect("the good message never arrived");
    assert_eq!(got.topic, "kv@w:1@m");
    assert_eq!(got.batch.events, batch(0));
    let stats = sub.stats();
    assert!(
        stats.malformed - before.malformed >= 3,
        "{before:?} {stats:?}"
    );
    assert!(
        stats.undecodable - before.undecodable >= 1,
        "{before:?} {stats:?}"
    );
    assert_eq!(stats.received - before.received, 1, "{before:?} {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_publisher_comes_back_after_the_subscriber_restarts() {
    let mut sub = Subscriber::new().await.unwrap();
    let endpoint = sub.bind("tcp://127.0.0.1:0").await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut config = PublisherConfig::new(&endpoint, SocketMode::Connect, topic("w:1", "m"));
    config.reconnect_interval = Duration::from_millis(50);
    let publisher = Publisher::spawn(config, rx).await.unwrap();
    let (_, sent) = publish_until_heard(&tx, &mut sub, 0).await;

    // The cache-manager restarts on the same port.
    drop(sub);
    let mut sub = Subscriber::new().await.unwrap();
    timeout(WAIT, async {
        loop {
            match sub.bind(&endpoint).await {
                Ok(_) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("the port never came free");
    let (again, _) = publish_until_heard(&tx, &mut sub, sent).await;
    assert!(again.seq >= sent);
    // New to this subscriber: it reports everything before as missed.
    assert_eq!(again.missed, Some(0..again.seq));
    timeout(WAIT, publisher.shutdown()).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt_with_the_channel_still_open() {
    let (tx, rx) = mpsc::unbounded_channel();
    // Connect mode towards a port nobody listens on: the publisher keeps retrying.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("tcp://{}", listener.local_addr().unwrap());
    drop(listener);
    let publisher = Publisher::spawn(
        PublisherConfig::new(dead, SocketMode::Connect, topic("w:1", "m")),
        rx,
    )
    .await
    .unwrap();
    tx.send(batch(0)).unwrap();
    let stats = timeout(WAIT, publisher.shutdown()).await.unwrap().unwrap();
    assert_eq!(stats.batches, 1);
    assert_eq!(stats.unsent, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_handle_leaves_the_publisher_running() {
    let mut sub = Subscriber::new().await.unwrap();
    let endpoint = sub.bind("tcp://127.0.0.1:0").await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let publisher = Publisher::spawn(
        PublisherConfig::new(&endpoint, SocketMode::Connect, topic("w:1", "m")),
        rx,
    )
    .await
    .unwrap();
    drop(publisher);
    let (first, sent) = publish_until_heard(&tx, &mut sub, 0).await;
    for n in sent..sent + 10 {
        tx.send(batch(n)).unwrap();
    }
    for seq in first.seq + 1..sent + 10 {
        assert_eq!(recv(&mut sub).await.seq, seq);
    }
}
