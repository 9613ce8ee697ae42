"""The examples in the public docstrings run and print what they claim."""

from __future__ import annotations

import doctest

import fastctc
import fastctc.__main__
import fastctc.alignment
import fastctc.formats
import fastctc.transcripts
import fastctc.words
from conftest import require_torch


def test_docstring_examples_run() -> None:
    modules = (fastctc.__main__, fastctc.alignment, fastctc.formats, fastctc.transcripts)
    for module in (fastctc, *modules, fastctc.words):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, f"{module.__name__}: {result.failed} doctest(s) failed"


def test_torch_alignment_docstring_examples_run() -> None:
    require_torch()
    import fastctc._torch_align

    result = doctest.testmod(fastctc._torch_align, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_cli_info_and_demo_run(capsys) -> None:
    assert fastctc.__main__.main(["info"]) == 0
    assert "threads" in capsys.readouterr().out
    assert fastctc.__main__.main(["demo", "-T", "60", "-N", "4", "-C", "10", "-S", "12"]) == 0
    out = capsys.readouterr().out
    assert "fastctc: loss" in out
