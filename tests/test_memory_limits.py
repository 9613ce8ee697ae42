"""Memory exhaustion under an address-space limit (``ulimit -v``, containers, cgroups) is a
MemoryError, never an abort.

Rust aborts the process when an allocation fails, so each case runs in a child process
whose address space is capped a little above what it has mapped after start-up; the child
prints the exception's type and the test expects ``MemoryError`` and a clean exit (an abort
would show as SIGABRT). The children import only NumPy and fastctc.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="RLIMIT_AS is enforced on Linux"
)

# Run inside the child: cap the address space at what is mapped now plus HEADROOM bytes.
_PRELUDE = """
import resource, sys
import numpy as np
import fastctc

fastctc.set_num_threads(THREADS)
# Start the pool and map the code paths before the cap: only the call itself is limited.
fastctc.ctc_loss_and_grad(np.zeros((4, 2, 3), np.float32), [[1], [2]], [4, 4], [1, 1])
with open("/proc/self/statm") as f:
    mapped = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (mapped + HEADROOM, mapped + HEADROOM))

def broadcast(T, N, C, dtype=np.float32):
    row = np.log(np.full((1, 1, C), 1.0 / C, dtype=dtype))
    return np.broadcast_to(row, (T, N, C))

try:
    exec(CALL)
except MemoryError as error:
    print("MemoryError:", error)
except Exception as error:
    print(type(error).__name__ + ":", error)
else:
    print("computed")
"""

_MIB = 1 << 20


def _run_capped(call: str, headroom: int, threads: int = 2) -> str:
    script = (
        _PRELUDE.replace("THREADS", str(threads))
        .replace("HEADROOM", str(headroom))
        .replace("CALL", repr(textwrap.dedent(call).strip()))
    )
    # One malloc arena: each thread's own arena reserves 64 MiB of address space, which
    # under a cap this tight decides by chance which allocation fails.
    env = {**os.environ, "MALLOC_ARENA_MAX": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, (
        f"the child died (return code {done.returncode}, negative: killed by that signal):\n"
        f"{done.stdout}\n{done.stderr[-2000:]}"
    )
    return done.stdout.strip()


def test_gradient_and_forward_table_together_past_the_limit():
    # T=4000, one sample of S=2000: a forward table of 4000 x 4001 cells x 8 bytes = 128 MiB;
    # the gradient (4000 x 1 x 8192 float32) another 128 MiB. Each fits in 200 MiB, both
    # together do not.
    out = _run_capped(
        """
        lp = broadcast(4000, 1, 8192)
        fastctc.ctc_loss_and_grad(lp, np.tile([1, 2], 1000)[None, :], [4000], [2000])
        """,
        headroom=200 * _MIB,
    )
    assert out.startswith("MemoryError"), out


def test_one_forward_table_per_pool_thread_past_the_limit():
    # Two samples, each with a 128 MiB forward table, on two threads: 256 MiB at once.
    out = _run_capped(
        """
        lp = broadcast(4000, 2, 3)
        targets = np.tile([1, 2], 1000)[None, :].repeat(2, axis=0)
        fastctc.ctc_loss_and_grad(lp, targets, [4000, 4000], [2000, 2000])
        """,
        headroom=200 * _MIB,
    )
    assert out.startswith("MemoryError"), out


def test_validation_of_a_huge_broadcast_batch_past_the_limit():
    # N = 2^27 samples as broadcast views: no memory in the arrays, gigabytes of per-sample
    # records in validation.
    out = _run_capped(
        """
        n = 2**27
        lp = broadcast(1, n, 2)
        lengths = np.broadcast_to(np.int64(1), (n,))
        targets = np.broadcast_to(np.int64(1), (n, 1))
        fastctc.ctc_loss(lp, targets, lengths, lengths)
        """,
        headroom=256 * _MIB,
    )
    assert out.startswith("MemoryError"), out


def test_validation_of_a_huge_target_past_the_limit():
    # One target of 2^30 labels (a broadcast view): a 4 GiB label list in validation.
    out = _run_capped(
        """
        s = 2**30
        lp = broadcast(2**31, 1, 3)
        targets = np.broadcast_to(np.int64(1), (1, s))
        fastctc.ctc_loss(lp, targets, [2**31], [s])
        """,
        headroom=256 * _MIB,
    )
    assert out.startswith("MemoryError"), out


def test_the_same_calls_compute_with_room():
    # The guard is not a blanket refusal: with room, the first case computes.
    out = _run_capped(
        """
        lp = broadcast(4000, 1, 8192)
        fastctc.ctc_loss_and_grad(lp, np.tile([1, 2], 1000)[None, :], [4000], [2000])
        """,
        headroom=1024 * _MIB,
    )
    assert out == "computed", out


def test_a_long_alignment_runs_in_bounded_memory():
    # T=20,000 frames against S=8,000 tokens: 3.2e8 lattice cells, 320 MiB of back-pointers
    # at a byte per cell. The aligner keeps at most 64 MiB of them (two-bit, by segments
    # recomputed from checkpoints), so 160 MiB of address space is enough.
    out = _run_capped(
        """
        lp = broadcast(20000, 1, 8)
        result = fastctc.ctc_align(lp, np.tile([1, 2], 4000)[None, :], [20000], [8000])
        assert result.ok[0] and result.spans[0, -1, 1] <= 20000
        """,
        headroom=160 * _MIB,
    )
    assert out == "computed", out
