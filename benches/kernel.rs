//! Criterion benchmarks of the CPU kernel alone (no Python), for profiling.
//!
//! `cargo bench --bench kernel` runs every shape of `benches/shapes.csv` marked `kernel`;
//! `cargo bench --bench kernel -- asr` filters by id. `FASTCTC_NUM_THREADS=1` pins the thread
//! count; `FASTCTC_SIMD=avx2` or `baseline` lowers the instruction set;
//! `FASTCTC_GROUPS=always|never` overrides whether short samples run side by side. The inputs
//! are log_softmax of deterministic pseudo-random logits, with full lengths, float32, like
//! `benches/compare.py`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fastctc::{ctc, Options, Targets};
use ndarray::{Array1, Array2, Array3, Axis};

/// (id, T, N, C, S) of every shape in `benches/shapes.csv` whose benches include `kernel`: the
/// file the Python benchmarks read too, so that a shape is written once. Parsed by hand, by
/// the rules of `benches/shapes.py` (seven comma-separated fields, `#` comment lines), to
/// keep criterion the only dev-dependency; a malformed line panics before anything is timed.
fn shapes() -> Vec<(&'static str, usize, usize, usize, usize)> {
    let text = include_str!("shapes.csv");
    let mut shapes = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&'static str> = line.split(',').map(str::trim).collect();
        let here = format!("benches/shapes.csv:{}: {line:?}", number + 1);
        assert_eq!(fields.len(), 7, "{here}: expected 7 fields");
        let dim = |i: usize| -> usize {
            fields[i]
                .parse()
                .unwrap_or_else(|_| panic!("{here}: field {} is not a size", i + 1))
        };
        if fields[6].split_whitespace().any(|bench| bench == "kernel") {
            shapes.push((fields[1], dim(2), dim(3), dim(4), dim(5)));
        }
    }
    shapes
}

/// A small xorshift generator: deterministic inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Batch {
    log_probs: Array3<f32>,
    targets: Array2<i64>,
    input_lengths: Array1<i64>,
    target_lengths: Array1<i64>,
}

fn batch(t: usize, n: usize, c: usize, s: usize) -> Batch {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut logits = Array3::from_shape_fn((t, n, c), |_| {
        // Roughly normal: the sum of four uniforms, centred and scaled.
        let u: f64 = (0..4).map(|_| rng.next_unit()).sum();
        (u - 2.0) * 1.7
    });
    for mut row in logits.lanes_mut(Axis(2)) {
        let max = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        row.mapv_inplace(|v| v - lse);
    }
    let targets = Array2::from_shape_fn((n, s), |_| 1 + (rng.next_unit() * (c - 1) as f64) as i64);
    Batch {
        log_probs: logits.mapv(|v| v as f32),
        targets,
        input_lengths: Array1::from_elem(n, t as i64),
        target_lengths: Array1::from_elem(n, s as i64),
    }
}

fn kernel(c: &mut Criterion) {
    let mut group = c.benchmark_group("ctc");
    group.sample_size(10);
    for (name, t, n, classes, s) in shapes() {
        let b = batch(t, n, classes, s);
        group.throughput(Throughput::Elements((t * n * (2 * s + 1)) as u64));
        for (mode, with_grad) in [("loss", false), ("loss_and_grad", true)] {
            group.bench_with_input(BenchmarkId::new(mode, name), &b, |bench, b| {
                bench.iter(|| {
                    ctc(
                        b.log_probs.view(),
                        Targets::Padded(b.targets.view()),
                        b.input_lengths.view(),
                        b.target_lengths.view(),
                        0,
                        Options::default(),
                        with_grad,
                    )
                    .expect("a valid batch")
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, kernel);
criterion_main!(benches);
