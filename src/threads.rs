//! The thread pool every CPU kernel runs in.
//!
//! One pool for the process, sized from `FASTCTC_NUM_THREADS`, else `RAYON_NUM_THREADS`, else
//! the number of available cores shared among the processes of a data-parallel job on this
//! machine (`LOCAL_WORLD_SIZE`); [`set_num_threads`] replaces it. Kept separate from rayon's
//! global pool so that resizing works at any time and never fights the caller's own rayon use.
//! An environment value above [`MAX_THREADS_PER_CORE`] threads per available core is clamped
//! to that bound, with one warning on stderr: the kernels are CPU-bound, so more threads only
//! cost memory, and a count the operating system refuses (`FASTCTC_NUM_THREADS=1000000`)
//! used to leave the process on one thread after spawning tens of thousands.
//!
//! A forked child (Python's `multiprocessing` on Linux, a PyTorch `DataLoader` worker)
//! inherits the pool but none of its threads: work handed to it would wait forever. The
//! pool remembers the process that started it, and a child starts its own, of the same size.

use std::sync::{Arc, Condvar, Mutex, RwLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::CtcError;

/// The pool, and the process whose threads it has.
struct OwnedPool {
    pool: Arc<ThreadPool>,
    pid: u32,
}

static POOL: RwLock<Option<OwnedPool>> = RwLock::new(None);

/// The most threads per available core an environment variable may ask for; above, the
/// count is clamped (see [`default_num_threads`]).
pub const MAX_THREADS_PER_CORE: usize = 4;

/// The number of cores this process may run on (affinity and cgroup quota included).
fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The thread count used when none was set: the first positive integer among
/// `FASTCTC_NUM_THREADS` and `RAYON_NUM_THREADS`, else the available cores divided among the
/// processes of this machine (see [`cores_per_local_process`]). A value above
/// `MAX_THREADS_PER_CORE` times the available cores is clamped to that, with a warning on
/// stderr (once per process).
pub fn default_num_threads() -> usize {
    let cores = available_cores();
    let found = ["FASTCTC_NUM_THREADS", "RAYON_NUM_THREADS"]
        .iter()
        .filter_map(|&name| Some((name, std::env::var(name).ok()?)))
        .filter_map(|(name, value)| Some((name, value.trim().parse::<u128>().ok()?)))
        .find(|&(_, n)| n > 0);
    match found {
        Some((name, n)) => {
            let (threads, clamped) = clamp_threads(n, cores);
            if clamped {
                warn_once(&format!(
                    "fastctc: {name}={n} is more than {MAX_THREADS_PER_CORE} threads per \
                     available core ({cores} available); using {threads} threads"
                ));
            }
            threads
        }
        None => cores_per_local_process(cores, std::env::var("LOCAL_WORLD_SIZE").ok()),
    }
}

/// `cores` shared among the `local_world_size` processes of a data-parallel job on this
/// machine (the variable torchrun and `torch.distributed` launchers set for each of them), at
/// least one each: two ranks on one machine then do not oversubscribe its cores. Without the
/// variable (or with a value that is not a positive integer) this process has them all.
fn cores_per_local_process(cores: usize, local_world_size: Option<String>) -> usize {
    let processes = local_world_size
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1);
    (cores / processes).max(1)
}

/// `requested` threads, at most `MAX_THREADS_PER_CORE * cores`; and whether it was clamped.
fn clamp_threads(requested: u128, cores: usize) -> (usize, bool) {
    let bound = MAX_THREADS_PER_CORE.saturating_mul(cores.max(1));
    match usize::try_from(requested) {
        Ok(n) if n <= bound => (n, false),
        _ => (bound, true),
    }
}

/// Prints `message` on stderr, the first time only.
fn warn_once(message: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| eprintln!("{message}"));
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
    let pid = std::process::id();
    if let Some(owned) = POOL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        if owned.pid == pid {
            return Arc::clone(&owned.pool);
        }
    }
    let mut slot = POOL.write().unwrap_or_else(|e| e.into_inner());
    let threads = match slot.take() {
        Some(owned) if owned.pid == pid => {
            let pool = Arc::clone(&owned.pool);
            *slot = Some(owned);
            return pool;
        }
        Some(inherited) => {
            // A forked child: the parent's threads do not exist here. Not dropped: that
            // would signal threads of another process's pool (none of which run here).
            let threads = inherited.pool.current_num_threads();
            std::mem::forget(inherited);
            threads
        }
        None => default_num_threads(),
    };
    // Fall back to one thread if the OS refuses more: computing slowly beats failing.
    let pool = build(threads)
        .or_else(|_| build(1))
        .expect("a one-thread pool can always be built");
    *slot = Some(OwnedPool {
        pool: Arc::clone(&pool),
        pid,
    });
    pool
}

/// Sets the number of threads for all later calls. `threads` must be at least 1.
pub fn set_num_threads(threads: usize) -> Result<(), CtcError> {
    if threads == 0 {
        return Err(CtcError::ThreadCount { value: 0 });
    }
    let pool = build(threads)?;
    let pid = std::process::id();
    let old = POOL
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .replace(OwnedPool { pool, pid });
    if let Some(inherited) = old.filter(|old| old.pid != pid) {
        std::mem::forget(inherited); // as in `pool`
    }
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

/// Runs `work` on every job, on the calling thread and at most one pool thread, both taking
/// the next job from one queue; returns when every job is done.
///
/// For batches too small to amortise waking the whole pool. The caller starts at once and
/// never waits for the helper to wake: if the pool thread is asleep or descheduled (torch's
/// OpenMP threads spin on the same cores, for instance), the caller simply does every job,
/// and the helper, when it finally runs, finds the queue closed and touches nothing.
pub fn share_with_one_helper<T: Send>(jobs: Vec<T>, work: &(dyn Fn(T) + Sync)) {
    let shared = Shared {
        queue: Mutex::new(jobs.into_iter()),
        work,
    };
    let handshake = Arc::new(Handshake {
        state: Mutex::new(HelperState {
            shared: &shared as *const Shared<'_, T> as usize,
            active: false,
        }),
        idle: Condvar::new(),
    });
    // The helper knows the job type only through this function pointer, so that the task it
    // runs is 'static although the jobs borrow the caller's data.
    let run: fn(usize) = run_helper::<T>;
    let remote = Arc::clone(&handshake);
    pool().spawn(move || {
        let shared = {
            let mut state = lock(&remote.state);
            if state.shared == 0 {
                return; // the caller finished and left: nothing to do, nothing to touch
            }
            state.active = true;
            state.shared
        };
        // Marks the helper inactive even if a job panics, so the caller cannot wait forever.
        let _done = ActiveGuard(&remote);
        run(shared);
    });
    // Closes the queue and waits for a running helper, also when a job panics here: the
    // helper must not touch `shared` after this function returns.
    let _close = CloseGuard(&handshake);
    drain(&shared);
}

/// The queue and the work of one `share_with_one_helper` call, on the caller's stack.
struct Shared<'w, T> {
    queue: Mutex<std::vec::IntoIter<T>>,
    work: &'w (dyn Fn(T) + Sync),
}

struct HelperState {
    /// Address of the caller's `Shared` while the caller is inside the call, else 0.
    shared: usize,
    /// The helper is using `shared`.
    active: bool,
}

struct Handshake {
    state: Mutex<HelperState>,
    idle: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn drain<T>(shared: &Shared<'_, T>) {
    loop {
        let next = lock(&shared.queue).next();
        match next {
            Some(job) => (shared.work)(job),
            None => break,
        }
    }
}

fn run_helper<T>(shared: usize) {
    // SAFETY: `shared` is the address of the caller's live `Shared<T>`: the helper read it
    // (non-zero) and set `active` under the handshake lock, and the caller, before leaving
    // `share_with_one_helper`, zeroes it under the same lock and waits until `active` is
    // false again, so the value outlives every use here.
    let shared = unsafe { &*(shared as *const Shared<'_, T>) };
    drain(shared);
}

struct ActiveGuard<'h>(&'h Handshake);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).active = false;
        self.0.idle.notify_all();
    }
}

struct CloseGuard<'h>(&'h Handshake);

impl Drop for CloseGuard<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.shared = 0;
        while state.active {
            state = self.0.idle.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_helper_runs_every_job_once_with_borrowed_data() {
        set_num_threads(2).unwrap();
        for round in 0..200 {
            let mut out = vec![0usize; 64];
            let jobs: Vec<(usize, &mut usize)> = out.iter_mut().enumerate().collect();
            let work = |(i, slot): (usize, &mut usize)| {
                if round % 7 == 0 {
                    std::thread::yield_now();
                }
                *slot += i + 1;
            };
            share_with_one_helper(jobs, &work);
            let want: Vec<usize> = (1..=64).collect();
            assert_eq!(out, want, "round {round}");
        }
    }

    #[test]
    fn environment_counts_are_clamped_to_a_few_per_core() {
        assert_eq!(clamp_threads(3, 2), (3, false));
        assert_eq!(clamp_threads(8, 2), (8, false));
        assert_eq!(clamp_threads(9, 2), (8, true));
        assert_eq!(clamp_threads(1_000_000, 16), (64, true));
        assert_eq!(clamp_threads(u128::MAX, 1), (4, true));
        assert_eq!(clamp_threads(5, 0), (4, true));
    }

    #[test]
    fn ranks_on_one_machine_share_its_cores() {
        let share =
            |cores, value: Option<&str>| cores_per_local_process(cores, value.map(String::from));
        assert_eq!(share(16, None), 16);
        assert_eq!(share(16, Some("2")), 8);
        assert_eq!(share(16, Some(" 3 ")), 5);
        assert_eq!(share(2, Some("4")), 1);
        for ignored in ["0", "-2", "two", ""] {
            assert_eq!(share(16, Some(ignored)), 16, "{ignored:?}");
        }
    }

    #[test]
    fn zero_threads_is_an_error() {
        assert!(set_num_threads(0).is_err());
        assert!(num_threads() >= 1);
    }
}
