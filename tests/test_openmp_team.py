"""fastctc's CPU batches on torch's OpenMP threads (``src/openmp.rs``): importing
``fastctc.torch`` runs them on the calling thread's OpenMP team, which gives the results of
fastctc's own pool; ``FASTCTC_OPENMP_TEAM=0`` keeps the pool; a forked child uses its pool.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastctc  # noqa: E402
import fastctc.torch  # noqa: E402,F401  (enables the team)
from fastctc import _core  # noqa: E402

if not sys.platform.startswith("linux") or not torch.backends.openmp.is_available():
    pytest.skip("torch's OpenMP runtime is GNU OpenMP on Linux", allow_module_level=True)


def batch():
    rng = np.random.default_rng(3)
    T, N, C, S = 120, 12, 20, 30
    x = rng.standard_normal((T, N, C))
    lp = (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)
    targets = rng.integers(1, C, size=(N, S))
    return lp, targets, rng.integers(60, T + 1, size=N), rng.integers(1, S + 1, size=N)


@pytest.fixture
def two_threads():
    before = (fastctc.get_num_threads(), torch.get_num_threads())
    fastctc.set_num_threads(2)
    torch.set_num_threads(2)
    yield
    fastctc.set_num_threads(before[0])
    torch.set_num_threads(before[1])


def test_the_team_gives_the_pools_results(two_threads):
    data = batch()
    assert _core.use_openmp_team(True)
    before = _core.openmp_batches()
    on_team = fastctc.ctc_loss_and_grad(*data, reduction="none")
    assert _core.openmp_batches() == before + 1
    _core.use_openmp_team(False)
    try:
        on_pool = fastctc.ctc_loss_and_grad(*data, reduction="none")
        assert _core.openmp_batches() == before + 1
    finally:
        _core.use_openmp_team(True)
    np.testing.assert_array_equal(on_team[0], on_pool[0])
    np.testing.assert_array_equal(on_team[1], on_pool[1])


def test_the_adapter_runs_on_the_team_after_torch_work(two_threads):
    lp, targets, input_lengths, target_lengths = (torch.from_numpy(np.asarray(a)) for a in batch())
    lp.requires_grad_()
    torch.randn(256, 256) @ torch.randn(256, 256)  # torch's own threads run first
    before = _core.openmp_batches()
    fastctc.torch.ctc_loss(lp, targets, input_lengths, target_lengths).backward()
    assert _core.openmp_batches() > before
    reference = fastctc.ctc_loss_and_grad(
        lp.detach().double().numpy(), targets, input_lengths, target_lengths
    )[1]
    np.testing.assert_allclose(lp.grad.numpy(), reference, atol=1e-6)


def test_turned_off_by_the_environment():
    code = textwrap.dedent(
        """
        import fastctc, fastctc.torch, torch
        from fastctc import _core
        import numpy as np
        fastctc.set_num_threads(2)
        torch.set_num_threads(2)
        x = np.random.default_rng(0).standard_normal((120, 12, 20)).astype(np.float32)
        fastctc.ctc_loss_and_grad(x, np.ones((12, 30), int), [120] * 12, [30] * 12,
                                  input_kind="logits")
        print(_core.openmp_batches())
        """
    )
    env = dict(os.environ, FASTCTC_OPENMP_TEAM="0")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


def _child(queue):
    data = batch()
    before = _core.openmp_batches()
    loss, _ = fastctc.ctc_loss_and_grad(*data, reduction="none")
    queue.put((loss, _core.openmp_batches() - before))


def test_a_forked_child_uses_its_own_pool(two_threads):
    fastctc.ctc_loss_and_grad(*batch())  # the parent's team has run
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(queue,))
    child.start()
    loss, batches = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert batches == 0
    np.testing.assert_array_equal(loss, fastctc.ctc_loss(*batch(), reduction="none"))
