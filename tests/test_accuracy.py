"""Long-sequence accuracy, a medium-size check against the reference, and determinism."""

from __future__ import annotations

import time

import fastctc
import numpy as np
import pytest
from ctc_cases import make_case
from reference import log_softmax


def assert_grad_within(grad32, grad64, atol, what):
    error = np.abs(grad32.astype(np.float64) - grad64)
    worst = np.unravel_index(np.argmax(error), error.shape)
    assert error[worst] <= atol, (
        f"grad_wrt={what}: max |float32 - float64| = {error[worst]:.3g} at {worst} "
        f"(float64 value {grad64[worst]:.6g}); {np.sum(error > atol)} entries above {atol}"
    )


@pytest.mark.long
@pytest.mark.parametrize("logit_scale", [1.0, 6.0])
def test_float32_long_sequence_accuracy(logit_scale):
    """T=5000, S=1000: float32 within 1e-5 (loss, relative) and 1e-5 (every gradient
    entry, absolute) of the float64 computation on the same values."""
    rng = np.random.default_rng(2024)
    num_frames, length, num_classes = 5000, 1000, 20
    logits = rng.normal(scale=logit_scale, size=(num_frames, 1, num_classes))
    lp32 = log_softmax(logits).astype(np.float32)
    lp64 = lp32.astype(np.float64)
    targets = rng.integers(1, num_classes, size=(1, length))
    lengths = ([num_frames], [length])

    start = time.perf_counter()
    for grad_wrt in ("log_probs", "logits"):
        loss32, grad32 = fastctc.ctc_loss_and_grad(
            lp32, targets, *lengths, reduction="sum", grad_wrt=grad_wrt
        )
        loss64, grad64 = fastctc.ctc_loss_and_grad(
            lp64, targets, *lengths, reduction="sum", grad_wrt=grad_wrt
        )
        assert np.isfinite(loss64) and loss64 > 0
        assert loss32.dtype == np.float32 and grad32.dtype == np.float32
        np.testing.assert_allclose(loss32, loss64, rtol=1e-5)
        # The issue asks for 1e-4; the extended-range lattice keeps about 3e-7.
        assert_grad_within(grad32, grad64, 1e-5, grad_wrt)
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0, f"four calls at T=5000, S=1000 took {elapsed:.1f} s"


def test_float32_long_uneven_batch():
    """The same bound on a batch of uneven long samples (logits with scale 2)."""
    rng = np.random.default_rng(7)
    case = make_case(rng, 3000, 3, 30, 600, min_input_length=2000)
    lp32 = case.log_probs.astype(np.float32)
    args = (case.padded(0), case.input_lengths, case.target_lengths)
    loss32, grad32 = fastctc.ctc_loss_and_grad(lp32, *args, reduction="none")
    loss64, grad64 = fastctc.ctc_loss_and_grad(lp32.astype(np.float64), *args, reduction="none")
    np.testing.assert_allclose(loss32, loss64, rtol=1e-5)
    assert_grad_within(grad32, grad64, 1e-4, "log_probs")
    mean32 = fastctc.ctc_loss(lp32, *args, reduction="mean")
    mean64 = fastctc.ctc_loss(lp32.astype(np.float64), *args, reduction="mean")
    np.testing.assert_allclose(mean32, mean64, rtol=1e-5)


def test_medium_float64_against_reference():
    """A few hundred frames, float64, against the (slow, simple) NumPy reference."""
    rng = np.random.default_rng(99)
    case = make_case(rng, 200, 2, 12, 60, min_input_length=120, repeat_probability=0.3)
    case.log_probs[:, 1, :] += rng.normal(scale=1.0, size=(200, 12))  # unnormalised
    args = (case.log_probs, case.padded(-1), case.input_lengths, case.target_lengths)
    ref = case.reference("none")
    loss, grad = fastctc.ctc_loss_and_grad(*args, reduction="none")
    np.testing.assert_allclose(loss, ref.loss, rtol=1e-10)
    np.testing.assert_allclose(grad, ref.grad_log_probs, rtol=0, atol=1e-10)
    _, grad_logits = fastctc.ctc_loss_and_grad(*args, reduction="none", grad_wrt="logits")
    np.testing.assert_allclose(grad_logits, ref.grad_logits, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------
# determinism


@pytest.fixture
def restore_threads():
    before = fastctc.get_num_threads()
    yield
    fastctc.set_num_threads(before)


def test_set_and_get_num_threads(restore_threads):
    for n in (1, 2, 3):
        fastctc.set_num_threads(n)
        assert fastctc.get_num_threads() == n


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("grad_wrt", ["log_probs", "logits"])
def test_results_identical_across_thread_counts(restore_threads, dtype, reduction, grad_wrt):
    rng = np.random.default_rng(5)
    case = make_case(rng, 120, 24, 20, 40, feasible=False, min_input_length=1)
    args = (
        case.log_probs.astype(dtype),
        case.padded(0),
        case.input_lengths,
        case.target_lengths,
    )
    options = {"reduction": reduction, "grad_wrt": grad_wrt, "zero_infinity": False}
    results = []
    for threads in (1, 2, 1, 3):
        fastctc.set_num_threads(threads)
        loss, grad = fastctc.ctc_loss_and_grad(*args, **options)
        results.append((loss.copy(), grad.copy(), fastctc.ctc_loss(*args, reduction=reduction)))
    for loss, grad, loss_only in results[1:]:
        np.testing.assert_array_equal(loss, results[0][0])
        np.testing.assert_array_equal(grad, results[0][1])
        np.testing.assert_array_equal(loss_only, results[0][2])
    # the draw should contain both finite and infinite samples
    per_sample = fastctc.ctc_loss(*args, reduction="none")
    assert np.any(np.isinf(per_sample)) and np.any(np.isfinite(per_sample))


@pytest.mark.parametrize(
    ("shape", "min_cells", "max_cells"),
    [
        ((20, 4, 6, 5), 0, 6_666),
        ((150, 8, 10, 70), 6_667, 400_000),
        ((60, 40, 10, 20), 6_667, 400_000),
        ((400, 12, 12, 80), 400_000, 10**9),
    ],
    ids=["calling-thread", "caller-and-one-helper", "caller-and-one-helper-groups", "whole-pool"],
)
def test_every_scheduling_regime_matches_reference(
    restore_threads, monkeypatch, request, shape, min_cells, max_cells
):
    """Small batches run on the calling thread, medium ones are split with one pool thread,
    large ones use the whole pool: each against the reference at 2 threads. Short samples
    run in groups of 16 (src/cpu/lockstep.rs): one batch has three groups to share."""
    if request.node.callspec.id.endswith("groups"):
        monkeypatch.setenv("FASTCTC_GROUPS", "always")
    num_frames, batch, num_classes, width = shape
    rng = np.random.default_rng(sum(shape))
    case = make_case(
        rng,
        num_frames,
        batch,
        num_classes,
        width,
        min_input_length=num_frames // 2,
        full_targets=True,
    )
    cells = sum(
        t * (2 * s + 1) for t, s in zip(case.input_lengths, case.target_lengths, strict=True)
    )
    # The thresholds of src/cpu/mod.rs (SERIAL_WORK, SPLIT_WORK, in forward cells: three per
    # cell with the gradient).
    assert min_cells <= cells < max_cells
    fastctc.set_num_threads(2)
    args = (case.log_probs, case.padded(0), case.input_lengths, case.target_lengths)
    ref = case.reference("none")
    loss, grad = fastctc.ctc_loss_and_grad(*args, reduction="none")
    np.testing.assert_allclose(loss, ref.loss, rtol=1e-10)
    np.testing.assert_allclose(grad, ref.grad_log_probs, rtol=0, atol=1e-10)
    np.testing.assert_allclose(fastctc.ctc_loss(*args, reduction="none"), ref.loss, rtol=1e-10)


def test_float32_far_beyond_the_float32_lanes_budget():
    """float32 log-probabilities of millions (summed over frames beyond what int32
    exponents can hold) run in float64 lanes: the same results as the reference on the same
    values."""
    rng = np.random.default_rng(12)
    case = make_case(rng, 40, 3, 6, 8, min_input_length=30)
    lp32 = (case.log_probs * 2.5e6).astype(np.float32)
    ref = case.reference("none", log_probs=lp32.astype(np.float64))
    assert np.all(np.isfinite(ref.loss)) and ref.loss.max() > 5e7
    args = (case.padded(0), case.input_lengths, case.target_lengths)
    loss, grad = fastctc.ctc_loss_and_grad(lp32, *args, reduction="none")
    np.testing.assert_allclose(loss, ref.loss, rtol=1e-6)
    np.testing.assert_allclose(grad, ref.grad_log_probs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fastctc.ctc_loss(lp32, *args, reduction="none"), ref.loss, rtol=1e-6)
