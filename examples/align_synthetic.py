"""Forced alignment of a synthetic utterance with fastctc.ctc_align.

A fake "acoustic model" output is made for a known transcript: each character is held for a
few frames, with silence (blank) between words, plus noise. fastctc recovers the character
timings, prints them in seconds, and (with matplotlib installed) plots the log-probabilities
with the best path on top::

    python examples/align_synthetic.py                  # prints the word and character timings
    python examples/align_synthetic.py --plot align.png # also draws them (needs matplotlib)
"""

from __future__ import annotations

import argparse

import fastctc
import numpy as np

ALPHABET = "_ abcdefghijklmnopqrstuvwxyz'"  # index 0 is the blank
FRAME_RATE = 50.0  # frames per second (a 20 ms hop)


def synthetic_utterance(text: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list]:
    """(log_probs (T, C), target (S,), true per-character frame spans)."""
    rng = np.random.default_rng(seed)
    frames: list[int] = []
    spans = []
    for i, char in enumerate(text):
        if i > 0 and text[i - 1] == char:
            frames += [0]  # a repeated letter needs a blank between its copies
        frames += [0] * int(rng.integers(0, 3))
        start = len(frames)
        frames += [ALPHABET.index(char)] * int(rng.integers(2, 6))
        spans.append((start, len(frames)))
    frames += [0] * 4
    logits = rng.normal(scale=1.0, size=(len(frames), len(ALPHABET)))
    logits[np.arange(len(frames)), frames] += 5.0
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    target = np.array([ALPHABET.index(c) for c in text])
    return log_probs, target, spans


def align(text: str, seed: int = 0) -> tuple[fastctc.Alignment, np.ndarray, list]:
    """Aligns the synthetic utterance of ``text``; returns the alignment, the log-probs and the
    true spans."""
    log_probs, target, true_spans = synthetic_utterance(text, seed)
    result = fastctc.ctc_align(log_probs, target, len(log_probs), len(target))
    return result, log_probs, true_spans


def plot(log_probs: np.ndarray, result: fastctc.Alignment, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SystemExit("--plot needs matplotlib: pip install 'fastctc[plot]'") from error
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.imshow(log_probs.T, aspect="auto", origin="lower", cmap="viridis", vmin=-10, vmax=0)
    frames = np.arange(log_probs.shape[0])
    ax.plot(frames, result.labels[0], color="red", linewidth=1.5, label="best path")
    ax.set_yticks(range(len(ALPHABET)), list(ALPHABET), fontsize=6)
    ax.set_xlabel(f"frame ({1000 / FRAME_RATE:.0f} ms)")
    ax.set_ylabel("class")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", default="hello world")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="FILE.png")
    args = parser.parse_args()
    result, log_probs, true_spans = align(args.text, args.seed)
    seconds = fastctc.frames_to_seconds(result.spans, FRAME_RATE)[0]
    print(f"{len(log_probs)} frames, best path log-probability {result.path_scores[0]:.2f}")
    for char, (start, end), truth in zip(args.text, seconds, true_spans, strict=True):
        print(f"  {char!r}: {start:6.2f}s - {end:6.2f}s   (true frames {truth[0]}-{truth[1]})")
    if args.plot:
        plot(log_probs, result, args.plot)


if __name__ == "__main__":
    main()
