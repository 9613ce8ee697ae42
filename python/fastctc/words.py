"""Word timings: a transcript given as words (each a list of token ids) aligned to emissions.

Built on :func:`fastctc.ctc_align`: the words' tokens, optionally with a separator token
between words, form the target; each word's span runs from its first token's first frame to
its last token's last frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fastctc import _args
from fastctc._core import CTCInputError
from fastctc.alignment import TokenSpan, _no_path_error, ctc_align, frames_to_seconds

__all__ = ["WordSpan", "align_words"]


@dataclass(frozen=True)
class WordSpan:
    """One word of the transcript on the best path.

    Attributes
    ----------
    index : int
        The word's position in the transcript.
    start, end : int
        Its frames ``[start, end)``: from its first token's first frame to its last token's
        last frame (blank frames between its tokens included).
    start_time, end_time : float
        The same in seconds: ``start / frame_rate`` and ``end / frame_rate``.
    confidence : float
        The mean probability (``exp`` of the log-probability) of the frames its tokens
        occupy on the path, blank frames excluded: each token's mean frame probability
        weighted by its frame count, as torchaudio's forced-alignment tutorial scores words.
    tokens : tuple of TokenSpan
        Its tokens' spans, each scored by the mean probability of its frames.
    """

    index: int
    start: int
    end: int
    start_time: float
    end_time: float
    confidence: float
    tokens: tuple[TokenSpan, ...]


def _word_tokens(words: object, sample: str) -> list[np.ndarray]:
    """Each word of a transcript as a 1-D int64 array of at least one token."""
    if isinstance(words, np.ndarray) and words.ndim == 2:
        words = list(words)
    if not isinstance(words, (Sequence, np.ndarray)) or isinstance(words, (str, bytes)):
        raise CTCInputError(f"words{sample}: expected a list of words, got {type(words).__name__}")
    out = []
    for i, word in enumerate(words):
        tokens = _args.int_array(word, f"words{sample}[{i}]")
        if tokens.ndim != 1 or tokens.size == 0:
            raise CTCInputError(
                f"words{sample}[{i}]: expected a word as a non-empty list of token ids, got "
                f"shape {tokens.shape}"
            )
        out.append(tokens)
    return out


def align_words(
    log_probs: npt.ArrayLike,
    words: Sequence,
    frame_rate: float,
    *,
    input_lengths: _args.Lengths | None = None,
    blank: int = 0,
    separator: int | None = None,
    input_kind: str = "log_probs",
) -> list:
    """Aligns a transcript given as words and returns each word's frames, times and confidence.

    Parameters
    ----------
    log_probs : array_like, shape (T, C), or (N, T, C) for a batch
        Per-frame log-probabilities (or logits with ``input_kind="logits"``), batch first.
    words : list of words, or for a batch a list of such lists
        Each word a non-empty list of token ids (never the blank).
    frame_rate : float
        Frames per second (50 for a 20 ms hop), for the times.
    input_lengths : array_like of int, shape (N,), optional
        For a batch: each sample's frames (all ``T`` by default).
    blank : int, default 0
        The blank class.
    separator : int, optional
        A word-separator token (such as ``"|"``) the model emits between words: it is put
        between consecutive words of the target and belongs to no word.
    input_kind : {"log_probs", "logits"}
        As :func:`ctc_align`; confidences are then probabilities after the softmax.

    Returns
    -------
    list of WordSpan, or for a batch a list of them per sample
        One per word, in transcript order.

    Raises
    ------
    CTCInputError
        A word that is empty or not a list of ints, a bad ``frame_rate``, and as
        :func:`forced_align` (bad tokens, a sample with no alignment).

    Examples
    --------
    >>> import numpy as np, fastctc
    >>> favoured = [0, 1, 1, 0, 3, 2, 0, 0]       # "a" (token 1), then "cb" (tokens 3, 2)
    >>> lp = np.full((8, 4), np.log(0.1))
    >>> lp[np.arange(8), favoured] = np.log(0.7)
    >>> spans = fastctc.align_words(lp, [[1], [3, 2]], frame_rate=50)
    >>> [(w.index, w.start, w.end, w.end_time, round(w.confidence, 2)) for w in spans]
    [(0, 1, 3, 0.06, 0.7), (1, 4, 6, 0.12, 0.7)]
    """
    frames_to_seconds(np.zeros(0, dtype=np.int64), frame_rate)  # checks frame_rate
    rate = float(frame_rate)
    lp = _args.log_probs_array(log_probs)
    batched = lp.ndim == 3
    if not batched:
        if input_lengths is not None:
            raise CTCInputError("input_lengths: only for a batch of (N, T, C) log_probs")
        lp, words = lp[np.newaxis], [words]
    batch, frames, _ = lp.shape
    if len(words) != batch:
        raise CTCInputError(f"words: has {len(words)} transcripts, but log_probs has N={batch}")
    transcripts = [_word_tokens(w, f"[{n}]" if batched else "") for n, w in enumerate(words)]
    sep = [] if separator is None else [_args.integer(separator, "separator")]
    targets, owners = [], []  # the target of each sample, and the word of each of its tokens
    for transcript in transcripts:
        target: list[int] = []
        owner: list[int] = []
        for i, tokens in enumerate(transcript):
            if i and sep:
                target += sep
                owner.append(-1)
            target += tokens.tolist()
            owner += [i] * len(tokens)
        targets.append(target)
        owners.append(owner)
    width = max(1, max(len(t) for t in targets))
    padded = np.zeros((batch, width), dtype=np.int64)
    for n, target in enumerate(targets):
        padded[n, : len(target)] = target
    lengths = np.array([len(t) for t in targets], dtype=np.int64)
    if input_lengths is None:
        input_lengths = np.full(batch, frames, dtype=np.int64)
    result = ctc_align(
        lp, padded, input_lengths, lengths, blank, input_kind=input_kind, layout="NTC"
    )
    failed = np.flatnonzero(~result.ok)
    if failed.size:
        n = int(failed[0])
        il = _args.lengths(input_lengths, "input_lengths", True)
        raise _no_path_error(n, int(il[n]), padded[n, : lengths[n]], result.path_scores[n])
    out = []
    for n in range(batch):
        spans, probs = result.spans[n], np.exp(result.scores[n].astype(np.float64))
        per_word: list[list[TokenSpan]] = [[] for _ in transcripts[n]]
        for position, word in enumerate(owners[n]):
            if word >= 0:
                start, end = int(spans[position, 0]), int(spans[position, 1])
                mean = float(probs[start:end].mean())
                per_word[word].append(TokenSpan(targets[n][position], start, end, mean))
        sample = []
        for i, tokens in enumerate(per_word):
            start, end = tokens[0].start, tokens[-1].end
            occupied = sum(len(t) for t in tokens)
            confidence = sum(t.score * len(t) for t in tokens) / occupied
            sample.append(
                WordSpan(i, start, end, start / rate, end / rate, confidence, tuple(tokens))
            )
        out.append(sample)
    return out if batched else out[0]
