"""Channels that change axis on a site's path without mixing: SegFormer's and PVTv2's Mix-FFN,
fc1 -> [B, T, C] -> Transpose -> [B, C, T] -> Reshape [B, C, H, W] -> depthwise Conv ->
Reshape [B, C, H*W] -> Transpose -> GELU -> fc2.

- `transposed`: a Transpose moves the channel axis where its perm says.
- `kept`: a Reshape keeps every element's channel when the channel axis is the one after the
  batch on both sides and the batch entry is the batch: then the other entries only regroup
  positions ([B, C, 1, 1] -> [B, C] too: the channels become the last axis). Its shape may
  be a constant (the channel entry rewritten to the kept count, `Site.shapes`, as flat.py's)
  or computed at run time from Shape nodes; evaluated (padding._evaluate) with the path's
  tensors at C and C - 2 channels and two stand-in sizes for the unknown ones, the channel
  entry must follow the count and no other entry may move.
- `feeds_kept`: a Shape of a path tensor whose channel size reaches only such Reshapes of
  that tensor (or of its Transpose) does not stop a cut (readers.py): the walk reaches each
  of them and checks it with `kept`.
"""

from __future__ import annotations

from typing import Any

import onnx

from .flat import Rewrite

SHAPE_MATH = ("Gather", "Slice", "Unsqueeze", "Squeeze", "Concat", "Cast")


def transposed(g: Any, n: onnx.NodeProto, t: str, axis: int) -> tuple[int, bool] | None:
    """(the channel axis (from the end) after Transpose `n` of `t`, whether it is the one
    after the batch: the layout per-channel Conv-side ops read), None without a perm."""
    from .patterns import _attr

    perm = _attr(n, "perm", None)
    if perm is None:
        return None
    rank = len(perm)
    at = list(perm).index(axis % rank)
    return at - rank, at == 1 and rank > 2


def kept(g: Any, label: str, n: onnx.NodeProto, C: int, axis: int, on: dict[str, int]
         ) -> tuple[int, list[Rewrite]] | str:
    """(the channel axis after Reshape `n` (label), the shape rewrites it needs) or why it
    does not keep the `C` channels at `axis` of its data input; `on`: the path's tensors so
    far and their channel axes (index), whose Shape nodes the evaluation sizes."""
    from .head_shapes import entries
    from .padding import _evaluate
    from .patterns import _attr, _Refused

    x = n.input[0]
    dims = g.dims(x)
    if not dims or axis % len(dims) != 1 or len(n.input) < 2:
        return f"Reshape {label!r} does not keep the channels as the axis after the batch"
    runs = {}
    for delta, stand in ((0, 7), (-2, 7), (0, 11)):
        v = _evaluate(g, n.input[1], 1, delta, stand, on=on)
        if isinstance(v, str):
            return f"Reshape {label!r}: {v}"
        runs[delta, stand] = [int(e) for e in v]
    v0, v2, v11 = runs[0, 7], runs[-2, 7], runs[0, 11]
    batch = dims[0]
    if len(v0) < 2 or not all(len(v) == len(v0) for v in (v2, v11)):
        return f"Reshape {label!r} does not keep a channel axis after the batch"
    if _attr(n, "allowzero", 0) and 0 in v0[:2]:
        return f"Reshape {label!r} has allowzero=1 and a 0 entry"
    if not (v0[0] == 0 or (batch and v0[0] == v11[0] == batch)
            or (not batch and (v0[0], v11[0]) == (7, 11))):
        return f"Reshape {label!r}: its first entry is not the batch"
    if any(a != b for i, (a, b) in enumerate(zip(v0, v2)) if i != 1):
        return f"Reshape {label!r}: an entry other than the channels' follows the count"
    rewrites: list[Rewrite] = []
    if v0[1] == C and v2[1] == C:  # a constant channel entry: rewritten to the kept count
        try:
            value, where = entries(g, label, n, "channel-keeping")[1]
        except (_Refused, IndexError) as e:
            return str(e) or f"Reshape {label!r}: its channel entry cannot be rewritten"
        if value != C or where is None:
            return (f"Reshape {label!r} reads its channel count at run time from a tensor "
                    "the cut leaves whole")
        rewrites.append((*where, 1))
    elif not (v0[1] == C and v2[1] == C - 2) and not v0[1] == v2[1] == 0 and not (
            len(v0) == 2 and v0[1] == v2[1] == -1 and dims[2:] and all(  # [B, C, 1, 1]
                e == 1 for e in dims[2:])):  # -> [B, -1] is [B, C]; else -1 may merge
        return f"Reshape {label!r} does not keep the {C} channels as one axis"
    return 1 - len(v0), rewrites  # [B, C] (a pooled map flattened): the last axis


def feeds_kept(g: Any, shape: onnx.NodeProto, t: str) -> bool:
    """Whether every value Shape node `shape` (of `t`) computes reaches only the shape input
    of Reshapes of `t` or of a Transpose of `t`, through shape arithmetic."""
    todo, seen = [shape.output[0]], set()
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        users = g.users.get(v, [])
        if not users or v in g.outputs:
            return False
        for _, m in users:
            if m.op_type == "Reshape" and m.input[1] == v and m.input[0] != v:
                src = g.makers.get(m.input[0], ("", None))[1]
                if m.input[0] != t and not (src is not None and src.op_type == "Transpose"
                                            and src.input[0] == t):
                    return False
            elif m.op_type in SHAPE_MATH:
                todo += list(m.output)
            else:
                return False
    return True
