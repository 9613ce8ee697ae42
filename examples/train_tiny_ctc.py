"""Train a tiny recurrent model with CTC on a synthetic transcription task.

Each input is a sequence of noisy feature frames: every label of a hidden transcript is held
for one to three frames, with stretches of "silence" (noise only) between labels, and always
between two equal labels. A small bidirectional GRU learns to transcribe the frames back into
the label sequence, trained with ``fastctc.torch.CTCLoss`` -- or with ``torch.nn.CTCLoss``, to
show that the two give the same loss curve from the same seed.

Run it::

    python examples/train_tiny_ctc.py                # fastctc vs torch, side by side
    python examples/train_tiny_ctc.py --steps 600    # longer

The test suite imports :func:`train` from this file.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

NUM_LABELS = 5  # labels 1..5; class 0 is the blank
FEATURES = 8
BATCH = 16
MAX_TARGET = 6


def make_batch(generator: torch.Generator, embedding: torch.Tensor, dtype: torch.dtype):
    """A padded batch: (features (T, N, F), targets (N, S), input_lengths, target_lengths)."""
    frames, targets = [], []
    for _ in range(BATCH):
        length = int(torch.randint(1, MAX_TARGET + 1, (), generator=generator))
        labels = torch.randint(1, NUM_LABELS + 1, (length,), generator=generator).tolist()
        sequence = []  # the class shown at each frame (0: silence)
        for i, label in enumerate(labels):
            gap = int(torch.randint(0, 3, (), generator=generator))
            if i > 0 and labels[i - 1] == label:
                gap = max(gap, 1)  # equal neighbours need silence between them
            sequence += [0] * gap + [label] * int(torch.randint(1, 4, (), generator=generator))
        sequence += [0] * int(torch.randint(0, 3, (), generator=generator))
        frames.append(torch.tensor(sequence))
        targets.append(labels)
    input_lengths = torch.tensor([len(f) for f in frames])
    target_lengths = torch.tensor([len(t) for t in targets])
    T = int(input_lengths.max())
    shown = torch.zeros(T, BATCH, dtype=torch.int64)
    padded = torch.zeros(BATCH, MAX_TARGET, dtype=torch.int64)
    for n, (f, t) in enumerate(zip(frames, targets, strict=True)):
        shown[: len(f), n] = f
        padded[n, : len(t)] = torch.tensor(t)
    noise = torch.randn(T, BATCH, FEATURES, generator=generator, dtype=torch.float64)
    features = (embedding[shown] + 0.5 * noise).to(dtype)
    return features, padded, input_lengths, target_lengths


def make_task(seed: int) -> tuple[torch.Tensor, torch.Generator]:
    """The label embeddings of a task, and the generator that draws its batches."""
    generator = torch.Generator().manual_seed(seed)
    embedding = torch.randn(NUM_LABELS + 1, FEATURES, generator=generator, dtype=torch.float64)
    embedding[0] = 0.0  # silence carries no signal, only noise
    return embedding, generator


class Transcriber(nn.Module):
    """Bidirectional GRU, then per-frame log-probabilities over the blank and the labels."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.rnn = nn.GRU(FEATURES, hidden, bidirectional=True)
        self.out = nn.Linear(2 * hidden, NUM_LABELS + 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.rnn(features)
        return self.out(hidden).log_softmax(dim=-1)


def greedy_decode(log_probs: torch.Tensor, input_lengths: torch.Tensor) -> list[list[int]]:
    """Best path: the most likely class per frame, repeats merged, blanks dropped."""
    best = log_probs.argmax(dim=-1).T  # (N, T)
    out = []
    for row, length in zip(best.tolist(), input_lengths.tolist(), strict=True):
        labels, previous = [], 0
        for c in row[:length]:
            if c != previous and c != 0:
                labels.append(c)
            previous = c
        out.append(labels)
    return out


def train(
    loss_cls,
    steps: int = 300,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    lr: float = 1e-2,
    return_model: bool = False,
):
    """Trains a fresh model for ``steps`` steps and returns the loss of each step.

    Parameters
    ----------
    loss_cls : type
        ``torch.nn.CTCLoss`` or ``fastctc.torch.CTCLoss`` (anything built as
        ``loss_cls(blank=0, reduction="mean", zero_infinity=True)``).
    steps : int
        Optimiser steps, one fresh batch each.
    seed : int
        Seeds both the model's initial weights and the data, so two calls with the same seed
        see the same batches and start from the same weights.
    dtype : torch.dtype
        Of the model and the data.
    return_model : bool
        Also return the trained model.

    Returns
    -------
    list of float
        The loss at each step (or ``(losses, model)`` with ``return_model``).

    Examples
    --------
    >>> import torch
    >>> from fastctc.torch import CTCLoss
    >>> losses = train(CTCLoss, steps=3, seed=0)
    >>> len(losses)
    3
    """
    torch.manual_seed(seed)
    model = Transcriber().to(dtype)
    embedding, generator = make_task(seed)
    criterion = loss_cls(blank=0, reduction="mean", zero_infinity=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        features, targets, input_lengths, target_lengths = make_batch(generator, embedding, dtype)
        loss = criterion(model(features), targets, input_lengths, target_lengths)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    if return_model:
        return losses, model.eval()
    return losses


def accuracy(model: Transcriber, seed: int, batches: int = 8) -> float:
    """The fraction of unseen samples of task ``seed`` transcribed exactly (greedy decoding)."""
    embedding, _ = make_task(seed)
    generator = torch.Generator().manual_seed(seed + 1_000_003)  # held-out batches
    dtype = next(model.parameters()).dtype
    right = total = 0
    with torch.no_grad():
        for _ in range(batches):
            features, targets, input_lengths, target_lengths = make_batch(
                generator, embedding, dtype
            )
            decoded = greedy_decode(model(features), input_lengths)
            for n, labels in enumerate(decoded):
                right += labels == targets[n, : target_lengths[n]].tolist()
                total += 1
    return right / total


def main() -> None:
    from fastctc.torch import CTCLoss

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=25, help="print every N steps")
    args = parser.parse_args()

    runs = {}
    for name, loss_cls in (("fastctc", CTCLoss), ("torch", nn.CTCLoss)):
        start = time.perf_counter()
        losses, model = train(loss_cls, args.steps, args.seed, return_model=True)
        runs[name] = (losses, time.perf_counter() - start, accuracy(model, args.seed))

    print(f"{'step':>6} {'fastctc':>10} {'torch':>10}")
    fast, ref = runs["fastctc"][0], runs["torch"][0]
    for step in list(range(0, args.steps, args.every)) + [args.steps - 1]:
        print(f"{step:>6} {fast[step]:>10.5f} {ref[step]:>10.5f}")
    gap = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(fast, ref, strict=True))
    print(f"largest relative difference between the curves: {gap:.2e}")
    for name, (_, seconds, acc) in runs.items():
        print(f"{name:>8}: {seconds:.1f} s, exact transcriptions after training: {acc:.0%}")


if __name__ == "__main__":
    main()
