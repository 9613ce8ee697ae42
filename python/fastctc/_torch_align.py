"""torchaudio's forced-alignment functions on tensors: :func:`forced_align` and
:func:`merge_tokens`, re-exported by :mod:`fastctc.torch`.

Code written for ``torchaudio.functional`` runs unchanged with ``fastctc.torch`` in its place::

    import fastctc.torch as F   # instead of torchaudio.functional
    aligned_tokens, alignment_scores = F.forced_align(emission, targets, blank=0)
    token_spans = F.merge_tokens(aligned_tokens[0], alignment_scores[0].exp())

The computation is :func:`fastctc.forced_align` (the CPU Viterbi of :func:`fastctc.ctc_align`);
this module only moves tensors to NumPy and back.

>>> import torch, fastctc.torch as F
>>> emission = torch.full((1, 5, 3), 0.05).log()
>>> emission[0, torch.arange(5), torch.tensor([0, 1, 1, 0, 2])] = torch.tensor(0.9).log()
>>> labels, scores = F.forced_align(emission, torch.tensor([[1, 2]], dtype=torch.int32))
>>> labels
tensor([[0, 1, 1, 0, 2]], dtype=torch.int32)
>>> [(s.token, s.start, s.end) for s in F.merge_tokens(labels[0], scores[0].exp())]
[(1, 1, 3), (2, 4, 5)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
from torch import Tensor

import fastctc
from fastctc.alignment import TokenSpan

__all__ = ["TokenSpan", "forced_align", "merge_tokens"]

IntArg = Union[Tensor, Sequence[int], np.ndarray, None]  # noqa: UP007 (runtime alias, py3.10)

_INDEX_DTYPES = (torch.int32, torch.int64)


def _host(value: object) -> object:
    """A tensor as a NumPy array on the CPU (half precision widened to float32); anything else
    unchanged."""
    if not isinstance(value, Tensor):
        return value
    value = value.detach().cpu()
    if value.dtype in (torch.float16, torch.bfloat16):
        value = value.float()
    return value.resolve_conj().resolve_neg().numpy()


def forced_align(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: IntArg = None,
    target_lengths: IntArg = None,
    blank: int = 0,
    *,
    star_score: float | None = None,
) -> tuple[Tensor, Tensor]:
    """``torchaudio.functional.forced_align``, batched: see :func:`fastctc.forced_align`.

    Takes torchaudio's arguments in its order: ``log_probs`` ``(N, T, C)`` (any device and
    float dtype; computed on the CPU, half precision in float32), padded ``targets`` ``(N, S)``,
    optional lengths. Returns ``(labels, scores)``, each ``(N, T)`` on the device of
    ``log_probs``: labels in the dtype of ``targets`` (int32 or int64, as torchaudio),
    scores in the dtype of ``log_probs``. ``N`` may exceed 1; padding frames hold the blank
    and a score of 0. No gradient flows through the scores. ``star_score``: the star token
    ``C``, as :func:`fastctc.forced_align`.
    """
    labels, scores = fastctc.forced_align(
        _host(log_probs),
        _host(targets),
        _host(input_lengths),
        _host(target_lengths),
        blank,
        star_score=star_score,
    )
    device = log_probs.device if isinstance(log_probs, Tensor) else torch.device("cpu")
    label_dtype = targets.dtype if isinstance(targets, Tensor) else torch.int32
    if label_dtype not in _INDEX_DTYPES:
        label_dtype = torch.int32
    score_dtype = log_probs.dtype if isinstance(log_probs, Tensor) else None
    return (
        torch.from_numpy(labels).to(device=device, dtype=label_dtype),
        torch.from_numpy(scores).to(device=device, dtype=score_dtype),
    )


def merge_tokens(tokens: Tensor, scores: Tensor, blank: int = 0) -> list[TokenSpan]:
    """``torchaudio.functional.merge_tokens`` on tensors (or arrays): see
    :func:`fastctc.merge_tokens`."""
    return fastctc.merge_tokens(_host(tokens), _host(scores), blank)
