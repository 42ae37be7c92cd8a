"""A producer whose channels reach their consumer as one input of a Concat on the channel
axis (YOLOv8's C2f and YOLOv5's C3 blocks, CSP necks, a detector's FPN): producer ->
[per-channel nodes] -> Concat(..., x, ...) -> consumer. The site's channels are the
consumer's input channels offset .. offset + C - 1 (`Site.offset`, of `Site.span` in all);
the consumer's other inputs stay and take the OBS update with the rest (the greedy's
candidates are the site's own channels only, solvers/channels.channel_trace), and the cut
keeps every other input channel of the consumer (export/shrink.py). The Concat itself needs
no change: it joins whatever widths its inputs have.

One site a consumer: where two inputs of one Concat could each be a site, their cuts would
each update the consumer's columns for the other, so only the one with the most channels is
kept and the others are refused with that reason (`one_per_consumer`)."""

from __future__ import annotations

from typing import Any

import onnx

from ..specs import LAYER_OPS
from .flops import reads
from .graphview import _Graph


def concat_site(g: _Graph, L: Any, label: str, node: onnx.NodeProto, t: str, C: int,
                axis: int, conv: bool, path: tuple, sliced: tuple, grouped: tuple,
                macs: float, by_node: dict, refused: type) -> Any:
    """The Site whose channels `t` (C of them on `axis`, from the end) join Concat `node`
    (`label`) and, through it, the one layer that reads it; `refused` (patterns._Refused)
    raised with the reason otherwise."""
    from .patterns import Site, _consumer_checks, _is_depthwise, _only_user

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
    if (not conv) if nxt.op_type in ("Conv", "ConvTranspose") else axis != -1:
        raise refused(f"its channels reach layer {cons_label!r} on an axis it does not sum "
                      "over")
    cons = _consumer_checks(by_node[cons_label], span, cons_label)
    if L.groups != 1 or (cons.layout == "conv" and cons.groups != 1):
        raise refused(f"its channels reach Concat {label!r} and a grouped Conv")
    width = cons.matrix_shape[0] * cons.matrix_shape[2] // span
    cell = width * reads(g, nxt, cons)
    return Site(L, cons, C, width, path + (label,), sliced, grouped,
                macs + cons.matrix_shape[1] * cell, cell, offset=offset, span=span)


def one_per_consumer(sites: list, refusal: type) -> tuple[list, list]:
    """`sites` with at most one site a consumer (the most channels; a Concat's inputs), and
    a `refusal` (patterns.Refusal) for each other."""
    best: dict[str, Any] = {}
    for s in sites:
        if s.span and (s.consumer.weight not in best or
                       s.channels > best[s.consumer.weight].channels):
            best[s.consumer.weight] = s
    kept = [s for s in sites if not s.span or best[s.consumer.weight] is s]
    out = [refusal(s.producer.name, s.producer.weight,
                   f"its channels reach {s.consumer.name!r} through a Concat, as do "
                   f"{best[s.consumer.weight].producer.name!r}'s, which are cut (one site a "
                   "consumer)") for s in sites if s not in kept]
    return kept, out
