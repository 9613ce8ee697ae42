"""fastctc.forced_align / merge_tokens (torchaudio's API, batched) against plain references."""

from __future__ import annotations

import fastctc
import numpy as np
import pytest
from conftest import require_torch
from reference import (
    brute_force_best,
    collapse,
    log_softmax,
    token_runs,
    viterbi_path,
)


def random_batch(rng, batch, frames, classes, max_target, blank=0):
    """(log_probs (N, T, C), padded targets, input lengths, target lengths, target lists)."""
    lp = log_softmax(rng.normal(size=(batch, frames, classes)) * 2)
    labels = [c for c in range(classes) if c != blank]
    il = rng.integers(max(1, frames // 2), frames + 1, size=batch)
    targets = []
    for n in range(batch):
        while True:
            target = [int(v) for v in rng.choice(labels, size=int(rng.integers(0, max_target + 1)))]
            repeats = sum(a == b for a, b in zip(target, target[1:], strict=False))
            if len(target) + repeats <= il[n]:
                break
        targets.append(target)
    width = max(1, max(len(t) for t in targets))
    padded = np.full((batch, width), 1 if blank != 1 else 2, dtype=np.int64)
    for n, target in enumerate(targets):
        padded[n, : len(target)] = target
    tl = np.array([len(t) for t in targets])
    return lp, padded, il, tl, targets


@pytest.mark.parametrize("seed", range(12))
def test_reference_viterbi_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lp, _, il, _, targets = random_batch(rng, 1, int(rng.integers(1, 6)), 3, 2)
    lp = lp[0, : il[0]]
    score, path = viterbi_path(lp, targets[0])
    expected_score, expected_path = brute_force_best(lp, targets[0])
    assert path == expected_path and score == pytest.approx(expected_score, rel=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_batched_forced_align_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    blank = int(rng.integers(0, 3))
    lp, padded, il, tl, targets = random_batch(rng, 4, 5, 3, 2, blank)
    labels, scores = fastctc.forced_align(lp, padded, il, tl, blank=blank)
    assert labels.shape == scores.shape == (4, 5)
    assert labels.dtype == np.int64 and scores.dtype == np.float64
    for n in range(4):
        score, path = brute_force_best(lp[n, : il[n]], targets[n], blank)
        assert labels[n, : il[n]].tolist() == path
        np.testing.assert_allclose(scores[n, : il[n]], [lp[n, t, c] for t, c in enumerate(path)])
        np.testing.assert_allclose(scores[n].sum(), score, rtol=1e-12)
        # Padding frames: the blank, scoring 0.
        assert np.all(labels[n, il[n] :] == blank) and np.all(scores[n, il[n] :] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_larger_batch_matches_reference_viterbi(dtype) -> None:
    rng = np.random.default_rng(7)
    lp, padded, il, tl, targets = random_batch(rng, 6, 40, 8, 12)
    labels, scores = fastctc.forced_align(lp.astype(dtype), padded.astype(np.int32), il, tl)
    assert labels.dtype == np.int32 and scores.dtype == dtype
    for n in range(6):
        score, path = viterbi_path(lp[n, : il[n]].astype(dtype), targets[n])
        assert labels[n, : il[n]].tolist() == path
        assert collapse(path, 0) == targets[n]
        tol = 1e-12 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(scores[n].sum(dtype=np.float64), score, rtol=tol)


def test_defaults_take_every_frame_and_token_and_lists_give_int32() -> None:
    rng = np.random.default_rng(3)
    lp = log_softmax(rng.normal(size=(2, 6, 4)))
    labels, _ = fastctc.forced_align(lp, [[1, 2], [3, 3]])
    assert labels.dtype == np.int32
    for n, target in enumerate([[1, 2], [3, 3]]):
        assert labels[n].tolist() == viterbi_path(lp[n], target)[1]


def test_ties_follow_the_documented_rule() -> None:
    # Uniform log-probabilities: every path ties; the documented rule picks one.
    lp = np.log(np.full((2, 5, 3), 1 / 3))
    labels, _ = fastctc.forced_align(lp, [[1, 2], [2, 2]])
    for n, target in enumerate([[1, 2], [2, 2]]):
        assert labels[n].tolist() == viterbi_path(lp[n], target)[1]


def test_negative_blank_pads_with_the_resolved_blank() -> None:
    lp = log_softmax(np.random.default_rng(1).normal(size=(1, 4, 3)))
    labels, _ = fastctc.forced_align(lp, [[1]], [3], [1], blank=-1)
    assert labels[0].tolist()[:3] == viterbi_path(lp[0, :3], [1], blank=2)[1]
    assert labels[0, 3] == 2


def test_forced_align_errors() -> None:
    lp = np.log(np.full((1, 3, 4), 0.25))
    with pytest.raises(fastctc.CTCInputError, match=r"log_probs: expected shape \(N, T, C\)"):
        fastctc.forced_align(lp[0], [[1]])
    with pytest.raises(fastctc.CTCInputError, match=r"targets: expected padded targets"):
        fastctc.forced_align(lp, [1])
    with pytest.raises(fastctc.CTCInputError, match="sample 0 has no alignment: input length 3"):
        fastctc.forced_align(lp, [[1, 1, 2]])
    with pytest.raises(fastctc.CTCInputError, match="every path has log-probability -inf"):
        fastctc.forced_align(np.where(np.arange(4) == 1, -np.inf, lp), [[1]])
    with pytest.raises(fastctc.CTCInputError, match="NaN"):
        fastctc.forced_align(np.full((1, 3, 4), np.nan), [[1]])
    with pytest.raises(fastctc.CTCInputError, match="blank"):
        fastctc.forced_align(lp, [[0]])


def test_merge_tokens_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(4)
    for blank in (0, 2):
        tokens = rng.integers(0, 4, size=40)
        scores = rng.random(40)
        spans = fastctc.merge_tokens(tokens, scores, blank=blank)
        expected = token_runs(tokens.tolist(), scores.tolist(), blank)
        got = [(s.token, s.start, s.end, s.score) for s in spans]
        assert [g[:3] for g in got] == [e[:3] for e in expected]
        np.testing.assert_allclose([g[3] for g in got], [e[3] for e in expected], rtol=1e-12)
        assert all(len(s) == s.end - s.start for s in spans)
        assert all(type(s.token) is int and type(s.score) is float for s in spans)
    assert fastctc.merge_tokens([], []) == []


def test_merge_tokens_errors() -> None:
    with pytest.raises(fastctc.CTCInputError, match="tokens: expected one value per frame"):
        fastctc.merge_tokens([[1, 2]], [[0.5, 0.5]])
    with pytest.raises(fastctc.CTCInputError, match="scores: expected one value per frame"):
        fastctc.merge_tokens([1, 2], [[0.5, 0.5]])
    with pytest.raises(fastctc.CTCInputError, match="same number of frames"):
        fastctc.merge_tokens([1, 2], [0.5])
    with pytest.raises(fastctc.CTCTypeError, match="tokens: expected integers"):
        fastctc.merge_tokens([1.5], [0.5])


def test_torchaudio_tutorial_runs_with_fastctc_torch_in_its_place() -> None:
    torch = require_torch()
    import fastctc.torch as F

    rng = np.random.default_rng(9)
    transcript = [[3, 1, 4], [1, 5], [2, 6, 5]]  # words as token ids
    tokenized = [t for word in transcript for t in word]
    emission = torch.from_numpy(log_softmax(rng.normal(size=(1, 30, 7)) * 3)).float()
    targets = torch.tensor([tokenized], dtype=torch.int32)

    aligned_tokens, alignment_scores = F.forced_align(emission, targets, blank=0)
    assert aligned_tokens.dtype == torch.int32 and alignment_scores.dtype == torch.float32
    assert aligned_tokens.shape == alignment_scores.shape == (1, 30)
    token_spans = F.merge_tokens(aligned_tokens[0], alignment_scores[0].exp())

    _, path = viterbi_path(emission[0].double().numpy(), tokenized)
    assert aligned_tokens[0].tolist() == path
    probs = np.exp(emission[0].double().numpy()[np.arange(30), path])
    expected = token_runs(path, probs.tolist())
    assert [(s.token, s.start, s.end) for s in token_spans] == [e[:3] for e in expected]
    np.testing.assert_allclose([s.score for s in token_spans], [e[3] for e in expected], rtol=1e-6)
    assert [s.token for s in token_spans] == tokenized


def test_torch_forced_align_batched_dtypes_and_grad_inputs() -> None:
    torch = require_torch()
    import fastctc.torch as F

    rng = np.random.default_rng(12)
    lp, padded, il, tl, targets = random_batch(rng, 3, 12, 5, 4)
    log_probs = torch.from_numpy(lp).requires_grad_()
    labels, scores = F.forced_align(
        log_probs, torch.from_numpy(padded), torch.from_numpy(il), torch.from_numpy(tl)
    )
    assert labels.dtype == torch.int64 and scores.dtype == torch.float64
    half_labels, half_scores = F.forced_align(log_probs.detach().half(), padded.tolist(), il, tl)
    assert half_labels.dtype == torch.int32 and half_scores.dtype == torch.float16
    for n in range(3):
        _, path = viterbi_path(lp[n, : il[n]], targets[n])
        assert labels[n, : il[n]].tolist() == path
        assert torch.all(labels[n, il[n] :] == 0) and torch.all(scores[n, il[n] :] == 0)


# --------------------------------------------------------------------------------------
# the star token


@pytest.mark.parametrize("seed", range(30))
def test_star_token_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    frames, classes = int(rng.integers(1, 6)), 3
    star = classes  # one past the columns
    lp = log_softmax(rng.normal(size=(frames, classes)) * 2)
    star_score = float(rng.normal() - 1)
    target = [int(v) for v in rng.choice([1, 2, star], size=int(rng.integers(0, 4)))]
    expected_score, path = brute_force_best(lp, target, 0, star_score=star_score)
    if path is None:
        with pytest.raises(fastctc.CTCInputError, match="no alignment"):
            fastctc.forced_align(
                lp[None], [target + [1]], [frames], [len(target)], star_score=star_score
            )
        return
    labels, scores = fastctc.forced_align(
        lp[None], [target + [1]], [frames], [len(target)], star_score=star_score
    )
    assert labels[0].tolist() == path
    expected = [star_score if c == star else lp[t, c] for t, c in enumerate(path)]
    np.testing.assert_allclose(scores[0], expected, rtol=1e-12)
    np.testing.assert_allclose(scores[0].sum(), expected_score, rtol=1e-12)


def test_star_token_in_a_batch_with_logits_matches_reference_viterbi() -> None:
    rng = np.random.default_rng(31)
    logits = rng.normal(size=(30, 3, 6)) * 2  # (T, N, C) logits
    lp = log_softmax(logits)
    targets = [[6, 1, 2, 6, 3, 6], [1, 6, 6], [6]]
    padded = np.array([t + [1] * (6 - len(t)) for t in targets])
    result = fastctc.ctc_align(
        logits, padded, [30, 25, 8], [6, 3, 1], input_kind="logits", star_score=-2.5
    )
    for n, target in enumerate(targets):
        length = [30, 25, 8][n]
        score, path = viterbi_path(lp[:length, n], target, star_score=-2.5)
        assert result.labels[n, :length].tolist() == path
        np.testing.assert_allclose(result.path_scores[n], score, rtol=1e-10)


def test_star_score_errors() -> None:
    lp = np.log(np.full((1, 4, 3), 1 / 3))
    with pytest.raises(fastctc.CTCInputError, match=r"outside \[0, 3\) \(C=3 classes\)"):
        fastctc.forced_align(lp, [[3]])
    with pytest.raises(fastctc.CTCInputError, match=r"outside \[0, 3\] .*star token"):
        fastctc.forced_align(lp, [[4]], star_score=0.0)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(fastctc.CTCInputError, match="star_score: expected a finite"):
            fastctc.forced_align(lp, [[3]], star_score=bad)
    with pytest.raises(fastctc.CTCTypeError, match="star_score: expected a number"):
        fastctc.forced_align(lp, [[3]], star_score="0")


def test_torch_forced_align_with_a_star() -> None:
    torch = require_torch()
    import fastctc.torch as F

    rng = np.random.default_rng(32)
    lp = log_softmax(rng.normal(size=(1, 12, 4)) * 2)
    target = [4, 1, 2, 4]
    labels, scores = F.forced_align(
        torch.from_numpy(lp), torch.tensor([target], dtype=torch.int32), star_score=0.0
    )
    score, path = viterbi_path(lp[0], target, star_score=0.0)
    assert labels[0].tolist() == path and labels.dtype == torch.int32
    np.testing.assert_allclose(float(scores.sum()), score, rtol=1e-12)
