"""Default W8A8 conversion time against onnxruntime's quantize_static, same calibration.

    python bench/w8_speed.py [--models common,ppocr_rec,ocr_like,...] [--reps 3]
                             [--out bench/results/w8_speed.json] [--before TREE]
                             [--runs default,ort,qs]

`--models` also takes the other bench/real models (ppocr_cls, ppocr_det, lcnet_orient,
efficientnet_lite0, yolov8n, common_det, picodet_layout; setup_models.py installs them).
Per model and repetition, alternately (so a shared machine's load hits all alike), each as
its own process from the command line, imports included: the CLI with default options
(`onnx-obc IN OUT --calib C --bits 8 --act-bits 8`, the tensorrt target), the same with
`--runtime onnxruntime`, and bench/deploy.py's quantize_static (QDQ, per channel, MinMax,
uint8 activations / int8 weights, the same calibration .npz). Reports the median wall and
CPU seconds (all threads) of each, their ratio to quantize_static, and the output error of
each model on the first EVAL samples of the eval set (mean ||y - y_dense|| / ||y_dense||,
first output; bench/deploy.py has the task metrics). onnx_obc is byte-compiled first, as an
installed copy is (`compiled`; since 2026-12-07: before, each CLI run compiled its ~150
modules again on this machine, PYTHONDONTWRITEBYTECODE, 0.3-0.4 s that `quantize_static`
never paid). On a shared machine compare the CPU seconds; wall ratios need an idle one.
`--before TREE` (another checkout, e.g. `git archive COMMIT | tar -x -C TREE`) also runs
that tree's CLI with default options, in the same alternation ("before (default)"); `--runs`
picks which of default, ort (`--runtime onnxruntime`), qs (quantize_static) and before run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "common": ("bench/real/common.onnx", "bench/real/common.calib.npz",
               "bench/real/common.eval.npz"),
    "ppocr_rec": ("bench/real/ppocr_rec.onnx", "bench/real/ppocr_rec.calib.npz",
                  "bench/real/ppocr_rec.eval.npz"),
    "ocr_like": ("bench/synthetic/ocr_like.onnx", "bench/synthetic/ocr_like.calib.npz",
                 "bench/synthetic/ocr_like.eval.npz"),
    "ppocr6_rec": ("bench/real/ppocr6_rec.onnx", "bench/real/ppocr6_rec.calib.npz",
                   "bench/real/ppocr6_rec.eval.npz"),
    **{k: (f"bench/real/{k}.onnx", f"bench/real/{k}.calib.npz", f"bench/real/{k}.eval.npz")
       for k in ("ppocr_cls", "ppocr_det", "lcnet_orient", "efficientnet_lite0", "yolov8n",
                 "common_det", "picodet_layout")},
}
EVAL = 64  # eval samples for the output error
QS = ("import sys, numpy as np, onnx; sys.path.insert(0, 'bench'); "
      "from qs_static import quantize_static; a = sys.argv; "
      "quantize_static(a[1], a[2], dict(np.load(a[3])), onnx.load(a[1]))")


_COMPILED: set[Path] = set()


def compiled(tree: Path) -> None:
    """Byte-compile `tree`'s onnx_obc once (its __pycache__, gitignored), as pip does when
    it installs a package: with PYTHONDONTWRITEBYTECODE set (this machine's environment)
    every run would otherwise compile its ~100 modules again (0.35-0.45 s CPU each run,
    which no installed copy pays). The bench's quantize_static process (qs_static.py)
    imports only onnxruntime and onnx, whose installed modules are compiled."""
    if tree not in _COMPILED:
        import compileall
        compileall.compile_dir(str(tree / "onnx_obc"), quiet=1)
        _COMPILED.add(tree)


def timed(cmd: list[str], path: Path = ROOT) -> tuple[float, float]:
    """(wall, CPU seconds of the child, all threads); `path`: the tree imported, its
    onnx_obc byte-compiled first (`compiled`)."""
    compiled(path)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(path)})
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def error(dense: str, path: str, ev: dict) -> float:
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.log_severity_level = 3
    s0, s1 = (ort.InferenceSession(p, o, providers=["CPUExecutionProvider"])
              for p in (dense, path))
    name = s0.get_inputs()[0].name
    x = ev[name][:EVAL]
    errs = []
    for i in range(len(x)):
        y0, y1 = (s.run(None, {name: x[i:i + 1]})[0] for s in (s0, s1))
        errs.append(np.linalg.norm(y1 - y0) / max(np.linalg.norm(y0), 1e-12))
    return float(np.mean(errs))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="common,ppocr_rec,ocr_like,ppocr6_rec")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench/results/w8_speed.json"))
    ap.add_argument("--before", default=None, help="another checkout to run alongside")
    ap.add_argument("--runs", default="default,ort,qs,before")
    args = ap.parse_args()
    keys = {"default": "ours (default)", "ort": "ours --runtime onnxruntime",
            "qs": "quantize_static", "before": "before (default)"}
    wanted = {keys[k] for k in args.runs.split(",")} | {"quantize_static"}
    before = Path(args.before).resolve() if args.before else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="w8speed-") as tmp:
        for name in args.models.split(","):
            m, c, e = MODELS[name]
            if not (ROOT / m).is_file():
                print(f"skipping {name}: {m} is missing")
                continue
            runs = {
                "ours (default)": [sys.executable, "cli.py", m, f"{tmp}/{name}.trt.onnx",
                                   "--calib", c, "--bits", "8", "--act-bits", "8", "-q"],
                "ours --runtime onnxruntime": [
                    sys.executable, "cli.py", m, f"{tmp}/{name}.ort.onnx", "--calib", c,
                    "--bits", "8", "--act-bits", "8", "--runtime", "onnxruntime", "-q"],
                "quantize_static": [sys.executable, "-c", QS, m, f"{tmp}/{name}.qs.onnx", c],
            }
            out = {"ours (default)": f"{tmp}/{name}.trt.onnx",
                   "ours --runtime onnxruntime": f"{tmp}/{name}.ort.onnx",
                   "quantize_static": f"{tmp}/{name}.qs.onnx"}
            if before is not None:
                runs["before (default)"] = [sys.executable, str(before / "cli.py"), m,
                                            f"{tmp}/{name}.before.onnx", "--calib", c,
                                            "--bits", "8", "--act-bits", "8", "-q"]
                out["before (default)"] = f"{tmp}/{name}.before.onnx"
            runs = {k: v for k, v in runs.items() if k in wanted}
            times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
            for rep in range(args.reps):
                for k, cmd in runs.items():
                    times[k].append(timed(cmd, before if k.startswith("before") else ROOT))
                    print(f"  {name} {k} rep {rep}: {times[k][-1][0]:.1f} s", flush=True)
            ev_path = ROOT / e
            if not ev_path.is_file() and name == "ocr_like":  # as bench/deploy.py, but in
                # bench/results (the model's folder may be a read-only link to shared data)
                ev_path = ROOT / "bench/results/ocr_like.eval.npz"
                if not ev_path.is_file():
                    sys.path.insert(0, str(ROOT / "bench"))
                    from make_synthetic import smooth_images
                    ev_path.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(ev_path, image=smooth_images(48, 2))
            ev = dict(np.load(ev_path)) if ev_path.is_file() else None
            qs = np.median([w for w, _ in times["quantize_static"]])
            for k in runs:
                wall = float(np.median([w for w, _ in times[k]]))
                cpu = float(np.median([u for _, u in times[k]]))
                rows.append({"model": name, "run": k, "wall_s": wall, "cpu_s": cpu,
                             "x_quantize_static": wall / qs, "runs": times[k],
                             "error": None if ev is None else error(str(ROOT / m), out[k], ev)})
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # after each model
            Path(args.out).write_text(json.dumps({"reps": args.reps, "rows": rows}, indent=2))
    head = "| model | run | wall s | CPU s | × quantize_static (wall) | output error |"
    print("\n".join([head, "|---|---|---|---|---|---|"] + [
        f"| {r['model']} | {r['run']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} "
        f"| {r['x_quantize_static']:.2f} | "
        + ("" if r["error"] is None else f"{r['error']:.4f}") + " |" for r in rows]))


if __name__ == "__main__":
    main()
