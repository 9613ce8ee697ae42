//! What each sample needs on the device, and how a batch is split into chunks whose buffers
//! fit the device's limits.
//!
//! Every buffer a chunk binds must fit in one storage binding (128 MiB on lavapipe, more on
//! most GPUs); a dispatch has at most `max_compute_workgroups_per_dimension` workgroups. A
//! batch that exceeds either is split into chunks run one after the other. A sample whose
//! alpha table alone is too large keeps only every k-th row (k near sqrt(T)) and recomputes
//! the others during the backward sweep, so T and S are not capped by the table; only a
//! sample whose own `T x C` input exceeds one binding cannot run on the GPU.

use super::contract::{out, HEADER, META, WORK_CELL_BYTES};
use crate::error::CtcError;

/// Rows of `work` the backward sweep needs besides the alpha rows: two w rows, two occupancy
/// rows.
const BACK_ROWS: usize = 4;

/// How large a chunk may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// The most bytes any one buffer of a chunk may hold.
    pub buffer_bytes: u64,
    /// The most workgroups (samples) in one dispatch.
    pub workgroups: u32,
}

/// One sample's share of a chunk's buffers, in elements (floats, `u32` for `info`, lattice
/// cells of [`WORK_CELL_BYTES`] for `work`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    /// The sample's index in the batch.
    pub n: usize,
    pub t_len: usize,
    /// Extended states, `2L + 1`.
    pub states: usize,
    /// Distinct label classes.
    pub groups: usize,
    /// 0: loss only (two rolling alpha rows); k >= 1: every k-th alpha row is kept.
    pub ckpt: usize,
    /// `t_len * C`: the sample's input and gradient rows.
    pub rows: usize,
    pub work: usize,
    /// Frame log-sum-exps (logits input), frame maxima, the end term, the status, the value
    /// one backward span hands the next, and the cut-loops flag.
    pub out: usize,
    pub info: usize,
}

impl Job {
    /// The sizes of sample `n`, or an error when it cannot fit in `budget` on its own.
    pub fn new(
        n: usize,
        t_len: usize,
        labels: &[u32],
        classes: usize,
        with_grad: bool,
        elem_bytes: usize,
        budget: Budget,
    ) -> Result<Job, CtcError> {
        let cap = (budget.buffer_bytes / elem_bytes as u64) as usize;
        let states = 2 * labels.len() + 1;
        let rows = t_len.saturating_mul(classes);
        let mib = |elements: usize| (elements * elem_bytes) as f64 / (1u64 << 20) as f64;
        if rows > cap {
            return Err(CtcError::Gpu {
                message: format!(
                    "sample {n}: its {t_len} frames x {classes} classes ({:.1} MiB) exceed the \
                     largest GPU buffer fastctc may use ({:.1} MiB); use device='cpu' for it",
                    mib(rows),
                    mib(cap)
                ),
            });
        }
        let cells = (budget.buffer_bytes / WORK_CELL_BYTES as u64) as usize;
        let ckpt = if with_grad {
            checkpoint(t_len, states, cells).ok_or_else(|| CtcError::Gpu {
                message: format!(
                    "sample {n}: a target of {} labels over {t_len} frames needs more lattice \
                     memory than the largest GPU buffer fastctc may use ({:.1} MiB), even \
                     keeping one alpha row in {}; use device='cpu' for it",
                    labels.len(),
                    mib(cap),
                    t_len.isqrt().max(1)
                ),
            })?
        } else {
            0
        };
        let work = states * work_rows(t_len, ckpt);
        let mut distinct = labels.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let groups = distinct.len();
        Ok(Job {
            n,
            t_len,
            states,
            groups,
            ckpt,
            rows,
            work,
            out: 2 * t_len + out::SLOTS,
            info: META + states + 3 * groups + labels.len(),
        })
    }

    /// Lattice cells: the order in which a chunk's workgroups are dispatched.
    fn cost(&self) -> usize {
        self.t_len * self.states
    }
}

/// Rows of `work` one sample uses.
fn work_rows(t_len: usize, ckpt: usize) -> usize {
    match ckpt {
        0 => 2,
        k => t_len.div_ceil(k) + (k - 1) + BACK_ROWS,
    }
}

/// The smallest k such that keeping every k-th alpha row fits in `cap` elements: 1 (the whole
/// table) when it fits, else the first k up to about sqrt(T) that does.
fn checkpoint(t_len: usize, states: usize, cap: usize) -> Option<usize> {
    (1..=t_len.max(1))
        .take_while(|&k| k == 1 || (k - 1) * (k - 1) <= t_len)
        .find(|&k| {
            work_rows(t_len, k)
                .checked_mul(states)
                .is_some_and(|n| n <= cap)
        })
}

/// Samples run together: one dispatch of each kernel, one set of buffers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// In dispatch order, most expensive first.
    pub jobs: Vec<Job>,
    pub rows: usize,
    pub work: usize,
    pub out: usize,
    pub info: usize,
}

impl Chunk {
    fn push(&mut self, job: Job) {
        self.rows += job.rows;
        self.work += job.work;
        self.out += job.out;
        self.info += job.info;
        self.jobs.push(job);
    }

    fn admits(&self, job: &Job, budget: Budget, elem_bytes: usize) -> bool {
        let cap = (budget.buffer_bytes / elem_bytes as u64) as usize;
        let cells = (budget.buffer_bytes / WORK_CELL_BYTES as u64) as usize;
        let info_cap = (budget.buffer_bytes / 4) as usize;
        self.jobs.len() < budget.workgroups as usize
            && self.rows + job.rows <= cap
            && self.work + job.work <= cells
            && self.out + job.out <= cap
            && HEADER + self.info + job.info <= info_cap
    }
}

/// Splits jobs, in batch order, into as few chunks as the budget allows.
pub(crate) fn plan(jobs: Vec<Job>, budget: Budget, elem_bytes: usize) -> Vec<Chunk> {
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut current = Chunk::default();
    for job in jobs {
        if !current.jobs.is_empty() && !current.admits(&job, budget, elem_bytes) {
            chunks.push(std::mem::take(&mut current));
        }
        current.push(job);
    }
    if !current.jobs.is_empty() {
        chunks.push(current);
    }
    for chunk in &mut chunks {
        chunk.jobs.sort_by_key(|job| std::cmp::Reverse(job.cost()));
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn budget(bytes: u64) -> Budget {
        Budget {
            buffer_bytes: bytes,
            workgroups: 65535,
        }
    }

    #[test]
    fn small_batches_are_one_chunk_with_full_tables() {
        let jobs: Vec<Job> = (0..8)
            .map(|n| Job::new(n, 50 + n, &[1, 2, 2], 10, true, 4, budget(128 * MIB)).unwrap())
            .collect();
        assert!(jobs
            .iter()
            .all(|j| j.ckpt == 1 && j.states == 7 && j.groups == 2));
        assert_eq!(jobs[0].work, 7 * (50 + 4));
        let chunks = plan(jobs, budget(128 * MIB), 4);
        assert_eq!(chunks.len(), 1);
        // Most expensive first.
        assert_eq!(chunks[0].jobs[0].n, 7);
        assert_eq!(chunks[0].rows, (50..58).sum::<usize>() * 10);
    }

    #[test]
    fn loss_only_keeps_two_rows() {
        let job = Job::new(0, 1000, &[1; 10], 5, false, 4, budget(MIB)).unwrap();
        assert_eq!((job.ckpt, job.work), (0, 2 * 21));
    }

    #[test]
    fn large_batches_split_at_the_budget() {
        // 100 samples of 1000 frames x 100 classes: 400 kB of input each; 1 MiB buffers
        // hold two.
        let jobs: Vec<Job> = (0..100)
            .map(|n| Job::new(n, 1000, &[3], 100, true, 4, budget(MIB)).unwrap())
            .collect();
        let chunks = plan(jobs, budget(MIB), 4);
        assert_eq!(chunks.len(), 50);
        let mut seen: Vec<usize> = chunks
            .iter()
            .flat_map(|c| c.jobs.iter().map(|j| j.n))
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        for chunk in &chunks {
            assert!(chunk.rows * 4 <= MIB as usize && chunk.work * WORK_CELL_BYTES <= MIB as usize);
        }
    }

    #[test]
    fn workgroup_limit_splits_too() {
        let jobs: Vec<Job> = (0..10)
            .map(|n| Job::new(n, 5, &[1], 3, true, 4, budget(MIB)).unwrap())
            .collect();
        let b = Budget {
            buffer_bytes: MIB,
            workgroups: 4,
        };
        let sizes: Vec<usize> = plan(jobs, b, 4).iter().map(|c| c.jobs.len()).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
    }

    #[test]
    fn long_samples_keep_every_kth_row() {
        // T = 10000, S = 1000: the full table is 160 MB; with 8 MiB buffers k ~ sqrt(T) rows.
        let labels: Vec<u32> = (0..1000).map(|j| 1 + j % 7).collect();
        let job = Job::new(0, 10_000, &labels, 8, true, 4, budget(8 * MIB)).unwrap();
        assert!(job.ckpt > 1 && job.ckpt <= 101, "k = {}", job.ckpt);
        assert!(job.work * WORK_CELL_BYTES <= 8 * MIB as usize);
        assert_eq!(job.work, 2001 * work_rows(10_000, job.ckpt));
        // And the same sample with room for the whole table keeps it.
        let job = Job::new(0, 10_000, &labels, 8, true, 4, budget(256 * MIB)).unwrap();
        assert_eq!(job.ckpt, 1);
    }

    #[test]
    fn samples_that_cannot_fit_are_errors() {
        let err = Job::new(3, 1000, &[1], 1000, true, 4, budget(MIB)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("sample 3") && text.contains("device='cpu'"),
            "{text}"
        );
        let labels = vec![1u32; 100_000];
        let err = Job::new(0, 200_001, &labels, 1, true, 4, budget(MIB)).unwrap_err();
        assert!(err.to_string().contains("lattice memory"));
    }
}
