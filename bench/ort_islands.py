"""The onnxruntime target with and without integer "islands" (ortplan.INTEGER_ISLANDS),
paired: one solve, both placements, onnxruntime's quantize_static beside them.

    python bench/ort_islands.py --model ppocr_rec [--lines 1000] [--runs 30]
                                [--latency-batch 8] [--work bench/results/islands]

Converts the model twice with the default W8A8 settings (`--bits 8 --act-bits 8 --runtime
onnxruntime`, holdout 0, as bench/deploy.py): "before" with INTEGER_ISLANDS = True (Add /
Mul nodes connected to no quantized layer on integer kernels too), "after" with the default
(they stay float); the weights and ranges are the same (cached per file in --work). Scores
each on the model's eval set, or for ppocr_rec on `real_ppocr.lines(N, seed=22)` with
--lines N (its first 200 are the eval set): output error (mean per sample of ||y - y_dense||
/ ||y_dense||), per-frame top-1 agreement, the task metric, for CTC recognizers the mean
per-frame error on the frames dense calls blank and on the others; then 1-thread latency,
the four models alternating (medians and minima, ratios to fp32 of the same run). Writes
bench/results/ort_islands_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import deploy as D  # noqa: E402
from ort_sensitivity import evaluate  # noqa: E402

from onnx_obc import convert  # noqa: E402
from onnx_obc.export import ortplan  # noqa: E402


def score(name: str, mpath: str, epath: str, paths: dict[str, str], lines: int | None,
          runs: int, latency_batch: int) -> dict:
    """Each file of `paths` ("fp32" first) on the model's eval set (ppocr_rec with `lines`:
    `real_ppocr.lines(lines, seed=22)`): ort_sensitivity.evaluate's figures, the optimized
    graph's ops and the file's size; then 1-thread latency, all alternating (medians, minima,
    ratios to "fp32" of the same run)."""
    model = onnx.load(mpath)
    if lines:
        import real_ppocr
        x, texts, _ = real_ppocr.lines(lines, seed=22)
        ev = {"x": x, "texts": np.array(texts)}
    else:
        ev = dict(np.load(epath, allow_pickle=False))
    n = len(next(v for k, v in ev.items() if k not in ("labels", "texts")))
    feeds = D._batches(model, ev, n)
    dense = D.outputs(mpath, feeds)
    res: dict = {"n": n, "load": [os.getloadavg()[0]], "files": paths}
    for k, p in paths.items():
        res[k] = evaluate(name, onnx.load(p), feeds, dense, ev)
        res[k]["ops"] = D.optimized_ops(p)
        res[k]["mb"] = os.path.getsize(p) / 1e6
        print(k, {m: v for m, v in res[k].items() if m != "ops"}, flush=True)
    feed = {k: v[:latency_batch] for k, v in feeds[0].items()}
    med, low = D.latency(paths, feed, runs, 1)
    for k in paths:
        res[k].update(ms_1t=med[k], ratio_1t=med[k] / med["fp32"],
                      ratio_min_1t=low[k] / low["fp32"])
        print(f"{k:<24} x fp32 1 thread {med[k] / med['fp32']:.3f} "
              f"(min {low[k] / low['fp32']:.3f})")
    res["load"].append(os.getloadavg()[0])
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, choices=list(D.MODELS))
    ap.add_argument("--lines", type=int, default=None, help="ppocr_rec: eval on N lines")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--latency-batch", type=int, default=8)
    ap.add_argument("--work", default=str(ROOT / "bench/results/islands"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    mpath, cpath, epath = (str(ROOT / p) for p in D.MODELS[a.model][:3])
    paths = {"fp32": mpath}
    for tag, islands in (("before", True), ("after", False)):
        out = work / f"{a.model}.{tag}.onnx"
        if not out.is_file():
            ortplan.INTEGER_ISLANDS = islands
            convert(mpath, str(out), calib=cpath, bits=8, act_bits=8, method="obc",
                    runtime="onnxruntime", act_type="u8", holdout=0.0, fold=False,
                    compare_baseline=False, progress=False)  # the graph as exported
        paths[tag] = str(out)
    ortplan.INTEGER_ISLANDS = False
    model = onnx.load(mpath)
    qs = work / f"{a.model}.quantize_static.onnx"
    if not qs.is_file():
        D.quantize_static(mpath, str(qs), dict(np.load(cpath)), model)
    paths["quantize_static"] = str(qs)
    res = score(a.model, mpath, epath, paths, a.lines, a.runs, a.latency_batch)
    out = ROOT / f"bench/results/ort_islands_{a.model}.json"
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
