"""Shapes of the constant tensors a channel cut may read or slice: initializers and the
outputs of Constant nodes (TensorFlow and Paddle exports keep their weights, biases and
per-channel constants in Constant nodes). export/shrink.py rewrites either kind in place:
an initializer's payload, or the Constant node's `value` attribute."""

from __future__ import annotations

import onnx

# Constant attributes holding a numeric value: name -> rank (None: the tensor's own dims)
NUMERIC = {"value": None, "value_float": 0, "value_int": 0, "value_floats": 1,
           "value_ints": 1}


def constant_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
    """Output tensor -> shape of every default-domain Constant node with a numeric value."""
    out: dict[str, tuple[int, ...]] = {}
    for n in graph.node:
        if n.op_type != "Constant" or n.domain not in ("", "ai.onnx") or len(n.attribute) != 1:
            continue
        a = n.attribute[0]
        if a.name not in NUMERIC:
            continue
        if a.name == "value":
            out[n.output[0]] = tuple(a.t.dims)
        else:
            out[n.output[0]] = () if NUMERIC[a.name] == 0 else (
                len(a.floats) if a.name == "value_floats" else len(a.ints),)
    return out
