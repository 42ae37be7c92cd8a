"""Whole attention heads as a channel site: the standard multi-head self-attention as
PyTorch / HF / our builders export it,

    Q = X Wq (+ bq), K, V likewise -> Reshape [B, T, H, dh] -> Transpose
    -> MatMul(Q, Kᵀ) -> [Mul/Div by a scalar] -> [Add a mask shared by the heads] -> Softmax
    -> [NaN guard, Casts] -> MatMul(., V) -> [Reshape [B, -1, T, dh]] -> Transpose
    -> Reshape [B, T, H·dh] -> MatMul Wo (+ bo)   (H may be -1 beside a constant dh)

Head h is channel h of a site whose producer is the V projection (dh output columns per
head: `Site.unit`) and whose consumer is Wo (dh input columns per head: `Site.width`), so
the group OBS of solvers/channels.py runs on Wo's Hessian over each head's dh columns.
Removing a head also cuts its dh columns of Wq and Wk (and biases: `HeadSplit.tied`) and
rewrites the Reshape shape constants H -> H - k (`HeadSplit.shapes`). Anything else (a
head count from a Shape op, a per-head score bias, a QKV projection cut by a Split before
its Reshapes, Transposes not composing to the standard layout) refuses the V projection
with its reason; a fused QKV projection reshaped into [B, T, 3, H, dh] is fused_heads.py's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import onnx

from ..layers import Layer
from .head_shapes import (Where, compose, entries, keeps_heads, merge_shape, softmax_input,
                          split_shape, unguard)
from .patterns import (
    Site,
    _attr,
    _consumer_checks,
    _Graph,
    _only_user,
    _producer_checks,
    _Refused,
)
from .readers import shape_readers

SCALE = ("Mul", "Div")
TO_HEADS = (0, 2, 1, 3)  # [B, T, H, dh] -> [B, H, T, dh] (Q, V; and back for the context)
KEY_T = (0, 2, 3, 1)  # [B, T, H, dh] -> [B, H, dh, T]


@dataclass(frozen=True)
class HeadSplit:
    heads: int
    tied: tuple[tuple[str, int, int], ...]  # (initializer, axis, entries per head): Wq, Wk
    # and their biases, cut with the heads
    shapes: tuple[tuple[str, int, tuple[int, ...], int, int], ...]  # (node label, input
    # index, constant values, position, per head): that input of the node (a Reshape's
    # shape, or a piece of the Concat making it) becomes the values with the entry at
    # position set to kept heads * per head
    blocks: int = 1  # a fused QKV projection: its 3 blocks of H·dh rows each lose the head


def head_site(g: _Graph, L: Layer, label: str, split: onnx.NodeProto, C: int,
              path: tuple[str, ...], sliced: tuple[tuple[str, int], ...], macs: float,
              by_node: dict[str, Layer]) -> Site:
    """The head site of V projection L whose channels (C = H·dh) reach the Reshape `split`
    (label) after the per-channel `path`; `macs` so far: L's per output column. A Reshape
    into [B, T, 3, H, dh]: L is a fused QKV projection (fused_heads.py)."""
    if len(entries(g, label, split, "value")) == 5:
        from .fused_heads import fused_site

        return fused_site(g, L, label, split, C, path, sliced, macs, by_node)
    H, dh, where = split_shape(g, label, split, C, "value")
    shapes = [(*where, 1)] if where else []  # a -1 head count follows the cut by itself
    av_label, av, ts = _transposes(g, split.output[0], None, "value")
    p = unguard(g, av.input[0])[0]
    if av.op_type == "MatMul" and not (av.input[1] == ts and p in g.makers
                                       and g.makers[p][1].op_type == "Softmax"):
        raise _Refused(f"its channels are attention query/key channels (they reach the scores "
                       f"{av_label!r}): removed only with whole heads, at the value "
                       "projection's site")
    _transposes(g, split.output[0], TO_HEADS, "value")
    if not (av.op_type == "MatMul" and av.input[0] not in g.inits):
        raise _Refused(f"the value heads reach {av.op_type} {av_label!r}, not A @ V")
    s_label, scores = _scores(g, av.input[0], H)
    tied, qk_macs = [], 0.0
    for t, perm, role in ((scores.input[0], TO_HEADS, "query"), (scores.input[1], KEY_T, "key")):
        Lp, q_where, n_tied, dq = _projection(g, t, perm, H, role, by_node)
        if Lp.weight == L.weight:
            raise _Refused(f"the {role} and value projections share the weight {L.weight!r}")
        shapes += [(*q_where, 1)] if q_where else []
        tied += n_tied
        qk_macs += Lp.matrix_shape[2] * dq * g.spatial(_output(g, Lp), False)
    qk_macs += _per_head(g, scores.output[0]) * dq  # Q Kᵀ: T_q·T_k·dq per head
    macs = macs * dh + qk_macs + _per_head(g, av.input[0]) * dh  # V columns, A @ V
    return merge_site(g, L, av, C, H, path, sliced, macs, HeadSplit(H, tuple(tied),
                                                                   tuple(shapes)), by_node)


def merge_site(g: _Graph, L: Layer, av: onnx.NodeProto, C: int, H: int,
               path: tuple[str, ...], sliced: tuple[tuple[str, int], ...], macs: float,
               split: HeadSplit, by_node: dict[str, Layer]) -> Site:
    """The site from the A @ V MatMul `av` on: -> Transpose -> Reshape merging the H heads
    into C = H·dh channels -> output projection Wo (its dh columns per head)."""
    dh = C // H
    m_label, merge, _ = _transposes(g, av.output[0], None, "context", 1)
    restated = merge.op_type == "Reshape" and keeps_heads(g, m_label, merge, dh)  # SDPA's
    m_label, merge, _ = _transposes(g, merge.output[0] if restated else av.output[0],
                                    TO_HEADS, "context", 1)
    if merge.op_type != "Reshape":
        raise _Refused(f"the attention context reaches {merge.op_type} {m_label!r}, not the "
                       "Reshape merging the heads")
    m_where = merge_shape(g, m_label, merge, C)
    shapes = split.shapes + (((*m_where, dh),) if m_where is not None else ())
    c_label, cons = _only_user(g, merge.output[0], -1)
    if not (cons.op_type in ("MatMul", "Gemm") and c_label in by_node
            and cons.input[0] == merge.output[0]):
        raise _Refused(f"the merged heads reach {cons.op_type} {c_label!r}, not a selected "
                       "output projection")
    Wo = _consumer_checks(by_node[c_label], C, c_label)
    cell = dh * g.spatial(cons.output[0], False)
    macs += Wo.matrix_shape[1] * cell
    return Site(L, Wo, H, dh, path, sliced, (), macs, cell, dh, replace(split, shapes=shapes))


def _output(g: _Graph, L: Layer) -> str:
    return g.nodes[L.uses[0].node].output[0]


def _per_head(g: _Graph, t: str) -> float:
    """T_q·T_k of the [B, H, T_q, T_k] tensor `t` (unknown sizes count 1)."""
    dims = g.dims(t) or []
    return float(math.prod(d if d else 1 for d in dims[2:]))


def _single(g: _Graph, t: str, role: str, axis: int) -> None:
    """`t` (its head axis `axis`) is read by one node, besides Shape nodes reading other
    sizes, and is no graph output."""
    users = {lb for lb, _ in g.users.get(t, [])} - shape_readers(g, t, axis)
    shapes = sorted(lb for lb in users if g.nodes[lb].op_type == "Shape")
    if shapes and t not in g.outputs:
        raise _Refused(f"the {role} tensor {t!r} has its head count read at run time by "
                       f"{', '.join(repr(x) for x in shapes)}")
    if t in g.outputs or len(users) != 1:
        raise _Refused(f"the {role} tensor {t!r} is read by other nodes or is a graph output "
                       "(its heads cannot be cut alone)")


def _maker(g: _Graph, t: str, role: str) -> tuple[str, onnx.NodeProto]:
    if t not in g.makers:
        raise _Refused(f"the {role} tensor {t!r} is a graph input or an initializer")
    return g.makers[t]


def _scalar(g: _Graph, n: onnx.NodeProto) -> str | None:
    """The tensor operand of Mul/Div `n` by a scalar (a constant, or one computed at run
    time, e.g. 1 / sqrt(dh) from the shape); None when it is not one."""
    if n.op_type not in SCALE or len(n.input) != 2:
        return None
    for a, c in ((n.input[0], n.input[1]), (n.input[1], n.input[0]))[:2 if n.op_type == "Mul"
                                                                      else 1]:
        if _one(g, c) and a not in g.inits and not _one(g, a):
            return a
    return None


def _one(g: _Graph, t: str) -> bool:
    """Whether `t` holds one value (a constant or a run-time tensor of known shape)."""
    dims = list(g.inits[t]) if t in g.inits else g.shapes.get(t)
    return dims is not None and all(d == 1 for d in dims)


def _transposes(g: _Graph, t: str, want: tuple[int, ...] | None, role: str, h: int = 2
                ) -> tuple[str, onnx.NodeProto, str]:
    """Follow `t` (heads on axis `h`) through Transposes and scalar Mul/Div (single users) to
    the next node: (label, node, the tensor it reads); the Transposes must compose to `want`
    (None: any)."""
    perms = []
    while True:
        _single(g, t, role, h)
        label, n = _only_user(g, t, h)
        if n.op_type == "Transpose":
            perms.append(tuple(_attr(n, "perm", ())))
            h = perms[-1].index(h) if h in perms[-1] else -1
        elif _scalar(g, n) != t:
            break
        t = n.output[0]
    if want is not None and compose(perms) != want:
        raise _Refused(f"the {role} heads are transposed by {perms or 'nothing'}, not to "
                       f"{list(want)}")
    return label, n, t


def _scores(g: _Graph, p: str, H: int) -> tuple[str, onnx.NodeProto]:
    """The scores MatMul(Q, Kᵀ) behind the attention weights `p`: [unguard] Softmax(axis
    -1) <- [Add mask shared by the heads] <- [Mul/Div scalar] (any order) <- MatMul."""
    _single(g, p, "attention weights", 1)
    top, (p, guard) = p, unguard(g, p)
    if any(not {lb for lb, _ in g.users.get(x, [])} <= guard or x in g.outputs for x in
           [p, *(g.nodes[lb].output[0] for lb in guard)] if x != top):
        raise _Refused(f"the attention weights {p!r} are read beside their NaN guard / Casts")
    label, n = _maker(g, p, "attention weights")
    if n.op_type != "Softmax" or _attr(n, "axis", -1) not in (-1, 3):
        raise _Refused(f"the attention weights come from {n.op_type} {label!r}, not a "
                       "Softmax over the keys")
    t = softmax_input(g, p)  # its input, or the scores a Flatten made it from
    while True:
        _single(g, t, "scores", 1)
        label, n = _maker(g, t, "scores")
        if n.op_type == "MatMul" and not any(x in g.inits for x in n.input):
            return label, n
        if (a := _scalar(g, n)) is not None:
            t = a
        elif n.op_type == "Add" and len(n.input) == 2:
            t = _mask(g, n, label, H)
        else:
            raise _Refused(f"{n.op_type} {label!r} between the scores and the Softmax is not a "
                           "scale or a mask")


def _mask(g: _Graph, n: onnx.NodeProto, label: str, H: int) -> str:
    """The scores operand of the mask Add `n` (the one of shape [B, H, T, T] when the shapes
    are known, else the one made by a MatMul, scale or Add); the mask must broadcast over
    the heads."""
    pairs = [(n.input[0], n.input[1]), (n.input[1], n.input[0])]
    heads = [(t, m) for t, m in pairs if (g.shapes.get(t) or [0, 0])[-3:][:1] == [H]
             and (g.shapes.get(m) or [0, 0, 0])[-3:][:1] != [H]]
    for t, m in heads + [p for p in pairs if p not in heads]:  # the shapes, then any order
        if t in g.makers and g.makers[t][1].op_type in ("MatMul", *SCALE, "Add"):
            dims = list(g.inits[m]) if m in g.inits else g.dims(m)  # probed where unknown
            if dims is None:
                raise _Refused(f"the mask {m!r} of Add {label!r} has an unknown shape (it "
                               "may differ per head)")
            if len(dims) >= 3 and dims[-3] != 1:
                raise _Refused(f"the mask or score bias {m!r} {dims} of Add {label!r} differs "
                               "per head (not cut)")
            return t
    raise _Refused(f"Add {label!r} before the Softmax has no scores operand")


def _projection(g: _Graph, t: str, want: tuple[int, ...], H: int, role: str,
                by_node: dict[str, Layer]
                ) -> tuple[Layer, Where, list[tuple[str, int, int]], int]:
    """Walk back from the scores operand `t`: [scalar Mul/Div] <- Transposes (composing to
    `want`) <- Reshape into H heads <- [bias / scale] <- projection. (layer, where the
    Reshape's head count lives, its tied cuts, dh)."""
    perms, chain = [], []
    while True:
        label, n = _maker(g, t, role)
        chain.insert(0, (t, n))
        if n.op_type == "Transpose":
            perms.insert(0, tuple(_attr(n, "perm", ())))
            t = n.input[0]
        elif (a := _scalar(g, n)) is not None:
            t = a
        elif n.op_type == "Reshape":
            break
        else:
            raise _Refused(f"the {role} path meets {n.op_type} {label!r} (a fused QKV "
                           "projection, or no Reshape into heads)")
    if compose(perms) != want:
        raise _Refused(f"the {role} heads are transposed by {perms or 'nothing'}, not to "
                       f"{list(want)}")
    h = 2  # the heads' axis, from the split forward
    for x, m in chain:
        if m.op_type == "Transpose":
            p = tuple(_attr(m, "perm", ()))
            h = p.index(h) if h in p else -1
        _single(g, x, role, h)
    r_label, split = label, n
    tied: list[tuple[str, int, int]] = []
    t = split.input[0]
    while True:
        _single(g, t, role, -1)
        label, n = _maker(g, t, role)
        if label in by_node and n.op_type in ("MatMul", "Gemm"):
            break
        const = [x for x in n.input if x in g.inits]
        if n.op_type not in ("Add", "Sub", *SCALE) or len(n.input) != 2 or len(const) != 1:
            raise _Refused(f"the {role} path meets {n.op_type} {label!r}, not a selected "
                           "projection, bias or scale")
        if not _one(g, const[0]):
            tied.append((const[0], len(g.inits[const[0]]) - 1, 0))  # per head: set below
        t = n.input[1] if n.input[0] == const[0] else n.input[0]
    Lp = by_node[label]
    _, Cq, _ = _producer_checks(g, Lp)
    _, dq, where = split_shape(g, r_label, split, Cq, role, H)
    out = []
    for name, axis, _ in tied:
        if len(g.users.get(name, [])) != 1 or g.inits[name][axis] != Cq:
            raise _Refused(f"the {role} constant {name!r} is shared or not per channel")
        out.append((name, axis, dq))
    out.append((Lp.weight, 1 if Lp.layout == "cols" else 0, dq))
    if len(n.input) > 2 and n.input[2]:  # Gemm bias
        if len(g.users.get(n.input[2], [])) != 1 or n.input[2] not in g.inits:
            raise _Refused(f"the {role} bias {n.input[2]!r} is shared or not constant")
        out.append((n.input[2], len(g.inits[n.input[2]]) - 1, dq))
    return Lp, where, out, dq
