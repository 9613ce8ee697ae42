//! Random batches for the kernel tests, and running them through the kernels the way
//! `cpu::compute_with_grad` does (per sample, or in groups with the per-sample kernel for
//! the lanes a group leaves).

use ndarray::{Array2, Array3, ArrayView2, Axis};

use super::super::dispatch::{
    group_log_likelihood_and_grad_at, group_log_likelihood_at, log_likelihood_and_grad_at,
    log_likelihood_at, SimdLevel,
};
use super::super::lockstep::{GroupWorkspace, LANES};
use super::super::{FastMath, GradSpec, SampleRef, Workspace};
use super::reference;
use crate::options::GradWrt;

/// xorshift64: deterministic inputs without a dependency.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d))
    }
    pub(super) fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `0..n` (0 for `n == 0`).
    pub(super) fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }
    /// Roughly standard normal (a sum of four uniforms).
    pub(super) fn normal(&mut self) -> f64 {
        ((0..4).map(|_| self.unit()).sum::<f64>() - 2.0) * 1.7
    }
}

/// Row-wise `log_softmax` in float64.
pub(super) fn log_softmax(x: &Array2<f64>) -> Array2<f64> {
    let mut out = x.clone();
    for mut row in out.rows_mut() {
        let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        if m == f64::NEG_INFINITY {
            continue;
        }
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        row.mapv_inplace(|v| v - lse);
    }
    out
}

/// `n` labels in `0..classes`, none the blank; with probability `repeat` a label repeats
/// its predecessor.
pub(super) fn random_labels(
    rng: &mut Rng,
    n: usize,
    classes: usize,
    blank: usize,
    repeat: f64,
) -> Vec<u32> {
    let mut labels: Vec<u32> = Vec::with_capacity(n);
    for _ in 0..n {
        let label = match labels.last() {
            Some(&last) if rng.unit() < repeat => last,
            _ => ((blank + 1 + rng.below(classes - 1)) % classes) as u32,
        };
        labels.push(label);
    }
    labels
}

/// A batch: `(T, N, C)` input (log-probabilities or logits) in float64, and each sample's
/// length, labels and gradient spec.
pub(super) struct Batch {
    pub(super) input: Array3<f64>,
    pub(super) input_lens: Vec<usize>,
    pub(super) labels: Vec<Vec<u32>>,
    pub(super) blank: usize,
    pub(super) logits: bool,
    /// Store the input class-major (class stride N), not row-contiguous.
    pub(super) class_strided: bool,
    pub(super) wrt: GradWrt,
    pub(super) zero_infinity: bool,
    pub(super) clear_rows: bool,
}

impl Batch {
    /// `n` samples of up to `max_frames` frames and `max_labels` labels: random lengths
    /// (some with no frames, some too short for their target), labels with repeats, some
    /// `-inf` input values, and random options.
    pub(super) fn random(rng: &mut Rng, n: usize, max_frames: usize, max_labels: usize) -> Batch {
        let t_max = 1 + rng.below(max_frames);
        let max_labels = rng.below(max_labels + 1);
        let classes = 2 + rng.below(9);
        let blank = rng.below(classes);
        let logits = rng.unit() < 0.4;
        let spread = 1.0 + 3.0 * rng.unit();
        let offset = if logits { 30.0 * rng.normal() } else { 0.0 };
        let mut input =
            Array3::from_shape_fn((t_max, n, classes), |_| offset + spread * rng.normal());
        if !logits {
            for mut sample in input.axis_iter_mut(Axis(1)) {
                let lp = log_softmax(&sample.to_owned());
                sample.assign(&lp);
            }
        }
        for v in input.iter_mut() {
            if rng.unit() < 0.03 {
                *v = f64::NEG_INFINITY;
            }
        }
        let mut input_lens = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..n {
            let len = match rng.below(12) {
                0 => 0,
                1 => (1 + rng.below(3)).min(t_max),
                _ => t_max - rng.below(t_max / 3 + 1),
            };
            let count = rng.below(max_labels + 1);
            labels.push(random_labels(rng, count, classes, blank, 0.25));
            input_lens.push(len);
        }
        Batch {
            input,
            input_lens,
            labels,
            blank,
            logits,
            class_strided: rng.unit() < 0.3,
            wrt: if rng.unit() < 0.5 {
                GradWrt::LogProbs
            } else {
                GradWrt::Logits
            },
            zero_infinity: rng.unit() < 0.5,
            clear_rows: rng.unit() < 0.5,
        }
    }

    /// The input in `F`, stored as `class_strided` says.
    pub(super) fn input_as<F: FastMath>(&self) -> Array3<F> {
        let (t, n, c) = self.input.dim();
        if self.class_strided {
            Array3::from_shape_fn((t, c, n), |(t, c, n)| F::from_f64(self.input[[t, n, c]]))
                .permuted_axes([0, 2, 1])
        } else {
            self.input.mapv(F::from_f64)
        }
    }

    pub(super) fn samples<'a, F>(&'a self, input: &'a Array3<F>) -> Vec<SampleRef<'a, F>> {
        (0..self.labels.len())
            .map(|n| SampleRef {
                log_probs: input.index_axis(Axis(1), n),
                input_len: self.input_lens[n],
                labels: &self.labels[n],
                blank: self.blank,
                logits: self.logits,
            })
            .collect()
    }

    pub(super) fn spec<F: FastMath>(&self, n: usize) -> GradSpec<F> {
        GradSpec {
            wrt: self.wrt,
            scale: F::from_f64(1.0 / (1.0 + n as f64 % 3.0)),
            zero_infinity: self.zero_infinity,
            clear_rows: self.clear_rows,
        }
    }

    /// What a gradient buffer holds on entry: zeros, or stale values the kernel must clear.
    pub(super) fn fresh_grad<F: FastMath>(&self) -> Array2<F> {
        let (t, _, c) = self.input.dim();
        let start = if self.clear_rows { F::NAN } else { F::ZERO };
        Array2::from_elem((t, c), start)
    }

    /// The reference's log-likelihood and gradient rows for sample `n` from the input as
    /// rounded to `F` (`0..input_len` rows; NaN or zero rows as the kernels write them).
    pub(super) fn expected<F: FastMath>(&self, input: &Array3<F>, n: usize) -> (f64, Array2<f64>) {
        let rows = input.index_axis(Axis(1), n).mapv(|v| v.to_f64());
        let rows = rows.slice(ndarray::s![..self.input_lens[n], ..]).to_owned();
        let lp = if self.logits {
            log_softmax(&rows)
        } else {
            rows
        };
        let (log_lik, gamma) = reference::ctc(lp.view(), &self.labels[n], self.blank);
        let scale = self.spec::<F>(n).scale.to_f64();
        let grad = if log_lik == f64::NEG_INFINITY {
            let fill = if self.zero_infinity { 0.0 } else { f64::NAN };
            Array2::from_elem(lp.dim(), fill)
        } else {
            match self.wrt {
                GradWrt::LogProbs => gamma.mapv(|g| -g * scale),
                GradWrt::Logits => (lp.mapv(f64::exp) - gamma) * scale,
            }
        };
        (log_lik, grad)
    }
}

/// Per-sample log-likelihoods, gradient rows (with `with_grad`) and how many samples a group
/// computed (0 for the per-sample kernel).
pub(super) struct Outputs<F> {
    pub(super) log_liks: Vec<f64>,
    pub(super) grads: Vec<Array2<F>>,
    pub(super) grouped: usize,
}

/// Runs `batch` at `level`: every sample through the per-sample kernel, or (`groups`) in
/// groups of `LANES` in batch order, the lanes a group leaves through the per-sample kernel.
pub(super) fn run<F: FastMath>(
    batch: &Batch,
    input: &Array3<F>,
    level: SimdLevel,
    groups: bool,
    with_grad: bool,
) -> Outputs<F> {
    let xs = batch.samples(input);
    let mut grads: Vec<Array2<F>> = (0..xs.len()).map(|_| batch.fresh_grad()).collect();
    let mut log_liks = vec![f64::NAN; xs.len()];
    let mut ws = Workspace::new();
    let mut one = |n: usize, grad: &mut Array2<F>| {
        if with_grad {
            let spec = batch.spec(n);
            log_likelihood_and_grad_at(level, &xs[n], &mut ws, grad.view_mut(), spec)
        } else {
            log_likelihood_at(level, &xs[n], &mut ws)
        }
    };
    let mut grouped = 0;
    if groups {
        let mut group_ws = GroupWorkspace::default();
        for start in (0..xs.len()).step_by(LANES) {
            let end = (start + LANES).min(xs.len());
            let done = if with_grad {
                let specs: Vec<GradSpec<F>> = (start..end).map(|n| batch.spec(n)).collect();
                let mut views: Vec<_> =
                    grads[start..end].iter_mut().map(|g| g.view_mut()).collect();
                group_log_likelihood_and_grad_at(
                    level,
                    &xs[start..end],
                    &mut group_ws,
                    &mut views,
                    &specs,
                )
            } else {
                group_log_likelihood_at(level, &xs[start..end], &mut group_ws)
            };
            for (n, log_lik) in (start..end).zip(done) {
                log_liks[n] = match log_lik {
                    Some(log_lik) => {
                        grouped += 1;
                        log_lik
                    }
                    None => one(n, &mut grads[n]),
                };
            }
        }
    } else {
        for (n, grad) in grads.iter_mut().enumerate() {
            log_liks[n] = one(n, grad);
        }
    }
    Outputs {
        log_liks,
        grads,
        grouped,
    }
}

/// Asserts `got` within `atol + rtol * |want|` of `want`, NaN matching NaN and infinities
/// matching exactly.
pub(super) fn assert_close(got: f64, want: f64, rtol: f64, atol: f64, what: &dyn Fn() -> String) {
    let ok = if want.is_nan() || !want.is_finite() {
        got.is_nan() && want.is_nan() || got == want
    } else {
        (got - want).abs() <= atol + rtol * want.abs()
    };
    assert!(ok, "{}: got {got}, want {want}", what());
}

/// Asserts the gradient rows `0..input_len` of `got` close to `want`, and the rows past the
/// input length untouched (still `start`).
pub(super) fn assert_rows_close<F: FastMath>(
    got: ArrayView2<'_, F>,
    want: ArrayView2<'_, f64>,
    start: F,
    (rtol, atol): (f64, f64),
    what: &dyn Fn() -> String,
) {
    for ((t, c), &g) in got.indexed_iter() {
        let g = g.to_f64();
        if t < want.nrows() {
            assert_close(g, want[[t, c]], rtol, atol, &|| {
                format!("{} at [{t}, {c}]", what())
            });
        } else {
            assert!(
                g.to_bits() == start.to_f64().to_bits(),
                "{}: row {t} past the input length was written ({g})",
                what()
            );
        }
    }
}
