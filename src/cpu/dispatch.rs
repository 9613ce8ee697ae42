//! Runtime instruction-set dispatch: one portable binary, the widest vectors the CPU has.
//!
//! The kernels in `lattice.rs` are `#[inline(always)]` generic bodies. Each entry point here
//! compiles them once more inside a `#[target_feature]` function, and picks the best version
//! the running CPU supports (detected once).

use std::sync::OnceLock;

use ndarray::ArrayViewMut2;

use super::fastmath::FastMath;
use super::lattice::{self, GradSpec, SampleRef, Workspace};
use super::lockstep::{self, GroupWorkspace};

/// The instruction sets the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdLevel {
    /// Whatever the build target guarantees (SSE2 on x86_64, NEON on aarch64).
    Baseline,
    /// AVX2 and FMA (x86_64).
    Avx2,
    /// AVX-512 F (x86_64).
    Avx512,
}

impl SimdLevel {
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Baseline => "baseline",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }
}

fn detect() -> SimdLevel {
    if let Ok(forced) = std::env::var("FASTCTC_SIMD") {
        match forced.trim() {
            "baseline" => return SimdLevel::Baseline,
            "avx2" if supports_avx2() => return SimdLevel::Avx2,
            _ => {}
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && supports_avx2() {
            return SimdLevel::Avx512;
        }
        if supports_avx2() {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Baseline
}

fn supports_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The level the kernels run at (`FASTCTC_SIMD=baseline|avx2` lowers it, for testing).
pub fn level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    #[target_feature(enable = "avx2,fma")]
    pub fn forward_avx2<F: FastMath>(x: &SampleRef<'_, F>, ws: &mut Workspace<F>) -> f64 {
        lattice::forward(x, ws)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub fn forward_avx512<F: FastMath>(x: &SampleRef<'_, F>, ws: &mut Workspace<F>) -> f64 {
        lattice::forward(x, ws)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn group_forward_avx2<F: FastMath>(
        xs: &[SampleRef<'_, F>],
        ws: &mut GroupWorkspace<F>,
    ) -> Vec<Option<f64>> {
        lockstep::forward(xs, ws)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub fn group_forward_avx512<F: FastMath>(
        xs: &[SampleRef<'_, F>],
        ws: &mut GroupWorkspace<F>,
    ) -> Vec<Option<f64>> {
        lockstep::forward(xs, ws)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn group_forward_backward_avx2<F: FastMath>(
        xs: &[SampleRef<'_, F>],
        ws: &mut GroupWorkspace<F>,
        grads: &mut [ArrayViewMut2<'_, F>],
        specs: &[GradSpec<F>],
    ) -> Vec<Option<f64>> {
        lockstep::forward_backward(xs, ws, grads, specs)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub fn group_forward_backward_avx512<F: FastMath>(
        xs: &[SampleRef<'_, F>],
        ws: &mut GroupWorkspace<F>,
        grads: &mut [ArrayViewMut2<'_, F>],
        specs: &[GradSpec<F>],
    ) -> Vec<Option<f64>> {
        lockstep::forward_backward(xs, ws, grads, specs)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn forward_backward_avx2<F: FastMath>(
        x: &SampleRef<'_, F>,
        ws: &mut Workspace<F>,
        grad: ArrayViewMut2<'_, F>,
        spec: GradSpec<F>,
    ) -> f64 {
        lattice::forward_backward(x, ws, grad, spec)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub fn forward_backward_avx512<F: FastMath>(
        x: &SampleRef<'_, F>,
        ws: &mut Workspace<F>,
        grad: ArrayViewMut2<'_, F>,
        spec: GradSpec<F>,
    ) -> f64 {
        lattice::forward_backward(x, ws, grad, spec)
    }
}

/// The log-likelihood of one sample (two rows of memory).
pub fn log_likelihood<F: FastMath>(x: &SampleRef<'_, F>, ws: &mut Workspace<F>) -> f64 {
    match level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level()` returns Avx2/Avx512 only when the CPU reports those features.
        SimdLevel::Avx2 => unsafe { x86::forward_avx2(x, ws) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        SimdLevel::Avx512 => unsafe { x86::forward_avx512(x, ws) },
        _ => lattice::forward(x, ws),
    }
}

/// The log-likelihood of one sample and its gradient rows.
pub fn log_likelihood_and_grad<F: FastMath>(
    x: &SampleRef<'_, F>,
    ws: &mut Workspace<F>,
    grad: ArrayViewMut2<'_, F>,
    spec: GradSpec<F>,
) -> f64 {
    match level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level()` returns Avx2/Avx512 only when the CPU reports those features.
        SimdLevel::Avx2 => unsafe { x86::forward_backward_avx2(x, ws, grad, spec) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        SimdLevel::Avx512 => unsafe { x86::forward_backward_avx512(x, ws, grad, spec) },
        _ => lattice::forward_backward(x, ws, grad, spec),
    }
}

/// The log-likelihoods of up to `lockstep::LANES` samples side by side; `None` for a sample
/// the group leaves to `log_likelihood`.
pub fn group_log_likelihood<F: FastMath>(
    xs: &[SampleRef<'_, F>],
    ws: &mut GroupWorkspace<F>,
) -> Vec<Option<f64>> {
    match level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level()` returns Avx2/Avx512 only when the CPU reports those features.
        SimdLevel::Avx2 => unsafe { x86::group_forward_avx2(xs, ws) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        SimdLevel::Avx512 => unsafe { x86::group_forward_avx512(xs, ws) },
        _ => lockstep::forward(xs, ws),
    }
}

/// The log-likelihoods and gradient rows of up to `lockstep::LANES` samples side by side;
/// `None` for a sample the group leaves to `log_likelihood_and_grad` (its rows untouched).
pub fn group_log_likelihood_and_grad<F: FastMath>(
    xs: &[SampleRef<'_, F>],
    ws: &mut GroupWorkspace<F>,
    grads: &mut [ArrayViewMut2<'_, F>],
    specs: &[GradSpec<F>],
) -> Vec<Option<f64>> {
    match level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level()` returns Avx2/Avx512 only when the CPU reports those features.
        SimdLevel::Avx2 => unsafe { x86::group_forward_backward_avx2(xs, ws, grads, specs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        SimdLevel::Avx512 => unsafe { x86::group_forward_backward_avx512(xs, ws, grads, specs) },
        _ => lockstep::forward_backward(xs, ws, grads, specs),
    }
}
