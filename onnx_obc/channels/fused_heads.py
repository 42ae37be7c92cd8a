"""Whole heads of a fused QKV projection (one layer X Wqkv, Wqkv [d, 3·H·dh]), as Paddle
(SVTR, ViT) and timm export multi-head attention:

    X Wqkv (+ b) -> Reshape [B, T, 3, H, dh] -> Transpose [2, 0, 3, 1, 4] -> [3, B, H, T, dh]
    -> q, k, v = its entries 0, 1, 2 (Gather, or Slice + Squeeze, on axis 0)
    -> MatMul(q, kᵀ) (scalar scales, Transposes) -> [mask Add] -> Softmax -> MatMul(., v)
    -> Transpose -> Reshape [B, T, H·dh] -> MatMul Wo (+ bo)

Head h is channel h of a site whose producer is the fused projection (3·dh output columns
per head, one in each of its q, k and v blocks of H·dh: `HeadSplit.blocks` = 3; its bias
likewise) and whose consumer is Wo (dh columns per head), so the group OBS runs on Wo's
Hessian as for separate projections (heads.py). The Reshape's head count and the merge's
H·dh are rewritten (head_shapes.py). Anything else refuses the projection with its reason.
"""

from __future__ import annotations

import onnx

from ..layers import Layer
from .head_shapes import compose, entries, softmax_input, unguard
from .heads import HeadSplit, _maker, _per_head, _scalar, _scores, _single, _transposes, \
    merge_site
from .patterns import Site, _attr, _Graph, _Refused

QKV_T = (2, 0, 3, 1, 4)  # [B, T, 3, H, dh] -> [3, B, H, T, dh]


def fused_site(g: _Graph, L: Layer, label: str, split: onnx.NodeProto, C: int,
               path: tuple[str, ...], sliced: tuple[tuple[str, int], ...], macs: float,
               by_node: dict[str, Layer]) -> Site:
    """The head site of fused projection L (C = 3·H·dh output channels) whose output reaches
    the Reshape `split` (label) after `path`; `macs`: L's per output column."""
    e = entries(g, label, split, "qkv")
    v = [x for x, _ in e]
    shown = ["?" if x is None else x for x in v]
    H, where = e[3]
    if v[2] != 3 or C % 3 or H is None or where is None or H < 2 or (C // 3) % H or \
            v[4] not in (C // 3 // H, -1) or v[4] == -1 and any(x in (None, -1) for x in v[:2]):
        raise _Refused(f"the Reshape {label!r} to {shown} does not split the {C} channels into "
                       "[3, constant head count, dh] (a fused QKV projection)")
    dh = C // 3 // H
    q, k, val = _parts(g, split.output[0])
    av_label, av, ts = _transposes(g, val, (0, 1, 2, 3), "value", 1)
    if not (av.op_type == "MatMul" and av.input[1] == ts
            and softmax_input(g, unguard(g, av.input[0])[0])):  # [guard, Casts] <- Softmax
        raise _Refused(f"the value heads reach {av.op_type} {av_label!r}, not A @ V")
    s_label, scores = _scores(g, av.input[0], H)
    _back(g, scores.input[0], q, (0, 1, 2, 3), "query")
    _back(g, scores.input[1], k, (0, 1, 3, 2), "key")
    macs = (macs * 3 * dh + _per_head(g, scores.output[0]) * dh
            + _per_head(g, av.input[0]) * dh)  # q, k, v columns; Q Kᵀ; A @ V
    return merge_site(g, L, av, C // 3, H, path, sliced, macs,
                      HeadSplit(H, (), ((*where, 1),), 3), by_node)


def _parts(g: _Graph, t: str) -> tuple[str, str, str]:
    """q, k, v: the entries 0, 1, 2 of the Transpose [2, 0, 3, 1, 4] of `t` (the reshaped
    projection), each taken by a Gather or by a Slice and a Squeeze on axis 0."""
    users = g.users.get(t, [])
    if t in g.outputs or len(users) != 1 or users[0][1].op_type != "Transpose" or \
            tuple(_attr(users[0][1], "perm", ())) != QKV_T:
        raise _Refused(f"the fused QKV heads {t!r} reach other nodes than one Transpose "
                       f"{list(QKV_T)}")
    t = users[0][1].output[0]
    found: dict[int, str] = {}
    for label, n in g.users.get(t, []):
        i, out = _entry(g, n)
        if i is None or i in found:
            raise _Refused(f"the fused QKV heads reach {n.op_type} {label!r}, not one Gather "
                           "or Slice + Squeeze per query, key and value")
        found[i] = out
    if t in g.outputs or sorted(found) != [0, 1, 2]:
        raise _Refused(f"the fused QKV heads {t!r} are not taken apart into query, key and "
                       "value")
    return found[0], found[1], found[2]


def _entry(g: _Graph, n: onnx.NodeProto) -> tuple[int | None, str]:
    """(index, tensor) of a Gather(axis 0, scalar index) or Slice(axis 0, one entry) ->
    Squeeze(axis 0); (None, "") otherwise."""
    if n.op_type == "Gather" and _attr(n, "axis", 0) == 0 and n.input[1] in g.values and \
            len(g.values[n.input[1]]) == 1 and g.inits.get(n.input[1]) == ():
        return g.values[n.input[1]][0] % 3, n.output[0]
    if n.op_type != "Slice" or len(n.input) < 4 or \
            not all(x in g.values for x in n.input[1:4]) or \
            (len(n.input) > 4 and n.input[4] and g.values.get(n.input[4]) != [1]):
        return None, ""
    start, end, axes = (g.values[x] for x in n.input[1:4])
    if axes != [0] or len(start) != 1 or start[0] not in (0, 1, 2) or \
            not (end[0] == start[0] + 1 or start[0] == 2 and end[0] > 3):
        return None, ""
    users = g.users.get(n.output[0], [])
    if n.output[0] in g.outputs or len(users) != 1 or users[0][1].op_type != "Squeeze":
        return None, ""
    sq = users[0][1]
    axes = (g.values.get(sq.input[1]) if len(sq.input) > 1 and sq.input[1]
            else list(_attr(sq, "axes", ())))
    return (start[0], sq.output[0]) if axes == [0] else (None, "")


def _back(g: _Graph, t: str, part: str, want: tuple[int, ...], role: str) -> None:
    """`t` (a scores operand) comes from `part` through scalar Mul/Div and Transposes that
    compose to `want`, each read by one node."""
    perms = []
    while t != part:
        _single(g, t, role, 1)
        label, n = _maker(g, t, role)
        if n.op_type == "Transpose":
            perms.insert(0, tuple(_attr(n, "perm", ())))
            t = n.input[0]
        elif (a := _scalar(g, n)) is not None:
            t = a
        else:
            raise _Refused(f"the {role} path meets {n.op_type} {label!r}, not the fused "
                           f"projection's {role} heads")
    _single(g, part, role, 1)
    if compose(perms) != want:
        raise _Refused(f"the {role} heads are transposed by {perms or 'nothing'}, not to "
                       f"{list(want)}")
