"""Channel pruning with --sequential: how many channels each site loses comes from the
dense model (its traces and the allocation, as one-shot), which channels and the consumers'
updates from the model with the earlier groups already cut.

Sites go in topological order of their consumers, in `groups` groups (None: one per site).
Each group's consumers get their Hessians on the current (partly cut) model, their greedy
group OBS removes their count of channels and updates the rest; the group is cut before
the next one is captured. With `fit_dense` each consumer is first fitted to the dense
model's output (cross moments, solvers/prepare.fit_to_reference), as the layer-wise
--sequential does; measured, that was slightly worse than without (output error on 6 small
chains: mean 0.356 with, 0.347 without, one-shot 0.346; ocr_like at 30%, 3 groups: 0.0205
with, 0.0187 without, one-shot 0.0187), so it is off.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import onnx

from ..backend import Backend
from ..collect import collect
from ..export.shrink import shrink
from ..layers import Layer, constant_weights
from ..solvers.channels import obs_update
from .concat import joint_columns
from .excite import hessian_layers, squeeze_update
from .patterns import find_sites, layer_macs
from .probe import probe_sizes
from .stage import (
    ChannelResult,
    ChannelRow,
    _norm_removed,
    _relabel,
    _solve,
    _zeroed_loss,
    counts_for,
    plan_channels,
    pruned_sizes,
)
from .timing import latency_report


def prune_channels_sequential(proto: onnx.ModelProto, layers: list[Layer], data: Any,
                              batch: int, backend: Backend, fraction: float, damp: float,
                              memory_mb: int, runtime: Any = None, progress: bool = False,
                              align: int = 1, allocate: str = "dp",
                              groups: int | None = None, fit_dense: bool = False,
                              objective: str = "output", budget: str = "flops",
                              subsample: int = 0, token_mask: str | None = None
                              ) -> ChannelResult:
    """prune_channels (stage.py) with the sites cut group by group; see the module
    docstring. `fit_dense`: fit each consumer to the dense model's output first (off by
    default: measured slightly worse, see the module docstring)."""
    t0 = time.perf_counter()
    plan = plan_channels(proto, layers, data, batch, backend, damp, memory_mb, runtime,
                         progress, fraction, subsample, token_mask, budget, align)
    dense, proto = plan.dense, plan.proto  # (its shared per-channel constants copied)
    if not plan.sites:
        return ChannelResult(proto, proto, [], plan.refused, (dense, dense),
                             ["channel pruning found no prunable producer -> consumer pair"],
                             time.perf_counter() - t0)
    counts, warnings = counts_for(plan, fraction, align, allocate, objective, budget)
    want = {s.producer.weight: k for s, k in zip(plan.sites, counts)}
    order = _topological(proto, [s for s, k in zip(plan.sites, counts) if k])
    n = groups or len(order)
    size = -(-len(order) // max(n, 1)) if order else 1
    current, rows = proto, {}
    for g in range(0, len(order), size):
        names = {s.producer.weight for s in order[g:g + size]}
        found, _ = find_sites(current, _relabel(layers, current),  # sizes of the cut model
                              probe_sizes(current, plan.feed, runtime)[0])
        sites = [s for s in found if s.producer.weight in names]
        if len(sites) != len(names):  # a cut never removes a site's pattern
            raise RuntimeError(f"internal error: sites {sorted(names)} not found again after "
                               "the earlier groups' cut")
        hessians, _ = collect(current, hessian_layers(sites), data, batch, backend,
                              memory_mb, progress,
                              dense=proto if fit_dense and current is not proto else None,
                              runtime=runtime, subsample=subsample, token_mask=token_mask)
        weights = constant_weights(current.graph)
        keep, updated = [], {}
        solved = [_solve(site, weights, hessians, backend, damp, want[site.producer.weight])
                  for site in sites]
        cuts = [s.trace.order[:want[site.producer.weight]] for site, s in zip(sites, solved)]
        joint = joint_columns(sites, cuts)  # a Concat's inputs: one update of the consumer
        for site, s, removed in zip(sites, solved, cuts):
            if (cols := joint.pop(site.consumer.weight, None)) is not None:
                W = obs_update(backend.to_device(s.W), s.Hinv, site.width, cols)
                updated.update(site.consumer_arrays(backend.to_host(W)))
            updated.update(squeeze_update(site, removed, weights, hessians, backend, damp))
            keep.append(np.setdiff1d(np.arange(site.channels), removed))
            rows[site.producer.weight] = (s, removed)
        current = shrink(current, sites, keep, updated)
    out = []
    for site, k, p in zip(plan.sites, counts, plan.solved):
        s, removed = rows.get(site.producer.weight, (p, np.zeros(0, dtype=np.int64)))
        base = _norm_removed(site, plan.weights, k)
        out.append(ChannelRow(site.producer.name, site.consumer.name, site.channels, k,
                              float(s.trace.losses[:k].sum()), _zeroed_loss(p, base, backend),
                              s.energy, k * site.macs, tuple(int(c) for c in np.sort(removed)),
                              site.unit))
    keep_norm = [np.setdiff1d(np.arange(s.channels), _norm_removed(s, plan.weights, k))
                 for s, k in zip(plan.sites, counts)]
    baseline = shrink(proto, plan.sites, keep_norm)
    pruned = layer_macs(current, _relabel(layers, current),
                        sizes=pruned_sizes(plan, current, warnings))
    timed = latency_report(plan, counts, current) if budget == "latency" else {}
    return ChannelResult(current, baseline, out, plan.refused, (dense, pruned), warnings,
                         time.perf_counter() - t0, timed)


def _topological(proto: onnx.ModelProto, sites: list) -> list:
    """`sites` by the position of their consumer's node in the graph (a topological order
    for a valid model)."""
    from ..layers import node_label

    pos = {node_label(n, i): i for i, n in enumerate(proto.graph.node)}
    return sorted(sites, key=lambda s: pos.get(s.consumer.uses[0].node, 0))
