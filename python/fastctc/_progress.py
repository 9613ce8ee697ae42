"""A progress bar on stderr: tqdm's when it is installed, else a one-line counter."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    """Counts finished items out of ``total``, with the elapsed time.

    Shown only when ``enabled`` and ``stream`` is a terminal, and only once ``delay`` seconds
    have passed (short runs print nothing). :meth:`tick` refreshes the elapsed time while a
    long item runs.

    Parameters
    ----------
    total : int
        Items to finish.
    unit : str
        What an item is called ("file").
    enabled : bool
        False for ``--quiet``.
    stream : file, optional
        Where to draw (``sys.stderr`` by default).
    delay : float
        Seconds before anything is drawn.
    """

    def __init__(
        self,
        total: int,
        unit: str,
        enabled: bool,
        stream: TextIO | None = None,
        delay: float = 0.5,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = enabled and callable(isatty) and bool(isatty())
        self.total, self.unit, self.done, self.label = total, unit, 0, ""
        self.start, self.delay, self.width = time.monotonic(), delay, 0
        self.bar: Any = None
        if self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(
                    total=total, unit=unit, file=self.stream, delay=delay, dynamic_ncols=True
                )

    def describe(self, label: str) -> None:
        """Names what is running now."""
        self.label = label
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=False)
        self.tick()

    def advance(self, count: int = 1) -> None:
        """``count`` more items are done."""
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        self.tick()

    def tick(self) -> None:
        """Redraws (the elapsed time moves on while an item runs)."""
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        if self.bar is not None:
            if elapsed >= self.delay:
                self.bar.refresh()
            return
        if elapsed < self.delay:
            return
        text = f"{self.done}/{self.total} {self.unit}s, {elapsed:.0f} s"
        if self.label:
            text += f" ({self.label})"
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = len(text)

    def close(self) -> None:
        """Clears the counter (tqdm leaves its final bar)."""
        if self.bar is not None:
            self.bar.close()
        elif self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
