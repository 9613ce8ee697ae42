"""Forced alignment: fastctc.forced_align on a batch against a loop over torchaudio's.

torchaudio's ``forced_align`` takes one sample at a time, so a batch is a Python loop over
it; ``fastctc.forced_align`` takes the batch and aligns its samples in parallel. Both get the
same float32 log-probabilities (``log_softmax`` of standard normal logits) and targets
(uniform in [1, C), blank 0); the script checks that the paths are the same (where they are
not, which path scores higher, and what torchaudio finds in float64) and prints the time of
each and their ratio::

    python benches/align.py                          # N=16, T=4000, S=1000, C=32
    python benches/align.py --threads 1,2 --repeats 5
    python benches/align.py --batch 4 --frames 1000 --tokens 250

torchaudio is optional: without it, or with a torchaudio that does not load (each release
needs the torch of its own version), fastctc's time is reported alone.
"""

from __future__ import annotations

import argparse
import platform
import time

import fastctc
import numpy as np


def make_inputs(batch: int, frames: int, tokens: int, classes: int, seed: int):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((batch, frames, classes), dtype=np.float32)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    targets = rng.integers(1, classes, size=(batch, tokens)).astype(np.int32)
    return log_probs, targets


def best_time(function, repeats: int) -> tuple[float, object]:
    """The fastest of ``repeats`` calls after one warm-up, in seconds, and the last result."""
    result = function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def torchaudio_aligner():
    """torchaudio's forced_align, or the reason it cannot be used."""
    try:
        import torch
        import torchaudio
        import torchaudio.functional as F

        F.forced_align(torch.zeros(1, 2, 2).log_softmax(-1), torch.ones(1, 1, dtype=torch.int32))
    except Exception as error:  # ImportError, or a torchaudio built for another torch
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return F, f"torchaudio {torchaudio.__version__} (torch {torch.__version__})"


def path_log_prob(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each sample's path log-probability, summed in float64."""
    picked = np.take_along_axis(log_probs, labels[..., None].astype(np.int64), axis=-1)
    return picked[..., 0].astype(np.float64).sum(axis=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=4000)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=32)
    parser.add_argument("--threads", default=None, help="fastctc thread counts, e.g. 1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    log_probs, targets = make_inputs(args.batch, args.frames, args.tokens, args.classes, args.seed)
    default_threads = fastctc.get_num_threads()
    threads = [int(n) for n in args.threads.split(",")] if args.threads else [default_threads]
    print(
        f"forced alignment: N={args.batch} T={args.frames} S={args.tokens} C={args.classes}, "
        f"float32, {platform.machine()}, best of {args.repeats}"
    )

    fastctc_times = {}
    for n in threads:
        fastctc.set_num_threads(n)
        seconds, (labels, _) = best_time(
            lambda: fastctc.forced_align(log_probs, targets), args.repeats
        )
        fastctc_times[n] = seconds
        print(f"fastctc.forced_align, batch, {n} thread{'s' * (n > 1)}: {seconds * 1e3:9.1f} ms")
    fastctc.set_num_threads(default_threads)

    F, description = torchaudio_aligner()
    if F is None:
        print(f"torchaudio: not available ({description}); fastctc timed alone")
        return
    import torch

    torch.set_num_threads(1)  # its CPU aligner runs one sample on one thread anyway
    lp, tg = torch.from_numpy(log_probs), torch.from_numpy(targets)

    def loop():
        return [F.forced_align(lp[n : n + 1], tg[n : n + 1], blank=0)[0] for n in range(len(lp))]

    seconds, paths = best_time(loop, args.repeats)
    reference = torch.cat(paths).numpy()
    print(f"torchaudio.functional.forced_align, a loop over N: {seconds * 1e3:9.1f} ms")
    same = (reference == labels).all(axis=1)
    print(f"{description}: same path on {same.sum()} of {len(same)} samples")
    if not same.all():
        # Not ties: torchaudio sums float32 inputs in float32 (a path's log-probability is
        # about -12,000 here, where float32 steps by 0.001), so it can miss the best path.
        # Both paths scored in float64, and torchaudio again on the same inputs in float64:
        gain = path_log_prob(log_probs, labels) - path_log_prob(log_probs, reference)
        print(
            f"  on the other {(~same).sum()}, fastctc's path scores {gain[~same].min():.2e} to "
            f"{gain[~same].max():.2e} higher (log-probability summed in float64)"
        )
        differ = np.flatnonzero(~same)
        again = [F.forced_align(lp[n : n + 1].double(), tg[n : n + 1], blank=0)[0] for n in differ]
        agree = sum(
            bool((a[0].numpy() == labels[n]).all()) for a, n in zip(again, differ, strict=True)
        )
        print(
            f"  torchaudio on those samples in float64: fastctc's path on {agree} of {len(again)}"
        )
    for n, mine in fastctc_times.items():
        print(f"ratio torchaudio / fastctc ({n} thread{'s' * (n > 1)}): {seconds / mine:.2f}x")


if __name__ == "__main__":
    main()
