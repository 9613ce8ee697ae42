"""Finite-difference checks of fastctc's gradients (float64, central differences)."""

from __future__ import annotations

import fastctc
import numpy as np
import pytest
from ctc_cases import frames_needed, make_case
from reference import log_softmax, logits_grad_from_log_probs_grad

EPS = 1e-6


def numeric_gradient(func, x, eps=EPS, skip=None):
    """Central differences of the scalar ``func`` at ``x``; entries in ``skip`` stay NaN."""
    grad = np.full(x.shape, np.nan)
    for index in np.ndindex(x.shape):
        if skip is not None and skip[index]:
            continue
        plus, minus = x.copy(), x.copy()
        plus[index] += eps
        minus[index] -= eps
        grad[index] = (func(plus) - func(minus)) / (2 * eps)
    return grad


def total_loss(case, targets, **options):
    def func(lp):
        return float(
            np.sum(
                fastctc.ctc_loss(lp, targets, case.input_lengths, case.target_lengths, **options)
            )
        )

    return func


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("blank", [0, 2, -1])
@pytest.mark.parametrize("values", ["normalised", "unnormalised"])
def test_default_gradient_matches_finite_differences(reduction, blank, values, rng):
    case = make_case(
        rng,
        6,
        3,
        4,
        3,
        blank=blank,
        normalised=values == "normalised",
        repeat_probability=0.5,
        min_input_length=1,
    )
    if values == "unnormalised":
        case.log_probs += 2.0  # far from normalised: probabilities well above 1
    targets = case.padded(-1)
    options = {"blank": blank, "reduction": reduction}
    loss, grad = fastctc.ctc_loss_and_grad(
        case.log_probs, targets, case.input_lengths, case.target_lengths, **options
    )
    assert np.all(np.isfinite(loss))
    numeric = numeric_gradient(total_loss(case, targets, **options), case.log_probs)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_default_gradient_with_neg_inf_entries(reduction, rng):
    """-inf entries are excluded from the differences; their gradient is 0 (its limit)."""
    case = make_case(rng, 7, 3, 5, 3, normalised=False, min_input_length=2)
    lp = case.log_probs
    for n, target in enumerate(case.targets):
        unused = [c for c in range(1, 5) if c not in target]
        for c in unused[:2]:
            lp[: case.input_lengths[n] : 2, n, c] = -np.inf
        if target and frames_needed(target) < case.input_lengths[n]:
            lp[0, n, target[0]] = -np.inf  # a used label, blocked on one frame only
    targets = case.padded(0)
    options = {"reduction": reduction}
    loss, grad = fastctc.ctc_loss_and_grad(
        lp, targets, case.input_lengths, case.target_lengths, **options
    )
    assert np.isfinite(loss)
    neg_inf = np.isneginf(lp)
    assert np.all(grad[neg_inf] == 0)
    numeric = numeric_gradient(total_loss(case, targets, **options), lp, skip=neg_inf)
    np.testing.assert_allclose(grad[~neg_inf], numeric[~neg_inf], rtol=1e-5, atol=1e-7)


def test_default_gradient_zero_infinity(rng):
    """An impossible sample contributes a constant 0 under zero_infinity: gradient 0."""
    case = make_case(rng, 5, 3, 4, 4, min_input_length=3)
    case.targets[1] = [1, 1, 1]  # needs 5 frames
    case.target_lengths[1] = 3
    case.input_lengths[1] = 4
    targets = case.padded(0)
    options = {"reduction": "mean", "zero_infinity": True}
    _, grad = fastctc.ctc_loss_and_grad(
        case.log_probs, targets, case.input_lengths, case.target_lengths, **options
    )
    assert np.all(grad[:, 1] == 0)
    numeric = numeric_gradient(total_loss(case, targets, **options), case.log_probs)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_logits_gradient_through_log_softmax(reduction, rng):
    """With log_probs = log_softmax(logits) both conventions give the logits gradient.

    grad_wrt="logits" is that gradient directly; the default gradient gives it after the
    log_softmax chain rule. Both must match central differences with respect to logits.
    """
    case = make_case(rng, 6, 3, 4, 3, repeat_probability=0.5, min_input_length=1)
    logits = rng.normal(scale=2.0, size=case.log_probs.shape)
    lp = log_softmax(logits)
    targets = case.padded(0)
    args = (targets, case.input_lengths, case.target_lengths)
    _, grad_lp = fastctc.ctc_loss_and_grad(lp, *args, reduction=reduction)
    _, grad_logits = fastctc.ctc_loss_and_grad(lp, *args, reduction=reduction, grad_wrt="logits")

    def func(z):
        return float(np.sum(fastctc.ctc_loss(log_softmax(z), *args, reduction=reduction)))

    numeric = numeric_gradient(func, logits)
    np.testing.assert_allclose(grad_logits, numeric, rtol=1e-5, atol=1e-7)
    chained = logits_grad_from_log_probs_grad(grad_lp, lp)
    np.testing.assert_allclose(chained, grad_logits, rtol=1e-10, atol=1e-12)


def test_logits_convention_is_not_the_log_probs_derivative(rng):
    """Sanity check of the test itself: the logits convention fails FD w.r.t. log_probs."""
    case = make_case(rng, 5, 2, 4, 2, min_input_length=2)
    targets = case.padded(0)
    options = {"reduction": "sum"}
    _, grad_logits = fastctc.ctc_loss_and_grad(
        case.log_probs,
        targets,
        case.input_lengths,
        case.target_lengths,
        grad_wrt="logits",
        **options,
    )
    numeric = numeric_gradient(total_loss(case, targets, **options), case.log_probs)
    assert not np.allclose(grad_logits, numeric, rtol=1e-5, atol=1e-7)


def test_float32_gradient_close_to_float64_finite_differences(rng):
    case = make_case(rng, 8, 3, 5, 4, repeat_probability=0.4, min_input_length=2)
    lp32 = case.log_probs.astype(np.float32)
    lp64 = lp32.astype(np.float64)
    targets = case.padded(0)
    _, grad32 = fastctc.ctc_loss_and_grad(
        lp32, targets, case.input_lengths, case.target_lengths, reduction="sum"
    )
    numeric = numeric_gradient(total_loss(case, targets, reduction="sum"), lp64)
    np.testing.assert_allclose(grad32, numeric, rtol=0, atol=1e-5)
