//! Forced alignment (Viterbi) on the GPU: the same best paths, spans and scores as the CPU
//! aligner (`crate::cpu::align`), bitwise.
//!
//! - **Host, before** (`gather`): per sample, the emission of each distinct class its lattice
//!   reads (the blank, its labels, the star token) at every frame, in float64 and by the
//!   CPU's own expression (`log_prob - log_sum_exp(frame)` for logits, the CPU's
//!   `log_sum_exp`), so the device never needs `exp` or `log`. A NaN emission in a frame's
//!   band makes the sample NaN, as on the CPU. Columns are numbered by their first state, so
//!   those a frame's band reads are a prefix.
//! - **Device** (`viterbi.wgsl`, `device.rs`): one workgroup per sample runs the max-product
//!   recursion in float64 with the CPU's operations in the CPU's order, and writes a two-bit
//!   back-pointer per state and frame. Float64 throughout is why the aligner needs an adapter
//!   with `SHADER_F64` for float32 input too: the CPU accumulates in float64, and a float32
//!   sum would pick other paths at near-ties.
//! - **Host, after** (`trace`): the best final state (the final blank on a tie), then the path
//!   back through the downloaded back-pointers, and the rows written as the CPU writes them.
//!
//! Batches are split into chunks whose buffers fit one storage binding each (and
//! `FASTCTC_GPU_CHUNK_BYTES`); a sample whose emissions or back-pointers alone exceed a binding
//! is refused (use `device="cpu"`, which has no such limit). Time runs in spans of frames, one
//! dispatch each, shortened when llvmpipe cuts loops (`docs/design.md#gpu-spans`).

mod device;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::ops::Range;

use ndarray::{ArrayViewMut1, ArrayViewMut2, Axis};

use super::{context, scoped, GpuFloat};
use crate::cpu::{log_sum_exp, FastMath};
use crate::error::CtcError;
use crate::options::InputKind;
use crate::output::AlignmentOutput;
use crate::problem::Problem;

/// State code bit (`SKIP_BIT` in the shader): the state may be entered from `s - 2`.
pub(crate) const SKIP_BIT: u32 = 1 << 31;
/// States per back-pointer word (`STATES_PER_WORD` in the shader): two bits each. With `W`
/// words per frame, state `s` is in word `s % W` at bits `2 (s / W)` (see `viterbi.wgsl`).
pub(crate) const STATES_PER_WORD: usize = 16;

/// One sample the device aligns, with what the host knows of its lattice.
struct Job {
    n: usize,
    t_len: usize,
    /// `2L + 1`.
    states: usize,
    /// The class of each emission column (`C` for the star token), in order of first state.
    classes: Vec<usize>,
    /// The first state of each column.
    first: Vec<usize>,
    /// Per state: its column, with [`SKIP_BIT`] when it may be entered from `s - 2`.
    codes: Vec<u32>,
}

impl Job {
    fn new(n: usize, t_len: usize, labels: &[u32], blank: usize) -> Job {
        let states = 2 * labels.len() + 1;
        let mut classes = vec![blank];
        let mut first = vec![0];
        let mut column_of = HashMap::from([(blank, 0u32)]);
        let mut codes = Vec::with_capacity(states);
        codes.push(0);
        for (j, &label) in labels.iter().enumerate() {
            let class = label as usize;
            let column = *column_of.entry(class).or_insert_with(|| {
                classes.push(class);
                first.push(2 * j + 1);
                (classes.len() - 1) as u32
            });
            let may_skip = j >= 1 && labels[j] != labels[j - 1];
            codes.push(if may_skip { column | SKIP_BIT } else { column });
            codes.push(0);
        }
        Job {
            n,
            t_len,
            states,
            classes,
            first,
            codes,
        }
    }

    /// Back-pointer words per frame.
    fn words(&self) -> usize {
        self.states.div_ceil(STATES_PER_WORD)
    }

    /// Values of `emit` (float64).
    fn emit_len(&self) -> usize {
        self.t_len * self.classes.len()
    }

    /// Words of `back`.
    fn back_len(&self) -> usize {
        self.t_len * self.words()
    }

    /// Values of `rows` (float64): two rows of `states + 2`.
    fn rows_len(&self) -> usize {
        2 * (self.states + 2)
    }

    /// Words of `info`: its record and its state codes.
    fn info_len(&self) -> usize {
        device::Record::WORDS + self.states
    }

    /// Bytes of each storage buffer this sample takes, in [`device::Sizes`] order.
    fn bytes(&self) -> [u64; 4] {
        [
            (self.info_len() * 4) as u64,
            (self.emit_len() * 8) as u64,
            (self.rows_len() * 8) as u64,
            (self.back_len() * 4) as u64,
        ]
    }
}

/// Where one sample's alignment goes: its rows of the batch outputs and its path score.
struct Slot<'a, F> {
    labels: ArrayViewMut1<'a, i64>,
    scores: ArrayViewMut1<'a, F>,
    spans: ArrayViewMut2<'a, i64>,
    score: &'a mut f64,
}

/// The most likely alignment of every sample of a validated batch, on the GPU.
///
/// Errors: [`CtcError::GpuUnavailable`] when no adapter can be opened, [`CtcError::Gpu`] when
/// the adapter has no 64-bit float shaders, the device fails, or one sample does not fit a
/// storage binding.
pub fn align<F: GpuFloat + FastMath>(
    problem: &Problem<'_, F>,
) -> Result<AlignmentOutput<F>, CtcError> {
    let ctx = context::get()?;
    let kernel = device::kernel(ctx)?;
    let (t_max, batch, _) = problem.dims();
    let max_target = problem
        .samples
        .iter()
        .map(|s| s.target_len())
        .max()
        .unwrap_or(0);
    let mut out = AlignmentOutput::<F>::empty(batch, t_max, max_target);
    let mut slots: Vec<Option<Slot<'_, F>>> = out
        .labels
        .outer_iter_mut()
        .zip(out.scores.outer_iter_mut())
        .zip(out.spans.outer_iter_mut())
        .zip(out.path_scores.iter_mut())
        .map(|(((labels, scores), spans), score)| {
            Some(Slot {
                labels,
                scores,
                spans,
                score,
            })
        })
        .collect();
    let mut jobs = Vec::new();
    for (n, sample) in problem.samples.iter().enumerate() {
        let labels = problem.labels_of(n);
        if sample.input_len == 0 {
            // As on the CPU: nothing is read; the empty target is aligned, any other is not.
            let slot = slots[n].as_mut().expect("one slot per sample");
            *slot.score = if labels.is_empty() {
                0.0
            } else {
                f64::NEG_INFINITY
            };
        } else {
            jobs.push(Job::new(n, sample.input_len, labels, problem.blank));
        }
    }
    let limits = device::Limits::of(ctx);
    for job in &jobs {
        limits.admit(job)?;
    }
    let chunks = plan(&jobs, &limits);
    let _serial = ctx.cache.lock().unwrap_or_else(|e| e.into_inner());
    scoped(ctx, || {
        for range in chunks {
            let chunk = &jobs[range];
            let chunk_slots = chunk
                .iter()
                .map(|job| slots[job.n].take().expect("each sample in one chunk"))
                .collect();
            device::run_chunk(ctx, kernel, problem, chunk, chunk_slots)?;
        }
        Ok(())
    })?;
    drop(slots);
    Ok(out)
}

/// Consecutive runs of `jobs` whose buffers each fit the chunk budget (at least one job
/// each) and whose workgroups fit one dispatch.
fn plan(jobs: &[Job], limits: &device::Limits) -> Vec<Range<usize>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut totals = [0u64; 4];
    for (i, job) in jobs.iter().enumerate() {
        let bytes = job.bytes();
        let fits = totals
            .iter()
            .zip(bytes)
            .all(|(&total, b)| total + b <= limits.chunk_bytes)
            && i - start < limits.workgroups;
        if !fits && i > start {
            chunks.push(start..i);
            start = i;
            totals = [0; 4];
        }
        for (total, b) in totals.iter_mut().zip(bytes) {
            *total += b;
        }
    }
    if start < jobs.len() {
        chunks.push(start..jobs.len());
    }
    chunks
}

/// Writes `job`'s emissions (`t_len` rows of its columns) into `emit`, as the CPU computes
/// them; returns each frame's log-sum-exp (logits input; empty otherwise) and whether a NaN
/// emission was read in a frame's band (then the sample's score is NaN).
fn gather<F: FastMath>(problem: &Problem<'_, F>, job: &Job, emit: &mut [f64]) -> (Vec<f64>, bool) {
    let lp = problem.log_probs.index_axis(Axis(1), job.n);
    let star_class = lp.ncols();
    let star = problem.options.star_score.unwrap_or(f64::NAN);
    let logits = problem.options.input_kind == InputKind::Logits;
    let k = job.classes.len();
    let mut norms = Vec::with_capacity(if logits { job.t_len } else { 0 });
    let mut nan = false;
    let mut readable = 0;
    for (t, dst) in emit.chunks_exact_mut(k).take(job.t_len).enumerate() {
        let row = lp.row(t);
        let norm = if logits { log_sum_exp(row) } else { 0.0 };
        if logits {
            norms.push(norm);
        }
        let top = (2 * t + 1).min(job.states - 1);
        while readable < k && job.first[readable] <= top {
            readable += 1;
        }
        for (d, &class) in dst.iter_mut().zip(&job.classes) {
            *d = if class == star_class {
                star
            } else {
                row[class].to_f64() - norm
            };
        }
        nan |= dst[..readable].iter().any(|e| e.is_nan());
    }
    (norms, nan)
}

/// What the device left for one sample: its last row (`states + 2` values, two pads first)
/// and its back-pointer words; and what the host kept: each frame's log-sum-exp (logits).
struct Traced<'a> {
    last_row: &'a [f64],
    back: &'a [u32],
    norms: &'a [f64],
}

/// The best path of `job` from the device's results, written into `slot` as the CPU writes
/// it (`cpu/viterbi.rs`).
fn trace<F: FastMath>(problem: &Problem<'_, F>, job: &Job, result: Traced<'_>, slot: Slot<'_, F>) {
    let mut slot = slot;
    let states = job.states;
    let last = &result.last_row[2..];
    let mut state = states - 1;
    if states > 1 && last[states - 2] > last[states - 1] {
        state = states - 2;
    }
    let score = last[state];
    *slot.score = score;
    if !score.is_finite() {
        return;
    }
    let words = job.words();
    let mut path = vec![0usize; job.t_len];
    for (t, on_path) in path.iter_mut().enumerate().rev() {
        *on_path = state;
        let word = result.back[t * words + state % words];
        let step = ((word >> (2 * (state / words))) & 3) as usize;
        // A finite path never leaves the band and starts from state 0: anything else is a
        // device fault, reported as a NaN score rather than a wrong path.
        if step > state || (t == 0 && state != step) {
            *slot.score = f64::NAN;
            return;
        }
        state -= step;
    }
    let lp = problem.log_probs.index_axis(Axis(1), job.n);
    let star_class = lp.ncols();
    let star = problem.options.star_score.unwrap_or(f64::NAN);
    for (t, &s) in path.iter().enumerate() {
        let class = job.classes[(job.codes[s] & !SKIP_BIT) as usize];
        slot.labels[t] = class as i64;
        let norm = result.norms.get(t).copied().unwrap_or(0.0);
        let emission = if class == star_class {
            star
        } else {
            lp[[t, class]].to_f64() - norm
        };
        slot.scores[t] = F::from_f64(emission);
        if s % 2 == 1 {
            let token = s / 2;
            if slot.spans[[token, 0]] < 0 {
                slot.spans[[token, 0]] = t as i64;
            }
            slot.spans[[token, 1]] = t as i64 + 1;
        }
    }
}
