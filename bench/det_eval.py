"""Score detector files against the eval scenes' drawn characters, as bench/deploy.py does.

    python bench/setup_models.py --models det_eval --out bench/results/detgt
    python bench/det_eval.py --eval bench/results/detgt/common_det.eval_gt.npz \\
        fp32=bench/real/common_det.onnx ours=OURS.onnx quantize_static=QS.onnx [--images 200]

The first file is the dense reference (output error, fg error, F1 against its boxes); a file
named `quantize_static` is the second reference of the paired intervals (deploy.py's
_paired). Prints deploy.py's ground-truth table and writes --out (JSON) when given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy  # noqa: E402


def evaluate(files: dict[str, str], ev: dict) -> list[dict]:
    """Rows of deploy.py's detector figures; the first file is the dense reference ("fp32")."""
    paths = list(files.values())
    feeds = deploy._batches(onnx.load(paths[0]), ev, len(ev["images"]))
    dense = deploy.outputs(paths[0], feeds)
    rows = []
    for i, (key, path) in enumerate(files.items()):
        ys = dense if i == 0 else deploy.outputs(path, feeds)
        rows.append({"model": "common_det", "format": "fp32" if i == 0 else key,
                     "error": deploy._rel(ys, dense), "fg_error": deploy.fg_error(ys, dense),
                     "task": deploy.box_f1(dense, ys), **deploy._gt(ys, ev)})
    deploy._paired(rows)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval", required=True, help="npz with images and boxes")
    ap.add_argument("--images", type=int, default=0, help="the first N scenes only (0: all)")
    ap.add_argument("--out", default=None)
    ap.add_argument("files", nargs="+", metavar="NAME=ONNX")
    a = ap.parse_args()
    ev = dict(np.load(a.eval, allow_pickle=False))
    if a.images:
        ev["boxes"] = ev["boxes"][ev["boxes"][:, 0] < a.images]
        ev["images"] = ev["images"][:a.images]
    rows = evaluate(dict(f.split("=", 1) for f in a.files), ev)
    print("\n".join(deploy.gt_table(rows)))
    for r in rows:
        print(f"{r['format']}: output error {r['error']:.4f}")
    if a.out:
        for r in rows:
            r.pop("gt_ap_records", None)
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
