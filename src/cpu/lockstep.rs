//! Short samples side by side: one SIMD lane per sample.
//!
//! For short sequences the per-sample kernel (`lattice.rs`) spends as long on its per-frame
//! fixed costs (loop set-up, remainder iterations, band bookkeeping) as on the lattice
//! itself: a sample of 50 frames and 61 states is four vectors per row. Here a group of up
//! to `LANES` samples runs in lockstep. Rows are state-major and lane-minor (state `s` of
//! lane `k` at `s * LANES + k`), so every step of the recursion is whole vectors, and the
//! same `combine3` as the per-sample kernel runs over them, with a state's neighbours
//! `LANES` and `2 * LANES` elements away. Lanes of different lengths ride along: a lane
//! past its last frame or label has zero emissions, so its values stay zero.
//!
//! Anything out of the ordinary (no frames, no possible alignment, a NaN or `+inf` read, an
//! exhausted exponent budget, a zero likelihood) leaves the lane to the per-sample kernel,
//! which owns those rules: the group reports the lane as not done and writes nothing of it.
//!
//! The reading of the lanes' input is in `group_reads.rs`; the building blocks shared with
//! the per-sample kernel in `primitives.rs`.

use ndarray::ArrayViewMut2;

use super::dispatch::SimdLevel;
use super::fastmath::FastMath;
use super::group_reads::GroupReads;
use super::primitives::{
    combine3, end_log_likelihood, ensure_len, occupancy, occupancy_shift, reset, shift_is_exact,
    times, two_rows, Rows, NORMALISE_EVERY, PAD,
};
use super::sample::{GradSpec, SampleRef};
use super::scaled::{Extended, Narrow, Wide};
use crate::options::GradWrt;
use crate::problem::min_frames;

/// Samples per group: one AVX-512 vector of float32 mantissas.
pub const LANES: usize = 16;

/// The buffers of a group's recursion in one lane type; every row is `LANES` wide per state.
#[derive(Debug, Default)]
pub struct GroupLanes<X: Extended> {
    /// Forward table, frame-major: `states * LANES` values per frame.
    table: Rows<X>,
    /// Emissions of the blank and each label, per frame: `(labels + 1) * LANES` per frame
    /// (the backward pass reads them again).
    emissions: Rows<X>,
    /// Two running forward rows with `PAD` leading zero states.
    alpha: Rows<X>,
    /// Two running backward rows with `PAD` trailing zero states.
    beta: Rows<X>,
    /// `beta[t+1] * emission[t+1]`, with `PAD` trailing zero states.
    next_weighted: Rows<X>,
    /// One frame's emissions per state.
    emit: Rows<X>,
    /// Per state and lane: whether the state may be entered from `s - 2` (see
    /// `lattice::Lanes::skip`), with `PAD` trailing states.
    skip: Rows<X>,
    /// Occupancy of one frame per state and lane.
    occupancy: Vec<X::M>,
    /// One frame's input at the blank and each label, per lane, minus the frame's norm.
    values: Vec<X::M>,
}

/// Scratch memory of the lockstep kernel (one per worker thread).
#[derive(Debug, Default)]
pub struct GroupWorkspace<F> {
    reads: GroupReads<F>,
    wide: GroupLanes<Wide>,
    narrow: GroupLanes<Narrow>,
}

impl<F> GroupWorkspace<F> {
    /// Bytes held on the heap by the tables (the rest is a few rows): what keeping this
    /// workspace for later calls costs.
    pub fn heap_bytes(&self) -> usize {
        self.wide.heap_bytes() + self.narrow.heap_bytes()
    }
}

impl<X: Extended> GroupLanes<X> {
    fn heap_bytes(&self) -> usize {
        self.table.heap_bytes() + self.emissions.heap_bytes()
    }
}

/// One lane's progress.
#[derive(Debug, Clone, Copy)]
struct LaneState {
    /// Still computed here (else left to the per-sample kernel).
    live: bool,
    /// Exponent budget used so far (see `Extended::INPUT_BUDGET`).
    budget_used: f64,
    log_lik: f64,
}

/// Whether a sample can run in a group at all (checked again per lane as the group runs).
pub fn fits<F>(x: &SampleRef<'_, F>) -> bool {
    x.input_len > 0 && x.input_len >= min_frames(x.labels)
}

/// Whether running `xs` (all `fits`) as one group is expected to beat running them one by
/// one. A cost model fitted to forward+backward timings on AVX-512 (1 thread, 29 classes,
/// 60-500 frames, 61-121 states, within 10%): a group costs about 90 ns per state of the
/// union of its lanes' bands per frame, whatever its lanes; a sample alone about 3.5 ns per
/// cell of its own band plus 250 ns per frame. Lanes of unequal lengths widen the union
/// (and make a group lose: 500 frames and 101-129 states of random lengths run 25% faster
/// one by one); equal short ones gain up to 2.5x.
pub fn pays_off<F>(xs: &[SampleRef<'_, F>]) -> bool {
    const GROUP_NS_PER_STATE: f64 = 90.0;
    const SAMPLE_NS_PER_CELL: f64 = 3.5;
    const SAMPLE_NS_PER_FRAME: f64 = 250.0;
    let t_max = xs.iter().map(|x| x.input_len).max().unwrap_or(0);
    let states = xs.iter().map(|x| 2 * x.labels.len() + 1).max().unwrap_or(1);
    let mut group_states = 0usize;
    let mut sample_cells = 0usize;
    for t in 0..t_max {
        let hi = (2 * t + 1).min(states - 1);
        let mut lo = hi;
        for x in xs.iter().filter(|x| x.input_len > t) {
            let own_states = 2 * x.labels.len() + 1;
            let own_lo = own_states.saturating_sub(2 * (x.input_len - t));
            let own_hi = (2 * t + 1).min(own_states - 1);
            lo = lo.min(own_lo);
            sample_cells += own_hi + 1 - own_lo.min(own_hi + 1);
        }
        group_states += hi + 1 - lo;
    }
    let frames: usize = xs.iter().map(|x| x.input_len).sum();
    let group = GROUP_NS_PER_STATE * group_states as f64;
    let alone = SAMPLE_NS_PER_CELL * sample_cells as f64 + SAMPLE_NS_PER_FRAME * frames as f64;
    group < alone
}

/// The size of the forward table a group of `xs` keeps with the gradient: a mantissa and
/// an exponent per state, frame and lane (all `LANES` lanes, used or not).
pub fn table_bytes<F>(xs: &[SampleRef<'_, F>]) -> usize {
    let t_max = xs.iter().map(|x| x.input_len).max().unwrap_or(0);
    let states = xs.iter().map(|x| 2 * x.labels.len() + 1).max().unwrap_or(1);
    // float32 input: float32 mantissas and int32 exponents; float64: both 8 bytes.
    let per_cell = 2 * std::mem::size_of::<F>();
    t_max * states * LANES * per_cell
}

/// Log-likelihoods of up to `LANES` samples; `None` for a lane left to the per-sample
/// kernel.
#[inline(always)]
pub fn forward<F: FastMath>(
    level: SimdLevel,
    xs: &[SampleRef<'_, F>],
    ws: &mut GroupWorkspace<F>,
) -> Vec<Option<f64>> {
    run_in_lanes(level, xs, ws, None)
}

/// Log-likelihoods and gradient rows of up to `LANES` samples; `None` for a lane left to the
/// per-sample kernel, whose rows are then untouched.
#[inline(always)]
pub fn forward_backward<F: FastMath>(
    level: SimdLevel,
    xs: &[SampleRef<'_, F>],
    ws: &mut GroupWorkspace<F>,
    grads: &mut [ArrayViewMut2<'_, F>],
    specs: &[GradSpec<F>],
) -> Vec<Option<f64>> {
    run_in_lanes(level, xs, ws, Some((grads, specs)))
}

type GradOut<'a, 'g, F> = Option<(&'a mut [ArrayViewMut2<'g, F>], &'a [GradSpec<F>])>;

/// `run` in the lane type of the input: `Narrow` for float32 (lanes beyond its budget leave
/// the group), `Wide` for float64.
#[inline(always)]
fn run_in_lanes<F: FastMath>(
    level: SimdLevel,
    xs: &[SampleRef<'_, F>],
    ws: &mut GroupWorkspace<F>,
    grad: GradOut<'_, '_, F>,
) -> Vec<Option<f64>> {
    if F::NARROW {
        let mut lanes = std::mem::take(&mut ws.narrow);
        let out = run::<F, Narrow>(level, xs, ws, &mut lanes, grad);
        ws.narrow = lanes;
        out
    } else {
        let mut lanes = std::mem::take(&mut ws.wide);
        let out = run::<F, Wide>(level, xs, ws, &mut lanes, grad);
        ws.wide = lanes;
        out
    }
}

#[inline(always)]
fn run<F: FastMath, X: Extended>(
    level: SimdLevel,
    xs: &[SampleRef<'_, F>],
    ws: &mut GroupWorkspace<F>,
    lanes: &mut GroupLanes<X>,
    grad: GradOut<'_, '_, F>,
) -> Vec<Option<f64>> {
    assert!(xs.len() <= LANES, "a group holds at most LANES samples");
    let mut state: Vec<LaneState> = xs
        .iter()
        .map(|x| LaneState {
            live: fits(x),
            budget_used: 0.0,
            log_lik: f64::NEG_INFINITY,
        })
        .collect();
    let t_max = xs
        .iter()
        .zip(&state)
        .filter(|(_, s)| s.live)
        .map(|(x, _)| x.input_len)
        .max()
        .unwrap_or(0);
    if t_max > 0 {
        // Fixed for both passes (the table's layout), though lanes may drop out.
        let labels = max_labels(xs, &state);
        let keep_table = grad.is_some();
        ws.reads.prepare_prefetch(xs);
        forward_pass::<F, X>(
            xs,
            ws,
            lanes,
            &mut state,
            t_max,
            labels,
            (level, keep_table),
        );
        for s in state.iter_mut() {
            // A zero likelihood (every path through a -inf emission) has the per-sample
            // kernel's NaN / zero_infinity rules for its gradient, and a likelihood beyond
            // `shift_is_exact` its shifting frame by frame.
            s.live &= s.log_lik.is_finite() && shift_is_exact(s.log_lik);
        }
        if let Some(out) = grad {
            if state.iter().any(|s| s.live) {
                backward_pass::<F, X>(xs, ws, lanes, &state, t_max, labels, out);
            }
        }
    }
    state.iter().map(|s| s.live.then_some(s.log_lik)).collect()
}

/// The lowest state any live lane still running at frame `t` needs: below it no state can
/// reach its lane's end in time (see `primitives::band`). It never decreases with `t`.
fn band_floor<F>(xs: &[SampleRef<'_, F>], state: &[LaneState], t: usize) -> usize {
    xs.iter()
        .zip(state)
        .filter(|(x, s)| s.live && x.input_len > t)
        .map(|(x, _)| (2 * x.labels.len() + 1).saturating_sub(2 * (x.input_len - t)))
        .min()
        .unwrap_or(0)
}

/// The widest target in the group (live lanes).
fn max_labels<F>(xs: &[SampleRef<'_, F>], state: &[LaneState]) -> usize {
    xs.iter()
        .zip(state)
        .filter(|(_, s)| s.live)
        .map(|(x, _)| x.labels.len())
        .max()
        .unwrap_or(0)
}

/// Fills the skip mask of every live lane: state `2j + 1` may be entered from `2j - 1` when
/// label `j` differs from label `j - 1`. (A lane left to the per-sample kernel from the
/// start may have more states than the group.)
fn fill_skip<F, X: Extended>(
    xs: &[SampleRef<'_, F>],
    state: &[LaneState],
    states: usize,
    skip: &mut Rows<X>,
) {
    skip.reset((states + PAD) * LANES);
    for (k, x) in xs.iter().enumerate().filter(|&(k, _)| state[k].live) {
        for j in 1..x.labels.len() {
            if x.labels[j] != x.labels[j - 1] {
                skip.m[(2 * j + 1) * LANES + k] = X::M_ONE;
                skip.e[(2 * j + 1) * LANES + k] = X::E_ZERO;
            }
        }
    }
}

/// Reads frame `t` of every lane into `lanes.values` (see `GroupReads::read`: `-inf` for
/// lanes past their end and lanes no longer live). A lane that reads a NaN or `+inf`, or
/// runs out of exponent budget, stops being live.
#[inline(always)]
fn read_frame<F: FastMath, X: Extended>(
    xs: &[SampleRef<'_, F>],
    ws: &mut GroupWorkspace<F>,
    lanes: &mut GroupLanes<X>,
    state: &mut [LaneState],
    t: usize,
    (width, level): (usize, SimdLevel),
) {
    let mut reading = [false; LANES];
    for (k, (x, lane)) in xs.iter().zip(state.iter()).enumerate() {
        reading[k] = lane.live && t < x.input_len;
    }
    let values = &mut lanes.values[..width * LANES];
    let (poison, span) = ws.reads.read::<X>(xs, t, width, &reading, values, level);
    for (k, lane) in state.iter_mut().enumerate() {
        if !reading[k] {
            continue;
        }
        let mut ok = poison[k] == 0.0;
        if X::INPUT_BUDGET.is_finite() {
            // Two per frame for the sums of three (as in `lattice::forward_in`).
            lane.budget_used += X::budget_cost(span[k]);
            ok &= lane.budget_used < X::INPUT_BUDGET;
        }
        if !ok {
            lane.live = false;
            for j in 0..width {
                values[j * LANES + k] = X::m_from_f64(f64::NEG_INFINITY);
            }
        }
    }
}

/// Spreads one frame's emissions (`[blank, label_0, ...]` per lane) over states `lo..=hi`.
#[inline(always)]
fn expand<X: Extended>(em_m: &[X::M], em_e: &[X::E], lo: usize, hi: usize, emit: &mut Rows<X>) {
    let (blank_m, blank_e) = (&em_m[..LANES], &em_e[..LANES]);
    for s in lo..=hi {
        let source = if s % 2 == 0 { 0 } else { s.div_ceil(2) };
        let to = s * LANES..(s + 1) * LANES;
        if source == 0 {
            emit.m[to.clone()].copy_from_slice(blank_m);
            emit.e[to].copy_from_slice(blank_e);
        } else {
            let from = source * LANES..(source + 1) * LANES;
            emit.m[to.clone()].copy_from_slice(&em_m[from.clone()]);
            emit.e[to].copy_from_slice(&em_e[from]);
        }
    }
}

#[inline(always)]
fn forward_pass<F: FastMath, X: Extended>(
    xs: &[SampleRef<'_, F>],
    ws: &mut GroupWorkspace<F>,
    lanes: &mut GroupLanes<X>,
    state: &mut [LaneState],
    t_max: usize,
    labels: usize,
    (level, keep_table): (SimdLevel, bool),
) {
    let width = labels + 1;
    let states = 2 * labels + 1;
    let row_len = (states + PAD) * LANES;
    lanes.alpha.reset(2 * row_len);
    lanes.emit.reset(states * LANES);
    fill_skip(xs, state, states, &mut lanes.skip);
    reset(&mut lanes.values, width * LANES, X::M_ZERO);
    ws.reads.prepare(xs, |k| state[k].live, width, t_max);
    let frames = if keep_table { t_max } else { 1 };
    ensure_len(&mut lanes.emissions.m, frames * width * LANES, X::M_ZERO);
    ensure_len(&mut lanes.emissions.e, frames * width * LANES, X::E_NONE);
    if keep_table {
        // Not cleared: the backward pass reads only states `0..=2t+1` of frame t, which this
        // pass writes.
        ensure_len(&mut lanes.table.m, t_max * states * LANES, X::M_ZERO);
        ensure_len(&mut lanes.table.e, t_max * states * LANES, X::E_NONE);
    }

    for t in 0..t_max {
        if t + 1 < t_max {
            ws.reads.prefetch(xs, |k| state[k].live, t + 1);
        }
        read_frame::<F, X>(xs, ws, lanes, state, t, (width, level));
        let slot = if keep_table { t } else { 0 } * width * LANES;
        let em_m = &mut lanes.emissions.m[slot..slot + width * LANES];
        let em_e = &mut lanes.emissions.e[slot..slot + width * LANES];
        for ((m, e), &v) in em_m.iter_mut().zip(em_e.iter_mut()).zip(&lanes.values) {
            (*m, *e) = X::emission_of_m::<F>(v);
        }
        // The band: states above 2t + 1 are unreachable at frame t (and zero in the rows);
        // below `lo` no live lane needs them, and the next frame does not read them (as in
        // `lattice::forward_in`, the rows are reused without clearing).
        let hi = (2 * t + 1).min(states - 1);
        let lo = band_floor(xs, state, t).min(hi);
        let (first, n) = (lo * LANES, (hi + 1 - lo) * LANES);
        expand::<X>(em_m, em_e, lo, hi, &mut lanes.emit);
        let (cur_m, prev_m) = two_rows(&mut lanes.alpha.m, t % 2, (t + 1) % 2, row_len);
        let (cur_e, prev_e) = two_rows(&mut lanes.alpha.e, t % 2, (t + 1) % 2, row_len);
        let out_m = &mut cur_m[PAD * LANES + first..PAD * LANES + first + n];
        let out_e = &mut cur_e[PAD * LANES + first..PAD * LANES + first + n];
        let emit = (
            &lanes.emit.m[first..first + n],
            &lanes.emit.e[first..first + n],
        );
        if t == 0 {
            for i in 0..n {
                (out_m[i], out_e[i]) = X::normalise(emit.0[i], emit.1[i]);
            }
        } else {
            let at = |k: usize| {
                let from = (PAD - k) * LANES + first;
                (&prev_m[from..], &prev_e[from..])
            };
            let skip = (&lanes.skip.m[first..], &lanes.skip.e[first..]);
            let renorm = t % NORMALISE_EVERY == 0;
            combine3::<X>(
                [at(0), at(1), at(2)],
                skip,
                Some(emit),
                renorm,
                out_m,
                out_e,
            );
        }
        if keep_table {
            let row = t * states * LANES + first..t * states * LANES + first + n;
            lanes.table.m[row.clone()].copy_from_slice(out_m);
            lanes.table.e[row].copy_from_slice(out_e);
        }
        // Lanes that end at this frame: the likelihood is the sum of the last two states.
        for (k, (x, lane)) in xs.iter().zip(state.iter_mut()).enumerate() {
            if lane.live && x.input_len == t + 1 {
                let at = |s: usize| {
                    let i = (PAD + s) * LANES + k;
                    (cur_m[i], cur_e[i])
                };
                lane.log_lik = end_log_likelihood::<X>(2 * x.labels.len(), at);
            }
        }
    }
}

#[inline(always)]
fn backward_pass<F: FastMath, X: Extended>(
    xs: &[SampleRef<'_, F>],
    ws: &mut GroupWorkspace<F>,
    lanes: &mut GroupLanes<X>,
    state: &[LaneState],
    t_max: usize,
    labels: usize,
    (grads, specs): (&mut [ArrayViewMut2<'_, F>], &[GradSpec<F>]),
) {
    let width = labels + 1;
    let states = 2 * labels + 1;
    let row_len = (states + PAD) * LANES;
    lanes.beta.reset(2 * row_len);
    lanes.next_weighted.reset(row_len);
    reset(&mut lanes.occupancy, states * LANES, X::M_ZERO);
    // Each lane's occupancy is shifted by its own likelihood's exponent.
    let mut shift = [X::E_ZERO; LANES];
    for (k, lane) in state.iter().enumerate() {
        if lane.live {
            shift[k] = occupancy_shift::<X>(lane.log_lik);
        }
    }

    for t in (0..t_max).rev() {
        let (cur_m, next_m) = two_rows(&mut lanes.beta.m, t % 2, (t + 1) % 2, row_len);
        let (cur_e, next_e) = two_rows(&mut lanes.beta.e, t % 2, (t + 1) % 2, row_len);
        // The band: states above 2t + 1 are unreachable at frame t (zero occupancy), and
        // frame t - 1 reads beta[t] only up to 2t + 1; below `lo` beta is zero for every
        // lane still running. Going back in time `lo` only decreases, so below it the rows
        // are still zero from the reset.
        let hi = (2 * t + 1).min(states - 1);
        let lo = band_floor(xs, state, t).min(hi);
        let (first, n) = (lo * LANES, (hi + 1 - lo) * LANES);
        if t + 1 < t_max {
            // lanes.emit holds frame t+1's emissions on its band; frame t reads states up to
            // hi(t) + 2 = hi(t+1) (or the zero pads past the last state).
            let end = ((2 * t + 3).min(states - 1) + 1) * LANES;
            let w = &mut lanes.next_weighted;
            let (w_m, w_e) = (&mut w.m[first..end], &mut w.e[first..end]);
            let (n_m, n_e) = (&next_m[first..end], &next_e[first..end]);
            let (y_m, y_e) = (&lanes.emit.m[first..end], &lanes.emit.e[first..end]);
            for i in 0..end - first {
                (w_m[i], w_e[i]) = times::<X>(n_m[i], n_e[i], y_m[i], y_e[i]);
            }
            let at = |k: usize| (&w.m[first + k * LANES..], &w.e[first + k * LANES..]);
            let skip = (
                &lanes.skip.m[first + 2 * LANES..],
                &lanes.skip.e[first + 2 * LANES..],
            );
            let renorm = t % NORMALISE_EVERY == 0;
            let (out_m, out_e) = (&mut cur_m[first..first + n], &mut cur_e[first..first + n]);
            combine3::<X>([at(0), at(1), at(2)], skip, None, renorm, out_m, out_e);
        }
        // Lanes whose last frame this is start from their last two states.
        for (k, (x, lane)) in xs.iter().zip(state).enumerate() {
            if lane.live && x.input_len == t + 1 {
                let last = 2 * x.labels.len();
                for s in last.saturating_sub(1)..=last {
                    cur_m[s * LANES + k] = X::M_ONE;
                    cur_e[s * LANES + k] = X::E_ZERO;
                }
            }
        }

        // Occupancy of frame t over the reachable states, per lane.
        let row = t * states * LANES;
        let alpha_m = &lanes.table.m[row + first..row + first + n];
        let alpha_e = &lanes.table.e[row + first..row + first + n];
        let occ = &mut lanes.occupancy[first..first + n];
        let mut total = [X::M_ZERO; LANES];
        let mut blank = [X::M_ZERO; LANES];
        let per_state = alpha_m
            .chunks_exact(LANES)
            .zip(alpha_e.chunks_exact(LANES))
            .zip(cur_m[first..first + n].chunks_exact(LANES))
            .zip(cur_e[first..first + n].chunks_exact(LANES))
            .zip(occ.chunks_exact_mut(LANES));
        for (s, ((((a_m, a_e), b_m), b_e), o)) in (lo..).zip(per_state) {
            for k in 0..LANES {
                o[k] = occupancy::<X>((a_m[k], a_e[k]), (b_m[k], b_e[k]), shift[k]);
                total[k] = total[k] + o[k];
            }
            if s % 2 == 0 {
                for k in 0..LANES {
                    blank[k] = blank[k] + o[k];
                }
            }
        }

        write_grad_rows::<F, X>(
            xs,
            &ws.reads,
            &mut lanes.occupancy,
            state,
            (t, lo, hi),
            (&total, &blank),
            (&mut *grads, specs),
        );

        // Emissions of frame t, for beta[t-1].
        if t > 0 {
            let slot = t * width * LANES..(t + 1) * width * LANES;
            expand::<X>(
                &lanes.emissions.m[slot.clone()],
                &lanes.emissions.e[slot],
                lo,
                hi,
                &mut lanes.emit,
            );
        }
    }
}

/// Writes gradient row `t` of every live lane still running at frame `t`, from the frame's
/// occupancy (`occupancy`, states `lo..=hi` lane-minor, not yet normalised; the label states
/// are overwritten with their shares) and its per-lane `total` and `blank` sums. One step of
/// `backward_pass`, inlined into it.
#[inline(always)]
fn write_grad_rows<F: FastMath, X: Extended>(
    xs: &[SampleRef<'_, F>],
    reads: &GroupReads<F>,
    occupancy: &mut [X::M],
    state: &[LaneState],
    (t, lo, hi): (usize, usize, usize),
    (total, blank): (&[X::M; LANES], &[X::M; LANES]),
    (grads, specs): (&mut [ArrayViewMut2<'_, F>], &[GradSpec<F>]),
) {
    // The gradient of lane k at a state is its occupancy times -scale / total: every
    // label state's share, in vectors, then one scattered add per label and lane. A
    // state holding the whole frame gets exactly -scale (`x * (1/x)` can miss 1).
    let mut factor = [X::M_ZERO; LANES];
    let mut whole = [X::M_ZERO; LANES];
    for (k, (x, lane)) in xs.iter().zip(state).enumerate() {
        if lane.live && t < x.input_len {
            let scale = specs[k].scale.to_f64();
            factor[k] = X::m_from_f64(-scale / X::m_to_f64(total[k]));
            whole[k] = X::m_from_f64(-scale);
        }
    }
    let share = |o: X::M, k: usize| {
        if o == total[k] {
            whole[k]
        } else {
            o * factor[k]
        }
    };
    let first_label = lo | 1;
    if first_label <= hi {
        let label_states = &mut occupancy[first_label * LANES..(hi + 1) * LANES];
        for o in label_states.chunks_exact_mut(2 * LANES) {
            for (k, o) in o[..LANES].iter_mut().enumerate() {
                *o = share(*o, k);
            }
        }
        let last = label_states.chunks_exact_mut(2 * LANES).into_remainder();
        for (k, o) in last.iter_mut().enumerate() {
            *o = share(*o, k);
        }
    }
    let occ = &*occupancy;
    for (k, (x, lane)) in xs.iter().zip(state).enumerate() {
        if !lane.live || t >= x.input_len {
            continue;
        }
        let spec = specs[k];
        let blank = F::from_f64(X::m_to_f64(share(blank[k], k)));
        // Label j is state 2j + 1.
        let end = hi.div_ceil(2).min(x.labels.len());
        let labels = (lo / 2).min(end)..end;
        let mut row = grads[k].row_mut(t);
        let lp = x.log_probs.row(t);
        // softmax of the input row for the logits gradient, as in
        // `lattice::forward_backward_in`; the log_probs row is zero (fresh or cleared below).
        let shift = F::from_f64(reads.log_norm(t, k));
        macro_rules! write_row {
            ($out:expr, $lp:expr) => {{
                if spec.wrt == GradWrt::Logits {
                    for (g, &v) in $out.iter_mut().zip($lp) {
                        *g = (v - shift).fast_exp() * spec.scale;
                    }
                    $out[x.blank] += blank;
                } else {
                    $out[x.blank] = blank;
                }
                for j in labels {
                    let g = F::from_f64(X::m_to_f64(occ[(2 * j + 1) * LANES + k]));
                    $out[x.labels[j] as usize] += g;
                }
            }};
        }
        // A recycled row holds stale values; the logits gradient writes it whole.
        if spec.clear_rows && spec.wrt == GradWrt::LogProbs {
            row.fill(F::ZERO);
        }
        // Plain slices when the rows are contiguous (the usual layouts).
        match (row.as_slice_mut(), lp.as_slice()) {
            (Some(out), Some(lp)) => write_row!(out, lp),
            _ => write_row!(row, lp.iter()),
        }
    }
}
