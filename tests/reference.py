"""An independent, deliberately simple NumPy reference for the CTC loss and its gradient.

Everything here is float64 and log-space, written for clarity rather than speed:
plain Python loops over frames and extended states, no clever indexing.  It must not
share code with fastctc; the tests trust it because `test_reference.py` checks it
against a brute-force enumeration of every alignment on many tiny cases.

Conventions (the fastctc contract, docs/design.md#gradient):

* ``log_probs`` has shape (T, N, C); sample ``n`` uses frames ``t < input_lengths[n]``.
* A sample's loss is ``-log sum_{alignments a} exp(sum_t log_probs[t, n, a_t])``.
  No normalisation is assumed.
* ``gamma[t, c]`` is the posterior probability that frame ``t`` emits class ``c``.
* ``grad_wrt="log_probs"`` gradient: ``-gamma`` (the true derivative).
  ``grad_wrt="logits"`` gradient: ``exp(log_probs) - gamma`` (torch's convention).
  Both are scaled by the reduction, zero on frames ``t >= input_length``, NaN on the
  valid frames of a sample with infinite loss unless ``zero_infinity``, then 0.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

NEG_INF = -math.inf


# --------------------------------------------------------------------------------------
# scalar helpers


def logsumexp(values) -> float:
    """log(sum(exp(v))) over an iterable of floats; -inf for an empty or all -inf input."""
    values = [float(v) for v in values]
    if not values:
        return NEG_INF
    m = max(values)
    if m == NEG_INF:
        return NEG_INF
    return m + math.log(sum(math.exp(v - m) for v in values))


def normalize_blank(blank: int, num_classes: int) -> int:
    """A negative blank counts from the end, like Python indexing."""
    return blank + num_classes if blank < 0 else blank


def extend_target(target, blank: int) -> list[int]:
    """The extended label sequence: blank, l1, blank, l2, ..., lS, blank (length 2S+1)."""
    extended = [blank]
    for label in target:
        extended.append(int(label))
        extended.append(blank)
    return extended


# --------------------------------------------------------------------------------------
# one sample


@dataclass
class SampleResult:
    loss: float  # -log p(target | log_probs); +inf when no alignment exists
    log_alpha: np.ndarray  # (T, 2S+1); log prob of frames 0..t, ending in state s at t
    log_beta: np.ndarray  # (T, 2S+1); log prob of frames t+1..T-1, given state s at t
    gamma: np.ndarray  # (T, C); posterior class occupancy (NaN rows when loss is inf)


def ctc_sample(log_probs, target, blank: int = 0) -> SampleResult:
    """CTC for one sample.

    ``log_probs``: (T, C) array, already cut to this sample's input length (T may be 0).
    ``target``: a sequence of labels, already cut to this sample's target length.
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    num_frames, num_classes = lp.shape
    blank = normalize_blank(blank, num_classes)
    ext = extend_target(target, blank)
    num_states = len(ext)

    log_alpha = np.full((num_frames, num_states), NEG_INF)
    log_beta = np.full((num_frames, num_states), NEG_INF)
    gamma = np.zeros((num_frames, num_classes))

    if num_frames == 0:
        # No frames: only the empty target has (exactly one, empty) alignment.
        loss = 0.0 if len(target) == 0 else math.inf
        return SampleResult(loss, log_alpha, log_beta, gamma)

    def may_skip_to(s: int) -> bool:
        """May an alignment jump from state s-2 straight to state s?

        Only into a label state, and only if that label differs from the previous label
        (a repeated label needs the blank between its copies).
        """
        return s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]

    # Forward: alpha[t, s] = log P(frames 0..t emitted, in extended state s at frame t).
    log_alpha[0, 0] = lp[0, ext[0]]
    if num_states > 1:
        log_alpha[0, 1] = lp[0, ext[1]]
    for t in range(1, num_frames):
        for s in range(num_states):
            predecessors = [log_alpha[t - 1, s]]
            if s >= 1:
                predecessors.append(log_alpha[t - 1, s - 1])
            if may_skip_to(s):
                predecessors.append(log_alpha[t - 1, s - 2])
            log_alpha[t, s] = logsumexp(predecessors) + lp[t, ext[s]]

    # A complete alignment ends in the last label or the final blank.
    final_states = [num_states - 1] + ([num_states - 2] if num_states > 1 else [])
    log_likelihood = logsumexp(log_alpha[num_frames - 1, s] for s in final_states)

    # Backward: beta[t, s] = log P(frames t+1..T-1 emitted | in state s at frame t).
    for s in final_states:
        log_beta[num_frames - 1, s] = 0.0
    for t in range(num_frames - 2, -1, -1):
        for s in range(num_states):
            successors = [log_beta[t + 1, s] + lp[t + 1, ext[s]]]
            if s + 1 < num_states:
                successors.append(log_beta[t + 1, s + 1] + lp[t + 1, ext[s + 1]])
            if s + 2 < num_states and may_skip_to(s + 2):
                successors.append(log_beta[t + 1, s + 2] + lp[t + 1, ext[s + 2]])
            log_beta[t, s] = logsumexp(successors)

    if log_likelihood == NEG_INF:
        gamma[:, :] = np.nan
        return SampleResult(math.inf, log_alpha, log_beta, gamma)

    # Posterior: P(state s at frame t | target) = exp(alpha + beta - log_likelihood);
    # the class occupancy sums it over every state that carries that class.
    for t in range(num_frames):
        for s in range(num_states):
            gamma[t, ext[s]] += math.exp(log_alpha[t, s] + log_beta[t, s] - log_likelihood)
    return SampleResult(-log_likelihood, log_alpha, log_beta, gamma)


# --------------------------------------------------------------------------------------
# a batch


@dataclass
class BatchResult:
    loss: np.ndarray  # 0-d for "sum"/"mean", (N,) for "none"
    grad_log_probs: np.ndarray  # (T, N, C): d loss / d log_probs
    grad_logits: np.ndarray  # (T, N, C): torch's convention, exp(log_probs) - gamma
    sample_losses: np.ndarray  # (N,) unreduced, before zero_infinity


def targets_from_padded(targets, target_lengths) -> list[list[int]]:
    """Cut each row of a padded (N, S) target array to its length (padding is never read)."""
    targets = np.asarray(targets)
    return [[int(v) for v in targets[n, : int(tl)]] for n, tl in enumerate(target_lengths)]


def targets_from_concatenated(targets, target_lengths) -> list[list[int]]:
    """Split a 1-D concatenated target array by the target lengths."""
    targets = np.asarray(targets).reshape(-1)
    out, start = [], 0
    for tl in target_lengths:
        out.append([int(v) for v in targets[start : start + int(tl)]])
        start += int(tl)
    return out


def reduction_scales(target_lengths, reduction: str) -> np.ndarray:
    """The factor each sample's loss (and gradient) is multiplied by before summing."""
    target_lengths = [int(tl) for tl in target_lengths]
    n = len(target_lengths)
    if reduction in ("sum", "none"):
        return np.ones(n)
    if reduction == "mean":
        return np.array([1.0 / (n * max(tl, 1)) for tl in target_lengths])
    raise ValueError(f"unknown reduction {reduction!r}")


def ctc_reference(
    log_probs,
    targets,
    input_lengths,
    target_lengths,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> BatchResult:
    """CTC over a batch.

    ``log_probs``: (T, N, C).  ``targets``: a list of N label sequences, each exactly as
    long as its target length (use ``targets_from_padded`` / ``targets_from_concatenated``).
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    num_frames, batch, num_classes = lp.shape
    input_lengths = [int(v) for v in np.asarray(input_lengths).reshape(-1)]
    target_lengths = [int(v) for v in np.asarray(target_lengths).reshape(-1)]
    assert len(targets) == len(input_lengths) == len(target_lengths) == batch
    for n in range(batch):
        assert len(targets[n]) == target_lengths[n]
        assert 0 <= input_lengths[n] <= num_frames

    scales = reduction_scales(target_lengths, reduction)
    sample_losses = np.zeros(batch)
    losses = np.zeros(batch)
    grad_log_probs = np.zeros_like(lp)
    grad_logits = np.zeros_like(lp)
    for n in range(batch):
        length = input_lengths[n]
        frames = lp[:length, n, :]
        result = ctc_sample(frames, targets[n], blank)
        sample_losses[n] = result.loss
        if math.isinf(result.loss) and zero_infinity:
            continue  # loss 0, gradient 0
        losses[n] = result.loss
        if math.isinf(result.loss):
            grad_log_probs[:length, n, :] = np.nan
            grad_logits[:length, n, :] = np.nan
            continue
        grad_log_probs[:length, n, :] = -result.gamma * scales[n]
        grad_logits[:length, n, :] = (np.exp(frames) - result.gamma) * scales[n]

    if reduction == "none":
        loss = losses
    else:
        loss = np.array(np.sum(losses * scales))
    return BatchResult(loss, grad_log_probs, grad_logits, sample_losses)


# --------------------------------------------------------------------------------------
# brute force, for tiny cases only


def collapse(path, blank: int) -> list[int]:
    """The CTC many-to-one map: merge runs of equal symbols, then drop blanks."""
    out = []
    previous = None
    for symbol in path:
        if symbol != previous and symbol != blank:
            out.append(int(symbol))
        previous = symbol
    return out


def brute_force_sample(log_probs, target, blank: int = 0) -> tuple[float, np.ndarray]:
    """(loss, gamma) by enumerating all C**T paths.  Only for T, C tiny."""
    lp = np.asarray(log_probs, dtype=np.float64)
    num_frames, num_classes = lp.shape
    blank = normalize_blank(blank, num_classes)
    target = [int(v) for v in target]
    scores = []
    paths = []
    for path in itertools.product(range(num_classes), repeat=num_frames):
        if collapse(path, blank) == target:
            scores.append(sum(lp[t, c] for t, c in enumerate(path)))
            paths.append(path)
    log_likelihood = logsumexp(scores)
    gamma = np.zeros((num_frames, num_classes))
    if log_likelihood == NEG_INF:
        gamma[:, :] = np.nan
        return math.inf, gamma
    for path, score in zip(paths, scores, strict=True):
        weight = math.exp(score - log_likelihood)
        for t, c in enumerate(path):
            gamma[t, c] += weight
    return -log_likelihood, gamma


def count_alignments(num_frames: int, num_classes: int, target, blank: int = 0) -> int:
    """How many length-T paths collapse to ``target`` (brute force)."""
    blank = normalize_blank(blank, num_classes)
    target = [int(v) for v in target]
    return sum(
        collapse(path, blank) == target
        for path in itertools.product(range(num_classes), repeat=num_frames)
    )


# --------------------------------------------------------------------------------------
# small utilities used by several test modules


def log_softmax(x, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


def logits_grad_from_log_probs_grad(grad_log_probs, log_probs) -> np.ndarray:
    """Chain rule through log_probs = log_softmax(logits) over the last axis.

    d log_softmax(z)_c / d z_j = [c == j] - softmax(z)_j, so
    dL/dz_j = g_j - softmax_j * sum_c g_c.
    """
    g = np.asarray(grad_log_probs, dtype=np.float64)
    p = np.exp(np.asarray(log_probs, dtype=np.float64))
    return g - p * np.sum(g, axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------
# best paths (forced alignment), for the aligner's tests


def viterbi_path(log_probs, target, blank: int = 0, star_score=None) -> tuple[float, list]:
    """The best path of one sample by a plain max-product DP with back-pointers.

    Ties follow fastctc's documented rule: a state prefers staying, then advancing by one,
    then skipping a blank; the path ends in the final blank when it ties with the last label.
    ``star_score``: the class ``C`` (one past the columns) scores it at every frame.
    Returns ``(score, path)``, ``(-inf, None)`` when no path has a finite score.
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    num_frames, num_classes = lp.shape
    blank = normalize_blank(blank, num_classes)
    ext = extend_target(target, blank)

    def emit(t: int, c: int) -> float:
        return float(star_score) if c == num_classes else float(lp[t, c])

    if num_frames == 0:
        return (0.0, []) if not target else (NEG_INF, None)
    best = [[NEG_INF] * len(ext) for _ in range(num_frames)]
    back = [[0] * len(ext) for _ in range(num_frames)]
    best[0][0] = emit(0, ext[0])
    if len(ext) > 1:
        best[0][1] = emit(0, ext[1])
    for t in range(1, num_frames):
        for s, c in enumerate(ext):
            choice, step = best[t - 1][s], 0
            if s >= 1 and best[t - 1][s - 1] > choice:
                choice, step = best[t - 1][s - 1], 1
            if s >= 2 and c != blank and ext[s - 2] != c and best[t - 1][s - 2] > choice:
                choice, step = best[t - 1][s - 2], 2
            best[t][s] = choice + emit(t, c)
            back[t][s] = step
    end = len(ext) - 1
    if len(ext) > 1 and best[-1][end - 1] > best[-1][end]:
        end -= 1
    score = best[-1][end]
    if not math.isfinite(score):
        return score, None
    path = [0] * num_frames
    for t in range(num_frames - 1, -1, -1):
        path[t] = ext[end]
        end -= back[t][end]
    return score, path


def brute_force_best(log_probs, target, blank: int = 0, star_score=None) -> tuple[float, list]:
    """The highest-scoring path by enumerating all (C+1)**T paths (the extra class is the star
    when ``star_score`` is given). Only for T, C tiny; ties give the first path found."""
    lp = np.asarray(log_probs, dtype=np.float64)
    num_frames, num_classes = lp.shape
    blank = normalize_blank(blank, num_classes)
    target = [int(v) for v in target]
    classes = num_classes + (star_score is not None)
    best_score, best_path = NEG_INF, None
    for path in itertools.product(range(classes), repeat=num_frames):
        if collapse(path, blank) == target:
            score = sum(
                float(star_score) if c == num_classes else lp[t, c] for t, c in enumerate(path)
            )
            if score > best_score:
                best_score, best_path = score, list(path)
    return best_score, best_path


def token_runs(tokens, scores, blank: int = 0) -> list[tuple[int, int, int, float]]:
    """(token, start, end, mean score) of each run of equal non-blank tokens, by a loop."""
    runs = []
    t = 0
    while t < len(tokens):
        end = t
        while end < len(tokens) and tokens[end] == tokens[t]:
            end += 1
        if tokens[t] != blank:
            runs.append((int(tokens[t]), t, end, sum(float(v) for v in scores[t:end]) / (end - t)))
        t = end
    return runs
