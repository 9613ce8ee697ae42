// fastctc GPU kernel: forced alignment (Viterbi), one workgroup per sample. Needs SHADER_F64.
//
// The same max-product recursion as the CPU aligner (`src/cpu/viterbi.rs`), with the same
// float64 operations in the same order, so that the best path and its score are bitwise
// the CPU's: for each state s a path can be in at frame t (s <= min(2t + 1, S - 1)),
//
//     stay = prev[s], one = prev[s - 1], two = prev[s - 2] + skip(s)   (0 or -inf)
//     advance = one > stay; best = advance ? one : stay
//     jump = two > best;    cur[s] = (jump ? two : best) + emission(t, s)
//
// and the step taken (0, 1 or 2 states back) is packed, two bits per state, into `back`:
// with W = ceil(S / 16) words per frame, word w holds states w, w + W, ..., w + 15 W (state s
// in word s % W at bits 2 (s / W)). Each invocation owns whole words (w = lid, lid + WG, ...),
// so no two invocations write one word and no atomics are needed, and at each step of the
// word loop neighbouring invocations read neighbouring states (coalesced on a GPU). States
// above a frame's band are never written and stay -inf, as on the CPU.
//
// The host (`align.rs`) gathers the emissions in float64 (log_softmax and the star token
// applied), checks them for NaN, and traces the path back through the downloaded `back`
// rows from the best final state of `rows`.
//
// Time is split into spans of frames, one dispatch each, because llvmpipe silently ends a
// shader's loops after 65535 iterations together (see `lattice.wgsl` and `run.rs`); a
// `canary` loop, nested in the time loop, detects a cut and flags the workgroup in `cut`,
// and the host runs the chunk again with shorter spans. `rows` carries the recursion from
// one span to the next.

const WG: u32 = 256u;

// The host side of the declarations down to `Span` is `align.rs` (`Record`, `SKIP_BIT`,
// `STATES_PER_WORD`); a test there reads this file and fails when the two disagree.
const META: u32 = 8u;
// A state's code: the column of its class among the sample's emission columns, and SKIP_BIT
// when it may be entered from s - 2 (a label unlike the one before it).
const SKIP_BIT: u32 = 0x80000000u;
const COLUMN_MASK: u32 = 0x7fffffffu;
const STATES_PER_WORD: u32 = 16u;

struct Record {
    // Offset of frame 0's emissions in `emit` (`columns` values per frame).
    emit_off: u32,
    t_len: u32,
    // Extended states, 2L + 1.
    states: u32,
    columns: u32,
    // Offset in `info` of the `states` state codes.
    code_off: u32,
    // Offset in `rows` of the sample's two rows of `states + 2` values (two -inf pads first).
    rows_off: u32,
    // Offset in `back` of frame 0's back-pointer words (`words` per frame).
    back_off: u32,
    words: u32,
}

// The frames [t0, t1) this dispatch covers (each sample stops at its own length).
struct Span {
    t0: u32,
    t1: u32,
    // Always 2, but unknown to the shader compiler, which cannot unroll `canary`'s loop.
    two: u32,
}

// One META-word record per workgroup, then the state codes.
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> emit: array<f64>;
// Row t of a sample is at rows_off + (t % 2) * (states + 2); the row before frame 0 is row 1.
@group(0) @binding(2) var<storage, read_write> rows: array<f64>;
@group(0) @binding(3) var<storage, read_write> back: array<u32>;
// Per workgroup: non-zero when the driver cut its loops short (the host zeroes it).
@group(0) @binding(4) var<storage, read_write> cut: array<u32>;
@group(0) @binding(5) var<uniform> span: Span;

fn neg_inf() -> f64 {
    return f64(bitcast<f32>(0xff800000u));
}

// False when the driver has cut this invocation's loops short: a loop of `span.two` = 2
// iterations then stops after one.
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

fn load_record(index: u32) -> Record {
    let b = index * META;
    return Record(info[b], info[b + 1u], info[b + 2u], info[b + 3u], info[b + 4u], info[b + 5u],
        info[b + 6u], info[b + 7u]);
}

// The states of frame t's band in word w: `cur[s] = best predecessor + emission`, and the
// word of their steps.
fn frame_word(r: Record, t: u32, w: u32, top: u32) -> u32 {
    let width = r.states + 2u;
    let cur = r.rows_off + (t & 1u) * width;
    let prev = r.rows_off + ((t + 1u) & 1u) * width;
    let e_row = r.emit_off + t * r.columns;
    let ninf = neg_inf();
    var bits = 0u;
    var s = w;
    for (var k = 0u; k < STATES_PER_WORD && s <= top; k += 1u) {
        let code = info[r.code_off + s];
        var skip: f64 = ninf;
        if (code & SKIP_BIT) != 0u {
            skip = 0.0;
        }
        let stay = rows[prev + s + 2u];
        let one = rows[prev + s + 1u];
        let two = rows[prev + s] + skip;
        let advance = one > stay;
        let best = select(stay, one, advance);
        let jump = two > best;
        rows[cur + s + 2u] = select(best, two, jump) + emit[e_row + (code & COLUMN_MASK)];
        bits |= select(u32(advance), 2u, jump) << (2u * k);
        s += r.words;
    }
    return bits;
}

@compute @workgroup_size(WG)
fn viterbi(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = load_record(wid.x);
    let t_end = min(span.t1, r.t_len);
    if span.t0 >= t_end {
        return;
    }
    let width = r.states + 2u;
    if span.t0 == 0u {
        // Frame 0's row all -inf; the row before it open only in state 0, at 0.
        for (var i = lid; i < 2u * width; i += WG) {
            var v = neg_inf();
            if i == width + 2u {
                v = 0.0;
            }
            rows[r.rows_off + i] = v;
        }
        storageBarrier();
        workgroupBarrier();
    }
    var loops_ok = false;
    var t = span.t0;
    loop {
        if t >= t_end {
            loops_ok = canary();
            break;
        }
        let top = min(2u * t + 1u, r.states - 1u);
        let n_words = min(top + 1u, r.words);
        let b_row = r.back_off + t * r.words;
        for (var w = lid; w < n_words; w += WG) {
            back[b_row + w] = frame_word(r, t, w, top);
        }
        storageBarrier();
        workgroupBarrier();
        t += 1u;
    }
    if !loops_ok {
        cut[wid.x] = 1u;
    }
}
