"""Forced alignment: the most likely CTC path of every sample of a batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fastctc import _args
from fastctc._core import CTCInputError
from fastctc._core import align as _align

__all__ = [
    "Alignment",
    "TokenSpan",
    "ctc_align",
    "forced_align",
    "frames_to_seconds",
    "merge_tokens",
]


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
    star_score: float | None = None,
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

    ``device="gpu"`` aligns on fastctc's wgpu backend and returns exactly what ``"cpu"``
    returns (the same paths, spans, per-frame and total scores, bitwise): its Viterbi kernel
    works in float64, as the CPU's does, so it needs an adapter with 64-bit float shaders
    (``fastctc.gpu_info()["shader_f64"]``; lavapipe and most Vulkan and DX12 GPUs have them,
    Metal does not) for float32 input too, and raises ``RuntimeError`` without one. It also
    raises ``RuntimeError`` for a sample whose two-bit back-pointers (``T * (2S + 1) / 4``
    bytes) or gathered emissions exceed one GPU storage binding; ``"cpu"`` has no such limit.

    ``star_score`` (a finite log-probability) adds the star token of MMS-style alignment: the
    targets may then hold the class ``C`` (one past the input's classes), which scores
    ``star_score`` at every frame, as if the input had a column ``C`` filled with it (none is
    made). Put it where untranscribed speech may be, for example before, between and after
    the words; it absorbs any frames at that cost. MMS uses ``star_score=0.0``. It is added
    as it is, also with ``input_kind="logits"``. A frame on a star has label ``C`` and score
    ``star_score``. Like any label, two stars in a row need a blank between them.

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
    # The core's alignment takes no layout: it is checked here, with the device, before the
    # data (as the loss functions do).
    _args.check_choice(layout, "layout", _args.LAYOUTS)
    device = _args.check_choice(device, "device", ("cpu", "gpu"))
    b = _args.batch(log_probs, targets, input_lengths, target_lengths, blank, layout)
    input_kind = _args.check_str(input_kind, "input_kind")
    if star_score is not None:
        star_score = _args.real(star_score, "star_score")
    labels, scores, spans, path_scores = _align(
        b.log_probs,
        b.targets,
        b.input_lengths,
        b.target_lengths,
        b.blank,
        input_kind,
        star_score,
        device,
    )
    path_scores = np.asarray(path_scores, dtype=np.float64)
    return Alignment(labels, scores, spans, path_scores, np.isfinite(path_scores))


def _labels_dtype(targets: object) -> np.dtype:
    """torchaudio returns the labels in the targets' dtype (int32 or int64); int32 otherwise."""
    dtype = getattr(targets, "dtype", None)
    if dtype in (np.int32, np.int64):
        return np.dtype(dtype)
    return np.dtype(np.int32)


def _no_path_error(n: int, input_length: int, target: np.ndarray, score: float) -> CTCInputError:
    """Why sample ``n`` has no alignment."""
    repeats = int(np.count_nonzero(target[1:] == target[:-1]))
    needed = len(target) + repeats
    if input_length < needed:
        reason = (
            f"input length {input_length} is shorter than the {needed} frames its "
            f"{len(target)} target tokens need (one per token and one per repeated pair)"
        )
    elif np.isnan(score):
        reason = "a NaN log-probability was read"
    else:
        reason = "every path has log-probability -inf"
    return CTCInputError(f"forced_align: sample {n} has no alignment: {reason}")


def forced_align(
    log_probs: npt.ArrayLike,
    targets: npt.ArrayLike,
    input_lengths: _args.Lengths | None = None,
    target_lengths: _args.Lengths | None = None,
    blank: int = 0,
    *,
    star_score: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """torchaudio's ``forced_align``, batched: the best path of each sample, frame by frame.

    The arguments, shapes and outputs of ``torchaudio.functional.forced_align`` on NumPy
    arrays (:func:`fastctc.torch.forced_align` takes tensors), without its one-sample limit:
    ``N`` may be larger than 1, each sample with its own lengths. Built on :func:`ctc_align`.

    Parameters
    ----------
    log_probs : array_like, shape (N, T, C)
        Per-frame log-probabilities, batch first (read in place, no copy). float32 or float64.
    targets : array_like of int, shape (N, S)
        Target tokens, padded; never the blank.
    input_lengths : array_like of int, shape (N,), optional
        Frames of each sample; all ``T`` by default.
    target_lengths : array_like of int, shape (N,), optional
        Tokens of each sample; all ``S`` by default.
    blank : int, default 0
        The blank class.
    star_score : float, optional
        Lets ``targets`` hold the star token ``C`` (one past the classes), which scores this
        log-probability at every frame, without a column of its own: see :func:`ctc_align`.
        MMS's aligner appends a column of zeros for it (``star_score=0.0``).

    Returns
    -------
    labels : ndarray, shape (N, T)
        The class of each frame on the best path, the blank included. Its dtype is that of
        ``targets`` when that is an int32 or int64 array (as torchaudio), else int32.
    scores : ndarray, shape (N, T), dtype of log_probs
        Each frame's log-probability on the path, ``log_probs[n, t, labels[n, t]]``; they sum
        to the path's log-probability.

    Padding frames (``t >= input_lengths[n]``) hold the blank as label and 0.0 as score: they
    add nothing to a sum of scores, and :func:`merge_tokens` skips them.

    Ties are broken by :func:`ctc_align`'s deterministic rule (a state prefers staying, then
    advancing by one, then skipping a blank; a path ends in the final blank when it ties with
    the final token). torchaudio may pick another of the tied paths (pytorch/audio#4221).

    Raises
    ------
    CTCInputError
        As :func:`ctc_loss` for bad shapes, lengths and labels, and when a sample has no
        alignment (fewer frames than its tokens need, or no path of finite log-probability),
        as torchaudio does.

    Examples
    --------
    >>> import numpy as np, fastctc
    >>> favoured = [[0, 1, 1, 0, 2], [2, 2, 0, 0, 0]]
    >>> lp = np.full((2, 5, 3), np.log(0.05))
    >>> lp[0, np.arange(5), favoured[0]] = lp[1, np.arange(5), favoured[1]] = np.log(0.9)
    >>> labels, scores = fastctc.forced_align(lp, np.array([[1, 2], [2, 0]]), [5, 3], [2, 1])
    >>> labels.tolist(), labels.dtype
    ([[0, 1, 1, 0, 2], [2, 2, 0, 0, 0]], dtype('int64'))
    >>> scores[1].round(3).tolist()                # frames 3 and 4 are padding
    [-0.105, -0.105, -0.105, 0.0, 0.0]

    The star token (class ``C = 3`` here) takes the frames where it scores better than the
    transcript (MMS uses ``star_score=0.0``, which outscores every frame):

    >>> lp = np.log(np.full((1, 5, 3), 1 / 3))     # frames 0-2: noise
    >>> lp[0, 3:] = np.log([0.05, 0.9, 0.05])      # frames 3-4: token 1
    >>> labels, scores = fastctc.forced_align(lp, [[3, 1]], star_score=-1.0)
    >>> labels.tolist(), scores[0, :3].tolist()
    ([[3, 3, 3, 1, 1]], [-1.0, -1.0, -1.0])
    """
    lp = _args.log_probs_array(log_probs)
    if lp.ndim != 3:
        raise CTCInputError(
            f"log_probs: expected shape (N, T, C), got a {lp.ndim}-D array of shape {lp.shape}"
        )
    batch, frames, _ = lp.shape
    tg = _args.int_array(targets, "targets")
    if tg.ndim != 2:
        raise CTCInputError(
            f"targets: expected padded targets of shape (N, S), got shape {tg.shape}"
        )
    if input_lengths is None:
        input_lengths = np.full(batch, frames, dtype=np.int64)
    if target_lengths is None:
        target_lengths = np.full(tg.shape[0], tg.shape[1], dtype=np.int64)
    result = ctc_align(
        lp, tg, input_lengths, target_lengths, blank, layout="NTC", star_score=star_score
    )
    il = _args.lengths(input_lengths, "input_lengths", True)
    tl = _args.lengths(target_lengths, "target_lengths", True)
    failed = np.flatnonzero(~result.ok)
    if failed.size:
        n = int(failed[0])
        raise _no_path_error(n, int(il[n]), tg[n, : tl[n]], result.path_scores[n])
    padding = result.labels < 0
    labels = result.labels.astype(_labels_dtype(targets))
    labels[padding] = _resolved_blank(blank, lp.shape[2])
    scores = result.scores
    scores[padding] = 0.0
    return labels, scores


def _resolved_blank(blank: int, classes: int) -> int:
    """A negative blank counts from the end (validated by the core already)."""
    blank = _args.integer(blank, "blank")
    return blank + classes if blank < 0 else blank


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


@dataclass
class TokenSpan:
    """A token's run of frames on a path, as torchaudio's ``TokenSpan``.

    Attributes
    ----------
    token : int
        The token.
    start : int
        Its first frame.
    end : int
        One past its last frame; ``len(span)`` is ``end - start``.
    score : float
        The mean of the scores given to :func:`merge_tokens` over ``[start, end)``.
    """

    token: int
    start: int
    end: int
    score: float

    def __len__(self) -> int:
        return self.end - self.start


def merge_tokens(tokens: npt.ArrayLike, scores: npt.ArrayLike, blank: int = 0) -> list[TokenSpan]:
    """torchaudio's ``merge_tokens``: one :class:`TokenSpan` per run of equal non-blank tokens.

    ``tokens`` and ``scores`` are one sample's frames (for example ``labels[n]`` and
    ``scores[n]`` of :func:`forced_align`). Consecutive equal tokens form one span
    ``[start, end)``; blank runs are dropped. A span's score is the plain mean of ``scores``
    over its frames, whatever they are: torchaudio's tutorial passes probabilities
    (``scores.exp()``), giving the mean probability of the token's frames. The mean is taken
    in float64.

    Raises
    ------
    CTCInputError
        ``tokens`` or ``scores`` is not 1-D, or their lengths differ.

    Examples
    --------
    >>> import numpy as np, fastctc
    >>> spans = fastctc.merge_tokens([0, 3, 3, 0, 0, 4, 4, 4], np.log([1, .5, .7, 1, 1, .9, 1, .8]))
    >>> [(s.token, s.start, s.end, len(s)) for s in spans]
    [(3, 1, 3, 2), (4, 5, 8, 3)]
    >>> round(spans[0].score, 4)          # mean of log(.5) and log(.7)
    -0.5249
    """
    token_array = _args.int_array(tokens, "tokens")
    score_array = np.asarray(scores, dtype=np.float64)
    for name, array in (("tokens", token_array), ("scores", score_array)):
        if array.ndim != 1:
            raise CTCInputError(
                f"{name}: expected one value per frame (1-D), got shape {array.shape}"
            )
    if len(token_array) != len(score_array):
        raise CTCInputError(
            f"tokens and scores: expected the same number of frames, got {len(token_array)} "
            f"and {len(score_array)}"
        )
    if len(token_array) == 0:
        return []
    blank = _args.integer(blank, "blank")
    starts = np.flatnonzero(np.diff(token_array, prepend=token_array[0] - 1))
    ends = np.append(starts[1:], len(token_array))
    means = np.add.reduceat(score_array, starts) / (ends - starts)
    return [
        TokenSpan(int(token_array[start]), int(start), int(end), float(mean))
        for start, end, mean in zip(starts, ends, means, strict=True)
        if token_array[start] != blank
    ]
