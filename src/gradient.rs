//! The gradient's rules, written once for every backend (`docs/design.md#gradient`, "The gradient
//! contract"): the factor each sample's rows are scaled by, what the rows of a sample
//! without a finite loss hold, and the buffer the gradient is written into.

use ndarray::{Array3, ArrayViewMut3};

use crate::buffers;
use crate::error::CtcError;
use crate::memory;
use crate::options::{GradWrt, Layout, Reduction};
use crate::problem::Problem;
use crate::real::Real;

/// What each sample's gradient rows are multiplied by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowScale {
    /// The reduction's factor: 1 for `"none"` and `"sum"`, `1 / (N * max(S_n, 1))` for
    /// `"mean"`.
    Reduction,
    /// -1: the log_probs gradient of one sample is `-gamma`, so this factor turns it into the
    /// posterior occupancy `gamma` itself.
    Posteriors,
}

impl RowScale {
    /// The factor of sample `n`'s rows.
    pub fn of<F>(self, problem: &Problem<'_, F>, n: usize) -> f64 {
        match (self, problem.options.reduction) {
            (RowScale::Posteriors, _) => -1.0,
            (RowScale::Reduction, Reduction::None | Reduction::Sum) => 1.0,
            (RowScale::Reduction, Reduction::Mean) => {
                let batch = problem.samples.len() as f64;
                1.0 / (batch * problem.samples[n].target_len().max(1) as f64)
            }
        }
    }
}

/// The problem a posteriors call computes: gamma is the log_probs gradient scaled by -1
/// ([`RowScale::Posteriors`]), whatever convention the caller's options name.
pub fn posteriors_problem<'a, F: Clone>(problem: &Problem<'a, F>) -> Problem<'a, F> {
    let mut problem = problem.clone();
    problem.options.grad_wrt = GradWrt::LogProbs;
    problem
}

/// What every valid row of a sample with log-likelihood `log_lik` holds when it is not
/// finite: 0 when no alignment exists (`-inf`) and `zero_infinity` is set, else NaN (a NaN
/// loss stays NaN either way). `None` for a finite log-likelihood: the kernel writes the rows.
pub fn unreachable_fill<F: Real>(log_lik: f64, zero_infinity: bool) -> Option<F> {
    if log_lik.is_finite() {
        None
    } else if log_lik == f64::NEG_INFINITY && zero_infinity {
        Some(F::ZERO)
    } else {
        Some(F::NAN)
    }
}

/// A gradient being written: the caller's layout in memory, a `(T, N, C)` view for the
/// kernels.
pub struct Gradient<F> {
    array: Array3<F>,
    layout: Layout,
    /// The memory is a recycled buffer holding stale values (see `crate::buffers`): every
    /// row must be written whole, frames past an input length included.
    pub stale: bool,
}

impl<F: Real> Gradient<F> {
    /// A gradient for `problem`: a recycled buffer of about this size when one was handed
    /// back, else zeroed memory (calloc: pages never written, such as frames past an input
    /// length, cost nothing).
    pub fn allocate(problem: &Problem<'_, F>) -> Result<Self, CtcError> {
        let (t_max, batch, classes) = problem.dims();
        let len = t_max * batch * classes;
        let (buffer, stale) = match buffers::take::<F>(len) {
            Some(buffer) => (buffer, true),
            None => {
                let zeros = memory::zeroed_vec("the gradient", len)?;
                advise_huge_pages(&zeros);
                (zeros, false)
            }
        };
        let layout = problem.options.layout;
        let shape = match layout {
            Layout::Tnc => (t_max, batch, classes),
            Layout::Ntc => (batch, t_max, classes),
        };
        let array = Array3::from_shape_vec(shape, buffer)
            .expect("the buffer has exactly t_max * batch * classes elements");
        Ok(Gradient {
            array,
            layout,
            stale,
        })
    }

    /// The `(T, N, C)` view the kernels write through: for batch-major output, a
    /// transposition of `(N, T, C)` memory.
    pub fn tnc_mut(&mut self) -> ArrayViewMut3<'_, F> {
        let mut view = self.array.view_mut();
        if self.layout == Layout::Ntc {
            view.swap_axes(0, 1);
        }
        view
    }

    /// The finished gradient, in the caller's layout.
    pub fn into_array(self) -> Array3<F> {
        self.array
    }
}

/// Asks Linux to back a large fresh buffer with 2 MiB pages: the gradient of a large
/// vocabulary is tens of MiB of zeroed memory, and faulting it in 4 KiB at a time costs more
/// than the writes themselves. Purely advisory: any failure is ignored.
fn advise_huge_pages<T>(buffer: &[T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = buffer.as_ptr() as usize;
        let end = start + std::mem::size_of_val(buffer);
        let first = start.next_multiple_of(HUGE);
        let last = end / HUGE * HUGE;
        if last > first {
            // SAFETY: madvise only advises the kernel about pages of our own live allocation
            // ([first, last) lies inside the buffer); it does not change their contents.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = buffer;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_rows_are_nan_unless_zero_infinity_and_no_path() {
        assert_eq!(unreachable_fill::<f32>(-3.0, false), None);
        assert_eq!(unreachable_fill::<f32>(f64::NEG_INFINITY, true), Some(0.0));
        assert!(unreachable_fill::<f32>(f64::NEG_INFINITY, false)
            .unwrap()
            .is_nan());
        assert!(unreachable_fill::<f64>(f64::NAN, true).unwrap().is_nan());
    }
}
