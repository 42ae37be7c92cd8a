"""The 8-bit tiers against each other and quantize_static: one-thread CPU seconds, output
error and (common) text accuracy, each conversion its own process, alternating.

    OPENBLAS_NUM_THREADS=1 python bench/w8_tier.py [--models ocr_like,common,ppocr_rec]
        [--variants diag,full,rtn] [--runtimes tensorrt,onnxruntime] [--reps 1]

Variants (CLI flags added to `--bits 8 --act-bits 8 --runtime R -q`): auto (the default:
diag(H) and RTN on the large layers, H and GPTQ on the small), diag (`--w8-hessian diag`:
diag(H), RTN on its grid everywhere), full (`--w8-hessian full`: H, GPTQ act-order against
RTN, the previous default), rtn (`--method rtn`: RTN on the grid searched under the full H), minmax
(`--minmax`: the diag tier without the clip search); qs is bench/deploy.py's
quantize_static (onnxruntime's own target). CPU seconds as bench/w8_cpu.py (onnxruntime and
BLAS at one thread, imports included); output error as bench/w8_speed.py (mean relative
error of the first output over the first 64 eval samples); text accuracy over the whole
eval set for the models whose eval set has `texts` (common's charset). Prints a table and
writes bench/results/w8_tier.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from w8_cpu import OURS, PATCH, cpu_of  # noqa: E402
from w8_speed import MODELS, QS, error  # noqa: E402

VARIANTS = {"auto": [], "diag": ["--w8-hessian", "diag"], "full": ["--w8-hessian", "full"], "rtn": ["--method", "rtn"],
            "minmax": ["--minmax"], "gptq": ["--method", "gptq", "--act-order"]}


def text_accuracy(name: str, path: str, ev: dict) -> float | None:
    """Case-folded text accuracy of `path` on the eval set (common's charset only)."""
    if "texts" not in ev or name != "common":
        return None
    import onnxruntime as ort
    from deploy import ctc_texts

    cs = json.loads((ROOT / "bench/real/charset.json").read_text())
    o = ort.SessionOptions()
    o.log_severity_level = 3
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0].name
    x = ev[inp]
    ys = [s.run(None, {inp: x[i:i + 1]})[0] for i in range(len(x))]
    return float(np.mean([a == b for a, b in zip(ctc_texts(ys, cs), ev["texts"])]))


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.split("average:")[-1].strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="ocr_like,common,ppocr_rec")
    ap.add_argument("--variants", default="auto,diag,full")
    ap.add_argument("--runtimes", default="tensorrt,onnxruntime")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--no-qs", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench/results/w8_tier.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="w8tier-") as tmp:
        for name in args.models.split(","):
            m, c, e = MODELS[name]
            ev = dict(np.load(ROOT / e))
            runs = {f"{v} {rt}": (["-", m, f"{tmp}/{name}.{v}.{rt}.onnx", "--calib", c,
                                   "--bits", "8", "--act-bits", "8", "--runtime", rt, "-q",
                                   *VARIANTS[v]], f"{tmp}/{name}.{v}.{rt}.onnx")
                    for rt in args.runtimes.split(",") for v in args.variants.split(",")}
            if not args.no_qs:
                runs["qs"] = ([m, f"{tmp}/{name}.qs.onnx", c], f"{tmp}/{name}.qs.onnx")
            cpu: dict[str, list[float]] = {k: [] for k in runs}
            loads = []
            for rep in range(args.reps):
                for k, (a, _) in runs.items():
                    cpu[k].append(cpu_of(PATCH + QS if k == "qs" else OURS, a))
                    loads.append(load())
                    print(f"  {name} {k} rep {rep}: {cpu[k][-1]:.2f} s (load {loads[-1]})",
                          flush=True)
            for k, (_, out) in runs.items():
                r = {"model": name, "run": k, "cpu_s": float(np.median(cpu[k])),
                     "runs": cpu[k], "error": error(str(ROOT / m), out, ev),
                     "text_acc": text_accuracy(name, out, ev), "loads": loads}
                rows.append(r)
                print(f"{name} | {k} | {r['cpu_s']:.2f} | {r['error']:.4f} | "
                      f"{'' if r['text_acc'] is None else round(100 * r['text_acc'], 2)}",
                      flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"reps": args.reps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
