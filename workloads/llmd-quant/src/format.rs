//! GGML block layouts (Q4_0, Q4_1, Q8_0): type ids, sizes, reference quantize / dequantize.
//!
//! Layouts are GGML's, little endian, 32 weights per block:
//! - Q4_0: f16 d, 16 bytes qs; low nibbles are elements 0..16, high nibbles 16..32;
//!   value = (q - 8) * d.
//! - Q4_1: f16 d, f16 m, 16 bytes qs (nibbles as Q4_0); value = q * d + m.
//! - Q8_0: f16 d, 32 x i8 qs; value = q * d.

use half::f16;

/// A GGML quantized weight format handled by this crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QType {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl QType {
    /// Weights per block, for every format here.
    pub const BLOCK: usize = 32;

    /// Maps a GGML type id (`ggml_type`) to a format, `None` for formats not handled here.
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        match id {
            2 => Some(Self::Q4_0),
            3 => Some(Self::Q4_1),
            8 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// The GGML type id (`ggml_type`).
    pub fn ggml_id(self) -> u32 {
        match self {
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
        }
    }

    /// Bytes per block of 32 weights.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
        }
    }
}

impl std::fmt::Display for QType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads the little-endian f16 at `blk[at..at + 2]` as f32.
#[inline]
pub(crate) fn f16_at(blk: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([blk[at], blk[at + 1]])).to_f32()
}

fn put_f16(out: &mut [u8], at: usize, v: f32) {
    out[at..at + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// Quantizes 32 values into one block, as ggml's `quantize_row_*_ref` does.
pub(crate) fn quantize_block(qtype: QType, x: &[f32], out: &mut [u8]) {
    debug_assert_eq!(x.len(), QType::BLOCK);
    debug_assert_eq!(out.len(), qtype.block_bytes());
    const HALF: usize = QType::BLOCK / 2;
    match qtype {
        QType::Q4_0 => {
            // The value of largest magnitude maps to q = 0 (-8 * d), keeping its sign.
            let (mut amax, mut max) = (0f32, 0f32);
            for &v in x {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(out, 0, d);
            for j in 0..HALF {
                // `as i8` truncates toward zero like ggml's `(int8_t)` cast.
                let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
                let q1 = ((x[HALF + j] * id + 8.5) as i8).min(15) as u8;
                out[2 + j] = q0 | (q1 << 4);
            }
        }
        QType::Q4_1 => {
            let (mut min, mut max) = (f32::MAX, -f32::MAX);
            for &v in x {
                min = if v < min { v } else { min };
                max = if v > max { v } else { max };
            }
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(out, 0, d);
            put_f16(out, 2, min);
            for j in 0..HALF {
                let q0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
                let q1 = (((x[HALF + j] - min) * id + 0.5) as i8).min(15) as u8;
                out[4 + j] = q0 | (q1 << 4);
            }
        }
        QType::Q8_0 => {
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(out, 0, d);
            for (o, &v) in out[2..].iter_mut().zip(x) {
                // roundf: halves away from zero, as ggml.
                *o = (v * id).round() as i8 as u8;
            }
        }
    }
}

/// Dequantizes one block into 32 values.
pub(crate) fn dequantize_block(qtype: QType, blk: &[u8], y: &mut [f32]) {
    debug_assert_eq!(blk.len(), qtype.block_bytes());
    debug_assert_eq!(y.len(), QType::BLOCK);
    const HALF: usize = QType::BLOCK / 2;
    let d = f16_at(blk, 0);
    match qtype {
        QType::Q4_0 => {
            for (j, &q) in blk[2..18].iter().enumerate() {
                y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
                y[HALF + j] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }
        QType::Q4_1 => {
            let m = f16_at(blk, 2);
            for (j, &q) in blk[4..20].iter().enumerate() {
                y[j] = (q & 0x0F) as f32 * d + m;
                y[HALF + j] = (q >> 4) as f32 * d + m;
            }
        }
        QType::Q8_0 => {
            for (o, &q) in y.iter_mut().zip(&blk[2..34]) {
                *o = q as i8 as f32 * d;
            }
        }
    }
}

/// Decodes one block to integer weights plus scales for the scalar kernel: the block's
/// value is `q[j] * d + m` (Q4_0: q = nibble - 8 and m = 0; Q8_0: m = 0).
#[inline]
pub(crate) fn decode_block_int(qtype: QType, blk: &[u8], q: &mut [i8]) -> (f32, f32) {
    const HALF: usize = QType::BLOCK / 2;
    let d = f16_at(blk, 0);
    match qtype {
        QType::Q4_0 => {
            for (j, &b) in blk[2..18].iter().enumerate() {
                q[j] = (b & 0x0F) as i8 - 8;
                q[HALF + j] = (b >> 4) as i8 - 8;
            }
            (d, 0.0)
        }
        QType::Q4_1 => {
            for (j, &b) in blk[4..20].iter().enumerate() {
                q[j] = (b & 0x0F) as i8;
                q[HALF + j] = (b >> 4) as i8;
            }
            (d, f16_at(blk, 2))
        }
        QType::Q8_0 => {
            for (o, &b) in q.iter_mut().zip(&blk[2..34]) {
                *o = b as i8;
            }
            (d, 0.0)
        }
    }
}
