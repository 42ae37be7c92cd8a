"""A producer whose channels several layers read, each with the same columns: CSP blocks
read one tensor with two 1x1 convs (YOLOX's and ddddocr's detectors, PP-PicoDet's neck),
an Inception-style stem its branches' 1x1 convs. Every reader sees the same X and, with the
same kernel, stride, pads and dilations, the same im2col columns, so they share one Hessian
H = X Xᵀ: their W rows stacked, [W1; W2; ...] [r1 + r2 + ..., d], are one consumer of the
site (`Site.also`), the greedy group OBS prices a channel by the loss summed over them and
each gets its rows of the update (`Site.consumer_arrays`). Readers whose columns differ (a
1x1 conv beside a 3x3, YOLOv8's SPPF-side convs) keep Hessians of their own (`Site.widths`):
the problem is then block-diagonal over the readers, its columns reordered channel-major so
that the one greedy trace prices a channel by the readers' summed loss (`readers`)."""

from __future__ import annotations

from typing import Any

import onnx

from ..backend import array_module
from ..layers import weight_matrix
from ..solvers.prepare import fit_to_reference, prepare
from ..specs import LAYER_OPS
from .flops import reads
from .graphview import _Graph
from .site import Site
from .readers import shape_readers

COLUMNS = ("kernel_shape", "strides", "pads", "dilations", "auto_pad")  # what im2col reads


def fanout_site(g: _Graph, L: Any, t: str, C: int, axis: int, conv: bool, path: tuple,
                sliced: tuple, grouped: tuple, macs: float, by_node: dict,
                refused: type) -> Any:
    """The Site whose channels `t` several layers read whole, directly or as one input of a
    Concat that one layer reads (concat.through); None where `t` has one reader or readers
    that are none of these (the walk then says why); `refused` (patterns._Refused) where
    a reader is grouped or reads them on another axis."""
    from .concat import through
    from .patterns import _consumer_checks, _is_depthwise, sums_channels

    readers = [u for u in g.users.get(t, []) if u[0] not in shape_readers(g, t, axis)]
    if len(readers) < 2 or t in g.outputs or not all(
            (n.op_type in LAYER_OPS and lab in by_node and n.input[0] == t and
             not _is_depthwise(g, n, C) or n.op_type == "Concat") and
            list(n.input).count(t) == 1 for lab, n in readers):
        return None
    nodes, layers, offsets, spans = [], [], [], []
    for lab, n in readers:  # each reader: its layer's node, the layer, where t sits in it
        if n.op_type == "Concat":
            n, c, offset, span = through(g, lab, n, t, axis, conv, by_node, refused)
        else:
            if not sums_channels(n, conv, axis):
                raise refused("its channels reach layers on an axis they do not sum over")
            c, offset, span = _consumer_checks(by_node[lab], C, lab, L.groups), 0, C
        nodes.append(n), layers.append(c), offsets.append(offset), spans.append(span)
    names = ", ".join(repr(lab) for lab, _ in readers)
    if L.groups != 1:
        raise refused(f"a grouped Conv whose channels reach {len(readers)} nodes ({names})")
    if any(c.layout == "conv" and c.groups != 1 for c in layers) or \
            len({c.weight for c in layers}) < len(layers):
        raise refused(f"its channels reach {len(readers)} layers ({names}), a grouped one "
                      "among them or one twice")
    widths = [c.matrix_shape[0] * c.matrix_shape[2] // n for c, n in zip(layers, spans)]
    cells = [w * reads(g, n, c) for w, n, c in zip(widths, nodes, layers)]
    saved = macs + sum(c.matrix_shape[1] * cell for c, cell in zip(layers, cells))
    if len({_columns(g, n, c) for n, c in zip(nodes, layers)}) == 1 and not any(offsets) \
            and set(spans) == {C}:  # one Hessian: rows stacked
        return Site(L, layers[0], C, widths[0], path, sliced, grouped, saved, cells[0],
                    also=tuple(layers[1:]), blocks=L.groups)
    concat = spans != [C] * len(spans)
    return Site(L, layers[0], C, sum(widths), path, sliced, grouped, saved, cells[0],
                also=tuple(layers[1:]), blocks=L.groups, widths=tuple(widths),
                cells=tuple(cells), offsets=tuple(offsets) if concat else (),
                spans=tuple(spans) if concat else ())  # own Hessians: block-diagonal


def lone_readers(sites: list, refusal: type) -> tuple[list, list]:
    """`sites` less those whose readers keep their own Hessians (`widths`) where one of
    those readers is another site's consumer too (a Concat whose other input is a site):
    each site updates its readers alone, so two would overwrite one weight; a `refusal`
    (patterns.Refusal) for each."""
    seen: dict[str, int] = {}
    for s in sites:
        for c in s.consumers:
            seen[c.weight] = seen.get(c.weight, 0) + 1
    kept, out = [], []
    for s in sites:
        shared = [c.name for c in s.consumers if seen[c.weight] > 1]
        if s.widths and shared:
            out.append(refusal(s.producer.name, s.producer.weight,
                               f"its channels reach {shared[0]!r}, which another site cuts"))
            for c in s.consumers:
                seen[c.weight] -= 1
        else:
            kept.append(s)
    return kept, out


def readers(site: Any, weights: dict, hessians: dict, backend: Any, damp: float
            ) -> tuple[Any, Any, Any]:
    """(W, H, Hinv) of a site whose readers have their own Hessians (`Site.widths`): each
    reader prepared alone (dampened, dead inputs, its dense-output fit in --sequential),
    then one block-diagonal problem, rows stacked, its columns channel-major
    (solvers.channels.channel_major), so that channel c owns columns c * sum(widths) ..:
    the greedy's cost of a channel is its readers' summed group-OBS loss, and each reader's
    update is its own (the blocks do not mix)."""
    parts = []
    for c in site.consumers:
        W = backend.to_device(weight_matrix(weights, c))  # [1, r_i, d_i]
        acc = hessians[c.weight]
        if acc.cross is not None:
            W = fit_to_reference(W, acc.mean(), acc.cross / acc.samples, max(damp, 1e-4))
        p = prepare(W, acc.mean(), damp)
        parts.append((p.W[0], p.H[0], p.Hinv[0]))
    xp = array_module(parts[0][0])
    r = sum(x[0].shape[0] for x in parts)
    d = sum(x[0].shape[1] for x in parts)
    W = xp.zeros((r, d), dtype=parts[0][0].dtype)
    H = xp.zeros((d, d), dtype=parts[0][1].dtype)
    Hinv = xp.zeros((d, d), dtype=parts[0][2].dtype)
    at = col = 0
    for w, h, hi in parts:
        W[at:at + w.shape[0], col:col + w.shape[1]] = w
        H[col:col + w.shape[1], col:col + w.shape[1]] = h
        Hinv[col:col + w.shape[1], col:col + w.shape[1]] = hi
        at, col = at + w.shape[0], col + w.shape[1]
    order = xp.asarray(site.order())
    return W[:, order], H[order][:, order], Hinv[order][:, order]


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
