//! Hand-written AVX-512 pieces of the input reads, for float32 input.
//!
//! Everything else in the kernels is portable code the compiler vectorises. Reading a frame
//! is not: each label is a load from a different place of the row (a gather), and the
//! checks that follow (a NaN or `+inf` read, the exponent budget's largest magnitude) kept
//! their accumulators on the stack, a store and reload per vector. Here both are one pass
//! with the accumulators in registers.
//!
//! Callers check that the CPU has AVX-512 F (`dispatch::level`) and that the input is
//! float32; these functions are inlined into the kernels' AVX-512 copies.

use std::arch::x86_64::*;

use super::lockstep::LANES;

/// Lanes per 64-bit-index gather: eight float32 values.
const HALF: usize = 8;
const _: () = assert!(LANES == 2 * HALF);

/// A whole vector's mask.
const ALL: u16 = u16::MAX;

/// Two 8-value gathers as one vector: `base[lo[k]]` then `base[hi[k]]` (element indices),
/// lanes outside `mask` zero and not read.
///
/// # Safety
/// AVX-512 F; every index inside `mask` must address an element of the array `base`
/// points into.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn gather16(base: *const f32, lo: __m512i, hi: __m512i, mask: u16) -> __m512 {
    let zero = _mm256_setzero_ps();
    let lo = _mm512_mask_i64gather_ps::<4>(zero, mask as u8, lo, base.cast());
    let hi = _mm512_mask_i64gather_ps::<4>(zero, (mask >> HALF) as u8, hi, base.cast());
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(
        _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
        _mm256_castps_pd(hi),
    ))
}

/// The running checks of a read: `poison` turns NaN at a NaN or `+inf`, `span` keeps the
/// largest magnitude; `-inf` (an exact zero) counts as 0 for both, as do lanes outside
/// `mask`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn check(v: __m512, mask: u16, poison: &mut __m512, span: &mut __m512) {
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    let zero = _mm512_setzero_ps();
    // Unordered "not equal": NaN is kept.
    let x = _mm512_maskz_mov_ps(mask & _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(v, neg_inf), v);
    *poison = _mm512_add_ps(*poison, _mm512_mul_ps(x, zero));
    let abs = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MAX));
    *span = _mm512_max_ps(*span, _mm512_castsi512_ps(abs));
}

/// One frame of `LANES` samples side by side (see `group_reads::gather`):
/// `values[j * LANES + k]` is `rows[k][offsets[j * LANES + k]]` where slot `j` of lane `k`
/// is `present` and lane `k` is `reading`, else `-inf`. Returns each lane's `poison` (0, or
/// NaN after a NaN or `+inf` read) and `span` (largest magnitude other than `-inf`).
///
/// # Safety
/// AVX-512 F; every `rows[k]` a row of a float32 array and every offset a class of that
/// row times its stride, so that each element read lies inside the array.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn read_lanes_f32(
    rows: &[*const f32; LANES],
    offsets: &[isize],
    present: &[bool],
    reading: &[bool; LANES],
    values: &mut [f32],
) -> ([f32; LANES], [f32; LANES]) {
    let base = rows[0];
    let distances = row_distances(rows);
    let reading_mask = reading
        .iter()
        .enumerate()
        .fold(0u16, |mask, (k, &r)| mask | (u16::from(r) << k));
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    let (mut poison, mut span) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let slots = values
        .chunks_exact_mut(LANES)
        .zip(offsets.chunks_exact(LANES))
        .zip(present.chunks_exact(LANES));
    for ((v_row, offset_row), present_row) in slots {
        let read = gather_slot(base, distances, offset_row);
        // A bool is one byte, 0 or 1.
        let present_bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(present_row.as_ptr().cast()));
        let present_mask = _mm512_test_epi32_mask(present_bytes, _mm512_set1_epi32(1));
        let v = _mm512_mask_blend_ps(present_mask & reading_mask, neg_inf, read);
        check(v, ALL, &mut poison, &mut span);
        _mm512_storeu_ps(v_row.as_mut_ptr(), v);
    }
    let (mut poison_out, mut span_out) = ([0.0f32; LANES], [0.0f32; LANES]);
    _mm512_storeu_ps(poison_out.as_mut_ptr(), poison);
    _mm512_storeu_ps(span_out.as_mut_ptr(), span);
    (poison_out, span_out)
}

/// `group_reads::gather` for float32: `raw[j * LANES + k] = rows[k][offsets[j * LANES + k]]`.
///
/// # Safety
/// As `read_lanes_f32`.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn gather_lanes_f32(
    rows: &[*const f32; LANES],
    offsets: &[isize],
    raw: &mut [f32],
) {
    let base = rows[0];
    let distances = row_distances(rows);
    for (raw_row, offset_row) in raw.chunks_exact_mut(LANES).zip(offsets.chunks_exact(LANES)) {
        let read = gather_slot(base, distances, offset_row);
        _mm512_storeu_ps(raw_row.as_mut_ptr(), read);
    }
}

/// One slot of every lane: `base[distances[k] + offsets[k]]` for the 16 lanes `k`.
///
/// # Safety
/// AVX-512 F; `offsets` at least `LANES` long, and every element addressed inside the
/// array `base` points into.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn gather_slot(
    base: *const f32,
    (distance_lo, distance_hi): (__m512i, __m512i),
    offsets: &[isize],
) -> __m512 {
    let offset_lo = _mm512_loadu_si512(offsets.as_ptr().cast());
    let offset_hi = _mm512_loadu_si512(offsets[HALF..].as_ptr().cast());
    gather16(
        base,
        _mm512_add_epi64(distance_lo, offset_lo),
        _mm512_add_epi64(distance_hi, offset_hi),
        ALL,
    )
}

/// Each lane's row as an element distance from lane 0's, as two vectors of 8 (rows of one
/// float32 array, or of several: a difference of 4-byte-aligned addresses either way).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn row_distances(rows: &[*const f32; LANES]) -> (__m512i, __m512i) {
    let base = rows[0];
    let mut distance = [0i64; LANES];
    for (d, &row) in distance.iter_mut().zip(rows) {
        *d = (row as i64 - base as i64) / 4;
    }
    (
        _mm512_loadu_si512(distance.as_ptr().cast()),
        _mm512_loadu_si512(distance[HALF..].as_ptr().cast()),
    )
}

/// One sample's frame: `out[j] = row[offsets[j]]` (the blank and each label), checked.
/// Returns whether no value is NaN or `+inf`, and the largest magnitude of a value other
/// than `-inf` (what `frame_reads::frame_span` computes for log-probabilities).
///
/// # Safety
/// AVX-512 F; `offsets` as long as `out`, each a class of the float32 row `row` times its
/// stride, so that each element read lies inside the array.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn read_row_f32(
    row: *const f32,
    offsets: &[i64],
    out: &mut [f32],
) -> (bool, f32) {
    let n = out.len().min(offsets.len());
    let (mut poison, mut span) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut i = 0;
    while i < n {
        let left = n - i;
        let mask = if left >= LANES {
            ALL
        } else {
            (1u16 << left) - 1
        };
        // Masked loads and gathers touch no element outside the mask (past the slices'
        // ends): the pointers are formed with wrapping arithmetic and never dereferenced
        // there.
        let at = offsets.as_ptr().wrapping_add(i);
        let offset_lo = _mm512_maskz_loadu_epi64(mask as u8, at.cast());
        let offset_hi =
            _mm512_maskz_loadu_epi64((mask >> HALF) as u8, at.wrapping_add(HALF).cast());
        let v = gather16(row, offset_lo, offset_hi, mask);
        check(v, mask, &mut poison, &mut span);
        _mm512_mask_storeu_ps(out.as_mut_ptr().wrapping_add(i), mask, v);
        i += LANES;
    }
    let clean = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(poison, _mm512_setzero_ps()) == ALL;
    (clean, _mm512_reduce_max_ps(span))
}
