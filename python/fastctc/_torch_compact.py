"""The compact route of :mod:`fastctc.torch`: only the columns the loss reads cross to the host.

The loss reads, at each frame, the blank and the sample's target labels, and its gradient with
respect to ``log_probs`` (``-gamma``) is zero in every other class (docs/design.md#gradient).
For a tensor on an accelerator, copying the whole ``(T, N, C)`` input to the host and a
``(T, N, C)`` gradient back costs more than the loss itself once C is a subword vocabulary.
This route instead

1. validates the batch in the core without reading ``log_probs``' values
   (``_core.validate_batch`` on a broadcast stand-in of the same shape and dtype), so that bad
   input raises exactly what the dense route raises;
2. gathers, on the tensor's device, each sample's columns into a ``(T, N, K)`` tensor: column
   0 is the blank, then the sample's distinct labels in increasing order, then classes the
   sample does not read as padding up to ``K = 1 + the most distinct labels of any sample``;
3. copies that tensor to the host (through page-locked memory and an asynchronous copy on
   CUDA), runs fastctc on the compact problem (blank 0, each label replaced by its column, so
   a repeated label stays repeated and distinct labels stay distinct);
4. copies the compact gradient back and scatters it, on the device, into a zero
   ``(T, N, C)`` tensor; the rows of a sample without a finite loss, which the dense route
   fills with NaN in every class, are filled likewise.

Losses and gradients are those of the dense route (the kernels compute the same numbers: a
class the loss does not read never enters them). The gradient through ``log_softmax`` or the
logits also follows, since autograd takes it from the ``log_probs`` gradient.

Per-sample columns rather than the union of the batch's classes: a batch of 32 samples of 80
subword labels from a vocabulary of 1000 uses about 920 classes in all, so the union saves
almost nothing there, while each sample reads at most 81; and ``torch.gather`` with a
per-sample index is also the faster gather on the CPU (for that batch, float32, 2 threads of a
2-core VM: ``index_select`` of the union along the class axis 180 ms, ``gather`` 2 ms).
Padding with classes the sample does not read keeps every row's column indices distinct, so
that the scatter writes each element once and is deterministic.

Both the eager route (:mod:`fastctc.torch`) and the custom operators (:mod:`fastctc._torch_traced`,
inside a compiled graph or under ``torch.func``) take this route for tensors off the CPU.
``FASTCTC_TORCH_COMPACT=1`` forces it for CPU tensors too (the tests compare it with the dense
route that way), ``FASTCTC_TORCH_COMPACT=0`` turns it off. On CPU tensors it is slower than the
dense route, which reads NumPy views of the tensor and hands torch the core's recycled gradient
buffer, while this one allocates and zeroes a fresh ``(T, N, C)`` gradient.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import Tensor

from fastctc import _args, _core
from fastctc._torch_common import _LOW_PRECISION, _grad_dtype, _to_numpy

ENV = "FASTCTC_TORCH_COMPACT"


def wanted(log_probs: Tensor) -> bool:
    """Whether ``log_probs`` takes the compact route: ``FASTCTC_TORCH_COMPACT`` (read on
    every call) if it says ``1`` or ``0``, else whether the tensor is off the CPU."""
    setting = os.environ.get(ENV, "").strip()
    if setting in ("0", "1"):
        return setting == "1"
    return not log_probs.is_cpu


def columns(
    blank: int, labels: np.ndarray, target_lengths: np.ndarray, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """The classes each sample's compact columns hold, ``(N, K)`` int64, and the validated
    ``labels`` (concatenated) rewritten as column positions.

    Row n: the blank, then sample n's distinct labels in increasing order, then classes it does
    not read. Sample n reads ``1 + distinct_n`` classes, so at most that many of the first K
    are taken and at least ``K - 1 - distinct_n`` of them, the padding it needs, are free.
    """
    batch = len(target_lengths)
    owner = np.repeat(np.arange(batch, dtype=np.int64), target_lengths)
    keys = owner * classes + labels.astype(np.int64)  # sorted by sample, then class
    distinct = np.unique(keys)
    distinct_owner, distinct_class = np.divmod(distinct, classes)
    counts = np.bincount(distinct_owner, minlength=batch)
    starts = np.cumsum(counts) - counts
    width = 1 + int(counts.max(initial=0))
    index = np.empty((batch, width), dtype=np.int64)
    index[:, 0] = blank
    index[distinct_owner, 1 + np.arange(len(distinct)) - starts[distinct_owner]] = distinct_class
    compact_labels = 1 + np.searchsorted(distinct, keys) - starts[owner]

    taken = np.zeros((batch, width), dtype=bool)
    if blank < width:
        taken[:, blank] = True
    low = distinct_class < width
    taken[distinct_owner[low], distinct_class[low]] = True
    free = np.argsort(taken, axis=1, kind="stable")  # each row's free classes first, in order
    slot = np.arange(width)[np.newaxis, :] - (1 + counts)[:, np.newaxis]
    padding = np.take_along_axis(free, np.maximum(slot, 0), axis=1)
    return np.where(slot >= 0, padding, index), compact_labels


def _to_host(compact: Tensor) -> np.ndarray:
    """The gathered tensor as a float32/float64 host array."""
    if compact.device.type == "cuda":
        # Page-locked memory lets the copy run asynchronously; torch's caching host allocator
        # keeps the block for the next call (and holds it back until a pending copy is done).
        host = torch.empty(compact.shape, dtype=compact.dtype, pin_memory=True)
        host.copy_(compact, non_blocking=True)
        torch.cuda.current_stream(compact.device).synchronize()
    else:
        host = compact.cpu()
    if host.dtype in _LOW_PRECISION:
        host = host.float()  # crossed at half the size, computed in float32
    return host.numpy()


def _to_device(grad: np.ndarray, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The compact gradient on ``device``, in ``dtype``."""
    tensor = torch.from_numpy(grad)
    if device.type == "cuda":
        pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        # NumPy's copy, on this thread: torch's CPU copy would wake its OpenMP pool, whose
        # spinning threads then compete with fastctc's own pool in the next call (measured on
        # a 16-core H200 host: 2.3 ms for this 4 MB copy, and the next loss 3x slower).
        np.copyto(pinned.numpy(), grad)
        tensor = pinned.to(device, non_blocking=True)
    return tensor.to(device=device, dtype=dtype)


def loss_and_grad(
    log_probs: Tensor,
    targets: object,
    input_lengths: object,
    target_lengths: object,
    blank: object,
    reduction: object,
    zero_infinity: object,
    device: object,
    with_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """What the dense route's ``fastctc.ctc_loss(_and_grad)`` gives, as tensors on the device
    of ``log_probs``: the loss in its dtype and the gradient in the saved gradient's dtype
    (float32 for float16 / bfloat16), or None without ``with_grad``."""
    log_probs = log_probs.detach()
    # A stand-in with the shape and the dtype the dense route would hand the core, whose
    # values are never read: every argument is checked, in the same order, before anything
    # is gathered.
    probe = _to_numpy(torch.zeros((), dtype=log_probs.dtype), "log_probs")
    stand_in = np.broadcast_to(probe, log_probs.shape)
    b = _args.batch(stand_in, targets, input_lengths, target_lengths, blank)
    reduction = _args.check_str(reduction, "reduction")
    device = _args.check_str(device, "device")
    zero_infinity = bool(zero_infinity)
    blank, labels = _core.validate_batch(
        b.log_probs,
        b.targets,
        b.input_lengths,
        b.target_lengths,
        b.blank,
        reduction,
        zero_infinity,
        device,
    )
    lp = log_probs if b.batched else log_probs.unsqueeze(1)
    frames, batch, classes = lp.shape
    index, compact_labels = columns(blank, labels, b.target_lengths, classes)
    index_t = torch.from_numpy(index).to(lp.device).unsqueeze(0).expand(frames, batch, -1)
    compact = _to_host(torch.gather(lp, 2, index_t))
    loss, grad = _core.ctc(
        compact,
        compact_labels,
        b.input_lengths,
        b.target_lengths,
        0,
        reduction,
        zero_infinity,
        "log_probs",
        with_grad,
        "log_probs",
        "TNC",
        device,
    )
    if not b.batched and loss.ndim == 1:
        loss = loss.reshape(())
    loss_t = torch.from_numpy(loss).to(device=log_probs.device, dtype=log_probs.dtype)
    if grad is None:
        return loss_t, None
    grad_dtype = _grad_dtype(log_probs.dtype)
    full = torch.zeros(lp.shape, dtype=grad_dtype, device=lp.device)
    full.scatter_(2, index_t, _to_device(grad, lp.device, grad_dtype))
    # Whole rows are NaN (a NaN loss, or an infinite one without zero_infinity) or none.
    unfinished = np.isnan(grad[:, :, 0])
    if unfinished.any():
        rows = torch.from_numpy(unfinished).to(lp.device).unsqueeze(2)
        full.masked_fill_(rows, math.nan)
    return loss_t, full if b.batched else full.squeeze(1)
