"""ppocr_rec W8A8 with parts of the fold stage turned off, scored on 600 other lines
(docs/deployment.md, the fold stage: what the fold costs the recognizer's text accuracy).

    python bench/fold_ablate.py VARIANT [--seed S --holdout H] [--minmax]

VARIANT: fold (the default run), nofold (--no-fold), or parts turned off, joined by "+":
nobefore (no fold into the layers after the affine ops), noafter (none into the layer before
them), nobn (BatchNormalization not folded), nohs (hardswish left written out). Converts as bench/fold_deploy.py does
(holdout 0 unless given; --minmax: min-max activation ranges), then prints output error,
per-frame agreement and text accuracy on `real_ppocr.lines(2000, seed=27)[:600]`
(bench/real/ppocr_rec.eval2000s27.npz, written on first use).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import deploy as D  # noqa: E402
from ort_sensitivity import evaluate  # noqa: E402

import onnx_obc.fold as F  # noqa: E402
import onnx_obc.fold.after as A  # noqa: E402
from onnx_obc import convert  # noqa: E402

OFF = {"nobefore": (F, "fold_before", lambda *a: ([], False)),
       "noafter": (F, "fold_after", lambda *a: []), "nobn": (A, "_bn", lambda *a: None),
       "nohs": (F, "hardswish", lambda *a: None)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variant", help="fold, nofold, or parts off joined by '+' (nohs+noafter)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--holdout", type=float, default=0.0)
    ap.add_argument("--minmax", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    for part in a.variant.split("+"):
        if part in OFF:
            module, name, stub = OFF[part]
            setattr(module, name, stub)
        elif part not in ("fold", "nofold"):
            ap.error(f"unknown variant part {part!r}: fold, nofold, {', '.join(OFF)}")
    evpath = ROOT / "bench/real/ppocr_rec.eval2000s27.npz"
    if not evpath.is_file():
        import real_ppocr
        x, texts, _ = real_ppocr.lines(2000, seed=27)
        np.savez(evpath, x=x, texts=np.array(texts))
    mpath = str(ROOT / "bench/real/ppocr_rec.onnx")
    out = a.out or f"/tmp/ppocr_rec.{a.variant}.onnx"
    convert(mpath, out, calib=str(ROOT / "bench/real/ppocr_rec.calib.npz"), bits=8, act_bits=8,
            method="obc", runtime="onnxruntime", act_type="u8", holdout=a.holdout,
            seed=a.seed, fold=a.variant != "nofold", compare_baseline=False, progress=False,
            act_calibration="minmax" if a.minmax else "auto")
    z = dict(np.load(evpath))
    ev = {"x": z["x"][:600], "texts": z["texts"][:600]}
    feeds = D._batches(onnx.load(mpath), ev, 600)
    print(a.variant, evaluate("ppocr_rec", onnx.load(out), feeds, D.outputs(mpath, feeds), ev))


if __name__ == "__main__":
    main()
