//! The GPU backend: the CTC lattice in WGSL compute shaders, run through wgpu on any Vulkan,
//! Metal, DX12 or OpenGL ES 3.1 device.
//!
//! Same validated [`Problem`] in, same [`CtcOutput`] out as [`crate::cpu::compute`]. The
//! design (`docs/design.md#gpu`):
//!
//! - The instance, adapter, device and pipelines are created once, on the first call
//!   (`context.rs`), and reused; so are the buffers while they are large enough (`run.rs`).
//! - One workgroup per sample loops over time, meeting at one workgroup reduction per frame;
//!   each invocation owns a strided share of the states, so any target length works
//!   (`lattice.wgsl`). Forward, backward and gradient run in one command submission with no
//!   host round trip between them; there are no per-frame dispatches.
//! - Numerics: the recursion runs in the input's type (float32, or float64 on adapters with
//!   `SHADER_F64`), with each alpha row normalised by its maximum and the maxima summed on the
//!   host in float64; the occupancy of a frame is a softmax over states, independent of every
//!   normaliser; `ln(1 + x)` is computed without cancellation. In float32 every stored log
//!   value is a pair (integer part, remainder) and every shift an integer, so rounding is
//!   relative to the remainder, not to the value's distance from the row maximum (hundreds
//!   of nats where a long input's posterior lies): losses agree with float64 to ~5e-8
//!   relative and gradients to ~1e-6 at T = 5000, S = 1000, random or peaked inputs
//!   (`docs/design.md#gpu-numerics`). The CPU backend gets ~3e-7 there with float32
//!   mantissas and an int32 exponent per state (`docs/design.md#cpu-numerics`).
//! - Deterministic: no atomics; each workgroup writes only its own sample's gradient rows, and
//!   every reduction has a fixed order.
//! - Batches larger than one storage binding (128 MiB on lavapipe) are split into chunks
//!   (`plan.rs`); a sample whose alpha table alone is too large keeps every k-th row and
//!   recomputes the rest.
//! - The time loop is split into spans of frames, one dispatch each, so that no invocation
//!   runs more loop iterations than llvmpipe allows (it silently ends a shader's loops after
//!   65535 iterations together); a cut detected anyway reruns the chunk with shorter spans
//!   (`run.rs`, `docs/design.md#gpu-spans`).
//!
//! Environment: `WGPU_BACKEND` (`vulkan`, `metal`, `dx12`, `gl`) restricts the backends,
//! `WGPU_ADAPTER_NAME` picks an adapter by part of its name, `WGPU_POWER_PREF=low` prefers an
//! integrated GPU. Tuning and testing knobs: `FASTCTC_GPU_WORKGROUP_SIZE` (32, 64, 128, 256),
//! `FASTCTC_GPU_CHUNK_BYTES` (the largest buffer a chunk may use) and
//! `FASTCTC_GPU_SPAN_FRAMES` (frames per dispatch span, in place of the estimate; a cut
//! detected still halves it).

mod align;
mod cache;
mod context;
mod contract;
mod pack;
mod plan;
mod profile;
mod run;
mod shader;

pub use align::align;
pub use context::GpuInfo;
pub use profile::Timings;

use crate::error::CtcError;
use crate::gradient::{self, RowScale};
use crate::options::Job;
use crate::output::CtcOutput;
use crate::problem::Problem;
use crate::real::Real;

/// A float type the GPU kernels take: `f32` everywhere, `f64` where the adapter has
/// `SHADER_F64`.
pub trait GpuFloat: Real + bytemuck::Pod {
    /// Whether this is `f64`.
    const F64: bool;
}

impl GpuFloat for f32 {
    const F64: bool = false;
}

impl GpuFloat for f64 {
    const F64: bool = true;
}

/// Computes `job` (the loss, the loss and gradient, or posteriors) of a validated batch on
/// the GPU; with `timings`, each phase is submitted, waited for and timed on its own (for
/// benchmarks: slower). Alignment has its own entry point, [`align`].
///
/// Errors: [`CtcError::GpuUnavailable`] when no adapter can be opened,
/// [`CtcError::GpuUnsupportedDtype`] for float64 on an adapter without 64-bit float shaders,
/// [`CtcError::Gpu`] when the device fails or one sample's input exceeds a storage binding.
pub fn compute<F: GpuFloat>(
    problem: &Problem<'_, F>,
    job: Job,
    timings: Option<&mut Timings>,
) -> Result<CtcOutput<F>, CtcError> {
    let posteriors;
    let (problem, row_scale) = match job {
        Job::Loss | Job::LossAndGrad => (problem, RowScale::Reduction),
        Job::Posteriors => {
            posteriors = gradient::posteriors_problem(problem);
            (&posteriors, RowScale::Posteriors)
        }
        Job::Align => {
            return Err(CtcError::Internal {
                message: "an alignment was sent to the GPU loss kernels (use gpu::align)"
                    .to_owned(),
            });
        }
    };
    let ctx = context::get()?;
    let kernels = ctx.kernels(F::F64)?;
    let call = run::Call {
        ctx,
        kernels,
        problem,
        with_grad: job != Job::Loss,
        row_scale,
    };
    scoped(ctx, || run::run(&call, timings))
}

/// The adapter the GPU backend runs on, opening it if needed.
pub fn info() -> Result<GpuInfo, CtcError> {
    context::get().map(|ctx| ctx.info.clone())
}

/// Runs `work` inside wgpu error scopes, so that a validation error or an out-of-memory
/// condition becomes a [`CtcError::Gpu`] instead of a panic.
fn scoped<T>(
    ctx: &context::Context,
    work: impl FnOnce() -> Result<T, CtcError>,
) -> Result<T, CtcError> {
    let validation = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let memory = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let internal = ctx.device.push_error_scope(wgpu::ErrorFilter::Internal);
    let result = work();
    let errors = [internal, memory, validation]
        .into_iter()
        .filter_map(|scope| pollster::block_on(scope.pop()))
        .map(|error| match error {
            wgpu::Error::OutOfMemory { .. } => {
                "the GPU ran out of memory; pass a smaller batch or use device='cpu'".to_owned()
            }
            other => other.to_string(),
        })
        .collect::<Vec<_>>();
    if errors.is_empty() {
        result
    } else {
        Err(CtcError::Gpu {
            message: errors.join("; "),
        })
    }
}

#[cfg(test)]
mod tests;
