"""Word alignments written as JSON, CTM or a Praat TextGrid (``python -m fastctc align``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["FORMATS", "AlignedWord", "format_for", "to_ctm", "to_json", "to_textgrid", "write"]

FORMATS = ("json", "ctm", "textgrid")


@dataclass(frozen=True)
class AlignedWord:
    """One word of a transcript with its time on the recording.

    Attributes
    ----------
    word : str
        The word as the transcript spells it.
    start, end : float
        Seconds from the recording's start: its first token's first frame to its last
        token's last frame (``frame / frame_rate``).
    score : float
        The mean probability of the frames its tokens occupy on the best path, in [0, 1]
        (:attr:`fastctc.WordSpan.confidence`).
    """

    word: str
    start: float
    end: float
    score: float


def format_for(path: object, fmt: str | None) -> str:
    """The format to write: ``fmt``, else the one ``path``'s suffix names, else ``"json"``.

    >>> format_for("a/b.TextGrid", None), format_for("b.ctm", "json"), format_for(None, None)
    ('textgrid', 'json', 'json')
    """
    if fmt is not None:
        return fmt
    suffix = str(path).rsplit(".", 1)[-1].lower() if path is not None and "." in str(path) else ""
    return suffix if suffix in FORMATS else "json"


def _seconds(value: float) -> float:
    return round(float(value), 6)


def to_json(words: Sequence[AlignedWord]) -> str:
    """``{"words": [{"word", "start", "end", "score"}, ...]}``, times in seconds.

    >>> print(to_json([AlignedWord("hi", 0.1, 0.3, 0.9)]))
    {"words": [{"word": "hi", "start": 0.1, "end": 0.3, "score": 0.9}]}
    """
    items = [
        {
            "word": w.word,
            "start": _seconds(w.start),
            "end": _seconds(w.end),
            "score": round(w.score, 6),
        }
        for w in words
    ]
    return json.dumps({"words": items}, ensure_ascii=False)


def to_ctm(words: Sequence[AlignedWord], utterance: str) -> str:
    """NIST CTM: ``<utterance> 1 <start> <duration> <word> <score>``, one word a line.

    >>> print(to_ctm([AlignedWord("hi", 0.1, 0.3, 0.9)], "rec1"), end="")
    rec1 1 0.100 0.200 hi 0.9000
    """
    utterance = "_".join(utterance.split()) or "utterance"
    return "".join(
        f"{utterance} 1 {w.start:.3f} {w.end - w.start:.3f} {w.word} {w.score:.4f}\n" for w in words
    )


def _praat_text(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def to_textgrid(words: Sequence[AlignedWord], duration: float) -> str:
    """Praat's long text TextGrid with one interval tier, ``"words"``.

    Its intervals cover ``[0, duration]``: one per word, and intervals with empty text for
    the time before, between and after the words.

    >>> grid = to_textgrid([AlignedWord("hi", 0.1, 0.3, 0.9)], duration=0.5)
    >>> [line.strip() for line in grid.splitlines() if "text =" in line]
    ['text = ""', 'text = "hi"', 'text = ""']
    """
    intervals: list[tuple[float, float, str]] = []
    time = 0.0
    for w in words:
        start, end = _seconds(w.start), _seconds(w.end)
        if start > time:
            intervals.append((time, start, ""))
        intervals.append((start, end, w.word))
        time = end
    duration = max(_seconds(duration), time)
    if duration > time or not intervals:
        intervals.append((time, duration, ""))
    lines = [
        'File type = "ooTextFile"',
        'Object class = "TextGrid"',
        "",
        "xmin = 0 ",
        f"xmax = {duration} ",
        "tiers? <exists> ",
        "size = 1 ",
        "item []: ",
        "    item [1]:",
        '        class = "IntervalTier" ',
        '        name = "words" ',
        "        xmin = 0 ",
        f"        xmax = {duration} ",
        f"        intervals: size = {len(intervals)} ",
    ]
    for i, (start, end, text) in enumerate(intervals, 1):
        lines += [
            f"        intervals [{i}]:",
            f"            xmin = {start} ",
            f"            xmax = {end} ",
            f"            text = {_praat_text(text)} ",
        ]
    return "\n".join(lines) + "\n"


def write(words: Sequence[AlignedWord], fmt: str, utterance: str, duration: float) -> str:
    """The text of ``words`` in format ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "json":
        return to_json(words) + "\n"
    if fmt == "ctm":
        return to_ctm(words, utterance)
    if fmt == "textgrid":
        return to_textgrid(words, duration)
    raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
