"""Structured channel pruning (--channels) on the shipped models and the synthetic one
(prints a table; asserts nothing).

    python bench/bench_channels.py [--fraction 0.3] [--models digits_cnn digits_vit ocr_like]

Per model: the layer-FLOP cut reached, onnxruntime CPU latency (1 thread, ORT_ENABLE_ALL,
median of --rounds alternating runs of dense / OBS / L2-norm on one batch), file size, and
the output error relative to dense (held-out eval inputs) and accuracy of OBS channel
pruning next to the L2-norm baseline at the same channel counts per layer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import onnx
import onnxruntime as ort

from onnx_obc.backend import get_backend
from onnx_obc.calib import DataSet
from onnx_obc.channels import prune_channels
from onnx_obc.layers import find_layers

MODELS = {"digits_cnn": ROOT / "models", "digits_vit": ROOT / "models",
          "ocr_like": ROOT / "bench" / "synthetic"}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def _latency(models: dict[str, onnx.ModelProto], feed: dict, rounds: int) -> dict[str, float]:
    sessions = {k: _session(m) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for s in sessions.values():
        s.run(None, feed)  # warm-up
    for _ in range(rounds):  # alternate, so drifts in the machine's load hit all alike
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feed)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _outputs(model: onnx.ModelProto, data: dict, batch: int = 64) -> np.ndarray:
    s = _session(model)
    n = len(next(iter(data.values())))
    return np.concatenate([s.run(None, {k: v[i:i + batch] for k, v in data.items()})[0]
                           for i in range(0, n, batch)])


def _row(name: str, fraction: float, rounds: int, samples: int, align: int) -> str:
    folder = MODELS[name]
    model = onnx.load(folder / f"{name}.onnx")
    calib = dict(np.load(folder / f"{name}.calib.npz"))
    calib = {k: v[:samples] for k, v in calib.items()}
    ev = dict(np.load(folder / f"{name}.eval.npz"))
    labels = ev.pop("labels", None)
    ev = {k: v[:256] for k, v in ev.items()}
    layers = find_layers(model)[0]
    t = time.perf_counter()
    res = prune_channels(model, layers, DataSet(calib, "calib"), 32, get_backend("cpu"),
                         fraction, 0.01, 2048, align=align)
    wall = time.perf_counter() - t
    feed = {k: v[:32] for k, v in ev.items()}
    lat = _latency({"dense": model, "obs": res.model, "l2": res.baseline}, feed, rounds)
    ref = _outputs(model, ev)
    err, acc = {}, {}
    for k, m in (("obs", res.model), ("l2", res.baseline)):
        y = _outputs(m, ev)
        err[k] = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
        acc[k] = (f"{100 * np.mean(y.argmax(-1) == labels[:len(y)]):.1f}"
                  if labels is not None and y.ndim == 2 else "-")
    dense_acc = (f"{100 * np.mean(ref.argmax(-1) == labels[:len(ref)]):.1f}"
                 if labels is not None and ref.ndim == 2 else "-")
    size = [len(m.SerializeToString()) / 1e6 for m in (model, res.model)]
    cut = 1 - res.macs[1] / res.macs[0]
    removed = sum(r.removed for r in res.rows)
    total = sum(r.channels for r in res.rows)
    return (f"| {name} | {cut:.1%} | {removed}/{total} | {lat['dense']:.2f} | {lat['obs']:.2f} "
            f"({lat['dense'] / lat['obs']:.2f}x) | {size[0]:.2f} -> {size[1]:.2f} | "
            f"{err['obs']:.3f} | {err['l2']:.3f} | {dense_acc} / {acc['obs']} / {acc['l2']} "
            f"| {wall:.1f} s |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--models", nargs="+", default=["digits_cnn", "digits_vit", "ocr_like"])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--samples", type=int, default=128, help="calibration samples")
    ap.add_argument("--align", type=int, default=1, help="keep multiples of this many channels")
    a = ap.parse_args()
    print(f"fraction {a.fraction}, align {a.align}, {a.rounds} rounds, batch 32, 1 thread")
    print("| model | FLOP cut | channels removed | dense ms | OBS ms (speed-up) | MB | "
          "error OBS | error L2 | acc. dense / OBS / L2 | prune wall |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in a.models:
        if not (MODELS[name] / f"{name}.onnx").exists():
            print(f"| {name} | missing (python bench/make_synthetic.py) |")
            continue
        print(_row(name, a.fraction, a.rounds, a.samples, a.align), flush=True)


if __name__ == "__main__":
    main()
