"""PyTorch adapter: drop-in replacements for ``torch.nn.functional.ctc_loss`` and
``torch.nn.CTCLoss``.

Change one import and keep the rest of a training script::

    from fastctc.torch import CTCLoss   # instead of torch.nn.CTCLoss
    from fastctc.torch import ctc_loss  # instead of torch.nn.functional.ctc_loss

The loss and its gradient are computed by :func:`fastctc.ctc_loss_and_grad`; this module only
moves tensors to and from NumPy (views, without copies, for CPU float32/float64 tensors) and
scales the saved gradient by the upstream gradient in the backward pass. The gradient that
reaches ``log_probs`` is the true gradient ``d loss / d log_probs`` (it passes
:func:`torch.autograd.gradcheck`); through ``log_softmax`` it gives the same logits gradients as
torch's own ``ctc_loss``.

Two routes lead to the same computation:

* In eager mode (the usual case) a lean :class:`torch.autograd.Function` calls fastctc
  directly. When the graph is freed after the backward (no ``retain_graph``), the backward
  reuses the gradient saved by the forward: it hands it over as it is for an upstream gradient
  of 1 (``loss.backward()``; autograd then stores it as ``.grad`` without a copy) and scales it
  in place otherwise. With ``retain_graph=True`` or ``create_graph=True`` it returns a scaled
  copy, so that a later backward sees the saved gradient unchanged.
* While ``torch.compile`` / ``torch.export`` trace (also with ``fullgraph=True``), under
  ``torch.jit.trace`` and for tensor subclasses, the call goes through the torch custom
  operators ``fastctc::ctc_loss`` (loss only, used when no gradient is needed) and
  ``fastctc::ctc_loss_and_grad`` (loss and gradient, with a registered autograd formula),
  each with a fake implementation, so tracing sees one opaque operator and no graph break.
  Under ``torch.func`` transforms (``grad``, ``vjp``, ``jacrev``, ``vmap``), where torch does
  not run a registered autograd formula, the same operators are wrapped in an
  :class:`torch.autograd.Function` written for transforms (``setup_context``, a generated
  vmap rule); torch has no batching rule for them and loops over a vmapped batch. The
  Python layers of ``torch.library`` these operators go through cost about 90 µs more per
  forward and backward than the eager route, which is why eager mode avoids them.

Under ``torch.autocast`` both routes run in float32 and return float32, as torch's ``ctc_loss``
does.

Importing :mod:`fastctc` does not import torch; importing this module does.

>>> import torch
>>> from fastctc.torch import ctc_loss
>>> T, N, C, S = 50, 4, 20, 10
>>> logits = torch.randn(T, N, C, requires_grad=True)
>>> targets = torch.randint(1, C, (N, S))
>>> loss = ctc_loss(logits.log_softmax(2), targets, [50, 45, 40, 50], [10, 8, 10, 5])
>>> loss.backward()
>>> logits.grad.shape
torch.Size([50, 4, 20])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

import fastctc
from fastctc import _args
from fastctc._torch_align import TokenSpan, forced_align, merge_tokens

__all__ = ["CTCLoss", "TokenSpan", "ctc_loss", "forced_align", "merge_tokens"]

IntArg = Union[Tensor, Sequence[int], int, np.ndarray]  # noqa: UP007 (runtime alias, py3.10)

# Computed in float32 by fastctc, returned in the input dtype (torch's own op raises).
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_FLOAT32, _FLOAT64 = torch.float32, torch.float64
# Device types the custom operators register an autocast kernel for (eager mode mirrors them).
_AUTOCAST_DEVICES = ("cpu", "cuda")

_is_compiling = torch.compiler.is_compiling
_functorch_active = torch._C._are_functorch_transforms_active
_jit_tracing_state = torch._C._get_tracing_state
# Whether the running backward keeps the graph (retain_graph=True). Outside a backward, and on
# torch versions without the query, the answer is True: the cautious one.
_keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", lambda: True)


# --------------------------------------------------------------------------------------------
# Tensors to NumPy and back (no copies when a view is possible)
# --------------------------------------------------------------------------------------------


def _to_numpy(tensor: Tensor, name: str) -> np.ndarray:
    """A NumPy view of a CPU tensor; a host copy only when device or dtype requires one."""
    if tensor.dtype in _LOW_PRECISION:
        # Transfer first (a half tensor crosses at half the size), then widen.
        return tensor.detach().cpu().float().numpy()
    try:
        # detach().cpu().resolve_conj().resolve_neg().numpy() in one call: a view on the CPU.
        return tensor.numpy(force=True)
    except TypeError:  # a dtype NumPy lacks, such as the float8 types
        raise fastctc.CTCTypeError(f"{name}: unsupported dtype {tensor.dtype}") from None


def _to_torch(array: np.ndarray, like: Tensor, dtype: torch.dtype) -> Tensor:
    """Wraps fastctc's output (no copy), then casts it to ``dtype`` and moves it to the device
    of ``like`` only if needed."""
    tensor = torch.from_numpy(array)
    if tensor.dtype is not dtype or not like.is_cpu:
        tensor = tensor.to(device=like.device, dtype=dtype)
    return tensor


def _grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the gradient is saved in: float32 for half inputs (cast once, at the end)."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _loss_shape(log_probs: Tensor, reduction: str) -> tuple:
    if reduction == "none" and log_probs.dim() == 3:
        return (log_probs.shape[1],)
    return ()


def _per_sample(log_probs: Tensor, reduction: str) -> bool:
    """Whether the upstream gradient has one value per sample, broadcast on axis 1 of
    (T, N, C); unbatched (T, C) input gives a 0-d loss and a 0-d upstream gradient."""
    return reduction == "none" and log_probs.dim() == 3


# --------------------------------------------------------------------------------------------
# Backward: scaling the saved gradient
# --------------------------------------------------------------------------------------------


class _OnceDifferentiable(torch.autograd.Function):
    """Passes the first-order gradient through; differentiating it again raises.

    ``forward(grad, *anchors)``: the anchors (``log_probs``, under function transforms) only
    connect the result to the graph, so that a second differentiation reaches this backward.
    Written with ``setup_context`` so that it also works under ``torch.func`` transforms.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(grad: Tensor, *anchors: Tensor) -> Tensor:
        return grad.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, _):
        raise RuntimeError(
            "fastctc.torch.ctc_loss is differentiable once: its gradient has no gradient of "
            "its own, so double backward (differentiating a graph built with "
            "create_graph=True through the CTC loss) is not supported"
        )


def _once_differentiable(result: Tensor) -> Tensor:
    """Under create_graph=True: a result whose differentiation raises a clear error."""
    return _OnceDifferentiable.apply(result.detach().requires_grad_())


def _scaled(grad: Tensor, grad_loss: Tensor, per_sample: bool) -> Tensor:
    """``grad * upstream`` as a new tensor (the saved gradient is left untouched)."""
    if per_sample:
        grad_loss = grad_loss.reshape(1, -1, 1)
    return grad * grad_loss


# --------------------------------------------------------------------------------------------
# Eager mode: a lean autograd.Function
# --------------------------------------------------------------------------------------------


class _CTCFunction(torch.autograd.Function):
    """The loss, with the gradient computed in the forward and saved for the backward.

    ``log_probs`` is the only tensor input; the other arguments travel as one tuple (targets
    and lengths as NumPy views, or as the caller gave them), so that ``apply`` and the
    backward handle two inputs rather than eight.
    """

    @staticmethod
    def forward(ctx, log_probs: Tensor, args: tuple) -> Tensor:
        targets, input_lengths, target_lengths, blank, reduction, zero_infinity, device = args
        loss, grad = fastctc.ctc_loss_and_grad(
            _to_numpy(log_probs, "log_probs"),
            targets,
            input_lengths,
            target_lengths,
            blank,
            reduction,
            zero_infinity,
            device=device,
        )
        dtype = log_probs.dtype
        low_precision = dtype in _LOW_PRECISION
        ctx.save_for_backward(_to_torch(grad, log_probs, _FLOAT32 if low_precision else dtype))
        ctx.per_sample = _per_sample(log_probs, reduction)
        ctx.cast_to = dtype if low_precision else None  # the gradient is saved in float32
        return _to_torch(loss, log_probs, dtype)

    @staticmethod
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor, None]:
        (grad,) = ctx.saved_tensors
        per_sample = ctx.per_sample
        if torch.is_grad_enabled():  # create_graph=True: make a second differentiation fail
            grad = _scaled(grad, grad_loss, per_sample)
            if ctx.cast_to is not None:
                grad = grad.to(ctx.cast_to)
            return _once_differentiable(grad), None
        if _is_compiling() or _keep_graph():
            # retain_graph=True (or compiled autograd tracing this): the saved gradient is
            # needed again, so it is neither handed out nor scaled in place.
            grad = _scaled(grad, grad_loss, per_sample)
        elif per_sample:
            # The graph is freed after this call: the saved gradient is ours to give away.
            grad.mul_(grad_loss.reshape(1, -1, 1))
        elif not grad_loss.is_cpu or grad_loss.item() != 1.0:
            grad.mul_(grad_loss)
        # else: loss.backward(), an upstream gradient of 1, and nothing to scale.
        if ctx.cast_to is not None:
            grad = grad.to(ctx.cast_to)
        return grad, None


def _eager_ctc_loss(
    log_probs: Tensor,
    targets: Any,
    input_lengths: Any,
    target_lengths: Any,
    blank: Any,
    reduction: Any,
    zero_infinity: Any,
    device: Any,
) -> Tensor:
    """The eager route: fastctc validates every argument (as for NumPy input)."""
    dtype = log_probs.dtype
    if dtype is not _FLOAT32 and dtype is not _FLOAT64 and log_probs.is_floating_point():
        # What the custom operators' autocast kernels do: other floating dtypes run in float32.
        device_type = log_probs.device.type
        if device_type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device_type):
            log_probs = log_probs.float()  # differentiable: the gradient returns in dtype
    if isinstance(targets, Tensor):
        targets = _to_numpy(targets, "targets")
    if isinstance(input_lengths, Tensor):
        input_lengths = _to_numpy(input_lengths, "input_lengths")
    if isinstance(target_lengths, Tensor):
        target_lengths = _to_numpy(target_lengths, "target_lengths")
    if log_probs.requires_grad and torch.is_grad_enabled():
        args = (targets, input_lengths, target_lengths, blank, reduction, zero_infinity, device)
        return _CTCFunction.apply(log_probs, args)
    loss = fastctc.ctc_loss(
        _to_numpy(log_probs, "log_probs"),
        targets,
        input_lengths,
        target_lengths,
        blank,
        reduction,
        zero_infinity,
        device=device,
    )
    return _to_torch(loss, log_probs, log_probs.dtype)


# --------------------------------------------------------------------------------------------
# Custom operators (the traced route)
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("fastctc::ctc_loss", mutates_args=())
def _ctc_loss_op(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    blank: int,
    reduction: str,
    zero_infinity: bool,
    device: str,
) -> Tensor:
    """The CTC loss only (no gradient is computed)."""
    loss = fastctc.ctc_loss(
        _to_numpy(log_probs, "log_probs"),
        _to_numpy(targets, "targets"),
        _to_numpy(input_lengths, "input_lengths"),
        _to_numpy(target_lengths, "target_lengths"),
        blank,
        reduction,
        zero_infinity,
        device=device,
    )
    return _to_torch(loss, log_probs, log_probs.dtype)


@_ctc_loss_op.register_fake
def _ctc_loss_fake(
    log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, device
):
    return log_probs.new_empty(_loss_shape(log_probs, reduction))


@torch.library.custom_op("fastctc::ctc_loss_and_grad", mutates_args=())
def _ctc_loss_and_grad_op(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    blank: int,
    reduction: str,
    zero_infinity: bool,
    device: str,
) -> tuple[Tensor, Tensor]:
    """The CTC loss and its true gradient with respect to ``log_probs``.

    The gradient is that of the reduced loss (for ``"none"``: of ``loss.sum()``), in the dtype
    of ``log_probs`` (float32 for float16 / bfloat16 inputs).
    """
    loss, grad = fastctc.ctc_loss_and_grad(
        _to_numpy(log_probs, "log_probs"),
        _to_numpy(targets, "targets"),
        _to_numpy(input_lengths, "input_lengths"),
        _to_numpy(target_lengths, "target_lengths"),
        blank,
        reduction,
        zero_infinity,
        device=device,
    )
    return (
        _to_torch(loss, log_probs, log_probs.dtype),
        _to_torch(grad, log_probs, _grad_dtype(log_probs.dtype)),
    )


@_ctc_loss_and_grad_op.register_fake
def _ctc_loss_and_grad_fake(
    log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, device
):
    loss = log_probs.new_empty(_loss_shape(log_probs, reduction))
    grad = log_probs.new_empty(log_probs.shape, dtype=_grad_dtype(log_probs.dtype))
    return loss, grad


def _setup_context(ctx, inputs, output) -> None:
    log_probs, reduction = inputs[0], inputs[5]
    grad = output[1]
    ctx.mark_non_differentiable(grad)
    ctx.save_for_backward(grad)
    ctx.per_sample = _per_sample(log_probs, reduction)
    ctx.dtype = log_probs.dtype


def _backward(ctx, grad_loss: Tensor, _grad_of_grad: Tensor):
    # Traced by AOTAutograd, so purely functional: the saved gradient is also an output of
    # the operator, and the compiled graph decides about buffer reuse itself.
    (grad,) = ctx.saved_tensors
    result = _scaled(grad, grad_loss, ctx.per_sample).to(ctx.dtype)
    if torch.is_grad_enabled():  # create_graph=True: make a second differentiation fail
        result = _once_differentiable(result)
    return result, None, None, None, None, None, None, None


_ctc_loss_and_grad_op.register_autograd(_backward, setup_context=_setup_context)


class _CTCTransformFunction(torch.autograd.Function):
    """The route under ``torch.func`` transforms (``grad``, ``vjp``, ``vmap``, ...) when a
    gradient may be needed.

    The autograd formula registered on ``fastctc::ctc_loss_and_grad`` serves autograd and
    AOTAutograd, but torch does not run it under function transforms ("must override the
    setup_context staticmethod"). This Function wraps the same operator with the same
    formula, written as transforms require: ``forward`` without ``ctx``, ``setup_context``,
    and a generated vmap rule (the operator has no batching rule: torch loops over the
    batch). Returns ``(loss, grad)``; ``grad`` is not differentiable.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, device
    ):
        return _ctc_loss_and_grad_op(
            log_probs,
            targets,
            input_lengths,
            target_lengths,
            blank,
            reduction,
            zero_infinity,
            device,
        )

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        log_probs, reduction = inputs[0], inputs[5]
        grad = output[1]
        ctx.mark_non_differentiable(grad)
        # log_probs anchors a create_graph=True result to the graph (see _OnceDifferentiable).
        ctx.save_for_backward(grad, log_probs)
        ctx.per_sample = _per_sample(log_probs, reduction)
        ctx.dtype = log_probs.dtype

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_of_grad: Tensor):
        grad, log_probs = ctx.saved_tensors
        result = _scaled(grad, grad_loss, ctx.per_sample).to(ctx.dtype)
        if torch.is_grad_enabled():
            # torch.func.grad and vjp always build the graph of the backward: the result
            # hangs off log_probs, so that only differentiating it again raises.
            result = _OnceDifferentiable.apply(result, log_probs)
        return result, None, None, None, None, None, None, None


def _may_need_grad(tensor: Tensor) -> bool:
    """Whether a gradient may flow back to ``tensor`` under function transforms.

    A tensor vmapped by ``torch.vmap`` reports ``requires_grad=False`` even when the tensor
    it wraps requires grad, so the wrappers are looked through; where torch lacks the
    queries, the answer is the cautious True (the gradient is then computed unused).
    """
    if not torch.is_grad_enabled():
        return False
    functorch = torch._C._functorch
    is_wrapped = getattr(functorch, "is_functorch_wrapped_tensor", None)
    unwrap = getattr(functorch, "get_unwrapped", None)
    while not tensor.requires_grad:
        if is_wrapped is None or unwrap is None:
            return True
        if not is_wrapped(tensor):
            return False
        tensor = unwrap(tensor)
    return True


# Under torch.autocast, torch's ctc_loss runs in float32 and returns float32; so do these.
for _op in (_ctc_loss_op, _ctc_loss_and_grad_op):
    for _device_type in _AUTOCAST_DEVICES:
        _op.register_autocast(_device_type, cast_inputs=torch.float32)


def _index_tensor(value: object, name: str) -> Tensor:
    """Targets or lengths as a tensor (lists, tuples, ints, NumPy arrays are converted).

    Tensors are passed through unchanged, whatever their integer dtype and device; fastctc
    checks dtypes and values.
    """
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 0:
        return torch.zeros(0, dtype=torch.int64)  # torch would guess float32
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise fastctc.CTCInputError(
            f"{name}: cannot be read as an integer tensor ({error})"
        ) from None


def _traced_ctc_loss(
    log_probs: Tensor,
    targets: Any,
    input_lengths: Any,
    target_lengths: Any,
    blank: Any,
    reduction: Any,
    zero_infinity: Any,
    device: Any,
) -> Tensor:
    """The custom-operator route: arguments in the types of the operators' schemas."""
    targets = _index_tensor(targets, "targets")
    input_lengths = _index_tensor(input_lengths, "input_lengths")
    target_lengths = _index_tensor(target_lengths, "target_lengths")
    blank = _args.integer(blank, "blank")
    _args.check_str(reduction, "reduction")
    _args.check_str(device, "device")
    args = (
        log_probs,
        targets,
        input_lengths,
        target_lengths,
        blank,
        reduction,
        bool(zero_infinity),
        device,
    )
    if _functorch_active():
        if _may_need_grad(log_probs):
            return _CTCTransformFunction.apply(*args)[0]
        return _ctc_loss_op(*args)
    if torch.is_grad_enabled() and log_probs.requires_grad:
        return _ctc_loss_and_grad_op(*args)[0]
    return _ctc_loss_op(*args)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def ctc_loss(
    log_probs: Tensor,
    targets: IntArg,
    input_lengths: IntArg,
    target_lengths: IntArg,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
    *,
    device: str = "cpu",
) -> Tensor:
    """The CTC loss: a drop-in replacement for ``torch.nn.functional.ctc_loss``.

    Takes the arguments of torch's function, with the same defaults, plus ``device``.

    Parameters
    ----------
    log_probs : Tensor, shape (T, N, C) or unbatched (T, C)
        Per-frame log-probabilities, normally ``log_softmax`` outputs (not required). float32
        or float64; float16 and bfloat16 are computed in float32. Any device (non-CPU tensors
        are computed on the host) and any strides.
    targets : Tensor of int, shape (N, S) padded, or 1-D concatenated, or (S,) unbatched
        Labels in ``[0, C)``, never ``blank``. Any integer dtype and device; a list also works.
    input_lengths : Tensor, list or tuple of int, shape (N,), or an int / 0-d tensor unbatched
        Frames used per sample, each in ``[0, T]``.
    target_lengths : Tensor, list or tuple of int, shape (N,), or an int / 0-d tensor unbatched
        Labels per sample, each in ``[0, S]``.
    blank : int, default 0
        The blank class; a negative value counts from the end.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"``: per-sample losses. ``"sum"``: their sum. ``"mean"``: the batch mean of
        ``loss_n / max(target_length_n, 1)``.
    zero_infinity : bool, default False
        Replace infinite losses (impossible alignments) and their gradients by 0.
    device : {"cpu", "gpu"}, keyword-only, default "cpu"
        The fastctc backend that computes the loss (see :func:`fastctc.ctc_loss`), whatever
        the device of the tensors: ``"gpu"`` runs fastctc's wgpu shaders on tensors copied
        through the host, and the result returns to the tensors' device.

    Returns
    -------
    Tensor
        On the device and of the dtype of ``log_probs``: shape ``(N,)`` for ``"none"``
        (``()`` unbatched), else 0-d. When ``log_probs`` requires grad, it has a ``grad_fn``
        whose backward gives the true gradient with respect to ``log_probs`` (zero on frames
        past each input length), scaled by any upstream gradient. Double backward raises.

    Raises
    ------
    fastctc.CTCInputError
        (a ``ValueError``) for bad shapes, lengths, labels (out of range, or a blank inside a
        target), blank or options, including an unknown ``device``.
    fastctc.CTCTypeError
        (a ``TypeError``) for bad dtypes, such as float targets.

    Examples
    --------
    Two frames, two classes, uniform: three of the four paths spell the target ``[1]``.

    >>> import math, torch
    >>> from fastctc.torch import ctc_loss
    >>> log_probs = torch.full((2, 1, 2), math.log(0.5), dtype=torch.float64,
    ...                        requires_grad=True)
    >>> loss = ctc_loss(log_probs, torch.tensor([[1]]), [2], [1], reduction="sum")
    >>> math.isclose(loss.item(), -math.log(0.75))
    True
    >>> loss.backward()
    >>> log_probs.grad[:, 0]  # minus the posterior occupancy of each class
    tensor([[-0.3333, -0.6667],
            [-0.3333, -0.6667]], dtype=torch.float64)
    """
    if (
        not _is_compiling()
        and type(log_probs) is Tensor
        and not _functorch_active()
        and _jit_tracing_state() is None
    ):
        return _eager_ctc_loss(
            log_probs,
            targets,
            input_lengths,
            target_lengths,
            blank,
            reduction,
            zero_infinity,
            device,
        )
    if not isinstance(log_probs, Tensor):
        raise fastctc.CTCTypeError(f"log_probs: expected Tensor, got {type(log_probs).__name__}")
    return _traced_ctc_loss(
        log_probs,
        targets,
        input_lengths,
        target_lengths,
        blank,
        reduction,
        zero_infinity,
        device,
    )


class CTCLoss(torch.nn.CTCLoss):
    """The CTC loss as a module: a drop-in replacement for ``torch.nn.CTCLoss``.

    A subclass of ``torch.nn.CTCLoss`` (so ``isinstance`` checks still pass) whose forward
    calls :func:`fastctc.torch.ctc_loss`.

    Parameters
    ----------
    blank : int, default 0
        The blank class; a negative value counts from the end.
    reduction : {"mean", "sum", "none"}, default "mean"
        As in :func:`ctc_loss`.
    zero_infinity : bool, default False
        Replace infinite losses (impossible alignments) and their gradients by 0.
    device : {"cpu", "gpu"}, keyword-only, default "cpu"
        The fastctc backend, as in :func:`ctc_loss`.

    Examples
    --------
    >>> import torch
    >>> from fastctc.torch import CTCLoss
    >>> criterion = CTCLoss(blank=0, zero_infinity=True)
    >>> logits = torch.randn(30, 2, 8, requires_grad=True)
    >>> targets = torch.tensor([[1, 2, 3], [4, 4, 0]])
    >>> loss = criterion(logits.log_softmax(2), targets, [30, 25], [3, 2])
    >>> loss.backward()
    >>> bool(torch.isfinite(logits.grad).all())
    True
    """

    def __init__(
        self,
        blank: int = 0,
        reduction: str = "mean",
        zero_infinity: bool = False,
        *,
        device: str = "cpu",
    ) -> None:
        super().__init__(blank=blank, reduction=reduction, zero_infinity=zero_infinity)
        self.device = device

    def forward(
        self,
        log_probs: Tensor,
        targets: IntArg,
        input_lengths: IntArg,
        target_lengths: IntArg,
    ) -> Tensor:
        return ctc_loss(
            log_probs,
            targets,
            input_lengths,
            target_lengths,
            self.blank,
            self.reduction,
            self.zero_infinity,
            device=self.device,
        )

    def extra_repr(self) -> str:
        return (
            f"blank={self.blank}, reduction={self.reduction!r}, "
            f"zero_infinity={self.zero_infinity}, device={self.device!r}"
        )
