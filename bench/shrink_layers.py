"""Data-limited layers of the real bench models, on held-out data: OBQ on the captured H
against OBQ on H shrunk by the level the calibration halves choose (solvers/shrink.py), both
scored under the Hessian of the model's eval set (samples the solve never saw), relative to
RTN's loss there.

    python bench/shrink_layers.py [--models magika,lcnet_orient,ppocr_rec,ppocr_cls]
                                  [--bits 4] [--rows 256] [--eval-file MODEL=PATH]
                                  [--damps 0.01,0.1,0.3,1] [--nm 2:4]

The calibration Hessians come from the run's own capture (collect with folds: every other
batch of 8 samples in one half), so the layers are those a default run shrinks (fewer than
2 columns per input, at most 2,048 inputs); W is the unfolded model's (BatchNormalization
not folded in: the Hessians of the Conv inputs are the same). At most --rows rows per layer.
Prints per layer: shape, rank of H, the level, held-out loss / RTN's without and with it,
in-sample loss / RTN's without and with it, and a summary line per model. `--damps`: also
OBQ's held-out loss / RTN's on the captured H at each of those dampenings (no shrinkage).
`--nm N:M`: N:M pruning instead of quantization (ExactOBS; the levels scored by it, as a run
does; the baseline magnitude N:M)."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

R = "bench/real/"


def _hessians(proto, layers, feeds, folds: bool) -> dict:
    from onnx_obc.backend import get_backend
    from onnx_obc.calib.arrays import DataSet
    from onnx_obc.collect import collect

    accs, _ = collect(proto, layers, DataSet(feeds, "bench"), 8, get_backend("cpu"), 2048,
                      False, folds=folds)
    return accs


def study(model: str, calib: str, evals: str, bits: int, rows: int,
          damps: tuple[float, ...] = (), nm: tuple[int, int] | None = None) -> list[dict]:
    import onnx
    from onnx_obc.layers import constant_weights, find_layers, weight_matrix
    from onnx_obc.quant import QuantSpec
    from onnx_obc.solvers import shrink, solve_layer
    from onnx_obc.solvers.prepare import layer_loss

    proto = onnx.load(model)
    inputs = {i.name for i in proto.graph.input}
    cal, ev = np.load(calib), np.load(evals)
    layers, _ = find_layers(proto)
    fit = _hessians(proto, layers, {k: cal[k] for k in cal.files if k in inputs}, True)
    folded = {L.weight: fit[L.weight].take_folds() for L in layers}
    layers = [L for L in layers if folded[L.weight] is not None]
    test = _hessians(proto, layers, {k: ev[k] for k in ev.files if k in inputs}, False)
    from onnx_obc.solve import structure_for
    from onnx_obc.specs import Pruning

    weights, out = constant_weights(proto.graph), []
    for L in layers:
        st = structure_for(L, Pruning(nm=nm)) if nm else None
        if nm and st is None:
            continue  # its axis does not divide by m: left dense by a run
        kw = dict(structure=st) if nm else dict(quant=QuantSpec(bits=bits))
        W = weight_matrix(weights, L)[:, :rows].astype(np.float32)  # [G, r, d]
        H, Ht = fit[L.weight].mean(), test[L.weight].mean()
        Ha, Hb = folded[L.weight]
        level = shrink.choose(W, Ha, Hb, lambda W_, H_: solve_layer(
            W_, H_, method="obc" if nm else "gptq", **kw).W)[0]
        plain = solve_layer(W, H, **kw)
        shrunk = solve_layer(W, shrink.shrunk(H, level), **kw) if level else plain
        rtn_t, rtn_in = layer_loss(W, plain.baseline, Ht), layer_loss(W, plain.baseline, H)
        rank = min(int(np.linalg.matrix_rank(h)) for h in H)
        out.append({"layer": L.name, "shape": W.shape, "rank": rank, "level": level,
                    "held_out": [layer_loss(W, s.W, Ht) / rtn_t for s in (plain, shrunk)],
                    "in_sample": [layer_loss(W, s.W, H) / rtn_in for s in (plain, shrunk)],
                    "damps": {x: layer_loss(W, solve_layer(W, H, damp=x, **kw).W, Ht) / rtn_t
                              for x in damps}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="magika,lcnet_orient,ppocr_rec,ppocr_cls")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--eval-file", action="append", default=[], metavar="MODEL=PATH")
    ap.add_argument("--damps", default="", help="e.g. 0.01,0.1,0.3,1")
    ap.add_argument("--nm", default="", help="N:M pruning instead of --bits, e.g. 2:4")
    a = ap.parse_args()
    nm = tuple(int(x) for x in a.nm.split(":")) if a.nm else None
    damps = tuple(float(x) for x in a.damps.split(",") if x)
    evals = dict(x.split("=", 1) for x in a.eval_file)
    for m in a.models.split(","):
        rows = study(R + m + ".onnx", R + m + ".calib.npz", evals.get(m, R + m + ".eval.npz"),
                     a.bits, a.rows, damps, nm)
        what, base = (f"{a.nm} OBS", "magnitude's") if nm else (f"W{a.bits}", "RTN's")
        print(f"\n{m}: {len(rows)} layers with held-out halves ({what}, held-out / "
              f"in-sample loss over {base}; without -> with the level)")
        for r in rows:
            print(f"  {r['layer'][-40:]:40s} {str(r['shape']):16s} rank {r['rank']:>5}/"
                  f"{r['shape'][2]:<5} a={r['level']:<4g} held-out {r['held_out'][0]:.3f} -> "
                  f"{r['held_out'][1]:.3f}   in-sample {r['in_sample'][0]:.3f} -> "
                  f"{r['in_sample'][1]:.3f}" + "".join(
                      f"  damp {x:g}: {v:.3f}" for x, v in r["damps"].items()))
        if rows:
            h = np.array([r["held_out"] for r in rows])
            print(f"  shrunk {sum(r['level'] > 0 for r in rows)} of {len(rows)}; held-out "
                  f"median {np.median(h[:, 0]):.3f} -> {np.median(h[:, 1]):.3f}, worst "
                  f"{h[:, 0].max():.3f} -> {h[:, 1].max():.3f}; above {base}: "
                  f"{int((h[:, 0] > 1).sum())} -> {int((h[:, 1] > 1).sum())}")


if __name__ == "__main__":
    main()
