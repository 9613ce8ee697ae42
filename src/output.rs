//! What every backend returns.

use ndarray::Array3;

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
