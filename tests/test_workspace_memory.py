"""The CPU's forward tables are not kept for good: ``empty_cache()`` frees them, and a call
frees kept tables far larger than it needs.

Each case runs in a fresh child process and reads its resident memory from /proc, so that
nothing else in the test session (other tests' buffers, torch) moves the numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/self/statm"
)

# T=3000, S=1500 float32, two samples: a forward table of 3000 x 3001 cells x 8 bytes
# (about 69 MiB) per sample, one per thread that runs one.
_CHILD = """
import json, resource
import numpy as np
import fastctc

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

def long_batch():
    rng = np.random.default_rng(0)
    lp = np.log(rng.dirichlet(np.ones(5), size=(3000, 2)).astype(np.float32))
    targets = np.tile([1, 2, 3], 500)[None, :].repeat(2, axis=0)
    return lp, targets, [3000, 3000], [1500, 1500]

def short_batch():
    lp = np.log(np.full((50, 4, 5), 0.2, np.float32))
    return lp, np.ones((4, 3), np.int64) * 2, [50] * 4, [3] * 4

out = {}
out["before"] = rss()
loss, grad = fastctc.ctc_loss_and_grad(*long_batch())
del grad  # 120 kB: below the size of recycled buffers, so only the tables remain
out["after_long"] = rss()
STEP
out["end"] = rss()
print(json.dumps(out))
"""

_TABLE = 3000 * 3001 * 8


def _run(step: str) -> dict:
    script = _CHILD.replace("STEP", textwrap.dedent(step).strip())
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_empty_cache_frees_the_forward_tables():
    out = _run(
        """
        out["freed"] = fastctc.empty_cache()
        """
    )
    # The tables were resident after the call (at least one), and are gone after.
    assert out["after_long"] - out["before"] > 0.9 * _TABLE
    assert out["freed"] >= _TABLE
    assert out["after_long"] - out["end"] > 0.9 * _TABLE
    assert out["end"] - out["before"] < 0.5 * _TABLE


def test_a_small_call_frees_tables_far_larger_than_it_needs():
    out = _run(
        """
        fastctc.ctc_loss_and_grad(*short_batch())
        """
    )
    assert out["after_long"] - out["end"] > 0.9 * _TABLE
    assert out["end"] - out["before"] < 0.5 * _TABLE


def test_calls_of_the_same_size_keep_their_tables():
    # The common case, a training loop, must not reallocate: after a second long call the
    # memory is what the first left.
    out = _run(
        """
        loss, grad = fastctc.ctc_loss_and_grad(*long_batch())
        del grad
        """
    )
    assert abs(out["end"] - out["after_long"]) < 0.5 * _TABLE
