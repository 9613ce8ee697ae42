//! Reading a group's input, frame by frame (see `lockstep.rs`): one frame's blank and labels
//! of up to `LANES` samples, gathered lane-minor into one row (`GroupReads::read`), checked
//! for NaN and `+inf` and measured for the exponent budget in the same pass, with the
//! logits' log-sum-exp subtracted; and the prefetching of each lane's scattered cache lines.
//!
//! Apart from the group's recursion because this is where the lanes' different inputs,
//! strides, target lengths and the instruction set meet (`avx512.rs` fuses the gather and
//! checks on AVX-512); the recursion sees only whole vectors of values.

#[cfg(target_arch = "x86_64")]
use super::avx512;
use super::dispatch::{supports, SimdLevel};
use super::fastmath::{is_f32, FastMath};
use super::frame_reads::{
    fill_distinct_classes, fill_prefetch_lines, log_sum_exp, prefetch_lines, LINE,
};
use super::lockstep::LANES;
use super::primitives::{ensure_len, reset};
use super::sample::SampleRef;
use super::scaled::Extended;

/// Input rows up to this size are not prefetched: the group reads them every frame, so
/// they stay cached.
const PREFETCH_ROW_BYTES: usize = 8 * LINE;

/// The read buffers of a group (part of `lockstep::GroupWorkspace`).
#[derive(Debug, Default)]
pub(super) struct GroupReads<F> {
    /// Per frame and lane: what is subtracted from the input (the logits' log-sum-exp).
    log_norm: Vec<f64>,
    /// One frame's input at the blank and each label, per lane, as read.
    raw: Vec<F>,
    /// Where `raw` is read from, and which of its slots exist: see `fill_offsets`.
    offsets: Vec<isize>,
    present: Vec<bool>,
    /// Each lane's cache lines to prefetch (see `prepare_prefetch`), and one lane's classes
    /// and lines while they are found.
    lines: Vec<usize>,
    line_spans: Vec<(usize, usize)>,
    lane_classes: Vec<usize>,
    lane_lines: Vec<usize>,
}

impl<F: FastMath> GroupReads<F> {
    /// Per lane, the byte offsets of the input row's cache lines that hold its blank and
    /// labels, each once (`lines`, delimited by `line_spans`); none when rows are not
    /// contiguous or fit in a few lines, which stay cached.
    pub(super) fn prepare_prefetch(&mut self, xs: &[SampleRef<'_, F>]) {
        self.lines.clear();
        self.line_spans.clear();
        for x in xs {
            let start = self.lines.len();
            if x.log_probs.ncols() * std::mem::size_of::<F>() > PREFETCH_ROW_BYTES {
                fill_distinct_classes(x, &mut self.lane_classes);
                fill_prefetch_lines(x, &self.lane_classes, &mut self.lane_lines);
                self.lines.extend_from_slice(&self.lane_lines);
            }
            self.line_spans.push((start, self.lines.len()));
        }
    }

    /// Asks the CPU to start loading the lines of frame `t` that each lane `k` with
    /// `live(k)` reads (see `frame_reads::prefetch_frame`): with a large vocabulary each
    /// read would otherwise wait for memory.
    #[inline(always)]
    pub(super) fn prefetch(&self, xs: &[SampleRef<'_, F>], live: impl Fn(usize) -> bool, t: usize) {
        for (k, x) in xs.iter().enumerate() {
            let (start, end) = self.line_spans[k];
            if live(k) && t < x.input_len && start < end {
                prefetch_lines(x.log_probs.row(t).as_ptr(), &self.lines[start..end]);
            }
        }
    }

    /// Sizes the buffers for a group of `t_max` frames and `width` slots
    /// (`[blank, label_0, ...]`) per lane, and fills the read offsets of the lanes `k` with
    /// `live(k)` (the others, left to the per-sample kernel, may have longer targets).
    pub(super) fn prepare(
        &mut self,
        xs: &[SampleRef<'_, F>],
        live: impl Fn(usize) -> bool,
        width: usize,
        t_max: usize,
    ) {
        reset(&mut self.raw, width * LANES, F::ZERO);
        fill_offsets(xs, live, width, &mut self.offsets, &mut self.present);
        ensure_len(&mut self.log_norm, t_max * LANES, 0.0);
    }

    /// What was subtracted from lane `k`'s input at frame `t` (0 for log-probabilities and
    /// for lanes not read).
    #[inline(always)]
    pub(super) fn log_norm(&self, t: usize, k: usize) -> f64 {
        self.log_norm[t * LANES + k]
    }

    /// Reads frame `t` of every lane into `values` (`[blank, label_0, ...]` per lane, minus
    /// the frame's norm, rounded to the mantissa type; `-inf` for lanes not `reading` and
    /// labels past a lane's target) and records the norms. Returns each lane's `poison` (0,
    /// or NaN after a NaN or `+inf` read) and `span` (the largest magnitude other than
    /// `-inf`, for the exponent budget).
    #[inline(always)]
    pub(super) fn read<X: Extended>(
        &mut self,
        xs: &[SampleRef<'_, F>],
        t: usize,
        width: usize,
        reading: &[bool; LANES],
        values: &mut [X::M],
        level: SimdLevel,
    ) -> ([f64; LANES], [f64; LANES]) {
        let mut norm = [0.0f64; LANES];
        // Row t of each lane (frames up to the group's longest input exist in every lane's
        // view: they are the same (T, N, C) array).
        let mut rows = [xs[0].log_probs.row(t).as_ptr(); LANES];
        for (k, x) in xs.iter().enumerate() {
            let row = x.log_probs.row(t);
            rows[k] = row.as_ptr();
            if reading[k] && x.logits {
                norm[k] = log_sum_exp(row);
            }
            self.log_norm[t * LANES + k] = norm[k];
        }
        // The checks, in vectors: a NaN or +inf read, and the exponent budget used.
        let mut poison = [0.0f64; LANES];
        let mut span = [0.0f64; LANES];
        let offsets = &self.offsets[..width * LANES];
        let present = &self.present[..width * LANES];
        let values = &mut values[..width * LANES];
        let raw = &mut self.raw[..width * LANES];
        if xs.iter().any(|x| x.logits) {
            gather(&rows, offsets, raw, level);
            let slots = values
                .chunks_exact_mut(LANES)
                .zip(raw.chunks_exact(LANES))
                .zip(present.chunks_exact(LANES));
            for ((v_row, raw_row), present_row) in slots {
                for k in 0..LANES {
                    let v = if present_row[k] & reading[k] {
                        raw_row[k].to_f64() - norm[k]
                    } else {
                        f64::NEG_INFINITY
                    };
                    // -inf (an exact zero) uses no budget; NaN and +inf make `poison` NaN.
                    let x = if v == f64::NEG_INFINITY { 0.0 } else { v };
                    poison[k] += x * 0.0;
                    span[k] = span[k].fmax(x.abs());
                    v_row[k] = X::m_from_f64(v);
                }
            }
        } else if let Some((poison_f, span_f)) =
            read_log_probs_fused::<F, X>(&rows, offsets, present, reading, values, level)
        {
            for k in 0..LANES {
                poison[k] = f64::from(poison_f[k]);
                span[k] = f64::from(span_f[k]);
            }
        } else {
            // Log-probabilities are used as read: the same checks in the input type, which
            // for float32 input is the mantissa type, so this is one vector per slot.
            gather(&rows, offsets, raw, level);
            let slots = values
                .chunks_exact_mut(LANES)
                .zip(raw.chunks_exact(LANES))
                .zip(present.chunks_exact(LANES));
            let mut poison_f = [F::ZERO; LANES];
            let mut span_f = [F::ZERO; LANES];
            for ((v_row, raw_row), present_row) in slots {
                for k in 0..LANES {
                    let v = if present_row[k] & reading[k] {
                        raw_row[k]
                    } else {
                        F::NEG_INFINITY
                    };
                    let x = if v == F::NEG_INFINITY { F::ZERO } else { v };
                    poison_f[k] += x * F::ZERO;
                    // Not `fmax`: LLVM turns its select into a masked store, which stalls
                    // the next iteration's load of the same accumulator.
                    span_f[k] = span_f[k].max_num(x.max_num(-x));
                    v_row[k] = X::m_from_f64(v.to_f64());
                }
            }
            for k in 0..LANES {
                poison[k] = poison_f[k].to_f64();
                span[k] = span_f[k].to_f64();
            }
        }
        (poison, span)
    }
}

/// Per lane and slot of `[blank, label_0, ...]`: the element offset of its class in a row
/// of the lane's input, and whether the slot exists (a lane of the group with that many
/// labels). Missing slots read the lane's blank, lanes not `live` read class 0 (and use
/// nothing they read), and lanes past the group's samples read lane 0's, so that the gather
/// needs no branches.
fn fill_offsets<F>(
    xs: &[SampleRef<'_, F>],
    live: impl Fn(usize) -> bool,
    width: usize,
    offsets: &mut Vec<isize>,
    present: &mut Vec<bool>,
) {
    reset(offsets, width * LANES, 0);
    reset(present, width * LANES, false);
    for (k, x) in xs.iter().enumerate().filter(|&(k, _)| live(k)) {
        let stride = x.log_probs.strides()[1];
        // Validation guarantees it; `gather` relies on it.
        assert!(x.blank < x.log_probs.ncols());
        let blank = x.blank as isize * stride;
        for j in 0..width {
            offsets[j * LANES + k] = blank;
        }
        for (j, &label) in x.labels.iter().enumerate() {
            assert!((label as usize) < x.log_probs.ncols());
            offsets[(j + 1) * LANES + k] = label as isize * stride;
        }
        for j in 0..=x.labels.len() {
            present[j * LANES + k] = true;
        }
    }
    for j in 0..width {
        for k in xs.len()..LANES {
            offsets[j * LANES + k] = offsets[j * LANES];
        }
    }
}

/// The gather: `raw[j * LANES + k] = *rows[k].offset(offsets[j * LANES + k])`, one
/// branch-free pass over every slot of every lane. Every `rows[k]` must be a row of an
/// input array and every offset a class of that row times its stride (`fill_offsets`
/// checks), so that each element read lies inside the array.
#[inline(always)]
fn gather<F: FastMath>(
    rows: &[*const F; LANES],
    offsets: &[isize],
    raw: &mut [F],
    level: SimdLevel,
) {
    #[cfg(target_arch = "x86_64")]
    if is_f32::<F>() && level == SimdLevel::Avx512 && supports(level) {
        // SAFETY: F is f32 (`is_f32`), so the casts are identities; the CPU has AVX-512 F
        // (`supports`); the addresses are those the scalar loop reads.
        unsafe {
            avx512::gather_lanes_f32(
                &*(rows as *const [*const F; LANES] as *const [*const f32; LANES]),
                offsets,
                &mut *(raw as *mut [F] as *mut [f32]),
            )
        };
        return;
    }
    for (raw_row, offset_row) in raw.chunks_exact_mut(LANES).zip(offsets.chunks_exact(LANES)) {
        for k in 0..LANES {
            // SAFETY: see the function's contract.
            raw_row[k] = unsafe { *rows[k].offset(offset_row[k]) };
        }
    }
    let _ = level;
}

/// The log-probability branch of `GroupReads::read` for float32 input on AVX-512, in one pass:
/// the gather, the masks and the checks, with the checks' accumulators in registers (the
/// portable loop keeps them on the stack, a store and reload per slot: with the scalar
/// gather, a third of a short group's forward pass). Returns each lane's `poison` and
/// `span`; `None` on other types and CPUs.
#[inline(always)]
fn read_log_probs_fused<F: FastMath, X: Extended>(
    rows: &[*const F; LANES],
    offsets: &[isize],
    present: &[bool],
    reading: &[bool; LANES],
    values: &mut [X::M],
    level: SimdLevel,
) -> Option<([f32; LANES], [f32; LANES])> {
    #[cfg(target_arch = "x86_64")]
    if is_f32::<F>()
        && std::mem::size_of::<X::M>() == 4
        && level == SimdLevel::Avx512
        && supports(level)
    {
        // SAFETY: F is f32 (`is_f32`) and the only 4-byte mantissa type of the (private)
        // `Extended` types is f32, so the casts are identities; the CPU has AVX-512 F
        // (`supports`); rows and offsets meet `gather`'s contract (the caller's).
        return Some(unsafe {
            avx512::read_lanes_f32(
                &*(rows as *const [*const F; LANES] as *const [*const f32; LANES]),
                offsets,
                present,
                reading,
                &mut *(values as *mut [X::M] as *mut [f32]),
            )
        });
    }
    let _ = (rows, offsets, present, reading, values, level);
    None
}
