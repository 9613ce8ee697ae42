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

import operator
from collections.abc import Sequence
from typing import Literal, Union

import numpy as np
import numpy.typing as npt

from fastctc._core import (
    CTCInputError,
    CTCTypeError,
    __version__,
    get_num_threads,
    set_num_threads,
    simd_features,
)
from fastctc._core import ctc as _ctc

__all__ = [
    "CTCInputError",
    "CTCTypeError",
    "__version__",
    "ctc_loss",
    "ctc_loss_and_grad",
    "get_num_threads",
    "set_num_threads",
    "simd_features",
]

Reduction = Literal["none", "sum", "mean"]
GradWrt = Literal["log_probs", "logits"]
Device = Literal["cpu"]
Lengths = Union[npt.ArrayLike, Sequence[int], int]  # noqa: UP007 (runtime alias, py3.10)

_DEVICES = ("cpu",)


def _int_array(value: object, name: str) -> np.ndarray:
    """Converts targets or lengths to an int64 array, refusing non-integer dtypes."""
    is_array = isinstance(value, np.ndarray)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise CTCInputError(f"{name}: cannot be read as an integer array ({error})") from None
    if array.dtype == object and array.size and all(isinstance(v, int) for v in array.flat):
        big = max(array.flat, key=abs)
        raise CTCInputError(f"{name}: value {big} does not fit in a 64-bit integer")
    if array.dtype.kind not in "iu":
        # An empty Python list has no dtype of its own: numpy guesses float64.
        if not is_array and array.size == 0 and array.dtype.kind == "f":
            return array.astype(np.int64)
        raise CTCTypeError(f"{name}: expected integers, got dtype {array.dtype}")
    if array.dtype == np.uint64 and array.size and array.max() > np.iinfo(np.int64).max:
        # Keep huge values huge (and so out of range) rather than wrapping them negative.
        array = np.minimum(array, np.iinfo(np.int64).max)
    return array.astype(np.int64, copy=False)


def _lengths(value: Lengths, name: str, batched: bool) -> np.ndarray:
    array = _int_array(value, name)
    if batched:
        if array.ndim != 1:
            raise CTCInputError(
                f"{name}: expected one length per sample, shape (N,), got shape {array.shape}"
            )
        return array
    if array.ndim == 0 or array.shape == (1,):
        return array.reshape(1)
    raise CTCInputError(
        f"{name}: unbatched log_probs (T, C) need a scalar length, got shape {array.shape}"
    )


def _log_probs(log_probs: npt.ArrayLike) -> np.ndarray:
    array = np.asarray(log_probs)
    if array.dtype.kind == "f" and array.dtype.itemsize in (4, 8) and not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype not in (np.float32, np.float64):
        raise CTCTypeError(
            f"log_probs: expected dtype float32 or float64, got {array.dtype}"
            + (" (cast to float32 first)" if array.dtype.kind == "f" else "")
        )
    if array.ndim not in (2, 3):
        raise CTCInputError(
            f"log_probs: expected shape (T, N, C) or unbatched (T, C), got a {array.ndim}-D "
            f"array of shape {array.shape}"
        )
    return array


def _check_str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise CTCTypeError(f"{name}: expected a string, got {type(value).__name__}")
    return value


def _run(
    log_probs: npt.ArrayLike,
    targets: npt.ArrayLike,
    input_lengths: Lengths,
    target_lengths: Lengths,
    blank: int,
    reduction: str,
    zero_infinity: bool,
    grad_wrt: str,
    device: str,
    with_grad: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    lp = _log_probs(log_probs)
    batched = lp.ndim == 3
    tg = _int_array(targets, "targets")
    if not batched:
        if tg.ndim != 1:
            raise CTCInputError(
                f"targets: unbatched log_probs (T, C) need 1-D targets (S,), got shape {tg.shape}"
            )
        lp = lp[:, np.newaxis, :]
        tg = tg[np.newaxis, :]
    il = _lengths(input_lengths, "input_lengths", batched)
    tl = _lengths(target_lengths, "target_lengths", batched)
    try:
        blank = operator.index(blank)
    except TypeError:
        raise CTCTypeError(f"blank: expected an integer, got {type(blank).__name__}") from None
    if not -(2**63) <= blank < 2**63:
        raise CTCInputError(f"blank: {blank} is outside [-C, C) for C={lp.shape[-1]} classes")
    reduction = _check_str(reduction, "reduction")
    grad_wrt = _check_str(grad_wrt, "grad_wrt")
    device = _check_str(device, "device")
    if device not in _DEVICES:
        raise CTCInputError(
            f"device: unknown value {device!r}, expected one of "
            + ", ".join(repr(d) for d in _DEVICES)
        )

    loss, grad = _ctc(lp, tg, il, tl, blank, reduction, bool(zero_infinity), grad_wrt, with_grad)
    if not batched:
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
    device : {"cpu"}, default "cpu"
        The backend.

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
        (a ``TypeError``) for bad dtypes, such as float targets.

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
    grad_wrt: GradWrt = "log_probs",
    device: Device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """The CTC loss and its gradient.

    Takes the arguments of :func:`ctc_loss`, plus ``grad_wrt``.

    Parameters
    ----------
    grad_wrt : {"log_probs", "logits"}, default "log_probs"
        ``"log_probs"``: the true gradient ``d loss / d log_probs = -gamma``, where ``gamma``
        is the posterior occupancy of each class at each frame. ``"logits"``:
        ``exp(log_probs) - gamma``, the gradient with respect to the logits when
        ``log_probs = log_softmax(logits)``; this is what torch returns as
        ``log_probs.grad``.

    Returns
    -------
    loss : ndarray
        As :func:`ctc_loss`.
    grad : ndarray
        Same shape and dtype as ``log_probs``, C-contiguous, scaled by the reduction (for
        ``"none"``: the gradient of ``loss.sum()``), zero on frames past each input length.
        A sample with infinite loss gets NaN on its frames, or 0 with ``zero_infinity``.

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
    )
    assert grad is not None
    return loss, grad
