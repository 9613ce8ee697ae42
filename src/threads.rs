//! The thread pool every CPU kernel runs in.
//!
//! One pool for the process, sized from `FASTCTC_NUM_THREADS`, else `RAYON_NUM_THREADS`, else
//! the number of available cores; [`set_num_threads`] replaces it. Kept separate from rayon's
//! global pool so that resizing works at any time and never fights the caller's own rayon use.

use std::sync::{Arc, RwLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::CtcError;

static POOL: RwLock<Option<Arc<ThreadPool>>> = RwLock::new(None);

/// The thread count used when none was set: the first positive integer among
/// `FASTCTC_NUM_THREADS` and `RAYON_NUM_THREADS`, else the number of cores.
pub fn default_num_threads() -> usize {
    ["FASTCTC_NUM_THREADS", "RAYON_NUM_THREADS"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .filter_map(|value| value.trim().parse::<usize>().ok())
        .find(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

fn build(threads: usize) -> Result<Arc<ThreadPool>, CtcError> {
    ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("fastctc-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| CtcError::Setting {
            message: format!("could not start {threads} threads: {e}"),
        })
}

fn pool() -> Arc<ThreadPool> {
    if let Some(pool) = POOL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return Arc::clone(pool);
    }
    let mut slot = POOL.write().unwrap_or_else(|e| e.into_inner());
    if let Some(pool) = slot.as_ref() {
        return Arc::clone(pool);
    }
    let threads = default_num_threads();
    // Fall back to one thread if the OS refuses more: computing slowly beats failing.
    let pool = build(threads)
        .or_else(|_| build(1))
        .expect("a one-thread pool can always be built");
    *slot = Some(Arc::clone(&pool));
    pool
}

/// Sets the number of threads for all later calls. `threads` must be at least 1.
pub fn set_num_threads(threads: usize) -> Result<(), CtcError> {
    if threads == 0 {
        return Err(CtcError::Setting {
            message: "set_num_threads: the thread count must be at least 1, got 0".to_owned(),
        });
    }
    let pool = build(threads)?;
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some(pool);
    Ok(())
}

/// The number of threads calls run on.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// Runs `work` inside the pool.
pub fn install<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    pool().install(work)
}

/// Runs `helped` on one pool thread while the calling thread runs `own`, and returns when
/// both are done. For batches too small to amortise waking the whole pool: the caller starts
/// at once, and work shared through a queue does not wait for the worker to wake.
pub fn with_one_helper(helped: impl FnOnce() + Send, own: impl FnOnce()) {
    pool().in_place_scope(|scope| {
        scope.spawn(|_| helped());
        own();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_threads_is_an_error() {
        assert!(set_num_threads(0).is_err());
        assert!(num_threads() >= 1);
    }
}
