"""Classic cases with known values, edge cases and the output contract of fastctc.

Expected values are computed by hand, by closed forms, or by brute-force enumeration
in the test; never taken from fastctc itself.
"""

from __future__ import annotations

import math

import fastctc
import numpy as np
import pytest
from ctc_cases import assert_close_or_same_nonfinite, make_case, with_layout
from reference import brute_force_sample, count_alignments, ctc_sample, log_softmax

REDUCTIONS = ["none", "sum", "mean"]
DTYPES = [np.float32, np.float64]


def loss_and_grad(lp, targets, il, tl, **kwargs):
    loss, grad = fastctc.ctc_loss_and_grad(lp, targets, il, tl, **kwargs)
    return np.asarray(loss), np.asarray(grad)


# --------------------------------------------------------------------------------------
# known values


@pytest.mark.parametrize("num_frames", [1, 2, 4, 7])
def test_uniform_single_label_closed_form(num_frames):
    """Uniform probabilities, target of one label: T(T+1)/2 alignments of prob C**-T."""
    num_classes = 3
    lp = np.full((num_frames, 1, num_classes), -math.log(num_classes))
    loss = fastctc.ctc_loss(lp, np.array([[2]]), [num_frames], [1], reduction="sum")
    count = num_frames * (num_frames + 1) // 2
    expected = num_frames * math.log(num_classes) - math.log(count)
    assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_uniform_many_targets_count_alignments():
    """Uniform probabilities: loss = T log C - log(#alignments), #alignments by brute force."""
    num_frames, num_classes = 5, 3
    targets = [[1], [1, 2], [1, 1], [2, 1, 2], [1, 1, 1], [], [2, 2, 2]]
    batch = len(targets)
    lp = np.full((num_frames, batch, num_classes), -math.log(num_classes))
    padded = np.zeros((batch, 3), dtype=np.int64)
    for n, target in enumerate(targets):
        padded[n, : len(target)] = target
    losses = fastctc.ctc_loss(
        lp, padded, [num_frames] * batch, [len(t) for t in targets], reduction="none"
    )
    for n, target in enumerate(targets):
        count = count_alignments(num_frames, num_classes, target)
        expected = num_frames * math.log(num_classes) - math.log(count) if count else math.inf
        assert losses[n] == pytest.approx(expected, rel=1e-12), target


P = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_known_small_values_and_gradients(dtype):
    """Two frames, three classes, hand-enumerated alignments."""
    lp = np.log(P)[:, None, :].repeat(4, axis=1).astype(dtype)
    targets = np.array([[1, 0], [1, 2], [1, 1], [0, 0]])  # padding is 0
    target_lengths = [1, 2, 2, 0]
    loss, grad = loss_and_grad(lp, targets, [2, 2, 2, 2], target_lengths, reduction="none")
    p = P
    z1 = p[0, 1] * p[1, 1] + p[0, 0] * p[1, 1] + p[0, 1] * p[1, 0]  # (1,1) (0,1) (1,0)
    expected = [-math.log(z1), -math.log(p[0, 1] * p[1, 2]), math.inf, -math.log(p[0, 0] * p[1, 0])]
    tol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(loss, expected, rtol=tol)

    gamma = np.zeros((2, 4, 3))
    gamma[0, 0, 1] = (p[0, 1] * p[1, 1] + p[0, 1] * p[1, 0]) / z1
    gamma[0, 0, 0] = p[0, 0] * p[1, 1] / z1
    gamma[1, 0, 1] = (p[0, 1] * p[1, 1] + p[0, 0] * p[1, 1]) / z1
    gamma[1, 0, 0] = p[0, 1] * p[1, 0] / z1
    gamma[0, 1, 1] = gamma[1, 1, 2] = 1.0  # a single alignment
    gamma[:, 2, :] = np.nan  # impossible target
    gamma[0, 3, 0] = gamma[1, 3, 0] = 1.0  # all blanks
    np.testing.assert_allclose(grad, -gamma, rtol=tol, atol=tol)

    _, grad_logits = loss_and_grad(
        lp, targets, [2, 2, 2, 2], target_lengths, reduction="none", grad_wrt="logits"
    )
    expected_logits = np.exp(lp.astype(np.float64)) - gamma
    np.testing.assert_allclose(grad_logits, expected_logits, rtol=tol, atol=tol)


@pytest.mark.parametrize("blank", [2, -1])
def test_nonzero_blank_known_value(blank):
    """blank = 2 (also spelled -1), target [0]: alignments (0,0), (2,0), (0,2)."""
    lp = np.log(P)[:, None, :]
    expected = P[0, 0] * P[1, 0] + P[0, 2] * P[1, 0] + P[0, 0] * P[1, 2]
    loss = fastctc.ctc_loss(lp, np.array([[0]]), [2], [1], blank=blank, reduction="sum")
    assert float(loss) == pytest.approx(-math.log(expected), rel=1e-12)


@pytest.mark.parametrize("blank", [0, 1, 3, -1, -2, -4])
def test_nonzero_blank_brute_force(blank, rng):
    num_frames, num_classes = 5, 4
    blank_index = blank % num_classes
    labels = [c for c in range(num_classes) if c != blank_index]
    targets = [[labels[0], labels[1]], [labels[2]], [labels[1], labels[1]], []]
    batch = len(targets)
    lp = rng.normal(size=(num_frames, batch, num_classes))  # unnormalised
    padded = np.full((batch, 2), labels[0])
    for n, target in enumerate(targets):
        padded[n, : len(target)] = target
    loss, grad = loss_and_grad(
        lp, padded, [5, 4, 3, 5], [len(t) for t in targets], blank=blank, reduction="none"
    )
    for n, target in enumerate(targets):
        length = [5, 4, 3, 5][n]
        bf_loss, bf_gamma = brute_force_sample(lp[:length, n], target, blank)
        assert loss[n] == pytest.approx(bf_loss, rel=1e-12)
        np.testing.assert_allclose(grad[:length, n], -bf_gamma, rtol=1e-10, atol=1e-12)
        assert np.all(grad[length:, n] == 0)


def test_blank_minus_c_is_class_zero(rng):
    case = make_case(rng, 6, 3, 4, 3, blank=0)
    args = (case.log_probs, case.padded(), case.input_lengths, case.target_lengths)
    a = loss_and_grad(*args, blank=0, reduction="none")
    b = loss_and_grad(*args, blank=-4, reduction="none")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# --------------------------------------------------------------------------------------
# edge cases


@pytest.mark.parametrize("dtype", DTYPES)
def test_impossible_targets_are_infinite(dtype):
    lp = log_softmax(np.random.default_rng(0).normal(size=(3, 4, 4))).astype(dtype)
    targets = np.array(
        [
            [1, 2, 3, 1],  # 4 labels in 3 frames
            [1, 1, 1, 0],  # needs 5 frames
            [2, 2, 0, 0],  # needs 3 frames, has 2
            [3, 0, 0, 0],  # class 3 has probability 0 on every frame (below)
        ]
    )
    lp[:, 3, 3] = -np.inf
    input_lengths = [3, 3, 2, 3]
    target_lengths = [4, 3, 2, 1]
    loss, grad = loss_and_grad(lp, targets, input_lengths, target_lengths, reduction="none")
    assert loss.dtype == dtype
    assert np.all(np.isposinf(loss))
    for n, length in enumerate(input_lengths):
        assert np.all(np.isnan(grad[:length, n])), n
        assert np.all(grad[length:, n] == 0), n
    for reduction in ("sum", "mean"):
        assert np.isposinf(
            fastctc.ctc_loss(lp, targets, input_lengths, target_lengths, reduction=reduction)
        )


@pytest.mark.parametrize("blank", [0, 2])
def test_empty_target_is_sum_of_blank_log_probs(blank, rng):
    """Target length 0: the single all-blank path, also for unnormalised log_probs."""
    lp = rng.normal(scale=3.0, size=(6, 3, 4)) + 1.0
    input_lengths = np.array([6, 3, 1])
    junk = np.array([[3, 1], [1, 1], [7, -5]])  # never read: all target lengths are 0
    loss, grad = loss_and_grad(lp, junk, input_lengths, [0, 0, 0], blank=blank, reduction="none")
    expected = [-lp[:length, n, blank].sum() for n, length in enumerate(input_lengths)]
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    expected_grad = np.zeros_like(lp)
    for n, length in enumerate(input_lengths):
        expected_grad[:length, n, blank] = -1.0
    np.testing.assert_array_equal(grad, expected_grad)
    _, grad_logits = loss_and_grad(
        lp, junk, input_lengths, [0, 0, 0], blank=blank, reduction="none", grad_wrt="logits"
    )
    expected_logits = np.exp(lp) + expected_grad
    for n, length in enumerate(input_lengths):
        expected_logits[length:, n] = 0.0
    np.testing.assert_allclose(grad_logits, expected_logits, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_input_length(dtype):
    lp = log_softmax(np.random.default_rng(1).normal(size=(4, 3, 3))).astype(dtype)
    targets = np.array([[1, 2], [1, 2], [2, 2]])
    loss, grad = loss_and_grad(lp, targets, [0, 0, 4], [0, 2, 1], reduction="none")
    assert loss[0] == 0.0  # empty input, empty target: the empty alignment
    assert np.isposinf(loss[1])  # empty input, non-empty target: impossible
    assert np.isfinite(loss[2])
    assert np.all(grad[:, 0] == 0) and np.all(grad[:, 1] == 0)  # no valid frames
    assert np.all(np.isfinite(grad[:, 2]))

    loss, grad = loss_and_grad(
        lp, targets, [0, 0, 4], [0, 2, 1], reduction="none", zero_infinity=True
    )
    assert loss[0] == 0.0 and loss[1] == 0.0
    assert np.all(grad[:, :2] == 0)


@pytest.mark.parametrize("num_frames", [2, 3, 4, 5])
def test_repeated_labels_need_a_blank_between(num_frames, rng):
    lp = log_softmax(rng.normal(size=(num_frames, 1, 3)))
    loss = float(fastctc.ctc_loss(lp, np.array([[1, 1]]), [num_frames], [2], reduction="sum"))
    if num_frames == 2:
        assert loss == math.inf
    elif num_frames == 3:  # exactly one alignment: 1, blank, 1
        assert loss == pytest.approx(-(lp[0, 0, 1] + lp[1, 0, 0] + lp[2, 0, 1]), rel=1e-12)
    else:
        assert loss == pytest.approx(brute_force_sample(lp[:, 0], [1, 1])[0], rel=1e-12)
    # A different second label needs no blank: 2 frames suffice.
    loss = float(fastctc.ctc_loss(lp, np.array([[1, 2]]), [num_frames], [2], reduction="sum"))
    assert loss == pytest.approx(brute_force_sample(lp[:, 0], [1, 2])[0], rel=1e-12)


def test_reductions(rng):
    case = make_case(rng, 8, 5, 5, 4, feasible=True)
    case.target_lengths[0] = 0
    case.targets[0] = []
    args = (case.log_probs, case.padded(), case.input_lengths, case.target_lengths)
    per_sample = case.reference("none").loss
    none = fastctc.ctc_loss(*args, reduction="none")
    np.testing.assert_allclose(none, per_sample, rtol=1e-12)
    total = fastctc.ctc_loss(*args, reduction="sum")
    np.testing.assert_allclose(total, per_sample.sum(), rtol=1e-12)
    mean = fastctc.ctc_loss(*args, reduction="mean")
    expected_mean = np.mean(per_sample / np.maximum(case.target_lengths, 1))
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
    default = fastctc.ctc_loss(*args)
    np.testing.assert_array_equal(default, mean)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_infinity(reduction, dtype, rng):
    lp = log_softmax(rng.normal(size=(4, 3, 3))).astype(dtype)
    targets = np.array([[1, 2], [1, 1], [2, 1]])
    input_lengths, target_lengths = [4, 2, 3], [2, 2, 1]  # sample 1 is impossible
    loss, grad = loss_and_grad(
        lp, targets, input_lengths, target_lengths, reduction=reduction, zero_infinity=True
    )
    l0 = brute_force_sample(lp[:4, 0].astype(np.float64), [1, 2])[0]
    l2 = brute_force_sample(lp[:3, 2].astype(np.float64), [2])[0]
    tol = 1e-12 if dtype == np.float64 else 1e-5
    if reduction == "none":
        np.testing.assert_allclose(loss, [l0, 0.0, l2], rtol=tol)
    elif reduction == "sum":
        np.testing.assert_allclose(loss, l0 + l2, rtol=tol)
    else:  # the mean still divides by N = 3
        np.testing.assert_allclose(loss, (l0 / 2 + 0.0 + l2 / 1) / 3, rtol=tol)
    assert np.all(grad[:, 1] == 0)
    assert np.all(np.isfinite(grad))

    loss, grad = loss_and_grad(
        lp, targets, input_lengths, target_lengths, reduction=reduction, zero_infinity=False
    )
    if reduction == "none":
        assert np.isposinf(loss[1]) and np.isfinite(loss[0]) and np.isfinite(loss[2])
    else:
        assert np.isposinf(loss)
    assert np.all(np.isnan(grad[:2, 1])) and np.all(grad[2:, 1] == 0)
    assert np.all(np.isfinite(grad[:, 0])) and np.all(np.isfinite(grad[:, 2]))


def test_zero_infinity_keeps_nan(rng):
    """zero_infinity turns +inf into 0, but a NaN loss stays NaN."""
    lp = log_softmax(rng.normal(size=(4, 2, 3)))
    lp[1, 0, :] = np.nan
    for zero_infinity in (False, True):
        loss = fastctc.ctc_loss(
            lp, np.array([[1], [2]]), [4, 4], [1, 1], reduction="none", zero_infinity=zero_infinity
        )
        assert np.isnan(loss[0])
        assert np.isfinite(loss[1])


def nan_after_dead_end_case(rng):
    """Sample 0 has a NaN after a frame no path survives, sample 1 a NaN before it (float32,
    which every GPU adapter supports)."""
    lp = log_softmax(rng.normal(size=(4, 2, 3))).astype(np.float32)
    lp[1, :, :] = -np.inf  # frame 1: no path survives it
    lp[3, 0, :] = np.nan  # sample 0: NaN after the dead end
    lp[0, 1, :] = np.nan  # sample 1: NaN before it
    return lp, np.array([[1], [2]]), [4, 4], [1, 1]


def test_nan_after_every_path_died_gives_inf(rng, device="cpu"):
    """A NaN read before any dead end makes the loss NaN; once no path reaches a frame, later
    frames are not read and the loss is +inf (tests/test_gpu.py runs this on the GPU)."""
    lp, targets, input_lengths, target_lengths = nan_after_dead_end_case(rng)
    args = (lp, targets, input_lengths, target_lengths)
    loss = fastctc.ctc_loss(*args, reduction="none", device=device)
    assert np.isposinf(loss[0]) and np.isnan(loss[1])
    _, grad = fastctc.ctc_loss_and_grad(*args, reduction="none", zero_infinity=True, device=device)
    assert np.all(grad[:, 0] == 0) and np.all(np.isnan(grad[:, 1]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", ["never", "always"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_rule_covers_every_read_class_and_frame(bad, groups, dtype, rng, monkeypatch):
    """The documented rule: a NaN or +inf at a frame within the input length, of the blank or
    of a target label, makes the loss NaN, even where no path of the lattice passes (the
    last label at frame 0, the first label at the last frame); elsewhere (another class, a
    frame past the input length) it is never read. Both kernels: samples one by one, and
    side by side in a group."""
    monkeypatch.setenv("FASTCTC_GROUPS", groups)
    T, C, S, batch = 12, 7, 4, 16
    places = ["last_label_first_frame", "first_label_last_frame", "blank", "other", "past"]
    lp = log_softmax(rng.normal(size=(T, batch, C))).astype(dtype)
    targets = np.zeros((batch, S), dtype=np.int64)
    input_lengths = np.full(batch, T - 2)
    expect_nan = []
    for n in range(batch):
        targets[n] = rng.permutation(np.arange(2, C))[:S]  # never class 1 nor the blank 0
        place = places[n % len(places)]
        t, c = {
            "last_label_first_frame": (0, targets[n, -1]),
            "first_label_last_frame": (T - 3, targets[n, 0]),
            "blank": (int(rng.integers(T - 2)), 0),
            "other": (int(rng.integers(T - 2)), 1),
            "past": (T - 1, targets[n, 0]),
        }[place]
        lp[t, n, c] = bad
        expect_nan.append(place not in ("other", "past"))
    losses = fastctc.ctc_loss(lp, targets, input_lengths, np.full(batch, S), reduction="none")
    for n in range(batch):
        if expect_nan[n]:
            assert np.isnan(losses[n]), n
        else:
            clean = lp[: T - 2, n].copy()
            clean[~np.isfinite(clean)] = 0.0  # the unread entry
            expected = ctc_sample(clean.astype(np.float64), targets[n]).loss
            tol = 1e-10 if dtype == np.float64 else 1e-5
            assert float(losses[n]) == pytest.approx(expected, rel=tol), n


def test_neg_inf_log_probs_get_zero_gradient(rng):
    case = make_case(rng, 7, 3, 5, 3, normalised=False)
    lp = case.log_probs.copy()
    for n, target in enumerate(case.targets):
        banned = [c for c in range(1, 5) if c not in target]
        for c in banned:
            lp[:, n, c] = -np.inf
    args = (lp, case.padded(), case.input_lengths, case.target_lengths)
    for grad_wrt in ("log_probs", "logits"):
        loss, grad = loss_and_grad(*args, reduction="sum", grad_wrt=grad_wrt)
        assert np.isfinite(loss)
        assert np.all(grad[np.isneginf(lp)] == 0)
        assert np.all(np.isfinite(grad))
    ref = case.reference("sum", log_probs=lp)
    assert float(loss) == pytest.approx(float(ref.loss), rel=1e-12)


# --------------------------------------------------------------------------------------
# what is never read


def test_padding_is_never_read(rng):
    case = make_case(rng, 8, 4, 5, 5)
    args = (case.log_probs, case.input_lengths, case.target_lengths)
    clean = loss_and_grad(args[0], case.padded(0), *args[1:], reduction="none")
    for pad in (-1, 5, 10**9, -(10**12), case.blank):
        junk = case.padded(pad)
        got = loss_and_grad(args[0], junk, *args[1:], reduction="none")
        np.testing.assert_array_equal(got[0], clean[0])
        np.testing.assert_array_equal(got[1], clean[1])
    wide = np.full((4, 40), -7, dtype=np.int64)  # S much larger than any target
    wide[:, :5] = case.padded(-7)
    got = loss_and_grad(args[0], wide, *args[1:], reduction="none")
    np.testing.assert_array_equal(got[0], clean[0])


@pytest.mark.parametrize("grad_wrt", ["log_probs", "logits"])
def test_frames_past_input_length_are_never_read(grad_wrt, rng):
    case = make_case(rng, 9, 4, 5, 3)
    case.input_lengths[:] = [9, 4, 1, 0]
    case.targets[2:] = [[], []]
    case.target_lengths[2:] = 0
    case.targets[1] = case.targets[1][:2]
    case.target_lengths[1] = len(case.targets[1])
    poisoned = case.log_probs.copy()
    for n, length in enumerate(case.input_lengths):
        poisoned[length:, n, :] = np.nan
    clean = loss_and_grad(
        case.log_probs,
        case.padded(),
        case.input_lengths,
        case.target_lengths,
        reduction="none",
        grad_wrt=grad_wrt,
    )
    got = loss_and_grad(
        poisoned,
        case.padded(),
        case.input_lengths,
        case.target_lengths,
        reduction="none",
        grad_wrt=grad_wrt,
    )
    np.testing.assert_array_equal(got[0], clean[0])
    np.testing.assert_array_equal(got[1], clean[1])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("grad_wrt", ["log_probs", "logits"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_is_exactly_zero_past_input_length(reduction, grad_wrt, dtype, rng):
    case = make_case(rng, 12, 6, 5, 4, feasible=False)
    lp = case.log_probs.astype(dtype)
    _, grad = loss_and_grad(
        lp,
        case.padded(),
        case.input_lengths,
        case.target_lengths,
        reduction=reduction,
        grad_wrt=grad_wrt,
    )
    for n, length in enumerate(case.input_lengths):
        assert np.all(grad[length:, n] == 0), (n, length)


# --------------------------------------------------------------------------------------
# the output contract


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["C", "F", "reversed", "strided"])
def test_output_dtypes_and_shapes(reduction, dtype, layout, rng):
    case = make_case(rng, 6, 3, 4, 3)
    lp = with_layout(case.log_probs.astype(dtype), layout)
    args = (lp, case.padded(), case.input_lengths, case.target_lengths)
    loss = fastctc.ctc_loss(*args, reduction=reduction)
    assert isinstance(loss, np.ndarray)
    assert loss.dtype == dtype
    assert loss.shape == ((3,) if reduction == "none" else ())
    for grad_wrt in ("log_probs", "logits"):
        loss2, grad = fastctc.ctc_loss_and_grad(*args, reduction=reduction, grad_wrt=grad_wrt)
        assert isinstance(loss2, np.ndarray) and isinstance(grad, np.ndarray)
        assert loss2.dtype == dtype and loss2.shape == loss.shape
        assert grad.dtype == dtype
        assert grad.shape == (6, 3, 4)
        assert grad.flags.c_contiguous


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_only_matches_loss_and_grad(dtype, reduction, rng):
    case = make_case(rng, 10, 4, 6, 4, feasible=False)
    lp = case.log_probs.astype(dtype)
    args = (lp, case.padded(), case.input_lengths, case.target_lengths)
    a = fastctc.ctc_loss(*args, reduction=reduction)
    b, _ = fastctc.ctc_loss_and_grad(*args, reduction=reduction)
    assert_close_or_same_nonfinite(a, b, rtol=1e-12 if dtype == np.float64 else 1e-6, atol=0)


def test_explicit_cpu_device(rng):
    case = make_case(rng, 6, 2, 4, 3)
    args = (case.log_probs, case.padded(), case.input_lengths, case.target_lengths)
    a = fastctc.ctc_loss_and_grad(*args)
    b = fastctc.ctc_loss_and_grad(*args, device="cpu")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(fastctc.ctc_loss(*args, device="cpu"), a[0])


def test_inputs_are_not_modified(rng):
    case = make_case(rng, 6, 3, 4, 3, feasible=False)
    lp = case.log_probs.copy()
    targets = case.padded(-1)
    il, tl = case.input_lengths.copy(), case.target_lengths.copy()
    fastctc.ctc_loss_and_grad(lp, targets, il, tl, reduction="sum")
    fastctc.ctc_loss(lp, targets, il, tl, reduction="sum")
    np.testing.assert_array_equal(lp, case.log_probs)
    np.testing.assert_array_equal(targets, case.padded(-1))
    np.testing.assert_array_equal(il, case.input_lengths)
    np.testing.assert_array_equal(tl, case.target_lengths)


def test_read_only_and_zero_stride_inputs(rng):
    """Any strides, including a broadcast (stride 0) batch axis of a read-only view."""
    frames = log_softmax(rng.normal(size=(5, 1, 4)))
    lp = np.broadcast_to(frames, (5, 3, 4))
    assert lp.strides[1] == 0 and not lp.flags.writeable
    targets = np.array([[1, 2], [3, 3], [2, 0]])
    targets.flags.writeable = False
    loss, grad = loss_and_grad(lp, targets, [5, 5, 3], [2, 2, 1], reduction="none")
    expected = [
        brute_force_sample(frames[:5, 0], [1, 2])[0],
        brute_force_sample(frames[:5, 0], [3, 3])[0],
        brute_force_sample(frames[:3, 0], [2])[0],
    ]
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    assert grad.shape == (5, 3, 4) and grad.flags.c_contiguous


# --------------------------------------------------------------------------------------
# unbatched


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length_kind", ["int", "numpy_int", "0d_array"])
def test_unbatched_matches_batch_of_one(reduction, dtype, length_kind, rng):
    lp2 = log_softmax(rng.normal(size=(7, 5))).astype(dtype)
    target = np.array([3, 1, 1, 4])
    il, tl = 6, 3  # last target entry is padding

    def wrap(v):
        return {"int": int, "numpy_int": np.int32, "0d_array": np.array}[length_kind](v)

    loss, grad = fastctc.ctc_loss_and_grad(lp2, target, wrap(il), wrap(tl), reduction=reduction)
    loss, grad = np.asarray(loss), np.asarray(grad)
    assert loss.shape == () and loss.dtype == dtype
    assert grad.shape == (7, 5) and grad.dtype == dtype and grad.flags.c_contiguous
    batched_loss, batched_grad = fastctc.ctc_loss_and_grad(
        lp2[:, None, :], target[None, :], [il], [tl], reduction=reduction
    )
    np.testing.assert_array_equal(loss, np.asarray(batched_loss).reshape(()))
    np.testing.assert_array_equal(grad, np.asarray(batched_grad)[:, 0, :])
    only_loss = fastctc.ctc_loss(lp2, target, wrap(il), wrap(tl), reduction=reduction)
    assert np.asarray(only_loss).shape == ()

    single = ctc_sample(lp2[:il].astype(np.float64), [3, 1, 1]).loss
    expected = single / 3 if reduction == "mean" else single
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert float(loss) == pytest.approx(expected, rel=tol)
    assert np.all(grad[il:] == 0)


def test_unbatched_empty_target():
    lp = np.log(np.full((3, 2), 0.5))
    loss = fastctc.ctc_loss(lp, np.array([], dtype=np.int64), 3, 0, reduction="none")
    assert float(loss) == pytest.approx(3 * math.log(2), rel=1e-12)
    loss = fastctc.ctc_loss(lp, [], 3, 0, reduction="none")  # an empty list is no float array
    assert float(loss) == pytest.approx(3 * math.log(2), rel=1e-12)


def test_non_native_byte_order(rng):
    case = make_case(rng, 7, 3, 5, 3)
    args = (case.input_lengths, case.target_lengths)
    expected = loss_and_grad(case.log_probs, case.padded(0), *args, reduction="none")
    swapped_lp = case.log_probs.astype(case.log_probs.dtype.newbyteorder(">"))
    swapped_targets = case.padded(0).astype(np.dtype(np.int32).newbyteorder(">"))
    got = loss_and_grad(swapped_lp, swapped_targets, *args, reduction="none")
    assert got[0].dtype == np.float64 and got[1].dtype == np.float64
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


class _TaggedArray(np.ndarray):
    """An ndarray subclass, which argument handling takes the general (converting) path for."""


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "form", ["canonical", "subclass", "numpy_blank", "strided", "readonly", "int32_lengths"]
)
def test_argument_forms_match_reference(form, dtype, rng):
    # Already-canonical arguments (native float (T, N, C), int64 targets and lengths, an int
    # blank) skip the conversions; every other form converts first. Both give the reference.
    case = make_case(rng, 9, 4, 6, 4, blank=2)
    lp = case.log_probs.astype(dtype)
    targets, il, tl = case.padded(0), case.input_lengths, case.target_lengths
    blank = 2
    if form == "subclass":
        lp, targets, il, tl = (a.view(_TaggedArray) for a in (lp, targets, il, tl))
    elif form == "numpy_blank":
        blank = np.int64(-4)
    elif form == "strided":
        lp = np.swapaxes(np.ascontiguousarray(np.swapaxes(lp, 0, 2)), 0, 2)
    elif form == "readonly":
        for a in (lp, targets, il, tl):
            a.flags.writeable = False
    elif form == "int32_lengths":
        il, tl = il.astype(np.int32), tl.astype(np.int32)
    loss, grad = fastctc.ctc_loss_and_grad(lp, targets, il, tl, blank, reduction="sum")
    expected = case.reference(reduction="sum")
    tol = 1e-10 if dtype == np.float64 else 1e-4
    assert float(loss) == pytest.approx(float(expected.loss), rel=tol)
    np.testing.assert_allclose(grad, expected.grad_log_probs, atol=tol)


def test_targets_as_nested_lists(rng):
    case = make_case(rng, 6, 2, 4, 3)
    args = (case.log_probs,)
    lengths = (case.input_lengths.tolist(), case.target_lengths.tolist())
    expected = fastctc.ctc_loss(*args, case.padded(1), *lengths, reduction="none")
    got = fastctc.ctc_loss(*args, case.padded(1).tolist(), *lengths, reduction="none")
    np.testing.assert_array_equal(got, expected)
