"""Forced alignment (ctc_align) and posteriors (ctc_posteriors) against independent references."""

from __future__ import annotations

import itertools

import fastctc
import numpy as np
import pytest
from ctc_cases import make_case
from reference import collapse, ctc_sample, log_softmax


def brute_force_best_path(lp: np.ndarray, target: list[int], blank: int):
    """The best path by enumerating all C**T paths: (score, path) or (-inf, None)."""
    best_score, best_path = -np.inf, None
    num_frames, num_classes = lp.shape
    for path in itertools.product(range(num_classes), repeat=num_frames):
        if collapse(path, blank) == target:
            score = sum(lp[t, c] for t, c in enumerate(path))
            if score > best_score:
                best_score, best_path = score, path
    return best_score, best_path


def spans_of(path, blank: int) -> list[tuple[int, int]]:
    """Each emitted token's [start, end) frames along a path."""
    spans: list[list[int]] = []
    previous = None
    for t, symbol in enumerate(path):
        if symbol != blank:
            if symbol != previous:
                spans.append([t, t + 1])
            else:
                spans[-1][1] = t + 1
        previous = symbol
    return [tuple(s) for s in spans]


def viterbi_max(lp: np.ndarray, target: list[int], blank: int) -> float:
    """Max-plus dynamic programme over the extended target, written independently."""
    ext = [blank]
    for label in target:
        ext += [label, blank]
    best = np.full(len(ext), -np.inf)
    best[0] = lp[0, ext[0]]
    if len(ext) > 1:
        best[1] = lp[0, ext[1]]
    for t in range(1, lp.shape[0]):
        new = np.full(len(ext), -np.inf)
        for s, c in enumerate(ext):
            cands = [best[s]]
            if s >= 1:
                cands.append(best[s - 1])
            if s >= 2 and c != blank and ext[s - 2] != c:
                cands.append(best[s - 2])
            new[s] = max(cands) + lp[t, c]
        best = new
    return max(best[-1], best[-2]) if len(ext) > 1 else best[-1]


@pytest.mark.parametrize("seed", range(40))
def test_alignment_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_frames, num_classes = int(rng.integers(1, 6)), int(rng.integers(2, 4))
    blank = int(rng.integers(0, num_classes))
    labels = [c for c in range(num_classes) if c != blank]
    target = [int(v) for v in rng.choice(labels, size=int(rng.integers(0, 3)))]
    lp = log_softmax(rng.normal(size=(num_frames, num_classes)) * 2)
    result = fastctc.ctc_align(
        lp[:, None, :], np.array([target + [0]]), [num_frames], [len(target)], blank=blank
    )
    score, path = brute_force_best_path(lp, target, blank)
    if path is None:
        assert not result.ok[0]
        assert np.all(result.labels[0] == -1)
        assert result.path_scores[0] == -np.inf
        return
    assert result.ok[0]
    np.testing.assert_allclose(result.path_scores[0], score, rtol=1e-12, atol=1e-12)
    assert list(result.labels[0]) == list(path)
    np.testing.assert_allclose(result.scores[0], [lp[t, c] for t, c in enumerate(path)])
    expected_spans = spans_of(path, blank)
    assert [tuple(s) for s in result.spans[0][: len(target)]] == expected_spans
    assert np.all(result.spans[0][len(target) :] == -1)


def test_alignment_of_a_batch_matches_viterbi_and_collapses_to_target() -> None:
    rng = np.random.default_rng(5)
    case = make_case(rng, 80, 6, 12, 20, min_input_length=40)
    result = fastctc.ctc_align(
        case.log_probs, case.padded(-1), case.input_lengths, case.target_lengths
    )
    assert result.labels.shape == (6, 80) and result.scores.shape == (6, 80)
    assert result.spans.shape == (6, max(case.target_lengths), 2)
    for n in range(6):
        length, tl = case.input_lengths[n], case.target_lengths[n]
        target = [int(v) for v in case.padded()[n, :tl]]
        lp = case.log_probs[:length, n, :]
        assert collapse(result.labels[n, :length], 0) == target
        assert np.all(result.labels[n, length:] == -1)
        np.testing.assert_allclose(result.path_scores[n], viterbi_max(lp, target, 0), rtol=1e-12)
        np.testing.assert_allclose(
            result.scores[n, :length].sum(), result.path_scores[n], rtol=1e-12
        )


def test_alignment_flags_impossible_samples_only() -> None:
    lp = np.log(np.full((3, 2, 4), 0.25))
    result = fastctc.ctc_align(lp, [[1, 1, 1], [1, 2, 3]], [3, 3], [3, 3])
    assert list(result.ok) == [False, True]
    assert np.all(result.labels[0] == -1) and np.all(result.spans[0] == -1)
    assert list(result.labels[1]) == [1, 2, 3]


def test_alignment_ties_are_deterministic_and_documented() -> None:
    # Uniform log-probs: every path scores the same; the documented rule picks one.
    lp = np.log(np.full((4, 1, 3), 1 / 3))
    first = fastctc.ctc_align(lp, [[1]], [4], [1])
    second = fastctc.ctc_align(lp, [[1]], [4], [1])
    assert list(first.labels[0]) == list(second.labels[0])
    assert collapse(first.labels[0], 0) == [1]


def test_frames_to_seconds() -> None:
    spans = np.array([[[0, 2], [3, 5], [-1, -1]]])
    seconds = fastctc.frames_to_seconds(spans, frame_rate=50.0)
    np.testing.assert_allclose(seconds[0, :2], [[0.0, 0.04], [0.06, 0.1]])
    assert np.all(np.isnan(seconds[0, 2]))


def test_alignment_errors() -> None:
    lp = np.log(np.full((3, 1, 4), 0.25))
    with pytest.raises(ValueError, match="targets.*sample 0.*position 0"):
        fastctc.ctc_align(lp, [[7]], [3], [1])
    with pytest.raises(ValueError, match="frame_rate"):
        fastctc.frames_to_seconds(np.zeros((1, 1, 2), dtype=np.int64), frame_rate=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_posteriors_match_reference(dtype) -> None:
    rng = np.random.default_rng(11)
    case = make_case(rng, 30, 4, 7, 8, min_input_length=10)
    lp = case.log_probs.astype(dtype)
    loss, gamma = fastctc.ctc_posteriors(lp, case.padded(), case.input_lengths, case.target_lengths)
    assert gamma.dtype == dtype and gamma.shape == lp.shape and loss.shape == (4,)
    tol = 1e-10 if dtype == np.float64 else 1e-5
    for n in range(4):
        length, tl = case.input_lengths[n], case.target_lengths[n]
        ref = ctc_sample(lp[:length, n, :].astype(np.float64), case.padded()[n, :tl])
        np.testing.assert_allclose(loss[n], ref.loss, rtol=tol)
        np.testing.assert_allclose(gamma[:length, n, :], ref.gamma, atol=tol)
        assert np.all(gamma[length:, n, :] == 0)


def test_posteriors_of_impossible_sample_are_nan_or_zero() -> None:
    lp = np.log(np.full((2, 1, 3), 1 / 3))
    loss, gamma = fastctc.ctc_posteriors(lp, [[1, 1]], [2], [2])
    assert loss[0] == np.inf and np.all(np.isnan(gamma))
    loss, gamma = fastctc.ctc_posteriors(lp, [[1, 1]], [2], [2], zero_infinity=True)
    assert loss[0] == 0 and np.all(gamma == 0)
