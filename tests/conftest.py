"""Shared pytest configuration for the fastctc test suite."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import settings

# Make `import reference` / `import ctc_cases` work whatever pytest import mode is in use.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


# Keep hypothesis from writing an example database (.hypothesis/) into the work tree, and
# make CI runs (CI=true) reproducible: the same examples on every run. Locally every run
# explores new examples.
settings.register_profile("fastctc", database=None)
settings.register_profile("fastctc-ci", database=None, derandomize=True)
settings.load_profile("fastctc-ci" if os.environ.get("CI") else "fastctc")


def require_torch():
    """Import torch, or skip the calling test when it is missing.

    With FASTCTC_REQUIRE_TORCH=1 in the environment a missing torch is a failure, so a CI
    job that is meant to run the parity tests cannot silently skip them.
    """
    if os.environ.get("FASTCTC_REQUIRE_TORCH", "") == "1":
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - depends on the environment
            pytest.fail(
                f"FASTCTC_REQUIRE_TORCH=1 but torch cannot be imported: {exc}",
                pytrace=False,
            )
        return torch
    return pytest.importorskip("torch")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "long: a long-sequence test (still runs in a few seconds at most)"
    )


@pytest.fixture(scope="session")
def torch():
    """The torch module (see `require_torch`)."""
    return require_torch()


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's name, so every test is reproducible."""
    seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)
