"""The aligner in bounded memory: long samples run in segments recomputed from checkpoints
(``src/cpu/viterbi.rs``), and every segment length gives the path of the plain Viterbi.

``FASTCTC_ALIGN_SEGMENT_FRAMES`` (read on every call) forces the segment length, so that
short cases take the checkpointed route too.
"""

from __future__ import annotations

import fastctc
import numpy as np
import pytest
from reference import log_softmax, viterbi_path


@pytest.mark.parametrize("segment", [1, 2, 5, 16])
def test_segmented_alignment_matches_the_reference(monkeypatch, segment: int) -> None:
    monkeypatch.setenv("FASTCTC_ALIGN_SEGMENT_FRAMES", str(segment))
    rng = np.random.default_rng(segment)
    logits = rng.normal(size=(4, 37, 6)) * 2  # (N, T, C)
    lp = log_softmax(logits)
    targets = [[1, 2, 2, 3], [6, 4, 6], [5] * 6, [6]]
    lengths = [37, 30, 12, 1]
    padded = np.array([t + [1] * (6 - len(t)) for t in targets])
    tl = [len(t) for t in targets]
    labels, scores = fastctc.forced_align(lp, padded, lengths, tl, star_score=-1.5)
    result = fastctc.ctc_align(
        logits, padded, lengths, tl, input_kind="logits", layout="NTC", star_score=-1.5
    )
    for n, target in enumerate(targets):
        score, path = viterbi_path(lp[n, : lengths[n]], target, star_score=-1.5)
        assert labels[n, : lengths[n]].tolist() == path
        np.testing.assert_allclose(scores[n].sum(), score, rtol=1e-12)
        assert result.labels[n, : lengths[n]].tolist() == path
        np.testing.assert_allclose(result.path_scores[n], score, rtol=1e-10)


def test_segmented_alignment_flags_the_same_impossible_samples(monkeypatch) -> None:
    monkeypatch.setenv("FASTCTC_ALIGN_SEGMENT_FRAMES", "3")
    lp = np.log(np.full((10, 3, 4), 0.25))
    lp[7, 1, :] = -np.inf  # every path of sample 1 crosses frame 7
    lp[2, 2, 0] = np.nan  # sample 2 reads a NaN
    result = fastctc.ctc_align(lp, [[1, 2], [1, 2], [1, 2]], [10, 10, 10], [2, 2, 2])
    assert result.ok.tolist() == [True, False, False]
    assert result.path_scores[1] == -np.inf and np.isnan(result.path_scores[2])
    assert viterbi_path(lp[:, 0], [1, 2])[1] == result.labels[0].tolist()


def test_a_long_sample_in_segments_equals_its_whole_table(monkeypatch) -> None:
    # T=20,000, S=8,000: 80 MiB of two-bit back-pointers, past the 64 MiB kept whole, so the
    # default runs in segments; a segment of all T frames forces the single pass.
    rng = np.random.default_rng(0)
    lp = rng.standard_normal((1, 20000, 12), dtype=np.float32)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    target = rng.integers(1, 12, size=(1, 8000))
    segmented = fastctc.forced_align(lp, target)
    monkeypatch.setenv("FASTCTC_ALIGN_SEGMENT_FRAMES", "20000")
    whole = fastctc.forced_align(lp, target)
    assert np.array_equal(segmented[0], whole[0]) and np.array_equal(segmented[1], whole[1])
