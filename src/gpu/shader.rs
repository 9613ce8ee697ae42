//! The WGSL sources: the lattice kernels (`lattice.wgsl`) behind a prelude that fixes the
//! float type (`real_f32.wgsl`, `real_f64.wgsl`) and the log-sum-exps of lattice values
//! (`pairs.wgsl`), with the workgroup size set per device.

const LATTICE: &str = include_str!("lattice.wgsl");
const REAL_F32: &str = include_str!("real_f32.wgsl");
const REAL_F64: &str = include_str!("real_f64.wgsl");
const PAIRS: &str = include_str!("pairs.wgsl");

/// The line of `lattice.wgsl` that sets the workgroup size.
const WORKGROUP_LINE: &str = "const WG: u32 = 256u;";

/// Entry points of the lattice module.
pub(crate) const NORMALISE: &str = "normalise";
pub(crate) const FORWARD: &str = "forward";
pub(crate) const BACKWARD: &str = "backward";

/// Workgroup sizes a module can be built with (powers of two: the reductions halve).
pub(crate) const WORKGROUP_SIZES: [u32; 6] = [32, 64, 128, 256, 512, 1024];

/// The complete WGSL module for one float type and workgroup size.
pub(crate) fn source(f64: bool, workgroup_size: u32) -> String {
    assert!(
        WORKGROUP_SIZES.contains(&workgroup_size),
        "workgroup size {workgroup_size} is not one of {WORKGROUP_SIZES:?}"
    );
    assert!(
        LATTICE.contains(WORKGROUP_LINE),
        "lattice.wgsl must declare `{WORKGROUP_LINE}`"
    );
    let prelude = if f64 { REAL_F64 } else { REAL_F32 };
    let lattice = LATTICE.replace(
        WORKGROUP_LINE,
        &format!("const WG: u32 = {workgroup_size}u;"),
    );
    format!("{prelude}\n{PAIRS}\n{lattice}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(f64: bool, workgroup_size: u32) -> naga::valid::ModuleInfo {
        let text = source(f64, workgroup_size);
        let module = naga::front::wgsl::parse_str(&text).unwrap_or_else(|e| {
            panic!("f64={f64} WG={workgroup_size}: {}", e.emit_to_string(&text))
        });
        let capabilities = if f64 {
            naga::valid::Capabilities::FLOAT64
        } else {
            naga::valid::Capabilities::empty()
        };
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
            .validate(&module)
            .unwrap_or_else(|e| {
                panic!("f64={f64} WG={workgroup_size}: {}", e.emit_to_string(&text))
            })
    }

    #[test]
    fn every_shader_parses_and_validates() {
        for f64 in [false, true] {
            for size in WORKGROUP_SIZES {
                validate(f64, size);
            }
        }
    }

    #[test]
    fn float32_shader_needs_no_float64() {
        let text = source(false, 64);
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
