"""The plan's predicted solve seconds (costplan.py) against the measured ones, per layer, on
the bench models; and a very wide Conv (128 x 65,536 columns) compressed within a memory
budget (prints figures; asserts nothing).

    python bench/cost_model.py                      # every run below
    python bench/cost_model.py --runs digits_cnn:obc:s ocr_like:gptq:w4
    python bench/cost_model.py --wide --wide-budget 8000 --wide-time 600

A run is MODEL:METHOD:WHAT (WHAT: s = 50% sparsity, w4 = 4 bits, s+w4 = both); runs whose
model is not installed (bench/setup_models.py, bench/make_synthetic.py) are skipped. Each run
is a fresh subprocess (its own calibration of the rates, its own peak RSS). Per layer the
ratio predicted / measured; the summary gives its median, range and the share within 2x,
over every layer and over the layers measured at >= 0.05 s (below that, timer and scheduler
noise on a shared machine dominates), per kind of layer (method x rows), and the worst
layers. --threads (default 1) pins BLAS threads in every run, the
rates' calibration included; --clock cpu times everything in CPU seconds (see --help).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"digits_cnn": ROOT / "models/digits_cnn", "digits_vit": ROOT / "models/digits_vit",
          "ocr_like": ROOT / "bench/synthetic/ocr_like",
          **{m: ROOT / "bench/real" / m for m in ("common", "common_det", "efficientnet_lite0",
                                                  "ppocr_det", "ppocr_rec", "ppocr_cls",
                                                  "lcnet_orient", "magika")}}
RUNS = ["digits_cnn:obc:s", "digits_cnn:obc:w4", "digits_cnn:gptq:s+w4",
        "digits_vit:obc:s", "digits_vit:obc:w4", "digits_vit:gptq:w4",
        "ocr_like:obc:s", "ocr_like:gptq:s", "ocr_like:gptq:w4",
        "common:gptq:s", "common:gptq:w4", "common_det:gptq:s",
        "efficientnet_lite0:gptq:s", "efficientnet_lite0:gptq:w4",
        "ppocr_det:gptq:w4", "ppocr_rec:gptq:s", "ppocr_rec:gptq:w4", "ppocr_cls:obc:s"]
WHAT = {"s": {"sparsity": 0.5}, "w4": {"bits": 4}, "s+w4": {"sparsity": 0.5, "bits": 4},
        "24": {"nm": (2, 4)}}

CHILD = r"""
import json, os, sys, time
if os.environ.get("COST_MODEL_CLOCK") == "cpu":  # every clock of the run: CPU seconds
    time.perf_counter = time.process_time
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/bench")
from onnx_obc import convert
from peakmem import peak_mb  # the child's own peak, not its parent's
opts = json.loads(sys.argv[3])
model = opts.pop("model")
if model == "WIDE":
    sys.path.insert(0, sys.argv[1] + "/tests")
    import numpy as np
    import builders as b
    model = b.conv(c_in=1024, c_out=128, kernel=(64, 1), spatial=(64, 1), bias=False)
    opts["calib"] = [b.feeds(model, opts.pop("samples"), correlated=True)]
t = time.perf_counter()
res = convert(model, None, **{"progress": False, **opts})
wall = time.perf_counter() - t
rep = res.report
out = {"wall": wall, "peak_rss_mb": peak_mb(),
       "plan": rep.plan, "seconds": rep.seconds,
       "layers": [{"name": x.name, "rows": x.rows, "cols": x.cols, "method": x.method,
                   "seconds": x.seconds, "predicted": x.predicted_seconds,
                   "sparsity": x.sparsity, "ratio": x.ratio} for x in rep.layers]}
json.dump(out, open(sys.argv[2], "w"))
"""


def child(opts: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="cost-model-") as tmp:
        out = Path(tmp) / "out.json"
        subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(out), json.dumps(opts)],
                       check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                           [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])})
        return json.loads(out.read_text())


def summary(ratios: list[float]) -> str:
    if not ratios:
        return "no layers"
    r = sorted(ratios)
    within = sum(0.5 <= x <= 2.0 for x in r) / len(r)
    q = lambda p: r[min(len(r) - 1, int(p * len(r)))]  # noqa: E731
    return (f"{len(r)} layers: median {statistics.median(r):.2f}, p10 {q(0.1):.2f}, "
            f"p90 {q(0.9):.2f}, min {r[0]:.2f}, max {r[-1]:.2f}; within 2x: {within:.0%}")


def kind(x: dict) -> str:
    """method x rows: where the model's per-row terms dominate (thousands of rows)."""
    rows = x["rows"]
    size = "<256 rows" if rows < 256 else "256-999 rows" if rows < 1000 else ">=1000 rows"
    return f"{x['method'].split('-')[0]:<5} {size}"


def report(layers: list[dict], min_seconds: float) -> None:
    """The summaries: every layer, the timed ones, per kind, the worst ten."""
    ratio = lambda x: x["predicted"] / max(x["seconds"], 1e-6)  # noqa: E731
    big = [x for x in layers if x["seconds"] >= min_seconds]
    print(f"\npredicted / measured, every layer: {summary([ratio(x) for x in layers])}")
    print(f"predicted / measured, layers >= {min_seconds} s: "
          f"{summary([ratio(x) for x in big])}")
    for k in sorted({kind(x) for x in big}):
        print(f"  {k:<20} {summary([ratio(x) for x in big if kind(x) == k])}")
    worst = sorted(big, key=lambda x: abs(math.log(max(ratio(x), 1e-9))))[-10:][::-1]
    print(f"worst layers >= {min_seconds} s (predicted / measured):")
    for x in worst:
        print(f"  {ratio(x):6.2f}  {x['run']:<28} {x['name'][-36:]:<36} "
              f"{x['rows']}x{x['cols']} {x['seconds']:.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="*", default=None, help="MODEL:METHOD:WHAT (default: all)")
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--min-seconds", type=float, default=0.05)
    ap.add_argument("--wide", action="store_true", help="only the wide-layer run")
    ap.add_argument("--wide-budget", type=int, default=8000, help="MB")
    ap.add_argument("--wide-time", type=float, default=None, help="--time-budget, seconds")
    ap.add_argument("--wide-what", default="s+w4")
    ap.add_argument("--device", default="cpu", help="the wide run's --device (cpu / cuda)")
    ap.add_argument("--threads", default="1",
                    help="BLAS / OpenMP threads of each run ('' keeps the environment's): one "
                         "thread keeps timings steady on a shared machine")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="wall",
                    help="cpu: every clock of a run (the rates' calibration and the layer "
                         "times) counts the process's CPU seconds, which a loaded machine "
                         "does not stretch (with --threads 1, what an idle machine's wall "
                         "clock would show)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ["COST_MODEL_CLOCK"] = args.clock
    if args.threads:
        for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[v] = args.threads
    results = {}
    layers: list[dict] = []
    for run in ([] if args.wide else args.runs or RUNS):
        name, method, what = run.split(":")
        base = MODELS[name]
        if not Path(str(base) + ".onnx").exists():
            print(f"\n=== {run}: skipped, {base}.onnx not installed")
            continue
        res = child({"model": str(base) + ".onnx", "calib": str(base) + ".calib.npz",
                     "method": method, "calib_samples": args.calib_samples,
                     "compare_baseline": False, **WHAT[what]})
        results[run] = res
        print(f"\n=== {run}: solve measured {sum(x['seconds'] for x in res['layers']):.2f} s, "
              f"predicted {sum(x['predicted'] or 0.0 for x in res['layers']):.2f} s (the plan before "
              f"capture {res['plan']['predicted_seconds']:.2f} s); wall {res['wall']:.1f} s, "
              f"peak RSS {res['peak_rss_mb']:.0f} MB")
        print(f"{'layer':<40} {'W [out,in]':>12} {'measured':>9} {'predicted':>9} {'ratio':>6}")
        for x in res["layers"]:
            ratio = x["predicted"] / max(x["seconds"], 1e-6)
            layers.append({**x, "run": run})
            shape = f"{x['rows']}x{x['cols']}"
            print(f"{x['name'][-40:]:<40} {shape:>12} "
                  f"{x['seconds']:>9.3f} {x['predicted']:>9.3f} {ratio:>6.2f}")
    if layers:
        report(layers, args.min_seconds)
    if args.wide or not args.runs:
        opts = {"model": "WIDE", "samples": 64, "memory_budget_mb": args.wide_budget,
                "progress": True,  # the plan table and the bars, on stderr
                "compare_baseline": False, "device": args.device, **WHAT[args.wide_what]}
        if args.wide_time:
            opts["time_budget_s"] = args.wide_time
        res = child(opts)
        results["wide"] = res
        (x,) = res["layers"]
        print(f"\n=== wide Conv 128x65536 ({args.wide_what}, {args.device}), --memory-budget "
              f"{args.wide_budget} MB" + (f", --time-budget {args.wide_time:g} s"
                                          if args.wide_time else "") + " ===")
        print(f"method {x['method']}, sparsity {x['sparsity']:.2%}, loss/baseline "
              f"{x['ratio']:.3f}; solve {x['seconds']:.1f} s (predicted {x['predicted']:.1f} s);"
              f" wall {res['wall']:.1f} s; peak RSS {res['peak_rss_mb']:.0f} MB; Hessians "
              f"{res['plan']['hessian_bytes'] / 2**20:.0f} MB; stages {res['seconds']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
