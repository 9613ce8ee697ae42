"""Logits input (fused log_softmax) and the batch-major layout, against the reference."""

from __future__ import annotations

import fastctc
import numpy as np
import pytest
from ctc_cases import make_case
from reference import ctc_reference, log_softmax


def random_logits(rng, shape, scale=2.0, offset=5.0):
    # Unnormalised on purpose: a per-frame offset that log_softmax removes.
    return rng.normal(scale=scale, size=shape) + offset * rng.normal(size=shape[:-1] + (1,))


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_logits_input_matches_log_softmax_reference(reduction, dtype) -> None:
    rng = np.random.default_rng(3)
    case = make_case(rng, 25, 4, 6, 7, min_input_length=8)
    logits = random_logits(rng, case.log_probs.shape).astype(dtype)
    lp64 = log_softmax(logits.astype(np.float64))
    ref = case.reference(reduction, log_probs=lp64)
    args = (case.padded(), case.input_lengths, case.target_lengths)
    loss, grad = fastctc.ctc_loss_and_grad(logits, *args, reduction=reduction, input_kind="logits")
    tol = 1e-10 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(loss, ref.loss, rtol=tol)
    # The default gradient for logits input is with respect to that input.
    np.testing.assert_allclose(grad, ref.grad_logits, atol=tol)
    _, grad_lp = fastctc.ctc_loss_and_grad(
        logits, *args, reduction=reduction, input_kind="logits", grad_wrt="log_probs"
    )
    np.testing.assert_allclose(grad_lp, ref.grad_log_probs, atol=tol)
    only_loss = fastctc.ctc_loss(logits, *args, reduction=reduction, input_kind="logits")
    np.testing.assert_allclose(only_loss, ref.loss, rtol=tol)


def test_logits_gradient_passes_finite_differences() -> None:
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(6, 2, 4)) * 3
    args = ([[1, 2], [3, 3]], [6, 5], [2, 2])
    _, grad = fastctc.ctc_loss_and_grad(logits, *args, reduction="sum", input_kind="logits")
    eps = 1e-6
    numeric = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[index] += eps
        down[index] -= eps
        plus = fastctc.ctc_loss(up, *args, reduction="sum", input_kind="logits")
        minus = fastctc.ctc_loss(down, *args, reduction="sum", input_kind="logits")
        numeric[index] = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, atol=1e-7)


def test_logits_with_nan_or_all_neg_inf_frame_give_nan() -> None:
    logits = np.zeros((3, 1, 3))
    logits[1, 0, 2] = np.nan
    assert np.isnan(fastctc.ctc_loss(logits, [[1]], [3], [1], input_kind="logits"))
    logits = np.zeros((3, 1, 3))
    logits[1, 0, :] = -np.inf
    assert np.isnan(fastctc.ctc_loss(logits, [[1]], [3], [1], input_kind="logits"))


@pytest.mark.parametrize("grad_wrt", ["log_probs", "logits"])
def test_batch_major_layout_matches_time_major(grad_wrt) -> None:
    rng = np.random.default_rng(4)
    case = make_case(rng, 30, 5, 7, 6, min_input_length=6)
    ntc = np.ascontiguousarray(case.log_probs.transpose(1, 0, 2))
    args = (case.padded(), case.input_lengths, case.target_lengths)
    ref = case.reference("mean")
    loss, grad = fastctc.ctc_loss_and_grad(ntc, *args, layout="NTC", grad_wrt=grad_wrt)
    assert grad.shape == ntc.shape and grad.flags.c_contiguous
    want = ref.grad_log_probs if grad_wrt == "log_probs" else ref.grad_logits
    np.testing.assert_allclose(loss, ref.loss, rtol=1e-10)
    np.testing.assert_allclose(grad, want.transpose(1, 0, 2), atol=1e-10)
    np.testing.assert_allclose(fastctc.ctc_loss(ntc, *args, layout="NTC"), ref.loss, rtol=1e-10)


def test_batch_major_logits_posteriors_and_alignment() -> None:
    rng = np.random.default_rng(9)
    case = make_case(rng, 20, 3, 5, 4, min_input_length=9)
    logits = random_logits(rng, case.log_probs.shape)
    lp = log_softmax(logits)
    ntc_logits = np.ascontiguousarray(logits.transpose(1, 0, 2))
    args = (case.padded(), case.input_lengths, case.target_lengths)
    ref = ctc_reference(lp, case.targets, case.input_lengths, case.target_lengths, reduction="none")
    losses, gamma = fastctc.ctc_posteriors(ntc_logits, *args, input_kind="logits", layout="NTC")
    np.testing.assert_allclose(losses, ref.loss, rtol=1e-10)
    np.testing.assert_allclose(gamma, -ref.grad_log_probs.transpose(1, 0, 2), atol=1e-10)
    fused = fastctc.ctc_align(ntc_logits, *args, input_kind="logits", layout="NTC")
    plain = fastctc.ctc_align(lp, *args)
    np.testing.assert_array_equal(fused.labels, plain.labels)
    np.testing.assert_allclose(fused.scores, plain.scores, atol=1e-12)
    np.testing.assert_allclose(fused.path_scores, plain.path_scores, rtol=1e-12)


def test_unbatched_input_ignores_layout() -> None:
    lp = np.log(np.full((4, 3), 1 / 3))
    loss, grad = fastctc.ctc_loss_and_grad(lp, [1, 2], 4, 2, layout="NTC")
    ref_loss, ref_grad = fastctc.ctc_loss_and_grad(lp, [1, 2], 4, 2)
    assert grad.shape == (4, 3)
    np.testing.assert_array_equal(grad, ref_grad)
    np.testing.assert_array_equal(loss, ref_loss)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"layout": "ntc"}, r"layout.*'ntc'.*'TNC', 'NTC'"),
        ({"input_kind": "probs"}, r"input_kind.*'probs'.*'log_probs', 'logits'"),
    ],
)
def test_unknown_layout_or_input_kind(kwargs, pattern) -> None:
    lp = np.log(np.full((3, 1, 3), 1 / 3))
    with pytest.raises(fastctc.CTCInputError, match=pattern):
        fastctc.ctc_loss_and_grad(lp, [[1]], [3], [1], **kwargs)
    with pytest.raises(ValueError, match=pattern):
        fastctc.ctc_loss(lp, [[1]], [3], [1], **kwargs)


ENTRIES = ["ctc_loss", "ctc_loss_and_grad", "ctc_posteriors", "ctc_align"]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("unbatched", [False, True])
def test_every_entry_refuses_an_unknown_layout(entry, unbatched) -> None:
    """Also where the layout changes nothing (unbatched input, and ctc_align, whose native
    function takes no layout)."""
    lp, args = np.log(np.full((3, 1, 3), 1 / 3)), ([[1]], [3], [1])
    if unbatched:
        lp, args = lp[:, 0], ([1], 3, 1)
    with pytest.raises(fastctc.CTCInputError, match=r"^layout: unknown value 'ntc', expected"):
        getattr(fastctc, entry)(lp, *args, layout="ntc")
    with pytest.raises(fastctc.CTCTypeError, match="^layout: expected a string, got int"):
        getattr(fastctc, entry)(lp, *args, layout=1)


@pytest.mark.parametrize(
    ("entry", "allowed"), [("ctc_posteriors", "'cpu', 'gpu'"), ("ctc_align", "'cpu', 'gpu'$")]
)
def test_every_entry_refuses_an_unknown_device(entry, allowed) -> None:
    lp = np.log(np.full((3, 1, 3), 1 / 3))
    pattern = rf"^device: unknown value 'tpu', expected one of {allowed}"
    with pytest.raises(fastctc.CTCInputError, match=pattern):
        getattr(fastctc, entry)(lp, [[1]], [3], [1], device="tpu")
    with pytest.raises(fastctc.CTCTypeError, match="^device: expected a string"):
        getattr(fastctc, entry)(lp, [[1]], [3], [1], device=None)
