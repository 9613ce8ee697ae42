//! exp written so that LLVM vectorises the loops that call it.
//!
//! The library `exp` is a function call, which stops auto-vectorisation. Here it is a
//! branch-free range reduction plus a polynomial, so a loop over a lattice row compiles to
//! AVX2/AVX-512 code inside a `#[target_feature]` function (see `dispatch.rs`). The lattice
//! (see `lattice.rs`) takes its emissions from the range reduction and polynomial without the
//! final scaling (`scaled.rs`); the float32 version also serves the dense `exp(log_probs)`
//! pass of the logits gradient. The unit tests bound its error
//! against the standard library.

// Polynomial coefficients are written as published, digits beyond the type's precision
// included; the compiler rounds them to the nearest representable value.
#![allow(clippy::excessive_precision)]

/// Whether `F` is `f32`, for the hand-written float32 paths (`avx512.rs`, `avx2.rs`) that
/// reinterpret `F` slices as `f32` ones: decided by type identity, so that no other
/// implementation of these public traits can reach them (the compiler folds it to a
/// constant).
#[inline(always)]
pub(super) fn is_f32<F: 'static>() -> bool {
    std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>()
}

/// A float the lattice kernels can run in, with the exp they should use.
pub trait FastMath: crate::real::Real {
    /// `exp(x)`: 0 for `-inf`, `inf` on overflow, NaN for NaN.
    fn fast_exp(self) -> Self;
    /// `exp` used inside the float64 lattice recursion for inputs of this type: full
    /// precision for float64 inputs; for float32 inputs a shorter polynomial (relative error
    /// below 1e-9, far under what float32 inputs can resolve) that costs half as much.
    fn lattice_exp(x: f64) -> f64;
    /// `exp(x)` as an extended-range pair (see `scaled::exp_parts`), with the same precision
    /// policy as `lattice_exp`.
    fn lattice_exp_parts(x: f64) -> (f64, f64);
    /// Whether the lattice runs in `Narrow` lanes (float32 mantissas) for this input type,
    /// when the input fits their budget.
    const NARROW: bool;
    /// `max` that compiles to one instruction (returns `b` when either is NaN).
    #[inline(always)]
    fn fmax(self, b: Self) -> Self {
        if self > b {
            self
        } else {
            b
        }
    }
    /// IEEE `maxNum` (the standard library's `max`: a NaN operand is ignored); unlike
    /// `fmax`, LLVM keeps it a plain vector max instead of a select.
    fn max_num(self, b: Self) -> Self;
    /// `min` that compiles to one instruction.
    #[inline(always)]
    fn fmin(self, b: Self) -> Self {
        if self < b {
            self
        } else {
            b
        }
    }
}

impl FastMath for f64 {
    const NARROW: bool = false;
    #[inline(always)]
    fn max_num(self, b: Self) -> Self {
        self.max(b)
    }
    #[inline(always)]
    fn fast_exp(self) -> Self {
        exp_f64(self)
    }
    #[inline(always)]
    fn lattice_exp(x: f64) -> f64 {
        exp_f64(x)
    }
    #[inline(always)]
    fn lattice_exp_parts(x: f64) -> (f64, f64) {
        super::scaled::exp_parts::<13>(x)
    }
}

impl FastMath for f32 {
    const NARROW: bool = true;
    #[inline(always)]
    fn max_num(self, b: Self) -> Self {
        self.max(b)
    }
    #[inline(always)]
    fn fast_exp(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn lattice_exp(x: f64) -> f64 {
        exp_f64_degree::<8>(x)
    }
    #[inline(always)]
    fn lattice_exp_parts(x: f64) -> (f64, f64) {
        super::scaled::exp_parts::<8>(x)
    }
}

/// 1.5 * 2^52: adding it rounds a double to an integer held in the low mantissa bits.
const ROUND_MAGIC_F64: f64 = 6_755_399_441_055_744.0;
const EXP_LO_F64: f64 = -708.0;
const EXP_HI_F64: f64 = 709.0;

/// `exp(x)` in float64, within a few ulps, branch-free: `x = n ln 2 + r` with
/// `|r| <= ln(2)/2`, then the Taylor series of `exp(r)` to degree 13 (truncation error below
/// 2e-16 relative on that interval).
#[inline(always)]
pub fn exp_f64(x: f64) -> f64 {
    exp_f64_degree::<13>(x)
}

/// `1/k!` for `k = 0..=13`.
const INV_FACTORIAL: [f64; 14] = [
    1.0,
    1.0,
    0.5,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5_040.0,
    1.0 / 40_320.0,
    1.0 / 362_880.0,
    1.0 / 3_628_800.0,
    1.0 / 39_916_800.0,
    1.0 / 479_001_600.0,
    1.0 / 6_227_020_800.0,
];

/// `exp(x)` with the Taylor polynomial of `exp(r)` cut at `DEGREE` (at most 13); the
/// relative error is about `0.35^(DEGREE+1) / (DEGREE+1)!` (2e-10 at degree 8).
#[inline(always)]
pub fn exp_f64_degree<const DEGREE: usize>(x: f64) -> f64 {
    let xc = if x < EXP_LO_F64 { EXP_LO_F64 } else { x };
    let xc = if xc > EXP_HI_F64 { EXP_HI_F64 } else { xc };
    let (p, _, n_int) = exp_reduced_f64::<DEGREE>(xc);
    let scale = f64::from_bits(((n_int + 1023) as u64) << 52);
    let out = p * scale;
    let out = if x < EXP_LO_F64 { 0.0 } else { out };
    let out = if x > EXP_HI_F64 { f64::INFINITY } else { out };
    if x.is_nan() {
        x
    } else {
        out
    }
}

/// `exp(x) = p * 2^n` for finite `x` (`|x| < 2^50`): the range reduction `x = n ln 2 + r`,
/// `|r| <= ln(2)/2`, and the Taylor polynomial of `exp(r)` to degree `DEGREE`, without the
/// final scaling. Returns `(p, n, n as an integer)`; `p` is in `[0.7, 1.42]`.
/// `n * LN2_HI` is exact for `|n| < 2^11` (|x| < 1400); beyond, the reduction's rounding
/// stays below 1e-11 relative for `|x| < 1e5`.
#[inline(always)]
pub fn exp_reduced_f64<const DEGREE: usize>(x: f64) -> (f64, f64, i64) {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    const LN2_HI: f64 = 6.931_471_803_691_238_2e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let shifted = x * LOG2E + ROUND_MAGIC_F64;
    let n = shifted - ROUND_MAGIC_F64;
    let n_int = (shifted.to_bits() as i64).wrapping_sub(ROUND_MAGIC_F64.to_bits() as i64);
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = INV_FACTORIAL[DEGREE];
    for k in (0..DEGREE).rev() {
        p = p * r + INV_FACTORIAL[k];
    }
    (p, n, n_int)
}

/// 1.5 * 2^23: adding it rounds a float to an integer held in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
const EXP_LO: f32 = -87.0;
const EXP_HI: f32 = 88.3;

/// `exp(x)` in float32, about 1 ulp, branch-free.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let xc = if x < EXP_LO { EXP_LO } else { x };
    let xc = if xc > EXP_HI { EXP_HI } else { xc };
    let (y, n_int) = exp_reduced_f32(xc);
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    let out = y * scale;
    let out = if x < EXP_LO { 0.0 } else { out };
    let out = if x > EXP_HI { f32::INFINITY } else { out };
    if x.is_nan() {
        x
    } else {
        out
    }
}

/// `exp(x) = p * 2^n` in float32 for finite `|x| < 2^20`, without the final scaling:
/// `(p, n)` with `p` in `[0.7, 1.42]`, about one ulp (beyond |x| = 2^14, where `n * LN2_HI`
/// stops being exact, about the input's own resolution).
#[inline(always)]
pub fn exp_reduced_f32(x: f32) -> (f32, i32) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n * LN2_HI is exact for |n| < 2^15.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let shifted = x * LOG2E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    let n_int = (shifted.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    (p * r2 + r + 1.0, n_int)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> i64 {
        (a.to_bits() as i64 - b.to_bits() as i64).abs()
    }

    #[test]
    fn exp_is_within_two_ulps_where_normal() {
        let mut worst = 0;
        let mut x = -86.0f32;
        while x < 88.0 {
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp_f32(x), want));
            x += 0.000_37;
        }
        assert!(worst <= 2, "worst exp error {worst} ulps");
    }

    #[test]
    fn f64_exp_is_within_a_few_ulps() {
        let mut worst = 0.0f64;
        let mut x = -700.0f64;
        while x < 700.0 {
            let want = x.exp();
            worst = worst.max(((exp_f64(x) - want) / want).abs());
            x += 0.013_7;
        }
        assert!(worst < 1e-15, "exp relative error {worst}");
        assert_eq!(exp_f64(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp_f64(1000.0), f64::INFINITY);
        assert!(exp_f64(f64::NAN).is_nan());
    }

    #[test]
    fn short_f64_exp_is_within_1e9() {
        let mut x = -700.0f64;
        while x < 0.0 {
            let want = x.exp();
            let err = ((exp_f64_degree::<8>(x) - want) / want).abs();
            assert!(err < 1e-9, "exp({x}): relative error {err}");
            x += 0.0371;
        }
    }

    #[test]
    fn exp_special_values() {
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-1000.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(1000.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }
}
