"""Structured sparsity, non-uniform allocation and corrections on the shipped models
(prints figures; asserts nothing).

    python bench/bench_structured.py [--models digits_cnn digits_vit]

Per model, with the same calibration data: N:M (2:4, 4:8) and 4-blocks with ExactOBS next to
magnitude at the same structure (accuracy, output error, layer loss ratio over layers with
>= 64 inputs); uniform vs non-uniform (DP) 70% sparsity and the equivalent FLOP cut; and the
effect of --correct, --correct-scale and --sequential on the output error; and OBC's mixed
levels under a bit-operations budget next to the uniform level of the same BOPs (W8A8 = 16x,
W4A8 = 32x, 2:4 + W4A8 = 64x less than dense FP32, where every layer can take it).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from onnx_obc import convert  # noqa: E402
from onnx_obc.config import CompressConfig  # noqa: E402
from onnx_obc.layers import find_layers  # noqa: E402
from onnx_obc.allocation import positions_per_sample  # noqa: E402

RUNS = [  # (label, options)
    ("2:4", dict(nm=(2, 4))),
    ("4:8", dict(nm=(4, 8))),
    ("block4 50%", dict(sparsity=0.5, block=4)),
    ("uniform 70%", dict(sparsity=0.7, allocate="uniform")),
    ("dp 70% (params)", dict(sparsity=0.7, allocate="dp")),
    ("dp 70% (flops)", dict(sparsity=0.7, allocate="dp", budget="flops")),
    ("uniform 70% +correct", dict(sparsity=0.7, allocate="uniform", correct=True)),
    ("uniform 70% +sequential", dict(sparsity=0.7, allocate="uniform", sequential=True)),
    ("uniform 70% +seq +correct", dict(sparsity=0.7, allocate="uniform", sequential=True,
                                       correct=True)),
    ("uniform 70% +correct-scale", dict(sparsity=0.7, allocate="uniform",
                                        correct_scale=True)),
    ("dp 70% +sequential", dict(sparsity=0.7, allocate="dp", sequential=True)),
    ("W8A8", dict(bits=8, act_bits=8)),
    ("dp bops = W8A8", dict(allocate="dp", budget="bops", target="W8A8", act_bits=8)),
    ("W4A8", dict(bits=4, act_bits=8)),
    ("dp bops = W4A8", dict(allocate="dp", budget="bops", target="W4A8", act_bits=8)),
    ("dp bops = W4A8 (output)", dict(allocate="dp", budget="bops", target="W4A8", act_bits=8,
                                     score="output")),
    ("dp bops 24x", dict(allocate="dp", budget="bops", target=24, act_bits=8)),
    ("2:4+W4A8", dict(nm=(2, 4), bits=4, act_bits=8)),
    ("dp bops 48x", dict(allocate="dp", budget="bops", target=48, act_bits=8)),
    ("dp bops = 2:4+W4A8", dict(allocate="dp", budget="bops", target="2:4+W4A8",
                                act_bits=8)),
]  # target "RUN": the BOP reduction that uniform run measured on the same model


def bops_reduction(name: str, res, act_bits: int | None) -> float:
    """Dense FP32 bit-ops / the compressed model's (MACs x density x w bits x a bits; layers
    left dense count 32 x 32)."""
    proto = onnx.load(ROOT / "models" / f"{name}.onnx")
    layers, _ = find_layers(proto)
    with np.load(ROOT / "models" / f"{name}.calib.npz") as z:
        feed = {k: z[k][:8] for k in z.files if k != "labels"}
    pos = positions_per_sample(proto, layers, feed)
    rows = {x.weight: x for x in res.report.layers}
    dense = total = 0.0
    for L in layers:
        macs = math.prod(L.matrix_shape) * pos[L.weight]
        dense += macs * 1024
        r = rows.get(L.weight)
        if r is None:
            total += macs * 1024
            continue
        a = act_bits if (act_bits and r.bits) else 32
        total += macs * (1 - r.target) * (r.bits or 32) * a
    return dense / total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--runs", nargs="*", default=None, help="labels to run (default: all)")
    args = ap.parse_args()
    names = args.models or sorted(p.name[:-5] for p in (ROOT / "models").glob("*.onnx"))
    print(f"{'model':<11} {'run':<26} {'dense':>6} {'OBC':>6} {'magn.':>6} {'err OBC':>8} "
          f"{'err mag':>8} {'ratio max':>9} {'ratio med':>9} {'zeros':>6} {'bops x':>6} "
          f"{'sec':>5}")
    for name in names:
        measured: dict[str, float] = {}
        for label, opts in RUNS:
            if args.runs and label not in args.runs:
                continue
            if isinstance(opts.get("target"), str):
                if opts["target"] not in measured:
                    print(f"{name:<11} {label:<26} skipped (run {opts['target']} first)")
                    continue
                opts = {**opts, "target": measured[opts["target"]] * (1 - 1e-9)}
            t = time.perf_counter()
            try:
                res = convert(ROOT / "models" / f"{name}.onnx", None, progress=False,
                              device="cpu", calib=ROOT / "models" / f"{name}.calib.npz",
                              eval_data=ROOT / "models" / f"{name}.eval.npz", **opts)
            except TypeError as exc:  # an option this version does not have
                print(f"{name:<11} {label:<26} skipped ({exc})")
                continue
            ev = res.report.fidelity["eval"]
            measured[label] = bops_reduction(name, res, opts.get("act_bits"))
            base = next((k for k in ev if k not in ("dense", "compressed", "uncorrected")),
                        None)
            ratios = [x.ratio for x in res.report.layers if x.cols >= 64 and x.target]
            zeros = sum(x.sparsity * x.rows * x.cols for x in res.report.layers) / sum(
                x.rows * x.cols for x in res.report.layers)

            def pct(x):
                return f"{100 * x:6.2f}" if x is not None else "     -"

            err = max(ev["compressed"].rel_error.values())
            err_b = max(ev[base].rel_error.values()) if base else float("nan")
            print(f"{name:<11} {label:<26} {pct(ev['dense'].accuracy)} "
                  f"{pct(ev['compressed'].accuracy)} "
                  f"{pct(ev[base].accuracy) if base else '     -'} {err:>8.4f} {err_b:>8.4f} "
                  f"{max(ratios) if ratios else float('nan'):>9.3f} "
                  f"{statistics.median(ratios) if ratios else float('nan'):>9.3f} "
                  f"{zeros:>6.1%} {measured[label]:>6.1f} "
                  f"{time.perf_counter() - t:>5.1f}", flush=True)
            if "uncorrected" in ev:
                print(f"{'':<11} {'  (before correction)':<26} {'':>6} "
                      f"{pct(ev['uncorrected'].accuracy)} {'':>6} "
                      f"{max(ev['uncorrected'].rel_error.values()):>8.4f}")


if __name__ == "__main__":
    main()
