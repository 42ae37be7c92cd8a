"""A producer whose channels reach their consumer as one input of a Concat on the channel
axis (YOLOv8's C2f and YOLOv5's C3 blocks, CSP necks, a detector's FPN): producer ->
[per-channel nodes] -> Concat(..., x, ...) -> consumer. The site's channels are the
consumer's input channels offset .. offset + C - 1 (`Site.offset`, of `Site.span` in all);
the consumer's other inputs stay and take the OBS update with the rest (the greedy's
candidates are the site's own channels only, solvers/channels.channel_trace), and the cut
keeps every other input channel of the consumer (export/shrink.py). The Concat itself needs
no change: it joins whatever widths its inputs have.

Several inputs of one Concat may each be a site (a CSP block's two branches): each site's
greedy trace prices its own channels on the dense consumer, and the cut removes their union
from the consumer in one group-OBS update (`joint_columns`: exact for the union; the summed
traces the allocation reads leave out how the sites' removals interact, as they do for any
two sites that share a layer)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ..specs import LAYER_OPS
from .flops import reads
from .graphview import _Graph
from .site import Site


def concat_site(g: _Graph, L: Any, label: str, node: onnx.NodeProto, t: str, C: int,
                axis: int, conv: bool, path: tuple, sliced: tuple, grouped: tuple,
                macs: float, by_node: dict, refused: type) -> Any:
    """The Site whose channels `t` (C of them on `axis`, from the end) join Concat `node`
    (`label`) and, through it, the one layer that reads it; `refused` (patterns._Refused)
    raised with the reason otherwise."""
    nxt, cons, offset, span = through(g, label, node, t, axis, conv, by_node, refused)
    if L.groups != 1 or (cons.layout == "conv" and cons.groups != 1):
        raise refused(f"its channels reach Concat {label!r} and a grouped Conv")
    width = cons.matrix_shape[0] * cons.matrix_shape[2] // span
    cell = width * reads(g, nxt, cons)
    return Site(L, cons, C, width, path + (label,), sliced, grouped,
                macs + cons.matrix_shape[1] * cell, cell, offset=offset, span=span)


def through(g: _Graph, label: str, node: onnx.NodeProto, t: str, axis: int, conv: bool,
            by_node: dict, refused: type) -> tuple[onnx.NodeProto, Any, int, int]:
    """(the layer's node, the layer, offset, span): the one layer reading Concat `node`'s
    output, and where `t`'s channels sit among its input channels; `refused` otherwise."""
    from .patterns import _consumer_checks, _is_depthwise, _only_user, sums_channels

    dims = [g.dims(x) for x in node.input]
    rank = len(dims[0]) if dims[0] else 0
    at = next((a.i for a in node.attribute if a.name == "axis"), None)
    if not rank or at is None or at % rank != axis % rank:
        raise refused(f"its channels reach Concat {label!r} on another axis")
    if list(node.input).count(t) != 1:
        raise refused(f"its channels reach Concat {label!r} more than once")
    sizes = [d[axis] if d and len(d) == rank else None for d in dims]
    if any(s is None for s in sizes):
        raise refused(f"Concat {label!r} joins inputs of unknown channel counts")
    offset, span = sum(sizes[:list(node.input).index(t)]), sum(sizes)
    cons_label, nxt = _only_user(g, node.output[0], axis)
    if nxt.op_type not in LAYER_OPS or cons_label not in by_node or \
            nxt.input[0] != node.output[0] or _is_depthwise(g, nxt, span):
        raise refused(f"its channels reach Concat {label!r}, whose output {nxt.op_type} "
                      f"{cons_label!r} is no layer that sums its channels")
    if not sums_channels(nxt, conv, axis):
        raise refused(f"its channels reach layer {cons_label!r} on an axis it does not sum "
                      "over")
    return nxt, _consumer_checks(by_node[cons_label], span, cons_label), offset, span


def joint_columns(sites: list, removed: list) -> dict[str, np.ndarray]:
    """Consumer weight -> the input channels that every site it is the consumer of removes
    (`removed[i]`: sites[i]'s own ids): the inputs of one Concat go in one group-OBS update
    of their consumer, exact for their union whatever each site's trace assumed."""
    out: dict[str, list] = {}
    for s, r in zip(sites, removed):
        out.setdefault(s.consumer.weight, []).append(s.columns(r))
    return {k: np.concatenate(v) for k, v in out.items()}
