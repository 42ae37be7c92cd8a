"""A written-out GELU between quantized layers as one com.microsoft Gelu.

paddle2onnx writes GELU as x * (Erf(x / sqrt 2) + 1) * 0.5. onnxruntime fuses those five
nodes into one Gelu kernel when x is a float tensor, but between integer layers x is a
DequantizeLinear output read by Div and Mul, and onnxruntime first gives each of them a
DequantizeLinear of its own (EnsureUniqueDQForNodeUnit), after which the fusion no longer
matches: PP-OCRv6's detector ran 13 Div, Erf, Add and two Mul in float per GELU (about 15%
of its W8A8 kernel time). Written as com.microsoft Gelu(x) (erf form, the same function)
the node reads the one DequantizeLinear and its output goes to the next QuantizeLinear.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .graph import constant_value, export_graph, model_opset
from .nbits import with_domain

DOMAIN = "com.microsoft"
TOLERANCE = 1e-5  # relative, on sqrt 2, 1 and 0.5


def gelu_nodes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(`model` with each written-out GELU as one Gelu node, how many); `model` itself when
    there is none."""
    if not any(n.op_type == "Erf" for n in model.graph.node):
        return model, 0
    graph = gs.import_onnx(model)
    outputs = {t.name for t in graph.outputs}
    done = 0
    for erf in [n for n in graph.nodes if n.op == "Erf"]:
        found = _pattern(erf, outputs)
        if found is None:
            continue
        x, y, nodes = found
        for n in nodes:
            n.outputs.clear()
        graph.nodes.append(gs.Node("Gelu", f"{erf.name}_gelu", inputs=[x], outputs=[y],
                                   domain=DOMAIN))
        done += 1
    if not done:
        return model, 0
    graph.cleanup().toposort()
    return export_graph(graph, with_domain(model), model_opset(model)), done


def _pattern(erf: gs.Node, outputs: set[str]) -> tuple[gs.Tensor, gs.Tensor, list] | None:
    """(x, y, the five nodes) for y = Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5), each
    inner tensor read by the next node alone and no graph output; else None."""
    div = _only_producer(erf.inputs[0])
    if div is None or div.op != "Div" or not _is(div.inputs[1], math.sqrt(2.0)):
        return None
    x = div.inputs[0]
    add = _only_reader(erf.outputs[0], outputs)
    if add is None or add.op != "Add" or _other(add, erf.outputs[0], 1.0) is None:
        return None
    mul = _only_reader(add.outputs[0], outputs)
    if mul is None or mul.op != "Mul" or not any(t is x for t in mul.inputs):
        return None
    half = _only_reader(mul.outputs[0], outputs)
    if half is None or half.op != "Mul" or _other(half, mul.outputs[0], 0.5) is None:
        return None
    if _only_reader(div.outputs[0], outputs) is not erf:
        return None
    return x, half.outputs[0], [div, erf, add, mul, half]


def _only_producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if len(t.inputs) == 1 else None


def _only_reader(t: gs.Tensor, outputs: set[str]) -> gs.Node | None:
    return t.outputs[0] if len(t.outputs) == 1 and t.name not in outputs else None


def _is(t: gs.Tensor, value: float) -> bool:
    c = constant_value(t)
    return c is not None and c.size == 1 and abs(float(c.reshape(())) - value) <= (
        TOLERANCE * abs(value))


def _other(node: gs.Node, t: gs.Tensor, value: float) -> gs.Tensor | None:
    """node's other input when it is the constant `value` (Add / Mul commute)."""
    if len(node.inputs) != 2:
        return None
    other = node.inputs[1] if node.inputs[0] is t else node.inputs[0]
    return other if other is not t and _is(other, value) else None


__all__ = ["DOMAIN", "gelu_nodes"]
