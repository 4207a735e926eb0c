//! f32 vector kernels for attention, compiled twice: portable, and with AVX2+FMA chosen at
//! run time — the charms ship one binary, so no `target-cpu=native`.
#![allow(unsafe_code)]

use std::sync::OnceLock;

/// Whether this CPU can run the AVX2+FMA versions.
pub fn has_avx2_fma() -> bool {
    static CACHE: OnceLock<bool> = OnceLock::new();
    *CACHE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

#[inline(always)]
fn axpy_lanes(acc: &mut [f32], w: f32, v: &[f32], fma: bool) {
    for (a, x) in acc.iter_mut().zip(v) {
        *a = if fma { x.mul_add(w, *a) } else { *a + w * x };
    }
}

/// Sum of 8 lanes in the tree the AVX2 transposing reduction uses, so that the portable
/// and vector paths of `qk_scores` agree on the order within each.
#[inline(always)]
fn tree8(l: &[f32; 8]) -> f32 {
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

/// `out[j] = scale * dot(q, key(j))` for `j < out.len()`. Every attention path computes its
/// scores here, and each key's score depends only on `q` and that key (vector lanes are
/// independent), so a token's result is the same whichever path and batch computed it.
#[inline(always)]
fn qk_scores<'k>(
    q: &[f32],
    key: impl Fn(usize) -> &'k [f32],
    scale: f32,
    out: &mut [f32],
    fma: bool,
) {
    let d = q.len();
    #[cfg(target_arch = "x86_64")]
    if fma && d.is_multiple_of(8) && d > 0 {
        // SAFETY: `fma` is only true inside functions compiled with avx2+fma, which are
        // only called after `has_avx2_fma()`; every key row has `d` elements.
        unsafe { qk_scores_avx2(q, key, scale, out) };
        return;
    }
    let body = d - d % 8;
    for (j, s) in out.iter_mut().enumerate() {
        let k = &key(j)[..d];
        let mut lanes = [0f32; 8];
        for c in (0..body).step_by(8) {
            for i in 0..8 {
                lanes[i] = if fma {
                    q[c + i].mul_add(k[c + i], lanes[i])
                } else {
                    lanes[i] + q[c + i] * k[c + i]
                };
            }
        }
        let mut dot = tree8(&lanes);
        for i in body..d {
            dot += q[i] * k[i];
        }
        *s = dot * scale;
    }
}

/// Eight keys at a time: one FMA accumulator per key, then one transposing horizontal
/// reduction for all eight (instead of a shuffle-heavy reduction per key).
///
/// # Safety
/// AVX2 and FMA available; `q.len()` a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn qk_scores_avx2<'k>(
    q: &[f32],
    key: impl Fn(usize) -> &'k [f32],
    scale: f32,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let d = q.len();
    let n = out.len();
    let mut j0 = 0;
    while j0 < n {
        // A short last group repeats its last key; the extra lanes are dropped.
        let rows: [*const f32; 8] = std::array::from_fn(|t| {
            let k = key((j0 + t).min(n - 1));
            assert!(k.len() >= d, "key row shorter than the query");
            k.as_ptr()
        });
        // SAFETY: per this function's contract.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 8];
            for c in (0..d).step_by(8) {
                let qv = _mm256_loadu_ps(q.as_ptr().add(c));
                for t in 0..8 {
                    acc[t] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rows[t].add(c)), acc[t]);
                }
            }
            let t0 = _mm256_hadd_ps(acc[0], acc[1]);
            let t1 = _mm256_hadd_ps(acc[2], acc[3]);
            let t2 = _mm256_hadd_ps(acc[4], acc[5]);
            let t3 = _mm256_hadd_ps(acc[6], acc[7]);
            let u0 = _mm256_hadd_ps(t0, t1);
            let u1 = _mm256_hadd_ps(t2, t3);
            let sums = _mm256_add_ps(
                _mm256_permute2f128_ps(u0, u1, 0x20),
                _mm256_permute2f128_ps(u0, u1, 0x31),
            );
            let scaled = _mm256_mul_ps(sums, _mm256_set1_ps(scale));
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), scaled);
            let take = (n - j0).min(8);
            out[j0..j0 + take].copy_from_slice(&lanes[..take]);
        }
        j0 += 8;
    }
}

/// `e^x` in plain arithmetic that LLVM vectorises: 2^n by exponent bits times a degree-6
/// polynomial on |r| <= ln2/2 (relative error ~2e-7, like libm's `expf`, which would be a
/// call per element). Saturates below e^-87 and above e^88 instead of reaching 0 or inf.
#[inline(always)]
fn exp_approx(x: f32, fma: bool) -> f32 {
    let madd = |a: f32, b: f32, c: f32| if fma { a.mul_add(b, c) } else { a * b + c };
    // The clamp keeps 2^n's exponent bits valid.
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5 * 2^23 trick: plain adds, vectorised on every x86 level.
    const ROUND: f32 = 12_582_912.0;
    let k = x * std::f32::consts::LOG2_E + ROUND;
    let n = k - ROUND;
    let r = madd(n, -0.693_359_4, x);
    let r = madd(n, 2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4;
    p = madd(p, r, 1.398_199_9e-3);
    p = madd(p, r, 8.333_452e-3);
    p = madd(p, r, 4.166_579_6e-2);
    p = madd(p, r, 1.666_666_5e-1);
    p = madd(p, r, 0.5);
    p = madd(p, r * r, r) + 1.0;
    // k's low mantissa bits hold n (ROUND's own bits there are zero and shift out), so 2^n
    // comes from integer adds; an `as i32` cast would not vectorise.
    p * f32::from_bits(k.to_bits().wrapping_add(127) << 23)
}

#[inline(always)]
fn silu_mul_body(out: &mut [f32], gate_up: &[f32], fma: bool) {
    let (g, u) = gate_up.split_at(gate_up.len() / 2);
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g / (1.0 + exp_approx(-g, fma)) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn silu_mul_avx2(out: &mut [f32], gate_up: &[f32]) {
    silu_mul_body(out, gate_up, true)
}

/// `out = silu(gate) * up` for one row laid out `[gate | up]`.
pub fn silu_mul(out: &mut [f32], gate_up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports avx2 and fma (checked above).
        return unsafe { silu_mul_avx2(out, gate_up) };
    }
    silu_mul_body(out, gate_up, false)
}

/// Softmax numerators in place, `e^(x - max)`; returns their sum (8 lanes, fixed tree).
#[inline(always)]
fn softmax_row(row: &mut [f32], fma: bool) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for x in row.iter_mut() {
        *x = exp_approx(*x - max, fma);
    }
    let mut lanes = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            lanes[i] += c[i];
        }
    }
    tree8(&lanes) + tail
}

/// One attention task: `nq` consecutive queries of one sequence (positions `pos0..`),
/// for `heads.1` query heads starting at `heads.0`, all sharing KV head `kv_head`.
pub struct Tile<'a> {
    pub q: &'a [f32],
    pub kc: &'a [f32],
    pub vc: &'a [f32],
    pub block_table: &'a [u32],
    pub q_row0: usize,
    pub pos0: usize,
    pub nq: usize,
    pub heads: (usize, usize),
    pub kv_head: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub scale: f32,
}

impl Tile<'_> {
    /// Offsets in the pools of this tile's KV head's rows for keys `0..n`, walking the block
    /// table (no division per key: that cost more than the dot products at short contexts).
    /// Stops early if the table is shorter (the op validates it; callers handle the rest).
    fn row_offsets(&self, n: usize) -> Vec<usize> {
        let stride = self.num_kv_heads * self.head_dim;
        let mut offs = Vec::with_capacity(n);
        'blocks: for &b in self.block_table {
            let base = b as usize * self.block_size * stride + self.kv_head * self.head_dim;
            for o in 0..self.block_size {
                if offs.len() == n {
                    break 'blocks;
                }
                offs.push(base + o * stride);
            }
        }
        offs
    }
}

/// Keys per pass: a pass's K (or V) rows, 8 KB at head size 64, stay in L1 while every
/// query and head of the tile uses them, so each row comes from memory once per tile —
/// at decode that is once for all the query heads sharing the KV head (GQA).
const KEY_CHUNK: usize = 32;

/// `acc += sum_j probs[j] * val(j)`, keys in order (the same bits however they are chunked).
#[inline(always)]
fn pv<'v>(acc: &mut [f32], probs: &[f32], val: impl Fn(usize) -> &'v [f32], fma: bool) {
    match acc.len() {
        64 => pv_const::<64>(acc, probs, val, fma),
        128 => pv_const::<128>(acc, probs, val, fma),
        d => {
            for (j, &p) in probs.iter().enumerate() {
                axpy_lanes(acc, p, &val(j)[..d], fma);
            }
        }
    }
}

/// [`pv`] with the head size known at compile time, so that the accumulator lives in
/// registers instead of being reloaded for every key. Same arithmetic as `axpy_lanes`.
#[inline(always)]
fn pv_const<'v, const D: usize>(
    acc: &mut [f32],
    probs: &[f32],
    val: impl Fn(usize) -> &'v [f32],
    fma: bool,
) {
    let Some(a) = acc.first_chunk_mut::<D>() else {
        return;
    };
    let mut r = *a;
    for (j, &p) in probs.iter().enumerate() {
        let Some(v) = val(j).first_chunk::<D>() else {
            continue;
        };
        for i in 0..D {
            r[i] = if fma {
                v[i].mul_add(p, r[i])
            } else {
                r[i] + p * v[i]
            };
        }
    }
    *a = r;
}

/// Causal softmax attention for a tile; returns `[nq, heads, head_dim]`. Decode is the
/// one-query case. Every query and head goes through the same score, softmax and
/// accumulation functions, each key's arithmetic independent of the others and of the
/// tile's shape, so a token gives bit-identical results whichever path (prefill tile,
/// chunk, decode, heads grouped or not) computes it — greedy outputs must not depend on
/// how prompts were batched. Weights stay unnormalised until the end.
#[inline(always)]
fn attend_body(t: &Tile<'_>, fma: bool) -> Vec<f32> {
    let (d, nh, nq) = (t.head_dim, t.heads.1, t.nq);
    let max_ctx = t.pos0 + nq; // keys visible to the tile's last query
    let mut out = vec![0f32; nq * nh * d];
    let offs = t.row_offsets(max_ctx);
    if offs.len() < max_ctx {
        return out; // a table too short for the context: the op rejects it before this
    }
    let q_row = |qi: usize, r: usize| {
        let start = ((t.q_row0 + qi) * t.num_heads + t.heads.0 + r) * d;
        t.q.get(start..start + d)
    };
    let mut scores = vec![0f32; nq * nh * max_ctx];
    for j0 in (0..max_ctx).step_by(KEY_CHUNK) {
        let key = |j: usize| &t.kc[offs[j0 + j]..][..d];
        for qi in 0..nq {
            // Queries before position j cannot see key j.
            let hi = (j0 + KEY_CHUNK).min(t.pos0 + qi + 1);
            if hi <= j0 {
                continue;
            }
            for r in 0..nh {
                let Some(q) = q_row(qi, r) else { continue };
                let row = (qi * nh + r) * max_ctx;
                qk_scores(q, key, t.scale, &mut scores[row + j0..row + hi], fma);
            }
        }
    }
    let mut inv_sums = vec![0f32; nq * nh];
    for qi in 0..nq {
        for r in 0..nh {
            let row = (qi * nh + r) * max_ctx;
            let visible = &mut scores[row..row + t.pos0 + qi + 1];
            inv_sums[qi * nh + r] = 1.0 / softmax_row(visible, fma);
        }
    }
    for j0 in (0..max_ctx).step_by(KEY_CHUNK) {
        let val = |j: usize| &t.vc[offs[j0 + j]..][..d];
        for qi in 0..nq {
            let hi = (j0 + KEY_CHUNK).min(t.pos0 + qi + 1);
            if hi <= j0 {
                continue;
            }
            for r in 0..nh {
                let row = (qi * nh + r) * max_ctx;
                let acc = &mut out[(qi * nh + r) * d..][..d];
                pv(acc, &scores[row + j0..row + hi], val, fma);
            }
        }
    }
    for (row, inv) in out.chunks_exact_mut(d).zip(&inv_sums) {
        for x in row {
            *x *= inv;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2(t: &Tile<'_>) -> Vec<f32> {
    attend_body(t, true)
}

/// Attention for one tile, on the best code path this CPU has.
pub fn attend(t: &Tile<'_>) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports avx2 and fma (checked above).
        return unsafe { attend_avx2(t) };
    }
    attend_body(t, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive causal attention over a contiguous K/V, for comparison.
    fn reference(q: &[f32], k: &[f32], v: &[f32], pos: usize, d: usize, scale: f32) -> Vec<f32> {
        let s: Vec<f32> = (0..=pos)
            .map(|j| {
                q.iter()
                    .zip(&k[j * d..][..d])
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
                    * scale
            })
            .collect();
        let m = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f32 = e.iter().sum();
        (0..d)
            .map(|i| (0..=pos).map(|j| e[j] / z * v[j * d + i]).sum())
            .collect()
    }

    #[test]
    fn paged_attention_matches_naive_on_every_path() {
        for &d in &[16usize, 64, 72, 128] {
            let (bs, kvh, ctx) = (4usize, 2usize, 37usize);
            let blocks: Vec<u32> = (0..ctx.div_ceil(bs) as u32)
                .rev()
                .map(|b| b * 2 + 1)
                .collect();
            let slots = (*blocks.iter().max().unwrap() as usize + 1) * bs;
            let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
            let kc: Vec<f32> = (0..slots * kvh * d).map(val).collect();
            let vc: Vec<f32> = (0..slots * kvh * d).map(|i| val(i + 13)).collect();
            let q: Vec<f32> = (0..ctx * 2 * d).map(|i| val(i + 101)).collect(); // 2 heads per token
            for g in 0..kvh {
                let gather = |pool: &[f32]| -> Vec<f32> {
                    (0..ctx)
                        .flat_map(|j| {
                            let slot = blocks[j / bs] as usize * bs + j % bs;
                            pool[(slot * kvh + g) * d..][..d].to_vec()
                        })
                        .collect()
                };
                let (k, v) = (gather(&kc), gather(&vc));
                for (pos0, nq) in [(0usize, 5usize), (30, 7), (36, 1)] {
                    let tile = Tile {
                        q: &q,
                        kc: &kc,
                        vc: &vc,
                        block_table: &blocks,
                        q_row0: pos0,
                        pos0,
                        nq,
                        heads: (g, 1),
                        kv_head: g,
                        num_heads: 2,
                        num_kv_heads: kvh,
                        head_dim: d,
                        block_size: bs,
                        scale: 0.25,
                    };
                    for fma in [false, true] {
                        if fma && !has_avx2_fma() {
                            continue;
                        }
                        let got = if fma {
                            attend(&tile)
                        } else {
                            attend_body(&tile, false)
                        };
                        for qi in 0..nq {
                            let qrow = &q[((pos0 + qi) * 2 + g) * d..][..d];
                            let want = reference(qrow, &k, &v, pos0 + qi, d, 0.25);
                            for i in 0..d {
                                assert!(
                                    (got[qi * d + i] - want[i]).abs() < 1e-5,
                                    "d={d} pos={} i={i}",
                                    pos0 + qi
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn exp_matches_libm() {
        for fma in [false, true] {
            for i in -86_999..88_000 {
                let x = i as f32 * 0.001;
                let (got, want) = (exp_approx(x, fma), x.exp());
                assert!((got - want).abs() <= want * 4e-7, "x={x}: {got} vs {want}");
            }
            assert!(exp_approx(-1000.0, fma) < 1e-37);
            assert!(exp_approx(f32::NEG_INFINITY, fma) < 1e-37);
            assert!(exp_approx(f32::INFINITY, fma).is_finite());
        }
    }

    /// A query's output is bit-identical whether it is computed in a prefill tile or alone
    /// as a decode step: greedy tokens must not depend on batching.
    #[test]
    fn tile_and_decode_paths_agree_bitwise() {
        for &d in &[64usize, 128] {
            let (bs, kvh, nh, ctx) = (16usize, 1usize, 3usize, 75usize);
            let blocks: Vec<u32> = (0..ctx.div_ceil(bs) as u32).map(|b| 4 - b).collect();
            let val = |i: usize| ((i * 7919 % 1000) as f32 / 300.0) - 1.5;
            let kc: Vec<f32> = (0..5 * bs * kvh * d).map(val).collect();
            let vc: Vec<f32> = (0..5 * bs * kvh * d).map(|i| val(i + 7)).collect();
            let q: Vec<f32> = (0..ctx * nh * d).map(|i| val(i + 3)).collect();
            let tile = |pos0: usize, nq: usize, heads: (usize, usize)| Tile {
                q: &q,
                kc: &kc,
                vc: &vc,
                block_table: &blocks,
                q_row0: pos0,
                pos0,
                nq,
                heads,
                kv_head: 0,
                num_heads: nh,
                num_kv_heads: kvh,
                head_dim: d,
                block_size: bs,
                scale: 0.125,
            };
            let whole = attend(&tile(0, ctx, (0, nh)));
            for pos in [0usize, 7, 8, 9, 31, 32, 33, 44, 64, 74] {
                let grouped = attend(&tile(pos, 1, (0, nh)));
                assert!(
                    grouped
                        .iter()
                        .zip(&whole[pos * nh * d..][..nh * d])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "d={d} pos={pos} grouped heads"
                );
                for h in 0..nh {
                    let one = attend(&tile(pos, 1, (h, 1)));
                    let want = &whole[(pos * nh + h) * d..][..d];
                    assert!(
                        one.iter()
                            .zip(want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "d={d} pos={pos} head={h}"
                    );
                }
            }
        }
    }
}
