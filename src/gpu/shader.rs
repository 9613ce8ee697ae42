//! The WGSL sources: the lattice kernels (`lattice.wgsl`) behind a prelude that fixes the
//! float type (`real_f32.wgsl`, `real_f64.wgsl`), with the workgroup size set per device.

const LATTICE: &str = include_str!("lattice.wgsl");
const REAL_F32: &str = include_str!("real_f32.wgsl");
const REAL_F64: &str = include_str!("real_f64.wgsl");

/// The lines of `lattice.wgsl` that set the workgroup size and the states one invocation
/// computes together.
const WORKGROUP_LINE: &str = "const WG: u32 = 256u;";
const UNROLL_LINE: &str = "const UNROLL: u32 = 1u;";

/// Entry points of the lattice module.
pub(crate) const NORMALISE: &str = "normalise";
pub(crate) const FORWARD: &str = "forward";
pub(crate) const BACKWARD: &str = "backward";

/// Workgroup sizes a module can be built with (powers of two: the reductions halve).
pub(crate) const WORKGROUP_SIZES: [u32; 6] = [32, 64, 128, 256, 512, 1024];

/// States one invocation may compute together in a frame (`UNROLL` in `lattice.wgsl`).
pub(crate) const UNROLLS: [u32; 4] = [1, 2, 4, 8];

/// How the lattice kernels spread a sample's states over a workgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Invocations per workgroup (one workgroup per sample).
    pub workgroup_size: u32,
    /// States each invocation computes together per frame, its loads issued at once.
    pub unroll: u32,
}

/// The complete WGSL module for one float type and layout.
pub(crate) fn source(f64: bool, layout: Layout) -> String {
    let Layout {
        workgroup_size,
        unroll,
    } = layout;
    assert!(
        WORKGROUP_SIZES.contains(&workgroup_size),
        "workgroup size {workgroup_size} is not one of {WORKGROUP_SIZES:?}"
    );
    assert!(
        UNROLLS.contains(&unroll),
        "unroll {unroll} is not one of {UNROLLS:?}"
    );
    for line in [WORKGROUP_LINE, UNROLL_LINE] {
        assert!(LATTICE.contains(line), "lattice.wgsl must declare `{line}`");
    }
    let prelude = if f64 { REAL_F64 } else { REAL_F32 };
    let lattice = LATTICE
        .replace(
            WORKGROUP_LINE,
            &format!("const WG: u32 = {workgroup_size}u;"),
        )
        .replace(UNROLL_LINE, &format!("const UNROLL: u32 = {unroll}u;"));
    format!("{prelude}\n{lattice}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(f64: bool, layout: Layout) -> naga::valid::ModuleInfo {
        let text = source(f64, layout);
        let workgroup_size = (layout.workgroup_size, layout.unroll);
        let module = naga::front::wgsl::parse_str(&text).unwrap_or_else(|e| {
            panic!(
                "f64={f64} (WG, UNROLL)={workgroup_size:?}: {}",
                e.emit_to_string(&text)
            )
        });
        let capabilities = if f64 {
            naga::valid::Capabilities::FLOAT64
        } else {
            naga::valid::Capabilities::empty()
        };
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
            .validate(&module)
            .unwrap_or_else(|e| {
                panic!(
                    "f64={f64} (WG, UNROLL)={workgroup_size:?}: {}",
                    e.emit_to_string(&text)
                )
            })
    }

    #[test]
    fn every_shader_parses_and_validates() {
        for f64 in [false, true] {
            for workgroup_size in WORKGROUP_SIZES {
                for unroll in UNROLLS {
                    validate(
                        f64,
                        Layout {
                            workgroup_size,
                            unroll,
                        },
                    );
                }
            }
        }
    }

    #[test]
    fn float32_shader_needs_no_float64() {
        let text = source(
            false,
            Layout {
                workgroup_size: 64,
                unroll: 1,
            },
        );
        let module = naga::front::wgsl::parse_str(&text).unwrap();
        // Validation without FLOAT64 would fail if any f64 crept into the float32 module.
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap();
        assert!(module.entry_points.iter().any(|e| e.name == NORMALISE));
        assert!(module.entry_points.iter().any(|e| e.name == FORWARD));
        assert!(module.entry_points.iter().any(|e| e.name == BACKWARD));
    }
}
