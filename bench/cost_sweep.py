"""The cost model (costmodel.py) against the solver on synthetic layers of rows x d, one
layer at a time, every clock in CPU seconds (run with one BLAS thread): which term misfits
where. Prints per case the measured and predicted seconds and their ratio (asserts nothing).

    OPENBLAS_NUM_THREADS=1 python bench/cost_sweep.py
    OPENBLAS_NUM_THREADS=1 python bench/cost_sweep.py --rows 16 1000 --d 1280 --what gptq:w4

A case is METHOD:WHAT (obc / gptq, s = 50% sparsity, w4 = 4 bits). ExactOBS cases above
--max-exact predicted seconds are skipped (minutes each on one core).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
time.perf_counter = time.process_time  # every clock (the rates' calibration too): CPU s

import numpy as np  # noqa: E402

from onnx_obc.costmodel import Shape, calibrate, exact_seconds, fast_seconds  # noqa: E402
from onnx_obc.layerjob import effective_rank  # noqa: E402
from onnx_obc.quant import QuantSpec  # noqa: E402
from onnx_obc.solvers import Unstructured, solve_layer  # noqa: E402


def layer(R: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """W [1, R, d] and a correlated H [1, d, d] (a few shared directions plus noise)."""
    rng = np.random.default_rng(seed)
    N = max(2 * d, 256)
    X = rng.standard_normal((d, N)) + 0.5 * rng.standard_normal((d, 8)) @ rng.standard_normal(
        (8, N))
    return (rng.standard_normal((1, R, d)).astype(np.float32), (X @ X.T / N)[None])


def measure(W: np.ndarray, H: np.ndarray, method: str, what: str, budget: int) -> float:
    """One solve as layerjob.solve_job times it (the solve and the effective rank)."""
    t = time.process_time()
    solve_layer(W, H, structure=Unstructured(0.5) if "s" in what.split("+") else None,
                quant=QuantSpec(bits=4) if "w4" in what else None, method=method,
                budget_bytes=budget)
    effective_rank(H)
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="*", default=[16, 64, 256, 1000, 4000])
    ap.add_argument("--d", type=int, nargs="*", default=[64, 256, 1280])
    ap.add_argument("--what", nargs="*", default=["gptq:s", "gptq:w4", "obc:s", "obc:w4"])
    ap.add_argument("--repeat", type=int, default=3, help="median of this many solves")
    ap.add_argument("--max-exact", type=float, default=20.0)
    ap.add_argument("--budget-mb", type=int, default=1024, help="the greedy's row batches")
    args = ap.parse_args()
    rt = calibrate()
    budget = args.budget_mb << 20
    ratios: dict[str, list[float]] = {}
    print(f"{'case':<9} {'rows':>5} {'d':>5} {'measured':>9} {'predicted':>9} {'ratio':>6}")
    for case in args.what:
        method, what = case.split(":")
        sp, q = (0.5 if "s" in what.split("+") else 0.0), "w4" in what
        for d in args.d:
            for R in args.rows:
                s = Shape(1, R, d)
                pred = (fast_seconds(s, rt, sparsity=sp, quant=q) if method == "gptq" else
                        exact_seconds(s, rt, sparsity=sp, quant=q, candidates=4 if q and not sp
                                      else 0, row_budget=budget))
                if method == "obc" and pred > args.max_exact:
                    continue
                W, H = layer(R, d)
                meas = statistics.median(measure(W, H, method, what, budget)
                                         for _ in range(args.repeat if pred < 5 else 1))
                ratios.setdefault(case, []).append(pred / meas)
                print(f"{case:<9} {R:>5} {d:>5} {meas:>9.3f} {pred:>9.3f} {pred / meas:>6.2f}",
                      flush=True)
    for case, r in ratios.items():
        inside = sum(0.5 <= x <= 2 for x in r) / len(r)
        print(f"{case}: predicted / measured median {statistics.median(r):.2f}, min "
              f"{min(r):.2f}, max {max(r):.2f}, within 2x {inside:.0%} of {len(r)}")


if __name__ == "__main__":
    main()
