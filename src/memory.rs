//! What a computation will allocate, checked before it starts.
//!
//! Rust aborts the whole process when an allocation fails. An input can ask for far more
//! than any machine has without being large itself: a broadcast NumPy view of shape
//! (1e6, 1e3, 1e3) holds one row but needs a 4 TB gradient, and a long sample with a long
//! target needs a forward table of T·(2S+1) cells. So every large buffer a computation
//! will make is first requested here without being touched (reserved, then returned); one
//! the system refuses becomes [`CtcError::OutOfMemory`], which Python sees as a
//! `MemoryError`, before anything is computed.

use std::alloc::{alloc_zeroed, Layout};
use std::any::TypeId;

use crate::error::CtcError;
use crate::options::Job;
use crate::problem::Problem;
use crate::real::Real;

/// Buffers below this size are not checked: allocating them cannot fail where anything
/// else still works, and checking costs a system call pair.
const CHECK_FROM_BYTES: usize = 64 << 20;

/// Bookkeeping per sample beyond the validated records (losses, job lists, scheduling): an
/// upper estimate, so that a batch of millions of broadcast samples is refused rather than
/// aborting halfway.
const PER_SAMPLE_BYTES: usize = 192;

/// Checks that the buffers `job` on `problem` allocates can be had (see the module doc):
/// each large buffer alone, for a message that names it, then all of them together, since
/// they are alive at the same time.
pub fn check<F>(problem: &Problem<'_, F>, job: Job) -> Result<(), CtcError> {
    let (t_max, batch, classes) = problem.dims();
    let value = std::mem::size_of::<F>();
    let table_of = |s: &crate::problem::Sample| {
        table_bytes(job, s.input_len, 2 * s.target_len() + 1, value).unwrap_or(usize::MAX)
    };
    // Most calls need far less than any check looks at: every table at once, the output and
    // the bookkeeping together stay below the threshold, so each of them does too.
    let all_tables = problem
        .samples
        .iter()
        .fold(0usize, |sum, s| sum.saturating_add(table_of(s)));
    let output_bytes = output_bytes(job, t_max, batch, classes, value);
    let upper = all_tables
        .saturating_add(output_bytes.unwrap_or(usize::MAX))
        .saturating_add(batch.saturating_mul(PER_SAMPLE_BYTES));
    if upper < CHECK_FROM_BYTES {
        return Ok(());
    }
    // Every pool thread (at most one per sample) keeps the table of the sample it runs.
    let in_flight = crate::threads::num_threads().clamp(1, batch);
    // The largest tables, one per thread (`usize::MAX`: past the address space); kept in a
    // list of at most `in_flight` entries, since a list per sample could itself be too large.
    let mut tables: Vec<usize> = Vec::with_capacity(in_flight + 1);
    for s in &problem.samples {
        let bytes = table_of(s);
        if tables.len() < in_flight || bytes > tables[in_flight - 1] {
            let at = tables.partition_point(|&b| b >= bytes);
            tables.insert(at, bytes);
            tables.truncate(in_flight);
        }
    }
    let largest = tables
        .first()
        .map_or(Some(0), |&b| (b != usize::MAX).then_some(b));
    let output = output_bytes;
    let (table_what, output_what) = match job {
        Job::Loss => ("the forward rows of the longest sample", ""),
        Job::LossAndGrad | Job::Posteriors => {
            ("the forward table of the longest sample", "the gradient")
        }
        Job::Align => (
            "the back pointers of the longest sample",
            "the alignment outputs",
        ),
    };
    available(table_what, largest)?;
    if !output_what.is_empty() {
        available(output_what, output)?;
    }
    let together = tables
        .iter()
        .map(|&b| (b != usize::MAX).then_some(b))
        .chain([output, batch.checked_mul(PER_SAMPLE_BYTES)])
        .try_fold(0usize, |sum, bytes| sum.checked_add(bytes?));
    available("this call's buffers together", together)
}

/// Bytes of what `job` returns besides losses: the gradient (or posteriors), or the
/// alignment outputs (labels as i64 and scores per frame and sample); `None` past the address
/// space.
fn output_bytes(
    job: Job,
    t_max: usize,
    batch: usize,
    classes: usize,
    value: usize,
) -> Option<usize> {
    match job {
        Job::Loss => Some(0),
        Job::LossAndGrad | Job::Posteriors => product(&[t_max, batch, classes, value]),
        Job::Align => product(&[batch, t_max, 8 + value]),
    }
}

/// Bytes of the largest table `job` on `problem` keeps while one of its samples runs.
pub fn largest_table_bytes<F>(problem: &Problem<'_, F>, job: Job) -> usize {
    let value = std::mem::size_of::<F>();
    let bytes = |s: &crate::problem::Sample| {
        table_bytes(job, s.input_len, 2 * s.target_len() + 1, value).unwrap_or(usize::MAX)
    };
    problem.samples.iter().map(bytes).max().unwrap_or(0)
}

/// Bytes of the table one sample of `input_len` frames and `states` lattice states keeps
/// while it runs: two rows for a loss, every row for a gradient (a mantissa and an exponent
/// of the input's width per cell, `cpu::lattice`), for an alignment its checkpoints and one
/// segment's two-bit back pointers (`cpu::viterbi`, bounded for any length).
fn table_bytes(job: Job, input_len: usize, states: usize, value: usize) -> Option<usize> {
    match job {
        Job::Loss => product(&[2, states, 2 * value]),
        Job::LossAndGrad | Job::Posteriors => product(&[input_len, states, 2 * value]),
        Job::Align => crate::cpu::alignment_table_bytes(input_len, states),
    }
}

/// An empty vector with room for `len` elements, or [`CtcError::OutOfMemory`] naming `what`.
pub fn vec_with_capacity<T>(what: &'static str, len: usize) -> Result<Vec<T>, CtcError> {
    let mut vec = Vec::new();
    vec.try_reserve_exact(len)
        .map_err(|_| CtcError::OutOfMemory {
            what,
            bytes: len.checked_mul(std::mem::size_of::<T>()),
        })?;
    Ok(vec)
}

/// `len` zeros, or [`CtcError::OutOfMemory`] naming `what`. For `f32` and `f64` (whose zero
/// is all zero bits) the memory comes zeroed from the allocator (calloc): pages nobody
/// writes, such as a gradient's frames past an input length, then cost nothing.
pub fn zeroed_vec<F: Real>(what: &'static str, len: usize) -> Result<Vec<F>, CtcError> {
    let error = || CtcError::OutOfMemory {
        what,
        bytes: len.checked_mul(std::mem::size_of::<F>()),
    };
    let zero_bits =
        TypeId::of::<F>() == TypeId::of::<f32>() || TypeId::of::<F>() == TypeId::of::<f64>();
    if len == 0 || !zero_bits {
        let mut vec = vec_with_capacity(what, len)?;
        vec.resize(len, F::ZERO);
        return Ok(vec);
    }
    let layout = Layout::array::<F>(len).map_err(|_| error())?;
    // SAFETY: `layout` has a non-zero size. A non-null result is a fresh allocation of the
    // global allocator with exactly the layout a `Vec<F>` of capacity `len` uses, holding
    // `len` zero-bit values, which are 0.0 for f32 and f64 (the only types taking this path).
    unsafe {
        let ptr = alloc_zeroed(layout) as *mut F;
        if ptr.is_null() {
            return Err(error());
        }
        Ok(Vec::from_raw_parts(ptr, len, len))
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
        assert!(zeroed_vec::<f32>("x", usize::MAX / 8).is_err());
        let zeros = zeroed_vec::<f64>("x", 1000).unwrap();
        assert!(zeros.len() == 1000 && zeros.iter().all(|&v| v == 0.0));
        assert!(vec_with_capacity::<u64>("x", usize::MAX / 4).is_err());
    }
}
