//! The one call path every entry point takes (the Python functions, the GPU profile, Rust
//! users of the crate, the benchmarks): validate, check memory, run a backend, return its
//! outputs. A rule about calls belongs here, once, never in a binding.

use ndarray::{ArrayView1, ArrayView3};

use crate::cpu::{self, CpuFloat};
use crate::error::CtcError;
use crate::memory;
use crate::options::{Device, Job, Options};
use crate::output::{AlignmentOutput, CtcOutput};
use crate::problem::{validate, Problem, Targets};

/// A float type every backend takes: `f32` and `f64`.
#[cfg(feature = "gpu")]
pub trait Float: CpuFloat + crate::gpu::GpuFloat {}
/// A float type every backend takes: `f32` and `f64`.
#[cfg(not(feature = "gpu"))]
pub trait Float: CpuFloat {}

impl Float for f32 {}
impl Float for f64 {}

/// Why `device="gpu"` fails in a build without the GPU backend.
#[cfg_attr(feature = "gpu", allow(dead_code))]
pub(crate) const NO_GPU_BACKEND: &str =
    "this build of fastctc has no GPU backend (it was compiled without the cargo feature 'gpu')";

/// A call's data, as the caller holds it (nothing checked yet).
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a, F> {
    /// `(T, N, C)`, any strides.
    pub log_probs: ArrayView3<'a, F>,
    pub targets: Targets<'a>,
    pub input_lengths: ArrayView1<'a, i64>,
    pub target_lengths: ArrayView1<'a, i64>,
    /// In `[-C, C)`; a negative value counts from the end.
    pub blank: i64,
}

/// What a call returns.
#[derive(Debug, Clone)]
pub enum Outcome<F> {
    /// [`Job::Loss`] and [`Job::LossAndGrad`]: the loss and, for the latter, the gradient.
    /// [`Job::Posteriors`]: per-sample losses and `gamma` in place of the gradient.
    Losses(CtcOutput<F>),
    /// [`Job::Align`].
    Alignment(AlignmentOutput<F>),
}

/// Validates `batch` and runs `job` on `device`.
///
/// Errors: every [`CtcError`] the input can cause, before anything is computed;
/// [`CtcError::OutOfMemory`] when a buffer the job needs cannot be had; the GPU's errors.
pub fn run<F: Float>(
    batch: Batch<'_, F>,
    options: Options,
    job: Job,
    device: Device,
) -> Result<Outcome<F>, CtcError> {
    let problem = prepare(batch, options, job)?;
    if device == Device::Cpu {
        // Kept workspaces far larger than this call needs are freed (`cpu::workspaces`).
        cpu::trim_workspaces(memory::largest_table_bytes(&problem, job));
    }
    match (job, device) {
        (Job::Loss | Job::LossAndGrad, Device::Cpu) => {
            cpu::compute(&problem, job == Job::LossAndGrad).map(Outcome::Losses)
        }
        (Job::Posteriors, Device::Cpu) => cpu::posteriors(&problem).map(Outcome::Losses),
        (Job::Align, Device::Cpu) => Ok(Outcome::Alignment(cpu::align(&problem))),
        (Job::Align, Device::Gpu) => gpu_align(&problem).map(Outcome::Alignment),
        (_, Device::Gpu) => gpu_losses(&problem, job, None).map(Outcome::Losses),
    }
}

/// As [`run`] with `device="gpu"` and [`Job::Loss`] or [`Job::LossAndGrad`], with each phase
/// of the GPU call submitted, waited for and timed on its own (slower): for benchmarks.
#[cfg(feature = "gpu")]
pub fn run_gpu_profiled<F: Float>(
    batch: Batch<'_, F>,
    options: Options,
    with_grad: bool,
) -> Result<(CtcOutput<F>, crate::gpu::Timings), CtcError> {
    let job = if with_grad {
        Job::LossAndGrad
    } else {
        Job::Loss
    };
    let problem = prepare(batch, options, job)?;
    let mut timings = crate::gpu::Timings::default();
    let output = gpu_losses(&problem, job, Some(&mut timings))?;
    Ok((output, timings))
}

/// Validates `batch` exactly as [`run`] does, and computes nothing: returns the blank in
/// `[0, C)` and every sample's labels back to back. The torch adapter's compact route checks
/// a batch with it before it gathers the columns the samples read, so that bad input raises
/// what the dense route raises.
pub fn validate_only<F>(
    batch: Batch<'_, F>,
    options: Options,
) -> Result<(usize, Vec<u32>), CtcError> {
    let problem = validated(batch, options)?;
    Ok((problem.blank, problem.labels))
}

/// `batch` checked by [`validate`].
fn validated<'a, F>(batch: Batch<'a, F>, options: Options) -> Result<Problem<'a, F>, CtcError> {
    validate(
        batch.log_probs,
        batch.targets,
        batch.input_lengths,
        batch.target_lengths,
        batch.blank,
        options,
    )
}

/// Validation and the memory pre-check: everything a call checks before any backend runs.
fn prepare<'a, F>(
    batch: Batch<'a, F>,
    options: Options,
    job: Job,
) -> Result<Problem<'a, F>, CtcError> {
    // The loss kernels have no star token: its label would index past the input's classes.
    if options.star_score.is_some() && job != Job::Align {
        return Err(CtcError::StarScoreJob);
    }
    let problem = validated(batch, options)?;
    memory::check(&problem, job)?;
    Ok(problem)
}

#[cfg(feature = "gpu")]
fn gpu_losses<F: Float>(
    problem: &Problem<'_, F>,
    job: Job,
    timings: Option<&mut crate::gpu::Timings>,
) -> Result<CtcOutput<F>, CtcError> {
    crate::gpu::compute(problem, job, timings)
}

#[cfg(feature = "gpu")]
fn gpu_align<F: Float>(problem: &Problem<'_, F>) -> Result<AlignmentOutput<F>, CtcError> {
    crate::gpu::align(problem)
}

#[cfg(not(feature = "gpu"))]
fn gpu_align<F: Float>(_problem: &Problem<'_, F>) -> Result<AlignmentOutput<F>, CtcError> {
    Err(CtcError::GpuUnavailable {
        tried: "nothing".to_owned(),
        message: NO_GPU_BACKEND.to_owned(),
    })
}

#[cfg(not(feature = "gpu"))]
fn gpu_losses<F: Float>(
    _problem: &Problem<'_, F>,
    _job: Job,
    _timings: Option<&mut ()>,
) -> Result<CtcOutput<F>, CtcError> {
    Err(CtcError::GpuUnavailable {
        tried: "nothing".to_owned(),
        message: NO_GPU_BACKEND.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use ndarray::{arr1, arr2, Array3};

    use super::*;

    #[test]
    fn only_an_alignment_takes_a_star_token() {
        let lp = Array3::<f64>::from_elem((3, 1, 4), -1.0);
        let targets = arr2(&[[4i64]]);
        let (il, tl) = (arr1(&[3i64]), arr1(&[1i64]));
        let batch = Batch {
            log_probs: lp.view(),
            targets: Targets::Padded(targets.view()),
            input_lengths: il.view(),
            target_lengths: tl.view(),
            blank: 0,
        };
        let options = Options {
            star_score: Some(0.0),
            ..Options::default()
        };
        for job in [Job::Loss, Job::LossAndGrad, Job::Posteriors] {
            let err = run(batch, options, job, Device::Cpu).unwrap_err();
            assert_eq!(err, CtcError::StarScoreJob);
        }
        match run(batch, options, Job::Align, Device::Cpu).unwrap() {
            Outcome::Alignment(out) => {
                assert_eq!(out.labels.row(0).to_vec(), vec![4, 4, 4]);
                assert_eq!(out.path_scores[0], 0.0);
            }
            Outcome::Losses(_) => panic!("an alignment was asked for"),
        }
    }
}
