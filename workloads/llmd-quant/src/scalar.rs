//! Portable kernel: the reference every SIMD level is tested against, and the fallback
//! where none is available.

use crate::act::Acts;
use crate::format::decode_block_int;
use crate::matmul::Task;
use crate::{QMatrix, QType};

/// Computes one task's outputs: `outs[c - c0][r - r0] = dot(act row c, weight row r)`.
pub(crate) fn run_task(w: &QMatrix, a: &Acts<'_>, task: &mut Task<'_>) {
    let nb = a.nb;
    let bb = w.qtype().block_bytes();
    let rb = w.row_bytes();
    let bytes = w.as_bytes();
    let has_min = w.qtype() == QType::Q4_1;
    // Decoded once per weight row, reused for every activation row.
    let mut wq = vec![0i8; nb * QType::BLOCK];
    let mut wd = vec![0f32; nb];
    let mut wm = vec![0f32; nb];
    for r in task.r0..task.r1 {
        let row = &bytes[r * rb..(r + 1) * rb];
        for (b, blk) in row.chunks_exact(bb).enumerate() {
            let q = &mut wq[b * QType::BLOCK..(b + 1) * QType::BLOCK];
            (wd[b], wm[b]) = decode_block_int(w.qtype(), blk, q);
        }
        for (c, out) in (task.c0..task.c1).zip(task.outs.iter_mut()) {
            let aq = a.row_qs(c);
            let ads = a.row_ds(c);
            let mut acc = 0f32;
            for b in 0..nb {
                let range = b * QType::BLOCK..(b + 1) * QType::BLOCK;
                let isum: i32 = wq[range.clone()]
                    .iter()
                    .zip(&aq[range])
                    .map(|(&x, &y)| x as i32 * y as i32)
                    .sum();
                // Same float ops as the SIMD kernels: (dw * da) * isum, then m * s.
                acc += (wd[b] * ads[2 * b]) * isum as f32;
                if has_min {
                    acc += wm[b] * ads[2 * b + 1];
                }
            }
            out[r - task.r0] = acc;
        }
    }
}
