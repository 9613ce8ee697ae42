//! The aligner against a plain full-table Viterbi written here, independently: every segment
//! length gives the same path, scores and spans.

use ndarray::{Array1, Array2};

use super::*;

/// A small deterministic generator (no dependency): uniform in [0, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The best path's states by a whole table of scores and a byte back-pointer per cell, with
/// the documented tie rule; `None` when no path is finite.
fn plain_viterbi(lp: &Array2<f64>, labels: &[u32], blank: u32) -> Option<(f64, Vec<u32>)> {
    let ext: Vec<u32> = (0..2 * labels.len() + 1)
        .map(|s| if s % 2 == 0 { blank } else { labels[s / 2] })
        .collect();
    let (t_len, n) = (lp.nrows(), ext.len());
    let mut score = vec![vec![f64::NEG_INFINITY; n]; t_len];
    let mut back = vec![vec![0usize; n]; t_len];
    score[0][0] = lp[[0, ext[0] as usize]];
    if n > 1 {
        score[0][1] = lp[[0, ext[1] as usize]];
    }
    for t in 1..t_len {
        for s in 0..n {
            let mut best = (score[t - 1][s], 0);
            if s >= 1 && score[t - 1][s - 1] > best.0 {
                best = (score[t - 1][s - 1], 1);
            }
            let skip = s >= 2 && s % 2 == 1 && ext[s] != ext[s - 2];
            if skip && score[t - 1][s - 2] > best.0 {
                best = (score[t - 1][s - 2], 2);
            }
            score[t][s] = best.0 + lp[[t, ext[s] as usize]];
            back[t][s] = best.1;
        }
    }
    let mut s = n - 1;
    if n > 1 && score[t_len - 1][n - 2] > score[t_len - 1][n - 1] {
        s = n - 2;
    }
    let total = score[t_len - 1][s];
    if !total.is_finite() {
        return None;
    }
    let mut path = vec![0; t_len];
    for t in (0..t_len).rev() {
        path[t] = ext[s];
        s -= back[t][s];
    }
    Some((total, path))
}

fn run(lp: &Array2<f64>, labels: &[u32], segment: usize) -> (f64, Vec<i64>, Vec<f64>, Vec<i64>) {
    let t_len = lp.nrows();
    let x = SampleRef {
        log_probs: lp.view(),
        input_len: t_len,
        labels,
        blank: 0,
        logits: false,
    };
    let mut out_labels = Array1::from_elem(t_len, -1i64);
    let mut scores = Array1::from_elem(t_len, f64::NAN);
    let mut spans = Array2::from_elem((labels.len(), 2), -1i64);
    let score = align(
        &x,
        None,
        segment,
        &mut ViterbiWorkspace::default(),
        AlignmentRows {
            labels: out_labels.view_mut(),
            scores: scores.view_mut(),
            spans: spans.view_mut(),
        },
    );
    let spans = spans.iter().copied().collect();
    (score, out_labels.to_vec(), scores.to_vec(), spans)
}

#[test]
fn aligns_a_clear_case() {
    // Frames favour: blank, 1, 1, blank, 2.
    let favoured = [0usize, 1, 1, 0, 2];
    let lp = Array2::from_shape_fn((5, 3), |(t, c)| {
        if c == favoured[t] {
            0.9f64.ln()
        } else {
            0.05f64.ln()
        }
    });
    let (score, labels, _, spans) = run(&lp, &[1, 2], 5);
    assert_eq!(labels, vec![0, 1, 1, 0, 2]);
    assert!((score - 5.0 * 0.9f64.ln()).abs() < 1e-12);
    assert_eq!(spans, vec![1, 3, 4, 5]);
}

#[test]
fn every_segment_length_gives_the_plain_path() {
    let mut rng = Lcg(7);
    for case in 0..12 {
        let t_len = 20 + case * 13;
        let classes = 3 + case % 5;
        let lp = Array2::from_shape_fn((t_len, classes), |_| -4.0 * rng.next());
        let s_len = (case * 3 + 1).min(t_len / 2);
        let labels: Vec<u32> = (0..s_len)
            .map(|_| 1 + (rng.next() * (classes - 1) as f64) as u32)
            .collect();
        let (expected, path) = plain_viterbi(&lp, &labels, 0).expect("a path exists");
        let whole = run(&lp, &labels, t_len);
        assert_eq!(whole.0, expected);
        let path: Vec<i64> = path.iter().map(|&c| c as i64).collect();
        assert_eq!(whole.1, path);
        for segment in [1, 2, 3, 7, t_len / 2, t_len - 1, t_len + 5] {
            assert_eq!(run(&lp, &labels, segment), whole, "segment {segment}");
        }
    }
}

#[test]
fn segments_bound_the_memory_of_long_samples() {
    // T=100,000 frames, S=30,000 tokens: 6e9 cells, past any 32-bit index.
    let (t_len, states) = (100_000, 60_001);
    let segment = segment_frames(t_len, states);
    assert!(segment < t_len && segment * back_row_bytes(states) <= WHOLE_TABLE_BYTES);
    let bytes = workspace_bytes(t_len, states, segment).unwrap();
    assert!(bytes < 128 << 20, "{bytes}");
    // Short samples keep their whole table.
    assert_eq!(segment_frames(1000, 201), 1000);
    assert_eq!(segment_frames(0, 1), 1);
}
