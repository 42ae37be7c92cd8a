"""Multiply-adds of the channel-pruning sites: the layers' (Conv/Gemm/MatMul with a constant
weight) and the attention MatMuls of two activations (scores Q Kᵀ and A @ V: T_q·T_k per
value channel, T_q·T_k·dh per head for each), per sample, from shape inference and the
sizes probe.py measured where it leaves them unknown (still unknown sizes count 1)."""

from __future__ import annotations

import math
from typing import Any

import onnx

from ..layers import Layer


def positions(g: Any, tensor: str) -> int:
    """Product of `tensor`'s dims past the batch axis (unknown sizes count 1)."""
    dims = g.dims(tensor) or []
    return math.prod(d if d else 1 for d in dims[1:])


def reads(g: Any, node: onnx.NodeProto, L: Layer) -> int:
    """Positions at which L's node multiplies its whole W view: a Conv's output positions,
    a ConvTranspose's input positions (each meets every weight once), a MatMul / Gemm's
    token rows."""
    if L.layout == "deconv":
        return g.spatial(node.input[0], True)
    return g.spatial(node.output[0], L.layout == "conv")


def saved_macs(sites: list[Any], counts: list[int]) -> float:
    """Exact multiply-adds saved by removing counts[i] channels of sites[i]: the per-channel
    savings less the (row, column) pairs of a layer that loses both (consumer of one site,
    producer of another), which they count twice."""
    total = sum(k * s.macs for s, k in zip(sites, counts))
    rows = cut_rows(sites, counts)
    return total - sum(  # a grouped consumer's (row, column) pairs meet within a group
        k * sum(rows.get(c.weight, 0) * cell for c, cell in s.consumer_cells())
        / s.consumer.groups
        for s, k in zip(sites, counts)) - sum(  # a squeeze-excite's squeeze
        k * rows.get(s.gate.squeeze.weight, 0) * s.gate.squeeze_cell  # loses columns too
        for s, k in zip(sites, counts) if s.gate is not None and s.gate.squeeze)


def cut_rows(sites: list[Any], counts: list[int]) -> dict[str, int]:
    """Output rows each producer weight loses: counts[i] channels of sites[i] (a head's dh
    rows each, in every block of a fused QKV projection; a gated unit's two producers)."""
    rows = {}
    for s, k in zip(sites, counts):
        rows[s.producer.weight] = k * s.unit * (s.split.blocks if s.split else 1)
        if s.gate is not None:  # another producer, or a fused one's second half
            rows[s.gate.producer.weight] = rows.get(s.gate.producer.weight, 0) + k * s.unit
    return rows


def layer_macs(model: onnx.ModelProto, layers: list[Layer], attention: bool = True,
               sizes: dict | None = None) -> float:
    """Multiply-adds of `layers` on one sample, and (`attention`) of every MatMul of two
    activations (the attention scores and A @ V); `sizes`: probe.probe_sizes."""
    from .patterns import graph_of

    g = graph_of(model, sizes)
    total = 0.0
    for L in layers:
        for u in L.uses:
            node = g.nodes[u.node]
            G, r, d = L.matrix_shape
            total += G * r * d * reads(g, node, L)
    if attention:
        for n in g.nodes.values():
            if n.op_type == "MatMul" and not any(x in g.inits for x in n.input):
                a = g.dims(n.input[0]) or [None]
                total += positions(g, n.output[0]) * (a[-1] or 1)
    return total
