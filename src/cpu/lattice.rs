//! The CTC lattice of one sample: forward recursion, and one reverse sweep that yields each
//! frame's occupancy and gradient row without a beta table.
//!
//! Extended states: `s = 0..2L+1`; even states are the blank, odd state `2j+1` is label `j`.
//! Alphas, betas and emissions are probabilities in extended range (`scaled.rs`): a float64
//! mantissa and an integer exponent per state, so a three-way sum costs a few adds,
//! multiplies and bit operations instead of the two `exp` and one `log` of a log-space
//! log-sum-exp, nothing under- or overflows at any length, and every state keeps float64's
//! relative precision. The loops run over contiguous, equally long slices with no branches,
//! so LLVM vectorises them (see `dispatch.rs` for the instruction sets). The occupancy of a
//! frame is `alpha[t][s] * beta[t][s]` normalised over the frame: exact, whatever the scale.

use ndarray::{ArrayView2, ArrayViewMut2};

use super::fastmath::FastMath;
use super::scaled::{add2, fmax, ln, normalise, pow2};
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
}

/// A row of extended-range values: mantissas and exponents side by side.
#[derive(Debug, Default)]
struct Rows {
    m: Vec<f64>,
    e: Vec<f64>,
}

impl Rows {
    /// `count` rows of `width` zeros (`m = 0, e = -inf`).
    fn reset(&mut self, len: usize) {
        reset(&mut self.m, len, 0.0);
        reset(&mut self.e, len, f64::NEG_INFINITY);
    }
}

/// Scratch memory reused across samples and calls (one per worker thread).
///
/// The recursion runs in float64 whatever the input type. Only the forward table is stored
/// in the input type (the mantissas; exponents as `i32`): one rounding per entry, no
/// accumulation.
#[derive(Debug, Default)]
pub struct Workspace<F> {
    /// Forward table mantissas, row `t` holds frame `t`'s alphas (width `states`).
    table_m: Vec<F>,
    /// Forward table exponents, relative to the row's `table_base` (`-inf` for a zero): in
    /// float32 they are exact up to 2^24 binary orders below the row's largest state.
    table_e: Vec<f32>,
    /// Per row of the table, the largest exponent.
    table_base: Vec<f64>,
    /// Two running forward rows, width `states + PAD`, state `s` at `PAD + s`.
    alpha: Rows,
    /// Two running backward rows, width `states + PAD`, state `s` at `s`.
    beta: Rows,
    /// `beta[t+1][s] * emission[t+1][s]`, width `states + PAD`.
    next_weighted: Rows,
    /// Emissions of one frame, per extended state.
    emit: Rows,
    /// The input at the blank and each label, per frame (`L + 1` per row): read once by the
    /// forward pass (one load per label, not per state), reused by the backward pass.
    frames: Vec<F>,
    /// Per state `s`, as an exponent offset: 0 where `s` may be entered from `s - 2`, else
    /// `-inf` (the term then counts 0); width `states + PAD`.
    skip: Vec<f64>,
    /// Per-state occupancy of the current frame.
    occupancy: Vec<f64>,
    /// The class of each extended state (the blank or a label), each in `[0, C)`.
    classes: Vec<usize>,
    /// Per frame, what is subtracted from the input to get log-probabilities: 0 for
    /// log-probability input, the log-sum-exp over classes for logits.
    log_norm: Vec<f64>,
    /// Occupancy per class of the current frame (length C, all zero between frames).
    class_total: Vec<f64>,
    /// The blank and the target's labels, each once.
    distinct_classes: Vec<usize>,
    /// Byte offsets of the input row's cache lines the forward pass reads.
    prefetch_lines: Vec<usize>,
}

impl<F: FastMath> Workspace<F> {
    pub fn new() -> Self {
        Self::default()
    }
}

fn reset<T: Copy>(buffer: &mut Vec<T>, len: usize, value: T) {
    buffer.clear();
    buffer.resize(len, value);
}

/// States that are both reachable from the start at frame `t` and can still reach the end.
#[inline(always)]
fn band(t: usize, input_len: usize, states: usize) -> (usize, usize) {
    let lo = states.saturating_sub(2 * (input_len - t));
    let hi = (2 * t + 1).min(states - 1);
    (lo, hi)
}

/// The number of frames a target needs: one per label plus one blank between equal neighbours.
fn min_frames(labels: &[u32]) -> usize {
    labels.len() + labels.windows(2).filter(|w| w[0] == w[1]).count()
}

#[inline(always)]
fn max_of(values: &[f64]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [f64::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = a.fmax(v);
        }
    }
    let mut m = f64::NEG_INFINITY;
    for &v in acc.iter().chain(rest) {
        m = m.fmax(v);
    }
    m
}

#[inline(always)]
fn sum_of(values: &[f64]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += v;
        }
    }
    let mut total = 0.0;
    for &v in acc.iter().chain(rest) {
        total += v;
    }
    total
}

/// The sum of `values[0]`, `values[2]`, `values[4]`, ...
#[inline(always)]
fn sum_of_even(values: &[f64]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let chunks = values.chunks_exact(2 * LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, pair) in acc.iter_mut().zip(chunk.chunks_exact(2)) {
            *a += pair[0];
        }
    }
    let mut total = 0.0;
    for &v in acc.iter().chain(rest.iter().step_by(2)) {
        total += v;
    }
    total
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
const LINE: usize = 64;

/// The byte offsets (multiples of a cache line) of the lines holding the blank and the
/// labels in a row of the input, each once; empty when the rows are not contiguous.
fn fill_prefetch_lines<F>(x: &SampleRef<'_, F>, lines: &mut Vec<usize>) {
    lines.clear();
    if x.log_probs.strides()[1] != 1 {
        return;
    }
    let classes = std::iter::once(x.blank).chain(x.labels.iter().map(|&l| l as usize));
    lines.extend(classes.map(|c| c * std::mem::size_of::<F>() / LINE * LINE));
    lines.sort_unstable();
    lines.dedup();
}

/// Asks the CPU to start loading the lines of frame `t`'s input row that hold the blank and
/// the labels: they are read at scattered places of the row, which the hardware prefetcher
/// cannot predict, and with a large vocabulary each read would otherwise wait for memory.
/// Only those lines: with a vocabulary of 1000 and 80 labels that is about 70% of the row.
#[inline(always)]
fn prefetch_frame<F>(x: &SampleRef<'_, F>, t: usize, lines: &[usize]) {
    #[cfg(target_arch = "x86_64")]
    {
        if lines.is_empty() {
            return;
        }
        let base = x.log_probs.row(t).as_ptr() as *const i8;
        for &offset in lines {
            // SAFETY: prefetching has no architectural effect; the address lies inside the
            // row (`fill_prefetch_lines` rounds offsets of valid classes down to a line).
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    base.add(offset),
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, t, lines);
    }
}

/// Expands a frame read by `read_frame` to the emission probabilities of states `lo..=hi`
/// (and perhaps a few more), shifted by `norm`.
#[inline(always)]
fn expand<F: FastMath>(frame: &[F], lo: usize, hi: usize, norm: f64, emit: &mut Rows) {
    // Whole (blank, label) pairs covering lo..=hi: a branch-free loop that vectorises.
    // Pair j is states (2j, 2j+1): the blank and label j (frame[j + 1]).
    let labels = frame.len() - 1;
    let first = lo / 2;
    let end = (hi / 2 + 1).min(labels);
    let (blank_m, blank_e) = F::lattice_exp_parts(frame[0].to_f64() - norm);
    if first < end {
        let pairs_m = emit.m[2 * first..2 * end].chunks_exact_mut(2);
        let pairs_e = emit.e[2 * first..2 * end].chunks_exact_mut(2);
        for ((pm, pe), &label) in pairs_m.zip(pairs_e).zip(&frame[first + 1..end + 1]) {
            let (m, e) = F::lattice_exp_parts(label.to_f64() - norm);
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

/// The class of each extended state: the blank on even states, the labels on odd ones.
fn fill_classes(labels: &[u32], blank: usize, classes: &mut Vec<usize>) {
    classes.clear();
    classes.push(blank);
    for &label in labels {
        classes.push(label as usize);
        classes.push(blank);
    }
}

/// Prepares the skip mask of a target.
fn fill_skip(labels: &[u32], skip: &mut Vec<f64>) {
    let states = 2 * labels.len() + 1;
    reset(skip, states + PAD, f64::NEG_INFINITY);
    for j in 1..labels.len() {
        if labels[j] != labels[j - 1] {
            skip[2 * j + 1] = 0.0;
        }
    }
}

/// Mutable row `a` and shared row `b` (`a != b`) of a row-major buffer.
#[inline(always)]
fn two_rows<T>(buffer: &mut [T], a: usize, b: usize, width: usize) -> (&mut [T], &[T]) {
    if a > b {
        let (head, tail) = buffer.split_at_mut(a * width);
        (&mut tail[..width], &head[b * width..(b + 1) * width])
    } else {
        let (head, tail) = buffer.split_at_mut(b * width);
        (&mut head[a * width..(a + 1) * width], &tail[..width])
    }
}

/// Frames between two normalisations of the running rows. In between, a mantissa grows by
/// at most 4.3x per frame (a sum of three, times an emission mantissa below 1.42) and
/// shrinks by at most 0.7x (the sum's largest term counts fully): after 8 frames it lies in
/// `[0.05, 2e5]`, so a term cut below `2^-1022` of the largest stays below rounding.
const NORMALISE_EVERY: usize = 8;

/// `a + b + c` in extended range, with `c`'s exponent offset by the skip mask (`-inf`: the
/// term counts 0).
#[inline(always)]
fn sum3(a: (f64, f64), b: (f64, f64), c: (f64, f64), skip: f64) -> (f64, f64) {
    let c_e = c.1 + skip;
    let e = fmax(fmax(a.1, b.1), c_e);
    let m = a.0 * pow2(a.1 - e) + b.0 * pow2(b.1 - e) + c.0 * pow2(c_e - e);
    (m, e)
}

/// One step of the recursion over `out.len()` states: `out[i] = (a[i] + b[i] + skip[i] *
/// c[i]) * emit[i]` in extended range (no factor without `emit`). `a`, `b`, `c` are the three
/// predecessors (forward) or weighted successors (backward) of state `i`. With `renorm`,
/// mantissas come out in `[1, 2)`.
#[inline(always)]
fn combine3(
    [a, b, c]: [(&[f64], &[f64]); 3],
    skip: &[f64],
    emit: Option<(&[f64], &[f64])>,
    renorm: bool,
    out_m: &mut [f64],
    out_e: &mut [f64],
) {
    let n = out_m.len();
    let (a_m, a_e, b_m, b_e) = (&a.0[..n], &a.1[..n], &b.0[..n], &b.1[..n]);
    let (c_m, c_e, skip) = (&c.0[..n], &c.1[..n], &skip[..n]);
    let out_e = &mut out_e[..n];
    // Four loops without branches inside, so each vectorises.
    match (emit, renorm) {
        (Some((emit_m, emit_e)), false) => {
            let (emit_m, emit_e) = (&emit_m[..n], &emit_e[..n]);
            for i in 0..n {
                let (m, e) = sum3(
                    (a_m[i], a_e[i]),
                    (b_m[i], b_e[i]),
                    (c_m[i], c_e[i]),
                    skip[i],
                );
                out_m[i] = m * emit_m[i];
                out_e[i] = e + emit_e[i];
            }
        }
        (Some((emit_m, emit_e)), true) => {
            let (emit_m, emit_e) = (&emit_m[..n], &emit_e[..n]);
            for i in 0..n {
                let (m, e) = sum3(
                    (a_m[i], a_e[i]),
                    (b_m[i], b_e[i]),
                    (c_m[i], c_e[i]),
                    skip[i],
                );
                (out_m[i], out_e[i]) = normalise(m * emit_m[i], e + emit_e[i]);
            }
        }
        (None, false) => {
            for i in 0..n {
                (out_m[i], out_e[i]) = sum3(
                    (a_m[i], a_e[i]),
                    (b_m[i], b_e[i]),
                    (c_m[i], c_e[i]),
                    skip[i],
                );
            }
        }
        (None, true) => {
            for i in 0..n {
                let (m, e) = sum3(
                    (a_m[i], a_e[i]),
                    (b_m[i], b_e[i]),
                    (c_m[i], c_e[i]),
                    skip[i],
                );
                (out_m[i], out_e[i]) = normalise(m, e);
            }
        }
    }
}

/// Runs the forward recursion and returns the log-likelihood (`-inf` when no alignment
/// exists, NaN when a NaN or `+inf` was read). With `keep_table`, the workspace keeps every
/// row of alphas.
#[inline(always)]
pub fn forward<F: FastMath>(x: &SampleRef<'_, F>, ws: &mut Workspace<F>, keep_table: bool) -> f64 {
    let t_len = x.input_len;
    let labels = x.labels;
    if t_len == 0 {
        return if labels.is_empty() {
            0.0
        } else {
            f64::NEG_INFINITY
        };
    }
    if t_len < min_frames(labels) {
        return f64::NEG_INFINITY;
    }
    let states = 2 * labels.len() + 1;
    let width = states + PAD;
    ws.alpha.reset(2 * width);
    ws.emit.reset(states);
    if keep_table {
        reset(&mut ws.table_m, t_len * states, F::ZERO);
        reset(&mut ws.table_e, t_len * states, f32::NEG_INFINITY);
        reset(&mut ws.table_base, t_len, 0.0);
    }
    let frame_rows = if keep_table { t_len } else { 1 };
    reset(&mut ws.frames, frame_rows * (labels.len() + 1), F::ZERO);
    fill_skip(labels, &mut ws.skip);
    fill_classes(labels, x.blank, &mut ws.classes);
    fill_log_norm(x, &mut ws.log_norm);
    fill_prefetch_lines(x, &mut ws.prefetch_lines);

    for t in 0..t_len {
        let (lo, hi) = band(t, t_len, states);
        if t + AHEAD < t_len {
            prefetch_frame(x, t + AHEAD, &ws.prefetch_lines);
        }
        let row = if keep_table { t } else { 0 };
        let frame = &mut ws.frames[row * (labels.len() + 1)..(row + 1) * (labels.len() + 1)];
        if !read_frame(x, t, ws.log_norm[t], frame) {
            // A NaN or +inf read after every path has died does not count (the GPU stops
            // at the first dead frame): the loss is then +inf.
            let prev = (t + 1) % 2 * width;
            let dead = t > 0 && max_of(&ws.alpha.e[prev..prev + width]) == f64::NEG_INFINITY;
            return if dead { f64::NEG_INFINITY } else { f64::NAN };
        }
        expand(frame, lo, hi, ws.log_norm[t], &mut ws.emit);
        let (cur_m, prev_m) = two_rows(&mut ws.alpha.m, t % 2, (t + 1) % 2, width);
        let (cur_e, prev_e) = two_rows(&mut ws.alpha.e, t % 2, (t + 1) % 2, width);
        // The row is reused: clear what this frame does not write.
        cur_m[..PAD + lo].fill(0.0);
        cur_m[PAD + hi + 1..].fill(0.0);
        cur_e[..PAD + lo].fill(f64::NEG_INFINITY);
        cur_e[PAD + hi + 1..].fill(f64::NEG_INFINITY);
        let n = hi + 1 - lo;
        let emit = (&ws.emit.m[lo..lo + n], &ws.emit.e[lo..lo + n]);
        let out_m = &mut cur_m[PAD + lo..PAD + lo + n];
        let out_e = &mut cur_e[PAD + lo..PAD + lo + n];
        if t == 0 {
            for i in 0..n {
                (out_m[i], out_e[i]) = normalise(emit.0[i], emit.1[i]);
            }
        } else {
            let at = |k: usize| (&prev_m[PAD + lo - k..], &prev_e[PAD + lo - k..]);
            let renorm = t % NORMALISE_EVERY == 0;
            combine3(
                [at(0), at(1), at(2)],
                &ws.skip[lo..],
                Some(emit),
                renorm,
                out_m,
                out_e,
            );
        }
        if keep_table {
            let row = t * states + lo..t * states + lo + n;
            for (slot, &m) in ws.table_m[row.clone()].iter_mut().zip(out_m.iter()) {
                *slot = F::from_f64(m);
            }
            let base = max_of(out_e);
            let base = if base == f64::NEG_INFINITY { 0.0 } else { base };
            ws.table_base[t] = base;
            for (slot, &e) in ws.table_e[row].iter_mut().zip(out_e.iter()) {
                *slot = (e - base) as f32;
            }
        }
    }

    let last = (t_len - 1) % 2 * width + PAD;
    let (m, e) = (
        &ws.alpha.m[last..last + states],
        &ws.alpha.e[last..last + states],
    );
    let (end_m, end_e) = if states > 1 {
        add2(m[states - 1], e[states - 1], m[states - 2], e[states - 2])
    } else {
        (m[0], e[0])
    };
    ln(end_m, end_e)
}

/// The log-likelihood, and the gradient rows `0..input_len` of `grad` (`(T, C)`, rows
/// contiguous, zero on entry); rows past the input length are left untouched.
#[inline(always)]
pub fn forward_backward<F: FastMath>(
    x: &SampleRef<'_, F>,
    ws: &mut Workspace<F>,
    mut grad: ArrayViewMut2<'_, F>,
    spec: GradSpec<F>,
) -> f64 {
    let log_lik = forward(x, ws, true);
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
        return log_lik;
    }
    if t_len == 0 {
        return log_lik;
    }

    let labels = x.labels;
    let states = 2 * labels.len() + 1;
    let width = states + PAD;
    ws.beta.reset(2 * width);
    ws.next_weighted.reset(width);
    reset(&mut ws.occupancy, states, 0.0);
    reset(&mut ws.class_total, x.log_probs.ncols(), 0.0);
    ws.distinct_classes.clear();
    ws.distinct_classes.push(x.blank);
    ws.distinct_classes
        .extend(labels.iter().map(|&l| l as usize));
    ws.distinct_classes.sort_unstable();
    ws.distinct_classes.dedup();
    let scale = spec.scale.to_f64();
    let lik_exponent = (log_lik * std::f64::consts::LOG2_E).round();

    for t in (0..t_len).rev() {
        let (lo, hi) = band(t, t_len, states);
        let n = hi + 1 - lo;
        let (cur_m, next_m) = two_rows(&mut ws.beta.m, t % 2, (t + 1) % 2, width);
        let (cur_e, next_e) = two_rows(&mut ws.beta.e, t % 2, (t + 1) % 2, width);
        cur_m.fill(0.0);
        cur_e.fill(f64::NEG_INFINITY);
        if t + 1 == t_len {
            cur_m[states - 1] = 1.0;
            cur_e[states - 1] = 0.0;
            if states > 1 {
                cur_m[states - 2] = 1.0;
                cur_e[states - 2] = 0.0;
            }
        } else {
            // ws.emit holds frame t+1's emissions on band(t+1): every state this frame
            // reads with a non-zero beta.
            let top = (hi + PAD).min(states - 1);
            let w = &mut ws.next_weighted;
            let k = top + 1 - lo;
            let (w_m, w_e) = (&mut w.m[lo..lo + k], &mut w.e[lo..lo + k]);
            let (n_m, n_e) = (&next_m[lo..lo + k], &next_e[lo..lo + k]);
            let (y_m, y_e) = (&ws.emit.m[lo..lo + k], &ws.emit.e[lo..lo + k]);
            for i in 0..k {
                w_m[i] = n_m[i] * y_m[i];
                w_e[i] = n_e[i] + y_e[i];
            }
            // Entries above `top` are stale or padding; `top` already reaches hi + 2.
            w.m[top + 1..].fill(0.0);
            w.e[top + 1..].fill(f64::NEG_INFINITY);
            let at = |k: usize| (&w.m[lo + k..], &w.e[lo + k..]);
            let skip = &ws.skip[lo + 2..];
            let renorm = t % NORMALISE_EVERY == 0;
            let (out_m, out_e) = (&mut cur_m[lo..lo + n], &mut cur_e[lo..lo + n]);
            combine3([at(0), at(1), at(2)], skip, None, renorm, out_m, out_e);
        }

        // Occupancy of frame t: alpha * beta over the band, normalised.
        let alpha_m = &ws.table_m[t * states + lo..t * states + lo + n];
        let alpha_e = &ws.table_e[t * states + lo..t * states + lo + n];
        // alpha * beta is at most the likelihood: shifted by its exponent, every term is at
        // most a few orders above 1 (mantissas between normalisations), and those below
        // 2^-1023 of it are cut to 0.
        let shift = ws.table_base[t] - lik_exponent;
        let occ = &mut ws.occupancy[lo..lo + n];
        let (b_m, b_e) = (&cur_m[lo..lo + n], &cur_e[lo..lo + n]);
        for i in 0..n {
            let e = (alpha_e[i] as f64 + shift) + b_e[i];
            occ[i] = alpha_m[i].to_f64() * b_m[i] * pow2(e);
        }
        let total = sum_of(occ);

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
        let first_label = 1 - lo % 2;
        acc[x.blank] = sum_of_even(&occ[lo % 2..]);
        for i in (first_label..n).step_by(2) {
            acc[ws.classes[lo + i]] += occ[i];
        }
        let inv_total = 1.0 / total;
        for &class in &ws.distinct_classes {
            // A class holding the whole frame gets exactly the scale (x * (1/x) can miss 1).
            let share = if acc[class] == total {
                1.0
            } else {
                acc[class] * inv_total
            };
            let g = F::from_f64(-share * scale);
            match spec.wrt {
                GradWrt::LogProbs => row[class] = g,
                GradWrt::Logits => row[class] += g,
            }
            acc[class] = 0.0;
        }

        // Emissions of frame t, for beta[t-1] (checked for NaN by the forward pass).
        if t > 0 {
            let width = labels.len() + 1;
            expand(
                &ws.frames[t * width..(t + 1) * width],
                lo,
                hi,
                ws.log_norm[t],
                &mut ws.emit,
            );
        }
    }
    log_lik
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
        forward(&x, &mut Workspace::new(), false)
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
        let mut grad = Array2::<f64>::zeros((6, 4));
        let spec = GradSpec {
            wrt: GradWrt::LogProbs,
            scale: 1.0,
            zero_infinity: false,
        };
        let ll = forward_backward(&x, &mut Workspace::new(), grad.view_mut(), spec);
        assert!(ll.is_finite());
        for row in grad.rows() {
            assert!((row.sum() + 1.0).abs() < 1e-12);
        }
    }
}
