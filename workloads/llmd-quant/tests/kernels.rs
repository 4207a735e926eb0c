//! Kernel correctness: every format on every SIMD level this CPU has, against an f64
//! dequantize-then-multiply reference and against the scalar kernel; layouts, round trips
//! and argument errors.

use llmd_quant::{QMatrix, QType, QuantError, SimdLevel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const QTYPES: [QType; 3] = [QType::Q4_0, QType::Q4_1, QType::Q8_0];

/// Weights shaped like a trained layer: mostly small, some rows and columns larger, a few
/// outliers; offset rows exercise Q4_1's min.
fn weights(rng: &mut StdRng, rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| {
            let (r, k) = (i / cols, i % cols);
            let mut v: f32 = rng.random_range(-1.0..1.0) * 0.05;
            if k % 7 == 3 {
                v *= 3.0;
            }
            if rng.random_range(0..200) == 0 {
                v *= 12.0;
            }
            if r % 5 == 2 {
                v += 0.02;
            }
            v
        })
        .collect()
}

/// Activations with a per-row scale and occasional large channels, as after RMSNorm.
fn activations(rng: &mut StdRng, m: usize, cols: usize) -> Vec<f32> {
    (0..m * cols)
        .map(|i| {
            let (c, k) = (i / cols, i % cols);
            let scale = 0.5 + (c % 4) as f32;
            let mut v: f32 = rng.random_range(-1.0..1.0) * scale;
            if k % 97 == 5 {
                v *= 20.0;
            }
            v
        })
        .collect()
}

/// Per element: the magnitude of the terms the kernels add, |q * d| + |m| (Q4_1's value is
/// q * d + m, and the kernels add the two parts separately); |value| otherwise.
fn term_magnitudes(w: &QMatrix) -> Vec<f32> {
    let bb = w.qtype().block_bytes();
    let mut out = Vec::with_capacity(w.rows() * w.cols());
    let f16 = |b: &[u8], at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
    for blk in w.as_bytes().chunks_exact(bb) {
        let d = f16(blk, 0);
        match w.qtype() {
            QType::Q4_0 => {
                let q = |j: usize| {
                    let b = blk[2 + j % 16];
                    if j < 16 {
                        b & 15
                    } else {
                        b >> 4
                    }
                };
                out.extend((0..32).map(|j| ((q(j) as f32 - 8.0) * d).abs()));
            }
            QType::Q4_1 => {
                let m = f16(blk, 2);
                let q = |j: usize| {
                    let b = blk[4 + j % 16];
                    if j < 16 {
                        b & 15
                    } else {
                        b >> 4
                    }
                };
                out.extend((0..32).map(|j| (q(j) as f32 * d).abs() + m.abs()));
            }
            QType::Q8_0 => out.extend(blk[2..].iter().map(|&q| (q as i8 as f32 * d).abs())),
        }
    }
    out
}

struct Reference {
    /// Exact (f64) product of x and the dequantized weights.
    exact: Vec<f64>,
    /// Bound on the error from rounding activations to 8 bits: per block |x - x_q| <= d / 2
    /// with d = amax / 127, times the block's sum of |w|.
    act_bound: Vec<f64>,
    /// sum_k |x_k| * |term_k|: scale for float rounding (summation order, f32 scales).
    mag: Vec<f64>,
}

fn reference(w: &QMatrix, x: &[f32], m: usize) -> Reference {
    let (rows, cols) = (w.rows(), w.cols());
    let wd = w.dequantize();
    let wt = term_magnitudes(w);
    let mut r = Reference {
        exact: vec![0.0; m * rows],
        act_bound: vec![0.0; m * rows],
        mag: vec![0.0; m * rows],
    };
    for c in 0..m {
        let xr = &x[c * cols..(c + 1) * cols];
        let half_steps: Vec<f64> = xr
            .chunks(32)
            .map(|b| b.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 254.0)
            .collect();
        for n in 0..rows {
            let wr = &wd[n * cols..(n + 1) * cols];
            let tr = &wt[n * cols..(n + 1) * cols];
            let i = c * rows + n;
            for k in 0..cols {
                r.exact[i] += xr[k] as f64 * wr[k] as f64;
                r.act_bound[i] += half_steps[k / 32] * (wr[k] as f64).abs();
                r.mag[i] += (xr[k] as f64).abs() * tr[k] as f64;
            }
        }
    }
    r
}

/// Float rounding allowed on top of the activation bound, relative to `mag`: a few hundred
/// f32 additions in any order stay far below it.
const FLOAT_REL: f64 = 1e-5;
/// SIMD vs scalar: the same integer dots, only the float summation order (lanes, FMA)
/// differs, relative to `mag`.
const LEVEL_REL: f64 = 2e-6;

#[test]
fn matmul_matches_reference_on_every_level() {
    let levels = SimdLevel::available();
    eprintln!("levels tested: {levels:?}");
    let mut rng = StdRng::seed_from_u64(7);
    let mut worst_level = 0f64;
    for qtype in QTYPES {
        // Squared error and squared exact value, per level, summed over all shapes.
        let mut norms = vec![(0f64, 0f64); levels.len()];
        for cols in [32, 64, 96, 576, 1536] {
            for rows in [1, 5, 67] {
                let wf = weights(&mut rng, rows, cols);
                let w = QMatrix::quantize(qtype, rows, cols, &wf).expect("quantize");
                for m in [1, 3, 4, 7, 33] {
                    let x = activations(&mut rng, m, cols);
                    let refr = reference(&w, &x, m);
                    let mut scalar = vec![f32::NAN; m * rows];
                    w.matmul_with(SimdLevel::Scalar, &x, m, &mut scalar)
                        .expect("scalar");
                    for (&level, (err2, ref2)) in levels.iter().zip(norms.iter_mut()) {
                        let mut got = vec![f32::NAN; m * rows];
                        w.matmul_with(level, &x, m, &mut got).expect("matmul");
                        for i in 0..m * rows {
                            let (g, e) = (got[i] as f64, refr.exact[i]);
                            let tol = refr.act_bound[i] * 1.001 + FLOAT_REL * refr.mag[i] + 1e-30;
                            assert!(
                                (g - e).abs() <= tol,
                                "{qtype} {level} m={m} rows={rows} cols={cols} i={i}: \
                                 got {g}, exact {e}, tol {tol}"
                            );
                            let ltol = LEVEL_REL * refr.mag[i] + 1e-30;
                            let ld = (got[i] as f64 - scalar[i] as f64).abs();
                            assert!(
                                ld <= ltol,
                                "{qtype} {level} vs scalar m={m} rows={rows} cols={cols} \
                                 i={i}: {} vs {}",
                                got[i],
                                scalar[i]
                            );
                            worst_level = worst_level.max(ld / refr.mag[i].max(1e-30));
                            *err2 += (g - e).powi(2);
                            *ref2 += e.powi(2);
                        }
                    }
                }
            }
        }
        // The bound above is per element and loose; over all shapes the outputs must also be
        // close in norm. 8-bit activations alone give ~0.4%; the 20x outlier channels make
        // their blocks' other 31 values coarse (as in ggml), which brings it to ~1%.
        for (level, (err2, ref2)) in levels.iter().zip(norms) {
            let rel = (err2 / ref2).sqrt();
            eprintln!("{qtype} {level}: relative norm error vs exact {rel:.2e}");
            assert!(rel < 0.02, "{qtype} {level}: {rel}");
        }
    }
    eprintln!("worst |level - scalar| / mag: {worst_level:.2e}");
}

/// Shapes big enough for the parallel paths (weight-row split for small m, activation-row
/// split for large m), on pools of several sizes, against the single-threaded scalar kernel.
#[test]
fn parallel_splits_match_single_thread() {
    let mut rng = StdRng::seed_from_u64(11);
    for qtype in QTYPES {
        let (rows, cols) = (523, 576);
        let wf = weights(&mut rng, rows, cols);
        let w = QMatrix::quantize(qtype, rows, cols, &wf).expect("quantize");
        for m in [1, 2, 9, 40, 130] {
            let x = activations(&mut rng, m, cols);
            let one = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .expect("pool");
            let mut want = vec![0f32; m * rows];
            one.install(|| w.matmul_with(SimdLevel::Scalar, &x, m, &mut want))
                .expect("scalar");
            let mag = reference(&w, &x, m).mag;
            for threads in [2, 3, 8] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool");
                for level in SimdLevel::available() {
                    let mut got = vec![f32::NAN; m * rows];
                    pool.install(|| w.matmul_with(level, &x, m, &mut got))
                        .expect("matmul");
                    for i in 0..m * rows {
                        let d = (got[i] as f64 - want[i] as f64).abs();
                        assert!(
                            d <= LEVEL_REL * mag[i] + 1e-30,
                            "{qtype} {level} threads={threads} m={m} i={i}: {} vs {}",
                            got[i],
                            want[i]
                        );
                    }
                }
            }
        }
    }
}

/// Row independence, bit for bit: an activation row's result is the same whatever m is and
/// wherever the row sits in the batch (batched decode must equal single-sequence decode),
/// on every level, single-threaded and on a pool.
#[test]
fn rows_bit_identical_whatever_m() {
    let mut rng = StdRng::seed_from_u64(23);
    let pools: Vec<rayon::ThreadPool> = [1, 2, 3]
        .iter()
        .map(|&n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .expect("pool")
        })
        .collect();
    for qtype in QTYPES {
        for (rows, cols) in [(523, 576), (67, 96), (300, 1536)] {
            let wf = weights(&mut rng, rows, cols);
            let w = QMatrix::quantize(qtype, rows, cols, &wf).expect("quantize");
            let x = activations(&mut rng, 64, cols);
            for level in SimdLevel::available() {
                let single: Vec<Vec<f32>> = (0..64)
                    .map(|c| {
                        let mut o = vec![f32::NAN; rows];
                        w.matmul_with(level, &x[c * cols..(c + 1) * cols], 1, &mut o)
                            .expect("matmul");
                        o
                    })
                    .collect();
                for m in [2, 3, 4, 5, 7, 9, 16, 17, 33, 64] {
                    // Rows starting at different offsets, so a row sits in different tile and
                    // task positions.
                    for start in [0, 64 - m] {
                        let xs = &x[start * cols..(start + m) * cols];
                        for pool in &pools {
                            let mut got = vec![f32::NAN; m * rows];
                            pool.install(|| w.matmul_with(level, xs, m, &mut got))
                                .expect("matmul");
                            for (j, row) in got.chunks_exact(rows).enumerate() {
                                let want = &single[start + j];
                                for (n, (g, e)) in row.iter().zip(want).enumerate() {
                                    assert!(
                                        g.to_bits() == e.to_bits(),
                                        "{qtype} {level} {rows}x{cols} m={m} start={start} \
                                         threads={} row {j} out {n}: {g} vs {e}",
                                        pool.current_num_threads()
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A matmul called from inside rayon tasks (the caller's scratch may be borrowed by an outer
/// call on the same thread) still gives the right answer.
#[test]
fn nested_calls_from_rayon_tasks() {
    use rayon::prelude::*;
    let mut rng = StdRng::seed_from_u64(3);
    let (rows, cols, m) = (300, 256, 5);
    let w = QMatrix::quantize(QType::Q4_1, rows, cols, &weights(&mut rng, rows, cols))
        .expect("quantize");
    let xs: Vec<Vec<f32>> = (0..16).map(|_| activations(&mut rng, m, cols)).collect();
    let got: Vec<Vec<f32>> = xs
        .par_iter()
        .map(|x| {
            let mut o = vec![0f32; m * rows];
            w.matmul(x, m, &mut o).expect("matmul");
            o
        })
        .collect();
    for (x, g) in xs.iter().zip(&got) {
        let mut want = vec![0f32; m * rows];
        w.matmul(x, m, &mut want).expect("matmul");
        assert_eq!(g, &want);
    }
}

/// Blocks built by hand in GGML's byte layout decode to the values ggml gives.
#[test]
fn ggml_layouts_dequantize() {
    let one = half::f16::from_f32(1.0).to_le_bytes();
    let half_ = half::f16::from_f32(0.5).to_le_bytes();
    let minus2 = half::f16::from_f32(-2.0).to_le_bytes();
    // qs[j] = j | (15 - j) << 4: element j is the low nibble j, element 16 + j is 15 - j.
    let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();

    let mut q40 = one.to_vec();
    q40.extend(&qs);
    let w = QMatrix::from_ggml_bytes(QType::Q4_0, 1, 32, q40).expect("q4_0");
    let want: Vec<f32> = (0..32)
        .map(|i| {
            if i < 16 {
                i as f32 - 8.0
            } else {
                7.0 - (i - 16) as f32
            }
        })
        .collect();
    assert_eq!(w.dequantize(), want);

    let mut q41 = half_.to_vec();
    q41.extend(minus2);
    q41.extend(&qs);
    let w = QMatrix::from_ggml_bytes(QType::Q4_1, 1, 32, q41).expect("q4_1");
    let want: Vec<f32> = (0..32)
        .map(|i| {
            let q = if i < 16 { i } else { 15 - (i - 16) };
            q as f32 * 0.5 - 2.0
        })
        .collect();
    assert_eq!(w.dequantize(), want);

    let mut q80 = half_.to_vec();
    q80.extend((0..32).map(|i| (i as i8 - 16) as u8));
    let w = QMatrix::from_ggml_bytes(QType::Q8_0, 1, 32, q80).expect("q8_0");
    let want: Vec<f32> = (0..32).map(|i| (i - 16) as f32 * 0.5).collect();
    assert_eq!(w.dequantize(), want);
    let mut row = vec![0f32; 32];
    w.dequantize_row(0, &mut row);
    assert_eq!(row, want);
}

#[test]
fn type_ids_and_sizes() {
    assert_eq!(QType::BLOCK, 32);
    for (id, t, bytes) in [
        (2, QType::Q4_0, 18),
        (3, QType::Q4_1, 20),
        (8, QType::Q8_0, 34),
    ] {
        assert_eq!(QType::from_ggml_id(id), Some(t));
        assert_eq!(t.ggml_id(), id);
        assert_eq!(t.block_bytes(), bytes);
    }
    for id in [0, 1, 6, 7, 9, 12, 30] {
        assert_eq!(QType::from_ggml_id(id), None);
    }
    assert_eq!(SimdLevel::available()[0], SimdLevel::Scalar);
    assert!(SimdLevel::available().contains(&SimdLevel::detect()));
}

/// quantize -> dequantize error per element, against each block's own scale:
/// Q8_0 <= d / 2 plus f16 rounding of d (|q| <= 127 steps of 2^-11 d);
/// Q4_0 <= one step |d| (the value opposite the extreme lands on +8, clamped to 7);
/// Q4_1 <= d / 2 plus f16 rounding of d and of the min.
#[test]
fn round_trip_error_bounds() {
    let mut rng = StdRng::seed_from_u64(5);
    let (rows, cols) = (64, 576);
    let wf: Vec<f32> = weights(&mut rng, rows, cols);
    for qtype in QTYPES {
        let w = QMatrix::quantize(qtype, rows, cols, &wf).expect("quantize");
        let back = w.dequantize();
        let (mut worst, mut sum2, mut ref2) = (0f32, 0f64, 0f64);
        for (b, (x, y)) in wf.chunks(32).zip(back.chunks(32)).enumerate() {
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let (min, max) = x
                .iter()
                .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let bound = match qtype {
                QType::Q8_0 => amax / 127.0 * (0.5 + 127.0 / 2048.0) * 1.001,
                QType::Q4_0 => amax / 8.0 * (1.0 + 8.0 / 2048.0) * 1.001,
                QType::Q4_1 => {
                    let d = (max - min) / 15.0;
                    d * (0.5 + 15.0 / 2048.0) * 1.001 + min.abs() / 2048.0
                }
            };
            for (j, (&a, &z)) in x.iter().zip(y).enumerate() {
                let e = (a - z).abs();
                assert!(
                    e <= bound,
                    "{qtype} block {b} elem {j}: {a} -> {z}, bound {bound}"
                );
                worst = worst.max(e / amax);
                sum2 += ((a - z) as f64).powi(2);
                ref2 += (a as f64).powi(2);
            }
        }
        let rel = (sum2 / ref2).sqrt();
        eprintln!("{qtype}: worst error / block amax {worst:.4}, relative norm error {rel:.4}");
        // The bytes survive a trip through from_ggml_bytes.
        let again =
            QMatrix::from_ggml_bytes(qtype, rows, cols, w.as_bytes().to_vec()).expect("from bytes");
        assert_eq!(again, w);
        let mut row = vec![0f32; cols];
        w.dequantize_row(rows - 1, &mut row);
        assert_eq!(row, back[(rows - 1) * cols..]);
    }
}

/// All-zero and constant blocks quantize without NaNs and multiply to exact zeros.
#[test]
fn zero_and_constant_blocks() {
    for qtype in QTYPES {
        let w = QMatrix::quantize(qtype, 3, 64, &[0.0; 192]).expect("zeros");
        assert!(w.dequantize().iter().all(|&v| v == 0.0));
        let c = QMatrix::quantize(qtype, 1, 32, &[0.25; 32]).expect("const");
        assert!(
            c.dequantize().iter().all(|&v| (v - 0.25).abs() < 1e-3),
            "{qtype}"
        );
        for level in SimdLevel::available() {
            let mut out = vec![1f32; 2 * 3];
            w.matmul_with(level, &[0.5; 128], 2, &mut out)
                .expect("matmul");
            assert!(out.iter().all(|&v| v == 0.0));
            let mut out = vec![1f32; 3];
            w.matmul_with(level, &[0.0; 64], 1, &mut out)
                .expect("matmul");
            assert!(out.iter().all(|&v| v == 0.0));
        }
    }
}

#[test]
fn argument_errors() {
    assert_eq!(
        QMatrix::from_ggml_bytes(QType::Q4_0, 2, 48, vec![0; 36]),
        Err(QuantError::ColsNotBlockMultiple { cols: 48 })
    );
    assert!(matches!(
        QMatrix::from_ggml_bytes(QType::Q4_1, 2, 64, vec![0; 79]),
        Err(QuantError::Length {
            expected: 80,
            actual: 79,
            ..
        })
    ));
    assert!(matches!(
        QMatrix::from_ggml_bytes(QType::Q8_0, 1, 32, vec![0; 35]),
        Err(QuantError::Length {
            expected: 34,
            actual: 35,
            ..
        })
    ));
    assert!(matches!(
        QMatrix::from_ggml_bytes(QType::Q8_0, usize::MAX / 2, 64, vec![]),
        Err(QuantError::TooLarge { .. })
    ));
    assert_eq!(
        QMatrix::quantize(QType::Q8_0, 1, 33, &[0.0; 33]),
        Err(QuantError::ColsNotBlockMultiple { cols: 33 })
    );
    assert!(matches!(
        QMatrix::quantize(QType::Q8_0, 2, 32, &[0.0; 63]),
        Err(QuantError::Length {
            expected: 64,
            actual: 63,
            ..
        })
    ));

    let w = QMatrix::quantize(QType::Q4_1, 4, 64, &[0.1; 256]).expect("quantize");
    let mut out = vec![0f32; 8];
    assert!(matches!(
        w.matmul(&[0.0; 127], 2, &mut out),
        Err(QuantError::Length {
            expected: 128,
            actual: 127,
            ..
        })
    ));
    assert!(matches!(
        w.matmul(&[0.0; 128], 2, &mut out[..7]),
        Err(QuantError::Length {
            expected: 8,
            actual: 7,
            ..
        })
    ));
    assert!(w.matmul(&[0.0; 128], 2, &mut out).is_ok());
    // Empty products are fine.
    assert!(w.matmul(&[], 0, &mut []).is_ok());
    let empty = QMatrix::from_ggml_bytes(QType::Q4_0, 0, 64, vec![]).expect("empty");
    assert!(empty.matmul(&[0.0; 64], 1, &mut []).is_ok());

    for level in SimdLevel::ALL {
        let r = w.matmul_with(level, &[0.0; 128], 2, &mut out);
        if level.is_available() {
            assert!(r.is_ok());
        } else {
            assert_eq!(r, Err(QuantError::LevelUnavailable(level)));
        }
    }
}
