//! GGML quantized block formats and SIMD matmul kernels chosen at run time.
//!
//! Weights stay in GGML's block layout ([`QMatrix`]); a matmul quantizes the activation rows
//! to 8 bits once per call (as ggml does) and runs integer dot products per 32-weight block
//! on the best kernel this CPU supports ([`SimdLevel::detect`]). Kernels are picked with
//! run-time feature detection, never `target-cpu=native`, so one binary runs everywhere.

mod act;
mod format;
mod level;
mod matmul;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use format::QType;
pub use level::SimdLevel;

/// Everything that can go wrong building or multiplying a [`QMatrix`].
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum QuantError {
    #[error("cols = {cols} is not a multiple of the block size 32")]
    ColsNotBlockMultiple { cols: usize },
    #[error("{what}: expected {expected} elements/bytes, got {actual}")]
    Length {
        what: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("matrix of {rows} x {cols} is too large to address")]
    TooLarge { rows: usize, cols: usize },
    #[error("SIMD level {} is not available on this CPU", .0.name())]
    LevelUnavailable(SimdLevel),
}

/// A GGML-quantized matrix: `rows` output features by `cols` input features, stored as raw
/// GGML blocks, row-major (each row is `cols / 32` blocks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QMatrix {
    qtype: QType,
    rows: usize,
    cols: usize,
    bytes: Vec<u8>,
}

impl QMatrix {
    /// Wraps raw GGML block bytes (e.g. a GGUF tensor's data, whose dims are `[cols, rows]`).
    pub fn from_ggml_bytes(
        qtype: QType,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
    ) -> Result<Self, QuantError> {
        let expected = byte_len(qtype, rows, cols)?;
        if bytes.len() != expected {
            return Err(QuantError::Length {
                what: "weight bytes",
                expected,
                actual: bytes.len(),
            });
        }
        Ok(Self {
            qtype,
            rows,
            cols,
            bytes,
        })
    }

    /// Quantizes row-major f32 weights (`rows * cols`) with ggml's reference quantizers
    /// (`quantize_row_q4_0_ref` and friends), so results are byte-identical to GGUF files.
    pub fn quantize(qtype: QType, rows: usize, cols: usize, w: &[f32]) -> Result<Self, QuantError> {
        let expected_bytes = byte_len(qtype, rows, cols)?;
        if w.len() != rows * cols {
            return Err(QuantError::Length {
                what: "weight values",
                expected: rows * cols,
                actual: w.len(),
            });
        }
        let mut bytes = vec![0u8; expected_bytes];
        let bb = qtype.block_bytes();
        for (x, out) in w.chunks_exact(QType::BLOCK).zip(bytes.chunks_exact_mut(bb)) {
            format::quantize_block(qtype, x, out);
        }
        Ok(Self {
            qtype,
            rows,
            cols,
            bytes,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn qtype(&self) -> QType {
        self.qtype
    }

    /// The raw GGML block bytes, row-major.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes per row: `cols / 32` blocks.
    pub(crate) fn row_bytes(&self) -> usize {
        self.cols / QType::BLOCK * self.qtype.block_bytes()
    }

    /// All weights as f32, `rows * cols`, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        let bb = self.qtype.block_bytes();
        for (blk, y) in self
            .bytes
            .chunks_exact(bb)
            .zip(out.chunks_exact_mut(QType::BLOCK))
        {
            format::dequantize_block(self.qtype, blk, y);
        }
        out
    }

    /// Dequantizes one row into `out` (used for embedding lookup).
    ///
    /// # Panics
    /// If `row >= rows` or `out.len() != cols`: both are caller bugs, not data errors.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(
            row < self.rows,
            "row {row} out of range ({} rows)",
            self.rows
        );
        assert_eq!(out.len(), self.cols, "output length must equal cols");
        let rb = self.row_bytes();
        let bb = self.qtype.block_bytes();
        let src = &self.bytes[row * rb..(row + 1) * rb];
        for (blk, y) in src.chunks_exact(bb).zip(out.chunks_exact_mut(QType::BLOCK)) {
            format::dequantize_block(self.qtype, blk, y);
        }
    }

    /// `out[i][j] = sum_k x[i][k] * W[j][k]`: `x` is `m x cols` row-major, `out` is
    /// `m x rows` row-major. Runs on [`SimdLevel::detect`]'s kernel, split across the
    /// current rayon pool.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<(), QuantError> {
        matmul::matmul(self, SimdLevel::detect(), x, m, out)
    }

    /// As [`QMatrix::matmul`] on a chosen kernel; errors if this CPU lacks it.
    pub fn matmul_with(
        &self,
        level: SimdLevel,
        x: &[f32],
        m: usize,
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        matmul::matmul(self, level, x, m, out)
    }
}

fn byte_len(qtype: QType, rows: usize, cols: usize) -> Result<usize, QuantError> {
    if !cols.is_multiple_of(QType::BLOCK) {
        return Err(QuantError::ColsNotBlockMultiple { cols });
    }
    (cols / QType::BLOCK)
        .checked_mul(qtype.block_bytes())
        .and_then(|rb| rb.checked_mul(rows))
        .filter(|_| rows.checked_mul(cols).is_some())
        .ok_or(QuantError::TooLarge { rows, cols })
}
