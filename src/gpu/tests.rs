//! GPU against CPU on small problems. Skipped when no adapter can be opened, unless
//! `FASTCTC_REQUIRE_GPU=1` (as in CI), which makes a missing adapter a failure.

use ndarray::{Array1, Array2, Array3};

use super::*;
use crate::options::{GradWrt, InputKind, Job, Layout, Options, Reduction};
use crate::problem::{validate, Targets};

fn gpu_or_skip() -> bool {
    match info() {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var("FASTCTC_REQUIRE_GPU").as_deref() != Ok("1"),
                "FASTCTC_REQUIRE_GPU=1 but: {e}"
            );
            eprintln!("skipping: {e}");
            false
        }
    }
}

/// A tiny deterministic generator (xorshift), so the tests need no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn normal(&mut self) -> f64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let v = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * (u + 1e-300).ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

struct Case {
    lp: Array3<f32>,
    targets: Array2<i64>,
    input_lengths: Array1<i64>,
    target_lengths: Array1<i64>,
}

fn case(rng: &mut Rng, t: usize, n: usize, c: usize, s: usize) -> Case {
    let mut lp = Array3::<f32>::zeros((t, n, c));
    for mut row in lp.rows_mut() {
        let logits: Vec<f64> = (0..c).map(|_| 2.0 * rng.normal()).collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + logits.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        for (dst, v) in row.iter_mut().zip(&logits) {
            *dst = (v - lse) as f32;
        }
    }
    let input_lengths = Array1::from_shape_fn(n, |_| (t / 2 + rng.below(t / 2 + 1)) as i64);
    let target_lengths = Array1::from_shape_fn(n, |i| {
        rng.below((s + 1).min(input_lengths[i] as usize / 2 + 1)) as i64
    });
    let targets = Array2::from_shape_fn((n, s), |_| 1 + rng.below(c - 1) as i64);
    Case {
        lp,
        targets,
        input_lengths,
        target_lengths,
    }
}

fn compare(case: &Case, options: Options, grad_tol: f64) {
    let problem = validate(
        case.lp.view(),
        Targets::Padded(case.targets.view()),
        case.input_lengths.view(),
        case.target_lengths.view(),
        0,
        options,
    )
    .unwrap();
    let cpu = crate::cpu::compute(&problem, true).unwrap();
    let gpu = compute(&problem, Job::LossAndGrad, None).unwrap();
    for (n, (a, b)) in gpu.losses.iter().zip(&cpu.losses).enumerate() {
        let tol = 1e-5 * b.abs().max(1.0);
        assert!(
            (a - b).abs() <= tol || (a.is_nan() && b.is_nan()) || a == b,
            "sample {n}: gpu {a} cpu {b}"
        );
    }
    let (g, c) = (gpu.grad.unwrap(), cpu.grad.unwrap());
    let worst = g
        .iter()
        .zip(c.iter())
        .map(|(a, b)| {
            if a.is_nan() && b.is_nan() {
                0.0
            } else {
                (a - b).abs() as f64
            }
        })
        .fold(0.0, f64::max);
    assert!(worst <= grad_tol, "gradient differs by {worst}");
    let loss_only = compute(&problem, Job::Loss, None).unwrap();
    assert_eq!(loss_only.losses, gpu.losses);
}

#[test]
fn matches_cpu_on_random_batches() {
    if !gpu_or_skip() {
        return;
    }
    let mut rng = Rng(0x9e3779b97f4a7c15);
    for (t, n, c, s) in [(1, 1, 2, 1), (5, 3, 4, 3), (30, 8, 6, 10), (60, 4, 30, 25)] {
        let case = case(&mut rng, t, n, c, s);
        for reduction in [Reduction::None, Reduction::Mean] {
            for grad_wrt in [GradWrt::LogProbs, GradWrt::Logits] {
                for input_kind in [InputKind::LogProbs, InputKind::Logits] {
                    let options = Options {
                        reduction,
                        grad_wrt,
                        input_kind,
                        layout: Layout::Tnc,
                        ..Options::default()
                    };
                    compare(&case, options, 1e-5);
                }
            }
        }
    }
}

#[test]
fn reports_adapter() {
    if let Ok(info) = info() {
        eprintln!("{info:?}");
    }
}
