"""The settings matrix on the real bench models: 50% uniform vs DP, 2:4, W8A8, W4 (OBQ / GPTQ
/ RTN, per channel and --group-size 32), with the task metric, output error, wall time and
peak memory of each run.

    python bench/setup_models.py && python bench/make_synthetic.py     # the models
    python bench/real_matrix.py [--models efficientnet_lite0,ppocr_cls,...] [--runs s50u,s50dp]
                                [--method-prune gptq] [--out bench/results/real_matrix.jsonl]
    python bench/real_matrix.py --table                                # the markdown table

Each run is `convert()` in a child process (so its peak resident memory, VmHWM, is its
own) with --holdout 0 and no baseline model; its output is evaluated here on the model's
separate eval set against the dense model: output error = mean over eval batches of
||y - y_dense|| / ||y_dense|| (first output); agree = top-1 (argmax over the last axis)
agreement; KL = mean KL(softmax dense || softmax compressed) over the classes (the
classifiers); task = top-1 agreement with dense (efficientnet_lite0: no ImageNet labels on
these photos), label accuracy (ppocr_cls), text accuracy of the CTC decode (ppocr_rec,
case-folded; common, as bench/deploy.py), box F1 against the dense boxes (common_det, as
bench/deploy.py), map F1 > 0.3 against the dense map (ppocr_det), top-1 agreement
(ocr_like). Results are appended to --out (JSON lines; a run already there is skipped, so
the matrix can be run a piece at a time) and printed as a table. A --group-size run records
the run's warnings and on how many layers the groups applied (the others fall back to per
output channel where the size does not divide their inputs, e.g. 3x3 and depthwise convs, or
equals them), and the table says so next to the run.
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

R, S = "bench/real/", "bench/synthetic/"
MODELS = {  # name -> (path prefix, pruning method: obc, or gptq where ExactOBS takes hours)
    "efficientnet_lite0": (R + "efficientnet_lite0", "obc"),
    "ppocr_cls": (R + "ppocr_cls", "obc"),
    "ppocr_rec": (R + "ppocr_rec", "obc"),
    "ppocr6_rec": (R + "ppocr6_rec", "obc"),
    "ppocr_det": (R + "ppocr_det", "obc"),
    "ppocr6_det": (R + "ppocr6_det", "obc"),
    "ocr_like": (S + "ocr_like", "obc"),
    "common": (R + "common", "gptq"),
    "common_det": (R + "common_det", "gptq"),
}
DEFAULT = list(MODELS)
EXTRA = {  # not in the default set (bench/real_detect.py; the detectors: output error only)
    "yolov8n": (R + "yolov8n", "obc"),
    "picodet_layout": (R + "picodet_layout", "obc"),
    "lcnet_orient": (R + "lcnet_orient", "obc"),  # orientation accuracy on its eval labels
    "magika": (R + "magika", "obc"),  # file types: top-1 agreement with dense (real_magika.py)
    "oww_embed": (R + "oww_embed", "obc"),  # speech embedding: output error (real_oww.py)
    "basicpitch": (R + "basicpitch", "obc"),  # note transcription: task = note-frame F1
    # against dense (real_pitch.py), output error
    "dnsmos": (R + "dnsmos", "obc"),  # speech quality scores: output error (real_dnsmos.py)
    "minilm": (R + "minilm", "obc"),  # sentence embedder: retrieval recall@1 (real_minilm.py)
}
MODELS.update(EXTRA)
RUNS = {  # name -> convert() options (the pruning method is the model's unless given)
    "s50u": {"sparsity": 0.5, "allocate": "uniform"},
    "s50dp": {"sparsity": 0.5, "allocate": "dp", "budget": "params"},
    "2:4": {"nm": (2, 4), "method": "obc", "sequential": False},
    "2:4 noshrink": {"nm": (2, 4), "method": "obc", "shrink": False, "sequential": False},
    "2:4 gptq": {"nm": (2, 4), "method": "gptq", "sequential": False},  # SparseGPT's N:M
    "w8a8": {"bits": 8, "act_bits": 8},  # the tensorrt placement, min-max ranges (auto)
    "w8a8 mse": {"bits": 8, "act_bits": 8, "act_calibration": "mse"},
    "w8a8 pct": {"bits": 8, "act_bits": 8, "act_calibration": "percentile"},
    "w4 obc": {"bits": 4, "method": "obc", "sequential": False},
    "w4 obc noshrink": {"bits": 4, "method": "obc", "shrink": False,  # H as captured
                        "sequential": False},
    "s50dp all": {"sparsity": 0.5, "allocate": "dp", "budget": "params", "positions": "all"},
    "w4 obc seq all": {"bits": 4, "method": "obc", "sequential": True, "positions": "all"},
    "s50dp noshrink": {"sparsity": 0.5, "allocate": "dp", "budget": "params", "shrink": False},
    "s50dp seq": {"sparsity": 0.5, "allocate": "dp", "budget": "params", "sequential": True},
    "s50u seq": {"sparsity": 0.5, "allocate": "uniform", "sequential": True},
    "s50dp max60": {"sparsity": 0.5, "allocate": "dp", "budget": "params",
                    "max_sparsity": 0.6},
    "s50dp max70": {"sparsity": 0.5, "allocate": "dp", "budget": "params",
                    "max_sparsity": 0.7},
    "s50u corr": {"sparsity": 0.5, "allocate": "uniform", "correct": True},
    "s50dp corr": {"sparsity": 0.5, "allocate": "dp", "budget": "params", "correct": True},
    "w4 gptq": {"bits": 4, "method": "gptq", "sequential": False},
    "w4 rtn": {"bits": 4, "method": "rtn"},
    "w4 obc seq": {"bits": 4, "method": "obc", "sequential": True},
    "w4 gptq seq": {"bits": 4, "method": "gptq", "sequential": True},
    "w4 obc seq2": {"bits": 4, "method": "obc", "sequential": True, "sequential_groups": 2},
    "w4 obc seq4": {"bits": 4, "method": "obc", "sequential": True, "sequential_groups": 4},
    "w4 obc corr": {"bits": 4, "method": "obc", "correct": True, "sequential": False},
    "w4 gptq corr": {"bits": 4, "method": "gptq", "correct": True, "sequential": False},
    "w4g32 obc": {"bits": 4, "group_size": 32, "method": "obc", "sequential": False},
    "w4g32 gptq": {"bits": 4, "group_size": 32, "method": "gptq", "sequential": False},
    "w4g32 rtn": {"bits": 4, "group_size": 32, "method": "rtn"},
    "w4g32 obc seq": {"bits": 4, "group_size": 32, "method": "obc", "sequential": True},
    "w3 obc": {"bits": 3, "method": "obc", "sequential": False},
    "w3 obc seq": {"bits": 3, "method": "obc", "sequential": True},
    "w4a8": {"bits": 4, "act_bits": 8, "sequential": False},
    "w4a8 seq": {"bits": 4, "act_bits": 8, "sequential": True},
    "2:4 seq": {"nm": (2, 4), "method": "obc", "sequential": True},
    "2:4 gptq seq": {"nm": (2, 4), "method": "gptq", "sequential": True},
    "2:4+w4": {"nm": (2, 4), "bits": 4, "method": "obc", "sequential": False},
    "2:4+w4 seq": {"nm": (2, 4), "bits": 4, "method": "obc", "sequential": True},
    "w8a8 ort": {"bits": 8, "act_bits": 8, "runtime": "onnxruntime", "reduce_range": "off"},
    "w7a8 ort": {"bits": 7, "act_bits": 8, "runtime": "onnxruntime"},  # OBQ at 7 bits
    "w8a8 ort rr": {"bits": 8, "act_bits": 8, "runtime": "onnxruntime", "reduce_range": "on"},
    "w8a8 ort rr full": {"bits": 8, "act_bits": 8, "runtime": "onnxruntime",
                         "reduce_range": "on", "w8_hessian": "full"},
}  # the runs without "seq" are one-shot where the default would be sequential (below 8
# bits); any run + " nomask": the same with --token-mask none (calib/tokens.py); any run +
# " damp=L": the same with relative dampening L (--damp; default 0.01)


def run_options(run: str) -> dict:
    """convert() options of a run name: RUNS[base] with its " nomask" / " damp=L" suffixes."""
    words = run.split(" ")
    damp = [w for w in words if w.startswith("damp=")]
    base = " ".join(w for w in words if w != "nomask" and not w.startswith("damp="))
    opts = dict(RUNS[base])
    if "nomask" in words:  # the padding kept in
        opts["token_mask"] = "none"
    if damp:
        opts["damp"] = float(damp[-1].removeprefix("damp="))
    return opts


def child(args: str) -> None:
    """One convert() run; prints a JSON line with its wall time and peak memory."""
    from onnx_obc import convert
    from peakmem import peak_mb

    a = json.loads(args)
    t = time.perf_counter()
    r = convert(a["model"], a["out"], calib=a["calib"], holdout=0.0, compare_baseline=False,
                progress=False, **a["options"])
    used: dict[str, int] = {}
    for x in r.report.layers:
        used[x.method_used or x.method] = used.get(x.method_used or x.method, 0) + 1
    layers = [{"name": x.name, "cols": x.cols, "sparsity": x.sparsity, "loss": x.loss,
               "baseline": x.magnitude_loss, "method_used": x.method_used,
               "group_size": x.group_size}
              for x in r.report.layers]
    grouped = sum(1 for x in r.report.layers if x.group_size and x.group_size < x.cols)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": time.perf_counter() - t, "methods_used": used,
                      "cpu_s": ru.ru_utime + ru.ru_stime, "stages": r.report.seconds,
                      "load": os.getloadavg()[0],
                      "peak_mb": peak_mb(),
                      "layers": layers, "warnings": r.report.warnings,
                      "grouped": grouped if a["options"].get("group_size") else None}))


def _feeds(path: str, data: dict) -> list[dict]:
    import onnx
    from deploy import _batches

    m = onnx.load(path, load_external_data=False)
    n = len(next(v for k, v in data.items() if k not in ("labels", "texts")))
    return _batches(m, data, n)


def _softmax(y: np.ndarray) -> np.ndarray:
    e = np.exp(y - y.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def metrics(name: str, ys: list[np.ndarray], dense: list[np.ndarray], ev: dict) -> dict:
    import real_ppocr
    from deploy import task_metric

    err = float(np.mean([np.linalg.norm(y - d) / max(np.linalg.norm(d), 1e-12)
                         for y, d in zip(ys, dense)]))
    agree = float(np.mean(np.concatenate([(y.argmax(-1) == d.argmax(-1)).ravel()
                                          for y, d in zip(ys, dense)])))
    out = {"error": err, "agree": agree, "kl": None}
    probs = name in ("ppocr_cls", "lcnet_orient")  # their outputs are softmax already
    if name in ("efficientnet_lite0", "ppocr_cls", "lcnet_orient"):
        p = [d if probs else _softmax(d) for d in dense]
        q = [y if probs else _softmax(y) for y in ys]
        out["kl"] = float(np.mean(np.concatenate([
            (a * (np.log(a + 1e-12) - np.log(b + 1e-12))).sum(-1) for a, b in zip(p, q)])))
    if name in ("ppocr_cls", "lcnet_orient"):
        pred = np.concatenate([y.argmax(-1) for y in ys])
        out["task"] = float(np.mean(pred == ev["labels"]))
    elif name in ("ppocr_rec", "ppocr6_rec"):
        cs = json.loads((ROOT / R / f"{name.split('_')[0]}_charset.json").read_text())
        got = real_ppocr.ctc(ys, cs)
        out["task"] = float(np.mean([g.lower() == str(t).lower()
                                     for g, t in zip(got, ev["texts"])]))
    elif name in ("ppocr_det", "ppocr6_det"):
        out["task"] = real_ppocr.map_f1(dense, ys)
    elif name in ("common", "common_det", "minilm"):
        out["task"] = task_metric(name, ys, dense, ev)
    else:
        out["task"] = agree
    return out


def run_one(name: str, run: str, opts: dict, dense: list[np.ndarray], feeds: list[dict],
            ev: dict, work: Path, keep: Path | None = None) -> dict:
    from deploy import outputs

    prefix, options = MODELS[name][0], opts
    out = str(work / f"{name}.{run.replace(' ', '_').replace(':', '')}.onnx")
    job = {"model": str(ROOT / f"{prefix}.onnx"), "calib": str(ROOT / f"{prefix}.calib.npz"),
           "out": out, "options": options}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)],
                       capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t
    if p.returncode != 0:
        return {"model": name, "run": run, "options": options, "failed":
                (p.stderr.strip().splitlines() or ["?"])[-1], "wall_s": wall}
    info = json.loads(p.stdout.strip().splitlines()[-1])
    ys = outputs(out, feeds)
    scores = metrics(name, ys, dense, ev)
    if name == "basicpitch":  # note-frame F1 against dense (output 1; real_pitch.py)
        from deploy import all_outputs
        from real_pitch import note_f1
        scores["task"] = note_f1(all_outputs(job["model"], feeds), all_outputs(out, feeds))
    if keep is None:
        os.remove(out)
    else:  # for a paired evaluation on other eval sets (bench/real_paired.py)
        keep.mkdir(parents=True, exist_ok=True)
        os.replace(out, keep / Path(out).name)
    return {"model": name, "run": run, "options": options, "convert_s": info["seconds"],
            "peak_mb": info["peak_mb"], "methods_used": info["methods_used"],
            "cpu_s": info.get("cpu_s"), "stages": info.get("stages"), "load": info.get("load"),
            "layers": info["layers"], "warnings": info["warnings"], "grouped": info["grouped"],
            **scores}


def table(rows: list[dict]) -> str:
    lines = ["| model | run | method | task | agree | KL | output error | time s | peak MB |",
             "|" + "---|" * 9]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['model']} | {r['run']} | {r['options'].get('method', '')} "
                         f"| failed: {r['failed'][:60]} | | | | {r['wall_s']:.0f} | |")
            continue
        kl = "" if r.get("kl") is None else f"{r['kl']:.4f}"
        sec = "" if r.get("convert_s") is None else f"{r['convert_s']:.0f}"
        mb = "" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"
        run = r["run"]  # a grouped run says on how many layers the groups applied
        if r.get("grouped") is not None:
            run += f" (groups on {r['grouped']}/{len(r['layers'])} layers)"
        lines.append(f"| {r['model']} | {run} | {r['options'].get('method', '')} "
                     f"| {100 * r['task']:.2f} | {100 * r['agree']:.2f} | {kl} "
                     f"| {r['error']:.4f} | {sec} | {mb} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--models", default=",".join(DEFAULT),
                    help=f"also: {', '.join(EXTRA)} (output error only)")
    ap.add_argument("--runs", default=",".join(RUNS))
    ap.add_argument("--method-prune", default=None, choices=["obc", "gptq"],
                    help="the pruning method of every model (default: per model)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/real_matrix.jsonl"))
    ap.add_argument("--table", action="store_true", help="only print the table of --out")
    ap.add_argument("--eval-file", action="append", default=[], metavar="MODEL=PATH",
                    help="another eval set for MODEL (e.g. more text lines: the task metric's "
                         "sampling error on 200 lines is ~3 points)")
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="keep the compressed models in DIR (MODEL.RUN.onnx) instead of "
                         "deleting them")
    a = ap.parse_args()
    if a.child:
        return child(a.child)
    out = Path(a.out)
    done = [json.loads(x) for x in out.read_text().splitlines()] if out.is_file() else []
    if a.table:
        return print(table(done))
    from deploy import outputs

    out.parent.mkdir(parents=True, exist_ok=True)
    have = {(r["model"], r["run"], r["options"].get("method")) for r in done
            if "failed" not in r}  # a failed run is tried again (after a fix, say)
    with tempfile.TemporaryDirectory(prefix="real-matrix-") as tmp:
        for name in a.models.split(","):
            prefix, method = MODELS[name]
            method = a.method_prune or method
            if not (ROOT / f"{prefix}.onnx").is_file():
                print(f"skipping {name}: {prefix}.onnx is missing (bench/setup_models.py)")
                continue
            evals = dict(x.split("=", 1) for x in a.eval_file)
            ev = dict(np.load(evals.get(name, ROOT / f"{prefix}.eval.npz")))
            feeds = _feeds(str(ROOT / f"{prefix}.onnx"), ev)
            dense = outputs(str(ROOT / f"{prefix}.onnx"), feeds)
            for run in a.runs.split(","):
                opts = run_options(run)
                opts["method"] = opts.get("method", method)
                if (name, run, opts["method"]) in have:
                    continue
                r = run_one(name, run, opts, dense, feeds, ev, Path(tmp),
                            Path(a.keep) if a.keep else None)
                with out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                print(table([r]).splitlines()[-1], flush=True)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    print(table(rows))


if __name__ == "__main__":
    main()
