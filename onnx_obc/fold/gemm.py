"""A MatMul of a 2-D input with a constant weight, followed by the Add of a bias vector, as
one Gemm (A B + C: the same function).

paddle2onnx writes a classifier's fully connected head that way (ppocr_cls, PP-LCNet). On the
onnxruntime target the MatMul's bias Add stays float (ortplan.py), and onnxruntime fuses the
pair into a float Gemm before its QDQ rules run, so the layer ran in float ("onnxruntime fuses
a MatMul of a 2-D input and the bias Add after it into a float Gemm", the fusion check).
As a Gemm its bias becomes int32 codes (ortplace.py) and the layer a QGemm. 3-D inputs (a
transformer's MatMuls) are left: Gemm takes 2-D inputs only.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .common import const

GEMM_HEADS = True  # measured on ppocr_cls and lcnet_orient (docs/deployment.md)


def candidates(graph: gs.Graph, outputs: set[str], fixed: set[str]) -> list[gs.Node]:
    """MatMul nodes with a constant 2-D weight whose output only an Add of a bias vector
    reads (the input's rank is not checked here)."""
    found = []
    for node in graph.nodes:
        if node.op != "MatMul" or len(node.inputs) != 2 or len(node.outputs) != 1:
            continue
        W, z = const(node.inputs[1], fixed), node.outputs[0]
        if W is None or W.ndim != 2 or z.name in outputs or len(z.outputs) != 1:
            continue
        add = z.outputs[0]
        if add.op != "Add" or len(add.inputs) != 2 or len(add.outputs) != 1:
            continue
        c = const(add.inputs[1] if add.inputs[0] is z else add.inputs[0], fixed)
        if c is not None and c.size == W.shape[1] and (c.ndim == 1 or c.shape == (1, c.size)):
            found.append(node)
    return found


def as_gemm(nodes: list[gs.Node], ranks: dict[str, int]) -> int:
    """Each of `nodes` whose input is known to be 2-D (`ranks`) and its bias Add as one Gemm;
    returns how many."""
    if not GEMM_HEADS:
        return 0
    done = 0
    for node in nodes:
        if ranks.get(node.inputs[0].name) != 2:
            continue
        z = node.outputs[0]
        add = z.outputs[0]
        bias = add.inputs[1] if add.inputs[0] is z else add.inputs[0]
        y = add.outputs[0]
        add.outputs.clear()
        add.inputs.clear()
        node.outputs.clear()
        node.op, node.attrs = "Gemm", {}
        node.inputs.append(bias)
        node.outputs.append(y)
        done += 1
    return done
