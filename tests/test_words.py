"""fastctc.align_words against word spans read off the brute-force best path by a plain loop."""

from __future__ import annotations

import math

import fastctc
import numpy as np
import pytest
from reference import brute_force_best, log_softmax, viterbi_path


def words_from_path(lp, path, words, separator, blank, frame_rate):
    """(index, start, end, start s, end s, confidence, token spans) of each word, by walking
    the path: each run of a non-blank class is the next token of the target."""
    owner = []  # the word of each target token, None for a separator
    for i, word in enumerate(words):
        if i and separator is not None:
            owner.append(None)
        owner += [i] * len(word)
    runs = []  # (start, end) of each token on the path
    previous = blank
    for t, c in enumerate(path):
        if c != blank and c == previous:
            runs[-1][1] = t + 1
        elif c != blank:
            runs.append([t, t + 1])
        previous = c
    assert len(runs) == len(owner)
    out = []
    for i in range(len(words)):
        mine = [r for r, o in zip(runs, owner, strict=True) if o == i]
        frames = [t for start, end in mine for t in range(start, end)]
        probs = [math.exp(lp[t, path[t]]) for t in frames]
        tokens = [
            (path[s], s, e, sum(math.exp(lp[t, path[t]]) for t in range(s, e)) / (e - s))
            for s, e in mine
        ]
        start, end = mine[0][0], mine[-1][1]
        out.append(
            (
                i,
                start,
                end,
                start / frame_rate,
                end / frame_rate,
                sum(probs) / len(probs),
                tokens,
            )
        )
    return out


def as_tuples(spans):
    return [
        (
            w.index,
            w.start,
            w.end,
            w.start_time,
            w.end_time,
            w.confidence,
            [(t.token, t.start, t.end, t.score) for t in w.tokens],
        )
        for w in spans
    ]


def assert_same(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g[:3] == e[:3]
        np.testing.assert_allclose(g[3:6], e[3:6], rtol=1e-12)
        assert [t[:3] for t in g[6]] == [t[:3] for t in e[6]]
        np.testing.assert_allclose([t[3] for t in g[6]], [t[3] for t in e[6]], rtol=1e-12)


@pytest.mark.parametrize("seed", range(25))
def test_words_match_the_brute_force_path(seed: int) -> None:
    rng = np.random.default_rng(500 + seed)
    frames, classes = int(rng.integers(3, 7)), 4
    lp = log_softmax(rng.normal(size=(frames, classes)) * 2)
    separator = 3 if seed % 2 else None
    tokens = [1, 2] if separator else [1, 2, 3]
    words = [
        [int(v) for v in rng.choice(tokens, size=int(rng.integers(1, 3)))]
        for _ in range(int(rng.integers(1, 3)))
    ]
    target = []
    for i, word in enumerate(words):
        target += ([separator] if i and separator else []) + word
    _, path = brute_force_best(lp, target, 0)
    if path is None:
        with pytest.raises(fastctc.CTCInputError, match="no alignment"):
            fastctc.align_words(lp, words, frame_rate=25.0, separator=separator)
        return
    got = fastctc.align_words(lp, words, frame_rate=25.0, separator=separator)
    assert_same(as_tuples(got), words_from_path(lp, path, words, separator, 0, 25.0))


def test_a_batch_of_transcripts_with_logits_and_lengths() -> None:
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(3, 40, 7)) * 3
    lp = log_softmax(logits)
    batch_words = [[[1, 2], [3], [4, 5, 4]], [[2, 2]], [[5], [6]]]
    lengths = [40, 31, 9]
    got = fastctc.align_words(
        logits,
        batch_words,
        frame_rate=50,
        input_lengths=lengths,
        input_kind="logits",
    )
    for n, words in enumerate(batch_words):
        target = [t for word in words for t in word]
        _, path = viterbi_path(lp[n, : lengths[n]], target)
        assert_same(as_tuples(got[n]), words_from_path(lp[n], path, words, None, 0, 50.0))


def test_separator_and_blank_elsewhere() -> None:
    rng = np.random.default_rng(9)
    lp = log_softmax(rng.normal(size=(30, 6)) * 3)
    words = [[1, 2], [3], [1, 4]]
    got = fastctc.align_words(lp, words, frame_rate=100, separator=5, blank=0)
    _, path = viterbi_path(lp, [1, 2, 5, 3, 5, 1, 4])
    assert_same(as_tuples(got), words_from_path(lp, path, words, 5, 0, 100.0))
    assert all(w.start < w.end for w in got)
    assert all(a.end <= b.start for a, b in zip(got, got[1:], strict=False))


def test_word_errors() -> None:
    lp = np.log(np.full((6, 4), 0.25))
    with pytest.raises(fastctc.CTCInputError, match=r"words\[1\]: expected a word as a non-empty"):
        fastctc.align_words(lp, [[1], []], frame_rate=50)
    with pytest.raises(fastctc.CTCInputError, match="words: expected a list of words"):
        fastctc.align_words(lp, 3, frame_rate=50)
    with pytest.raises(fastctc.CTCTypeError, match=r"words\[0\]: expected integers"):
        fastctc.align_words(lp, [[1.5]], frame_rate=50)
    with pytest.raises(fastctc.CTCInputError, match="frame_rate"):
        fastctc.align_words(lp, [[1]], frame_rate=0)
    with pytest.raises(fastctc.CTCInputError, match="input_lengths: only for a batch"):
        fastctc.align_words(lp, [[1]], frame_rate=50, input_lengths=[6])
    with pytest.raises(fastctc.CTCInputError, match="words: has 1 transcripts, but log_probs"):
        fastctc.align_words(lp[None].repeat(2, 0), [[[1]]], frame_rate=50)
    with pytest.raises(fastctc.CTCInputError, match="sample 0 has no alignment"):
        fastctc.align_words(lp, [[1, 1, 1], [2, 2]], frame_rate=50)
    with pytest.raises(fastctc.CTCInputError, match="blank"):
        fastctc.align_words(lp, [[1], [2]], frame_rate=50, separator=0)
