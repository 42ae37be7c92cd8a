"""Per-channel constants read by several nodes get a copy each before the channel stage:
an exporter that deduplicates identical initializers (torch's TorchScript exporter; the
zero biases of an untrained export, or any bitwise-equal vectors) makes one layer's bias or
BatchNormalization parameters another's, and cutting one site's channels from a shared
vector would cut them from the other reader too (patterns.py refused such a site: "shared
with other nodes"). Float-exact; only vectors (one axis > 1) read as a bias, a
BatchNormalization or LayerNormalization parameter or the constant operand of an
elementwise op are copied (HF SegFormer's zero biases were one vector with its LayerNorms'),
never a layer's weight (a weight used twice is one layer with several uses)."""

from __future__ import annotations

import onnx

ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "PRelu", "Max", "Min"}


def unshare(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(a copy of `model` with such constants copied per reader, how many copies), or
    (`model` itself, 0) when none is shared."""
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list[tuple[int, int]]] = {}
    for i, n in enumerate(model.graph.node):
        for j, x in enumerate(n.input):
            if x in inits and _per_channel_input(n, j) and _vector(inits[x]):
                readers.setdefault(x, []).append((i, j))
    shared = {k: v for k, v in readers.items()
              if len(v) > 1 and len(v) == _reads(model.graph, k)}
    if not shared:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    copies = 0
    for name, where in shared.items():
        for i, j in where[1:]:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[name])
            copy.name = f"{name}.copy{copies}"
            out.graph.initializer.append(copy)
            out.graph.node[i].input[j] = copy.name
            copies += 1
    return out, copies


def _per_channel_input(n: onnx.NodeProto, j: int) -> bool:
    return (n.op_type in ("Conv", "ConvTranspose", "Gemm") and j == 2) or \
        (n.op_type in ("BatchNormalization", "LayerNormalization") and j >= 1) or \
        (n.op_type in ELEMENTWISE)


def _vector(t: onnx.TensorProto) -> bool:
    return sum(1 for d in t.dims if d > 1) == 1 and t.data_type == onnx.TensorProto.FLOAT


def _reads(g: onnx.GraphProto, name: str) -> int:
    """Every read of `name` by a node of the graph (a graph output counts too)."""
    return sum(list(n.input).count(name) for n in g.node) + \
        sum(1 for o in g.output if o.name == name)
