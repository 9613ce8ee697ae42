"""Transcripts as token ids: the tokens file, the aligner's options, longest-first matching."""

from __future__ import annotations

import math
import os
import pathlib
from dataclasses import dataclass, field
from functools import cached_property

from fastctc.formats import FORMATS

__all__ = ["AlignOptions", "InputError", "load_tokens", "read_text", "tokenize"]

PathLike = str | os.PathLike


class InputError(ValueError):
    """Bad input to the aligner (files, tokens, transcript, emissions): a message, no traceback."""


def load_tokens(path: PathLike) -> tuple[str, ...]:
    """The tokens of ``path``, one a line: line ``i`` (from 0) is class ``i``.

    Lines are taken as they are, spaces included (a token may be ``" "``); a final newline
    ends the last line; ``"\\r\\n"`` ends a line too.
    """
    text = read_text(path, "tokens")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    tokens = tuple(line[:-1] if line.endswith("\r") else line for line in lines)
    if not tokens:
        raise InputError(f"{path}: no tokens (expected one token per line)")
    return tokens


@dataclass(frozen=True)
class AlignOptions:
    """What every recording of a run shares.

    Parameters
    ----------
    tokens : tuple of str
        The model's classes in order (:func:`load_tokens`); ``tokens[blank]`` is the blank.
    frame_rate : float
        Emission frames per second (50 for a 20 ms hop).
    blank : int, default 0
        The blank's class.
    word_separator : str, optional
        A token the model emits between words (such as ``"|"``); it belongs to no word.
    format : {"json", "ctm", "textgrid"}, optional
        The output format; by default the one an output file's suffix names, else JSON.
    logits : bool, default False
        The emissions are raw model outputs: a log-softmax over the classes is applied.
    """

    tokens: tuple[str, ...]
    frame_rate: float
    blank: int = 0
    word_separator: str | None = None
    format: str | None = None
    logits: bool = False
    _vocab: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(self.tokens))
        if not math.isfinite(self.frame_rate) or self.frame_rate <= 0:
            raise InputError(f"--frame-rate: expected frames per second > 0, got {self.frame_rate}")
        if not 0 <= self.blank < len(self.tokens):
            raise InputError(
                f"--blank: class {self.blank} is not in the tokens (classes 0 to "
                f"{len(self.tokens) - 1})"
            )
        if self.format is not None and self.format not in FORMATS:
            raise InputError(f"--format: expected one of {', '.join(FORMATS)}, got {self.format}")
        for i, token in enumerate(self.tokens):
            if i == self.blank or token == "":
                continue
            if token in self._vocab:
                raise InputError(
                    f"tokens: {token!r} is both class {self._vocab[token]} and class {i}"
                )
            self._vocab[token] = i
        if self.word_separator is not None and self.word_separator not in self._vocab:
            raise InputError(
                f"--word-separator: {self.word_separator!r} is not one of the tokens"
                + (" (it is the blank)" if self.tokens[self.blank] == self.word_separator else "")
            )

    @cached_property
    def _longest(self) -> int:
        return max((len(t) for t in self._vocab), default=0)

    @property
    def separator_id(self) -> int | None:
        """The word separator's class, if there is one."""
        return None if self.word_separator is None else self._vocab[self.word_separator]


def _char_name(char: str) -> str:
    return f"{char!r} (U+{ord(char):04X})"


def _tokenize_word(word: str, options: AlignOptions, source: str) -> list[int]:
    """The word's tokens, the longest first, backing off only where that leads to a dead end."""
    vocab, longest, n = options._vocab, options._longest, len(word)
    # ends[i]: the length of the longest token at i from which the rest of the word can be
    # spelled (0: none can); filled from the end, so a choice never paints itself into a corner.
    ends = [0] * (n + 1)
    for i in range(n - 1, -1, -1):
        for length in range(min(longest, n - i), 0, -1):
            if word[i : i + length] in vocab and (i + length == n or ends[i + length]):
                ends[i] = length
                break
    if n and not ends[0]:
        reach, stack = {0}, [0]  # the positions tokens can reach from the start
        while stack:
            i = stack.pop()
            for length in range(1, min(longest, n - i) + 1):
                if word[i : i + length] in vocab and i + length not in reach:
                    reach.add(i + length)
                    stack.append(i + length)
        char = word[max(p for p in reach if p < n)]
        hint = ""
        for other in (char.upper(), char.lower()):
            if other != char and other in vocab:
                hint = f" (the tokens have {other!r}: match the tokens' case)"
        blank = options.tokens[options.blank]
        if blank and word[max(p for p in reach if p < n) :].startswith(blank):
            hint = f" ({blank!r} is the blank)"
        raise InputError(
            f"{source}: the character {_char_name(char)} of the word {word!r} is not in the "
            f"tokens{hint}"
        )
    ids, i = [], 0
    while i < n:
        ids.append(vocab[word[i : i + ends[i]]])
        i += ends[i]
    return ids


def tokenize(text: str, options: AlignOptions, source: str = "transcript") -> tuple[list, list]:
    """Splits ``text`` into words on whitespace and each word into token ids.

    Tokens of several characters (``"<unk>"``, BPE pieces) are matched longest first; a
    shorter one is taken only where the longest leaves the rest of the word unspellable.

    Returns
    -------
    words : list of str
    ids : list of list of int
        Each word's classes.

    Raises
    ------
    InputError
        A character that no token spells, named with its code point and word.

    Examples
    --------
    >>> options = AlignOptions(("-", "a", "b", "ab", "<unk>"), frame_rate=50)
    >>> tokenize("ab ba <unk>a", options)
    (['ab', 'ba', '<unk>a'], [[3], [2, 1], [4, 1]])
    """
    words = text.split()
    return words, [_tokenize_word(word, options, source) for word in words]


def read_text(path: PathLike, what: str) -> str:
    try:
        return pathlib.Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what} file") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read the {what} file ({error.strerror})") from None
