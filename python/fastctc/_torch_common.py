"""What both routes of :mod:`fastctc.torch` share: tensors to NumPy and back (no copies when
a view is possible), the dtype rules, and the scaling of the saved gradient in the backward
pass. Imported by :mod:`fastctc.torch` (the eager route) and :mod:`fastctc._torch_traced`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
from torch import Tensor

import fastctc

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
