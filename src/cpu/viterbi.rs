//! Forced alignment: the single most likely path of a sample through its CTC lattice.
//!
//! Max-product (Viterbi) over the same extended states as the loss, in float64, with a
//! two-bit back-pointer per cell (how many states back the best predecessor is: 0, 1 or 2).
//! No exp or log is needed, so the scores are exact sums of the input log-probabilities.
//!
//! Memory is bounded, and the path exact, for any length: when the back-pointers of the whole
//! sample would exceed `WHOLE_TABLE_BYTES`, the frames run in segments. A first pass keeps
//! only the score row before each segment (a checkpoint); then, from the last segment to the
//! first, each segment is recomputed from its checkpoint with its back-pointers, and the path
//! is traced back through it. The recomputation repeats the same float operations, so the
//! path and its scores are bitwise those of the single pass. T=100,000 frames against 30,000
//! tokens need about 100 MiB instead of 1.5 GB of back-pointers (6 GB at a byte per cell).
//!
//! Ties are broken deterministically: a state prefers the predecessor with the highest state
//! index (staying, then one step, then the skip over a blank), and the path ends in the final
//! blank rather than the final label when both score the same.
//!
//! The star token (`star`): a label equal to the number of classes `C` emits a fixed score at
//! every frame, read from no column.

use ndarray::{ArrayViewMut1, ArrayViewMut2};

use super::fastmath::FastMath;
use super::primitives::heap_bytes;
use super::sample::SampleRef;

/// Where one sample's alignment goes: rows of the batch outputs.
pub struct AlignmentRows<'a, F> {
    /// `(T,)`: the class emitted at each frame on the best path, -1 past the input length.
    pub labels: ArrayViewMut1<'a, i64>,
    /// `(T,)`: that frame's log-probability, NaN past the input length.
    pub scores: ArrayViewMut1<'a, F>,
    /// `(S, 2)`: each target token's frames `[start, end)`, -1 for padding.
    pub spans: ArrayViewMut2<'a, i64>,
}

/// Back-pointer tables up to this size are kept whole (one pass); larger ones run in
/// segments of at most this size (`segment_frames`).
const WHOLE_TABLE_BYTES: usize = 64 << 20;

/// Frames per segment for a sample of `input_len` frames and `states` lattice states: all of
/// them while their back-pointers fit `WHOLE_TABLE_BYTES`; else as many as fit, but at least
/// `sqrt(32 T)`, where the checkpoints (`8 * states` bytes each, one per segment) and one
/// segment's back-pointers (`states / 4` bytes per frame) weigh the same.
pub fn segment_frames(input_len: usize, states: usize) -> usize {
    let row_bytes = back_row_bytes(states);
    if input_len.saturating_mul(row_bytes) <= WHOLE_TABLE_BYTES {
        return input_len.max(1);
    }
    let balanced = (32.0 * input_len as f64).sqrt().ceil() as usize;
    (WHOLE_TABLE_BYTES / row_bytes)
        .max(balanced)
        .clamp(1, input_len)
}

/// Bytes of one frame's back-pointers: two bits per state.
fn back_row_bytes(states: usize) -> usize {
    states.div_ceil(4)
}

/// Bytes a workspace holds while it aligns a sample of `input_len` frames and `states`
/// states in segments of `segment` frames (`None` past the address space).
pub fn workspace_bytes(input_len: usize, states: usize, segment: usize) -> Option<usize> {
    let width = states.checked_add(2)?;
    let checkpoints = input_len.div_ceil(segment.max(1)).saturating_sub(1);
    let row_values = checkpoints.checked_add(3)?.checked_mul(width)?; // + two rows, emissions
    let back = segment.checked_mul(back_row_bytes(states))?;
    // Per state: its class (usize), its skip term (f64), its step (u8), with room.
    let per_state = width.checked_mul(24)?;
    // Per frame: the path's state (usize) and the logits' log-sum-exp (f64).
    let per_frame = input_len.checked_mul(16)?;
    row_values
        .checked_mul(8)?
        .checked_add(back)?
        .checked_add(per_state)?
        .checked_add(per_frame)
}

/// Scratch memory reused across samples.
#[derive(Debug, Default)]
pub struct ViterbiWorkspace {
    /// Two running rows of path scores, width `states + 2` (two leading `-inf` pads).
    rows: Vec<f64>,
    /// The row before each segment's first frame, but the first's.
    checkpoints: Vec<f64>,
    /// One segment's back-pointers, `back_row_bytes(states)` per frame.
    back: Vec<u8>,
    /// One frame's emission per state.
    emit: Vec<f64>,
    /// One frame's step per state, before packing.
    steps: Vec<u8>,
    /// The class of each state (`C` for the star token).
    classes: Vec<usize>,
    /// Per state, 0 when it may be entered by skipping a blank, else `-inf`.
    skip: Vec<f64>,
    /// The state of each frame on the best path.
    path: Vec<usize>,
    /// Per frame, the log-sum-exp subtracted from logits input (0 for log-probabilities).
    log_norm: Vec<f64>,
}

impl ViterbiWorkspace {
    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        heap_bytes(&self.rows)
            + heap_bytes(&self.checkpoints)
            + heap_bytes(&self.back)
            + heap_bytes(&self.emit)
            + heap_bytes(&self.steps)
            + heap_bytes(&self.classes)
            + heap_bytes(&self.skip)
            + heap_bytes(&self.path)
            + heap_bytes(&self.log_norm)
    }
}

/// What every frame of one sample reads.
struct Lattice<'a, 'p, F> {
    x: &'a SampleRef<'p, F>,
    states: usize,
    /// `C`: the star token's class.
    star_class: usize,
    /// The star token's score (unused without one).
    star: f64,
    classes: &'a [usize],
    skip: &'a [f64],
    log_norm: &'a [f64],
}

impl<F: FastMath> Lattice<'_, '_, F> {
    /// The highest state a path can be in at frame `t`.
    fn top(&self, t: usize) -> usize {
        (2 * t + 1).min(self.states - 1)
    }

    /// The log-probability of `class` at frame `t`.
    fn emission(&self, t: usize, class: usize) -> f64 {
        if class == self.star_class {
            self.star
        } else {
            self.x.log_probs[[t, class]].to_f64() - self.log_norm[t]
        }
    }

    /// One frame: `cur[s + 2]` (for each state `s` a path can be in at frame `t`) is the best
    /// of its predecessors in `prev` plus its emission; with `KEEP`, each choice is packed
    /// into `back` (two bits per state). False when a NaN was read.
    fn frame<const KEEP: bool>(
        &self,
        t: usize,
        prev: &[f64],
        cur: &mut [f64],
        scratch: (&mut [f64], &mut [u8]),
        back: &mut [u8],
    ) -> bool {
        let n = self.top(t) + 1;
        let (emit, steps) = scratch;
        let emit = &mut emit[..n];
        let classes = &self.classes[..n];
        let row = self.x.log_probs.row(t);
        let norm = self.log_norm[t];
        let (star_class, star) = (self.star_class, self.star);
        match row.as_slice() {
            Some(row) => {
                for (e, &c) in emit.iter_mut().zip(classes) {
                    *e = if c == star_class {
                        star
                    } else {
                        row[c].to_f64() - norm
                    };
                }
            }
            None => {
                for (e, &c) in emit.iter_mut().zip(classes) {
                    *e = self.emission(t, c);
                }
            }
        }
        if emit.iter().any(|e| e.is_nan()) {
            return false;
        }
        let skip = &self.skip[..n];
        let prev = &prev[..n + 2];
        let cur = &mut cur[2..n + 2];
        let steps = &mut steps[..n.div_ceil(4) * 4];
        // Branch-free, so that it vectorises: a skip that is not allowed adds -inf (a NaN
        // from +inf - inf compares false, as a forbidden skip is never taken).
        for s in 0..n {
            let (stay, one, two) = (prev[s + 2], prev[s + 1], prev[s] + skip[s]);
            let advance = one > stay;
            let best = if advance { one } else { stay };
            let jump = two > best;
            cur[s] = if jump { two } else { best } + emit[s];
            if KEEP {
                steps[s] = if jump { 2 } else { advance as u8 };
            }
        }
        if KEEP {
            for (byte, four) in back.iter_mut().zip(steps.chunks_exact(4)) {
                *byte = four[0] | (four[1] << 2) | (four[2] << 4) | (four[3] << 6);
            }
        }
        true
    }

    /// Runs `frames` from the row before the first of them (in `rows[..width]`), leaving the
    /// last one's row there; with `KEEP`, frame `frames.start + i`'s back-pointers go to
    /// `back`'s `i`-th row. False when a NaN was read.
    fn run<const KEEP: bool>(
        &self,
        frames: std::ops::Range<usize>,
        rows: &mut [f64],
        scratch: (&mut [f64], &mut [u8]),
        back: &mut [u8],
    ) -> bool {
        let width = self.states + 2;
        let row_bytes = back_row_bytes(self.states);
        let (emit, steps) = scratch;
        let odd = frames.len() % 2 == 1;
        let (first, second) = rows.split_at_mut(width);
        // States above the band of a frame stay -inf: the row written two frames earlier
        // has a narrower band.
        second.fill(f64::NEG_INFINITY);
        let (mut prev, mut cur) = (first, second);
        let start = frames.start;
        for t in frames {
            let back_row = if KEEP {
                &mut back[(t - start) * row_bytes..(t - start + 1) * row_bytes]
            } else {
                &mut [][..]
            };
            if !self.frame::<KEEP>(t, prev, cur, (&mut *emit, &mut *steps), back_row) {
                return false;
            }
            std::mem::swap(&mut prev, &mut cur);
        }
        if odd {
            let (first, second) = rows.split_at_mut(width);
            first.copy_from_slice(second);
        }
        true
    }
}

/// The row "before frame 0": only the first state is open, at log-probability 0.
fn start_row(row: &mut [f64]) {
    row.fill(f64::NEG_INFINITY);
    row[2] = 0.0;
}

/// The step stored for state `s` in a row of packed back-pointers.
fn step_of(back_row: &[u8], s: usize) -> usize {
    ((back_row[s / 4] >> (2 * (s % 4))) & 3) as usize
}

/// Aligns one sample and writes its rows. Returns the best path's total log-probability
/// (`-inf` when no alignment exists, NaN when a NaN was read); rows of a sample without a
/// finite best path keep their fill values (-1 / NaN). With `star`, a label equal to the
/// number of classes `C` is the star token: it emits `star` at every frame. `segment`: frames
/// per segment (`segment_frames`; any value gives the same path).
pub fn align<F: FastMath>(
    x: &SampleRef<'_, F>,
    star: Option<f64>,
    segment: usize,
    ws: &mut ViterbiWorkspace,
    out: AlignmentRows<'_, F>,
) -> f64 {
    let t_len = x.input_len;
    let labels = x.labels;
    let states = 2 * labels.len() + 1;
    if t_len == 0 {
        return if labels.is_empty() {
            0.0
        } else {
            f64::NEG_INFINITY
        };
    }
    prepare(x, ws);
    let segment = segment.clamp(1, t_len);
    let segments = t_len.div_ceil(segment);
    let width = states + 2;
    let row_bytes = back_row_bytes(states);
    ws.rows.clear();
    ws.rows.resize(2 * width, f64::NEG_INFINITY);
    ws.checkpoints.clear();
    ws.checkpoints
        .resize((segments - 1) * width, f64::NEG_INFINITY);
    ws.back.clear();
    ws.back.resize(segment * row_bytes, 0);
    ws.emit.clear();
    ws.emit.resize(states, 0.0);
    ws.steps.clear();
    ws.steps.resize(row_bytes * 4, 0);
    let lattice = Lattice {
        x,
        states,
        star_class: x.log_probs.ncols(),
        star: star.unwrap_or(f64::NAN),
        classes: &ws.classes,
        skip: &ws.skip,
        log_norm: &ws.log_norm,
    };
    let (emit, steps) = (&mut ws.emit[..], &mut ws.steps[..]);

    // The checkpoints: the row before each segment but the first.
    start_row(&mut ws.rows[..width]);
    for k in 1..segments {
        let frames = (k - 1) * segment..k * segment;
        if !lattice.run::<false>(frames, &mut ws.rows, (&mut *emit, &mut *steps), &mut []) {
            return f64::NAN;
        }
        ws.checkpoints[(k - 1) * width..k * width].copy_from_slice(&ws.rows[..width]);
    }

    // Each segment again, last first, with its back-pointers; the path is traced through it.
    ws.path.clear();
    ws.path.resize(t_len, 0);
    let mut state = 0;
    let mut score = f64::NAN;
    for k in (0..segments).rev() {
        if k == 0 {
            start_row(&mut ws.rows[..width]);
        } else {
            ws.rows[..width].copy_from_slice(&ws.checkpoints[(k - 1) * width..k * width]);
        }
        let frames = k * segment..((k + 1) * segment).min(t_len);
        if !lattice.run::<true>(
            frames.clone(),
            &mut ws.rows,
            (&mut *emit, &mut *steps),
            &mut ws.back,
        ) {
            return f64::NAN;
        }
        if k == segments - 1 {
            let last = &ws.rows[2..width];
            state = states - 1;
            if states > 1 && last[states - 2] > last[states - 1] {
                state = states - 2;
            }
            score = last[state];
            if !score.is_finite() {
                return score;
            }
        }
        for t in frames.clone().rev() {
            ws.path[t] = state;
            let back_row = &ws.back[(t - frames.start) * row_bytes..][..row_bytes];
            state -= step_of(back_row, state);
        }
    }
    write_rows(&lattice, &ws.path, out);
    score
}

/// Fills the per-state classes and skip flags and the per-frame log-sum-exp of `x`.
fn prepare<F: FastMath>(x: &SampleRef<'_, F>, ws: &mut ViterbiWorkspace) {
    let labels = x.labels;
    let states = 2 * labels.len() + 1;
    ws.classes.clear();
    ws.skip.clear();
    for s in 0..states {
        let label = s / 2;
        let is_label = s % 2 == 1;
        ws.classes.push(if is_label {
            labels[label] as usize
        } else {
            x.blank
        });
        let may_skip = is_label && label >= 1 && labels[label] != labels[label - 1];
        ws.skip.push(if may_skip { 0.0 } else { f64::NEG_INFINITY });
    }
    ws.log_norm.clear();
    for t in 0..x.input_len {
        ws.log_norm.push(if x.logits {
            super::frame_reads::log_sum_exp(x.log_probs.row(t))
        } else {
            0.0
        });
    }
}

/// Writes the labels, scores and token spans of the best path (`path`: a state per frame).
fn write_rows<F: FastMath>(
    lattice: &Lattice<'_, '_, F>,
    path: &[usize],
    mut out: AlignmentRows<'_, F>,
) {
    for (t, &s) in path.iter().enumerate() {
        let class = lattice.classes[s];
        out.labels[t] = class as i64;
        out.scores[t] = F::from_f64(lattice.emission(t, class));
        if s % 2 == 1 {
            let token = s / 2;
            if out.spans[[token, 0]] < 0 {
                out.spans[[token, 0]] = t as i64;
            }
            out.spans[[token, 1]] = t as i64 + 1;
        }
    }
}

#[cfg(test)]
mod tests;
