"""The alignment example recovers the timings it was built from."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "align_synthetic.py"


def load_example():
    spec = importlib.util.spec_from_file_location("align_synthetic", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("text", ["hello world", "aabb", "speech"])
def test_alignment_example_recovers_true_spans(text: str) -> None:
    example = load_example()
    result, _, true_spans = example.align(text, seed=1)
    assert result.ok[0]
    for (start, end), (true_start, true_end) in zip(result.spans[0], true_spans, strict=True):
        # Peaked synthetic frames: the best path finds every character on its own frames.
        assert true_start <= start < end <= true_end
