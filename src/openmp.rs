//! Running a batch's jobs on the calling thread's OpenMP team, when the process has one.
//!
//! Inside a PyTorch training step the model's CPU operators run on torch's OpenMP threads
//! (GNU OpenMP, `libgomp`), which then keep spinning for several milliseconds waiting for the
//! next parallel region. Work handed to fastctc's own pool right after competes with them for
//! the cores: measured on a 2-core VM, the ASR-characters batch took 11.5 ms right after a
//! small model's forward and backward against 6.2 ms alone, 7.1 ms 20 ms later, and 6.9 ms
//! with `OMP_WAIT_POLICY=PASSIVE` (no spinning). Those spinning threads are waiting for exactly
//! this: so when enabled (by `fastctc.torch`, see [`enable`]), a batch runs as one OpenMP
//! parallel region of the calling thread (`GOMP_parallel`), whose team shares one queue of
//! jobs, and no thread competes with another.
//!
//! The runtime is found among the objects the process has already loaded (torch's own copy
//! of `libgomp`), never loaded by fastctc. It is not used from inside a parallel region, nor
//! in a process forked after [`enable`] (GNU OpenMP's threads do not survive a fork).

use std::ffi::{c_int, c_uint, c_void};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// The entry points of GNU OpenMP that fastctc calls.
struct Runtime {
    /// `GOMP_parallel(fn, data, num_threads, flags)`: runs `fn(data)` on every thread of a
    /// team of `num_threads` (0: the calling thread's default), the caller included.
    parallel: unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint),
    in_parallel: unsafe extern "C" fn() -> c_int,
    max_threads: unsafe extern "C" fn() -> c_int,
}

static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
/// The process that enabled the team (0: disabled).
static ENABLED_PID: AtomicU32 = AtomicU32::new(0);
/// Batches run on an OpenMP team so far (a diagnostic the tests read).
static BATCHES: AtomicUsize = AtomicUsize::new(0);

/// Runs later batches on the calling thread's OpenMP team, in this process; returns whether
/// an OpenMP runtime was found (else nothing changes).
pub fn enable() -> bool {
    let found = runtime().is_some();
    if found {
        ENABLED_PID.store(std::process::id(), Ordering::Relaxed);
    }
    found
}

/// Back to fastctc's own pool.
pub fn disable() {
    ENABLED_PID.store(0, Ordering::Relaxed);
}

/// How many batches have run on an OpenMP team in this process.
pub fn batches() -> usize {
    BATCHES.load(Ordering::Relaxed)
}

/// The runtime, when enabled in this very process and not already inside a parallel region.
fn active() -> Option<&'static Runtime> {
    if ENABLED_PID.load(Ordering::Relaxed) != std::process::id() {
        return None;
    }
    let runtime = runtime().as_ref()?;
    // SAFETY: a GNU OpenMP entry point without arguments, callable from any thread.
    (unsafe { (runtime.in_parallel)() } == 0).then_some(runtime)
}

fn runtime() -> &'static Option<Runtime> {
    RUNTIME.get_or_init(find)
}

/// Shared by the team: the jobs left and what to do with each.
struct Queue<'w, T> {
    jobs: Mutex<std::vec::IntoIter<T>>,
    work: &'w (dyn Fn(T) + Sync),
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

/// Runs `work` on every job on the calling thread's OpenMP team of at most `threads`
/// threads, each taking the next job from one queue; or hands the jobs back when no team is
/// enabled here (the caller then uses its own pool).
pub fn for_each_job<T: Send>(
    jobs: Vec<T>,
    threads: usize,
    work: &(dyn Fn(T) + Sync),
) -> Result<(), Vec<T>> {
    let Some(runtime) = active() else {
        return Err(jobs);
    };
    // SAFETY: as in `active`.
    let team = usize::try_from(unsafe { (runtime.max_threads)() }).unwrap_or(1);
    let team = team.clamp(1, threads.max(1)).min(jobs.len());
    let queue = Queue {
        jobs: Mutex::new(jobs.into_iter()),
        work,
        panic: Mutex::new(None),
    };
    // SAFETY: `run_queue::<T>` reads `queue` through the pointer only while GOMP_parallel
    // runs, and GOMP_parallel returns once every thread of the team has finished it.
    unsafe {
        (runtime.parallel)(
            run_queue::<T>,
            &queue as *const Queue<'_, T> as *mut c_void,
            team as c_uint,
            0,
        );
    }
    BATCHES.fetch_add(1, Ordering::Relaxed);
    if let Some(payload) = queue.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
        panic::resume_unwind(payload);
    }
    Ok(())
}

/// One team thread's part: jobs until the queue is empty. A panic must not unwind into
/// OpenMP's C frames: it is caught, the queue emptied, and the panic resumed by the caller.
extern "C" fn run_queue<T>(data: *mut c_void) {
    // SAFETY: `data` is the `Queue<T>` of the `for_each_job` call that started this region.
    let queue = unsafe { &*(data as *const Queue<'_, T>) };
    let result = panic::catch_unwind(AssertUnwindSafe(|| loop {
        let next = queue.jobs.lock().unwrap_or_else(|e| e.into_inner()).next();
        match next {
            Some(job) => (queue.work)(job),
            None => break,
        }
    }));
    if let Err(payload) = result {
        queue
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_ref()
            .for_each(drop);
        let mut slot = queue.panic.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(payload);
    }
}

/// GNU OpenMP, if the process has loaded it: the first loaded object whose file name holds
/// `libgomp`, opened again without loading anything (`RTLD_NOLOAD`).
#[cfg(target_os = "linux")]
fn find() -> Option<Runtime> {
    use std::ffi::{CStr, CString};

    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        found: *mut c_void,
    ) -> c_int {
        // SAFETY: the loader passes a valid `dl_phdr_info`, and `found` is the `Option` below.
        let (info, found) = unsafe { (&*info, &mut *(found as *mut Option<CString>)) };
        if info.dlpi_name.is_null() {
            return 0;
        }
        // SAFETY: a loaded object's name is a NUL-terminated string.
        let name = unsafe { CStr::from_ptr(info.dlpi_name) };
        let is_gomp = name
            .to_bytes()
            .rsplit(|&b| b == b'/')
            .next()
            .is_some_and(|file| file.starts_with(b"libgomp"));
        if is_gomp {
            *found = Some(name.to_owned());
            return 1;
        }
        0
    }

    let mut path: Option<CString> = None;
    // SAFETY: `visit` matches the callback type and only writes `path`.
    unsafe {
        libc::dl_iterate_phdr(
            Some(visit),
            &mut path as *mut Option<CString> as *mut c_void,
        )
    };
    let path = path?;
    // SAFETY: RTLD_NOLOAD returns a handle only for an object already loaded (never loads
    // one); the handle is kept for the life of the process, like the object itself.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        return None;
    }
    let symbol = |name: &CStr| {
        // SAFETY: `handle` is a valid handle from dlopen.
        let address = unsafe { libc::dlsym(handle, name.as_ptr()) };
        (!address.is_null()).then_some(address)
    };
    let parallel = symbol(c"GOMP_parallel")?;
    let in_parallel = symbol(c"omp_in_parallel")?;
    let max_threads = symbol(c"omp_get_max_threads")?;
    // SAFETY: these are GNU OpenMP's exported functions, with these C signatures (the ABI
    // GCC compiles `#pragma omp parallel` to, and the OpenMP API).
    unsafe {
        Some(Runtime {
            parallel: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint),
            >(parallel),
            in_parallel: std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(
                in_parallel,
            ),
            max_threads: std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(
                max_threads,
            ),
        })
    }
}

#[cfg(not(target_os = "linux"))]
fn find() -> Option<Runtime> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_enable_the_jobs_come_back() {
        let jobs = vec![1, 2, 3];
        let back = for_each_job(jobs, 4, &|_: i32| unreachable!()).unwrap_err();
        assert_eq!(back, vec![1, 2, 3]);
    }
}
