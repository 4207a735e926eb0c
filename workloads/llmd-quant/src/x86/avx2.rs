//! 256-bit kernels, one 32-weight block per vector: AVX2 (`maddubs` + `madd`, as ggml) and
//! AVX-VNNI (`vpdpbusd`). The tile body is generic over a [`Block`] type that says how one
//! format's block is loaded and dotted; `#[inline(always)]` helpers get compiled inside
//! each `#[target_feature]` tile function, which is what gives them the features.
//!
//! Both integer dots want the weight operand unsigned. 4-bit weights are used as stored
//! (nibbles 0..15); Q4_0's `-8` is applied exactly as `-8 * sum(a)` per lane. For Q8_0, AVX2
//! moves signs onto the activations (ggml's `sign` trick; `maddubs` would saturate on
//! `w + 128`), while VNNI, which adds in 32 bits, uses `w ^ 0x80 = w + 128` and subtracts
//! `128 * sum(a)`.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::{hsum256, rd16, rd32, Avx2, AvxVnni};
use crate::act::Acts;
use crate::matmul::{run_tiles, Task, TileArgs, TileOut};
use crate::{QMatrix, QType};

/// How one format's block goes through the 256-bit tile.
///
/// # Safety
/// Every method needs AVX2 (and AVX-VNNI for the `Vnni*` types) enabled in the caller,
/// and pointers readable for one weight block / 32 activation bytes.
trait Block {
    const BB: usize;
    /// Q4_1: the block has a min `m` (added as `m * s` per block).
    const MIN: bool;
    type W: Copy;
    type A: Copy;
    unsafe fn load_w(blk: *const u8) -> Self::W;
    /// `(d, m)` broadcast to 8 lanes (`m` is zero where `!MIN`).
    unsafe fn scales(blk: *const u8) -> (__m256, __m256);
    unsafe fn load_a(q: *const i8) -> Self::A;
    /// Per-lane integer partial dots; the lanes sum to the block's exact integer dot.
    unsafe fn dot(w: Self::W, a: Self::A) -> __m256i;
}

/// The 32 nibbles at `qs` as bytes 0..15: low nibbles first, then high.
#[inline(always)]
unsafe fn nibbles(qs: *const u8) -> __m256i {
    // SAFETY: qs has 16 readable bytes; AVX2 is enabled in the caller.
    unsafe {
        let v = _mm_loadu_si128(qs as *const __m128i);
        let both = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);
        _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
    }
}

/// The f16 at `p` broadcast as f32.
#[inline(always)]
unsafe fn scale_d(p: *const u8) -> __m256 {
    // SAFETY: p has 2 readable bytes; F16C/AVX2 enabled in the caller.
    unsafe { _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(rd16(p) as i32))) }
}

/// The f16 pair `(d, m)` at `p`, each broadcast as f32.
#[inline(always)]
unsafe fn scale_dm(p: *const u8) -> (__m256, __m256) {
    // SAFETY: p has 4 readable bytes; F16C/AVX2 enabled in the caller.
    unsafe {
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(rd32(p) as i32));
        (
            _mm256_broadcastss_ps(dm),
            _mm256_broadcastss_ps(_mm_movehdup_ps(dm)),
        )
    }
}

#[inline(always)]
unsafe fn load32(q: *const i8) -> __m256i {
    // SAFETY: q has 32 readable bytes.
    unsafe { _mm256_loadu_si256(q as *const __m256i) }
}

/// i16 pairs to i32 lanes.
#[inline(always)]
unsafe fn widen(p16: __m256i) -> __m256i {
    // SAFETY: AVX2 enabled in the caller.
    unsafe { _mm256_madd_epi16(p16, _mm256_set1_epi16(1)) }
}

/// `-(k * sum(a))` per 32-bit lane (4 activations each), for VNNI's accumulator input.
#[inline(always)]
unsafe fn neg_lane_sums(a: __m256i, k: i8) -> __m256i {
    // SAFETY: AVX-VNNI enabled in the caller.
    unsafe {
        let zero = _mm256_setzero_si256();
        _mm256_sub_epi32(zero, _mm256_dpbusd_avx_epi32(zero, _mm256_set1_epi8(k), a))
    }
}

struct Q40Madd;
struct Q41Madd;
struct Q80Madd;
struct Q40Vnni;
struct Q41Vnni;
struct Q80Vnni;

impl Block for Q40Madd {
    const BB: usize = 18;
    const MIN: bool = false;
    type W = __m256i;
    /// Activations and `8 * (a[2i] + a[2i+1])` per i16 lane.
    type A = (__m256i, __m256i);
    #[inline(always)]
    unsafe fn load_w(blk: *const u8) -> __m256i {
        // SAFETY: per the trait contract.
        unsafe { nibbles(blk.add(2)) }
    }
    #[inline(always)]
    unsafe fn scales(blk: *const u8) -> (__m256, __m256) {
        // SAFETY: per the trait contract.
        unsafe { (scale_d(blk), _mm256_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn load_a(q: *const i8) -> Self::A {
        // SAFETY: per the trait contract.
        unsafe {
            let a = load32(q);
            (a, _mm256_maddubs_epi16(_mm256_set1_epi8(8), a))
        }
    }
    #[inline(always)]
    unsafe fn dot(w: __m256i, (a, corr): Self::A) -> __m256i {
        // SAFETY: per the trait contract. Pair sums are at most 2 * 15 * 127: no saturation.
        unsafe { widen(_mm256_sub_epi16(_mm256_maddubs_epi16(w, a), corr)) }
    }
}

impl Block for Q41Madd {
    const BB: usize = 20;
    const MIN: bool = true;
    type W = __m256i;
    type A = __m256i;
    #[inline(always)]
    unsafe fn load_w(blk: *const u8) -> __m256i {
        // SAFETY: per the trait contract.
        unsafe { nibbles(blk.add(4)) }
    }
    #[inline(always)]
    unsafe fn scales(blk: *const u8) -> (__m256, __m256) {
        // SAFETY: per the trait contract.
        unsafe { scale_dm(blk) }
    }
    #[inline(always)]
    unsafe fn load_a(q: *const i8) -> __m256i {
        // SAFETY: per the trait contract.
        unsafe { load32(q) }
    }
    #[inline(always)]
    unsafe fn dot(w: __m256i, a: __m256i) -> __m256i {
        // SAFETY: per the trait contract.
        unsafe { widen(_mm256_maddubs_epi16(w, a)) }
    }
}

impl Block for Q80Madd {
    const BB: usize = 34;
    const MIN: bool = false;
    /// `(|w|, w)`.
    type W = (__m256i, __m256i);
    type A = __m256i;
    #[inline(always)]
    unsafe fn load_w(blk: *const u8) -> Self::W {
        // SAFETY: per the trait contract.
        unsafe {
            let w = load32(blk.add(2) as *const i8);
            (_mm256_abs_epi8(w), w)
        }
    }
    #[inline(always)]
    unsafe fn scales(blk: *const u8) -> (__m256, __m256) {
        // SAFETY: per the trait contract.
        unsafe { (scale_d(blk), _mm256_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn load_a(q: *const i8) -> __m256i {
        // SAFETY: per the trait contract.
        unsafe { load32(q) }
    }
    #[inline(always)]
    unsafe fn dot((abs_w, w): Self::W, a: __m256i) -> __m256i {
        // SAFETY: per the trait contract. |w| <= 128 and |a| <= 127: pair sums fit i16.
        unsafe { widen(_mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(a, w))) }
    }
}

impl Block for Q40Vnni {
    const BB: usize = 18;
    const MIN: bool = false;
    type W = __m256i;
    type A = (__m256i, __m256i);
    #[inline(always)]
    unsafe fn load_w(blk: *const u8) -> __m256i {
        // SAFETY: per the trait contract.
        unsafe { Q40Madd::load_w(blk) }
    }
    #[inline(always)]
    unsafe fn scales(blk: *const u8) -> (__m256, __m256) {
        // SAFETY: per the trait contract.
        unsafe { Q40Madd::scales(blk) }
    }
    #[inline(always)]
    unsafe fn load_a(q: *const i8) -> Self::A {
        // SAFETY: per the trait contract.
        unsafe {
            let a = load32(q);
            (a, neg_lane_sums(a, 8))
        }
    }
    #[inline(always)]
    unsafe fn dot(w: __m256i, (a, neg): Self::A) -> __m256i {
        // SAFETY: per the trait contract.
        unsafe { _mm256_dpbusd_avx_epi32(neg, w, a) }
    }
}

impl Block for Q41Vnni {
    const BB: usize = 20;
    const MIN: bool = true;
    type W = __m256i;
    type A = __m256i;
    #[inline(always)]
    unsafe fn load_w(blk: *const u8) -> __m256i {
        // SAFETY: per the trait contract.
        unsafe { Q41Madd::load_w(blk) }
    }
    #[inline(always)]
    unsafe fn scales(blk: *const u8) -> (__m256, __m256) {
        // SAFETY: per the trait contract.
        unsafe { scale_dm(blk) }
    }
    #[inline(always)]
    unsafe fn load_a(q: *const i8) -> __m256i {
        // SAFETY: per the trait contract.
        unsafe { load32(q) }
    }
    #[inline(always)]
    unsafe fn dot(w: __m256i, a: __m256i) -> __m256i {
        // SAFETY: per the trait contract.
        unsafe { _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, a) }
    }
}

impl Block for Q80Vnni {
    const BB: usize = 34;
    const MIN: bool = false;
    type W = __m256i;
    type A = (__m256i, __m256i);
    #[inline(always)]
    unsafe fn load_w(blk: *const u8) -> __m256i {
        // SAFETY: per the trait contract.
        unsafe {
            let w = load32(blk.add(2) as *const i8);
            _mm256_xor_si256(w, _mm256_set1_epi8(i8::MIN))
        }
    }
    #[inline(always)]
    unsafe fn scales(blk: *const u8) -> (__m256, __m256) {
        // SAFETY: per the trait contract.
        unsafe { (scale_d(blk), _mm256_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn load_a(q: *const i8) -> Self::A {
        // SAFETY: per the trait contract.
        unsafe {
            let a = load32(q);
            (a, neg_lane_sums(a, i8::MIN))
        }
    }
    #[inline(always)]
    unsafe fn dot(w: __m256i, (a, neg): Self::A) -> __m256i {
        // SAFETY: per the trait contract.
        unsafe { _mm256_dpbusd_avx_epi32(neg, w, a) }
    }
}

/// `R` weight rows by `C` activation rows over all blocks; `res[r][c]` gets the dots.
///
/// # Safety
/// The features `K` needs are enabled in the caller; `t.w` holds `R` rows and `t.aq`/`t.ads`
/// hold `C` rows (asserted).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // r and c index several arrays together
unsafe fn tile<K: Block, const R: usize, const C: usize>(t: &TileArgs<'_>, res: &mut TileOut) {
    assert!(R <= 4 && C <= 4);
    assert!(t.nb <= t.nbp && t.w.len() >= R * t.row_bytes && t.row_bytes >= t.nb * K::BB);
    let (qs_row, ds_row) = (t.nbp * QType::BLOCK, t.nbp * 2);
    assert!(t.aq.len() >= C * qs_row && t.ads.len() >= C * ds_row);
    // SAFETY: every pointer below stays inside the slices asserted above: weight block
    // b < nb of row r < R, activation block b < nb of row c < C.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for b in 0..t.nb {
            let wb = t.w.as_ptr().add(b * K::BB);
            let mut ws = [K::load_w(wb); R];
            let mut sc = [K::scales(wb); R];
            for r in 1..R {
                ws[r] = K::load_w(wb.add(r * t.row_bytes));
                sc[r] = K::scales(wb.add(r * t.row_bytes));
            }
            // The same block of the next tile's rows: the tile walks R rows in parallel,
            // which hardware prefetchers follow poorly once there is compute in between.
            // A prefetch never faults, so running past the matrix is harmless.
            for r in 0..R {
                let ahead = wb.wrapping_add((r + R) * t.row_bytes) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(ahead);
            }
            for c in 0..C {
                let a = K::load_a(t.aq.as_ptr().add(c * qs_row + b * QType::BLOCK));
                let ds = t.ads.as_ptr().add(c * ds_row + 2 * b);
                let da = _mm256_broadcast_ss(&*ds);
                // Each of the 8 lanes adds an eighth of the block's m * s (exact scaling).
                let s8 = _mm256_set1_ps(*ds.add(1) * 0.125);
                for r in 0..R {
                    let p = _mm256_cvtepi32_ps(K::dot(ws[r], a));
                    acc[r][c] = _mm256_fmadd_ps(p, _mm256_mul_ps(sc[r].0, da), acc[r][c]);
                    if K::MIN {
                        acc[r][c] = _mm256_fmadd_ps(sc[r].1, s8, acc[r][c]);
                    }
                }
            }
        }
        for (res, acc) in res.iter_mut().zip(&acc) {
            for (res, acc) in res.iter_mut().zip(acc) {
                *res = hsum256(*acc);
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<K: Block, const R: usize, const C: usize>(t: &TileArgs<'_>, res: &mut TileOut) {
    // SAFETY: AVX2/FMA/F16C enabled here, shapes per the caller's dispatch.
    unsafe { tile::<K, R, C>(t, res) }
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn tile_vnni<K: Block, const R: usize, const C: usize>(t: &TileArgs<'_>, res: &mut TileOut) {
    // SAFETY: AVX2/FMA/F16C/AVX-VNNI enabled here, shapes per the caller's dispatch.
    unsafe { tile::<K, R, C>(t, res) }
}

/// Calls `$f::<$k, nr, nc>` for a runtime shape up to 4 x 4.
macro_rules! dispatch {
    ($f:ident, $k:ty, $nr:expr, $nc:expr, $t:expr, $res:expr) => {
        match ($nr, $nc) {
            (4, 4) => $f::<$k, 4, 4>($t, $res),
            (4, 3) => $f::<$k, 4, 3>($t, $res),
            (4, 2) => $f::<$k, 4, 2>($t, $res),
            (4, 1) => $f::<$k, 4, 1>($t, $res),
            (3, 4) => $f::<$k, 3, 4>($t, $res),
            (3, 3) => $f::<$k, 3, 3>($t, $res),
            (3, 2) => $f::<$k, 3, 2>($t, $res),
            (3, 1) => $f::<$k, 3, 1>($t, $res),
            (2, 4) => $f::<$k, 2, 4>($t, $res),
            (2, 3) => $f::<$k, 2, 3>($t, $res),
            (2, 2) => $f::<$k, 2, 2>($t, $res),
            (2, 1) => $f::<$k, 2, 1>($t, $res),
            (1, 4) => $f::<$k, 1, 4>($t, $res),
            (1, 3) => $f::<$k, 1, 3>($t, $res),
            (1, 2) => $f::<$k, 1, 2>($t, $res),
            _ => $f::<$k, 1, 1>($t, $res),
        }
    };
}
pub(super) use dispatch;

/// Tile shape (weight rows, activation rows), measured best on Zen 5 among 1..4 x 1..4 for
/// both dots: 16 ymm registers hold 8 accumulators plus operands.
const TILE: (usize, usize) = (2, 4);
/// Tile shape for a single activation row (decode): more weight rows share each
/// activation load.
const TILE_M1: (usize, usize) = (4, 1);

/// The tile shape for a task.
pub(super) fn tile_shape(
    task: &Task<'_>,
    tile: (usize, usize),
    tile_m1: (usize, usize),
) -> (usize, usize) {
    if task.c1 - task.c0 == 1 {
        tile_m1
    } else {
        tile
    }
}

impl Avx2 {
    pub(crate) fn run_task(self, w: &QMatrix, a: &Acts<'_>, task: &mut Task<'_>) {
        let (rt, ct) = tile_shape(task, TILE, TILE_M1);
        match w.qtype() {
            // SAFETY (each arm): the token proves AVX2/FMA/F16C; run_tiles hands out
            // nr x nc tiles with nr, nc <= 4 whose slices hold nr and nc rows.
            QType::Q4_0 => run_tiles(w, a, task, rt, ct, |nr, nc, t, res| unsafe {
                dispatch!(tile_avx2, Q40Madd, nr, nc, t, res)
            }),
            QType::Q4_1 => run_tiles(w, a, task, rt, ct, |nr, nc, t, res| unsafe {
                dispatch!(tile_avx2, Q41Madd, nr, nc, t, res)
            }),
            QType::Q8_0 => run_tiles(w, a, task, rt, ct, |nr, nc, t, res| unsafe {
                dispatch!(tile_avx2, Q80Madd, nr, nc, t, res)
            }),
        }
    }
}

impl AvxVnni {
    pub(crate) fn run_task(self, w: &QMatrix, a: &Acts<'_>, task: &mut Task<'_>) {
        let (rt, ct) = tile_shape(task, TILE, TILE_M1);
        match w.qtype() {
            // SAFETY (each arm): the token proves AVX2/FMA/F16C/AVX-VNNI; run_tiles hands
            // out nr x nc tiles with nr, nc <= 4 whose slices hold nr and nc rows.
            QType::Q4_0 => run_tiles(w, a, task, rt, ct, |nr, nc, t, res| unsafe {
                dispatch!(tile_vnni, Q40Vnni, nr, nc, t, res)
            }),
            QType::Q4_1 => run_tiles(w, a, task, rt, ct, |nr, nc, t, res| unsafe {
                dispatch!(tile_vnni, Q41Vnni, nr, nc, t, res)
            }),
            QType::Q8_0 => run_tiles(w, a, task, rt, ct, |nr, nc, t, res| unsafe {
                dispatch!(tile_vnni, Q80Vnni, nr, nc, t, res)
            }),
        }
    }
}
