// fastctc GPU kernels: the CTC lattice, one workgroup per sample.
//
// Appended to a prelude (`real_f32.wgsl` or `real_f64.wgsl`) that defines `real`, `cell`,
// `from_cell`, `to_cell`, `neg_inf`, `nan_r`, `is_bad`, `exp_r`, `ln_1p_r` and `ln_r`, then
// `pairs.wgsl` (`lse2`, `lse3` and the pair arithmetic); `shader.rs` also sets the workgroup
// size `WG`.
//
// Extended states s = 0..S-1, S = 2L+1: even states are the blank, odd state 2j+1 is label j.
// All values are natural logs. A workgroup loops over time; each invocation owns the states
// s = lo + lid, lo + lid + WG, ... of the current frame's band, so any target length works.
// Invocations meet once per frame, in `reduce_*`, which also makes the row they just wrote
// visible to the others. No atomics: each workgroup writes only its own sample's rows, and
// every reduction runs in a fixed order, so results are bitwise reproducible.
//
// Values in `work` are pairs (h, l) meaning h + l, h an integer and |l| <= 1/2 or so
// (`settle`; the float64 prelude stores h + l as one number, see `from_cell`/`to_cell`).
// Shifts are integers, so shifting is exact, and a sum keeps its largest term's h: rounding
// is relative to l, not to the value, which far from a row's maximum (where the posterior of
// a long input often lies) is hundreds of nats (docs/design.md#gpu-numerics).
//
// `forward` stores alpha row t *un*normalised, relative to the sum A(t-1) of the earlier rows'
// shifts, and writes m(t) = max_s of that row, rounded to an integer, to `out`: alpha(t) =
// row(t) + A(t-1), and the log-likelihood is A(T-2) + logsumexp(row(T-1)[S-2..]). The host
// sums the m(t) in float64.
//
// With logits input (`FLAG_LOGITS_INPUT`), `normalise` first writes each frame's log-sum-exp
// over classes to `out`, and every read of the input subtracts it (a fused log_softmax).
//
// `backward` sweeps t = T-1..0 computing beta(t) normalised by a running maximum, the
// occupancy softmax_s(alpha + beta) of frame t, and gradient row t. With `ckpt` = k > 1 only
// every k-th alpha row is kept; the others are recomputed k rows at a time (the last k rows
// are still in place from the forward pass).
//
// Time is split into spans of frames, one dispatch each (`span`, through a dynamic offset):
// forward spans in increasing order, backward spans in decreasing order, all in one command
// submission. What one span hands the next lives in `work` and `out` (the status, alpha row
// maxima, the beta normaliser). The split bounds the loop iterations of one invocation:
// llvmpipe ends every loop of a shader once they have run 65535 iterations together, silently;
// see `run.rs`. A loop of two iterations (`canary`) run as the time loop's last iteration
// detects that: it stops after one (or never runs, when the time loop itself was stopped),
// and the invocation flags its sample, so that the host runs the chunk again with shorter
// spans. It must be nested in the time loop: llvmpipe's GL path gives every top-level loop
// a fresh count.

const WG: u32 = 256u;

// The host side of every declaration from here to `Sample` is `contract.rs`; a test there
// reads this file and fails when the two disagree.
//
// info[0..HEADER]: number of classes C, blank, flags, number of frames in the chunk; then one
// META-word `Sample` record per workgroup.
const HEADER: u32 = 4u;
const HEADER_CLASSES: u32 = 0u;
const HEADER_BLANK: u32 = 1u;
const HEADER_FLAGS: u32 = 2u;
const HEADER_FRAMES: u32 = 3u;
const META: u32 = 10u;
// The gradient is taken with respect to logits: each row starts from softmax * scale.
const FLAG_LOGITS_GRAD: u32 = 1u;
// The input holds logits: each frame is shifted by its log-sum-exp.
const FLAG_LOGITS_INPUT: u32 = 2u;
// A state's code: its class, and SKIP_BIT when it may be entered from s - 2.
const SKIP_BIT: u32 = 0x80000000u;
const CLASS_MASK: u32 = 0x7fffffffu;
// Status written by `forward` (as a real) and read by `backward`.
const STATUS_OK: u32 = 0u;
const STATUS_NAN: u32 = 1u;
const STATUS_NO_PATH: u32 = 2u;
// A sample's results in `out` after its row maxima m(0..T): slot k is at out_off + T + k.
const OUT_END: u32 = 0u;
const OUT_STATUS: u32 = 1u;
const OUT_CARRY: u32 = 2u;
const OUT_CUT: u32 = 3u;

@group(0) @binding(0) var<storage, read> info: array<u32>;
// Per workgroup: the reduction's gradient factor.
@group(0) @binding(1) var<storage, read> scales: array<real>;
// Each sample's frames 0..T, C values each, back to back.
@group(0) @binding(2) var<storage, read> lp: array<real>;
// Same layout as `lp`.
@group(0) @binding(3) var<storage, read_write> grad: array<real>;
// Alpha rows (kept, then segment), then two w rows and two occupancy rows; see `Sample`.
@group(0) @binding(4) var<storage, read_write> work: array<cell>;
// The log-sum-exp of every frame of the chunk (logits input only), then per sample: m(0..T),
// the end term, the status, the beta normaliser one backward span hands the next, and the
// flag set when a loop was cut short (see `canary`).
@group(0) @binding(5) var<storage, read_write> out: array<real>;

// The frames [t0, t1) this dispatch covers (each sample stops at its own length).
struct Span {
    t0: u32,
    t1: u32,
    // Always 2, but unknown to the shader compiler, which cannot unroll `canary`'s loop.
    two: u32,
}

@group(0) @binding(6) var<uniform> span: Span;

var<workgroup> red: array<vec4<real>, WG>;
var<workgroup> uniform_word: u32;
var<private> n_classes: u32;

// False when the driver has cut this invocation's loops short (llvmpipe's loop limit): a loop
// of `span.two` = 2 iterations then stops after one.
fn canary() -> bool {
    var n = 0u;
    loop {
        n += 1u;
        if n >= span.two {
            break;
        }
    }
    return n == span.two;
}

// Flags the sample at `out[at]` unless `loops_ok`, the canary's verdict.
fn flag_cut_loops(at: u32, loops_ok: bool) {
    if !loops_ok {
        out[at] = 1.0;
    }
}

struct Sample {
    // Offset of frame 0's row in `lp` and `grad`.
    lp_off: u32,
    t_len: u32,
    states: u32,
    // Offset in `info` of the S state codes.
    code_off: u32,
    // Offset in `info` of the label groups, (class, offset in info of its states, count) each:
    // one per distinct label class, listing the odd states that carry it.
    group_off: u32,
    n_groups: u32,
    work_off: u32,
    // 0: loss only, two rolling alpha rows; k >= 1: rows t with t % k == 0 are kept.
    ckpt: u32,
    out_off: u32,
    // Index of frame 0 among the chunk's frames (`lp_off / C`).
    frame_off: u32,
}

fn load_sample(index: u32) -> Sample {
    let b = HEADER + index * META;
    return Sample(info[b], info[b + 1u], info[b + 2u], info[b + 3u], info[b + 4u], info[b + 5u],
        info[b + 6u], info[b + 7u], info[b + 8u], info[b + 9u]);
}

// States reachable from the start at frame t that can still reach the end: [lo, hi].
fn band_lo(t: u32, t_len: u32, states: u32) -> u32 {
    let need = 2u * (t_len - t);
    return select(0u, states - need, states > need);
}

fn band_hi(t: u32, states: u32) -> u32 {
    return min(2u * t + 1u, states - 1u);
}

fn kept_rows(smp: Sample) -> u32 {
    return (smp.t_len + smp.ckpt - 1u) / smp.ckpt;
}

// Offset in `work` of alpha row t.
fn alpha_row(smp: Sample, t: u32) -> u32 {
    if smp.ckpt == 0u {
        return smp.work_off + (t & 1u) * smp.states;
    }
    let g = t / smp.ckpt;
    let r = t - g * smp.ckpt;
    if r == 0u {
        return smp.work_off + g * smp.states;
    }
    return smp.work_off + (kept_rows(smp) + r - 1u) * smp.states;
}

// Offset in `work` of the backward rows: w[0], w[1], occupancy[0], occupancy[1].
fn back_rows(smp: Sample) -> u32 {
    return smp.work_off + (kept_rows(smp) + smp.ckpt - 1u) * smp.states;
}

// What is subtracted from frame t's input: its log-sum-exp for logits, else 0.
fn frame_norm(smp: Sample, t: u32) -> real {
    if (info[HEADER_FLAGS] & FLAG_LOGITS_INPUT) != 0u {
        return out[smp.frame_off + t];
    }
    return 0.0;
}

fn emission(smp: Sample, t: u32, s: u32, norm: real) -> real {
    let c = info[smp.code_off + s] & CLASS_MASK;
    return lp[smp.lp_off + t * n_classes + c] - norm;
}

fn may_skip(smp: Sample, s: u32) -> bool {
    return (info[smp.code_off + s] & SKIP_BIT) != 0u;
}

// alpha row t at state s from row t-1 (at `prev`, band [lo_p, hi_p], shift m_prev, an
// integer), as a settled pair.
fn alpha_step(smp: Sample, s: u32, prev: u32, lo_p: u32, hi_p: u32, m_prev: real, e: real) -> vec2<real> {
    var stay = ninf_pair();
    var step = ninf_pair();
    var jump = ninf_pair();
    // Each term is shifted by the row's (integer) maximum before the log-sum-exp, so that the
    // sum stays near 0 where the row is largest.
    if s >= lo_p && s <= hi_p {
        stay = shifted(work[prev + s], m_prev);
    }
    if s >= lo_p + 1u && s <= hi_p + 1u {
        step = shifted(work[prev + s - 1u], m_prev);
    }
    if s >= lo_p + 2u && s <= hi_p + 2u && may_skip(smp, s) {
        jump = shifted(work[prev + s - 2u], m_prev);
    }
    let r = lse3(stay, step, jump);
    return settle(r.x, r.y + e);
}

// Workgroup maximum of x and of y. Also a barrier for the storage rows written before it.
fn reduce_max(lid: u32, v: vec4<real>) -> vec4<real> {
    storageBarrier();
    red[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if lid < stride {
            let a = red[lid];
            let b = red[lid + stride];
            red[lid] = vec4<real>(max(a.x, b.x), max(a.y, b.y), a.z, a.w);
        }
        workgroupBarrier();
    }
    return workgroupUniformLoad(&red[0]);
}

// Scale factor of a partial sum taken relative to `m_part` when re-expressed relative to `m`.
fn rescale(m_part: real, m: real) -> real {
    if m_part == neg_inf() {
        return 0.0;
    }
    return exp_r(m_part - m);
}

// Merges (max, sum of exp(v - max), blank part of that sum, max of w) pairs: an online softmax.
fn reduce_softmax(lid: u32, v: vec4<real>) -> vec4<real> {
    storageBarrier();
    red[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if lid < stride {
            let a = red[lid];
            let b = red[lid + stride];
            let m = max(a.x, b.x);
            let fa = rescale(a.x, m);
            let fb = rescale(b.x, m);
            red[lid] = vec4<real>(m, a.y * fa + b.y * fb, a.z * fa + b.z * fb, max(a.w, b.w));
        }
        workgroupBarrier();
    }
    return workgroupUniformLoad(&red[0]);
}

// The class of label group g, or the blank for g = n_groups.
fn group_class(smp: Sample, g: u32) -> u32 {
    if g == smp.n_groups {
        return info[HEADER_BLANK];
    }
    return info[smp.group_off + 3u * g];
}

// Log-sum-exp over classes of each of the chunk's frames, one workgroup per frame: NaN when
// the frame holds a NaN or +inf, -inf when it is all -inf.
@compute @workgroup_size(WG)
fn normalise(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32) {
    let f = wid.y * groups.x + wid.x;
    if f >= info[HEADER_FRAMES] {
        return;
    }
    let classes = info[HEADER_CLASSES];
    let row = f * classes;
    let ninf = neg_inf();
    var m = ninf;
    var sum: real = 0.0;
    var bad: real = 0.0;
    for (var c = lid; c < classes; c += WG) {
        let v = lp[row + c];
        if is_bad(v) {
            bad = 1.0;
        } else if v > m {
            sum = sum * rescale(m, v) + 1.0;
            m = v;
        } else {
            sum += rescale(v, m);
        }
    }
    let r = reduce_softmax(lid, vec4<real>(m, sum, 0.0, bad));
    if lid == 0u {
        var lse = r.x;
        if r.w != 0.0 {
            lse = nan_r();
        } else if r.x != ninf {
            lse = r.x + ln_r(r.y);
        }
        out[f] = lse;
    }
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    n_classes = info[HEADER_CLASSES];
    let smp = load_sample(wid.x);
    let t_end = min(span.t1, smp.t_len);
    if span.t0 >= t_end {
        return;
    }
    let status_at = smp.out_off + smp.t_len + OUT_STATUS;
    let cut_at = smp.out_off + smp.t_len + OUT_CUT;
    if lid == 0u {
        if span.t0 == 0u {
            uniform_word = STATUS_OK;
            out[cut_at] = 0.0;
        } else {
            uniform_word = u32(out[status_at]);
        }
    }
    if workgroupUniformLoad(&uniform_word) != STATUS_OK {
        return;
    }
    let ninf = neg_inf();
    var m_prev: real = 0.0;
    if span.t0 > 0u {
        m_prev = out[smp.out_off + span.t0 - 1u];
    }
    var status = STATUS_OK;
    var loops_ok = false;
    var t = span.t0;
    loop {
        if t >= t_end {
            loops_ok = canary();
            break;
        }
        let lo = band_lo(t, smp.t_len, smp.states);
        let hi = band_hi(t, smp.states);
        let row = alpha_row(smp, t);
        let norm = frame_norm(smp, t);
        // Every class the target uses is checked, inside the band or not (as on the CPU). The
        // first WG classes are loaded here and tested after the states, so that the loads
        // overlap the state loop instead of stalling it.
        let frame = smp.lp_off + t * n_classes;
        var probe: real = 0.0;
        if lid <= smp.n_groups {
            probe = lp[frame + group_class(smp, lid)];
        }
        var prev = 0u;
        var lo_p = 0u;
        var hi_p = 0u;
        if t > 0u {
            prev = alpha_row(smp, t - 1u);
            lo_p = band_lo(t - 1u, smp.t_len, smp.states);
            hi_p = band_hi(t - 1u, smp.states);
        }
        var local_max = ninf;
        for (var s = lo + lid; s <= hi; s += WG) {
            let e = emission(smp, t, s, norm);
            var a = settle(0.0, e);
            if t > 0u {
                a = alpha_step(smp, s, prev, lo_p, hi_p, m_prev, e);
            }
            work[row + s] = to_cell(a);
            local_max = max(local_max, approx(a));
        }
        var bad: real = select(real(0.0), real(1.0), is_bad(probe - norm));
        for (var g = lid + WG; g <= smp.n_groups; g += WG) {
            if is_bad(lp[frame + group_class(smp, g)] - norm) {
                bad = 1.0;
            }
        }
        let r = reduce_max(lid, vec4<real>(local_max, bad, 0.0, 0.0));
        // A NaN or +inf read in this frame wins over a dead end found in the same frame.
        if r.y != 0.0 {
            status = STATUS_NAN;
            loops_ok = canary();
            break;
        }
        if r.x == ninf {
            status = STATUS_NO_PATH;
            loops_ok = canary();
            break;
        }
        // The next row's shift: an integer, so that shifting is exact.
        m_prev = round(r.x);
        if lid == 0u {
            out[smp.out_off + t] = m_prev;
        }
        t += 1u;
    }
    if lid == 0u {
        var end = ninf;
        if status == STATUS_OK && t_end == smp.t_len {
            let last = smp.t_len - 1u;
            let row = alpha_row(smp, last);
            let s = smp.states;
            if s > 1u {
                // The final blank is outside the last band when T = L.
                var final_blank = ninf;
                if band_hi(last, s) == s - 1u {
                    final_blank = approx(from_cell(work[row + s - 1u]));
                }
                end = lse2(final_blank, approx(from_cell(work[row + s - 2u])));
            } else {
                end = approx(from_cell(work[row]));
            }
        }
        if status != STATUS_OK || t_end == smp.t_len {
            out[smp.out_off + smp.t_len + OUT_END] = end;
        }
        out[status_at] = real(status);
    }
    flag_cut_loops(cut_at, loops_ok);
}

// The value of gradient entry i (an index into `lp`/`grad`, in a frame with normaliser
// `norm`) before the occupancy is taken off: softmax * scale for the logits gradient, else 0.
fn grad_base(i: u32, norm: real, scale: real) -> real {
    if (info[HEADER_FLAGS] & FLAG_LOGITS_GRAD) != 0u {
        return exp_r(lp[i] - norm) * scale;
    }
    return 0.0;
}

// Recomputes alpha rows a+1 .. a+ckpt-1 from kept row a.
fn recompute_segment(smp: Sample, a: u32, lid: u32) {
    for (var t = a + 1u; t < a + smp.ckpt; t++) {
        let lo = band_lo(t, smp.t_len, smp.states);
        let hi = band_hi(t, smp.states);
        let row = alpha_row(smp, t);
        let prev = alpha_row(smp, t - 1u);
        let lo_p = band_lo(t - 1u, smp.t_len, smp.states);
        let hi_p = band_hi(t - 1u, smp.states);
        let m_prev = out[smp.out_off + t - 1u];
        let norm = frame_norm(smp, t);
        for (var s = lo + lid; s <= hi; s += WG) {
            let e = emission(smp, t, s, norm);
            work[row + s] = to_cell(alpha_step(smp, s, prev, lo_p, hi_p, m_prev, e));
        }
        storageBarrier();
    }
}

// Occupancy statistics of frame t+1, kept for its deferred label entries.
struct Frame {
    // Maximum of the occupancy logits.
    m: real,
    // scale / sum of exp(logit - m).
    weight: real,
    // Sum of exp(logit - m) over blank states.
    blank: real,
    // The frame's input normaliser.
    norm: real,
}

// Writes the entries of gradient row t that the occupancy touches: every distinct label class,
// and the blank (`n_groups` stands for it). The row's other entries were written by
// `write_base` before the last reduction.
// exp(o - m) for a state inside the band [lo, hi], else 0 (its row entry is stale).
fn occupied(o: cell, s: u32, lo: u32, hi: u32, m: real) -> real {
    return select(real(0.0), exp_r(approx(shifted(o, m))), s >= lo && s <= hi);
}

fn write_occupied(smp: Sample, t: u32, occ_row: u32, f: Frame, scale: real, lid: u32) {
    let row = smp.lp_off + t * n_classes;
    let lo = band_lo(t, smp.t_len, smp.states);
    let hi = band_hi(t, smp.states);
    for (var g = lid; g <= smp.n_groups; g += WG) {
        let i = row + group_class(smp, g);
        var total = f.blank;
        if g < smp.n_groups {
            let h = smp.group_off + 3u * g;
            let list = info[h + 1u];
            let count = info[h + 2u];
            total = 0.0;
            // Four states at a time, their loads issued together: a class that many labels
            // share (a long target over a small alphabet: 20 states a class for S = 1000,
            // C = 50) otherwise costs two dependent loads per state, every frame.
            var k = 0u;
            for (; k + 4u <= count; k += 4u) {
                let s0 = info[list + k];
                let s1 = info[list + k + 1u];
                let s2 = info[list + k + 2u];
                let s3 = info[list + k + 3u];
                let v0 = work[occ_row + s0];
                let v1 = work[occ_row + s1];
                let v2 = work[occ_row + s2];
                let v3 = work[occ_row + s3];
                total += (occupied(v0, s0, lo, hi, f.m) + occupied(v1, s1, lo, hi, f.m))
                    + (occupied(v2, s2, lo, hi, f.m) + occupied(v3, s3, lo, hi, f.m));
            }
            for (; k < count; k++) {
                let s = info[list + k];
                total += occupied(work[occ_row + s], s, lo, hi, f.m);
            }
        }
        grad[i] = grad_base(i, f.norm, scale) - f.weight * total;
    }
}

fn write_base(smp: Sample, t: u32, norm: real, scale: real, lid: u32) {
    let row = smp.lp_off + t * n_classes;
    for (var c = lid; c < n_classes; c += WG) {
        grad[row + c] = grad_base(row + c, norm, scale);
    }
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    n_classes = info[HEADER_CLASSES];
    let smp = load_sample(wid.x);
    let t_end = min(span.t1, smp.t_len);
    if span.t0 >= t_end {
        return;
    }
    if lid == 0u {
        uniform_word = u32(out[smp.out_off + smp.t_len + OUT_STATUS]);
    }
    // Samples without a finite loss get their rows filled on the host.
    if workgroupUniformLoad(&uniform_word) != STATUS_OK {
        return;
    }
    let carry_at = smp.out_off + smp.t_len + OUT_CARRY;
    let ninf = neg_inf();
    let t_len = smp.t_len;
    let states = smp.states;
    let k = smp.ckpt;
    let rows = back_rows(smp);
    let scale = scales[wid.x];
    // The normaliser of beta(t): the maximum of w(t+1) = beta(t+1) + emission(t+1), rounded
    // to an integer.
    var m_w: real = 0.0;
    if t_end < t_len {
        m_w = out[carry_at];
    }
    var next = Frame(0.0, 0.0, 0.0, 0.0);
    var loops_ok = false;
    var t = t_end;
    loop {
        if t == span.t0 {
            // The label entries of the span's first frame, then the canary, inside the loop.
            let occ = rows + (2u + (span.t0 & 1u)) * states;
            write_occupied(smp, span.t0, occ, next, scale, lid);
            loops_ok = canary();
            break;
        }
        t -= 1u;
        if k > 1u && t % k == k - 1u && t + 1u < t_len {
            recompute_segment(smp, t + 1u - k, lid);
        }
        let p = t & 1u;
        let w_cur = rows + p * states;
        let w_next = rows + (1u - p) * states;
        let occ_cur = rows + (2u + p) * states;
        let occ_next = rows + (3u - p) * states;
        let lo = band_lo(t, t_len, states);
        let hi = band_hi(t, states);
        let arow = alpha_row(smp, t);
        let m_alpha = out[smp.out_off + t];
        let norm = frame_norm(smp, t);
        let last = t + 1u == t_len;
        var lo1 = 0u;
        var hi1 = 0u;
        if !last {
            lo1 = band_lo(t + 1u, t_len, states);
            hi1 = band_hi(t + 1u, states);
        }
        var max_occ = ninf;
        var max_w = ninf;
        for (var s = lo + lid; s <= hi; s += WG) {
            var beta = ninf_pair();
            if last {
                if s + 2u >= states {
                    beta = vec2<real>(0.0, 0.0);
                }
            } else {
                var stay = ninf_pair();
                var step = ninf_pair();
                var jump = ninf_pair();
                // Shifted before the log-sum-exp, as in `alpha_step`.
                if s >= lo1 && s <= hi1 {
                    stay = shifted(work[w_next + s], m_w);
                }
                if s + 1u >= lo1 && s + 1u <= hi1 {
                    step = shifted(work[w_next + s + 1u], m_w);
                }
                if s + 2u >= lo1 && s + 2u <= hi1 && may_skip(smp, s + 2u) {
                    jump = shifted(work[w_next + s + 2u], m_w);
                }
                beta = lse3(stay, step, jump);
            }
            // Pairs add exactly in h: the occupancy logit keeps its precision however far the
            // forward and backward maxima are apart.
            let a = shifted(work[arow + s], m_alpha);
            let o = vec2<real>(a.x + beta.x, a.y + beta.y);
            work[occ_cur + s] = to_cell(o);
            max_occ = max(max_occ, approx(o));
            let w = settle(beta.x, beta.y + emission(smp, t, s, norm));
            work[w_cur + s] = to_cell(w);
            max_w = max(max_w, approx(w));
        }
        // An integer, so that the occupancies and `reduce_softmax` shift by it exactly.
        max_occ = round(max_occ);
        var sum: real = 0.0;
        var blank: real = 0.0;
        if max_occ != ninf {
            for (var s = lo + lid; s <= hi; s += WG) {
                let v = exp_r(approx(shifted(work[occ_cur + s], max_occ)));
                sum += v;
                if (s & 1u) == 0u {
                    blank += v;
                }
            }
        }
        // Frame t+1's label entries (the span above wrote those of its own last frame).
        if t + 1u < t_end {
            write_occupied(smp, t + 1u, occ_next, next, scale, lid);
        }
        write_base(smp, t, norm, scale, lid);
        let r = reduce_softmax(lid, vec4<real>(max_occ, sum, blank, max_w));
        next = Frame(r.x, scale / r.y, r.z, norm);
        m_w = select(round(r.w), 0.0, r.w == ninf);
    }
    if lid == 0u {
        out[carry_at] = m_w;
    }
    flag_cut_loops(smp.out_off + smp.t_len + OUT_CUT, loops_ok);
}
