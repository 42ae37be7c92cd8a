"""W8A8 (onnxruntime target) with bias correction and activation-range variants, one solve.

    python bench/w8a8_correct.py [--model common_det] [--variants none,correct,correct-act,...]
                                 [--out bench/results/w8a8_correct_<model>.json]

Solves the layers once with the default 8-bit settings (`--bits 8 --act-bits 8 --runtime
onnxruntime`, holdout 0, as bench/deploy.py), caches the solutions and range observers
(bench/results/), then builds one deployed model per variant from the same weights and
scores it on the eval set like bench/deploy.py (output error, fg error and box F1 on the
detector, text accuracy on common), with onnxruntime's `quantize_static` beside it.

Variants: none (today's default); correct / correct-scale (the float model in the loop);
correct-act / correct-scale-act (the deployed W8A8 model, activation Q/DQ included, in the
loop); pct<p> (activation ranges clipped at the p-th percentile of |x|); mse (per tensor,
the range minimizing the expected squared quantization error on the signed histogram);
and combinations joined by '+', e.g. mse+correct-act.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import deploy  # noqa: E402
from onnx_obc import calib as calibration, export, schedule  # noqa: E402
from onnx_obc import pipeline  # noqa: E402
from onnx_obc.actrange import RangeObserver  # noqa: E402
from onnx_obc.backend import get_backend  # noqa: E402
from onnx_obc.capture import capture, capture_session, providers_for  # noqa: E402
from onnx_obc.config import CompressConfig  # noqa: E402
from onnx_obc.correct import correct_outputs  # noqa: E402
from onnx_obc.layers import select_layers  # noqa: E402


def solve(mpath: str, cpath: str, cache: Path):
    cfg = CompressConfig.from_options(bits=8, act_bits=8, runtime="onnxruntime", holdout=0.0,
                                      compare_baseline=False)
    proto = onnx.load(mpath)
    layers, _ = select_layers(proto, cfg.select)
    backend = get_backend(cfg.run.device)
    data = calibration.plan(proto, cpath, None, cfg.run)
    runtime = providers_for(backend.name)
    if cache.is_file():
        done, obs = pickle.loads(cache.read_bytes())
    else:
        cfg2, plan, _ = pipeline._plan(layers, cfg, backend, False, {})
        grabbed: dict = {}
        orig = schedule.collect

        def spy(*a, **k):
            k["histogram"] = True
            h, o = orig(*a, **k)
            grabbed.update(o)
            return h, o
        schedule.collect = spy
        t = time.perf_counter()
        done = schedule.compress_layers(proto, layers, data, backend, cfg2, runtime, False,
                                        None, plan)
        schedule.collect = orig
        print(f"solved in {time.perf_counter() - t:.0f} s", flush=True)
        obs = grabbed
        cache.write_bytes(pickle.dumps((done, obs)))
    return cfg, proto, layers, data, runtime, done, obs


def recapture(proto: onnx.ModelProto, names: list[str], data, runtime) -> dict:
    """Fresh observers (with histograms) of `names` over the calibration samples."""
    inputs = {i.name for i in proto.graph.input}
    obs = {n: RangeObserver() for n in names}
    inner = [n for n in names if n not in inputs]
    sess = capture_session(proto, inner, runtime)
    for _, acts in capture(sess, inner, data.fit.batches(data.batch)):
        for n, o in obs.items():
            o.add(acts[n])
    return obs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="common_det", choices=list(deploy.MODELS))
    ap.add_argument("--variants", default="none,correct,correct-act")
    ap.add_argument("--out", default=None)
    ap.add_argument("--recapture", action="store_true",
                    help="range observers captured again on the dense model (the current "
                         "onnx_obc.actrange), the cached solve's weights kept")
    ap.add_argument("--correct-samples", type=int, default=None,
                    help="the corrections measured on the first N calibration samples only")
    a = ap.parse_args()
    mpath, cpath, epath = (str(ROOT / p) for p in deploy.MODELS[a.model][:3])
    res_dir = ROOT / "bench/results"
    res_dir.mkdir(parents=True, exist_ok=True)
    cfg, proto, layers, data, runtime, done, obs = solve(
        mpath, cpath, res_dir / f"w8a8_correct_{a.model}.pkl")
    if a.recapture:
        obs = recapture(proto, list(obs), data, runtime)
    model = onnx.load(mpath)
    ev = dict(np.load(epath, allow_pickle=False))
    n_eval = len(next(v for k, v in ev.items() if k not in ("labels", "texts")))
    feeds = deploy._batches(model, ev, n_eval)
    dense = deploy.outputs(mpath, feeds)
    rows = []

    def score(key: str, ys: list, extra: dict) -> None:
        r = {"variant": key, "error": deploy._rel(ys, dense),
             "task": deploy.task_metric(a.model, ys, dense, ev),
             "fg_error": deploy.fg_error(ys, dense) if a.model == "common_det" else None,
             **extra}
        rows.append(r)
        print(json.dumps(r), flush=True)

    qs = res_dir / f"w8a8_correct_{a.model}.qs.onnx"
    if not qs.is_file():
        deploy.quantize_static(mpath, str(qs), dict(np.load(cpath)), model)
    score("quantize_static", deploy.outputs(str(qs), feeds), {})
    solved = [L for L in layers if L.weight in done.solutions]
    topts = cfg.export.target_options()
    for v in a.variants.split(","):
        parts = set(v.split("+"))
        values = export.act_values(obs, "onnxruntime", "minmax")
        for p in parts:
            if p.startswith("pct"):
                values = export.act_values(obs, "onnxruntime", "percentile", float(p[3:]))
            elif p == "mse":
                values = export.act_values(obs, "onnxruntime", "mse")
        fixes, t = None, time.perf_counter()
        c = [p for p in parts if p.startswith("correct")]
        if c:
            act = c[0].endswith("-act")
            fit = data.fit if a.correct_samples is None else data.fit.head(a.correct_samples)
            fixes = correct_outputs(proto, solved, done.solutions, fit, data.batch,
                                    runtime, scale=c[0].startswith("correct-scale"),
                                    act_values=values if act else None, target="onnxruntime",
                                    target_options=topts).fixes
        secs = time.perf_counter() - t
        m = export.build(proto, layers, done.solutions, corrections=fixes, act_scales=values,
                         target="onnxruntime", target_options=topts)
        score(v, deploy.outputs(m.SerializeToString(), feeds),
              {"correct_s": secs, "correct_samples": a.correct_samples if c else None})
    out = Path(a.out or res_dir / f"w8a8_correct_{a.model}.json")
    old = json.loads(out.read_text())["rows"] if out.is_file() else []
    keep = {r["variant"] for r in rows}
    rows = [r for r in old if r["variant"] not in keep] + rows
    out.write_text(json.dumps({"model": a.model, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
