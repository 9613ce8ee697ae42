//! The aligner's host/shader contract, and GPU against CPU alignments. The device tests are
//! skipped when no adapter can be opened, unless `FASTCTC_REQUIRE_GPU=1`.

use naga::{Expression, Literal, Module, TypeInner};
use ndarray::{Array1, Array2, Array3};

use super::device::{binding, source, Record, ENTRY};
use super::*;
use crate::options::{InputKind, Options};
use crate::problem::{validate, Targets};

fn module() -> Module {
    let text = source(64);
    naga::front::wgsl::parse_str(&text).expect("viterbi.wgsl parses")
}

fn constant(module: &Module, name: &str) -> u32 {
    let (_, c) = module
        .constants
        .iter()
        .find(|(_, c)| c.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("viterbi.wgsl declares no constant {name}"));
    match module.global_expressions[c.init] {
        Expression::Literal(Literal::U32(v)) => v,
        ref other => panic!("{name}: expected a u32 literal, got {other:?}"),
    }
}

#[test]
fn shader_validates_for_every_workgroup_size() {
    for size in super::super::shader::WORKGROUP_SIZES {
        let text = source(size);
        let module = naga::front::wgsl::parse_str(&text).expect("parses");
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::FLOAT64,
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("WG={size}: {}", e.emit_to_string(&text)));
        assert!(module.entry_points.iter().any(|e| e.name == ENTRY));
    }
}

#[test]
fn shader_contract_matches() {
    let module = module();
    let ty = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some("Record"))
        .expect("a Record struct")
        .1;
    let TypeInner::Struct { members, .. } = &ty.inner else {
        panic!("Record is not a struct");
    };
    let names: Vec<_> = members.iter().map(|m| m.name.clone().unwrap()).collect();
    assert_eq!(names, Record::FIELDS);
    assert_eq!(constant(&module, "META") as usize, Record::WORDS);
    assert_eq!(constant(&module, "SKIP_BIT"), SKIP_BIT);
    assert_eq!(
        constant(&module, "STATES_PER_WORD") as usize,
        STATES_PER_WORD
    );
    for (index, name, read_only) in binding::STORAGE {
        let (_, var) = module
            .global_variables
            .iter()
            .find(|(_, v)| v.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no variable {name}"));
        assert_eq!(var.binding.as_ref().unwrap().binding, index, "{name}");
        let access = if read_only {
            naga::StorageAccess::LOAD
        } else {
            naga::StorageAccess::LOAD | naga::StorageAccess::STORE
        };
        assert_eq!(var.space, naga::AddressSpace::Storage { access }, "{name}");
    }
    let (_, span) = module
        .global_variables
        .iter()
        .find(|(_, v)| v.name.as_deref() == Some("span"))
        .expect("a span variable");
    assert_eq!(span.binding.as_ref().unwrap().binding, binding::SPAN);
}

#[test]
fn columns_follow_first_states() {
    let job = Job::new(0, 9, &[3, 1, 3, 3, 2], 0);
    assert_eq!(job.states, 11);
    assert_eq!(job.classes, vec![0, 3, 1, 2]);
    assert_eq!(job.first, vec![0, 1, 3, 9]);
    let columns: Vec<u32> = job.codes.iter().map(|c| c & !SKIP_BIT).collect();
    assert_eq!(columns, vec![0, 1, 0, 2, 0, 1, 0, 1, 0, 3, 0]);
    // Labels 1, 2 and 4 differ from the one before them: states 3, 5 and 9 may skip.
    let skips: Vec<usize> = (0..job.states)
        .filter(|&s| job.codes[s] & SKIP_BIT != 0)
        .collect();
    assert_eq!(skips, vec![3, 5, 9]);
}

fn gpu_or_skip() -> bool {
    match super::super::info() {
        Ok(info) if info.shader_f64 => true,
        other => {
            assert!(
                std::env::var("FASTCTC_REQUIRE_GPU").as_deref() != Ok("1"),
                "FASTCTC_REQUIRE_GPU=1 but no adapter with SHADER_F64: {other:?}"
            );
            false
        }
    }
}

/// xorshift, so that the tests need no extra crate.
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
}

/// GPU and CPU alignments of one batch, compared field by field (bitwise); returns how many
/// samples have a path.
fn compare<F: crate::call::Float>(
    lp: &Array3<F>,
    targets: &Array2<i64>,
    lengths: (&Array1<i64>, &Array1<i64>),
    blank: i64,
    options: Options,
) -> usize {
    let problem = validate(
        lp.view(),
        Targets::Padded(targets.view()),
        lengths.0.view(),
        lengths.1.view(),
        blank,
        options,
    )
    .unwrap();
    let cpu = crate::cpu::align(&problem);
    let gpu = align(&problem).unwrap();
    assert_eq!(gpu.labels, cpu.labels);
    assert_eq!(gpu.spans, cpu.spans);
    let same = |a: f64, b: f64| a == b || (a.is_nan() && b.is_nan());
    for (a, b) in gpu.path_scores.iter().zip(&cpu.path_scores) {
        assert!(same(*a, *b), "path score gpu {a} cpu {b}");
    }
    for (a, b) in gpu.scores.iter().zip(cpu.scores.iter()) {
        assert!(
            same(a.to_f64(), b.to_f64()),
            "frame score gpu {a:?} cpu {b:?}"
        );
    }
    cpu.path_scores.iter().filter(|s| s.is_finite()).count()
}

#[test]
fn matches_cpu_on_random_batches() {
    if !gpu_or_skip() {
        return;
    }
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let mut aligned = 0;
    for (t, n, c, s) in [(1, 1, 2, 1), (6, 3, 3, 3), (40, 8, 5, 12), (300, 3, 7, 90)] {
        // Few distinct values, so that ties are common.
        let lp = Array3::from_shape_fn((t, n, c), |_| -(rng.below(4) as f32) * 0.5);
        let blank = (rng.below(c)) as i64;
        let targets = Array2::from_shape_fn((n, s), |_| {
            let label = rng.below(c - 1) as i64;
            if label >= blank {
                label + 1
            } else {
                label
            }
        });
        let il = Array1::from_shape_fn(n, |_| (1 + rng.below(t)) as i64);
        let tl = Array1::from_shape_fn(n, |_| rng.below(s + 1) as i64);
        for input_kind in [InputKind::LogProbs, InputKind::Logits] {
            let options = Options {
                input_kind,
                ..Options::default()
            };
            aligned += compare(&lp, &targets, (&il, &tl), blank, options);
            aligned += compare(&lp.mapv(f64::from), &targets, (&il, &tl), blank, options);
        }
    }
    assert!(aligned >= 20, "only {aligned} samples had a path");
}
