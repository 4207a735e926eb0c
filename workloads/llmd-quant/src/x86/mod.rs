//! x86-64 kernels: feature tokens (proof that detection passed), the AVX2 activation
//! quantizer, and the 256-bit (`avx2`) and 512-bit (`avx512`) matmul kernels.
//!
//! A token can only be built by its `new`, which checks the CPU; every `#[target_feature]`
//! function is reached only through a token's methods, which is what makes calling them
//! sound.
#![allow(unsafe_code)]

mod avx2;
mod avx512;

use std::arch::x86_64::*;

use crate::act::block_scale;
use crate::QType;

/// AVX2 + FMA + F16C are present.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

/// [`Avx2`] plus AVX-VNNI.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AvxVnni(());

/// [`Avx2`] plus AVX-512 F, BW, VL and VNNI.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(());

impl Avx2 {
    pub(crate) fn new() -> Option<Self> {
        (is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        .then_some(Self(()))
    }

    /// Quantizes one activation row; identical output to `act::quantize_row_scalar`.
    pub(crate) fn quantize_row(self, x: &[f32], qs: &mut [i8], ds: &mut [f32]) {
        // SAFETY: the token proves AVX2/FMA/F16C; slice lengths are checked inside.
        unsafe { quantize_row_avx2(x, qs, ds) }
    }
}

impl AvxVnni {
    pub(crate) fn new() -> Option<Self> {
        Avx2::new()?;
        is_x86_feature_detected!("avxvnni").then_some(Self(()))
    }

    pub(crate) fn avx2(self) -> Avx2 {
        Avx2(())
    }
}

impl Avx512 {
    pub(crate) fn new() -> Option<Self> {
        Avx2::new()?;
        (is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni"))
        .then_some(Self(()))
    }

    pub(crate) fn avx2(self) -> Avx2 {
        Avx2(())
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_row_avx2(x: &[f32], qs: &mut [i8], ds: &mut [f32]) {
    const B: usize = QType::BLOCK;
    let nb = x.len() / B;
    assert!(x.len() == nb * B && qs.len() >= nb * B && ds.len() >= nb * 2);
    let sign = _mm256_set1_ps(-0.0);
    // packs_epi32/epi16 interleave 128-bit lanes; this puts the dwords back in order.
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..nb {
        // SAFETY: block b lies inside x and qs (asserted above); unaligned loads/stores.
        unsafe {
            let p = x.as_ptr().add(b * B);
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let mut mx = _mm256_andnot_ps(sign, v[0]);
            for &vi in &v[1..] {
                mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, vi));
            }
            let mut m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            let (d, id) = block_scale(_mm_cvtss_f32(m4));
            let mul = _mm256_set1_ps(id);
            // Default MXCSR rounding: nearest, ties to even, as `round_ties_even`.
            let i: [__m256i; 4] = v.map(|vi| _mm256_cvtps_epi32(_mm256_mul_ps(vi, mul)));
            let s = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
            let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
            let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, 1));
            let sum = _mm_cvtsi128_si32(s1);
            let p16a = _mm256_packs_epi32(i[0], i[1]);
            let p16b = _mm256_packs_epi32(i[2], i[3]);
            let q = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), perm);
            _mm256_storeu_si256(qs.as_mut_ptr().add(b * B) as *mut __m256i, q);
            ds[2 * b] = d;
            ds[2 * b + 1] = d * sum as f32;
        }
    }
    qs[nb * B..].fill(0);
    ds[nb * 2..].fill(0.0);
}

/// Sum of the 8 lanes.
#[inline(always)]
unsafe fn hsum256(v: __m256) -> f32 {
    // SAFETY: callers run with AVX enabled (inside a target_feature function).
    unsafe {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
        _mm_cvtss_f32(s1)
    }
}

/// Little-endian u16 at `p`.
#[inline(always)]
unsafe fn rd16(p: *const u8) -> u16 {
    // SAFETY: callers pass a pointer with 2 readable bytes.
    u16::from_le(unsafe { (p as *const u16).read_unaligned() })
}

/// Little-endian u32 at `p`.
#[inline(always)]
unsafe fn rd32(p: *const u8) -> u32 {
    // SAFETY: callers pass a pointer with 4 readable bytes.
    u32::from_le(unsafe { (p as *const u32).read_unaligned() })
}
