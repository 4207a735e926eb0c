//! The matmul driver: argument checks, activation quantization into thread-local scratch,
//! splitting the work into rayon tasks, and the tile loop shared by the SIMD kernels.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::act::{padded_blocks, quantize_row_scalar, spread_row, ActBuf, Acts, SPREAD};
use crate::{scalar, QMatrix, QType, QuantError, SimdLevel};

/// One rayon task: weight rows `r0..r1` against activation rows `c0..c1`.
/// `outs[c - c0][r - r0]` receives `dot(act row c, weight row r)`.
pub(crate) struct Task<'o> {
    pub r0: usize,
    pub r1: usize,
    pub c0: usize,
    pub c1: usize,
    pub outs: Vec<&'o mut [f32]>,
}

/// Multiply-accumulates per task, at least: about 1-2 µs of SIMD work, so rayon's per-task
/// cost (well under a µs) stays small.
const MIN_TASK_WORK: usize = 1 << 16;
/// Tasks per pool thread when there is plenty of work (from `BIG_WORK` multiply-accumulates,
/// ~100 µs): slack for uneven cores and for other processes taking a core for a while. Below
/// it one task per thread measured fastest.
const TASKS_PER_THREAD: usize = 4;
const BIG_WORK: usize = 1 << 24;
/// From this many activation rows on, tasks split the activation rows (each task then reuses
/// every decoded weight block across its rows); below it they split the weight rows, so the
/// weights are read once in all. Up to one pass of [`ACT_ROWS_PER_PASS`] rows a weight-row
/// task already covers every activation row in one pass, while an activation-row split would
/// have every task stream the whole matrix (8x the traffic for the 30 MB LM head at m = 64).
const SPLIT_ACT_ROWS_FROM: usize = ACT_ROWS_PER_PASS + 1;
/// Activation values quantized per task, at least, when that is done in parallel.
const MIN_QUANT_TASK: usize = 1 << 15;

thread_local! {
    /// Quantized activations of the call in progress on this thread, kept for reuse.
    static SCRATCH: RefCell<ActBuf> = RefCell::new(ActBuf::default());
}

/// A kernel family this CPU was checked to support.
#[derive(Clone, Copy)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2(crate::x86::Avx2),
    #[cfg(target_arch = "x86_64")]
    AvxVnni(crate::x86::AvxVnni),
    #[cfg(target_arch = "x86_64")]
    Avx512(crate::x86::Avx512),
}

impl Kernel {
    fn new(level: SimdLevel) -> Option<Self> {
        match level {
            SimdLevel::Scalar => Some(Self::Scalar),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => crate::x86::Avx2::new().map(Self::Avx2),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::AvxVnni => crate::x86::AvxVnni::new().map(Self::AvxVnni),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512Vnni => crate::x86::Avx512::new().map(Self::Avx512),
            #[cfg(not(target_arch = "x86_64"))]
            _ => None,
        }
    }

    fn quantize_row(self, x: &[f32], qs: &mut [i8], ds: &mut [f32]) {
        match self {
            Self::Scalar => quantize_row_scalar(x, qs, ds),
            #[cfg(target_arch = "x86_64")]
            Self::Avx2(t) => t.quantize_row(x, qs, ds),
            #[cfg(target_arch = "x86_64")]
            Self::AvxVnni(t) => t.avx2().quantize_row(x, qs, ds),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512(t) => t.avx2().quantize_row(x, qs, ds),
        }
    }

    /// Whether the kernel reads [`Acts::spread`].
    fn wants_spread(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Self::Avx512(_) = self {
            return true;
        }
        false
    }

    fn run_task(self, w: &QMatrix, a: &Acts<'_>, task: &mut Task<'_>) {
        match self {
            Self::Scalar => scalar::run_task(w, a, task),
            #[cfg(target_arch = "x86_64")]
            Self::Avx2(t) => t.run_task(w, a, task),
            #[cfg(target_arch = "x86_64")]
            Self::AvxVnni(t) => t.run_task(w, a, task),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512(t) => t.run_task(w, a, task),
        }
    }
}

pub(crate) fn matmul(
    w: &QMatrix,
    level: SimdLevel,
    x: &[f32],
    m: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    let kernel = Kernel::new(level).ok_or(QuantError::LevelUnavailable(level))?;
    let (rows, cols) = (w.rows(), w.cols());
    let x_len = m
        .checked_mul(cols)
        .ok_or(QuantError::TooLarge { rows: m, cols })?;
    if x.len() != x_len {
        return Err(QuantError::Length {
            what: "activations x (m * cols)",
            expected: x_len,
            actual: x.len(),
        });
    }
    let out_len = m.checked_mul(rows).ok_or(QuantError::TooLarge {
        rows: m,
        cols: rows,
    })?;
    if out.len() != out_len {
        return Err(QuantError::Length {
            what: "output (m * rows)",
            expected: out_len,
            actual: out.len(),
        });
    }
    if m == 0 || rows == 0 {
        return Ok(());
    }
    if cols == 0 {
        out.fill(0.0);
        return Ok(());
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => run(kernel, w, x, m, out, &mut buf),
        // Re-entered on this thread (a rayon worker picked up another matmul while waiting
        // inside ours): use fresh scratch.
        Err(_) => run(kernel, w, x, m, out, &mut ActBuf::default()),
    });
    Ok(())
}

fn run(kernel: Kernel, w: &QMatrix, x: &[f32], m: usize, out: &mut [f32], buf: &mut ActBuf) {
    let (rows, cols) = (w.rows(), w.cols());
    let nb = cols / QType::BLOCK;
    let nbp = padded_blocks(cols);
    let (qs_row, ds_row) = (nbp * QType::BLOCK, nbp * 2);
    buf.qs.resize(m * qs_row, 0);
    buf.ds.resize(m * ds_row, 0.0);
    let threads = rayon::current_num_threads().max(1);

    let quant_rows_per_task = MIN_QUANT_TASK.div_ceil(cols);
    if threads > 1 && m > quant_rows_per_task {
        x.par_chunks(cols * quant_rows_per_task)
            .zip(buf.qs.par_chunks_mut(qs_row * quant_rows_per_task))
            .zip(buf.ds.par_chunks_mut(ds_row * quant_rows_per_task))
            .for_each(|((x, qs), ds)| {
                for ((x, qs), ds) in x
                    .chunks_exact(cols)
                    .zip(qs.chunks_exact_mut(qs_row))
                    .zip(ds.chunks_exact_mut(ds_row))
                {
                    kernel.quantize_row(x, qs, ds);
                }
            });
    } else {
        for ((x, qs), ds) in x
            .chunks_exact(cols)
            .zip(buf.qs.chunks_exact_mut(qs_row))
            .zip(buf.ds.chunks_exact_mut(ds_row))
        {
            kernel.quantize_row(x, qs, ds);
        }
    }
    let spread_len = if kernel.wants_spread() {
        nbp / 2 * SPREAD
    } else {
        0
    };
    buf.spread.resize(m * spread_len, 0.0);
    if spread_len > 0 {
        for (ds, out) in buf
            .ds
            .chunks_exact(ds_row)
            .zip(buf.spread.chunks_exact_mut(spread_len))
        {
            spread_row(ds, out);
        }
    }
    let acts = Acts {
        qs: &buf.qs,
        ds: &buf.ds,
        nb,
        nbp,
        spread: &buf.spread,
    };

    let work = m.saturating_mul(rows).saturating_mul(cols);
    let per_thread = if work >= BIG_WORK {
        TASKS_PER_THREAD
    } else {
        1
    };
    let n_tasks = (work / MIN_TASK_WORK).clamp(1, threads * per_thread);
    if n_tasks == 1 {
        let mut task = Task {
            r0: 0,
            r1: rows,
            c0: 0,
            c1: m,
            outs: out.chunks_mut(rows).collect(),
        };
        kernel.run_task(w, &acts, &mut task);
        return;
    }
    let tasks: Vec<Task<'_>> = if m >= SPLIT_ACT_ROWS_FROM {
        // Multiples of 4 rows keep the kernels on full tiles.
        let chunk = m.div_ceil(n_tasks).next_multiple_of(4);
        out.chunks_mut(chunk * rows)
            .enumerate()
            .map(|(i, o)| Task {
                r0: 0,
                r1: rows,
                c0: i * chunk,
                c1: i * chunk + o.len() / rows,
                outs: o.chunks_mut(rows).collect(),
            })
            .collect()
    } else {
        // A multiple of every kernel's tile height (2, 3, 4) avoids partial tiles.
        let chunk = rows.div_ceil(n_tasks).next_multiple_of(12);
        let mut tasks: Vec<Task<'_>> = (0..rows.div_ceil(chunk))
            .map(|i| Task {
                r0: i * chunk,
                r1: ((i + 1) * chunk).min(rows),
                c0: 0,
                c1: m,
                outs: Vec::with_capacity(m),
            })
            .collect();
        for row in out.chunks_mut(rows) {
            for (task, piece) in tasks.iter_mut().zip(row.chunks_mut(chunk)) {
                task.outs.push(piece);
            }
        }
        tasks
    };
    tasks
        .into_par_iter()
        .for_each(|mut task| kernel.run_task(w, &acts, &mut task));
}

// The tile walk below serves the SIMD kernels, which exist for x86-64 only so far.

/// Activation rows per cache block in [`run_tiles`]: a weight tile is reused across this many
/// rows while they stay in L1/L2.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const ACT_ROWS_PER_PASS: usize = 64;

/// Inputs of one tile: `R` consecutive weight rows and `C` consecutive activation rows.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct TileArgs<'a> {
    /// `R * row_bytes` bytes.
    pub w: &'a [u8],
    pub row_bytes: usize,
    /// Data blocks per row.
    pub nb: usize,
    /// `C` activation rows of `nbp * 32` quants.
    pub aq: &'a [i8],
    /// `C` rows of `nbp * 2` scales.
    pub ads: &'a [f32],
    /// `C` rows of `nbp / 2 * SPREAD` spread scales, or empty.
    pub spread: &'a [f32],
    pub nbp: usize,
}

/// Results of one tile, `res[r][c]`; the largest tile is 4 x 4.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) type TileOut = [[f32; 4]; 4];

/// Walks a task in tiles of up to `rt` weight rows by `ct` activation rows, calling
/// `tile(nr, nc, args, res)` for each and scattering the results.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[inline]
pub(crate) fn run_tiles(
    w: &QMatrix,
    a: &Acts<'_>,
    task: &mut Task<'_>,
    rt: usize,
    ct: usize,
    mut tile: impl FnMut(usize, usize, &TileArgs<'_>, &mut TileOut),
) {
    let rb = w.row_bytes();
    let bytes = w.as_bytes();
    let (qs_row, ds_row) = (a.nbp * QType::BLOCK, a.nbp * 2);
    let sp_row = if a.spread.is_empty() {
        0
    } else {
        a.nbp / 2 * SPREAD
    };
    let mut res: TileOut = [[0.0; 4]; 4];
    let mut cb = task.c0;
    while cb < task.c1 {
        let ce = (cb + ACT_ROWS_PER_PASS).min(task.c1);
        let mut r = task.r0;
        while r < task.r1 {
            let nr = rt.min(task.r1 - r);
            let mut c = cb;
            while c < ce {
                let nc = ct.min(ce - c);
                let args = TileArgs {
                    w: &bytes[r * rb..(r + nr) * rb],
                    row_bytes: rb,
                    nb: a.nb,
                    aq: &a.qs[c * qs_row..(c + nc) * qs_row],
                    ads: &a.ds[c * ds_row..(c + nc) * ds_row],
                    spread: &a.spread[c * sp_row..(c + nc) * sp_row],
                    nbp: a.nbp,
                };
                tile(nr, nc, &args, &mut res);
                for (j, out) in task.outs[c - task.c0..c - task.c0 + nc]
                    .iter_mut()
                    .enumerate()
                {
                    for (i, o) in out[r - task.r0..r - task.r0 + nr].iter_mut().enumerate() {
                        *o = res[i][j];
                    }
                }
                c += nc;
            }
            r += nr;
        }
        cb = ce;
    }
}
