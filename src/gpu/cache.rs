//! The device buffers of a call, kept between calls while they are large enough: a training
//! loop's calls of similar sizes allocate nothing on the device.

use super::context::Context;
use super::contract::{binding, SPAN_BYTES};

/// Buffers larger than this in total are released after the call rather than kept for the
/// next: repeated calls of ordinary sizes reuse their buffers, one huge batch does not pin
/// gigabytes.
const RETAIN_BYTES: u64 = 512 << 20;

/// Indices into `Buffers::storage`, which is in binding order.
pub(super) const INFO: usize = binding::INFO as usize;
pub(super) const SCALES: usize = binding::SCALES as usize;
pub(super) const LP: usize = binding::LP as usize;
pub(super) const GRAD: usize = binding::GRAD as usize;
pub(super) const WORK: usize = binding::WORK as usize;
pub(super) const OUT: usize = binding::OUT as usize;

/// Buffers kept between calls (see `Context::cache`).
#[derive(Default)]
pub(crate) struct Cache {
    buffers: Option<Buffers>,
}

pub(super) struct Buffers {
    /// Binding order: info, scales, lp, grad, work, out.
    pub storage: [wgpu::Buffer; 6],
    /// One `Span` every `span_stride` bytes.
    pub spans: wgpu::Buffer,
    /// Host-visible staging for `lp`: packed in place while mapped, then copied on the device.
    pub upload: wgpu::Buffer,
    pub read_grad: wgpu::Buffer,
    pub read_out: wgpu::Buffer,
    pub bind_group: wgpu::BindGroup,
}

impl Cache {
    /// Releases the buffers when they hold more than [`RETAIN_BYTES`] together.
    pub(super) fn trim(&mut self) {
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
    pub(super) fn ensure(
        &mut self,
        ctx: &Context,
        sizes: [u64; 6],
        span_bytes: u64,
        limit: u64,
    ) -> &Buffers {
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
            binding: binding::SPAN,
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
