//! Every SIMD level this CPU supports gives the baseline's results, bit for bit: the
//! kernels' sums run in a fixed number of interleaved accumulators whatever the vector
//! width, nothing is contracted into FMAs, and the exp is the same polynomial; the
//! hand-written AVX-512 and AVX2 reads only move values.

use super::super::dispatch::{supported_levels, SimdLevel};
use super::super::FastMath;
use super::cases::{run, Batch, Outputs, Rng};

fn assert_identical<F: FastMath>(a: &Outputs<F>, b: &Outputs<F>, what: &dyn Fn() -> String) {
    for n in 0..a.log_liks.len() {
        let (x, y) = (a.log_liks[n], b.log_liks[n]);
        assert!(
            x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan(),
            "{}: sample {n} log-likelihood {x} vs {y}",
            what()
        );
        for ((i, &x), &y) in a.grads[n].indexed_iter().zip(&b.grads[n]) {
            let (x, y) = (x.to_f64(), y.to_f64());
            assert!(
                x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan(),
                "{}: sample {n} gradient at {i:?}: {x} vs {y}",
                what()
            );
        }
    }
}

fn levels_match_baseline<F: FastMath>(seed: u64) {
    let levels = supported_levels();
    let mut rng = Rng::new(seed);
    for case in 0..8 {
        let batch = Batch::random(&mut rng, 18, 30, 11);
        let input = batch.input_as::<F>();
        for (groups, with_grad) in [(false, true), (false, false), (true, true), (true, false)] {
            let base = run(&batch, &input, SimdLevel::Baseline, groups, with_grad);
            for &level in &levels[1..] {
                let out = run(&batch, &input, level, groups, with_grad);
                assert_identical(&out, &base, &|| {
                    format!(
                        "case {case}, {} at {}, groups {groups}, with_grad {with_grad}",
                        F::NAME,
                        level.name()
                    )
                });
            }
        }
    }
}

#[test]
fn every_level_matches_the_baseline_f32() {
    levels_match_baseline::<f32>(5);
}

#[test]
fn every_level_matches_the_baseline_f64() {
    levels_match_baseline::<f64>(6);
}

#[test]
fn this_machine_tests_its_levels() {
    let levels = supported_levels();
    assert_eq!(levels[0], SimdLevel::Baseline);
    // The development machines and CI have AVX2 (and often AVX-512); say so if not, so that
    // a green run there is not mistaken for a test of the vector paths.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        assert!(levels.contains(&SimdLevel::Avx2));
    }
    if levels.len() == 1 {
        eprintln!("only the baseline SIMD level is supported here: level tests compare nothing");
    }
}
