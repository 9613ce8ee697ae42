//! Very negative finite log-probabilities (issue 15): masked entries (`finfo.min` masking,
//! say) must act as the zeros they approximate, and a sample every path of which runs
//! through one must keep a finite loss and gradient, in every kernel, lane type and SIMD
//! level, for log-probability and logits input alike.
//!
//! The regimes: float32 input beyond `Narrow::MAX_SPAN` (2^20) leaves the float32 lanes;
//! beyond `2^51 / log2(e)` (about 1.6e15) `exp_parts` stops reducing its argument; beyond
//! `2^50` in the likelihood's exponent occupancies are shifted frame by frame; below
//! `-f64::MAX * ln 2` a value is an exact zero.

use ndarray::Array3;

use super::super::dispatch::supported_levels;
use super::super::FastMath;
use super::cases::{assert_close, assert_rows_close, run, Batch, Outputs, Rng};
use crate::options::GradWrt;

/// From ordinary to the most negative finite values of both types.
const VALUES: [f64; 11] = [
    -1e5,
    -3e6,
    -1e7,
    -5e7,
    -3e15,
    -2e21,
    -1e30,
    f32::MIN as f64,
    -4e40,
    -1e300,
    f64::MIN,
];

/// The type's resolution: what the reference loses on a log-likelihood `l` (its own ulp)
/// and what the kernels keep.
fn epsilon<F: FastMath>() -> f64 {
    if std::mem::size_of::<F>() == 8 {
        f64::EPSILON
    } else {
        f32::EPSILON as f64
    }
}

/// Sample `n` of `out` against the reference. A log-likelihood near 0 (the masked entries
/// off every likely path) matches it within the usual tolerance. One far below (every path
/// through a huge value) matches it to the type's relative precision; its gradient matches
/// to the absolute precision left at that size (the input type's ulp), and beyond
/// `1e12`, where the reference's occupancies no longer sum to 1, is checked to be finite
/// with rows summing as `-gamma` does.
fn check_sample<F: FastMath>(
    batch: &Batch,
    input: &Array3<F>,
    out: &Outputs<F>,
    n: usize,
    what: &dyn Fn() -> String,
) {
    let (want, grad) = batch.expected(input, n);
    let eps = epsilon::<F>();
    let atol = if eps < 1e-10 { 1e-11 } else { 3e-5 };
    let got = out.log_liks[n];
    if (want * std::f64::consts::LOG2_E).is_infinite() {
        // Below -f64::MAX * ln 2 the likelihood's exponent does not fit a float64: the one
        // case where the kernels give a zero likelihood (an infinite loss) for a finite
        // reference (which itself overflows at a second such frame).
        assert_eq!(got, f64::NEG_INFINITY, "{}", what());
        return;
    }
    assert_close(got, want, 8.0 * eps, atol, &|| format!("{} loss", what()));
    let rows = out.grads[n].view();
    if want.abs() < 1e12 || !want.is_finite() {
        // The input's own resolution at `want`: float32 lanes hold `x - norm` in float32.
        let atol = atol + 4.0 * eps * want.abs();
        assert_rows_close(rows, grad.view(), F::ZERO, (atol, atol), what);
    }
    if want.is_finite() {
        let scale = batch.spec::<F>(n).scale.to_f64();
        for t in 0..batch.input_lens[n] {
            // -gamma sums to -1; the softmax of the input to 1 (logits) or to the sum of
            // the probabilities (log_probs, which need not be normalised).
            let probs: f64 = if batch.logits {
                1.0
            } else {
                (0..input.dim().2)
                    .map(|c| input[[t, n, c]].to_f64().exp())
                    .sum()
            };
            let row_sum = match batch.wrt {
                GradWrt::LogProbs => -scale,
                GradWrt::Logits => (probs - 1.0) * scale,
            };
            let row = rows.row(t);
            assert!(row.iter().all(|g| g.to_f64().is_finite()), "{}", what());
            let sum: f64 = row.iter().map(|g| g.to_f64()).sum();
            assert_close(sum, row_sum, 0.0, 1e-5, &|| format!("{} row {t}", what()));
        }
    }
}

/// A batch of `n` samples (2 to 7 frames, 4 classes), every input entry `v` with
/// probability `masked`.
fn batch_with(rng: &mut Rng, v: f64, masked: f64, logits: bool, labels: &[&[u32]]) -> Batch {
    let n = labels.len();
    let mut input = Array3::from_shape_fn((7, n, 4), |_| rng.normal());
    for x in input.iter_mut() {
        if rng.unit() < masked {
            *x = v;
        }
    }
    if !logits {
        for mut sample in input.axis_iter_mut(ndarray::Axis(1)) {
            let finite = sample.mapv(|x| if x == v { f64::NEG_INFINITY } else { x });
            let lp = super::cases::log_softmax(&finite.to_owned());
            // The masked entries stay `v`: a log-probability, like the log_softmax of
            // logits masked with `v`.
            for (out, (&lp, &x)) in sample.iter_mut().zip(lp.iter().zip(finite.iter())) {
                *out = if x == f64::NEG_INFINITY { v } else { lp };
            }
        }
    }
    Batch {
        input,
        input_lens: (0..n).map(|k| 7 - k % 3).collect(),
        labels: labels.iter().map(|l| l.to_vec()).collect(),
        blank: 0,
        logits,
        class_strided: false,
        wrt: GradWrt::LogProbs,
        zero_infinity: false,
        clear_rows: false,
    }
}

/// Masked entries: every kernel and level matches the reference on the input as rounded to
/// `F` (float32 turns the values beyond its range into `-inf`). Some samples (an empty
/// target with a masked blank, say) have every path through a masked entry.
fn masked_entries_act_as_zeros<F: FastMath>() {
    let labels: [&[u32]; 5] = [&[1, 2], &[2, 2], &[3, 1, 2], &[1], &[]];
    let mut rng = Rng::new(8);
    for v in VALUES {
        for logits in [false, true] {
            for wrt in [GradWrt::LogProbs, GradWrt::Logits] {
                let mut batch = batch_with(&mut rng, v, 0.15, logits, &labels);
                batch.wrt = wrt;
                let input = batch.input_as::<F>();
                for level in supported_levels() {
                    for groups in [false, true] {
                        let out = run(&batch, &input, level, groups, true);
                        for n in 0..labels.len() {
                            check_sample(&batch, &input, &out, n, &|| {
                                format!(
                                    "{} {v:e} logits {logits} {wrt:?} {} groups {groups} \
                                     sample {n}",
                                    F::NAME,
                                    level.name()
                                )
                            });
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn masked_entries_act_as_zeros_f32() {
    masked_entries_act_as_zeros::<f32>();
}

#[test]
fn masked_entries_act_as_zeros_f64() {
    masked_entries_act_as_zeros::<f64>();
}

/// Every path runs through `v` (label 2 is `v` on every frame): see `check_sample`.
fn forced_paths_stay_finite<F: FastMath>(v: f64) {
    let labels: [&[u32]; 3] = [&[1, 2], &[2, 2], &[2, 1, 2]];
    let mut rng = Rng::new(9);
    for logits in [false, true] {
        for wrt in [GradWrt::LogProbs, GradWrt::Logits] {
            let mut batch = batch_with(&mut rng, v, 0.0, logits, &labels);
            batch.input.slice_mut(ndarray::s![.., .., 2]).fill(v);
            batch.wrt = wrt;
            let input = batch.input_as::<F>();
            for level in supported_levels() {
                for groups in [false, true] {
                    let out = run(&batch, &input, level, groups, true);
                    for n in 0..labels.len() {
                        let (want, _) = batch.expected(&input, n);
                        let what = || {
                            let level = level.name();
                            format!(
                                "{} {v:e} logits {logits} {wrt:?} {level} groups {groups} \
                                 sample {n}",
                                F::NAME
                            )
                        };
                        assert!(want.is_finite() && want < v / 2.0, "{}: {want}", what());
                        check_sample(&batch, &input, &out, n, &what);
                    }
                }
            }
        }
    }
}

#[test]
fn forced_paths_through_huge_values_stay_finite() {
    for v in [-1e5, -3e6, -1e7, -3e15, -2e21, f32::MIN as f64] {
        forced_paths_stay_finite::<f32>(v);
    }
    for v in [-1e5, -3e15, -2e21, -1e30, -1e300] {
        forced_paths_stay_finite::<f64>(v);
    }
}

#[test]
fn below_the_exponent_range_is_minus_infinity() {
    // `exp_parts` at -f64::MAX: `x log2 e` overflows, so the value is the zero it
    // approximates; just above it, the value is kept.
    use super::super::scaled::exp_parts;
    assert_eq!(exp_parts::<13>(f64::MIN), (0.0, f64::NEG_INFINITY));
    let (m, e) = exp_parts::<13>(-1e308);
    assert_eq!(m, 1.0);
    assert_close(e, -1e308 * std::f64::consts::LOG2_E, 1e-15, 0.0, &|| {
        "-1e308".into()
    });
    for x in [-1.6e15, -3e15, -1e20, -4e40] {
        let (m, e) = exp_parts::<8>(x);
        assert_eq!(m, 1.0, "{x}: ({m}, {e})");
        assert_close(e, x * std::f64::consts::LOG2_E, 1e-15, 0.0, &|| {
            format!("{x}")
        });
    }
}
