//! Extended-range probabilities: a value is a pair `(m, e)` meaning `m * 2^e`, with the
//! mantissa `m` within a few orders of magnitude of 1 (or 0) and the exponent `e` an integer
//! held in a float64. `normalise` brings a mantissa back to `[1, 2)`; the lattice does so
//! every few frames, which is all the bounds below need.
//!
//! Why: the lattice sums probabilities (`a + b + c`, then times an emission). In log space
//! each sum costs two `exp` and one `log`; plain float64 probabilities underflow (one row of
//! a long lattice spans thousands of nats). With one exponent per state, a sum costs a few
//! adds, multiplies and bit operations, never underflows, and keeps float64's relative
//! precision on every state: a term is dropped only when it is below `2^-1022` of the
//! largest term of its own sum, i.e. below rounding.
//!
//! Every function here is branch-free scalar code on `f64` bit patterns, so that the loops
//! calling them vectorise (AVX2, AVX-512, NEON alike). A zero value is `m = 0, e = -inf`:
//! it never wins the maximum of a sum, and `m = 0` makes its term vanish.

/// `1.5 * 2^52 + 1023`: adding it to an integer-valued double `d` (|d| < 2^51) leaves
/// `d + 1023` in the low mantissa bits.
const POW2_MAGIC: f64 = 6_755_399_441_055_744.0 + 1023.0;
/// `2^52`, as bits: OR-ing an integer below 2^52 into its mantissa gives `2^52 + integer`.
const TWO_52_BITS: u64 = 0x4330_0000_0000_0000;
const TWO_52: f64 = 4_503_599_627_370_496.0;

/// `max` that compiles to one instruction; returns `b` when either is NaN.
#[inline(always)]
pub fn fmax(a: f64, b: f64) -> f64 {
    if a > b {
        a
    } else {
        b
    }
}

/// `2^d` for an integer-valued `d` up to 1023; 0 for `d <= -1023`, `-inf` and NaN.
///
/// Callers scale a mantissa by it and add the result to a term whose factor is 1 (the sum's
/// largest), so what the cut drops is below rounding; a zero state (exponent `-inf`) or a
/// forbidden transition (exponent offset `-inf`) contributes exactly 0.
#[inline(always)]
pub fn pow2(d: f64) -> f64 {
    let d = fmax(d, -1023.0);
    // The 11 low bits of the mantissa hold d + 1023 in [0, 2046]; shifting them into the
    // exponent field drops everything else (a field of 0 with no mantissa bits is 0.0).
    f64::from_bits((d + POW2_MAGIC).to_bits() << 52)
}

/// Splits a finite `v >= 0` into `(m, k)` with `v = m * 2^k`: `m` in `[1, 2)` for normal
/// numbers, exact for subnormals (`k = -1023`, `m < 1`), and `(0, -1023)` for zero (callers
/// turn a zero's exponent into `-inf`).
#[inline(always)]
pub fn split(v: f64) -> (f64, f64) {
    let field = v.to_bits() >> 52;
    let k = f64::from_bits(field | TWO_52_BITS) - (TWO_52 + 1023.0);
    // 2^(1023 - field): exact, and a normal number for every finite v.
    let m = v * f64::from_bits((2046 - field) << 52);
    (m, k)
}

/// `m1 * 2^e1 + m2 * 2^e2` (mantissas within a few orders of 1, or zero), as a pair with
/// the exponent of the larger term.
#[inline(always)]
pub fn add2(m1: f64, e1: f64, m2: f64, e2: f64) -> (f64, f64) {
    let e = fmax(e1, e2);
    (m1 * pow2(e1 - e) + m2 * pow2(e2 - e), e)
}

/// Normalises `v * 2^e` (`v >= 0` finite) to a mantissa in `[1, 2)`, or `(0, -inf)`.
#[inline(always)]
pub fn normalise(v: f64, e: f64) -> (f64, f64) {
    let (m, k) = split(v);
    let e = if v == 0.0 { f64::NEG_INFINITY } else { e + k };
    (m, e)
}

/// `exp(x)` as `(p, n)` with `exp(x) = p * 2^n`, `p` in `[0.7, 1.42]`: the range reduction
/// and polynomial of an exp without the final scaling, so no `x` over- or underflows.
/// `x = -inf` gives `(0, -inf)`. `x` must not be NaN or `+inf` (callers check inputs);
/// within a few ulps for `x > -1400`.
#[inline(always)]
pub fn exp_parts<const DEGREE: usize>(x: f64) -> (f64, f64) {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;
    // n * LN2_HI is exact for |n| < 2^11 (x > -1400); beyond, the reduction's rounding
    // stays below 1e-11 relative for |x| < 1e5.
    use super::fastmath::{LN2_HI, LN2_LO};
    let finite = x > f64::NEG_INFINITY;
    let xc = if finite { x } else { 0.0 };
    let n = (xc * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = super::fastmath::exp_taylor::<DEGREE>(r);
    if finite {
        (p, n)
    } else {
        (0.0, f64::NEG_INFINITY)
    }
}

/// `ln(m * 2^e)` for a normalised pair (`-inf` for zero).
#[inline(always)]
pub fn ln(m: f64, e: f64) -> f64 {
    if m == 0.0 {
        f64::NEG_INFINITY
    } else {
        m.ln() + e * std::f64::consts::LN_2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pow2_is_exact_and_cut_to_zero() {
        for d in -1022..=1023 {
            assert_eq!(pow2(d as f64), 2f64.powi(d), "2^{d}");
        }
        assert_eq!(pow2(-1023.0), 0.0);
        assert_eq!(pow2(-5000.0), 0.0);
        assert_eq!(pow2(f64::NEG_INFINITY), 0.0);
        assert_eq!(pow2(f64::NAN), 0.0);
    }

    #[test]
    fn split_round_trips_normals_subnormals_and_zero() {
        for &v in &[
            1.0,
            1.5,
            3.0,
            0.75,
            1e-300,
            1e300,
            f64::MIN_POSITIVE,
            5e-324,
            1e-310,
        ] {
            let (m, k) = split(v);
            assert_eq!(m * 2f64.powi(k as i32), v, "{v}");
            if v >= f64::MIN_POSITIVE {
                assert!((1.0..2.0).contains(&m), "{v}: mantissa {m}");
            }
        }
        assert_eq!(split(0.0).0, 0.0);
        assert_eq!(normalise(0.0, 7.0), (0.0, f64::NEG_INFINITY));
    }

    #[test]
    fn add2_matches_log_space_and_ignores_zeros() {
        let (m, e) = add2(1.5, -3000.0, 1.25, -3001.0);
        let want = (1.5f64.ln() - 3000.0 * std::f64::consts::LN_2)
            .max(1.25f64.ln() - 3001.0 * std::f64::consts::LN_2);
        let got = ln(m, e);
        let exact = want + (1.0 + (-(1.5f64 / 0.625).ln()).exp()).ln();
        assert!((got - exact).abs() < 1e-12, "{got} vs {exact}");
        assert_eq!(add2(0.0, f64::NEG_INFINITY, 0.0, f64::NEG_INFINITY).0, 0.0);
        assert_eq!(add2(0.0, f64::NEG_INFINITY, 1.5, -9.0), (1.5, -9.0));
        // A term more than 2^1022 below the other is below rounding, not a wrong value.
        assert_eq!(add2(1.0, 0.0, 1.0, -5000.0), (1.0, 0.0));
        assert_eq!(add2(1.0, 0.0, 1.0, -1023.0), (1.0, 0.0));
    }

    #[test]
    fn exp_parts_matches_exp_over_a_huge_range() {
        let mut x = -1.0e5;
        while x < 700.0 {
            let (p, n) = exp_parts::<13>(x);
            let got = p.ln() + n * std::f64::consts::LN_2;
            assert!(
                (got - x).abs() <= 1e-15 * x.abs().max(1.0) * 4.0,
                "{x}: {got}"
            );
            x += 13.37;
        }
        assert_eq!(exp_parts::<13>(f64::NEG_INFINITY).0, 0.0);
        let (p, n) = exp_parts::<13>(-2.5);
        assert!((p * 2f64.powi(n as i32) - (-2.5f64).exp()).abs() < 1e-16);
    }
}
