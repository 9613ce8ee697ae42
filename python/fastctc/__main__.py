"""Command line: ``python -m fastctc info``, ``demo`` and ``align``.

``align`` writes the word timings of a recording (or, with ``--manifest``, of a corpus)
from its CTC emissions: ``python -m fastctc align --help``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np

import fastctc
from fastctc import cli_align


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def info() -> int:
    """Prints the version, thread count, detected SIMD level and GPU adapter."""
    torch = _torch()
    print(f"fastctc {fastctc.__version__}")
    print(f"python {platform.python_version()} on {platform.machine()} ({platform.system()})")
    print(f"numpy {np.__version__}")
    print(f"torch {torch.__version__ if torch else 'not installed'}")
    print(f"threads {fastctc.get_num_threads()}")
    features = fastctc.simd_features()
    print(f"simd {', '.join(features) if features else 'none detected'}")
    gpu = fastctc.gpu_info()
    if gpu is None:
        print("gpu none (device='gpu' raises GpuUnavailableError)")
    else:
        print(f"gpu {gpu['name']} ({gpu['backend']}, {gpu['device_type']})")
    return 0


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def make_batch(T: int, N: int, C: int, S: int, seed: int = 0):
    """A speech-like batch: varying lengths, peaked per-frame distributions, padded targets."""
    rng = np.random.default_rng(seed)
    input_lengths = rng.integers(T // 2, T + 1, size=N)
    input_lengths[0] = T
    target_lengths = np.minimum(rng.integers(S // 2, S + 1, size=N), input_lengths // 2)
    targets = rng.integers(1, C, size=(N, S))
    logits = rng.standard_normal((T, N, C)) * 2.0
    logits[:, :, 0] += 2.0  # a model that mostly says "blank", as trained models do
    return _log_softmax(logits).astype(np.float32), targets, input_lengths, target_lengths


def demo(T: int = 500, N: int = 32, C: int = 29, S: int = 100) -> int:
    """Computes the loss and gradient of a realistic batch, and compares with torch."""
    log_probs, targets, input_lengths, target_lengths = make_batch(T, N, C, S)
    print(f"batch: T={T} N={N} C={C} S={S}, float32, {fastctc.get_num_threads()} threads")
    fastctc.ctc_loss_and_grad(log_probs, targets, input_lengths, target_lengths)  # warm up
    start = time.perf_counter()
    loss, grad = fastctc.ctc_loss_and_grad(
        log_probs, targets, input_lengths, target_lengths, grad_wrt="logits"
    )
    elapsed = time.perf_counter() - start
    print(
        f"fastctc: loss {float(loss):.6f}, grad {grad.shape} {grad.dtype}, "
        f"{elapsed * 1e3:.2f} ms forward+backward"
    )

    torch = _torch()
    if torch is None:
        print("torch not installed: no comparison")
        return 0
    lp = torch.from_numpy(log_probs).requires_grad_()
    start = time.perf_counter()
    ref = torch.nn.functional.ctc_loss(
        lp,
        torch.from_numpy(targets),
        torch.from_numpy(input_lengths),
        torch.from_numpy(target_lengths),
    )
    ref.backward()
    ref_elapsed = time.perf_counter() - start
    loss_diff = abs(float(loss) - ref.item())
    grad_diff = float(np.abs(grad - lp.grad.numpy()).max())
    print(f"torch:   loss {ref.item():.6f}, {ref_elapsed * 1e3:.2f} ms forward+backward")
    print(f"max difference to torch: loss {loss_diff:.2e}, gradient {grad_diff:.2e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastctc",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, threads and SIMD level")
    demo_parser = sub.add_parser("demo", help="loss and gradient of a realistic batch")
    for name, default in (("T", 500), ("N", 32), ("C", 29), ("S", 100)):
        demo_parser.add_argument(f"-{name}", type=int, default=default)
    align_parser = sub.add_parser(
        "align",
        help="word timings from CTC emissions (JSON, CTM or TextGrid)",
        description=cli_align.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli_align.add_arguments(align_parser)
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    if args.command == "align":
        return cli_align.run(args)
    return demo(args.T, args.N, args.C, args.S)


if __name__ == "__main__":
    sys.exit(main())
