"""Every instruction-set level the CPU kernels are compiled for gives the reference's results.

The kernels pick the widest vectors the CPU has (AVX-512, AVX2, or the baseline) once per
process; ``FASTCTC_SIMD`` lowers the choice. Each level runs in a fresh interpreter on the
same inputs (including ``-inf`` emissions, repeated labels and an impossible target), and is
checked against the float64 NumPy reference here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import fastctc
import numpy as np
import pytest
from ctc_cases import make_case

CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import fastctc

    data = dict(np.load(sys.argv[1]))
    out = {}
    for dtype in ("float32", "float64"):
        for grad_wrt in ("log_probs", "logits"):
            loss, grad = fastctc.ctc_loss_and_grad(
                data["log_probs"].astype(dtype), data["targets"], data["input_lengths"],
                data["target_lengths"], reduction="none", grad_wrt=grad_wrt,
            )
            out[f"loss_{dtype}_{grad_wrt}"] = loss
            out[f"grad_{dtype}_{grad_wrt}"] = grad
        out[f"forward_{dtype}"] = fastctc.ctc_loss(
            data["log_probs"].astype(dtype), data["targets"], data["input_lengths"],
            data["target_lengths"], reduction="none",
        )
    np.savez(sys.argv[2], **out)
    """
)


def levels() -> list[str]:
    found = ["baseline"]
    features = fastctc.simd_features()
    if "avx2" in features and "fma" in features:
        found.append("avx2")
    if "avx512f" in features:
        found.append("avx512")
    return found


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    rng = np.random.default_rng(31)
    case = make_case(rng, 70, 6, 9, 25, neg_inf_fraction=0.02, min_input_length=20)
    # One target that cannot fit: its loss is inf and its gradient NaN.
    targets = case.padded()
    input_lengths = case.input_lengths.copy()
    input_lengths[0] = 3
    target_lengths = case.target_lengths.copy()
    target_lengths[0] = 5
    targets[0, :5] = [1, 2, 3, 4, 5]
    # A NaN read (the blank, early): that sample's loss and gradient are NaN.
    log_probs = case.log_probs.copy()
    log_probs[2, 1, case.blank] = np.nan
    path = tmp_path_factory.mktemp("simd") / "problem.npz"
    arrays = dict(
        log_probs=log_probs,
        targets=targets,
        input_lengths=input_lengths,
        target_lengths=target_lengths,
    )
    np.savez(path, **arrays)
    reference_targets = [list(targets[n, : target_lengths[n]]) for n in range(len(targets))]
    case.targets = reference_targets
    case.input_lengths = input_lengths
    case.target_lengths = target_lengths
    case.log_probs = log_probs
    return path, case


@pytest.mark.parametrize("groups", ["auto", "never"])
@pytest.mark.parametrize("level", levels())
def test_level_matches_reference(level, groups, problem, tmp_path):
    # "never": every sample through the per-sample kernel (its frame reads have their own
    # AVX-512 and AVX2 code).
    path, case = problem
    out_path = tmp_path / "out.npz"
    env = dict(os.environ, FASTCTC_SIMD=level, FASTCTC_GROUPS=groups)
    subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(out_path)], env=env, check=True, timeout=120
    )
    out = np.load(out_path)
    ref = case.reference(reduction="none")
    finite = np.isfinite(ref.sample_losses)
    assert not finite[0] and np.isnan(ref.sample_losses[1]) and finite.sum() >= 3
    tolerances = {"float64": (1e-10, 1e-10), "float32": (2e-6, 2e-5)}
    for dtype, (rtol, atol) in tolerances.items():
        np.testing.assert_allclose(
            out[f"forward_{dtype}"], ref.sample_losses, rtol=rtol, equal_nan=True
        )
        for grad_wrt, want in (("log_probs", ref.grad_log_probs), ("logits", ref.grad_logits)):
            loss = out[f"loss_{dtype}_{grad_wrt}"]
            grad = out[f"grad_{dtype}_{grad_wrt}"]
            np.testing.assert_allclose(loss, ref.sample_losses, rtol=rtol, equal_nan=True)
            # The NaN sample's gradient is NaN on all its frames (README: Semantics).
            assert np.all(np.isnan(grad[: case.input_lengths[1], 1]))
            others = [n for n in range(grad.shape[1]) if n != 1]
            np.testing.assert_allclose(
                grad[:, others], want[:, others], rtol=rtol, atol=atol, equal_nan=True
            )
