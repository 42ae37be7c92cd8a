"""Integer weights for DequantizeLinear: the solver's grids and codes in the ONNX weight
layout (`to_onnx`), their validation and opset needs, and the edit that stores them.

Grids are per row and column group of W [rows, cols]; in the ONNX layout:

  per output channel: Conv W[M, C/g, *k] axis 0; Gemm transB=1 B[N, K] axis 0;
                      MatMul / Gemm transB=0 B[K, N] axis 1; ConvTranspose W[C, M, *k] axis 1
  column groups (blocked, opset 21) along the reduction axis: B[N, K] axis 1; B[K, N] axis 0;
                      Conv axis 1, ConvTranspose axis 0 (input channels), when the group size
                      is a multiple of prod(kernel) so that a block is whole channels at every
                      kernel position

Each quantized float weight `W` (initializer or Constant node) becomes

    W_quantized (INT8/UINT8, or INT4/UINT4 for bits <= 4), W_scale, W_zero_point
        --DequantizeLinear(axis[, block_size]) "W_DequantizeLinear"--> W

so every consumer (also several consumers of a shared weight) reads the dequantized tensor
under the original name; nothing else is rewired. Per-axis INT8/UINT8 needs opset 13; INT4 /
UINT4 storage or blocked scales need 21 (a lower opset is raised). Only float32 weights.

onnxruntime (checked with 1.31, CPU) runs all of these. Its optimizer fuses DQ -> MatMul
into MatMulNBits, whose default accuracy level 4 quantizes the activations to int8 (~1e-3
relative error; session config "session.qdq_matmulnbits_accuracy_level" = "0" keeps float
math).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import ModelError
from ..layers import Layer
from ..quant import Grid, QuantSpec
from .graph import constant, ensure_opset, export_graph, fresh, model_opset, rewire


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
    reduced: bool = False  # 8-bit codes in 7 bits' range (quant.reduce_range)

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


def validate(name: str, q: QuantizedWeight, layer: Layer) -> None:
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


def group_size_for(layer: Layer, spec: QuantSpec) -> tuple[QuantSpec, str]:
    """The spec a layer can use, and why it differs from the requested one ("" if not)."""
    g = spec.group_size
    if g is None:
        return spec, ""
    _, _, d = layer.matrix_shape
    k = math.prod(layer.shape[2:]) if layer.layout in ("conv", "deconv") else 1
    if d % g or g % k:
        why = (f"group size {g} does not divide its {d} inputs per output"
               if d % g else f"group size {g} is not a multiple of its kernel size {k}")
        return dataclasses.replace(spec, group_size=None), \
            f"{layer.name}: {why}; quantized per output channel instead"
    return spec, ""


def to_onnx(layer: Layer, codes: np.ndarray, grid: Grid, bits: int) -> QuantizedWeight:
    """codes [G, r, d] and the grid over G*r rows -> a QuantizedWeight in ONNX layout."""
    G, r, d = layer.matrix_shape
    q = layer.from_matrix(np.asarray(codes))
    scale = np.asarray(grid.scale, dtype=np.float32)  # [R, n_groups]
    zero = np.asarray(grid.zero).round().astype(np.int32)
    signed = grid.qmin < 0
    kind = (bits, signed, bits == 8 and grid.qmax < (127 if signed else 255))  # reduced
    if grid.group_size == d:  # per output channel
        axis = 1 if layer.layout in ("cols", "deconv") else 0
        return QuantizedWeight(q, scale[:, 0], zero[:, 0], axis, None, *kind)
    g = grid.group_size
    if layer.layout == "rows":
        return QuantizedWeight(q, scale, zero, 1, g, *kind)
    if layer.layout == "cols":
        return QuantizedWeight(q, scale.T.copy(), zero.T.copy(), 0, g, *kind)
    k = layer.shape[2:]
    m = g // math.prod(k)  # input channels per block: blocks along the input channel axis
    if layer.layout == "deconv":  # W [C, M, *k]: scale [M, C/m] -> [C/m, M, *k]
        shape, scale, zero, axis = (layer.shape[0] // m, layer.shape[1]) + (1,) * len(k), \
            scale.T, zero.T, 0
    else:  # W [M, C, *k]: scale [M, C/m] -> [M, C/m, *k]
        shape, axis = (layer.shape[0], layer.shape[1] // m) + (1,) * len(k), 1
    scale_c = np.broadcast_to(scale.reshape(shape), shape[:2] + tuple(k)).copy()
    zero_c = np.broadcast_to(zero.reshape(shape), shape[:2] + tuple(k)).copy()
    return QuantizedWeight(q, scale_c, zero_c, axis, m, *kind)


def quantize_weights(model: onnx.ModelProto, layers: list[Layer],
                     qweights: dict[str, QuantizedWeight]) -> onnx.ModelProto:
    """Copy of `model` with each weight in `qweights` stored as integer codes behind a
    DequantizeLinear node that outputs the original weight name (`model` itself when
    `qweights` is empty)."""
    by_name = {layer.weight: layer for layer in layers}
    for name, q in qweights.items():
        if name not in by_name:
            raise ModelError(f"quantized weight {name!r} is not one of the model's layers")
        validate(name, q, by_name[name])
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
            rewire(w, out, list(w.outputs))
            w.name, w = f"{name}_float", out
        else:  # output of a Constant node: drop the node, keep the tensor and its consumers
            if not w.inputs or w.inputs[0].op != "Constant":
                raise ModelError(f"internal: weight {name!r} is neither an initializer nor "
                                 "the output of a Constant node")
            w.inputs.clear()
        fresh(tensors, f"{name}_quantized", f"{name}_scale", f"{name}_zero_point")
        attrs: dict[str, int] = {"axis": q.axis % q.codes.ndim}
        if q.block_size is not None:
            attrs["block_size"] = int(q.block_size)
        inputs = [constant(f"{name}_quantized", q.codes.astype(q.storage)),
                  constant(f"{name}_scale", q.scale.astype(np.float32)),
                  constant(f"{name}_zero_point", q.zero_point.astype(q.storage))]
        graph.nodes.append(gs.Node("DequantizeLinear", f"{name}_DequantizeLinear", attrs,
                                   inputs=inputs, outputs=[w]))
    return export_graph(graph, model, opset)
