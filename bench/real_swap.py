"""Which layers' solution matters: put B's quantized weights (e.g. GPTQ's) into A's model
(e.g. OBQ's) for groups of layers, and evaluate the hybrids paired with A and B
(bench/real_paired.py: accuracy, output error, McNemar / bootstrap against A).

    python bench/real_swap.py --model ppocr_rec --a bench/results/obq/models/ppocr_rec.w4_obc.onnx \\
        --b bench/results/obq/models/ppocr_rec.w4_gptq.onnx --eval bench/real/ppocr_rec.eval1000.npz \\
        --group backbone=p2o.Conv.0-33 --group neck=p2o.Conv.34-37,p2o.MatMul.0-22 \\
        --group head=p2o.MatMul.24

A layer is named by the node that consumes its DequantizeLinear (the report's layer name);
"p2o.Conv.0-33" is the range p2o.Conv.0 ... p2o.Conv.33. Both models must come from the
same source model and the same per-layer structure (QDQ weights of the same names).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_paired  # noqa: E402


def _names(spec: str) -> set[str]:
    out = set()
    for part in spec.split(","):
        m = re.fullmatch(r"(.*?)(\d+)-(\d+)", part)
        out |= ({f"{m[1]}{i}" for i in range(int(m[2]), int(m[3]) + 1)} if m else {part})
    return out


def hybrid(a, b, layers: set[str]):
    """A copy of model `a` with the quantized weights (and scales, zero points) of `b` for the
    layers named in `layers` (their consumer node names)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(a)
    dq = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    take = set()
    for n in m.graph.node:
        if n.name in layers:
            take |= {i for x in n.input if x in dq for i in dq[x].input}
    found = {n.name for n in m.graph.node if n.name in layers}
    if found != layers:
        raise SystemExit(f"no such layers in A: {sorted(layers - found)}")
    donor = {t.name: t for t in b.graph.initializer if t.name in take}
    for t in m.graph.initializer:
        if t.name in donor:
            t.CopyFrom(donor[t.name])
    return m


def main() -> None:
    import onnx

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, choices=sorted(real_paired.DENSE))
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--eval", action="append", required=True)
    ap.add_argument("--group", action="append", required=True, metavar="NAME=LAYERS")
    ap.add_argument("--flags", default=None)
    ap.add_argument("--hybrids-only", action="store_true",
                    help="evaluate only the hybrids (and dense); merge with A's and B's "
                         "flags later: real_paired.py --load")
    a = ap.parse_args()
    A, B = onnx.load(a.a), onnx.load(a.b)
    with tempfile.TemporaryDirectory(prefix="swap-") as tmp:
        models = {} if a.hybrids_only else {"A": a.a, "B": a.b}
        for g in a.group:
            name, spec = g.split("=", 1)
            path = str(Path(tmp) / f"{name}.onnx")
            onnx.save(hybrid(A, B, _names(spec)), path)
            models[f"A+B:{name}"] = path
        res = real_paired.evaluate(a.model, models, a.eval)
    if not a.hybrids_only:
        print("\n".join(real_paired.summary(res, list(models))))
    if a.flags:
        np.savez(a.flags, **{f"{k}.{f}": v for k, r in res.items() for f, v in r.items()})


if __name__ == "__main__":
    main()
