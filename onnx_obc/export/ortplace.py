"""The onnxruntime target's placement: scales and zero points from the observed ranges, the
QuantizeLinear / DequantizeLinear nodes of a plan (ortplan.py), int32 biases."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from ..errors import ModelError
from ..layers import constant_weights
from .graph import constant, constant_value, ensure_opset, export_graph, model_opset
from .ortpad import pads_on_codes, shape_readers_to_codes
from .ortplan import Plan
from .ortshift import shifts
from .ortswish import (gate_inputs, hardsigmoid_on_codes, hardswish_on_codes, snapped,
                       swish_inputs)
from .qweights import QuantizedWeight


# onnxruntime's QLinearConcat copies the codes of an input on its output's grid and
# requantizes the others (a 256-entry table each). With a range of its own (mse) for every
# tensor, no input ever matched: ddddocr's detector's integer Concats took 0.73 ms a run
# against quantize_static's 0.60 (its min-max output ranges often equal an input's). JOIN
# (_params): the output takes the finest of its inputs' grids that holds every input's range,
# where one does; 1-2% faster on YOLOv8n, PP-PicoDet and Basic Pitch, output errors within
# 3% (docs/deployment.md "A Concat's output on an input's grid", which also says why the inputs keep
# their grids).
JOIN = True
# A data-movement output takes its chain's grid however the plan lists it (CHAINS, _params):
# the plan lists a tensor a layer or a Concat reads before the move that makes it, and in one
# pass in that order a move reading another move's output (Transpose -> Unsqueeze) had no
# grid yet: no QuantizeLinear, and a Concat reading it no JOIN (Basic Pitch 24 tensors,
# PP-OCRv6 det / rec 8 / 4, YOLOv8n 2). Measured: docs/deployment.md "Chains of data movement".
CHAINS = True


@dataclass(frozen=True)
class QParams:
    scale: float
    zero_point: int
    dtype: np.dtype


def qparams(lo: float, hi: float, act_type: str, from_zero: bool = False) -> QParams:
    """Scale and zero point for the range [lo, hi] (widened to include 0). u8: asymmetric;
    s8: symmetric, or (from_zero: a Relu/Clip output) asymmetric with zero point -128."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ModelError(f"activation range [{lo}, {hi}] is not finite")
    if act_type == "s8" and not from_zero:
        s = max(-lo, hi) / 127.0
        return QParams(s if s > 0 else 1.0, 0, np.dtype(np.int8))
    s = (hi - lo) / 255.0
    if s <= 0:
        s = 1.0
    zp = int(np.clip(np.rint(-lo / s), 0, 255))
    if act_type == "s8":
        return QParams(s, zp - 128, np.dtype(np.int8))
    return QParams(s, zp, np.dtype(np.uint8))


def place(model: onnx.ModelProto, p: Plan, ranges: dict[str, tuple[float, float]],
           qweights: dict[str, QuantizedWeight], act_type: str) -> onnx.ModelProto:
    model = ensure_opset(model, 13, "QuantizeLinear/DequantizeLinear with per-channel int32 "
                                    "biases need opset 13")
    opset = model_opset(model)
    g = model.graph
    params = _params(g, p, ranges, act_type)
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    nodes = list(graph.nodes)
    integer_ids = {id(nodes[i]) for i, r in p.roles.items() if r in ("layer", "compute",
                                                                     "move")}
    producer_integer = {t: False for t in params}
    for i, r in p.roles.items():
        if r in ("layer", "compute", "move", "clip"):
            for t in g.node[i].output:
                if t in producer_integer and not (r in ("layer", "compute") and i in p.absorbed):
                    producer_integer[t] = True
    moved = shifts(graph, tensors, params, integer_ids)  # v = x + c into the zero points
    for t, m in moved.items():
        params[t] = QParams(m.scale, params[t].zero_point, params[t].dtype)
    shared = {src for src in p.tensors.values() if src is not None}
    quantized = set(params) | {m.source.name for m in moved.values()}  # what a Q reads
    for t, y in swish_inputs(graph).items():  # -3 and 3 on codes: the gate a Clip (ortswish)
        qp = params.get(t)
        if (qp is not None and y in quantized and qp.dtype == np.uint8 and t not in moved
                and p.tensors.get(t, "") is None and t not in shared
                and (grid := snapped(qp.scale, qp.zero_point)) is not None):
            params[t] = QParams(grid[0], grid[1], qp.dtype)
    for t, (y, alpha) in gate_inputs(graph).items():  # a squeeze-excite gate on codes too
        root = _root(p, t)  # snapped with every tensor on its grid (an Identity's output)
        qp, members = params.get(root), [u for u in params if _root(p, u) == root]
        if (qp is not None and t in params and y in params and qp.dtype == np.uint8
                and not moved.keys() & {y, *members} and y not in shared
                and all(params[u] == qp for u in members)
                and (grid := snapped(qp.scale, qp.zero_point, 0.5 / alpha))):
            params.update({u: QParams(grid[0], grid[1], qp.dtype) for u in members})
            params[y] = QParams(alpha * grid[0], grid[1] - round(0.5 / alpha / grid[0]),
                                qp.dtype)
    made = 0
    for t, qp in params.items():
        x = tensors.get(t)
        if x is None or isinstance(x, gs.Constant):
            continue
        readers = [n for n in list(x.outputs)]
        data_readers = [n for n in readers if id(n) in integer_ids
                        and any(y is x for y in _gsdata_inputs(n))]
        float_readers = [n for n in readers if n not in data_readers]
        if not data_readers and not producer_integer[t]:
            continue
        scale = constant(_unique(tensors, f"{t}_scale"), np.array(qp.scale, dtype=np.float32))
        zero = constant(_unique(tensors, f"{t}_zero_point"),
                        np.array(qp.zero_point, dtype=qp.dtype))
        q = gs.Variable(_unique(tensors, f"{t}_quantized"), dtype=qp.dtype, shape=x.shape)
        q_in, q_zero = x, zero
        if (m := moved.get(t)) is not None:  # Q(x; S', Z + k) = Q(x + c; S', Z)
            q_in = m.source
            q_zero = constant(_unique(tensors, f"{t}_shifted_zero_point"),
                              np.array(m.zero_point, dtype=qp.dtype))
        graph.nodes.append(gs.Node("QuantizeLinear", f"{t}_QuantizeLinear",
                                   inputs=[q_in, scale, q_zero], outputs=[q]))
        if producer_integer[t] and qp.dtype == np.uint8:  # Shape(x) = Shape(q) (ortpad.py)
            float_readers = shape_readers_to_codes(x, q, float_readers)
        groups = [[n] for n in data_readers]
        if float_readers and producer_integer[t]:
            groups.append(float_readers)
        for k, group in enumerate(groups):
            name = _unique(tensors, f"{t}_dequantized")
            dq = gs.Variable(name, dtype=np.float32, shape=x.shape)
            graph.nodes.append(gs.Node("DequantizeLinear", f"{name}_DequantizeLinear",
                                       inputs=[q, scale, zero], outputs=[dq]))
            for n in group:
                for j, y in enumerate(n.inputs):
                    if y is x:
                        n.inputs[j] = dq
        made += 1
    for c, i in p.consts.items():  # the constant input of an integer Add/Mul
        n = nodes[i]
        other = [t for t in g.node[i].input[:2] if t != c]
        if not other or other[0] not in params:
            continue
        value = numpy_helper.to_array(constant_weights(g)[c][1]).astype(np.float32)
        qp = qparams(float(value.min()), float(value.max()), act_type)
        codes = np.clip(np.rint(value / qp.scale) + qp.zero_point,
                        *(-128, 127) if qp.dtype == np.int8 else (0, 255)).astype(qp.dtype)
        name = _unique(tensors, f"{c}_{n.name}" if n.name else c)
        dq = gs.Variable(_unique(tensors, f"{name}_dequantized"), dtype=np.float32,
                         shape=list(value.shape))
        graph.nodes.append(gs.Node("DequantizeLinear", f"{name}_DequantizeLinear", inputs=[
            constant(_unique(tensors, f"{name}_quantized"), codes),
            constant(_unique(tensors, f"{name}_scale"), np.array(qp.scale, dtype=np.float32)),
            constant(_unique(tensors, f"{name}_zero_point"),
                     np.array(qp.zero_point, dtype=qp.dtype))],
            outputs=[dq]))
        for j, y in enumerate(n.inputs):
            if y.name == c:
                n.inputs[j] = dq
    for i, r in p.roles.items():  # int32 biases of the integer Conv / Gemm layers
        if r == "layer" and g.node[i].op_type in ("Conv", "Gemm"):
            _int32_bias(graph, tensors, nodes[i], g.node[i], params, qweights)
    if not made:
        return model
    pads_on_codes(graph)
    hardswish_on_codes(graph, lambda base: _unique(tensors, base))
    hardsigmoid_on_codes(graph, lambda base: _unique(tensors, base))
    return export_graph(graph, model, opset)


def _root(p: Plan, t: str) -> str:
    """The first tensor of t's chain of data movement (t itself where its grid is its own)."""
    while p.tensors.get(t) is not None:
        t = p.tensors[t]
    return t


def _params(g: onnx.GraphProto, p: Plan, ranges: dict[str, tuple[float, float]],
            act_type: str) -> dict[str, QParams]:
    """Each quantized tensor's scale and zero point: its own range's; a data-movement output
    its chain's first tensor's (CHAINS); then JOIN, for every integer Concat in graph order:
    the output takes the finest of its inputs' grids that holds every input's range (passed
    on to the tensors that share the output's), where one does."""
    from_zero = {g.node[c].output[0] for c in p.absorbed.values()}
    params: dict[str, QParams] = {}
    for t, src in p.tensors.items():  # own ranges first, then shared ones in order
        if src is None and t in ranges:
            params[t] = qparams(*ranges[t], act_type, from_zero=t in from_zero)
    for t, src in p.tensors.items():  # a data-movement output: its chain's first tensor's
        while CHAINS and src is not None and src not in params:
            src = p.tensors.get(src)
        if src is not None and src in params:
            params[t] = params[src]
    for i in sorted(i for i, r in p.roles.items() if JOIN and r == "compute"
                    and g.node[i].op_type == "Concat" and i not in p.absorbed):
        out, grids = g.node[i].output[0], [params.get(t) for t in g.node[i].input]
        if out not in params or p.tensors.get(out) is not None or None in grids:
            continue
        holds = [q for q in grids if _holds(q, grids)]  # type: ignore[arg-type]
        if not holds:
            continue
        changed = {out}
        params[out] = min(holds, key=lambda q: q.scale)  # type: ignore[union-attr]
        while changed:  # the outputs of data movement that share it
            changed = {t for t, src in p.tensors.items() if src in changed and t in params}
            params.update({t: params[p.tensors[t]] for t in changed})  # type: ignore[index]
    return params


def _holds(q: QParams, others: list[QParams]) -> bool:
    """Whether grid q represents the others' ranges, to within one of its steps."""
    def span(g: QParams) -> tuple[float, float]:
        lo, hi = (-128, 127) if g.dtype == np.int8 else (0, 255)
        return (lo - g.zero_point) * g.scale, (hi - g.zero_point) * g.scale

    lo, hi = span(q)
    return all(lo - q.scale <= a and b <= hi + q.scale for a, b in map(span, others))


def _unique(tensors: dict[str, gs.Tensor], base: str) -> str:
    """`base`, or `base_2`, `base_3`... : a tensor name the graph does not have yet."""
    name, k = base, 1
    while name in tensors:
        k += 1
        name = f"{base}_{k}"
    tensors[name] = None  # reserved
    return name


def _gsdata_inputs(n: gs.Node) -> list[gs.Tensor]:
    if n.op in ("Add", "Mul", "MatMul"):
        return list(n.inputs[:2])
    if n.op == "Concat":
        return list(n.inputs)
    return list(n.inputs[:1])


def _int32_bias(graph: gs.Graph, tensors: dict[str, gs.Tensor], node: gs.Node,
                proto_node: onnx.NodeProto, params: dict[str, QParams],
                qweights: dict[str, QuantizedWeight]) -> None:
    """Conv / Gemm bias -> int32 codes round(b / (x_scale * w_scale)) behind a DQ with that
    scale (onnxruntime's QLinearConv / QGemm use the codes as they are)."""
    x, w = proto_node.input[0], proto_node.input[1]
    q = qweights.get(w)
    if x not in params or q is None or len(node.inputs) < 3:
        return
    value = constant_value(node.inputs[2])  # an initializer or a Constant node's output
    if value is None:
        return
    value = value.astype(np.float64)
    beta = float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else 1.0
    m = q.scale.size
    if value.size != m or value.ndim not in (1, 2) or (value.ndim == 2 and value.shape[0] != 1):
        return
    scale = (np.float32(params[x].scale) * q.scale.astype(np.float32)).astype(np.float32)
    codes = np.rint(value.reshape(-1) * beta / scale.astype(np.float64))
    codes = np.clip(codes, -(2 ** 31), 2 ** 31 - 1).astype(np.int32).reshape(value.shape)
    name = _unique(tensors, f"{node.name or w}_bias")
    dq = gs.Variable(_unique(tensors, f"{name}_dequantized"), dtype=np.float32,
                     shape=list(value.shape))
    graph.nodes.append(gs.Node("DequantizeLinear", f"{name}_DequantizeLinear",
                               {"axis": value.ndim - 1},
                               inputs=[constant(_unique(tensors, f"{name}_quantized"), codes),
                                       constant(_unique(tensors, f"{name}_scale"), scale)],
                               outputs=[dq]))
    node.inputs[2] = dq
    if node.op == "Gemm":
        node.attrs["beta"] = 1.0
