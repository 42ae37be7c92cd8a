"""Solver grids (per row and column group of W [rows, cols]) -> DequantizeLinear parameters
in the ONNX weight layout: integer codes, scale and zero point, axis and block size.

  per output channel: Conv W[M, C/g, *k] axis 0; Gemm transB=1 B[N, K] axis 0;
                      MatMul / Gemm transB=0 B[K, N] axis 1
  column groups (blocked, opset 21) along the reduction axis: B[N, K] axis 1; B[K, N] axis 0;
                      Conv axis 1 (input channels), when the group size is a multiple of
                      prod(kernel) so that a block is whole channels at every kernel position
"""

from __future__ import annotations

import math

import numpy as np

from .layers import Layer
from .qdq import QuantizedWeight
from .quant import Grid, QuantSpec


def group_size_for(layer: Layer, spec: QuantSpec) -> tuple[QuantSpec, str]:
    """The spec a layer can use, and why it differs from the requested one ("" if not)."""
    g = spec.group_size
    if g is None:
        return spec, ""
    _, _, d = layer.matrix_shape
    k = math.prod(layer.shape[2:]) if layer.layout == "conv" else 1
    if d % g or g % k:
        why = (f"group size {g} does not divide its {d} inputs per output"
               if d % g else f"group size {g} is not a multiple of its kernel size {k}")
        return QuantSpec(bits=spec.bits, symmetric=spec.symmetric, mse=spec.mse), \
            f"{layer.name}: {why}; quantized per output channel instead"
    return spec, ""


def to_onnx(layer: Layer, codes: np.ndarray, grid: Grid, bits: int) -> QuantizedWeight:
    """codes [G, r, d] and the grid over G*r rows -> a QuantizedWeight in ONNX layout."""
    G, r, d = layer.matrix_shape
    q = layer.from_matrix(np.asarray(codes))
    scale = np.asarray(grid.scale, dtype=np.float32)  # [R, n_groups]
    zero = np.asarray(grid.zero).round().astype(np.int32)
    signed = grid.qmin < 0
    if grid.group_size == d:  # per output channel
        axis = 1 if layer.layout == "cols" else 0
        return QuantizedWeight(q, scale[:, 0], zero[:, 0], axis, None, bits, signed)
    g = grid.group_size
    if layer.layout == "rows":
        return QuantizedWeight(q, scale, zero, 1, g, bits, signed)
    if layer.layout == "cols":
        return QuantizedWeight(q, scale.T.copy(), zero.T.copy(), 0, g, bits, signed)
    k = layer.shape[2:]
    m = g // math.prod(k)  # input channels per block
    shape = (layer.shape[0], layer.shape[1] // m) + (1,) * len(k)
    scale_c = np.broadcast_to(scale.reshape(shape), shape[:2] + tuple(k)).copy()
    zero_c = np.broadcast_to(zero.reshape(shape), shape[:2] + tuple(k)).copy()
    return QuantizedWeight(q, scale_c, zero_c, 1, m, bits, signed)
