"""A forked child (``multiprocessing`` with the "fork" start method, a PyTorch ``DataLoader``
worker) inherits fastctc's thread pool but none of its threads: it must start its own
rather than wait forever for threads that do not exist."""

from __future__ import annotations

import multiprocessing
import sys

import fastctc
import numpy as np
import pytest
from ctc_cases import make_case

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or "fork" not in multiprocessing.get_all_start_methods(),
    reason="needs the fork start method",
)


def _losses_in_child(args, grad_wrt, queue) -> None:
    loss, grad = fastctc.ctc_loss_and_grad(*args, reduction="none", grad_wrt=grad_wrt)
    queue.put((loss, grad))


@pytest.fixture
def two_threads():
    before = fastctc.get_num_threads()
    fastctc.set_num_threads(2)
    yield
    fastctc.set_num_threads(before)


@pytest.mark.parametrize("grad_wrt", ["log_probs", "logits"])
def test_a_forked_child_computes_with_its_own_threads(two_threads, grad_wrt):
    rng = np.random.default_rng(11)
    # Large enough for the whole pool (see test_accuracy's scheduling regimes) and for a
    # recycled gradient buffer.
    case = make_case(rng, 400, 12, 60, 80, min_input_length=300)
    args = (case.log_probs, case.padded(0), case.input_lengths, case.target_lengths)
    expected = case.reference("none")
    # The parent's pool threads are running, and a freed gradient is kept.
    for _ in range(2):
        fastctc.ctc_loss_and_grad(*args, reduction="none", grad_wrt=grad_wrt)

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_losses_in_child, args=(args, grad_wrt, queue))
    child.start()
    try:
        loss, grad = queue.get(timeout=120)  # a hang fails here instead of stalling CI
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    np.testing.assert_allclose(loss, expected.loss, rtol=1e-9)
    want = expected.grad_log_probs if grad_wrt == "log_probs" else expected.grad_logits
    np.testing.assert_allclose(grad, want, atol=1e-9)
    # The parent is unaffected.
    loss, _ = fastctc.ctc_loss_and_grad(*args, reduction="none", grad_wrt=grad_wrt)
    np.testing.assert_allclose(loss, expected.loss, rtol=1e-9)
