//! The per-sample frame read of `avx512.rs` for CPUs with AVX2 but not AVX-512 (most
//! desktop and laptop CPUs): the same gather-and-check pass in 256-bit vectors.
//!
//! Callers check that the CPU has AVX2 (`dispatch::level`) and that the input is float32;
//! the function inlines into the kernels' AVX2 copies.

use std::arch::x86_64::*;

/// float32 values per vector.
const WIDTH: usize = 8;
/// 64-bit indices per gather (four float32 values each).
const QUARTER: usize = 4;

/// `avx512::read_row_f32`: `out[j] = row[offsets[j]]`; returns whether no value is NaN or
/// `+inf`, and the largest magnitude of a value other than `-inf`.
///
/// # Safety
/// AVX2; `offsets` as long as `out`, each a class of the float32 row `row` times its
/// stride, so that each element read lies inside the array.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn read_row_f32(
    row: *const f32,
    offsets: &[i64],
    out: &mut [f32],
) -> (bool, f32) {
    let n = out.len().min(offsets.len());
    let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
    let zero = _mm256_setzero_ps();
    let abs_bits = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let (mut poison, mut span) = (zero, zero);
    let mut i = 0;
    while i < n {
        // Lanes `i + k < n` (all of them but at the end); masked-out lanes are neither loaded
        // nor gathered nor stored, so pointers past the slices' ends are never dereferenced.
        let left = (n - i).min(WIDTH) as i32;
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(left), lane);
        let mask_lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(mask));
        let mask_hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(mask));
        let at = offsets.as_ptr().wrapping_add(i);
        let offset_lo = _mm256_maskload_epi64(at, mask_lo);
        let offset_hi = _mm256_maskload_epi64(at.wrapping_add(QUARTER), mask_hi);
        let lo = _mm256_mask_i64gather_ps::<4>(
            _mm_setzero_ps(),
            row,
            offset_lo,
            _mm_castsi128_ps(_mm256_castsi256_si128(mask)),
        );
        let hi = _mm256_mask_i64gather_ps::<4>(
            _mm_setzero_ps(),
            row,
            offset_hi,
            _mm_castsi128_ps(_mm256_extracti128_si256::<1>(mask)),
        );
        let v = _mm256_set_m128(hi, lo);
        // 0 for -inf and for masked-out lanes; NaN kept (unordered "not equal").
        let keep = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_NEQ_UQ>(v, neg_inf),
            _mm256_castsi256_ps(mask),
        );
        let x = _mm256_and_ps(keep, v);
        poison = _mm256_add_ps(poison, _mm256_mul_ps(x, zero));
        span = _mm256_max_ps(span, _mm256_and_ps(x, abs_bits));
        _mm256_maskstore_ps(out.as_mut_ptr().wrapping_add(i), mask, v);
        i += WIDTH;
    }
    let clean = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(poison, zero)) == 0xff;
    let mut lanes = [0.0f32; WIDTH];
    _mm256_storeu_ps(lanes.as_mut_ptr(), span);
    (clean, lanes.iter().copied().fold(0.0, f32::max))
}
