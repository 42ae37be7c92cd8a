"""Fold the per-output-channel affine ops after a layer (BatchNormalization, Mul / Add / Sub /
Div by a constant) into its weight and bias (a ConvTranspose's: its weight's axis 1)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .common import compose, const, operand, per_channel, set_input, weight


def _bn(node: gs.Node, fixed: set[str], n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """BatchNormalization (inference) as (scale, shift) per channel, or None."""
    if len(node.inputs) != 5 or len(node.outputs) != 1 or node.attrs.get("training_mode", 0):
        return None
    vals = [const(t, fixed) for t in node.inputs[1:]]
    if any(v is None or v.size != n for v in vals):
        return None
    gamma, beta, mean, var = (v.astype(np.float64).reshape(-1) for v in vals)
    a = gamma / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
    return a, beta - mean * a


def fold_after(node: gs.Node, outputs: set[str], fixed: set[str]) -> list[str]:
    """Fold the chain after `node` (a layer with a constant weight) into it: the ops folded."""
    W = weight(node, fixed)
    op = node.op
    if op == "Conv":
        n, rank, axis = W.shape[0], W.ndim, 1
    elif op == "ConvTranspose":  # W [C, M, *k]: the output channels on axis 1 (group 1)
        if int(node.attrs.get("group", 1)) != 1:
            return []
        n, rank, axis = W.shape[1], W.ndim, 1
    elif op == "Gemm":
        n, rank, axis = W.shape[0 if node.attrs.get("transB", 0) else 1], 2, 1
    else:
        n, rank, axis = W.shape[-1], 1, 0  # MatMul: constants of one axis only
    s, t = np.ones(n), np.zeros(n)
    z, chain = node.outputs[0], []
    while z.name not in outputs and len(z.outputs) == 1:
        nxt = z.outputs[0]
        if nxt.op == "BatchNormalization" and op != "MatMul" and nxt.inputs[0] is z:
            st = _bn(nxt, fixed, n)
            if st is None:
                break
            s, t = s * st[0], t * st[0] + st[1]
        else:
            c = operand(nxt, z, fixed)
            c = None if c is None else per_channel(c, rank, axis, n)
            s2, t2 = s.copy(), t.copy()
            if c is None or not compose(nxt, c, s2, t2) or (
                    op == "MatMul" and nxt.op in ("Add", "Sub")):  # MatMul has no bias, and
                break  # its bias Add keeps its output float on onnxruntime (ortplan.py)
            s, t = s2, t2
        chain.append(nxt)
        z = nxt.outputs[0]
    if not chain:
        return []
    bias = bias_of(node, n)
    if op in ("Conv", "ConvTranspose"):
        lead = (-1,) if op == "Conv" else (1, -1)
        set_input(node, 1, W * s.reshape(lead + (1,) * (W.ndim - len(lead))))
        set_input(node, 2, bias * s + t)
    elif op == "Gemm":
        beta = float(node.attrs.get("beta", 1.0))
        if beta == 0.0 and t.any():
            return []
        tb = node.attrs.get("transB", 0)
        set_input(node, 1, W * (s[:, None] if tb else s[None, :]))
        if t.any() or len(node.inputs) > 2:
            set_input(node, 2, bias * s + (t / beta if beta else 0.0))
    else:
        set_input(node, 1, W * s)
    last = chain[-1].outputs[0]
    chain[-1].outputs.clear()
    node.outputs[0] = last
    return [c.op for c in chain]


def bias_of(node: gs.Node, n: int) -> np.ndarray:
    """The layer's bias in float64 (zeros when absent; `weight` checked it is a constant)."""
    if len(node.inputs) > 2 and node.inputs[2].name:
        b = const(node.inputs[2], set())
        if node.op == "Gemm":
            return b.astype(np.float64)  # any shape Gemm broadcasts
        return b.astype(np.float64).reshape(-1)
    return np.zeros(n)


