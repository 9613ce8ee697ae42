"""fastctc: fast, exact CTC loss and gradient for NumPy.

The semantics are those of :func:`torch.nn.functional.ctc_loss`, with a true gradient by
default, safe validation of every input, and a Rust core that releases the GIL.

>>> import numpy as np, fastctc
>>> T, N, C = 50, 4, 20
>>> rng = np.random.default_rng(0)
>>> logits = rng.standard_normal((T, N, C))
>>> log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
>>> targets = rng.integers(1, C, size=(N, 10))
>>> loss, grad = fastctc.ctc_loss_and_grad(log_probs, targets, [50, 45, 40, 50], [10, 8, 10, 5])
>>> loss.shape, grad.shape
((), (50, 4, 20))
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from fastctc import _args
from fastctc._core import (
    CTCInputError,
    CTCTypeError,
    GpuUnavailableError,
    __version__,
    get_num_threads,
    simd_features,
)
from fastctc._core import ctc as _ctc
from fastctc._core import empty_cache as _empty_cache
from fastctc._core import gpu_info as _gpu_info
from fastctc._core import posteriors as _posteriors
from fastctc._core import set_num_threads as _set_num_threads
from fastctc.alignment import (
    Alignment,
    TokenSpan,
    ctc_align,
    forced_align,
    frames_to_seconds,
    merge_tokens,
)
from fastctc.words import WordSpan, align_words

__all__ = [
    "Alignment",
    "CTCInputError",
    "CTCTypeError",
    "GpuUnavailableError",
    "TokenSpan",
    "WordSpan",
    "__version__",
    "align_words",
    "ctc_align",
    "ctc_loss",
    "ctc_loss_and_grad",
    "ctc_posteriors",
    "empty_cache",
    "forced_align",
    "frames_to_seconds",
    "get_num_threads",
    "gpu_info",
    "merge_tokens",
    "set_num_threads",
    "simd_features",
]

Reduction = Literal["none", "sum", "mean"]
GradWrt = Literal["log_probs", "logits"]
InputKind = Literal["log_probs", "logits"]
Layout = Literal["TNC", "NTC"]
Device = Literal["cpu", "gpu"]
Lengths = _args.Lengths


def _run(
    log_probs: npt.ArrayLike,
    targets: npt.ArrayLike,
    input_lengths: Lengths,
    target_lengths: Lengths,
    blank: int,
    reduction: str,
    zero_infinity: bool,
    grad_wrt: str | None,
    device: str,
    with_grad: bool,
    input_kind: str,
    layout: str,
) -> tuple[np.ndarray, np.ndarray | None]:
    b = _args.batch(log_probs, targets, input_lengths, target_lengths, blank, layout)
    reduction = _args.check_str(reduction, "reduction")
    input_kind = _args.check_str(input_kind, "input_kind")
    grad_wrt = _args.grad_wrt_for(grad_wrt, input_kind)
    device = _args.check_str(device, "device")
    loss, grad = _ctc(
        b.log_probs,
        b.targets,
        b.input_lengths,
        b.target_lengths,
        b.blank,
        reduction,
        bool(zero_infinity),
        grad_wrt,
        with_grad,
        input_kind,
        b.layout,
        device,
    )
    if not b.batched:
        if loss.ndim == 1:
            loss = loss.reshape(())
        if grad is not None:
            grad = grad[:, 0, :]
    return loss, grad


def ctc_loss(
    log_probs: npt.ArrayLike,
    targets: npt.ArrayLike,
    input_lengths: Lengths,
    target_lengths: Lengths,
    blank: int = 0,
    reduction: Reduction = "mean",
    zero_infinity: bool = False,
    *,
    input_kind: InputKind = "log_probs",
    layout: Layout = "TNC",
    device: Device = "cpu",
) -> np.ndarray:
    """The CTC loss, with the semantics of ``torch.nn.functional.ctc_loss``.

    Parameters
    ----------
    log_probs : ndarray, shape (T, N, C) or (T, C), float32 or float64
        Per-frame log-probabilities (normally ``log_softmax`` outputs; not required). Any
        strides.
    targets : ndarray of int, shape (N, S) padded, or 1-D concatenated, or (S,) unbatched
        Target labels in ``[0, C)``, never ``blank``. Entries of a padded row past its target
        length are never read.
    input_lengths : array-like of int, shape (N,), or int when unbatched
        Frames used per sample, each in ``[0, T]``.
    target_lengths : array-like of int, shape (N,), or int when unbatched
        Labels per sample, each in ``[0, S]``.
    blank : int, default 0
        The blank class; a negative value counts from the end (``-1`` is ``C - 1``).
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"``: per-sample losses. ``"sum"``: their sum. ``"mean"``: the mean over the
        batch of ``loss_n / max(target_length_n, 1)``.
    zero_infinity : bool, default False
        Replace infinite losses (impossible alignments) by 0.
    input_kind : {"log_probs", "logits"}, default "log_probs"
        ``"logits"``: ``log_probs`` holds unnormalised logits, and ``log_softmax`` over the
        classes is fused into the computation (no extra ``(T, N, C)`` array).
    layout : {"TNC", "NTC"}, default "TNC"
        ``"NTC"``: the input is batch-major ``(N, T, C)`` (read in place, no transposing
        copy); gradients come back in the same layout. Ignored for unbatched input.
    device : {"cpu", "gpu"}, default "cpu"
        The backend. ``"gpu"`` runs WGSL compute shaders through wgpu on any Vulkan, Metal,
        DX12 or OpenGL ES 3.1 adapter (see :func:`gpu_info`), in float32, or float64 where
        the adapter has 64-bit float shaders; same results as ``"cpu"`` to float32 rounding.
        ``WGPU_BACKEND`` (``vulkan``, ``metal``, ``dx12``, ``gl``) and ``WGPU_ADAPTER_NAME``
        choose the backend and adapter.

    Returns
    -------
    ndarray
        Of the dtype of ``log_probs``: shape ``(N,)`` for ``"none"`` (``()`` unbatched), else
        0-d.

    Raises
    ------
    CTCInputError
        (a ``ValueError``) for bad shapes, lengths, labels, blank or options.
    CTCTypeError
        (a ``TypeError``) for bad dtypes, such as float targets, or float64 on a GPU without
        64-bit float shaders.
    GpuUnavailableError
        (a ``RuntimeError``) for ``device="gpu"`` when no GPU adapter can be opened; the
        message says what was tried and how to install a driver.

    Examples
    --------
    Two frames, two classes, uniform: three of the four paths give the target ``[1]``.

    >>> import numpy as np, fastctc
    >>> lp = np.log(np.full((2, 1, 2), 0.5))
    >>> loss = fastctc.ctc_loss(lp, [[1]], [2], [1], reduction="sum")
    >>> bool(np.isclose(loss, -np.log(0.75)))
    True
    """
    loss, _ = _run(
        log_probs,
        targets,
        input_lengths,
        target_lengths,
        blank,
        reduction,
        zero_infinity,
        "log_probs",
        device,
        with_grad=False,
        input_kind=input_kind,
        layout=layout,
    )
    return loss


def ctc_loss_and_grad(
    log_probs: npt.ArrayLike,
    targets: npt.ArrayLike,
    input_lengths: Lengths,
    target_lengths: Lengths,
    blank: int = 0,
    reduction: Reduction = "mean",
    zero_infinity: bool = False,
    *,
    grad_wrt: GradWrt | None = None,
    input_kind: InputKind = "log_probs",
    layout: Layout = "TNC",
    device: Device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """The CTC loss and its gradient.

    Takes the arguments of :func:`ctc_loss`, plus ``grad_wrt``.

    Parameters
    ----------
    grad_wrt : {"log_probs", "logits"}, default: the gradient with respect to the input
        ``"log_probs"``: the true gradient ``d loss / d log_probs = -gamma``, where ``gamma``
        is the posterior occupancy of each class at each frame. ``"logits"``:
        ``exp(log_probs) - gamma``, the gradient with respect to the logits when
        ``log_probs = log_softmax(logits)``; this is what torch returns as
        ``log_probs.grad``. The default is ``"log_probs"``, or ``"logits"`` with
        ``input_kind="logits"`` (then ``softmax(input) - gamma``, the gradient with respect
        to the input).

    Returns
    -------
    loss : ndarray
        As :func:`ctc_loss`.
    grad : ndarray
        Same shape and dtype as ``log_probs``, C-contiguous, scaled by the reduction (for
        ``"none"``: the gradient of ``loss.sum()``), zero on frames past each input length.
        A sample with infinite loss gets NaN on its frames, or 0 with ``zero_infinity``.

    Raises
    ------
    MemoryError
        When the gradient or the forward table of the longest sample cannot be allocated
        (checked before anything is computed); and as :func:`ctc_loss`.

    Examples
    --------
    Each frame's occupancies sum to one, so each row of the true gradient sums to -1:

    >>> import numpy as np, fastctc
    >>> lp = np.log(np.full((4, 3), 1 / 3))
    >>> loss, grad = fastctc.ctc_loss_and_grad(lp, [1, 2], 4, 2, reduction="sum")
    >>> np.allclose(grad.sum(axis=1), -1.0)
    True
    """
    loss, grad = _run(
        log_probs,
        targets,
        input_lengths,
        target_lengths,
        blank,
        reduction,
        zero_infinity,
        grad_wrt,
        device,
        with_grad=True,
        input_kind=input_kind,
        layout=layout,
    )
    assert grad is not None
    return loss, grad


def ctc_posteriors(
    log_probs: npt.ArrayLike,
    targets: npt.ArrayLike,
    input_lengths: Lengths,
    target_lengths: Lengths,
    blank: int = 0,
    zero_infinity: bool = False,
    *,
    input_kind: InputKind = "log_probs",
    layout: Layout = "TNC",
    device: Device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample losses and the posterior occupancy ``gamma``.

    ``gamma[t, n, c]`` is the probability, given sample ``n``'s alignments, that frame ``t``
    emits class ``c``: each valid frame sums to 1, frames past the input length are 0. It is
    minus the true gradient of the summed loss (``docs/design.md#gradient``), useful for label
    smoothing, regularisers, confidence estimates and soft alignments. Takes the data
    arguments of :func:`ctc_loss`, and its ``input_kind`` and ``layout``.

    Returns
    -------
    losses : ndarray, shape (N,) (shape () unbatched), dtype of log_probs
        Per-sample losses, as ``ctc_loss(..., reduction="none")``.
    gamma : ndarray, same shape and dtype as log_probs
        The occupancy; NaN rows for a sample with infinite or NaN loss, or 0 rows with
        ``zero_infinity`` for an infinite one.

    Examples
    --------
    >>> import numpy as np, fastctc
    >>> lp = np.log(np.full((3, 1, 2), 0.5))
    >>> losses, gamma = fastctc.ctc_posteriors(lp, [[1]], [3], [1])
    >>> gamma[:, 0, :].sum(axis=1).tolist()
    [1.0, 1.0, 1.0]
    """
    b = _args.batch(log_probs, targets, input_lengths, target_lengths, blank, layout)
    input_kind = _args.check_str(input_kind, "input_kind")
    device = _args.check_str(device, "device")
    losses, gamma = _posteriors(
        b.log_probs,
        b.targets,
        b.input_lengths,
        b.target_lengths,
        b.blank,
        bool(zero_infinity),
        input_kind,
        b.layout,
        device,
    )
    if not b.batched:
        return losses.reshape(()), gamma[:, 0, :]
    return losses, gamma


def set_num_threads(threads: int) -> None:
    """Sets the number of worker threads the CPU backend uses for later calls.

    Replaces the pool sized at the first call from ``FASTCTC_NUM_THREADS``, else
    ``RAYON_NUM_THREADS``, else the number of available cores divided by ``LOCAL_WORLD_SIZE``
    (set by torchrun for each rank on a machine), at least one (an environment value above
    four threads per available core is clamped to that, with a warning on stderr). The pool
    is fastctc's own, not rayon's global one; a forked child starts a pool of the same size.

    A call runs without the GIL and cannot be interrupted: Ctrl-C (``SIGINT``) during a long
    call is delivered, as ``KeyboardInterrupt``, when the call returns.

    Parameters
    ----------
    threads : int
        At least 1.

    Raises
    ------
    CTCInputError
        (a ``ValueError``) for a count below 1, one beyond 64 bits, or one the operating
        system cannot start.

    Examples
    --------
    >>> import fastctc
    >>> before = fastctc.get_num_threads()
    >>> fastctc.set_num_threads(2)
    >>> fastctc.get_num_threads()
    2
    >>> fastctc.set_num_threads(before)
    """
    threads = _args.integer(threads, "set_num_threads")
    if not -(2**63) <= threads < 2**63:
        raise _args.too_large("set_num_threads", threads)
    _set_num_threads(threads)


def gpu_info() -> dict | None:
    """The GPU adapter ``device="gpu"`` runs on, or ``None`` when there is none.

    Opens the adapter on first use (later calls reuse it). The dict holds ``name``,
    ``backend`` (``"vulkan"``, ``"metal"``, ``"dx12"`` or ``"gl"``), ``device_type``
    (``"discrete"``, ``"integrated"``, ``"virtual"``, ``"cpu"`` for a software rasteriser
    such as Mesa's lavapipe, or ``"other"``), ``driver``, ``driver_info``, ``vendor``,
    ``device``, ``shader_f64`` (whether float64 input runs on it), ``workgroup_size`` and
    ``limits`` (the storage-binding, buffer and workgroup limits that decide how a batch is
    split into chunks). Set ``WGPU_BACKEND`` or ``WGPU_ADAPTER_NAME`` before the first call
    to choose the backend or adapter.

    >>> import fastctc
    >>> info = fastctc.gpu_info()
    >>> info is None or {"name", "backend", "limits"} <= info.keys()
    True
    """
    return _gpu_info()


def empty_cache() -> int:
    """Frees the memory fastctc keeps between calls; returns the bytes freed.

    Two kinds of memory are kept, and both are freed here, for example once training is
    over. Neither affects results.

    - Gradient buffers: when a gradient of 1 MiB or more is freed (the NumPy array, or a
      torch tensor viewing it, goes away), fastctc keeps its memory (at most four buffers
      and 512 MiB per float type) and writes the next gradient of about the same size into
      it. A training loop then skips the operating system's page faults and zeroing of a
      fresh buffer on every step (a fifth to a half of the forward+backward time with a
      large vocabulary).
    - CPU workspaces: each thread's forward table (about ``T * (2S + 1) * 8`` bytes for the
      longest float32 sample it ran) and scratch rows. A call also frees on its own the
      kept tables of more than 64 MiB that are over four times larger than it needs, so
      one very long batch does not pin its tables.

    Returns
    -------
    int
        The bytes freed.

    Examples
    --------
    >>> import numpy as np, fastctc
    >>> _ = fastctc.empty_cache()  # start with nothing kept
    >>> log_probs = np.full((100, 4, 1000), np.log(1e-3), dtype=np.float32)  # 1.6 MB
    >>> targets = np.ones((4, 5), dtype=int)
    >>> _, grad = fastctc.ctc_loss_and_grad(log_probs, targets, [100] * 4, [5] * 4)
    >>> del grad  # the buffer is kept for the next gradient of this size
    >>> fastctc.empty_cache() >= 1_600_000  # the buffer and the workspaces
    True
    >>> fastctc.empty_cache()
    0
    """
    return _empty_cache()
