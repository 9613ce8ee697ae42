"""The float32 GPU gradient against a float64 reference (the CPU backend on float64 input).

Usage::

    python benches/gpu_accuracy.py                  # T = 500, 1500, 5000
    python benches/gpu_accuracy.py --T 5000 --S 1000 --C 40 --N 2

Random ``log_softmax`` input (standard normal logits times ``--scale``), random targets
and targets with repeats (each label drawn from 3 classes, so many neighbours are equal).
Prints, per case, the maximum absolute difference of the float32 GPU gradient and of the
float32 CPU gradient from the float64 one, and the loss's relative difference.
"""

from __future__ import annotations

import argparse

import fastctc
import numpy as np


def case(rng, T, N, C, S, scale, repeats):
    logits = rng.standard_normal((T, N, C)) * scale
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    if repeats:
        targets = rng.integers(1, 4, size=(N, S))
    else:
        targets = rng.integers(1, C, size=(N, S))
    il = np.full(N, T)
    tl = np.full(N, S)
    # the float32 input is the reference's input too: only the arithmetic differs
    lp32 = lp.astype(np.float32)
    return lp32, targets, il, tl


def errors(lp32, targets, il, tl):
    l64, g64 = fastctc.ctc_loss_and_grad(
        lp32.astype(np.float64), targets, il, tl, reduction="sum", device="cpu"
    )
    out = {}
    for device in ("gpu", "cpu"):
        l32, g32 = fastctc.ctc_loss_and_grad(lp32, targets, il, tl, reduction="sum", device=device)
        out[device] = (np.abs(g32 - g64).max(), abs(float(l32) - float(l64)) / abs(float(l64)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, nargs="*", default=[500, 1500, 5000])
    ap.add_argument("--S", type=int, default=None, help="default: T / 5")
    ap.add_argument("--C", type=int, default=40)
    ap.add_argument("--N", type=int, default=2)
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(fastctc.gpu_info()["name"])
    for T in args.T:
        S = args.S or T // 5
        for repeats in (False, True):
            e = errors(*case(rng, T, args.N, args.C, S, args.scale, repeats))
            print(
                f"T={T:5d} S={S:5d} C={args.C} N={args.N} repeats={int(repeats)}: "
                f"gpu grad {e['gpu'][0]:.2e} loss {e['gpu'][1]:.1e} | "
                f"cpu grad {e['cpu'][0]:.2e} loss {e['cpu'][1]:.1e}"
            )


if __name__ == "__main__":
    main()
