"""The fold stage on a deployed W8A8 model: our onnxruntime-target output with and without
the fold, onnxruntime's quantize_static on the input model and on the folded fp32 model (a
user could fold first as well), and both fp32 models.

    python bench/fold_deploy.py --model ppocr_rec [--lines 1000] [--runs 30]
                                [--latency-batch 8] [--work bench/results/fold]

Each W8A8 conversion uses the default settings (`--bits 8 --act-bits 8 --runtime
onnxruntime`, holdout 0, as bench/deploy.py), `--no-fold` for "ours no-fold"; files are cached
in --work (real_paired.py can score them on more lines). Scores each on the model's eval set
(ppocr_rec with --lines N: `real_ppocr.lines(N, seed=22)`): output error against the input
model, top-1 agreement, the task metric; then 1-thread latency, all six alternating (medians
and minima, ratios to the input fp32 model of the same run), and the optimized graph's ops.
Writes bench/results/fold_deploy_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import deploy as D  # noqa: E402
from ort_islands import score  # noqa: E402

from onnx_obc import convert  # noqa: E402
from onnx_obc.fold import fold  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, choices=list(D.MODELS))
    ap.add_argument("--lines", type=int, default=None, help="ppocr_rec: eval on N lines")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--latency-batch", type=int, default=8)
    ap.add_argument("--work", default=str(ROOT / "bench/results/fold"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    mpath, cpath, epath = (str(ROOT / p) for p in D.MODELS[a.model][:3])
    model = onnx.load(mpath)
    folded = work / f"{a.model}.fp32_folded.onnx"
    if not folded.is_file():
        onnx.save(fold(model)[0], str(folded))
    paths = {"fp32": mpath, "fp32 folded": str(folded)}
    for tag, on in (("ours no-fold", False), ("ours", True)):
        out = work / f"{a.model}.{tag.replace(' ', '_')}.onnx"
        if not out.is_file():
            convert(mpath, str(out), calib=cpath, bits=8, act_bits=8, method="obc",
                    runtime="onnxruntime", act_type="u8", holdout=0.0, fold=on,
                    compare_baseline=False, progress=False)
        paths[tag] = str(out)
    calib = dict(np.load(cpath))
    for tag, src in (("quantize_static", mpath), ("quantize_static folded", str(folded))):
        out = work / f"{a.model}.{tag.replace(' ', '_')}.onnx"
        if not out.is_file():
            D.quantize_static(src, str(out), calib, onnx.load(src))
        paths[tag] = str(out)
    res = score(a.model, mpath, epath, paths, a.lines, a.runs, a.latency_batch)
    out = ROOT / f"bench/results/fold_deploy_{a.model}.json"
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
