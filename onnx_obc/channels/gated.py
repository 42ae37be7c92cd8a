"""Gated units: two producers whose channels meet in one elementwise Mul, cut together.

    down(act(gate(x)) * up(x))    SwiGLU / GeGLU MLPs (Llama, Mistral, Qwen, Gemma, T5 v1.1)

Channel j of the Mul's output is gate row j times up row j, so removing it takes row j of
both producers (and of the per-channel constants on either branch) and column j of the
consumer; the consumer's Hessian is over the Mul's output, so the group OBS of the site
(its removal cost and the update of the consumer) is the plain site's. The site belongs to
the branch whose producer comes first in the graph; the other producer is the `Gate`.

    down(act(h[:F]) * h[F:]),  h = gate_up(x)    one producer chunked in two (Phi-3, GLU)

The halves of one producer's 2F channels (a Split into two equal parts, or two Slices whose
bounds follow the size) meeting in a Mul: the site's channel j is rows j and F + j of it,
the Gate its second half (`offset` F).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..export.shrink import weight_axes
from ..layers import Layer
from .flops import reads
from .padding import _evaluate
from .patterns import BINARY, UNARY, _attr, _constant_inputs, _cut, _Graph, _only_user, \
    _producer_checks, _Refused
from .regions import region

DEPTH = 6  # nodes between the Mul and the other branch's producer, searched backwards


@dataclass(frozen=True)
class Gate:
    producer: Layer  # the other branch's layer: its output rows go with the site's
    path: tuple[str, ...]  # node labels from its output up to the Mul (not included)
    sliced: tuple[tuple[str, int], ...]  # its bias and per-channel constants: (name, axis)
    macs: float  # its multiply-adds per output channel
    offset: int = 0  # a fused gate-up projection (the site's producer, chunked in two): the
    # second half's rows start here
    halved: tuple[tuple[str, int], ...] = ()  # its constants before the chunk (2C entries)
    squeeze: Layer | None = None  # a squeeze-excite block's squeeze layer: it loses the
    # pooled channels' columns, updated by OBS on its own Hessian (excite.py)
    squeeze_cell: float = 0.0  # its MACs per (row, column) pair

    def cuts(self, unit: int) -> tuple[tuple[str, int, int, int], ...]:
        """(constant, axis, entries per channel, first entry) cut with the site's channels."""
        off = self.offset
        return ((self.producer.weight, weight_axes(self.producer)[0], unit, off),
                *((name, axis, unit, off) for name, axis in self.halved),
                *((name, axis, unit, 0) for name, axis in self.sliced),
                *(((self.squeeze.weight, weight_axes(self.squeeze)[1], unit, 0),)
                  if self.squeeze else ()))


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


def fused(g: _Graph, L: Layer, t: str, C: int, axis: int, sliced: list
          ) -> tuple[Gate, str, list[str], list] | None:
    """Producer L's output `t` (C channels) chunked in two halves that meet in a Mul, as
    Phi-3's gate-up projection and torch.nn.GLU export: (the Gate: L's second half, its
    constants `sliced` so far halved; the Mul's output; the labels on the way; the first
    half's constants), or None where `t` is not read that way."""
    split = halves(g, t, axis, C)
    if split is None:
        return None
    labels, first, second = split
    try:  # halves that do not meet in a Mul: the walk's own refusal names the split
        b = _walk(g, second, C // 2, axis)
        a = None if b is None else _walk(g, first, C // 2, axis, b[2][2])
    except _Refused:
        return None
    if a is None:
        return None
    b_path, b_sliced, (mul_label, mul, other) = b
    node = g.nodes[L.uses[0].node]
    gate = Gate(L, (*labels, *a[0], *b_path), tuple(b_sliced),
                L.matrix_shape[2] * reads(g, node, L), C // 2, tuple(sliced))
    return gate, mul.output[0], [*labels, *a[0], *b_path, mul_label], list(a[1])


def halves(g: _Graph, t: str, axis: int, C: int) -> tuple[list[str], str, str] | None:
    """(the splitting nodes' labels, first half, second half) where `t`'s C channels (on
    `axis`) are read only as [0, C/2) and [C/2, C): by one Split into two equal outputs,
    or by two Slices whose bounds follow C (torch's chunk computes them from t's Shape;
    evaluated at C and C - 2) besides Shape nodes that feed only those bounds."""
    dims = g.dims(t)
    if C % 2 or t in g.outputs or not dims or dims[axis] not in (C, None):
        return None
    rank, users = len(dims), g.users.get(t, [])
    ax = axis % rank
    if len(users) == 1 and users[0][1].op_type == "Split":
        label, n = users[0]
        equal = len(n.input) < 2 or not n.input[1]
        if equal and len(n.output) == 2 and _attr(n, "axis", 0) % rank == ax and \
                _attr(n, "num_outputs", 2) == 2 and not _attr(n, "split", ()):
            return [label], n.output[0], n.output[1]
        return None
    cuts = [(lb, n) for lb, n in users if n.op_type == "Slice" and n.input[0] == t]
    shapes = [(lb, n) for lb, n in users if n.op_type == "Shape"]
    if len(cuts) != 2 or len(cuts) + len(shapes) != len(users) or \
            not _bounds_only(g, [n for _, n in shapes], [n for _, n in cuts]):
        return None
    spans = []
    for delta in (0, -2):
        for _, n in cuts:
            v = [_evaluate(g, _at(n, i), ax, delta, 7) if _at(n, i) else None
                 for i in (1, 2, 3, 4)]
            if any(isinstance(x, str) for x in v) or any(x is not None and x.size != 1
                                                         for x in v):
                return None
            start, end, axes, step = (None if x is None else int(x[0]) for x in v)
            n_c = C + delta
            if start is None or end is None or (axes or 0) % rank != ax or (step or 1) != 1:
                return None
            spans.append((start % n_c if start < 0 else start, min(end, n_c)))
    F = [C // 2, C // 2 - 1]
    if spans != [(0, F[0]), (F[0], C), (0, F[1]), (F[1], C - 2)] and \
            spans != [(F[0], C), (0, F[0]), (F[1], C - 2), (0, F[1])]:
        return None
    order = [0, 1] if spans[0][0] == 0 else [1, 0]
    return [lb for lb, _ in cuts], cuts[order[0]][1].output[0], cuts[order[1]][1].output[0]


def _at(n: onnx.NodeProto, i: int) -> str:
    return n.input[i] if len(n.input) > i else ""


def _bounds_only(g: _Graph, shapes: list, cuts: list) -> bool:
    """Whether every node downstream of the Shape nodes computes the Slices' bounds only."""
    todo, seen = [o for n in shapes for o in n.output], set()
    while todo:
        x = todo.pop()
        if x in seen:
            continue
        seen.add(x)
        if x in g.outputs:
            return False
        for _, n in g.users.get(x, []):
            if any(n is c for c in cuts):
                if n.input[0] == x:
                    return False
                continue
            todo += list(n.output)
    return True


def _walk(g: _Graph, t: str, C: int, axis: int, target: str | None = None):
    """(labels, constants, end) of the per-channel nodes from `t`: to `target`, which only
    the Mul reads (end None), or without one to the first Mul of two activations (end: its
    label, the node, its other operand); None where the walk leaves such nodes."""
    path, sliced = [], []
    while t != target:
        gate = region(g, t, UNARY)
        if gate is not None:
            path += gate[0]
            t = gate[1]
            continue
        label, n = _only_user(g, t, axis)
        rest = [x for x in n.input if x != t]
        if target is None and n.op_type == "Mul" and len(rest) == 1 and rest[0] not in g.inits:
            return path, sliced, (label, n, rest[0])
        if not _step(g, t, n, label, C, axis, rest, sliced):
            return None
        path.append(label)
        t = n.output[0]
    _only_user(g, t, axis)  # the Mul alone reads it (its readers' count was checked)
    return path, sliced, None


def _step(g: _Graph, t: str, n: onnx.NodeProto, label: str, C: int, axis: int,
          rest: list[str], sliced: list) -> bool:
    """Whether `n` (reading `t`) passes the channels one to one; its constants to `sliced`."""
    if n.op_type in UNARY or n.op_type == "Clip":
        _constant_inputs(g, n, label, first=1)
    elif n.op_type in BINARY and len(rest) == 1 and rest[0] in g.inits:
        sliced += [x for x in [_cut(g, rest[0], C, axis, n, optional=True)] if x]
    else:
        return False
    return True


def _branch(g: _Graph, node: onnx.NodeProto, C: int, axis: int, target: str
            ) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]] | None:
    """(labels, sliced constants) of the per-channel nodes from producer `node`'s output to
    `target`; None where the walk leaves that chain."""
    bias = [_cut(g, node.input[2], C, -1, node)] if len(node.input) > 2 and \
        node.input[2] else []
    chain = _walk(g, node.output[0], C, axis, target)
    return None if chain is None else (tuple(chain[0]), (*bias, *chain[1]))

