"""W8A8 weights compared without the luck of one activation calibration (onnxruntime target).

    python bench/w8a8_draws.py [--model common_det] [--draws 6] [--methods minmax,mse]
                               [--out bench/results/w8a8_draws.json]

On the ddddocr detector the whole-output error of a W8A8 model is dominated by the
activation quantization and reacts chaotically to tiny changes (1% of the int8 weight codes
rounded the other way moves it from 0.33 to 0.68; docs/deployment.md), so one conversion's
figure says little about the weights. This script converts once with our default (8-bit fast
path, `--runtime onnxruntime`) and once with onnxruntime's `quantize_static` (bench/deploy.py's
settings), then, for each of `--draws` random halves of the calibration samples, re-sets every
activation Q/DQ range of our graph to that half's min-max (int32 biases re-coded) and runs it
with our weights and with quantize_static's int8 weights (same codes and scales put into our
graph): a paired comparison, the same activation ranges for both weight sets. Prints per draw
and mean ± std of the output error, fg error and box F1 (detector) / task metric, the number
of draws each side wins (with the first of --methods), `--methods minmax,mse`: each draw's
ranges also by another `--act-calibration` method (onnx_obc.actrange) from the same half,
and the weights-only error of both files (their dequantized weights in the dense model,
float activations: bench/deploy.py's `weights-only error`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper as nh

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import deploy  # noqa: E402
from onnx_obc import convert  # noqa: E402
from onnx_obc.actrange import RangeObserver  # noqa: E402

LAYER_OPS = ("Conv", "Gemm", "MatMul")


def _graph(m: onnx.ModelProto) -> tuple[dict, dict]:
    return ({t.name: t for t in m.graph.initializer}, {o: n for n in m.graph.node for o in n.output})


def put_weights(ours: onnx.ModelProto, theirs: onnx.ModelProto) -> onnx.ModelProto:
    """`ours` with `theirs`' int8 weight codes and scales on every same-named layer whose
    weight is a constant DequantizeLinear in both (the int32 bias re-coded to the new
    x_scale * w_scale)."""
    m = onnx.ModelProto.FromString(ours.SerializeToString())
    init, prod = _graph(m)
    tinit, tprod = _graph(theirs)
    tnodes = {n.name: n for n in theirs.graph.node if n.op_type in LAYER_OPS}
    for n in m.graph.node:
        t = tnodes.get(n.name)
        if t is None or len(n.input) < 2:
            continue
        dq, tdq = prod.get(n.input[1]), tprod.get(t.input[1])
        if not (dq and tdq and dq.op_type == tdq.op_type == "DequantizeLinear"
                and dq.input[0] in init and tdq.input[0] in tinit):
            continue
        for i in (0, 1):
            init[dq.input[i]].CopyFrom(nh.from_array(nh.to_array(tinit[tdq.input[i]]),
                                                     dq.input[i]))
        _recode_bias(n, init, prod)
    return m


def _recode_bias(n: onnx.NodeProto, init: dict, prod: dict) -> None:
    bdq = prod.get(n.input[2]) if len(n.input) > 2 else None
    if bdq is None or bdq.op_type != "DequantizeLinear" or bdq.input[0] not in init:
        return
    xdq, wdq = prod[n.input[0]], prod[n.input[1]]
    b = nh.to_array(init[bdq.input[0]]).astype(np.float64) * nh.to_array(init[bdq.input[1]])
    bs = (float(nh.to_array(init[xdq.input[1]])) * nh.to_array(init[wdq.input[1]])
          ).astype(np.float32)
    init[bdq.input[0]].CopyFrom(nh.from_array(np.round(b / bs).astype(np.int32), bdq.input[0]))
    init[bdq.input[1]].CopyFrom(nh.from_array(bs, bdq.input[1]))


def quantized_tensors(q: onnx.ModelProto, dense: onnx.ModelProto) -> list[str]:
    """The dense model's tensors that `q` quantizes with a uint8 QuantizeLinear."""
    names = {o for n in dense.graph.node for o in n.output}
    init, _ = _graph(q)
    return list(dict.fromkeys(n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"
                              and n.input[0] in names and len(n.input) > 2
                              and nh.to_array(init[n.input[2]]).dtype == np.uint8))


def ranges(dense_path: str, names: list[str], feeds: list[dict], method: str = "minmax"
           ) -> dict[str, tuple]:
    """(lo, hi) per tensor over `feeds`, the range always containing 0: the min-max, or
    another `--act-calibration` method's range (onnx_obc.actrange) from the same tensors."""
    m = onnx.load(dense_path)
    for nm in names:
        m.graph.output.append(onnx.helper.make_tensor_value_info(nm, onnx.TensorProto.FLOAT,
                                                                 None))
    s = deploy._session(m.SerializeToString())
    obs = {nm: RangeObserver(histogram=method != "minmax") for nm in names}
    for f in feeds:
        for nm, a in zip(names, s.run(names, f)):
            obs[nm].add(a)
    return {nm: o.bounds(method) for nm, o in obs.items()}


def with_ranges(q: onnx.ModelProto, r: dict[str, tuple]) -> onnx.ModelProto:
    """`q` with every uint8 QuantizeLinear of a tensor in `r` (and its shared scale / zero
    point initializers, so the DequantizeLinear too) set to that range; biases re-coded."""
    m = onnx.ModelProto.FromString(q.SerializeToString())
    init, prod = _graph(m)
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in r:
            lo, hi = r[n.input[0]]
            s = max(hi - lo, 1e-12) / 255
            z = int(np.clip(np.round(-lo / s), 0, 255))
            init[n.input[1]].CopyFrom(nh.from_array(np.array(s, np.float32), n.input[1]))
            init[n.input[2]].CopyFrom(nh.from_array(np.array(z, np.uint8), n.input[2]))
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[0] in prod \
                and prod[n.input[0]].op_type == "DequantizeLinear":
            _recode_bias(n, init, prod)
    return m


def _key(weights: str, method: str, methods: list[str]) -> str:
    return weights if methods == ["minmax"] else f"{weights}, {method} ranges"


def scores(name: str, ys: list, dense: list, ev: dict) -> dict:
    out = {"error": deploy._rel(ys, dense), "task": deploy.task_metric(name, ys, dense, ev)}
    if name == "common_det":
        out["fg_error"] = deploy.fg_error(ys, dense)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="common_det", choices=list(deploy.MODELS))
    ap.add_argument("--draws", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench/results/w8a8_draws.json"))
    ap.add_argument("--methods", default="minmax",
                    help="activation range methods per draw (minmax,mse: both, paired)")
    a = ap.parse_args()
    mpath, cpath, epath = (str(ROOT / p) for p in deploy.MODELS[a.model][:3])
    model, calib = onnx.load(mpath), dict(np.load(cpath))
    ev = dict(np.load(epath, allow_pickle=False))
    n_eval = len(next(v for k, v in ev.items() if k not in ("labels", "texts")))
    feeds = deploy._batches(model, ev, n_eval)
    dense = deploy.outputs(mpath, feeds)
    n_cal = len(next(iter(calib.values())))
    with tempfile.TemporaryDirectory(prefix="draws-") as tmp:
        ours_p, qs_p = f"{tmp}/ours.onnx", f"{tmp}/qs.onnx"
        convert(mpath, ours_p, calib=cpath, bits=8, act_bits=8, runtime="onnxruntime",
                holdout=0.0, compare_baseline=False, progress=False)
        deploy.quantize_static(mpath, qs_p, calib, model)
        ours, qs = onnx.load(ours_p), onnx.load(qs_p)
        w_only = {k: deploy._rel(deploy.outputs(deploy.weights_only(p, mpath,
                  f"{tmp}/{k}.w.onnx"), feeds), dense) for k, p in (("ours", ours_p),
                                                                     ("quantize_static", qs_p))}
    sets = {"ours": ours, "quantize_static weights": put_weights(ours, qs)}
    names = quantized_tensors(ours, model)
    rng = np.random.default_rng(a.seed)
    methods = a.methods.split(",")
    rows = []
    for k in range(a.draws):
        idx = np.sort(rng.choice(n_cal, n_cal // 2, replace=False))
        half = {key: v[idx] for key, v in calib.items()}
        for method in methods:
            r = ranges(mpath, names, deploy._batches(model, half, len(idx)), method)
            for key, q in sets.items():
                ys = deploy.outputs(with_ranges(q, r).SerializeToString(), feeds)
                rows.append({"draw": k, "weights": _key(key, method, methods),
                             **scores(a.model, ys, dense, ev)})
                print(json.dumps(rows[-1]), flush=True)
    summary = {}
    keys = list(dict.fromkeys(x["weights"] for x in rows))
    for key in keys:
        mine = [x for x in rows if x["weights"] == key]
        summary[key] = {f: (float(np.mean([x[f] for x in mine])), float(np.std([x[f] for x in mine])))
                        for f in mine[0] if f not in ("draw", "weights") and mine[0][f] is not None}
    a_, b_ = ([x for x in rows if x["weights"] == _key(k, methods[0], methods)] for k in sets)
    wins = {"error": sum(x["error"] < y["error"] for x, y in zip(a_, b_))}
    if a_[0].get("fg_error") is not None:
        wins["fg_error"] = sum(x["fg_error"] < y["fg_error"] for x, y in zip(a_, b_))
    if a_[0]["task"] is not None:
        wins["task"] = sum(x["task"] > y["task"] for x, y in zip(a_, b_))
    for m in methods[1:]:  # ours with each other method's ranges vs the first's
        c_, d_ = ([x for x in rows if x["weights"] == _key("ours", k, methods)]
                  for k in (m, methods[0]))
        wins[f"{m} vs {methods[0]} (ours)"] = {
            f: sum((x[f] > y[f]) if f == "task" else (x[f] < y[f]) for x, y in zip(c_, d_))
            for f in ("error", "fg_error", "task") if c_[0].get(f) is not None}
    res = {"model": a.model, "draws": a.draws, "weights_only_error": w_only, "mean_std": summary,
           "ours_wins_of_draws": wins, "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
