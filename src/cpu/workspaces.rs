//! Scratch memory kept between calls, and freed on request.
//!
//! Each job (a sample, or a group of short samples) borrows a workspace from a list kept
//! per kind and float type and hands it back when done, so repeated calls allocate nothing.
//! The lists are reachable from every thread, so `fastctc.empty_cache()` frees them all;
//! thread-local workspaces lived as long as their threads (one call with T=5000, S=2500
//! left 478 MiB resident for good). A call also frees the kept workspaces that are far
//! larger than it needed ([`trim`]): one long sample does not pin its table forever.
//!
//! The lists are never waited for indefinitely, like the gradient buffers (`crate::buffers`):
//! a thread that finds one busy for longer than a short spin makes a fresh workspace (or
//! frees the one it returns), so a child forked while a lock was held cannot hang on it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use super::lattice::Workspace;
use super::lockstep::GroupWorkspace;
use super::viterbi::ViterbiWorkspace;

/// Workspaces holding at most this many bytes are always kept: smaller tables cost little
/// to keep, and the common training shapes stay far below it.
const ALWAYS_KEEP_BYTES: usize = 64 << 20;
/// A workspace larger than this many times the largest table a call needs is freed by
/// that call.
const OVERSIZE_FACTOR: usize = 4;

/// Tries at a busy list before a thread does without it: far longer than a push or a pop.
const SPINS: usize = 1000;

/// What a kept workspace costs.
pub trait HeapBytes {
    /// Bytes held on the heap.
    fn heap_bytes(&self) -> usize;
}

impl<F: super::FastMath> HeapBytes for Workspace<F> {
    fn heap_bytes(&self) -> usize {
        Workspace::heap_bytes(self)
    }
}

impl<F> HeapBytes for GroupWorkspace<F> {
    fn heap_bytes(&self) -> usize {
        GroupWorkspace::heap_bytes(self)
    }
}

impl HeapBytes for ViterbiWorkspace {
    fn heap_bytes(&self) -> usize {
        ViterbiWorkspace::heap_bytes(self)
    }
}

/// The kept workspaces of one kind.
pub struct Kept<W>(Mutex<Vec<W>>);

impl<W: Default + HeapBytes> Kept<W> {
    pub const fn new() -> Self {
        Kept(Mutex::new(Vec::new()))
    }

    /// The list, if it is free within a short spin (see the module doc). The lock is held
    /// only for a push or a pop, so a spin finds it free unless its holder does not exist
    /// (a forked child); a thread that gave up at once would allocate a fresh workspace, and
    /// free it, every time two jobs end together.
    fn try_lock(&self) -> Option<MutexGuard<'_, Vec<W>>> {
        for _ in 0..SPINS {
            match self.0.try_lock() {
                Ok(guard) => return Some(guard),
                // A panic while holding the lock leaves whole workspaces: still usable.
                Err(TryLockError::Poisoned(poisoned)) => return Some(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => std::hint::spin_loop(),
            }
        }
        None
    }

    /// Runs `work` with a kept workspace (or a fresh one), then keeps it for later jobs.
    /// The list never holds more workspaces than were once in use at the same time (one
    /// per pool thread and calling thread).
    pub fn with<R>(&self, work: impl FnOnce(&mut W) -> R) -> R {
        let taken = self.try_lock().and_then(|mut kept| kept.pop());
        let mut workspace = taken.unwrap_or_default();
        let result = work(&mut workspace);
        LARGEST_KEPT.fetch_max(workspace.heap_bytes(), Ordering::Relaxed);
        match self.try_lock() {
            Some(mut kept) => kept.push(workspace),
            // Freed here, outside the lock.
            None => drop(workspace),
        }
        result
    }

    /// Frees the kept workspaces larger than `keep_bytes`; returns the bytes freed.
    fn free_above(&self, keep_bytes: usize) -> usize {
        let Some(mut kept) = self.try_lock() else {
            // Busy: what it holds is unknown, so the next trim looks again.
            LARGEST_KEPT.store(usize::MAX, Ordering::Relaxed);
            return 0;
        };
        // Every call trims: the common case (nothing to free) allocates nothing.
        if kept.iter().all(|w| w.heap_bytes() <= keep_bytes) {
            return 0;
        }
        let (large, small): (Vec<W>, Vec<W>) = std::mem::take(&mut *kept)
            .into_iter()
            .partition(|w| w.heap_bytes() > keep_bytes);
        *kept = small;
        drop(kept);
        // Freed here, outside the lock.
        large.iter().map(HeapBytes::heap_bytes).sum()
    }
}

/// At least the heap bytes of the largest kept workspace (an upper bound, lowered by
/// [`trim`] and [`release`]), so that a call's trim needs no lock when nothing is that large.
static LARGEST_KEPT: AtomicUsize = AtomicUsize::new(0);

static WORKSPACES_F32: Kept<Workspace<f32>> = Kept::new();
static WORKSPACES_F64: Kept<Workspace<f64>> = Kept::new();
static GROUP_WORKSPACES_F32: Kept<GroupWorkspace<f32>> = Kept::new();
static GROUP_WORKSPACES_F64: Kept<GroupWorkspace<f64>> = Kept::new();
pub(super) static VITERBI_WORKSPACES: Kept<ViterbiWorkspace> = Kept::new();

/// The kept workspaces of a float type.
pub trait KeptWorkspaces: super::FastMath {
    fn workspaces() -> &'static Kept<Workspace<Self>>;
    fn group_workspaces() -> &'static Kept<GroupWorkspace<Self>>;
}

impl KeptWorkspaces for f32 {
    fn workspaces() -> &'static Kept<Workspace<Self>> {
        &WORKSPACES_F32
    }
    fn group_workspaces() -> &'static Kept<GroupWorkspace<Self>> {
        &GROUP_WORKSPACES_F32
    }
}

impl KeptWorkspaces for f64 {
    fn workspaces() -> &'static Kept<Workspace<Self>> {
        &WORKSPACES_F64
    }
    fn group_workspaces() -> &'static Kept<GroupWorkspace<Self>> {
        &GROUP_WORKSPACES_F64
    }
}

/// Frees the kept workspaces far larger than a call whose largest table is `needed_bytes`
/// needs (see the module doc); returns the bytes freed.
pub fn trim(needed_bytes: usize) -> usize {
    let keep = ALWAYS_KEEP_BYTES.max(needed_bytes.saturating_mul(OVERSIZE_FACTOR));
    // Every call trims; most find nothing that large, without taking any lock.
    if LARGEST_KEPT.load(Ordering::Relaxed) <= keep {
        return 0;
    }
    free_all_above(keep)
}

/// Frees every kept workspace; returns the bytes freed.
pub fn release() -> usize {
    // Workspaces that hold nothing cost nothing: keep those.
    free_all_above(0)
}

fn free_all_above(keep: usize) -> usize {
    // What is left is at most `keep`: a workspace returned meanwhile raises it again, and a
    // list found busy sets it to "unknown".
    LARGEST_KEPT.store(keep, Ordering::Relaxed);
    WORKSPACES_F32.free_above(keep)
        + WORKSPACES_F64.free_above(keep)
        + GROUP_WORKSPACES_F32.free_above(keep)
        + GROUP_WORKSPACES_F64.free_above(keep)
        + VITERBI_WORKSPACES.free_above(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake(Vec<u8>);

    impl HeapBytes for Fake {
        fn heap_bytes(&self) -> usize {
            self.0.capacity()
        }
    }

    #[test]
    fn keeps_reuses_and_frees_workspaces() {
        let kept: Kept<Fake> = Kept::new();
        kept.with(|w| w.0.reserve_exact(1000));
        // The same workspace comes back, with its memory.
        kept.with(|w| assert!(w.0.capacity() >= 1000));
        assert_eq!(kept.free_above(10_000), 0);
        assert!(kept.free_above(0) >= 1000);
        kept.with(|w| assert_eq!(w.0.capacity(), 0));
    }
}
