"""Fold a per-input-channel affine chain (Mul / Add / Sub / Div by constants) into the Convs
that alone read its result: y = s * x + t read by Conv(W, b) is Conv(W * s, b + sum(W * t))
of x when the Conv pads nothing; a padding Conv sees zeros around y, not around x, so there
the shift stays, as one Add of t / s, and only the scale moves (Conv(W * s, x + t / s))."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .common import AFFINE_OPS, compose, const, operand, per_channel, set_input, weight
from .after import bias_of


def _pads_nothing(conv: gs.Node) -> bool:
    auto = conv.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return auto == "VALID" or (auto == "NOTSET" and not any(conv.attrs.get("pads", [])))


def _data_input(node: gs.Node, fixed: set[str]) -> gs.Tensor | None:
    """The variable input of an affine node with one constant input (x of x - c, x / c)."""
    if node.op not in AFFINE_OPS or len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    a, b = node.inputs
    if const(b, fixed) is not None and const(a, fixed) is None:
        return a
    if node.op in ("Mul", "Add") and const(a, fixed) is not None and const(b, fixed) is None:
        return b
    return None


def _ends_gelu(x: gs.Tensor) -> bool:
    """Whether x is a * (Erf(a / c) + 1), a written-out GELU before its 0.5: folding that
    factor into the Conv breaks onnxruntime's GELU fusion (one Gelu kernel instead of four
    float ops; PP-OCRv6's detector: Gelu 1.22 ms against Erf, Div, Add, Mul 2.4 ms)."""
    if len(x.inputs) != 1 or x.inputs[0].op != "Mul":
        return False
    return any(len(t.inputs) == 1 and t.inputs[0].op == "Add" and any(
        len(u.inputs) == 1 and u.inputs[0].op == "Erf" for u in t.inputs[0].inputs)
        for t in x.inputs[0].inputs)


def _readers(y: gs.Tensor, fixed: set[str]) -> list[tuple[gs.Node, np.ndarray]] | None:
    """(Conv, weight) for every reader of y when all are Convs reading y as their data."""
    found = []
    for r in y.outputs:
        if r.op != "Conv" or r.inputs[0] is not y or any(t is y for t in r.inputs[1:]):
            return None
        W = weight(r, fixed)
        if W is None:
            return None
        found.append((r, W))
    return found or None


def fold_before(graph: gs.Graph, y: gs.Tensor, outputs: set[str], fixed: set[str]
                ) -> tuple[list[str], bool]:
    """Fold the chain that computes y into its Conv readers: (the ops folded, whether a
    shift stayed as an Add)."""
    convs = None if y.name in outputs else _readers(y, fixed)
    if not convs:
        return [], False
    cins = {W.shape[1] * int(r.attrs.get("group", 1)) for r, W in convs}
    if len(cins) != 1:
        return [], False
    cin, rank = cins.pop(), convs[0][1].ndim
    chain: list[tuple[gs.Node, gs.Tensor, np.ndarray]] = []
    z = y
    while len(z.inputs) == 1:
        p = z.inputs[0]
        x = _data_input(p, fixed)
        if x is None or (chain and (len(z.outputs) != 1 or z.name in outputs)) or _ends_gelu(x):
            break
        c = per_channel(operand(p, x, fixed), rank, 1, cin)
        if c is None:
            break
        chain.insert(0, (p, x, c))
        z = x
    s, t = np.ones(cin), np.zeros(cin)
    for p, x, c in chain:
        if not compose(p, c, s, t):
            return [], False
    if not chain:
        return [], False
    full = not t.any() or all(_pads_nothing(r) for r, _ in convs)
    if not full and (len(chain) < 2 or not np.all(s != 0)):
        return [], False  # nothing to gain (a lone shift) or no exact form
    x0 = chain[0][1]
    if not full:
        shift = gs.Constant(f"{y.name}_shift", (t / s).astype(np.float32).reshape(
            (1, cin) + (1,) * (rank - 2)))
        moved = gs.Variable(f"{y.name}_shifted", dtype=np.float32)
        graph.nodes.append(gs.Node("Add", f"{y.name}_shift", inputs=[x0, shift],
                                   outputs=[moved]))
        x0 = moved
    for r, W in convs:
        g = int(r.attrs.get("group", 1))
        blocks = W.reshape((g, W.shape[0] // g, W.shape[1], -1)).astype(np.float64)
        view = (g, 1, cin // g, 1)
        if full and t.any():
            set_input(r, 2, bias_of(r, W.shape[0])
                      + (blocks * t.reshape(view)).sum(axis=(2, 3)).reshape(-1))
        set_input(r, 1, (blocks * s.reshape(view)).reshape(W.shape))
        r.inputs[0] = x0
    return [p.op for p, _, _ in chain], not full
