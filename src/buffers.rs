//! Recycled gradient buffers.
//!
//! A fresh gradient of tens of MiB costs more than the writes the kernels make to it: every
//! page is faulted in and zeroed by the operating system first, and the stores that follow
//! miss the cache again (BPE shape, 51 MB: a quarter of the forward+backward time). So a
//! caller that is done with a gradient may hand its buffer back here ([`give_back`]; the
//! Python binding does so when NumPy frees the array), and the next gradient of about the
//! same size reuses it ([`take`]): a training loop writes the same warm pages every step.
//!
//! A recycled buffer holds stale values; the kernels then clear every row they write (see
//! `GradSpec::clear_rows`). Only large buffers are kept, at most [`MAX_KEPT`] and
//! [`MAX_KEPT_BYTES`] per float type; [`release`] frees them.

use std::sync::{Mutex, MutexGuard, TryLockError};

use crate::real::Real;

/// Buffers below this size are left to the allocator: its free lists already serve them
/// without fresh pages.
pub const MIN_BYTES: usize = 1 << 20;
/// The most buffers kept per float type: a training step has one gradient in flight, but a
/// caller that holds the last gradient while computing the next (or alternates two kinds of
/// calls) needs a few to avoid evicting a buffer it is about to reuse.
pub const MAX_KEPT: usize = 4;
/// The most bytes kept per float type; a larger buffer is freed at once.
pub const MAX_KEPT_BYTES: usize = 512 << 20;

/// The kept buffers of one float type.
pub type Pool<F> = Mutex<Vec<Vec<F>>>;

fn lock<F>(pool: &'static Pool<F>) -> MutexGuard<'static, Vec<Vec<F>>> {
    // A panic while holding the lock leaves a list of whole buffers: still usable.
    pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The lock if it is free at once, else `None`: [`take`] and [`give_back`] are shortcuts
/// that may be skipped, so they never wait. Another thread's call is then not held up, a
/// NumPy array being freed never blocks, and a child forked while the lock was held (its
/// holder does not exist there) cannot hang on it.
fn try_lock<F>(pool: &'static Pool<F>) -> Option<MutexGuard<'static, Vec<Vec<F>>>> {
    match pool.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

fn bytes<F>(buffer: &[F]) -> usize {
    std::mem::size_of_val(buffer)
}

/// A kept buffer of exactly `len` elements with stale contents, or `None` (then allocate).
/// A buffer is reused for any length from 4/5 of its own up to its own.
pub fn take<F: Real>(len: usize) -> Option<Vec<F>> {
    if len * std::mem::size_of::<F>() < MIN_BYTES {
        return None;
    }
    let mut kept = try_lock(F::recycled_buffers())?;
    let best = kept
        .iter()
        .enumerate()
        .filter(|(_, buffer)| buffer.len() >= len && buffer.len() - len <= buffer.len() / 5)
        .min_by_key(|(_, buffer)| buffer.len())
        .map(|(index, _)| index)?;
    let mut buffer = kept.swap_remove(best);
    drop(kept);
    buffer.truncate(len);
    Some(buffer)
}

/// Keeps `buffer` for a later [`take`] when it is large enough and there is room; the oldest
/// kept buffer makes way for it.
pub fn give_back<F: Real>(buffer: Vec<F>) {
    let size = bytes(&buffer);
    if !(MIN_BYTES..=MAX_KEPT_BYTES).contains(&size) {
        return;
    }
    let Some(mut kept) = try_lock(F::recycled_buffers()) else {
        return; // freed here
    };
    kept.push(buffer);
    // Dropped outside the lock: freeing tens of MiB returns pages to the system.
    let mut evicted = Vec::new();
    while kept.len() > MAX_KEPT || kept.iter().map(|b| bytes(b)).sum::<usize>() > MAX_KEPT_BYTES {
        evicted.push(kept.remove(0));
    }
    drop(kept);
    drop(evicted);
}

/// Frees every kept buffer; returns the bytes freed.
pub fn release() -> usize {
    fn release_of<F: Real>() -> usize {
        let freed = std::mem::take(&mut *lock(F::recycled_buffers()));
        freed.iter().map(|b| bytes(b)).sum()
    }
    release_of::<f32>() + release_of::<f64>()
}

/// The bytes currently kept.
pub fn kept_bytes() -> usize {
    fn kept_of<F: Real>() -> usize {
        lock(F::recycled_buffers()).iter().map(|b| bytes(b)).sum()
    }
    kept_of::<f32>() + kept_of::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test touches the global pools, so that tests running in parallel cannot race.
    #[test]
    fn keeps_large_buffers_only_and_reuses_by_size() {
        release();
        let big = (2 * MIN_BYTES) / 4;
        give_back(vec![1.0f32; 10]);
        assert_eq!(kept_bytes(), 0, "small buffers are left to the allocator");
        give_back(vec![1.0f32; big]);
        assert_eq!(kept_bytes(), big * 4);
        assert!(take::<f64>(big / 2).is_none(), "pools are per float type");
        assert!(
            take::<f32>(big / 2).is_none(),
            "far too large for this request"
        );
        assert!(take::<f32>(big + 1).is_none(), "too small for this request");
        let reused = take::<f32>(big - 10).expect("close enough in size");
        assert_eq!(reused.len(), big - 10);
        assert_eq!(kept_bytes(), 0);
        for _ in 0..MAX_KEPT + 2 {
            give_back(vec![0.0f64; big]);
        }
        assert_eq!(kept_bytes(), MAX_KEPT * big * 8);
        assert_eq!(release(), MAX_KEPT * big * 8);
        assert_eq!(kept_bytes(), 0);
    }
}
