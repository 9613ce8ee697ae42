"""The NumPy reference checked against brute-force enumeration of alignments.

These tests do not import fastctc: they establish that `reference.py` is right, so the
other modules can trust it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from reference import (
    brute_force_sample,
    collapse,
    count_alignments,
    ctc_reference,
    ctc_sample,
    log_softmax,
    logsumexp,
    targets_from_concatenated,
    targets_from_padded,
)


def random_case(rng, max_frames=5, max_classes=3):
    """A random tiny (log_probs, target, blank) with a mix of every interesting feature."""
    num_frames = int(rng.integers(0, max_frames + 1))
    num_classes = int(rng.integers(1, max_classes + 1))
    blank = int(rng.integers(-num_classes, num_classes))
    blank_index = blank % num_classes
    labels = [c for c in range(num_classes) if c != blank_index]
    target_length = int(rng.integers(0, 4)) if labels else 0
    kind = rng.integers(0, 3)
    if kind == 0:  # repeated labels are likely
        target = [labels[0]] * target_length if labels else []
    else:
        target = [int(rng.choice(labels)) for _ in range(target_length)]
    logits = rng.normal(scale=2.0, size=(num_frames, num_classes))
    style = rng.integers(0, 3)
    if style == 0:
        lp = log_softmax(logits)
    elif style == 1:
        lp = logits + rng.normal(scale=3.0)  # unnormalised, possibly positive
    else:
        lp = log_softmax(logits)
        lp[rng.random(lp.shape) < 0.25] = -np.inf
    return lp, target, blank


@pytest.mark.parametrize("seed", range(40))
def test_reference_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    for _ in range(15):
        lp, target, blank = random_case(rng)
        ref = ctc_sample(lp, target, blank)
        bf_loss, bf_gamma = brute_force_sample(lp, target, blank)
        if math.isinf(bf_loss):
            assert ref.loss == math.inf
            assert np.all(np.isnan(ref.gamma))
        else:
            assert ref.loss == pytest.approx(bf_loss, rel=1e-12, abs=1e-12)
            np.testing.assert_allclose(ref.gamma, bf_gamma, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("num_frames", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("target", [[], [1], [1, 1], [1, 2], [2, 1, 2], [1, 1, 1]])
@pytest.mark.parametrize("blank", [0, -3])
def test_reference_all_targets_uniform(num_frames, target, blank):
    """Uniform probabilities: loss = T log C - log(number of alignments)."""
    num_classes = 3  # blank -3 is class 0 too; labels 1 and 2 stay valid
    lp = np.full((num_frames, num_classes), -math.log(num_classes))
    count = count_alignments(num_frames, num_classes, target, blank)
    ref = ctc_sample(lp, target, blank)
    if count == 0:
        assert ref.loss == math.inf
    else:
        assert ref.loss == pytest.approx(
            num_frames * math.log(num_classes) - math.log(count), rel=1e-12
        )


def test_reference_nonzero_blank_brute_force_every_target():
    """blank = 1 of 3: every target over {0, 2} up to length 3, random unnormalised scores."""
    rng = np.random.default_rng(7)
    lp = rng.normal(size=(4, 3))
    for length in range(4):
        for index in range(2**length):
            target = [(0, 2)[(index >> k) & 1] for k in range(length)]
            ref = ctc_sample(lp, target, blank=1)
            bf_loss, bf_gamma = brute_force_sample(lp, target, blank=1)
            if math.isinf(bf_loss):
                assert ref.loss == math.inf
            else:
                assert ref.loss == pytest.approx(bf_loss, rel=1e-12)
                np.testing.assert_allclose(ref.gamma, bf_gamma, rtol=1e-10, atol=1e-12)


def test_reference_forward_backward_consistent_at_every_frame():
    """sum_s alpha[t, s] beta[t, s] is the same likelihood at every frame t."""
    rng = np.random.default_rng(3)
    lp = rng.normal(size=(9, 5))
    target = [1, 3, 3, 2]
    ref = ctc_sample(lp, target, blank=0)
    for t in range(lp.shape[0]):
        per_frame = logsumexp(ref.log_alpha[t] + ref.log_beta[t])
        assert -per_frame == pytest.approx(ref.loss, rel=1e-12)
    # The posterior occupancy is a distribution over classes at every frame.
    np.testing.assert_allclose(ref.gamma.sum(axis=1), 1.0, rtol=1e-12)


def test_reference_gradient_finite_differences():
    """-gamma is the derivative of the loss, also for unnormalised log_probs."""
    rng = np.random.default_rng(11)
    lp = rng.normal(scale=2.0, size=(6, 4)) + 1.5
    target = [2, 2, 3]
    ref = ctc_sample(lp, target, blank=0)
    eps = 1e-6
    numeric = np.zeros_like(lp)
    for t in range(lp.shape[0]):
        for c in range(lp.shape[1]):
            plus, minus = lp.copy(), lp.copy()
            plus[t, c] += eps
            minus[t, c] -= eps
            numeric[t, c] = (ctc_sample(plus, target).loss - ctc_sample(minus, target).loss) / (
                2 * eps
            )
    np.testing.assert_allclose(-ref.gamma, numeric, atol=1e-7)


def test_reference_known_values():
    """Hand-computed small cases."""
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    lp = np.log(p)
    # target [1] over 2 frames: paths (1,1), (0,1), (1,0).
    expected = p[0, 1] * p[1, 1] + p[0, 0] * p[1, 1] + p[0, 1] * p[1, 0]
    assert ctc_sample(lp, [1]).loss == pytest.approx(-math.log(expected), rel=1e-14)
    # target [1, 2] over 2 frames: the single path (1, 2).
    assert ctc_sample(lp, [1, 2]).loss == pytest.approx(-math.log(p[0, 1] * p[1, 2]))
    # target [1, 1] over 2 frames: impossible, needs a blank between the copies.
    assert ctc_sample(lp, [1, 1]).loss == math.inf
    # empty target: all blanks.
    assert ctc_sample(lp, []).loss == pytest.approx(-math.log(p[0, 0] * p[1, 0]))
    # blank = 2, target [0]: paths (0,0), (2,0), (0,2).
    expected = p[0, 0] * p[1, 0] + p[0, 2] * p[1, 0] + p[0, 0] * p[1, 2]
    assert ctc_sample(lp, [0], blank=2).loss == pytest.approx(-math.log(expected))
    assert ctc_sample(lp, [0], blank=-1).loss == pytest.approx(-math.log(expected))
    # no frames
    assert ctc_sample(np.zeros((0, 3)), []).loss == 0.0
    assert ctc_sample(np.zeros((0, 3)), [1]).loss == math.inf


def test_collapse():
    assert collapse([0, 1, 1, 0, 1, 2, 2], blank=0) == [1, 1, 2]
    assert collapse([1, 1, 1], blank=0) == [1]
    assert collapse([0, 0], blank=0) == []
    assert collapse([2, 0, 2, 1], blank=2) == [0, 1]


def test_batch_reference_reductions_and_zero_infinity():
    rng = np.random.default_rng(5)
    num_frames, batch, num_classes = 4, 3, 3
    lp = log_softmax(rng.normal(size=(num_frames, batch, num_classes)))
    padded = np.array([[1, 2, -1], [1, 1, 1], [2, 9, 9]])
    target_lengths = [2, 3, 0]
    input_lengths = [4, 4, 2]  # sample 1 needs 5 frames: impossible
    targets = targets_from_padded(padded, target_lengths)
    assert targets == [[1, 2], [1, 1, 1], []]
    assert targets_from_concatenated([1, 2, 1, 1, 1], target_lengths) == targets

    per_sample = [
        brute_force_sample(lp[: input_lengths[n], n], targets[n])[0] for n in range(batch)
    ]
    assert per_sample[1] == math.inf

    none = ctc_reference(lp, targets, input_lengths, target_lengths, reduction="none")
    np.testing.assert_allclose(none.loss, per_sample, rtol=1e-12)
    assert np.all(np.isnan(none.grad_log_probs[:, 1]))
    assert np.all(none.grad_log_probs[2:, 2] == 0.0)

    zi = ctc_reference(
        lp, targets, input_lengths, target_lengths, reduction="mean", zero_infinity=True
    )
    expected_mean = (per_sample[0] / 2 + 0.0 + per_sample[2] / 1) / batch
    assert float(zi.loss) == pytest.approx(expected_mean, rel=1e-12)
    assert np.all(zi.grad_log_probs[:, 1] == 0.0)
    _, gamma0 = brute_force_sample(lp[:, 0], targets[0])
    np.testing.assert_allclose(zi.grad_log_probs[:, 0], -gamma0 / (batch * 2), rtol=1e-10)
    np.testing.assert_allclose(
        zi.grad_logits[:, 0], (np.exp(lp[:, 0]) - gamma0) / (batch * 2), rtol=1e-10
    )

    total = ctc_reference(
        lp, targets, input_lengths, target_lengths, reduction="sum", zero_infinity=True
    )
    assert float(total.loss) == pytest.approx(per_sample[0] + per_sample[2], rel=1e-12)
