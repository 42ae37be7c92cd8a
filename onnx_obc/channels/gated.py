"""Gated units: two producers whose channels meet in one elementwise Mul, cut together.

    down(act(gate(x)) * up(x))    SwiGLU / GeGLU MLPs (Llama, Mistral, Qwen, Gemma, T5 v1.1)

Channel j of the Mul's output is gate row j times up row j, so removing it takes row j of
both producers (and of the per-channel constants on either branch) and column j of the
consumer; the consumer's Hessian is over the Mul's output, so the group OBS of the site
(its removal cost and the update of the consumer) is the plain site's. The site belongs to
the branch whose producer comes first in the graph; the other producer is the `Gate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..export.shrink import weight_axes
from ..layers import Layer
from .flops import reads
from .patterns import BINARY, UNARY, _constant_inputs, _cut, _Graph, _only_user, \
    _producer_checks, _Refused
from .regions import region

DEPTH = 6  # nodes between the Mul and the other branch's producer, searched backwards


@dataclass(frozen=True)
class Gate:
    producer: Layer  # the other branch's layer: its output rows go with the site's
    path: tuple[str, ...]  # node labels from its output up to the Mul (not included)
    sliced: tuple[tuple[str, int], ...]  # its bias and per-channel constants: (name, axis)
    macs: float  # its multiply-adds per output channel

    def cuts(self, unit: int) -> tuple[tuple[str, int, int], ...]:
        """(constant, axis, entries per channel) cut with the site's channels."""
        return ((self.producer.weight, weight_axes(self.producer)[0], unit),
                *((name, axis, unit) for name, axis in self.sliced))


def partner(g: _Graph, L: Layer, label: str, mul: onnx.NodeProto, other: str, C: int,
            axis: int, by_node: dict[str, Layer]) -> Gate:
    """The Gate of producer L's site, whose channels reached the Mul `mul` (label) with the
    activation `other` as its other operand; _Refused where `other` is not another
    producer's C channels through per-channel nodes only, or where that producer comes
    first (the site is its own)."""
    nodes = list(g.nodes)
    for cand in _producers(g, other, by_node):
        G = by_node[cand]
        if G is L or G.matrix_shape[1] != C or \
                (G.layout in ("conv", "deconv")) != (L.layout in ("conv", "deconv")):
            continue
        try:
            node, _, _ = _producer_checks(g, G)
            branch = _branch(g, node, C, axis, other)
        except _Refused:
            continue
        if branch is None:
            continue
        if nodes.index(cand) < nodes.index(L.uses[0].node):
            raise _Refused(f"its channels meet {G.name!r}'s in the gating Mul {label!r}: "
                           f"both are cut with {G.name!r}'s site")
        return Gate(G, branch[0], branch[1], G.matrix_shape[2] * reads(g, node, G))
    raise _Refused(f"its channels reach Mul {label!r} with the activation {other!r}, which "
                   f"is not another layer's {C} channels through per-channel nodes only "
                   "(a residual or an attention product, not a gated unit)")


def _producers(g: _Graph, t: str, by_node: dict[str, Layer]) -> list[str]:
    """Labels of the layer nodes `t` is computed from within DEPTH nodes, nearest first."""
    found, seen, level = [], set(), [t]
    for _ in range(DEPTH):
        nxt = []
        for x in level:
            if x in seen or x not in g.makers:
                continue
            seen.add(x)
            lab, n = g.makers[x]
            if lab in by_node:
                found.append(lab)
            else:
                nxt += [i for i in n.input if i and i not in g.inits]
        level = nxt
    return found


def _branch(g: _Graph, node: onnx.NodeProto, C: int, axis: int, target: str
            ) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]] | None:
    """(labels, sliced constants) of the per-channel nodes from producer `node`'s output to
    `target`; None where the walk leaves that chain."""
    sliced = [_cut(g, node.input[2], C, -1, node)] if len(node.input) > 2 and \
        node.input[2] else []
    t, path = node.output[0], []
    while t != target:
        gate = region(g, t, UNARY)
        if gate is not None:
            path += gate[0]
            t = gate[1]
            continue
        label, n = _only_user(g, t, axis)
        if n.op_type in UNARY or n.op_type == "Clip":
            _constant_inputs(g, n, label, first=1)
        elif n.op_type in BINARY:
            rest = [x for x in n.input if x != t]
            if len(rest) != 1 or rest[0] not in g.inits:
                return None
            sliced += [x for x in [_cut(g, rest[0], C, axis, n, optional=True)] if x]
        else:
            return None
        path.append(label)
        t = n.output[0]
    _only_user(g, t, axis)  # the Mul alone reads it (its readers' count was checked)
    return tuple(path), tuple(sliced)

