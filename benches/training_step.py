"""fastctc inside a training step: the loss right after a model's forward and backward.

Usage::

    python benches/training_step.py                  # ASR characters and BPE, 2 threads
    python benches/training_step.py --threads 1 --shapes "BPE vocabulary" --repeats 30
    OMP_WAIT_POLICY=PASSIVE python benches/training_step.py   # torch's pool does not spin

A training loop runs torch's CPU operators (the model) right before the loss. This benchmark
times, for each shape, the loss's forward + backward (median over repeats, ms):

* **alone**: ``fastctc.ctc_loss_and_grad`` on NumPy arrays, back to back, in a child process
  that never imports torch (the speed of the kernels by themselves);
* **after model**: ``fastctc.torch.ctc_loss`` forward + backward, each time right after a
  small convolutional model's forward and backward (torch's CPU operators, on torch's
  threads), in a child process that imports torch;
* **torch after model**: the same with ``torch.nn.functional.ctc_loss``.

The ratio *after model / alone* is what a user loses inside a training loop; *torch / after
model* is fastctc's speed-up as a user's script sees it. Every child process uses the same
number of threads for fastctc and torch (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

from shapes import chosen, shapes_for

SHAPES = shapes_for("compare")
DEFAULT_SHAPES = ("ASR characters", "BPE vocabulary")

BATCH = """
import numpy as np
rng = np.random.default_rng(0)
T, N, C, S = {shape}
x = rng.standard_normal((T, N, C), dtype=np.float32)
log_probs = x - np.log(np.exp(x).sum(-1, keepdims=True))
targets = rng.integers(1, C, size=(N, S), dtype=np.int64)
input_lengths = np.full(N, T, dtype=np.int64)
target_lengths = np.full(N, S, dtype=np.int64)
"""

ALONE = """
import statistics, time, sys, fastctc
fastctc.set_num_threads({threads})
times = []
for i in range({repeats} + 3):
    start = time.perf_counter()
    fastctc.ctc_loss_and_grad(log_probs, targets, input_lengths, target_lengths)
    times.append(time.perf_counter() - start)
assert "torch" not in sys.modules
print(statistics.median(times[3:]) * 1e3)
"""

AFTER_MODEL = """
import statistics, time, torch, fastctc, fastctc.torch as ft
torch.set_num_threads({threads})
fastctc.set_num_threads({threads})
torch.manual_seed(0)
# A small acoustic model: 80 features in, 256 channels, C classes out, over T frames.
model = torch.nn.Sequential(
    torch.nn.Conv1d(80, 256, 5, padding=2), torch.nn.ReLU(),
    torch.nn.Conv1d(256, 256, 5, padding=2), torch.nn.ReLU(),
    torch.nn.Conv1d(256, C, 1),
)
features = torch.randn(N, 80, T)
lp = torch.from_numpy(log_probs).requires_grad_()
tg, il, tl = (torch.from_numpy(a) for a in (targets, input_lengths, target_lengths))
losses = {{"fastctc": ft.ctc_loss, "torch": torch.nn.functional.ctc_loss}}
times = {{name: [] for name in losses}}
for i in range({repeats} + 3):
    for name, loss_fn in losses.items():
        model.zero_grad()
        model(features).square().mean().backward()
        lp.grad = None
        start = time.perf_counter()
        loss_fn(lp, tg, il, tl).backward()
        times[name].append(time.perf_counter() - start)
print(json.dumps({{name: statistics.median(t[3:]) * 1e3 for name, t in times.items()}}))
"""


def child(code: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return result.stdout.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", help="comma-separated subset of: " + ", ".join(SHAPES))
    parser.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats (default 20)")
    args = parser.parse_args(argv)
    wanted = chosen(parser, SHAPES, args.shapes, DEFAULT_SHAPES)
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"threads {args.threads}, OMP_WAIT_POLICY {policy}, median of {args.repeats}, ms")
    print("| shape (T, N, C, S) | alone | after model | ratio | torch after model | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, shape in wanted.items():
        setup = BATCH.format(shape=", ".join(map(str, shape)))
        params = {"threads": args.threads, "repeats": args.repeats}
        alone = float(child(setup + ALONE.format(**params)))
        after = json.loads(child("import json\n" + setup + AFTER_MODEL.format(**params)))
        print(
            f"| {name} {shape} | {alone:.2f} | {after['fastctc']:.2f} | "
            f"{after['fastctc'] / alone:.2f}x | {after['torch']:.1f} | "
            f"{after['torch'] / after['fastctc']:.1f}x |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
