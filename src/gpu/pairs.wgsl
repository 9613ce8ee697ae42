// fastctc GPU kernels: log-sum-exps of lattice values, plain and as (integer part,
// remainder) pairs (see `lattice.wgsl` and docs/design.md#gpu-numerics).
//
// Appended to the prelude (`real_f32.wgsl` or `real_f64.wgsl`: `real`, `cell`, `exp_r`,
// `ln_1p_r`, ...) and followed by `lattice.wgsl`; see `shader.rs`.

fn lse2(a: real, b: real) -> real {
    let m = max(a, b);
    if m == neg_inf() {
        return m;
    }
    return m + ln_1p_r(exp_r(min(a, b) - m));
}

// The value h + l of a pair (h, l) (see the top of this file), rounded.
fn approx(v: vec2<real>) -> real {
    return v.x + v.y;
}

// -inf as a pair.
fn ninf_pair() -> vec2<real> {
    return vec2<real>(neg_inf(), 0.0);
}

// The pair of h + l with a remainder in [-1/2, 1/2]: the remainder's integer part moves to h.
// Both steps are exact: l - round(l) always, h + k while |h| < 2^24 (beyond, h is rounded
// as a plain float32 would be).
fn settle(h: real, l: real) -> vec2<real> {
    if h == neg_inf() || l == neg_inf() {
        return ninf_pair();
    }
    let k = round(l);
    return vec2<real>(h + k, l - k);
}

// Stored pair `c` minus the integer `shift`: exact.
fn shifted(c: cell, shift: real) -> vec2<real> {
    let v = from_cell(c);
    return vec2<real>(v.x - shift, v.y);
}

// e^(a - b) for pairs: the integer parts' difference is exact, so only a rounding relative to
// the result is left.
fn exp_diff(a: vec2<real>, b: vec2<real>) -> real {
    return exp_r((a.x - b.x) + (a.y - b.y));
}

// ln(e^a + e^b + e^c) for pairs, as a pair: the largest term's h, and its l plus
// ln(1 + the others relative to it). Two exps and one log.
fn lse3(a: vec2<real>, b: vec2<real>, c: vec2<real>) -> vec2<real> {
    var m = a;
    var p = b;
    var q = c;
    if approx(p) > approx(m) {
        let x = m;
        m = p;
        p = x;
    }
    if approx(q) > approx(m) {
        let x = m;
        m = q;
        q = x;
    }
    if m.x == neg_inf() {
        return m;
    }
    return vec2<real>(m.x, m.y + ln_1p_r(exp_diff(p, m) + exp_diff(q, m)));
}
