"""Which quantized layers onnxruntime runs on integer kernels: the fusion check of a run.

    result = check(model, layers); print(result.line()); result.unfused  # [(node, why)]

The model is loaded in an onnxruntime CPU session at ORT_ENABLE_ALL; the optimized graph it
writes (in a temporary directory) tells, for each node reading int8 codes through a DQ, which
kernel runs it: an integer one (QLinearConv, QGemm, MatMulNBits...) or a float op fed by
dequantized weights; for a float one the exported graph says why onnxruntime's QDQ rules did
not match (onnxruntime.py has the rules): an input not quantized, an output read in float, a
graph output, a float bias, int8 activations on x86, 4-bit or blocked weights, a 2-D MatMul
fused with its bias into a float Gemm; or codes that the session dequantizes once at load
(export/ortweights.py). Also the MatMulNBits onnxruntime made itself (nbits.made_line).
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from .. import cpu
from ..layers import Layer, constant_weights, node_label
from ..specs import LAYER_OPS
from .nbits import made_by_onnxruntime, made_line
from .orttables import line
from .ortweights import folded
from .ortwhy import graph_maps, why_not

INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat",
                   "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulNBits",
                   "QAttention", "DynamicQuantizeLSTM")
FLOAT_KERNELS = ("Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm",
                 "NchwcConv", "ConvTranspose")


@dataclass(frozen=True)
class Fusion:
    """The fusion check's result (JSON-ready through to_dict)."""

    layers: int  # quantized layer nodes (nodes that read codes: DQ, ortweights.folded)
    integer: int  # of these, run by an integer kernel
    kernels: dict[str, int] = field(default_factory=dict)  # integer kernel -> layers
    unfused: list[tuple[str, str]] = field(default_factory=list)  # (node, why)
    ops: dict[str, int] = field(default_factory=dict)  # op counts of the optimized graph
    error: str = ""  # why the check could not run ("" when it ran)
    latency: dict[str, Any] = field(default_factory=dict)  # measured against the input model
    float_ops: dict[str, int] = field(default_factory=dict)  # op -> nodes of the optimized
    # graph that read a dequantized activation in float (float_line)
    made_nbits: dict[int, int] = field(default_factory=dict)  # nbits.made_by_onnxruntime
    tables_line: str = ""  # orttables.line: the lookup tables stored as codes
    saturation_line: str = ""  # saturating_cpu: integer layers whose codes can overflow here

    def line(self) -> str:
        if self.error:
            return f"onnxruntime fusion check not run: {self.error}"
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kernels.items()))
        return (f"onnxruntime CPU (ORT_ENABLE_ALL): {self.integer} of {self.layers} quantized "
                f"layers run on integer kernels" + (f" ({kinds})" if kinds else ""))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["unfused"] = [{"node": n, "why": w} for n, w in self.unfused]
        d["latency_line"] = latency_line(self.latency)
        d["float_line"] = float_line(self.float_ops)
        d["nbits_line"] = made_line(self.made_nbits)
        return d


def float_line(ops: dict[str, int], most: int = 8) -> str:
    """Where the optimized graph still computes in float between quantized tensors."""
    top = sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))
    return ("float ops on dequantized activations (no integer kernel in onnxruntime, or "
            "kept float by the placement): " + ", ".join(f"{k} {v}" for k, v in top[:most])
            + (f", {len(top) - most} more kinds" if len(top) > most else "")) if ops else ""


LATENCY_ROUNDS = 9  # alternating rounds of the input and the written model (each a block of
LATENCY_SECONDS = 0.5  # runs, timing.BLOCK), at least, and until this long has passed


def latency(model: onnx.ModelProto, dense: onnx.ModelProto, sets: dict, runtime: Any = None
            ) -> dict[str, Any]:
    """1-thread onnxruntime medians of the input model `dense` and the written `model` on
    one sample of the first fidelity set, run in alternation: whether the output pays off
    where it runs, on every --runtime onnxruntime run (ppocr_cls's W8A8 ran 1.4x slower)."""
    from ..channels.timing import BLOCK, ort_timer

    n = fixed_batch(dense)
    try:
        _, feed = next(iter(next(iter(sets.values())).batches(n)))
        timer = ort_timer(runtime, LATENCY_ROUNDS, LATENCY_SECONDS, block=BLOCK)
        d, m = timer([dense, model], feed)
    except Exception as exc:  # no sample, a model onnxruntime will not serialize (> 2 GB)
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}
    return {"input_ms": 1e3 * d, "ms": 1e3 * m, "ratio": m / d, "batch": n, "runs": LATENCY_ROUNDS}


LEVEL = 0.02  # a ratio within this of 1 reads "level": 4-bit weights-only files (dequantized
# at load, run in float) timed 1.002-1.005x their input on Basic Pitch and openWakeWord


def fixed_batch(model: onnx.ModelProto) -> int:
    """The batch a model fixes above 1 on its first input's axis 0, else 1: what a timing
    feeds it (one sample would not run)."""
    g = getattr(model, "graph", None)  # (tests time stand-ins)
    dims = g.input[0].type.tensor_type.shape.dim if g is not None and g.input else []
    return dims[0].dim_value if dims and dims[0].dim_value > 1 else 1


def latency_line(t: dict[str, Any]) -> str:
    """The report's line for `latency` ("" when not measured)."""
    if not t:
        return ""
    if t.get("error"):
        return f"latency not measured: {t['error']}"
    return (f"latency, 1 thread, batch {t.get('batch', 1)} (medians of >= {t['runs']} "
            "alternating rounds of runs): "
            f"{t['ratio']:.3f}x the input model's ({t['ms']:.3g} vs {t['input_ms']:.3g} ms)"
            + (" -- SLOWER than the input model on this CPU" if t["ratio"] > 1.0 + LEVEL else
               " -- level with the input model on this CPU" if t["ratio"] > 1.0 - LEVEL else ""))


def optimized_graph(model: onnx.ModelProto, runtime: Any = None) -> onnx.ModelProto:
    """The graph onnxruntime's CPU session runs for `model` at ORT_ENABLE_ALL."""
    from ..capture import Runtime
    from ..diskdata import as_inputs
    from ..modelio import serialized_or_path

    rt = Runtime.of(runtime) if runtime is not None else Runtime()
    with tempfile.TemporaryDirectory(prefix="onnx-obc-fusion-") as tmp:
        opts = rt.options(optimize=True)  # onnxruntime's default level: ORT_ENABLE_ALL
        opts.optimized_model_filepath = path = os.path.join(tmp, "optimized.onnx")
        src = serialized_or_path(as_inputs(model), Path(tmp))  # kept tensors: not dumped
        ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])
        return onnx.load(path)


def check(model: onnx.ModelProto, layers: list[Layer], runtime: Any = None,
          dense: onnx.ModelProto | None = None, sets: dict | None = None) -> Fusion:
    """Which nodes of `layers` (those whose weight is stored as codes) onnxruntime's CPU
    optimizer runs on integer kernels; with the input model `dense` and the fidelity
    `sets`, also `latency` against it."""
    uses = _quantized_uses(model, layers)
    if not uses:
        return Fusion(0, 0)
    timed = latency(model, dense, sets, runtime) if dense is not None and sets else {}
    try:
        opt = optimized_graph(model, runtime)
    except Exception as exc:  # onnxruntime refuses the model, or cannot write it (> 2 GB)
        return Fusion(len(uses), 0, error=f"{type(exc).__name__}: {exc}"[:300], latency=timed)
    kernels: Counter[str] = Counter()
    unfused, on_integer = [], []
    maps, once = None, folded(model)  # once: codes dequantized at load (ortweights.py)
    for label, (codes, index) in uses.items():
        kernel, integer = _kernel_of(opt, label, codes)
        if integer:
            kernels[kernel] += 1
            on_integer.append(codes)
            continue
        node = model.graph.node[index]
        maps = maps or graph_maps(model)
        why = f", {once[node.input[1]][1]}" if node.input[1] in once else (
            f" with DequantizeLinear inputs — {why_not(model, index, maps)}")
        unfused.append((label, f"{node.op_type} {label}: float {kernel or node.op_type}{why}"))
    ops = Counter(n.op_type for n in opt.graph.node)
    inits = {t.name for t in opt.graph.initializer}
    acts = {n.output[0] for n in opt.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] not in inits}
    floats = Counter(n.op_type for n in opt.graph.node if set(n.input) & acts and n.op_type
                     not in ("QuantizeLinear", "DequantizeLinear", "Shape", "Size"))
    return Fusion(len(uses), sum(kernels.values()), dict(kernels), unfused,
                  dict(sorted(ops.items())), latency=timed, float_ops=dict(floats),
                  made_nbits=made_by_onnxruntime(model, opt), tables_line=line(model),
                  saturation_line=_saturation_line(model, on_integer))


def _saturation_line(model: onnx.ModelProto, codes: list[str]) -> str:
    """The line for integer layers whose int8 codes leave [-64, 63] on a saturating CPU."""
    if not codes or not cpu.saturating_cpu():
        return ""
    inits = {t.name: t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    wide = sum(1 for c in codes if c in inits and _beyond(inits[c]))
    return "" if not wide else (
        f"this CPU (x86 without VNNI) can saturate onnxruntime's uint8 x int8 kernels on {wide} "
        "of these layers (8-bit codes beyond [-64, 63]): the figures above include it; "
        "--reduce-range on keeps the codes in [-63, 63], which cannot (the default on such "
        "CPUs with --act-bits 8 --runtime onnxruntime; docs/deployment.md)")


def _beyond(t: onnx.TensorProto) -> bool:
    a = onnx.numpy_helper.to_array(t)
    return bool(a.size) and (int(a.min()) < -64 or int(a.max()) > 63)


def _quantized_uses(model: onnx.ModelProto, layers: list[Layer]) -> dict[str, tuple[str, int]]:
    """node label -> (codes tensor, node index) for every node of `layers` whose weight is
    the output of a DequantizeLinear of a constant."""
    g = model.graph
    consts = constant_weights(g)
    dq_codes = {n.output[0]: n.input[0] for n in g.node
                if n.op_type == "DequantizeLinear" and n.input[0] in consts}
    dq_codes.update({w: c for w, (c, _) in folded(model).items()})
    weights = {L.weight for L in layers}
    out = {}
    for i, n in enumerate(g.node):
        if (n.op_type in LAYER_OPS and len(n.input) > 1
                and n.input[1] in weights and n.input[1] in dq_codes):
            out[node_label(n, i)] = (dq_codes[n.input[1]], i)
        elif n.op_type in ("MatMulNBits", "DynamicQuantizeLSTM") and n.domain == "com.microsoft":
            out[node_label(n, i)] = (n.input[1], i)  # export/nbits.py, export/ortlstm.py
    return out


def _kernel_of(opt: onnx.ModelProto, label: str, codes: str) -> tuple[str, bool]:
    """(the op that runs the layer in the optimized graph, whether it is an integer one)."""
    named = [n for n in opt.graph.node
             if n.name == label or (n.name.startswith(label) and n.name[len(label):][:1] in
                                    ("_", "/"))]
    for n in named:
        if n.op_type in INTEGER_KERNELS:
            return n.op_type, True
    readers = [n for n in opt.graph.node if codes in n.input]
    for n in readers:
        if n.op_type in INTEGER_KERNELS and (not named or n in named or len(readers) == 1):
            return n.op_type, True
    floats = [n for n in named if n.op_type in FLOAT_KERNELS]
    if floats:
        return floats[0].op_type, False
    for n in readers:  # codes -> DequantizeLinear -> a float op
        if n.op_type == "DequantizeLinear":
            nxt = [m for m in opt.graph.node if n.output[0] in m.input]
            if nxt:
                return nxt[0].op_type, False
    return "", False
