"""Builders for random CTC problems and comparison helpers shared by the test modules."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from reference import ctc_reference, log_softmax


@dataclass
class Case:
    log_probs: np.ndarray  # (T, N, C) float64, C-contiguous
    targets: list  # N lists of labels, each exactly target_lengths[n] long
    input_lengths: np.ndarray  # (N,) int64
    target_lengths: np.ndarray  # (N,) int64
    blank: int  # as passed to fastctc (may be negative)
    max_target_length: int  # S, the padded width

    @property
    def num_classes(self) -> int:
        return self.log_probs.shape[2]

    def padded(self, pad=0, dtype=np.int64) -> np.ndarray:
        """(N, S) targets; entries past each length are filled with ``pad``."""
        out = np.full((len(self.targets), self.max_target_length), pad, dtype=dtype)
        for n, target in enumerate(self.targets):
            out[n, : len(target)] = target
        return out

    def concatenated(self, dtype=np.int64) -> np.ndarray:
        flat = [label for target in self.targets for label in target]
        return np.array(flat, dtype=dtype)

    def reference(self, reduction="mean", zero_infinity=False, log_probs=None):
        lp = self.log_probs if log_probs is None else log_probs
        return ctc_reference(
            np.asarray(lp, dtype=np.float64),
            self.targets,
            self.input_lengths,
            self.target_lengths,
            blank=self.blank,
            reduction=reduction,
            zero_infinity=zero_infinity,
        )


def frames_needed(target) -> int:
    """The fewest frames that can emit ``target``: one per label, one blank per repeat."""
    repeats = sum(1 for i in range(1, len(target)) if target[i] == target[i - 1])
    return len(target) + repeats


def make_case(
    rng,
    num_frames,
    batch,
    num_classes,
    max_target_length,
    blank=0,
    *,
    normalised=True,
    feasible=True,
    neg_inf_fraction=0.0,
    min_input_length=0,
    repeat_probability=0.3,
    full_targets=False,
) -> Case:
    """A random batch.

    With ``feasible=True`` each target is short enough for its input length (counting the
    blanks repeated labels need), so every loss is finite unless ``neg_inf_fraction``
    blocks every path.  With ``feasible=False`` lengths are drawn freely and some losses
    are usually infinite.  ``full_targets`` makes every target as long as allowed.
    """
    blank_index = blank % num_classes
    labels = [c for c in range(num_classes) if c != blank_index]
    input_lengths = rng.integers(min_input_length, num_frames + 1, size=batch)
    targets = []
    for n in range(batch):
        if not labels:
            targets.append([])
            continue
        limit = max_target_length
        if feasible:
            limit = min(limit, int(input_lengths[n]))
        length = limit if full_targets else int(rng.integers(0, limit + 1))
        target = []
        for _ in range(length):
            if target and rng.random() < repeat_probability:
                target.append(target[-1])
            else:
                target.append(int(rng.choice(labels)))
        if feasible:
            # Drop labels from the end until the target fits in the input length.
            while target and frames_needed(target) > input_lengths[n]:
                target.pop()
        targets.append(target)
    target_lengths = np.array([len(t) for t in targets], dtype=np.int64)

    logits = rng.normal(scale=2.0, size=(num_frames, batch, num_classes))
    if normalised:
        log_probs = log_softmax(logits)
    else:
        log_probs = logits + rng.normal(scale=2.0)
    if neg_inf_fraction > 0:
        log_probs[rng.random(log_probs.shape) < neg_inf_fraction] = -np.inf
    return Case(
        log_probs=np.ascontiguousarray(log_probs),
        targets=targets,
        input_lengths=input_lengths.astype(np.int64),
        target_lengths=target_lengths,
        blank=blank,
        max_target_length=max_target_length,
    )


def with_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """The same values as ``array`` (3-D or 2-D) in a different memory layout."""
    if layout == "C":
        return np.ascontiguousarray(array)
    if layout == "F":
        out = np.asfortranarray(array)
        assert array.ndim == 1 or out.flags.f_contiguous
        return out
    if layout == "reversed":  # negative stride along time
        out = np.ascontiguousarray(array[::-1])[::-1]
        assert out.strides[0] < 0 or array.shape[0] < 2
        return out
    if layout == "reversed_classes":  # negative stride along classes
        out = np.ascontiguousarray(array[..., ::-1])[..., ::-1]
        assert out.strides[-1] < 0 or array.shape[-1] < 2
        return out
    if layout == "strided":  # every other element of a bigger buffer
        shape = list(array.shape)
        shape[-1] *= 2
        big = np.full(shape, np.nan, dtype=array.dtype)
        big[..., ::2] = array
        return big[..., ::2]
    if layout == "batch_major":  # (N, T, C) in memory, transposed view
        if array.ndim != 3:
            return array
        return np.ascontiguousarray(array.transpose(1, 0, 2)).transpose(1, 0, 2)
    raise ValueError(layout)


LAYOUTS = ["C", "F", "reversed", "reversed_classes", "strided", "batch_major"]


def as_lengths(values, kind: str):
    """Lengths in one of the accepted forms."""
    values = [int(v) for v in values]
    if kind == "list":
        return values
    if kind == "tuple":
        return tuple(values)
    return np.array(values, dtype=kind)


LENGTH_KINDS = ["list", "tuple", "int64", "int32", "int16", "uint8", "uint32", "uint64"]
TARGET_DTYPES = ["int64", "int32", "int16", "uint8", "uint32", "uint64", "int8"]


def assert_close_or_same_nonfinite(actual, expected, rtol, atol, what=""):
    """allclose that also requires inf / NaN in exactly the same places."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=f"{what}: NaN")
    np.testing.assert_array_equal(
        np.isposinf(actual), np.isposinf(expected), err_msg=f"{what}: +inf"
    )
    np.testing.assert_array_equal(
        np.isneginf(actual), np.isneginf(expected), err_msg=f"{what}: -inf"
    )
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=rtol, atol=atol, err_msg=what)
