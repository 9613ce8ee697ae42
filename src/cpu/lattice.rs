//! The CTC lattice of one sample: forward recursion, and one reverse sweep that yields each
//! frame's occupancy and gradient row without a beta table.
//!
//! Extended states: `s = 0..2L+1`; even states are the blank, odd state `2j+1` is label `j`.
//! All values are natural logs. Each stored row is shifted by its own maximum (the per-frame
//! normaliser), so float32 rows keep full precision over any length; the shifts are summed in
//! float64.

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::options::GradWrt;
use crate::real::Real;

/// One sample, as the kernels see it.
pub struct SampleRef<'p, F> {
    /// `(T, C)` log-probabilities of this sample, any strides.
    pub log_probs: ArrayView2<'p, F>,
    /// Frames used: `0..input_len`.
    pub input_len: usize,
    /// Target labels, each in `[0, C)` and not the blank (validated).
    pub labels: &'p [u32],
    /// Blank class.
    pub blank: usize,
}

/// How a gradient row is written.
#[derive(Debug, Clone, Copy)]
pub struct GradSpec<F> {
    pub wrt: GradWrt,
    /// The reduction's factor for this sample.
    pub scale: F,
    pub zero_infinity: bool,
}

/// Scratch memory reused across samples (one per worker).
#[derive(Debug, Default)]
pub struct Workspace<F> {
    /// Forward rows: all of them for the gradient, two for the loss alone.
    alpha: Vec<F>,
    /// Two backward rows.
    beta: Vec<F>,
    /// Emissions of frame t (and t+1 in the backward sweep): blank then each label.
    emit: Vec<F>,
    emit_next: Vec<F>,
    /// Per-state occupancy of the current frame.
    occupancy: Vec<F>,
}

impl<F: Real> Workspace<F> {
    pub fn new() -> Self {
        Workspace {
            alpha: Vec::new(),
            beta: Vec::new(),
            emit: Vec::new(),
            emit_next: Vec::new(),
            occupancy: Vec::new(),
        }
    }
}

/// The label carried by extended state `s`.
#[inline(always)]
fn class_of(labels: &[u32], blank: usize, s: usize) -> usize {
    if s % 2 == 0 {
        blank
    } else {
        labels[s / 2] as usize
    }
}

/// Whether state `s` may be entered from `s - 2` (skipping a blank): only a label state whose
/// label differs from the previous label.
#[inline(always)]
fn can_skip_into(labels: &[u32], s: usize) -> bool {
    s % 2 == 1 && s >= 3 && labels[s / 2] != labels[s / 2 - 1]
}

/// The emission of state `s`, from a frame's gathered emissions (`[blank, label_0, ...]`).
#[inline(always)]
fn emission<F: Copy>(emit: &[F], s: usize) -> F {
    if s % 2 == 0 {
        emit[0]
    } else {
        emit[s / 2 + 1]
    }
}

/// States that are both reachable from the start at frame `t` and can still reach the end:
/// the feasible band `lo..=hi`.
#[inline(always)]
fn band(t: usize, input_len: usize, states: usize) -> (usize, usize) {
    let lo = states.saturating_sub(2 * (input_len - t));
    let hi = (2 * t + 1).min(states - 1);
    (lo, hi)
}

#[inline(always)]
fn max_ignoring_nan<F: Real>(values: &[F]) -> F {
    let mut m = F::NEG_INFINITY;
    for &v in values {
        if v > m {
            m = v;
        }
    }
    m
}

#[inline(always)]
fn log_add<F: Real>(a: F, b: F) -> F {
    let m = if b > a { b } else { a };
    if m == F::NEG_INFINITY {
        return m;
    }
    m + ((a - m).exp() + (b - m).exp()).ln()
}

#[inline(always)]
fn log_add3<F: Real>(a: F, b: F, c: F) -> F {
    let mut m = if b > a { b } else { a };
    if c > m {
        m = c;
    }
    if m == F::NEG_INFINITY {
        return m;
    }
    m + ((a - m).exp() + (b - m).exp() + (c - m).exp()).ln()
}

fn gather<F: Real>(x: &SampleRef<'_, F>, t: usize, out: &mut [F]) {
    let row = x.log_probs.row(t);
    out[0] = row[x.blank];
    for (slot, &label) in out[1..].iter_mut().zip(x.labels) {
        *slot = row[label as usize];
    }
}

/// The number of frames a target needs: one per label plus one blank between equal neighbours.
fn min_frames(labels: &[u32]) -> usize {
    labels.len() + labels.windows(2).filter(|w| w[0] == w[1]).count()
}

/// What a frame's maximum says about the whole sample.
enum FrameStatus {
    Finite,
    /// Every state is -inf: no alignment survives.
    Impossible,
    /// A NaN (or +inf) reached the lattice.
    Nan,
}

fn frame_status<F: Real>(max: F, row: &[F]) -> FrameStatus {
    if max == F::NEG_INFINITY {
        if row.iter().any(|v| v.is_nan()) {
            FrameStatus::Nan
        } else {
            FrameStatus::Impossible
        }
    } else if max.to_f64() == f64::INFINITY {
        FrameStatus::Nan
    } else {
        FrameStatus::Finite
    }
}

/// Runs the forward recursion and returns the log-likelihood (`-inf` when no alignment
/// exists, NaN when a NaN was read). With `keep_table`, `ws.alpha` holds every normalised row
/// (row `t` at `t * states`); otherwise only two rows are kept.
fn forward<F: Real>(x: &SampleRef<'_, F>, ws: &mut Workspace<F>, keep_table: bool) -> f64 {
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
    let rows = if keep_table { t_len } else { 2 };
    ws.alpha.clear();
    ws.alpha.resize(rows * states, F::NEG_INFINITY);
    ws.emit.clear();
    ws.emit.resize(labels.len() + 1, F::ZERO);

    let mut log_scale = 0.0f64;
    for t in 0..t_len {
        gather(x, t, &mut ws.emit);
        let (lo, hi) = band(t, t_len, states);
        let cur_row = if keep_table { t } else { t % 2 };
        let prev_row = if keep_table {
            t.wrapping_sub(1)
        } else {
            (t + 1) % 2
        };
        let (cur, prev): (&mut [F], &[F]) = if t == 0 {
            (&mut ws.alpha[..states], &[])
        } else if cur_row > prev_row {
            let (head, tail) = ws.alpha.split_at_mut(cur_row * states);
            (
                &mut tail[..states],
                &head[prev_row * states..prev_row * states + states],
            )
        } else {
            let (head, tail) = ws.alpha.split_at_mut(prev_row * states);
            (
                &mut head[cur_row * states..cur_row * states + states],
                &tail[..states],
            )
        };

        cur[..lo].fill(F::NEG_INFINITY);
        cur[hi + 1..].fill(F::NEG_INFINITY);
        if t == 0 {
            for (s, slot) in cur.iter_mut().enumerate().take(hi + 1).skip(lo) {
                *slot = emission(&ws.emit, s);
            }
        } else {
            for s in lo..=hi {
                let stay = prev[s];
                let step = if s >= 1 { prev[s - 1] } else { F::NEG_INFINITY };
                let incoming = if can_skip_into(labels, s) {
                    log_add3(stay, step, prev[s - 2])
                } else {
                    log_add(stay, step)
                };
                cur[s] = incoming + emission(&ws.emit, s);
            }
        }
        let m = max_ignoring_nan(&cur[lo..=hi]);
        match frame_status(m, &cur[lo..=hi]) {
            FrameStatus::Finite => {}
            FrameStatus::Impossible => return f64::NEG_INFINITY,
            FrameStatus::Nan => return f64::NAN,
        }
        for v in &mut cur[lo..=hi] {
            *v -= m;
        }
        log_scale += m.to_f64();
    }

    let last_row = if keep_table {
        t_len - 1
    } else {
        (t_len - 1) % 2
    };
    let last = &ws.alpha[last_row * states..last_row * states + states];
    let end = if states > 1 {
        log_add(last[states - 1], last[states - 2])
    } else {
        last[0]
    };
    log_scale + end.to_f64()
}

/// The log-likelihood of a sample's target, keeping two lattice rows.
pub fn log_likelihood<F: Real>(x: &SampleRef<'_, F>, ws: &mut Workspace<F>) -> f64 {
    forward(x, ws, false)
}

/// The log-likelihood, and the gradient rows `0..input_len` of `grad` (`(T, C)`, rows
/// contiguous); rows past the input length are left untouched.
pub fn log_likelihood_and_grad<F: Real>(
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
    ws.beta.clear();
    ws.beta.resize(2 * states, F::NEG_INFINITY);
    ws.occupancy.clear();
    ws.occupancy.resize(states, F::ZERO);
    ws.emit_next.clear();
    ws.emit_next.resize(labels.len() + 1, F::ZERO);

    // beta[t][s]: log-probability of emitting frames t+1.. from state s at t, row-normalised.
    // The occupancy of a frame is softmax_s(alpha[t][s] + beta[t][s]): exact, and it needs
    // neither the row shifts nor the likelihood.
    for t in (0..t_len).rev() {
        let (lo, hi) = band(t, t_len, states);
        let (cur, next) = {
            let (a, b) = ws.beta.split_at_mut(states);
            if t % 2 == 0 {
                (a, &*b)
            } else {
                (b, &*a)
            }
        };
        cur.fill(F::NEG_INFINITY);
        if t == t_len - 1 {
            cur[states - 1] = F::ZERO;
            if states > 1 {
                cur[states - 2] = F::ZERO;
            }
        } else {
            // ws.emit_next holds frame t+1's emissions.
            let em = &ws.emit_next;
            for s in lo..=hi {
                let stay = next[s] + emission(em, s);
                let step = if s + 1 < states {
                    next[s + 1] + emission(em, s + 1)
                } else {
                    F::NEG_INFINITY
                };
                cur[s] = if s + 2 < states && can_skip_into(labels, s + 2) {
                    log_add3(stay, step, next[s + 2] + emission(em, s + 2))
                } else {
                    log_add(stay, step)
                };
            }
            let m = max_ignoring_nan(&cur[lo..=hi]);
            if m > F::NEG_INFINITY {
                for v in &mut cur[lo..=hi] {
                    *v -= m;
                }
            }
        }

        let alpha = &ws.alpha[t * states..(t + 1) * states];
        let occ = &mut ws.occupancy[..];
        let mut m = F::NEG_INFINITY;
        for s in lo..=hi {
            let v = alpha[s] + cur[s];
            occ[s] = v;
            if v > m {
                m = v;
            }
        }
        let mut total = F::ZERO;
        for v in &mut occ[lo..=hi] {
            *v = (*v - m).exp();
            total += *v;
        }
        let weight = spec.scale.to_f64() / total.to_f64();
        let weight = F::from_f64(weight);

        let mut row = grad.row_mut(t);
        match spec.wrt {
            GradWrt::LogProbs => row.fill(F::ZERO),
            GradWrt::Logits => {
                for (g, &lp) in row.iter_mut().zip(x.log_probs.row(t)) {
                    *g = lp.exp() * spec.scale;
                }
            }
        }
        for (s, &o) in occ.iter().enumerate().take(hi + 1).skip(lo) {
            row[class_of(labels, x.blank, s)] -= o * weight;
        }

        // Emissions of frame t, for beta[t-1].
        gather(x, t, &mut ws.emit_next);
    }
    log_lik
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn sample(lp: &Array2<f64>, labels: &[u32]) -> f64 {
        let x = SampleRef {
            log_probs: lp.view(),
            input_len: lp.nrows(),
            labels,
            blank: 0,
        };
        log_likelihood(&x, &mut Workspace::new())
    }

    #[test]
    fn uniform_two_frames_one_label() {
        // Paths for target [1] over 2 frames with 2 classes: "1 1", "0 1", "1 0": 3 of 4.
        let lp = Array2::from_elem((2, 2), 0.5f64.ln());
        let ll = sample(&lp, &[1]);
        assert!((ll - (3.0f64 / 4.0).ln()).abs() < 1e-12);
    }

    #[test]
    fn repeated_label_needs_a_blank() {
        let lp = Array2::from_elem((2, 2), 0.5f64.ln());
        assert_eq!(sample(&lp, &[1, 1]), f64::NEG_INFINITY);
        let lp = Array2::from_elem((3, 2), 0.5f64.ln());
        // Only "1 0 1".
        assert!((sample(&lp, &[1, 1]) - (1.0f64 / 8.0).ln()).abs() < 1e-12);
    }

    #[test]
    fn empty_target_is_all_blanks() {
        let lp = Array2::from_shape_vec((3, 2), vec![-0.1, -2.0, -0.2, -1.0, -0.3, -1.5]).unwrap();
        assert!((sample(&lp, &[]) - (-0.6)).abs() < 1e-12);
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
        };
        let mut grad = Array2::<f64>::zeros((6, 4));
        let spec = GradSpec {
            wrt: GradWrt::LogProbs,
            scale: 1.0,
            zero_infinity: false,
        };
        let ll = log_likelihood_and_grad(&x, &mut Workspace::new(), grad.view_mut(), spec);
        assert!(ll.is_finite());
        for row in grad.rows() {
            assert!((row.sum() + 1.0).abs() < 1e-12);
        }
    }
}
