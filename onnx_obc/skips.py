"""Why a Conv/Gemm/MatMul/ConvTranspose node is no layer (layers.find_layers): not selected,
or a weight that is no constant, in the words the report and the errors use; and the weights
of other ops (an LSTM, an embedding table), which no layer holds (`outside`)."""

from __future__ import annotations

import fnmatch
from typing import Any

import numpy as np
import onnx

from .specs import LAYER_OPS, Selection

OUTSIDE_MIN = 4096  # values: smaller constants (norms, biases, positions) are not listed
NOT_WEIGHTED = {  # ops whose constants are no weights to compress (biases, scales, positions)
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "PRelu", "Clip",
    "Equal", "Less", "Greater", "Expand", "Concat", "Reshape", "Pad", "Resize", "Tile", "Slice",
    "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
    "SkipLayerNormalization", "SimplifiedLayerNormalization"}
HINTS = {"LSTM": " (--runtime onnxruntime --act-bits 8 writes an LSTM as DynamicQuantizeLSTM, "
                 "int8)",
         "Gather": " (a lookup table: --runtime onnxruntime --bits 8 --quantize-tables stores "
                   "it in 8 bits)"}


def selection_reason(label: str, op: str, cfg: Selection) -> str:
    if op not in cfg.op_types:
        return f"op type {op} not selected (--op-types {','.join(cfg.op_types)})"
    if cfg.include and not any(fnmatch.fnmatchcase(label, p) for p in cfg.include):
        return f"not matched by --include {' '.join(cfg.include)}"
    for p in cfg.exclude:
        if fnmatch.fnmatchcase(label, p):
            return f"excluded by --exclude {p!r}"
    return ""


TWO_ACTIVATIONS = ("a product of two activations (as attention's scores and A @ V): its "
                   "second input is computed from the model's inputs, no constant weight")


def fed_by_inputs(graph: onnx.GraphProto) -> set[str]:
    """Tensors computed from the graph's data inputs (not from constants alone)."""
    inits = {t.name for t in graph.initializer}
    fed = {i.name for i in graph.input if i.name not in inits}
    for n in graph.node:  # topological order
        if any(x in fed for x in n.input):
            fed.update(n.output)
    return fed


def not_constant_reason(graph: onnx.GraphProto, wname: str, fed: set[str] = frozenset()
                        ) -> str:
    """Why weight `wname` is no constant; `fed`: fed_by_inputs(graph), where a weight
    computed from the data makes the node a product of two activations."""
    if wname in fed and wname not in {i.name for i in graph.input}:
        return TWO_ACTIVATIONS
    if not wname:
        return "node has no weight input"
    if any(i.name == wname for i in graph.input):
        if any(t.name == wname for t in graph.initializer):
            return (f"weight {wname!r} is a graph input, not a constant (its initializer is a "
                    "default the caller may override; drop it from graph.input to compress it)")
        return f"weight {wname!r} is a graph input, not a constant"
    for node in (n for n in graph.node if wname in n.output):
        return f"weight {wname!r} is " + _COMPUTED.get(node.op_type, _COMPUTED[""]).format(
            op=node.op_type, src=node.input[0] if node.input else "")
    return f"weight {wname!r} is not a constant"


QUANTIZED = ": the model is quantized already (compress the float model it came from)"
_COMPUTED = {  # why a weight computed by such a node is no layer (Identity: the fold reads it)
    "Identity": "an Identity of {src!r} (a weight used twice, as PyTorch exports it: "
                "compressed as one layer unless --no-fold)",
    "DequantizeLinear": "the dequantized codes {src!r}" + QUANTIZED,
    "": "computed from constants by a {op} node at run time (only constant weights are "
        "compressed: fold such nodes into a constant first, e.g. with onnxsim)"}


def outside(model: onnx.ModelProto, written: onnx.ModelProto, cfg: Any = None) -> list[Any]:
    """A `Skipped` for each top-level node of another op than Conv/Gemm/MatMul (and than the
    elementwise and normalization ops of NOT_WEIGHTED) that reads float constants of
    OUTSIDE_MIN values or more which no Conv/Gemm/MatMul reads, all of which `written` (the
    compressed model) still holds as float constants (none rewritten by the export): weights
    a run leaves as they are (common's LSTM: 31% of its weights), with their share of the
    model's; the option that would compress them where `cfg` (the run's CompressConfig;
    None: inspect) did not ask for it already."""
    from .layers import Skipped, constant_weights, node_label

    g = model.graph
    every = constant_weights(g)
    weights = {k: t for k, (_, t) in every.items()
               if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    kept = {k for k, (_, t) in constant_weights(written.graph).items() if k in weights and
            t.data_type == weights[k].data_type}
    total = sum(int(np.prod(t.dims)) for _, t in every.values()) or 1
    read = {i for n in g.node if n.op_type in LAYER_OPS for i in n.input}
    ort = cfg is not None and cfg.export.runtime == "onnxruntime"
    asked = {"LSTM": ort and bool(cfg.quant.act_bits) and cfg.export.dynamic_lstm,
             "Gather": ort and cfg.quant.bits is not None and cfg.export.quantize_tables}
    out = []
    for i, n in enumerate(g.node):
        if n.op_type in LAYER_OPS and n.domain in ("", "ai.onnx") or n.op_type == "Constant" \
                or n.op_type in NOT_WEIGHTED:
            continue
        big = [k for k in dict.fromkeys(n.input) if k in weights and k not in read
               and int(np.prod(weights[k].dims)) >= OUTSIDE_MIN]
        mine = [k for k in big if k in kept]  # all: none rewritten (DynamicQuantizeLSTM's W, R)
        size = sum(int(np.prod(weights[k].dims)) for k in mine)
        if mine and len(mine) == len(big):
            out.append(Skipped(node_label(n, i), n.op_type, (
                f"{n.op_type} is no layer kind onnx-obc solves ({', '.join(LAYER_OPS)}): its "
                f"constants {', '.join(repr(k) for k in mine[:3])} ({size:,} values, "
                f"{size / total:.1%} of the model's) stay as they are"
                + ("" if asked.get(n.op_type) else HINTS.get(n.op_type, ""))),
                mine[0]))
    return out
