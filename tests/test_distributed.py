"""Data-parallel training with ``fastctc.torch.CTCLoss``: two processes on this machine
(``torch.distributed`` with gloo, ``DistributedDataParallel``) each take half of a batch, and
the averaged gradients equal those of one process on the whole batch. Each rank sizes its pool
from ``LOCAL_WORLD_SIZE``, as torchrun sets it, so the two share the machine's cores.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

from fastctc.torch import CTCLoss  # noqa: E402

T, N, C, FEATURES = 30, 4, 6, 5
WORLD = 2


def batch():
    rng = np.random.default_rng(7)
    features = torch.from_numpy(rng.standard_normal((N, FEATURES, T), dtype=np.float32))
    targets = torch.from_numpy(rng.integers(1, C, size=(N, 5)))
    input_lengths = torch.tensor([30, 27, 30, 22])
    target_lengths = torch.tensor([5, 3, 4, 2])
    return features, targets, input_lengths, target_lengths


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv1d(FEATURES, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv1d(16, C, 1),
    )


def step(net, features, targets, input_lengths, target_lengths):
    """One forward and backward of the CTC loss (mean over the batch) through ``net``."""
    log_probs = net(features).permute(2, 0, 1).log_softmax(2)
    CTCLoss()(log_probs, targets, input_lengths, target_lengths).backward()


RANK = """
import os, sys, json
import numpy as np, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
import fastctc
import test_distributed as case

rank = int(os.environ["RANK"])
dist.init_process_group("gloo")
net = torch.nn.parallel.DistributedDataParallel(case.model())
features, targets, input_lengths, target_lengths = case.batch()
half = slice(2 * rank, 2 * rank + 2)
case.step(net, features[half], targets[half], input_lengths[half], target_lengths[half])
grads = [p.grad.numpy() for p in net.module.parameters()]
if rank == 0:
    np.savez({out!r}, *grads)
print(json.dumps({{"rank": rank, "threads": fastctc.get_num_threads()}}))
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.long
def test_two_ranks_give_the_single_process_gradients(tmp_path):
    out = tmp_path / "grads.npz"
    script = textwrap.dedent(RANK.format(tests=os.path.dirname(__file__), out=str(out)))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    env.update(WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    for name in ("FASTCTC_NUM_THREADS", "RAYON_NUM_THREADS"):
        env.pop(name, None)
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(WORLD)
    ]
    results = [rank.communicate(timeout=300) for rank in ranks]
    for rank, (_, stderr) in zip(ranks, results, strict=True):
        assert rank.returncode == 0, stderr[-3000:]
    alone = subprocess.run(
        [sys.executable, "-c", "import fastctc; print(fastctc.get_num_threads())"],
        env={k: v for k, v in env.items() if k != "LOCAL_WORLD_SIZE"},
        capture_output=True,
        text=True,
        check=True,
    )
    cores = int(alone.stdout)
    for stdout, _ in results:
        assert f'"threads": {max(1, cores // WORLD)}' in stdout, stdout

    net = model()
    step(net, *batch())
    with np.load(out) as saved:
        distributed = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    single = [p.grad.numpy() for p in net.parameters()]
    for d, s in zip(distributed, single, strict=True):
        np.testing.assert_allclose(d, s, rtol=1e-5, atol=1e-6)
