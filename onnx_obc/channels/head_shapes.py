"""The shapes of the Reshapes into and out of the attention heads (channels/heads.py): an
int64 constant (initializer or Constant node), or a Concat (axis 0) of such constants (or
Casts of int32 ones, as Paddle exports them) and one-element run-time pieces (the batch and
sequence sizes PyTorch / HF exports read with Shape -> Gather). The head count and dh must
be constants there, so the rewrite H -> H - k is unambiguous; `Where` says which constant
entry the rewrite replaces."""

from __future__ import annotations

import onnx

from .flat import restores_shape
from .patterns import _attr, _Graph, _Refused

Where = tuple[str, int, tuple[int, ...], int]  # (node label, input index, the constant's
# values, position in it)
Entry = tuple[int | None, Where | None]  # value (None: known at run time only), its place


def entries(g: _Graph, label: str, n: onnx.NodeProto, role: str) -> list[Entry]:
    """The shape entries of Reshape `n` (label). allowzero=1 (torch's dynamo exporter sets
    it on every Reshape) differs only where an entry is 0: refused there alone (the rewrite
    writes a head count of at least 1; run-time entries are batch and sequence sizes)."""
    out = _entries(g, label, n, role)
    if _attr(n, "allowzero", 0) and any(v == 0 for v, _ in out):
        raise _Refused(f"the {role} Reshape {label!r} has allowzero=1 and a 0 entry")
    return out


def _entries(g: _Graph, label: str, n: onnx.NodeProto, role: str) -> list[Entry]:
    s = n.input[1]
    if s in g.values:
        return [(v, (label, 1, tuple(g.values[s]), i)) for i, v in enumerate(g.values[s])]
    c_label, c = g.makers.get(s, ("", None))
    if c is None or c.op_type != "Concat" or _attr(c, "axis", 0) not in (0, -1) or \
            len(g.users.get(s, [])) != 1:
        raise _Refused(f"the {role} Reshape {label!r} takes its shape from {s!r}, not a "
                       "constant or a Concat of constants and batch / sequence sizes (a "
                       "head count it cannot rewrite)")
    out: list[Entry] = []
    for j, x in enumerate(c.input):
        at, cast = (c_label, j), g.makers.get(x, ("", None))
        if cast[1] is not None and cast[1].op_type == "Cast" and cast[1].input[0] in g.values \
                and len(g.users.get(x, [])) == 1:  # Paddle: Cast(int32 constant) pieces
            at, x = (cast[0], 0), cast[1].input[0]
        if x in g.values:
            out += [(v, (*at, tuple(g.values[x]), i)) for i, v in enumerate(g.values[x])]
        elif g.shapes.get(x) == [1] or _one_entry(g, x):
            out.append((None, None))
        else:
            raise _Refused(f"the {role} shape Concat {c_label!r} reads {x!r} of unknown length")
    return out


def _one_entry(g: _Graph, x: str) -> bool:
    """Whether `x` is one entry sliced from a shape, [Cast ->] Slice(starts [i], ends [i + 1])
    (Paddle's run-time sizes, whose length shape inference leaves unknown)."""
    n = g.makers.get(x, ("", None))[1]
    if n is not None and n.op_type == "Cast":
        n = g.makers.get(n.input[0], ("", None))[1]
    if n is None or n.op_type != "Slice" or len(n.input) < 3 or \
            not all(t in g.values for t in n.input[1:3]):
        return False
    start, end = g.values[n.input[1]], g.values[n.input[2]]
    return len(start) == 1 and len(end) == 1 and 0 <= start[0] and end[0] == start[0] + 1


def split_shape(g: _Graph, label: str, n: onnx.NodeProto, C: int, role: str,
                heads: int | None = None) -> tuple[int, int, Where | None]:
    """(H, dh, where H lives: None for a -1 beside a constant dh, which needs no rewrite) of
    the Reshape [B, T, C] -> [B, T, H, dh] `n`."""
    e = entries(g, label, n, role)
    v = [x for x, _ in e]
    shown = ["?" if x is None else x for x in v]
    dims = g.shapes.get(n.input[0])
    if len(v) != 4 or (dims is not None and len(dims) != 3):
        raise _Refused(f"the {role} Reshape {label!r} to {shown} is not [B, T, C] -> "
                       "[B, T, H, dh]")
    H, where = e[2]
    if H == -1 and v[3] is not None and v[3] > 0 and not C % v[3] and C // v[3] > 1:
        H, where = C // v[3], None  # [B, T, -1, dh] (HF's view(*shape, -1, dh)): H follows
        known = (g.dims(n.output[0]) or [None] * 4)[2:3]  # the channels, nothing rewritten
        if known not in ([None], [H]):
            raise _Refused(f"the {role} Reshape {label!r} to {shown} gives {known[0]} heads, "
                           f"not {C} / {v[3]}")
    elif H is None or where is None or H <= 0 or C % H or v[3] not in (C // H, -1) or \
            v[3] == -1 and any(x in (None, -1) for x in v[:2]):
        raise _Refused(f"the {role} Reshape {label!r} to {shown} does not split the {C} "
                       "channels into a constant head count")
    if heads is not None and H != heads:
        raise _Refused(f"the {role} Reshape {label!r} splits {H} heads, the values {heads}")
    if heads is None and H < 2:
        raise _Refused("a single attention head (its value channels are not cut)")
    return H, C // H, where


def merge_shape(g: _Graph, label: str, n: onnx.NodeProto, C: int) -> Where | None:
    """Where the H·dh entry of the merging Reshape's shape lives (None when it is -1)."""
    e = entries(g, label, n, "context")
    v = [x for x, _ in e]
    out = g.dims(n.output[0])  # Wo's input: probed where shape inference cannot tell
    if v and v[-1] == C and e[-1][1] is not None:
        return e[-1][1]
    if v and v[-1] == -1 and (out and out[-1] == C or len(v) == 3 and v[:2] == [0, 0]):
        return None
    shown = ["?" if x is None else x for x in v]
    raise _Refused(f"the Reshape {label!r} to {shown} does not merge the heads into the last "
                   f"axis of {C}")


def keeps_heads(g: _Graph, label: str, n: onnx.NodeProto, dh: int) -> bool:
    """Whether Reshape `n` of the context [B, H, T, dh] only restates it: [B, -1, T, dh]
    with B, T, dh run-time sizes, 0 or constants (dh's own), as torch exports SDPA's output
    (all-MiniLM-L6-v2). The -1 then follows the kept heads."""
    try:
        v = [x for x, _ in entries(g, label, n, "context")]
    except _Refused:
        return False
    return len(v) == 4 and v[1] == -1 and v[0] in (None, 0) and v[3] in (None, 0, dh) and \
        (v[2] is None or v[2] >= 0)


def unguard(g: _Graph, t: str) -> tuple[str, set[str]]:
    """Strip from `t` what exports put between the Softmax and A @ V without changing the
    weights: Where(IsNaN(x), c, x) with c a constant (torch's SDPA: fully masked rows) and
    Casts to float (HF's eager `softmax(..., dtype=float32).to(dtype)`): (x, the labels
    of the nodes stripped); (t, empty) when there are none."""
    seen: set[str] = set()
    while True:
        label, n = g.makers.get(t, ("", None))
        if n is not None and n.op_type == "Cast" and _attr(n, "to", 0) == onnx.TensorProto.FLOAT:
            seen.add(label)
            t = n.input[0]
            continue
        if n is not None and n.op_type == "Reshape" and softmax_input(g, n.input[0]) and (
                sh := g.makers.get(n.input[1], ("", None)))[1] is not None and \
                restores_shape(g, sh[1], softmax_input(g, n.input[0])):
            seen |= {label, sh[0]}  # paddle2onnx: Reshape(Softmax(Flatten(s)), Shape(s))
            t = n.input[0]
            continue
        if n is None or n.op_type != "Where" or len(n.input) != 3 or \
                n.input[1] not in g.inits:
            return t, seen
        c_label, c = g.makers.get(n.input[0], ("", None))
        if c is None or c.op_type != "IsNaN" or c.input[0] != n.input[2]:
            return t, seen
        seen |= {label, c_label}
        t = n.input[2]


def softmax_input(g: _Graph, p: str) -> str:
    """The scores behind Softmax output `p`: its input, or the 4-D tensor a Flatten(axis 3)
    made its 2-D input from (paddle2onnx's Softmax over the last axis); "" when `p` is no
    Softmax output."""
    n = g.makers.get(p, ("", None))[1]
    if n is None or n.op_type != "Softmax":
        return ""
    f = g.makers.get(n.input[0], ("", None))[1]
    if f is not None and f.op_type == "Flatten" and len(g.shapes.get(f.input[0]) or []) == 4 \
            and _attr(f, "axis", 1) in (3, -1) and len(g.users.get(n.input[0], [])) == 1:
        return f.input[0]
    return n.input[0]


def compose(perms: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The axes of a 4-D tensor after the Transposes `perms` in order (() if one is not 4-D)."""
    axes = (0, 1, 2, 3)
    for p in perms:
        if len(p) != 4:
            return ()
        axes = tuple(axes[i] for i in p)
    return axes
