"""Where the GPU pays: one layer's solve on NumPy and on CuPy, over widths (prints figures;
asserts nothing).

    python bench/device_crossover.py [--fake] [--cpu-cap 20]

For each job (50% ExactOBS, 50% SparseGPT, 4-bit OBQ, 4-bit GPTQ) and shape rows x d, with a
correlated Hessian (tests/solvers/data.py): `solve_layer` seconds on each device (after one
warm-up solve per job on the device, so CuPy's kernel compilation is not counted), their
ratio and the loss difference. A job's CPU runs stop after the first that takes longer than
--cpu-cap seconds (its larger shapes show the GPU alone). --fake: the tests' fake device
stands in for CuPy (checks this script; its seconds mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx_obc.backend import get_backend, stand_in_device  # noqa: E402
from onnx_obc.quant import QuantSpec  # noqa: E402
from onnx_obc.solvers import Unstructured, solve_layer  # noqa: E402
from tests.solvers.data import correlated_H, weights  # noqa: E402

JOBS = {  # the widths a 16-core host won up to on an H200 (docs/numerics.md, GPU) and wider
    "s50 gptq": ({"structure": Unstructured(0.5), "method": "gptq"},
                 [(256, 1024), (512, 4096), (128, 8192), (128, 16384)]),
    "w4 gptq": ({"quant": QuantSpec(bits=4), "method": "gptq"},
                [(256, 1024), (512, 4096), (128, 8192)]),
    "s50 obc": ({"structure": Unstructured(0.5)}, [(128, 512), (64, 2048), (16, 8192)]),
    "w4 obc": ({"quant": QuantSpec(bits=4)}, [(64, 256), (128, 512), (256, 1024)]),
}


def timed(be, W: np.ndarray, H: np.ndarray, opts: dict) -> tuple[float, float]:
    t = time.perf_counter()
    res = solve_layer(be.to_device(W), be.to_device(H), **opts)
    be.sync()
    return time.perf_counter() - t, float(res.loss)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fake", action="store_true")
    ap.add_argument("--cpu-cap", type=float, default=20.0)
    args = ap.parse_args()
    ctx = contextlib.nullcontext()
    if args.fake:
        from tests.fakedev import fakecupy
        ctx = stand_in_device("fake", fakecupy, fakecupy.ndarray)
    with ctx:
        cpu, gpu = get_backend("cpu"), get_backend("cuda")
        print(f"{gpu.device_label} vs {cpu.device_label}")
        print(f"{'job':<9} {'rows x d':>11} {'cpu s':>8} {'gpu s':>8} {'cpu/gpu':>8} "
              f"{'loss rel diff':>13}")
        for job, (opts, shapes) in JOBS.items():
            timed(gpu, weights(8, 64, 0), correlated_H(64, 0)[None], opts)  # warm-up
            cpu_on = True
            for r, d in shapes:
                W, H = weights(r, d, 1), correlated_H(d, 1)[None]
                tg, lg = timed(gpu, W, H, opts)
                tc, lc = timed(cpu, W, H, opts) if cpu_on else (float("nan"), float("nan"))
                cpu_on = cpu_on and tc <= args.cpu_cap
                print(f"{job:<9} {f'{r}x{d}':>11} {tc:>8.2f} {tg:>8.2f} {tc / tg:>8.2f} "
                      f"{abs(lc - lg) / max(abs(lc), 1e-30):>13.1e}", flush=True)


if __name__ == "__main__":
    main()
