"""Deployed size, onnxruntime CPU latency and fidelity of W8A8 models, per export target.

    python bench/make_synthetic.py && python bench/setup_models.py   # optional models
    python bench/deploy.py [--models digits_cnn,digits_vit,ocr_like,common,common_det]
                           [--eval common_det=bench/results/detgt/common_det.eval_gt.npz]
                           [--runs 20] [--quick] [--method rtn] [--act-types u8,s8]
                           [--latency-batch 8] [--int8-stem] [--int8-highres]
                           [--runtimes tensorrt,onnxruntime] [--sparsity 0.5] [--dynamic]
                           [--smooth-rows] [--out bench/results/deploy.json]

Rows per model: fp32 (the dense model); W8A8 with each export target (`--runtime tensorrt`
and `--runtime onnxruntime`, the default method: at 8 bits each layer keeps the better of
GPTQ and RTN on the H-aware grid, solvers/choose.py; `method` counts what each layer kept);
`--sparsity S`: those rows pruned too ("50% + W8A8 onnxruntime"); and onnxruntime's own
`quantize_static` (QDQ, per channel, MinMax, uint8 activations / int8
weights, the same calibration samples; models below opset 13 are converted to 13 first, as
per-channel QDQ needs) as the reference; `--dynamic`: also its `quantize_dynamic` (int8
weights per channel, activations quantized per run; its advice for transformers).
`seconds`: conversion wall time of each row (ours: the whole convert() call with its
verification; quantize_static: its call), in one run;
`cpu_s` the CPU time of the same calls (all threads: steadier on a shared machine).

Columns: file size; latency = median of --runs rounds per model, the models of one row set
run alternately in the same process (so the ratios to fp32 compare like with like), each
round a block of back-to-back runs of about 20 ms per model (its per-run mean; at least one
run), with intra_op_num_threads=1 and with all cores; "switching": 1 thread, one run per
round, each right after another model's (until 2026-12-06 the only figure: a few-ms model
pays about 0.3 ms a run for the switch, which its ratio to fp32 shows; `min_1t` in the
JSON: the fastest block); output error = mean over the eval samples of ||y - y_dense|| /
||y_dense|| (first output); agreement = top-1 (argmax over the last axis) agreement with
dense; the task metric: accuracy on the labels (digits), text accuracy of the CTC-decoded
recognizer output on the rendered captchas (common), box F1 against the dense detector's
boxes (score > 0.5, IoU > 0.5; common_det; yolov8n and picodet_layout: against the dense
model's detections decoded as their wheels decode them, bench/real_detect.py, and `det_ap`
the AP50 of theirs down to score 0.05 with the dense ones as the truth) and, for the
detector, the output error on the anchors that matter ("fg error": anchors whose dense
score obj * cls > 0.01, about 1% of them; the whole-output error is dominated by the box
regressions of background anchors, outputs no loss trained and that the decoder drops);
weights-only error = the output error of the dense model with the row's dequantized int8
weights and float activations (the weights' own share; on the detector the W8A8 whole-
output error is dominated by the activation quantization and swings with tiny changes of
either side, see bench/w8a8_draws.py); integer = quantized layers that onnxruntime runs on
integer kernels (the run's fusion check). Every run uses --holdout 0 (all calibration
samples fit, for ours and quantize_static alike) and is evaluated on a separate eval set.
Writes bench/results/deploy.json and prints a markdown table.

The detector against ground truth: `--eval common_det=FILE` with an eval set that has the
drawn characters' boxes (`python bench/setup_models.py --models det_eval --out DIR` writes
DIR/common_det.eval_gt.npz, 200 scenes) adds a table of box F1 against them (ddddocr's own
decoding, score > 0.1; bench/det_metric.py), recall, precision, and per-image paired
bootstrap 95% intervals of each row's F1 minus fp32's and minus quantize_static's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnx_obc import convert
from onnx_obc.fidelity import is_logits

sys.path.insert(0, str(ROOT / "bench"))
import det_metric as dm  # noqa: E402
from qs_static import _batches, _inputs, quantize_static  # noqa: E402,F401

MODELS = {  # name -> (model, calib, eval, method)
    "digits_cnn": ("models/digits_cnn.onnx", "models/digits_cnn.calib.npz",
                   "models/digits_cnn.eval.npz", "obc"),
    "digits_vit": ("models/digits_vit.onnx", "models/digits_vit.calib.npz",
                   "models/digits_vit.eval.npz", "obc"),
    "ocr_like": ("bench/synthetic/ocr_like.onnx", "bench/synthetic/ocr_like.calib.npz",
                 "bench/synthetic/ocr_like.eval.npz", "obc"),
    "common": ("bench/real/common.onnx", "bench/real/common.calib.npz",
               "bench/real/common.eval.npz", "obc"),
    "common_det": ("bench/real/common_det.onnx", "bench/real/common_det.calib.npz",
                   "bench/real/common_det.eval.npz", "obc"),
}
for _n in ("ppocr_rec", "ppocr6_rec", "ppocr_det", "ppocr6_det", "ppocr_cls",  # real_matrix's
           "efficientnet_lite0",
           "yolov8n", "picodet_layout",  # bench/real_detect.py: output error only
           "lcnet_orient",  # bench/real_detect.py: orientation accuracy (eval labels)
           "magika",  # bench/real_magika.py: top-1 agreement (file types)
           "oww_embed",  # bench/real_oww.py: output error only (speech embedding)
           "basicpitch",  # bench/real_pitch.py: note-frame F1 against the dense model's
           "dnsmos",  # bench/real_dnsmos.py: output error only (three MOS scores)
           "minilm"):  # bench/real_minilm.py: retrieval recall@1 (a sentence embedder)
    MODELS[_n] = (f"bench/real/{_n}.onnx", f"bench/real/{_n}.calib.npz",
                  f"bench/real/{_n}.eval.npz", "obc")


def _opts(threads: int) -> ort.SessionOptions:
    o = ort.SessionOptions()
    o.log_severity_level = 3
    o.intra_op_num_threads = threads
    return o


def _session(path: str, threads: int = 0) -> ort.InferenceSession:
    return ort.InferenceSession(path, _opts(threads), providers=["CPUExecutionProvider"])


def outputs(path: str, feeds: list[dict]) -> list[np.ndarray]:
    s = _session(path)
    return [s.run(None, f)[0] for f in feeds]


def all_outputs(path: str, feeds: list[dict]) -> list[list[np.ndarray]]:
    s = _session(path)
    return [s.run(None, f) for f in feeds]


BLOCK_S = 0.02  # a round runs each model back to back for about this long (at least once)


def latency(paths: dict[str, str], feed: dict, runs: int, threads: int, block: bool = True
            ) -> tuple[dict[str, float], dict[str, float]]:
    """(median, min) ms per model over `runs` rounds, the models in alternation. `block`:
    in each round a model runs back to back for about BLOCK_S (its per-run mean counts),
    as a deployed model runs and as onnxruntime_perf_test times it; else one run per round,
    each right after another model's (a few-ms model then pays the switch: PP-LCNet, fp32
    and W8A8 alike, about 0.3 ms a run more, so its ratio reads 0.705 against 0.651)."""
    sessions = {k: _session(p, threads) for k, p in paths.items()}
    n = {}
    for k, s in sessions.items():
        for _ in range(3):
            s.run(None, feed)
        t = time.perf_counter()
        s.run(None, feed)
        n[k] = max(1, round(BLOCK_S / max(time.perf_counter() - t, 1e-6))) if block else 1
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t = time.perf_counter()
            for _ in range(n[k]):
                s.run(None, feed)
            times[k].append((time.perf_counter() - t) / n[k])
    return ({k: 1e3 * float(np.median(v)) for k, v in times.items()},
            {k: 1e3 * float(np.min(v)) for k, v in times.items()})


def optimized_ops(path: str) -> dict[str, int]:
    """Op types of the graph onnxruntime runs (ORT_ENABLE_ALL, 1 thread), with counts."""
    with tempfile.TemporaryDirectory(prefix="deploy-opt-") as tmp:
        o = _opts(1)
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        o.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
        g = onnx.load(o.optimized_model_filepath).graph
    ops: dict[str, int] = {}
    for n in g.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return dict(sorted(ops.items(), key=lambda kv: -kv[1]))


def weights_only(qpath: str, fpath: str, out: str) -> str | None:
    """The dense model with the quantized file's weights (every constant DequantizeLinear
    input of a Conv / Gemm / MatMul, dequantized, into the same-named float node's
    initializer) and float activations: the weights' own share of the W8A8 error. None where
    no node name matches (quantize_static's on paddle2onnx graphs): the dense model unchanged
    would read as a 0 error; None too where the fold took ops into the weights."""
    from onnx import numpy_helper as nh
    q, f = onnx.load(qpath), onnx.load(fpath)
    qinit = {t.name: nh.to_array(t) for t in q.graph.initializer}
    prod = {o: n for n in q.graph.node for o in n.output}
    finit = {t.name: t for t in f.graph.initializer}
    fnodes = {n.name: n for n in f.graph.node if n.name}
    done = 0
    for n in q.graph.node:
        fn = fnodes.get(n.name)
        if n.op_type not in ("Conv", "Gemm", "MatMul") or fn is None:
            continue
        for slot, (qi, fi) in enumerate(zip(n.input, fn.input)):
            dq = prod.get(qi)
            if (slot == 0 or fi not in finit or dq is None or dq.op_type != "DequantizeLinear"
                    or not all(i in qinit for i in dq.input if i)):
                continue
            x, s = qinit[dq.input[0]].astype(np.float64), qinit[dq.input[1]]
            z = qinit[dq.input[2]] if len(dq.input) > 2 and dq.input[2] else 0
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            shape = [1] * x.ndim
            if np.ndim(s):  # per channel (a 1-D tensor, e.g. a bias: elementwise)
                shape[axis if x.ndim > 1 else 0] = -1
            w = (x - np.reshape(z, shape)) * np.reshape(s, shape)
            w0 = nh.to_array(finit[fi]).astype(np.float64)
            if slot == 1 and (w.shape != w0.shape
                              or np.linalg.norm(w - w0) > 0.5 * np.linalg.norm(w0)):
                print(f"  weights-only: {qpath}'s {n.name} holds other weights than the dense "
                      "model's (the fold took ops into them; the dense graph would apply "
                      "them again)")
                return None
            finit[fi].CopyFrom(nh.from_array(w.astype(np.float32), fi))
            done += 1
    if not done:
        print(f"  weights-only: no layer of {qpath} matched the dense model's node names")
        return None
    onnx.save(f, out)
    return out


def fg_error(ys: list[np.ndarray], dense: list[np.ndarray], thr: float = 0.01) -> float:
    """Detector: ||y - y_dense|| / ||y_dense|| over the anchors with dense obj * cls > thr."""
    y, d = np.concatenate([a[0] for a in ys]), np.concatenate([a[0] for a in dense])
    keep = d[:, 4] * d[:, 5] > thr
    return float(np.linalg.norm((y - d)[keep]) / max(np.linalg.norm(d[keep]), 1e-12))


def ctc_texts(ys: list[np.ndarray], charset: list[str]) -> list[str]:
    out = []
    for y in ys:  # [T, 1, C] (time-major), one sample
        idx = y.reshape(y.shape[0], -1).argmax(-1)
        chars, prev = [], -1
        for k in idx:
            if k != prev and k != 0:
                chars.append(charset[k])
            prev = k
        out.append("".join(chars).lower())
    return out


def box_f1(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Box F1 of got's boxes against ref's (raw outputs of two detectors; score > 0.5)."""
    return dm.f1(dm.counts([dm.boxes(y) for y in ref], [dm.boxes(y) for y in got]))


def gt_counts(ys: list[np.ndarray], ev: dict, thr: float = dm.GT_SCORE) -> np.ndarray:
    """Detector: per-image (TP, #GT, #predicted) against the eval set's drawn boxes."""
    return dm.counts(dm.gt_boxes(ev["boxes"], len(ys)), [dm.boxes(y, thr) for y in ys])


def task_metric(name: str, ys: list[np.ndarray], dense: list[np.ndarray], ev: dict,
                path: str | None = None, dense_path: str | None = None,
                feeds: list[dict] | None = None) -> float | None:
    if name in ("ppocr_rec", "ppocr6_rec", "ppocr_det", "ppocr6_det", "ppocr_cls",
                "efficientnet_lite0"):
        from real_matrix import metrics  # text / map F1 / label accuracy / top-1 agreement
        return metrics(name, ys, dense, ev)["task"]
    if "labels" in ev:
        pred = np.concatenate([y.argmax(-1) for y in ys])
        return float(np.mean(pred == ev["labels"][:len(pred)]))
    if "texts" in ev:
        cs = json.loads((ROOT / "bench/real/charset.json").read_text())
        got = ctc_texts(ys, cs)
        return float(np.mean([a == b for a, b in zip(got, ev["texts"])]))
    if name == "common_det":
        return box_f1(dense, ys)
    if name == "basicpitch" and path is not None:  # the note posteriors, output 1
        import real_pitch
        return real_pitch.note_f1(all_outputs(dense_path, feeds), all_outputs(path, feeds))
    if name == "minilm":  # queries then their passages: recall@1 of the retrieval
        import real_minilm
        return real_minilm.recall_at_1(np.concatenate(ys))
    if name in ("yolov8n", "picodet_layout") and path is not None:  # every output decoded
        return detections(name, path, dense_path, feeds)["f1"]
    return None


def detections(name: str, path: str, dense_path: str, feeds: list[dict]) -> dict[str, float]:
    """Box F1 and AP50 against the dense model's detections (bench/real_detect.py)."""
    import real_detect
    return real_detect.against_dense(name, all_outputs(dense_path, feeds),
                                     all_outputs(path, feeds))


def run_model(name: str, runs: int, work: Path, quick: bool, act_types: list[str],
              method_override: str | None = None,
              runtimes: tuple[str, ...] = ("tensorrt", "onnxruntime"),
              eval_path: str | None = None, lat_batch: int = 1,
              int8_stem: bool = False, int8_highres: bool = False,
              sparsity: float | None = None, dynamic: bool = False,
              smooth_rows: bool = False) -> list[dict]:
    mpath, cpath, epath = (str(ROOT / p) for p in MODELS[name][:3])
    epath = eval_path or epath
    method = MODELS[name][3]
    if quick or method_override:
        method = "rtn" if quick else method_override
    model = onnx.load(mpath)
    calib = dict(np.load(cpath))
    if not Path(epath).is_file() and name == "ocr_like":
        sys.path.insert(0, str(ROOT / "bench"))
        from make_synthetic import smooth_images
        np.savez(epath, image=smooth_images(48, 2))
    ev = dict(np.load(epath, allow_pickle=False))
    n_eval = len(next(iter(v for k, v in ev.items() if k not in ("labels", "texts"))))
    feeds = _batches(model, ev, n_eval)
    paths = {"fp32": mpath}
    info: dict[str, dict] = {"fp32": {"integer": None}}
    floats = [(True, True)] + ([(True, False)] if int8_highres else []) + (
        [(False, False)] if int8_stem else [])  # (float_stem, float_highres) rows
    smooths = [None, False] if smooth_rows else [None]  # None: the run's default
    targets = ([("tensorrt", "u8", True, True, sm) for sm in ([None, True] if smooth_rows
                                                             else [None])]
               if "tensorrt" in runtimes else []) + (
        [("onnxruntime", a, stem, hires, sm) for a in act_types for stem, hires in floats
         for sm in smooths] if "onnxruntime" in runtimes else [])
    for runtime, act_type, float_stem, float_highres, smooth in targets:
        key = (f"{sparsity:.0%} + " if sparsity else "") + f"W8A8 {runtime}" + (
            f" {act_type}" if runtime == "onnxruntime" and (
            len(act_types) > 1 or act_type != "u8") else "") + (
            "" if float_highres else " int8-highres" if float_stem else " int8-stem") + (
            "" if smooth is None else " smooth" if smooth else " no-smooth")
        out = str(work / f"{name}.{runtime}.{act_type}.{float_stem}.{float_highres}.{smooth}"
                  ".onnx")
        t, c = time.perf_counter(), time.process_time()
        r = convert(mpath, out, calib=cpath, bits=8, act_bits=8, method=method,
                    runtime=runtime, act_type=act_type, holdout=0.0, float_stem=float_stem,
                    float_highres=float_highres, compare_baseline=False, progress=False,
                    smooth=smooth, **({"sparsity": sparsity} if sparsity else {}))
        f = r.report.fusion
        used: dict[str, int] = {}
        for row in r.report.layers:
            used[row.method_used] = used.get(row.method_used, 0) + 1
        info[key] = {"integer": f"{f.get('integer', 0)}/{f.get('layers', 0)}",
                     "unfused": [u["why"] for u in f.get("unfused", [])],
                     "kept_float": [x.node for x in r.report.skipped if "kept float" in x.reason]
                     + [row.name for row in r.report.layers if row.bits is None],  # pruned
                     "seconds": time.perf_counter() - t, "cpu_s": time.process_time() - c,
                     "method": method,
                     "method_used": used, "stage_seconds": dict(r.report.seconds),
                     "correction": r.report.correction.get("decision"),
                     "notes": list(r.report.notes)}
        paths[key] = out
        print(f"  {name} {key}: {info[key]['integer']} on integer kernels "
              f"({info[key]['seconds']:.0f} s); {info[key]['correction']}", flush=True)
    out = str(work / f"{name}.quantize_static.onnx")
    t, c = time.perf_counter(), time.process_time()
    try:  # Basic Pitch: onnxruntime cannot load quantize_static's output (a Transpose's
        quantize_static(mpath, out, calib, model)  # perm on a shared 1-D bias)
        _session(out)
        paths["quantize_static"] = out
        info["quantize_static"] = {"integer": None, "seconds": time.perf_counter() - t,
                                   "cpu_s": time.process_time() - c}
        print(f"  {name} quantize_static ({info['quantize_static']['seconds']:.0f} s)",
              flush=True)
    except Exception as exc:  # onnxruntime's errors have no common base class
        print(f"  {name} quantize_static FAILED: {str(exc).splitlines()[0][:300]}", flush=True)
    if dynamic:  # onnxruntime's advice for transformers: int8 weights, activations per run
        from onnxruntime.quantization import QuantType, quantize_dynamic
        out = str(work / f"{name}.quantize_dynamic.onnx")
        t, c = time.perf_counter(), time.process_time()
        quantize_dynamic(mpath, out, weight_type=QuantType.QInt8, per_channel=True)
        paths["quantize_dynamic"] = out
        info["quantize_dynamic"] = {"integer": None, "seconds": time.perf_counter() - t,
                                    "cpu_s": time.process_time() - c}
    dense = outputs(mpath, feeds)
    rows = []
    lat_feed = {k: v[:lat_batch] for k, v in feeds[0].items()}  # fixed-batch models: 1
    (lat1, min1) = latency(paths, lat_feed, runs, 1)
    (latn, _) = latency(paths, lat_feed, runs, 0)
    (lats, _) = latency(paths, lat_feed, runs, 1, block=False)
    for key, p in paths.items():
        ys = dense if key == "fp32" else outputs(p, feeds)
        err = _rel(ys, dense)
        wpath = None if key == "fp32" else weights_only(
            p, mpath, str(work / f"{name}.{key.replace(' ', '_')}.weights.onnx"))
        w_err = None if wpath is None else _rel(outputs(wpath, feeds), dense)
        agree = float(np.mean(np.concatenate([(y.argmax(-1) == d.argmax(-1)).ravel()
                                              for y, d in zip(ys, dense)]))) if (
            is_logits(dense[0])) else None  # not for an embedding (fidelity.is_logits)
        rows.append({"model": name, "format": key, "size_mb": os.path.getsize(p) / 1e6,
                     "ms_1t": lat1[key], "ms_all": latn[key],
                     "ratio_1t": lat1[key] / lat1["fp32"], "ratio_all": latn[key] / latn["fp32"],
                     "min_1t": min1[key], "ratio_min_1t": min1[key] / min1["fp32"],
                     "ms_1t_switch": lats[key], "ratio_1t_switch": lats[key] / lats["fp32"],
                     "error": err, "weights_error": w_err, "agreement": agree,
                     "task": task_metric(name, ys, dense, ev, p, mpath, feeds),
                     "det_ap": detections(name, p, mpath, feeds)["ap"] if name in (
                         "yolov8n", "picodet_layout") else None,
                     "fg_error": fg_error(ys, dense) if name == "common_det" else None,
                     **(_gt(ys, ev) if "boxes" in ev else {}),
                     "ops": optimized_ops(p), **info[key]})
    if "boxes" in ev:
        _paired(rows)
    return rows


def _gt(ys: list[np.ndarray], ev: dict) -> dict:
    c, c5 = gt_counts(ys, ev), gt_counts(ys, ev, 0.5)
    gts = dm.gt_boxes(ev["boxes"], len(ys))
    rec = [dm.ap_records(g, *dm.scored(y, dm.AP_SCORE)) for g, y in zip(gts, ys)]
    return {"gt_f1": dm.f1(c), "gt_f1_05": dm.f1(c5), "gt_counts": c.tolist(),
            "gt_counts_05": c5.tolist(), "gt_ap": dm.average_precision(rec, len(ev["boxes"])),
            "gt_ap_records": [r.tolist() for r in rec],
            "gt_recall": float(c[:, 0].sum() / max(c[:, 1].sum(), 1)),
            "gt_precision": float(c[:, 0].sum() / max(c[:, 2].sum(), 1))}


def _paired(rows: list[dict]) -> None:
    """Per-image paired bootstraps against the drawn boxes (F1 at both score thresholds,
    AP): each row minus fp32 and minus quantize_static."""
    by = {r["format"]: r for r in rows}
    n_gt = np.array([c[1] for c in rows[0]["gt_counts"]])
    for r in rows:
        for ref, tag in (("fp32", "fp32"), ("quantize_static", "qs")):
            if r["format"] == ref or ref not in by:
                continue
            o = by[ref]
            r[f"gt_vs_{tag}"] = dm.bootstrap_diff(np.array(r["gt_counts"]),
                                                  np.array(o["gt_counts"]))
            r[f"gt05_vs_{tag}"] = dm.bootstrap_diff(np.array(r["gt_counts_05"]),
                                                    np.array(o["gt_counts_05"]))
            r[f"ap_vs_{tag}"] = dm.bootstrap_ap_diff(
                [np.array(x).reshape(-1, 2) for x in r["gt_ap_records"]],
                [np.array(x).reshape(-1, 2) for x in o["gt_ap_records"]], n_gt)


def _rel(ys: list[np.ndarray], dense: list[np.ndarray]) -> float:
    return float(np.mean([np.linalg.norm(y - d) / max(np.linalg.norm(d), 1e-12)
                          for y, d in zip(ys, dense)]))


def table(rows: list[dict]) -> str:
    head = ("| model | format | size MB | ms 1 thread | × fp32 | switching | ms all | × fp32 "
            "| output error | weights-only error | fg error | top-1 agree | task metric "
            "| integer layers | convert s | convert CPU s |")
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        task = "" if r["task"] is None else f"{100 * r['task']:.2f}"
        fg = "" if r.get("fg_error") is None else f"{r['fg_error']:.4f}"
        we = "" if r.get("weights_error") is None else f"{r['weights_error']:.4f}"
        sec = "" if r.get("seconds") is None else f"{r['seconds']:.1f}"
        cpu = "" if r.get("cpu_s") is None else f"{r['cpu_s']:.1f}"
        agree = "" if r["agreement"] is None else f"{100 * r['agreement']:.2f}"
        lines.append(f"| {r['model']} | {r['format']} | {r['size_mb']:.2f} | {r['ms_1t']:.2f} "
                     f"| {r['ratio_1t']:.3f} | {r['ratio_1t_switch']:.3f} | {r['ms_all']:.2f} "
                     f"| {r['ratio_all']:.3f} "
                     f"| {r['error']:.4f} | {we} | {fg} | {agree} | {task} "
                     f"| {r['integer'] or ''} | {sec} | {cpu} |")
    lines.append("")
    if any("gt_f1" in r for r in rows):
        lines += gt_table([r for r in rows if "gt_f1" in r]) + [""]
    fused = ("QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm", "QLinearAdd",
             "QLinearMul", "QLinearConcat", "QLinearSigmoid", "QLinearGlobalAveragePool",
             "QLinearAveragePool", "QLinearLeakyRelu", "QuantizeLinear", "DequantizeLinear",
             "Conv", "MatMul", "FusedConv", "FusedMatMul", "Gemm")
    lines.append("| model | format | " + " | ".join(fused) + " |")
    lines.append("|" + "---|" * (len(fused) + 2))
    for r in rows:
        ops = r.get("ops", {})
        lines.append(f"| {r['model']} | {r['format']} | "
                     + " | ".join(str(ops.get(k, 0)) for k in fused) + " |")
    return "\n".join(lines)


def gt_table(rows: list[dict]) -> list[str]:
    """Detector rows against the drawn characters: F1 (score > 0.1, ddddocr's threshold;
    and > 0.5), recall, precision, AP at IoU 0.5; each with the paired bootstrap 95%
    interval of its difference to fp32 and to quantize_static."""
    def ci(r: dict, key: str) -> str:
        d = r.get(key)
        return "" if d is None else f"{100 * d[0]:+.2f} [{100 * d[1]:+.2f}, {100 * d[2]:+.2f}]"

    lines = ["| model | format | F1 vs GT | − fp32 | − qs | F1 (score > 0.5) | − fp32 | − qs "
             "| AP50 | − fp32 | − qs | recall | precision | F1 vs dense | fg error |",
             "|" + "---|" * 15]
    for r in rows:
        fg = "" if r.get("fg_error") is None else f"{r['fg_error']:.4f}"
        lines.append(f"| {r['model']} | {r['format']} | {100 * r['gt_f1']:.2f} "
                     f"| {ci(r, 'gt_vs_fp32')} | {ci(r, 'gt_vs_qs')} | {100 * r['gt_f1_05']:.2f} "
                     f"| {ci(r, 'gt05_vs_fp32')} | {ci(r, 'gt05_vs_qs')} | {100 * r['gt_ap']:.2f} "
                     f"| {ci(r, 'ap_vs_fp32')} | {ci(r, 'ap_vs_qs')} "
                     f"| {100 * r['gt_recall']:.2f} | {100 * r['gt_precision']:.2f} "
                     f"| {100 * r['task']:.2f} | {fg} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="RTN weights instead of OBQ/GPTQ")
    ap.add_argument("--method", default=None, choices=["obc", "gptq", "rtn"],
                    help="weights of every model by this method (default: per model)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/deploy.json"))
    ap.add_argument("--runtimes", default="tensorrt,onnxruntime",
                    help="export targets of the W8A8 rows (onnxruntime: its row alone)")
    ap.add_argument("--act-types", default="u8",
                    help="activation types of the onnxruntime target rows (u8,s8: both)")
    ap.add_argument("--eval", action="append", default=[], metavar="MODEL=NPZ",
                    help="another eval set for a model (the detector's with `boxes`: F1 "
                         "against the drawn characters, bench/setup_models.py det_eval)")
    ap.add_argument("--int8-stem", action="store_true",
                    help="also an onnxruntime row with every layer quantized (--int8-stem "
                         "--int8-highres; default: both measured, export/ortstem.py)")
    ap.add_argument("--int8-highres", action="store_true",
                    help="also an onnxruntime row with the high-resolution convs quantized "
                         "(--int8-highres; default: measured, export/orthires.py)")
    ap.add_argument("--latency-batch", type=int, default=1,
                    help="samples per latency run of models with a dynamic batch")
    ap.add_argument("--sparsity", type=float, default=None,
                    help="the W8A8 rows pruned too, at this sparsity (--sparsity's default "
                         "DP; quantize_static's row stays W8A8 alone)")
    ap.add_argument("--dynamic", action="store_true",
                    help="also onnxruntime's quantize_dynamic (int8 weights per channel, "
                         "activations quantized per run): its advice for transformers")
    ap.add_argument("--smooth-rows", action="store_true",
                    help="also the onnxruntime rows with --no-smooth and a tensorrt row with "
                         "--smooth (smooth.py: by default on for the onnxruntime target only)")
    args = ap.parse_args()
    evals = dict(e.split("=", 1) for e in args.eval)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="deploy-") as tmp:
        for name in args.models.split(","):
            if not (ROOT / MODELS[name][0]).is_file():
                print(f"skipping {name}: {MODELS[name][0]} is missing (bench/make_synthetic.py"
                      " or bench/setup_models.py writes it)")
                continue
            print(f"{name} ...", flush=True)
            rows += run_model(name, args.runs, Path(tmp), args.quick,
                              args.act_types.split(","), args.method,
                              tuple(args.runtimes.split(",")), evals.get(name),
                              args.latency_batch, args.int8_stem, args.int8_highres,
                              args.sparsity, args.dynamic, args.smooth_rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for r in rows:
        r.pop("gt_ap_records", None)  # per-detection lists: only for the intervals
    out.write_text(json.dumps({"onnxruntime": ort.__version__, "cpus": os.cpu_count(),
                               "rows": rows}, indent=2))
    print(table(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
