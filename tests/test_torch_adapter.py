"""fastctc.torch: the drop-in replacement for torch.nn.functional.ctc_loss / nn.CTCLoss.

Parity with torch in every argument form, the true gradient (gradcheck), upstream gradients,
half precision, errors torch does not raise, double backward, torch.compile(fullgraph=True),
DistributedDataParallel, and the training example in examples/. Eager calls take a lean
autograd.Function (no custom operator), whose backward reuses the saved gradient only when the
graph is freed (retain_graph=True leaves it intact); traced calls take the custom operators,
and calls under torch.func transforms (grad, vjp, vmap) an autograd.Function around them.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import fastctc
import numpy as np
import pytest
from conftest import require_torch
from ctc_cases import assert_close_or_same_nonfinite, make_case
from reference import logits_grad_from_log_probs_grad

torch = require_torch()

import fastctc._torch_traced as fastctc_traced  # noqa: E402
import fastctc.torch as fastctc_torch  # noqa: E402
from fastctc.torch import CTCLoss, ctc_loss  # noqa: E402

F = torch.nn.functional
DTYPES = {"float64": torch.float64, "float32": torch.float32}
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}  # loss rtol and logits-grad atol
REPO = Path(__file__).resolve().parents[1]


def _lengths(values: np.ndarray, kind: str):
    if kind == "list":
        return [int(v) for v in values]
    if kind == "tuple":
        return tuple(int(v) for v in values)
    return torch.from_numpy(values.astype(kind))


def run(loss_fn, logits, targets, il, tl, upstream=None, **options):
    """Loss and logits gradient, with log_probs = log_softmax(logits)."""
    logits = logits.detach().clone().requires_grad_(True)
    loss = loss_fn(logits.log_softmax(-1), targets, il, tl, **options)
    loss.backward(torch.ones_like(loss) if upstream is None else upstream)
    return loss.detach(), logits.grad


def assert_parity(ours, theirs, dtype, upstream=None, grad_tol=None):
    """Same dtype and shape; losses within rtol TOL; logits gradients within atol TOL (or
    ``grad_tol``) times the upstream scale."""
    assert ours[0].dtype == theirs[0].dtype and ours[0].shape == theirs[0].shape
    assert ours[1].dtype == theirs[1].dtype
    scale = 1.0 if upstream is None else max(1.0, float(upstream.abs().max()))
    grad_tol = (TOL[dtype] if grad_tol is None else grad_tol) * scale
    assert_close_or_same_nonfinite(ours[0].numpy(), theirs[0].numpy(), TOL[dtype], 0, "loss")
    assert_close_or_same_nonfinite(ours[1].numpy(), theirs[1].numpy(), 0, grad_tol, "grad")


# One row per argument form: targets layout and dtype, then the form of the lengths.
FORMS = [
    ("padded", "int64", "int64"),
    ("padded", "int32", "list"),
    ("concatenated", "int64", "tuple"),
    ("concatenated", "int16", "int32"),
    ("padded", "uint8", "uint8"),
]


@pytest.mark.parametrize("form", FORMS, ids=["-".join(f) for f in FORMS])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_parity_with_torch(form, reduction, dtype, rng):
    dtype = DTYPES[dtype]
    layout, target_dtype, length_kind = form
    blank = int(rng.integers(0, 7))
    zero_infinity = bool(rng.integers(0, 2))  # with it, some targets are infeasible
    case = make_case(rng, 30, 6, 7, 10, blank=blank, feasible=not zero_infinity)
    targets = case.padded(0) if layout == "padded" else case.concatenated()
    targets = torch.from_numpy(targets.astype(target_dtype))
    il = _lengths(case.input_lengths, length_kind)
    tl = _lengths(case.target_lengths, length_kind)
    logits = torch.from_numpy(rng.normal(scale=2.0, size=case.log_probs.shape)).to(dtype)
    upstream = None
    if reduction == "none":  # a non-uniform weight per sample
        upstream = torch.from_numpy(rng.normal(size=6)).to(dtype)
    options = {"blank": blank, "reduction": reduction, "zero_infinity": zero_infinity}
    theirs = run(F.ctc_loss, logits, targets.long(), il, tl, upstream, **options)
    ours = run(ctc_loss, logits, targets, il, tl, upstream, **options)
    module = run(CTCLoss(**options), logits, targets, il, tl, upstream)
    if dtype == torch.float64:
        assert_parity(ours, theirs, dtype, upstream)
        assert_parity(module, theirs, dtype, upstream)
        return
    # torch's float32 gradient is itself off by up to ~3e-5 here (it keeps log-alpha in
    # float32): within 1e-5 of torch in float64 on the same inputs, within 1e-4 of float32.
    assert_parity(ours, theirs, dtype, upstream, grad_tol=1e-4)
    assert_parity(module, theirs, dtype, upstream, grad_tol=1e-4)
    exact = run(F.ctc_loss, logits.double(), targets.long(), il, tl, upstream, **options)
    for value in ours:
        assert value.dtype == torch.float32
    ours = tuple(value.double() for value in ours)
    assert_parity(ours, exact, dtype, upstream)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("lengths", ["int", "0-d"])
def test_parity_unbatched(reduction, lengths, rng):
    logits = torch.from_numpy(rng.normal(size=(9, 5)))
    targets = torch.tensor([1, 3, 3, 2])
    il, tl = (8, 4) if lengths == "int" else (torch.tensor(8), torch.tensor(4, dtype=torch.int32))
    t_il, t_tl = torch.tensor(8), torch.tensor(4)  # torch takes no int lengths here
    theirs = run(F.ctc_loss, logits, targets, t_il, t_tl, torch.tensor(1.7), reduction=reduction)
    ours = run(ctc_loss, logits, targets, il, tl, torch.tensor(1.7), reduction=reduction)
    assert ours[0].shape == ()
    assert_parity(ours, theirs, torch.float64, torch.tensor(1.7))


def test_non_contiguous_log_probs_and_scalar_upstream(rng):
    case = make_case(rng, 20, 4, 6, 5, min_input_length=1)
    batch_major = torch.from_numpy(rng.normal(size=(4, 20, 6)))  # (N, T, C) in memory
    targets = torch.from_numpy(case.padded(0))
    args = (targets, case.input_lengths.tolist(), case.target_lengths.tolist())
    for fn in (ctc_loss, F.ctc_loss):
        x = batch_major.clone().requires_grad_(True)
        lp = x.log_softmax(-1).transpose(0, 1)
        assert not lp.is_contiguous()
        (fn(lp, *args, reduction="sum") * -2.5).backward()
        if fn is ctc_loss:
            ours = x.grad
    assert_close_or_same_nonfinite(ours.numpy(), x.grad.numpy(), 0, 1e-10)


def test_numpy_sees_views_of_cpu_tensors(monkeypatch, rng):
    """float32 / float64 CPU tensors, contiguous or not, reach fastctc without a copy."""
    seen = {}
    original = fastctc.ctc_loss_and_grad

    def spy(log_probs, targets, input_lengths, target_lengths, *args, **kwargs):
        seen["arrays"] = (log_probs, targets, input_lengths, target_lengths)
        seen["device"] = kwargs["device"]
        return original(log_probs, targets, input_lengths, target_lengths, *args, **kwargs)

    monkeypatch.setattr(fastctc, "ctc_loss_and_grad", spy)
    for dtype in (torch.float32, torch.float64):
        lp = torch.randn(2, 10, 3, dtype=dtype).log_softmax(-1).transpose(0, 1)
        lp = lp.detach().requires_grad_(True)
        tensors = (lp, torch.tensor([[1], [1]], dtype=torch.int32), torch.tensor([10, 9]))
        tensors += (torch.tensor([1, 1], dtype=torch.int16),)
        ctc_loss(*tensors).backward()
        for array, tensor in zip(seen["arrays"], tensors, strict=True):
            assert array.__array_interface__["data"][0] == tensor.data_ptr()
            assert array.strides == tuple(s * tensor.element_size() for s in tensor.stride())
        assert seen["device"] == "cpu"


def test_device_is_passed_to_fastctc(monkeypatch):
    seen = []

    def stub(*args, device, **kwargs):
        seen.append(device)
        return np.zeros((), np.float32)

    monkeypatch.setattr(fastctc, "ctc_loss", stub)
    ctc_loss(torch.zeros(2, 1, 2), torch.tensor([[1]]), [2], [1], device="gpu")
    assert seen == ["gpu"]


def test_unknown_device_raises_value_error():
    with pytest.raises(fastctc.CTCInputError, match="device"):
        ctc_loss(torch.zeros(2, 1, 2), torch.tensor([[1]]), [2], [1], device="tpu")
    with pytest.raises(fastctc.CTCInputError, match="device"):
        CTCLoss(device="tpu")(torch.zeros(2, 1, 2), torch.tensor([[1]]), [2], [1])


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_gradcheck_with_respect_to_log_probs(reduction, rng):
    """The true gradient: passes gradcheck on log_probs directly, normalised or not."""
    case = make_case(rng, 7, 3, 4, 3, normalised=False, min_input_length=1)
    case.input_lengths[1] = 5  # frames past it must get 0
    lp = torch.from_numpy(case.log_probs).requires_grad_(True)
    args = (torch.from_numpy(case.padded(0)), case.input_lengths, case.target_lengths)
    assert torch.autograd.gradcheck(lambda x: ctc_loss(x, *args, reduction=reduction), (lp,))
    ctc_loss(lp, *args, reduction=reduction).sum().backward()
    assert (lp.grad[5:, 1] == 0).all() and (lp.grad[:5, 1].sum(-1) < 0).all()


def test_gradcheck_unbatched():
    lp = torch.randn(6, 4, dtype=torch.float64).requires_grad_(True)
    fn = lambda x: ctc_loss(x, torch.tensor([1, 2]), 6, 2, reduction="none")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (lp,))


def test_per_sample_upstream_scales_rows(rng):
    case = make_case(rng, 12, 5, 6, 4, min_input_length=1)
    lp = torch.from_numpy(case.log_probs).requires_grad_(True)
    args = (torch.from_numpy(case.padded(0)), case.input_lengths, case.target_lengths)
    weights = torch.from_numpy(rng.normal(size=5))
    ctc_loss(lp, *args, reduction="none").backward(weights)
    _, grad = fastctc.ctc_loss_and_grad(case.log_probs, case.padded(0), *args[1:], reduction="none")
    np.testing.assert_allclose(lp.grad.numpy(), grad * weights.numpy()[None, :, None])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype, rng):
    case = make_case(rng, 15, 4, 6, 5, min_input_length=1)
    logits = torch.from_numpy(rng.normal(size=case.log_probs.shape)).to(dtype)
    args = (torch.from_numpy(case.padded(0)), case.input_lengths, case.target_lengths)
    x = logits.clone().requires_grad_(True)
    lp = x.log_softmax(-1)
    loss = ctc_loss(lp, *args, reduction="none")
    loss.backward(torch.ones_like(loss))
    assert loss.dtype == dtype and lp.dtype == dtype and x.grad.dtype == dtype
    lp32 = lp.detach().float().requires_grad_(True)
    loss32 = ctc_loss(lp32, *args, reduction="none")
    loss32.sum().backward()
    torch.testing.assert_close(loss, loss32.to(dtype))
    lp_grad = torch.autograd.grad(ctc_loss(lp, *args, reduction="sum"), lp)[0]
    assert lp_grad.dtype == dtype
    torch.testing.assert_close(lp_grad, lp32.grad.to(dtype))


def test_autocast_runs_in_float32_like_torch(rng):
    case = make_case(rng, 15, 4, 6, 5, min_input_length=1)
    features = torch.from_numpy(rng.normal(size=(15, 4, 3))).float()
    args = (torch.from_numpy(case.padded(0)), case.input_lengths, case.target_lengths)
    layer = torch.nn.Linear(3, 6)
    results = []
    for fn in (F.ctc_loss, ctc_loss):
        layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            log_probs = layer(features).log_softmax(-1)
            loss = fn(log_probs, *(torch.as_tensor(a) for a in args))
        loss.backward()
        results.append((loss.detach(), layer.weight.grad.clone()))
    assert results[1][0].dtype == results[0][0].dtype == torch.float32
    torch.testing.assert_close(results[1], results[0], rtol=1e-2, atol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_are_computed_on_the_host_and_returned_on_the_device(rng):
    case = make_case(rng, 15, 4, 6, 5, min_input_length=1)
    logits = torch.from_numpy(case.log_probs)
    targets = torch.from_numpy(case.padded(0))
    args = (case.input_lengths.tolist(), torch.from_numpy(case.target_lengths))
    cpu = run(ctc_loss, logits, targets, *args)
    x = logits.cuda().requires_grad_(True)
    loss = ctc_loss(x.log_softmax(-1), targets.cuda(), *args)
    loss.backward()
    assert loss.device == x.grad.device == x.device
    torch.testing.assert_close(loss.cpu(), cpu[0])
    torch.testing.assert_close(x.grad.cpu(), cpu[1])


def test_errors_torch_does_not_raise():
    lp = torch.randn(5, 2, 4).log_softmax(-1)
    with pytest.raises(ValueError, match="targets"):  # label out of range
        ctc_loss(lp, torch.tensor([[1, 4], [2, 3]]), [5, 5], [2, 2])
    with pytest.raises(ValueError, match="targets"):  # negative label
        ctc_loss(lp, torch.tensor([[1, -1], [2, 3]]), [5, 5], [2, 2])
    with pytest.raises(ValueError, match="blank"):  # blank inside a target
        ctc_loss(lp, torch.tensor([[1, 0], [2, 3]]), [5, 5], [2, 2])
    with pytest.raises(ValueError, match="blank"):
        CTCLoss(blank=3)(lp, torch.tensor([[1, 3], [2, 1]]), [5, 5], [2, 2])
    with pytest.raises(ValueError, match="input_lengths"):
        ctc_loss(lp, torch.tensor([[1, 2], [2, 3]]), [5, 6], [2, 2])
    with pytest.raises(TypeError, match="targets"):  # torch truncates float targets
        ctc_loss(lp, torch.tensor([[1.0, 2.0], [2.0, 3.0]]), [5, 5], [2, 2])
    with pytest.raises(TypeError, match="log_probs"):
        ctc_loss(lp.to(torch.float8_e4m3fn), torch.tensor([[1, 2], [2, 3]]), [5, 5], [2, 2])
    with pytest.raises(TypeError, match="input_lengths"):
        ctc_loss(lp, torch.tensor([[1, 2], [2, 3]]), torch.tensor([5.0, 5.0]), [2, 2])
    with pytest.raises(TypeError, match="log_probs"):
        ctc_loss(lp.numpy(), torch.tensor([[1, 2], [2, 3]]), [5, 5], [2, 2])
    with pytest.raises(ValueError, match="reduction"):
        ctc_loss(lp, torch.tensor([[1, 2], [2, 3]]), [5, 5], [2, 2], reduction="avg")
    assert issubclass(fastctc.CTCInputError, ValueError)


def test_double_backward_raises_a_clear_error(rng):
    case = make_case(rng, 8, 2, 4, 3, min_input_length=1)
    lp = torch.from_numpy(case.log_probs).requires_grad_(True)
    args = (torch.from_numpy(case.padded(0)), case.input_lengths, case.target_lengths)
    loss = ctc_loss(lp, *args)
    (grad,) = torch.autograd.grad(loss, lp, create_graph=True)  # first order still works
    (expected,) = torch.autograd.grad(ctc_loss(lp, *args), lp)
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="double backward"):
        grad.pow(2).sum().backward()


def _spy_on_gradients(monkeypatch) -> list[np.ndarray]:
    """Records every gradient array fastctc returns to the adapter."""
    grads = []
    original = fastctc.ctc_loss_and_grad

    def spy(*args, **kwargs):
        loss, grad = original(*args, **kwargs)
        grads.append(grad)
        return loss, grad

    monkeypatch.setattr(fastctc, "ctc_loss_and_grad", spy)
    return grads


def _ctc_problem(rng, T=12, N=4, C=6, S=4):
    case = make_case(rng, T, N, C, S, min_input_length=1)
    args = (torch.from_numpy(case.padded(0)), case.input_lengths, case.target_lengths)
    return torch.from_numpy(case.log_probs), args


def test_eager_mode_bypasses_the_custom_operators(monkeypatch, rng):
    """Eager calls take the lean autograd.Function; the operators are for tracing only."""

    def fail(*args, **kwargs):
        raise AssertionError("a custom operator was called in eager mode")

    monkeypatch.setattr(fastctc_traced, "_ctc_loss_and_grad_op", fail)
    monkeypatch.setattr(fastctc_traced, "_ctc_loss_op", fail)
    log_probs, args = _ctc_problem(rng)
    lp = log_probs.clone().requires_grad_(True)
    loss = ctc_loss(lp, *args)
    assert type(loss.grad_fn).__name__ == "_CTCFunctionBackward"
    loss.backward()
    with torch.no_grad():
        torch.testing.assert_close(ctc_loss(lp, *args), loss.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_backward_reuses_the_saved_gradient(reduction, monkeypatch, rng):
    """Without retain_graph the gradient is handed over (upstream 1) or scaled in place: the
    tensor fastctc wrote is the one the backward returns, with the right values, and it lands
    in .grad without a copy."""
    grads = _spy_on_gradients(monkeypatch)
    log_probs, args = _ctc_problem(rng)
    _, expected = fastctc.ctc_loss_and_grad(
        log_probs.numpy(), args[0].numpy(), *args[1:], reduction=reduction
    )
    upstreams = [torch.tensor(1.0, dtype=torch.float64), torch.tensor(-2.5, dtype=torch.float64)]
    if reduction == "none":
        upstreams = [torch.ones(4, dtype=torch.float64), torch.from_numpy(rng.normal(size=4))]
    for upstream in upstreams:
        lp = log_probs.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(ctc_loss(lp, *args, reduction=reduction), lp, upstream)
        assert grad.data_ptr() == grads[-1].ctypes.data  # no copy, no new tensor
        weights = upstream.numpy()[None, :, None] if reduction == "none" else upstream.item()
        np.testing.assert_array_equal(grad.numpy(), expected * weights)
    ctc_loss(lp, *args, reduction=reduction).sum().backward()  # autograd stores it as .grad
    assert lp.grad.data_ptr() == grads[-1].ctypes.data


@pytest.mark.parametrize("upstream", ["one", "scalar", "per-sample"])
def test_retain_graph_backward_sees_an_unchanged_gradient(upstream, rng):
    """With retain_graph=True the saved gradient is neither handed out nor scaled in place:
    a second backward gives the same gradient, whatever autograd or the caller did with the
    first one (accumulation into .grad, in-place edits)."""
    log_probs, args = _ctc_problem(rng)
    reduction = "none" if upstream == "per-sample" else "sum"
    weights = {
        "one": None,
        "scalar": torch.tensor(0.75, dtype=torch.float64),
        "per-sample": torch.from_numpy(rng.normal(size=4)),
    }[upstream]
    lp = log_probs.clone().requires_grad_(True)
    loss = ctc_loss(lp, *args, reduction=reduction)
    (first,) = torch.autograd.grad(loss, lp, weights, retain_graph=True)
    expected = first.clone()
    first.mul_(100.0)  # the caller edits its gradient in place
    loss.backward(weights, retain_graph=True)
    loss.backward(weights, retain_graph=True)  # accumulates into .grad in place
    loss.backward(weights)
    torch.testing.assert_close(lp.grad, 3 * expected, rtol=1e-15, atol=0)
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward(weights)


def test_gradient_accumulated_with_another_branch(rng):
    """The loss's gradient meets another branch's at a non-leaf tensor: autograd may add in
    place into the handed-over gradient, which must not leak into a retained graph."""
    case = make_case(rng, 12, 3, 5, 4, min_input_length=1)
    targets = torch.from_numpy(case.padded(0))
    lengths = (case.input_lengths, case.target_lengths)
    logits = torch.from_numpy(rng.normal(size=case.log_probs.shape))
    results = []
    for fn in (F.ctc_loss, ctc_loss):
        x = logits.clone().requires_grad_(True)
        lp = x.log_softmax(-1)
        total = fn(lp, targets, *(torch.as_tensor(v) for v in lengths)) + lp.exp().sum()
        total.backward(retain_graph=True)
        total.backward()
        results.append(x.grad)
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-10)


def test_vmap_of_the_loss(monkeypatch, rng):
    """Under vmap, with no gradient needed, the call goes through the loss-only operator."""

    def fail(*args, **kwargs):
        raise AssertionError("the gradient was computed")

    monkeypatch.setattr(fastctc_traced, "_ctc_loss_and_grad_op", fail)
    log_probs, args = _ctc_problem(rng)
    batch = torch.stack([log_probs, log_probs * 0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no batching rule: torch warns and loops
        losses = torch.vmap(lambda lp: ctc_loss(lp, *args, reduction="sum"))(batch)
    expected = torch.stack([ctc_loss(lp, *args, reduction="sum") for lp in batch])
    torch.testing.assert_close(losses, expected, rtol=0, atol=0)


def _func_problem(rng, input_kind):
    """A float64 batch, the loss as fastctc and torch compute it from ``x`` (log-probabilities,
    or logits through log_softmax), and the reference gradient function of the weights."""
    case = make_case(rng, 10, 4, 5, 4, min_input_length=1)
    case.input_lengths[2] = 6  # frames past it get no gradient
    targets = torch.from_numpy(case.padded(0))
    lengths = (torch.from_numpy(case.input_lengths), torch.from_numpy(case.target_lengths))
    if input_kind == "log_probs":
        x, to_lp = torch.from_numpy(case.log_probs), lambda x: x
    else:
        # logits whose log_softmax is the case's log_probs
        x = torch.from_numpy(case.log_probs + rng.normal(size=(10, 4, 1)))
        to_lp = lambda x: x.log_softmax(-1)  # noqa: E731
    lp = case.log_probs

    def ours(x, reduction="mean"):
        return ctc_loss(to_lp(x), targets, *lengths, reduction=reduction)

    def theirs(x, reduction="mean"):
        return F.ctc_loss(to_lp(x), targets, *lengths, reduction=reduction)

    def reference(reduction="mean", weights=None):
        """d (weights . loss) / d x from tests/reference.py (weights: per sample, "none")."""
        g = case.reference(reduction).grad_log_probs
        if weights is not None:
            g = g * weights[None, :, None]
        return g if input_kind == "log_probs" else logits_grad_from_log_probs_grad(g, lp)

    def torch_convention(grad):
        """Our gradient in torch's convention for log_probs input (exp(lp) - gamma, which is
        what torch returns as log_probs.grad); the logits gradient as it is."""
        if input_kind == "log_probs":
            return torch.from_numpy(logits_grad_from_log_probs_grad(grad.numpy(), lp))
        return grad

    return x, ours, theirs, reference, torch_convention


@pytest.mark.parametrize("input_kind", ["log_probs", "logits"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_torch_func_grad(input_kind, reduction, rng):
    """torch.func.grad over the loss: the reference gradient, autograd's, and torch's."""
    x, ours, theirs, reference, torch_convention = _func_problem(rng, input_kind)
    grad = torch.func.grad(lambda x: ours(x, reduction))(x)
    np.testing.assert_allclose(grad.numpy(), reference(reduction), rtol=0, atol=1e-12)
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(ours(leaf, reduction), leaf)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-15)
    torch_grad = torch.func.grad(lambda x: theirs(x, reduction))(x)
    torch.testing.assert_close(torch_convention(grad), torch_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("input_kind", ["log_probs", "logits"])
def test_torch_func_vjp(input_kind, rng):
    """torch.func.vjp with per-sample weights (reduction "none"): the reference, autograd's
    and torch's vector-Jacobian products."""
    x, ours, theirs, reference, torch_convention = _func_problem(rng, input_kind)
    weights = rng.normal(size=4)
    cotangent = torch.from_numpy(weights)
    loss, vjp_fn = torch.func.vjp(lambda x: ours(x, "none"), x)
    torch.testing.assert_close(loss, theirs(x, "none"), rtol=1e-12, atol=0)
    (grad,) = vjp_fn(cotangent)
    np.testing.assert_allclose(grad.numpy(), reference("none", weights), rtol=0, atol=1e-12)
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(ours(leaf, "none"), leaf, cotangent)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-15)
    (torch_grad,) = torch.func.vjp(lambda x: theirs(x, "none"), x)[1](cotangent)
    torch.testing.assert_close(torch_convention(grad), torch_grad, rtol=0, atol=1e-12)


def test_torch_func_second_derivative_raises(rng):
    """Transforms differentiate the first-order gradient only, as autograd does."""
    x, ours, *_ = _func_problem(rng, "logits")
    with pytest.raises(RuntimeError, match="double backward"):
        torch.func.grad(lambda x: torch.func.grad(ours)(x).pow(2).sum())(x)


def test_per_sample_gradients_with_vmap_of_grad(rng):
    """vmap(grad(...)): one gradient per example, as torch's own loss gives them."""
    _, ours, theirs, *_ = _func_problem(rng, "logits")
    examples = torch.from_numpy(rng.normal(size=(3, 10, 4, 5)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no batching rule: torch warns and loops
        grads = torch.vmap(torch.func.grad(ours))(examples)
        expected = torch.vmap(torch.func.grad(theirs))(examples)
    torch.testing.assert_close(grads, expected, rtol=0, atol=1e-12)


def test_backward_through_vmap(rng):
    """A vmapped loss of a tensor that requires grad can be backpropagated (it used to find
    no autograd formula)."""
    _, ours, theirs, *_ = _func_problem(rng, "logits")
    examples = torch.from_numpy(rng.normal(size=(2, 10, 4, 5)))
    grads = []
    for loss_fn in (ours, theirs):
        x = examples.clone().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.vmap(loss_fn)(x).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-12)


def test_without_grad_only_the_loss_is_computed(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the gradient was computed")

    monkeypatch.setattr(fastctc, "ctc_loss_and_grad", fail)
    lp = torch.randn(5, 2, 4).log_softmax(-1).requires_grad_(True)
    args = (lp, torch.tensor([[1, 2], [2, 3]]), [5, 4], [2, 2])
    with torch.no_grad():
        assert ctc_loss(*args).grad_fn is None
    with torch.inference_mode():
        assert ctc_loss(*args).grad_fn is None
    assert ctc_loss(lp.detach(), *args[1:]).grad_fn is None


def test_module_is_a_drop_in_replacement():
    module = CTCLoss()
    reference = torch.nn.CTCLoss()
    assert isinstance(module, torch.nn.CTCLoss)
    assert (module.blank, module.reduction, module.zero_infinity) == (0, "mean", False)
    assert (reference.blank, reference.reduction, reference.zero_infinity) == (0, "mean", False)
    assert module.device == "cpu" and "device='cpu'" in repr(module)
    assert module.state_dict() == {}
    module = CTCLoss(2, "sum", True, device="cpu")
    assert (module.blank, module.reduction, module.zero_infinity) == (2, "sum", True)


def test_importing_fastctc_does_not_import_torch():
    code = "import sys, fastctc; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_custom_ops_pass_opcheck(rng):
    case = make_case(rng, 6, 2, 4, 3, min_input_length=1)
    lp = torch.from_numpy(case.log_probs).requires_grad_(True)
    args = (torch.from_numpy(case.padded(0)), torch.from_numpy(case.input_lengths))
    args += (torch.from_numpy(case.target_lengths), 0, "none", False, "cpu")
    torch.library.opcheck(torch.ops.fastctc.ctc_loss_and_grad, (lp, *args))
    torch.library.opcheck(torch.ops.fastctc.ctc_loss, (lp.detach(), *args))


def test_torch_compile_fullgraph(rng):
    """One small compile of a model using the loss: no graph breaks, eager results.

    The aot_eager backend runs Dynamo and AOTAutograd (which use the fake implementation and
    the registered autograd formula) without Inductor's code generation, to stay cheap.
    """
    torch._dynamo.reset()
    case = make_case(rng, 12, 3, 5, 4, min_input_length=1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.LogSoftmax(-1)).double()
    criterion = CTCLoss(reduction="none")
    targets = torch.from_numpy(case.padded(0))
    lengths = (torch.from_numpy(case.input_lengths), case.target_lengths.tolist())

    def step(features, weights):
        return (criterion(model(features), targets, *lengths) * weights).sum()

    features = torch.from_numpy(rng.normal(size=(12, 3, 4)))
    weights = torch.from_numpy(rng.normal(size=3))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (compiled, step):
        model.zero_grad()
        loss = fn(features, weights)
        loss.backward()
        results.append((loss.detach(), model[0].weight.grad.clone()))
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the loss-only operator compiles too
        torch.testing.assert_close(compiled(features, weights), results[1][0])


def test_distributed_data_parallel(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LogSoftmax(-1))
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        features = torch.randn(10, 2, 3)
        targets, lengths = torch.tensor([[1, 2, 3], [3, 3, 0]]), ([10, 8], [3, 2])
        CTCLoss()(ddp(features), targets, *lengths).backward()
        grad = model[0].weight.grad.clone()
        model.zero_grad()
        torch.nn.CTCLoss()(model(features), targets, *lengths).backward()
        torch.testing.assert_close(grad, model[0].weight.grad)
    finally:
        dist.destroy_process_group()


def _load_example():
    path = REPO / "examples" / "train_tiny_ctc.py"
    spec = importlib.util.spec_from_file_location("train_tiny_ctc", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_example_matches_torch_loss_curve():
    example = _load_example()
    ours = example.train(CTCLoss, steps=12, seed=1)
    theirs = example.train(torch.nn.CTCLoss, steps=12, seed=1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    assert ours[-1] < 0.5 * ours[0]  # it learns


def test_docstring_examples():
    import doctest

    result = doctest.testmod(fastctc_torch, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0


def test_module_exports():
    assert set(fastctc_torch.__all__) == {
        "CTCLoss",
        "TokenSpan",
        "ctc_loss",
        "forced_align",
        "merge_tokens",
    }
    assert os.path.basename(fastctc_torch.__file__) == "torch.py"
