"""One-thread CPU seconds of the default W8A8 CLI run against quantize_static (less noisy
than wall time on a shared machine).

    OPENBLAS_NUM_THREADS=1 python bench/w8_cpu.py [--models ocr_like,common] [--reps 3]
                                                  [--runtimes tensorrt,onnxruntime]
                                                  [--profile DIR] [--before TREE]

Each conversion is its own process (imports included) with onnxruntime's sessions at one
intra-op thread (SessionOptions patched before anything imports it) and one BLAS thread;
the process's own CPU seconds (user + system) at exit; onnx_obc byte-compiled first (as an
installed copy is). Alternates ours (`cli.py IN OUT --calib C --bits 8 --act-bits 8 -q`,
bench/w8_speed.py's default run) and quantize_static (bench/qs_static.py, which imports no
onnx_obc: bench/deploy.py's, imported before 2026-12-03, pulled onnx_obc in), prints the medians and their ratio. `--profile DIR`: also writes a
cProfile (CPU clock) of each of our runs there. `--before TREE` (another checkout, e.g.
`git archive COMMIT | tar -x -C TREE`): its CLI too, in the same alternation.
`--runtimes`: our run once per target (`--runtime R`; default: tensorrt, the CLI's
default). Models: bench/w8_speed.py's, efficientnet_lite0, common_det, yolov8n,
picodet_layout and lcnet_orient (bench/real).
Also the output error of each model written by the last repetition on the first 64 eval
samples (mean ||y - y_dense|| / ||y_dense||, bench/w8_speed.py's `error`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from w8_speed import MODELS, QS, compiled, error  # noqa: E402

MODELS = {**MODELS, "efficientnet_lite0": (
    "bench/real/efficientnet_lite0.onnx", "bench/real/efficientnet_lite0.calib.npz",
    "bench/real/efficientnet_lite0.eval.npz"), "common_det": (
    "bench/real/common_det.onnx", "bench/real/common_det.calib.npz",
    "bench/real/common_det.eval.npz")}
MODELS.update({n: (f"bench/real/{n}.onnx", f"bench/real/{n}.calib.npz", f"bench/real/{n}.eval.npz")
               for n in ("yolov8n", "picodet_layout", "lcnet_orient")})  # bench/real_detect.py

PATCH = ("import onnxruntime as _o\n"
         "class _S(_o.SessionOptions):\n"
         "    def __init__(self, *a, **k):\n"
         "        super().__init__(*a, **k); self.intra_op_num_threads = 1\n"
         "        self.inter_op_num_threads = 1\n"
         "_o.SessionOptions = _S\n")
OURS = ("import sys, resource, time\n" + PATCH +
        "out = sys.argv[1]; sys.argv = ['onnx-obc'] + sys.argv[2:]\n"
        "from onnx_obc.cli import main\n"
        "prof = None\n"
        "if out != '-':\n"
        "    import cProfile; prof = cProfile.Profile(time.process_time); prof.enable()\n"
        "try:\n    main(standalone_mode=False)\n"
        "finally:\n"
        "    if prof: prof.disable(); prof.dump_stats(out)\n")


def cpu_of(code: str, args: list[str], tree: Path = ROOT) -> float:
    """CPU seconds (user + system) of a fresh Python process running `code` in `tree`
    (`python -c` imports onnx_obc from its working directory first; relative paths
    resolve there too)."""
    compiled(tree)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": str(tree), "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code, *args], cwd=tree, check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="ocr_like,common")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--runtimes", default="tensorrt")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--before", default=None, help="another checkout to run alongside")
    ap.add_argument("--out", default=str(ROOT / "bench/results/w8_cpu.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="w8cpu-") as tmp:
        for name in args.models.split(","):
            m, c, e = MODELS[name]
            ev = dict(np.load(ROOT / e)) if (ROOT / e).is_file() else None
            for rt in args.runtimes.split(","):
                ours, qs, old = [], [], []
                cli = ["--bits", "8", "--act-bits", "8", "--runtime", rt, "-q"]
                for rep in range(args.reps):
                    prof = f"{args.profile}/{name}.{rt}.{rep}.prof" if args.profile else "-"
                    ours.append(cpu_of(OURS, [prof, m, f"{tmp}/{name}.onnx", "--calib", c,
                                              *cli]))
                    qs.append(cpu_of(PATCH + QS, [m, f"{tmp}/{name}.qs.onnx", c]))
                    if args.before:
                        old.append(cpu_of(OURS, ["-", m, f"{tmp}/{name}.before.onnx",
                                                 "--calib", c, *cli],
                                          Path(args.before).resolve()))
                    print(f"  {name} {rt} rep {rep}: ours {ours[-1]:.2f} s, quantize_static "
                          f"{qs[-1]:.2f} s" + (f", before {old[-1]:.2f} s" if old else ""),
                          flush=True)
                a, b = float(np.median(ours)), float(np.median(qs))
                row = {"model": name, "runtime": rt, "ours_cpu_s": a, "qs_cpu_s": b,
                       "ratio": a / b, "ours": ours, "qs": qs}
                if ev is not None:
                    row |= {"error": error(str(ROOT / m), f"{tmp}/{name}.onnx", ev),
                            "qs_error": error(str(ROOT / m), f"{tmp}/{name}.qs.onnx", ev)}
                if old:
                    row |= {"before_cpu_s": float(np.median(old)), "before": old,
                            "before_ratio": float(np.median(old)) / b}
                    if ev is not None:
                        row["before_error"] = error(str(ROOT / m), f"{tmp}/{name}.before.onnx",
                                                    ev)
                rows.append(row)
                err = "" if ev is None else (f"; error {row['error']:.4f} vs "
                                             f"{row['qs_error']:.4f}")
                print(f"{name} {rt}: ours {a:.2f} s, quantize_static {b:.2f} s, {a / b:.2f}x"
                      + (f"; before {row['before_cpu_s']:.2f} s, {row['before_ratio']:.2f}x"
                         if old else "") + err
                      + (f" (before {row['before_error']:.4f})" if "before_error" in row
                         else ""), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"reps": args.reps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
