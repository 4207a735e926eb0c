//! Activations quantized to 8 bits per 32-block (ggml's Q8_0 / Q8_1), in a kernel-friendly
//! layout that is private to this crate.
//!
//! Per row: `nbp * 32` i8 quants, then per block the f32 pair `(d, s)` with `s = d * sum(q)`
//! (Q8_1's block sum; Q4_1's `m` term needs it). Scales stay f32 (ggml rounds them to f16)
//! since nothing is stored. `nbp` is the block count rounded up to even, the pad block all
//! zero, so 512-bit kernels can always read blocks in pairs.
//!
//! Rounding is to nearest, ties to even, in every level (`_mm256_cvtps_epi32` under the
//! default MXCSR), so for finite inputs all levels produce identical bytes.

use crate::QType;

/// Reusable storage for quantized activations.
#[derive(Default)]
pub(crate) struct ActBuf {
    pub qs: Vec<i8>,
    pub ds: Vec<f32>,
    pub spread: Vec<f32>,
}

/// Quantized activation rows, borrowed from an [`ActBuf`].
#[derive(Clone, Copy)]
pub(crate) struct Acts<'a> {
    pub qs: &'a [i8],
    pub ds: &'a [f32],
    /// Blocks per row actually holding data.
    pub nb: usize,
    /// Blocks per row in storage (`nb` rounded up to even).
    pub nbp: usize,
    /// Per row, per block pair, [`SPREAD`] floats for the 512-bit kernel (empty for the
    /// others): see [`spread_row`].
    pub spread: &'a [f32],
}

/// Floats per block pair in [`Acts::spread`].
pub(crate) const SPREAD: usize = 32;

/// A row's scales laid out as the 512-bit kernel uses them, once per call instead of once
/// per tile: per block pair `[d0; 8], [d1; 8], [s0 / 8; 8], [s1 / 8; 8]` (each block's dot
/// is spread over 8 lanes; each lane adds an eighth of the block's `m * s`, exactly).
pub(crate) fn spread_row(ds_row: &[f32], out: &mut [f32]) {
    for (pair, out) in ds_row.chunks_exact(4).zip(out.chunks_exact_mut(SPREAD)) {
        let (d, s) = out.split_at_mut(16);
        d[..8].fill(pair[0]);
        d[8..].fill(pair[2]);
        s[..8].fill(pair[1] * 0.125);
        s[8..].fill(pair[3] * 0.125);
    }
}

impl Acts<'_> {
    /// Quants of row `c` (`nbp * 32`).
    #[inline]
    pub fn row_qs(&self, c: usize) -> &[i8] {
        let n = self.nbp * QType::BLOCK;
        &self.qs[c * n..(c + 1) * n]
    }

    /// `(d, s)` pairs of row `c` (`nbp * 2`).
    #[inline]
    pub fn row_ds(&self, c: usize) -> &[f32] {
        let n = self.nbp * 2;
        &self.ds[c * n..(c + 1) * n]
    }
}

/// Blocks per stored row for `cols` input features.
pub(crate) fn padded_blocks(cols: usize) -> usize {
    (cols / QType::BLOCK).next_multiple_of(2)
}

/// The block scale and its inverse. Tiny maxima get d = 0 so that `1 / d` stays finite and
/// every level agrees (the block then quantizes to zeros).
#[inline]
pub(crate) fn block_scale(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    if d >= f32::MIN_POSITIVE {
        (d, 1.0 / d)
    } else {
        (0.0, 0.0)
    }
}

/// Portable quantizer: one row of `x` (`nb * 32` values) into `qs` (`nbp * 32`) and `ds`
/// (`nbp * 2`), pad blocks zeroed.
pub(crate) fn quantize_row_scalar(x: &[f32], qs: &mut [i8], ds: &mut [f32]) {
    let nb = x.len() / QType::BLOCK;
    for (b, xb) in x.chunks_exact(QType::BLOCK).enumerate() {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let (d, id) = block_scale(amax);
        let mut sum = 0i32;
        for (q, &v) in qs[b * QType::BLOCK..(b + 1) * QType::BLOCK]
            .iter_mut()
            .zip(xb)
        {
            let qi = (v * id).round_ties_even() as i32;
            sum += qi;
            *q = qi as i8;
        }
        ds[2 * b] = d;
        ds[2 * b + 1] = d * sum as f32;
    }
    qs[nb * QType::BLOCK..].fill(0);
    ds[nb * 2..].fill(0.0);
}
