"""The fold stage's shared pieces: constants read from the graph, per-channel shapes, the
affine composition, writing a layer's weight or bias."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..export.graph import constant
from ..export.shrink import read_constant, write_constant

AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


def const(t: gs.Tensor, fixed: set[str], reshaped: bool = False) -> np.ndarray | None:
    """A float constant's value (initializer or Constant node), else None; `reshaped`: also
    a Reshape of one to a constant shape (paddle2onnx writes a Conv's bias Add so, its
    [C] bias Reshape to [1, C, 1, 1]), for values that are read, not rewritten."""
    if t.name in fixed:
        return None
    if reshaped and len(t.inputs) == 1 and t.inputs[0].op == "Reshape" and \
            len(t.inputs[0].inputs) == 2:
        node = t.inputs[0]
        v, shape = const(node.inputs[0], fixed), _ints(node.inputs[1], fixed)
        if v is None or shape is None or node.attrs.get("allowzero", 0) and 0 in shape:
            return None
        shape = [v.shape[i] if d == 0 else d for i, d in enumerate(shape)]  # 0: copied
        try:
            return v.reshape(shape)
        except ValueError:
            return None
    if isinstance(t, gs.Constant) or (len(t.inputs) == 1 and t.inputs[0].op == "Constant"):
        try:
            v = read_constant(t)
        except Exception:  # a Constant of another attribute kind, a sparse value
            return None
        return v if v.dtype == np.float32 else None
    return None


def _ints(t: gs.Tensor, fixed: set[str]) -> list[int] | None:
    """An int64 constant's entries (a Reshape's shape), else None."""
    if t.name in fixed or not (isinstance(t, gs.Constant) or (
            len(t.inputs) == 1 and t.inputs[0].op == "Constant")):
        return None
    try:
        v = read_constant(t)
    except Exception:  # noqa: BLE001 - another attribute kind: not a shape
        return None
    return [int(x) for x in v.reshape(-1)] if v.dtype == np.int64 else None


def weight(node: gs.Node, fixed: set[str]) -> np.ndarray | None:
    """A layer's constant weight (input 1), or None; None too when it has a bias that is not
    a constant (the fold rewrites both)."""
    if len(node.inputs) < 2 or (len(node.inputs) > 2 and node.inputs[2].name
                                and const(node.inputs[2], fixed) is None):
        return None
    return const(node.inputs[1], fixed)


def operand(node: gs.Node, x: gs.Tensor, fixed: set[str]) -> np.ndarray | None:
    """The constant operand of a two-input affine node reading `x`, with x first for Sub
    and Div (x - c, x / c); None otherwise."""
    if node.op not in AFFINE_OPS or len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    if node.inputs[0] is x and node.inputs[1] is not x:
        return const(node.inputs[1], fixed, reshaped=True)
    if node.inputs[1] is x and node.op in ("Mul", "Add"):
        return const(node.inputs[0], fixed, reshaped=True)
    return None


def per_channel(c: np.ndarray, rank: int, axis: int, n: int) -> np.ndarray | None:
    """c broadcast along `axis` of a rank-`rank` tensor with n channels there: (n,) float64,
    or None when c acts along another axis or would grow the tensor."""
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, n):
        return None
    return np.broadcast_to(c.astype(np.float64).reshape(-1), (n,)).copy()


def compose(node: gs.Node, c: np.ndarray, s: np.ndarray, t: np.ndarray) -> bool:
    """Apply node (its constant per-channel c, as `operand` read it) to y = s*z + t in place;
    False when it cannot be (a division by zero)."""
    if node.op == "Mul":
        s *= c
        t *= c
    elif node.op == "Add":
        t += c
    elif node.op == "Sub":
        t -= c
    else:  # Div
        if np.any(c == 0):
            return False
        s /= c
        t /= c
    return True


def set_input(node: gs.Node, i: int, value: np.ndarray) -> None:
    """Node input i := value (float32): in place when only this node reads it, else (and for
    an absent bias) a new constant."""
    value = np.ascontiguousarray(value, dtype=np.float32)
    if i < len(node.inputs) and node.inputs[i].name and len(node.inputs[i].outputs) == 1:
        write_constant(node.inputs[i], value)
        return
    base = node.inputs[1].name if i > 1 else node.inputs[i].name
    new = constant(f"{base}_folded{i}_{node.name or id(node)}", value)
    while len(node.inputs) <= i:
        node.inputs.append(gs.Variable.empty())
    node.inputs[i] = new
