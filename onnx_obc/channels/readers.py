"""Nodes that read only a tensor's shape, never the axis a cut changes: Shape -> Gather /
Slice of constant positions (PyTorch / HF exports read the batch and sequence sizes, or dh,
this way). They do not stop a cut: the sizes they read stay the same. Nor does a Shape whose
read of the cut (last) axis only sizes a Reshape of the same tensor (flat.py)."""

from __future__ import annotations

from typing import Any

import onnx
from onnx import helper

from .flat import restores_shape, shape_feeds_own_width
from .moves import feeds_kept


def shape_readers(g: Any, t: str, axis: int) -> set[str]:
    """Labels of the Shape nodes reading `t` whose every used entry is a size other than
    `axis` (t's changing axis; from the end when negative). Empty when t's rank is unknown."""
    dims = g.shapes.get(t)
    if not dims:
        return set()
    rank = len(dims)
    axis %= rank
    out = set()
    for label, n in g.users.get(t, []):
        if n.op_type != "Shape" or n.output[0] in g.outputs:
            continue
        lo, hi = _range(_int(n, "start", 0), _int(n, "end", rank), rank)
        if not lo <= axis < hi:
            out.add(label)  # the slice of the shape it takes leaves the axis out
        elif lo == 0 and hi == rank and (users := g.users.get(n.output[0])) and \
                all(_reads_other(g, m, rank, axis) for _, m in users):
            out.add(label)
        elif axis == rank - 1 and shape_feeds_own_width(g, n, t):  # flat.py: the cut
            out.add(label)  # width reaches only a Reshape of t itself, which follows it
        elif restores_shape(g, n, t):  # t's shape back after a Softmax on a 2-D view
            out.add(label)
        elif feeds_kept(g, n, t):  # sizes only Reshapes of t the walk checks (moves.py)
            out.add(label)
    return out


def _reads_other(g: Any, m: onnx.NodeProto, rank: int, axis: int) -> bool:
    """Whether Gather / Slice `m` of a shape takes constant positions other than `axis`."""
    if m.op_type == "Gather" and _int(m, "axis", 0) == 0 and m.input[1] in g.values:
        return all(i % rank != axis for i in g.values[m.input[1]])
    if m.op_type == "Slice" and 3 <= len(m.input) <= 4 and \
            all(x in g.values for x in m.input[1:]) and \
            (len(m.input) == 3 or g.values[m.input[3]] in ([0], [-1])):
        start, end = g.values[m.input[1]], g.values[m.input[2]]
        if len(start) != 1 or len(end) != 1:
            return False
        lo, hi = _range(start[0], end[0], rank)
        return not lo <= axis < hi
    return False


def _range(start: int, end: int, rank: int) -> tuple[int, int]:
    lo = min(max(start + rank if start < 0 else start, 0), rank)
    hi = min(max(end + rank if end < 0 else end, 0), rank)
    return lo, hi


def _int(n: onnx.NodeProto, name: str, default: int) -> int:
    for a in n.attribute:
        if a.name == name:
            return int(helper.get_attribute_value(a))
    return default
