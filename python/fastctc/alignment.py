"""Forced alignment: the most likely CTC path of every sample of a batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fastctc import _args
from fastctc._core import CTCInputError
from fastctc._core import align as _align

__all__ = ["Alignment", "ctc_align", "frames_to_seconds"]


@dataclass(frozen=True)
class Alignment:
    """The best path of each sample.

    Attributes
    ----------
    labels : ndarray of int64, shape (N, T)
        The class emitted at each frame on the best path (the blank included); -1 past the
        input length and for samples without a path.
    scores : ndarray, shape (N, T), dtype of log_probs
        ``log_probs[t, n, labels[n, t]]``; NaN where ``labels`` is -1.
    spans : ndarray of int64, shape (N, S, 2)
        Each target token's frames ``[start, end)`` on the best path (``S`` is the longest
        target); -1 past a target's length and for samples without a path.
        :func:`frames_to_seconds` turns them into times.
    path_scores : ndarray of float64, shape (N,)
        The best path's total log-probability: ``-inf`` when no alignment exists (target too
        long for the input, or only ``-inf`` paths), NaN when a NaN log-probability was read.
    ok : ndarray of bool, shape (N,)
        Whether the sample has a finite best path. Impossible samples are flagged here; they
        do not raise.
    """

    labels: np.ndarray
    scores: np.ndarray
    spans: np.ndarray
    path_scores: np.ndarray
    ok: np.ndarray


def ctc_align(
    log_probs: npt.ArrayLike,
    targets: npt.ArrayLike,
    input_lengths: _args.Lengths,
    target_lengths: _args.Lengths,
    blank: int = 0,
    *,
    input_kind: str = "log_probs",
    layout: str = "TNC",
    device: str = "cpu",
) -> Alignment:
    """Batched forced alignment (Viterbi): the most likely path of each sample's target.

    Takes the data arguments of :func:`fastctc.ctc_loss`, with the same validation, and its
    ``input_kind`` (``"logits"`` fuses a ``log_softmax``; scores are then log-probabilities)
    and ``layout`` (``"NTC"`` for batch-major input). Samples are aligned in parallel. An
    unbatched ``(T, C)`` input gives outputs with ``N = 1``.

    Ties are broken deterministically: at each frame a state prefers the predecessor with the
    highest state index (staying in the same state, then advancing by one, then skipping a
    blank between two different labels), and a path ends in the final blank rather than the
    final label when both score the same. With continuous log-probabilities ties are rare.

    Examples
    --------
    >>> import numpy as np, fastctc
    >>> favoured = [0, 1, 1, 0, 2]          # blank, "a", "a", blank, "b"
    >>> lp = np.full((5, 1, 3), np.log(0.05))
    >>> lp[np.arange(5), 0, favoured] = np.log(0.9)
    >>> result = fastctc.ctc_align(lp, [[1, 2]], [5], [2])
    >>> result.labels[0].tolist(), result.spans[0].tolist()
    ([0, 1, 1, 0, 2], [[1, 3], [4, 5]])
    """
    # The core's alignment takes neither a layout nor a device: both are checked here.
    _args.check_choice(layout, "layout", _args.LAYOUTS)
    _args.check_choice(device, "device", ("cpu",))
    b = _args.batch(log_probs, targets, input_lengths, target_lengths, blank, layout)
    input_kind = _args.check_str(input_kind, "input_kind")
    labels, scores, spans, path_scores = _align(
        b.log_probs, b.targets, b.input_lengths, b.target_lengths, b.blank, input_kind
    )
    path_scores = np.asarray(path_scores, dtype=np.float64)
    return Alignment(labels, scores, spans, path_scores, np.isfinite(path_scores))


def frames_to_seconds(spans: npt.ArrayLike, frame_rate: float) -> np.ndarray:
    """Converts frame spans (``Alignment.spans``) to seconds; -1 entries become NaN.

    ``frame_rate`` is in frames per second (for example 50 for a 20 ms hop). A span
    ``[start, end)`` becomes ``[start / frame_rate, end / frame_rate)``.

    >>> import numpy as np, fastctc
    >>> fastctc.frames_to_seconds(np.array([[[0, 2], [3, 5]]]), frame_rate=50).tolist()
    [[[0.0, 0.04], [0.06, 0.1]]]
    """
    rate = float(frame_rate)
    if not np.isfinite(rate) or rate <= 0:
        raise CTCInputError(
            f"frame_rate: expected a positive number of frames per second, got {frame_rate}"
        )
    frames = np.asarray(spans)
    seconds = frames.astype(np.float64) / rate
    seconds[frames < 0] = np.nan
    return seconds
