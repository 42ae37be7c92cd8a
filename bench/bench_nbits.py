"""4-bit MatMul weights deployed on onnxruntime CPU: MatMulNBits vs DequantizeLinear -> MatMul
vs the fp32 model (export/nbits.py).

    python bench/bench_nbits.py [--models digits_vit,ocr_like] [--runs 30] [--batch 32]

Rows per model: fp32 (dense); W4 as DQ -> MatMul (`--runtime onnxruntime
--no-matmul-nbits`); W4 as MatMulNBits with accuracy_level 4 (int8 activations per block)
and 0 (float activations, the default); each per output channel and with --group-size 32 (the same solved
weights within a pair: one solve per grid, exported both ways). OBQ on digits_vit, GPTQ on the
2.6 M-parameter synthetic ocr_like model (`python bench/make_synthetic.py`) and on the real
all-MiniLM-L6-v2 sentence embedder (`setup_models.py --models minilm`; its "accuracy" is
retrieval recall@1, its word-embedding table 4-bit GatherBlockQuantized); --holdout 0;
only the MatMul / Gemm layers are quantized (--op-types; 4-bit Conv weights were
DequantizeLinear, dequantized on every run, which would have hidden the MatMul difference;
since export/ortweights.py they are dequantized once at load: bench/w4_deploy.py).

Columns: whole file size and its ratio to fp32; the MatMul/Gemm weights written as
MatMulNBits (packed codes + scales + zero points) against their fp32 bytes; latency = median
of --runs runs of one batch, the models of a model's rows run alternately in one process,
intra_op_num_threads=1 and all cores (ORT_ENABLE_ALL), and the process CPU time of a 1-thread
run (steadier than wall time on a loaded machine); output error = mean over the eval
samples of ||y - y_fp32|| / ||y_fp32||; accuracy on the labels where the eval set has them.
Writes bench/results/nbits.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
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

MODELS = {"digits_vit": ("models/digits_vit.onnx", "models/digits_vit.calib.npz",
                         "models/digits_vit.eval.npz", "obc"),
          "ocr_like": ("bench/synthetic/ocr_like.onnx", "bench/synthetic/ocr_like.calib.npz",
                       "bench/synthetic/ocr_like.eval.npz", "gptq"),
          "minilm": ("bench/real/minilm.onnx", "bench/real/minilm.calib.npz",  # a real BERT:
                     "bench/real/minilm.eval.npz", "gptq")}  # bench/real_minilm.py


def variants(path: str, calib: str, method: str, tmp: Path, groups: list[int | None],
             op_types: tuple[str, ...]) -> dict[str, Path]:
    """name -> written model (convert is deterministic: the same weights in every export)."""
    out = {"fp32": ROOT / path}
    for tag, group in ((f" g{g}" if g else "", g) for g in groups):
        for name, opts in ((f"W4{tag} DQ+MatMul", {"matmul_nbits": False}),
                           (f"W4{tag} MatMulNBits acc4", {"accuracy_level": 4}),
                           (f"W4{tag} MatMulNBits acc0", {"accuracy_level": 0})):
            dst = tmp / (name.replace(" ", "_").replace("+", "") + ".onnx")
            convert(str(ROOT / path), dst, bits=4, group_size=group, method=method,
                    runtime="onnxruntime", calib=str(ROOT / calib), holdout=0.0,
                    op_types=op_types,
                    compare_baseline=False, progress=False, sequential=False,  # timed only
                    **opts)
            out[name] = dst
    return out


def nbits_bytes(model: onnx.ModelProto, dense: onnx.ModelProto) -> tuple[int, int]:
    """(bytes of the MatMulNBits weight inputs, fp32 bytes of the weights they replace)."""
    inits = {t.name: t for t in model.graph.initializer}
    packed = sum(len(inits[t].raw_data) for n in model.graph.node if n.op_type == "MatMulNBits"
                 for t in set(n.input[1:4]) if t in inits)
    names = {t[:-len("_nbits")] for t in inits if t.endswith("_nbits")}
    fp32 = sum(4 * int(np.prod(t.dims)) for t in dense.graph.initializer if t.name in names)
    return packed, fp32


def session(path: Path, threads: int) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.log_severity_level = 3
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def latency(paths: dict[str, Path], feed: dict, runs: int, threads: int,
            clock=time.perf_counter) -> dict[str, float]:
    """Median ms of `runs` runs per model, the models run alternately."""
    sess = {k: session(p, threads) for k, p in paths.items()}
    for s in sess.values():
        s.run(None, feed)
    times: dict[str, list[float]] = {k: [] for k in sess}
    for _ in range(runs):
        for k, s in sess.items():
            t = clock()
            s.run(None, feed)
            times[k].append(1e3 * (clock() - t))
    return {k: float(np.median(v)) for k, v in times.items()}


def fidelity(path: Path, dense: np.ndarray, data: dict, labels: np.ndarray | None,
             name: str = "") -> tuple[float, float | None]:
    s = session(path, 0)
    y = np.concatenate([s.run(None, {k: v[i:i + 50] for k, v in data.items()})[0]
                        for i in range(0, len(next(iter(data.values()))), 50)])
    n = len(y)
    err = np.linalg.norm((y - dense).reshape(n, -1), axis=1) / np.linalg.norm(
        dense.reshape(n, -1), axis=1)
    acc = None if labels is None else float((y.argmax(-1) == labels).mean())
    if name == "minilm":  # its task: retrieval recall@1 (queries, then their passages)
        sys.path.insert(0, str(ROOT / "bench"))
        from real_minilm import recall_at_1
        acc = recall_at_1(y)
    return float(err.mean()), acc


def bench(name: str, runs: int, batch: int, groups: list[int | None],
          op_types: tuple[str, ...]) -> list[dict]:
    path, calib, eval_path, method = MODELS[name]
    ev = dict(np.load(ROOT / eval_path))
    labels = ev.pop("labels", None)
    feed = {k: v[:batch] for k, v in ev.items()}
    dense_model = onnx.load(ROOT / path)
    with tempfile.TemporaryDirectory() as tmp:
        paths = variants(path, calib, method, Path(tmp), groups, op_types)
        lat1 = latency(paths, feed, runs, 1)
        latn = latency(paths, feed, runs, 0)
        cpu1 = latency(paths, feed, runs, 1, time.process_time)
        s = session(paths["fp32"], 0)
        dense = np.concatenate([s.run(None, {k: v[i:i + 50] for k, v in ev.items()})[0]
                                for i in range(0, len(next(iter(ev.values()))), 50)])
        rows = []
        size0 = paths["fp32"].stat().st_size
        for k, p in paths.items():
            m = onnx.load(p)
            packed, fp32 = nbits_bytes(m, dense_model)
            err, acc = fidelity(p, dense, ev, labels, name)
            rows.append({"model": name, "run": k, "bytes": p.stat().st_size,
                         "size_ratio": p.stat().st_size / size0,
                         "nbits_weight_ratio": packed / fp32 if fp32 else None,
                         "nbits_layers": sum(n.op_type == "MatMulNBits" for n in m.graph.node),
                         "ms_1thread": lat1[k], "ms_all": latn[k], "cpu_ms_1thread": cpu1[k],
                         "error": err,
                         "accuracy": acc})
    return rows


def table(rows: list[dict]) -> str:
    out = [("| model | run | file | × fp32 | MatMulNBits weights × fp32 | ms 1 thread | "
            "CPU ms 1 thread | ms all threads | output error | accuracy |"),
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        w = "-" if r["nbits_weight_ratio"] is None else \
            f"{r['nbits_weight_ratio']:.3f} ({r['nbits_layers']} nodes)"
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}"
        out.append(f"| {r['model']} | {r['run']} | {r['bytes'] / 1e6:.3f} MB | "
                   f"{r['size_ratio']:.3f} | {w} | {r['ms_1thread']:.3f} | {r['cpu_ms_1thread']:.3f} | "
                   f"{r['ms_all']:.3f} | "
                   f"{r['error']:.4f} | {acc} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="digits_vit")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--groups", default="none,32", help="group sizes (none: per channel)")
    ap.add_argument("--op-types", default="MatMul,Gemm",
                    help="layers quantized (add Conv to see the 4-bit Conv DQ cost too)")
    a = ap.parse_args()
    groups = [None if g == "none" else int(g) for g in a.groups.split(",")]
    ops = tuple(a.op_types.split(","))
    rows = [r for m in a.models.split(",") for r in bench(m, a.runs, a.batch, groups, ops)]
    (ROOT / "bench/results").mkdir(exist_ok=True)
    (ROOT / "bench/results/nbits.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
