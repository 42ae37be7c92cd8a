"""A MatMul's bias vector as [1, N] where onnxruntime would fuse the pair into a float Gemm.

onnxruntime's MatMulAddFusion makes MatMul + Add(bias [N]) one Gemm, also for an input of
rank > 2 whose every size is static (with a Reshape to [M, K] before and one back after),
and it runs before its QDQ rules: a W8A8 layer whose weights and input come from
DequantizeLinear then runs as that float Gemm, never on an integer kernel. A model exported
at a fixed batch is all such layers (torch's dynamo exporter without dynamic shapes:
all-MiniLM-L6-v2 at [1, 64], 0 of 36 layers integer, 2.07x its fp32 latency). The fusion
takes a bias of shape [N] only for those inputs, so the same vector as [1, N] (broadcast:
the same sums) leaves the MatMul to the QDQ rules, which run it as MatMulIntegerToFloat
(36 of 36, 0.456x fp32, the same output error). With a free size the fusion does not apply
and the vector stays as it is."""

from __future__ import annotations

import onnx
from onnx import numpy_helper


def bias_rows(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with each such bias reshaped (only where its Add alone reads it);
    how many (`model` itself where none)."""
    g = model.graph
    makers = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    found = []
    for n in g.node:
        if n.op_type != "MatMul" or any(
                x not in makers or makers[x].op_type != "DequantizeLinear" for x in n.input):
            continue
        z = n.output[0]
        add = readers.get(z, [])
        if len(add) != 1 or add[0].op_type != "Add" or z in outputs:
            continue
        c = next((x for x in add[0].input if x != z), None)
        if c in inits and len(inits[c].dims) == 1 and len(readers.get(c, [])) == 1:
            found.append((n.input[0], inits[c]))
    if not found:
        return model, 0
    from ..fold.shapes import inferred_dims  # only where there is a candidate

    dims = inferred_dims(model)
    names = {t.name for a, t in found
             if len(d := dims.get(a) or []) > 2 and all(isinstance(x, int) and x > 0 for x in d)}
    if not names:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)  # the caller's model stays as it is
    for t in out.graph.initializer:
        if t.name in names:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).reshape(1, -1), t.name))
    return out, len(names)
