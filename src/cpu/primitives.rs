//! The building blocks both lattice kernels share: the per-sample kernel (`lattice.rs`) runs
//! them over one sample's states, the group kernel (`lockstep.rs`) over `LANES` samples'
//! states interleaved, so every function here works on plain slices and knows nothing of
//! either layout.
//!
//! Rows of extended-range values (`Rows`, see `scaled.rs`), the workspace helpers that reuse
//! them, the band of useful states, the vectorisable sums, one step of the recursion
//! (`combine3`: `sum3` then `times`), the likelihood at the end of the lattice and the
//! occupancy `alpha * beta` of a state.

use super::scaled::{add2, ln, Extended};

/// Leading (forward) or trailing (backward) zero pads, so `s - 2` and `s + 2` need no checks.
pub(super) const PAD: usize = 2;

/// Mantissas and exponents side by side, in one lane type.
#[derive(Debug)]
pub(super) struct Rows<X: Extended> {
    pub(super) m: Vec<X::M>,
    pub(super) e: Vec<X::E>,
}

/// Bytes a vector holds on the heap (its capacity, not its length).
pub(super) fn heap_bytes<T>(vec: &Vec<T>) -> usize {
    vec.capacity() * std::mem::size_of::<T>()
}

impl<X: Extended> Rows<X> {
    /// Bytes held on the heap.
    pub(super) fn heap_bytes(&self) -> usize {
        heap_bytes(&self.m) + heap_bytes(&self.e)
    }
}

impl<X: Extended> Default for Rows<X> {
    fn default() -> Self {
        Self {
            m: Vec::new(),
            e: Vec::new(),
        }
    }
}

impl<X: Extended> Rows<X> {
    /// `len` zeros (`m = 0, e = E_NONE`).
    pub(super) fn reset(&mut self, len: usize) {
        reset(&mut self.m, len, X::M_ZERO);
        reset(&mut self.e, len, X::E_NONE);
    }
}

pub(super) fn reset<T: Copy>(buffer: &mut Vec<T>, len: usize, value: T) {
    buffer.clear();
    buffer.resize(len, value);
}

/// Makes `buffer` at least `len` long, keeping (not clearing) what it holds.
pub(super) fn ensure_len<T: Copy>(buffer: &mut Vec<T>, len: usize, value: T) {
    if buffer.len() < len {
        buffer.resize(len, value);
    }
}

/// States that are both reachable from the start at frame `t` and can still reach the end.
#[inline(always)]
pub(super) fn band(t: usize, input_len: usize, states: usize) -> (usize, usize) {
    let lo = states.saturating_sub(2 * (input_len - t));
    let hi = (2 * t + 1).min(states - 1);
    (lo, hi)
}

/// Accumulators of the vectorised sums (16 float32 or 8 float64 lanes per AVX-512 vector).
pub(super) const SUM_LANES: usize = 16;

/// The sum of `values`, in `SUM_LANES` interleaved partial sums (so that it vectorises).
#[inline(always)]
pub(super) fn sum_of<T: Copy + Default + std::ops::Add<Output = T>>(values: &[T]) -> T {
    let mut acc = [T::default(); SUM_LANES];
    let chunks = values.chunks_exact(SUM_LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = *a + v;
        }
    }
    let mut total = T::default();
    for &v in acc.iter().chain(rest) {
        total = total + v;
    }
    total
}

/// The sum of `values[0]`, `values[2]`, `values[4]`, ...
#[inline(always)]
pub(super) fn sum_of_even<T: Copy + Default + std::ops::Add<Output = T>>(values: &[T]) -> T {
    let mut acc = [T::default(); SUM_LANES];
    let chunks = values.chunks_exact(2 * SUM_LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, pair) in acc.iter_mut().zip(chunk.chunks_exact(2)) {
            *a = *a + pair[0];
        }
    }
    let mut total = T::default();
    for &v in acc.iter().chain(rest.iter().step_by(2)) {
        total = total + v;
    }
    total
}

/// Mutable row `a` and shared row `b` (`a != b`) of a row-major buffer.
#[inline(always)]
pub(super) fn two_rows<T>(buffer: &mut [T], a: usize, b: usize, width: usize) -> (&mut [T], &[T]) {
    if a > b {
        let (head, tail) = buffer.split_at_mut(a * width);
        (&mut tail[..width], &head[b * width..(b + 1) * width])
    } else {
        let (head, tail) = buffer.split_at_mut(b * width);
        (&mut head[a * width..(a + 1) * width], &tail[..width])
    }
}

/// Frames between two normalisations of the running rows. In between, a mantissa grows by
/// at most 4.3x per frame (a sum of three, times an emission mantissa below 1.42) and
/// shrinks by at most 0.7x (the sum's largest term counts fully): after 8 frames it lies in
/// `[0.05, 2e5]`, so a term cut below the lane type's range stays below rounding.
pub(super) const NORMALISE_EVERY: usize = 8;

/// `a + b + skip * c` in extended range; `skip` is the state's skip mask (factor, exponent
/// offset): a forbidden skip neither adds nor wins the maximum.
#[inline(always)]
fn sum3<X: Extended>(
    a: (X::M, X::E),
    b: (X::M, X::E),
    c: (X::M, X::E),
    skip: (X::M, X::E),
) -> (X::M, X::E) {
    let c_e = X::e_add(c.1, skip.1);
    let e = X::e_max(X::e_max(a.1, b.1), c_e);
    let m = a.0 * X::pow2(X::e_sub(a.1, e))
        + b.0 * X::pow2(X::e_sub(b.1, e))
        + c.0 * skip.0 * X::pow2(X::e_sub(c_e, e));
    (m, e)
}

/// `m * 2^e` times an emission `(em, ee)`, the exponent of a zero kept at or above `E_NONE`
/// (so that repeated zero emissions cannot wrap an integer exponent).
#[inline(always)]
pub(super) fn times<X: Extended>(m: X::M, e: X::E, em: X::M, ee: X::E) -> (X::M, X::E) {
    (m * em, X::e_max(X::e_add(e, ee), X::E_NONE))
}

/// Row slices of one lane type: mantissas and exponents.
pub(super) type Slices<'a, X> = (&'a [<X as Extended>::M], &'a [<X as Extended>::E]);

/// One step of the recursion over `out.len()` states: `out[i] = (a[i] + b[i] + skip[i] *
/// c[i]) * emit[i]` in extended range (no factor without `emit`). `a`, `b`, `c` are the three
/// predecessors (forward) or weighted successors (backward) of state `i`. With `renorm`,
/// mantissas come out in `[1, 2)`.
#[inline(always)]
pub(super) fn combine3<X: Extended>(
    [a, b, c]: [Slices<'_, X>; 3],
    skip: Slices<'_, X>,
    emit: Option<Slices<'_, X>>,
    renorm: bool,
    out_m: &mut [X::M],
    out_e: &mut [X::E],
) {
    let n = out_m.len();
    let (a_m, a_e, b_m, b_e) = (&a.0[..n], &a.1[..n], &b.0[..n], &b.1[..n]);
    let (c_m, c_e, skip_m, skip_e) = (&c.0[..n], &c.1[..n], &skip.0[..n], &skip.1[..n]);
    let out_e = &mut out_e[..n];
    // Four loops without branches inside, so that each vectorises.
    macro_rules! term {
        ($i:expr) => {
            sum3::<X>(
                (a_m[$i], a_e[$i]),
                (b_m[$i], b_e[$i]),
                (c_m[$i], c_e[$i]),
                (skip_m[$i], skip_e[$i]),
            )
        };
    }
    match (emit, renorm) {
        (Some((emit_m, emit_e)), false) => {
            let (emit_m, emit_e) = (&emit_m[..n], &emit_e[..n]);
            for i in 0..n {
                let (m, e) = term!(i);
                (out_m[i], out_e[i]) = times::<X>(m, e, emit_m[i], emit_e[i]);
            }
        }
        (Some((emit_m, emit_e)), true) => {
            let (emit_m, emit_e) = (&emit_m[..n], &emit_e[..n]);
            for i in 0..n {
                let (m, e) = term!(i);
                let (m, e) = times::<X>(m, e, emit_m[i], emit_e[i]);
                (out_m[i], out_e[i]) = X::normalise(m, e);
            }
        }
        (None, false) => {
            for i in 0..n {
                (out_m[i], out_e[i]) = term!(i);
            }
        }
        (None, true) => {
            for i in 0..n {
                let (m, e) = term!(i);
                (out_m[i], out_e[i]) = X::normalise(m, e);
            }
        }
    }
}

/// `ln(alpha[last] + alpha[last - 1])` (just `alpha[0]` for an empty target, `last = 0`):
/// the log-likelihood from the last frame's alphas, `at(s)` giving state `s`.
#[inline(always)]
pub(super) fn end_log_likelihood<X: Extended>(
    last: usize,
    at: impl Fn(usize) -> (X::M, X::E),
) -> f64 {
    let wide = |s: usize| {
        let (m, e) = at(s);
        (X::m_to_f64(m), X::e_to_f64(e))
    };
    let (m, e) = if last > 0 {
        let ((m1, e1), (m2, e2)) = (wide(last), wide(last - 1));
        add2(m1, e1, m2, e2)
    } else {
        wide(0)
    };
    ln(m, e)
}

/// The exponent shift that brings `alpha * beta` near 1: alpha * beta is at most the
/// likelihood, so shifted by its exponent every product is at most a few orders above 1
/// (mantissas between normalisations); those below the lane type's range are cut to 0.
#[inline(always)]
pub(super) fn occupancy_shift<X: Extended>(log_lik: f64) -> X::E {
    X::e_from_f64(-(log_lik * std::f64::consts::LOG2_E).round())
}

/// Whether `occupancy_shift(log_lik)` brings the largest `alpha * beta` near 1: `log_lik`
/// (a float64 from the final alphas' exponent) holds that exponent to within a unit up to
/// `2^50`. Beyond, only a sample every path of which runs through a log-probability of
/// about `-1e15` or below gets there (issue 15); the exponents are then not exact either,
/// and each frame is shifted by its own largest `alpha * beta` (`frame_shift`).
#[inline(always)]
pub(super) fn shift_is_exact(log_lik: f64) -> bool {
    log_lik.abs() * std::f64::consts::LOG2_E < (1u64 << 50) as f64
}

/// The occupancy shift that brings the largest `alpha * beta` of a frame (exponents
/// `alpha_e`, `beta_e`) to 1: see `shift_is_exact`. 0 for a frame of zeros.
pub(super) fn frame_shift<X: Extended>(alpha_e: &[X::E], beta_e: &[X::E]) -> X::E {
    let mut top = X::E_NONE;
    for (&a, &b) in alpha_e.iter().zip(beta_e) {
        // As `occupancy` adds them.
        let e = X::e_add(X::e_max(a, X::E_NONE), X::e_max(b, X::E_NONE));
        top = X::e_max(top, e);
    }
    if top > X::E_NONE {
        X::e_sub(X::E_ZERO, top)
    } else {
        X::E_ZERO
    }
}

/// `alpha * beta` of one state, shifted by `occupancy_shift`.
#[inline(always)]
pub(super) fn occupancy<X: Extended>(
    (a_m, a_e): (X::M, X::E),
    (b_m, b_e): (X::M, X::E),
    shift: X::E,
) -> X::M {
    // Zeros' exponents raised to E_NONE, so that the sum cannot wrap.
    let e_a = X::e_max(a_e, X::E_NONE);
    let e_b = X::e_max(b_e, X::E_NONE);
    a_m * b_m * X::pow2(X::e_add(X::e_add(e_a, e_b), shift))
}
