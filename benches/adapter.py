"""Times the PyTorch adapter against the raw NumPy call and torch's own CTC loss, in one process.

Usage::

    python benches/adapter.py                     # every shape, 1 and 2 threads
    python benches/adapter.py --quick             # smoke run: a few rounds, no time budget
    python benches/adapter.py --shapes "docs example" --threads 2 --budget 5
    python benches/adapter.py --calls 1           # single cold calls instead of short bursts
    python benches/adapter.py --markdown adapter.md
    python benches/adapter.py --compact --threads 2    # also the compact route, CPU tensors

What is timed, per shape (T, N, C, S) and thread count, forward and backward together:

* ``raw``: ``fastctc.ctc_loss_and_grad`` on NumPy arrays (the loss and the gradient, NumPy
  out), the cost the adapter adds to;
* ``adapter``: ``fastctc.torch.ctc_loss`` on a leaf tensor with ``requires_grad=True``, then
  ``loss.backward()`` (the gradient lands in ``.grad``, reset to ``None`` before each call as
  ``optimizer.zero_grad()`` does);
* ``torch``: ``torch.nn.functional.ctc_loss`` and ``loss.backward()`` the same way;
* with ``--floor``, ``floor``: the raw call wrapped in a do-nothing
  :class:`torch.autograd.Function` (NumPy inputs ready, outputs wrapped without copies, the
  saved gradient returned as is) and ``loss.backward()``: the least any autograd wrapper costs,
  so that ``floor - raw`` is torch's share of the overhead and ``adapter - floor`` the
  adapter's own;
* with ``--compact``, ``compact``: the adapter forced onto its compact route
  (``FASTCTC_TORCH_COMPACT=1``, python/fastctc/_torch_compact.py: gather each sample's columns,
  compute the compact problem, scatter the gradient into a zero ``(T, N, C)`` tensor), the
  route tensors off the CPU take; on CPU tensors it shows what the gather and scatter cost.

Inputs are float32 ``log_softmax`` of standard normal logits, targets uniform in [1, C), full
lengths, blank 0, reduction ``"mean"`` (the shapes and inputs of ``benches/compare.py``).
Before timing, the adapter's loss and gradient are checked to equal the raw call's exactly.

Method: each timed sample is a burst of ``k`` back-to-back calls of one contender, ``k`` chosen
so that a burst lasts about ``--burst-ms`` milliseconds (``--calls`` fixes ``k``; ``--calls 1``
times single calls, whose Python and autograd code then runs with cold caches, as in a training
step). Rounds run every contender once, until each has ``--min-rounds`` samples and
``--budget`` seconds: first the fastctc contenders, adjacent and in a fresh random order each
round (so that drift in clock speed or other load hits them alike, and none always comes
first), then torch (whose OpenMP threads keep spinning for a while after its calls, slowing
whichever contender comes next). Times are medians of the per-call times.
The overhead column is the median over rounds of ``adapter / raw - 1`` with both taken in the
same round (a paired estimate, steadier than the ratio of two medians); ``torch ÷ adapter``
above 1 means the adapter is faster. Thread counts are set with ``fastctc.set_num_threads`` and
``torch.set_num_threads``. The header records the CPU, versions and the load average before
and after (a busy machine makes every number noisy).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import fastctc
import fastctc.torch as fastctc_torch
import numpy as np
import torch
from fastctc._torch_compact import ENV as COMPACT_ENV
from shapes import shapes_for

# name -> (T, N, C, S), from benches/shapes.csv (shared with the other benchmarks).
SHAPES = shapes_for("adapter")
# The targets for the adapter's overhead over the raw call.
TARGET_PERCENT = {"docs example": 10.0}
DEFAULT_TARGET_PERCENT = 2.0

RAW, FLOOR, ADAPTER, COMPACT, TORCH = "raw", "floor", "adapter", "compact", "torch"

# --------------------------------------------------------------------------------------------
# Problems and contenders


@dataclass
class Problem:
    """One full-length batch: float32 log-probabilities (T, N, C), int64 targets and lengths."""

    log_probs: np.ndarray
    targets: np.ndarray
    input_lengths: np.ndarray
    target_lengths: np.ndarray


def make_problem(shape: tuple[int, int, int, int], seed: int) -> Problem:
    T, N, C, S = shape
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((T, N, C), dtype=np.float32)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    targets = rng.integers(1, C, size=(N, S), dtype=np.int64)
    lengths = np.full(N, T, dtype=np.int64), np.full(N, S, dtype=np.int64)
    return Problem(log_probs, targets, *lengths)


class Contender:
    """One timed computation of the mean loss and its gradient.

    ``run`` releases the previous gradient, then computes and keeps a new one, as a training
    step does (``optimizer.zero_grad()`` sets ``.grad`` to ``None``, ``backward`` fills it);
    ``release`` drops the kept gradient. The harness releases after each burst, so that one
    contender's gradient is alive at a time, as in training: large gradients then see the same
    allocator state for every contender (several live ones make glibc return and re-fault
    pages for some contender, which would then pay thousands of page faults per call).
    """

    def run(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError


class Raw(Contender):
    def __init__(self, p: Problem) -> None:
        self.args = (p.log_probs, p.targets, p.input_lengths, p.target_lengths)
        self.result: object = None

    def run(self) -> None:
        self.result = None
        self.result = fastctc.ctc_loss_and_grad(*self.args)

    def release(self) -> None:
        self.result = None


def tensors(p: Problem) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A leaf ``log_probs`` tensor sharing memory with the NumPy input: every contender reads
    the same bytes, so that none finds its input in a cache another has warmed for itself."""
    leaf = torch.from_numpy(p.log_probs).requires_grad_(True)
    targets = torch.from_numpy(p.targets)
    return leaf, targets, torch.from_numpy(p.input_lengths), torch.from_numpy(p.target_lengths)


class Autograd(Contender):
    """``loss_fn(leaf, targets, input_lengths, target_lengths).backward()``."""

    def __init__(self, p: Problem, loss_fn: Callable[..., torch.Tensor]) -> None:
        self.leaf, *self.rest = tensors(p)
        self.loss_fn = loss_fn

    def run(self) -> None:
        self.leaf.grad = None
        self.loss_fn(self.leaf, *self.rest).backward()

    def release(self) -> None:
        self.leaf.grad = None


class _Floor(torch.autograd.Function):
    """The least any autograd wrapper of the raw call costs: the raw call on ready NumPy
    arrays, its outputs wrapped without copies, the gradient saved and handed back as is."""

    @staticmethod
    def forward(ctx, leaf: torch.Tensor, p: Problem) -> torch.Tensor:
        loss, grad = fastctc.ctc_loss_and_grad(
            p.log_probs, p.targets, p.input_lengths, p.target_lengths
        )
        ctx.save_for_backward(torch.from_numpy(grad))
        return torch.from_numpy(loss)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None]:
        (grad,) = ctx.saved_tensors
        return grad, None


class Floor(Contender):
    def __init__(self, p: Problem) -> None:
        self.leaf = tensors(p)[0]
        self.problem = p

    def run(self) -> None:
        self.leaf.grad = None
        _Floor.apply(self.leaf, self.problem).backward()

    def release(self) -> None:
        self.leaf.grad = None


def compact_ctc_loss(*args: torch.Tensor) -> torch.Tensor:
    """``fastctc.torch.ctc_loss`` on its compact route (the variable is read on every call)."""
    os.environ[COMPACT_ENV] = "1"
    try:
        return fastctc_torch.ctc_loss(*args)
    finally:
        del os.environ[COMPACT_ENV]


def contenders(p: Problem, with_floor: bool, with_compact: bool) -> dict[str, Contender]:
    result: dict[str, Contender] = {RAW: Raw(p)}
    if with_floor:
        result[FLOOR] = Floor(p)
    result[ADAPTER] = Autograd(p, fastctc_torch.ctc_loss)
    if with_compact:
        result[COMPACT] = Autograd(p, compact_ctc_loss)
    result[TORCH] = Autograd(p, torch.nn.functional.ctc_loss)
    return result


def check(p: Problem, with_compact: bool) -> None:
    """The adapter's loss and gradient (on either route) must be the raw call's, bit for bit."""
    loss, grad = fastctc.ctc_loss_and_grad(
        p.log_probs, p.targets, p.input_lengths, p.target_lengths
    )
    for loss_fn in (fastctc_torch.ctc_loss, compact_ctc_loss)[: 1 + with_compact]:
        leaf, targets, input_lengths, target_lengths = tensors(p)
        ours = loss_fn(leaf, targets, input_lengths, target_lengths)
        ours.backward()
        assert leaf.grad is not None
        if not (np.array_equal(ours.detach().numpy(), loss) and np.array_equal(leaf.grad, grad)):
            raise AssertionError(f"{loss_fn.__name__}: loss or gradient differs from the raw one")


# --------------------------------------------------------------------------------------------
# Timing


@dataclass
class Timing:
    min_rounds: int
    max_rounds: int
    budget: float  # seconds per contender
    burst_seconds: float
    calls: int | None  # calls per burst; None: from burst_seconds
    floor: bool  # also time the autograd floor
    compact: bool  # also time the compact route


@dataclass
class Cell:
    """The samples of one shape at one thread count: seconds per call, one per round."""

    shape: str
    threads: int
    calls: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)

    def ms(self, name: str) -> float:
        return statistics.median(self.samples[name]) * 1e3

    def overhead_percent(self, name: str = ADAPTER) -> float:
        """Median over rounds of name / raw - 1, both from the same round."""
        pairs = zip(self.samples[name], self.samples[RAW], strict=True)
        return statistics.median(a / r - 1.0 for a, r in pairs) * 100.0


def burst(contender: Contender, calls: int) -> float:
    """Seconds per call of ``calls`` back-to-back calls; the last gradient is then released."""
    run = contender.run
    start = time.perf_counter()
    for _ in range(calls):
        run()
    seconds = time.perf_counter() - start
    contender.release()
    return seconds / calls


def calls_per_burst(contender: Contender, timing: Timing) -> int:
    if timing.calls is not None:
        return timing.calls
    seconds = min(burst(contender, 1) for _ in range(3))
    return max(1, min(1000, math.ceil(timing.burst_seconds / max(seconds, 1e-7))))


def measure(shape: str, threads: int, p: Problem, timing: Timing) -> Cell:
    fastctc.set_num_threads(threads)
    torch.set_num_threads(threads)
    named = list(contenders(p, timing.floor, timing.compact).items())
    shuffle = random.Random(f"{shape}/{threads}").shuffle
    cell = Cell(shape, threads)
    for name, contender in named:
        burst(contender, 1)  # warm up: first-call allocations, lazy initialisation
        cell.calls[name] = calls_per_burst(contender, timing)
        cell.samples[name] = []
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_ in range(timing.max_rounds):
            spent = min(sum(s) * cell.calls[n] for n, s in cell.samples.items())
            if round_ >= timing.min_rounds and spent >= timing.budget:
                break
            # fastctc's contenders in a fresh order each round, next to each other so that the
            # adapter and raw pair closely; torch last, so that its OpenMP threads (which spin
            # for a while after its calls) hit a random one of them in the next round.
            order = [item for item in named if item[0] != TORCH]
            shuffle(order)
            order += [item for item in named if item[0] == TORCH]
            for name, contender in order:
                cell.samples[name].append(burst(contender, cell.calls[name]))
    finally:
        if gc_was_enabled:
            gc.enable()
    return cell


# --------------------------------------------------------------------------------------------
# Output


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


def fmt_ms(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int) -> str:
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(cells: Sequence[Cell], command: str, load_before: float, load_after: float) -> str:
    rounds = [len(s) for c in cells for s in c.samples.values()]
    calls = sorted({n for c in cells for n in c.calls.values()})
    floor = FLOOR in cells[0].samples
    compact = COMPACT in cells[0].samples
    burst_note = (
        "single calls" if calls == [1] else f"bursts of {calls[0]}–{calls[-1]} calls (per call)"
    )
    lines = [
        "## fastctc.torch adapter: forward + backward",
        "",
        f"`{command}`",
        "",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; load average "
        f"{load_before:.2f} before, {load_after:.2f} after",
        f"- Python {platform.python_version()}, NumPy {np.__version__}, torch {torch.__version__},"
        f" fastctc {fastctc.__version__} (SIMD: {', '.join(fastctc.simd_features()) or 'none'})",
        f"- medians of {min(rounds)}–{max(rounds)} interleaved rounds; {burst_note}",
        "- overhead: median over rounds of adapter ÷ raw − 1 (target: "
        f"< {TARGET_PERCENT['docs example']:g}% on the docs example, "
        f"< {DEFAULT_TARGET_PERCENT:g}% on the others)",
    ]
    if floor:
        lines.append(
            "- floor: the raw call inside a do-nothing `torch.autograd.Function` (outputs "
            "wrapped without copies, saved gradient returned as is) and `loss.backward()`: "
            "what torch's autograd costs any wrapper"
        )
    if compact:
        lines.append(
            "- compact: the adapter on its compact route (`FASTCTC_TORCH_COMPACT=1`), the "
            "route of tensors off the CPU: columns gathered, gradient scattered back"
        )
    lines.append("")
    header = ["shape", "T, N, C, S", "threads", "raw ms"]
    header += ["floor ms", "floor overhead"] if floor else []
    header += ["adapter ms", "torch ms", "adapter overhead", "torch ÷ adapter"]
    header += ["compact ms", "compact ÷ adapter"] if compact else []
    rows = []
    over = False
    for c in cells:
        target = TARGET_PERCENT.get(c.shape, DEFAULT_TARGET_PERCENT)
        overhead = c.overhead_percent()
        over |= overhead >= target
        row = [c.shape, ", ".join(str(v) for v in SHAPES[c.shape]), str(c.threads)]
        row.append(fmt_ms(c.ms(RAW)))
        if floor:
            row += [fmt_ms(c.ms(FLOOR)), f"{c.overhead_percent(FLOOR):+.1f}%"]
        row += [fmt_ms(c.ms(ADAPTER)), fmt_ms(c.ms(TORCH))]
        row.append(f"{overhead:+.1f}%" + ("" if overhead < target else " ✗"))
        row.append(f"{c.ms(TORCH) / c.ms(ADAPTER):.2f}×")
        if compact:
            row += [fmt_ms(c.ms(COMPACT)), f"{c.ms(COMPACT) / c.ms(ADAPTER):.2f}×"]
        rows.append(row)
    lines.append(table(header, rows, numeric_from=2))
    if over:
        lines += ["", "✗: over the target."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Command line


def canonical(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def parse_shapes(text: str) -> list[str]:
    if not text:
        return list(SHAPES)
    known = {canonical(name): name for name in SHAPES}
    shapes = []
    for part in text.split(","):
        if canonical(part) not in known:
            raise SystemExit(f"unknown shape {part.strip()!r}; known: {', '.join(SHAPES)}")
        shapes.append(known[canonical(part)])
    return shapes


def parse_threads(text: str) -> list[int]:
    try:
        threads = [int(part) for part in text.split(",")]
    except ValueError:
        raise SystemExit(f"--threads: expected integers such as 1,2, got {text!r}") from None
    if any(t < 1 for t in threads):
        raise SystemExit("--threads: counts must be at least 1")
    return threads


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="", help="comma-separated shape names (default all)")
    parser.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    parser.add_argument("--quick", action="store_true", help="5 rounds, no time budget")
    parser.add_argument("--min-rounds", type=int, default=15, help="at least this many rounds")
    parser.add_argument("--max-rounds", type=int, default=2000, help="at most this many rounds")
    parser.add_argument(
        "--budget", type=float, default=1.0, help="seconds per contender and cell (default 1)"
    )
    parser.add_argument(
        "--burst-ms", type=float, default=5.0, help="length of a timed burst (default 5 ms)"
    )
    parser.add_argument("--calls", type=int, default=None, help="calls per burst (fixed)")
    parser.add_argument(
        "--floor", action="store_true", help="also time the autograd floor (see the docstring)"
    )
    parser.add_argument(
        "--compact", action="store_true", help="also time the compact route (see the docstring)"
    )
    parser.add_argument("--markdown", metavar="FILE", help="also write the table to FILE")
    args = parser.parse_args(argv)
    if args.quick:
        args.min_rounds, args.max_rounds, args.budget = 5, 5, 0.0
    if args.calls is not None and args.calls < 1:
        parser.error("--calls must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    shapes, thread_counts = parse_shapes(args.shapes), parse_threads(args.threads)
    timing = Timing(
        min_rounds=args.min_rounds,
        max_rounds=max(args.min_rounds, args.max_rounds),
        budget=args.budget,
        burst_seconds=args.burst_ms / 1e3,
        calls=args.calls,
        floor=args.floor,
        compact=args.compact,
    )
    command = "python benches/adapter.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    load_before = load_average()
    cells = []
    for shape in shapes:
        problem = make_problem(SHAPES[shape], seed=0)
        check(problem, args.compact)
        for threads in thread_counts:
            print(f"{shape}, {threads} thread(s)", file=sys.stderr, flush=True)
            cells.append(measure(shape, threads, problem, timing))
    text = markdown(cells, command, load_before, load_average())
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
