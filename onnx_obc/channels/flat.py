"""Token rows flattened around a Gemm, as GPT-2's Conv1D exports (x.view(-1, C) -> Gemm ->
view(B, T, C')): a Reshape that keeps the channel axis last passes a plain site, and the
Gemm's rows are its tokens.

- `keeps_last`: a Reshape of `t` ([.., C] -> [.., C]) keeps every element's channel (row-major,
  the last axis C on both sides). Its last entry is the constant C (rewritten to the kept
  count, `Site.shapes`) or read from `t` itself at run time (Shape(t) -> last entry ->
  [Squeeze / Unsqueeze] -> that Concat's last piece, `own_width`): it follows the cut.
- `own_width`: such a Shape reader does not stop a cut (channels/readers.py).
- `row_positions`: tokens per sample of a 2-D Gemm / MatMul output whose input is such a
  flattening of a [B, T.., C] tensor, or row-wise ops on one (flops.py counts its MACs per
  token, not per row).
"""

from __future__ import annotations

import math
from typing import Any

import onnx

from .regions import ELEMENTWISE, UNARY

Rewrite = tuple[str, int, tuple[int, ...], int, int]  # as heads.HeadSplit.shapes


def keeps_last(g: Any, label: str, n: onnx.NodeProto, C: int) -> list[Rewrite] | None:
    """The shape rewrites of Reshape `n` (label) that keeps `C` channels as its last axis
    ([] when its last entry follows by itself), None when it does not keep them."""
    from .head_shapes import entries
    from .patterns import _Refused

    if len(n.input) < 2 or (g.dims(n.input[0]) or [None])[-1] not in (None, C):
        return None
    try:
        e = entries(g, label, n, "flattened")
    except _Refused:
        return None
    value, where = e[-1] if e else (None, None)
    if value == C and where is not None:
        return [(*where, 1)]
    if value is None and own_width(g, n):
        return []
    return None


def own_width(g: Any, reshape: onnx.NodeProto) -> bool:
    """Whether the last piece of Reshape `reshape`'s shape Concat is its data's last size,
    Shape(data) -> Slice [-1:] / Gather -1 -> [Squeeze] -> [Unsqueeze], each read once."""
    c = g.makers.get(reshape.input[1], ("", None))[1]
    if c is None or c.op_type != "Concat" or not c.input:
        return False
    t = c.input[-1]
    while True:
        n = g.makers.get(t, ("", None))[1]
        if n is None or len(g.users.get(t, [])) != 1:
            return False
        if n.op_type in ("Squeeze", "Unsqueeze"):
            t = n.input[0]
        elif n.op_type in ("Slice", "Gather") and _last(g, n):
            s = g.makers.get(n.input[0], ("", None))[1]
            return s is not None and s.op_type == "Shape" and s.input[0] == reshape.input[0] \
                and not any(a.name in ("start", "end") for a in s.attribute)
        else:
            return False


def shape_feeds_own_width(g: Any, shape: onnx.NodeProto, t: str) -> bool:
    """Whether Shape node `shape` of `t` reads its last size only for the last entry of a
    Reshape of `t` itself (own_width), through one chain."""
    users = g.users.get(shape.output[0], [])
    if len(users) != 1:
        return False
    x = users[0][1].output[0]
    while True:
        nxt = g.users.get(x, [])
        if len(nxt) != 1:
            return False
        n = nxt[0][1]
        if n.op_type == "Concat":
            readers = g.users.get(n.output[0], [])
            return n.input[-1] == x and len(readers) == 1 and \
                readers[0][1].op_type == "Reshape" and readers[0][1].input[0] == t and \
                own_width(g, readers[0][1])
        if n.op_type not in ("Squeeze", "Unsqueeze"):
            return False
        x = n.output[0]


ROW_OPS = {"Gemm", "MatMul", "LayerNormalization", "SimplifiedLayerNormalization", "Cast",
           *ELEMENTWISE, *UNARY}  # ops on 2-D rows that keep them


def row_positions(g: Any, tensor: str) -> int | None:
    """Tokens per sample behind the rows of the 2-D output `tensor` of a Gemm / MatMul whose
    input is a Reshape of a [B, T.., C] tensor to [rows, C], directly or through row-wise
    ops on the 2-D rows (OPT flattens the residual stream once per block: Reshape -> its
    LayerNorm -> fc1 -> act -> fc2); None otherwise."""
    n = g.makers.get(tensor, ("", None))[1]
    if n is None or n.op_type not in ("Gemm", "MatMul"):
        return None
    r = g.makers.get(n.input[0], ("", None))[1]
    for _ in range(8):  # back through row-wise 2-D ops to the flattening
        if r is None or r.op_type == "Reshape" or r.op_type not in ROW_OPS or \
                len(g.dims(r.output[0]) or []) != 2:
            break
        r = g.makers.get(r.input[0], ("", None))[1]
    if r is None or r.op_type != "Reshape":
        return None
    src, flat = g.dims(r.input[0]), g.dims(r.output[0])
    if not src or len(src) < 3 or not flat or len(flat) != 2 or src[-1] is None or \
            src[-1] != flat[-1]:
        return None
    return math.prod(d if d else 1 for d in src[1:-1])


def _last(g: Any, n: onnx.NodeProto) -> bool:
    """Slice [-1:] (to the end) or Gather of index -1 of a shape."""
    if n.op_type == "Gather":
        return len(n.input) > 1 and g.values.get(n.input[1]) == [-1]
    return len(n.input) >= 3 and g.values.get(n.input[1]) == [-1] and \
        (g.values.get(n.input[2]) or [0])[0] >= 2 ** 31 - 1


def restores_shape(g: Any, shape: onnx.NodeProto, t: str) -> bool:
    """Whether Shape node `shape` of `t` only gives a Reshape back the shape of `t` after a
    Softmax over its last axis on a 2-D view (paddle2onnx: Flatten(axis = last) -> Softmax ->
    Reshape(Shape(t))): a size it reads follows any cut."""
    users = g.users.get(shape.output[0], [])
    if len(users) != 1 or any(a.name in ("start", "end") for a in shape.attribute):
        return False
    r = users[0][1]
    sm = g.makers.get(r.input[0], ("", None))[1] if r.op_type == "Reshape" else None
    fl = g.makers.get(sm.input[0], ("", None))[1] if sm is not None and \
        sm.op_type == "Softmax" else None
    dims = g.shapes.get(t)
    return sm is not None and r.input[1] == shape.output[0] and fl is not None and \
        fl.op_type == "Flatten" and fl.input[0] == t and bool(dims) and \
        _axis(fl) in (len(dims) - 1, -1)


def _axis(n: onnx.NodeProto) -> int:
    return next((int(onnx.helper.get_attribute_value(a)) for a in n.attribute
                 if a.name == "axis"), 1)
