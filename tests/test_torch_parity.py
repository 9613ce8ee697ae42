"""Parity with torch.nn.functional.ctc_loss (CPU) on random batches.

torch is skipped when missing, unless FASTCTC_REQUIRE_TORCH=1 (see conftest.require_torch);
every test here takes the `torch` fixture.
"""

from __future__ import annotations

import fastctc
import numpy as np
import pytest
from ctc_cases import assert_close_or_same_nonfinite, make_case
from reference import log_softmax, logits_grad_from_log_probs_grad

TOL = {
    # dtype: (loss rtol, grad atol)
    np.float64: (1e-10, 1e-10),
    np.float32: (1e-5, 1e-5),
}
# torch's own float32 CPU kernel is less accurate than fastctc's (it keeps log-alpha in
# float32): already at T=30 its gradient is off by ~2e-5. So float32 results are held
# to 1e-5 against torch in float64 on the same values, and only to this against torch
# in float32.
TORCH_FLOAT32_GRAD_ATOL = 1e-4


def torch_ctc(torch, log_probs, targets, input_lengths, target_lengths, **options):
    """torch's loss and its log_probs.grad (gradient of loss.sum())."""
    lp = torch.from_numpy(np.ascontiguousarray(log_probs)).requires_grad_(True)
    loss = torch.nn.functional.ctc_loss(
        lp,
        torch.from_numpy(np.asarray(targets, dtype=np.int64)),
        torch.as_tensor(np.asarray(input_lengths, dtype=np.int64)),
        torch.as_tensor(np.asarray(target_lengths, dtype=np.int64)),
        **options,
    )
    loss.sum().backward()
    return loss.detach().numpy(), lp.grad.numpy()


def draw_case(rng, blank, feasible, normalised=True):
    case = make_case(
        rng,
        30,
        6,
        8,
        10,
        blank=blank,
        feasible=feasible,
        normalised=normalised,
        min_input_length=1,
    )
    return case


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("form", ["padded", "concatenated"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("zero_infinity", [False, True])
@pytest.mark.parametrize("blank", [0, 3, 7])
def test_parity_with_torch(torch, reduction, form, dtype, zero_infinity, blank, rng):
    # Half the batches contain impossible targets (infinite losses, NaN gradients).
    feasible = bool(rng.integers(0, 2))
    case = draw_case(rng, blank, feasible)
    lp = case.log_probs.astype(dtype)
    targets = case.padded(0) if form == "padded" else case.concatenated()
    args = (lp, targets, case.input_lengths, case.target_lengths)
    options = {"blank": blank, "reduction": reduction, "zero_infinity": zero_infinity}

    # torch in float64 on exactly the values fastctc sees
    t_loss, t_grad = torch_ctc(torch, lp.astype(np.float64), *args[1:], **options)
    loss_rtol, grad_atol = TOL[dtype]

    loss = fastctc.ctc_loss(*args, **options)
    assert loss.dtype == dtype
    assert_close_or_same_nonfinite(loss, t_loss, loss_rtol, 0, "ctc_loss")
    loss, grad = fastctc.ctc_loss_and_grad(*args, grad_wrt="logits", **options)
    assert grad.dtype == dtype
    assert_close_or_same_nonfinite(loss, t_loss, loss_rtol, 0, "loss")
    assert_close_or_same_nonfinite(grad, t_grad, 0, grad_atol, "grad_wrt=logits")

    if dtype == np.float32:  # torch in float32, with its own rounding error
        t_loss32, t_grad32 = torch_ctc(torch, *args, **options)
        assert_close_or_same_nonfinite(loss, t_loss32, 1e-5, 0, "loss vs torch float32")
        assert_close_or_same_nonfinite(
            grad, t_grad32, 0, TORCH_FLOAT32_GRAD_ATOL, "grad vs torch float32"
        )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_parity_with_torch_mixed_finite_and_infinite(torch, dtype, rng):
    """A batch built to contain both finite and infinite losses."""
    case = make_case(rng, 6, 4, 5, 6, feasible=True, min_input_length=2)
    case.targets[1] = [2, 2, 2, 2]  # needs 7 frames
    case.target_lengths[1] = 4
    lp = case.log_probs.astype(dtype)
    args = (lp, case.padded(1), case.input_lengths, case.target_lengths)
    for reduction in ("none", "sum", "mean"):
        t_loss, t_grad = torch_ctc(torch, lp.astype(np.float64), *args[1:], reduction=reduction)
        loss, grad = fastctc.ctc_loss_and_grad(*args, reduction=reduction, grad_wrt="logits")
        assert_close_or_same_nonfinite(loss, t_loss, TOL[dtype][0], 0, reduction)
        assert_close_or_same_nonfinite(grad, t_grad, 0, TOL[dtype][1], reduction)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_parity_with_torch_unnormalised(torch, reduction, rng):
    """torch assumes no normalisation either: its gradient is exp(log_probs) - gamma."""
    case = draw_case(rng, 0, True, normalised=False)
    args = (case.log_probs, case.padded(0), case.input_lengths, case.target_lengths)
    t_loss, t_grad = torch_ctc(torch, *args, reduction=reduction)
    loss, grad = fastctc.ctc_loss_and_grad(*args, reduction=reduction, grad_wrt="logits")
    np.testing.assert_allclose(loss, t_loss, rtol=1e-10)
    np.testing.assert_allclose(grad, t_grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_logits_gradient_through_log_softmax_matches_torch(
    torch, reduction, dtype, zero_infinity, rng
):
    """fastctc's default (true) gradient, pushed through log_softmax by torch's autograd,
    equals the logits gradient torch computes for its own ctc_loss."""
    case = make_case(rng, 25, 5, 7, 8, feasible=not zero_infinity, min_input_length=1)
    logits_np = rng.normal(scale=2.0, size=case.log_probs.shape).astype(dtype)
    targets = case.padded(0)
    lengths = (case.input_lengths, case.target_lengths)
    options = {"reduction": reduction, "zero_infinity": zero_infinity}

    logits = torch.from_numpy(logits_np).requires_grad_(True)
    lp = torch.log_softmax(logits, dim=2)
    loss = torch.nn.functional.ctc_loss(
        lp,
        torch.from_numpy(targets),
        torch.from_numpy(lengths[0]),
        torch.from_numpy(lengths[1]),
        **options,
    )
    loss.sum().backward()
    torch_logits_grad = logits.grad.numpy().copy()

    lp_np = lp.detach().numpy()
    f_loss, f_grad = fastctc.ctc_loss_and_grad(lp_np, targets, *lengths, **options)
    assert_close_or_same_nonfinite(f_loss, loss.detach().numpy(), TOL[dtype][0], 0, "loss")
    logits2 = torch.from_numpy(logits_np).requires_grad_(True)
    (chained,) = torch.autograd.grad(
        torch.log_softmax(logits2, dim=2), logits2, grad_outputs=torch.from_numpy(f_grad)
    )
    grad_atol = TOL[dtype][1] if dtype == np.float64 else TORCH_FLOAT32_GRAD_ATOL
    assert_close_or_same_nonfinite(chained.numpy(), torch_logits_grad, 0, grad_atol, "logits")

    if dtype == np.float32:
        # float32 to 1e-5: fastctc's chained gradient against torch run in float64 on the
        # same float32 log_probs (the softmax backward is done in float64 as well).
        lp64 = torch.from_numpy(lp_np.astype(np.float64)).requires_grad_(True)
        torch.nn.functional.ctc_loss(
            lp64,
            torch.from_numpy(targets),
            torch.from_numpy(lengths[0]),
            torch.from_numpy(lengths[1]),
            **options,
        ).sum().backward()
        expected = lp64.grad.numpy()  # exp(lp) - gamma, the logits gradient
        chained64 = logits_grad_from_log_probs_grad(f_grad.astype(np.float64), lp_np)
        assert_close_or_same_nonfinite(chained64, expected, 0, 1e-5, "logits vs float64")


def test_parity_with_torch_unbatched(torch, rng):
    lp = log_softmax(rng.normal(size=(9, 5)))
    target = np.array([1, 3, 3, 2])
    for reduction in ("none", "sum", "mean"):
        # torch's unbatched form wants targets exactly target_length long
        t_loss, t_grad = torch_ctc(torch, lp, target[:3], 8, 3, reduction=reduction)
        loss, grad = fastctc.ctc_loss_and_grad(
            lp, target, 8, 3, reduction=reduction, grad_wrt="logits"
        )
        assert np.asarray(loss).shape == t_loss.shape == ()
        np.testing.assert_allclose(loss, t_loss, rtol=1e-10)
        np.testing.assert_allclose(grad, t_grad, rtol=1e-10, atol=1e-10)


def test_parity_with_torch_long_batch_float64(torch, rng):
    """A longer, uneven batch (the torch CPU kernel is exact enough in float64)."""
    case = make_case(rng, 400, 4, 30, 120, min_input_length=150)
    args = (case.log_probs, case.concatenated(), case.input_lengths, case.target_lengths)
    t_loss, t_grad = torch_ctc(torch, *args, reduction="mean")
    loss, grad = fastctc.ctc_loss_and_grad(*args, reduction="mean", grad_wrt="logits")
    np.testing.assert_allclose(loss, t_loss, rtol=1e-10)
    np.testing.assert_allclose(grad, t_grad, rtol=0, atol=1e-10)
