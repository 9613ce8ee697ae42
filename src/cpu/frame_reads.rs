//! Reading one sample's input, frame by frame: the blank's and each label's value of a frame
//! gathered into a short row (`read_checked`), checked for NaN and `+inf` and measured for
//! the exponent budget (`frame_span`) in the same pass where the CPU allows (`FrameReads`:
//! portable code, or the AVX-512 and AVX2 gathers of `avx512.rs` and `avx2.rs`); the
//! log-sum-exp that turns logits into log-probabilities (`log_sum_exp`); and the prefetching
//! of the scattered cache lines those reads touch.
//!
//! Apart from the recursion because the reads are where the input's layout, the instruction
//! set and the input kind meet, and because the group kernel (`lockstep.rs`, whose own
//! gathers are in `group_reads.rs`) and the aligner (`viterbi.rs`) use parts of them too.

use super::dispatch::{supports, SimdLevel};
use super::fastmath::{is_f32, FastMath};
use super::primitives::SUM_LANES;
use super::sample::SampleRef;
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};

/// How a sample's frames are read (`read_checked`), chosen once per sample by
/// `frame_reads`, which gives `Avx512` or `Avx2` only for float32 log-probabilities on a CPU
/// with that instruction set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) enum FrameReads {
    /// `read_frame`, then `frame_span`.
    Portable,
    /// `avx512::read_row_f32`.
    Avx512,
    /// `avx2::read_row_f32`.
    Avx2,
}

/// How `x`'s frames are read at `level` (the dispatcher's; a level the CPU lacks reads
/// portably).
pub(super) fn frame_reads<F: FastMath>(x: &SampleRef<'_, F>, level: SimdLevel) -> FrameReads {
    #[cfg(target_arch = "x86_64")]
    if is_f32::<F>() && !x.logits && supports(level) {
        match level {
            SimdLevel::Avx512 => return FrameReads::Avx512,
            SimdLevel::Avx2 => return FrameReads::Avx2,
            SimdLevel::Baseline => {}
        }
    }
    let _ = (x, level);
    FrameReads::Portable
}

/// The element offsets of the blank and each label in a row of `x`'s input, for the
/// gathering reads (left empty for `FrameReads::Portable`).
pub(super) fn fill_slot_offsets<F>(
    x: &SampleRef<'_, F>,
    reads: FrameReads,
    offsets: &mut Vec<i64>,
) {
    offsets.clear();
    if reads == FrameReads::Portable {
        return;
    }
    let row_len = x.log_probs.ncols();
    let stride = x.log_probs.strides()[1] as i64;
    for class in std::iter::once(x.blank).chain(x.labels.iter().map(|&l| l as usize)) {
        // Validation guarantees it; the gather relies on it.
        assert!(class < row_len);
        offsets.push(class as i64 * stride);
    }
}

/// `read_frame` and then, with `need_span`, `frame_span`: whether the frame is free of NaN
/// and `+inf`, and its span (else 0). The gathering reads do both in one pass (and always
/// give the span): the scalar loads and the two checking passes were a quarter of the
/// forward pass of a 29-class, 100-label sample.
#[inline(always)]
pub(super) fn read_checked<F: FastMath>(
    x: &SampleRef<'_, F>,
    t: usize,
    norm: f64,
    reads: FrameReads,
    slot_offsets: &[i64],
    out: &mut [F],
    need_span: bool,
) -> (bool, f64) {
    #[cfg(target_arch = "x86_64")]
    if reads != FrameReads::Portable && is_f32::<F>() {
        let row = x.log_probs.row(t).as_ptr().cast::<f32>();
        // SAFETY: F is f32 (`is_f32`: the casts are identities); `frame_reads` chose this
        // instruction set because the CPU has it; every offset is a class below the row's
        // length times the row's stride (`fill_slot_offsets` checks), so every element read
        // lies inside the array the row views.
        let (clean, span) = unsafe {
            let out = &mut *(out as *mut [F] as *mut [f32]);
            match reads {
                FrameReads::Avx512 => avx512::read_row_f32(row, slot_offsets, out),
                _ => avx2::read_row_f32(row, slot_offsets, out),
            }
        };
        return (clean, f64::from(span));
    }
    let _ = (reads, slot_offsets);
    let clean = read_frame(x, t, norm, out);
    let span = if clean && need_span {
        frame_span(out, norm)
    } else {
        0.0
    };
    (clean, span)
}

/// Reads frame `t`'s input for the blank and each label into `out` (`[blank, label_0, ...]`),
/// one load per label. Returns false when a value (minus `norm`) is NaN or `+inf`: such an
/// input makes the loss NaN.
#[inline(always)]
fn read_frame<F: FastMath>(x: &SampleRef<'_, F>, t: usize, norm: f64, out: &mut [F]) -> bool {
    let row = x.log_probs.row(t);
    let base = row.as_ptr();
    let stride = row.strides()[0];
    let len = row.len();
    let classes = std::iter::once(x.blank).chain(x.labels.iter().map(|&l| l as usize));
    for (slot, class) in out.iter_mut().zip(classes) {
        assert!(class < len);
        // SAFETY: `class < len` (checked above; validation guarantees it, so the check is
        // free in practice), and element `class` of a row of `len` elements with this
        // stride lies inside the array `row` views.
        *slot = unsafe { *base.offset(class as isize * stride) };
    }
    // Checked apart from the gather, in a loop that vectorises.
    let mut finite_or_neg_inf = true;
    for &v in out.iter() {
        finite_or_neg_inf &= v.to_f64() - norm < f64::INFINITY;
    }
    finite_or_neg_inf
}

/// The largest `|value - norm|` of a frame read by `read_frame`, over its finite values: how
/// much of `Extended::INPUT_BUDGET` the frame uses.
#[inline(always)]
fn frame_span<F: FastMath>(frame: &[F], norm: f64) -> f64 {
    let mut acc = [0.0f64; SUM_LANES];
    let chunks = frame.chunks_exact(SUM_LANES);
    let rest = chunks.remainder();
    let distance = |v: F| {
        let x = (v.to_f64() - norm).abs();
        // -inf (an exact zero) uses no budget; NaN was rejected by `read_frame`.
        if x < f64::INFINITY {
            x
        } else {
            0.0
        }
    };
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = a.fmax(distance(v));
        }
    }
    acc.iter()
        .copied()
        .chain(rest.iter().map(|&v| distance(v)))
        .fold(0.0, f64::fmax)
}

/// Cache line size assumed for prefetching.
pub(super) const LINE: usize = 64;

/// The blank and the target's labels, each once, in increasing order.
pub(super) fn fill_distinct_classes<F>(x: &SampleRef<'_, F>, classes: &mut Vec<usize>) {
    classes.clear();
    classes.push(x.blank);
    classes.extend(x.labels.iter().map(|&l| l as usize));
    classes.sort_unstable();
    classes.dedup();
}

/// The byte offsets (multiples of a cache line) of the lines holding `classes` (sorted) in a
/// row of the input, each once; every line of the row when that is at least half of them
/// (a vocabulary of 1000 and 80 labels: 46 of 63 lines; loading the whole row in order made
/// the forward 14% faster at 1 thread, and no slower at 2); empty when the rows are not
/// contiguous.
pub(super) fn fill_prefetch_lines<F>(
    x: &SampleRef<'_, F>,
    classes: &[usize],
    lines: &mut Vec<usize>,
) {
    lines.clear();
    if x.log_probs.strides()[1] != 1 {
        return;
    }
    lines.extend(
        classes
            .iter()
            .map(|&c| c * std::mem::size_of::<F>() / LINE * LINE),
    );
    lines.dedup();
    let row_lines = (x.log_probs.ncols() * std::mem::size_of::<F>()).div_ceil(LINE);
    if 2 * lines.len() >= row_lines {
        // Rows need not start on a line boundary: the offsets stay inside the row's span
        // plus the line it ends in, and prefetching never faults anyway.
        lines.clear();
        lines.extend((0..row_lines).map(|k| k * LINE));
    }
}

/// Asks the CPU to start loading the lines of frame `t`'s input row that hold the blank and
/// the labels: they are read at scattered places of the row, which the hardware prefetcher
/// cannot predict, and with a large vocabulary each read would otherwise wait for memory.
/// Only those lines, unless they are most of the row (see `fill_prefetch_lines`).
#[inline(always)]
pub(super) fn prefetch_frame<F>(x: &SampleRef<'_, F>, t: usize, lines: &[usize]) {
    if !lines.is_empty() {
        prefetch_lines(x.log_probs.row(t).as_ptr(), lines);
    }
}

/// Asks the CPU to start loading the cache lines at byte offsets `lines` from `row`.
#[inline(always)]
pub(super) fn prefetch_lines<F>(row: *const F, lines: &[usize]) {
    prefetch_with::<F, { PREFETCH_READ }>(row, lines);
}

/// Like `prefetch_lines`, for lines about to be written (taken in exclusive state).
#[inline(always)]
pub(super) fn prefetch_lines_for_write<F>(row: *const F, lines: &[usize]) {
    prefetch_with::<F, { PREFETCH_WRITE }>(row, lines);
}

#[cfg(target_arch = "x86_64")]
const PREFETCH_READ: i32 = std::arch::x86_64::_MM_HINT_T0;
#[cfg(target_arch = "x86_64")]
const PREFETCH_WRITE: i32 = std::arch::x86_64::_MM_HINT_ET0;
#[cfg(not(target_arch = "x86_64"))]
const PREFETCH_READ: i32 = 0;
#[cfg(not(target_arch = "x86_64"))]
const PREFETCH_WRITE: i32 = 1;

#[inline(always)]
fn prefetch_with<F, const HINT: i32>(row: *const F, lines: &[usize]) {
    #[cfg(target_arch = "x86_64")]
    {
        let base = row as *const i8;
        for &offset in lines {
            // SAFETY: prefetching has no architectural effect (it never faults), whatever
            // the address; callers pass lines of the row anyway.
            unsafe { std::arch::x86_64::_mm_prefetch::<HINT>(base.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (row, lines);
    }
}

/// `ln(sum_c exp(row[c]))` in float64: what turns a row of logits into log-probabilities.
/// `-inf` for a row of `-inf`, NaN when the row holds a NaN or `+inf`.
#[inline(always)]
pub fn log_sum_exp<F: FastMath>(row: ndarray::ArrayView1<'_, F>) -> f64 {
    let mut m = f64::NEG_INFINITY;
    let mut bad = false;
    for &v in row.iter() {
        let v = v.to_f64();
        bad |= v.is_nan() || v == f64::INFINITY;
        m = m.fmax(v);
    }
    if bad {
        return f64::NAN;
    }
    if m == f64::NEG_INFINITY {
        return m;
    }
    let total: f64 = match row.as_slice() {
        Some(values) => values.iter().map(|&v| F::lattice_exp(v.to_f64() - m)).sum(),
        None => row.iter().map(|&v| F::lattice_exp(v.to_f64() - m)).sum(),
    };
    m + total.ln()
}

/// Fills `norm[t]` for the frames of a sample (see `Workspace::log_norm`).
pub(super) fn fill_log_norm<F: FastMath>(x: &SampleRef<'_, F>, norm: &mut Vec<f64>) {
    norm.clear();
    if x.logits {
        norm.extend((0..x.input_len).map(|t| log_sum_exp(x.log_probs.row(t))));
    } else {
        norm.resize(x.input_len, 0.0);
    }
}
