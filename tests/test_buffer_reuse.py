"""Gradient buffers are recycled (src/buffers.rs): when a gradient of 1 MiB or more is freed,
the next gradient of about its size is written into the same memory, which then holds the
old values. These tests fill freed gradients with NaN first, so that any entry a kernel
fails to write shows up against the float64 reference.
"""

from __future__ import annotations

import gc

import fastctc
import numpy as np
import pytest
from ctc_cases import make_case

TOLERANCE = {np.float32: 2e-5, np.float64: 1e-10}
# 40 frames x 20 samples x 400 classes: 1.3 MB in float32, over the 1 MiB reuse threshold.
T, N, C, S = 40, 20, 400, 15


def address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


@pytest.fixture(autouse=True)
def empty_pool():
    fastctc.empty_cache()
    yield
    fastctc.empty_cache()


def poisoned_buffer(log_probs, case, layout, **options) -> int:
    """Computes a gradient of the right size, fills it with NaN and frees it; returns its
    address (where the next gradient of this size must land)."""
    args = (log_probs, case.padded(0), case.input_lengths, case.target_lengths)
    _, grad = fastctc.ctc_loss_and_grad(*args, layout=layout, **options)
    grad.fill(np.nan)
    where = address(grad)
    del grad
    return where


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("grad_wrt", ["log_probs", "logits"])
@pytest.mark.parametrize("layout", ["TNC", "NTC"])
@pytest.mark.parametrize("groups", ["always", "never"])
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_a_recycled_buffer_gives_the_reference_gradient(
    dtype, grad_wrt, layout, groups, zero_infinity, monkeypatch
):
    """Varied input lengths (some 0, so whole frames are past the end), infeasible targets
    (an infinite loss: NaN or zero rows), in groups of short samples and one by one."""
    monkeypatch.setenv("FASTCTC_GROUPS", groups)
    rng = np.random.default_rng(31)
    case = make_case(rng, T, N, C, S, feasible=False)
    case.input_lengths[0] = 0  # every frame of sample 0 is past its end
    case.targets[0] = []
    case.target_lengths[0] = 0
    log_probs = case.log_probs.astype(dtype)
    ref = case.reference("mean", zero_infinity=zero_infinity, log_probs=log_probs)
    assert np.any(np.isinf(ref.sample_losses)), "the case needs an infeasible target"
    expected = ref.grad_log_probs if grad_wrt == "log_probs" else ref.grad_logits
    if layout == "NTC":
        log_probs = np.ascontiguousarray(log_probs.transpose(1, 0, 2))
        expected = expected.transpose(1, 0, 2)
    options = {"grad_wrt": grad_wrt, "zero_infinity": zero_infinity}
    where = poisoned_buffer(log_probs, case, layout, **options)

    args = (log_probs, case.padded(0), case.input_lengths, case.target_lengths)
    loss, grad = fastctc.ctc_loss_and_grad(*args, layout=layout, **options)
    assert address(grad) == where, "the freed buffer was not reused"
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(loss, ref.loss, rtol=tol, atol=tol)
    # NaN rows exactly where the reference has them (infinite loss without zero_infinity).
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(expected))
    np.testing.assert_allclose(grad, expected, rtol=0, atol=tol)


def test_posteriors_in_a_recycled_buffer():
    """ctc_posteriors writes its occupancy through the same path."""
    rng = np.random.default_rng(32)
    case = make_case(rng, T, N, C, S, min_input_length=T // 2)
    log_probs = case.log_probs.astype(np.float32)
    where = poisoned_buffer(log_probs, case, "TNC")
    args = (log_probs, case.padded(0), case.input_lengths, case.target_lengths)
    _, gamma = fastctc.ctc_posteriors(*args)
    assert address(gamma) == where
    # The occupancy is minus the log_probs gradient of reduction "none".
    ref = case.reference("none", log_probs=log_probs)
    np.testing.assert_allclose(gamma, -ref.grad_log_probs, rtol=0, atol=2e-5)


def test_live_views_keep_their_memory():
    """A buffer is reused only once nothing views it: a slice of the gradient, or a torch
    tensor sharing its memory, keeps it alive (NumPy's base object)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(33)
    case = make_case(rng, T, N, C, S, min_input_length=T // 2)
    args = (case.log_probs.astype(np.float32), case.padded(0))
    lengths = (case.input_lengths, case.target_lengths)
    _, grad = fastctc.ctc_loss_and_grad(*args, *lengths)
    expected = grad.copy()
    view = grad[1:]
    tensor = torch.from_numpy(grad)
    where = address(grad)
    del grad
    gc.collect()
    _, other = fastctc.ctc_loss_and_grad(*args, *lengths)
    assert address(other) != where
    other.fill(np.nan)
    del other
    _, third = fastctc.ctc_loss_and_grad(*args, *lengths)
    third.fill(np.nan)
    np.testing.assert_array_equal(view, expected[1:])
    np.testing.assert_array_equal(tensor.numpy(), expected)


def test_empty_cache_frees_large_buffers_only():
    rng = np.random.default_rng(34)
    case = make_case(rng, T, N, C, S)
    args = (case.log_probs.astype(np.float32), case.padded(0))
    lengths = (case.input_lengths, case.target_lengths)
    _, grad = fastctc.ctc_loss_and_grad(*args, *lengths)
    size = grad.nbytes
    assert size >= 1 << 20
    del grad
    # The buffer, and the CPU workspaces the call used (also freed by empty_cache).
    assert fastctc.empty_cache() >= size
    assert fastctc.empty_cache() == 0
    # A small gradient is left to the allocator.
    _, small = fastctc.ctc_loss_and_grad(args[0][:, :2], args[1][:2], *(x[:2] for x in lengths))
    del small
    # Only workspaces of a few kB: no kept buffer, which would be 1 MiB or more.
    assert fastctc.empty_cache() < 1 << 20
