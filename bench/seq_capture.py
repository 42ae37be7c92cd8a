"""What --sequential's captures cost: the capture of each later group (the partly compressed
model and the dense reference, collect.py with `dense`), in one process, alternating, on the
same groups. A model whose batch is fixed at 1 (common): one sample per run (as before both
were batched), both batched, both batched and pruned to the captured tensors' ancestors. A
model with a free batch: the whole graph, the ancestors only (every prefix from the graph
inputs), and from the last group's cut (frontier.py, the default since).

    OPENBLAS_NUM_THREADS=1 python bench/seq_capture.py --model common [--groups 22] [--reps 1] [--samples 32]
    OPENBLAS_NUM_THREADS=1 python bench/seq_capture.py --model efficientnet_lite0

The "compressed" model is the dense one with every layer's weights scaled by 1.01 (the
capture's cost does not depend on the values). Prints per path: CPU seconds (this process,
all threads), wall seconds, onnxruntime runs, and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    import onnxruntime as ort

    from onnx_obc import calib as calibration
    from onnx_obc.backend import get_backend
    from onnx_obc.collect import collect
    from onnx_obc.config import CompressConfig
    from onnx_obc.frontier import Frontier
    from onnx_obc.layers import select_layers
    from onnx_obc.costmem import layer_groups

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="common")
    ap.add_argument("--groups", type=int, default=None, help="default: one per layer")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--samples", type=int, default=None, help="calibration samples (all)")
    ap.add_argument("--paths", default=None, help="the paths to run, by number: 0,1,2 (all)")
    a = ap.parse_args()
    path = ROOT / f"bench/real/{a.model}"
    proto = onnx.load(f"{path}.onnx")
    cfg = CompressConfig.from_options(bits=4, sequential=True, sequential_groups=a.groups,
                                     calib_samples=a.samples, holdout=0.0)
    layers, _ = select_layers(proto, cfg.select)
    data = calibration.plan(proto, f"{path}.calib.npz", None, cfg.run)
    current = onnx.ModelProto()
    current.CopyFrom(proto)
    names = {L.weight for L in layers}
    for t in current.graph.initializer:
        if t.name in names:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(1.01),
                                               t.name))
    groups = layer_groups(layers, cfg.run)[1:]  # the first group has no dense reference
    backend = get_backend("cpu")
    runs = [0]
    real = ort.InferenceSession.run

    def counted(self, *args, **kw):
        runs[0] += 1
        return real(self, *args, **kw)

    ort.InferenceSession.run = counted
    print(f"{a.model}: {len(layers)} layers, {len(groups)} later groups, "
          f"{data.fit.n} samples, free_batch {data.free_batch}")
    import onnx_obc.collect as collect_mod

    pruned = collect_mod.capture_session
    whole = lambda m, names, rt, prune=False, arena=True: pruned(  # noqa: E731
        m, names, rt, arena=arena)
    fixed = data.free_batch > 1
    paths = (("one sample per run, whole graph (before)", 0, whole, False),
             ("batched, whole graph", data.free_batch, whole, False),
             ("batched, the captured tensors' ancestors only", data.free_batch, pruned, False)
             ) if fixed else (("whole graph", 0, whole, False),
                              ("the captured tensors' ancestors only", 0, pruned, False),
                              ("from the last group's cut (frontier.py)", 0, pruned, True))
    if a.paths is not None:
        paths = tuple(paths[int(i)] for i in a.paths.split(","))
    budget = cfg.run.memory_budget_mb
    for rep in range(a.reps):
        for label, free, make, cut in paths:
            collect_mod.capture_session = make
            runs[0] = 0
            load = os.getloadavg()[0]
            c, t = time.process_time(), time.perf_counter()
            fr = Frontier(budget * 2**20 // 2) if cut else None
            for g in groups:
                collect(current, g, data.fit, data.batch, backend, budget, False, dense=proto,
                        hessian_dtype=np.float64, free_batch=free, frontier=fr,
                        sample_axes=data.info.get("sample_axes"), shrink=data.batch_is_free)
            print(f"rep {rep} {label}: cpu {time.process_time() - c:.1f} s, wall "
                  f"{time.perf_counter() - t:.1f} s, {runs[0]} runs, load {load:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
