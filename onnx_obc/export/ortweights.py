"""The onnxruntime target's float-run weights: codes that onnxruntime would dequantize at
every run, written so that it dequantizes them once, when the session loads.

A weight stored as codes behind DequantizeLinear runs on an integer kernel only where
onnxruntime's QDQ rules fuse it: 8-bit codes beside a quantized activation (QLinearConv,
QGemm, MatMulIntegerToFloat...). Everywhere else (4-bit Conv weights: no integer kernel
takes them, MatMulNBits takes MatMul / Gemm weights only; weights-only runs: the
activation is float) the optimized graph keeps DequantizeLinear -> float op, and its
constant folding leaves DequantizeLinear alone (it keeps them for the QDQ fusions): the
weights are dequantized at every inference. The PP-OCRv4 recognizer at `--bits 4`
(38 Convs so, 9 MatMuls on MatMulNBits) ran 1.22x its fp32 model's latency.

Here such a DequantizeLinear becomes the same arithmetic in plain ops,

    codes --Cast(float)--> [Sub zero point] --Mul scale--> W      (blocked scales: through a
                                                                   Reshape to [..., n/b, b, ...])

which DequantizeLinear computes as well ((q - z) * s in float32: q - z is exact, one
rounding in the product), and which onnxruntime's constant folding computes once at load:
the file keeps the codes (4 bits: an eighth of fp32), the session runs float weights. The
same recognizer: 0.785x fp32 (the float convs at fp32 speed, the MatMuls on MatMulNBits),
the outputs unchanged. `folded` tells the fusion check which layers are stored so.
The tensorrt target keeps DequantizeLinear (TensorRT's weight-only and explicit-quantization
paths read it).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .graph import constant, export_graph, model_opset

FOLDED = ("Conv", "ConvTranspose", "Gemm")  # the readers whose weights may be folded


def fold(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """`model` with every weight DequantizeLinear that no integer kernel would take written
    as Cast -> [Sub] -> Mul (module docstring), and the weights so written."""
    graph = gs.import_onnx(model)
    done: list[str] = []
    for n in list(graph.nodes):
        if n.op != "DequantizeLinear" or not _foldable(n):
            continue
        codes, scale = n.inputs[0], n.inputs[1]
        zero = n.inputs[2] if len(n.inputs) > 2 and n.inputs[2].name else None
        shape = list(codes.shape)
        axis = int(n.attrs.get("axis", 1)) % len(shape)
        block = int(n.attrs.get("block_size", 0))
        name = n.outputs[0].name
        grouped, bshape = _grouping(shape, axis, block, np.shape(scale.values))
        if grouped is None:
            continue  # a last partial block, or scales of another shape: DequantizeLinear stays
        x = _op(graph, "Cast", f"{name}_FoldCast", [codes], {"to": onnx.TensorProto.FLOAT})
        if grouped != shape:
            x = _op(graph, "Reshape", f"{name}_FoldIn", [x, constant(
                f"{name}_fold_shape", np.array(grouped, np.int64))])
        if zero is not None and np.any(zero.values.astype(np.int32)):
            x = _op(graph, "Sub", f"{name}_FoldSub", [x, constant(
                f"{name}_fold_zero", zero.values.astype(np.float32).reshape(bshape))])
        out = n.outputs[0]
        s = constant(f"{name}_fold_scale", scale.values.astype(np.float32).reshape(bshape))
        if grouped != shape:
            x = _op(graph, "Mul", f"{name}_FoldMul", [x, s])
            _op(graph, "Reshape", f"{name}_FoldOut", [x, constant(
                f"{name}_fold_out_shape", np.array(shape, np.int64))], out=out)
        else:
            _op(graph, "Mul", f"{name}_FoldMul", [x, s], out=out)
        n.outputs.clear()
        done.append(name)
    if not done:
        return model, []
    return export_graph(graph, model, model_opset(model)), done


def folded(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """weight -> (its codes, why it runs in float) for the weights `fold` wrote (a Cast
    named "<weight>_FoldCast" of a constant)."""
    types = {t.name: t.data_type for t in model.graph.initializer}
    deconv = {n.input[1] for n in model.graph.node if n.op_type == "ConvTranspose"}
    out = {}
    for n in model.graph.node:
        if n.op_type == "Cast" and n.name.endswith("_FoldCast") and n.input[0] in types:
            four = types[n.input[0]] in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
            w = n.name[:-len("_FoldCast")]
            out[w] = (n.input[0], "weights dequantized once at load — " + (
                "onnxruntime has no integer ConvTranspose kernel" if w in deconv else
                "no integer kernel takes 4-bit Conv weights" if four else
                "its input activation is float (weights only)")
                + " (codes behind Cast · scale, constant-folded: fp32 speed)")
    return out


def _foldable(n: gs.Node) -> bool:
    """A layer weight's DequantizeLinear (constant codes, scale and zero point, float32 out)
    read as the weight of Convs, ConvTransposes (or of Gemms with transB = 1) alone, whose
    readers will run in float: 4-bit codes, ConvTransposes, or no reader with a dequantized
    activation beside it. MatMul and
    Gemm with transB = 0 are left to onnxruntime, which fuses a per-axis DequantizeLinear
    before them into MatMulNBits itself (checked with 1.31: 8, 4 and 3 bits); constant
    operands of the integer Add / Mul / Concat kernels are not layer weights."""
    ins = [t for t in n.inputs if t.name]
    if not all(isinstance(t, gs.Constant) for t in ins) or len(n.outputs) != 1:
        return False
    if n.attrs.get("output_dtype", onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT:
        return False
    w = n.outputs[0]
    readers = list(w.outputs)
    if not readers or any(r.op not in FOLDED or r.inputs[1] is not w or (
            r.op == "Gemm" and not r.attrs.get("transB", 0)) for r in readers):
        return False
    if str(ins[0].dtype) in ("int4", "uint4") or all(r.op == "ConvTranspose" for r in readers):
        return True  # no integer kernel for these (checked with onnxruntime 1.31, CPU)
    return not any(_dequantized(t) for r in readers for t in r.inputs if t is not w)


def _dequantized(t: gs.Tensor) -> bool:
    return any(p.op == "DequantizeLinear" for p in t.inputs)


def _grouping(shape: list[int], axis: int, block: int, scale_shape: tuple[int, ...]
              ) -> tuple[list[int] | None, list[int]]:
    """(the shape the codes take for the Mul: `shape` itself, or with the block axis split
    in [n / b, b]; None where b does not divide n or the scales have another shape), the
    scale's shape for it (all ones for one scale per tensor)."""
    if not block:
        bshape = [1] * len(shape)
        if int(np.prod(scale_shape)) == 1:  # per tensor (an input model's own weights)
            return shape, bshape
        if tuple(scale_shape) != (shape[axis],):
            return None, []
        bshape[axis] = shape[axis]
        return shape, bshape
    if shape[axis] % block or tuple(scale_shape) != tuple(
            s // block if i == axis else s for i, s in enumerate(shape)):
        return None, []
    grouped = shape[:axis] + [shape[axis] // block, block] + shape[axis + 1:]
    bshape = shape[:axis] + [shape[axis] // block, 1] + shape[axis + 1:]
    return grouped, bshape


def _op(graph: gs.Graph, op: str, name: str, inputs: list, attrs: dict | None = None,
        out: gs.Variable | None = None) -> gs.Variable:
    y = out if out is not None else gs.Variable(f"{name}_out", dtype=np.float32)
    graph.nodes.append(gs.Node(op, name, attrs or {}, inputs=inputs, outputs=[y]))
    return y
