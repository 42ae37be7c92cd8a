"""A constant bound in front of a QuantizeLinear that already saturates there, dropped.

TensorFlow exports write a floor or a ceiling as Max(x, c) / Min(x, c) (openWakeWord's
speech embedding, tf2onnx: LeakyRelu then Max(., -0.4) before each of its 19 Convs).
onnxruntime drops a Relu or Clip in front of a QuantizeLinear whose range makes it
redundant, but not Max / Min: on the onnxruntime target each stayed a float op between a
DequantizeLinear and the next layer's QuantizeLinear, with a Q/DQ pair of its own on its
input (30% of that model's kernel time).

For Q = QuantizeLinear (per tensor, codes qmin..qmax), Q is monotone, so

    Q(max(x, c)) = Q(x)   whenever Q(c) = qmin      (x < c gives Q(x) <= Q(c) = qmin)
    Q(min(x, c)) = Q(x)   whenever Q(c) = qmax

exactly, for every x. The range observed on max(x, c) starts at c or above, so its uint8
grid saturates at c; an int8 grid symmetric about 0 does not (there the bound stays). Where
the bound's only readers are such QuantizeLinear nodes, they read x instead and the bound
goes; where x is DQ(Q1(x0)) read by the bound alone (its input quantized as its producer's
output), they read x0 and Q1 and the DQ go too: one rounding fewer, and the producer's
output is quantized once (onnxruntime then fuses it: QLinearLeakyRelu). A Max read by a
MaxPool whose one reader is such a QuantizeLinear goes as well (a window's max commutes
with max(., c) and with Q): the MaxPool then reads x through a Q/DQ pair with that
QuantizeLinear's parameters, so that onnxruntime runs it on the codes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .graph import constant_value, export_graph, model_opset

BOUNDS = ("Max", "Min")
MONOTONE = ("MaxPool",)  # readers through which a Max bound still meets its QuantizeLinear


def drop_bounds(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(`model` without the redundant bounds, how many were dropped); `model` itself when
    none is."""
    if not any(n.op_type in BOUNDS for n in model.graph.node):
        return model, 0
    graph = gs.import_onnx(model)
    outputs = {t.name for t in graph.outputs}
    ranks = _ranks(model)
    dropped = 0
    for node in list(graph.nodes):
        bound = _bound(node, ranks)
        if bound is None:
            continue
        x, c = bound
        v = node.outputs[0]
        readers = list(v.outputs)
        if v.name in outputs or not readers or not all(
                _redundant(r, v, c, node.op, outputs) for r in readers):
            continue
        src = _unquantized(x, outputs)
        for r in readers:
            r.inputs[0] = src if r.op == "QuantizeLinear" else _requantized(graph, src, r)
        node.outputs.clear()
        dropped += 1
    if not dropped:
        return model, 0
    graph.cleanup().toposort()
    return export_graph(graph, model, model_opset(model)), dropped


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> rank, from shape inference (on a copy without the weights)."""
    from ..capture import _shapes_only

    try:
        g = onnx.shape_inference.infer_shapes(_shapes_only(model), strict_mode=False).graph
    except Exception:  # unknown ops, bad shapes: no ranks known
        return {}
    return {vi.name: len(vi.type.tensor_type.shape.dim) for vi in [*g.value_info, *g.input]
            if vi.type.tensor_type.HasField("shape")}


def _bound(node: gs.Node, ranks: dict[str, int]) -> tuple[gs.Tensor, float] | None:
    """(x, c) for a Max / Min of one activation x and one constant c of one element that
    does not add axes to x (at most one axis, or no more than x's rank); else None."""
    if node.op not in BOUNDS or len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    values = [constant_value(t) for t in node.inputs]
    fixed = [i for i, v in enumerate(values) if v is not None]
    if len(fixed) != 1 or values[fixed[0]].size != 1:
        return None
    c, x = values[fixed[0]], node.inputs[1 - fixed[0]]
    rank = len(x.shape) if x.shape is not None else ranks.get(x.name)
    if c.ndim > 1 and (rank is None or c.ndim > rank) or not np.isfinite(c).all():
        return None
    return x, float(c.reshape(()))


def _redundant(r: gs.Node, v: gs.Tensor, c: float, op: str, outputs: set[str]) -> bool:
    """Whether the bound's reader `r` (of v) makes it redundant: a QuantizeLinear saturating
    at c, or a MaxPool (max over a window commutes with the bound) whose output only such
    QuantizeLinear nodes read."""
    if r.op == "QuantizeLinear":
        return r.inputs[0] is v and _saturates(r, c, op)
    if r.op not in MONOTONE or op != "Max" or len(r.outputs) != 1 or r.inputs[0] is not v:
        return False
    y = r.outputs[0]
    return y.name not in outputs and len(y.outputs) == 1 and y.outputs[0].op == (
        "QuantizeLinear") and y.outputs[0].inputs[0] is y and _saturates(y.outputs[0], c, op)


def _requantized(graph: gs.Graph, src: gs.Tensor, pool: gs.Node) -> gs.Tensor:
    """DQ(Q(src)) with the parameters of the QuantizeLinear after `pool`, for `pool` to read:
    onnxruntime then runs the MaxPool on the codes (same parameters on both sides)."""
    q = pool.outputs[0].outputs[0]
    params = list(q.inputs[1:])
    codes = gs.Variable(f"{pool.name}_input_quantized", dtype=None)
    value = gs.Variable(f"{pool.name}_input_dequantized", dtype=None)
    graph.nodes += [gs.Node("QuantizeLinear", f"{pool.name}_input_q", dict(q.attrs),
                            [src, *params], [codes]),
                    gs.Node("DequantizeLinear", f"{pool.name}_input_dq", dict(q.attrs),
                            [codes, *params], [value])]
    return value


def _saturates(q: gs.Node, c: float, op: str) -> bool:
    """Whether the per-tensor QuantizeLinear `q` maps c to its lowest code (Max) or its
    highest (Min), rounding as onnxruntime does (half to even, in float32)."""
    scale = constant_value(q.inputs[1]) if len(q.inputs) > 1 else None
    zero = constant_value(q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2].name else None
    if scale is None or scale.size != 1 or (zero is not None and zero.size != 1):
        return False
    dtype = np.dtype(np.uint8) if zero is None else zero.dtype
    if dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
        return False
    info = np.iinfo(dtype)
    code = float(np.rint(np.float32(c) / np.float32(scale.reshape(())))) + (
        0 if zero is None else int(zero.reshape(())))
    return code <= info.min if op == "Max" else code >= info.max


def _unquantized(x: gs.Tensor, outputs: set[str]) -> gs.Tensor:
    """x0 where x = DequantizeLinear(QuantizeLinear(x0)) with each step read only by the
    next (so dropping the pair changes nothing else), else x itself."""
    dq = x.inputs[0] if len(x.inputs) == 1 else None
    if dq is None or dq.op != "DequantizeLinear" or len(x.outputs) != 1 or x.name in outputs:
        return x
    codes = dq.inputs[0]
    q = codes.inputs[0] if len(codes.inputs) == 1 else None
    if q is None or q.op != "QuantizeLinear" or len(codes.outputs) != 1 or codes.name in outputs:
        return x
    return q.inputs[0]


__all__ = ["BOUNDS", "drop_bounds"]
