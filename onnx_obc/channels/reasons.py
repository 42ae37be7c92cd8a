"""Why a producer's channels stay: the refusal messages of patterns.py for a node that is
not per-channel (a residual, a node moving the channel axis, the attention scores; those of
the multi-head pattern are in heads.py)."""

from __future__ import annotations

from typing import Any

import onnx

MOVES = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Split", "Slice",
         "Gather", "DepthToSpace", "SpaceToDepth", "Softmax", "LayerNormalization",
         "ReduceMean", "ReduceSum", "ReduceMax", "MatMul", "Gemm", "Conv"}


def residual_reason(n: onnx.NodeProto, label: str) -> str:
    if n.op_type in ("Add", "Sub", "Mul"):
        return f"its channels reach the residual {n.op_type} {label!r} (no constant operand)"
    return f"{n.op_type} {label!r} has no single constant per-channel operand"


def mixes_reason(g: Any, n: onnx.NodeProto, label: str) -> str:
    if n.op_type == "Concat":
        return f"its channels reach Concat {label!r}"
    if n.op_type == "MatMul" and not any(x in g.inits for x in n.input):
        return (f"its channels reach MatMul {label!r} of two activations as the summed axis "
                "(attention query/key channels; only value channels, A @ V, are pruned)")
    if n.op_type in ("Reshape", "Transpose") and feeds_scores(g, n):
        return (f"its channels reach {n.op_type} {label!r} into the attention scores or heads "
                "(query/key channels go only as whole heads of the standard multi-head "
                "pattern)")
    if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
        return (f"the next layer {n.op_type} {label!r} is not a usable consumer (not "
                "selected, shared or reads the channels as its weight)")
    if n.op_type in MOVES:
        return f"its channels reach {n.op_type} {label!r}, which mixes or moves the channel axis"
    return f"its channels reach {n.op_type} {label!r}, which is not a per-channel op"


def feeds_scores(g: Any, n: onnx.NodeProto, depth: int = 5) -> bool:
    """Whether n's output reaches, through Reshape/Transpose (and a scale Mul/Div; Gather,
    Slice, Squeeze taking a fused QKV projection apart) only, a MatMul of two activations
    (the attention scores or the per-head A @ V)."""
    for _, m in g.users.get(n.output[0], []):
        if m.op_type == "MatMul" and not any(x in g.inits for x in m.input):
            return True
        if m.op_type in ("Reshape", "Transpose", "Mul", "Div", "Gather", "Slice", "Squeeze") \
                and depth > 1 and \
                feeds_scores(g, m, depth - 1):
            return True
    return False


def attention_mix(g: Any, n: onnx.NodeProto, t: str, conv: bool) -> bool:
    """MatMul(A, t) of two activations with `t` the right operand: each of t's channels (last
    axis) maps to the same output channel, the attention weights A mix only the tokens."""
    return (n.op_type == "MatMul" and not conv and len(n.input) == 2 and n.input[1] == t
            and n.input[0] != t and n.input[0] not in g.inits)
