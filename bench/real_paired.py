"""Paired comparison of compressed recognizers on the same eval lines: per-sample correct
flags of each model, and for a pair (A, B) the accuracy difference with an exact McNemar
test on the discordant lines and a paired bootstrap 95% CI.

    python bench/real_matrix.py --models ppocr_rec --runs "w4 gptq,w4 obc" \\
        --keep bench/results/obq/models                       # keeps MODEL.RUN.onnx
    python bench/real_paired.py --model ppocr_rec \\
        --eval bench/real/ppocr_rec.eval1000.npz --eval bench/real/ppocr_rec.eval2000s27.npz \\
        obc=bench/results/obq/models/ppocr_rec.w4_obc.onnx \\
        gptq=bench/results/obq/models/ppocr_rec.w4_gptq.onnx [--flags out.npz]

Each --eval file is streamed in batches (the dense and compressed logits of thousands of
lines do not fit in memory together). Correct = the CTC decode equals the label, as
bench/real_matrix.py scores it (ppocr_rec: case-folded, stripped; common: lower-cased
decode vs label). Also per sample: relative output error vs dense, ||y - y_dense|| /
||y_dense||, and whether the decode equals the dense model's. The first NAME=PATH is A,
every other one is compared with it.
"""

from __future__ import annotations

import argparse
import json
import math
from fractions import Fraction
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
DENSE = {"ppocr_rec": "bench/real/ppocr_rec.onnx", "common": "bench/real/common.onnx"}


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p: b, c discordant counts, binomial(b + c, 1/2)."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = float(Fraction(sum(math.comb(n, i) for i in range(k + 1)), 1 << n))  # n > 1023
    return min(1.0, 2.0 * tail)


def bootstrap_ci(a: np.ndarray, b: np.ndarray, reps: int = 10000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Paired bootstrap CI of mean(a) - mean(b) (same resampled lines for both)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(reps)
    for i in range(0, reps, 1000):
        idx = rng.integers(0, len(d), (min(1000, reps - i), len(d)))
        means[i:i + len(idx)] = d[idx].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _decode(name: str, y: np.ndarray, cs: list[str]) -> list[str]:
    import real_ppocr
    from deploy import ctc_texts

    if name == "ppocr_rec":
        return [t.lower() for t in real_ppocr.ctc([y], cs)]
    return ctc_texts([y], cs)


def evaluate(name: str, models: dict[str, str], evals: list[str], threads: int = 1
             ) -> dict[str, dict]:
    """Per model: correct, same-as-dense and relative-error arrays over all eval lines."""
    import onnx
    from deploy import _batches, _session

    cs = json.loads((ROOT / "bench/real" / ("ppocr_charset.json" if name == "ppocr_rec"
                                              else "charset.json")).read_text())
    proto = onnx.load(str(ROOT / DENSE[name]), load_external_data=False)
    sess = {k: _session(p, threads)  # 1 thread: a shared machine's spare cores are not spare
            for k, p in {"dense": str(ROOT / DENSE[name]), **models}.items()}
    out = {k: {"correct": [], "same": [], "error": []} for k in sess}
    for path in evals:
        ev = dict(np.load(path))
        texts = [str(t).lower() for t in ev["texts"]]
        n = len(texts)
        i = 0
        for feed in _batches(proto, ev, n):
            ys = {k: s.run(None, feed)[0] for k, s in sess.items()}
            m = len(next(iter(feed.values())))
            per = 1 if name == "common" else m  # common: [T, 1, C] per sample
            got = {k: _decode(name, y, cs) for k, y in ys.items()}
            d = ys["dense"]
            for k, y in ys.items():
                out[k]["correct"] += [g == t for g, t in zip(got[k], texts[i:i + m])]
                out[k]["same"] += [g == h for g, h in zip(got[k], got["dense"])]
                ya, da = (y[None], d[None]) if per == 1 else (y, d)
                out[k]["error"] += [float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))
                                    for a, b in zip(ya, da)]
            i += m
    return {k: {f: np.asarray(v) for f, v in r.items()} for k, r in out.items()}


def summary(res: dict[str, dict], names: list[str]) -> list[str]:
    n = len(res["dense"]["correct"])
    lines = [f"{n} lines; accuracy %, mean per-line output error, same text as dense %"]
    for k, r in res.items():
        lines.append(f"  {k}: {100 * r['correct'].mean():.2f}  error {r['error'].mean():.4f}"
                     f"  same {100 * r['same'].mean():.2f}")
    a = names[0]
    for b in names[1:]:
        x, y = res[a]["correct"], res[b]["correct"]
        nb, nc = int((x & ~y).sum()), int((~x & y).sum())
        lo, hi = bootstrap_ci(x, y)
        lines.append(f"  {a} - {b}: {100 * (x.mean() - y.mean()):+.2f} pt, 95% CI "
                     f"[{100 * lo:+.2f}, {100 * hi:+.2f}] (paired bootstrap); discordant "
                     f"{nb} ({a} only) / {nc} ({b} only), McNemar exact p = "
                     f"{mcnemar_p(nb, nc):.3f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, choices=sorted(DENSE))
    ap.add_argument("--eval", action="append", default=[])
    ap.add_argument("--flags", default=None, help="save the per-line arrays here (.npz)")
    ap.add_argument("--load", action="append", default=[], metavar="NPZ",
                    help="also the models of an earlier --flags file (same --eval files, in "
                         "the same order)")
    ap.add_argument("--threads", type=int, default=1,
                    help="onnxruntime intra-op threads per session (0: its default, all cores)")
    ap.add_argument("models", nargs="*", metavar="NAME=PATH")
    a = ap.parse_args()
    models = dict(x.split("=", 1) for x in a.models)
    if models and not a.eval:
        raise SystemExit("give the eval sets (--eval) to evaluate the models on")
    res = evaluate(a.model, models, a.eval, a.threads) if models else {}
    for path in a.load:
        with np.load(path) as z:
            for key in z.files:
                k, f = key.rsplit(".", 1)
                res.setdefault(k, {})[f] = z[key]
    if len({len(r["correct"]) for r in res.values()}) != 1:
        raise SystemExit("the models were evaluated on different numbers of lines")
    names = list(models) + [k for k in res if k != "dense" and k not in models]
    print("\n".join(summary(res, names)))
    if a.flags:
        np.savez(a.flags, **{f"{k}.{f}": v for k, r in res.items() for f, v in r.items()})


if __name__ == "__main__":
    main()
