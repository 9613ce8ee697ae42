// fastctc GPU prelude for float32: the type the lattice computes in, and its elementary
// functions. `lattice.wgsl` is appended to this text (see `shader.rs`).

alias real = f32;

// A stored lattice value (`work`): its integer part and remainder, `vec2(h, l)` (see
// `settle` in lattice.wgsl). Keeping the pair keeps every value's absolute precision at that
// of its remainder, not of its magnitude: values far below a row's maximum, where the
// posterior often lies, would otherwise be rounded to an ulp of hundreds of nats.
alias cell = vec2<f32>;

fn from_cell(c: cell) -> vec2<real> {
    return c;
}

fn to_cell(v: vec2<real>) -> cell {
    return v;
}

// -inf. WGSL has no infinity literal; the bit pattern is exact on every device.
fn neg_inf() -> real {
    return bitcast<f32>(0xff800000u);
}

fn nan_r() -> real {
    return bitcast<f32>(0x7fc00000u);
}

// NaN or +inf: an input value that makes the loss NaN. Tested on the bits, so that no shader
// compiler's finite-math assumptions can fold it away.
fn is_bad(x: real) -> bool {
    let bits = bitcast<u32>(x);
    return (bits & 0x7f800000u) == 0x7f800000u && bits != 0xff800000u;
}

fn exp_r(x: real) -> real {
    return exp(x);
}

// ln(1 + x) for x in [0, 2] (what a log-sum-exp adds to its maximum), accurate for tiny x
// and independent of the device's `log`: 2 atanh(z) with z = x / (2 + x), or, above
// sqrt(2) - 1, ln 2 + 2 atanh((x - 1) / (x + 3)). |z| <= 0.1716, so five odd terms reach
// float32 precision.
fn ln_1p_r(x: real) -> real {
    var z: real;
    var k: real = 0.0;
    if x <= 0.41421356 {
        z = x / (2.0 + x);
    } else {
        z = (x - 1.0) / (x + 3.0);
        k = 1.0;
    }
    let z2 = z * z;
    let p = 2.0 + z2 * (0.6666667 + z2 * (0.4 + z2 * (0.2857143 + z2 * 0.22222222)));
    return k * 0.6931472 + z * p;
}

// ln(x) for x >= 1 (a sum of exponentials whose largest term is 1).
fn ln_r(x: real) -> real {
    return log(x);
}
