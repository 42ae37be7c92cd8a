"""Find where whole channels can go: a producer layer whose output channels reach exactly
one consumer layer through per-channel nodes only (a ConvTranspose like a Conv).

    Conv -> [BatchNormalization] -> [act] -> [Pad] -> [depthwise Conv] -> [act] -> [pool] -> Conv
    Conv -> ... -> GlobalAveragePool -> Flatten -> Gemm/MatMul;  MatMul/Gemm -> act -> MatMul/Gemm

Per-channel nodes: unary activations, ones exported as several elementwise nodes (regions.py),
the attention mix A @ V (value channels), Clip, Add/Sub/Mul/Div/PRelu with a constant (sliced
when it has the channel axis), BatchNormalization, depthwise Conv (its weight rows, bias and
`group` cut too), pooling, a Pad of no channel (padding.py), the Mul of a gated unit (its other
producer cut too: gated.py), a squeeze-excite block (its excite rows, squeeze columns:
excite.py). Whole attention heads are sites too (heads.py), and so are channels that reach
their consumer as one input of a Concat (concat.py), as one part of a Split (splits.py) or
through several layers that read them alike (fanout.py). A producer whose channels also
reach a residual Add, a node that moves the channel axis, a graph output or more than one
other node stays, with one reason (`Refusal`). Weights and per-channel
constants may be initializers or Constant outputs (constants.py).
"""

from __future__ import annotations

import math

import onnx
from onnx import helper

from ..layers import Layer
from ..specs import LAYER_OPS
from .concat import concat_site
from .fanout import fanout_site, lone_readers
from .flat import keeps_last
from .flops import layer_macs, positions, reads, saved_macs
from .graphview import _Graph, graph_of
from .padding import pad_reason
from .readers import shape_readers
from .regions import UNARY, region
from .site import Refusal, Site
from .splits import split_site
from .reasons import attention_mix, feeds_scores, mixes_reason, residual_reason

BINARY = {"Add", "Sub", "Mul", "Div", "PRelu", "Max", "Min"}  # the other input a constant
POOLS = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
         "GlobalLpPool"}


class _Refused(Exception):
    pass


def find_sites(model: onnx.ModelProto, layers: list[Layer], sizes: dict | None = None
               ) -> tuple[list[Site], list[Refusal]]:
    """Every channel-prunable site among `layers` (producer and consumer both selected),
    and one refusal per other layer with the reason its output channels stay; `sizes`
    (probe.py) fill the sizes shape inference leaves unknown."""
    g = graph_of(model, sizes)
    by_node = {L.uses[0].node: L for L in layers if len(L.uses) == 1}
    sites, refused = [], []
    for L in layers:
        try:
            sites.append(_site(g, L, by_node))
        except _Refused as r:
            refused.append(Refusal(L.name, L.weight, str(r)))
    gates = {s.gate.producer.weight for s in sites if s.gate is not None}
    sites, shared = lone_readers(sites, Refusal)
    return sites, [r for r in refused if r.weight not in gates] + shared  # gates go with a site


def _producer_checks(g: _Graph, L: Layer, grouped: bool = False
                     ) -> tuple[onnx.NodeProto, int, int]:
    """(node, channels, channel axis from the end) of a usable producer, or _Refused;
    `grouped`: a grouped Conv with several outputs a group is one (the site's own)."""
    if len(L.uses) != 1:
        raise _Refused(f"weight {L.weight!r} is shared by {len(L.uses)} nodes")
    node = g.nodes[L.uses[0].node]
    if L.op == "Conv" and L.groups != 1 and (not grouped or L.matrix_shape[1] < 2):
        raise _Refused(f"grouped Conv (group={L.groups}): its channels are tied to its inputs")
    if L.op == "Gemm" and L.uses[0].trans_a:
        raise _Refused("Gemm with transA")
    if (channels := L.matrix_shape[0] * L.matrix_shape[1]) == 1:
        raise _Refused("a single output channel: nothing to remove")
    axis = -(len(L.shape) - 1) if L.layout in ("conv", "deconv") else -1
    return node, channels, axis


def _site(g: _Graph, L: Layer, by_node: dict[str, Layer], start: tuple | None = None) -> Site:
    """L's site; `start`: (tensor, channels, path, macs) to walk on from, one part of a
    Split of L's channels (splits.py)."""
    node, C, axis = _producer_checks(g, L, grouped=True)
    conv = L.layout in ("conv", "deconv")
    sliced: list[tuple[str, int]] = []
    if len(node.input) > 2 and node.input[2] and start is None:
        sliced.append(_cut(g, node.input[2], C, -1, node))
    macs = L.matrix_shape[2] * reads(g, node, L)
    path, grouped, shapes, paired = [], [], [], None
    t, prev = node.output[0], node.op_type
    if start is not None:
        t, C, path, macs = start[0], start[1], list(start[2]), start[3]
        prev = "Split"
    on: dict[str, int] = {}  # the path's tensors: their channel axis (moves.kept)
    from .excite import excite  # (they import this module)
    from .gated import fused, partner
    from .moves import kept, transposed

    while True:
        if paired is None and (f := fused(g, L, t, C, axis, sliced)) is not None:
            paired, t, prev, C = f[0], f[1], "Mul", C // 2
            path, sliced, macs = path + f[2], sliced + f[3], macs + paired.macs
            continue
        if conv and paired is None and (se := excite(g, t, C, axis, by_node)) is not None:
            paired, t, prev = se[0], se[1], "Mul"  # a squeeze-excite block (excite.py)
            path, macs = path + se[2], macs + paired.macs
            continue
        gate = region(g, t, UNARY)
        if gate is not None:  # SiLU, GELU, HardSwish as several elementwise nodes
            path += gate[0]
            t, prev = gate[1], "Mul"
            continue
        on.update({t: axis % len(d)} if (d := g.dims(t)) else {})
        if paired is None and not shapes and (fan := fanout_site(  # several readers
                g, L, t, C, axis, conv, tuple(path), tuple(sliced), tuple(grouped), macs,
                by_node, _Refused)) is not None:
            return fan
        label, nxt = _only_user(g, t, axis)
        if nxt.op_type in LAYER_OPS and label in by_node and \
                nxt.input[0] == t and not _is_depthwise(g, nxt, C):
            if not sums_channels(nxt, conv, axis):
                raise _Refused(f"its channels reach layer {label!r} on an axis it does not "
                               "sum over")
            cons = _consumer_checks(by_node[label], C, label, L.groups)
            width = cons.matrix_shape[0] * cons.matrix_shape[2] // C
            cell = width * reads(g, nxt, cons)
            macs += cons.matrix_shape[1] * cell
            return Site(L, cons, C, width, tuple(path), tuple(sliced), tuple(grouped), macs,
                        cell, shapes=tuple(shapes), gate=paired,
                        blocks=max(L.groups, cons.groups if cons.layout == "conv" else 1))
        op = nxt.op_type
        if op == "Conv" and conv and _is_depthwise(g, nxt, C):
            ws = g.inits[nxt.input[1]]
            sliced.append(_cut(g, nxt.input[1], C, -len(ws), nxt))
            if len(nxt.input) > 2 and nxt.input[2]:
                sliced.append(_cut(g, nxt.input[2], C, -1, nxt))
            grouped.append(label)
            macs += math.prod(ws[1:]) * g.spatial(nxt.output[0], True)
        elif op in UNARY or op == "Clip":
            _constant_inputs(g, nxt, label, first=1)
        elif op in BINARY:
            other = [x for x in nxt.input if x != t]
            if op == "Mul" and paired is None and len(other) == 1 and other[0] not in g.inits:
                paired = partner(  # down(act(gate(x)) * up(x)): both producers go
                    g, L, label, nxt, other[0], C, axis, by_node)
                macs += paired.macs
            elif len(other) != 1 or other[0] not in g.inits:
                raise _Refused(residual_reason(nxt, label))
            else:
                sliced += [x for x in [_cut(g, other[0], C, axis, nxt, optional=True)] if x]
        elif op == "BatchNormalization" and (conv or L.op == "Gemm" and axis == -1) and \
                len(nxt.output) == 1:
            _constant_inputs(g, nxt, label, first=1)
            sliced += [_cut(g, x, C, -1, nxt) for x in nxt.input[1:5]]
        elif op in POOLS and conv and len(nxt.output) == 1:
            pass
        elif op == "Pad" and conv:  # one that pads no channel passes (padding.py)
            if (why := pad_reason(g, nxt, axis)) is not None:
                raise _Refused(why)
        elif attention_mix(g, nxt, t, conv):  # A @ V: mixes the tokens, keeps the value
            macs += positions(g, nxt.input[0])  # channels (last axis); Tq * Tk per channel
        elif op == "Reshape" and feeds_scores(g, nxt) and paired is None:
            from .heads import head_site  # V -> [bias] -> heads -> A @ V -> merge -> Wo

            return head_site(g, L, label, nxt, C, tuple(path), tuple(sliced), macs, by_node)
        elif op == "Reshape" and not conv and (rw := keeps_last(g, label, nxt, C)) is not None:
            shapes += rw  # GPT-2's Conv1D: [B·T, C] <-> [B, T, C] (flat.py)
        elif op == "Flatten" and prev.startswith("Global") and _attr(nxt, "axis", 1) == 1:
            axis, conv = -1, False
        elif op == "Transpose" and (moved := transposed(g, nxt, t, axis)) is not None:
            axis, conv = moved  # [B, T, C] <-> [B, C, T] (moves.py)
        elif op == "Split" and paired is None and not shapes and not grouped and L.groups == 1:
            return split_site(g, L, label, nxt, t, C, axis, sliced, path, macs,
                              lambda s: _site(g, L, by_node, s), _Refused)
        elif op == "Concat" and paired is None and not shapes:  # one input of several
            return concat_site(g, L, label, nxt, t, C, axis, conv, tuple(path), tuple(sliced),
                               tuple(grouped), macs, by_node, _Refused)
        elif op == "Reshape" and axis != -1:  # [B, C, T] <-> [B, C, H, W] (moves.py)
            if isinstance(k := kept(g, label, nxt, C, axis, on), str):
                raise _Refused(k)
            axis, conv, shapes = k[0], k[0] != -1, shapes + k[1]
        else:
            raise _Refused(mixes_reason(g, nxt, label))
        path.append(label)
        t, prev = nxt.output[0], op


def _only_user(g: _Graph, t: str, axis: int | None = None) -> tuple[str, onnx.NodeProto]:
    """The one node reading `t`, besides Shape nodes that read no size of `axis` (the
    channel axis; None: every node counts)."""
    if t in g.outputs:
        raise _Refused(f"its channels reach the graph output {t!r}")
    users = g.users.get(t, [])
    if axis is not None and len(users) > 1:
        shapes = shape_readers(g, t, axis)
        users = [u for u in users if u[0] not in shapes]
    if len(users) == 1:
        return users[0]
    for label, n in users:
        if n.op_type in ("Add", "Sum", "Sub") and not any(x in g.inits for x in n.input):
            raise _Refused(f"its channels also reach the residual {n.op_type} {label!r}")
        if n.op_type == "Mul" and not any(x in g.inits for x in n.input):
            raise _Refused(f"its channels also reach Mul {label!r} of two activations (a "
                           "gate whose other reader is no squeeze-excite block's pool)")
    for label, n in users:
        if n.op_type in ("Concat", "Shape"):
            raise _Refused(f"its channels also reach Concat {label!r}" if n.op_type == "Concat"
                           else f"its channel count is read at run time by Shape {label!r}")
    names = ", ".join(repr(lb) for lb, _ in users) or "none"
    raise _Refused(f"tensor {t!r} feeds {len(users)} nodes ({names}); one consumer needed")


def sums_channels(n: onnx.NodeProto, conv: bool, axis: int) -> bool:
    """Whether layer node `n` sums the channels on `axis`: a Conv needs them in conv layout
    (after the batch), a MatMul / Gemm last."""
    return conv if n.op_type in ("Conv", "ConvTranspose") else axis == -1


def _consumer_checks(c: Layer, channels: int, label: str, produced: int = 1) -> Layer:
    """`c` as a site's consumer of `channels`, or _Refused; `produced`: the producer's groups
    (a grouped producer into a grouped consumer: not both)."""
    if c.op == "Conv" and c.groups != 1 and produced != 1:
        raise _Refused(f"consumer Conv {label!r} is grouped (group={c.groups}), and so is "
                       "the producer")
    if c.op == "Gemm" and c.uses[0].trans_a:
        raise _Refused(f"consumer Gemm {label!r} has transA")
    G, _, d = c.matrix_shape
    if G * d % channels:
        raise _Refused(f"consumer {label!r} reads {G * d} columns, not a "
                       f"multiple of the {channels} channels")
    return c


def _is_depthwise(g: _Graph, n: onnx.NodeProto, C: int) -> bool:
    ws = g.inits.get(n.input[1]) if len(n.input) > 1 else None
    return (n.op_type == "Conv" and ws is not None and _attr(n, "group", 1) == C
            and len(ws) > 2 and ws[0] == C and ws[1] == 1)


def _constant_inputs(g: _Graph, n: onnx.NodeProto, label: str, first: int) -> None:
    for x in n.input[first:]:
        if x and x not in g.inits:
            raise _Refused(f"{n.op_type} {label!r} reads the non-constant {x!r}")


def _cut(g: _Graph, name: str, C: int, axis: int, n: onnx.NodeProto,
         optional: bool = False) -> tuple[str, int] | None:
    """(name, axis) when constant `name` has the channel axis (from the end) of size C;
    None when it broadcasts over it (optional); _Refused otherwise."""
    if name not in g.inits:
        raise _Refused(f"{n.op_type} reads {name!r}, which is not a constant")
    shape = g.inits[name]
    idx = len(shape) + axis
    if idx < 0 or shape[idx] == 1:  # broadcast: nothing to cut, so it may be shared
        if optional:
            return None
        raise _Refused(f"{name!r} {list(shape)} has no channel axis of size {C}")
    if len(g.users.get(name, [])) != 1:
        raise _Refused(f"per-channel constant {name!r} is shared with other nodes")
    if shape[idx] != C:
        raise _Refused(f"{name!r} {list(shape)} does not broadcast per channel ({C})")
    return name, idx


def _attr(n: onnx.NodeProto, name: str, default: int) -> int:
    for a in n.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


__all__ = ["Refusal", "Site", "find_sites", "graph_of", "layer_macs", "saved_macs"]
