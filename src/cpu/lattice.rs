//! The CTC lattice of one sample: forward recursion, and one reverse sweep that yields each
//! frame's occupancy and gradient row without a beta table.
//!
//! Extended states: `s = 0..2L+1`; even states are the blank, odd state `2j+1` is label `j`.
//! Alphas, betas and emissions are probabilities in extended range (`scaled.rs`): a mantissa
//! and an integer exponent per state, so a three-way sum costs a few adds, multiplies and
//! bit operations instead of the two `exp` and one `log` of a log-space log-sum-exp, nothing
//! under- or overflows at any length, and every state keeps its mantissa's relative
//! precision (rounding errors are relative, so they do not grow with how improbable a state
//! is, as they do in log space). The code is generic over the lane type: `Narrow` (float32
//! mantissas, int32 exponents, 16 lanes per AVX-512 vector) for float32 input within its
//! exponent budget, else `Wide` (float64). The loops run over contiguous, equally long
//! slices with no branches, so LLVM vectorises them (see `dispatch.rs` for the instruction
//! sets). The occupancy of a frame is `alpha[t][s] * beta[t][s]` normalised over the frame.

use ndarray::{ArrayView2, ArrayViewMut2};

#[cfg(target_arch = "x86_64")]
use super::dispatch::{level, SimdLevel};
use super::fastmath::{is_f32, FastMath};
use super::scaled::{add2, ln, Extended, Narrow, Wide};
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};
use crate::options::GradWrt;

/// Leading (forward) or trailing (backward) zero pads, so `s - 2` and `s + 2` need no checks.
const PAD: usize = 2;

/// One sample, as the kernels see it.
pub struct SampleRef<'p, F> {
    /// `(T, C)` log-probabilities of this sample, any strides.
    pub log_probs: ArrayView2<'p, F>,
    /// Frames used: `0..input_len`.
    pub input_len: usize,
    /// Target labels, each in `[0, C)` and not the blank (validated).
    pub labels: &'p [u32],
    /// Blank class, in `[0, C)`.
    pub blank: usize,
    /// The input holds logits: each frame is shifted by its log-sum-exp over classes (a fused
    /// `log_softmax`), and the logits gradient is taken with respect to this input.
    pub logits: bool,
}

/// How a gradient row is written.
#[derive(Debug, Clone, Copy)]
pub struct GradSpec<F> {
    pub wrt: GradWrt,
    /// The reduction's factor for this sample.
    pub scale: F,
    pub zero_infinity: bool,
    /// The rows hold stale values (a recycled buffer, see `crate::buffers`): every row
    /// written is written whole. Otherwise rows are zero on entry and only the target's
    /// classes are stored.
    pub clear_rows: bool,
}

/// Mantissas and exponents side by side, in one lane type.
#[derive(Debug)]
pub(super) struct Rows<X: Extended> {
    pub(super) m: Vec<X::M>,
    pub(super) e: Vec<X::E>,
}

impl<X: Extended> Default for Rows<X> {
    fn default() -> Self {
        Self {
            m: Vec::new(),
            e: Vec::new(),
        }
    }
}

impl<X: Extended> Rows<X> {
    /// `len` zeros (`m = 0, e = E_NONE`).
    pub(super) fn reset(&mut self, len: usize) {
        reset(&mut self.m, len, X::M_ZERO);
        reset(&mut self.e, len, X::E_NONE);
    }
}

/// The buffers of the recursion in one lane type (see `scaled::Extended`).
#[derive(Debug, Default)]
pub struct Lanes<X: Extended> {
    /// Forward table exponents, row `t` holds frame `t`'s alphas (width `states`); the
    /// mantissas are in `Workspace::table_m`.
    table_e: Vec<X::E>,
    /// Two running forward rows, width `states + PAD`, state `s` at `PAD + s`.
    alpha: Rows<X>,
    /// Two running backward rows, width `states + PAD`, state `s` at `s`.
    beta: Rows<X>,
    /// `beta[t+1][s] * emission[t+1][s]`, width `states + PAD`.
    next_weighted: Rows<X>,
    /// Emissions of one frame, per extended state.
    emit: Rows<X>,
    /// Per state `s`: whether `s` may be entered from `s - 2`, as a factor (1 or 0) and as an
    /// exponent offset (0 or `E_NONE`), so that a forbidden skip neither adds nor wins the
    /// maximum; width `states + PAD`.
    skip: Rows<X>,
    /// Per-state occupancy of the current frame.
    occupancy: Vec<X::M>,
}

/// Scratch memory reused across samples and calls (one per worker thread).
///
/// The recursion runs in `Narrow` lanes (float32 mantissas, int32 exponents) for float32
/// input within `Narrow`'s budget, else in `Wide` lanes (float64). Only the forward table is
/// stored: mantissas in the input type, exponents exact.
#[derive(Debug, Default)]
pub struct Workspace<F> {
    /// Forward table mantissas, row `t` holds frame `t`'s alphas (width `states`).
    table_m: Vec<F>,
    /// The input at the blank and each label, per frame (`L + 1` per row): read once by the
    /// forward pass (one load per label, not per state), reused by the backward pass.
    frames: Vec<F>,
    /// Per frame, what is subtracted from the input to get log-probabilities: 0 for
    /// log-probability input, the log-sum-exp over classes for logits.
    log_norm: Vec<f64>,
    /// Occupancy per class of the current frame (length C, all zero between frames).
    class_total: Vec<f64>,
    /// The blank and the target's labels, each once.
    distinct_classes: Vec<usize>,
    /// Byte offsets of the input row's cache lines the forward pass reads.
    prefetch_lines: Vec<usize>,
    /// Element offsets of the blank and each label in a row of the input (`read_checked`).
    slot_offsets: Vec<i64>,
    wide: Lanes<Wide>,
    narrow: Lanes<Narrow>,
}

impl<F: FastMath> Workspace<F> {
    pub fn new() -> Self {
        Self::default()
    }
}

pub(super) fn reset<T: Copy>(buffer: &mut Vec<T>, len: usize, value: T) {
    buffer.clear();
    buffer.resize(len, value);
}

/// Makes `buffer` at least `len` long, keeping (not clearing) what it holds.
pub(super) fn ensure_len<T: Copy>(buffer: &mut Vec<T>, len: usize, value: T) {
    if buffer.len() < len {
        buffer.resize(len, value);
    }
}

/// States that are both reachable from the start at frame `t` and can still reach the end.
#[inline(always)]
fn band(t: usize, input_len: usize, states: usize) -> (usize, usize) {
    let lo = states.saturating_sub(2 * (input_len - t));
    let hi = (2 * t + 1).min(states - 1);
    (lo, hi)
}

/// The number of frames a target needs: one per label plus one blank between equal neighbours.
pub(super) fn min_frames(labels: &[u32]) -> usize {
    labels.len() + labels.windows(2).filter(|w| w[0] == w[1]).count()
}

/// Accumulators of the vectorised sums (16 float32 or 8 float64 lanes per AVX-512 vector).
const SUM_LANES: usize = 16;

/// The sum of `values`, in `SUM_LANES` interleaved partial sums (so that it vectorises).
#[inline(always)]
fn sum_of<T: Copy + Default + std::ops::Add<Output = T>>(values: &[T]) -> T {
    let mut acc = [T::default(); SUM_LANES];
    let chunks = values.chunks_exact(SUM_LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = *a + v;
        }
    }
    let mut total = T::default();
    for &v in acc.iter().chain(rest) {
        total = total + v;
    }
    total
}

/// The sum of `values[0]`, `values[2]`, `values[4]`, ...
#[inline(always)]
fn sum_of_even<T: Copy + Default + std::ops::Add<Output = T>>(values: &[T]) -> T {
    let mut acc = [T::default(); SUM_LANES];
    let chunks = values.chunks_exact(2 * SUM_LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, pair) in acc.iter_mut().zip(chunk.chunks_exact(2)) {
            *a = *a + pair[0];
        }
    }
    let mut total = T::default();
    for &v in acc.iter().chain(rest.iter().step_by(2)) {
        total = total + v;
    }
    total
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

/// How a sample's frames are read (`read_checked`), chosen once per sample by
/// `frame_reads`, which gives `Avx512` or `Avx2` only for float32 log-probabilities on a CPU
/// with that instruction set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum FrameReads {
    /// `read_frame`, then `frame_span`.
    Portable,
    /// `avx512::read_row_f32`.
    Avx512,
    /// `avx2::read_row_f32`.
    Avx2,
}

fn frame_reads<F: FastMath>(x: &SampleRef<'_, F>) -> FrameReads {
    #[cfg(target_arch = "x86_64")]
    if is_f32::<F>() && !x.logits {
        match level() {
            SimdLevel::Avx512 => return FrameReads::Avx512,
            SimdLevel::Avx2 => return FrameReads::Avx2,
            SimdLevel::Baseline => {}
        }
    }
    let _ = x;
    FrameReads::Portable
}

/// The element offsets of the blank and each label in a row of `x`'s input, for the
/// gathering reads (left empty for `FrameReads::Portable`).
fn fill_slot_offsets<F>(x: &SampleRef<'_, F>, reads: FrameReads, offsets: &mut Vec<i64>) {
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
fn read_checked<F: FastMath>(
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

/// How many frames ahead the forward pass prefetches its input.
const AHEAD: usize = 1;

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
fn prefetch_frame<F>(x: &SampleRef<'_, F>, t: usize, lines: &[usize]) {
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

/// Expands a frame read by `read_frame` to the emission probabilities of states `lo..=hi`
/// (and perhaps a few more), shifted by `norm`.
#[inline(always)]
fn expand<F: FastMath, X: Extended>(
    frame: &[F],
    lo: usize,
    hi: usize,
    norm: f64,
    emit: &mut Rows<X>,
) {
    // Whole (blank, label) pairs covering lo..=hi: a branch-free loop that vectorises.
    // Pair j is states (2j, 2j+1): the blank and label j (frame[j + 1]).
    let labels = frame.len() - 1;
    let first = lo / 2;
    let end = (hi / 2 + 1).min(labels);
    let (blank_m, blank_e) = X::emission::<F>(frame[0].to_f64() - norm);
    if first < end {
        let pairs_m = emit.m[2 * first..2 * end].chunks_exact_mut(2);
        let pairs_e = emit.e[2 * first..2 * end].chunks_exact_mut(2);
        for ((pm, pe), &label) in pairs_m.zip(pairs_e).zip(&frame[first + 1..end + 1]) {
            let (m, e) = X::emission::<F>(label.to_f64() - norm);
            pm[0] = blank_m;
            pm[1] = m;
            pe[0] = blank_e;
            pe[1] = e;
        }
    }
    if hi == 2 * labels {
        // The final blank, which has no label after it.
        emit.m[hi] = blank_m;
        emit.e[hi] = blank_e;
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
fn fill_log_norm<F: FastMath>(x: &SampleRef<'_, F>, norm: &mut Vec<f64>) {
    norm.clear();
    if x.logits {
        norm.extend((0..x.input_len).map(|t| log_sum_exp(x.log_probs.row(t))));
    } else {
        norm.resize(x.input_len, 0.0);
    }
}

/// Prepares the skip mask of a target.
fn fill_skip<X: Extended>(labels: &[u32], skip: &mut Rows<X>) {
    let states = 2 * labels.len() + 1;
    skip.reset(states + PAD);
    for j in 1..labels.len() {
        if labels[j] != labels[j - 1] {
            skip.m[2 * j + 1] = X::M_ONE;
            skip.e[2 * j + 1] = X::E_ZERO;
        }
    }
}

/// Mutable row `a` and shared row `b` (`a != b`) of a row-major buffer.
#[inline(always)]
pub(super) fn two_rows<T>(buffer: &mut [T], a: usize, b: usize, width: usize) -> (&mut [T], &[T]) {
    if a > b {
        let (head, tail) = buffer.split_at_mut(a * width);
        (&mut tail[..width], &head[b * width..(b + 1) * width])
    } else {
        let (head, tail) = buffer.split_at_mut(b * width);
        (&mut head[a * width..(a + 1) * width], &tail[..width])
    }
}

/// A class's share of the frame's occupancy: exactly 1 for a class holding the whole frame
/// (`x * (1/x)` can miss 1).
#[inline(always)]
fn share(class_total: f64, total: f64, inv_total: f64) -> f64 {
    if class_total == total {
        1.0
    } else {
        class_total * inv_total
    }
}

/// Frames between two normalisations of the running rows. In between, a mantissa grows by
/// at most 4.3x per frame (a sum of three, times an emission mantissa below 1.42) and
/// shrinks by at most 0.7x (the sum's largest term counts fully): after 8 frames it lies in
/// `[0.05, 2e5]`, so a term cut below the lane type's range stays below rounding.
pub(super) const NORMALISE_EVERY: usize = 8;

/// `a + b + skip * c` in extended range; `skip` is the state's skip mask (factor, exponent
/// offset): a forbidden skip neither adds nor wins the maximum.
#[inline(always)]
fn sum3<X: Extended>(
    a: (X::M, X::E),
    b: (X::M, X::E),
    c: (X::M, X::E),
    skip: (X::M, X::E),
) -> (X::M, X::E) {
    let c_e = X::e_add(c.1, skip.1);
    let e = X::e_max(X::e_max(a.1, b.1), c_e);
    let m = a.0 * X::pow2(X::e_sub(a.1, e))
        + b.0 * X::pow2(X::e_sub(b.1, e))
        + c.0 * skip.0 * X::pow2(X::e_sub(c_e, e));
    (m, e)
}

/// `m * 2^e` times an emission `(em, ee)`, the exponent of a zero kept at or above `E_NONE`
/// (so that repeated zero emissions cannot wrap an integer exponent).
#[inline(always)]
pub(super) fn times<X: Extended>(m: X::M, e: X::E, em: X::M, ee: X::E) -> (X::M, X::E) {
    (m * em, X::e_max(X::e_add(e, ee), X::E_NONE))
}

/// Row slices of one lane type: mantissas and exponents.
pub(super) type Slices<'a, X> = (&'a [<X as Extended>::M], &'a [<X as Extended>::E]);

/// One step of the recursion over `out.len()` states: `out[i] = (a[i] + b[i] + skip[i] *
/// c[i]) * emit[i]` in extended range (no factor without `emit`). `a`, `b`, `c` are the three
/// predecessors (forward) or weighted successors (backward) of state `i`. With `renorm`,
/// mantissas come out in `[1, 2)`.
#[inline(always)]
pub(super) fn combine3<X: Extended>(
    [a, b, c]: [Slices<'_, X>; 3],
    skip: Slices<'_, X>,
    emit: Option<Slices<'_, X>>,
    renorm: bool,
    out_m: &mut [X::M],
    out_e: &mut [X::E],
) {
    let n = out_m.len();
    let (a_m, a_e, b_m, b_e) = (&a.0[..n], &a.1[..n], &b.0[..n], &b.1[..n]);
    let (c_m, c_e, skip_m, skip_e) = (&c.0[..n], &c.1[..n], &skip.0[..n], &skip.1[..n]);
    let out_e = &mut out_e[..n];
    // Four loops without branches inside, so that each vectorises.
    macro_rules! term {
        ($i:expr) => {
            sum3::<X>(
                (a_m[$i], a_e[$i]),
                (b_m[$i], b_e[$i]),
                (c_m[$i], c_e[$i]),
                (skip_m[$i], skip_e[$i]),
            )
        };
    }
    match (emit, renorm) {
        (Some((emit_m, emit_e)), false) => {
            let (emit_m, emit_e) = (&emit_m[..n], &emit_e[..n]);
            for i in 0..n {
                let (m, e) = term!(i);
                (out_m[i], out_e[i]) = times::<X>(m, e, emit_m[i], emit_e[i]);
            }
        }
        (Some((emit_m, emit_e)), true) => {
            let (emit_m, emit_e) = (&emit_m[..n], &emit_e[..n]);
            for i in 0..n {
                let (m, e) = term!(i);
                let (m, e) = times::<X>(m, e, emit_m[i], emit_e[i]);
                (out_m[i], out_e[i]) = X::normalise(m, e);
            }
        }
        (None, false) => {
            for i in 0..n {
                (out_m[i], out_e[i]) = term!(i);
            }
        }
        (None, true) => {
            for i in 0..n {
                let (m, e) = term!(i);
                (out_m[i], out_e[i]) = X::normalise(m, e);
            }
        }
    }
}

/// What a lattice pass ran into.
enum Outcome {
    /// The log-likelihood (`-inf` when no alignment exists, NaN when a NaN or `+inf` was
    /// read).
    Done(f64),
    /// The input left the lane type's exponent budget: run the sample in `Wide` lanes.
    TooWide,
}

/// Runs the forward recursion in lanes `X`. With `keep_table`, the workspace keeps every row
/// of alphas.
#[inline(always)]
fn forward_in<F: FastMath, X: Extended>(
    x: &SampleRef<'_, F>,
    ws: &mut Workspace<F>,
    lanes: &mut Lanes<X>,
    keep_table: bool,
) -> Outcome {
    let t_len = x.input_len;
    let labels = x.labels;
    if t_len == 0 {
        return Outcome::Done(if labels.is_empty() {
            0.0
        } else {
            f64::NEG_INFINITY
        });
    }
    if t_len < min_frames(labels) {
        return Outcome::Done(f64::NEG_INFINITY);
    }
    let states = 2 * labels.len() + 1;
    let width = states + PAD;
    lanes.alpha.reset(2 * width);
    lanes.emit.reset(states);
    if keep_table {
        // Not cleared: every entry the backward pass reads (frame t's band) is written here
        // first.
        ensure_len(&mut ws.table_m, t_len * states, F::ZERO);
        ensure_len(&mut lanes.table_e, t_len * states, X::E_NONE);
    }
    let frame_rows = if keep_table { t_len } else { 1 };
    // Not cleared either: each frame's row is written before it is read.
    ensure_len(&mut ws.frames, frame_rows * (labels.len() + 1), F::ZERO);
    fill_skip(labels, &mut lanes.skip);
    fill_log_norm(x, &mut ws.log_norm);
    fill_distinct_classes(x, &mut ws.distinct_classes);
    fill_prefetch_lines(x, &ws.distinct_classes, &mut ws.prefetch_lines);
    let reads = frame_reads(x);
    fill_slot_offsets(x, reads, &mut ws.slot_offsets);
    let has_budget = X::INPUT_BUDGET.is_finite();
    let mut budget_used = 0.0f64;

    for t in 0..t_len {
        let (lo, hi) = band(t, t_len, states);
        if t + AHEAD < t_len {
            prefetch_frame(x, t + AHEAD, &ws.prefetch_lines);
        }
        let row = if keep_table { t } else { 0 };
        let frame = &mut ws.frames[row * (labels.len() + 1)..(row + 1) * (labels.len() + 1)];
        let norm = ws.log_norm[t];
        let (clean, span) = read_checked(x, t, norm, reads, &ws.slot_offsets, frame, has_budget);
        if !clean {
            // A NaN or +inf read after every path has died does not count (the GPU stops
            // at the first dead frame): the loss is then +inf.
            let dead = t > 0 && {
                // Only the previous frame's band holds its values (see below).
                let (lo, hi) = band(t - 1, t_len, states);
                let prev = (t + 1) % 2 * width + PAD;
                lanes.alpha.m[prev + lo..=prev + hi]
                    .iter()
                    .all(|&m| X::m_to_f64(m) == 0.0)
            };
            return Outcome::Done(if dead { f64::NEG_INFINITY } else { f64::NAN });
        }
        if has_budget {
            // Two per frame for the sums of three.
            budget_used += span * std::f64::consts::LOG2_E + 2.0;
            if budget_used >= X::INPUT_BUDGET {
                return Outcome::TooWide;
            }
        }
        expand::<F, X>(frame, lo, hi, ws.log_norm[t], &mut lanes.emit);
        let (cur_m, prev_m) = two_rows(&mut lanes.alpha.m, t % 2, (t + 1) % 2, width);
        let (cur_e, prev_e) = two_rows(&mut lanes.alpha.e, t % 2, (t + 1) % 2, width);
        // The row is reused without clearing: bands only move up (`lo` and `hi` never
        // decrease), so above `hi` it is still zero from the reset, and below `lo` the next
        // frame reads only states of this band or the zero pads.
        let n = hi + 1 - lo;
        let emit = (&lanes.emit.m[lo..lo + n], &lanes.emit.e[lo..lo + n]);
        let out_m = &mut cur_m[PAD + lo..PAD + lo + n];
        let out_e = &mut cur_e[PAD + lo..PAD + lo + n];
        if t == 0 {
            for i in 0..n {
                (out_m[i], out_e[i]) = X::normalise(emit.0[i], emit.1[i]);
            }
        } else {
            let at = |k: usize| (&prev_m[PAD + lo - k..], &prev_e[PAD + lo - k..]);
            let skip = (&lanes.skip.m[lo..], &lanes.skip.e[lo..]);
            let renorm = t % NORMALISE_EVERY == 0;
            combine3::<X>(
                [at(0), at(1), at(2)],
                skip,
                Some(emit),
                renorm,
                out_m,
                out_e,
            );
        }
        if keep_table {
            let row = t * states + lo..t * states + lo + n;
            for (slot, &m) in ws.table_m[row.clone()].iter_mut().zip(out_m.iter()) {
                *slot = F::from_f64(X::m_to_f64(m));
            }
            lanes.table_e[row].copy_from_slice(out_e);
        }
    }

    let last = (t_len - 1) % 2 * width + PAD;
    let (m, e) = (
        &lanes.alpha.m[last..last + states],
        &lanes.alpha.e[last..last + states],
    );
    Outcome::Done(end_log_likelihood::<X>(states - 1, |s| (m[s], e[s])))
}

/// `ln(alpha[last] + alpha[last - 1])` (just `alpha[0]` for an empty target, `last = 0`):
/// the log-likelihood from the last frame's alphas, `at(s)` giving state `s`.
#[inline(always)]
pub(super) fn end_log_likelihood<X: Extended>(
    last: usize,
    at: impl Fn(usize) -> (X::M, X::E),
) -> f64 {
    let wide = |s: usize| {
        let (m, e) = at(s);
        (X::m_to_f64(m), X::e_to_f64(e))
    };
    let (m, e) = if last > 0 {
        let ((m1, e1), (m2, e2)) = (wide(last), wide(last - 1));
        add2(m1, e1, m2, e2)
    } else {
        wide(0)
    };
    ln(m, e)
}

/// The exponent shift that brings `alpha * beta` near 1: alpha * beta is at most the
/// likelihood, so shifted by its exponent every product is at most a few orders above 1
/// (mantissas between normalisations); those below the lane type's range are cut to 0.
#[inline(always)]
pub(super) fn occupancy_shift<X: Extended>(log_lik: f64) -> X::E {
    X::e_from_f64(-(log_lik * std::f64::consts::LOG2_E).round())
}

/// `alpha * beta` of one state, shifted by `occupancy_shift`.
#[inline(always)]
pub(super) fn occupancy<X: Extended>(
    (a_m, a_e): (X::M, X::E),
    (b_m, b_e): (X::M, X::E),
    shift: X::E,
) -> X::M {
    // Zeros' exponents raised to E_NONE, so that the sum cannot wrap.
    let e_a = X::e_max(a_e, X::E_NONE);
    let e_b = X::e_max(b_e, X::E_NONE);
    a_m * b_m * X::pow2(X::e_add(X::e_add(e_a, e_b), shift))
}

/// The log-likelihood of one sample (two rows of memory per lane type).
#[inline(always)]
pub fn forward<F: FastMath>(x: &SampleRef<'_, F>, ws: &mut Workspace<F>) -> f64 {
    if F::NARROW {
        let mut lanes = std::mem::take(&mut ws.narrow);
        let outcome = forward_in(x, ws, &mut lanes, false);
        ws.narrow = lanes;
        if let Outcome::Done(log_lik) = outcome {
            return log_lik;
        }
    }
    let mut lanes = std::mem::take(&mut ws.wide);
    let outcome = forward_in(x, ws, &mut lanes, false);
    ws.wide = lanes;
    match outcome {
        Outcome::Done(log_lik) => log_lik,
        Outcome::TooWide => unreachable!("Wide lanes have no input budget"),
    }
}

/// The log-likelihood, and the gradient rows `0..input_len` of `grad` (`(T, C)`, rows
/// contiguous, zero on entry unless `spec.clear_rows`); rows past the input length are left
/// untouched.
#[inline(always)]
pub fn forward_backward<F: FastMath>(
    x: &SampleRef<'_, F>,
    ws: &mut Workspace<F>,
    mut grad: ArrayViewMut2<'_, F>,
    spec: GradSpec<F>,
) -> f64 {
    if F::NARROW {
        let mut lanes = std::mem::take(&mut ws.narrow);
        let outcome = forward_backward_in(x, ws, &mut lanes, grad.view_mut(), spec);
        ws.narrow = lanes;
        if let Outcome::Done(log_lik) = outcome {
            return log_lik;
        }
    }
    let mut lanes = std::mem::take(&mut ws.wide);
    let outcome = forward_backward_in(x, ws, &mut lanes, grad, spec);
    ws.wide = lanes;
    match outcome {
        Outcome::Done(log_lik) => log_lik,
        Outcome::TooWide => unreachable!("Wide lanes have no input budget"),
    }
}

/// `forward_backward` in lanes `X`; the gradient is untouched when the outcome is `TooWide`.
#[inline(always)]
fn forward_backward_in<F: FastMath, X: Extended>(
    x: &SampleRef<'_, F>,
    ws: &mut Workspace<F>,
    lanes: &mut Lanes<X>,
    mut grad: ArrayViewMut2<'_, F>,
    spec: GradSpec<F>,
) -> Outcome {
    let log_lik = match forward_in(x, ws, lanes, true) {
        Outcome::Done(log_lik) => log_lik,
        Outcome::TooWide => return Outcome::TooWide,
    };
    let t_len = x.input_len;
    if !log_lik.is_finite() {
        let fill = if log_lik == f64::NEG_INFINITY && spec.zero_infinity {
            F::ZERO
        } else {
            F::NAN
        };
        for t in 0..t_len {
            grad.row_mut(t).fill(fill);
        }
        return Outcome::Done(log_lik);
    }
    if t_len == 0 {
        return Outcome::Done(log_lik);
    }

    let labels = x.labels;
    let states = 2 * labels.len() + 1;
    let width = states + PAD;
    lanes.beta.reset(2 * width);
    lanes.next_weighted.reset(width);
    reset(&mut lanes.occupancy, states, X::M_ZERO);
    reset(&mut ws.class_total, x.log_probs.ncols(), 0.0);
    // ws.distinct_classes was filled by the forward pass.
    let scale = spec.scale.to_f64();
    let shift = occupancy_shift::<X>(log_lik);
    let clear_rows = spec.clear_rows && spec.wrt == GradWrt::LogProbs;

    // The gradient rows are fresh memory whose lines miss the cache on their first store:
    // for rows of more than a few lines (which stay cached), the lines of the next row to
    // be written are requested a frame ahead (the same class lines as the input's, when
    // both rows are contiguous). BPE shape at 1 thread: 23.5 -> 21.6 ms.
    let row_bytes = x.log_probs.ncols() * std::mem::size_of::<F>();
    let prefetch_grad =
        grad.strides()[1] == 1 && !ws.prefetch_lines.is_empty() && row_bytes > 8 * LINE;
    for t in (0..t_len).rev() {
        if prefetch_grad && t > 0 {
            prefetch_lines_for_write(grad.row_mut(t - 1).as_ptr(), &ws.prefetch_lines);
        }
        let (lo, hi) = band(t, t_len, states);
        let n = hi + 1 - lo;
        let (cur_m, next_m) = two_rows(&mut lanes.beta.m, t % 2, (t + 1) % 2, width);
        let (cur_e, next_e) = two_rows(&mut lanes.beta.e, t % 2, (t + 1) % 2, width);
        // The row is reused without clearing: going back in time bands only move down, so
        // below `lo` it is still zero from the reset (and beta is 0 there: those states
        // cannot reach the end), and the previous frame reads no state above `hi`.
        if t + 1 == t_len {
            cur_m[states - 1] = X::M_ONE;
            cur_e[states - 1] = X::E_ZERO;
            if states > 1 {
                cur_m[states - 2] = X::M_ONE;
                cur_e[states - 2] = X::E_ZERO;
            }
        } else {
            // lanes.emit holds frame t+1's emissions on band(t+1): every state this frame
            // reads with a non-zero beta.
            let top = (hi + PAD).min(states - 1);
            let w = &mut lanes.next_weighted;
            let k = top + 1 - lo;
            let (w_m, w_e) = (&mut w.m[lo..lo + k], &mut w.e[lo..lo + k]);
            let (n_m, n_e) = (&next_m[lo..lo + k], &next_e[lo..lo + k]);
            let (y_m, y_e) = (&lanes.emit.m[lo..lo + k], &lanes.emit.e[lo..lo + k]);
            for i in 0..k {
                (w_m[i], w_e[i]) = times::<X>(n_m[i], n_e[i], y_m[i], y_e[i]);
            }
            // Reads go up to hi + 2: `top`, or the zero pads past the last state.
            let at = |k: usize| (&w.m[lo + k..], &w.e[lo + k..]);
            let skip = (&lanes.skip.m[lo + 2..], &lanes.skip.e[lo + 2..]);
            let renorm = t % NORMALISE_EVERY == 0;
            let (out_m, out_e) = (&mut cur_m[lo..lo + n], &mut cur_e[lo..lo + n]);
            combine3::<X>([at(0), at(1), at(2)], skip, None, renorm, out_m, out_e);
        }

        // Occupancy of frame t: alpha * beta over the band, normalised.
        let alpha_m = &ws.table_m[t * states + lo..t * states + lo + n];
        let alpha_e = &lanes.table_e[t * states + lo..t * states + lo + n];
        let occ = &mut lanes.occupancy[lo..lo + n];
        let (b_m, b_e) = (&cur_m[lo..lo + n], &cur_e[lo..lo + n]);
        for i in 0..n {
            let alpha = (X::m_from_f64(alpha_m[i].to_f64()), alpha_e[i]);
            occ[i] = occupancy::<X>(alpha, (b_m[i], b_e[i]), shift);
        }
        let total = X::m_to_f64(sum_of(occ));

        let mut row = grad.row_mut(t);
        if spec.wrt == GradWrt::Logits {
            // softmax of the input row: exp(log_prob) for log-probabilities, exp(logit - lse)
            // for logits.
            let lp = x.log_probs.row(t);
            let shift = F::from_f64(ws.log_norm[t]);
            match (row.as_slice_mut(), lp.as_slice()) {
                (Some(out), Some(lp)) => {
                    for (g, &v) in out.iter_mut().zip(lp) {
                        *g = (v - shift).fast_exp() * spec.scale;
                    }
                }
                _ => {
                    for (g, &v) in row.iter_mut().zip(lp.iter()) {
                        *g = (v - shift).fast_exp() * spec.scale;
                    }
                }
            }
        }
        // Sum the occupancy per class in float64, then touch each class of the row once.
        // For the log_probs gradient the first touch of a row is then a store: the row is
        // fresh zeroed memory, and a read-modify-write would fault its page twice (read the
        // shared zero page, then copy on write).
        // The blank's states are every other one: summed apart (a scatter into one slot
        // would chain every second addition through memory).
        let acc = &mut ws.class_total;
        acc[x.blank] = X::m_to_f64(sum_of_even(&occ[lo % 2..]));
        // Label j is state 2j + 1, at occ[2j + 1 - lo].
        for j in lo / 2..hi.div_ceil(2) {
            acc[labels[j] as usize] += X::m_to_f64(occ[2 * j + 1 - lo]);
        }
        let inv_total = 1.0 / total;
        macro_rules! write_classes {
            ($out:expr) => {
                for &class in &ws.distinct_classes {
                    let g = F::from_f64(-share(acc[class], total, inv_total) * scale);
                    match spec.wrt {
                        GradWrt::LogProbs => $out[class] = g,
                        GradWrt::Logits => $out[class] += g,
                    }
                    acc[class] = 0.0;
                }
            };
        }
        // A recycled row holds stale values; the logits gradient above already wrote it whole.
        if clear_rows {
            row.fill(F::ZERO);
        }
        // A plain slice when the row is contiguous (the usual layouts): no stride arithmetic.
        match row.as_slice_mut() {
            Some(out) => write_classes!(out),
            None => write_classes!(row),
        }

        // Emissions of frame t, for beta[t-1] (checked for NaN by the forward pass).
        if t > 0 {
            let width = labels.len() + 1;
            expand::<F, X>(
                &ws.frames[t * width..(t + 1) * width],
                lo,
                hi,
                ws.log_norm[t],
                &mut lanes.emit,
            );
        }
    }
    Outcome::Done(log_lik)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn loss(lp: &Array2<f64>, labels: &[u32]) -> f64 {
        let x = SampleRef {
            log_probs: lp.view(),
            input_len: lp.nrows(),
            labels,
            blank: 0,
            logits: false,
        };
        forward(&x, &mut Workspace::new())
    }

    #[test]
    fn uniform_two_frames_one_label() {
        // Paths for target [1] over 2 frames with 2 classes: "1 1", "0 1", "1 0": 3 of 4.
        let lp = Array2::from_elem((2, 2), 0.5f64.ln());
        assert!((loss(&lp, &[1]) - 0.75f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn repeated_label_needs_a_blank() {
        let lp = Array2::from_elem((2, 2), 0.5f64.ln());
        assert_eq!(loss(&lp, &[1, 1]), f64::NEG_INFINITY);
        let lp = Array2::from_elem((3, 2), 0.5f64.ln());
        // Only "1 0 1".
        assert!((loss(&lp, &[1, 1]) - 0.125f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn empty_target_is_all_blanks() {
        let lp = Array2::from_shape_vec((3, 2), vec![-0.1, -2.0, -0.2, -1.0, -0.3, -1.5]).unwrap();
        assert!((loss(&lp, &[]) - (-0.6)).abs() < 1e-12);
    }

    #[test]
    fn nan_in_a_read_emission_gives_nan() {
        let mut lp = Array2::from_elem((3, 3), (1.0f64 / 3.0).ln());
        lp[[1, 2]] = f64::NAN;
        assert!(loss(&lp, &[1, 2]).is_nan());
        assert!(loss(&lp, &[1]).is_finite());
    }

    #[test]
    fn occupancy_rows_sum_to_one() {
        let lp = Array2::from_shape_fn((6, 4), |(t, c)| -(((t * 7 + c * 3) % 5) as f64) - 0.5);
        let labels = [1, 2, 2];
        let x = SampleRef {
            log_probs: lp.view(),
            input_len: 6,
            labels: &labels,
            blank: 0,
            logits: false,
        };
        // Zeroed rows, and stale rows (a recycled buffer) that the kernel must clear.
        for (start, clear_rows) in [(0.0, false), (f64::NAN, true)] {
            let mut grad = Array2::<f64>::from_elem((6, 4), start);
            let spec = GradSpec {
                wrt: GradWrt::LogProbs,
                scale: 1.0,
                zero_infinity: false,
                clear_rows,
            };
            let ll = forward_backward(&x, &mut Workspace::new(), grad.view_mut(), spec);
            assert!(ll.is_finite());
            for row in grad.rows() {
                assert!((row.sum() + 1.0).abs() < 1e-12);
                // Class 3 is not in the target.
                assert_eq!(row[3], 0.0);
            }
        }
    }
}
