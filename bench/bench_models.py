"""Benchmark the main job on every shipped model (prints figures; asserts nothing).

    python bench/bench_models.py [--sparsity 0.5 0.7] [--device cpu] [--json out.json]

For each model in models/ and each sparsity: per-layer OBC/magnitude loss ratios, eval
accuracy dense / OBC / magnitude (same per-layer sparsity), seconds per layer and in total,
and the process's peak memory. OBC and magnitude models come from the same run (the report's
"magnitude" model prunes every layer at the same count by |w|).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx_obc import convert  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    names = args.models or sorted(p.name[:-5] for p in (ROOT / "models").glob("*.onnx"))
    rows = []
    for name in names:
        for s in args.sparsity:
            t = time.perf_counter()
            res = convert(ROOT / "models" / f"{name}.onnx", None, sparsity=s, allocate="uniform",
                          device=args.device,
                          calib=ROOT / "models" / f"{name}.calib.npz",
                          eval_data=ROOT / "models" / f"{name}.eval.npz", progress=False)
            wall = time.perf_counter() - t
            rep = res.report
            ev = rep.fidelity["eval"]
            big = [x for x in rep.layers if x.cols >= 64]
            ratios = [x.ratio for x in big]
            row = {
                "model": name, "sparsity": s, "wall_s": wall, "device": rep.device,
                "acc_dense": ev["dense"].accuracy, "acc_obc": ev["compressed"].accuracy,
                "acc_magnitude": ev["magnitude"].accuracy,
                "rel_err_obc": max(ev["compressed"].rel_error.values()),
                "rel_err_magnitude": max(ev["magnitude"].rel_error.values()),
                "ratio_max_ge64": max(ratios) if ratios else None,
                "ratio_median_ge64": statistics.median(ratios) if ratios else None,
                "peak_memory_mb": rep.peak_memory_mb, "seconds": rep.seconds,
                "layers": [{"name": x.name, "rows": x.rows, "cols": x.cols,
                            "sparsity": x.sparsity, "ratio": x.ratio, "seconds": x.seconds}
                           for x in rep.layers],
            }
            rows.append(row)
            print(f"\n=== {name} @ {s:.0%} ({rep.device}) ===")
            print(rep.table())
    print("\n=== summary (eval accuracy; loss ratios over layers with >= 64 inputs) ===")
    print(f"{'model':<12} {'sp':>4} {'dense':>7} {'OBC':>7} {'magn.':>7} {'dOBC':>6} "
          f"{'dMag':>6} {'ratio max':>9} {'ratio med':>9} {'wall s':>7} {'peak MB':>8}")
    for r in rows:
        d_obc = 100 * (r["acc_dense"] - r["acc_obc"])
        d_mag = 100 * (r["acc_dense"] - r["acc_magnitude"])
        print(f"{r['model']:<12} {r['sparsity']:>4.0%} {100 * r['acc_dense']:>7.2f} "
              f"{100 * r['acc_obc']:>7.2f} {100 * r['acc_magnitude']:>7.2f} {d_obc:>6.2f} "
              f"{d_mag:>6.2f} {r['ratio_max_ge64']:>9.3f} {r['ratio_median_ge64']:>9.3f} "
              f"{r['wall_s']:>7.2f} {r['peak_memory_mb']:>8.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
