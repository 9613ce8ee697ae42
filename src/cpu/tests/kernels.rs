//! The per-sample kernel against the reference, and the group kernel against both.

use ndarray::Array3;

use super::super::dispatch::SimdLevel;
use super::super::FastMath;
use super::cases::{assert_close, assert_rows_close, run, Batch, Outputs, Rng};

/// `(rtol, atol)` for losses and gradients against the float64 reference: float64 keeps
/// float64's precision; float32 runs in float32 mantissas (`Narrow` lanes), a rounding or
/// two per frame.
fn tolerance<F: FastMath>() -> (f64, f64) {
    if std::mem::size_of::<F>() == 8 {
        (1e-11, 1e-11)
    } else {
        (3e-5, 3e-5)
    }
}

/// Every sample of `out` (a run with the gradient) against the reference.
fn check_reference<F: FastMath>(batch: &Batch, input: &Array3<F>, out: &Outputs<F>, what: &str) {
    let (rtol, atol) = tolerance::<F>();
    for n in 0..batch.labels.len() {
        let (want, grad) = batch.expected(input, n);
        let what = || format!("{what}, {} sample {n}", F::NAME);
        assert_close(out.log_liks[n], want, rtol, atol, &|| {
            format!("{} loss", what())
        });
        let start = batch.fresh_grad::<F>()[[0, 0]];
        assert_rows_close(out.grads[n].view(), grad.view(), start, (rtol, atol), &what);
    }
}

/// Two runs of the same batch sample by sample: equal within the type's rounding.
fn check_same<F: FastMath>(a: &Outputs<F>, b: &Outputs<F>, what: &str) {
    let (rtol, atol) = tolerance::<F>();
    for n in 0..a.log_liks.len() {
        let what = || format!("{what}, {} sample {n}", F::NAME);
        assert_close(a.log_liks[n], b.log_liks[n], rtol, atol, &|| {
            format!("{} loss", what())
        });
        for (x, y) in a.grads[n].iter().zip(&b.grads[n]) {
            assert_close(x.to_f64(), y.to_f64(), rtol, atol, &|| {
                format!("{} grad", what())
            });
        }
    }
}

fn per_sample_matches_reference<F: FastMath>(seed: u64) {
    let mut rng = Rng::new(seed);
    for case in 0..24 {
        let batch = Batch::random(&mut rng, 5, 30, 8);
        let input = batch.input_as::<F>();
        let out = run(&batch, &input, SimdLevel::Baseline, false, true);
        check_reference(&batch, &input, &out, &format!("case {case}, with grad"));
        let out = run(&batch, &input, SimdLevel::Baseline, false, false);
        assert_eq!(out.grouped, 0);
        for n in 0..batch.labels.len() {
            let (want, _) = batch.expected(&input, n);
            let (rtol, atol) = tolerance::<F>();
            assert_close(out.log_liks[n], want, rtol, atol, &|| {
                format!("case {case}, forward only, {} sample {n}", F::NAME)
            });
        }
    }
}

#[test]
fn per_sample_kernel_matches_reference_f64() {
    per_sample_matches_reference::<f64>(1);
}

#[test]
fn per_sample_kernel_matches_reference_f32() {
    per_sample_matches_reference::<f32>(2);
}

fn group_matches_per_sample<F: FastMath>(seed: u64) {
    let mut rng = Rng::new(seed);
    let mut grouped = 0;
    for case in 0..10 {
        // More than LANES samples: a full group and a partial one.
        let batch = Batch::random(&mut rng, 19, 36, 13);
        let input = batch.input_as::<F>();
        for with_grad in [true, false] {
            let what = format!("case {case}, with_grad {with_grad}");
            let one = run(&batch, &input, SimdLevel::Baseline, false, with_grad);
            let group = run(&batch, &input, SimdLevel::Baseline, true, with_grad);
            check_same(&group, &one, &what);
            if with_grad {
                check_reference(&batch, &input, &group, &what);
            }
            grouped += group.grouped;
        }
    }
    // The lanes a group leaves (no frames, too short, a zero likelihood) are the exception.
    assert!(
        grouped > 10 * 2 * 19 / 2,
        "only {grouped} samples ran in groups"
    );
}

#[test]
fn group_kernel_matches_per_sample_kernel_f64() {
    group_matches_per_sample::<f64>(3);
}

#[test]
fn group_kernel_matches_per_sample_kernel_f32() {
    group_matches_per_sample::<f32>(4);
}

#[test]
fn lanes_a_group_cannot_run_are_left_to_the_per_sample_kernel() {
    use super::super::dispatch::group_log_likelihood_at;
    use super::super::lockstep::GroupWorkspace;
    use super::super::SampleRef;
    // Frames 0..4 of 3 classes; samples: ordinary, no frames, too short for a repeated
    // target, an empty target, a NaN read, every path through a -inf emission.
    let mut lp = Array3::from_elem((4, 6, 3), (1.0f64 / 3.0).ln());
    lp[[1, 4, 0]] = f64::NAN;
    for t in 0..4 {
        lp[[t, 5, 1]] = f64::NEG_INFINITY;
    }
    let targets: [(&[u32], usize); 6] = [
        (&[1, 2], 4),
        (&[1], 0),
        (&[1, 1, 1], 4),
        (&[], 3),
        (&[1, 2], 4),
        (&[1], 4),
    ];
    let xs: Vec<SampleRef<'_, f64>> = targets
        .iter()
        .enumerate()
        .map(|(n, &(labels, input_len))| SampleRef {
            log_probs: lp.index_axis(ndarray::Axis(1), n),
            input_len,
            labels,
            blank: 0,
            logits: false,
        })
        .collect();
    let done = group_log_likelihood_at(SimdLevel::Baseline, &xs, &mut GroupWorkspace::default());
    let left: Vec<bool> = done.iter().map(Option::is_none).collect();
    assert_eq!(left, [false, true, true, false, true, true]);
    assert!(done[0].unwrap().is_finite() && done[3].unwrap().is_finite());
}
