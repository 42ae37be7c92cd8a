"""Why a Conv/Gemm/MatMul node is no layer (layers.find_layers): not selected, or a weight
that is no constant, in the words the report and the errors use."""

from __future__ import annotations

import fnmatch

import onnx

from .specs import Selection


def selection_reason(label: str, op: str, cfg: Selection) -> str:
    if op not in cfg.op_types:
        return f"op type {op} not selected (--op-types {','.join(cfg.op_types)})"
    if cfg.include and not any(fnmatch.fnmatchcase(label, p) for p in cfg.include):
        return f"not matched by --include {' '.join(cfg.include)}"
    for p in cfg.exclude:
        if fnmatch.fnmatchcase(label, p):
            return f"excluded by --exclude {p!r}"
    return ""


def not_constant_reason(graph: onnx.GraphProto, wname: str) -> str:
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
    "": "computed by a {op} node (both inputs are activations, or the weight is transformed "
        "at run time)"}
