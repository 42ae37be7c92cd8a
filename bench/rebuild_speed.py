"""Speed of select.rebuild (exact row reconstruction on the chosen masks), NumPy or CuPy.

    python bench/rebuild_speed.py [--device cpu|cuda] [--rows 512] [--cols 1152]
                                  [--sparsity 0.5] [--repeats 5]

One layer (random weights, the correlated Hessian of bench/solver_speed.py), the greedy
traces and the global selection computed once (timed once, for scale); then rebuild is timed
`--repeats` times and the median printed, with its maximum deviation from a float64
reference (the first run) and the exact-zero count. Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnx_obc.backend import get_backend  # noqa: E402
from onnx_obc.solvers import prepare, rows_per_batch  # noqa: E402
from onnx_obc.solvers.fast import greedy_traces  # noqa: E402
from onnx_obc.solvers.select import rebuild, select_counts  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from solver_speed import hessian  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=1152)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget-mb", type=int, default=1024)
    args = ap.parse_args()
    be = get_backend(args.device)
    xp = be.xp
    r, d = args.rows, args.cols
    W = np.random.default_rng(r + d).standard_normal((1, r, d), dtype=np.float32)
    prep = prepare(be.to_device(W), be.to_device(hessian(d, d)), 0.01)
    rows = prep.W[0]
    group = xp.zeros(r, dtype=xp.int64)
    rb = rows_per_batch(d, r, args.budget_mb << 20)
    count = round(args.sparsity * r * d)
    be.sync()
    t = time.perf_counter()
    tr = greedy_traces(rows, prep.Hinv, group, rb, count)
    counts = select_counts(tr.keys, count)
    be.sync()
    t_traces = time.perf_counter() - t
    times, ref = [], None
    for _ in range(args.repeats):
        be.sync()
        t = time.perf_counter()
        out = rebuild(rows, prep.Hinv, group, tr.order, counts, rb)
        be.sync()
        times.append(time.perf_counter() - t)
        ref = out if ref is None else ref
    dev = float(xp.abs(out - ref).max())
    zeros = int((out == 0).sum())
    print(f"{be.name} {r}x{d} sparsity {args.sparsity} rows/batch {rb}: traces {t_traces:.2f} s; "
          f"rebuild median {statistics.median(times):.3f} s over {args.repeats} "
          f"(min {min(times):.3f}, max {max(times):.3f}); zeros {zeros} (count {count}); "
          f"repeat deviation {dev:.1e}; counts {int(counts.min())}..{int(counts.max())}")


if __name__ == "__main__":
    main()
