//! Forced alignment: the single most likely path of a sample through its CTC lattice.
//!
//! Max-product (Viterbi) over the same extended states as the loss, in float64, with a
//! backpointer per cell. No exp or log is needed, so the scores are exact sums of the
//! input log-probabilities.
//!
//! Ties are broken deterministically: a state prefers the predecessor with the highest state
//! index (staying, then one step, then the skip over a blank), and the path ends in the final
//! blank rather than the final label when both score the same.

use ndarray::{ArrayViewMut1, ArrayViewMut2};

use super::fastmath::FastMath;
use super::sample::SampleRef;

/// Where one sample's alignment goes: rows of the batch outputs.
pub struct AlignmentRows<'a, F> {
    /// `(T,)`: the class emitted at each frame on the best path, -1 past the input length.
    pub labels: ArrayViewMut1<'a, i64>,
    /// `(T,)`: that frame's log-probability, NaN past the input length.
    pub scores: ArrayViewMut1<'a, F>,
    /// `(S, 2)`: each target token's frames `[start, end)`, -1 for padding.
    pub spans: ArrayViewMut2<'a, i64>,
}

/// Scratch memory reused across samples.
#[derive(Debug, Default)]
pub struct ViterbiWorkspace {
    /// Two running rows of path scores, width `states + 2` (two leading `-inf` pads).
    rows: Vec<f64>,
    /// Backpointers, `T * states`: how many states back the best predecessor is (0, 1, 2).
    back: Vec<u8>,
    /// The state of each frame on the best path.
    path: Vec<usize>,
    /// Per frame, the log-sum-exp subtracted from logits input (0 for log-probabilities).
    log_norm: Vec<f64>,
}

impl ViterbiWorkspace {
    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        fn bytes<T>(vec: &Vec<T>) -> usize {
            vec.capacity() * std::mem::size_of::<T>()
        }
        bytes(&self.rows) + bytes(&self.back) + bytes(&self.path) + bytes(&self.log_norm)
    }
}

/// Aligns one sample and writes its rows. Returns the best path's total log-probability
/// (`-inf` when no alignment exists, NaN when a NaN was read); rows of a sample without a
/// finite best path keep their fill values (-1 / NaN). With `star`, a label equal to the
/// number of classes `C` is the star token: it emits `star` at every frame.
pub fn align<F: FastMath>(
    x: &SampleRef<'_, F>,
    star: Option<f64>,
    ws: &mut ViterbiWorkspace,
    mut out: AlignmentRows<'_, F>,
) -> f64 {
    let t_len = x.input_len;
    let labels = x.labels;
    let states = 2 * labels.len() + 1;
    if t_len == 0 {
        return if labels.is_empty() {
            0.0
        } else {
            f64::NEG_INFINITY
        };
    }
    let width = states + 2;
    ws.rows.clear();
    ws.rows.resize(2 * width, f64::NEG_INFINITY);
    ws.back.clear();
    ws.back.resize(t_len * states, 0);

    let class_of = |s: usize| {
        if s.is_multiple_of(2) {
            x.blank
        } else {
            labels[s / 2] as usize
        }
    };
    let can_skip_into = |s: usize| s % 2 == 1 && s >= 3 && labels[s / 2] != labels[s / 2 - 1];
    let star_class = x.log_probs.ncols();
    let star_score = star.unwrap_or(f64::NAN);

    ws.log_norm.clear();
    for t in 0..t_len {
        let row = x.log_probs.row(t);
        let norm = if x.logits {
            super::frame_reads::log_sum_exp(row)
        } else {
            0.0
        };
        ws.log_norm.push(norm);
        let (cur, prev) = if t % 2 == 0 {
            let (a, b) = ws.rows.split_at_mut(width);
            (a, &*b)
        } else {
            let (a, b) = ws.rows.split_at_mut(width);
            (b, &*a)
        };
        cur.fill(f64::NEG_INFINITY);
        let hi = (2 * t + 1).min(states - 1);
        for s in 0..=hi {
            let class = class_of(s);
            let emit = if class == star_class {
                star_score
            } else {
                row[class].to_f64() - norm
            };
            if emit.is_nan() {
                return f64::NAN;
            }
            let (best, step) = if t == 0 {
                (0.0, 0u8)
            } else {
                let mut best = prev[s + 2];
                let mut step = 0u8;
                if prev[s + 1] > best {
                    best = prev[s + 1];
                    step = 1;
                }
                if can_skip_into(s) && prev[s] > best {
                    best = prev[s];
                    step = 2;
                }
                (best, step)
            };
            cur[s + 2] = best + emit;
            ws.back[t * states + s] = step;
        }
    }

    let last = &ws.rows[((t_len - 1) % 2) * width + 2..((t_len - 1) % 2) * width + 2 + states];
    let mut end = states - 1;
    if states > 1 && last[states - 2] > last[states - 1] {
        end = states - 2;
    }
    let score = last[end];
    if !score.is_finite() {
        return score;
    }

    ws.path.clear();
    ws.path.resize(t_len, 0);
    let mut s = end;
    for t in (0..t_len).rev() {
        ws.path[t] = s;
        s -= ws.back[t * states + s] as usize;
    }

    for (t, &s) in ws.path.iter().enumerate() {
        let class = class_of(s);
        out.labels[t] = class as i64;
        out.scores[t] = F::from_f64(if class == star_class {
            star_score
        } else {
            x.log_probs[[t, class]].to_f64() - ws.log_norm[t]
        });
        if s % 2 == 1 {
            let token = s / 2;
            if out.spans[[token, 0]] < 0 {
                out.spans[[token, 0]] = t as i64;
            }
            out.spans[[token, 1]] = t as i64 + 1;
        }
    }
    score
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2};

    #[test]
    fn aligns_a_clear_case() {
        // Frames favour: blank, 1, 1, blank, 2.
        let favoured = [0usize, 1, 1, 0, 2];
        let lp = Array2::from_shape_fn((5, 3), |(t, c)| {
            if c == favoured[t] {
                0.9f64.ln()
            } else {
                0.05f64.ln()
            }
        });
        let labels = [1u32, 2];
        let x = SampleRef {
            log_probs: lp.view(),
            input_len: 5,
            labels: &labels,
            blank: 0,
            logits: false,
        };
        let mut out_labels = Array1::from_elem(5, -1i64);
        let mut scores = Array1::from_elem(5, f64::NAN);
        let mut spans = Array2::from_elem((2, 2), -1i64);
        let score = align(
            &x,
            None,
            &mut ViterbiWorkspace::default(),
            AlignmentRows {
                labels: out_labels.view_mut(),
                scores: scores.view_mut(),
                spans: spans.view_mut(),
            },
        );
        assert_eq!(out_labels.to_vec(), vec![0, 1, 1, 0, 2]);
        assert!((score - 5.0 * 0.9f64.ln()).abs() < 1e-12);
        assert_eq!(spans.row(0).to_vec(), vec![1, 3]);
        assert_eq!(spans.row(1).to_vec(), vec![4, 5]);
    }
}
