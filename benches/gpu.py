"""Times fastctc's GPU backend, phase by phase, beside its CPU backend.

Usage::

    python benches/gpu.py                         # every shape
    python benches/gpu.py --quick                 # one timed repeat each
    python benches/gpu.py --shapes "ASR long" --repeats 5 --markdown gpu.md

For each shape (T, N, C, S), float32 ``log_softmax`` input and ``ctc_loss_and_grad`` with
the default true gradient and reduction "mean":

* **cpu**: ``device="cpu"`` (all threads of the CPU backend).
* **gpu**: ``device="gpu"``, end to end: packing, one command submission (upload, forward,
  backward and gradient, copies to mappable buffers), mapping, unpacking.
* **gpu phases**: the same work through ``fastctc._core.gpu_profile``, which submits and
  waits for each phase on its own so that it can be timed: *pack* (sample records and input
  rows into one host buffer), *upload* (buffer writes, host to device), *compute* (the
  kernels), *readback* (device to host copies and mapping), *unpack* (gradient rows into the
  ``(T, N, C)`` output). The waits add a little to the total.

Every cell is the median of the timed repeats, after one warm-up call (which also builds the
device and pipelines, once per process). The header names the adapter. On a machine without
a GPU, wgpu runs on Mesa's software Vulkan driver (lavapipe, adapter type "cpu"): the shaders
then run on the CPU's cores through LLVM, one workgroup per thread, and the numbers measure
lavapipe, not a GPU. They show the shape of the costs (upload and readback are memcpy-fast,
compute is everything), not what a discrete GPU does with the same kernels.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import fastctc
import numpy as np
from fastctc import _core
from shapes import chosen, shapes_for

# name -> (T, N, C, S), from benches/shapes.csv (shared with the other benchmarks).
SHAPES = shapes_for("gpu")
PHASES = ("pack", "upload", "compute", "readback", "unpack")


def batch(shape: tuple[int, int, int, int], seed: int = 0):
    T, N, C, S = shape
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((T, N, C), dtype=np.float32)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = rng.integers(1, C, size=(N, S), dtype=np.int64)
    input_lengths = np.full(N, T, dtype=np.int64)
    target_lengths = np.full(N, S, dtype=np.int64)
    return log_probs, targets, input_lengths, target_lengths


def median_time(func, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile(args, repeats: int) -> dict[str, float]:
    runs = [
        _core.gpu_profile(*args, 0, "mean", False, "log_probs", True)[2] for _ in range(repeats)
    ]
    return {phase: statistics.median(run[phase] for run in runs) for phase in PHASES} | {
        "chunks": runs[0]["chunks"]
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", help="comma-separated subset of: " + ", ".join(SHAPES))
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    parser.add_argument("--quick", action="store_true", help="one timed repeat")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else max(1, args.repeats)

    info = fastctc.gpu_info()
    if info is None:
        print("no GPU adapter: install a driver (mesa-vulkan-drivers libvulkan1 for lavapipe)")
        return 1
    wanted = chosen(parser, SHAPES, args.shapes)

    lines = [
        f"# fastctc {fastctc.__version__}: GPU backend vs CPU backend",
        "",
        f"- adapter: {info['name']} ({info['backend']}, type {info['device_type']}, "
        f"driver {info['driver_info'] or info['driver']}), workgroup size "
        f"{info['workgroup_size']}, storage bindings up to "
        f"{info['limits']['max_storage_buffer_binding_size'] >> 20} MiB",
        f"- host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"CPU backend on {fastctc.get_num_threads()} threads; Python {sys.version.split()[0]}",
        f"- median of {repeats} repeat(s) after one warm-up; times in ms; float32, "
        "`ctc_loss_and_grad`, reduction mean, true gradient",
    ]
    if info["device_type"] == "cpu":
        lines.append(
            "- **the adapter is a software rasteriser** (Mesa's lavapipe/llvmpipe): the "
            "shaders run on this machine's CPU cores, so these numbers measure lavapipe, "
            "not a GPU"
        )
    lines += [
        "",
        "| shape (T, N, C, S) | cpu | gpu | pack | upload | compute | readback | unpack | "
        "chunks | loss rel. diff | grad max diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for name, shape in wanted.items():
        data = batch(shape)
        cpu_loss, cpu_grad = fastctc.ctc_loss_and_grad(*data, reduction="none", device="cpu")
        gpu_loss, gpu_grad = fastctc.ctc_loss_and_grad(*data, reduction="none", device="gpu")
        loss_diff = float(np.max(np.abs(gpu_loss - cpu_loss) / np.abs(cpu_loss)))
        grad_diff = float(np.max(np.abs(gpu_grad - cpu_grad)))
        del cpu_grad, gpu_grad
        cpu = median_time(lambda d=data: fastctc.ctc_loss_and_grad(*d, device="cpu"), repeats)
        gpu = median_time(lambda d=data: fastctc.ctc_loss_and_grad(*d, device="gpu"), repeats)
        phases = profile(data, repeats)
        row = (
            f"| {name} {shape} | {ms(cpu)} | {ms(gpu)} | "
            + " | ".join(ms(phases[p]) for p in PHASES)
            + f" | {phases['chunks']} | {loss_diff:.1e} | {grad_diff:.1e} |"
        )
        lines.append(row)
        print(row, flush=True)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
