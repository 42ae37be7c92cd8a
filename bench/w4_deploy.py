"""W4 (and weights-only W8) files on onnxruntime CPU: the codes no integer kernel takes
dequantized once at load (export/ortweights.py) against the same codes behind
DequantizeLinear, dequantized at every run (the file before that change), and fp32.

    python bench/w4_deploy.py [--models ppocr_rec,lcnet_orient,ppocr_det,yolov8n]
                              [--bits 4] [--runs 20] [--out bench/results/w4_deploy.json]

Per model, one conversion (`onnx-obc IN OUT --calib C --bits B --runtime onnxruntime`, the
default method and sequential choice, --holdout 0); its file as written ("folded"), and the
same file with every folded weight put back behind a DequantizeLinear of the same codes,
scale and zero point ("DequantizeLinear": what the onnxruntime target wrote before; the
outputs agree to float rounding). Columns as bench/deploy.py's (whose helpers it uses):
file size, latency medians over --runs alternating rounds of back-to-back runs (1 thread,
and all threads), ratios to fp32 in the same run; output error and task metric on the eval
set; the optimized graph's Conv / DequantizeLinear / MatMulNBits counts. At 4 bits also
onnxruntime's own weight-only quantizer, `MatMulNBitsQuantizer` (RTN on its defaults, and
at accuracy_level 4; `pip install onnx-ir`), in the same alternation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from deploy import (MODELS, _batches, _rel, latency, optimized_ops,  # noqa: E402
                    outputs, task_metric)

from onnx_obc import convert  # noqa: E402
from onnx_obc.export import ortweights  # noqa: E402


def unfold(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each folded weight (ortweights.fold, per-axis) behind DequantizeLinear of
    its codes again: Cast, Sub and Mul give way to one DequantizeLinear(axis)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    drop: set[str] = set()
    nodes = []
    folded = ortweights.folded(m)
    for n in m.graph.node:
        w = n.name.rsplit("_Fold", 1)[0]
        if w not in folded or "_Fold" not in n.name:
            nodes.append(n)
            continue
        drop.add(n.name)
        if n.name != f"{w}_FoldMul":
            continue
        scale = numpy_helper.to_array(inits[f"{w}_fold_scale"])
        axis = int(np.argmax(np.array(scale.shape) > 1)) if scale.size > 1 else 0
        codes = folded[w][0]
        zname = f"{w}_fold_zero"
        zero = (numpy_helper.to_array(inits[zname]).reshape(-1) if zname in inits
                else np.zeros(scale.size))
        ctype = inits[codes].data_type
        m.graph.initializer.extend([
            numpy_helper.from_array(scale.reshape(-1), f"{w}_dq_scale"),
            helper.make_tensor(f"{w}_dq_zero", ctype, [scale.size],
                               zero.astype(np.int64).tolist())])
        nodes.append(helper.make_node("DequantizeLinear", [codes, f"{w}_dq_scale",
                                                           f"{w}_dq_zero"], [w], axis=axis,
                                      name=f"{w}_DequantizeLinear"))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    keep = [t for t in m.graph.initializer if not t.name.startswith(tuple(
        f"{w}_fold_" for w in folded))]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    onnx.checker.check_model(m)
    return m


ORT_NBITS = ("MatMulNBitsQuantizer", "MatMulNBitsQuantizer acc4")


def ort_nbits(mpath: str, work: Path) -> dict[str, str]:
    """onnxruntime's MatMulNBitsQuantizer on the fp32 model (RTN, its defaults: block 128,
    asymmetric; and the same at accuracy_level 4); {} where it cannot run (it needs the
    `onnx-ir` package)."""
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:
        print(f"  MatMulNBitsQuantizer skipped: {exc}")
        return {}
    out = {}
    for key, level in zip(ORT_NBITS, (None, 4)):
        try:
            q = MatMulNBitsQuantizer(onnx.load(mpath), accuracy_level=level)
            q.process()
            out[key] = str(work / f"{key.replace(' ', '_')}.onnx")
            q.model.save_model_to_file(out[key], use_external_data_format=False)
        except Exception as exc:  # noqa: BLE001 - its errors have no common base class
            print(f"  {key} failed: {str(exc).splitlines()[0][:200]}")
    return out


def run_model(name: str, bits: int, runs: int, work: Path) -> list[dict]:
    mpath, cpath, epath = (str(ROOT / p) for p in MODELS[name][:3])
    model = onnx.load(mpath)
    ev = dict(np.load(epath, allow_pickle=False))
    n_eval = len(next(iter(v for k, v in ev.items() if k not in ("labels", "texts"))))
    feeds = _batches(model, ev, n_eval)
    out = str(work / f"{name}.w{bits}.onnx")
    t = time.perf_counter()
    r = convert(mpath, out, calib=cpath, bits=bits, runtime="onnxruntime", holdout=0.0,
                progress=False)
    seconds = time.perf_counter() - t
    dq = str(work / f"{name}.w{bits}.dq.onnx")
    onnx.save(unfold(onnx.load(out)), dq)
    paths = {"fp32": mpath, "folded": out, "DequantizeLinear": dq}
    if bits == 4:  # onnxruntime's own 4-bit weight quantizer (RTN), as a user runs it
        paths.update(ort_nbits(mpath, work))
    dense = outputs(mpath, feeds)
    lat_feed = {k: v[:1] for k, v in feeds[0].items()}
    lat1, _ = latency(paths, lat_feed, runs, 1)
    latn, _ = latency(paths, lat_feed, runs, 0)
    rows = []
    for key, p in paths.items():
        ys = dense if key == "fp32" else outputs(p, feeds)
        ops = optimized_ops(p)
        rows.append({"model": name, "format": key if key in ("fp32", *ORT_NBITS)
                     else f"W{bits} {key}",
                     "size_mb": os.path.getsize(p) / 1e6, "ms_1t": lat1[key],
                     "ratio_1t": lat1[key] / lat1["fp32"], "ms_all": latn[key],
                     "ratio_all": latn[key] / latn["fp32"], "error": _rel(ys, dense),
                     "task": task_metric(name, ys, dense, ev, p, mpath, feeds),
                     "folded": len(ortweights.folded(onnx.load(p))) if key == "folded" else 0,
                     "ops": {k: ops.get(k, 0) for k in ("Conv", "FusedConv",
                                                        "DequantizeLinear", "MatMulNBits")},
                     "seconds": seconds if key == "folded" else None,
                     "integer": r.report.fusion.get("integer") if key == "folded" else None,
                     "notes": list(r.report.notes) if key == "folded" else None})
        print(f"  {name} {rows[-1]['format']}: {rows[-1]['ratio_1t']:.3f}x fp32", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="ppocr_rec,lcnet_orient,ppocr_det,yolov8n")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "bench/results/w4_deploy.json"))
    args = ap.parse_args()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="w4deploy-") as tmp:
        for name in args.models.split(","):
            if not (ROOT / MODELS[name][0]).is_file():
                print(f"skipping {name}: {MODELS[name][0]} is missing")
                continue
            rows += run_model(name, args.bits, args.runs, Path(tmp))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"bits": args.bits, "rows": rows}, indent=2))
    print("| model | format | size MB | × fp32 1 thread | all threads | output error | task "
          "| optimized graph: Conv / DQ / MatMulNBits |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        o = r["ops"]
        task = "" if r["task"] is None else f"{100 * r['task']:.2f}"
        print(f"| {r['model']} | {r['format']} | {r['size_mb']:.2f} | {r['ratio_1t']:.3f} "
              f"| {r['ratio_all']:.3f} | {r['error']:.4f} | {task} | {o['Conv'] + o['FusedConv']}"
              f" / {o['DequantizeLinear']} / {o['MatMulNBits']} |")


if __name__ == "__main__":
    main()
