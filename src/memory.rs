//! What a computation will allocate, checked before it starts.
//!
//! Rust aborts the whole process when an allocation fails. An input can ask for far more
//! than any machine has without being large itself: a broadcast NumPy view of shape
//! (1e6, 1e3, 1e3) holds one row but needs a 4 TB gradient, and a long sample with a long
//! target needs a forward table of T·(2S+1) cells. So every large buffer a computation
//! will make is first requested here without being touched (reserved, then returned); one
//! the system refuses becomes [`CtcError::OutOfMemory`], which Python sees as a
//! `MemoryError`, before anything is computed.

use crate::error::CtcError;
use crate::problem::Problem;

/// What will be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Losses only: two rows per sample in flight.
    Loss,
    /// Losses and a `(T, N, C)` gradient (or posteriors): the gradient, and a forward table
    /// per sample in flight.
    LossAndGrad,
    /// Best paths: `(N, T)` outputs and a table of back pointers per sample in flight.
    Align,
}

/// Buffers below this size are not checked: allocating them cannot fail where anything
/// else still works, and checking costs a system call pair.
const CHECK_FROM_BYTES: usize = 64 << 20;

/// Checks that the buffers `work` on `problem` allocates can be had (see the module doc).
pub fn check<F>(problem: &Problem<'_, F>, work: Work) -> Result<(), CtcError> {
    let (t_max, batch, classes) = problem.dims();
    let value = std::mem::size_of::<F>();
    // A lattice cell of the forward table: a mantissa in the input type and an exponent of
    // the same width (`cpu::lattice`); a back pointer is one byte (`cpu::viterbi`).
    let per_cell = match work {
        Work::Loss => 0,
        Work::LossAndGrad => 2 * value,
        Work::Align => 1,
    };
    let largest_table = problem
        .samples
        .iter()
        .map(|s| product(&[s.input_len, 2 * s.target_len() + 1, per_cell]))
        .max()
        .unwrap_or(Some(0));
    available("the forward table of the longest sample", largest_table)?;
    match work {
        Work::Loss => Ok(()),
        Work::LossAndGrad => available("the gradient", product(&[t_max, batch, classes, value])),
        // Labels (i64) and scores per frame and sample.
        Work::Align => available("the alignment outputs", product(&[batch, t_max, 8 + value])),
    }
}

/// The product, or `None` when it does not fit in a `usize`.
fn product(factors: &[usize]) -> Option<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
}

/// Whether `bytes` can be allocated: reserved (never touched, so no page is faulted in)
/// and given back at once.
fn available(what: &'static str, bytes: Option<usize>) -> Result<(), CtcError> {
    match bytes {
        Some(bytes) if bytes < CHECK_FROM_BYTES => Ok(()),
        Some(bytes) => {
            let mut probe: Vec<u8> = Vec::new();
            match probe.try_reserve_exact(bytes) {
                Ok(()) => Ok(()),
                Err(_) => Err(CtcError::OutOfMemory {
                    what,
                    bytes: Some(bytes),
                }),
            }
        }
        None => Err(CtcError::OutOfMemory { what, bytes: None }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_past_the_address_space_are_errors() {
        assert_eq!(product(&[usize::MAX, 2]), None);
        assert_eq!(product(&[3, 4, 5]), Some(60));
        assert!(available("x", None).is_err());
        assert!(available("x", Some(1 << 20)).is_ok());
        // More than any 64-bit system maps.
        assert!(available("x", Some(usize::MAX / 2)).is_err());
    }
}
