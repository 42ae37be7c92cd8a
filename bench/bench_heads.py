"""Whole-head pruning (channels/heads.py) inside the channel-pruning stage: at each FLOP
cut (layer + attention MatMul multiply-adds), the DP-selected OBS cut against the L2-norm
baseline at the same counts (a head's V-projection rows), output error relative to dense
on held-out inputs, and the heads each attention layer loses; with the head sites and
without them (the same traces) and the head sites alone where the model has any (prints
a table; asserts nothing).

    python bench/bench_heads.py [--models bert_small ocr_like ppocr_rec] [--fractions 0.3]
                                [--transformer]

bert_small: bench/large_builders.bert_base at layers 4, hidden 256, 8 heads, FFN 1024,
sequence 64, vocabulary 2000 (random weights; random token ids, calibration and held-out
from different seeds). ocr_like: bench/synthetic/ocr_like.onnx (bench/make_synthetic.py),
single-head attention (value channels only, no head to remove), held-out images from
make_synthetic.smooth_images with another seed. ppocr_rec: bench/real/ppocr_rec.onnx (PP-OCRv4
recognizer, paddle2onnx, weights as Constant nodes; its SVTR neck has two transformer
blocks of 8 heads of 15 with a fused QKV projection), calibration lines from
ppocr_rec.calib.npz, held-out from ppocr_rec.eval.npz; its metric is the text accuracy of
the CTC decode (bench/real_matrix.metrics), printed for OBS / L2 (dense first).
--transformer: only the sites whose producer and consumer are MatMul/Gemm layers (heads
and MLPs), the FLOP cut a fraction of those layers' and the attention MatMuls' FLOPs (for
a CNN with a small transformer neck, where the whole model's cut would never reach them).
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


def _ppocr(a: argparse.Namespace) -> tuple[onnx.ModelProto, dict, dict, int]:
    folder = ROOT / "bench" / "real"
    model = onnx.load(folder / "ppocr_rec.onnx")
    calib = {k: v[:a.samples] for k, v in np.load(folder / "ppocr_rec.calib.npz").items()}
    ev = np.load(folder / "ppocr_rec.eval.npz")
    return model, calib, {"x": ev["x"][:a.eval]}, 16


def _texts(name: str, a: argparse.Namespace) -> list[str] | None:
    if name != "ppocr_rec":
        return None
    ev = np.load(ROOT / "bench" / "real" / "ppocr_rec.eval.npz")
    return [str(t) for t in ev["texts"][:a.eval]]


MODELS = {"bert_small": _bert, "ocr_like": _ocr, "ppocr_rec": _ppocr}


def _metric(name: str, y: np.ndarray, shape: tuple, texts: list[str] | None) -> str:
    """Text accuracy (%) of the CTC decode, case-folded, as bench/real_matrix.py."""
    if texts is None:
        return "-"
    import json

    import real_ppocr

    cs = json.loads((ROOT / "bench" / "real" / "ppocr_charset.json").read_text())
    got = real_ppocr.ctc([y.reshape(shape)], cs)
    return f"{100 * np.mean([g.lower() == t.lower() for g, t in zip(got, texts)]):.1f}"


def _transformer(plan):
    """`plan` reduced to its MatMul/Gemm sites, its FLOP total to those layers' and the
    attention MatMuls'."""
    from onnx_obc.channels import layer_macs

    keep = [i for i, s in enumerate(plan.sites)
            if s.producer.op in ("MatMul", "Gemm") and s.consumer.op in ("MatMul", "Gemm")]
    names = {w for i in keep for w in (plan.sites[i].producer.weight,
                                       plan.sites[i].consumer.weight)}
    layers = [L for L in plan.layers if L.weight in names]
    from onnx_obc.channels.probe import probe_sizes

    sizes, _ = probe_sizes(plan.proto, plan.feed, plan.runtime)
    dense = layer_macs(plan.proto, layers, sizes=sizes)
    return replace(plan, layers=layers, dense=dense, sites=[plan.sites[i] for i in keep],
                   solved=[plan.solved[i] for i in keep])


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
    if a.transformer:
        plan = _transformer(plan)
        print(f"  transformer only: {len(plan.sites)} sites, {plan.dense / 1e6:.1f} M MACs",
              flush=True)
    ref = _outputs(model, held)
    texts = _texts(name, a)
    shape = (len(next(iter(held.values()))), -1, 6625) if texts else ()
    print(f"  dense metric {_metric(name, ref, shape, texts)}", flush=True)
    keep = [i for i, s in enumerate(plan.sites) if s.split is None]
    plans = {"heads allowed": plan}
    if heads:  # the same traces without the head sites, and the head sites alone
        plans["no heads"] = replace(plan, sites=[plan.sites[i] for i in keep],
                                    solved=[plan.solved[i] for i in keep])
        only = [i for i, s in enumerate(plan.sites) if s.split is not None]
        if len(only) < len(plan.sites):
            plans["heads only"] = replace(plan, sites=[plan.sites[i] for i in only],
                                          solved=[plan.solved[i] for i in only])
    lines = []
    for f in a.fractions:
        for kind, p in plans.items():
            r = cut_channels(p, f, 1, "dp", "layer")  # the figures in docs/channels.md
            ys = {k: _outputs(m, held) for k, m in (("obs", r.model), ("l2", r.baseline))}
            err = {k: float(np.linalg.norm(y - ref) / np.linalg.norm(ref)) for k, y in ys.items()}
            metric = " / ".join(_metric(name, y, shape, texts) for y in ys.values())
            cut = 1 - r.macs[1] / r.macs[0]
            per = [f"{row.producer.split('.')[0] if name == 'bert_small' else row.producer} "
                   f"{row.removed}/{row.channels}" for row in r.rows if row.unit > 1]
            chans = sum(row.removed for row in r.rows if row.unit == 1)
            total = sum(row.channels for row in r.rows if row.unit == 1)
            obj = sum(row.loss / max(row.energy, 1e-30) for row in r.rows)
            lines.append(f"| {name} | {kind} | {f:.0%} | {cut:.1%} | {obj:.3f} | "
                         f"{err['obs']:.4f} | {err['l2']:.4f} | {err['obs'] / err['l2']:.2f} | "
                         f"{', '.join(per) or '-'} | {chans}/{total} | {metric} |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.3])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--samples", type=int, default=64, help="calibration samples")
    ap.add_argument("--eval", type=int, default=32, help="held-out samples for the error")
    ap.add_argument("--transformer", action="store_true",
                    help="only the MatMul/Gemm sites, the cut a fraction of their FLOPs")
    a = ap.parse_args()
    print("| model | sites | FLOP cut asked | FLOP cut | summed norm. loss | output error OBS | "
          "output error L2 | ratio | heads removed per layer | other channels removed | "
          "metric OBS / L2 |\n|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for name in a.models:
        _model(name, a)


if __name__ == "__main__":
    main()
