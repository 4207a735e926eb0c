//! The batching engine on a tiny random model (no download): greedy equality across the
//! plain, batched, prefix-cached, chunked, preempted and imported-KV paths; KV events that
//! replay to the cache's contents; cancellation; a prompt too big for the pool.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use candle_core::quantized::GgmlDType;
use candle_core::Device;
use llmd_engine::block_pool::replay_events;
use llmd_engine::scheduler::SchedulerConfig;
use llmd_engine::serving::{EngineHandle, LlmEngine, ServingConfig, StreamItem, SubmitOptions};
use llmd_engine::{Engine, EngineOptions, KvCacheSize, SamplingParams};
use llmd_protocol::KvEvent;
use tokio::sync::mpsc;

const BS: usize = 4;

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_gguf(dir.path(), 21, GgmlDType::Q4_1, "llama");
    Fixture { _dir: dir, path }
}

fn plain(f: &Fixture) -> Engine {
    let (model, tok) = llmd_engine::load_gguf(&f.path, &Device::Cpu).unwrap();
    let opts = EngineOptions {
        block_size: BS,
        kv_cache: Some(KvCacheSize::Blocks(256)),
        ..Default::default()
    };
    Engine::new("tiny".into(), model, tok, &opts).unwrap()
}

fn serving(
    f: &Fixture,
    sched: SchedulerConfig,
    blocks: usize,
) -> (LlmEngine, mpsc::UnboundedReceiver<Vec<KvEvent>>) {
    let (model, tok) = llmd_engine::load_gguf(&f.path, &Device::Cpu).unwrap();
    let mut cfg = ServingConfig::new("tiny", "tiny-fingerprint");
    cfg.scheduler = sched;
    cfg.block_size = BS;
    cfg.kv_cache = KvCacheSize::Blocks(blocks);
    cfg.pin_timeout = Duration::from_millis(300);
    let (tx, rx) = mpsc::unbounded_channel();
    (LlmEngine::start(model, tok, cfg, Some(tx)).unwrap(), rx)
}

/// 16 different prompts, 5 to 40 tokens, some sharing a prefix.
fn prompts() -> Vec<Vec<u32>> {
    let v = common::vocab_size() as u32 - 3;
    (0..16u32)
        .map(|i| {
            let len = 5 + (i as usize * 7) % 36;
            (0..len as u32)
                .map(|j| {
                    if i % 3 == 0 && j < 12 {
                        j * 5 % v
                    } else {
                        (i * 31 + j * 17) % v
                    }
                })
                .collect()
        })
        .collect()
}

fn params(n: usize) -> SamplingParams {
    SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(n)
    }
}

fn run_all(h: &EngineHandle, prompts: &[Vec<u32>], n: usize) -> Vec<Vec<u32>> {
    let mut streams: Vec<_> = prompts
        .iter()
        .map(|p| h.submit(p.clone(), params(n)).unwrap())
        .collect();
    streams
        .iter_mut()
        .map(|s| {
            let mut ids = Vec::new();
            while let Some(item) = s.next_blocking() {
                if let StreamItem::Token { id, .. } = item.unwrap() {
                    ids.push(id);
                }
            }
            ids
        })
        .collect()
}

fn expected(f: &Fixture, n: usize) -> Vec<Vec<u32>> {
    let e = plain(f);
    prompts()
        .iter()
        .map(|p| e.generate(p, &params(n), |_| true).unwrap().token_ids)
        .collect()
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Vec<KvEvent>>, seen: &mut HashSet<u64>) {
    while let Ok(batch) = rx.try_recv() {
        replay_events(seen, &batch);
    }
}

#[test]
fn greedy_equality_on_every_path() {
    let f = fixture();
    let want = expected(&f, 12);
    let configs = [
        ("batched", SchedulerConfig::default(), 256),
        (
            "chunked",
            SchedulerConfig {
                max_num_batched_tokens: 5,
                ..SchedulerConfig::default()
            },
            256,
        ),
        ("preempted", SchedulerConfig::default(), 24),
        (
            "one at a time",
            SchedulerConfig {
                max_num_seqs: 1,
                ..SchedulerConfig::default()
            },
            256,
        ),
    ];
    for (what, cfg, blocks) in configs {
        let (eng, mut events) = serving(&f, cfg, blocks);
        let h = eng.handle();
        assert_eq!(run_all(&h, &prompts(), 12), want, "{what}");
        // Again: now largely from the prefix cache.
        assert_eq!(run_all(&h, &prompts(), 12), want, "{what}, prefix-cached");
        let st = h.stats();
        assert_eq!(
            st.kv_blocks_free, st.kv_blocks_total,
            "{what}: blocks back when idle"
        );
        if what == "preempted" {
            assert!(st.counters.preemptions > 0, "a 24-block pool must preempt");
        } else {
            assert!(
                st.counters.prefix_cache_hits > 0,
                "{what}: the second round hits the cache"
            );
        }
        // The events describe exactly what the cache holds.
        let mut seen = HashSet::new();
        drain(&mut events, &mut seen);
        assert_eq!(
            seen.len(),
            st.kv_blocks_cached,
            "{what}: replayed events vs cache"
        );
    }
}

#[test]
fn imported_kv_continues_identically() {
    let f = fixture();
    let want = expected(&f, 12);
    let (pre, _) = serving(&f, SchedulerConfig::default(), 64);
    let (dec, _) = serving(&f, SchedulerConfig::default(), 64);
    let (ph, dh) = (pre.handle(), dec.handle());
    for (p, w) in prompts().iter().zip(&want) {
        let mut s = ph
            .submit_with(
                p.clone(),
                params(1),
                SubmitOptions {
                    pin_kv: true,
                    ..Default::default()
                },
            )
            .unwrap();
        while s.next_blocking().is_some() {}
        let export = ph.export_blocking(s.id()).unwrap();
        ph.release(s.id());
        let mut d = dh
            .submit_with(
                p.clone(),
                params(12),
                SubmitOptions {
                    import: Some(export),
                    ..Default::default()
                },
            )
            .unwrap();
        let mut ids = Vec::new();
        while let Some(item) = d.next_blocking() {
            if let StreamItem::Token { id, .. } = item.unwrap() {
                ids.push(id);
            }
        }
        assert_eq!(&ids, w);
    }
    assert_eq!(dh.stats().kv_import_rejected, 0);
    std::thread::sleep(Duration::from_millis(50));
    let st = ph.stats();
    assert_eq!(
        (st.kv_blocks_pinned, st.kv_blocks_free),
        (0, st.kv_blocks_total)
    );
}

#[test]
fn cancelled_requests_free_their_blocks() {
    let f = fixture();
    let (eng, _) = serving(&f, SchedulerConfig::default(), 64);
    let h = eng.handle();
    let mut s = h.submit(prompts()[3].clone(), params(400)).unwrap();
    assert!(matches!(
        s.next_blocking(),
        Some(Ok(StreamItem::Token { .. }))
    ));
    assert!(h.stats().kv_blocks_free < h.stats().kv_blocks_total);
    drop(s);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let st = h.stats();
        if st.running == 0 && st.kv_blocks_free == st.kv_blocks_total {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cancelled request still holds blocks: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The engine keeps serving.
    assert_eq!(run_all(&h, &prompts()[..1], 3)[0].len(), 3);
}

#[test]
fn a_prompt_larger_than_the_pool_fails_alone() {
    let f = fixture();
    let (eng, _) = serving(&f, SchedulerConfig::default(), 8); // 32 tokens in all
    let h = eng.handle();
    let big: Vec<u32> = (0..60).collect();
    let mut s = h.submit(big, params(4)).unwrap();
    let err = s.next_blocking().unwrap().unwrap_err().to_string();
    assert!(err.contains("more KV blocks than the whole cache"), "{err}");
    assert_eq!(
        run_all(&h, &prompts()[..2], 4)
            .iter()
            .map(Vec::len)
            .collect::<Vec<_>>(),
        vec![4, 4]
    );
    let long = SamplingParams {
        max_tokens: 600,
        ..params(1)
    };
    assert!(
        h.submit(vec![1; 10], long).is_err(),
        "prompt + max_tokens beyond the 512-token context"
    );
}

/// A simulated engine (`llmd worker --sim`): the real scheduler, pool, prefix cache,
/// events and export/import around a latency model. Its tokens depend only on position,
/// so every path gives the same ones; its events replay to its cache like the real one's.
#[test]
fn simulated_engine_runs_the_real_scheduling_paths() {
    let f = fixture();
    let (model, tok) = llmd_engine::load_gguf(&f.path, &Device::Cpu).unwrap();
    let zero = llmd_engine::SimCost {
        step: Duration::ZERO,
        prefill_token: Duration::ZERO,
        decode_seq: Duration::ZERO,
    };
    let sim = || llmd_engine::SimModel::new(model.config().clone(), &tok, zero, 8).unwrap();
    let start = |cfg: SchedulerConfig, blocks: usize| {
        let mut sc = ServingConfig::new("tiny", "sim:tiny");
        sc.scheduler = cfg;
        sc.block_size = BS;
        sc.kv_cache = KvCacheSize::Blocks(blocks);
        let (tx, rx) = mpsc::unbounded_channel();
        (
            LlmEngine::start(sim(), tok.clone(), sc, Some(tx)).unwrap(),
            rx,
        )
    };
    let one = SchedulerConfig {
        max_num_seqs: 1,
        ..SchedulerConfig::default()
    };
    let (alone, _) = start(one, 256);
    let want = run_all(&alone.handle(), &prompts(), 12);
    assert!(want.iter().all(|t| t.len() == 12));
    assert!(
        want.iter().flatten().collect::<HashSet<_>>().len() > 3,
        "the simulated text varies"
    );
    for (what, cfg, blocks) in [
        ("batched", SchedulerConfig::default(), 256),
        (
            "chunked",
            SchedulerConfig {
                max_num_batched_tokens: 5,
                ..SchedulerConfig::default()
            },
            256,
        ),
        ("preempted", SchedulerConfig::default(), 24),
    ] {
        let (eng, mut events) = start(cfg, blocks);
        let h = eng.handle();
        assert_eq!(run_all(&h, &prompts(), 12), want, "{what}");
        assert_eq!(run_all(&h, &prompts(), 12), want, "{what}, prefix-cached");
        let st = h.stats();
        assert_eq!(st.kv_blocks_free, st.kv_blocks_total, "{what}");
        let mut seen = HashSet::new();
        drain(&mut events, &mut seen);
        assert_eq!(seen.len(), st.kv_blocks_cached, "{what}: events vs cache");
        assert!(st.kv_blocks_cached > 0);
    }
    // The pool is as large as the real one's but its blocks hold almost nothing.
    let layout = alone.handle().kv_layout;
    assert_eq!(layout.num_blocks, 256);
    assert_eq!(
        (layout.num_layers, layout.num_kv_heads, layout.head_dim),
        (1, 1, 1)
    );

    // Without ignore_eos the simulated answer ends by itself after its output length.
    let mut s = alone
        .handle()
        .submit(prompts()[0].clone(), SamplingParams::greedy(100))
        .unwrap();
    let mut n = 0;
    let mut reason = None;
    while let Some(item) = s.next_blocking() {
        match item.unwrap() {
            StreamItem::Token { .. } => n += 1,
            StreamItem::Finished { reason: r, .. } => reason = Some(r),
        }
    }
    assert_eq!((n, reason), (8, Some(llmd_engine::FinishReason::Stop)));

    // P/D between two simulated engines continues with the same tokens; a real engine
    // refuses simulated KV (fingerprint) and computes the prompt itself.
    let (pre, _) = start(SchedulerConfig::default(), 64);
    let (dec, _) = start(SchedulerConfig::default(), 64);
    let (real, _) = serving(&f, SchedulerConfig::default(), 64);
    let (ph, dh) = (pre.handle(), dec.handle());
    let p = prompts()[5].clone();
    let export = |ph: &EngineHandle| {
        let mut s = ph
            .submit_with(
                p.clone(),
                params(1),
                SubmitOptions {
                    pin_kv: true,
                    ..Default::default()
                },
            )
            .unwrap();
        while s.next_blocking().is_some() {}
        let e = ph.export_blocking(s.id()).unwrap();
        ph.release(s.id());
        e
    };
    let continue_from = |h: &EngineHandle, e| {
        let mut d = h
            .submit_with(
                p.clone(),
                params(12),
                SubmitOptions {
                    import: Some(e),
                    ..Default::default()
                },
            )
            .unwrap();
        let mut ids = Vec::new();
        while let Some(item) = d.next_blocking() {
            if let StreamItem::Token { id, .. } = item.unwrap() {
                ids.push(id);
            }
        }
        ids
    };
    assert_eq!(continue_from(&dh, export(&ph)), want[5]);
    assert_eq!(dh.stats().kv_import_rejected, 0);
    let real_tokens = continue_from(&real.handle(), export(&ph));
    assert_eq!(real.handle().stats().kv_import_rejected, 1);
    assert_eq!(real_tokens, expected(&f, 12)[5]);
}
