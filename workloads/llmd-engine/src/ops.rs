//! The engine's own tensor operations on CPU: quantized matmul through `llmd-quant`'s
//! SIMD kernels, RoPE at arbitrary per-token positions, and attention that reads K/V
//! straight from the paged block pool.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape};
use rayon::prelude::*;

use crate::config::RopeStyle;
use crate::simd::{self, Tile};

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: expected f32, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// `x · Wᵀ` for a GGML-quantized W, on the last dimension of `x`.
pub struct QMatMulOp(pub Arc<llmd_quant::QMatrix>);

impl CustomOp1 for QMatMulOp {
    fn name(&self) -> &'static str {
        "llmd-qmatmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "qmatmul")?;
        let dims = l.shape().dims();
        let k = *dims.last().unwrap_or(&0);
        if k != self.0.cols() {
            candle_core::bail!("qmatmul: input width {k} != weight width {}", self.0.cols())
        }
        let m = x.len() / k.max(1);
        let n = self.0.rows();
        let mut out = vec![0f32; m * n];
        self.0
            .matmul(x, m, &mut out)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

/// `silu(gate) * up` over a fused `[tokens, 2 * inter]` gate|up projection, in one pass
/// (three candle ops, each with its own allocation and thread hand-off, otherwise).
pub struct SiluMulOp;

impl CustomOp1 for SiluMulOp {
    fn name(&self) -> &'static str {
        "llmd-silu-mul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "silu-mul")?;
        let (t, two) = l.shape().dims2()?;
        let inter = two / 2;
        let mut out = vec![0f32; t * inter];
        let row = |(o, xi): (&mut [f32], &[f32])| simd::silu_mul(o, xi);
        if t >= 8 {
            out.par_chunks_mut(inter)
                .zip(x.par_chunks(two))
                .for_each(row);
        } else {
            out.chunks_mut(inter).zip(x.chunks(two)).for_each(row);
        }
        Ok((CpuStorage::F32(out), Shape::from((t, inter))))
    }
}

/// Rotary inverse frequencies, with Llama 3 scaling or GGUF's `rope_freqs` already applied.
#[derive(Debug, Clone)]
pub struct RopeFreqs {
    pub inv_freq: Vec<f32>,
    pub style: RopeStyle,
}

/// RoPE on `[tokens, heads, head_dim]`, each token at its own position.
/// cos and sin of every (position, frequency) of one forward pass, computed once and
/// shared by all layers' q and k.
pub struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(freqs: &RopeFreqs, positions: &[u32]) -> Self {
        let half = freqs.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &pos in positions {
            for f in &freqs.inv_freq {
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Self { half, cos, sin }
    }

    fn positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// cos and sin as `[positions, 1, head_dim / 2]` tensors on `device`, the per-batch
    /// layout of candle's RoPE kernels (one batch entry per token).
    pub fn to_tensors(
        &self,
        device: &candle_core::Device,
    ) -> candle_core::Result<(candle_core::Tensor, candle_core::Tensor)> {
        let shape = (self.positions(), 1, self.half);
        Ok((
            candle_core::Tensor::from_slice(&self.cos, shape, device)?,
            candle_core::Tensor::from_slice(&self.sin, shape, device)?,
        ))
    }
}

pub struct RopeOp {
    pub style: RopeStyle,
    pub table: Arc<RopeTable>,
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "llmd-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "rope")?;
        let (t, h, d) = l.shape().dims3()?;
        let table = &self.table;
        if t != table.positions() || d != 2 * table.half {
            candle_core::bail!(
                "rope: shape {:?} vs {} positions",
                l.shape(),
                table.positions()
            )
        }
        let half = d / 2;
        let mut out = vec![0f32; x.len()];
        let style = self.style;
        type Rows<'a> = ((&'a mut [f32], &'a [f32]), (&'a [f32], &'a [f32]));
        let rotate = |((o, xi), (cos, sin)): Rows<'_>| {
            for (oh, xh) in o.chunks_exact_mut(d).zip(xi.chunks_exact(d)) {
                match style {
                    RopeStyle::Interleaved => {
                        for i in 0..half {
                            let (a, b) = (xh[2 * i], xh[2 * i + 1]);
                            oh[2 * i] = a * cos[i] - b * sin[i];
                            oh[2 * i + 1] = a * sin[i] + b * cos[i];
                        }
                    }
                    RopeStyle::Halves => {
                        for i in 0..half {
                            let (a, b) = (xh[i], xh[i + half]);
                            oh[i] = a * cos[i] - b * sin[i];
                            oh[i + half] = a * sin[i] + b * cos[i];
                        }
                    }
                }
            }
        };
        // A handful of tokens (decode) is cheaper inline than handed to the thread pool.
        if t >= 16 {
            out.par_chunks_mut(h * d)
                .zip(x.par_chunks(h * d))
                .zip(table.cos.par_chunks(half).zip(table.sin.par_chunks(half)))
                .for_each(rotate);
        } else {
            out.chunks_mut(h * d)
                .zip(x.chunks(h * d))
                .zip(table.cos.chunks(half).zip(table.sin.chunks(half)))
                .for_each(rotate);
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Where one sequence's query tokens sit in the batch and where its K/V live in the pool.
#[derive(Debug, Clone)]
pub struct AttnSeq {
    /// First row of this sequence in the batch's query tensor.
    pub q_start: usize,
    pub q_len: usize,
    /// Tokens of context before the first query token (its position).
    pub start_pos: usize,
    pub block_table: Vec<u32>,
}

/// Causal attention over the paged pool: `q` `[tokens, heads, head_dim]`, the pools
/// `[blocks * block_size, kv_heads, head_dim]` (this step's K/V already written).
pub struct PagedAttentionOp {
    pub seqs: Arc<Vec<AttnSeq>>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub scale: f32,
}

/// Queries per attention task: each K/V row read is reused this many times per head.
const Q_TILE: usize = 16;

impl CustomOp3 for PagedAttentionOp {
    fn name(&self) -> &'static str {
        "llmd-paged-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = contiguous_f32(qs, ql, "attention q")?;
        let kc = contiguous_f32(ks, kl, "attention k cache")?;
        let vc = contiguous_f32(vs, vl, "attention v cache")?;
        let (h, kvh, d, bs) = (
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.block_size,
        );
        let (t, qh, qd) = ql.shape().dims3()?;
        if qh != h || qd != d || kvh == 0 || !h.is_multiple_of(kvh) {
            candle_core::bail!("attention: q shape {:?} vs {h} heads of {d}", ql.shape())
        }
        let slots = kc.len() / (kvh * d);
        let rep = h / kvh;
        // One task per (sequence, kv head, tile of queries); each returns its rows. A decode
        // task takes all the query heads of its KV head, so each K/V row is read once for
        // them all — unless there are too few sequences to keep the threads busy, when one
        // task per query head spreads them (results are the same bits either way).
        let decodes = self.seqs.iter().filter(|s| s.q_len == 1).count();
        let split_heads = decodes * kvh < 4 * rayon::current_num_threads();
        let mut tasks = Vec::new();
        for (si, s) in self.seqs.iter().enumerate() {
            if s.q_start + s.q_len > t {
                candle_core::bail!("attention: sequence rows out of range")
            }
            let ctx = s.start_pos + s.q_len;
            if ctx.div_ceil(bs) > s.block_table.len() {
                candle_core::bail!("attention: block table too short for {ctx} tokens")
            }
            if s.block_table.iter().any(|&b| (b as usize + 1) * bs > slots) {
                candle_core::bail!("attention: block id beyond the pool")
            }
            for g in 0..kvh {
                for t0 in (0..s.q_len).step_by(Q_TILE) {
                    let t1 = (t0 + Q_TILE).min(s.q_len);
                    if s.q_len == 1 && split_heads {
                        for r in 0..rep {
                            tasks.push((si, g, r, r + 1, t0, t1));
                        }
                    } else {
                        tasks.push((si, g, 0, rep, t0, t1));
                    }
                }
            }
        }
        let results: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|&(si, g, r0, r1, t0, t1)| {
                let s = &self.seqs[si];
                let tile = Tile {
                    q,
                    kc,
                    vc,
                    block_table: &s.block_table,
                    q_row0: s.q_start + t0,
                    pos0: s.start_pos + t0,
                    nq: t1 - t0,
                    heads: (g * rep + r0, r1 - r0),
                    kv_head: g,
                    num_heads: h,
                    num_kv_heads: kvh,
                    head_dim: d,
                    block_size: bs,
                    scale: self.scale,
                };
                simd::attend(&tile)
            })
            .collect();
        let mut out = vec![0f32; t * h * d];
        for (&(si, g, r0, r1, t0, t1), res) in tasks.iter().zip(&results) {
            let s = &self.seqs[si];
            let nr = r1 - r0;
            for qi in 0..(t1 - t0) {
                let row = s.q_start + t0 + qi;
                for r in 0..nr {
                    let head = g * rep + r0 + r;
                    out[(row * h + head) * d..][..d]
                        .copy_from_slice(&res[(qi * nr + r) * d..][..d]);
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((t, h, d))))
    }
}
