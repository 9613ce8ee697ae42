//! fastctc: the CTC (Connectionist Temporal Classification) loss and its gradient.
//!
//! A plain Rust library; the Python binding lives in `python.rs` behind the `python` feature.
//!
//! ```
//! use fastctc::{ctc, Options, Targets};
//! use ndarray::{arr1, arr2, Array3};
//!
//! // T=3 frames, N=1 sample, C=2 classes, uniform probabilities; target [1].
//! let log_probs = Array3::from_elem((3, 1, 2), 0.5f64.ln());
//! let targets = arr2(&[[1]]);
//! let out = ctc(
//!     log_probs.view(),
//!     Targets::Padded(targets.view()),
//!     arr1(&[3]).view(),
//!     arr1(&[1]).view(),
//!     0,
//!     Options::default(),
//!     true,
//! )
//! .unwrap();
//! // 6 of the 8 paths collapse to [1]: loss = -ln(6/8).
//! assert!((out.losses[0] + (0.75f64).ln()).abs() < 1e-12);
//! ```

pub mod buffers;
pub mod call;
pub mod cpu;
pub mod error;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod gradient;
pub mod memory;
pub mod openmp;
pub mod options;
pub mod output;
pub mod problem;
pub mod real;
pub mod threads;

#[cfg(feature = "python")]
mod python;

use ndarray::{ArrayView1, ArrayView3};

pub use call::{run, Batch, Float, Outcome};
pub use error::{CtcError, ErrorKind};
pub use options::{Device, GradWrt, InputKind, Job, Layout, Options, Reduction};
pub use output::CtcOutput;
pub use problem::{validate, Problem, Targets};
pub use real::Real;

/// Frees the memory fastctc keeps between calls: recycled gradient buffers and the CPU's
/// workspaces (forward tables); returns the bytes freed.
pub fn empty_cache() -> usize {
    buffers::release() + cpu::release_workspaces()
}

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Validates a batch and computes its loss (and gradient, with `with_grad`) on the CPU:
/// [`run`] for the common case.
pub fn ctc<'a, F: Float>(
    log_probs: ArrayView3<'a, F>,
    targets: Targets<'a>,
    input_lengths: ArrayView1<'a, i64>,
    target_lengths: ArrayView1<'a, i64>,
    blank: i64,
    options: Options,
    with_grad: bool,
) -> Result<CtcOutput<F>, CtcError> {
    let batch = Batch {
        log_probs,
        targets,
        input_lengths,
        target_lengths,
        blank,
    };
    let job = if with_grad {
        Job::LossAndGrad
    } else {
        Job::Loss
    };
    match run(batch, options, job, Device::Cpu)? {
        Outcome::Losses(output) => Ok(output),
        Outcome::Alignment(_) => unreachable!("a loss job returns losses"),
    }
}
