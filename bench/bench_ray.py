"""The Ray engine against the serial loop (prints figures; asserts nothing).

    python bench/bench_ray.py [--model bench/synthetic/ocr_like.onnx] [--sparsity 0.5 | --bits 4]
        [--method obc] [--workers 2] [--tiny 200] [--calib-samples 128] [--include 'blk*']

One Hessian capture, then the layer solves (solve.solve_all) of the same Hessians: serially
in this process (the default engine), and with `--engine ray` on a local Ray of `--workers`
workers, with the speed-up and whether the solutions are the same bytes. Both runs use the
BLAS threads this process starts with (or --threads): each Ray task runs with as many and
asks Ray for as many CPUs, so on 2 cores 2 workers run at once only with 1 thread each. Then the
scheduling overhead per task: `--tiny` tasks that do nothing, on Ray (warm workers) vs the
local loop. Ray's start-up is reported apart (the CLI pays it once per run). The machine's
load average is printed before and after: on a shared machine the figures move with it.
"""

from __future__ import annotations

import argparse
import os
import copy
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx_obc import calib  # noqa: E402
from onnx_obc.backend import get_backend  # noqa: E402
from onnx_obc.collect import collect  # noqa: E402
from onnx_obc.config import CompressConfig  # noqa: E402
from onnx_obc.engine import LocalEngine  # noqa: E402
from onnx_obc.engine.ray_engine import RayEngine, blas_threads, import_ray  # noqa: E402
from onnx_obc.layers import select_layers  # noqa: E402
from onnx_obc.modelio import load_model  # noqa: E402
from onnx_obc.solve import solve_all, solve_cost, solver_budget  # noqa: E402


def nothing(task, backend):
    return task


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def solve(proto, layers, hessians, backend, cfg, engine):
    """One solve of every layer (on a copy of the accumulators: a solve spends them)."""
    t = time.perf_counter()
    out = solve_all(proto, layers, copy.deepcopy(hessians), backend, prune=cfg.prune, quant=cfg.quant,
                    solver=cfg.solver, budget_bytes=solver_budget(cfg.run, backend),
                    engine=engine)
    return out, time.perf_counter() - t


def same_bytes(a, b) -> bool:
    for k, s in a.solutions.items():
        t = b.solutions[k]
        for x, y in ((s.compressed, t.compressed), (s.baseline, t.baseline)):
            if x.weight.tobytes() != y.weight.tobytes():
                return False
            if (x.codes is None) != (y.codes is None) or (
                    x.codes is not None and x.codes.tobytes() != y.codes.tobytes()):
                return False
    return a.solutions.keys() == b.solutions.keys()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "bench/synthetic/ocr_like.onnx"))
    ap.add_argument("--calib", default=None, help="default: MODEL with .calib.npz")
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=None)
    ap.add_argument("--bits", type=int, default=None)
    ap.add_argument("--method", default="obc")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tiny", type=int, default=200)
    ap.add_argument("--include", nargs="*", default=(), help="only these layers (globs)")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS threads of both runs (default: as started, OMP_NUM_THREADS)")
    a = ap.parse_args()
    options = {"sparsity": a.sparsity, "bits": a.bits} if a.sparsity or a.bits else {
        "sparsity": 0.5}
    cfg = CompressConfig.from_options(method=a.method, device="cpu", include=tuple(a.include),
                                      calib_samples=a.calib_samples, **options)
    print(f"{Path(a.model).name}: {options}, method {a.method}; {load()}")
    proto = load_model(a.model)
    layers, _ = select_layers(proto, cfg.select)
    data = calib.plan(proto, a.calib or a.model.replace(".onnx", ".calib.npz"), None, cfg.run)
    backend = get_backend("cpu")
    t = time.perf_counter()
    hessians, _ = collect(proto, layers, data.fit, data.batch, backend,
                          cfg.run.memory_budget_mb, False)
    params = sum(int(np.prod(L.shape)) for L in layers)
    print(f"{len(layers)} layers, {params / 1e6:.2f} M weights; capture {data.fit.n} samples "
          f"{time.perf_counter() - t:.1f} s")

    ray = import_ray()
    limit = threadpool_limits(a.threads)  # both runs; the Ray tasks take the driver's
    threads = max(blas_threads().values(), default=1)
    t = time.perf_counter()
    ray.init(num_cpus=a.workers * threads, include_dashboard=False, log_to_driver=False)
    print(f"Ray start-up ({a.workers} workers x {threads} BLAS threads = "
          f"{a.workers * threads} CPUs): {time.perf_counter() - t:.1f} s")
    engine = RayEngine(workers=a.workers)
    n, cost = a.tiny, [1.0] * a.tiny
    t = time.perf_counter()
    engine.map(nothing, n, lambda i: i, cost)  # starts the workers
    cold = time.perf_counter() - t
    t = time.perf_counter()
    engine.map(nothing, n, lambda i: i, cost)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    LocalEngine(backend).map(nothing, n, lambda i: i, cost)
    local = time.perf_counter() - t
    print(f"{n} empty tasks: Ray {warm:.2f} s warm ({cold:.2f} s first, workers starting), "
          f"local {local * 1e3:.2f} ms -> overhead {(warm - local) / n * 1e3:.1f} ms per task "
          f"({a.workers} in flight)")

    serial, t_serial = solve(proto, layers, hessians, backend, cfg, None)
    print(f"serial solve: {t_serial:.1f} s; {load()}")
    par, t_ray = solve(proto, layers, hessians, backend, cfg, engine)
    print(f"ray solve ({a.workers} workers): {t_ray:.1f} s -> speed-up "
          f"{t_serial / t_ray:.2f}x; same bytes: {same_bytes(serial, par)}; {load()}")
    top = max(layers, key=solve_cost)
    row = {x.name: x for x in serial.rows}.get(top.name)
    rows = {x.name: x.seconds for x in par.rows}
    print(f"largest predicted task: {top.name} ({row.rows}x{row.cols}), {row.seconds:.1f} s "
          f"serial, {rows[top.name]:.1f} s on a worker; sum of worker task times "
          f"{sum(rows.values()):.1f} s vs serial {sum(x.seconds for x in serial.rows):.1f} s")
    limit.restore_original_limits()
    ray.shutdown()


if __name__ == "__main__":
    main()
