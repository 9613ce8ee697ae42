//! The CPU backend: samples spread over the thread pool, largest first.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod dispatch;
mod fastmath;
mod frame_reads;
mod group_reads;
mod lattice;
mod lockstep;
mod primitives;
mod sample;
mod scaled;
#[cfg(test)]
mod tests;
mod viterbi;
mod workspaces;

use std::cmp::Reverse;

use ndarray::{s, ArrayViewMut2, Axis};
use rayon::prelude::*;

pub use dispatch::{level as simd_level, SimdLevel};
pub use fastmath::FastMath;
pub use frame_reads::log_sum_exp;
pub use lattice::Workspace;
pub use lockstep::GroupWorkspace;
pub use sample::{GradSpec, SampleRef};

/// Bytes the aligner's workspace holds for a sample of `input_len` frames and `states`
/// lattice states (its checkpoints and one segment's back-pointers, see `viterbi.rs`).
pub fn alignment_table_bytes(input_len: usize, states: usize) -> Option<usize> {
    viterbi::workspace_bytes(
        input_len,
        states,
        viterbi::segment_frames(input_len, states),
    )
}
use workspaces::KeptWorkspaces;

use crate::error::CtcError;
use crate::gradient::{self, Gradient, RowScale};
use crate::options::InputKind;
use crate::output::{AlignmentOutput, CtcOutput};
use crate::problem::Problem;
use crate::real::Real;
use crate::{openmp, threads};

/// The instruction-set extensions this CPU offers that matter to the kernels, for `info`.
pub fn simd_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.1") {
            found.push("sse4.1");
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            found.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            found.push("fma");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            found.push("avx512f");
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        found.push("neon");
    }
    found
}

/// A float the CPU backend computes in: `f32` or `f64`, each with workspaces kept between
/// calls (`workspaces.rs`), so repeated calls allocate nothing.
pub trait CpuFloat: KeptWorkspaces {
    fn with_workspace<R>(work: impl FnOnce(&mut Workspace<Self>) -> R) -> R {
        Self::workspaces().with(work)
    }
    fn with_group_workspace<R>(work: impl FnOnce(&mut GroupWorkspace<Self>) -> R) -> R {
        Self::group_workspaces().with(work)
    }
}

impl CpuFloat for f32 {}
impl CpuFloat for f64 {}

/// Frees the workspaces kept between calls; returns the bytes freed.
pub fn release_workspaces() -> usize {
    workspaces::release()
}

/// Frees the kept workspaces far larger than a call whose largest table is `needed_bytes`
/// needs; returns the bytes freed.
pub fn trim_workspaces(needed_bytes: usize) -> usize {
    workspaces::trim(needed_bytes)
}

fn sample_ref<'p, F: Real>(problem: &'p Problem<'_, F>, n: usize) -> SampleRef<'p, F> {
    SampleRef {
        log_probs: problem.log_probs.index_axis(Axis(1), n),
        input_len: problem.samples[n].input_len,
        labels: problem.labels_of(n),
        blank: problem.blank,
        logits: problem.options.input_kind == InputKind::Logits,
    }
}

/// Below this much work (in forward lattice cells, see `total_work`) a batch runs on the
/// calling thread: handing it to the pool costs more than it saves, and leaves the caller's
/// core idle.
const SERIAL_WORK: usize = 20_000;
/// Below this much work the calling thread takes half of the jobs and one pool thread the
/// other half; above, the whole pool shares them.
const SPLIT_WORK: usize = 1_200_000;

/// The work of a batch in units of one forward lattice cell: a cell of the forward and
/// backward passes costs about three, and the dense `(T, N, C)` gradient about three
/// quarters per element.
fn total_work<F>(problem: &Problem<'_, F>, with_grad: bool) -> usize {
    let (t_max, batch, classes) = problem.dims();
    let cells: usize = problem.samples.iter().map(|s| s.cost()).sum();
    if with_grad {
        3 * cells + 3 * (t_max * batch * classes) / 4
    } else {
        cells
    }
}

/// Runs `work` on every job (given largest first): on the calling thread when the batch is
/// small; else on the calling thread's OpenMP team where one is enabled (`openmp.rs`: inside
/// a torch process); else shared with one pool thread when it is medium, or on the whole
/// pool.
fn for_each_job<T: Send>(jobs: Vec<T>, work_size: usize, work: impl Fn(T) + Sync + Send) {
    if work_size < SERIAL_WORK || threads::num_threads() == 1 || jobs.len() < 2 {
        jobs.into_iter().for_each(work);
        return;
    }
    let jobs = match openmp::for_each_job(jobs, threads::num_threads(), &work) {
        Ok(()) => return,
        Err(jobs) => jobs,
    };
    if work_size < SPLIT_WORK {
        // Both threads take the next job from one queue (largest first): when the helper
        // wakes late, the caller has simply done more of them.
        threads::share_with_one_helper(jobs, &work);
    } else {
        threads::install(|| jobs.into_par_iter().with_max_len(1).for_each(work));
    }
}

/// Computes the losses (and, with `with_grad`, the gradient) of a validated batch.
///
/// Errors: [`CtcError::OutOfMemory`] when the gradient cannot be allocated.
pub fn compute<F: CpuFloat>(
    problem: &Problem<'_, F>,
    with_grad: bool,
) -> Result<CtcOutput<F>, CtcError> {
    if with_grad {
        compute_with_grad(problem, RowScale::Reduction)
    } else {
        Ok(compute_loss(problem))
    }
}

/// Computes the losses and, in place of the gradient, the posterior occupancy `gamma`
/// (`(T, N, C)`, each valid frame summing to 1; NaN rows for a sample without a finite
/// loss, 0 with `zero_infinity`).
pub fn posteriors<F: CpuFloat>(problem: &Problem<'_, F>) -> Result<CtcOutput<F>, CtcError> {
    compute_with_grad(&gradient::posteriors_problem(problem), RowScale::Posteriors)
}

/// Samples with at most this many lattice states run side by side, `lockstep::LANES` at a
/// time (see `lockstep.rs`): for them the per-sample kernel's per-frame costs outweigh its
/// band. Measured on AVX-512 (1 thread, forward+backward): groups are 1.3-2.5x faster up to
/// 129 states at 100-400 frames, and slower from about 200 states (the group's rows outgrow
/// the L1 cache, its forward table the L2).
const GROUP_MAX_STATES: usize = 129;
/// Samples whose input rows are longer than this run one by one: their scattered reads
/// wait on memory, and one thread per sample keeps more of them in flight than one thread
/// per group (large vocabulary forward at 2 threads: 0.78 ms in a group, 0.4 one by one).
const GROUP_MAX_ROW_BYTES: usize = 2048;
/// A group keeps the forward table of all its lanes (`LANES` samples' worth): above this
/// size its samples run one by one, each with one sample's table per thread.
const GROUP_MAX_TABLE_BYTES: usize = 16 << 20;
/// Fewer short samples than this run one by one: a group costs its full width of vectors
/// whatever its number of lanes.
const GROUP_MIN_LANES: usize = 2;

/// Whether short samples run in groups: by the cost model (`auto`, the default), or, for
/// tests and benchmarks, `always` or `never` (environment variable `FASTCTC_GROUPS`, read
/// on every call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupPolicy {
    Auto,
    Always,
    Never,
}

fn group_policy() -> GroupPolicy {
    match std::env::var("FASTCTC_GROUPS").as_deref().map(str::trim) {
        Ok("always") => GroupPolicy::Always,
        Ok("never") => GroupPolicy::Never,
        _ => GroupPolicy::Auto,
    }
}

/// A unit of work for one thread: one sample, or a group of short samples side by side.
enum Job<T> {
    One(T),
    Group(Vec<T>),
}

/// Forms the jobs of a batch, largest first: short samples (see `GROUP_MAX_STATES`) in
/// groups of samples of similar size, the others one by one. `sample_of` gives an item's
/// sample index.
fn plan_jobs<F: Real, T>(
    problem: &Problem<'_, F>,
    mut items: Vec<T>,
    sample_of: impl Fn(&T) -> usize,
    policy: GroupPolicy,
) -> Vec<Job<T>> {
    let cost = |item: &T| problem.samples[sample_of(item)].cost();
    items.sort_by_key(|item| Reverse(cost(item)));
    let (short, long): (Vec<T>, Vec<T>) = items.into_iter().partition(|item| {
        let x = sample_ref(problem, sample_of(item));
        2 * x.labels.len() < GROUP_MAX_STATES
            && x.log_probs.ncols() * std::mem::size_of::<F>() <= GROUP_MAX_ROW_BYTES
            && lockstep::fits(&x)
    });
    let mut jobs: Vec<(usize, Job<T>)> = long
        .into_iter()
        .map(|item| (cost(&item), Job::One(item)))
        .collect();
    // Lanes of a group run for its longest input and over the union of its bands: samples
    // of similar input length go together.
    let mut short = short;
    short.sort_by_key(|item| {
        let sample = &problem.samples[sample_of(item)];
        Reverse((sample.input_len, sample.target_len()))
    });
    let mut short = short.into_iter().peekable();
    while short.peek().is_some() {
        // As many full groups as possible: splitting one group between two threads costs
        // more (a group of 8 lanes takes nearly as long as one of 16, and the helper must
        // wake) than it saves.
        let group: Vec<T> = short.by_ref().take(lockstep::LANES).collect();
        let xs: Vec<_> = group
            .iter()
            .map(|item| sample_ref(problem, sample_of(item)))
            .collect();
        let grouped = match policy {
            GroupPolicy::Auto => {
                group.len() >= GROUP_MIN_LANES
                    && lockstep::table_bytes::<F>(&xs) <= GROUP_MAX_TABLE_BYTES
                    && lockstep::pays_off(&xs)
            }
            GroupPolicy::Always => true,
            GroupPolicy::Never => false,
        };
        if grouped {
            jobs.push((group.iter().map(cost).sum(), Job::Group(group)));
        } else {
            jobs.extend(group.into_iter().map(|item| (cost(&item), Job::One(item))));
        }
    }
    jobs.sort_by_key(|(cost, _)| Reverse(*cost));
    jobs.into_iter().map(|(_, job)| job).collect()
}

fn compute_loss<F: CpuFloat>(problem: &Problem<'_, F>) -> CtcOutput<F> {
    let mut losses = vec![0.0f64; problem.samples.len()];
    let items: Vec<(usize, &mut f64)> = losses.iter_mut().enumerate().collect();
    let work = total_work(problem, false);
    let jobs = plan_jobs(problem, items, |(n, _)| *n, group_policy());
    let one =
        |n: usize| -F::with_workspace(|ws| dispatch::log_likelihood(&sample_ref(problem, n), ws));
    for_each_job(jobs, work, |job| match job {
        Job::One((n, out)) => *out = one(n),
        Job::Group(items) => {
            let xs: Vec<SampleRef<'_, F>> =
                items.iter().map(|(n, _)| sample_ref(problem, *n)).collect();
            let done = F::with_group_workspace(|ws| dispatch::group_log_likelihood(&xs, ws));
            for ((n, out), log_lik) in items.into_iter().zip(done) {
                *out = match log_lik {
                    Some(log_lik) => -log_lik,
                    None => one(n),
                };
            }
        }
    });
    CtcOutput::new(problem, losses, None)
}

fn compute_with_grad<F: CpuFloat>(
    problem: &Problem<'_, F>,
    row_scale: RowScale,
) -> Result<CtcOutput<F>, CtcError> {
    let batch = problem.samples.len();
    let mut grad = Gradient::allocate(problem)?;
    let clear_rows = grad.stale;
    let mut losses = vec![0.0f64; batch];
    {
        let mut view = grad.tnc_mut();
        let items: Vec<(usize, ArrayViewMut2<'_, F>, &mut f64)> = view
            .axis_iter_mut(Axis(1))
            .zip(losses.iter_mut())
            .enumerate()
            .map(|(n, (rows, loss))| (n, rows, loss))
            .collect();
        let work = total_work(problem, true);
        let jobs = plan_jobs(problem, items, |(n, _, _)| *n, group_policy());
        let spec_of = |n: usize| GradSpec {
            wrt: problem.options.grad_wrt,
            scale: F::from_f64(row_scale.of(problem, n)),
            zero_infinity: problem.options.zero_infinity,
            clear_rows,
        };
        // Rows past an input length are zero; the kernels leave them to us.
        let clear_tail = |n: usize, rows: &mut ArrayViewMut2<'_, F>| {
            if clear_rows {
                let input_len = problem.samples[n].input_len;
                rows.slice_mut(s![input_len.., ..]).fill(F::ZERO);
            }
        };
        let one = |x: &SampleRef<'_, F>, rows: ArrayViewMut2<'_, F>, spec: GradSpec<F>| {
            -F::with_workspace(|ws| dispatch::log_likelihood_and_grad(x, ws, rows, spec))
        };
        for_each_job(jobs, work, |job| match job {
            Job::One((n, mut rows, loss)) => {
                clear_tail(n, &mut rows);
                *loss = one(&sample_ref(problem, n), rows, spec_of(n));
            }
            Job::Group(items) => {
                let mut xs = Vec::with_capacity(items.len());
                let mut specs = Vec::with_capacity(items.len());
                let mut grads = Vec::with_capacity(items.len());
                let mut outs = Vec::with_capacity(items.len());
                for (n, mut rows, loss) in items {
                    clear_tail(n, &mut rows);
                    xs.push(sample_ref(problem, n));
                    specs.push(spec_of(n));
                    grads.push(rows);
                    outs.push(loss);
                }
                let done = F::with_group_workspace(|ws| {
                    dispatch::group_log_likelihood_and_grad(&xs, ws, &mut grads, &specs)
                });
                for (k, (out, log_lik)) in outs.into_iter().zip(done).enumerate() {
                    *out = match log_lik {
                        Some(log_lik) => -log_lik,
                        None => one(&xs[k], grads[k].view_mut(), specs[k]),
                    };
                }
            }
        });
    }
    Ok(CtcOutput::new(problem, losses, Some(grad.into_array())))
}

/// The most likely alignment of every sample of a validated batch (forced alignment).
pub fn align<F: CpuFloat>(problem: &Problem<'_, F>) -> AlignmentOutput<F> {
    let (t_max, batch, _) = problem.dims();
    let max_target = problem
        .samples
        .iter()
        .map(|s| s.target_len())
        .max()
        .unwrap_or(0);
    let mut out = AlignmentOutput::empty(batch, t_max, max_target);
    let mut jobs: Vec<_> = out
        .labels
        .outer_iter_mut()
        .zip(out.scores.outer_iter_mut())
        .zip(out.spans.outer_iter_mut())
        .zip(out.path_scores.iter_mut())
        .enumerate()
        .map(|(n, (((labels, scores), spans), score))| (n, labels, scores, spans, score))
        .collect();
    jobs.sort_by_key(|job| Reverse(problem.samples[job.0].cost()));
    // For tests: frames per segment of the bounded-memory aligner, read on every call.
    let segment_override = std::env::var("FASTCTC_ALIGN_SEGMENT_FRAMES")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&v| v > 0);
    for_each_job(
        jobs,
        total_work(problem, false),
        |(n, labels, scores, spans, score)| {
            let x = sample_ref(problem, n);
            let rows = viterbi::AlignmentRows {
                labels,
                scores,
                spans,
            };
            let star = problem.options.star_score;
            let segment = segment_override
                .unwrap_or_else(|| viterbi::segment_frames(x.input_len, 2 * x.labels.len() + 1));
            *score = workspaces::VITERBI_WORKSPACES
                .with(|ws| viterbi::align(&x, star, segment, ws, rows));
        },
    );
    out
}
