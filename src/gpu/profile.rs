//! Timing the phases of a GPU call, for benchmarks (`fastctc._core.gpu_profile`). A profiled
//! call submits and waits for each phase on its own; an ordinary call passes no timings and
//! none of this costs it anything beyond a branch.

use std::time::Instant;

use super::context::Context;
use crate::error::CtcError;

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

/// A phase of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Pack,
    Upload,
    Compute,
    Readback,
    Unpack,
}

/// The clock of a call: charges elapsed time to phases when the call is profiled.
pub(super) struct Phases<'t> {
    timings: Option<&'t mut Timings>,
    clock: Instant,
}

impl<'t> Phases<'t> {
    pub fn new(timings: Option<&'t mut Timings>) -> Self {
        Phases {
            timings,
            clock: Instant::now(),
        }
    }

    /// Starts timing a chunk.
    pub fn start_chunk(&mut self) {
        self.clock = Instant::now();
        if let Some(t) = self.timings.as_deref_mut() {
            t.chunks += 1;
        }
    }

    /// Charges the time since the last lap to `phase`.
    pub fn lap(&mut self, phase: Phase) {
        let Some(t) = self.timings.as_deref_mut() else {
            return;
        };
        let slot = match phase {
            Phase::Pack => &mut t.pack,
            Phase::Upload => &mut t.upload,
            Phase::Compute => &mut t.compute,
            Phase::Readback => &mut t.readback,
            Phase::Unpack => &mut t.unpack,
        };
        *slot += self.clock.elapsed().as_secs_f64();
        self.clock = Instant::now();
    }

    /// Ends `phase` of a profiled call: submits what `encoder` holds, waits for it, charges
    /// the time to `phase`, and hands back a fresh encoder. An ordinary call keeps recording
    /// into the same encoder (one submission per chunk).
    pub fn split(
        &mut self,
        ctx: &Context,
        encoder: wgpu::CommandEncoder,
        phase: Phase,
    ) -> Result<wgpu::CommandEncoder, CtcError> {
        if self.timings.is_none() {
            return Ok(encoder);
        }
        ctx.queue.submit([encoder.finish()]);
        super::run::wait(ctx)?;
        self.lap(phase);
        Ok(super::run::encoder(ctx))
    }
}
