"""fastctc against torch's CUDA CTC loss on an NVIDIA GPU, in one run (a few minutes at most).

Usage::

    python benches/vs_torch_cuda.py             # the shapes marked `cuda` in shapes.csv
    python benches/vs_torch_cuda.py --shapes "BPE vocabulary" --repeats 20 --markdown cuda.md
    python benches/vs_torch_cuda.py --torch-device cpu --quick  # no GPU: same code paths

For each shape (T, N, C, S): float32 ``log_softmax`` input, forward + backward, reduction
"mean", the median of the timed repeats after warm-ups, in ms. Columns:

* **torch**: ``F.ctc_loss`` on device tensors (targets padded, int64, on the device: torch's
  native CUDA kernel).
* **cuDNN**: ``F.ctc_loss`` in the form that selects cuDNN (int32 concatenated targets on
  the host, lengths as tuples); "—" where cuDNN does not apply (S >= 256).
* **fastctc.torch**: :func:`fastctc.torch.ctc_loss` on the same device tensors as "torch"
  (the compact route: the blank and target columns gathered on the device, computed by the
  CPU backend, the gradient scattered back on the device); **fastctc.torch gpu**: the same
  with ``device="gpu"`` (fastctc's wgpu shaders on the compact problem).
* **wgpu**: :func:`fastctc.ctc_loss_and_grad` on NumPy arrays with ``device="gpu"`` (the
  whole ``(T, N, C)`` problem), end to end; then its phases from ``_core.gpu_profile`` (each
  submitted and waited for on its own): pack, upload, compute, readback, unpack.
* **cpu**: :func:`fastctc.ctc_loss_and_grad` with ``device="cpu"``, all threads.
* **floor**: what the compact route must move between device and host (the gathered columns
  one way and their gradient the other) through page-locked memory, timed alone.
* **grad err**: the largest float32 gradient error: torch's CUDA kernel against torch's float64
  CPU result (torch's gradient convention), fastctc.torch against fastctc's float64 CPU
  result (the true gradient).

The header names the GPU, torch, fastctc and the Vulkan adapter wgpu found.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import fastctc
import fastctc.torch as fctorch
import numpy as np
import torch
import torch.nn.functional as F
from fastctc import _core
from shapes import chosen, shapes_for

from gpu import PHASES, batch

SHAPES = shapes_for("cuda")
CUDNN_MAX_TARGET = 256


def median_ms(step, repeats: int, sync, warmups: int = 2) -> float:
    for _ in range(warmups):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def backward_step(lp: torch.Tensor, loss_fn):
    """One forward + backward of ``loss_fn(lp)``; returns the step and a getter of the grad."""

    def step():
        lp.grad = None
        loss_fn(lp).backward()

    def grad() -> np.ndarray:
        step()
        return lp.grad.detach().cpu().double().numpy()

    return step, grad


def pinned_floor_ms(shape, repeats: int, device: torch.device, sync) -> float:
    """Device to host of the compact columns, then host to device of their gradient."""
    T, N, _, S = shape
    columns = 1 + S  # at most: the blank and S distinct labels
    on_device = torch.zeros((T, N, columns), device=device)
    pinned = torch.empty(on_device.shape, pin_memory=device.type == "cuda")
    back = torch.empty_like(on_device)

    def step():
        pinned.copy_(on_device, non_blocking=True)
        sync()
        back.copy_(pinned, non_blocking=True)

    return median_ms(step, repeats, sync)


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def row_for(name, shape, repeats, device, sync, has_gpu) -> tuple[str, dict]:
    log_probs, targets, input_lengths, target_lengths = batch(shape)
    T, N, C, S = shape
    data = (log_probs, targets, input_lengths, target_lengths)
    reference = fastctc.ctc_loss_and_grad(
        log_probs.astype(np.float64), targets, input_lengths, target_lengths
    )[1]

    lp = torch.from_numpy(log_probs).to(device).requires_grad_()
    tg = torch.from_numpy(targets).to(device)
    il = torch.from_numpy(input_lengths).to(device)
    tl = torch.from_numpy(target_lengths).to(device)
    cells: dict[str, float | None] = {}

    step, grad = backward_step(lp, lambda x: F.ctc_loss(x, tg, il, tl))
    cells["torch"] = median_ms(step, repeats, sync)
    # torch's gradient follows its own convention (it assumes a log_softmax input), so it is
    # compared with torch's own float64 result on the CPU.
    lp64 = torch.from_numpy(log_probs).double().requires_grad_()
    F.ctc_loss(lp64, *(torch.from_numpy(a) for a in data[1:])).backward()
    torch_err = float(np.abs(grad() - lp64.grad.numpy()).max())

    cells["cuDNN"] = None
    if device.type == "cuda" and S < CUDNN_MAX_TARGET:
        concatenated = torch.from_numpy(targets.reshape(-1).astype(np.int32))
        lengths_in, lengths_tg = tuple(input_lengths.tolist()), tuple(target_lengths.tolist())
        step, _ = backward_step(lp, lambda x: F.ctc_loss(x, concatenated, lengths_in, lengths_tg))
        cells["cuDNN"] = median_ms(step, repeats, sync)

    step, grad = backward_step(lp, lambda x: fctorch.ctc_loss(x, tg, il, tl))
    cells["fastctc.torch"] = median_ms(step, repeats, sync)
    fastctc_err = float(np.abs(grad() - reference).max())

    cells["fastctc.torch gpu"] = None
    cells["wgpu"] = None
    phases: dict[str, float] = {}
    if has_gpu:
        step, _ = backward_step(lp, lambda x: fctorch.ctc_loss(x, tg, il, tl, device="gpu"))
        cells["fastctc.torch gpu"] = median_ms(step, repeats, sync)
        cells["wgpu"] = median_ms(
            lambda: fastctc.ctc_loss_and_grad(*data, device="gpu"), repeats, lambda: None
        )
        runs = [
            _core.gpu_profile(*data, 0, "mean", False, "log_probs", True)[2]
            for _ in range(max(3, repeats // 2))
        ]
        phases = {p: statistics.median(r[p] for r in runs) * 1e3 for p in PHASES}
    cells["cpu"] = median_ms(
        lambda: fastctc.ctc_loss_and_grad(*data, device="cpu"), repeats, lambda: None
    )
    cells["floor"] = pinned_floor_ms(shape, repeats, device, sync)

    best_torch = min(v for v in (cells["torch"], cells["cuDNN"]) if v is not None)
    ratio = best_torch / cells["fastctc.torch"]
    line = (
        f"| {name} {shape} | {fmt(cells['torch'])} | {fmt(cells['cuDNN'])} | "
        f"{fmt(cells['fastctc.torch'])} | {ratio:.2f}x | {fmt(cells['fastctc.torch gpu'])} | "
        f"{fmt(cells['wgpu'])} | "
        + " | ".join(fmt(phases.get(p)) for p in PHASES)
        + f" | {fmt(cells['cpu'])} | {fmt(cells['floor'])} | {torch_err:.1e} | {fastctc_err:.1e} |"
    )
    return line, {"cells": cells, "phases": phases, "errors": (torch_err, fastctc_err)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", help="comma-separated subset of: " + ", ".join(SHAPES))
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats (default 10)")
    parser.add_argument("--quick", action="store_true", help="three timed repeats")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument(
        "--torch-device", default="cuda", help="torch device of the tensors (default cuda)"
    )
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else max(1, args.repeats)
    device = torch.device(args.torch_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("torch sees no CUDA device; --torch-device cpu runs the same code paths")
        return 1
    if device.type == "cuda":

        def sync() -> None:
            torch.cuda.synchronize(device)

        gpu_name = torch.cuda.get_device_name(device)
    else:

        def sync() -> None:
            return None

        gpu_name = f"none (torch tensors on {device})"
    wanted = chosen(parser, SHAPES, args.shapes)

    info = fastctc.gpu_info()
    adapter = (
        "none"
        if info is None
        else f"{info['name']} ({info['backend']}, driver {info['driver_info'] or info['driver']})"
    )
    lines = [
        f"# fastctc {fastctc.__version__} vs torch {torch.__version__} on {gpu_name}",
        "",
        f"- wgpu adapter: {adapter}",
        f"- host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"fastctc CPU backend on {fastctc.get_num_threads()} threads; "
        f"Python {sys.version.split()[0]}",
        f"- median of {repeats} repeats after warm-ups; ms; float32, forward + backward, "
        "reduction mean; ratio = faster torch path / fastctc.torch",
        "",
        "| shape (T, N, C, S) | torch | cuDNN | fastctc.torch | ratio | fastctc.torch gpu | "
        "wgpu | pack | upload | compute | readback | unpack | cpu | floor | "
        "grad err torch | grad err fastctc |",
        "|---|" + "---:|" * 16,
    ]
    print("\n".join(lines), flush=True)
    has_gpu = info is not None
    for name, shape in wanted.items():
        line, _ = row_for(name, shape, repeats, device, sync, has_gpu)
        lines.append(line)
        print(line, flush=True)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
