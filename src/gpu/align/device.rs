//! The aligner's device side: its pipeline (built once per process), a chunk's buffers, the
//! span dispatches and the readback. The host/shader contract (bindings, the `Record`, the
//! state codes) is stated here and in `viterbi.wgsl`; a test compares the two with naga.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};

use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;

use super::super::context::Context;
use super::super::contract::SPAN_BYTES;
use super::super::{pack, run};
use super::{gather, trace, Job, Slot, Traced, STATES_PER_WORD};
use crate::cpu::FastMath;
use crate::error::CtcError;
use crate::problem::Problem;
use crate::threads;

const SOURCE: &str = include_str!("../viterbi.wgsl");
/// The line of `viterbi.wgsl` that sets the workgroup size.
const WORKGROUP_LINE: &str = "const WG: u32 = 256u;";
pub(super) const ENTRY: &str = "viterbi";
/// The largest buffer a chunk uses unless `FASTCTC_GPU_CHUNK_BYTES` says otherwise (as the
/// loss, `run.rs`).
const DEFAULT_CHUNK_BYTES: u64 = 256 << 20;
/// Loop iterations one invocation may run per dispatch (llvmpipe stops at 65535).
const SPAN_ITERATIONS: usize = 40_000;

/// Bind group 0 of `viterbi.wgsl`.
pub(super) mod binding {
    pub const SPAN: u32 = 5;
    /// The storage bindings in index order, their names in the shader, and whether they are
    /// read-only there.
    pub const STORAGE: [(u32, &str, bool); 5] = [
        (0, "info", true),
        (1, "emit", true),
        (2, "rows", false),
        (3, "back", false),
        (4, "cut", false),
    ];
}

/// One workgroup's sample: `info[META * i ..]`, `Record` in the shader.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
pub(super) struct Record {
    pub emit_off: u32,
    pub t_len: u32,
    pub states: u32,
    pub columns: u32,
    pub code_off: u32,
    pub rows_off: u32,
    pub back_off: u32,
    pub words: u32,
}

impl Record {
    /// Size in `u32` words (`META` in the shader).
    pub const WORDS: usize = std::mem::size_of::<Record>() / 4;
    /// Field names in memory order.
    #[cfg(test)]
    pub const FIELDS: [&'static str; 8] = [
        "emit_off", "t_len", "states", "columns", "code_off", "rows_off", "back_off", "words",
    ];
}

/// The compiled aligner.
pub(super) struct Kernel {
    layout: wgpu::BindGroupLayout,
    pipeline: wgpu::ComputePipeline,
}

static KERNEL: OnceLock<Result<Kernel, CtcError>> = OnceLock::new();

/// What the estimate of frames per dispatch is divided by: doubled each time the driver cut
/// loops short, and remembered for later calls (as `Context::span_divisor` for the loss).
static SPAN_DIVISOR: AtomicUsize = AtomicUsize::new(1);

/// The shader source for a workgroup size.
pub(super) fn source(workgroup_size: u32) -> String {
    assert!(
        SOURCE.contains(WORKGROUP_LINE),
        "viterbi.wgsl must declare `{WORKGROUP_LINE}`"
    );
    SOURCE.replace(
        WORKGROUP_LINE,
        &format!("const WG: u32 = {workgroup_size}u;"),
    )
}

/// The aligner of the shared context, built on first use; a failure is remembered.
pub(super) fn kernel(ctx: &'static Context) -> Result<&'static Kernel, CtcError> {
    if !ctx.info.shader_f64 {
        return Err(CtcError::Gpu {
            message: format!(
                "forced alignment on the GPU computes in float64, as the CPU does (so that both \
                 find the same paths), and the adapter {} ({}) has no 64-bit float shaders \
                 (SHADER_F64); use device='cpu'",
                ctx.info.name, ctx.info.backend
            ),
        });
    }
    KERNEL
        .get_or_init(|| build(ctx))
        .as_ref()
        .map_err(Clone::clone)
}

fn build(ctx: &Context) -> Result<Kernel, CtcError> {
    let device = &ctx.device;
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("fastctc viterbi"),
        source: wgpu::ShaderSource::Wgsl(source(ctx.info.workgroup_size).into()),
    });
    let storage = |(binding, _name, read_only): (u32, &str, bool)| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    let mut entries: Vec<_> = binding::STORAGE.into_iter().map(storage).collect();
    entries.push(wgpu::BindGroupLayoutEntry {
        binding: binding::SPAN,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: wgpu::BufferSize::new(SPAN_BYTES),
        },
        count: None,
    });
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("fastctc viterbi"),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("fastctc viterbi"),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(ENTRY),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(ENTRY),
        compilation_options: wgpu::PipelineCompilationOptions::default(),
        cache: None,
    });
    match pollster::block_on(scope.pop()) {
        None => Ok(Kernel { layout, pipeline }),
        Some(error) => Err(CtcError::Gpu {
            message: format!("the driver rejected fastctc's alignment shader: {error}"),
        }),
    }
}

/// A positive number from the environment (a tuning or testing knob), else `None`.
fn env_number<T: std::str::FromStr + PartialOrd + Default>(name: &str) -> Option<T> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<T>().ok())
        .filter(|v| *v > T::default())
}

/// How large a chunk may be on this device.
pub(super) struct Limits {
    /// The largest storage buffer a chunk uses (`FASTCTC_GPU_CHUNK_BYTES`).
    pub chunk_bytes: u64,
    /// The largest buffer one sample may need.
    binding_bytes: u64,
    max_buffer: u64,
    /// Workgroups per dispatch.
    pub workgroups: usize,
}

impl Limits {
    pub fn of(ctx: &Context) -> Limits {
        let binding_bytes = ctx
            .limits
            .max_storage_buffer_binding_size
            .min(ctx.limits.max_buffer_size)
            .min(u64::from(u32::MAX));
        Limits {
            chunk_bytes: env_number("FASTCTC_GPU_CHUNK_BYTES")
                .unwrap_or(DEFAULT_CHUNK_BYTES)
                .min(binding_bytes)
                / 8
                * 8,
            binding_bytes,
            max_buffer: ctx.limits.max_buffer_size,
            workgroups: ctx.limits.max_compute_workgroups_per_dimension.max(1) as usize,
        }
    }

    /// Refuses a sample whose buffers do not fit the device.
    pub fn admit(&self, job: &Job) -> Result<(), CtcError> {
        let bytes = job.bytes();
        let readback = bytes[2] + bytes[3] + 16;
        let largest = bytes.iter().copied().max().unwrap_or(0);
        if largest <= self.binding_bytes && readback <= self.max_buffer {
            return Ok(());
        }
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        Err(CtcError::Gpu {
            message: format!(
                "sample {} ({} frames, {} target tokens) needs a {:.1} MiB buffer to be aligned \
                 on this GPU (its emissions or back-pointers), more than one storage binding \
                 holds here ({:.1} MiB); use device='cpu', whose aligner has no such limit",
                job.n,
                job.t_len,
                job.states / 2,
                mib(largest.max(readback)),
                mib(self.binding_bytes.min(self.max_buffer))
            ),
        })
    }
}

/// Frames per dispatch that keep an invocation under [`SPAN_ITERATIONS`] loop iterations:
/// per frame the time loop, and per word of back-pointers it owns, the word loop and the
/// states of the word; the first span also clears the two rows.
fn frames_per_span(jobs: &[Job], workgroup_size: usize) -> usize {
    let words = jobs.iter().map(Job::words).max().unwrap_or(1);
    let states = jobs.iter().map(|j| j.states).max().unwrap_or(1);
    let per_frame = 1 + words.div_ceil(workgroup_size) * (1 + STATES_PER_WORD);
    let clear = (2 * (states + 2)).div_ceil(workgroup_size);
    (SPAN_ITERATIONS.saturating_sub(clear) / per_frame).max(1)
}

/// A chunk's buffers on the device.
struct Buffers {
    info: wgpu::Buffer,
    emit: wgpu::Buffer,
    rows: wgpu::Buffer,
    back: wgpu::Buffer,
    cut: wgpu::Buffer,
    /// `cut`, `rows` and `back`, back to back (at `CUT`, `rows_at`, `back_at`).
    read: wgpu::Buffer,
    rows_bytes: u64,
    back_bytes: u64,
    /// Where `rows` starts in `read`: after the cut flags, aligned for float64.
    rows_at: u64,
}

impl Buffers {
    fn new(ctx: &Context, jobs: &[Job], info: &[u32]) -> Buffers {
        let make = |label: &str, bytes: u64, usage: wgpu::BufferUsages| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.max(16).next_multiple_of(8),
                usage,
                mapped_at_creation: false,
            })
        };
        let total = |len: fn(&Job) -> usize, size: u64| {
            jobs.iter().map(|j| len(j) as u64 * size).sum::<u64>()
        };
        let storage = wgpu::BufferUsages::STORAGE;
        let copy_src = storage | wgpu::BufferUsages::COPY_SRC;
        let rows_bytes = total(Job::rows_len, 8);
        let back_bytes = total(Job::back_len, 4);
        let cut_bytes = jobs.len() as u64 * 4;
        let rows_at = cut_bytes.next_multiple_of(8);
        let buffers = Buffers {
            info: make(
                "fastctc viterbi info",
                info.len() as u64 * 4,
                storage | wgpu::BufferUsages::COPY_DST,
            ),
            emit: make(
                "fastctc viterbi emit",
                total(Job::emit_len, 8),
                storage | wgpu::BufferUsages::COPY_DST,
            ),
            rows: make("fastctc viterbi rows", rows_bytes, copy_src),
            back: make("fastctc viterbi back", back_bytes, copy_src),
            cut: make(
                "fastctc viterbi cut",
                cut_bytes,
                copy_src | wgpu::BufferUsages::COPY_DST,
            ),
            read: make(
                "fastctc viterbi readback",
                rows_at + rows_bytes + back_bytes,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            rows_bytes,
            back_bytes,
            rows_at,
        };
        ctx.queue
            .write_buffer(&buffers.info, 0, bytemuck::cast_slice(info));
        buffers
    }

    fn read_bytes(&self) -> u64 {
        self.rows_at + self.rows_bytes + self.back_bytes
    }
}

/// The `info` words of a chunk (a record per job, then every job's state codes) and each
/// job's record.
fn layout(jobs: &[Job]) -> (Vec<u32>, Vec<Record>) {
    let mut records = Vec::with_capacity(jobs.len());
    let (mut code_at, mut emit_at, mut rows_at, mut back_at) =
        (Record::WORDS * jobs.len(), 0, 0, 0);
    for job in jobs {
        records.push(Record {
            emit_off: emit_at as u32,
            t_len: job.t_len as u32,
            states: job.states as u32,
            columns: job.classes.len() as u32,
            code_off: code_at as u32,
            rows_off: rows_at as u32,
            back_off: back_at as u32,
            words: job.words() as u32,
        });
        code_at += job.states;
        emit_at += job.emit_len();
        rows_at += job.rows_len();
        back_at += job.back_len();
    }
    let mut info: Vec<u32> = bytemuck::cast_slice(&records).to_vec();
    for job in jobs {
        info.extend_from_slice(&job.codes);
    }
    (info, records)
}

/// Aligns one chunk of jobs and writes each into its slot.
pub(super) fn run_chunk<F: FastMath>(
    ctx: &Context,
    kernel: &Kernel,
    problem: &Problem<'_, F>,
    jobs: &[Job],
    slots: Vec<Slot<'_, F>>,
) -> Result<(), CtcError> {
    let (info, records) = layout(jobs);
    let buffers = Buffers::new(ctx, jobs, &info);
    // Gathered on the pool into host memory, then written (the mapped range of wgpu 30 is
    // write-only and cannot be shared between threads).
    let mut emit = vec![0.0f64; jobs.iter().map(Job::emit_len).sum()];
    let gathered = {
        let mut rest = &mut emit[..];
        let mut pieces = Vec::with_capacity(jobs.len());
        for job in jobs {
            let (piece, tail) = rest.split_at_mut(job.emit_len());
            pieces.push(piece);
            rest = tail;
        }
        threads::install(|| {
            jobs.par_iter()
                .zip(pieces)
                .map(|(job, piece)| gather(problem, job, piece))
                .collect::<Vec<_>>()
        })
    };
    ctx.queue
        .write_buffer(&buffers.emit, 0, bytemuck::cast_slice(&emit));
    drop(emit);

    let estimate = env_number("FASTCTC_GPU_SPAN_FRAMES")
        .unwrap_or_else(|| frames_per_span(jobs, ctx.info.workgroup_size as usize));
    let mut frames = (estimate / SPAN_DIVISOR.load(Ordering::Relaxed)).max(1);
    while !submit(ctx, kernel, jobs, &buffers, frames)? {
        if frames == 1 {
            return Err(CtcError::Gpu {
                message: "the driver stopped the alignment kernel's loops early even with one \
                          frame per dispatch (a software driver's loop limit?); use \
                          device='cpu'"
                    .to_owned(),
            });
        }
        frames = (frames / 2).max(1);
        SPAN_DIVISOR.fetch_max((estimate / frames).max(1), Ordering::Relaxed);
    }

    {
        let view = buffers
            .read
            .slice(..buffers.read_bytes())
            .get_mapped_range()
            .map_err(|e| gpu_error("reading the alignment back failed", &e))?;
        let rows_end = (buffers.rows_at + buffers.rows_bytes) as usize;
        let rows: &[f64] = bytemuck::cast_slice(&view[buffers.rows_at as usize..rows_end]);
        let back: &[u32] = bytemuck::cast_slice(&view[rows_end..]);
        let work: Vec<_> = jobs.iter().zip(records).zip(gathered).zip(slots).collect();
        threads::install(|| {
            work.into_par_iter()
                .for_each(|(((job, record), (norms, nan)), slot)| {
                    if nan {
                        *slot.score = f64::NAN;
                        return;
                    }
                    let width = job.states + 2;
                    let last = record.rows_off as usize + ((job.t_len - 1) % 2) * width;
                    let result = Traced {
                        last_row: &rows[last..last + width],
                        back: &back[record.back_off as usize..][..job.back_len()],
                        norms: &norms,
                    };
                    trace(problem, job, result, slot);
                });
        });
    }
    buffers.read.unmap();
    Ok(())
}

/// Runs the chunk with spans of `frames` frames and maps its results; false (and nothing
/// mapped) when the driver cut loops short.
fn submit(
    ctx: &Context,
    kernel: &Kernel,
    jobs: &[Job],
    buffers: &Buffers,
    frames: usize,
) -> Result<bool, CtcError> {
    let t_longest = jobs.iter().map(|j| j.t_len).max().unwrap_or(1);
    let stride = u64::from(ctx.limits.min_uniform_buffer_offset_alignment).max(SPAN_BYTES);
    let (n_spans, spans) = pack::spans(t_longest, frames, stride);
    let span_buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("fastctc viterbi spans"),
        size: (spans.len() as u64 * 4).max(stride),
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue
        .write_buffer(&span_buffer, 0, bytemuck::cast_slice(&spans));
    let mut entries: Vec<wgpu::BindGroupEntry<'_>> = [
        &buffers.info,
        &buffers.emit,
        &buffers.rows,
        &buffers.back,
        &buffers.cut,
    ]
    .into_iter()
    .zip(binding::STORAGE)
    .map(|(buffer, (index, _, _))| wgpu::BindGroupEntry {
        binding: index,
        resource: buffer.as_entire_binding(),
    })
    .collect();
    entries.push(wgpu::BindGroupEntry {
        binding: binding::SPAN,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &span_buffer,
            offset: 0,
            size: wgpu::BufferSize::new(SPAN_BYTES),
        }),
    });
    let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("fastctc viterbi"),
        layout: &kernel.layout,
        entries: &entries,
    });

    let mut encoder = run::encoder(ctx);
    encoder.clear_buffer(&buffers.cut, 0, None);
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("fastctc viterbi"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&kernel.pipeline);
        for i in 0..n_spans {
            pass.set_bind_group(0, &bind_group, &[(i as u64 * stride) as u32]);
            pass.dispatch_workgroups(jobs.len() as u32, 1, 1);
        }
    }
    let cut_bytes = jobs.len() as u64 * 4;
    encoder.copy_buffer_to_buffer(&buffers.cut, 0, &buffers.read, 0, cut_bytes);
    let (rows_at, back_at) = (buffers.rows_at, buffers.rows_at + buffers.rows_bytes);
    encoder.copy_buffer_to_buffer(&buffers.rows, 0, &buffers.read, rows_at, buffers.rows_bytes);
    encoder.copy_buffer_to_buffer(&buffers.back, 0, &buffers.read, back_at, buffers.back_bytes);
    ctx.queue.submit([encoder.finish()]);

    let bytes = buffers.read_bytes();
    let (tx, rx) = mpsc::channel();
    buffers
        .read
        .slice(..bytes)
        .map_async(wgpu::MapMode::Read, move |result| {
            let _ = tx.send(result);
        });
    run::wait(ctx)?;
    rx.recv()
        .map_err(|e| gpu_error("reading the alignment back failed", &e))?
        .map_err(|e| gpu_error("reading the alignment back failed", &e))?;
    let cut = {
        let view = buffers
            .read
            .slice(..cut_bytes)
            .get_mapped_range()
            .map_err(|e| gpu_error("reading the alignment back failed", &e))?;
        bytemuck::cast_slice::<u8, u32>(&view)
            .iter()
            .any(|&w| w != 0)
    };
    if cut {
        buffers.read.unmap();
    }
    Ok(!cut)
}

fn gpu_error(what: &str, error: &dyn std::fmt::Display) -> CtcError {
    CtcError::Gpu {
        message: format!("{what}: {error}"),
    }
}
