"""Structured channel pruning (--channels): how the FLOP cut is spread over the sites (the
DP over the greedy OBS traces, the greedy by loss per FLOP, one uniform fraction) and the
L2-norm baseline, at several FLOP cuts (prints a table; asserts nothing).

    python bench/bench_channels.py [--models ocr_like common_det common ppocr_rec ...]
                                   [--fractions 0.2 0.3 0.4] [--align 8] [--rounds 0]

Per model the Hessians and the sites' greedy traces are computed once; per FLOP cut and
allocation: the layer-FLOP cut reached, the summed normalised consumer loss (the DP's
objective), the output error relative to dense (||y - y_dense|| / ||y_dense|| on held-out
inputs), the task metric where the model has one (accuracy, CTC text accuracy, box F1 vs
dense), the file size and the onnxruntime CPU latency ratio to fp32 (1 thread,
ORT_ENABLE_ALL, medians of --rounds runs alternating dense and every variant in one
process; --rounds 0: none, "-"). The L2-norm baseline removes the same number of channels
per site as the DP (same shapes, so its latency is the DP's). Per model it first prints how
many sites were found and the refused layers grouped by reason. Real models from
bench/real (bench/setup_models.py): ppocr_rec / ppocr_det / ppocr_cls (Paddle exports, weights
in Constant nodes) and efficientnet_lite0 take bench/real_matrix.metrics' task metric (text
accuracy of the CTC decode, case-folded; map F1 against dense; label accuracy; top-1
agreement with dense). --sequential adds the DP cut with --sequential (no latency);
--budgets flops latency adds the rows "dp latency" (the DP by the output objective, or the
layer one without it) and "uniform latency" with --channel-budget latency (channels/timing.py:
F of the model's measured latency; the predicted and the stage's own measured saving and the
timing's seconds are printed);
--objectives layer output (default) adds the row "dp output": the DP by each site's measured
output factor (channels/sensitivity.py, --channel-objective output; the seconds it took are
printed); --sites cuts each site the DP uses alone at the DP's count and prints its normalised loss
and the output error and metric it causes (rows "P -> C alone | removed/channels | norm.
loss | output error | metric").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
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
from onnx_obc.channels import timing
from onnx_obc.layers import find_layers

MODELS = {"digits_cnn": ROOT / "models", "digits_vit": ROOT / "models",
          "ocr_like": ROOT / "bench" / "synthetic", "common": ROOT / "bench" / "real",
          "common_det": ROOT / "bench" / "real"}
MODELS.update({k: ROOT / "bench" / "real" for k in ("ppocr_rec", "ppocr_det", "ppocr_cls",
                                                     "efficientnet_lite0", "lcnet_orient")})
REAL = ("ppocr_rec", "ppocr_det", "ppocr_cls", "efficientnet_lite0",
        "lcnet_orient")  # real_matrix.metrics
METHODS = ("uniform", "greedy", "dp")


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
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


def _outputs(model: onnx.ModelProto, feeds: list[dict]) -> list[np.ndarray]:
    s = _session(model)
    return [s.run(None, f)[0] for f in feeds]


def _metric(name: str, ys: list[np.ndarray], dense: list[np.ndarray], ev: dict) -> str:
    import deploy

    if name in REAL:
        import real_matrix

        ev = {k: v[:sum(len(y) for y in ys)] for k, v in ev.items()}
        return f"{100 * real_matrix.metrics(name, ys, dense, ev)['task']:.1f}"
    m = deploy.task_metric(name, ys, dense, ev)
    return "-" if m is None else f"{100 * m:.1f}"


def _model(name: str, a: argparse.Namespace) -> list[str]:
    folder = MODELS[name]
    model = onnx.load(folder / f"{name}.onnx")
    fixed = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    calib = {k: v[:a.samples] for k, v in np.load(folder / f"{name}.calib.npz").items()}
    ev = dict(np.load(folder / f"{name}.eval.npz"))
    inputs = [i.name for i in model.graph.input]
    n = min(a.eval, len(ev[inputs[0]]))
    step = 1 if fixed else 16
    feeds = [{k: ev[k][i:i + step] for k in inputs} for i in range(0, n, step)]
    latfeed = {k: ev[k][:1 if fixed else a.batch] for k in inputs}
    layers = find_layers(model)[0]
    t = time.perf_counter()
    plan = plan_channels(model, layers, DataSet(calib, "calib"), 1 if fixed else 16,
                         get_backend("cpu"), 0.01, 2048, fraction=max(a.fractions))
    print(f"  {name}: {len(plan.sites)} sites, {len(plan.refused)} layers refused, "
          f"traces in {time.perf_counter() - t:.0f} s", flush=True)
    refusals(plan.refused)
    dense = _outputs(model, feeds)
    ref = np.concatenate([y.ravel() for y in dense])
    size0 = len(model.SerializeToString()) / 1e6
    lines = []
    for f in a.fractions:
        res = {m: cut_channels(plan, f, a.align, m, "layer") for m in METHODS}
        if "output" in a.objectives:  # sensitivity.py's factors: measured once per model
            res["dp output"] = cut_channels(plan, f, a.align, "dp", "output")
            print(f"  output factors in {plan.factor_seconds:.1f} s: " + ", ".join(
                f"{s.site.producer.name}->{s.site.consumer.name} " + "/".join(
                    f"{g:.3g}@{k:.0f}" for k, g in zip(*p)) for s, p in zip(plan.solved, plan.probes)),
                flush=True)
        if "latency" in a.budgets:  # --channel-budget latency: F of the model's latency
            for m, obj in (("dp", "output" if "output" in a.objectives else "layer"),
                           ("uniform", "layer")):
                r = res[f"{m} latency"] = cut_channels(plan, f, a.align, m, obj, "latency")
                t = r.latency
                print(f"  {m} latency: model {t['model_ms']:.2f} ms (batch "
                      f"{min(timing.BATCH, plan.batch)}), "
                      f"predicted saving {t['predicted_saved_ms'] / t['model_ms']:.1%}, "
                      f"measured {1 - t['measured_cut_ms'] / t['measured_dense_ms']:.1%} "
                      f"({t['measured_dense_ms']:.2f} -> {t['measured_cut_ms']:.2f} ms); table "
                      f"in {t['timing_seconds']:.1f} s; warnings: {r.warnings}", flush=True)
            tab = plan.latency  # the most the sites can save: each at its largest count
            most = [len(c) - 1 for c in tab.curves]
            print(f"  latency bound: every site at its largest count saves a predicted "
                  f"{timing.predicted(tab, most, plan.sites) / tab.model:.1%} of the model",
                  flush=True)
            print("  timed (counts: saved ms): " + ", ".join(
                f"{s.site.producer.name}->{s.site.consumer.name} " + "/".join(
                    f"{k}:{1e3 * v:.1f}" for k, v in zip(*p))
                for s, p in zip(plan.solved, plan.latency.points)), flush=True)
        variants = {m: r.model for m, r in res.items()}
        variants["l2"] = res["dp"].baseline
        lat = _latency({"dense": model, **{m: r.model for m, r in res.items()}}, latfeed,
                       a.rounds) if a.rounds else {}
        if lat:
            lat["l2"] = lat["dp"]
        if a.sequential:
            from onnx_obc.channels import prune_channels_sequential

            seq = prune_channels_sequential(model, layers, DataSet(calib, "calib"),
                                            1 if fixed else 16, get_backend("cpu"), f, 0.01,
                                            2048, align=a.align, objective="layer")
            variants["dp --sequential"], res["dp --sequential"] = seq.model, seq
        for k, m in variants.items():
            ys = _outputs(m, feeds)
            err = np.linalg.norm(np.concatenate([y.ravel() for y in ys]) - ref) / \
                np.linalg.norm(ref)
            r = res["dp" if k == "l2" else k]
            cut = 1 - r.macs[1] / r.macs[0]
            speed = f"{lat['dense'] / lat[k]:.2f}x" if k in lat else "-"
            obj = sum((row.norm_loss if k == "l2" else row.loss) / max(row.energy, 1e-30)
                      for row in r.rows)
            lines.append(f"| {name} | {f:.0%} | {k} | {cut:.1%} | {obj:.3f} | {err:.4f} | "
                         f"{_metric(name, ys, dense, ev)} | {size0:.2f} -> "
                         f"{len(m.SerializeToString()) / 1e6:.2f} | "
                         f"{speed} |")
            print(lines[-1], flush=True)
        if a.sites:
            lines += _alone(name, plan, res["dp"], feeds, ref, dense, ev, f)
    return lines


def _alone(name: str, plan, dp, feeds: list[dict], ref: np.ndarray, dense: list, ev: dict,
           f: float) -> list[str]:
    """Each site the DP cuts, cut alone at the DP's count (OBS): its normalised loss
    against the output error it causes."""
    from onnx_obc.export.shrink import shrink
    from onnx_obc.solvers.channels import obs_update

    out, be = [], plan.backend
    for row, s in zip(dp.rows, plan.solved):
        if not row.removed:
            continue
        removed = s.trace.order[:row.removed]
        W = obs_update(be.to_device(s.W), s.Hinv, s.site.width, removed)
        m = shrink(plan.proto, [s.site], [np.setdiff1d(np.arange(s.site.channels), removed)],
                   {s.site.consumer.weight: s.site.consumer.from_matrix(be.to_host(W)[None])})
        ys = _outputs(m, feeds)
        err = np.linalg.norm(np.concatenate([y.ravel() for y in ys]) - ref) / np.linalg.norm(ref)
        out.append(f"| {name} | {f:.0%} | {row.producer} -> {row.consumer} alone | "
                   f"{row.removed}/{row.channels} | {row.loss / row.energy:.4f} | {err:.4f} | "
                   f"{_metric(name, ys, dense, ev)} |")
        print(out[-1], flush=True)
    return out


def refusals(refused: list) -> None:
    """The refused layers grouped by reason (node names and numbers blanked out)."""
    import collections
    import re

    why = collections.Counter(re.sub(r"'[^']*'|\d+", "#", r.reason) for r in refused)
    for reason, n in why.most_common():
        print(f"    {n:3d} x {reason}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.3, 0.4])
    ap.add_argument("--models", nargs="+", default=["ocr_like", "common_det", "common"])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--samples", type=int, default=128, help="calibration samples")
    ap.add_argument("--eval", type=int, default=48, help="held-out samples for the error")
    ap.add_argument("--batch", type=int, default=8, help="latency batch (1 for fixed-batch)")
    ap.add_argument("--align", type=int, default=8, help="keep multiples of this many channels")
    ap.add_argument("--sequential", action="store_true",
                    help="also the DP with --sequential (prune_channels_sequential)")
    ap.add_argument("--objectives", nargs="+", default=["layer", "output"],
                    choices=["layer", "output"],
                    help="output: also the DP with --channel-objective output ('dp output')")
    ap.add_argument("--budgets", nargs="+", default=["flops"], choices=["flops", "latency"],
                    help="latency: also 'dp latency' and 'uniform latency' (--channel-budget "
                         "latency: F of the model's measured 1-thread latency)")
    ap.add_argument("--sites", action="store_true",
                    help="also each site the DP cuts, alone at its count (loss vs error)")
    a = ap.parse_args()
    print(f"fractions {a.fractions}, align {a.align}, {a.rounds} rounds, 1 thread")
    head = ("| model | FLOP cut asked | selection | FLOP cut | summed norm. loss | output "
            "error | metric | MB | speed-up vs fp32 |\n|---|---|---|---|---|---|---|---|---|")
    print(head, flush=True)
    lines = []
    for name in a.models:
        if not (MODELS[name] / f"{name}.onnx").exists():
            print(f"| {name} | missing |")
            continue
        lines += _model(name, a)
    print("\n" + head + "\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
