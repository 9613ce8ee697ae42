"""fastctc.torch's compact route (python/fastctc/_torch_compact.py) against its dense route.

The compact route gathers on the tensor's device only the columns each sample reads (the
blank and its labels), computes the compact problem and scatters the gradient back. It is
taken automatically for tensors off the CPU; ``FASTCTC_TORCH_COMPACT=1`` forces it here, so
every test runs a call twice, dense (``=0``) and compact (``=1``), and requires the same
losses and gradients (to float rounding), the same NaN and infinities, and the same errors.
"""

from __future__ import annotations

import os

import fastctc
import numpy as np
import pytest
from conftest import require_torch
from ctc_cases import assert_close_or_same_nonfinite, make_case

torch = require_torch()

import fastctc._torch_compact as compact_route  # noqa: E402
from fastctc import _core  # noqa: E402
from fastctc.torch import ctc_loss  # noqa: E402

DTYPES = {"float64": torch.float64, "float32": torch.float32}
# The two routes run the same kernels on the same values: rounding differences at most.
RTOL = {torch.float64: 1e-12, torch.float32: 1e-6}
ATOL = {torch.float64: 1e-12, torch.float32: 1e-6}
ROUTES = {"dense": "0", "compact": "1"}


@pytest.fixture
def spy(monkeypatch):
    """Records the shape of every log_probs array the compact route hands the core (the
    dense route calls the core through fastctc.ctc_loss_and_grad's own reference)."""
    shapes = []
    real = _core.ctc

    def recording(log_probs, *args):
        shapes.append(log_probs.shape)
        return real(log_probs, *args)

    monkeypatch.setattr(_core, "ctc", recording)
    return shapes


def both_routes(monkeypatch, call, *args, **kwargs):
    """``call(*args, **kwargs)`` on the dense route, then on the compact route."""
    results = {}
    for route, setting in ROUTES.items():
        monkeypatch.setenv(compact_route.ENV, setting)
        results[route] = call(*args, **kwargs)
    return results["dense"], results["compact"]


def assert_same(dense, compact, dtype, what):
    for i, (a, b) in enumerate(zip(dense, compact, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape, (what, i, a, b)
        a, b = a.detach().double().numpy(), b.detach().double().numpy()
        assert_close_or_same_nonfinite(b, a, RTOL[dtype], ATOL[dtype], f"{what}[{i}]")


def loss_and_grads(log_probs, targets, il, tl, upstream=None, **options):
    """The loss, its gradient w.r.t. log_probs, and w.r.t. logits through log_softmax."""
    leaf = log_probs.detach().clone().requires_grad_(True)
    loss = ctc_loss(leaf, targets, il, tl, **options)
    loss.backward(torch.ones_like(loss) if upstream is None else upstream)
    logits = log_probs.detach().clone().requires_grad_(True)
    loss_via_softmax = ctc_loss(logits.log_softmax(-1), targets, il, tl, **options)
    loss_via_softmax.backward(torch.ones_like(loss) if upstream is None else upstream)
    return loss.detach(), leaf.grad, logits.grad


def mixed_case(rng, frames=24, batch=7, classes=13, max_target=9, blank=0):
    """Repeated labels, empty targets, an empty input and impossible targets in one batch."""
    case = make_case(rng, frames, batch, classes, max_target, blank, feasible=False)
    case.input_lengths[1] = 0  # no frames: loss 0 or inf
    case.targets[2] = []  # an empty target on some frames
    case.targets[3] = [case.targets[3][0]] * 3 if case.targets[3] else [1, 1, 1]
    if blank % classes == 1:
        case.targets[3] = [2, 2, 2]
    case.target_lengths = np.array([len(t) for t in case.targets], dtype=np.int64)
    return case


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("zero_infinity", [False, True])
@pytest.mark.parametrize("form", ["padded", "concatenated"])
def test_compact_route_matches_the_dense_route(
    reduction, dtype, zero_infinity, form, rng, monkeypatch, spy
):
    dtype = DTYPES[dtype]
    for blank in (0, -1, 5):
        case = mixed_case(rng, blank=blank)
        lp = torch.from_numpy(case.log_probs).to(dtype)
        targets = torch.from_numpy(case.padded(0) if form == "padded" else case.concatenated())
        il, tl = torch.from_numpy(case.input_lengths), case.target_lengths.tolist()
        upstream = torch.from_numpy(rng.normal(size=7)).to(dtype) if reduction == "none" else None
        options = {"blank": blank, "reduction": reduction, "zero_infinity": zero_infinity}
        dense, compact = both_routes(
            monkeypatch, loss_and_grads, lp, targets, il, tl, upstream, **options
        )
        assert_same(dense, compact, dtype, f"blank {blank}")
        # The compact route ran, on one column per distinct label of the widest sample.
        widest = 1 + max(len(set(t)) for t in case.targets)
        assert spy and all(shape == (24, 7, widest) for shape in spy)
        spy.clear()


def test_loss_only_calls_match(rng, monkeypatch, spy):
    case = mixed_case(rng)
    lp = torch.from_numpy(case.log_probs).requires_grad_(True)
    args = (torch.from_numpy(case.padded(0)), case.input_lengths, case.target_lengths)

    def call(grad_mode):
        with grad_mode():
            return (ctc_loss(lp.detach(), *args, reduction="none"),)

    for grad_mode in (torch.no_grad, torch.enable_grad):
        dense, compact = both_routes(monkeypatch, call, grad_mode)
        assert_same(dense, compact, torch.float64, "loss")
    assert len(spy) == 2


def test_nan_and_neg_inf_entries(rng, monkeypatch):
    """A NaN the loss reads makes its sample's rows NaN in every class (as dense); a NaN in a
    class it does not read changes nothing; -inf entries give 0."""
    case = make_case(rng, 20, 4, 9, 5, min_input_length=12, neg_inf_fraction=0.05)
    case.targets = [[1, 2, 2], [3], [4, 5], []]
    case.target_lengths = np.array([3, 1, 2, 0])
    lp = case.log_probs.copy()
    lp[3, 0, 8] = np.nan  # sample 0 never reads class 8
    lp[2, 1, 0] = np.nan  # sample 1 reads the blank
    lp = torch.from_numpy(lp)
    args = (torch.from_numpy(case.padded(0)), case.input_lengths, case.target_lengths)
    for reduction in ("none", "mean"):
        dense, compact = both_routes(monkeypatch, loss_and_grads, lp, *args, reduction=reduction)
        assert_same(dense, compact, torch.float64, reduction)
    assert torch.isnan(compact[1][: case.input_lengths[1], 1]).all()
    assert not torch.isnan(compact[1][:, 0]).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_and_autocast(dtype, rng, monkeypatch):
    case = mixed_case(rng)
    args = (torch.from_numpy(case.padded(0)), case.input_lengths, case.target_lengths)
    features = torch.from_numpy(rng.normal(size=(24, 7, 5))).float()
    layer = torch.nn.Linear(5, 13)

    def half_input():  # computed in float32, returned in the half dtype
        return loss_and_grads(torch.from_numpy(case.log_probs).to(dtype), *args, reduction="sum")

    def autocast():  # float32 loss, gradients through the autocast graph
        layer.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = ctc_loss(layer(features).log_softmax(-1), *args, zero_infinity=True)
        loss.backward()
        return loss.detach(), layer.weight.grad.clone(), layer.bias.grad.clone()

    for call in (half_input, autocast):
        dense, compact = both_routes(monkeypatch, call)
        assert_same(dense, compact, torch.float32, call.__name__)


def test_unbatched_input(rng, monkeypatch):
    case = make_case(rng, 16, 1, 7, 5, min_input_length=10)
    lp = torch.from_numpy(case.log_probs[:, 0])
    target = torch.tensor(case.targets[0], dtype=torch.int32)
    for reduction in ("none", "mean"):
        lengths = (int(case.input_lengths[0]), len(target))
        dense, compact = both_routes(
            monkeypatch, loss_and_grads, lp, target, *lengths, reduction=reduction
        )
        assert compact[0].shape == () and compact[1].shape == (16, 7)
        assert_same(dense, compact, torch.float64, reduction)


def test_strided_input_and_a_vocabulary_much_larger_than_the_targets(rng, monkeypatch):
    """A batch-first tensor seen as (T, N, C), and C = 500 classes for targets of 6 labels."""
    case = make_case(rng, 30, 5, 500, 6, min_input_length=15)
    batch_first = torch.from_numpy(np.ascontiguousarray(case.log_probs.transpose(1, 0, 2)))
    lp = batch_first.transpose(0, 1).float()
    args = (torch.from_numpy(case.padded(0)), case.input_lengths, case.target_lengths)
    dense, compact = both_routes(monkeypatch, lambda: loss_and_grads(lp, *args))
    assert_same(dense, compact, torch.float32, "strided")


def test_against_torch_in_float64(rng, monkeypatch):
    """The compact route against torch's own ctc_loss (logits gradients, float64)."""
    monkeypatch.setenv(compact_route.ENV, "1")
    case = mixed_case(rng)
    logits = torch.from_numpy(case.log_probs).requires_grad_(True)
    args = (torch.from_numpy(case.padded(0)), case.input_lengths, case.target_lengths)
    results = []
    for fn in (ctc_loss, torch.nn.functional.ctc_loss):
        logits.grad = None
        loss = fn(logits.log_softmax(-1), *(torch.as_tensor(a) for a in args), reduction="sum")
        loss.backward()
        results.append((loss.detach(), logits.grad.clone()))
    assert_same(results[1], results[0], torch.float64, "torch")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"targets": [[1, 13, 2]] * 7}, "label 13 at sample 0, position 1 is outside"),
        ({"targets": [[1, 0, 2]] * 7}, "position 1 is the blank"),
        ({"blank": 13}, "blank"),
        ({"input_lengths": [25] * 7}, "input_lengths"),
        ({"target_lengths": [4] * 7}, "target_lengths"),
        ({"input_lengths": [3] * 6}, "input_lengths"),
        ({"reduction": "average"}, "reduction"),
        ({"device": "tpu"}, "device"),
        ({"targets": [[1.0, 2.0, 3.0]] * 7}, "integers"),
        ({"log_probs": torch.zeros(24, 7, 13, dtype=torch.int32)}, "dtype"),
        ({"log_probs": torch.zeros(24, 0, 13)}, "N"),
    ],
)
def test_bad_input_raises_what_the_dense_route_raises(change, message, monkeypatch):
    arguments = {
        "log_probs": torch.zeros(24, 7, 13),
        "targets": [[1, 2, 3]] * 7,
        "input_lengths": [24] * 7,
        "target_lengths": [3] * 7,
        "blank": 0,
        "reduction": "mean",
        "zero_infinity": False,
        "device": "cpu",
    }
    arguments.update(change)
    if isinstance(arguments["targets"], list):
        arguments["targets"] = torch.tensor(arguments["targets"])
    raised = []
    for setting in ROUTES.values():
        monkeypatch.setenv(compact_route.ENV, setting)
        with pytest.raises((fastctc.CTCInputError, fastctc.CTCTypeError)) as info:
            ctc_loss(**arguments)
        raised.append((type(info.value), str(info.value)))
    assert raised[0] == raised[1]
    assert message in raised[0][1]


def test_columns_hold_each_samples_classes_once(rng):
    """``columns`` against a per-sample construction: the blank first, then the sample's
    distinct labels in order, then distinct unread classes; labels map back to themselves."""
    for blank, classes in ((0, 9), (4, 9), (8, 9), (0, 2), (0, 1)):
        case = make_case(rng, 10, 6, classes, 7, blank, feasible=False)
        labels = case.concatenated().astype(np.uint32)
        index, compact = compact_route.columns(blank, labels, case.target_lengths, classes)
        width = 1 + max(len(set(t)) for t in case.targets)
        assert index.shape == (6, width)
        offsets = np.concatenate([[0], np.cumsum(case.target_lengths)])
        for n, target in enumerate(case.targets):
            row = index[n].tolist()
            needed = [blank, *sorted(set(target))]
            assert row[: len(needed)] == needed
            assert len(set(row)) == width and all(0 <= c < classes for c in row)
            mapped = compact[offsets[n] : offsets[n + 1]]
            assert [row[k] for k in mapped] == target


def test_the_route_is_chosen_by_device_and_environment(monkeypatch):
    monkeypatch.delenv(compact_route.ENV, raising=False)
    cpu, meta = torch.zeros(1), torch.zeros(1, device="meta")
    assert not compact_route.wanted(cpu) and compact_route.wanted(meta)
    monkeypatch.setenv(compact_route.ENV, "1")
    assert compact_route.wanted(cpu) and compact_route.wanted(meta)
    monkeypatch.setenv(compact_route.ENV, "0")
    assert not compact_route.wanted(cpu) and not compact_route.wanted(meta)


def test_torch_func_transforms(rng, monkeypatch, spy):
    """Under torch.func transforms the custom operators run, and take the compact route too."""
    case = mixed_case(rng)
    lp = torch.from_numpy(case.log_probs)
    args = (torch.from_numpy(case.padded(0)), case.input_lengths, case.target_lengths)

    weights = torch.from_numpy(rng.normal(size=7))

    def transforms():
        grad = torch.func.grad(lambda x: ctc_loss(x, *args, zero_infinity=True))(lp)
        loss, vjp = torch.func.vjp(lambda x: ctc_loss(x, *args, reduction="none"), lp)
        return grad, loss, vjp(weights)[0]

    dense, compact = both_routes(monkeypatch, transforms)
    assert_same(dense, compact, torch.float64, "torch.func")
    assert len(spy) == 2


def test_torch_compile_fullgraph(rng, monkeypatch, spy):
    """A compiled step (Dynamo and AOTAutograd, aot_eager backend) with the custom operators
    on the compact route, against the same step compiled on the dense route."""
    case = mixed_case(rng)
    model = torch.nn.Sequential(torch.nn.Linear(4, 13), torch.nn.LogSoftmax(-1)).double()
    targets = torch.from_numpy(case.padded(0))
    lengths = (torch.from_numpy(case.input_lengths), case.target_lengths.tolist())
    features = torch.from_numpy(rng.normal(size=(24, 7, 4)))
    weights = torch.from_numpy(rng.normal(size=7))

    def step(features, weights):
        losses = ctc_loss(model(features), targets, *lengths, reduction="none")
        return (losses.nan_to_num(posinf=0.0) * weights).sum()

    def compiled():
        torch._dynamo.reset()
        model.zero_grad()
        loss = torch.compile(step, fullgraph=True, backend="aot_eager")(features, weights)
        loss.backward()
        return loss.detach(), model[0].weight.grad.clone()

    dense, compact = both_routes(monkeypatch, compiled)
    assert_same(dense, compact, torch.float64, "compiled")
    assert spy


def test_custom_operators_pass_opcheck_on_the_compact_route(rng, monkeypatch):
    monkeypatch.setenv(compact_route.ENV, "1")
    case = mixed_case(rng)
    lp = torch.from_numpy(case.log_probs).requires_grad_(True)
    args = (torch.from_numpy(case.padded(0)), torch.from_numpy(case.input_lengths))
    args += (torch.from_numpy(case.target_lengths), 0, "none", True, "cpu")
    torch.library.opcheck(torch.ops.fastctc.ctc_loss_and_grad, (lp, *args))
    torch.library.opcheck(torch.ops.fastctc.ctc_loss, (lp.detach(), *args))


def test_gpu_backend(rng, monkeypatch):
    """device="gpu" (fastctc's wgpu backend) on the compact problem, against the dense one."""
    if fastctc.gpu_info() is None:
        if os.environ.get("FASTCTC_REQUIRE_GPU", "") == "1":
            pytest.fail("FASTCTC_REQUIRE_GPU=1 but there is no GPU adapter", pytrace=False)
        pytest.skip("no GPU adapter")
    case = mixed_case(rng)
    lp = torch.from_numpy(case.log_probs).float()
    args = (torch.from_numpy(case.padded(0)), case.input_lengths, case.target_lengths)
    options = {"reduction": "none", "zero_infinity": True, "device": "gpu"}
    dense, compact = both_routes(monkeypatch, loss_and_grads, lp, *args, **options)
    assert_same(dense, compact, torch.float32, "gpu")
