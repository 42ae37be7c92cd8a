"""Whole-head pruning (channels/heads.py) inside the channel-pruning stage: at each FLOP
cut (layer + attention MatMul multiply-adds), the DP-selected OBS cut against the L2-norm
baseline at the same counts (a head's V-projection rows), output error relative to dense
on held-out inputs, and the heads each attention layer loses; with the head sites and
without them (the same traces) where the model has any (prints a table; asserts
nothing).

    python bench/bench_heads.py [--models bert_small ocr_like] [--fractions 0.3]

bert_small: bench/large_builders.bert_base at layers 4, hidden 256, 8 heads, FFN 1024,
sequence 64, vocabulary 2000 (random weights; random token ids, calibration and held-out
from different seeds). ocr_like: bench/synthetic/ocr_like.onnx (bench/make_synthetic.py),
single-head attention (value channels only, no head to remove), held-out images from
make_synthetic.smooth_images with another seed.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np
import onnx
import onnxruntime as ort

from onnx_obc.backend import get_backend
from onnx_obc.calib import DataSet
from onnx_obc.channels.stage import cut_channels, plan_channels
from onnx_obc.layers import find_layers


def _bert(a: argparse.Namespace) -> tuple[onnx.ModelProto, dict, dict, int]:
    from large_builders import bert_base

    model, _ = bert_base(layers=4, hidden=256, heads=8, ffn=1024, seq=64, vocab=2000)

    def ids(n: int, seed: int) -> dict:
        r = np.random.default_rng(seed)
        return {"input_ids": r.integers(0, 2000, size=(n, 64)).astype(np.int64)}
    return model, ids(a.samples, 1), ids(a.eval, 2), 16


def _ocr(a: argparse.Namespace) -> tuple[onnx.ModelProto, dict, dict, int]:
    from make_synthetic import smooth_images

    folder = ROOT / "bench" / "synthetic"
    model = onnx.load(folder / "ocr_like.onnx")
    calib = {k: v[:a.samples] for k, v in np.load(folder / "ocr_like.calib.npz").items()}
    return model, calib, {"image": smooth_images(a.eval, 7)}, 8


MODELS = {"bert_small": _bert, "ocr_like": _ocr}


def _outputs(model: onnx.ModelProto, feed: dict, step: int = 8) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    n = len(next(iter(feed.values())))
    return np.concatenate([s.run(None, {k: v[i:i + step] for k, v in feed.items()})[0].ravel()
                           for i in range(0, n, step)])


def _model(name: str, a: argparse.Namespace) -> list[str]:
    model, calib, held, batch = MODELS[name](a)
    layers = find_layers(model)[0]
    t = time.perf_counter()
    plan = plan_channels(model, layers, DataSet(calib, "calib"), batch, get_backend("cpu"),
                         0.01, 2048, fraction=max(a.fractions))
    heads = sum(s.split is not None for s in plan.sites)
    print(f"  {name}: {len(plan.sites)} sites ({heads} of heads), {len(plan.refused)} layers "
          f"refused, traces in {time.perf_counter() - t:.0f} s", flush=True)
    ref = _outputs(model, held)
    keep = [i for i, s in enumerate(plan.sites) if s.split is None]
    plans = {"heads allowed": plan}
    if heads:  # the same traces without the head sites
        plans["no heads"] = replace(plan, sites=[plan.sites[i] for i in keep],
                                    solved=[plan.solved[i] for i in keep])
    lines = []
    for f in a.fractions:
        for kind, p in plans.items():
            r = cut_channels(p, f, 1, "dp")
            err = {k: float(np.linalg.norm(_outputs(m, held) - ref) / np.linalg.norm(ref))
                   for k, m in (("obs", r.model), ("l2", r.baseline))}
            cut = 1 - r.macs[1] / r.macs[0]
            per = [f"{row.producer.split('.')[0]} {row.removed}/{row.channels}"
                   for row in r.rows if row.unit > 1]
            chans = sum(row.removed for row in r.rows if row.unit == 1)
            total = sum(row.channels for row in r.rows if row.unit == 1)
            obj = sum(row.loss / max(row.energy, 1e-30) for row in r.rows)
            lines.append(f"| {name} | {kind} | {f:.0%} | {cut:.1%} | {obj:.3f} | "
                         f"{err['obs']:.4f} | {err['l2']:.4f} | {err['obs'] / err['l2']:.2f} | "
                         f"{', '.join(per) or '-'} | {chans}/{total} |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.3])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--samples", type=int, default=64, help="calibration samples")
    ap.add_argument("--eval", type=int, default=32, help="held-out samples for the error")
    a = ap.parse_args()
    print("| model | sites | FLOP cut asked | FLOP cut | summed norm. loss | output error OBS | "
          "output error L2 | ratio | heads removed per layer | other channels removed |\n"
          "|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for name in a.models:
        _model(name, a)


if __name__ == "__main__":
    main()
