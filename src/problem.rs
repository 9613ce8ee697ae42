//! Validation: every invariant of a CTC batch is checked here, once, before any backend runs.
//!
//! The result, [`Problem`], is a batch that backends can trust: lengths within bounds, labels
//! in `[0, C)` and never the blank, one target slice per sample. Backends index without
//! re-checking.

use std::ops::Range;

use ndarray::{ArrayView1, ArrayView2, ArrayView3};

use crate::error::CtcError;
use crate::memory;
use crate::options::Options;

/// Targets in one of torch's two layouts.
#[derive(Debug, Clone, Copy)]
pub enum Targets<'a> {
    /// `(N, S)`, each row padded; entries past a sample's target length are never read.
    Padded(ArrayView2<'a, i64>),
    /// All targets back to back; length `sum(target_lengths)`.
    Concatenated(ArrayView1<'a, i64>),
}

/// One sample of a validated batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Frames `0..input_len` of this sample are used.
    pub input_len: usize,
    /// Where this sample's labels sit in [`Problem::labels`].
    pub labels: Range<usize>,
}

impl Sample {
    /// Number of target labels.
    pub fn target_len(&self) -> usize {
        self.labels.len()
    }

    /// Lattice cells of this sample, `T * (2S + 1)`: its share of the work.
    pub fn cost(&self) -> usize {
        self.input_len.max(1) * (2 * self.target_len() + 1)
    }
}

/// The fewest frames that can emit `labels`: one per label, and a blank between equal
/// neighbours (a repeated label needs one to stay two labels).
pub fn min_frames(labels: &[u32]) -> usize {
    labels.len() + labels.windows(2).filter(|w| w[0] == w[1]).count()
}

/// The log-likelihood of a sample the lattice has nothing to do for, or `None` when it must
/// run: no frames and no labels is the empty alignment (0); no frames for a non-empty target,
/// or fewer frames than [`min_frames`], has no alignment (`-inf`).
pub fn settled_log_likelihood(input_len: usize, labels: &[u32]) -> Option<f64> {
    if input_len == 0 && labels.is_empty() {
        Some(0.0)
    } else if input_len < min_frames(labels) {
        Some(f64::NEG_INFINITY)
    } else {
        None
    }
}

/// A batch whose every invariant holds.
#[derive(Debug, Clone)]
pub struct Problem<'a, F> {
    /// `(T, N, C)`, any strides.
    pub log_probs: ArrayView3<'a, F>,
    /// The blank class, in `[0, C)`.
    pub blank: usize,
    /// One entry per sample.
    pub samples: Vec<Sample>,
    /// Every sample's labels back to back, each in `[0, C)` and never `blank`.
    pub labels: Vec<u32>,
    /// Reduction, zero_infinity and gradient convention.
    pub options: Options,
}

impl<'a, F> Problem<'a, F> {
    /// `(T, N, C)`.
    pub fn dims(&self) -> (usize, usize, usize) {
        self.log_probs.dim()
    }

    /// The labels of sample `n`.
    pub fn labels_of(&self, n: usize) -> &[u32] {
        &self.labels[self.samples[n].labels.clone()]
    }

    /// [`settled_log_likelihood`] of sample `n`.
    pub fn settled(&self, n: usize) -> Option<f64> {
        settled_log_likelihood(self.samples[n].input_len, self.labels_of(n))
    }
}

/// Checks a batch and returns it in validated form.
///
/// `blank` may be negative (counted from the end, `-1` is `C - 1`).
pub fn validate<'a, F>(
    log_probs: ArrayView3<'a, F>,
    targets: Targets<'_>,
    input_lengths: ArrayView1<'_, i64>,
    target_lengths: ArrayView1<'_, i64>,
    blank: i64,
    options: Options,
) -> Result<Problem<'a, F>, CtcError> {
    let (t_max, batch, classes) = log_probs.dim();
    for (dimension, size) in [("T", t_max), ("N", batch), ("C", classes)] {
        if size == 0 {
            return Err(CtcError::EmptyDimension {
                dimension,
                shape: vec![t_max, batch, classes],
            });
        }
    }
    let blank = resolve_blank(blank, classes)?;
    if let Some(value) = options.star_score {
        if !value.is_finite() {
            return Err(CtcError::StarScore { value });
        }
    }
    let star = options.star_score.is_some();

    check_batch_size("input_lengths", input_lengths.len(), batch)?;
    check_batch_size("target_lengths", target_lengths.len(), batch)?;
    if let Targets::Padded(rows) = targets {
        check_batch_size("targets", rows.nrows(), batch)?;
    }

    // Per-sample vectors are allocated fallibly: a batch of broadcast views can ask for
    // gigabytes of them without holding any memory itself (see `memory`).
    let mut input_lens = memory::vec_with_capacity("the per-sample records", batch)?;
    for (n, &value) in input_lengths.iter().enumerate() {
        input_lens.push(check_length("input_lengths", n, value, "T", t_max)?);
    }

    let target_limit = match targets {
        Targets::Padded(rows) => ("S", rows.ncols()),
        // Bounded by the sum check below; here only the sign matters.
        Targets::Concatenated(flat) => ("len(targets)", flat.len()),
    };
    let mut target_lens = memory::vec_with_capacity("the per-sample records", batch)?;
    for (n, &value) in target_lengths.iter().enumerate() {
        let (limit_name, limit) = target_limit;
        target_lens.push(check_length("target_lengths", n, value, limit_name, limit)?);
    }

    if let Targets::Concatenated(flat) = targets {
        let expected: u128 = target_lens.iter().map(|&l| l as u128).sum();
        if expected != flat.len() as u128 {
            return Err(CtcError::ConcatenatedLength {
                expected,
                got: flat.len(),
            });
        }
    }

    // No overflow: each padded length is at most S, so the sum is at most the N x S elements
    // of the targets' view; concatenated lengths sum to len(targets), checked above.
    let label_count = target_lens.iter().sum();
    let mut labels = memory::vec_with_capacity("the target labels", label_count)?;
    let mut samples = memory::vec_with_capacity("the per-sample records", batch)?;
    let mut offset = 0usize;
    for (n, (&input_len, &target_len)) in input_lens.iter().zip(&target_lens).enumerate() {
        let start = labels.len();
        for position in 0..target_len {
            let value = match targets {
                Targets::Padded(rows) => rows[[n, position]],
                Targets::Concatenated(flat) => flat[offset + position],
            };
            labels.push(check_label(n, position, value, classes, blank, star)?);
        }
        offset += target_len;
        samples.push(Sample {
            input_len,
            labels: start..labels.len(),
        });
    }

    Ok(Problem {
        log_probs,
        blank,
        samples,
        labels,
        options,
    })
}

fn resolve_blank(blank: i64, classes: usize) -> Result<usize, CtcError> {
    let c = classes as i64;
    let resolved = if blank < 0 { blank + c } else { blank };
    if (0..c).contains(&resolved) {
        Ok(resolved as usize)
    } else {
        Err(CtcError::Blank {
            value: blank,
            classes,
        })
    }
}

fn check_batch_size(argument: &'static str, got: usize, batch: usize) -> Result<(), CtcError> {
    if got == batch {
        return Ok(());
    }
    let what = if argument == "targets" {
        "rows"
    } else {
        "entries"
    };
    Err(CtcError::Shape {
        argument,
        message: format!("has {got} {what}, but log_probs has batch size N={batch}"),
    })
}

fn check_length(
    argument: &'static str,
    sample: usize,
    value: i64,
    limit_name: &'static str,
    limit: usize,
) -> Result<usize, CtcError> {
    if value >= 0 && (value as u64) <= limit as u64 {
        Ok(value as usize)
    } else {
        Err(CtcError::Length {
            argument,
            sample,
            value,
            limit_name,
            limit,
        })
    }
}

/// A label in `[0, C)`, or `[0, C]` with a star token (`star`: the class `C`).
fn check_label(
    sample: usize,
    position: usize,
    value: i64,
    classes: usize,
    blank: usize,
    star: bool,
) -> Result<u32, CtcError> {
    let error = || CtcError::Label {
        sample,
        position,
        value,
        classes,
        star,
    };
    if value < 0 || value as u64 >= classes as u64 + star as u64 {
        return Err(error());
    }
    if value as usize == blank {
        return Err(CtcError::BlankInTarget {
            sample,
            position,
            blank,
        });
    }
    // Labels fit u32: C is an array dimension and a u32 holds any realistic vocabulary;
    // larger C is rejected rather than truncated.
    u32::try_from(value).map_err(|_| error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr1, arr2, Array3};

    fn lp() -> Array3<f64> {
        Array3::zeros((4, 2, 5))
    }

    #[test]
    fn accepts_padded_and_concatenated() {
        let lp = lp();
        let padded = arr2(&[[1, 2, -1], [3, 99, 99]]);
        let p = validate(
            lp.view(),
            Targets::Padded(padded.view()),
            arr1(&[4, 3]).view(),
            arr1(&[2, 1]).view(),
            0,
            Options::default(),
        )
        .unwrap();
        assert_eq!(p.labels_of(0), &[1, 2]);
        assert_eq!(p.labels_of(1), &[3]);

        let flat = arr1(&[1, 2, 3]);
        let p = validate(
            lp.view(),
            Targets::Concatenated(flat.view()),
            arr1(&[4, 3]).view(),
            arr1(&[2, 1]).view(),
            -1,
            Options::default(),
        )
        .unwrap();
        assert_eq!(p.blank, 4);
        assert_eq!(p.labels_of(1), &[3]);
    }

    #[test]
    fn rejects_bad_values() {
        let lp = lp();
        let padded = arr2(&[[1, 2], [3, 5]]);
        let run = |il: [i64; 2], tl: [i64; 2], blank: i64| {
            validate(
                lp.view(),
                Targets::Padded(padded.view()),
                arr1(&il).view(),
                arr1(&tl).view(),
                blank,
                Options::default(),
            )
        };
        assert!(matches!(
            run([4, 4], [2, 2], 0),
            Err(CtcError::Label {
                sample: 1,
                position: 1,
                value: 5,
                ..
            })
        ));
        assert!(matches!(
            run([4, 4], [2, 1], 3),
            Err(CtcError::BlankInTarget {
                sample: 1,
                position: 0,
                ..
            })
        ));
        assert!(matches!(
            run([5, 4], [2, 1], 0),
            Err(CtcError::Length { sample: 0, .. })
        ));
        assert!(matches!(
            run([4, 4], [2, 3], 0),
            Err(CtcError::Length { sample: 1, .. })
        ));
        assert!(matches!(
            run([4, 4], [2, 1], 5),
            Err(CtcError::Blank { .. })
        ));
        assert!(matches!(
            run([4, 4], [2, 1], -6),
            Err(CtcError::Blank { .. })
        ));
    }

    #[test]
    fn a_star_score_admits_the_class_past_the_last() {
        let lp = lp();
        let padded = arr2(&[[1, 5], [5, 5]]);
        let run = |star_score: Option<f64>| {
            validate(
                lp.view(),
                Targets::Padded(padded.view()),
                arr1(&[4, 4]).view(),
                arr1(&[2, 2]).view(),
                0,
                Options {
                    star_score,
                    ..Options::default()
                },
            )
        };
        assert!(matches!(
            run(None),
            Err(CtcError::Label {
                value: 5,
                star: false,
                ..
            })
        ));
        assert_eq!(run(Some(0.0)).unwrap().labels_of(1), &[5, 5]);
        let wide = arr2(&[[6, 1], [1, 1]]);
        let err = validate(
            lp.view(),
            Targets::Padded(wide.view()),
            arr1(&[4, 4]).view(),
            arr1(&[2, 2]).view(),
            0,
            Options {
                star_score: Some(-1.0),
                ..Options::default()
            },
        );
        assert!(matches!(
            err,
            Err(CtcError::Label {
                value: 6,
                star: true,
                ..
            })
        ));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(matches!(run(Some(bad)), Err(CtcError::StarScore { .. })));
        }
    }
}
