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
//!
//! This file is the per-sample recursion only: the building blocks it shares with the group
//! kernel are in `primitives.rs`, the reading of the input in `frame_reads.rs`.

use ndarray::{ArrayViewMut1, ArrayViewMut2};

use super::dispatch::SimdLevel;
use super::fastmath::FastMath;
use super::frame_reads::{
    fill_distinct_classes, fill_log_norm, fill_prefetch_lines, fill_slot_offsets, frame_reads,
    prefetch_frame, prefetch_lines_for_write, read_checked, LINE,
};
use super::primitives::{
    band, combine3, end_log_likelihood, ensure_len, frame_shift, heap_bytes, occupancy,
    occupancy_shift, reset, shift_is_exact, sum_of, sum_of_even, times, two_rows, Rows,
    NORMALISE_EVERY, PAD,
};
use super::sample::{GradSpec, SampleRef};
use super::scaled::{Extended, Narrow, Wide};
use crate::gradient::unreachable_fill;
use crate::options::GradWrt;
use crate::problem::settled_log_likelihood;

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

    /// Bytes held on the heap: what keeping this workspace for later calls costs.
    pub fn heap_bytes(&self) -> usize {
        heap_bytes(&self.table_m)
            + heap_bytes(&self.frames)
            + heap_bytes(&self.log_norm)
            + heap_bytes(&self.class_total)
            + heap_bytes(&self.distinct_classes)
            + heap_bytes(&self.prefetch_lines)
            + heap_bytes(&self.slot_offsets)
            + self.wide.heap_bytes()
            + self.narrow.heap_bytes()
    }
}

impl<X: Extended> Lanes<X> {
    fn heap_bytes(&self) -> usize {
        heap_bytes(&self.table_e)
            + self.alpha.heap_bytes()
            + self.beta.heap_bytes()
            + self.next_weighted.heap_bytes()
            + self.emit.heap_bytes()
            + self.skip.heap_bytes()
            + heap_bytes(&self.occupancy)
    }
}

/// How many frames ahead the forward pass prefetches its input.
const AHEAD: usize = 1;

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
    level: SimdLevel,
) -> Outcome {
    let t_len = x.input_len;
    let labels = x.labels;
    if let Some(log_lik) = settled_log_likelihood(t_len, labels) {
        return Outcome::Done(log_lik);
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
    let reads = frame_reads(x, level);
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
            budget_used += X::budget_cost(span);
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

/// The log-likelihood of one sample (two rows of memory per lane type).
#[inline(always)]
pub fn forward<F: FastMath>(level: SimdLevel, x: &SampleRef<'_, F>, ws: &mut Workspace<F>) -> f64 {
    if F::NARROW {
        let mut lanes = std::mem::take(&mut ws.narrow);
        let outcome = forward_in(x, ws, &mut lanes, false, level);
        ws.narrow = lanes;
        if let Outcome::Done(log_lik) = outcome {
            return log_lik;
        }
    }
    let mut lanes = std::mem::take(&mut ws.wide);
    let outcome = forward_in(x, ws, &mut lanes, false, level);
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
    level: SimdLevel,
    x: &SampleRef<'_, F>,
    ws: &mut Workspace<F>,
    mut grad: ArrayViewMut2<'_, F>,
    spec: GradSpec<F>,
) -> f64 {
    if F::NARROW {
        let mut lanes = std::mem::take(&mut ws.narrow);
        let outcome = forward_backward_in(x, ws, &mut lanes, grad.view_mut(), spec, level);
        ws.narrow = lanes;
        if let Outcome::Done(log_lik) = outcome {
            return log_lik;
        }
    }
    let mut lanes = std::mem::take(&mut ws.wide);
    let outcome = forward_backward_in(x, ws, &mut lanes, grad, spec, level);
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
    level: SimdLevel,
) -> Outcome {
    let log_lik = match forward_in(x, ws, lanes, true, level) {
        Outcome::Done(log_lik) => log_lik,
        Outcome::TooWide => return Outcome::TooWide,
    };
    let t_len = x.input_len;
    if let Some(fill) = unreachable_fill(log_lik, spec.zero_infinity) {
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
    let shift = occupancy_shift::<X>(log_lik);
    let exact_shift = shift_is_exact(log_lik);

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
        let shift = if exact_shift {
            shift
        } else {
            frame_shift::<X>(alpha_e, b_e)
        };
        for i in 0..n {
            let alpha = (X::m_from_f64(alpha_m[i].to_f64()), alpha_e[i]);
            occ[i] = occupancy::<X>(alpha, (b_m[i], b_e[i]), shift);
        }
        write_grad_row::<F, X>(x, ws, t, (lo, hi), occ, grad.row_mut(t), spec);

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

/// Writes gradient row `t` (`row`) from frame `t`'s occupancy `occ` (states `lo..=hi`, not
/// yet normalised): minus each class's share of the frame times the scale, plus the softmax
/// of the input row for the logits gradient. One step of `forward_backward_in`'s reverse
/// sweep, inlined into it.
#[inline(always)]
fn write_grad_row<F: FastMath, X: Extended>(
    x: &SampleRef<'_, F>,
    ws: &mut Workspace<F>,
    t: usize,
    (lo, hi): (usize, usize),
    occ: &[X::M],
    mut row: ArrayViewMut1<'_, F>,
    spec: GradSpec<F>,
) {
    let labels = x.labels;
    let scale = spec.scale.to_f64();
    let total = X::m_to_f64(sum_of(occ));
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
    if spec.clear_rows && spec.wrt == GradWrt::LogProbs {
        row.fill(F::ZERO);
    }
    // A plain slice when the row is contiguous (the usual layouts): no stride arithmetic.
    match row.as_slice_mut() {
        Some(out) => write_classes!(out),
        None => write_classes!(row),
    }
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
        forward(SimdLevel::Baseline, &x, &mut Workspace::new())
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
            let ll = forward_backward(
                SimdLevel::Baseline,
                &x,
                &mut Workspace::new(),
                grad.view_mut(),
                spec,
            );
            assert!(ll.is_finite());
            for row in grad.rows() {
                assert!((row.sum() + 1.0).abs() < 1e-12);
                // Class 3 is not in the target.
                assert_eq!(row[3], 0.0);
            }
        }
    }
}
