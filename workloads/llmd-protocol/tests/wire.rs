#![allow(clippy::unwrap_used)]
//! The KV event wire format against msgspec's own bytes (fixtures made by
//! `fixtures/gen_vllm_events.py`), hand-checked bytes, round trips, and hostile input.

use std::path::{Path, PathBuf};

use llmd_protocol::{decode_batch, encode_batch, EventBatch, EventDecodeError, KvEvent};
use proptest::prelude::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

const TS: f64 = 1757500000.25;
const HASH_A: u64 = 0xDEAD_BEEF_1234_5678;
const HASH_TOP: u64 = u64::MAX;
const HASH_HIGH_BIT: u64 = 0x8000_0000_0000_0001;

fn stored(
    hashes: Vec<u64>,
    parent: Option<u64>,
    tokens: Vec<u32>,
    lora_id: Option<i64>,
    medium: &str,
) -> KvEvent {
    KvEvent::BlockStored {
        block_hashes: hashes,
        parent_block_hash: parent,
        token_ids: tokens,
        block_size: 4,
        lora_id,
        medium: Some(medium.into()),
    }
}

/// The events every `common_batch` fixture carries, as `KvEvent` holds them.
fn common_events() -> Vec<KvEvent> {
    vec![
        stored(
            vec![HASH_A, HASH_TOP],
            None,
            vec![128000, 9125, 271, 0, 1, 127, 128, 65536],
            None,
            "GPU",
        ),
        stored(
            vec![7],
            Some(HASH_TOP),
            vec![100, 101, 102, 103],
            Some(3),
            "CPU",
        ),
        KvEvent::BlockRemoved {
            block_hashes: vec![HASH_HIGH_BIT, 7],
            medium: Some("GPU".into()),
        },
        KvEvent::AllBlocksCleared,
    ]
}

fn common_batch(rank: Option<i64>) -> EventBatch {
    EventBatch {
        ts: TS,
        events: common_events(),
        data_parallel_rank: rank,
        unknown_events: 0,
    }
}

#[test]
fn decodes_msgspec_fixtures_of_every_vllm_layout() {
    for name in [
        "vllm_v0_11_array.msgpack",
        "vllm_array_last.msgpack",
        "vllm_main_map_events.msgpack",
        "vllm_map_batch.msgpack",
    ] {
        let batch = decode_batch(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(batch, common_batch(Some(0)), "{name}");
    }
}

#[test]
fn bytes_hashes_map_to_their_low_64_bits_big_endian() {
    let batch = decode_batch(&fixture("vllm_bytes_hashes.msgpack")).unwrap();
    // bytes(range(32)) -> its last 8 bytes 0x18..0x1f; b"\xab\xab\xab" is left-padded;
    // bytes(range(100, 132)) -> 124..131. This is vLLM's own bytes -> int conversion.
    assert_eq!(
        batch.events,
        vec![
            KvEvent::BlockStored {
                block_hashes: vec![0x1819_1a1b_1c1d_1e1f, 0x00ab_abab],
                parent_block_hash: Some(0x7c7d_7e7f_8081_8283),
                token_ids: vec![128000, 9125, 271, 0, 1, 127, 128, 65536],
                block_size: 4,
                lora_id: None,
                medium: Some("GPU".into()),
            },
            KvEvent::BlockRemoved {
                block_hashes: vec![0x1819_1a1b_1c1d_1e1f],
                medium: Some("GPU".into()),
            },
        ]
    );
}

#[test]
fn encodes_exactly_what_msgspec_encodes() {
    let ours = encode_batch(TS, &common_events(), None);
    assert_eq!(ours, fixture("llmd_layout.msgpack"));
}

#[test]
fn encodes_a_small_batch_to_hand_checked_bytes() {
    let events = [
        KvEvent::AllBlocksCleared,
        KvEvent::BlockRemoved {
            block_hashes: vec![1, 300],
            medium: None,
        },
        KvEvent::BlockStored {
            block_hashes: vec![u64::MAX],
            parent_block_hash: None,
            token_ids: vec![5],
            block_size: 1,
            lora_id: Some(-1),
            medium: Some("GPU".into()),
        },
    ];
    let mut want = vec![0x93]; // batch: array of 3
    want.extend([0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]); // ts 1.5 as float64
    want.push(0x93); // 3 events
    want.push(0x91); // ["AllBlocksCleared"]
    want.push(0xb0); // fixstr of 16
    want.extend(b"AllBlocksCleared");
    want.push(0x93); // ["BlockRemoved", [1, 300], nil]
    want.push(0xac); // fixstr of 12
    want.extend(b"BlockRemoved");
    want.extend([0x92, 0x01, 0xcd, 0x01, 0x2c, 0xc0]); // [1, uint16 300], nil
    want.push(0x98); // BlockStored: 8 positions
    want.push(0xab); // fixstr of 11
    want.extend(b"BlockStored");
    want.extend([0x91, 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]); // [uint64 max]
    want.push(0xc0); // parent: nil
    want.extend([0x91, 0x05]); // tokens [5]
    want.push(0x01); // block_size 1
    want.push(0xff); // lora_id -1: negative fixint
    want.extend([0xa3, b'G', b'P', b'U']); // medium
    want.push(0xc0); // lora_name: nil
    want.push(0x07); // data_parallel_rank 7
    assert_eq!(encode_batch(1.5, &events, Some(7)), want);
}

#[test]
fn accepts_older_and_newer_shapes() {
    // A BlockStored ending at block_size (before lora_id/medium existed), a BlockRemoved
    // without medium, positions appended by a newer producer, an unknown event kind, a
    // negative-int hash and a batch without the rank.
    let bytes = [
        &[0x92, 0xcb][..],
        &1.0f64.to_be_bytes(),
        &[0x94, 0x95, 0xab],
        b"BlockStored",
        &[0x91, 0xff, 0xc0, 0x91, 0x07, 0x01],
        &[0x92, 0xac],
        b"BlockRemoved",
        &[0x91, 0x02],
        &[0x96, 0xac],
        b"BlockRemoved",
        &[
            0x91, 0x03, 0xc0, 0x00, 0x92, 0x01, 0x02, 0x81, 0xa1, b'k', 0xc3,
        ],
        &[0x92, 0xa8],
        b"NewEvent",
        &[0x2a],
    ]
    .concat();
    let batch = decode_batch(&bytes).unwrap();
    assert_eq!(batch.data_parallel_rank, None);
    assert_eq!(batch.unknown_events, 1);
    assert_eq!(
        batch.events,
        vec![
            KvEvent::BlockStored {
                block_hashes: vec![u64::MAX],
                parent_block_hash: None,
                token_ids: vec![7],
                block_size: 1,
                lora_id: None,
                medium: None,
            },
            KvEvent::BlockRemoved {
                block_hashes: vec![2],
                medium: None,
            },
            KvEvent::BlockRemoved {
                block_hashes: vec![3],
                medium: None,
            },
        ]
    );
}

#[test]
fn rejects_malformed_payloads_with_an_error() {
    let good = encode_batch(2.0, &common_events(), Some(1));
    // Every strict prefix is truncated.
    for cut in 0..good.len() {
        assert!(decode_batch(&good[..cut]).is_err(), "prefix of {cut} bytes");
    }
    let mut long = good.clone();
    long.push(0xc0);
    assert_eq!(decode_batch(&long), Err(EventDecodeError::TrailingBytes(1)));
    // An array claiming 2^32 - 1 events: refused before allocating anything.
    let mut huge = vec![0x92, 0xcb];
    huge.extend(0f64.to_be_bytes());
    huge.extend([0xdd, 0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(
        decode_batch(&huge),
        Err(EventDecodeError::Truncated { .. })
    ));
    // A BlockStored missing its token ids.
    let mut short = vec![0x92, 0xcb];
    short.extend(0f64.to_be_bytes());
    short.extend([0x91, 0x93, 0xab]);
    short.extend(b"BlockStored");
    short.extend([0x90, 0xc0]);
    assert_eq!(
        decode_batch(&short),
        Err(EventDecodeError::MissingField("token_ids"))
    );
    // A token id that is not a u32.
    let mut neg = vec![0x92, 0xcb];
    neg.extend(0f64.to_be_bytes());
    neg.extend([0x91, 0x95, 0xab]);
    neg.extend(b"BlockStored");
    neg.extend([0x90, 0xc0, 0x91, 0xff, 0x01]);
    assert!(matches!(
        decode_batch(&neg),
        Err(EventDecodeError::OutOfRange {
            field: "token_ids",
            ..
        })
    ));
    // Deep nesting in a skipped position.
    let mut deep = vec![0x92, 0xcb];
    deep.extend(0f64.to_be_bytes());
    deep.extend([0x91, 0x92, 0xb0]);
    deep.extend(b"AllBlocksCleared");
    deep.extend(std::iter::repeat_n(0x91, 10_000));
    deep.push(0xc0);
    assert!(matches!(
        decode_batch(&deep),
        Err(EventDecodeError::TooDeep { .. })
    ));
}

/// If msgspec is importable here, the generator must still produce the checked-in bytes
/// (catches an edited script or a msgspec that encodes differently).
#[test]
fn fixtures_match_a_fresh_msgspec_run() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import msgspec"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        println!("skipped: python3 with msgspec is not available (pip install msgspec)");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("python3")
        .arg(fixtures().join("gen_vllm_events.py"))
        .arg(out.path())
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    for entry in std::fs::read_dir(out.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        assert_eq!(
            std::fs::read(entry.path()).unwrap(),
            fixture(&name),
            "{name} differs from a fresh msgspec run"
        );
    }
}

fn arb_event() -> impl Strategy<Value = KvEvent> {
    let medium = proptest::option::of("[A-Za-z]{0,40}");
    prop_oneof![
        (
            proptest::collection::vec(any::<u64>(), 0..8),
            proptest::option::of(any::<u64>()),
            proptest::collection::vec(any::<u32>(), 0..40),
            0usize..100_000,
            proptest::option::of(any::<i64>()),
            medium.clone(),
        )
            .prop_map(|(h, p, t, bs, lora, m)| KvEvent::BlockStored {
                block_hashes: h,
                parent_block_hash: p,
                token_ids: t,
                block_size: bs,
                lora_id: lora,
                medium: m,
            }),
        (proptest::collection::vec(any::<u64>(), 0..8), medium).prop_map(|(h, m)| {
            KvEvent::BlockRemoved {
                block_hashes: h,
                medium: m,
            }
        }),
        Just(KvEvent::AllBlocksCleared),
    ]
}

proptest! {
    #[test]
    fn round_trips(
        ts in -1e12f64..1e12,
        events in proptest::collection::vec(arb_event(), 0..12),
        rank in proptest::option::of(any::<i64>()),
    ) {
        let batch = decode_batch(&encode_batch(ts, &events, rank)).unwrap();
        prop_assert_eq!(batch, EventBatch { ts, events, data_parallel_rank: rank, unknown_events: 0 });
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_batch(&bytes);
    }

    #[test]
    fn never_panics_on_corrupted_batches(
        events in proptest::collection::vec(arb_event(), 1..6),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode_batch(1.0, &events, Some(0));
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let keep = cut.index(bytes.len() + 1);
        let _ = decode_batch(&bytes[..keep]);
        let _ = decode_batch(&bytes);
    }
}
