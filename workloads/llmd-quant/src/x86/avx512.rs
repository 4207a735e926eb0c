//! 512-bit AVX-512 VNNI kernel: two 32-weight blocks per `vpdpbusd` (lanes 0..8 block b,
//! lanes 8..16 block b + 1). Activation rows are padded to an even block count with a zero
//! block, so an odd last weight block pairs with itself against zeros.
//!
//! Integer tricks as the AVX-VNNI kernel: nibbles stay unsigned, Q4_0's `-8` and Q8_0's
//! `+128` offset come off as `k * sum(a)` through the accumulator input.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::avx2::{dispatch, tile_shape};
use super::{rd16, rd32, Avx512};
use crate::act::{Acts, SPREAD};
use crate::matmul::{run_tiles, Task, TileArgs, TileOut};
use crate::{QMatrix, QType};

/// How one format's block pair goes through the 512-bit tile.
///
/// # Safety
/// Every method needs AVX-512 F/BW/VL/VNNI and F16C enabled in the caller, and pointers
/// readable for one weight block each / 64 activation bytes.
trait Pair {
    const BB: usize;
    const MIN: bool;
    type A: Copy;
    /// The weights of blocks `b0` and `b1` as unsigned bytes.
    unsafe fn load_w(b0: *const u8, b1: *const u8) -> __m512i;
    /// `(d, m)`, each block's value in its 8 lanes (`m` zero where `!MIN`).
    unsafe fn scales(b0: *const u8, b1: *const u8) -> (__m512, __m512);
    unsafe fn load_a(q: *const i8) -> Self::A;
    unsafe fn dot(w: __m512i, a: Self::A) -> __m512i;
}

/// Lane indices spreading floats 0 and 1 (or 0 and 2, 1 and 3) over halves of a zmm.
#[inline(always)]
unsafe fn spread(lo: i32, hi: i32) -> __m512i {
    // SAFETY: AVX-512F enabled in the caller.
    unsafe {
        _mm512_setr_epi32(
            lo, lo, lo, lo, lo, lo, lo, lo, hi, hi, hi, hi, hi, hi, hi, hi,
        )
    }
}

/// Nibbles of two blocks (16 bytes each at `q0`, `q1`) as bytes 0..15, in element order.
#[inline(always)]
unsafe fn nibbles2(q0: *const u8, q1: *const u8) -> __m512i {
    // SAFETY: q0 and q1 have 16 readable bytes; AVX-512F/BW enabled in the caller.
    unsafe {
        let lo = _mm_loadu_si128(q0 as *const __m128i);
        let hi = _mm_loadu_si128(q1 as *const __m128i);
        // [q0, q0, q1, q1], then 128-bit lanes 1 and 3 shift down by 4 for high nibbles.
        let z = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(lo), 0xFF00, hi);
        let shift = _mm512_setr_epi64(
            0,
            0,
            0x0004_0004_0004_0004,
            0x0004_0004_0004_0004,
            0,
            0,
            0x0004_0004_0004_0004,
            0x0004_0004_0004_0004,
        );
        _mm512_and_si512(_mm512_srlv_epi16(z, shift), _mm512_set1_epi8(0x0F))
    }
}

/// f16 `d` of two blocks at `p0`, `p1`, spread over the halves.
#[inline(always)]
unsafe fn scale_d2(p0: *const u8, p1: *const u8) -> __m512 {
    // SAFETY: 2 readable bytes each; AVX-512F/F16C enabled in the caller.
    unsafe {
        let bits = rd16(p0) as u32 | (rd16(p1) as u32) << 16;
        let d = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
        _mm512_permutexvar_ps(spread(0, 1), _mm512_castps128_ps512(d))
    }
}

/// 64 activation bytes.
#[inline(always)]
unsafe fn load64(q: *const i8) -> __m512i {
    // SAFETY: q has 64 readable bytes.
    unsafe { _mm512_loadu_si512(q as *const __m512i) }
}

/// `-(k * sum(a))` per 32-bit lane, for the accumulator input.
#[inline(always)]
unsafe fn neg_lane_sums(a: __m512i, k: i8) -> __m512i {
    // SAFETY: AVX-512 VNNI enabled in the caller.
    unsafe {
        let zero = _mm512_setzero_si512();
        _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, _mm512_set1_epi8(k), a))
    }
}

struct Q40;
struct Q41;
struct Q80;

impl Pair for Q40 {
    const BB: usize = 18;
    const MIN: bool = false;
    type A = (__m512i, __m512i);
    #[inline(always)]
    unsafe fn load_w(b0: *const u8, b1: *const u8) -> __m512i {
        // SAFETY: per the trait contract.
        unsafe { nibbles2(b0.add(2), b1.add(2)) }
    }
    #[inline(always)]
    unsafe fn scales(b0: *const u8, b1: *const u8) -> (__m512, __m512) {
        // SAFETY: per the trait contract.
        unsafe { (scale_d2(b0, b1), _mm512_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn load_a(q: *const i8) -> Self::A {
        // SAFETY: per the trait contract.
        unsafe {
            let a = load64(q);
            (a, neg_lane_sums(a, 8))
        }
    }
    #[inline(always)]
    unsafe fn dot(w: __m512i, (a, neg): Self::A) -> __m512i {
        // SAFETY: per the trait contract.
        unsafe { _mm512_dpbusd_epi32(neg, w, a) }
    }
}

impl Pair for Q41 {
    const BB: usize = 20;
    const MIN: bool = true;
    type A = __m512i;
    #[inline(always)]
    unsafe fn load_w(b0: *const u8, b1: *const u8) -> __m512i {
        // SAFETY: per the trait contract.
        unsafe { nibbles2(b0.add(4), b1.add(4)) }
    }
    #[inline(always)]
    unsafe fn scales(b0: *const u8, b1: *const u8) -> (__m512, __m512) {
        // SAFETY: per the trait contract.
        unsafe {
            // [d0, m0, d1, m1] from the two blocks' 4-byte headers.
            let dm = _mm_cvtph_ps(_mm_setr_epi32(rd32(b0) as i32, rd32(b1) as i32, 0, 0));
            let dm = _mm512_castps128_ps512(dm);
            (
                _mm512_permutexvar_ps(spread(0, 2), dm),
                _mm512_permutexvar_ps(spread(1, 3), dm),
            )
        }
    }
    #[inline(always)]
    unsafe fn load_a(q: *const i8) -> __m512i {
        // SAFETY: per the trait contract.
        unsafe { load64(q) }
    }
    #[inline(always)]
    unsafe fn dot(w: __m512i, a: __m512i) -> __m512i {
        // SAFETY: per the trait contract.
        unsafe { _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, a) }
    }
}

impl Pair for Q80 {
    const BB: usize = 34;
    const MIN: bool = false;
    type A = (__m512i, __m512i);
    #[inline(always)]
    unsafe fn load_w(b0: *const u8, b1: *const u8) -> __m512i {
        // SAFETY: per the trait contract.
        unsafe {
            let lo = _mm256_loadu_si256(b0.add(2) as *const __m256i);
            let hi = _mm256_loadu_si256(b1.add(2) as *const __m256i);
            let w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            _mm512_xor_si512(w, _mm512_set1_epi8(i8::MIN))
        }
    }
    #[inline(always)]
    unsafe fn scales(b0: *const u8, b1: *const u8) -> (__m512, __m512) {
        // SAFETY: per the trait contract.
        unsafe { (scale_d2(b0, b1), _mm512_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn load_a(q: *const i8) -> Self::A {
        // SAFETY: per the trait contract.
        unsafe {
            let a = load64(q);
            (a, neg_lane_sums(a, i8::MIN))
        }
    }
    #[inline(always)]
    unsafe fn dot(w: __m512i, (a, neg): Self::A) -> __m512i {
        // SAFETY: per the trait contract.
        unsafe { _mm512_dpbusd_epi32(neg, w, a) }
    }
}

/// `R` weight rows by `C` activation rows over all blocks; `res[r][c]` gets the dots.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI and F16C enabled in the caller; `t.w` holds `R` rows and
/// `t.aq`/`t.ads` hold `C` rows (asserted).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile<K: Pair, const R: usize, const C: usize>(t: &TileArgs<'_>, res: &mut TileOut) {
    assert!(R <= 4 && C <= 4);
    assert!(t.nbp.is_multiple_of(2) && t.nb <= t.nbp);
    assert!(t.w.len() >= R * t.row_bytes && t.row_bytes >= t.nb * K::BB);
    let (qs_row, ds_row) = (t.nbp * QType::BLOCK, t.nbp * 2);
    assert!(t.aq.len() >= C * qs_row && t.ads.len() >= C * ds_row);
    assert!(t.spread.len() >= C * (t.nbp / 2) * SPREAD);
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    // SAFETY (both calls): b0, b1 < nb and rows < R stay inside t.w; pair p < nbp / 2 of
    // rows < C stays inside t.aq / t.ads (asserted above); features enabled here.
    for p in 0..t.nb / 2 {
        unsafe { step::<K, R, C>(t, &mut acc, 2 * p, 2 * p + 1, p) };
    }
    if !t.nb.is_multiple_of(2) {
        // The pad activation block is zero, so the repeated weight block adds nothing.
        unsafe { step::<K, R, C>(t, &mut acc, t.nb - 1, t.nb - 1, t.nb / 2) };
    }
    for (res, acc) in res.iter_mut().zip(&acc) {
        for (res, acc) in res.iter_mut().zip(acc) {
            *res = _mm512_reduce_add_ps(*acc);
        }
    }
}

/// Weight blocks `b0`, `b1` of `R` rows against activation block pair `p` (blocks 2p and
/// 2p + 1) of `C` rows.
///
/// # Safety
/// As [`tile`], with `b0, b1 < nb` and `p < nbp / 2`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // r and c index several arrays together
unsafe fn step<K: Pair, const R: usize, const C: usize>(
    t: &TileArgs<'_>,
    acc: &mut [[__m512; C]; R],
    b0: usize,
    b1: usize,
    p: usize,
) {
    let qs_row = t.nbp * QType::BLOCK;
    // SAFETY: per this function's contract.
    unsafe {
        let w0 = t.w.as_ptr().add(b0 * K::BB);
        let w1 = t.w.as_ptr().add(b1 * K::BB);
        let mut ws = [_mm512_setzero_si512(); R];
        let mut sc = [(_mm512_setzero_ps(), _mm512_setzero_ps()); R];
        for r in 0..R {
            let (p0, p1) = (w0.add(r * t.row_bytes), w1.add(r * t.row_bytes));
            ws[r] = K::load_w(p0, p1);
            sc[r] = K::scales(p0, p1);
            // The same blocks of the next tile's rows: the tile walks R rows in parallel,
            // which hardware prefetchers follow poorly once there is compute in between.
            // A prefetch never faults, so running past the matrix is harmless.
            let ahead = p0.wrapping_add(R * t.row_bytes) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            if 2 * K::BB > 64 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
            }
        }
        for c in 0..C {
            let a = K::load_a(t.aq.as_ptr().add(c * qs_row + p * 2 * QType::BLOCK));
            // The pair's scales, spread over the lanes (see `spread_row`).
            let sp = t.spread.as_ptr().add((c * (t.nbp / 2) + p) * SPREAD);
            let da = _mm512_loadu_ps(sp);
            let s8 = if K::MIN {
                _mm512_loadu_ps(sp.add(16))
            } else {
                _mm512_setzero_ps()
            };
            for r in 0..R {
                let dot = _mm512_cvtepi32_ps(K::dot(ws[r], a));
                acc[r][c] = _mm512_fmadd_ps(dot, _mm512_mul_ps(sc[r].0, da), acc[r][c]);
                if K::MIN {
                    acc[r][c] = _mm512_fmadd_ps(sc[r].1, s8, acc[r][c]);
                }
            }
        }
    }
}

/// Tile shape (weight rows, activation rows), measured best on Zen 5 among 3..4 x 3..4:
/// 32 zmm registers hold 12 accumulators plus the operands (2 x 8 measured slower).
const TILE: (usize, usize) = (3, 4);
/// Tile shape for a single activation row (decode).
const TILE_M1: (usize, usize) = (4, 1);

impl Avx512 {
    pub(crate) fn run_task(self, w: &QMatrix, a: &Acts<'_>, task: &mut Task<'_>) {
        let (rt, ct) = tile_shape(task, TILE, TILE_M1);
        match w.qtype() {
            // SAFETY (each arm): the token proves AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C;
            // run_tiles hands out nr x nc tiles with nr, nc <= 4 whose slices hold nr and nc
            // rows.
            QType::Q4_0 => run_tiles(w, a, task, rt, ct, |nr, nc, t, res| unsafe {
                dispatch!(tile, Q40, nr, nc, t, res)
            }),
            QType::Q4_1 => run_tiles(w, a, task, rt, ct, |nr, nc, t, res| unsafe {
                dispatch!(tile, Q41, nr, nc, t, res)
            }),
            QType::Q8_0 => run_tiles(w, a, task, rt, ct, |nr, nc, t, res| unsafe {
                dispatch!(tile, Q80, nr, nc, t, res)
            }),
        }
    }
}
