"""`--channels F` through the CLI, one checkout against another, beside onnxruntime's
`quantize_static` and the cut with W8A8 on top, in one latency run (prints; asserts nothing).

    python bench/channels_ab.py --models yolov8n common_det --fractions 0.2 0.3 \
        --before /path/to/older/checkout [--after .] [--w8a8] [--runs 30]

Every conversion is its own `python -m onnx_obc` process with the CLI defaults and the
model's calibration .npz (PYTHONPATH = the checkout). On the model's eval .npz, one sample a
run: output error ||y - y_dense|| / ||y_dense|| of the first output, the task metric
(bench/deploy.py: box F1 / AP50 against the dense detections for yolov8n and
picodet_layout, text or map F1 or labels for the others), file size, and onnxruntime CPU
latency (1 thread, ORT_ENABLE_ALL, medians of --runs rounds alternating every file and
fp32), the FLOP cut and the sites used from each run's JSON report, the conversion's wall
seconds. --w8a8 adds `--channels F --bits 8 --act-bits 8 --runtime onnxruntime` (the last F,
the --after checkout). Models from bench/real (bench/setup_models.py). The docs/channels.md
figures for the Concat / Split / shared-input sites came from this script's /tmp original.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "bench" / "real"
sys.path.insert(0, str(ROOT / "bench"))


def _convert(tree: str, model: str, calib: str, out: Path, args: list[str]) -> tuple[dict, float]:
    rep = out.with_suffix(".json")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "onnx_obc", model, str(out), *args, "--calib",
                        calib, "-q", "--report", str(rep)], cwd=tempfile.gettempdir(),
                       env={**os.environ, "PYTHONPATH": str(Path(tree).resolve())},
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{out.name}: exit {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return json.loads(rep.read_text()), time.perf_counter() - t


def run(name: str, fractions: list[float], trees: dict[str, str], w8a8: bool, runs: int,
        work: Path) -> None:
    from deploy import detections, task_metric
    from qs_static import quantize_static

    model, calib = str(REAL / f"{name}.onnx"), str(REAL / f"{name}.calib.npz")
    paths, reports, secs = {"fp32": model}, {}, {}
    jobs = [(f"{tag} {f}", tree, ["--channels", str(f)]) for f in fractions
            for tag, tree in trees.items()]
    if w8a8:
        jobs.append((f"after {fractions[-1]} + W8A8 ort", trees["after"],
                     ["--channels", str(fractions[-1]), "--bits", "8", "--act-bits", "8",
                      "--runtime", "onnxruntime"]))
    for i, (tag, tree, args) in enumerate(jobs):
        out = work / f"{name}.{i}.onnx"
        reports[tag], secs[tag] = _convert(tree, model, calib, out, args)
        paths[tag] = str(out)
    t = time.perf_counter()
    quantize_static(model, str(work / f"{name}.qs.onnx"), dict(np.load(calib)), onnx.load(model))
    secs["quantize_static"], paths["quantize_static"] = time.perf_counter() - t, str(
        work / f"{name}.qs.onnx")
    ev = dict(np.load(REAL / f"{name}.eval.npz"))
    first = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_inputs()[0].name
    feeds = [{first: ev[first][i:i + 1]} for i in range(len(ev[first]))]

    def outs(p: str) -> list[np.ndarray]:
        quiet = ort.SessionOptions()
        quiet.log_severity_level = 3
        s = ort.InferenceSession(p, quiet, providers=["CPUExecutionProvider"])
        return [s.run(None, fd)[0] for fd in feeds]

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3  # not the unused-initializer warnings of the paddle exports
    sess = {k: ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
            for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in sess}
    for r in range(runs + 3):
        for k, s in sess.items():
            t = time.perf_counter()
            s.run(None, feeds[0])
            if r >= 3:
                times[k].append(time.perf_counter() - t)
    base = statistics.median(times["fp32"])
    dense = outs(model)
    print(f"{name}: fp32 {base * 1e3:.2f} ms, {os.path.getsize(model) / 1e6:.2f} MB, "
          f"{len(feeds)} eval samples")
    for k, p in paths.items():
        if k == "fp32":
            continue
        ys = outs(p)
        err = float(np.mean([np.linalg.norm(y - d) / np.linalg.norm(d)
                             for y, d in zip(ys, dense)]))
        task = ({a: round(b, 4) for a, b in detections(name, p, model, feeds).items()}
                if name in ("yolov8n", "picodet_layout") else
                task_metric(name, ys, dense, ev, p, model, feeds))
        ch = reports.get(k, {}).get("channels") or {}
        cut = f"{1 - ch['macs_pruned'] / ch['macs_dense']:.3f}" if ch else "-"
        used = sum(1 for r in ch.get("rows", []) if r["removed"])
        print(f"  {k}: x fp32 {statistics.median(times[k]) / base:.3f}, "
              f"{os.path.getsize(p) / 1e6:.2f} MB, error {err:.4f}, task {task}, FLOP cut "
              f"{cut}, sites {used}/{len(ch.get('rows', []))}, convert {secs[k]:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["yolov8n"])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.2, 0.3])
    ap.add_argument("--before", help="another checkout (rows 'before F'); none: after only")
    ap.add_argument("--after", default=str(ROOT))
    ap.add_argument("--w8a8", action="store_true")
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args()
    trees = {**({"before": a.before} if a.before else {}), "after": a.after}
    with tempfile.TemporaryDirectory() as work:
        for name in a.models:
            run(name, a.fractions, trees, a.w8a8, a.runs, Path(work))


if __name__ == "__main__":
    main()
