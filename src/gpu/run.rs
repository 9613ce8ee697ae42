//! One call on the device: settle the samples the lattice has nothing to do for, split the
//! rest into chunks (`plan.rs`), and run each chunk in one command submission: pack and
//! upload its inputs (`pack.rs`, into `cache.rs`'s buffers), run the forward and backward
//! kernels, read the results back and unpack them.
//!
//! A driver that cuts the kernels' loops short (llvmpipe) is detected by the shader, and the
//! chunk runs again with shorter spans (`run_chunk`); profiling (`profile.rs`) only adds
//! waits between the phases.

use std::sync::atomic::Ordering;
use std::sync::mpsc;

use ndarray::{s, ArrayViewMut2, ArrayViewMut3, Axis};
use rayon::prelude::*;

use super::cache::{Buffers, Cache, GRAD, INFO, LP, OUT, SCALES};
use super::context::{Context, Kernels};
use super::contract::{out, status, SPAN_BYTES, WORK_CELL_BYTES};
use super::pack::{self, Packed};
use super::plan::{self, Budget, Chunk, Job};
use super::profile::{Phase, Phases, Timings};
use super::GpuFloat;
use crate::error::CtcError;
use crate::gradient::{self, Gradient, RowScale};
use crate::options::InputKind;
use crate::output::CtcOutput;
use crate::problem::Problem;
use crate::threads;

/// The largest buffer a chunk uses unless `FASTCTC_GPU_CHUNK_BYTES` says otherwise (never
/// more than the device allows): big enough that chunking costs nothing measurable, small
/// enough to leave room on modest GPUs.
const DEFAULT_CHUNK_BYTES: u64 = 256 << 20;

/// What one call computes on the device.
pub(crate) struct Call<'a, 'p, F> {
    pub ctx: &'a Context,
    pub kernels: &'a Kernels,
    pub problem: &'a Problem<'p, F>,
    pub with_grad: bool,
    pub row_scale: RowScale,
}

/// Runs a validated batch on the device. With `timings`, each phase is submitted and waited
/// for on its own, so that it can be timed; otherwise each chunk is one submission.
pub(crate) fn run<F: GpuFloat>(
    call: &Call<'_, '_, F>,
    timings: Option<&mut Timings>,
) -> Result<CtcOutput<F>, CtcError> {
    let problem = call.problem;
    let (_, batch, classes) = problem.dims();
    let elem = std::mem::size_of::<F>();
    let budget = budget(call.ctx);

    let mut log_liks = vec![f64::NAN; batch];
    let mut jobs = Vec::new();
    for (n, sample) in problem.samples.iter().enumerate() {
        match problem.settled(n) {
            Some(log_lik) => log_liks[n] = log_lik,
            None => jobs.push(Job::new(
                n,
                sample.input_len,
                problem.labels_of(n),
                classes,
                call.with_grad,
                elem,
                budget,
            )?),
        }
    }
    let chunks = plan::plan(jobs, budget, elem);

    let mut grad = call
        .with_grad
        .then(|| Gradient::allocate(problem))
        .transpose()?;
    if let Some(grad) = grad.as_mut().filter(|g| g.stale) {
        // Unpacking writes only the rows inside each input length: clear a recycled buffer,
        // which costs less than faulting in fresh pages.
        let mut view = grad.tnc_mut();
        let all = view.as_slice_memory_order_mut().expect("a whole buffer");
        threads::install(|| all.par_chunks_mut(1 << 16).for_each(|c| c.fill(F::ZERO)));
    }
    let mut phases = Phases::new(timings);
    let mut cache = call.ctx.cache.lock().unwrap_or_else(|e| e.into_inner());
    for chunk in &chunks {
        phases.start_chunk();
        let mut tnc = grad.as_mut().map(Gradient::tnc_mut);
        run_chunk(
            call,
            chunk,
            budget,
            &mut cache,
            &mut phases,
            &mut log_liks,
            &mut tnc,
        )?;
    }
    cache.trim();
    drop(cache);

    if let Some(grad) = grad.as_mut() {
        let mut tnc = grad.tnc_mut();
        for (n, sample) in problem.samples.iter().enumerate() {
            let fill = gradient::unreachable_fill(log_liks[n], problem.options.zero_infinity);
            if let Some(fill) = fill {
                tnc.slice_mut(s![..sample.input_len, n, ..]).fill(fill);
            }
        }
    }
    let losses = log_liks.iter().map(|&ll| -ll).collect();
    Ok(CtcOutput::new(
        problem,
        losses,
        grad.map(Gradient::into_array),
    ))
}

/// The budget of one chunk on this device.
fn budget(ctx: &Context) -> Budget {
    let device_limit = ctx
        .limits
        .max_storage_buffer_binding_size
        .min(ctx.limits.max_buffer_size)
        .min(u64::from(u32::MAX));
    Budget {
        buffer_bytes: env_number("FASTCTC_GPU_CHUNK_BYTES")
            .unwrap_or(DEFAULT_CHUNK_BYTES)
            .min(device_limit)
            / 8
            * 8,
        workgroups: ctx.limits.max_compute_workgroups_per_dimension.max(1),
    }
}

/// A positive number from the environment (a tuning or testing knob), else `None`.
fn env_number<T: std::str::FromStr + PartialOrd + Default>(name: &str) -> Option<T> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<T>().ok())
        .filter(|v| *v > T::default())
}

/// Runs one chunk, again with spans half as long while the driver cuts loops short, and
/// stores its log-likelihoods and gradient rows.
fn run_chunk<F: GpuFloat>(
    call: &Call<'_, '_, F>,
    chunk: &Chunk,
    budget: Budget,
    cache: &mut Cache,
    phases: &mut Phases<'_>,
    log_liks: &mut [f64],
    grad: &mut Option<ArrayViewMut3<'_, F>>,
) -> Result<(), CtcError> {
    let ctx = call.ctx;
    let packed = pack::pack_info(call.problem, chunk, call.row_scale);
    // `FASTCTC_GPU_SPAN_FRAMES` overrides the estimate (tests use it to force many spans).
    let estimate = env_number("FASTCTC_GPU_SPAN_FRAMES").unwrap_or_else(|| {
        pack::frames_per_span(call.problem, chunk, ctx.info.workgroup_size as usize)
    });
    let mut frames = (estimate / ctx.span_divisor.load(Ordering::Relaxed)).max(1);
    let mut rows_uploaded = false;
    loop {
        let attempt = Attempt {
            call,
            chunk,
            packed: &packed,
            frames,
        };
        let buffers = cache.ensure(
            ctx,
            attempt.sizes(),
            attempt.span_bytes(),
            budget.buffer_bytes,
        );
        if !rows_uploaded {
            attempt.upload_rows(buffers)?;
            rows_uploaded = true;
        }
        if attempt.submit(buffers, phases)? {
            attempt.store(buffers, log_liks, grad)?;
            phases.lap(Phase::Unpack);
            return Ok(());
        }
        if frames == 1 {
            return Err(CtcError::Gpu {
                message: "the driver stopped the lattice kernel's loops early even with one \
                          frame per dispatch (a software driver's loop limit?); use \
                          device='cpu'"
                    .to_owned(),
            });
        }
        // The driver cut loops short (llvmpipe's limit): halve the spans, and remember it.
        frames = (frames / 2).max(1);
        ctx.span_divisor
            .fetch_max((estimate / frames).max(1), Ordering::Relaxed);
    }
}

/// One try at a chunk with spans of `frames` frames.
struct Attempt<'a, 'c, 'p, F> {
    call: &'a Call<'c, 'p, F>,
    chunk: &'a Chunk,
    packed: &'a Packed<F>,
    frames: usize,
}

impl<F: GpuFloat> Attempt<'_, '_, '_, F> {
    fn rows_bytes(&self) -> u64 {
        (self.chunk.rows * std::mem::size_of::<F>()) as u64
    }

    fn out_bytes(&self) -> u64 {
        (self.chunk.out * std::mem::size_of::<F>()) as u64
    }

    fn span_stride(&self) -> u64 {
        let align = self.call.ctx.limits.min_uniform_buffer_offset_alignment;
        u64::from(align).max(SPAN_BYTES)
    }

    fn t_longest(&self) -> usize {
        self.chunk
            .jobs
            .iter()
            .map(|job| job.t_len)
            .max()
            .unwrap_or(1)
    }

    fn span_bytes(&self) -> u64 {
        let n_spans = self.t_longest().div_ceil(self.frames) as u64;
        n_spans * self.span_stride()
    }

    /// Bytes of each storage buffer, in binding order.
    fn sizes(&self) -> [u64; 6] {
        let elem = std::mem::size_of::<F>();
        let rows = self.rows_bytes();
        [
            (self.packed.info.len() * 4) as u64,
            (self.packed.scales.len() * elem) as u64,
            rows,
            if self.call.with_grad { rows } else { 0 },
            (self.chunk.work * WORK_CELL_BYTES) as u64,
            self.out_bytes(),
        ]
    }

    /// Packs the input rows straight into the mapped upload buffer.
    fn upload_rows(&self, buffers: &Buffers) -> Result<(), CtcError> {
        let bytes = self.rows_bytes();
        if bytes == 0 {
            return Ok(());
        }
        map(
            self.call.ctx,
            &[(&buffers.upload, bytes)],
            wgpu::MapMode::Write,
        )?;
        {
            let mut view = buffers
                .upload
                .slice(..bytes)
                .get_mapped_range_mut()
                .map_err(|e| gpu_error("writing the input failed", e))?;
            pack::pack_rows(self.call.problem, self.chunk, view.slice(..));
        }
        buffers.upload.unmap();
        Ok(())
    }

    /// Runs the kernels and maps the results; false when the driver cut loops short (the
    /// results are then unmapped again).
    fn submit(&self, buffers: &Buffers, phases: &mut Phases<'_>) -> Result<bool, CtcError> {
        let ctx = self.call.ctx;
        let (n_spans, spans) = pack::spans(self.t_longest(), self.frames, self.span_stride());
        let queue = &ctx.queue;
        queue.write_buffer(&buffers.spans, 0, bytemuck::cast_slice(&spans));
        let info = bytemuck::cast_slice(&self.packed.info);
        queue.write_buffer(&buffers.storage[INFO], 0, info);
        let scales = bytemuck::cast_slice(&self.packed.scales);
        queue.write_buffer(&buffers.storage[SCALES], 0, scales);
        phases.lap(Phase::Pack);

        let rows_bytes = self.rows_bytes();
        let mut encoder = encoder(ctx);
        if rows_bytes > 0 {
            encoder.copy_buffer_to_buffer(&buffers.upload, 0, &buffers.storage[LP], 0, rows_bytes);
        }
        encoder = phases.split(ctx, encoder, Phase::Upload)?;
        self.encode_kernels(&mut encoder, buffers, n_spans);
        encoder = phases.split(ctx, encoder, Phase::Compute)?;

        let out_bytes = self.out_bytes();
        encoder.copy_buffer_to_buffer(&buffers.storage[OUT], 0, &buffers.read_out, 0, out_bytes);
        let mut to_map = vec![(&buffers.read_out, out_bytes)];
        let read_grad = self.call.with_grad && rows_bytes > 0;
        if read_grad {
            let (src, dst) = (&buffers.storage[GRAD], &buffers.read_grad);
            encoder.copy_buffer_to_buffer(src, 0, dst, 0, rows_bytes);
            to_map.push((&buffers.read_grad, rows_bytes));
        }
        queue.submit([encoder.finish()]);
        map(ctx, &to_map, wgpu::MapMode::Read)?;
        phases.lap(Phase::Readback);

        let cut = {
            let view = read_range(&buffers.read_out, out_bytes)?;
            let out: &[F] = bytemuck::cast_slice(&view);
            let jobs = self.chunk.jobs.iter().zip(&self.packed.out_at);
            jobs.into_iter()
                .any(|(job, &at)| out[at + job.t_len + out::CUT] != F::ZERO)
        };
        if cut {
            buffers.read_out.unmap();
            if read_grad {
                buffers.read_grad.unmap();
            }
        }
        Ok(!cut)
    }

    /// Records the kernels' dispatches: the fused log_softmax for logits input, then the
    /// forward spans in increasing order and the backward spans in decreasing order.
    fn encode_kernels(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        buffers: &Buffers,
        n_spans: usize,
    ) {
        let kernels = self.call.kernels;
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("fastctc lattice"),
            timestamp_writes: None,
        });
        let offset = |i: usize| [(i as u64 * self.span_stride()) as u32];
        let workgroups = self.chunk.jobs.len() as u32;
        if self.call.problem.options.input_kind == InputKind::Logits {
            // One workgroup per frame, in rows of at most `workgroups` per dimension.
            let limit = self
                .call
                .ctx
                .limits
                .max_compute_workgroups_per_dimension
                .max(1);
            let frames = self.packed.frames;
            let width = frames.min(limit as usize).max(1);
            pass.set_pipeline(&kernels.normalise);
            pass.set_bind_group(0, &buffers.bind_group, &offset(0));
            pass.dispatch_workgroups(width as u32, frames.div_ceil(width) as u32, 1);
        }
        pass.set_pipeline(&kernels.forward);
        for i in 0..n_spans {
            pass.set_bind_group(0, &buffers.bind_group, &offset(i));
            pass.dispatch_workgroups(workgroups, 1, 1);
        }
        if self.call.with_grad {
            pass.set_pipeline(&kernels.backward);
            for i in (0..n_spans).rev() {
                pass.set_bind_group(0, &buffers.bind_group, &offset(i));
                pass.dispatch_workgroups(workgroups, 1, 1);
            }
        }
    }

    /// Reads the mapped results: each sample's log-likelihood, and its gradient rows when
    /// its loss is finite; unmaps them.
    fn store(
        &self,
        buffers: &Buffers,
        log_liks: &mut [f64],
        grad: &mut Option<ArrayViewMut3<'_, F>>,
    ) -> Result<(), CtcError> {
        {
            let view = read_range(&buffers.read_out, self.out_bytes())?;
            let out: &[F] = bytemuck::cast_slice(&view);
            for (job, &at) in self.chunk.jobs.iter().zip(&self.packed.out_at) {
                log_liks[job.n] = log_likelihood(&out[at..at + job.t_len + out::SLOTS]);
            }
        }
        buffers.read_out.unmap();
        let rows_bytes = self.rows_bytes();
        let Some(grad) = grad.as_mut().filter(|_| rows_bytes > 0) else {
            return Ok(());
        };
        {
            let view = read_range(&buffers.read_grad, rows_bytes)?;
            let rows: &[F] = bytemuck::cast_slice(&view);
            let (_, batch, classes) = self.call.problem.dims();
            let mut source: Vec<Option<&[F]>> = vec![None; batch];
            for (job, &at) in self.chunk.jobs.iter().zip(&self.packed.rows_at) {
                if log_liks[job.n].is_finite() {
                    source[job.n] = Some(&rows[at..at + job.rows]);
                }
            }
            unpack(grad, &source, classes);
        }
        buffers.read_grad.unmap();
        Ok(())
    }
}

/// A sample's log-likelihood from its slice of `out`: the frame maxima (all but the last),
/// the end term and the status.
fn log_likelihood<F: GpuFloat>(out_slice: &[F]) -> f64 {
    let t_len = out_slice.len() - out::SLOTS;
    let slot = |k: usize| out_slice[t_len + k].to_f64();
    match slot(out::STATUS) as u32 {
        status::OK => {
            let maxima: f64 = out_slice[..t_len - 1].iter().map(|v| v.to_f64()).sum();
            maxima + slot(out::END)
        }
        status::NAN => f64::NAN,
        _ => f64::NEG_INFINITY,
    }
}

/// Copies each sample's packed gradient rows into its frames of the `(T, N, C)` view.
fn unpack<F: GpuFloat>(grad: &mut ArrayViewMut3<'_, F>, source: &[Option<&[F]>], classes: usize) {
    let mut views: Vec<(ArrayViewMut2<'_, F>, &[F])> = grad
        .axis_iter_mut(Axis(1))
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

fn gpu_error(what: &str, error: impl std::fmt::Display) -> CtcError {
    CtcError::Gpu {
        message: format!("{what}: {error}"),
    }
}

/// A command encoder for one submission.
pub(super) fn encoder(ctx: &Context) -> wgpu::CommandEncoder {
    ctx.device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("fastctc"),
        })
}

/// Waits until the device has done everything submitted.
pub(super) fn wait(ctx: &Context) -> Result<(), CtcError> {
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|e| gpu_error("waiting for the GPU failed", e))
}

/// The first `bytes` of a mapped buffer.
fn read_range(buffer: &wgpu::Buffer, bytes: u64) -> Result<wgpu::BufferView, CtcError> {
    buffer
        .slice(..bytes)
        .get_mapped_range()
        .map_err(|e| gpu_error("reading results back failed", e))
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
