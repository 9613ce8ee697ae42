//! The CTC lattice of one sample: forward recursion, and one reverse sweep that yields each
//! frame's occupancy and gradient row without a beta table.
//!
//! Extended states: `s = 0..2L+1`; even states are the blank, odd state `2j+1` is label `j`.
//! All values are natural logs. The loops run over contiguous, equally long slices with no
//! branches, so LLVM vectorises them (see `dispatch.rs` for the instruction sets).
//!
//! Numerics: row `t` of the forward table is stored shifted by the running sum of earlier
//! row maxima (kept in float64), so stored values stay near 0 and float32 keeps its precision
//! over any length. The backward rows are shifted the same way. The occupancy of a frame is
//! `softmax_s(alpha[t][s] + beta[t][s])`: exact, and independent of every shift.

use ndarray::{ArrayView2, ArrayViewMut2};

use super::fastmath::FastMath;
use crate::options::GradWrt;

/// Leading (forward) or trailing (backward) `-inf` pads, so `s - 2` and `s + 2` need no checks.
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

/// Scratch memory reused across samples and calls (one per worker thread).
///
/// The recursion runs in float64 whatever the input type: float32 inputs then lose nothing
/// to accumulated rounding (a float32 recursion drifts by ~|alpha| * 6e-8 per frame on
/// states far below the row maximum, 2e-4 on peaked inputs at T=5000). Only the forward
/// table is stored in the input type: one rounding per entry, no accumulation.
#[derive(Debug, Default)]
pub struct Workspace<F> {
    /// Forward table, row `t` holds frame `t`'s normalised log-alphas (width `states`).
    table: Vec<F>,
    /// Two running forward rows, width `states + PAD`, state `s` at `PAD + s`.
    alpha: Vec<f64>,
    /// Two running backward rows, width `states + PAD`, state `s` at `s`.
    beta: Vec<f64>,
    /// `beta[t+1][s] + emission[t+1][s]`, width `states + PAD`.
    next_weighted: Vec<f64>,
    /// Emissions of one frame, per extended state.
    emit: Vec<f64>,
    /// The input at the blank and each label, per frame (`L + 1` per row): read once by the
    /// forward pass (one load per label, not per state), reused by the backward pass.
    frames: Vec<F>,
    /// Additive mask: 0 where state `s` may be entered from `s - 2`, else `-inf`; width
    /// `states + PAD`.
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
fn log_add<F: FastMath>(a: f64, b: f64) -> f64 {
    let m = a.fmax(b);
    let low = a.fmin(b);
    let safe = if m == f64::NEG_INFINITY { 0.0 } else { m };
    let out = safe + F::lattice_ln_1p(F::lattice_exp(low - safe));
    if m == f64::NEG_INFINITY {
        f64::NEG_INFINITY
    } else {
        out
    }
}

/// `ln(e^a + e^b + e^c)` with two exps and one log; inputs are finite or `-inf`.
#[inline(always)]
fn log_add3<F: FastMath>(a: f64, b: f64, c: f64) -> f64 {
    let p = a.fmax(b);
    let q = a.fmin(b);
    let m = p.fmax(c);
    let r = p.fmin(c);
    let safe = if m == f64::NEG_INFINITY { 0.0 } else { m };
    let rest = F::lattice_exp(q - safe) + F::lattice_exp(r - safe);
    let out = safe + F::lattice_ln_1p(rest);
    if m == f64::NEG_INFINITY {
        f64::NEG_INFINITY
    } else {
        out
    }
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

/// Reads frame `t`'s input for the blank and each label into `out` (`[blank, label_0, ...]`),
/// one load per label. Returns false when a value (minus `norm`) is NaN or `+inf`: such an
/// input makes the loss NaN.
#[inline(always)]
fn read_frame<F: FastMath>(x: &SampleRef<'_, F>, t: usize, norm: f64, out: &mut [F]) -> bool {
    let row = x.log_probs.row(t);
    let base = row.as_ptr();
    let stride = row.strides()[0];
    let len = row.len();
    let mut finite_or_neg_inf = true;
    let classes = std::iter::once(x.blank).chain(x.labels.iter().map(|&l| l as usize));
    for (slot, class) in out.iter_mut().zip(classes) {
        assert!(class < len);
        // SAFETY: `class < len` (checked above; validation guarantees it, so the check is
        // free in practice), and element `class` of a row of `len` elements with this
        // stride lies inside the array `row` views.
        let v = unsafe { *base.offset(class as isize * stride) };
        finite_or_neg_inf &= v.to_f64() - norm < f64::INFINITY;
        *slot = v;
    }
    finite_or_neg_inf
}

/// Asks the CPU to start loading frame `t`'s input row, when it is contiguous and wide: the
/// labels are read at scattered places of the row, which the hardware prefetcher cannot
/// predict, and with a large vocabulary each read would otherwise wait for memory.
#[inline(always)]
fn prefetch_frame<F>(x: &SampleRef<'_, F>, t: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        const LINE: usize = 64;
        let row = x.log_probs.row(t);
        let bytes = row.len() * std::mem::size_of::<F>();
        if row.strides()[0] == 1 && bytes > 4 * LINE {
            let base = row.as_ptr() as *const i8;
            for offset in (0..bytes).step_by(LINE) {
                // SAFETY: prefetching has no architectural effect; the address lies inside
                // the row (offset < bytes).
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        base.add(offset),
                    )
                };
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, t);
    }
}

/// Expands a frame read by `read_frame` to the emissions of states `lo..=hi` (and perhaps a
/// few more), in float64 and shifted by `norm`.
#[inline(always)]
fn expand<F: FastMath>(frame: &[F], lo: usize, hi: usize, norm: f64, emit: &mut [f64]) {
    // Whole (blank, label) pairs covering lo..=hi: a branch-free loop that vectorises.
    // Pair j is states (2j, 2j+1): the blank and label j (frame[j + 1]).
    let labels = frame.len() - 1;
    let first = lo / 2;
    let end = (hi / 2 + 1).min(labels);
    let blank = frame[0].to_f64() - norm;
    if first < end {
        let pairs = emit[2 * first..2 * end].chunks_exact_mut(2);
        for (pair, &label) in pairs.zip(&frame[first + 1..end + 1]) {
            pair[0] = blank;
            pair[1] = label.to_f64() - norm;
        }
    }
    if hi == 2 * labels {
        // The final blank, which has no label after it.
        emit[hi] = blank;
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

/// Runs the forward recursion and returns the log-likelihood (`-inf` when no alignment
/// exists, NaN when a NaN or `+inf` was read). With `keep_table`, `ws.table` keeps every
/// normalised row.
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
    reset(&mut ws.alpha, 2 * width, f64::NEG_INFINITY);
    reset(&mut ws.emit, states, 0.0);
    if keep_table {
        reset(&mut ws.table, t_len * states, F::NEG_INFINITY);
    }
    let frame_rows = if keep_table { t_len } else { 1 };
    reset(&mut ws.frames, frame_rows * (labels.len() + 1), F::ZERO);
    fill_skip(labels, &mut ws.skip);
    fill_classes(labels, x.blank, &mut ws.classes);
    fill_log_norm(x, &mut ws.log_norm);

    let mut log_scale = 0.0f64;
    for t in 0..t_len {
        let (lo, hi) = band(t, t_len, states);
        if t + 1 < t_len {
            prefetch_frame(x, t + 1);
        }
        let row = if keep_table { t } else { 0 };
        let frame = &mut ws.frames[row * (labels.len() + 1)..(row + 1) * (labels.len() + 1)];
        if !read_frame(x, t, ws.log_norm[t], frame) {
            return f64::NAN;
        }
        expand(frame, lo, hi, ws.log_norm[t], &mut ws.emit);
        let (cur, prev) = two_rows(&mut ws.alpha, t % 2, (t + 1) % 2, width);
        // The row is reused: clear what this frame does not write.
        cur[..PAD + lo].fill(f64::NEG_INFINITY);
        cur[PAD + hi + 1..].fill(f64::NEG_INFINITY);
        let n = hi + 1 - lo;
        let emit = &ws.emit[lo..lo + n];
        let out = &mut cur[PAD + lo..PAD + lo + n];
        if t == 0 {
            out.copy_from_slice(emit);
        } else {
            let stay = &prev[PAD + lo..PAD + lo + n];
            let step = &prev[PAD + lo - 1..PAD + lo - 1 + n];
            let jump = &prev[PAD + lo - 2..PAD + lo - 2 + n];
            let mask = &ws.skip[lo..lo + n];
            for i in 0..n {
                out[i] = log_add3::<F>(stay[i], step[i], jump[i] + mask[i]) + emit[i];
            }
        }
        let m = max_of(out);
        if m == f64::NEG_INFINITY {
            return f64::NEG_INFINITY;
        }
        if t + 1 < t_len {
            for v in out.iter_mut() {
                *v -= m;
            }
            log_scale += m;
        }
        if keep_table {
            let row = &mut ws.table[t * states + lo..t * states + lo + n];
            for (slot, &v) in row.iter_mut().zip(out.iter()) {
                *slot = F::from_f64(v);
            }
        }
    }

    let last = &ws.alpha[((t_len - 1) % 2) * width + PAD..((t_len - 1) % 2 + 1) * width];
    let end = if states > 1 {
        log_add::<F>(last[states - 1], last[states - 2])
    } else {
        last[0]
    };
    log_scale + end
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
    reset(&mut ws.beta, 2 * width, f64::NEG_INFINITY);
    reset(&mut ws.next_weighted, width, f64::NEG_INFINITY);
    reset(&mut ws.occupancy, states, 0.0);
    reset(&mut ws.class_total, x.log_probs.ncols(), 0.0);
    ws.distinct_classes.clear();
    ws.distinct_classes.push(x.blank);
    ws.distinct_classes
        .extend(labels.iter().map(|&l| l as usize));
    ws.distinct_classes.sort_unstable();
    ws.distinct_classes.dedup();
    let scale = spec.scale.to_f64();

    for t in (0..t_len).rev() {
        let (lo, hi) = band(t, t_len, states);
        let n = hi + 1 - lo;
        let (cur, next) = two_rows(&mut ws.beta, t % 2, (t + 1) % 2, width);
        cur.fill(f64::NEG_INFINITY);
        if t + 1 == t_len {
            cur[states - 1] = 0.0;
            if states > 1 {
                cur[states - 2] = 0.0;
            }
        } else {
            // ws.emit holds frame t+1's emissions on band(t+1): every state this frame
            // reads with a finite beta.
            let top = (hi + PAD).min(states - 1);
            let w = &mut ws.next_weighted;
            for s in lo..=top {
                w[s] = next[s] + ws.emit[s];
            }
            // Entries above `top` are stale or padding; `top` already reaches hi + 2.
            w[top + 1..].fill(f64::NEG_INFINITY);
            let m = max_of(&w[lo..=top]);
            let stay = &w[lo..lo + n];
            let step = &w[lo + 1..lo + 1 + n];
            let jump = &w[lo + 2..lo + 2 + n];
            let mask = &ws.skip[lo + 2..lo + 2 + n];
            let out = &mut cur[lo..lo + n];
            for i in 0..n {
                out[i] = log_add3::<F>(stay[i], step[i], jump[i] + mask[i]) - m;
            }
        }

        // Occupancy of frame t: softmax over the band of alpha + beta.
        let alpha = &ws.table[t * states + lo..t * states + lo + n];
        let occ = &mut ws.occupancy[lo..lo + n];
        let b = &cur[lo..lo + n];
        for i in 0..n {
            occ[i] = alpha[i].to_f64() + b[i];
        }
        let m = max_of(occ);
        for v in occ.iter_mut() {
            *v = F::lattice_exp(*v - m);
        }
        let weight = scale / sum_of(occ);

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
        let acc = &mut ws.class_total;
        for (i, &o) in occ.iter().enumerate() {
            acc[ws.classes[lo + i]] += o;
        }
        for &class in &ws.distinct_classes {
            let g = F::from_f64(-acc[class] * weight);
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
