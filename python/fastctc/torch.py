"""PyTorch adapter: drop-in replacements for ``torch.nn.functional.ctc_loss`` and
``torch.nn.CTCLoss``.

Change one import and keep the rest of a training script::

    from fastctc.torch import CTCLoss   # instead of torch.nn.CTCLoss
    from fastctc.torch import ctc_loss  # instead of torch.nn.functional.ctc_loss

The loss and its gradient are computed by :func:`fastctc.ctc_loss_and_grad`; this module only
moves tensors to and from NumPy (views, without copies, for CPU float32/float64 tensors) and
scales the saved gradient by the upstream gradient in the backward pass. A tensor off the CPU
takes the compact route (:mod:`fastctc._torch_compact`): only the columns each sample reads,
gathered on its device, cross to the host, and the gradient is scattered back on the device
(``FASTCTC_TORCH_COMPACT=1`` forces the route for CPU tensors, ``0`` turns it off). The
gradient that reaches ``log_probs`` is the true gradient ``d loss / d log_probs`` (it passes
:func:`torch.autograd.gradcheck`); through ``log_softmax`` it gives the same logits gradients
as torch's own ``ctc_loss``.

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

Importing this module lets fastctc's CPU backend run its batches on torch's own OpenMP threads
(the calling thread's team) instead of its pool, in this process. Right after the model's CPU
operators those threads keep spinning for milliseconds, waiting for work, and a second pool
would compete with them for the cores: on a 2-core VM the loss ran at 11.5 ms right after a
small model's forward and backward instead of 6.2 ms alone. On torch's threads it runs as
fast as alone. ``FASTCTC_OPENMP_TEAM=0`` (read at import) keeps fastctc's pool. The team has
``min(fastctc.get_num_threads(), torch.get_num_threads())`` threads.

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

import os
from typing import Any

import torch
from torch import Tensor

import fastctc
from fastctc import _core, _torch_compact
from fastctc._torch_align import TokenSpan, forced_align, merge_tokens
from fastctc._torch_common import (
    _AUTOCAST_DEVICES,
    _FLOAT32,
    _FLOAT64,
    _LOW_PRECISION,
    IntArg,
    _functorch_active,
    _is_compiling,
    _jit_tracing_state,
    _keep_graph,
    _once_differentiable,
    _per_sample,
    _scaled,
    _to_numpy,
    _to_torch,
)
from fastctc._torch_traced import _traced_ctc_loss

__all__ = ["CTCLoss", "TokenSpan", "ctc_loss", "forced_align", "merge_tokens"]


def _share_torch_threads() -> bool:
    """Runs fastctc's CPU batches on torch's OpenMP threads (see the module docstring) unless
    ``FASTCTC_OPENMP_TEAM=0``; returns whether they do."""
    if os.environ.get("FASTCTC_OPENMP_TEAM", "").strip() == "0":
        return False
    return torch.backends.openmp.is_available() and _core.use_openmp_team(True)


_share_torch_threads()


class _CTCFunction(torch.autograd.Function):
    """The loss, with the gradient computed in the forward and saved for the backward.

    ``log_probs`` is the only tensor input; the other arguments travel as one tuple (targets
    and lengths as NumPy views, or as the caller gave them), so that ``apply`` and the
    backward handle two inputs rather than eight.
    """

    @staticmethod
    def forward(ctx, log_probs: Tensor, args: tuple) -> Tensor:
        *call, compact = args
        targets, input_lengths, target_lengths, blank, reduction, zero_infinity, device = call
        dtype = log_probs.dtype
        low_precision = dtype in _LOW_PRECISION
        if compact:  # the columns the loss reads, on the tensor's device (_torch_compact)
            loss, grad = _torch_compact.loss_and_grad(log_probs, *call, with_grad=True)
        else:
            loss_array, grad_array = fastctc.ctc_loss_and_grad(
                _to_numpy(log_probs, "log_probs"),
                targets,
                input_lengths,
                target_lengths,
                blank,
                reduction,
                zero_infinity,
                device=device,
            )
            loss = _to_torch(loss_array, log_probs, dtype)
            grad = _to_torch(grad_array, log_probs, _FLOAT32 if low_precision else dtype)
        ctx.save_for_backward(grad)
        ctx.per_sample = _per_sample(log_probs, reduction)
        ctx.cast_to = dtype if low_precision else None  # the gradient is saved in float32
        return loss

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
    compact = _torch_compact.wanted(log_probs)
    if log_probs.requires_grad and torch.is_grad_enabled():
        args = (targets, input_lengths, target_lengths, blank, reduction, zero_infinity, device)
        return _CTCFunction.apply(log_probs, (*args, compact))
    if compact:
        return _torch_compact.loss_and_grad(
            log_probs,
            targets,
            input_lengths,
            target_lengths,
            blank,
            reduction,
            zero_infinity,
            device,
            with_grad=False,
        )[0]
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
        are computed on the host, from the blank and target columns gathered on the device)
        and any strides.
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
