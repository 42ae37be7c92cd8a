"""Per-layer OBQ vs GPTQ vs RTN on Hessians captured by bench/real_capture.py.

    python bench/real_layers.py [--data bench/real/hessians.npz] [--bits 4] [--rows 256]
                                [--minmax] [--methods obc,gptq]

Losses tr(dW H dW^T) on the undampened H, relative to plain min-max RTN; rank of H
(eigenvalues above 1e-6 max) against d and the samples N."""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from onnx_obc.quant import QuantSpec, fit_grid, rtn  # noqa: E402
from onnx_obc.solvers import solve_layer  # noqa: E402
from onnx_obc.solvers.prepare import layer_loss  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="bench/real/hessians.npz")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--rows", type=int, default=256, help="at most this many rows per layer")
    ap.add_argument("--minmax", action="store_true")
    ap.add_argument("--methods", default="obc,gptq",
                    help="solvers; a suffix :refine / :norefine sets QuantSpec.refine")
    ap.add_argument("--group-size", type=int, default=None)
    ap.add_argument("--max-d", type=int, default=0, help="skip layers with more inputs (OBQ's "
                    "cost is rows * d^3 on this CPU)")
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    z = np.load(a.data)
    if "names" in z.files:  # real_capture.py: keys L<i>/..., the node names beside them
        names = [f"L{i}" for i in range(len(z["names"]))]
    else:
        names = sorted({k.split("/")[0] for k in z.files}, key=lambda n: int(n.split("_")[-1]))
    gs = a.group_size
    mm = QuantSpec(bits=a.bits, mse=False, group_size=gs)
    methods = a.methods.split(",")
    print(f"{'layer':10} {'W':>10} {'rank':>9} {'N':>4} " + " ".join(f"{m:>7}" for m in methods)
          + f" {'rtn':>7}   (loss / min-max RTN; rtn on the H-aware grid)  method used")
    ratios = {m: [] for m in methods}
    wide = []  # (name, d, ratio of every method) of the layers with >= 64 inputs
    secs = {m: 0.0 for m in methods}
    solved = []
    for n in names:
        if a.only and n not in a.only.split(","):
            continue
        W, H, N = z[f"{n}/W"], z[f"{n}/H"], int(z[f"{n}/N"])
        solved.append(n)
        W = W[:, :a.rows]
        G, r, d = W.shape
        if a.max_d and d > a.max_d:
            print(f"{n:10} {f'{r}x{d}':>10} skipped: more than --max-d {a.max_d} inputs")
            continue
        if gs and d % gs:
            print(f"{n:10} {f'{r}x{d}':>10} skipped: group size {gs} does not divide {d}")
            continue
        ev = np.linalg.eigvalsh(H[0])
        rank = int((ev > 1e-6 * ev.max()).sum())
        base = layer_loss(W, rtn(W.reshape(G * r, d), fit_grid(W.reshape(G * r, d), mm))
                          .reshape(G, r, d), H)
        out, used = [], []
        for m in methods:
            t = time.time()
            name, _, opt = m.partition(":")
            q = QuantSpec(bits=a.bits, mse=not a.minmax, group_size=gs,
                          refine={"": None, "refine": True, "norefine": False}[opt])
            sol = solve_layer(W, H, quant=q, method=name)
            secs[m] += time.time() - t
            out.append(sol.loss / base)
            ratios[m].append(sol.loss / base)
            used.append(sol.method_used)
        out.append(sol.baseline_loss / base)
        if d >= 64:
            wide.append((n, d, out))
        print(f"{n:10} {f'{r}x{d}':>10} {f'{rank}/{d}':>9} {N:4} "
              + " ".join(f"{v:7.3f}" for v in out) + "  " + " ".join(used))
    last = np.array(ratios[methods[-1]])
    for i, m in enumerate(methods):
        v = np.array(ratios[m])
        print(f"{m}: worst {v.max():.3f}, median {np.median(v):.3f}, "
              f"{secs[m]:.0f} s", end="")
        if i < len(methods) - 1:
            worse = [n for n, x, y in zip(solved, v, last) if x > y * 1.0001]
            print(f"; <= {methods[-1]} on {len(v) - len(worse)}/{len(v)} layers (above: "
                  f"{', '.join(worse) or 'none'})", end="")
        if wide:
            bad = [f"{n} ({d} inputs: {r[i]:.3f})" for n, d, r in wide if r[i] > 0.5]
            print(f"; <= 0.5x min-max RTN on {len(wide) - len(bad)}/{len(wide)} layers with "
                  f">= 64 inputs (above: {', '.join(bad) or 'none'})", end="")
        print()
    if "names" in z.files:
        print("layers: " + ", ".join(f"L{i}={v}" for i, v in enumerate(z["names"])))


if __name__ == "__main__":
    main()
