//! The host/shader contract of `lattice.wgsl`, stated once on the Rust side: binding
//! indices, the `info` header and per-sample record, flag and status words, and the slots
//! of each sample's results in `out`.
//!
//! The shader declares the same things by name; the test below reads the shader with naga
//! and fails when any of them disagrees (a binding renumbered, two record fields swapped, a
//! constant changed on one side only), which would otherwise compile, validate and compute
//! garbage.

use bytemuck::{Pod, Zeroable};

/// Bind group 0 of `lattice.wgsl`, by binding index.
pub(crate) mod binding {
    /// `info`: the header, one record per workgroup, the state codes and label groups (u32).
    pub const INFO: u32 = 0;
    /// `scales`: per workgroup, the factor of its gradient rows.
    pub const SCALES: u32 = 1;
    /// `lp`: each sample's input rows back to back.
    pub const LP: u32 = 2;
    /// `grad`: the gradient rows, laid out as `lp`.
    pub const GRAD: u32 = 3;
    /// `work`: alpha rows and the backward sweep's rows.
    pub const WORK: u32 = 4;
    /// `out`: per-frame log-sum-exps, then each sample's results (see [`super::out`]).
    pub const OUT: u32 = 5;
    /// `span`: the frames one dispatch covers (uniform, dynamic offset).
    pub const SPAN: u32 = 6;
    /// The storage bindings in index order, their names in the shader, and whether they are
    /// read-only there.
    pub const STORAGE: [(u32, &str, bool); 6] = [
        (INFO, "info", true),
        (SCALES, "scales", true),
        (LP, "lp", true),
        (GRAD, "grad", false),
        (WORK, "work", false),
        (OUT, "out", false),
    ];
}

/// Declares a record of `u32` words whose memory order is its declaration order, and the
/// names of its fields in that order (what the shader's struct of the same name must list).
macro_rules! words_record {
    ($(#[$meta:meta])* $name:ident { $($(#[$field_meta:meta])* $field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
        pub(crate) struct $name {
            $($(#[$field_meta])* pub $field: u32,)*
        }

        impl $name {
            /// Field names in memory order.
            #[allow(dead_code)]
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];
            /// Size in `u32` words.
            pub const WORDS: usize = std::mem::size_of::<$name>() / 4;
        }
    };
}

words_record! {
    /// `info[0..HEADER]`: what every workgroup of a chunk shares.
    Header {
        /// C.
        classes,
        blank,
        /// [`FLAG_LOGITS_GRAD`] | [`FLAG_LOGITS_INPUT`].
        flags,
        /// Frames of all the chunk's samples together.
        frames,
    }
}

words_record! {
    /// One workgroup's sample: `info[HEADER + META * i ..]`, `Sample` in the shader.
    Sample {
        /// Offset of frame 0's row in `lp` and `grad`.
        lp_off,
        t_len,
        /// Extended states, `2L + 1`.
        states,
        /// Offset in `info` of the state codes.
        code_off,
        /// Offset in `info` of the label groups, `(class, list offset, count)` each.
        group_off,
        n_groups,
        work_off,
        /// 0: loss only; k >= 1: every k-th alpha row is kept.
        ckpt,
        /// Offset in `out` of this sample's results.
        out_off,
        /// Index of frame 0 among the chunk's frames.
        frame_off,
    }
}

/// Words of the header (`HEADER` in the shader).
pub(crate) const HEADER: usize = Header::WORDS;
/// Words of a sample record (`META` in the shader).
pub(crate) const META: usize = Sample::WORDS;

/// Header flag: the gradient is taken with respect to logits.
pub(crate) const FLAG_LOGITS_GRAD: u32 = 1;
/// Header flag: the input holds logits, shifted by each frame's log-sum-exp.
pub(crate) const FLAG_LOGITS_INPUT: u32 = 2;
/// State code bit: the state may be entered from `s - 2`.
pub(crate) const SKIP_BIT: u32 = 1 << 31;

/// A sample's status, written by `forward` (as a float) to [`out::STATUS`].
pub(crate) mod status {
    pub const OK: u32 = 0;
    pub const NAN: u32 = 1;
    /// Anything else the host reads as no path (the shader writes only these three).
    #[allow(dead_code)]
    pub const NO_PATH: u32 = 2;
}

/// A sample's results in `out`, from its `out_off`: the row maxima `m(0..T)` at `t`, then
/// these slots at `out_off + T + slot`.
pub(crate) mod out {
    /// The end term of the log-likelihood.
    pub const END: usize = 0;
    /// The status, one of [`super::status`].
    pub const STATUS: usize = 1;
    /// The beta normaliser one backward span hands the next (the shader's alone).
    #[allow(dead_code)]
    pub const CARRY: usize = 2;
    /// Non-zero when the driver cut the kernel's loops short.
    pub const CUT: usize = 3;
    /// Slots after the maxima.
    pub const SLOTS: usize = 4;
}

/// Bytes of one lattice value in `work` (`cell` in the shader): a float64, or a float32
/// pair (integer part, remainder) (docs/design.md#gpu-numerics).
pub(crate) const WORK_CELL_BYTES: usize = 8;

/// Bytes bound for `Span` in the shader (three `u32`, padded to 16).
pub(crate) const SPAN_BYTES: u64 = 16;

words_record! {
    /// One dispatch's frames `[t0, t1)`, `Span` in the shader.
    Span {
        t0,
        t1,
        /// Always 2, but unknown to the shader compiler (see `canary` in the shader).
        two,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use naga::{Expression, Literal, Module, TypeInner};

    fn module() -> Module {
        let text = super::super::shader::source(false, 64);
        naga::front::wgsl::parse_str(&text).expect("lattice.wgsl parses")
    }

    /// The value of the shader's `const NAME: u32`.
    fn constant(module: &Module, name: &str) -> u32 {
        let (_, c) = module
            .constants
            .iter()
            .find(|(_, c)| c.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("lattice.wgsl declares no constant {name}"));
        match module.global_expressions[c.init] {
            Expression::Literal(Literal::U32(v)) => v,
            ref other => panic!("{name}: expected a u32 literal, got {other:?}"),
        }
    }

    fn struct_members(module: &Module, name: &str) -> Vec<String> {
        let ty = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("lattice.wgsl declares no struct {name}"))
            .1;
        match &ty.inner {
            TypeInner::Struct { members, .. } => members
                .iter()
                .map(|m| m.name.clone().unwrap_or_default())
                .collect(),
            other => panic!("{name} is not a struct: {other:?}"),
        }
    }

    #[test]
    fn shader_bindings_match() {
        let module = module();
        let binding_of = |name: &str| {
            let (_, var) = module
                .global_variables
                .iter()
                .find(|(_, v)| v.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("lattice.wgsl declares no variable {name}"));
            let b = var.binding.as_ref().expect("a bound variable");
            assert_eq!(b.group, 0, "{name}");
            (b.binding, var.space)
        };
        for (index, name, read_only) in binding::STORAGE {
            let (got, space) = binding_of(name);
            assert_eq!(got, index, "binding of {name}");
            let expected = if read_only {
                naga::StorageAccess::LOAD
            } else {
                naga::StorageAccess::LOAD | naga::StorageAccess::STORE
            };
            assert_eq!(
                space,
                naga::AddressSpace::Storage { access: expected },
                "{name}"
            );
        }
        assert_eq!(binding_of("span").0, binding::SPAN);
    }

    #[test]
    fn shader_records_and_constants_match() {
        let module = module();
        assert_eq!(struct_members(&module, "Sample"), Sample::FIELDS);
        assert_eq!(struct_members(&module, "Span"), Span::FIELDS);
        assert!(std::mem::size_of::<Span>() as u64 <= SPAN_BYTES);
        for (name, value) in [
            ("HEADER", HEADER as u32),
            ("META", META as u32),
            ("FLAG_LOGITS_GRAD", FLAG_LOGITS_GRAD),
            ("FLAG_LOGITS_INPUT", FLAG_LOGITS_INPUT),
            ("SKIP_BIT", SKIP_BIT),
            ("STATUS_OK", status::OK),
            ("STATUS_NAN", status::NAN),
            ("STATUS_NO_PATH", status::NO_PATH),
            ("OUT_END", out::END as u32),
            ("OUT_STATUS", out::STATUS as u32),
            ("OUT_CARRY", out::CARRY as u32),
            ("OUT_CUT", out::CUT as u32),
        ] {
            assert_eq!(constant(&module, name), value, "{name}");
        }
        // The shader indexes the header word by word.
        for (index, field) in Header::FIELDS.iter().enumerate() {
            let name = format!("HEADER_{}", field.to_uppercase());
            assert_eq!(constant(&module, &name), index as u32, "{name}");
        }
    }
}
