"""Why onnxruntime's QDQ rules leave a layer with dequantized weights float, read from the
exported graph (the fusion check's reasons, fusion.py): an input not quantized, an output
read in float, a graph output, a float bias, int8 activations on x86, 4-bit or blocked
weights, a 2-D MatMul fused with its bias into a float Gemm."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from ..layers import constant_weights

__all__ = ["graph_maps", "why_not"]


def graph_maps(model: onnx.ModelProto) -> tuple[dict, dict, set, dict]:
    """(producer and readers of each tensor, graph outputs, constant weights): why_not's."""
    g = model.graph
    producer = {t: m for m in g.node for t in m.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for m, t in ((m, t) for m in g.node for t in m.input):
        readers.setdefault(t, []).append(m)
    return producer, readers, {o.name for o in g.output}, constant_weights(g)


def why_not(model: onnx.ModelProto, index: int, maps: tuple | None = None) -> str:
    """Why onnxruntime's QDQ rules do not turn graph.node[index] (a Conv / Gemm / MatMul with
    a dequantized weight) into an integer kernel, read from the exported graph (every reason,
    "; " between them). `maps`: graph_maps(model), when the caller has it."""
    g = model.graph
    n = g.node[index]
    producer, readers, outputs, consts = maps if maps is not None else graph_maps(model)
    why = []
    if n.op_type == "ConvTranspose":
        why.append("onnxruntime has no integer ConvTranspose kernel (CPU)")
    wdq = producer.get(n.input[1])
    if wdq is not None and wdq.op_type == "DequantizeLinear":
        t = consts.get(wdq.input[0])
        if t is not None and t[1].data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            why.append("4-bit weights: onnxruntime has no QLinear kernel for them"
                       + (" (MatMulNBits takes MatMul / Gemm weights only)"
                          if n.op_type == "Conv" else ""))
        if any(a.name == "block_size" and a.i for a in wdq.attribute):
            why.append("blocked (--group-size) weight scales: no QLinear kernel for them")
    xdq = producer.get(n.input[0])
    x_type = None
    if xdq is None or xdq.op_type != "DequantizeLinear":
        why.append("its input activation is not quantized (no QuantizeLinear -> "
                   "DequantizeLinear before it)")
    else:
        x_type = _zero_point_type(g, xdq, consts)
    if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2]:
        bdq = producer.get(n.input[2])
        t = (consts.get(bdq.input[0]) if bdq is not None and bdq.op_type == "DequantizeLinear"
             else None)
        if t is None or t[1].data_type != onnx.TensorProto.INT32:
            why.append("its bias is float (onnxruntime needs int32 codes behind "
                       "DequantizeLinear)")
    if n.op_type == "Gemm" and any(a.name == "beta" and a.f != 1.0 for a in n.attribute):
        why.append("Gemm beta != 1 with a bias")
    out = n.output[0]
    after = readers.get(out, [])
    if n.op_type == "MatMul" and len(after) == 1 and after[0].op_type == "Add" and any(
            i in consts for i in after[0].input):
        why.append("onnxruntime fuses a MatMul of a 2-D input and the bias Add after it into a "
                   "float Gemm before its QDQ rules run, and none takes a float bias")
    if len(after) == 1 and after[0].op_type in ("Relu", "Clip") and out not in outputs:
        clip = after[0]
        nxt = readers.get(clip.output[0], [])
        if (nxt and all(m.op_type == "QuantizeLinear" for m in nxt)
                and not _zero_point_is_lowest(g, nxt[0], consts)):
            why.append(f"the {clip.op_type} after it is not made redundant by its output "
                       "quantization (zero point is not the lowest code)")
        out, after = clip.output[0], nxt
    qs = [m for m in after if m.op_type == "QuantizeLinear"]
    if out in outputs and n.op_type == "Conv":
        why.append("its output is a graph output (kept float)")
    elif n.op_type == "Conv" and after and _only_to_outputs(out, readers, outputs):
        why.append("its output only feeds graph outputs (through Concat / data movement) "
                   "and is not quantized")
    elif n.op_type == "Conv" and len(qs) < len(after):
        shown = ", ".join(f"{m.op_type} {m.name!r}" for m in after
                          if m.op_type != "QuantizeLinear")
        why.append(f"output not quantized (read in float by {shown})")
    elif qs and len(qs) < len(after):
        why.append("its output is read both through a QuantizeLinear and in float")
    if qs and x_type is not None and _zero_point_type(g, qs[0], consts) != x_type:
        why.append("input and output are quantized to different types")
    if not why and x_type == onnx.TensorProto.INT8 and n.op_type in ("Conv", "MatMul"):
        why.append("int8 (s8) activations: onnxruntime fuses int8 Conv/MatMul groups only on "
                   "ARM or with session option session.qdq_is_int8_allowed=1 (x86: use u8)")
    return "; ".join(why) or "no onnxruntime QDQ rule matched"


def _only_to_outputs(t: str, readers: dict[str, list[onnx.NodeProto]], outputs: set[str],
                     depth: int = 0) -> bool:
    """Whether `t` reaches only graph outputs, through Concat / data-movement ops."""
    from .ortplan import MOVE_OPS

    r = readers.get(t, [])
    if depth > 64 or not (r or t in outputs):
        return False
    return all(m.op_type in MOVE_OPS + ("Concat",) and all(
        _only_to_outputs(o, readers, outputs, depth + 1) for o in m.output) for m in r)


def _zero_point_type(g: onnx.GraphProto, node: onnx.NodeProto, consts: dict) -> int | None:
    if len(node.input) < 3 or node.input[2] not in consts:
        return onnx.TensorProto.UINT8 if node.op_type == "QuantizeLinear" else None
    return consts[node.input[2]][1].data_type


def _zero_point_is_lowest(g: onnx.GraphProto, q: onnx.NodeProto, consts: dict) -> bool:
    if len(q.input) < 3 or q.input[2] not in consts:
        return True  # default uint8 zero point 0
    t = consts[q.input[2]][1]
    zp = int(numpy_helper.to_array(t).reshape(-1)[0])
    return zp == {onnx.TensorProto.INT8: -128, onnx.TensorProto.UINT8: 0}.get(t.data_type, zp)
