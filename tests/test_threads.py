"""The thread count (set_num_threads, FASTCTC_NUM_THREADS, RAYON_NUM_THREADS) and what a
signal does during a call."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import fastctc
import numpy as np
import pytest


@pytest.fixture
def restore_threads():
    before = fastctc.get_num_threads()
    yield before
    fastctc.set_num_threads(before)


@pytest.mark.parametrize("value", [2**63, 2**64, -(2**63) - 1, 10**30])
def test_a_count_beyond_64_bits_is_an_input_error(value, restore_threads):
    with pytest.raises(fastctc.CTCInputError, match=rf"^set_num_threads: {value} does not fit"):
        fastctc.set_num_threads(value)
    with pytest.raises(ValueError):
        fastctc.set_num_threads(value)
    assert fastctc.get_num_threads() == restore_threads


@pytest.mark.parametrize("value", [0, -1, -(2**63)])
def test_a_count_below_one_is_an_input_error(value, restore_threads):
    with pytest.raises(fastctc.CTCInputError, match=rf"at least 1, got {value}$"):
        fastctc.set_num_threads(value)
    assert fastctc.get_num_threads() == restore_threads


@pytest.mark.parametrize("value", [1.5, "2", None])
def test_a_count_that_is_not_an_integer_is_a_type_error(value, restore_threads):
    with pytest.raises(fastctc.CTCTypeError, match="set_num_threads: expected an integer"):
        fastctc.set_num_threads(value)


def test_integer_likes_are_accepted(restore_threads):
    fastctc.set_num_threads(np.int64(2))
    assert fastctc.get_num_threads() == 2
    fastctc.set_num_threads(True)  # an int, as for operator.index
    assert fastctc.get_num_threads() == 1


def _available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _threads_in_child(env: dict[str, str]) -> tuple[int, str]:
    """The thread count a fresh process gets with ``env`` (asked twice), and its stderr."""
    environ = {k: v for k, v in os.environ.items() if not k.endswith("NUM_THREADS")}
    environ.update(env)
    code = "import fastctc; print(fastctc.get_num_threads()); print(fastctc.get_num_threads())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    first, second = out.stdout.split()
    assert first == second
    return int(first), out.stderr


@pytest.mark.parametrize("name", ["FASTCTC_NUM_THREADS", "RAYON_NUM_THREADS"])
def test_a_huge_environment_count_is_clamped_with_one_warning(name):
    """Four threads per available core at most (it used to spawn tens of thousands of
    threads, fail, and run on one), with one warning naming the variable and both counts."""
    threads, stderr = _threads_in_child({name: "1000000"})
    # Four per core the process may use: the affinity mask, or fewer under a cgroup quota.
    assert 4 <= threads <= 4 * _available_cores() and threads % 4 == 0
    assert stderr.count(f"{name}=1000000") == 1, stderr
    assert f"using {threads} threads" in stderr


def test_a_sane_environment_count_is_used_as_is():
    threads, stderr = _threads_in_child({"FASTCTC_NUM_THREADS": "3", "RAYON_NUM_THREADS": "9999"})
    assert threads == 3  # FASTCTC_NUM_THREADS first; RAYON_NUM_THREADS is not read then
    assert "NUM_THREADS" not in stderr
    threads, _ = _threads_in_child({"FASTCTC_NUM_THREADS": "0", "RAYON_NUM_THREADS": "2"})
    assert threads == 2  # not a positive count: the next variable


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_during_a_call_arrives_when_the_call_returns():
    """Calls are not interruptible (documented): a SIGINT sent early in a long call becomes a
    KeyboardInterrupt once the call has run to its end."""
    code = textwrap.dedent(
        """
        import os, signal, threading, time
        import numpy as np, fastctc

        fastctc.set_num_threads(1)
        T, N, C, S = 5000, 96, 30, 500
        row = np.log(np.full((1, 1, C), 1 / C, dtype=np.float32))
        lp = np.broadcast_to(row, (T, N, C))  # no memory of its own
        targets = np.resize(np.arange(1, C), (N, S))
        args = (lp, targets, [T] * N, [S] * N)
        start = time.monotonic()
        fastctc.ctc_loss(*args)
        duration = time.monotonic() - start
        threading.Timer(duration / 20, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.monotonic()
        try:
            fastctc.ctc_loss(*args)
            time.sleep(30)  # the interrupt arrives here at the latest
            print("no interrupt")
        except KeyboardInterrupt:
            print(duration, time.monotonic() - start)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    duration, interrupted_after = (float(v) for v in out.stdout.split())
    assert duration > 0.1, "the call is too short to tell"
    # Sent after 5% of the call; an interruptible call would stop about then.
    assert interrupted_after > 0.5 * duration, (duration, interrupted_after)
