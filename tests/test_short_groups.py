"""Short samples run side by side, one SIMD lane each, in groups of 16 (src/cpu/lockstep.rs).

Each test runs twice: with FASTCTC_GROUPS=always (every short sample in a group) and with the
default cost model.

Every test here compares with the float64 reference. A group holds samples of different
lengths, and lanes that must leave it for the per-sample kernel (no frames, no possible
alignment, a NaN read, a zero likelihood, an exhausted float32 exponent budget); a batch of
more than 16 short samples makes several groups, and long samples (more than 129 states)
run one by one in the same call.
"""

from __future__ import annotations

import fastctc
import numpy as np
import pytest
from ctc_cases import make_case

TOLERANCE = {np.float32: 2e-5, np.float64: 1e-10}


@pytest.fixture(autouse=True, params=["always", "auto"])
def group_policy(request, monkeypatch):
    """Groups are formed where a cost model expects them to pay off; FASTCTC_GROUPS=always
    makes every test here run its short samples in groups."""
    monkeypatch.setenv("FASTCTC_GROUPS", request.param)
    return request.param


def check(
    case,
    log_probs,
    dtype,
    *,
    grad_wrt="log_probs",
    input_kind="log_probs",
    zero_infinity=False,
    reference_lp=None,
):
    """fastctc on ``log_probs`` against the reference on ``reference_lp`` (by default the
    same values)."""
    args = (log_probs.astype(dtype), case.padded(0), case.input_lengths, case.target_lengths)
    options = {"reduction": "none", "zero_infinity": zero_infinity, "input_kind": input_kind}
    if reference_lp is None:
        reference_lp = log_probs.astype(dtype).astype(np.float64)
    if input_kind == "logits":
        shift = np.max(reference_lp, axis=2, keepdims=True)
        reference_lp = reference_lp - (
            shift + np.log(np.sum(np.exp(reference_lp - shift), axis=2, keepdims=True))
        )
    ref = case.reference("none", zero_infinity=zero_infinity, log_probs=reference_lp)
    expected_grad = ref.grad_log_probs if grad_wrt == "log_probs" else ref.grad_logits
    tol = TOLERANCE[dtype]
    loss, grad = fastctc.ctc_loss_and_grad(*args, grad_wrt=grad_wrt, **options)
    np.testing.assert_allclose(loss, ref.loss, rtol=tol, atol=tol)
    # A NaN loss has NaN in every frame of its gradient (the reference's NaNs follow its
    # arithmetic instead).
    nan_samples = np.isnan(ref.loss)
    for n in np.flatnonzero(nan_samples):
        assert np.all(np.isnan(grad[: case.input_lengths[n], n]))
    keep = ~nan_samples
    np.testing.assert_allclose(grad[:, keep], expected_grad[:, keep], rtol=0, atol=tol)
    np.testing.assert_allclose(fastctc.ctc_loss(*args, **options), ref.loss, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("grad_wrt", ["log_probs", "logits"])
@pytest.mark.parametrize("input_kind", ["log_probs", "logits"])
@pytest.mark.parametrize("num_classes", [12, 300])
def test_groups_of_varied_lengths(dtype, grad_wrt, input_kind, num_classes):
    """40 short samples of lengths 0..60 frames and 0..30 labels: two full groups and a
    partial one, with infeasible and empty targets among them. With 300 classes the group
    prefetches its input rows (float32) or runs one by one (float64: rows over 2 KiB)."""
    rng = np.random.default_rng(21)
    case = make_case(rng, 60, 40, num_classes, 30, feasible=False)
    log_probs = case.log_probs
    if input_kind == "logits":
        log_probs = log_probs + rng.normal(scale=3.0, size=(60, 40, 1))
    check(case, log_probs, dtype, grad_wrt=grad_wrt, input_kind=input_kind)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_lanes_that_leave_the_group(dtype, zero_infinity):
    """Lanes with a NaN read, a NaN after every path has died, and a zero likelihood
    (-inf emissions on every path) leave their group; the others are unaffected."""
    rng = np.random.default_rng(22)
    case = make_case(rng, 40, 16, 8, 12, min_input_length=20, full_targets=True)
    lp = case.log_probs.copy()
    # Sample 1 reads a NaN at frame 5 (the blank, read by every frame).
    lp[5, 1, case.blank] = np.nan
    # Sample 2: every class -inf at frame 3 (every path dies), then a NaN at frame 7.
    lp[3, 2, :] = -np.inf
    lp[7, 2, case.blank] = np.nan
    # Sample 3: its blank and labels are -inf at frame 0, so no path starts.
    for label in [case.blank, *case.targets[3]]:
        lp[0, 3, label] = -np.inf
    # Frames after a dead end are not read (README): the reference sees a finite value there.
    reference_lp = lp.astype(dtype).astype(np.float64)
    reference_lp[7, 2, case.blank] = 0.0
    check(case, lp, dtype, zero_infinity=zero_infinity, reference_lp=reference_lp)
    args = (lp.astype(dtype), case.padded(0), case.input_lengths, case.target_lengths)
    loss = fastctc.ctc_loss(*args, reduction="none")
    assert np.isnan(loss[1]) and loss[2] == np.inf and loss[3] == np.inf
    assert np.all(np.isfinite(np.delete(loss, [1, 2, 3])))


def test_short_and_long_samples_in_one_batch():
    """Short samples run in groups and long ones (more than 129 states, GROUP_MAX_STATES in
    src/cpu/mod.rs) one by one, in the same call."""
    rng = np.random.default_rng(23)
    case = make_case(rng, 200, 24, 10, 90, min_input_length=190)
    states = 2 * case.target_lengths + 1
    assert np.sum(states <= 129) >= 2 and np.any(states > 129)
    check(case, case.log_probs, np.float32)


def test_a_lane_beyond_the_float32_budget():
    """float32 log-probabilities of millions exhaust one lane's exponent budget: that sample
    reruns in float64 lanes, its group neighbours stay in float32 lanes."""
    rng = np.random.default_rng(24)
    case = make_case(rng, 40, 6, 6, 8, min_input_length=30)
    lp = case.log_probs.copy()
    lp[:, 2, :] *= 2.5e6
    lp32 = lp.astype(np.float32).astype(np.float64)
    ref = case.reference("none", log_probs=lp32)
    assert ref.loss[2] > 5e7 and np.all(np.isfinite(ref.loss))
    args = (lp32.astype(np.float32), case.padded(0), case.input_lengths, case.target_lengths)
    loss, grad = fastctc.ctc_loss_and_grad(*args, reduction="none")
    np.testing.assert_allclose(loss, ref.loss, rtol=1e-6)
    np.testing.assert_allclose(grad, ref.grad_log_probs, rtol=0, atol=2e-5)


@pytest.mark.parametrize("layout", ["TNC", "NTC"])
def test_repeated_calls_reuse_no_stale_state(layout):
    """Workspaces live across calls: a wide logits batch, then a narrow log-probability
    batch with the logits gradient, must give the second batch's own results."""
    rng = np.random.default_rng(25)
    first = make_case(rng, 50, 20, 30, 25)
    second = make_case(rng, 9, 18, 3, 4)
    for case, kind in [(first, "logits"), (second, "log_probs"), (first, "log_probs")]:
        lp = case.log_probs.astype(np.float32)
        args = (case.padded(0), case.input_lengths, case.target_lengths)
        if layout == "NTC":
            lp = np.ascontiguousarray(lp.transpose(1, 0, 2))
        loss, grad = fastctc.ctc_loss_and_grad(
            lp, *args, reduction="none", grad_wrt="logits", input_kind=kind, layout=layout
        )
        if layout == "NTC":
            grad = grad.transpose(1, 0, 2)
        ref = case.reference("none")
        np.testing.assert_allclose(loss, ref.loss, rtol=2e-5)
        np.testing.assert_allclose(grad, ref.grad_logits, rtol=0, atol=2e-5)


def test_long_inputs_with_short_targets():
    """2100 frames and 61 states: a group's table (16 lanes) would exceed 16 MiB, so by
    default these run one by one; with FASTCTC_GROUPS=always as one group."""
    rng = np.random.default_rng(26)
    case = make_case(rng, 2100, 3, 9, 30, min_input_length=2000, full_targets=True)
    check(case, case.log_probs, np.float32)
