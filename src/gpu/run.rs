//! One call on the device: pack each chunk's inputs, upload them, run the forward and backward
//! kernels, read the results back and unpack them, all in one command submission per chunk.
//!
//! Samples the lattice has nothing to do for (no frames, or fewer frames than the target
//! needs) are settled on the host; so are the gradient rows of samples whose loss is not
//! finite.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use ndarray::{s, Array3, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::context::{Context, Kernels, SPAN_BYTES};
use super::plan::{self, Budget, Chunk, Job, HEADER, META};
use super::GpuFloat;
use crate::error::CtcError;
use crate::options::{GradWrt, InputKind, Layout, Reduction};
use crate::output::CtcOutput;
use crate::problem::Problem;
use crate::threads;

/// The largest buffer a chunk uses unless `FASTCTC_GPU_CHUNK_BYTES` says otherwise (never
/// more than the device allows): big enough that chunking costs nothing measurable, small
/// enough to leave room on modest GPUs.
const DEFAULT_CHUNK_BYTES: u64 = 256 << 20;

/// Loop iterations one shader invocation may run in one dispatch. llvmpipe (Mesa's software
/// driver, behind lavapipe and its GL driver) ends every loop of a shader once they have run
/// 65535 iterations together, silently; the time loop is therefore split into spans of
/// frames, one dispatch each, estimated to stay below this. The estimate is approximate (the
/// driver's compiler may add iterations), hence the margin; a shader that was cut short
/// anyway says so (`canary` in `lattice.wgsl`) and its chunk runs again with spans half as
/// long. Spans cost a few microseconds of dispatch each on a GPU and bound how long one
/// dispatch runs, so every device uses them.
const LOOP_BUDGET: usize = 40_000;

/// Buffers larger than this in total are released after the call rather than kept for the
/// next: repeated calls of ordinary sizes reuse their buffers, one huge batch does not pin
/// gigabytes.
const RETAIN_BYTES: u64 = 512 << 20;

/// Wall-clock seconds spent in each phase of a profiled call, summed over chunks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    /// Building each chunk's sample records and copying its input rows into one buffer.
    pub pack: f64,
    /// Host to device: the buffer writes, submitted and waited for.
    pub upload: f64,
    /// The forward and backward kernels, submitted and waited for.
    pub compute: f64,
    /// Device to host: the copies into mappable buffers, and mapping them.
    pub readback: f64,
    /// Copying gradient rows into the `(T, N, C)` output, and the losses.
    pub unpack: f64,
    pub chunks: usize,
}

/// Buffers kept between calls (see `Context::cache`).
#[derive(Default)]
pub(crate) struct Cache {
    buffers: Option<Buffers>,
}

struct Buffers {
    /// Binding order: info, scales, lp, grad, work, out.
    storage: [wgpu::Buffer; 6],
    /// One `Span` every `span_stride` bytes.
    spans: wgpu::Buffer,
    /// Host-visible staging for `lp`: packed in place while mapped, then copied on the device.
    upload: wgpu::Buffer,
    read_grad: wgpu::Buffer,
    read_out: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
}

const INFO: usize = 0;
const SCALES: usize = 1;
const LP: usize = 2;
const GRAD: usize = 3;
const WORK: usize = 4;
const OUT: usize = 5;

impl Cache {
    /// Releases the buffers when they hold more than [`RETAIN_BYTES`] together.
    fn trim(&mut self) {
        let total: u64 = self.buffers.as_ref().map_or(0, |b| {
            b.storage.iter().map(wgpu::Buffer::size).sum::<u64>()
                + b.spans.size()
                + b.upload.size()
                + b.read_grad.size()
                + b.read_out.size()
        });
        if total > RETAIN_BYTES {
            self.buffers = None;
        }
    }

    /// Buffers of at least `sizes` bytes (binding order), reusing the cached ones that are
    /// large enough.
    fn ensure(&mut self, ctx: &Context, sizes: [u64; 6], span_bytes: u64, limit: u64) -> &Buffers {
        let fits = |b: &Buffers| {
            b.spans.size() >= span_bytes
                && b.storage
                    .iter()
                    .zip(sizes)
                    .all(|(buffer, size)| buffer.size() >= size)
        };
        if self.buffers.as_ref().is_some_and(fits) {
            return self.buffers.as_ref().expect("checked above");
        }
        let old = self.buffers.take();
        // Grow with a quarter to spare, so that batches of varying lengths reuse buffers.
        let capacity = |i: usize| {
            let size = sizes[i].max(16);
            match &old {
                Some(b) if b.storage[i].size() >= size => b.storage[i].size(),
                _ => (size + size / 4).min(limit.max(size)).next_multiple_of(16),
            }
        };
        let device = &ctx.device;
        let make = |label: &str, size: u64, usage: wgpu::BufferUsages| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        };
        let input = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let output = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let read = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let keep = |i: usize, label: &str, usage| match &old {
            Some(b) if b.storage[i].size() >= sizes[i].max(16) => b.storage[i].clone(),
            _ => make(label, capacity(i), usage),
        };
        let storage = [
            keep(INFO, "fastctc info", input),
            keep(SCALES, "fastctc scales", input),
            keep(LP, "fastctc log_probs", input),
            keep(GRAD, "fastctc grad", output),
            keep(WORK, "fastctc work", wgpu::BufferUsages::STORAGE),
            keep(OUT, "fastctc out", output),
        ];
        let read_grad = match &old {
            Some(b) if b.read_grad.size() >= storage[GRAD].size() => b.read_grad.clone(),
            _ => make("fastctc grad readback", storage[GRAD].size(), read),
        };
        let read_out = match &old {
            Some(b) if b.read_out.size() >= storage[OUT].size() => b.read_out.clone(),
            _ => make("fastctc out readback", storage[OUT].size(), read),
        };
        let upload = match &old {
            Some(b) if b.upload.size() >= storage[LP].size() => b.upload.clone(),
            _ => make(
                "fastctc log_probs upload",
                storage[LP].size(),
                wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
            ),
        };
        let spans = match &old {
            Some(b) if b.spans.size() >= span_bytes => b.spans.clone(),
            _ => make(
                "fastctc spans",
                span_bytes.next_power_of_two(),
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            ),
        };
        let mut entries: Vec<wgpu::BindGroupEntry<'_>> = storage
            .iter()
            .enumerate()
            .map(|(i, buffer)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: buffer.as_entire_binding(),
            })
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: 6,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &spans,
                offset: 0,
                size: wgpu::BufferSize::new(SPAN_BYTES),
            }),
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("fastctc lattice"),
            layout: &ctx.layout,
            entries: &entries,
        });
        self.buffers.insert(Buffers {
            storage,
            spans,
            upload,
            read_grad,
            read_out,
            bind_group,
        })
    }
}

/// The fewest frames that can emit `labels`: one per label, one blank between equal
/// neighbours.
fn min_frames(labels: &[u32]) -> usize {
    labels.len() + labels.windows(2).filter(|w| w[0] == w[1]).count()
}

/// The reduction's gradient factor for sample `n` (as the CPU backend applies it).
pub(crate) fn grad_scale<F>(problem: &Problem<'_, F>, n: usize) -> f64 {
    match problem.options.reduction {
        Reduction::None | Reduction::Sum => 1.0,
        Reduction::Mean => {
            let batch = problem.samples.len() as f64;
            1.0 / (batch * problem.samples[n].target_len().max(1) as f64)
        }
    }
}

/// The budget of one chunk on this device.
fn budget(ctx: &Context) -> Budget {
    let device_limit = ctx
        .limits
        .max_storage_buffer_binding_size
        .min(ctx.limits.max_buffer_size)
        .min(u64::from(u32::MAX));
    let wanted = std::env::var("FASTCTC_GPU_CHUNK_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&v| v > 0)
        .unwrap_or(DEFAULT_CHUNK_BYTES);
    Budget {
        buffer_bytes: wanted.min(device_limit) / 8 * 8,
        workgroups: ctx.limits.max_compute_workgroups_per_dimension.max(1),
    }
}

/// What the device needs to know about a chunk besides the input rows.
struct Packed<F> {
    info: Vec<u32>,
    scales: Vec<F>,
    /// The chunk's frames: the log-sum-exp of frame f is `out[f]` (logits input).
    frames: usize,
    /// Per job (dispatch order): offset of its rows in `lp`/`grad` and of its results in
    /// `out`.
    rows_at: Vec<usize>,
    out_at: Vec<usize>,
}

fn pack_info<F: GpuFloat>(
    problem: &Problem<'_, F>,
    chunk: &Chunk,
    scale_of: &(dyn Fn(usize) -> f64 + Sync),
) -> Packed<F> {
    let (_, _, classes) = problem.dims();
    let n_jobs = chunk.jobs.len();
    let frames: usize = chunk.jobs.iter().map(|job| job.t_len).sum();
    let mut info = vec![0u32; HEADER + META * n_jobs];
    info[0] = classes as u32;
    info[1] = problem.blank as u32;
    info[2] = u32::from(problem.options.grad_wrt == GradWrt::Logits)
        | (u32::from(problem.options.input_kind == InputKind::Logits) << 1);
    info[3] = frames as u32;
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
            info.push(label | if skip { 1 << 31 } else { 0 });
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

        let record = [
            rows,
            job.t_len,
            job.states,
            code_off,
            group_off,
            job.groups,
            work,
            job.ckpt,
            out,
            rows / classes,
        ];
        for (k, value) in record.into_iter().enumerate() {
            info[HEADER + META * i + k] = value as u32;
        }
        scales.push(F::from_f64(scale_of(job.n)));
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
fn frames_per_span<F>(problem: &Problem<'_, F>, chunk: &Chunk, workgroup_size: usize) -> usize {
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

/// Writes each job's input rows, back to back in dispatch order, into `dst` (the mapped
/// upload buffer): one copy from the caller's array. (Sequential: a mapped range cannot be
/// shared between threads, and the copy is bound by memory bandwidth anyway.)
fn pack_rows<F: GpuFloat>(problem: &Problem<'_, F>, chunk: &Chunk, dst: wgpu::WriteOnly<'_, [u8]>) {
    let (_, _, classes) = problem.dims();
    let row_bytes = classes * std::mem::size_of::<F>();
    let mut rest = dst;
    let mut gathered: Vec<F> = Vec::new();
    for job in &chunk.jobs {
        for src in problem
            .log_probs
            .slice(s![..job.t_len, job.n, ..])
            .outer_iter()
        {
            let (mut row, tail) = rest.split_at(row_bytes);
            match src.as_slice() {
                Some(src) => row.copy_from_slice(bytemuck::cast_slice(src)),
                None => {
                    gathered.clear();
                    gathered.extend(src.iter().copied());
                    row.copy_from_slice(bytemuck::cast_slice(&gathered));
                }
            }
            rest = tail;
        }
    }
}

fn gpu_error(what: &str, error: impl std::fmt::Display) -> CtcError {
    CtcError::Gpu {
        message: format!("{what}: {error}"),
    }
}

fn wait(ctx: &Context) -> Result<(), CtcError> {
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|e| gpu_error("waiting for the GPU failed", e))
}

/// Maps the first `bytes` of each buffer and waits until they are.
fn map(
    ctx: &Context,
    buffers: &[(&wgpu::Buffer, u64)],
    mode: wgpu::MapMode,
) -> Result<(), CtcError> {
    let (tx, rx) = mpsc::channel();
    for &(buffer, bytes) in buffers {
        let tx = tx.clone();
        buffer.slice(..bytes).map_async(mode, move |result| {
            let _ = tx.send(result);
        });
    }
    drop(tx);
    wait(ctx)?;
    for _ in buffers {
        rx.recv()
            .map_err(|e| gpu_error("reading results back failed", e))?
            .map_err(|e| gpu_error("reading results back failed", e))?;
    }
    Ok(())
}

/// Runs a validated batch on the device; `scale_of(n)` is the factor of sample `n`'s gradient
/// rows. With `timings`, each phase is submitted and waited for on its own, so that it can be
/// timed; otherwise each chunk is one submission.
pub(crate) fn run<F: GpuFloat>(
    ctx: &Context,
    kernels: &Kernels,
    problem: &Problem<'_, F>,
    with_grad: bool,
    scale_of: &(dyn Fn(usize) -> f64 + Sync),
    mut timings: Option<&mut Timings>,
) -> Result<CtcOutput<F>, CtcError> {
    let (t_max, batch, classes) = problem.dims();
    let elem = std::mem::size_of::<F>();
    let budget = budget(ctx);

    // Log-likelihoods; the samples the lattice has nothing to do for are settled here.
    let mut log_liks = vec![f64::NAN; batch];
    let mut jobs = Vec::new();
    for (n, sample) in problem.samples.iter().enumerate() {
        let labels = problem.labels_of(n);
        if sample.input_len == 0 {
            log_liks[n] = if labels.is_empty() {
                0.0
            } else {
                f64::NEG_INFINITY
            };
        } else if sample.input_len < min_frames(labels) {
            log_liks[n] = f64::NEG_INFINITY;
        } else {
            jobs.push(Job::new(
                n,
                sample.input_len,
                labels,
                classes,
                with_grad,
                elem,
                budget,
            )?);
        }
    }
    let chunks = plan::plan(jobs, budget, elem);

    let mut grad = match with_grad {
        true => {
            let len = t_max * batch * classes;
            let zeros = match crate::buffers::take::<F>(len) {
                // A recycled buffer (see crate::buffers) holds stale values, and unpacking
                // writes only the rows inside each input length: clear it, which costs
                // less than faulting in fresh pages.
                Some(mut buffer) => {
                    threads::install(|| {
                        buffer
                            .par_chunks_mut(1 << 16)
                            .for_each(|chunk| chunk.fill(F::ZERO))
                    });
                    buffer
                }
                // vec! of zeros is calloc: frames past an input length cost nothing.
                None => vec![F::ZERO; len],
            };
            let shape = match problem.options.layout {
                Layout::Tnc => (t_max, batch, classes),
                Layout::Ntc => (batch, t_max, classes),
            };
            Some(
                Array3::from_shape_vec(shape, zeros)
                    .map_err(|e| gpu_error("allocating the gradient failed", e))?,
            )
        }
        false => None,
    };
    let logits_input = problem.options.input_kind == InputKind::Logits;
    let stride = u64::from(ctx.limits.min_uniform_buffer_offset_alignment).max(SPAN_BYTES);
    let mut cache = ctx.cache.lock().unwrap_or_else(|e| e.into_inner());
    for chunk in &chunks {
        let mut clock = Instant::now();
        let mut lap = |slot: fn(&mut Timings) -> &mut f64, timings: &mut Option<&mut Timings>| {
            if let Some(t) = timings.as_deref_mut() {
                *slot(t) += clock.elapsed().as_secs_f64();
                clock = Instant::now();
            }
        };
        let packed = pack_info(problem, chunk, scale_of);

        let rows_bytes = (chunk.rows * elem) as u64;
        let out_bytes = (chunk.out * elem) as u64;
        let sizes = [
            (packed.info.len() * 4) as u64,
            (packed.scales.len() * elem) as u64,
            rows_bytes,
            if with_grad { rows_bytes } else { 0 },
            (chunk.work * elem) as u64,
            out_bytes,
        ];
        let t_longest = chunk.jobs.iter().map(|job| job.t_len).max().unwrap_or(1);
        let estimate = std::env::var("FASTCTC_GPU_SPAN_FRAMES")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&v| v > 0)
            .unwrap_or_else(|| frames_per_span(problem, chunk, ctx.info.workgroup_size as usize));
        let mut frames = (estimate / ctx.span_divisor.load(Ordering::Relaxed)).max(1);
        let mut packed_rows = false;
        let buffers = loop {
            // Spans of frames [0, F), [F, 2F), ... up to the chunk's longest input.
            let n_spans = t_longest.div_ceil(frames);
            let words = (stride / 4) as usize;
            let mut spans = vec![0u32; n_spans * words];
            for (i, span) in spans.chunks_exact_mut(words).enumerate() {
                span[0] = (i * frames) as u32;
                span[1] = ((i + 1) * frames).min(t_longest) as u32;
                span[2] = 2;
            }
            let buffers = cache.ensure(ctx, sizes, (spans.len() * 4) as u64, budget.buffer_bytes);
            let queue = &ctx.queue;
            if !packed_rows && rows_bytes > 0 {
                // The input rows go straight into the mapped upload buffer.
                map(ctx, &[(&buffers.upload, rows_bytes)], wgpu::MapMode::Write)?;
                {
                    let mut view = buffers
                        .upload
                        .slice(..rows_bytes)
                        .get_mapped_range_mut()
                        .map_err(|e| gpu_error("writing the input failed", e))?;
                    pack_rows(problem, chunk, view.slice(..));
                }
                buffers.upload.unmap();
                packed_rows = true;
            }
            queue.write_buffer(&buffers.spans, 0, bytemuck::cast_slice(&spans));
            queue.write_buffer(
                &buffers.storage[INFO],
                0,
                bytemuck::cast_slice(&packed.info),
            );
            queue.write_buffer(
                &buffers.storage[SCALES],
                0,
                bytemuck::cast_slice(&packed.scales),
            );
            lap(|t| &mut t.pack, &mut timings);

            let mut encoder = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("fastctc"),
                });
            if rows_bytes > 0 {
                encoder.copy_buffer_to_buffer(
                    &buffers.upload,
                    0,
                    &buffers.storage[LP],
                    0,
                    rows_bytes,
                );
            }
            if timings.is_some() {
                queue.submit([encoder.finish()]);
                wait(ctx)?;
                lap(|t| &mut t.upload, &mut timings);
                encoder = ctx
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("fastctc"),
                    });
            }
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("fastctc lattice"),
                    timestamp_writes: None,
                });
                let offset = |i: usize| [(i as u64 * stride) as u32];
                let workgroups = chunk.jobs.len() as u32;
                if logits_input {
                    // One workgroup per frame, in rows of at most `workgroups` per dimension.
                    let width = packed.frames.min(budget.workgroups as usize).max(1);
                    pass.set_pipeline(&kernels.normalise);
                    pass.set_bind_group(0, &buffers.bind_group, &offset(0));
                    pass.dispatch_workgroups(width as u32, packed.frames.div_ceil(width) as u32, 1);
                }
                pass.set_pipeline(&kernels.forward);
                for i in 0..n_spans {
                    pass.set_bind_group(0, &buffers.bind_group, &offset(i));
                    pass.dispatch_workgroups(workgroups, 1, 1);
                }
                if with_grad {
                    pass.set_pipeline(&kernels.backward);
                    for i in (0..n_spans).rev() {
                        pass.set_bind_group(0, &buffers.bind_group, &offset(i));
                        pass.dispatch_workgroups(workgroups, 1, 1);
                    }
                }
            }
            if timings.is_some() {
                queue.submit([encoder.finish()]);
                wait(ctx)?;
                lap(|t| &mut t.compute, &mut timings);
                encoder = ctx
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("fastctc readback"),
                    });
            }
            encoder.copy_buffer_to_buffer(
                &buffers.storage[OUT],
                0,
                &buffers.read_out,
                0,
                out_bytes,
            );
            let mut to_map = vec![(&buffers.read_out, out_bytes)];
            if with_grad && rows_bytes > 0 {
                encoder.copy_buffer_to_buffer(
                    &buffers.storage[GRAD],
                    0,
                    &buffers.read_grad,
                    0,
                    rows_bytes,
                );
                to_map.push((&buffers.read_grad, rows_bytes));
            }
            queue.submit([encoder.finish()]);
            map(ctx, &to_map, wgpu::MapMode::Read)?;
            lap(|t| &mut t.readback, &mut timings);

            let cut = {
                let view = buffers
                    .read_out
                    .slice(..out_bytes)
                    .get_mapped_range()
                    .map_err(|e| gpu_error("reading results back failed", e))?;
                let out: &[F] = bytemuck::cast_slice(&view);
                let cut = chunk
                    .jobs
                    .iter()
                    .zip(&packed.out_at)
                    .any(|(job, &at)| out[at + job.t_len + 3] != F::ZERO);
                if !cut {
                    for (job, &at) in chunk.jobs.iter().zip(&packed.out_at) {
                        log_liks[job.n] = log_likelihood(&out[at..at + job.t_len + 2]);
                    }
                }
                cut
            };
            buffers.read_out.unmap();
            if !cut {
                break buffers;
            }
            if with_grad && rows_bytes > 0 {
                buffers.read_grad.unmap();
            }
            if frames == 1 {
                return Err(CtcError::Gpu {
                    message: "the driver stopped the lattice kernel's loops early even with \
                              one frame per dispatch (a software driver's loop limit?); use \
                              device='cpu'"
                        .to_owned(),
                });
            }
            // The driver cut loops short (llvmpipe's limit): halve the spans and run again.
            frames = (frames / 2).max(1);
            ctx.span_divisor
                .fetch_max((estimate / frames).max(1), Ordering::Relaxed);
        };

        if let Some(grad) = grad.as_mut() {
            if rows_bytes > 0 {
                let view = buffers
                    .read_grad
                    .slice(..rows_bytes)
                    .get_mapped_range()
                    .map_err(|e| gpu_error("reading the gradient back failed", e))?;
                let rows: &[F] = bytemuck::cast_slice(&view);
                let mut source: Vec<Option<&[F]>> = vec![None; batch];
                for (job, &at) in chunk.jobs.iter().zip(&packed.rows_at) {
                    if log_liks[job.n].is_finite() {
                        source[job.n] = Some(&rows[at..at + job.rows]);
                    }
                }
                unpack(grad, problem.options.layout, &source, classes);
                drop(view);
                buffers.read_grad.unmap();
            }
        }
        lap(|t| &mut t.unpack, &mut timings);
        if let Some(t) = timings.as_deref_mut() {
            t.chunks += 1;
        }
    }
    cache.trim();
    drop(cache);

    if let Some(grad) = grad.as_mut() {
        // Rows of samples without a finite loss: NaN, or 0 under zero_infinity when no
        // alignment exists (a NaN loss stays NaN).
        for (n, sample) in problem.samples.iter().enumerate() {
            let ll = log_liks[n];
            if ll.is_finite() || sample.input_len == 0 {
                continue;
            }
            let fill = if ll == f64::NEG_INFINITY && problem.options.zero_infinity {
                F::ZERO
            } else {
                F::NAN
            };
            match problem.options.layout {
                Layout::Tnc => grad.slice_mut(s![..sample.input_len, n, ..]).fill(fill),
                Layout::Ntc => grad.slice_mut(s![n, ..sample.input_len, ..]).fill(fill),
            }
        }
    }
    let losses = log_liks.iter().map(|&ll| -ll).collect();
    Ok(CtcOutput::new(problem, losses, grad))
}

/// A sample's log-likelihood from its slice of `out`: the frame maxima (all but the last),
/// the end term and the status.
fn log_likelihood<F: GpuFloat>(out: &[F]) -> f64 {
    let t_len = out.len() - 2;
    let status = out[t_len + 1].to_f64();
    if status == 0.0 {
        out[..t_len - 1].iter().map(|v| v.to_f64()).sum::<f64>() + out[t_len].to_f64()
    } else if status == 1.0 {
        f64::NAN
    } else {
        f64::NEG_INFINITY
    }
}

/// Copies each sample's packed gradient rows into its frames of the output (`(T, N, C)`, or
/// `(N, T, C)` for the batch-major layout).
fn unpack<F: GpuFloat>(
    grad: &mut Array3<F>,
    layout: Layout,
    source: &[Option<&[F]>],
    classes: usize,
) {
    let batch_axis = match layout {
        Layout::Tnc => Axis(1),
        Layout::Ntc => Axis(0),
    };
    let mut views: Vec<(ArrayViewMut2<'_, F>, &[F])> = grad
        .axis_iter_mut(batch_axis)
        .zip(source)
        .filter_map(|(view, src)| src.map(|src| (view, src)))
        .collect();
    threads::install(|| {
        views.par_iter_mut().for_each(|(view, src)| {
            for (mut row, values) in view.outer_iter_mut().zip(src.chunks_exact(classes)) {
                match row.as_slice_mut() {
                    Some(row) => row.copy_from_slice(values),
                    None => row.iter_mut().zip(values).for_each(|(d, &v)| *d = v),
                }
            }
        });
    });
}
