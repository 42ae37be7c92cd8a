"""A float prefix on onnxruntime: the default W8A8 (`--runtime onnxruntime`) against the same
run with every Conv whose output is at stride <= 4 of the input left float (`--exclude` on
each), in one process: onnxruntime CPU latency at 1 thread and batch 1 (the files and fp32
alternating, median of --runs), output error and the task metric on the eval set (as
bench/deploy.py scores them), the calibration error the run reported.

    python bench/float_prefix.py [--models lcnet_orient,picodet_layout,efficientnet_lite0]
                                 [--stride 4] [--runs 20] [--out bench/results/prefix.json]

The prefix: Convs whose output height is at least the input's / stride, found by running
the folded model once on a calibration sample, the stem among them. This measured the idea
before it was built: both rows now run with --int8-highres (the CLI offers these convs as
measured float candidates by default, export/orthires.py;
docs/deployment.md "High-resolution convs"):
faster and closer to dense on the narrow mobile backbones, slower on EfficientNet-Lite0's
wide early convs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
import deploy  # noqa: E402

from onnx_obc import convert  # noqa: E402
from onnx_obc.fold import fold  # noqa: E402
from onnx_obc.layers import select_layers  # noqa: E402


def prefix(model: str, calib: str, stride: int) -> list[str]:
    """Names of the Conv layers whose output is at stride <= `stride` of the input."""
    proto, _ = fold(onnx.load(model))
    convs = [L for L in select_layers(proto)[0] if L.op == "Conv"]
    outs = {n.name: n.output[0] for n in proto.graph.node}
    names = [outs[L.uses[0].node] for L in convs]
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    x = np.load(calib)
    feed = {k: x[k][:1] for k in x.files}
    h0 = next(iter(feed.values())).shape[2]
    got = ort.InferenceSession(m.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(names, feed)
    return [L.name for L, v in zip(convs, got) if v.ndim == 4 and v.shape[2] * stride >= h0]


def run(name: str, stride: int, runs: int, work: Path) -> list[dict]:
    model, calib, evalf = (str(ROOT / p) for p in deploy.MODELS[name][:3])
    excluded = prefix(model, calib, stride)
    paths, info = {"fp32": model}, {}
    for key, exclude in (("W8A8", ()), (f"W8A8, stride <= {stride} float", excluded)):
        out = str(work / f"{name}.{len(exclude)}.onnx")
        r = convert(model, out, calib=calib, bits=8, act_bits=8, runtime="onnxruntime",
                    exclude=tuple(exclude), float_highres=False, progress=False)
        paths[key] = out
        fid = next(iter(r.report.fidelity.values()))["compressed"]
        info[key] = {"calib_error": float(np.mean(list(fid.rel_error.values()))),
                     "float_layers": len(exclude) + sum("kept float" in s.reason
                                                        for s in r.report.skipped)}
    ev = dict(np.load(evalf))
    feeds = deploy._batches(onnx.load(model), ev, len(next(
        v for k, v in ev.items() if k not in ("labels", "texts"))))
    dense = deploy.outputs(model, feeds)
    lat, _ = deploy.latency(paths, {k: v[:1] for k, v in feeds[0].items()}, runs, 1)
    rows = []
    for key, p in paths.items():
        ys = dense if key == "fp32" else deploy.outputs(p, feeds)
        rows.append({"model": name, "format": key, "ratio_1t": lat[key] / lat["fp32"],
                     "error": deploy._rel(ys, dense),
                     "task": deploy.task_metric(name, ys, dense, ev, p, model, feeds),
                     **info.get(key, {})})
        print(f"  {name} {key}: {rows[-1]['ratio_1t']:.3f}x fp32, error "
              f"{rows[-1]['error']:.4f}, task {rows[-1]['task']}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="lcnet_orient,picodet_layout,efficientnet_lite0")
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "bench/results/prefix.json"))
    args = ap.parse_args()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="prefix-") as tmp:
        for name in args.models.split(","):
            print(f"{name} ...", flush=True)
            rows += run(name, args.stride, args.runs, Path(tmp))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"onnxruntime": ort.__version__, "rows": rows},
                                         indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
