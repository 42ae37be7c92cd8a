"""A uniform shift before integer Convs, v = x + c, taken into the zero point of v's codes.

The fold stage (fold/before.py) leaves one float Add of t / s in front of a Conv that pads:
the padding's zeros belong to the shifted tensor, so the shift cannot go into the bias. On the
onnxruntime target that Add is a float op on a whole feature map between float ops and the
Conv's QuantizeLinear. Where c is one number (PP-OCRv4's learnable affine blocks are scalars,
stored per channel) its work can go into the codes: with k = round(c / S) for v's scale S
and zero point Z, the scale moved to S' = c / k (so that c = k S' exactly),

    QuantizeLinear(x; S', Z + k)  =  round(x / S') + k + Z  =  QuantizeLinear(x + c; S', Z)

and the Conv's DequantizeLinear(S', Z) reads v; QLinearConv pads with Z, v's zero, as
before. Taken where S' is within TOLERANCE of S (always when |c| >= 10 S), v is read by
integer Convs alone and is not a graph output, x itself is not quantized, and Z + k is a code
of the activation type. (Keeping S and folding the remainder c - k S into the Conv biases is
exact only where the kernel sees no padding: on ppocr_rec's 3-row feature maps it raised the
output error 0.148 -> 0.171.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .graph import constant_value


ABSORB_SHIFTS = True  # measured on ppocr_det / ppocr_rec (docs/deployment.md)
TOLERANCE = 0.05  # relative change of the scale allowed


@dataclass(frozen=True)
class Shift:
    source: gs.Variable  # x: what the QuantizeLinear reads instead of v
    zero_point: int  # the QuantizeLinear's zero point, Z + k
    scale: float  # S' = c / k, the scale of both the QuantizeLinear and v's DequantizeLinear


def shifts(graph: gs.Graph, tensors: dict[str, gs.Tensor], params: dict,
           integer_ids: set[int]) -> dict[str, Shift]:
    """Quantized tensor name -> its Shift, for each v = Add(x, uniform constant) as above."""
    if not ABSORB_SHIFTS:
        return {}
    outputs = {t.name for t in graph.outputs}
    found: dict[str, Shift] = {}
    for t, qp in params.items():
        v = tensors.get(t)
        if not isinstance(v, gs.Variable) or len(v.inputs) != 1 or t in outputs:
            continue
        add = v.inputs[0]
        if add.op != "Add" or id(add) in integer_ids or len(add.inputs) != 2:
            continue
        values = [constant_value(y) for y in add.inputs]  # initializer or Constant node
        xs = [y for y, c in zip(add.inputs, values) if c is None]
        cs = [c for c in values if c is not None]
        if len(cs) != 1 or len(xs) != 1 or cs[0].size == 0:
            continue
        x, c = xs[0], cs[0].astype(np.float64)
        if (x.name in params or x.name in outputs or not v.outputs or np.ptp(c) != 0
                or not np.isfinite(c.flat[0]) or not _keeps_shape(x.shape, c.shape)):
            continue
        if not all(n.op == "Conv" and id(n) in integer_ids and n.inputs[0] is v
                   for n in v.outputs):
            continue
        c = float(c.flat[0])
        k = int(np.rint(c / qp.scale))
        lo, hi = (-128, 127) if qp.dtype == np.int8 else (0, 255)
        if k and abs(c / k / qp.scale - 1) <= TOLERANCE and lo <= qp.zero_point + k <= hi:
            found[t] = Shift(x, qp.zero_point + k, c / k)
    return found


def _keeps_shape(x: list | None, c: tuple[int, ...]) -> bool:
    """x + c has x's shape: c has one element, or x's shape is known and every axis where c
    has more than one element matches x's (numpy broadcasting, aligned on the right)."""
    if int(np.prod(c)) == 1:
        return True
    if x is None or len(c) > len(x):
        return False
    return all(d == 1 or x[len(x) - len(c) + i] == d for i, d in enumerate(c))
