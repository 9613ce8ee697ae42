//! Packing a chunk for the device: the `info` words and gradient factors (in the layout
//! `contract.rs` states), the input rows, and the spans of frames its dispatches cover.

use ndarray::{s, ArrayView2};
use rayon::prelude::*;

use super::contract::{
    Header, Sample, Span, FLAG_LOGITS_GRAD, FLAG_LOGITS_INPUT, HEADER, META, SKIP_BIT,
};
use super::plan::Chunk;
use super::GpuFloat;
use crate::gradient::RowScale;
use crate::options::{GradWrt, InputKind};
use crate::problem::Problem;
use crate::threads;

/// Loop iterations one shader invocation may run in one dispatch. llvmpipe (Mesa's software
/// driver, behind lavapipe and its GL driver) ends every loop of a shader once they have run
/// 65535 iterations together, silently; the time loop is therefore split into spans of
/// frames, one dispatch each, estimated to stay below this. The estimate is approximate (the
/// driver's compiler may add iterations), hence the margin; a shader that was cut short
/// anyway says so (`canary` in `lattice.wgsl`) and its chunk runs again with spans half as
/// long (`run.rs`). Spans cost a few microseconds of dispatch each on a GPU and bound how
/// long one dispatch runs, so every device uses them.
const LOOP_BUDGET: usize = 40_000;

/// The spans of frames `[0, F), [F, 2F), ...` up to `t_longest`, one every `stride` bytes
/// (the uniform buffer's offset alignment), as the words of the span buffer.
pub(super) fn spans(t_longest: usize, frames: usize, stride: u64) -> (usize, Vec<u32>) {
    let n_spans = t_longest.div_ceil(frames);
    let words = (stride / 4) as usize;
    let mut buffer = vec![0u32; n_spans * words];
    for (i, slot) in buffer.chunks_exact_mut(words).enumerate() {
        let span = Span {
            t0: (i * frames) as u32,
            t1: ((i + 1) * frames).min(t_longest) as u32,
            two: 2,
        };
        slot[..Span::WORDS].copy_from_slice(bytemuck::cast_slice(&[span]));
    }
    (n_spans, buffer)
}

/// What the device needs to know about a chunk besides the input rows.
pub(super) struct Packed<F> {
    pub info: Vec<u32>,
    pub scales: Vec<F>,
    /// The chunk's frames: the log-sum-exp of frame f is `out[f]` (logits input).
    pub frames: usize,
    /// Per job (dispatch order): offset of its rows in `lp`/`grad` and of its results in
    /// `out`.
    pub rows_at: Vec<usize>,
    pub out_at: Vec<usize>,
}

/// The header, sample records, state codes and label groups of a chunk, and its gradient
/// factors.
pub(super) fn pack_info<F: GpuFloat>(
    problem: &Problem<'_, F>,
    chunk: &Chunk,
    row_scale: RowScale,
) -> Packed<F> {
    let (_, _, classes) = problem.dims();
    let n_jobs = chunk.jobs.len();
    let frames: usize = chunk.jobs.iter().map(|job| job.t_len).sum();
    let mut info = vec![0u32; HEADER + META * n_jobs];
    let mut flags = 0;
    if problem.options.grad_wrt == GradWrt::Logits {
        flags |= FLAG_LOGITS_GRAD;
    }
    if problem.options.input_kind == InputKind::Logits {
        flags |= FLAG_LOGITS_INPUT;
    }
    let header = Header {
        classes: classes as u32,
        blank: problem.blank as u32,
        flags,
        frames: frames as u32,
    };
    info[..HEADER].copy_from_slice(bytemuck::cast_slice(&[header]));
    let mut scales = Vec::with_capacity(n_jobs);
    let mut rows_at = Vec::with_capacity(n_jobs);
    let mut out_at = Vec::with_capacity(n_jobs);
    // `out` starts with one log-sum-exp per frame; each sample's results follow.
    let (mut rows, mut work, mut out) = (0usize, 0usize, frames);
    for (i, job) in chunk.jobs.iter().enumerate() {
        let labels = problem.labels_of(job.n);
        let code_off = info.len();
        info.push(problem.blank as u32);
        for (j, &label) in labels.iter().enumerate() {
            let skip = j > 0 && labels[j - 1] != label;
            info.push(label | if skip { SKIP_BIT } else { 0 });
            info.push(problem.blank as u32);
        }
        // Label groups: each distinct class with the odd states that carry it.
        let mut by_class: Vec<(u32, u32)> = labels
            .iter()
            .enumerate()
            .map(|(j, &label)| (label, 2 * j as u32 + 1))
            .collect();
        by_class.sort_unstable();
        let group_off = info.len();
        let list_off = group_off + 3 * job.groups;
        info.resize(list_off, 0);
        let mut g = 0;
        let mut start = 0;
        while start < by_class.len() {
            let class = by_class[start].0;
            let end = start + by_class[start..].partition_point(|&(c, _)| c == class);
            info[group_off + 3 * g] = class;
            info[group_off + 3 * g + 1] = (list_off + start) as u32;
            info[group_off + 3 * g + 2] = (end - start) as u32;
            g += 1;
            start = end;
        }
        debug_assert_eq!(g, job.groups);
        info.extend(by_class.iter().map(|&(_, s)| s));

        let record = Sample {
            lp_off: rows as u32,
            t_len: job.t_len as u32,
            states: job.states as u32,
            code_off: code_off as u32,
            group_off: group_off as u32,
            n_groups: job.groups as u32,
            work_off: work as u32,
            ckpt: job.ckpt as u32,
            out_off: out as u32,
            frame_off: (rows / classes) as u32,
        };
        let at = HEADER + META * i;
        info[at..at + META].copy_from_slice(bytemuck::cast_slice(&[record]));
        scales.push(F::from_f64(row_scale.of(problem, job.n)));
        rows_at.push(rows);
        out_at.push(out);
        rows += job.rows;
        work += job.work;
        out += job.out - job.t_len;
    }
    Packed {
        info,
        scales,
        frames,
        rows_at,
        out_at,
    }
}

/// How many frames one dispatch may cover so that no invocation exceeds [`LOOP_BUDGET`] loop
/// iterations: a bound on each loop of `lattice.wgsl` per frame, at the worst sample.
pub(super) fn frames_per_span<F>(
    problem: &Problem<'_, F>,
    chunk: &Chunk,
    workgroup_size: usize,
) -> usize {
    let (_, _, classes) = problem.dims();
    // Iterations of a loop over n items strided by the workgroup, plus its exit test.
    let per = |n: usize| n.div_ceil(workgroup_size) + 1;
    let reduction = workgroup_size.ilog2() as usize + 1;
    let mut worst = 1;
    let mut fixed = 0;
    for job in &chunk.jobs {
        let labels = problem.labels_of(job.n);
        // Each invocation sums the states of the label groups g = lid, lid + WG, ...
        let mut sizes: Vec<(u32, usize)> = Vec::new();
        let mut sorted = labels.to_vec();
        sorted.sort_unstable();
        for class in sorted {
            match sizes.last_mut() {
                Some((c, count)) if *c == class => *count += 1,
                _ => sizes.push((class, 1)),
            }
        }
        let mut load = vec![0usize; workgroup_size];
        for (g, &(_, count)) in sizes.iter().enumerate() {
            load[g % workgroup_size] += count + 1;
        }
        let groups = per(job.groups + 1) + load.iter().max().copied().unwrap_or(0);
        let states = per(job.states);
        let forward = 1 + per(job.groups + 1) + states + reduction;
        let mut backward = 1 + 2 * states + groups + per(classes) + reduction;
        if job.ckpt > 1 {
            // Recomputing k - 1 rows every k frames, and once per span up to k rows at once.
            backward += states + 1;
            fixed = fixed.max(job.ckpt * (states + 1));
        }
        worst = worst.max(forward).max(backward);
    }
    (LOOP_BUDGET.saturating_sub(fixed) / worst).max(1)
}

/// Bytes of input rows one task of [`pack_rows`] copies: large enough that the thread pool's
/// overhead (a few microseconds a task) is lost in the copy, small enough that a batch of a
/// few long samples still splits evenly over the threads. A chunk up to this size is copied
/// on the calling thread.
const PIECE_BYTES: usize = 256 << 10;

/// Writes each job's input rows, back to back in dispatch order, into `dst` (the mapped
/// upload buffer). On a host with many memory channels one core does not saturate them, so
/// `dst` is split into disjoint pieces of about [`PIECE_BYTES`] (whole rows of one sample),
/// copied on the crate's thread pool. (On the 2-vCPU development VM one thread already copies
/// as fast as two, about 7.5 GB/s: there the split neither helps nor costs.)
pub(super) fn pack_rows<F: GpuFloat>(
    problem: &Problem<'_, F>,
    chunk: &Chunk,
    dst: wgpu::WriteOnly<'_, [u8]>,
) {
    pack_rows_in_pieces(problem, chunk, dst, PIECE_BYTES);
}

/// [`pack_rows`] with pieces of about `piece_bytes` (the tests make them small).
fn pack_rows_in_pieces<F: GpuFloat>(
    problem: &Problem<'_, F>,
    chunk: &Chunk,
    dst: wgpu::WriteOnly<'_, [u8]>,
    piece_bytes: usize,
) {
    let (_, _, classes) = problem.dims();
    let row_bytes = classes * std::mem::size_of::<F>();
    let rows_per_piece = (piece_bytes / row_bytes.max(1)).max(1);
    // Each piece owns its disjoint part of the mapping (split_at), so threads write it
    // without sharing anything.
    let mut pieces = Vec::new();
    let mut rest = dst;
    for job in &chunk.jobs {
        let mut t0 = 0;
        while t0 < job.t_len {
            let t1 = (t0 + rows_per_piece).min(job.t_len);
            let (piece, tail) = rest.split_at((t1 - t0) * row_bytes);
            pieces.push(Piece {
                n: job.n,
                frames: t0..t1,
                dst: piece,
            });
            rest = tail;
            t0 = t1;
        }
    }
    let copy = |piece: Piece<'_>| {
        copy_rows(
            problem.log_probs.slice(s![piece.frames, piece.n, ..]),
            piece.dst,
        );
    };
    if pieces.len() <= 1 {
        pieces.into_iter().for_each(copy);
    } else {
        threads::install(|| pieces.into_par_iter().for_each(copy));
    }
}

/// Frames `frames` of sample `n`, and the part of the upload buffer they go to.
struct Piece<'a> {
    n: usize,
    frames: std::ops::Range<usize>,
    dst: wgpu::WriteOnly<'a, [u8]>,
}

// SAFETY: a `WriteOnly<'_, [u8]>` is an exclusive, write-only borrow of its bytes, like a
// `&mut [u8]`, which is `Send`. wgpu 30.0.1 declares `Send` for `WriteOnly<'_, T>` only for
// sized `T` (an implicit `Sized` bound, gfx-rs/wgpu#10156, fixed upstream by #10163); drop
// this once the crate is on a wgpu with that fix. `n` and `frames` are plain values.
unsafe impl Send for Piece<'_> {}

/// Copies `src`'s rows back to back into `dst`: one copy when they are one contiguous block
/// (one sample of a batch-first input, or a batch of one), else one per row, gathering a row
/// whose classes are strided.
fn copy_rows<F: GpuFloat>(src: ArrayView2<'_, F>, mut dst: wgpu::WriteOnly<'_, [u8]>) {
    if let Some(block) = src.as_slice() {
        dst.copy_from_slice(bytemuck::cast_slice(block));
        return;
    }
    let row_bytes = src.ncols() * std::mem::size_of::<F>();
    let mut gathered: Vec<F> = Vec::new();
    for row in src.outer_iter() {
        let (mut out, tail) = dst.split_at(row_bytes);
        match row.as_slice() {
            Some(row) => out.copy_from_slice(bytemuck::cast_slice(row)),
            None => {
                gathered.clear();
                gathered.extend(row.iter().copied());
                out.copy_from_slice(bytemuck::cast_slice(&gathered));
            }
        }
        dst = tail;
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array1, Array3, ArrayView3};

    use super::super::plan::{self, Budget, Job};
    use super::*;
    use crate::options::Options;
    use crate::problem::{validate, Targets};

    /// Packs `log_probs` (any strides) with pieces of `piece_bytes`, and checks the buffer
    /// against the rows read one element at a time, in the chunk's dispatch order.
    fn check(log_probs: ArrayView3<'_, f32>, piece_bytes: usize) {
        let (t, n, c) = log_probs.dim();
        let input_lengths = Array1::from_shape_fn(n, |i| (t - i % t.max(1)) as i64);
        let targets = Array1::<i64>::zeros(0);
        let target_lengths = Array1::<i64>::zeros(n);
        let problem = validate(
            log_probs,
            Targets::Concatenated(targets.view()),
            input_lengths.view(),
            target_lengths.view(),
            0,
            Options::default(),
        )
        .unwrap();
        let budget = Budget {
            buffer_bytes: 1 << 30,
            workgroups: 65535,
        };
        let jobs = (0..n)
            .map(|i| Job::new(i, input_lengths[i] as usize, &[], c, true, 4, budget).unwrap())
            .collect();
        let chunks = plan::plan(jobs, budget, 4);
        assert_eq!(chunks.len(), 1);
        let chunk = &chunks[0];
        let mut expected: Vec<f32> = Vec::new();
        for job in &chunk.jobs {
            for frame in 0..job.t_len {
                expected.extend((0..c).map(|k| log_probs[[frame, job.n, k]]));
            }
        }
        let mut buffer = vec![0xAAu8; chunk.rows * 4 + 8];
        pack_rows_in_pieces(
            &problem,
            chunk,
            (&mut buffer[..chunk.rows * 4]).into(),
            piece_bytes,
        );
        let packed: Vec<f32> = buffer[..chunk.rows * 4]
            .chunks_exact(4)
            .map(|b| f32::from_ne_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(packed, expected, "piece_bytes {piece_bytes}");
        assert!(
            buffer[chunk.rows * 4..].iter().all(|&b| b == 0xAA),
            "wrote past the rows"
        );
    }

    #[test]
    fn rows_are_packed_in_dispatch_order_for_any_strides_and_pieces() {
        let (t, n, c) = (37, 5, 6);
        let values =
            Array3::from_shape_fn((t, n, 2 * c), |(i, j, k)| -((i * 1000 + j * 50 + k) as f32));
        let tnc = values.slice(s![.., .., ..c]).to_owned();
        let ntc = tnc.view().permuted_axes([1, 0, 2]).to_owned();
        let ntc_as_tnc = ntc.view().permuted_axes([1, 0, 2]); // each sample one block
        let strided = values.slice(s![.., .., ..;2]); // classes two apart: gathered rows
        let one = tnc.slice(s![.., 2..3, ..]); // a batch of one: one block
        for piece_bytes in [1, 3 * c * 4, 7 * c * 4 + 5, PIECE_BYTES] {
            check(tnc.view(), piece_bytes);
            check(ntc_as_tnc, piece_bytes);
            check(strided, piece_bytes);
            check(one, piece_bytes);
        }
    }
}
