//! What every backend returns.

use ndarray::{Array2, Array3};

use crate::options::Reduction;
use crate::problem::Problem;

/// Losses and (optionally) the gradient of one call.
#[derive(Debug, Clone)]
pub struct CtcOutput<F> {
    /// Per-sample losses in float64, after `zero_infinity`.
    pub losses: Vec<f64>,
    /// The reduced loss (`None` reduction: unused, `NaN`).
    pub reduced: f64,
    /// The reduction this output was made with.
    pub reduction: Reduction,
    /// `(T, N, C)`, C-contiguous, zero on frames past each input length.
    pub grad: Option<Array3<F>>,
}

impl<F> CtcOutput<F> {
    /// Applies `zero_infinity` and the reduction to raw per-sample losses.
    pub fn new<G>(problem: &Problem<'_, G>, mut losses: Vec<f64>, grad: Option<Array3<F>>) -> Self {
        if problem.options.zero_infinity {
            for loss in &mut losses {
                if *loss == f64::INFINITY {
                    *loss = 0.0;
                }
            }
        }
        let reduction = problem.options.reduction;
        let reduced = match reduction {
            Reduction::None => f64::NAN,
            Reduction::Sum => losses.iter().sum(),
            Reduction::Mean => {
                let total: f64 = losses
                    .iter()
                    .zip(&problem.samples)
                    .map(|(loss, sample)| loss / sample.target_len().max(1) as f64)
                    .sum();
                total / losses.len() as f64
            }
        };
        CtcOutput {
            losses,
            reduced,
            reduction,
            grad,
        }
    }

    /// The loss as the caller asked for it: per-sample values for `"none"`, else one value.
    pub fn loss_values(&self) -> Vec<f64> {
        match self.reduction {
            Reduction::None => self.losses.clone(),
            Reduction::Sum | Reduction::Mean => vec![self.reduced],
        }
    }
}

/// The best path of every sample of a batch (forced alignment).
#[derive(Debug, Clone)]
pub struct AlignmentOutput<F> {
    /// `(N, T)`: the class emitted at each frame on the best path (the blank included), -1
    /// past the input length or when the sample has no finite path.
    pub labels: Array2<i64>,
    /// `(N, T)`: the log-probability of that frame's emission, NaN where `labels` is -1.
    pub scores: Array2<F>,
    /// `(N, S, 2)`: each target token's frames `[start, end)` on the best path, -1 past the
    /// target length or when the sample has no finite path. `S` is the longest target.
    pub spans: Array3<i64>,
    /// `(N,)`: the best path's total log-probability; `-inf` when no alignment exists, NaN
    /// when a NaN log-probability was read.
    pub path_scores: Vec<f64>,
}

impl<F: crate::real::Real> AlignmentOutput<F> {
    /// Outputs filled with their "no path" values.
    pub fn empty(batch: usize, t_max: usize, max_target: usize) -> Self {
        AlignmentOutput {
            labels: Array2::from_elem((batch, t_max), -1),
            scores: Array2::from_elem((batch, t_max), F::NAN),
            spans: Array3::from_elem((batch, max_target, 2), -1),
            path_scores: vec![f64::NEG_INFINITY; batch],
        }
    }
}
