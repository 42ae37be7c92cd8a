"""Benchmark quantization on every shipped model (prints figures; asserts nothing).

    python bench/bench_quant.py [--models digits_cnn digits_vit] [--device cpu] [--json out.json]

Sections (one summary table each): 1. weight-only OBQ / GPTQ (act_order) / RTN at 8, 4, 3
bits: eval accuracy, relative output error, per-layer loss ratio vs same-grid RTN (layers with
>= 64 inputs); 2. W8A8: ours vs onnxruntime quantize_static (QDQ, per-channel, MinMax, int8
weights and activations; activations asymmetric = ORT's default, and symmetric); 3. 4-bit
MatMul weight-only: ORT's MatMulNBitsQuantizer (RTN, symmetric, contrib op MatMulNBits, CPU/CUDA
EP only, not TensorRT; needs `pip install onnx-ir`) vs ours; 4. compound 50% + 8 bits vs the
report's magnitude+RTN model; 5. file sizes and weight payload; 6. ORT CPU latency.

Every method sees the same calibration samples: convert() keeps a holdout (default 20%, seed
0) out of its Hessians and activation ranges; ORT's calibration reader gets exactly the other
80%. Accuracy and output error are on models/<name>.eval.npz, relative to the fp32 model, with
ORT_ENABLE_ALL sessions as in the report.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx_obc import convert  # noqa: E402
from onnx_obc.calib import load_data  # noqa: E402
from onnx_obc.config import CompressConfig  # noqa: E402
from onnx_obc.verify import evaluate  # noqa: E402

BITS = (8, 4, 3)
METHODS = ("obc", "gptq", "rtn")
LABEL = {"obc": "OBQ", "gptq": "GPTQ-ao", "rtn": "RTN"}


class Reader(CalibrationDataReader):
    """The calibration samples convert() fits on, in batches of 32."""

    def __init__(self, data, batch: int = 32) -> None:
        self.feeds = [feed for _, feed in data.batches(batch)]
        self.i = 0

    def get_next(self):
        self.i += 1
        return self.feeds[self.i - 1] if self.i <= len(self.feeds) else None

    def rewind(self) -> None:
        self.i = 0


def opts(threads: int | None = None, level: str = "ALL") -> ort.SessionOptions:
    o = ort.SessionOptions()
    o.log_severity_level = 3
    o.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    if threads:
        o.intra_op_num_threads = threads
    return o


def fidelity(dense: Path, models: dict[str, Path], ev, level: str = "ALL"
             ) -> dict[str, tuple[float, float]]:
    """{name: (accuracy, rel. output error)} on the eval set, dense model as reference.
    level ALL: what the CPU EP runs (int8 kernels fused from QDQ); BASIC: the QDQ graph's
    own float math (no QDQ fusion)."""
    sess = {k: ort.InferenceSession(str(p), opts(level=level), providers=["CPUExecutionProvider"])
            for k, p in {"dense": dense, **models}.items()}
    f = evaluate(sess, ev, 32)
    return {k: (v.accuracy, max(v.rel_error.values())) for k, v in f.items()}


def latency_ms(path: Path, feed: dict, runs: int = 30, warm: int = 5) -> float:
    s = ort.InferenceSession(str(path), opts(2), providers=["CPUExecutionProvider"])
    for _ in range(warm):
        s.run(None, feed)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run(None, feed)
        t.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(t)


def payload_ratio(path: Path) -> tuple[float, int, int]:
    """(bytes of the *_quantized initializers / fp32 bytes of the same weights, both)."""
    q = f = 0
    for t in onnx.load(str(path)).graph.initializer:
        if t.name.endswith("_quantized"):
            q += len(onnx.numpy_helper.to_array(t).tobytes()) if not t.raw_data else len(
                t.raw_data)
            f += 4 * int(np.prod(t.dims))
    return (q / f if f else float("nan")), q, f


def stats(layers) -> tuple[float, float]:
    r = [x.ratio for x in layers if x.cols >= 64]
    return (max(r), statistics.median(r)) if r else (float("nan"), float("nan"))


def kb(p: Path) -> float:
    return os.path.getsize(p) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # ORT quantization tools log pre-processing advice
    names = args.models or sorted(p.name[:-5] for p in (ROOT / "models").glob("*.onnx"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-quant-"))
    cfg0 = CompressConfig.from_options(bits=8)
    out: dict = {"s1": [], "s2": [], "s3": [], "s4": [], "s5": [], "s6": [], "notes": []}
    per_layer: dict = {}
    t_all = time.perf_counter()
    for name in names:
        src, cal, evp = (ROOT / "models" / f"{name}{s}" for s in (".onnx", ".calib.npz",
                                                                   ".eval.npz"))
        proto = onnx.load(str(src))
        fit, _ = load_data(cal, proto).split(cfg0.holdout, cfg0.seed)
        ev = load_data(evp, proto)

        def run(tag: str, **kw):
            p = tmp / f"{name}.{tag}.onnx"
            t = time.perf_counter()
            res = convert(src, p, calib=cal, eval_data=evp, progress=False, device=args.device,
                          **{"sequential": False, **kw})  # the solvers compared one-shot
            return res.report, p, time.perf_counter() - t

        # 1. weight-only quantization
        paths = {}
        for b in BITS:
            for m in METHODS:
                rep, p, wall = run(f"{m}{b}", bits=b, method=m, act_order=(m == "gptq"))
                paths[m, b] = p
                e = rep.fidelity["eval"]
                hi, med = stats(rep.layers)
                out["s1"].append(dict(model=name, bits=b, method=m, dense=e["dense"].accuracy,
                                      acc=e["compressed"].accuracy,
                                      err=max(e["compressed"].rel_error.values()),
                                      worst=hi, median=med, wall=wall))
                if b == 4:
                    for x in rep.layers:
                        per_layer.setdefault((name, x.name), {"shape": f"{x.rows}x{x.cols}",
                                                              "cols": x.cols})[m] = (x.ratio,
                                                                                     x.loss)
        # 2. W8A8: ours vs ORT quantize_static
        rep, ours_a8, wall = run("w8a8", bits=8, act_bits=8, method="obc")
        ortq = {}
        for tag, sym, rr in (("asym (default)", False, False), ("sym", True, False),
                             ("asym reduce_range", False, True)):
            p = tmp / f"{name}.ort_w8a8_{tag.split()[0]}{'_rr' if rr else ''}.onnx"
            try:
                quantize_static(src, p, Reader(fit), quant_format=QuantFormat.QDQ,
                                per_channel=True, reduce_range=rr,
                                calibrate_method=CalibrationMethod.MinMax,
                                weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                                extra_options={"ActivationSymmetric": sym})
                ortq[f"ORT act {tag}"] = p
            except Exception as exc:  # report, do not stop the bench
                out["notes"].append(f"{name}: quantize_static({tag}) failed: {exc!r}")
        models2 = {"ours W8A8 (obc)": ours_a8, **ortq}
        fid, fid_b = fidelity(src, models2, ev), fidelity(src, models2, ev, "BASIC")
        for k, p in models2.items():
            out["s2"].append(dict(model=name, what=k, acc=fid[k][0], err=fid[k][1], kb=kb(p),
                                  dense=fid["dense"][0], acc_b=fid_b[k][0], err_b=fid_b[k][1]))
        # 3. 4-bit MatMul weight-only: ORT MatMulNBits vs ours
        if any(n.op_type == "MatMul" for n in proto.graph.node):
            m3 = {"ours obc 4b per-channel": paths["obc", 4]}
            m3["ours obc 4b g32"] = run("obc4g32", bits=4, group_size=32)[1]
            m3["ours obc 4b g32 MatMul only"] = run("obc4g32mm", bits=4, group_size=32,
                                                    op_types=("MatMul",))[1]
            try:
                from onnxruntime.quantization.matmul_nbits_quantizer import (
                    DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer)
                for bs in (32, 128):
                    q = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=(
                        DefaultWeightOnlyQuantConfig(block_size=bs, is_symmetric=True)))
                    q.process()
                    p = tmp / f"{name}.ort_nbits{bs}.onnx"
                    q.model.save_model_to_file(str(p), use_external_data_format=False)
                    m3[f"ORT MatMulNBits RTN b{bs}"] = p
            except Exception as exc:
                out["notes"].append(f"{name}: MatMulNBitsQuantizer failed/skipped: {exc!r}")
            fid = fidelity(src, m3, ev)
            for k, p in m3.items():
                ops = sorted({n.op_type for n in onnx.load(str(p)).graph.node
                              if n.op_type in ("MatMulNBits", "DequantizeLinear")})
                out["s3"].append(dict(model=name, what=k, acc=fid[k][0], err=fid[k][1],
                                      kb=kb(p), ops=",".join(ops)))
        # 4. compound
        rep, _, wall = run("s50b8", sparsity=0.5, allocate="uniform", bits=8, method="obc")
        e = rep.fidelity["eval"]
        base = [k for k in e if k not in ("dense", "compressed")]
        hi, med = stats(rep.layers)
        out["s4"].append(dict(model=name, keys=list(e), dense=e["dense"].accuracy,
                              acc=e["compressed"].accuracy,
                              err=max(e["compressed"].rel_error.values()),
                              base=base[0] if base else None,
                              base_acc=e[base[0]].accuracy if base else None,
                              base_err=max(e[base[0]].rel_error.values()) if base else None,
                              worst=hi, median=med))
        # 5. sizes
        r8, r4 = payload_ratio(paths["obc", 8]), payload_ratio(paths["obc", 4])
        out["s5"].append(dict(model=name, fp32=kb(src), int8=kb(paths["obc", 8]),
                              int4=kb(paths["obc", 4]), p8=r8[0], p4=r4[0], wfp32=r8[2] / 1024))
        # 6. latency, batch 32 of eval inputs
        feed = {k: v[:32] for k, v in ev.arrays.items()}
        lat = {"fp32": src, "ours W8A8": ours_a8, **{k: v for k, v in ortq.items()}}
        out["s6"].append(dict(model=name, **{k: latency_ms(p, feed) for k, p in lat.items()}))

    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() \
        else set()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    print(f"(all models in {tmp}; device {args.device}; onnxruntime {ort.__version__}; "
          f"CPU {' '.join(isa) or '?'}; {time.perf_counter() - t_all:.0f} s)")
    print("\n=== 1. weight-only quantization (eval accuracy %, rel. output error; loss ratio "
          "vs same-grid RTN over layers with >= 64 inputs) ===")
    print(f"{'model':<11} {'bits':>4} {'method':<8} {'dense':>6} {'acc':>6} {'rel.err':>8} "
          f"{'ratio worst':>11} {'ratio med':>9} {'wall s':>6}")
    for r in out["s1"]:
        print(f"{r['model']:<11} {r['bits']:>4} {LABEL[r['method']]:<8} {100 * r['dense']:>6.2f} "
              f"{100 * r['acc']:>6.2f} {r['err']:>8.4f} {r['worst']:>11.3f} {r['median']:>9.3f} "
              f"{r['wall']:>6.2f}")
    print("\n--- 1b. per-layer at 4 bits: loss / RTN loss (* = fewer than 64 inputs, not in the "
          "summary) ---")
    print(f"{'model':<11} {'layer':<10} {'W':>7} {'OBQ':>7} {'GPTQ-ao':>7} {'RTN loss':>10}")
    for (mname, lname), v in per_layer.items():
        star = " " if v["cols"] >= 64 else "*"
        print(f"{mname:<11} {lname:<10} {v['shape']:>7} {v['obc'][0]:>7.3f} "
              f"{v['gptq'][0]:>7.3f} {v['rtn'][1]:>10.4g}{star}")
    print("\n=== 2. W8A8 (int8 weights per channel + int8 activations per tensor): eval "
          "accuracy %, rel. output error vs fp32, file KB ===")
    print("    ALL = ORT_ENABLE_ALL (QDQ fused into int8 kernels, what ORT CPU runs); BASIC = "
          "ORT_ENABLE_BASIC (the QDQ graph's float math)")
    print(f"{'model':<11} {'model file':<26} {'dense':>6} {'acc ALL':>7} {'err ALL':>8} "
          f"{'acc BASIC':>9} {'err BASIC':>9} {'KB':>7}")
    for r in out["s2"]:
        print(f"{r['model']:<11} {r['what']:<26} {100 * r['dense']:>6.2f} {100 * r['acc']:>7.2f} "
              f"{r['err']:>8.4f} {100 * r['acc_b']:>9.2f} {r['err_b']:>9.4f} {r['kb']:>7.1f}")
    print("\n=== 3. 4-bit weight-only, models with MatMul (MatMulNBits is an ORT contrib op, "
          "not TensorRT) ===")
    print(f"{'model':<11} {'model file':<28} {'acc':>6} {'rel.err':>8} {'KB':>7}  ops")
    for r in out["s3"]:
        print(f"{r['model']:<11} {r['what']:<28} {100 * r['acc']:>6.2f} {r['err']:>8.4f} "
              f"{r['kb']:>7.1f}  {r['ops']}")
    print("\n=== 4. compound: 50% sparsity + 8 bits (obc) vs the report's baseline model ===")
    print(f"{'model':<11} {'dense':>6} {'obc':>6} {'rel.err':>8} {'baseline':<14} {'acc':>6} "
          f"{'rel.err':>8} {'ratio worst':>11} {'med':>6}  report keys")
    for r in out["s4"]:
        print(f"{r['model']:<11} {100 * r['dense']:>6.2f} {100 * r['acc']:>6.2f} "
              f"{r['err']:>8.4f} {str(r['base']):<14} {100 * (r['base_acc'] or 0):>6.2f} "
              f"{r['base_err'] or 0:>8.4f} {r['worst']:>11.3f} {r['median']:>6.3f}  {r['keys']}")
    print("\n=== 5. file sizes (KB) and weight payload (*_quantized bytes / fp32 bytes of the "
          "same weights) ===")
    print(f"{'model':<11} {'fp32':>7} {'int8':>7} {'ratio':>6} {'int4':>7} {'ratio':>6} "
          f"{'wts fp32':>8} {'pay8':>6} {'pay4':>6}")
    for r in out["s5"]:
        print(f"{r['model']:<11} {r['fp32']:>7.1f} {r['int8']:>7.1f} {r['int8'] / r['fp32']:>6.3f} "
              f"{r['int4']:>7.1f} {r['int4'] / r['fp32']:>6.3f} {r['wfp32']:>8.1f} "
              f"{r['p8']:>6.3f} {r['p4']:>6.3f}")
    print("\n=== 6. latency, onnxruntime CPU, ORT_ENABLE_ALL, 2 threads, batch 32: median of 30 "
          "runs after 5 warm-ups (ms) ===")
    for r in out["s6"]:
        print(f"{r['model']:<11} " + "  ".join(f"{k}: {v:.3f}" for k, v in r.items()
                                              if k != "model"))
    for n in out["notes"]:
        print("NOTE:", n)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
