"""Squeeze-excite blocks on a site's path: the channels x read by a global pool and by the
Mul that scales them (MobileNetV3, EfficientNet, PP-LCNet, RegNetY):

    x -> GlobalAveragePool -> squeeze (Conv) -> act -> excite (Conv) -> [bias] -> gate -> Mul(x, .)

Channel j of the Mul's output is x_j times the gate's channel j, so removing it takes the
excite layer's output row j (and its bias entry: the `Gate`) and the squeeze layer's input
column j (`Gate.squeeze`) with the site's. The squeeze layer's outputs lose the pooled x_j:
its other columns take the group OBS update on its own Hessian (`squeeze_update`; the
site's is the consumer's, on the Mul's output), so the kept channels' gates move as little
as the data allows; the site's trace still prices the consumer's loss alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ..layers import Layer, weight_matrix
from ..solvers.channels import obs_update
from ..solvers.prepare import prepare
from .flops import reads
from .gated import Gate, _branch, _producers
from .patterns import _attr, _Graph, _only_user, _producer_checks, _Refused

POOLS = ("GlobalAveragePool", "ReduceMean")


def excite(g: _Graph, t: str, C: int, axis: int, by_node: dict[str, Layer]
           ) -> tuple[Gate, str, list[str]] | None:
    """(the Gate: excite layer, squeeze layer; the Mul's output; the labels on the way)
    where `t` (C channels on `axis`, a conv layout) is read by exactly a global pool and a
    Mul whose other operand is a squeeze-excite gate on that pool; None otherwise."""
    users = g.users.get(t, [])
    if t in g.outputs or len(users) != 2:
        return None
    pools = [u for u in users if u[1].op_type in POOLS and _global(g, u[1], t)]
    muls = [u for u in users if u[1].op_type == "Mul" and len(set(u[1].input)) == 2]
    if len(pools) != 1 or len(muls) != 1:
        return None
    (p_label, pool), (m_label, mul) = pools[0], muls[0]
    gate = next(x for x in mul.input if x != t)
    try:
        sq_label, sq_node = _only_user(g, pool.output[0], axis)
        squeeze = by_node.get(sq_label)
        if squeeze is None or squeeze.op != "Conv" or squeeze.groups != 1 or \
                len(squeeze.uses) != 1 or sq_node.input[0] != pool.output[0] or \
                squeeze.shape[1] != C:
            return None
        for cand in _producers(g, gate, by_node):
            ex = by_node[cand]
            if ex is squeeze or ex.op != "Conv" or ex.matrix_shape[1] != C:
                continue
            node, _, _ = _producer_checks(g, ex)
            branch = _branch(g, node, C, axis, gate)
            if branch is not None:
                break
        else:
            return None
    except _Refused:
        return None
    cell = (squeeze.matrix_shape[2] // C) * reads(g, sq_node, squeeze)  # per (row, column)
    macs = ex.matrix_shape[2] * reads(g, node, ex) + squeeze.matrix_shape[1] * cell
    out = Gate(ex, (p_label, *branch[0]), branch[1], macs, squeeze=squeeze, squeeze_cell=cell)
    return out, mul.output[0], [p_label, m_label]


def hessian_layers(sites: list) -> list[Layer]:
    """The layers whose Hessians the sites' cuts use: each consumer, and each squeeze-excite
    block's squeeze layer (once each)."""
    out = {c.weight: c for s in sites for c in (s.consumers if s.widths else (s.consumer,))}
    out.update({s.gate.squeeze.weight: s.gate.squeeze for s in sites
                if s.gate is not None and s.gate.squeeze is not None})
    return list(out.values())


def squeeze_update(site: Any, removed: np.ndarray, weights: dict, hessians: dict,
                   backend: Any, damp: float) -> dict[str, np.ndarray]:
    """{the squeeze layer's weight: its ONNX-layout array with the removed channels' columns
    gone by group OBS on its own Hessian (over the pooled channels)} for a site through a
    squeeze-excite block, {} for others. Without it the kept channels' gates move: on
    PP-LCNet at a 30% FLOP cut the output error was 3x the update's (docs/channels.md)."""
    sq = site.gate.squeeze if site.gate is not None else None
    if sq is None or not len(removed):
        return {}
    prep = prepare(backend.to_device(weight_matrix(weights, sq)), hessians[sq.weight].mean(),
                   damp)
    W = obs_update(prep.W[0], prep.Hinv[0], sq.matrix_shape[2] // site.channels, removed)
    return {sq.weight: sq.from_matrix(backend.to_host(W)[None])}


def held_squeezes(plan: Any, head: Any) -> dict:
    """{squeeze layer's weight: its Hessian accumulator without the samples of `head` (the
    first samples of plan.data: the output probes')}, for the sites through a squeeze-excite
    block; {} without any, or where the other samples are fewer than `head`'s. Fitted on the
    probes' samples too, the squeeze's update fits their pooled vectors (one column a
    sample, fewer samples than inputs): PP-LCNet's last block (512 channels, 64 samples) cut
    264 of them at an output error of 0.0015 on those samples and 0.0587 on new images."""
    from ..collect import collect

    sq = list({s.gate.squeeze.weight: s.gate.squeeze for s in plan.sites
               if s.gate is not None and s.gate.squeeze is not None}.values())
    if not sq or plan.data.n < 2 * head.n:
        return {}
    part, _ = collect(plan.proto, sq, head, plan.batch, plan.backend, plan.memory_mb, False,
                      runtime=plan.runtime)
    for w, acc in part.items():  # the others' sums: the whole pass's less the head's
        acc.total = plan.hessians[w].total - acc.total
        acc.samples = plan.hessians[w].samples - acc.samples
    return part


def _global(g: _Graph, n: onnx.NodeProto, t: str) -> bool:
    """Whether pool `n` averages `t` over every spatial axis, keeping them (size 1)."""
    if n.op_type == "GlobalAveragePool":
        return True
    rank = len(g.dims(t) or [])
    axes = _attr(n, "axes", None)
    if axes is None and len(n.input) > 1 and n.input[1] in g.values:
        axes = g.values[n.input[1]]
    return rank > 2 and axes is not None and _attr(n, "keepdims", 1) == 1 and \
        sorted(a % rank for a in axes) == list(range(2, rank))
