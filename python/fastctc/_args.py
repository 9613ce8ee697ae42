"""Argument normalisation shared by every public function: arrays, dtypes and batching.

Type problems raise :class:`CTCTypeError`; value checks beyond "is this an integer array of
a sensible rank" belong to the Rust core (``src/problem.rs`` validates the data,
``src/options.rs`` and the binding the option strings), which runs once before any kernel and
writes each message once. This module checks only what the core cannot see: Python types,
Python ints beyond 64 bits, and the unbatched ``(T, C)`` form.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import NamedTuple, Union

import numpy as np
import numpy.typing as npt

from fastctc._core import CTCInputError, CTCTypeError

Lengths = Union[npt.ArrayLike, Sequence[int], int]  # noqa: UP007 (runtime alias, py3.10)

LAYOUTS = ("TNC", "NTC")


def grad_wrt_for(grad_wrt: str | None, input_kind: str) -> str:
    """The gradient convention: by default the gradient with respect to the caller's input
    (``"log_probs"`` for log-probability input, ``"logits"`` for logits input)."""
    if grad_wrt is None:
        return "logits" if input_kind == "logits" else "log_probs"
    return check_str(grad_wrt, "grad_wrt")


class Batch(NamedTuple):
    """A batch in the form the native module takes."""

    log_probs: np.ndarray  # (T, N, C) float32/float64, any strides (a view for "NTC" input)
    targets: np.ndarray  # (N, S) or 1-D int64
    input_lengths: np.ndarray  # (N,) int64
    target_lengths: np.ndarray  # (N,) int64
    blank: int
    batched: bool  # False when the caller passed one unbatched (T, C) sample
    layout: str  # the gradient layout to ask the core for ("TNC" or "NTC"; the core checks it)


def int_array(value: object, name: str) -> np.ndarray:
    """Converts targets or lengths to an int64 array, refusing non-integer dtypes."""
    is_array = isinstance(value, np.ndarray)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise CTCInputError(f"{name}: cannot be read as an integer array ({error})") from None
    if array.dtype == object and array.size and all(isinstance(v, int) for v in array.flat):
        raise too_large(name, max(array.flat, key=abs))
    if array.dtype.kind not in "iu":
        # An empty Python list has no dtype of its own: numpy guesses float64.
        if not is_array and array.size == 0 and array.dtype.kind == "f":
            return array.astype(np.int64)
        raise CTCTypeError(f"{name}: expected integers, got dtype {array.dtype}")
    if array.dtype == np.uint64 and array.size and array.max() > np.iinfo(np.int64).max:
        # Keep huge values huge (and so out of range) rather than wrapping them negative.
        array = np.minimum(array, np.iinfo(np.int64).max)
    return array.astype(np.int64, copy=False)


def lengths(value: Lengths, name: str, batched: bool) -> np.ndarray:
    array = int_array(value, name)
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


def log_probs_array(log_probs: npt.ArrayLike) -> np.ndarray:
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


def check_str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise CTCTypeError(f"{name}: expected a string, got {type(value).__name__}")
    return value


def too_large(name: str, value: int) -> CTCInputError:
    """The error for a Python int the core cannot take (it reads 64-bit integers)."""
    return CTCInputError(f"{name}: {value} does not fit in a 64-bit integer")


def integer(value: object, name: str) -> int:
    """An int-like argument (``operator.index``), else :class:`CTCTypeError`."""
    try:
        return operator.index(value)
    except TypeError:
        raise CTCTypeError(f"{name}: expected an integer, got {type(value).__name__}") from None


def real(value: object, name: str) -> float:
    """A real-number argument (anything ``float()`` takes but strings), else
    :class:`CTCTypeError`; the core checks its value."""
    if isinstance(value, (str, bytes)):
        raise CTCTypeError(f"{name}: expected a number, got {type(value).__name__}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CTCTypeError(f"{name}: expected a number, got {type(value).__name__}") from None


def check_choice(value: object, name: str, allowed: Sequence[str]) -> str:
    """For options the core never receives (those of ``ctc_align``); the core validates the
    others itself, with the same wording."""
    value = check_str(value, name)
    if value not in allowed:
        raise CTCInputError(
            f"{name}: unknown value {value!r}, expected one of "
            + ", ".join(repr(a) for a in allowed)
        )
    return value


_NATIVE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_INT64 = np.dtype(np.int64)


def _canonical(
    log_probs: object,
    targets: object,
    input_lengths: object,
    target_lengths: object,
    blank: object,
    layout: object,
) -> bool:
    """Whether the arguments need no conversion: a batched native-endian float32/float64
    ``(T, N, C)`` array, int64 targets, 1-D int64 lengths, a plain 64-bit ``int`` blank and
    the ``"TNC"`` layout (exact types: subclasses take the general path)."""
    return (
        type(log_probs) is np.ndarray
        and log_probs.ndim == 3
        and log_probs.dtype in _NATIVE_FLOATS
        and type(targets) is np.ndarray
        and targets.dtype == _INT64
        and type(input_lengths) is np.ndarray
        and input_lengths.ndim == 1
        and input_lengths.dtype == _INT64
        and type(target_lengths) is np.ndarray
        and target_lengths.ndim == 1
        and target_lengths.dtype == _INT64
        and type(blank) is int
        and -(2**63) <= blank < 2**63
        and type(layout) is str
        and layout == "TNC"
    )


def batch(
    log_probs: npt.ArrayLike,
    targets: npt.ArrayLike,
    input_lengths: Lengths,
    target_lengths: Lengths,
    blank: int,
    layout: str = "TNC",
) -> Batch:
    """Normalises the data arguments of every public function.

    ``layout="NTC"`` takes a batch-major ``(N, T, C)`` array and hands the core a transposed
    view of it (no copy); an unbatched ``(T, C)`` input has no batch axis and ignores it.
    """
    if _canonical(log_probs, targets, input_lengths, target_lengths, blank, layout):
        # Already the form the core takes (a training loop's usual call): attribute reads
        # only. The general path's conversions cost a few microseconds, and several times
        # that when the call finds the caches cold, against a short batch's ~50 us kernel.
        return Batch(log_probs, targets, input_lengths, target_lengths, blank, True, "TNC")  # type: ignore[arg-type]
    # The core validates the layout's value; only "NTC" needs work here.
    layout = check_str(layout, "layout")
    lp = log_probs_array(log_probs)
    batched = lp.ndim == 3
    if not batched:
        if layout == "NTC":
            layout = "TNC"  # no batch axis to move
    elif layout == "NTC":
        lp = lp.transpose(1, 0, 2)
    tg = int_array(targets, "targets")
    if not batched:
        if tg.ndim != 1:
            raise CTCInputError(
                f"targets: unbatched log_probs (T, C) need 1-D targets (S,), got shape {tg.shape}"
            )
        lp = lp[:, np.newaxis, :]
        tg = tg[np.newaxis, :]
    il = lengths(input_lengths, "input_lengths", batched)
    tl = lengths(target_lengths, "target_lengths", batched)
    blank = integer(blank, "blank")
    if not -(2**63) <= blank < 2**63:
        raise too_large("blank", blank)
    return Batch(lp, tg, il, tl, blank, batched, layout)
