//! The device-generic path (candle's ops, what runs on CUDA): checked on the CPU against our
//! own kernels on every machine, so its logic (RoPE layout, paged gather, GQA, masks, mixed
//! prefill/decode batches, half-precision weights) is tested without a GPU; and on a GPU
//! against the CPU — greedy tokens, logits, serving and KV export/import — where the build
//! has the `cuda` feature and a device answers. Elsewhere those print
//! `skipped: no CUDA device (…)` and pass.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use llmd_engine::serving::{LlmEngine, ServingConfig, StreamItem, SubmitOptions};
use llmd_engine::{
    BatchSeq, Engine, EngineOptions, KvCache, KvCacheSize, KvLayout, LoadOptions, Model,
    SamplingParams,
};

const BLOCK: usize = 4;

fn cuda_or_skip(test: &str) -> Option<Device> {
    match llmd_engine::device::cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            // Printed (not only logged) so that `tests/run cuda` shows why nothing ran.
            println!("{test}: skipped: no CUDA device ({e})");
            None
        }
    }
}

fn tokens(seed: u32, n: usize) -> Vec<u32> {
    let v = common::vocab_size() as u32 - 3;
    (0..n as u32).map(|i| (i * 37 + seed * 11) % v).collect()
}

/// Relative difference: max |a - b| over the largest |b|.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

/// Three sequences through three steps that mix prompt chunks and decodes in one batch (the
/// scheduler's shape of work), over scattered block tables; the logits of every step.
fn mixed_batches(model: &Model) -> Vec<Vec<f32>> {
    let layout = KvLayout::new(model.config(), BLOCK, KvCacheSize::Blocks(64), DType::F32).unwrap();
    let cache = KvCache::new(layout, model.device()).unwrap();
    let tables: [Vec<u32>; 3] = [
        (0..20u32).rev().map(|b| b * 3).collect(),
        (0..20u32).map(|b| b * 3 + 1).collect(),
        (0..20u32).rev().map(|b| b * 3 + 2).collect(),
    ];
    let (a, b, c) = (tokens(1, 21), tokens(2, 6), tokens(3, 9));
    let steps: Vec<Vec<(Vec<u32>, usize, usize)>> = vec![
        // (tokens, start position, table)
        vec![(a[..17].to_vec(), 0, 0), (b[..5].to_vec(), 0, 1)],
        vec![
            (a[17..].to_vec(), 17, 0),
            (vec![b[5]], 5, 1),
            (c.clone(), 0, 2),
        ],
        vec![(vec![7], 21, 0), (vec![8], 6, 1), (vec![9], 9, 2)],
        vec![(vec![10], 22, 0), (vec![11], 7, 1), (vec![12], 10, 2)],
    ];
    let mut out = Vec::new();
    for step in &steps {
        let seqs: Vec<BatchSeq<'_>> = step
            .iter()
            .map(|(t, pos, tb)| BatchSeq {
                tokens: t,
                start_pos: *pos,
                block_table: &tables[*tb],
            })
            .collect();
        let logits = model.forward(&cache, &seqs).unwrap();
        out.push(logits.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    out
}

fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for (step, (x, y)) in a.iter().zip(b).enumerate() {
        let d = rel_diff(x, y);
        assert!(d < tol, "{what}: step {step}: logits differ by {d} > {tol}");
        worst = worst.max(d);
    }
    eprintln!("{what}: max relative logit difference {worst:.2e} (< {tol})");
}

fn generic() -> LoadOptions {
    LoadOptions {
        generic_ops: true,
        ..Default::default()
    }
}

/// The generic path on the CPU against our CPU kernels, same weights. f32 weights: only
/// summation order differs (1e-4). Quantized GGUF: the generic path multiplies with candle's
/// quantized kernels, which round activations to 8 bits their own way (within 10% of the
/// largest logit on random weights; see tiny_models.rs). Half-precision weights: the matmul
/// inputs are rounded to f16/bf16, a few percent on random weights.
#[test]
fn generic_ops_match_cpu_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let cpu = Device::Cpu;
    let cases = [
        (GgmlDType::F32, "llama", 1e-4),
        (GgmlDType::Q4_0, "llama", 0.1),
        (GgmlDType::Q4_1, "llama", 0.1),
        (GgmlDType::Q8_0, "llama", 0.1),
    ];
    for (qt, arch, tol) in cases {
        let path = common::write_gguf(dir.path(), 5, qt, arch);
        let (ours, _) = llmd_engine::load_gguf(&path, &cpu).unwrap();
        let (gen, _) = llmd_engine::load_gguf_with(&path, &cpu, &generic()).unwrap();
        assert_close(
            &mixed_batches(&gen),
            &mixed_batches(&ours),
            tol,
            &format!("GGUF {qt:?} {arch}"),
        );
    }
    for arch in ["llama", "qwen2"] {
        let d = common::write_safetensors(dir.path(), 9, DType::F32, arch);
        let resolved = common::resolve(&d);
        let (ours, _) = llmd_engine::load_model(&resolved, &cpu).unwrap();
        let want = mixed_batches(&ours);
        let (gen, _) = llmd_engine::load_model_with(&resolved, &cpu, &generic()).unwrap();
        assert_close(
            &mixed_batches(&gen),
            &want,
            1e-4,
            &format!("safetensors {arch}"),
        );
        for (dt, tol) in [(DType::F16, 0.02), (DType::BF16, 0.1)] {
            let opts = LoadOptions {
                dtype: Some(dt),
                generic_ops: true,
            };
            let (half, _) = llmd_engine::load_model_with(&resolved, &cpu, &opts).unwrap();
            assert_close(
                &mixed_batches(&half),
                &want,
                tol,
                &format!("safetensors {arch} as {dt:?}"),
            );
        }
    }
}

/// Half-precision weights on our CPU kernels are refused with a reason, not widened quietly.
#[test]
fn half_weights_need_the_generic_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::write_safetensors(dir.path(), 9, DType::F16, "llama");
    let opts = LoadOptions {
        dtype: Some(DType::F16),
        generic_ops: false,
    };
    let err = llmd_engine::load_model_with(&common::resolve(&d), &Device::Cpu, &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("CUDA only"), "{err}");
}

fn engine_on(resolved: &llmd_models::ResolvedModel, device: &Device, opts: LoadOptions) -> Engine {
    let (model, tok) = llmd_engine::load_model_with(resolved, device, &opts).unwrap();
    let eo = EngineOptions {
        block_size: BLOCK,
        kv_cache: Some(KvCacheSize::Blocks(128)),
        device: device.clone(),
    };
    Engine::new("tiny".into(), model, tok, &eo).unwrap()
}

/// A safetensors model on CUDA against the CPU: f32 weights give the same greedy tokens;
/// f16 and bf16 weights stay within rounding of the f32 logits.
#[test]
fn cuda_greedy_matches_cpu_safetensors() {
    let Some(gpu) = cuda_or_skip("cuda_greedy_matches_cpu_safetensors") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2"] {
        let d = common::write_safetensors(dir.path(), 17, DType::F32, arch);
        let resolved = common::resolve(&d);
        let cpu = engine_on(&resolved, &Device::Cpu, LoadOptions::default());
        let cuda = engine_on(&resolved, &gpu, LoadOptions::default());
        for seed in 0..4 {
            let p = tokens(seed, 5 + 9 * seed as usize);
            let m = common::greedy_agree(&cpu, &cuda, &p, 24, 1e-3);
            assert_eq!(m, 0, "{arch}: CPU and CUDA greedy tokens differ");
        }
        for (dt, tol) in [(DType::F16, 0.02), (DType::BF16, 0.1)] {
            let opts = LoadOptions {
                dtype: Some(dt),
                ..Default::default()
            };
            let (half, _) = llmd_engine::load_model_with(&resolved, &gpu, &opts).unwrap();
            assert_close(
                &mixed_batches(&half),
                &mixed_batches(&cpu.model),
                tol,
                &format!("CUDA {arch} {dt:?}"),
            );
        }
    }
}

/// Quantized GGUF on CUDA (candle's kernels) against ours on the CPU.
#[test]
fn cuda_gguf_matches_cpu() {
    let Some(gpu) = cuda_or_skip("cuda_gguf_matches_cpu") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for qt in [
        GgmlDType::F32,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q8_0,
    ] {
        let path = common::write_gguf(dir.path(), 5, qt, "llama");
        let (cpu, _) = llmd_engine::load_gguf(&path, &Device::Cpu).unwrap();
        let (cuda, _) = llmd_engine::load_gguf(&path, &gpu).unwrap();
        let tol = if qt == GgmlDType::F32 { 1e-4 } else { 0.1 };
        assert_close(
            &mixed_batches(&cuda),
            &mixed_batches(&cpu),
            tol,
            &format!("CUDA GGUF {qt:?}"),
        );
    }
}

/// The batching engine with its KV pool in GPU memory: concurrent greedy requests give the
/// CPU's tokens, and KV exported from each pool (GPU → host once) imports into the other
/// (host → GPU) and continues with the same tokens.
#[test]
fn cuda_serving_and_kv_transfer() {
    let Some(gpu) = cuda_or_skip("cuda_serving_and_kv_transfer") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = common::write_safetensors(dir.path(), 23, DType::F32, "llama");
    let resolved = common::resolve(&d);
    let start = |device: &Device| {
        let (model, tok) = llmd_engine::load_model(&resolved, device).unwrap();
        let mut cfg = ServingConfig::new("tiny", "tiny-fingerprint");
        cfg.block_size = BLOCK;
        cfg.kv_cache = KvCacheSize::Blocks(256);
        LlmEngine::start(model, tok, cfg, None).unwrap()
    };
    let (cpu, cuda) = (start(&Device::Cpu), start(&gpu));
    let params = |n| SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(n)
    };
    let collect = |mut s: llmd_engine::serving::RequestStream| {
        let mut ids = Vec::new();
        while let Some(item) = s.next_blocking() {
            if let StreamItem::Token { id, .. } = item.unwrap() {
                ids.push(id);
            }
        }
        ids
    };
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| tokens(i, 6 + 5 * i as usize)).collect();
    let all = |e: &LlmEngine| -> Vec<Vec<u32>> {
        let h = e.handle();
        // Submitted together, so that they share batches.
        let streams: Vec<_> = prompts
            .iter()
            .map(|p| h.submit(p.clone(), params(12)).unwrap())
            .collect();
        streams.into_iter().map(collect).collect()
    };
    let want = all(&cpu);
    assert_eq!(all(&cuda), want, "CUDA serving vs CPU");
    for (from, to, what) in [(&cuda, &cpu, "GPU to CPU"), (&cpu, &cuda, "CPU to GPU")] {
        let (fh, th) = (from.handle(), to.handle());
        for (p, w) in prompts.iter().zip(&want) {
            let pin = SubmitOptions {
                pin_kv: true,
                ..Default::default()
            };
            let mut s = fh.submit_with(p.clone(), params(1), pin).unwrap();
            while s.next_blocking().is_some() {}
            let export = fh.export_blocking(s.id()).unwrap();
            fh.release(s.id());
            let import = SubmitOptions {
                import: Some(export),
                ..Default::default()
            };
            let ids = collect(th.submit_with(p.clone(), params(12), import).unwrap());
            assert_eq!(&ids, w, "{what}");
        }
        assert_eq!(th.stats().kv_import_rejected, 0, "{what}");
    }
}
