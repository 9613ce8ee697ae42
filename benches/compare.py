"""Times fastctc against torch (and TensorFlow and optax, when installed), side by side.

Usage::

    python benches/compare.py                       # every shape, 1 and 2 threads
    python benches/compare.py --quick               # smoke run: one repeat per contender
    python benches/compare.py --varied              # add rows with random lengths
    python benches/compare.py --shapes "ASR long,BPE vocabulary" --threads 1
    python benches/compare.py --markdown bench.md --plot bench.png
    python benches/compare.py --fresh-buffers       # no recycled gradient buffers

What is timed, per shape (T, N, C, S) and per thread count:

* forward + backward: ``fastctc.ctc_loss_and_grad`` with ``grad_wrt="log_probs"`` (the true
  gradient, the default) and with ``grad_wrt="logits"`` (torch's convention), against
  ``torch.nn.functional.ctc_loss`` + ``backward()`` on a leaf ``log_probs`` tensor, against
  ``tf.nn.ctc_loss`` under a ``GradientTape`` (time-major logits, ``blank_index=0``, sparse
  labels so that TensorFlow's native kernel runs) and against ``jax.value_and_grad`` of
  ``optax.ctc_loss`` (batch-major logits and paddings, jitted). TensorFlow and optax are used
  only when they can be imported; the header says which were found.
* the "np.exp floor": one ``np.exp(log_probs)`` pass, the least any function that reads the
  input and writes a gradient of its size must cost; the table gives fastctc's multiple of it.
* forward only: ``fastctc.ctc_loss`` against torch under ``torch.no_grad()`` (and the others).
* with ``--varied``: forward + backward again with input lengths uniform in [T/2, T] and target
  lengths uniform in [S/2, S], raised where needed so that every sample has an alignment. Its
  "relative throughput" is lattice cells (sum of input_length * (2 * target_length + 1)) per
  second, divided by the same with full lengths: 1.0 means the time shrinks with the work.

fastctc recycles the memory of a freed gradient for the next call of about its size
(``fastctc.empty_cache``); back-to-back calls, as here, then write a buffer that is still
warm in the cache, a best case for the large shapes. ``--fresh-buffers`` empties that cache
before every call (untimed), so that each gradient lands in memory the system must fault in.

Inputs are float32 ``log_softmax`` of standard normal logits, targets uniform in [1, C), blank
0, reduction "mean". Contenders alternate on every repeat (in a random order each round), so
that drift (turbo, other load) hits all of them alike; each cell is the median of at least three
repeats and of at least ``--budget`` seconds (0.5 by default) per contender. Thread counts are
set with ``fastctc.set_num_threads`` and ``torch.set_num_threads``; TensorFlow's and XLA's
thread pools are fixed when they start, so they run with the largest requested count throughout
(the header says so). Before timing, each shape's per-sample losses are compared with torch's
(maximum relative difference) so that a fast but wrong result shows up in the table.

The tables are Markdown (paste them into a README); ``--markdown FILE`` writes them to a file
too, ``--plot FILE.png`` draws a bar chart (needs matplotlib). Progress goes to stderr (through
tqdm when it is installed). torch is required; everything else is optional.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import importlib.util
import math
import os
import platform
import random
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import fastctc
import numpy as np
from shapes import shapes_for

# name -> (T, N, C, S), from benches/shapes.csv (shared with the other benchmarks).
SHAPES = shapes_for("compare")

FASTCTC = "fastctc"
FASTCTC_LOGITS = "fastctc (logits)"
TORCH = "torch"
TENSORFLOW = "tensorflow"
OPTAX = "optax"
NP_EXP = "np.exp"
OPTIONAL = (TENSORFLOW, OPTAX)

Runner = Callable[[], object]


# --------------------------------------------------------------------------------------------
# Problems


@dataclass
class Problem:
    """One batch: float32 log-probabilities (T, N, C), padded int64 targets and lengths."""

    name: str
    log_probs: np.ndarray
    targets: np.ndarray
    input_lengths: np.ndarray
    target_lengths: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int, int]:
        T, N, C = self.log_probs.shape
        return T, N, C, self.targets.shape[1]

    @property
    def cells(self) -> int:
        """Lattice cells: the sum over samples of input_length * (2 * target_length + 1)."""
        return int(np.sum(self.input_lengths * (2 * self.target_lengths + 1)))


def required_frames(targets: np.ndarray, target_lengths: np.ndarray) -> np.ndarray:
    """Fewest frames each sample needs: its labels plus a blank between repeated neighbours."""
    S = targets.shape[1]
    repeats = targets[:, 1:] == targets[:, :-1]
    counted = np.arange(1, S)[np.newaxis, :] < target_lengths[:, np.newaxis]
    return target_lengths + np.sum(repeats & counted, axis=1)


def make_problems(
    name: str, shape: tuple[int, int, int, int], seed: int
) -> tuple[Problem, Problem]:
    """The full-length batch of a shape and the same batch with random (shorter) lengths."""
    T, N, C, S = shape
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((T, N, C), dtype=np.float32)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    targets = rng.integers(1, C, size=(N, S), dtype=np.int64)
    full = Problem(
        name, log_probs, targets, np.full(N, T, dtype=np.int64), np.full(N, S, dtype=np.int64)
    )
    target_lengths = rng.integers((S + 1) // 2, S + 1, size=N, dtype=np.int64)
    input_lengths = rng.integers((T + 1) // 2, T + 1, size=N, dtype=np.int64)
    input_lengths = np.minimum(
        np.maximum(input_lengths, required_frames(targets, target_lengths)), T
    )
    return full, Problem(name, log_probs, targets, input_lengths, target_lengths)


def estimated_memory(shape: tuple[int, int, int, int]) -> int:
    """Bytes of fastctc's gradient path at 2 threads: one forward table per thread (a float32
    mantissa and an int32 exponent per lattice cell), or, for short samples run 16 side by
    side (up to 129 states, rows up to 2 KiB, group table up to 16 MiB), one table of 16 lanes
    per group being computed; plus the float32 gradient."""
    T, N, C, S = shape
    states = 2 * S + 1
    group_table = T * states * 16 * 8
    if N >= 2 and states <= 129 and C * 4 <= 2048 and group_table <= 16 << 20:
        tables = min(-(-N // 16), 2) * group_table
    else:
        tables = min(N, 2) * T * states * 8
    return tables + T * N * C * 4


# --------------------------------------------------------------------------------------------
# Contenders


class Framework:
    """A library to compare with: builds the timed closures for one problem."""

    name: str = ""
    version: str = ""

    def set_threads(self, threads: int) -> None:
        """Sets the thread count for later calls, where the library allows it."""

    def forward_backward(self, problem: Problem) -> Runner:
        """A closure computing the mean loss and its gradient."""
        raise NotImplementedError

    def forward(self, problem: Problem) -> Runner:
        """A closure computing the mean loss only."""
        raise NotImplementedError

    def losses(self, problem: Problem) -> np.ndarray:
        """Per-sample losses, float64, for the correctness check."""
        raise NotImplementedError


class Torch(Framework):
    def __init__(self, torch: ModuleType) -> None:
        self.torch = torch
        self.name = TORCH
        self.version = torch.__version__

    def set_threads(self, threads: int) -> None:
        self.torch.set_num_threads(threads)

    def _tensors(self, problem: Problem) -> tuple[Any, Any, Any, Any]:
        t = self.torch
        return (
            t.from_numpy(problem.log_probs.copy()),
            t.from_numpy(problem.targets),
            t.from_numpy(problem.input_lengths),
            t.from_numpy(problem.target_lengths),
        )

    def forward_backward(self, problem: Problem) -> Runner:
        log_probs, targets, input_lengths, target_lengths = self._tensors(problem)
        leaf = log_probs.requires_grad_(True)
        ctc_loss = self.torch.nn.functional.ctc_loss

        def run() -> object:
            leaf.grad = None
            loss = ctc_loss(leaf, targets, input_lengths, target_lengths, blank=0)
            loss.backward()
            return loss

        return run

    def forward(self, problem: Problem) -> Runner:
        log_probs, targets, input_lengths, target_lengths = self._tensors(problem)
        ctc_loss = self.torch.nn.functional.ctc_loss
        no_grad = self.torch.no_grad

        def run() -> object:
            with no_grad():
                return ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0)

        return run

    def losses(self, problem: Problem) -> np.ndarray:
        log_probs, targets, input_lengths, target_lengths = self._tensors(problem)
        with self.torch.no_grad():
            out = self.torch.nn.functional.ctc_loss(
                log_probs, targets, input_lengths, target_lengths, blank=0, reduction="none"
            )
        return out.numpy().astype(np.float64)

    def gradient(self, problem: Problem) -> np.ndarray:
        """torch's gradient of the mean loss with respect to log_probs (a logits gradient)."""
        log_probs, targets, input_lengths, target_lengths = self._tensors(problem)
        leaf = log_probs.requires_grad_(True)
        loss = self.torch.nn.functional.ctc_loss(
            leaf, targets, input_lengths, target_lengths, blank=0
        )
        loss.backward()
        return leaf.grad.numpy()


class TensorFlow(Framework):
    def __init__(self, tf: ModuleType, note: str) -> None:
        self.tf = tf
        self.name = TENSORFLOW
        self.version = tf.__version__
        self.note = note

    def _inputs(self, problem: Problem) -> tuple[Any, Any, Any, Any]:
        tf = self.tf
        N, S = problem.targets.shape
        mask = np.arange(S)[np.newaxis, :] < problem.target_lengths[:, np.newaxis]
        labels = tf.SparseTensor(
            indices=np.argwhere(mask).astype(np.int64),
            values=problem.targets[mask].astype(np.int32),
            dense_shape=[N, S],
        )
        return (
            tf.constant(problem.log_probs),
            labels,
            tf.constant(problem.input_lengths.astype(np.int32)),
            tf.constant(np.maximum(problem.target_lengths, 1).astype(np.float32)),
        )

    def _loss_fn(self, problem: Problem) -> tuple[Any, Callable[[Any], Any], Any]:
        tf = self.tf
        logits, labels, logit_length, divisor = self._inputs(problem)

        def losses(x: Any) -> Any:
            return tf.nn.ctc_loss(
                labels, x, None, logit_length, logits_time_major=True, blank_index=0
            )

        return logits, losses, divisor

    def forward_backward(self, problem: Problem) -> Runner:
        tf = self.tf
        logits, losses, divisor = self._loss_fn(problem)

        @tf.function
        def step(x: Any) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_mean(losses(x) / divisor)
            return loss, tape.gradient(loss, x)

        return lambda: step(logits)

    def forward(self, problem: Problem) -> Runner:
        tf = self.tf
        logits, losses, divisor = self._loss_fn(problem)

        @tf.function
        def step(x: Any) -> Any:
            return tf.reduce_mean(losses(x) / divisor)

        return lambda: step(logits)

    def losses(self, problem: Problem) -> np.ndarray:
        logits, losses, _ = self._loss_fn(problem)
        return np.asarray(losses(logits), dtype=np.float64)


class Optax(Framework):
    def __init__(self, jax: ModuleType, optax: ModuleType, note: str) -> None:
        self.jax = jax
        self.optax = optax
        self.name = OPTAX
        self.version = f"{optax.__version__} (jax {jax.__version__})"
        self.note = note

    def _inputs(self, problem: Problem) -> tuple[Any, ...]:
        jnp = self.jax.numpy
        T, _, _, S = problem.shape
        logits = np.ascontiguousarray(problem.log_probs.transpose(1, 0, 2))
        logit_paddings = np.arange(T)[np.newaxis, :] >= problem.input_lengths[:, np.newaxis]
        label_paddings = np.arange(S)[np.newaxis, :] >= problem.target_lengths[:, np.newaxis]
        return tuple(
            self.jax.device_put(jnp.asarray(a))
            for a in (
                logits,
                logit_paddings.astype(np.float32),
                problem.targets.astype(np.int32),
                label_paddings.astype(np.float32),
                np.maximum(problem.target_lengths, 1).astype(np.float32),
            )
        )

    def _mean_loss(self, logits: Any, *rest: Any) -> Any:
        logit_paddings, labels, label_paddings, divisor = rest
        per_sample = self.optax.ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=0)
        return self.jax.numpy.mean(per_sample / divisor)

    def forward_backward(self, problem: Problem) -> Runner:
        jax = self.jax
        inputs = self._inputs(problem)
        step = jax.jit(jax.value_and_grad(self._mean_loss))
        return lambda: jax.block_until_ready(step(*inputs))

    def forward(self, problem: Problem) -> Runner:
        jax = self.jax
        inputs = self._inputs(problem)
        step = jax.jit(self._mean_loss)
        return lambda: jax.block_until_ready(step(*inputs))

    def losses(self, problem: Problem) -> np.ndarray:
        logits, logit_paddings, labels, label_paddings, _ = self._inputs(problem)
        out = self.optax.ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=0)
        return np.asarray(out, dtype=np.float64)


def import_optional(name: str, max_threads: int, skip: set[str]) -> tuple[Framework | None, str]:
    """Imports TensorFlow or optax (with JAX) if present; returns it and a note for the header."""
    if name in skip:
        return None, "skipped with --skip"
    modules = ["tensorflow"] if name == TENSORFLOW else ["jax", "optax"]
    if any(importlib.util.find_spec(m) is None for m in modules):
        return None, "not installed"
    try:
        if name == TENSORFLOW:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            tf = importlib.import_module("tensorflow")
            try:
                tf.config.threading.set_intra_op_parallelism_threads(max_threads)
                tf.config.threading.set_inter_op_parallelism_threads(max_threads)
                note = f"intra/inter-op threads fixed at {max_threads} for the whole run"
            except RuntimeError:
                note = "thread pools already started: TensorFlow's default thread count"
            return TensorFlow(tf, note), note
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        if max_threads == 1 and "XLA_FLAGS" not in os.environ:
            os.environ["XLA_FLAGS"] = (
                "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            )
            note = "XLA limited to 1 thread (XLA_FLAGS) for the whole run"
        else:
            note = "XLA's thread pool cannot be resized at run time: its default (all cores)"
        jax = importlib.import_module("jax")
        optax = importlib.import_module("optax")
        return Optax(jax, optax, note), note
    except Exception as error:  # a broken install: report it, carry on without it
        return None, f"import failed ({type(error).__name__}: {error})"


# --------------------------------------------------------------------------------------------
# Timing


@dataclass
class Timing:
    """When to stop repeating a contender."""

    min_repeats: int
    max_repeats: int
    budget: float

    def done(self, samples: Sequence[float]) -> bool:
        n = len(samples)
        return n >= self.max_repeats or (n >= self.min_repeats and sum(samples) >= self.budget)


def measure(
    contenders: Sequence[tuple[str, Runner]],
    timing: Timing,
    before_each: Callable[[], object] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each contender, interleaved: each round runs every contender that
    still needs repeats once, in a fresh random order. (A rotating order keeps the same cyclic
    neighbours: whoever follows torch would always pay for torch's still-spinning threads.)
    ``before_each`` runs before every timed call, untimed."""
    for _, run in contenders:
        run()  # warm up: first-call allocations, tracing, JIT compilation
    samples: dict[str, list[float]] = {name: [] for name, _ in contenders}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_ in range(timing.max_repeats * len(contenders)):
            pending = [(n, r) for n, r in contenders if not timing.done(samples[n])]
            if not pending:
                break
            random.Random(round_).shuffle(pending)
            for name, run in pending:
                if before_each is not None:
                    before_each()
                start = time.perf_counter()
                run()
                samples[name].append(time.perf_counter() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


class Progress:
    """A tqdm bar on stderr when tqdm is installed, else a plain step counter."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.done = 0
        self.enabled = enabled
        self.bar: Any = None
        self.width = 0
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True)

    def start(self, label: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description_str(label)
            return
        text = f"[{self.done + 1:>{len(str(self.total))}}/{self.total}] {label}"
        if sys.stderr.isatty():
            sys.stderr.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and sys.stderr.isatty():
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# Checks


def max_relative_difference(values: np.ndarray, reference: np.ndarray) -> float:
    """Largest |a - b| / |b| over entries (equal entries, infinities included, count 0)."""
    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.where(a == b, 0.0, np.abs(a - b) / np.maximum(np.abs(b), 1e-30))
    return float(np.max(diff)) if diff.size else 0.0


@dataclass
class Check:
    """Per-sample losses of each contender against torch's, and fastctc's gradient."""

    loss: dict[str, float] = field(default_factory=dict)
    grad: float = math.nan


def check(problem: Problem, torch: Torch, others: Sequence[Framework]) -> Check:
    args = (problem.log_probs, problem.targets, problem.input_lengths, problem.target_lengths)
    reference = torch.losses(problem)
    result = Check()
    result.loss[FASTCTC] = max_relative_difference(
        fastctc.ctc_loss(*args, reduction="none"), reference
    )
    for framework in others:
        result.loss[framework.name] = max_relative_difference(framework.losses(problem), reference)
    _, grad = fastctc.ctc_loss_and_grad(*args, grad_wrt="logits")
    torch_grad = torch.gradient(problem)
    scale = float(np.max(np.abs(torch_grad))) or 1.0
    result.grad = float(np.max(np.abs(grad.astype(np.float64) - torch_grad))) / scale
    return result


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class Results:
    """Everything the tables need."""

    shapes: list[str]
    threads: list[int]
    frameworks: list[Framework]
    notes: dict[str, str]
    varied: bool
    timing: Timing
    fresh_buffers: bool = False
    checks: dict[str, Check] = field(default_factory=dict)
    varied_checks: dict[str, Check] = field(default_factory=dict)
    cells: dict[str, float] = field(default_factory=dict)
    samples: dict[tuple[str, int, str], dict[str, list[float]]] = field(default_factory=dict)

    def ms(self, shape: str, threads: int, block: str, name: str) -> float:
        values = self.samples.get((shape, threads, block), {}).get(name)
        return statistics.median(values) * 1e3 if values else math.nan

    def repeats(self) -> tuple[int, int]:
        counts = [len(v) for block in self.samples.values() for v in block.values()]
        return (min(counts), max(counts)) if counts else (0, 0)


def fastctc_runner(problem: Problem, grad_wrt: str | None) -> Runner:
    args = (problem.log_probs, problem.targets, problem.input_lengths, problem.target_lengths)
    if grad_wrt is None:
        return lambda: fastctc.ctc_loss(*args)
    return lambda: fastctc.ctc_loss_and_grad(*args, grad_wrt=grad_wrt)


def run_benchmark(
    shapes: list[str],
    threads: list[int],
    torch: Torch,
    others: list[Framework],
    notes: dict[str, str],
    timing: Timing,
    varied: bool,
    seed: int,
    progress: Progress,
    fresh_buffers: bool = False,
) -> Results:
    results = Results(shapes, threads, [torch, *others], notes, varied, timing, fresh_buffers)
    # fastctc recycles freed gradient buffers (fastctc.empty_cache); --fresh-buffers frees
    # them before every call, so that each gradient lands in memory the system must fault in.
    before_each = fastctc.empty_cache if fresh_buffers else None
    frameworks: list[Framework] = [torch, *others]
    for shape_name in shapes:
        # Seeded by the shape's place in SHAPES, so --shapes does not change its batch.
        index = list(SHAPES).index(shape_name)
        full, short = make_problems(shape_name, SHAPES[shape_name], seed + index)
        results.cells[shape_name] = short.cells / full.cells
        progress.start(f"{shape_name}: checking against torch")
        results.checks[shape_name] = check(full, torch, others)
        if varied:
            results.varied_checks[shape_name] = check(short, torch, others)
        progress.advance()
        blocks: list[tuple[str, list[tuple[str, Runner]]]] = [
            (
                "fwd+bwd",
                [
                    (FASTCTC, fastctc_runner(full, "log_probs")),
                    (FASTCTC_LOGITS, fastctc_runner(full, "logits")),
                    *[(f.name, f.forward_backward(full)) for f in frameworks],
                    (NP_EXP, lambda lp=full.log_probs: np.exp(lp)),
                ],
            ),
            (
                "fwd",
                [
                    (FASTCTC, fastctc_runner(full, None)),
                    *[(f.name, f.forward(full)) for f in frameworks],
                ],
            ),
        ]
        if varied:
            blocks.append(
                (
                    "varied",
                    [
                        (FASTCTC, fastctc_runner(short, "log_probs")),
                        *[(f.name, f.forward_backward(short)) for f in frameworks],
                    ],
                )
            )
        for n in threads:
            fastctc.set_num_threads(n)
            for framework in frameworks:
                framework.set_threads(n)
            for block, contenders in blocks:
                progress.start(f"{shape_name}, {n} thread{'s' if n > 1 else ''}, {block}")
                results.samples[shape_name, n, block] = measure(contenders, timing, before_each)
                progress.advance()
        del blocks
        gc.collect()
    return results


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


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> float:
    """The one-minute load average (NaN where the OS has none): high means a noisy run."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


def fmt_ms(value: float) -> str:
    if math.isnan(value):
        return "–"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_ratio(numerator: float, denominator: float) -> str:
    if math.isnan(numerator) or math.isnan(denominator) or denominator <= 0:
        return "–"
    return f"{numerator / denominator:.2f}×"


def fmt_number(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"


def fmt_diff(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if value == 0:
        return "0"
    return f"{value:.1e}"


def fmt_bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int) -> str:
    """A Markdown table whose columns from ``numeric_from`` on are right-aligned."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: Results, command: str, load_before: float, load_after: float) -> str:
    others = [f for f in results.frameworks if f.name != TORCH]
    torch = next(f for f in results.frameworks if f.name == TORCH)
    found = [f"torch {torch.version}"] + [f"{f.name} {f.version}" for f in others]
    used = {f.name for f in others}
    missing = [f"{name} ({note})" for name, note in results.notes.items() if name not in used]
    features = fastctc.simd_features()
    lo, hi = results.repeats()
    timing = results.timing
    if timing.min_repeats == timing.max_repeats:
        how = f"median of {timing.min_repeats} repeat{'s' if timing.min_repeats > 1 else ''}"
    else:
        how = (
            f"median of at least {timing.min_repeats} repeats and {timing.budget:g} s per "
            f"contender ({lo}–{hi} repeats)"
        )
    out = [
        "## fastctc benchmark",
        "",
        f"- Machine: {cpu_model()}, {available_cores()} cores available "
        f"({os.cpu_count()} logical), {platform.system()} {platform.machine()}; 1-minute load "
        f"average {load_before:.2f} before the run (other work: 0 is a quiet machine), "
        f"{load_after:.2f} at its end (this run included)",
        f"- Versions: fastctc {fastctc.__version__}, numpy {np.__version__}, "
        f"torch {torch.version}, python {platform.python_version()}",
        f"- fastctc SIMD: {', '.join(features) if features else 'none detected'}",
        f"- Contenders found: fastctc, {', '.join(found)}"
        + (f"; not used: {', '.join(missing)}" if missing else ""),
    ]
    for f in others:
        note = results.notes.get(f.name)
        if note:
            out.append(f"- {f.name} threads: {note}")
    out += [
        f'- Timing: {how}, contenders interleaved; float32, blank 0, reduction "mean"; '
        f"{datetime.date.today().isoformat()}",
        "- fastctc's gradient buffers: "
        + (
            "fresh for every call (--fresh-buffers: fastctc.empty_cache() before each call)"
            if results.fresh_buffers
            else "recycled, the default (a freed gradient's memory is reused by the next call)"
        ),
        f"- Command: `{command}`",
        "",
        "### Shapes and correctness",
        "",
        "Loss: the largest relative difference of a per-sample loss from torch's. Gradient: "
        "the largest difference of fastctc's `grad_wrt=\"logits\"` gradient from torch's, "
        "relative to torch's largest entry (torch keeps its lattice in float32). est. memory: "
        "at 2 threads, one fastctc forward table per thread, T·(2S+1)·8 bytes (a float32 mantissa "
        "and exponent per cell; short samples run 16 side by side keep 16 lanes' worth per "
        "group; torch keeps alpha and beta tables of N·T·(2S+1)·4 bytes each), plus the "
        "gradient, T·N·C·4 bytes.",
        "",
    ]
    header = ["shape", "T", "N", "C", "S", "est. memory", "fastctc loss diff", "fastctc grad diff"]
    header += [f"{f.name} loss diff" for f in others]
    rows = []
    for name in results.shapes:
        shape = SHAPES[name]
        c = results.checks[name]
        rows.append(
            [name, *map(str, shape), fmt_bytes(estimated_memory(shape))]
            + [fmt_diff(c.loss[FASTCTC]), fmt_diff(c.grad)]
            + [fmt_diff(c.loss.get(f.name, math.nan)) for f in others]
        )
    out += [table(header, rows, 1), ""]

    # Forward + backward.
    out += [
        "### Forward + backward, ms",
        "",
        "fastctc: `ctc_loss_and_grad` (true gradient, the default); fastctc (logits): "
        '`grad_wrt="logits"`, torch\'s convention; torch: `ctc_loss` + `backward()`. '
        "Ratios above 1 mean fastctc is faster. np.exp: one `np.exp(log_probs)` pass, "
        "the floor for anything that reads the input and writes a gradient of its size.",
        "",
    ]
    header = [
        "shape",
        "threads",
        FASTCTC,
        FASTCTC_LOGITS,
        TORCH,
        "torch ÷ fastctc",
        "torch ÷ fastctc (logits)",
    ]
    for f in others:
        header += [f.name, f"{f.name} ÷ fastctc (logits)"]
    header += ["np.exp floor", "fastctc (logits) ÷ np.exp"]
    rows = []
    for name in results.shapes:
        for n in results.threads:
            names = [FASTCTC, FASTCTC_LOGITS, TORCH, NP_EXP, *[f.name for f in others]]
            ms = {c: results.ms(name, n, "fwd+bwd", c) for c in names}
            row = [name, str(n), fmt_ms(ms[FASTCTC]), fmt_ms(ms[FASTCTC_LOGITS]), fmt_ms(ms[TORCH])]
            row += [fmt_ratio(ms[TORCH], ms[FASTCTC]), fmt_ratio(ms[TORCH], ms[FASTCTC_LOGITS])]
            for f in others:
                row += [fmt_ms(ms[f.name]), fmt_ratio(ms[f.name], ms[FASTCTC_LOGITS])]
            row += [fmt_ms(ms[NP_EXP]), fmt_ratio(ms[FASTCTC_LOGITS], ms[NP_EXP])]
            rows.append(row)
    out += [table(header, rows, 2), ""]

    # Forward only.
    out += [
        "### Forward only, ms",
        "",
        "fastctc: `ctc_loss`; torch: `ctc_loss` under `torch.no_grad()`"
        + (
            "; tensorflow: its CTC kernel computes the gradient in the forward pass too."
            if any(f.name == TENSORFLOW for f in others)
            else "."
        ),
        "",
    ]
    header = ["shape", "threads", FASTCTC, TORCH, "torch ÷ fastctc"]
    for f in others:
        header += [f.name, f"{f.name} ÷ fastctc"]
    rows = []
    for name in results.shapes:
        for n in results.threads:
            base = results.ms(name, n, "fwd", FASTCTC)
            torch_ms = results.ms(name, n, "fwd", TORCH)
            row = [name, str(n), fmt_ms(base), fmt_ms(torch_ms), fmt_ratio(torch_ms, base)]
            for f in others:
                value = results.ms(name, n, "fwd", f.name)
                row += [fmt_ms(value), fmt_ratio(value, base)]
            rows.append(row)
    out += [table(header, rows, 2), ""]

    if results.varied:
        out += [
            "### Varied lengths, forward + backward, ms",
            "",
            "Input lengths uniform in [T/2, T], target lengths in [S/2, S]. cells: the lattice "
            "work, Σ input_length·(2·target_length+1), as a fraction of full lengths. rel. "
            "throughput: cells per second relative to the full-length row above (1.0: time "
            "scales with the work; below: fixed costs such as writing the whole T·N·C "
            "gradient, or load imbalance between threads).",
            "",
        ]
        header = ["shape", "threads", "cells", FASTCTC, TORCH, "torch ÷ fastctc"]
        header += ["fastctc rel. throughput", "torch rel. throughput"]
        for f in others:
            header += [f.name, f"{f.name} ÷ fastctc"]
        header += ["fastctc loss diff"]
        rows = []
        for name in results.shapes:
            cells = results.cells[name]
            for n in results.threads:
                names = [FASTCTC, TORCH, *[f.name for f in others]]
                ms = {c: results.ms(name, n, "varied", c) for c in names}
                fixed_fast = results.ms(name, n, "fwd+bwd", FASTCTC)
                fixed_torch = results.ms(name, n, "fwd+bwd", TORCH)
                row = [name, str(n), f"{cells:.2f}", fmt_ms(ms[FASTCTC]), fmt_ms(ms[TORCH])]
                row += [
                    fmt_ratio(ms[TORCH], ms[FASTCTC]),
                    fmt_number(cells * fixed_fast / ms[FASTCTC]),
                    fmt_number(cells * fixed_torch / ms[TORCH]),
                ]
                for f in others:
                    row += [fmt_ms(ms[f.name]), fmt_ratio(ms[f.name], ms[FASTCTC])]
                row += [fmt_diff(results.varied_checks[name].loss[FASTCTC])]
                rows.append(row)
        out += [table(header, rows, 2), ""]
    return "\n".join(out)


def plot(results: Results, path: str, plt: Any) -> None:
    """Grouped bars of forward + backward time, one panel per thread count, log scale."""
    names = [FASTCTC, FASTCTC_LOGITS, *[f.name for f in results.frameworks], NP_EXP]
    fig, axes = plt.subplots(
        len(results.threads), 1, figsize=(11, 3.6 * len(results.threads)), squeeze=False
    )
    x = np.arange(len(results.shapes))
    width = 0.8 / len(names)
    for ax, n in zip(axes[:, 0], results.threads, strict=True):
        for i, contender in enumerate(names):
            values = [results.ms(s, n, "fwd+bwd", contender) for s in results.shapes]
            ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=contender)
        ax.set_yscale("log")
        ax.set_ylabel("ms (log scale)")
        ax.set_title(f"CTC loss forward + backward, {n} thread{'s' if n > 1 else ''}")
        ax.set_xticks(x)
        ax.set_xticklabels(
            [f"{s}\n{'×'.join(map(str, SHAPES[s]))}" for s in results.shapes], fontsize=8
        )
        ax.grid(axis="y", which="both", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Command line


def canonical(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name.strip().lower())


def parse_shapes(text: str) -> list[str]:
    known = {canonical(name): name for name in SHAPES}
    chosen = []
    for part in text.split(","):
        if not part.strip():
            continue
        key = canonical(part)
        if key not in known:
            raise argparse.ArgumentTypeError(
                f"unknown shape {part.strip()!r}; choose from: " + ", ".join(SHAPES)
            )
        chosen.append(known[key])
    if not chosen:
        raise argparse.ArgumentTypeError("no shape given")
    return chosen


def parse_threads(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be at least 1, got {text!r}")
    return values


def parse_skip(text: str) -> set[str]:
    names = {canonical(part) for part in text.split(",") if part.strip()}
    aliases = {"tf": TENSORFLOW, "tensorflow": TENSORFLOW, "optax": OPTAX, "jax": OPTAX}
    unknown = names - set(aliases)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"can only skip tensorflow (tf) and optax (jax), not {', '.join(sorted(unknown))}"
        )
    return {aliases[n] for n in names}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Times fastctc against torch (and TensorFlow and optax when installed).",
        epilog="shapes: " + "; ".join(f"{k} {v}" for k, v in SHAPES.items()) + " as (T, N, C, S)",
    )
    parser.add_argument(
        "--shapes", type=parse_shapes, default=list(SHAPES), help="comma-separated shape names"
    )
    parser.add_argument(
        "--threads", type=parse_threads, default=[1, 2], help="thread counts (default 1,2)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: one timed repeat per contender"
    )
    parser.add_argument(
        "--repeats", type=int, help="exactly this many timed repeats (no time budget)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=0.5,
        help="seconds of timed calls per contender and cell, at least 3 repeats (default 0.5)",
    )
    parser.add_argument(
        "--varied", action="store_true", help="also time random input and target lengths"
    )
    parser.add_argument(
        "--skip", type=parse_skip, default=set(), help="do not use: tensorflow, optax"
    )
    parser.add_argument(
        "--fresh-buffers",
        action="store_true",
        help="free fastctc's recycled gradient buffers before every call (untimed)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the tables to FILE")
    parser.add_argument("--plot", metavar="FILE.png", help="bar chart (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.budget < 0:
        parser.error("--budget must not be negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plt = None
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print(
                "compare.py: --plot needs matplotlib, which is not installed "
                "(pip install matplotlib), or leave out --plot",
                file=sys.stderr,
            )
            return 2
    try:
        import torch as torch_module
    except ImportError:
        print("compare.py: torch is required (pip install torch)", file=sys.stderr)
        return 2

    if args.repeats is not None:
        timing = Timing(args.repeats, args.repeats, 0.0)
    elif args.quick:
        timing = Timing(1, 1, 0.0)
    else:
        timing = Timing(3, 10_000, args.budget)

    torch = Torch(torch_module)
    others: list[Framework] = []
    notes: dict[str, str] = {}
    for name in OPTIONAL:
        framework, note = import_optional(name, max(args.threads), args.skip)
        notes[name] = note
        if framework is not None:
            others.append(framework)

    load_before = load_average()
    steps = len(args.shapes) * (1 + len(args.threads) * (3 if args.varied else 2))
    progress = Progress(steps, enabled=not args.no_progress)
    try:
        results = run_benchmark(
            args.shapes,
            args.threads,
            torch,
            others,
            notes,
            timing,
            args.varied,
            args.seed,
            progress,
            args.fresh_buffers,
        )
    finally:
        progress.close()

    command = shlex.join(["python", "benches/compare.py", *(argv or sys.argv[1:])])
    text = markdown(results, command, load_before, load_average())
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        print(f"compare.py: wrote {args.markdown}", file=sys.stderr)
    if args.plot and plt is not None:
        plot(results, args.plot, plt)
        print(f"compare.py: wrote {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
