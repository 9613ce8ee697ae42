"""Very negative finite log-probabilities (issue 15, item 1).

Masking with a huge negative value (``finfo.min`` in the logits, or in the log-probabilities
themselves) must act like the zero probability it stands for: the loss, the gradient, the
posteriors and the alignment equal the float64 reference (``tests/reference.py``, brute
force for the alignment) for values down to the type's most negative finite value, in both
CPU kernels (per sample, and short samples in groups: ``FASTCTC_GROUPS``) and for both input
kinds; ``device="gpu"`` stays finite on the same inputs. Before the fix float32 gave NaN
gradient rows from about -2e21 down, wrong losses between about -3e6 and -5e7, and float64
NaN losses from about -4e40 down. A sample every path of which runs through such a value
keeps a finite loss and gradient; the masked-logits training case through ``fastctc.torch``
gives torch's gradient (float64).
"""

from __future__ import annotations

import itertools
import os

import fastctc
import numpy as np
import pytest
from reference import collapse, ctc_reference, log_softmax

VALUES = {
    np.float32: [-1e5, -3e6, -1e7, -2e21, -1e30, float(np.finfo(np.float32).min)],
    np.float64: [-1e5, -1e7, -3e15, -2e21, -4e40, -1e300, float(np.finfo(np.float64).min)],
}
CASES = [(dtype, v) for dtype, values in VALUES.items() for v in values]
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-10}
# (T, N, C), the blank is 0. Each sample's labels; none of them, nor the blank, is masked at
# every frame, so every sample keeps paths of ordinary probability.
T, C = 8, 5
TARGETS = [[1, 2], [2, 2], [3, 1, 4], [1], [], [4, 3, 3]]
INPUT_LENGTHS = [8, 7, 8, 5, 6, 8]


@pytest.fixture(params=["never", "always"])
def groups(request, monkeypatch):
    """Every sample through the per-sample kernel, or every short sample in a group."""
    monkeypatch.setenv("FASTCTC_GROUPS", request.param)
    return request.param


def masked_input(seed: int, dtype, value: float, input_kind: str):
    """The input in ``dtype`` and the reference's float64 log-probabilities of it: random
    logits with about one non-blank class in three replaced by ``value`` on each frame (in
    the logits, or in the log-probabilities for ``input_kind="log_probs"``)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(T, len(TARGETS), C)) * 2.0
    mask = np.zeros(logits.shape, dtype=bool)
    for t, n in itertools.product(range(T), range(len(TARGETS))):
        if rng.random() < 0.6:
            mask[t, n, 1 + rng.integers(C - 1)] = True
    if input_kind == "logits":
        x = np.where(mask, value, logits).astype(dtype)
        return x, log_softmax(x.astype(np.float64))
    lp = log_softmax(np.where(mask, -np.inf, logits))
    x = np.where(mask, value, lp).astype(dtype)
    return x, x.astype(np.float64)


def padded(targets):
    out = np.ones((len(targets), max(map(len, targets))), dtype=np.int64)
    for n, target in enumerate(targets):
        out[n, : len(target)] = target
    return out


def gpu_available() -> bool:
    if fastctc.gpu_info() is not None:
        return True
    if os.environ.get("FASTCTC_REQUIRE_GPU", "") == "1":
        pytest.fail("FASTCTC_REQUIRE_GPU=1 but there is no GPU adapter", pytrace=False)
    return False


@pytest.mark.parametrize("grad_wrt", ["log_probs", "logits"])
@pytest.mark.parametrize("input_kind", ["log_probs", "logits"])
@pytest.mark.parametrize("dtype, value", CASES)
def test_loss_gradient_and_posteriors_match_reference(dtype, value, input_kind, grad_wrt, groups):
    x, ref_lp = masked_input(int(np.log10(-value) * 7), dtype, value, input_kind)
    args = (x, padded(TARGETS), INPUT_LENGTHS, [len(t) for t in TARGETS])
    ref = ctc_reference(ref_lp, TARGETS, INPUT_LENGTHS, args[3], reduction="none")
    assert np.all(ref.sample_losses < 100), "a sample runs through a masked entry"
    want_grad = ref.grad_log_probs if grad_wrt == "log_probs" else ref.grad_logits
    tol = TOLERANCE[dtype]

    options = {"reduction": "none", "input_kind": input_kind}
    loss, grad = fastctc.ctc_loss_and_grad(*args, grad_wrt=grad_wrt, **options)
    np.testing.assert_allclose(loss, ref.loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, want_grad, rtol=tol, atol=tol)
    losses, gamma = fastctc.ctc_posteriors(*args, input_kind=input_kind)
    np.testing.assert_allclose(losses, ref.loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(gamma, -ref.grad_log_probs, rtol=tol, atol=tol)

    if gpu_available() and (dtype == np.float32 or fastctc.gpu_info()["shader_f64"]):
        loss, grad = fastctc.ctc_loss_and_grad(*args, grad_wrt=grad_wrt, device="gpu", **options)
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
        np.testing.assert_allclose(loss, ref.loss, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-4)
        _, gamma = fastctc.ctc_posteriors(*args, input_kind=input_kind, device="gpu")
        assert np.all(np.isfinite(gamma))


def best_path(lp: np.ndarray, target: list[int]):
    """Brute force over every path: the best score and path collapsing to ``target``."""
    best, where = -np.inf, None
    for path in itertools.product(range(lp.shape[1]), repeat=lp.shape[0]):
        if collapse(path, 0) == target:
            with np.errstate(over="ignore"):  # two finfo(float64).min: -inf, never the best
                score = sum(lp[t, c] for t, c in enumerate(path))
            if score > best:
                best, where = score, path
    return best, where


@pytest.mark.parametrize("input_kind", ["log_probs", "logits"])
@pytest.mark.parametrize("dtype, value", CASES)
def test_alignment_matches_brute_force(dtype, value, input_kind):
    x, ref_lp = masked_input(int(np.log10(-value) * 11), dtype, value, input_kind)
    # Brute force is C**T: the first 6 frames of the first 4 samples.
    x, ref_lp = x[:6, :4], ref_lp[:6, :4]
    targets = TARGETS[:4]
    lengths = [min(6, v) for v in INPUT_LENGTHS[:4]]
    result = fastctc.ctc_align(
        x, padded(targets), lengths, [len(t) for t in targets], input_kind=input_kind
    )
    for n, target in enumerate(targets):
        score, path = best_path(ref_lp[: lengths[n], n], target)
        assert np.isfinite(score) and result.ok[n]
        # float32 logits: the log-sum-exp uses a float32-grade exp (relative error 1e-9).
        tol = 1e-12 if dtype == np.float64 else 1e-8
        np.testing.assert_allclose(result.path_scores[n], score, rtol=tol, atol=tol)
        assert result.labels[n, : lengths[n]].tolist() == list(path)
        assert np.all(np.isfinite(result.scores[n, : lengths[n]]))


@pytest.mark.parametrize(
    "dtype, value",
    [(np.float32, -1e7), (np.float32, float(np.finfo(np.float32).min)), (np.float64, -1e300)],
)
def test_every_path_through_a_huge_value_stays_finite(dtype, value, groups):
    """Label 2 has ``value`` on every frame: the loss is the reference's to the type's
    precision (both lose what lies below ``value``'s resolution; the reference's occupancies
    no longer sum to 1 there, so only the gradient's rows are checked), the gradient finite
    with each row of ``-gamma`` summing to -1."""
    lp = log_softmax(np.random.default_rng(5).normal(size=(6, 2, 4)))
    lp[:, :, 2] = value
    x = lp.astype(dtype)
    # Label 2 once per target: a loss of twice finfo(float32).min would overflow float32.
    targets, lengths = [[1, 2], [3, 2, 1]], [6, 6]
    ref = ctc_reference(x.astype(np.float64), targets, lengths, [2, 3], reduction="none")
    loss, grad = fastctc.ctc_loss_and_grad(
        x, padded(targets), lengths, [2, 3], reduction="none", grad_wrt="log_probs"
    )
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    assert np.all(np.isfinite(ref.loss)) and np.all(ref.loss > 1e6)
    np.testing.assert_allclose(loss, ref.loss, rtol=rtol)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad.sum(axis=2), -1.0, atol=1e-5)
    if gpu_available() and (dtype == np.float32 or fastctc.gpu_info()["shader_f64"]):
        loss, grad = fastctc.ctc_loss_and_grad(
            x, padded(targets), lengths, [2, 3], reduction="none", device="gpu"
        )
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_masked_logits_train_like_torch(dtype, groups, torch):
    """The training case: logits masked with the most negative float, then log_softmax and
    fastctc.torch.ctc_loss. No NaN, and torch's float64 gradient of the same inputs."""
    import fastctc.torch as fastctc_torch

    torch_dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(T, len(TARGETS), C, generator=gen, dtype=torch_dtype)
    x[2, 0, 3] = torch.finfo(torch_dtype).min
    x[5, :, 4] = torch.finfo(torch_dtype).min
    x[0, 1, 1] = torch.finfo(torch_dtype).min
    targets = torch.tensor(padded(TARGETS))
    lengths = (torch.tensor(INPUT_LENGTHS), torch.tensor([len(t) for t in TARGETS]))

    ours = x.clone().requires_grad_()
    loss = fastctc_torch.ctc_loss(ours.log_softmax(-1), targets, *lengths)
    loss.backward()
    theirs = x.double().requires_grad_()
    want = torch.nn.functional.ctc_loss(theirs.log_softmax(-1), targets, *lengths)
    want.backward()
    assert torch.isfinite(loss) and torch.isfinite(ours.grad).all()
    tol = 1e-5 if dtype == "float32" else 1e-12
    torch.testing.assert_close(loss.double(), want.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(ours.grad.double(), theirs.grad, rtol=tol, atol=tol)
