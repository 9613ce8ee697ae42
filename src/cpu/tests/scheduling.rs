//! The batch scheduler: which samples run in groups (`plan_jobs`), and a whole batch through
//! `cpu::compute` (grouping, threads, the gradient buffer) against the reference.

use ndarray::{Array2, Array3, Axis};

use super::super::{compute, lockstep, plan_jobs, GroupPolicy, Job, GROUP_MAX_STATES};
use super::cases::{assert_close, log_softmax, random_labels, Rng};
use super::reference;
use crate::options::{Options, Reduction};
use crate::problem::{validate, Problem, Targets};

/// `short` samples of 30-80 frames and 1-20 labels, then `long` samples of 100 labels (201
/// states: too many for a group); C = 8, blank 0.
fn mixed_batch(
    rng: &mut Rng,
    short: usize,
    long: usize,
) -> (Array3<f64>, Array2<i64>, Vec<i64>, Vec<i64>) {
    let n = short + long;
    let t_max = 240;
    let classes = 8;
    let mut input = Array3::from_shape_fn((t_max, n, classes), |_| 2.0 * rng.normal());
    for mut sample in input.axis_iter_mut(Axis(1)) {
        let lp = log_softmax(&sample.to_owned());
        sample.assign(&lp);
    }
    let mut targets = Array2::zeros((n, 100));
    let (mut input_lens, mut target_lens) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (frames, count) = if i < short {
            (30 + rng.below(51), 1 + rng.below(20))
        } else {
            (t_max, 100)
        };
        for (j, label) in random_labels(rng, count, classes, 0, 0.2)
            .into_iter()
            .enumerate()
        {
            targets[[i, j]] = i64::from(label);
        }
        input_lens.push(frames as i64);
        target_lens.push(count as i64);
    }
    (input, targets, input_lens, target_lens)
}

fn problem<'a>(
    input: &'a Array3<f64>,
    targets: &'a Array2<i64>,
    input_lens: &'a [i64],
    target_lens: &'a [i64],
    reduction: Reduction,
) -> Problem<'a, f64> {
    let options = Options {
        reduction,
        ..Options::default()
    };
    let il = ndarray::ArrayView1::from(input_lens);
    let tl = ndarray::ArrayView1::from(target_lens);
    validate(
        input.view(),
        Targets::Padded(targets.view()),
        il,
        tl,
        0,
        options,
    )
    .unwrap()
}

#[test]
fn plan_groups_only_short_samples_and_runs_each_once() {
    let mut rng = Rng::new(41);
    let (input, targets, il, tl) = mixed_batch(&mut rng, 40, 3);
    let p = problem(&input, &targets, &il, &tl, Reduction::Sum);
    for policy in [GroupPolicy::Always, GroupPolicy::Never, GroupPolicy::Auto] {
        let items: Vec<usize> = (0..il.len()).collect();
        let jobs = plan_jobs(&p, items, |&n| n, policy);
        let mut seen = vec![0; il.len()];
        let mut costs = Vec::new();
        for job in &jobs {
            match job {
                Job::One(n) => {
                    seen[*n] += 1;
                    costs.push(p.samples[*n].cost());
                }
                Job::Group(group) => {
                    assert_ne!(policy, GroupPolicy::Never, "no groups when never");
                    assert!(!group.is_empty() && group.len() <= lockstep::LANES);
                    for &n in group {
                        seen[n] += 1;
                        assert!(
                            2 * p.labels_of(n).len() < GROUP_MAX_STATES,
                            "a long sample in a group"
                        );
                    }
                    costs.push(group.iter().map(|&n| p.samples[n].cost()).sum());
                }
            }
        }
        assert!(
            seen.iter().all(|&k| k == 1),
            "{policy:?}: every sample once: {seen:?}"
        );
        assert!(
            costs.windows(2).all(|w| w[0] >= w[1]),
            "{policy:?}: largest first"
        );
        if policy == GroupPolicy::Always {
            // 40 short samples: three groups of at most 16 lanes.
            let groups = jobs.iter().filter(|j| matches!(j, Job::Group(_))).count();
            assert_eq!(groups, 40usize.div_ceil(lockstep::LANES));
        }
    }
}

#[test]
fn a_whole_batch_matches_the_reference() {
    let mut rng = Rng::new(42);
    let (input, targets, il, tl) = mixed_batch(&mut rng, 40, 3);
    let p = problem(&input, &targets, &il, &tl, Reduction::None);
    let out = compute(&p, true).unwrap();
    let grad = out.grad.expect("a gradient");
    for n in 0..il.len() {
        let frames = il[n] as usize;
        let lp = input.index_axis(Axis(1), n);
        let (log_lik, gamma) =
            reference::ctc(lp.slice(ndarray::s![..frames, ..]), p.labels_of(n), 0);
        assert_close(out.losses[n], -log_lik, 1e-9, 1e-9, &|| format!("loss {n}"));
        for t in 0..input.dim().0 {
            for c in 0..input.dim().2 {
                let want = if t < frames { -gamma[[t, c]] } else { 0.0 };
                assert_close(grad[[t, n, c]], want, 1e-7, 1e-9, &|| {
                    format!("grad {n} {t} {c}")
                });
            }
        }
    }
}
