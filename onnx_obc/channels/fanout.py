"""A producer whose channels several layers read, each with the same columns: CSP blocks
read one tensor with two 1x1 convs (YOLOX's and ddddocr's detectors, PP-PicoDet's neck),
an Inception-style stem its branches' 1x1 convs. Every reader sees the same X and, with the
same kernel, stride, pads and dilations, the same im2col columns, so they share one Hessian
H = X Xᵀ: their W rows stacked, [W1; W2; ...] [r1 + r2 + ..., d], are one consumer of the
site (`Site.also`), the greedy group OBS prices a channel by the loss summed over them and
each gets its rows of the update (`Site.consumer_arrays`). Readers whose columns differ (a
1x1 conv beside a 3x3) would need a trace over several Hessians and are refused."""

from __future__ import annotations

from typing import Any

import onnx

from ..specs import LAYER_OPS
from .flops import reads
from .graphview import _Graph
from .site import Site
from .readers import shape_readers

COLUMNS = ("kernel_shape", "strides", "pads", "dilations", "auto_pad")  # what im2col reads


def fanout_site(g: _Graph, L: Any, t: str, C: int, axis: int, conv: bool, path: tuple,
                sliced: tuple, grouped: tuple, macs: float, by_node: dict,
                refused: type) -> Any:
    """The Site whose channels `t` every one of several layers reads whole with the same
    columns, None where `t` has one reader or readers that are not all such layers (the walk
    then says why); `refused` (patterns._Refused) where they are layers whose columns
    differ."""
    from .patterns import _consumer_checks, _is_depthwise

    readers = [u for u in g.users.get(t, []) if u[0] not in shape_readers(g, t, axis)]
    if len(readers) < 2 or t in g.outputs or not all(
            n.op_type in LAYER_OPS and lab in by_node and list(n.input).count(t) == 1 and
            n.input[0] == t and not _is_depthwise(g, n, C) for lab, n in readers):
        return None
    if any((not conv) if n.op_type in ("Conv", "ConvTranspose") else axis != -1
           for _, n in readers):
        raise refused("its channels reach layers on an axis they do not sum over")
    layers = [_consumer_checks(by_node[lab], C, lab, L.groups) for lab, _ in readers]
    keys = {_columns(g, n, c) for (_, n), c in zip(readers, layers)}
    if len(keys) > 1 or any(c.layout == "conv" and c.groups != 1 for c in layers):
        names = ", ".join(repr(lab) for lab, _ in readers)
        raise refused(f"its channels reach {len(readers)} layers ({names}) that read them "
                      "with different columns (kernels, strides, pads or groups): one "
                      "Hessian cannot price them")
    cons, node = layers[0], readers[0][1]
    width = cons.matrix_shape[0] * cons.matrix_shape[2] // C
    cell = width * reads(g, node, cons)
    return Site(L, cons, C, width, path, sliced, grouped,
                macs + sum(c.matrix_shape[1] for c in layers) * cell, cell,
                also=tuple(layers[1:]), blocks=L.groups)


def _columns(g: _Graph, n: onnx.NodeProto, c: Any) -> tuple:
    """What decides a reader's Hessian columns: its op, layout, weight view width and, for a
    Conv, the im2col attributes (kernel from the weight's shape)."""
    spatial = tuple(g.inits.get(n.input[1], ())[2:]) if n.op_type == "Conv" else ()
    nd = len(spatial)
    given = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
    attrs = {"kernel_shape": list(spatial), "strides": [1] * nd, "pads": [0] * 2 * nd,
             "dilations": [1] * nd, "auto_pad": b"NOTSET"}  # ONNX's defaults
    attrs.update({k: v for k, v in given.items() if k in COLUMNS})
    return n.op_type, c.layout, c.matrix_shape[2], tuple(
        (k, str(list(v) if isinstance(v, (list, tuple)) else v)) for k, v in sorted(attrs.items()))
