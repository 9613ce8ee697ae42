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

// `fmax` comes from FastMath: one instruction, `b` when either is NaN.
use super::fastmath::FastMath;

/// `1.5 * 2^52 + 1023`: adding it to an integer-valued double `d` (|d| < 2^51) leaves
/// `d + 1023` in the low mantissa bits.
const POW2_MAGIC: f64 = 6_755_399_441_055_744.0 + 1023.0;
/// `2^52`, as bits: OR-ing an integer below 2^52 into its mantissa gives `2^52 + integer`.
const TWO_52_BITS: u64 = 0x4330_0000_0000_0000;
const TWO_52: f64 = 4_503_599_627_370_496.0;

/// `2^d` for an integer-valued `d` up to 1023; 0 for `d <= -1023`, `-inf` and NaN.
///
/// Callers scale a mantissa by it and add the result to a term whose factor is 1 (the sum's
/// largest), so what the cut drops is below rounding; a zero state (exponent `-inf`) or a
/// forbidden transition (exponent offset `-inf`) contributes exactly 0.
#[inline(always)]
pub fn pow2(d: f64) -> f64 {
    let d = d.fmax(-1023.0);
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
    let e = e1.fmax(e2);
    (m1 * pow2(e1 - e) + m2 * pow2(e2 - e), e)
}

/// Normalises `v * 2^e` (`v >= 0` finite) to a mantissa in `[1, 2)`, or `(0, -inf)`.
#[inline(always)]
pub fn normalise(v: f64, e: f64) -> (f64, f64) {
    let (m, k) = split(v);
    let e = if v == 0.0 { f64::NEG_INFINITY } else { e + k };
    (m, e)
}

/// Below this `x * log2(e)` the range reduction of `exp_reduced_f64` (a rounding by adding
/// `1.5 * 2^52`) no longer rounds: `exp_parts` takes `2^(x log2 e)` as it is instead.
const HUGE_LOG2: f64 = -2_251_799_813_685_248.0; // -2^51

/// `exp(x)` as `(p, n)` with `exp(x) = p * 2^n`, `p` in `[0.7, 1.42]`: the range reduction
/// and polynomial of an exp without the final scaling, so no `x` over- or underflows.
/// `x = -inf` gives `(0, -inf)`. `x` must not be NaN or `+inf` (callers check inputs);
/// within a few ulps for `x > -1400`, and within the input's own resolution beyond.
///
/// Beyond `2^51` in `x log2 e` (about `-1.6e15`, where the reduction stops rounding and its
/// polynomial would be evaluated far outside its interval, giving huge or infinite
/// mantissas and then NaN: issue 15) the result is `(1, x log2 e)`, an exponent that is an
/// integer or (up to `2^52`) within a half of one, which `pow2` rounds; below
/// `-f64::MAX * ln 2` (about `-1.2e308`), where `x log2 e` overflows, it is an exact zero,
/// the `-inf` it approximates.
#[inline(always)]
pub fn exp_parts<const DEGREE: usize>(x: f64) -> (f64, f64) {
    let y = x * std::f64::consts::LOG2_E;
    let finite = y > f64::NEG_INFINITY;
    // Also true for -inf: the reduction then runs on 0 and its result is dropped.
    let huge = y < HUGE_LOG2;
    let (p, n, _) = super::fastmath::exp_reduced_f64::<DEGREE>(if huge { 0.0 } else { x });
    let (p, n) = if huge { (1.0, y) } else { (p, n) };
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

/// The two lane types the lattice runs in: mantissa and exponent types with the operations
/// the recursion needs. The lattice code is written once, generic over this trait.
pub trait Extended: 'static {
    /// Mantissa.
    type M: Copy
        + Default
        + PartialOrd
        + std::ops::Add<Output = Self::M>
        + std::ops::Mul<Output = Self::M>
        + std::fmt::Debug
        + Send
        + Sync;
    /// Exponent (an integer, possibly held in a float).
    type E: Copy + Default + PartialOrd + std::fmt::Debug + Send + Sync;
    const M_ZERO: Self::M;
    const M_ONE: Self::M;
    const E_ZERO: Self::E;
    /// The exponent of a zero value: below every real exponent.
    const E_NONE: Self::E;
    /// How far the input may stray from 0, summed over frames (per frame, the largest
    /// `|log-prob|` among the classes read, times log2(e), plus 2): the exponents must hold
    /// every partial path.
    const INPUT_BUDGET: f64;
    /// The largest `|log-prob|` one emission may have (`emission_of_m`'s range).
    const MAX_SPAN: f64;
    /// What a frame whose largest `|log-prob|` is `span` uses of `INPUT_BUDGET`: all of it
    /// past `MAX_SPAN`.
    #[inline(always)]
    fn budget_cost(span: f64) -> f64 {
        if span <= Self::MAX_SPAN {
            span * std::f64::consts::LOG2_E + 2.0
        } else {
            f64::INFINITY
        }
    }
    fn e_add(a: Self::E, b: Self::E) -> Self::E;
    fn e_sub(a: Self::E, b: Self::E) -> Self::E;
    fn e_max(a: Self::E, b: Self::E) -> Self::E;
    /// `2^d` (0 at or below the cut, which is below the mantissa's rounding).
    fn pow2(d: Self::E) -> Self::M;
    /// Mantissa back to `[1, 2)`; a zero gets `E_NONE`.
    fn normalise(v: Self::M, e: Self::E) -> (Self::M, Self::E);
    fn m_to_f64(m: Self::M) -> f64;
    fn m_from_f64(m: f64) -> Self::M;
    /// `-inf` for a zero's exponent.
    fn e_to_f64(e: Self::E) -> f64;
    /// From an integer-valued float64 (`-inf` gives `E_NONE`).
    fn e_from_f64(e: f64) -> Self::E;
    /// `exp(x)` (`x` a log-probability: finite within the budget, or `-inf`) as a pair, with
    /// the precision policy of the input type `F`.
    #[inline(always)]
    fn emission<F: super::fastmath::FastMath>(x: f64) -> (Self::M, Self::E) {
        Self::emission_of_m::<F>(Self::m_from_f64(x))
    }
    /// `emission` of a log-probability already rounded to the mantissa type (so that a
    /// loop over float32 lanes stays in float32 vectors).
    fn emission_of_m<F: super::fastmath::FastMath>(x: Self::M) -> (Self::M, Self::E);
}

/// Float64 mantissas and exponents: any input, float64 precision.
#[derive(Debug, Default)]
pub struct Wide;

impl Extended for Wide {
    type M = f64;
    type E = f64;
    const M_ZERO: f64 = 0.0;
    const M_ONE: f64 = 1.0;
    const E_ZERO: f64 = 0.0;
    const E_NONE: f64 = f64::NEG_INFINITY;
    const INPUT_BUDGET: f64 = f64::INFINITY;
    const MAX_SPAN: f64 = f64::INFINITY;
    #[inline(always)]
    fn e_add(a: f64, b: f64) -> f64 {
        a + b
    }
    #[inline(always)]
    fn e_sub(a: f64, b: f64) -> f64 {
        a - b
    }
    #[inline(always)]
    fn e_max(a: f64, b: f64) -> f64 {
        a.fmax(b)
    }
    #[inline(always)]
    fn pow2(d: f64) -> f64 {
        pow2(d)
    }
    #[inline(always)]
    fn normalise(v: f64, e: f64) -> (f64, f64) {
        normalise(v, e)
    }
    #[inline(always)]
    fn m_to_f64(m: f64) -> f64 {
        m
    }
    #[inline(always)]
    fn m_from_f64(m: f64) -> f64 {
        m
    }
    #[inline(always)]
    fn e_to_f64(e: f64) -> f64 {
        e
    }
    #[inline(always)]
    fn e_from_f64(e: f64) -> f64 {
        e
    }
    #[inline(always)]
    fn emission_of_m<F: super::fastmath::FastMath>(x: f64) -> (f64, f64) {
        F::lattice_exp_parts(x)
    }
}

/// Float32 mantissas and int32 exponents: twice the lanes per vector. For float32 input
/// whose log-probabilities stay within `INPUT_BUDGET` (anything a model produces); other
/// samples run in `Wide`.
#[derive(Debug, Default)]
pub struct Narrow;

/// The exponent of a zero in `Narrow`: far below any real exponent (which the budget keeps
/// within +-2^26), and far from overflowing when real exponents are added to it.
const NARROW_NONE: i32 = -(1 << 29);

impl Extended for Narrow {
    type M = f32;
    type E = i32;
    const M_ZERO: f32 = 0.0;
    const M_ONE: f32 = 1.0;
    const E_ZERO: i32 = 0;
    const E_NONE: i32 = NARROW_NONE;
    // Real exponents then stay within +-2^26; sums of two, plus the likelihood's shift, within
    // +-2^28; a zero's exponent plus any of these never wraps.
    const INPUT_BUDGET: f64 = (1u64 << 26) as f64;
    // `exp_parts_f32`'s range (its rounding by adding 1.5 * 2^23 fails beyond 2^22 in
    // x log2 e, about 2.9e6: such a frame once came out with garbage exponents, issue 15).
    const MAX_SPAN: f64 = (1u64 << 20) as f64;
    #[inline(always)]
    fn e_add(a: i32, b: i32) -> i32 {
        a.wrapping_add(b)
    }
    #[inline(always)]
    fn e_sub(a: i32, b: i32) -> i32 {
        a.wrapping_sub(b)
    }
    #[inline(always)]
    fn e_max(a: i32, b: i32) -> i32 {
        a.max(b)
    }
    #[inline(always)]
    fn pow2(d: i32) -> f32 {
        // 2^-127 and below is 0 (an exponent field of 0 with no mantissa bits).
        let d = d.clamp(-127, 127);
        f32::from_bits(((d + 127) as u32) << 23)
    }
    #[inline(always)]
    fn normalise(v: f32, e: i32) -> (f32, i32) {
        // v >= 0 and far below 2^127: the exponent field is 0..=253.
        let field = (v.to_bits() >> 23) as i32;
        let m = v * f32::from_bits(((254 - field) as u32) << 23);
        let e = if v == 0.0 {
            NARROW_NONE
        } else {
            e.wrapping_add(field - 127)
        };
        (m, e)
    }
    #[inline(always)]
    fn m_to_f64(m: f32) -> f64 {
        m as f64
    }
    #[inline(always)]
    fn m_from_f64(m: f64) -> f32 {
        m as f32
    }
    #[inline(always)]
    fn e_to_f64(e: i32) -> f64 {
        if e <= NARROW_NONE / 2 {
            f64::NEG_INFINITY
        } else {
            e as f64
        }
    }
    #[inline(always)]
    fn e_from_f64(e: f64) -> i32 {
        if e == f64::NEG_INFINITY {
            NARROW_NONE
        } else {
            e as i32
        }
    }
    #[inline(always)]
    fn emission_of_m<F: super::fastmath::FastMath>(x: f32) -> (f32, i32) {
        exp_parts_f32(x)
    }
}

/// `exp(x)` as `(p, n)` with `exp(x) = p * 2^n`, `p` in `[0.7, 1.42]`, in float32 (about
/// one ulp, or the input's own resolution beyond |x| = 2^14); `x = -inf` gives
/// `(0, E_NONE)`. For `|x| < 2^20`.
#[inline(always)]
pub fn exp_parts_f32(x: f32) -> (f32, i32) {
    let finite = x > f32::NEG_INFINITY;
    let (p, n) = super::fastmath::exp_reduced_f32(if finite { x } else { 0.0 });
    if finite {
        (p, n)
    } else {
        (0.0, NARROW_NONE)
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

    #[test]
    fn narrow_matches_wide() {
        for d in -126..=127 {
            assert_eq!(Narrow::pow2(d) as f64, 2f64.powi(d), "2^{d}");
        }
        assert_eq!(Narrow::pow2(-127), 0.0);
        assert_eq!(Narrow::pow2(-1 << 28), 0.0);
        for &v in &[1.0f32, 1.5, 3.0, 0.75, 1e-30, 1e30, 7.0e5] {
            let (m, e) = Narrow::normalise(v, 5);
            assert!((1.0..2.0).contains(&m), "{v}: {m}");
            assert_eq!(m as f64 * 2f64.powi(e - 5), v as f64);
        }
        assert_eq!(Narrow::normalise(0.0, 5), (0.0, Narrow::E_NONE));
        let mut x = -1.0e5f32;
        while x < 80.0 {
            let (p, n) = exp_parts_f32(x);
            let got = (p as f64).ln() + n as f64 * std::f64::consts::LN_2;
            assert!(
                (got - x as f64).abs() <= 2.5e-7 + 1.2e-7 * (x as f64).abs(),
                "{x}: {got}"
            );
            x += 7.31;
        }
        assert_eq!(exp_parts_f32(f32::NEG_INFINITY), (0.0, Narrow::E_NONE));
    }
}
