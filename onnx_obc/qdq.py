"""Deployable QDQ output, weights: integer codes behind DequantizeLinear, and the shared
graph-edit helpers (opset raise, tensor naming, export). Activations: actqdq.py.

Each quantized float weight `W` (initializer or Constant node) becomes

    W_quantized (INT8/UINT8, or INT4/UINT4 for bits <= 4), W_scale, W_zero_point
        --DequantizeLinear(axis[, block_size]) "W_DequantizeLinear"--> W

so every consumer (also several consumers of a shared weight) reads the dequantized tensor
under the original name; nothing else is rewired.

Opsets: per-axis INT8/UINT8 needs opset 13; INT4/UINT4 storage or blocked scales need 21.
A lower opset is raised with onnx's version converter before the edit, and the IR version
to what the final opset requires. Only float32 weights are handled.

onnxruntime (checked with 1.31, CPU) runs all of these. Its optimizer fuses DQ -> MatMul
into MatMulNBits, whose default accuracy level 4 quantizes the activations to int8 (~1e-3
relative error; session config "session.qdq_matmulnbits_accuracy_level" = "0" keeps float
math).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper, version_converter
from onnx_graphsurgeon.ir.tensor import LazyValues

from .errors import ModelError
from .layers import Layer
from .rewrite import check

_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class QuantizedWeight:
    """Integer codes of one weight; dequantized = (codes - zero_point) * scale."""

    codes: np.ndarray  # integer codes, ONNX weight layout (same shape as the float weight)
    scale: np.ndarray  # per-axis: [shape[axis]]; blocked: weight rank, dim axis = ceil(n/block)
    zero_point: np.ndarray  # same shape as scale (all 0 in symmetric mode)
    axis: int  # per-axis: the channel axis; blocked: the axis the blocks run along
    block_size: int | None  # None = per-axis
    bits: int  # 2..8
    signed: bool  # True: int8/int4 storage; False: uint8/uint4

    @property
    def qrange(self) -> tuple[int, int]:
        """Smallest and largest code for `bits`."""
        if self.signed:
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1

    @property
    def storage(self) -> np.dtype:
        """numpy dtype of the stored codes (ml_dtypes int4/uint4 for bits <= 4)."""
        if self.bits <= 4:
            return np.dtype(ml_dtypes.int4 if self.signed else ml_dtypes.uint4)
        return np.dtype(np.int8 if self.signed else np.uint8)

    def expand(self, a: np.ndarray) -> np.ndarray:
        """Broadcast a scale-shaped array to the weight's shape."""
        ax = self.axis % self.codes.ndim
        if self.block_size is None:
            shape = [1] * self.codes.ndim
            shape[ax] = -1
            return a.reshape(shape)
        n = self.codes.shape[ax]
        return np.repeat(a, self.block_size, axis=ax).take(np.arange(n), axis=ax)

    def dequantize(self) -> np.ndarray:
        """The float32 weight a DequantizeLinear node computes from these codes."""
        diff = self.codes.astype(np.int32) - self.expand(self.zero_point.astype(np.int32))
        return diff.astype(np.float32) * self.expand(self.scale.astype(np.float32))


def required_opset(q: QuantizedWeight) -> tuple[int, str]:
    """(default-domain opset, reason) needed to store `q` with DequantizeLinear."""
    if q.block_size is not None:
        return 21, "blocked scales (--group-size) need DequantizeLinear-21 (block_size)"
    if q.bits <= 4:
        return 21, f"{q.bits}-bit weights are stored as INT4/UINT4, which needs opset 21"
    return 13, "per-channel DequantizeLinear needs opset 13"


def model_opset(model: onnx.ModelProto) -> int:
    """Version of the default ONNX domain the model imports."""
    versions = [op.version for op in model.opset_import if op.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise ModelError("the model imports no default-domain ('ai.onnx') opset")
    return int(versions[0])


def _min_ir_version(opset: int) -> int:
    """Lowest IR version whose onnx release already knew `opset` (21 -> 10)."""
    return next((int(ir) for _, ir, ai_onnx, *_ in helper.VERSION_TABLE if ai_onnx >= opset),
                int(onnx.IR_VERSION))


def ensure_opset(model: onnx.ModelProto, needed: int, why: str) -> onnx.ModelProto:
    """`model` itself if its opset is >= needed, else a converted copy (ModelError if not)."""
    current = model_opset(model)
    if current >= needed:
        return model
    hint = " or use --bits 8 without --group-size to stay at opset 13" if needed >= 21 else ""
    try:
        out = version_converter.convert_version(model, needed)
    except Exception as exc:  # the converter raises plain RuntimeError/ValueError
        raise ModelError(
            f"the model uses opset {current}, but {why}; onnx's version converter could not "
            f"upgrade it to opset {needed} ({type(exc).__name__}: {exc}). Re-export the model "
            f"at opset >= {needed}{hint}.") from None
    out.ir_version = max(out.ir_version, _min_ir_version(needed))
    return out


def _validate(name: str, q: QuantizedWeight, layer: Layer) -> None:
    def bad(msg: str) -> ModelError:
        return ModelError(f"quantized weight {name!r}: {msg}")

    if not 2 <= q.bits <= 8:
        raise bad(f"bits={q.bits}, expected 2..8")
    if tuple(q.codes.shape) != tuple(layer.shape):
        raise bad(f"codes shape {q.codes.shape} != weight shape {layer.shape}")
    if q.codes.dtype.kind not in "iu" or q.zero_point.dtype.kind not in "iu":
        raise bad("codes and zero_point must be integer arrays")
    if layer.dtype != "float32":
        raise bad(f"weight dtype {layer.dtype}: only float32 weights are written as QDQ")
    rank = len(layer.shape)
    if not -rank <= q.axis < rank:
        raise bad(f"axis {q.axis} out of range for rank {rank}")
    ax = q.axis % rank
    if q.block_size is None:
        want: tuple[int, ...] = (layer.shape[ax],)
    elif q.block_size < 1:
        raise bad(f"block_size={q.block_size}, expected >= 1")
    else:
        want = tuple(math.ceil(n / q.block_size) if i == ax else n
                     for i, n in enumerate(layer.shape))
    if tuple(q.scale.shape) != want or tuple(q.zero_point.shape) != want:
        raise bad(f"scale {q.scale.shape} and zero_point {q.zero_point.shape} must have "
                  f"shape {want}")
    if not np.all(np.isfinite(q.scale)):
        raise bad("scale has non-finite values")
    lo, hi = q.qrange
    for what, arr in (("codes", q.codes), ("zero_point", q.zero_point)):
        if arr.size and (arr.min() < lo or arr.max() > hi):
            raise bad(f"{what} outside [{lo}, {hi}] for {q.bits}-bit "
                      f"{'signed' if q.signed else 'unsigned'} codes")


def _fresh(tensors: dict[str, gs.Tensor], *names: str) -> None:
    """ModelError if a tensor name the edit adds already exists in the graph."""
    taken = [n for n in names if n in tensors]
    if taken:
        raise ModelError(f"cannot add tensor(s) {taken}: the model already has tensors with "
                         "these names")


def _rewire(old: gs.Tensor, new: gs.Tensor, nodes: list[gs.Node]) -> None:
    """Make `nodes` read `new` wherever they read `old`."""
    for node in nodes:
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new  # gs keeps both tensors' consumer lists in sync


def _constant(name: str, values: np.ndarray) -> gs.Constant:
    """gs.Constant backed by a TensorProto: onnx packs INT4/UINT4 (gs itself would not)."""
    return gs.Constant(name, values=LazyValues(numpy_helper.from_array(values, name)))


def _export(graph: gs.Graph, source: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Export `graph` at `opset`, keeping the other opset imports and model metadata."""
    graph.cleanup().toposort()
    imports = [helper.make_opsetid("", opset)] + [
        helper.make_opsetid(op.domain, op.version) for op in source.opset_import
        if op.domain not in _DEFAULT_DOMAINS]
    out = gs.export_onnx(graph, opset_imports=imports)
    out.ir_version = max(source.ir_version, _min_ir_version(opset))
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, field, getattr(source, field))
    out.metadata_props.extend(source.metadata_props)
    check(out)
    return out


def quantize_weights(model: onnx.ModelProto, layers: list[Layer],
                     qweights: dict[str, QuantizedWeight]) -> onnx.ModelProto:
    """Copy of `model` with each weight in `qweights` stored as integer codes behind a
    DequantizeLinear node that outputs the original weight name (`model` itself when
    `qweights` is empty)."""
    by_name = {layer.weight: layer for layer in layers}
    for name, q in qweights.items():
        if name not in by_name:
            raise ModelError(f"quantized weight {name!r} is not one of the model's layers")
        _validate(name, q, by_name[name])
    if not qweights:
        return model
    needed, why = max(required_opset(q) for q in qweights.values())
    model = ensure_opset(model, needed, why)
    opset = model_opset(model)
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    for name, q in qweights.items():
        w = tensors.get(name)
        if w is None:
            raise ModelError(f"internal: weight {name!r} not found in the graph")
        if isinstance(w, gs.Constant):  # new variable of the same name; cleanup drops w
            out = gs.Variable(name, dtype=np.float32, shape=list(w.shape))
            _rewire(w, out, list(w.outputs))
            w.name, w = f"{name}_float", out
        else:  # output of a Constant node: drop the node, keep the tensor and its consumers
            if not w.inputs or w.inputs[0].op != "Constant":
                raise ModelError(f"internal: weight {name!r} is neither an initializer nor "
                                 "the output of a Constant node")
            w.inputs.clear()
        _fresh(tensors, f"{name}_quantized", f"{name}_scale", f"{name}_zero_point")
        attrs: dict[str, int] = {"axis": q.axis % q.codes.ndim}
        if q.block_size is not None:
            attrs["block_size"] = int(q.block_size)
        inputs = [_constant(f"{name}_quantized", q.codes.astype(q.storage)),
                  _constant(f"{name}_scale", q.scale.astype(np.float32)),
                  _constant(f"{name}_zero_point", q.zero_point.astype(q.storage))]
        graph.nodes.append(gs.Node("DequantizeLinear", f"{name}_DequantizeLinear", attrs,
                                   inputs=inputs, outputs=[w]))
    return _export(graph, model, opset)
