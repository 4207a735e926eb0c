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

// Eight independent lanes so that LLVM vectorises the loop; the final reduction order is
// fixed. Every attention path calls this one function, so a token's result does not depend
// on which path computed it.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32], fma: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if fma {
        // SAFETY: `fma` is only true inside functions compiled with avx2+fma, which are
        // only called after `has_avx2_fma()`.
        return unsafe { dot_fma(a, b) };
    }
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// AVX2+FMA dot product: two accumulators (to overlap FMA latency), one horizontal sum.
/// LLVM's own vectorisation of the portable loop spent most of its time in shuffles.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 8)),
            _mm256_loadu_ps(pb.add(i + 8)),
            acc1,
        );
        i += 16;
    }
    if i + 8 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        i += 8;
    }
    let acc = _mm256_add_ps(acc0, acc1);
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    let mut out = _mm_cvtss_f32(s);
    while i < n {
        out += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    out
}

#[inline(always)]
fn axpy_lanes(acc: &mut [f32], w: f32, v: &[f32], fma: bool) {
    for (a, x) in acc.iter_mut().zip(v) {
        *a = if fma { x.mul_add(w, *a) } else { *a + w * x };
    }
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

/// Causal softmax attention for a tile; returns `[nq, heads, head_dim]`. Each K/V row is
/// read once per tile and used for every query and head in it.
/// Decode (one query, one head) with the head size known at compile time, so that the
/// output accumulator lives in registers instead of being reloaded for every key.
#[inline(always)]
fn attend_one<'a, const D: usize>(t: &Tile<'a>, fma: bool) -> Vec<f32> {
    let bs = t.block_size;
    let ctx = t.pos0 + 1;
    let head = t.heads.0;
    let q: &[f32; D] = match t.q[(t.q_row0 * t.num_heads + head) * D..][..D].try_into() {
        Ok(q) => q,
        Err(_) => return vec![0.0; D],
    };
    // Rows are borrowed in place (copying each into a local array defeated vectorisation).
    let row = |pool: &'a [f32], j: usize| -> Option<&'a [f32; D]> {
        let slot = t.block_table[j / bs] as usize * bs + j % bs;
        pool.get((slot * t.num_kv_heads + t.kv_head) * D..)?
            .get(..D)?
            .try_into()
            .ok()
    };
    let mut scores = vec![0f32; ctx];
    for (j, s) in scores.iter_mut().enumerate() {
        if let Some(k) = row(t.kc, j) {
            *s = dot_lanes(q, k, fma) * t.scale;
        }
    }
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let mut acc = [0f32; D];
    for (j, &p) in scores.iter().enumerate() {
        let Some(v) = row(t.vc, j) else { continue };
        for i in 0..D {
            acc[i] = if fma {
                v[i].mul_add(p, acc[i])
            } else {
                acc[i] + p * v[i]
            };
        }
    }
    let inv = 1.0 / sum;
    acc.iter().map(|x| x * inv).collect()
}

#[inline(always)]
fn attend_body(t: &Tile<'_>, fma: bool) -> Vec<f32> {
    if t.nq == 1 && t.heads.1 == 1 {
        match t.head_dim {
            64 => return attend_one::<64>(t, fma),
            128 => return attend_one::<128>(t, fma),
            _ => {}
        }
    }
    let (d, bs, nh) = (t.head_dim, t.block_size, t.heads.1);
    let max_ctx = t.pos0 + t.nq; // keys visible to the tile's last query
    let mut scores = vec![0f32; t.nq * nh * max_ctx];
    let mut out = vec![0f32; t.nq * nh * d];
    let slot = |j: usize| t.block_table[j / bs] as usize * bs + j % bs;
    for j in 0..max_ctx {
        let krow = &t.kc[(slot(j) * t.num_kv_heads + t.kv_head) * d..][..d];
        // Queries before position j cannot see key j.
        for qi in j.saturating_sub(t.pos0)..t.nq {
            for r in 0..nh {
                let qrow = &t.q[((t.q_row0 + qi) * t.num_heads + t.heads.0 + r) * d..][..d];
                scores[(qi * nh + r) * max_ctx + j] = dot_lanes(qrow, krow, fma) * t.scale;
            }
        }
    }
    // Unnormalised weights, normalised at the end: the same arithmetic as `attend_one`,
    // so a token gives bit-identical results whichever path (prefill tile, chunk, decode)
    // computes it — greedy outputs must not depend on how prompts were batched.
    let mut inv_sums = vec![0f32; t.nq * nh];
    for qi in 0..t.nq {
        let visible = t.pos0 + qi + 1;
        for r in 0..nh {
            let row = &mut scores[(qi * nh + r) * max_ctx..][..visible];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut sum = 0f32;
            for x in row.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            inv_sums[qi * nh + r] = 1.0 / sum;
        }
    }
    for j in 0..max_ctx {
        let vrow = &t.vc[(slot(j) * t.num_kv_heads + t.kv_head) * d..][..d];
        for qi in j.saturating_sub(t.pos0)..t.nq {
            for r in 0..nh {
                let p = scores[(qi * nh + r) * max_ctx + j];
                axpy_lanes(&mut out[(qi * nh + r) * d..][..d], p, vrow, fma);
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
        for &d in &[16usize, 64, 128] {
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
}
