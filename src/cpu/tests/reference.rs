//! An independent, obvious float64 CTC: the textbook log-space forward-backward over the
//! extended target, and brute force over every path to check it on tiny cases.

use ndarray::{Array2, ArrayView2};

/// `ln(exp(a) + exp(b))`, `-inf` when both are.
fn log_add(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        m
    } else {
        m + ((a - m).exp() + (b - m).exp()).ln()
    }
}

/// The log-likelihood of `labels` under `lp` (`(T, C)` log-probabilities, every row used)
/// and the occupancy `gamma[t][c]` (each row sums to 1; NaN rows when the likelihood is 0).
pub(super) fn ctc(lp: ArrayView2<'_, f64>, labels: &[u32], blank: usize) -> (f64, Array2<f64>) {
    let (t_len, classes) = lp.dim();
    let ext: Vec<usize> = std::iter::once(blank)
        .chain(labels.iter().flat_map(|&l| [l as usize, blank]))
        .collect();
    let s_len = ext.len();
    let skip = |s: usize| s >= 2 && ext[s] != blank && ext[s] != ext[s - 2];
    let mut alpha = Array2::from_elem((t_len, s_len), f64::NEG_INFINITY);
    let mut beta = alpha.clone();
    for t in 0..t_len {
        for s in 0..s_len {
            let mut a = if t == 0 {
                if s < 2 {
                    0.0
                } else {
                    f64::NEG_INFINITY
                }
            } else {
                alpha[[t - 1, s]]
            };
            if t > 0 && s >= 1 {
                a = log_add(a, alpha[[t - 1, s - 1]]);
            }
            if t > 0 && skip(s) {
                a = log_add(a, alpha[[t - 1, s - 2]]);
            }
            alpha[[t, s]] = a + lp[[t, ext[s]]];
        }
    }
    for t in (0..t_len).rev() {
        for s in (0..s_len).rev() {
            let mut b = if t + 1 == t_len {
                if s + 2 >= s_len {
                    0.0
                } else {
                    f64::NEG_INFINITY
                }
            } else {
                beta[[t + 1, s]] + lp[[t + 1, ext[s]]]
            };
            if t + 1 < t_len && s + 1 < s_len {
                b = log_add(b, beta[[t + 1, s + 1]] + lp[[t + 1, ext[s + 1]]]);
            }
            if t + 1 < t_len && s + 2 < s_len && skip(s + 2) {
                b = log_add(b, beta[[t + 1, s + 2]] + lp[[t + 1, ext[s + 2]]]);
            }
            beta[[t, s]] = b;
        }
    }
    let log_lik = if t_len == 0 {
        if labels.is_empty() {
            0.0
        } else {
            f64::NEG_INFINITY
        }
    } else {
        let last = alpha[[t_len - 1, s_len - 1]];
        if s_len > 1 {
            log_add(last, alpha[[t_len - 1, s_len - 2]])
        } else {
            last
        }
    };
    let mut gamma = Array2::zeros((t_len, classes));
    for t in 0..t_len {
        for s in 0..s_len {
            gamma[[t, ext[s]]] += (alpha[[t, s]] + beta[[t, s]] - log_lik).exp();
        }
    }
    (log_lik, gamma)
}

/// Brute force: every path of `lp.nrows()` frames over the classes, collapsed; the same
/// outputs as `ctc`. Exponential: for a handful of frames and classes.
fn brute_force(lp: ArrayView2<'_, f64>, labels: &[u32], blank: usize) -> (f64, Array2<f64>) {
    let (t_len, classes) = lp.dim();
    let mut total = 0.0;
    let mut mass = Array2::<f64>::zeros((t_len, classes));
    for code in 0..classes.pow(t_len as u32) {
        let path: Vec<usize> = (0..t_len)
            .map(|t| code / classes.pow(t as u32) % classes)
            .collect();
        let mut collapsed = Vec::new();
        for (t, &c) in path.iter().enumerate() {
            if c != blank && (t == 0 || path[t - 1] != c) {
                collapsed.push(c as u32);
            }
        }
        if collapsed == labels {
            let p: f64 = path
                .iter()
                .enumerate()
                .map(|(t, &c)| lp[[t, c]])
                .sum::<f64>()
                .exp();
            total += p;
            for (t, &c) in path.iter().enumerate() {
                mass[[t, c]] += p;
            }
        }
    }
    (total.ln(), mass / total)
}

#[test]
fn log_space_reference_matches_brute_force() {
    let mut rng = super::cases::Rng::new(7);
    for case in 0..40 {
        let (t_len, classes) = (1 + case % 5, 2 + case % 3);
        let lp = super::cases::log_softmax(&Array2::from_shape_fn((t_len, classes), |_| {
            rng.normal() * 2.0
        }));
        let blank = case % classes;
        let labels = super::cases::random_labels(&mut rng, case % 4, classes, blank, 0.3);
        let (want, want_gamma) = brute_force(lp.view(), &labels, blank);
        let (got, gamma) = ctc(lp.view(), &labels, blank);
        if want == f64::NEG_INFINITY {
            assert_eq!(got, want, "case {case}");
            continue;
        }
        assert!((got - want).abs() < 1e-12, "case {case}: {got} vs {want}");
        for (g, w) in gamma.iter().zip(&want_gamma) {
            assert!((g - w).abs() < 1e-12, "case {case}: gamma {g} vs {w}");
        }
    }
}
