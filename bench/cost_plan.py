"""The cost plan of a model alone (no capture, no solve): the seconds it predicts, the
methods and blocks it chose, the micro-benchmark's time and its contention figures
(costclock.py). Asserts nothing.

    python bench/cost_plan.py bench/real/crepe_full.onnx --bits 4 --memory-budget 20000 --time-budget 600
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnx  # noqa: E402

from onnx_obc.config import CompressConfig  # noqa: E402
from onnx_obc.costplan import make_plan  # noqa: E402
from onnx_obc.layers import find_layers  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--bits", type=int)
    ap.add_argument("--sparsity", type=float)
    ap.add_argument("--memory-budget", type=int, default=2048)
    ap.add_argument("--time-budget", type=float)
    a = ap.parse_args()
    layers, _ = find_layers(onnx.load(a.model, load_external_data=False))
    opts = {k: v for k, v in dict(bits=a.bits, sparsity=a.sparsity,
                                   time_budget_s=a.time_budget).items() if v is not None}
    if a.sparsity is not None:
        opts["allocate"] = "uniform"
    t = time.perf_counter()
    plan = make_plan(layers, CompressConfig.from_options(memory_budget_mb=a.memory_budget,
                                                         **opts))
    print(f"plan made in {time.perf_counter() - t:.1f} s (the micro-benchmark included)")
    print(plan.summary())
    print(dict(collections.Counter(p.label for p in plan.layers)))
    r = plan.rates
    print(f"threads {r['threads']:g}, contention {r['contention']:.1f}x, one-thread share "
          f"{r['one_thread']:.2f}; flop32 {r['flop32']:.3g} s/flop, prep {r['prep']:.3g} s")
    for w in plan.warnings:
        print("warning:", w)


if __name__ == "__main__":
    main()
