"""LSTMs on onnxruntime's integer kernel: com.microsoft.DynamicQuantizeLSTM.

onnxruntime's CPU optimizer has no QDQ rule for LSTM: a W8A8 model keeps its LSTMs float,
and on a CNN + BiLSTM recognizer (ddddocr's, hidden 512) the float LSTM is about half of
the W8A8 model's time. onnxruntime ships an integer LSTM instead, a contrib op that takes
int8 weights with per-channel scales and quantizes its activations (x and h) at run time,
per step; its inputs are the LSTM's eight, with W and R transposed to [directions, input,
4·hidden] and [directions, hidden, 4·hidden] codes, then W's scale and zero point and R's
(shape [directions, 4·hidden] per channel). This module rewrites every LSTM whose W and R
are constants into it:

    model, notes = rewrite(model)       # notes: the LSTMs left float, and why

The weights are rounded to nearest, int8 symmetric per row (one scale per gate row of each
direction, max |w| / 127, zero point 0): the LSTM is not one of the layers the OBS solvers
see (its Hessian would be over the input and the recurrent state), and at 8 bits rounding
adds an output error of the order of the activation quantization (docs/deployment.md).
LSTMs left float: weights computed at run time or overridable graph inputs, and
layout = 1 (batch-first; the contrib op has no layout attribute).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..layers import constant_weights, node_label, overridable
from .graph import constant, export_graph, fresh, model_opset
from .nbits import DOMAIN, with_domain

OP = "DynamicQuantizeLSTM"


def int8_rows(w: np.ndarray, qmax: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """(codes int8 [dirs, cols, rows] (transposed), scales float32 [dirs, rows]) of an LSTM
    weight w [dirs, rows = 4·hidden, cols]: symmetric per row, scale max |w| / qmax (1 for an
    all-zero row), codes round(w / scale) in [-qmax, qmax] (63: the reduced range, which its
    uint8 x int8 products cannot saturate on x86 without VNNI, as the layers' codes)."""
    w = np.asarray(w, np.float64)
    scale = np.abs(w).max(axis=2) / float(qmax)  # [dirs, rows]
    scale[scale == 0] = 1.0
    codes = np.clip(np.rint(w / scale[:, :, None]), -qmax, qmax).astype(np.int8)
    return np.ascontiguousarray(codes.transpose(0, 2, 1)), scale.astype(np.float32)


def plan(model: onnx.ModelProto) -> tuple[list[int], list[str]]:
    """(indices of the LSTM nodes to rewrite, notes for the LSTMs left float)."""
    g = model.graph
    consts = constant_weights(g)
    fed = overridable(model)
    take, notes = [], []
    for i, n in enumerate(g.node):
        if n.op_type != "LSTM" or n.domain not in ("", "ai.onnx"):
            continue
        why = []
        if any(a.name == "layout" and a.i == 1 for a in n.attribute):
            why.append("layout = 1 (batch-first): onnxruntime's DynamicQuantizeLSTM has no "
                       "layout attribute")
        for k, what in ((1, "W"), (2, "R")):
            t = n.input[k] if len(n.input) > k else ""
            if t not in consts or t in fed:
                why.append(f"its {what} is not a constant of the model")
        if why:
            notes.append(f"LSTM {node_label(n, i)} stays float: " + "; ".join(why))
        else:
            take.append(i)
    return take, notes


def rewrite(model: onnx.ModelProto, qmax: int = 127) -> tuple[onnx.ModelProto, list[str]]:
    """Copy of `model` with each LSTM that `plan` takes as a DynamicQuantizeLSTM (same name
    + "_quant", same outputs and attributes), its weights' codes in [-qmax, qmax] (int8_rows);
    `model` itself when there is none."""
    take, notes = plan(model)
    if not take:
        return model, notes
    consts = constant_weights(model.graph)
    graph = gs.import_onnx(model)  # its nodes in the model's order
    tensors = graph.tensors()
    for i in take:
        node, label = graph.nodes[i], node_label(model.graph.node[i], i)
        extra = []
        for k in (1, 2):
            name = node.inputs[k].name
            fresh(tensors, f"{name}_int8", f"{name}_int8_scale", f"{name}_int8_zero_point")
            codes, scale = int8_rows(onnx.numpy_helper.to_array(consts[name][1]), qmax)
            node.inputs[k] = constant(f"{name}_int8", codes)
            extra += [constant(f"{name}_int8_scale", scale),
                      constant(f"{name}_int8_zero_point", np.zeros(scale.shape, np.int8))]
        inputs = list(node.inputs)
        while len(inputs) < 8:  # B, sequence_lens, initial_h, initial_c, P
            inputs.append(gs.Variable.empty())
        attrs = {k: v for k, v in node.attrs.items() if k != "layout"}
        outputs = list(node.outputs)
        node.inputs.clear()
        node.outputs.clear()
        graph.nodes.append(gs.Node(OP, f"{label}_quant", attrs, inputs=inputs + extra,
                                   outputs=outputs, domain=DOMAIN))
    return export_graph(graph, with_domain(model), model_opset(model)), notes


__all__ = ["OP", "int8_rows", "plan", "rewrite"]
