"""The traced route of :mod:`fastctc.torch`: the torch custom operators (with fake
implementations and an autograd formula) that ``torch.compile``, ``torch.export``,
``torch.jit.trace`` and tensor subclasses see, and the :class:`torch.autograd.Function` that
``torch.func`` transforms run (see the module docstring of :mod:`fastctc.torch`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import fastctc
from fastctc import _args, _torch_compact
from fastctc._torch_common import (
    _AUTOCAST_DEVICES,
    _functorch_active,
    _grad_dtype,
    _loss_shape,
    _once_differentiable,
    _OnceDifferentiable,
    _per_sample,
    _scaled,
    _to_numpy,
    _to_torch,
)

# --------------------------------------------------------------------------------------------
# Custom operators (the traced route)
# --------------------------------------------------------------------------------------------


def _compact(log_probs: Tensor, args: tuple, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """An operator's computation on the compact route (``_torch_compact``): what runs when
    a compiled graph meets the operator with a tensor off the CPU."""
    targets, input_lengths, target_lengths, *options = args
    return _torch_compact.loss_and_grad(
        log_probs,
        _to_numpy(targets, "targets"),
        _to_numpy(input_lengths, "input_lengths"),
        _to_numpy(target_lengths, "target_lengths"),
        *options,
        with_grad=with_grad,
    )


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
    if _torch_compact.wanted(log_probs):
        return _compact(
            log_probs,
            (targets, input_lengths, target_lengths, blank, reduction, zero_infinity, device),
            with_grad=False,
        )[0]
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
    if _torch_compact.wanted(log_probs):
        return _compact(
            log_probs,
            (targets, input_lengths, target_lengths, blank, reduction, zero_infinity, device),
            with_grad=True,
        )
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
