//! Runtime instruction-set dispatch: one portable binary, the widest vectors the CPU has.
//!
//! The kernels in `lattice.rs` and `lockstep.rs` are `#[inline(always)]` generic bodies.
//! Each entry point here (`dispatched!`) compiles them once more inside a `#[target_feature]`
//! function per level, and picks the best version the running CPU supports (detected once).
//! The kernels take the level they were compiled for as an argument, so that an entry point's
//! `_at` twin runs every level on one machine (the unit tests compare them).

use std::sync::OnceLock;

use ndarray::ArrayViewMut2;

use super::fastmath::FastMath;
use super::lattice::{self, Workspace};
use super::lockstep::{self, GroupWorkspace};
use super::sample::{GradSpec, SampleRef};

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

/// Whether this CPU can run code compiled for `level` (cached by the standard library's
/// feature detection: a load and a test).
#[inline(always)]
pub(super) fn supports(level: SimdLevel) -> bool {
    match level {
        SimdLevel::Baseline => true,
        SimdLevel::Avx2 => supports_avx2(),
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => std::arch::is_x86_feature_detected!("avx512f") && supports_avx2(),
        #[cfg(not(target_arch = "x86_64"))]
        SimdLevel::Avx512 => false,
    }
}

/// Every level this CPU supports, lowest first (tests compare them).
#[cfg(test)]
pub(super) fn supported_levels() -> Vec<SimdLevel> {
    [SimdLevel::Baseline, SimdLevel::Avx2, SimdLevel::Avx512]
        .into_iter()
        .filter(|&level| supports(level))
        .collect()
}

/// Defines `pub fn $name`, which runs the `#[inline(always)]` kernel `$kernel` compiled for
/// the level the kernels run at (`level()`), and `pub(super) fn $at`, the same at a given
/// level (which must be one the CPU supports). Each level is a copy of the kernel inside a
/// `#[target_feature]` function, the baseline the kernel as is; the kernel is told its level
/// (its frame reads pick their instructions by it), a constant in each copy.
macro_rules! dispatched {
    (
        $(#[$doc:meta])*
        fn $name:ident, $at:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $kernel:path;
    ) => {
        $(#[$doc])*
        pub fn $name<F: FastMath>($($arg: $ty),*) -> $ret {
            $at(level(), $($arg),*)
        }

        #[doc = concat!("`", stringify!($name), "` at `level`.")]
        ///
        /// # Panics
        /// When the CPU does not support `level`.
        #[inline(always)]
        pub(super) fn $at<F: FastMath>(level: SimdLevel, $($arg: $ty),*) -> $ret {
            assert!(supports(level), "this CPU does not support {}", level.name());
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2<F: FastMath>($($arg: $ty),*) -> $ret {
                    $kernel(SimdLevel::Avx2, $($arg),*)
                }
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512<F: FastMath>($($arg: $ty),*) -> $ret {
                    $kernel(SimdLevel::Avx512, $($arg),*)
                }
                match level {
                    // SAFETY: the CPU has these features (asserted above).
                    SimdLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    // SAFETY: as above.
                    SimdLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    SimdLevel::Baseline => {}
                }
            }
            $kernel(SimdLevel::Baseline, $($arg),*)
        }
    };
}

dispatched! {
    /// The log-likelihood of one sample (two rows of memory).
    fn log_likelihood, log_likelihood_at(x: &SampleRef<'_, F>, ws: &mut Workspace<F>) -> f64 = lattice::forward;
}

dispatched! {
    /// The log-likelihood of one sample and its gradient rows.
    fn log_likelihood_and_grad, log_likelihood_and_grad_at(
        x: &SampleRef<'_, F>,
        ws: &mut Workspace<F>,
        grad: ArrayViewMut2<'_, F>,
        spec: GradSpec<F>
    ) -> f64 = lattice::forward_backward;
}

dispatched! {
    /// The log-likelihoods of up to `lockstep::LANES` samples side by side; `None` for a
    /// sample the group leaves to `log_likelihood`.
    fn group_log_likelihood, group_log_likelihood_at(
        xs: &[SampleRef<'_, F>],
        ws: &mut GroupWorkspace<F>
    ) -> Vec<Option<f64>> = lockstep::forward;
}

dispatched! {
    /// The log-likelihoods and gradient rows of up to `lockstep::LANES` samples side by
    /// side; `None` for a sample the group leaves to `log_likelihood_and_grad` (its rows
    /// untouched).
    fn group_log_likelihood_and_grad, group_log_likelihood_and_grad_at(
        xs: &[SampleRef<'_, F>],
        ws: &mut GroupWorkspace<F>,
        grads: &mut [ArrayViewMut2<'_, F>],
        specs: &[GradSpec<F>]
    ) -> Vec<Option<f64>> = lockstep::forward_backward;
}
