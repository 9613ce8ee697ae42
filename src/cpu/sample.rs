//! What every CPU kernel takes: one sample of a validated batch, and how its gradient rows
//! are written.
//!
//! Apart from the kernels themselves so that the per-sample kernel (`lattice.rs`), the group
//! kernel (`lockstep.rs`) and the aligner (`viterbi.rs`) share one definition without
//! depending on one another.

use ndarray::ArrayView2;

use crate::options::GradWrt;

/// One sample, as the kernels see it.
pub struct SampleRef<'p, F> {
    /// `(T, C)` log-probabilities of this sample, any strides.
    pub log_probs: ArrayView2<'p, F>,
    /// Frames used: `0..input_len`.
    pub input_len: usize,
    /// Target labels, each in `[0, C)` and not the blank (validated).
    pub labels: &'p [u32],
    /// Blank class, in `[0, C)`.
    pub blank: usize,
    /// The input holds logits: each frame is shifted by its log-sum-exp over classes (a fused
    /// `log_softmax`), and the logits gradient is taken with respect to this input.
    pub logits: bool,
}

/// How a gradient row is written.
#[derive(Debug, Clone, Copy)]
pub struct GradSpec<F> {
    pub wrt: GradWrt,
    /// The reduction's factor for this sample.
    pub scale: F,
    pub zero_infinity: bool,
    /// The rows hold stale values (a recycled buffer, see `crate::buffers`): every row
    /// written is written whole. Otherwise rows are zero on entry and only the target's
    /// classes are stored.
    pub clear_rows: bool,
}
