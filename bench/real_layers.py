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
    ap.add_argument("--methods", default="obc,gptq")
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    z = np.load(a.data)
    if "names" in z.files:  # real_capture.py: keys L<i>/..., the node names beside them
        names = [f"L{i}" for i in range(len(z["names"]))]
    else:
        names = sorted({k.split("/")[0] for k in z.files}, key=lambda n: int(n.split("_")[-1]))
    spec = QuantSpec(bits=a.bits, mse=not a.minmax)
    mm = QuantSpec(bits=a.bits, mse=False)
    methods = a.methods.split(",")
    print(f"{'layer':10} {'W':>10} {'rank':>9} {'N':>4} " + " ".join(f"{m:>7}" for m in methods)
          + f" {'rtn':>7}   (loss / min-max RTN; rtn on the H-aware grid)  method used")
    ratios = {m: [] for m in methods}
    wide = []  # (name, d, obc ratio) of the layers with >= 64 inputs
    solved = []
    for n in names:
        if a.only and n not in a.only.split(","):
            continue
        W, H, N = z[f"{n}/W"], z[f"{n}/H"], int(z[f"{n}/N"])
        solved.append(n)
        W = W[:, :a.rows]
        G, r, d = W.shape
        ev = np.linalg.eigvalsh(H[0])
        rank = int((ev > 1e-6 * ev.max()).sum())
        base = layer_loss(W, rtn(W.reshape(G * r, d), fit_grid(W.reshape(G * r, d), mm))
                          .reshape(G, r, d), H)
        out, used = [], []
        for m in methods:
            t = time.time()
            sol = solve_layer(W, H, quant=spec, method=m)
            out.append(sol.loss / base)
            ratios[m].append(sol.loss / base)
            used.append(sol.method_used)
        out.append(sol.baseline_loss / base)
        if d >= 64 and methods[0] == "obc":
            wide.append((n, d, out[0]))
        print(f"{n:10} {f'{r}x{d}':>10} {f'{rank}/{d}':>9} {N:4} "
              + " ".join(f"{v:7.3f}" for v in out) + "  " + " ".join(used))
    for m in methods:
        print(f"worst {m}: {max(ratios[m]):.3f}")
        print(f"median {m}: {np.median(ratios[m]):.3f}")
    if len(methods) == 2:
        a0, a1 = np.array(ratios[methods[0]]), np.array(ratios[methods[1]])
        print(f"{methods[0]} <= {methods[1]} on {(a0 <= a1 * 1.0001).mean():.0%} of layers")
        worse = [n for n, x, y in zip(solved, a0, a1) if x > y * 1.0001]
        print(f"{methods[0]} > {methods[1]} on: {', '.join(worse) or 'none'}")
    if wide:
        bad = [f"{n} ({d} inputs: {v:.3f})" for n, d, v in wide if v > 0.5]
        print(f"obc <= 0.5x min-max RTN on {len(wide) - len(bad)}/{len(wide)} layers with >= 64 "
              f"inputs; above: {', '.join(bad) or 'none'}")
    if "names" in z.files:
        print("layers: " + ", ".join(f"L{i}={v}" for i, v in enumerate(z["names"])))


if __name__ == "__main__":
    main()
