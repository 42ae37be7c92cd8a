"""Which activation quantization points of a W8A8 QDQ model cost its accuracy.

    python bench/ort_sensitivity.py --model ppocr_rec --qdq bench/results/rec_w8a8.onnx
                                    [--eval FILE.npz] [--n 200] [--modes only,drop]
                                    [--out bench/results/sensitivity.jsonl]

The activation QuantizeLinear -> DequantizeLinear pairs of the file (those of a tensor that is
not a constant: weights and biases stay quantized) are grouped by the op that produces the
tensor and the ops that read it (e.g. "Mul->Div": hardswish's x * relu6(x + 3) before its
/ 6); groups of fewer than --min-group tensors are merged into "other". Per group, the file
is evaluated with only that group's pairs kept ("only": the group's own cost on top of the
int8 weights) and with that group's pairs removed ("drop": what floating it back wins), plus
"all" (the file) and "none" (every activation pair removed = weights alone). Metrics: output
error (mean over samples of ||y - y_dense|| / ||y_dense||), top-1 agreement per frame, the
task metric (bench/deploy.py's task_metric), and for CTC recognizers the mean per-frame error
on the frames the dense model calls blank and on the others (text). onnxruntime CPU, ORT_ENABLE_ALL,
one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import deploy as D  # noqa: E402


def act_points(m: onnx.ModelProto) -> dict[str, dict]:
    """tensor -> its QuantizeLinear, DequantizeLinear nodes, producer op and reader ops."""
    consts = {t.name for t in m.graph.initializer}
    consts |= {o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
    prod = {o: n for n in m.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in m.graph.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    pts = {}
    for n in m.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in consts:
            continue
        t = n.input[0]
        dqs = [r for r in readers.get(n.output[0], []) if r.op_type == "DequantizeLinear"]
        cons = sorted({c.op_type for d in dqs for c in readers.get(d.output[0], [])})
        p = prod.get(t)
        pts[t] = {"q": n, "dqs": dqs, "key": f"{p.op_type if p else 'input'}->"
                  f"{'/'.join(cons)}"}
    return pts


def groups(pts: dict[str, dict], min_group: int) -> dict[str, list[str]]:
    g: dict[str, list[str]] = {}
    for t, p in pts.items():
        g.setdefault(p["key"], []).append(t)
    out = {k: v for k, v in g.items() if len(v) >= min_group}
    other = [t for k, v in g.items() if len(v) < min_group for t in v]
    if other:
        out["other"] = other
    return out


def drop(m: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of m without the Q/DQ pairs of `tensors` (their readers read the float)."""
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    pts = act_points(m2)
    kill, rename = set(), {}
    for t in tensors:
        kill.add(pts[t]["q"].name)
        for d in pts[t]["dqs"]:
            kill.add(d.name)
            rename[d.output[0]] = t
    keep = [n for n in m2.graph.node if n.name not in kill]
    for n in keep:
        for j, x in enumerate(n.input):
            if x in rename:
                n.input[j] = rename[x]
    del m2.graph.node[:]
    m2.graph.node.extend(keep)
    return m2


def evaluate(name: str, m: onnx.ModelProto, feeds: list[dict], dense: list[np.ndarray],
             ev: dict) -> dict:
    o = ort.SessionOptions()
    o.log_severity_level = 3
    o.intra_op_num_threads = 1
    s = ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
    ys = [s.run(None, f)[0] for f in feeds]
    err = float(np.mean([np.linalg.norm(y[i] - d[i]) / max(np.linalg.norm(d[i]), 1e-12)
                         for y, d in zip(ys, dense) for i in range(len(y))]))
    y, d = np.concatenate(ys), np.concatenate(dense)
    out = {"error": err, "agree": float(np.mean(y.argmax(-1) == d.argmax(-1))),
           "task": D.task_metric(name, ys, dense, ev)}
    if name in ("ppocr_rec", "common"):  # CTC: error on blank and on text frames
        e = np.linalg.norm(y - d, axis=-1)
        blank = d.argmax(-1) == 0
        out.update(blank_error=float(e[blank].mean()), text_error=float(e[~blank].mean()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, choices=list(D.MODELS))
    ap.add_argument("--qdq", required=True, help="the W8A8 QDQ file to take apart")
    ap.add_argument("--eval", default=None, help="eval .npz (default: the model's)")
    ap.add_argument("--n", type=int, default=200, help="eval samples")
    ap.add_argument("--modes", default="only,drop")
    ap.add_argument("--min-group", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench/results/sensitivity.jsonl"))
    args = ap.parse_args()
    mpath, _, epath = (str(ROOT / p) for p in D.MODELS[args.model][:3])
    ev = dict(np.load(args.eval or epath, allow_pickle=False))
    ev = {k: v[:args.n] for k, v in ev.items()}
    model, q = onnx.load(mpath), onnx.load(args.qdq)
    feeds = D._batches(model, ev, args.n)
    dense = D.outputs(mpath, feeds)
    pts = act_points(q)
    g = groups(pts, args.min_group)
    every = list(pts)
    jobs = [("all", []), ("none", every)]
    modes = args.modes.split(",")
    jobs += [(f"only {k}", [t for t in every if t not in set(v)]) for k, v in g.items()
             if "only" in modes]
    jobs += [(f"drop {k}", v) for k, v in g.items() if "drop" in modes]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for run, dropped in jobs:
            t = time.perf_counter()
            r = evaluate(args.model, drop(q, dropped), feeds, dense, ev)
            r.update(run=run, qdq=args.qdq, n=args.n, points=len(every) - len(dropped),
                     seconds=time.perf_counter() - t)
            print(json.dumps(r), flush=True)
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
