// fastctc GPU prelude for float64 (adapters with SHADER_F64): the type the lattice computes
// in, and its elementary functions. `lattice.wgsl` is appended to this text (see `shader.rs`).
//
// SPIR-V's and GLSL's exp and log take 16- and 32-bit floats only, so both are written here:
// a range reduction plus a polynomial, accurate to about one unit in the last place.

alias real = f64;

// A stored lattice value (`work`): one float64, precise enough without the float32 prelude's
// pair; `from_cell` puts the whole value in the pair's first component, `to_cell` adds them.
alias cell = f64;

fn from_cell(c: cell) -> vec2<real> {
    return vec2<real>(c, 0.0);
}

fn to_cell(v: vec2<real>) -> cell {
    return v.x + v.y;
}

fn neg_inf() -> real {
    return f64(bitcast<f32>(0xff800000u));
}

fn pos_inf() -> real {
    return f64(bitcast<f32>(0x7f800000u));
}

fn nan_r() -> real {
    return f64(bitcast<f32>(0x7fc00000u));
}

// NaN or +inf (comparisons with NaN are false).
fn is_bad(x: real) -> bool {
    return !(x < pos_inf());
}

// exp(x) = 2^k exp(r), x = k ln 2 + r, |r| <= ln(2) / 2; Taylor series to r^13 (error below
// 5e-18 relative). -inf and anything below the smallest subnormal give 0.
fn exp_r(x: real) -> real {
    if x < -746.0 {
        return 0.0;
    }
    if x > 709.8 {
        return pos_inf();
    }
    let k = round(x * 1.4426950408889634);
    // ln 2 split so that k * LN2_HI is exact.
    let r = (x - k * 0.6931471803691238) - k * 1.9082149292705877e-10;
    var p: real = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    return ldexp(p, i32(k));
}

// ln(1 + x) for x in [0, 2]: 2 atanh(z) with z = x / (2 + x), or, above sqrt(2) - 1,
// ln 2 + 2 atanh((x - 1) / (x + 3)); |z| <= 0.1716, eleven odd terms.
fn ln_1p_r(x: real) -> real {
    var z: real;
    var k: real = 0.0;
    if x <= 0.41421356237309503 {
        z = x / (2.0 + x);
    } else {
        z = (x - 1.0) / (x + 3.0);
        k = 1.0;
    }
    let z2 = z * z;
    var p: real = 2.0 / 21.0;
    p = p * z2 + 2.0 / 19.0;
    p = p * z2 + 2.0 / 17.0;
    p = p * z2 + 2.0 / 15.0;
    p = p * z2 + 2.0 / 13.0;
    p = p * z2 + 2.0 / 11.0;
    p = p * z2 + 2.0 / 9.0;
    p = p * z2 + 2.0 / 7.0;
    p = p * z2 + 2.0 / 5.0;
    p = p * z2 + 2.0 / 3.0;
    p = p * z2 + 2.0;
    return k * 0.6931471805599453 + z * p;
}

// ln(x) for x >= 1 (and below 2^126): x = m 2^e with m in [1, 2), ln x = e ln 2 + ln(1 + (m - 1)).
// The exponent comes from a float32 estimate, corrected by one step either way.
fn ln_r(x: real) -> real {
    var e = i32(floor(log2(f32(x))));
    var m = ldexp(x, -e);
    if m >= 2.0 {
        m = m * 0.5;
        e += 1;
    } else if m < 1.0 {
        m = m * 2.0;
        e -= 1;
    }
    return real(e) * 0.6931471805599453 + ln_1p_r(m - 1.0);
}
