"""Non-uniform levels: one ExactOBS run per layer gives its loss at every sparsity level (or,
under a BOP budget, one solve per mixed level); an exact DP (allocate.py) then picks the
level of every layer under the global budget.

Levels are OBC's grid (densities 0.9^k, k = 0.. up to the maximum sparsity, plus the maximum).
A level's error is the layer loss normalised by the layer's output energy tr(W H W^T), so
layers compare ("loss" score), or the measured increase of the model's output error on
calibration samples with only that layer compressed ("output" score, onnxruntime, slower).
A level's cost is the layer's remaining parameters, its FLOPs (parameters times output
positions per sample), or its bit-operations (levels.py), depending on the budget kind.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm.auto import tqdm

from .allocate import LevelTable
from .backend import Backend
from .calib import DataSet
from .capture import activation_bytes, providers_for, session
from .export.qweights import group_size_for
from .export.tensorrt import quantize_activations
from .export.values import apply_weights
from .hessian import HessianAccumulator
from .layers import Layer, constant_weights
from .levels import mixed_levels
from .quant import QuantSpec
from .solve import structure_for
from .solvers import LossTraces, rebuild_at, solve_layer, traces

MB = 1 << 20


def level_grid(max_sparsity: float = 0.95) -> tuple[float, ...]:
    """0, 0.1, 0.19, 0.271, ... (density 0.9^k) up to max_sparsity, which is appended."""
    levels, k = [], 0
    while 1 - 0.9**k < max_sparsity - 1e-9:
        levels.append(round(1 - 0.9**k, 6))
        k += 1
    return tuple(levels + [max_sparsity])


def positions_per_sample(proto: onnx.ModelProto, layers: list[Layer],
                         feed: dict[str, np.ndarray]) -> dict[str, float]:
    """Output positions per sample of each layer (FLOPs = params x positions), summed over
    the layer's uses; 1 where the shape is unknown."""
    out_of = {}
    for i, node in enumerate(proto.graph.node):
        out_of[node.name or f"<{node.op_type} #{i}>"] = node.output[0]
    names = [out_of[u.node] for L in layers for u in L.uses]
    sizes = activation_bytes(proto, names, feed)
    n = next(iter(feed.values())).shape[0]
    result = {}
    for L in layers:
        G, r, _ = L.matrix_shape
        total = 0.0
        for u in L.uses:
            b = sizes.get(out_of[u.node])
            total += b / 4 / n / (G * r) if b else 1.0
        result[L.weight] = total
    return result


def layer_table(L: Layer, W: Any, H: Any, run: LossTraces, levels: tuple[float, ...],
                cost_per_weight: float) -> LevelTable:
    """Loss at every level from the layer's one run (solvers.traces), normalised by its
    output energy."""
    n = math.prod(W.shape)
    W64 = W.astype(np.float64)
    energy = float(((W64 @ H) * W64).sum()) or 1.0
    errors, costs = [], []
    for s in levels:
        cut = run.at(s)
        errors.append(cut.loss / energy)
        costs.append((n - cut.removed) * cost_per_weight)
    return LevelTable(L.name, levels, tuple(costs), tuple(errors))


def output_errors(proto: onnx.ModelProto, L: Layer, weights: Iterator[np.ndarray],
                  data: DataSet, batch: int, backend: Backend,
                  act_scales: Iterator[float | None] | None = None) -> tuple[float, ...]:
    """Relative increase of the model output error with only L compressed, one value per
    weight matrix [G, r, d] (host) that `weights` yields; `act_scales` (one per matrix, None
    for none) puts that layer's int8 input Q/DQ in place too, as it will be deployed."""
    G, r, d = L.matrix_shape
    providers = providers_for(backend.name)
    dense = session(proto, providers, optimize=True)
    ref = [dense.run(None, feed)[0] for _, feed in data.batches(batch)]
    energy = sum(float(np.square(y).sum()) for y in ref) or 1.0
    errs = []
    scales = iter(act_scales) if act_scales is not None else None
    for Wl in weights:
        m = apply_weights(proto, [L], {L.weight: L.from_matrix(Wl.reshape(G, r, d))})
        a = next(scales) if scales is not None else None
        if a is not None:
            x = L.uses[0].input
            m = quantize_activations(m, {x: a}, 8, {x: [u.node for u in L.uses]})
        sess = session(m, providers, optimize=True)
        e = sum(float(np.square(sess.run(None, feed)[0] - y).sum())
                for (_, feed), y in zip(data.batches(batch), ref))
        errs.append(e / energy)
    return tuple(errs)


def _rebuilt(run: LossTraces, levels: tuple[float, ...], backend: Backend
             ) -> Iterator[np.ndarray]:
    for s in levels:
        yield backend.to_host(rebuild_at(run, s))


def _output_subset(data: DataSet) -> DataSet:
    return data.take(np.arange(min(data.n, 64)))


def _per_weight(proto: onnx.ModelProto, layers: list[Layer], cfg: Any, data: DataSet,
                batch: int) -> dict[str, float]:
    """Cost of one dense weight: 1 (params), or MACs per sample (flops, bops)."""
    if cfg.alloc.budget in ("flops", "bops"):
        return positions_per_sample(proto, layers, next(data.batches(batch))[1])
    return {L.weight: 1.0 for L in layers}


def _on_device(proto: onnx.ModelProto, layers: list[Layer],
               hessians: dict[str, HessianAccumulator], backend: Backend, progress: bool
               ) -> Iterator[tuple[Layer, Any, Any]]:
    """(layer, W [G, r, d] float32, H [G, d, d]) on the solver's device, one at a time, with
    a progress bar (levels for every layer before the DP)."""
    weights = constant_weights(proto.graph)
    bar = tqdm(layers, desc="levels", unit="layer", disable=not progress)
    for L in bar:
        bar.set_postfix_str(L.name[:40])
        w = numpy_helper.to_array(weights[L.weight][1])
        yield L, backend.to_device(L.to_matrix(w).astype(np.float32)), hessians[L.weight].mean()


def build_tables(proto: onnx.ModelProto, layers: list[Layer],
                 hessians: dict[str, HessianAccumulator], backend: Backend, cfg: Any,
                 data: DataSet, batch: int, budget_bytes: int, progress: bool = False,
                 act_scales: dict[str, float] | None = None) -> list[LevelTable]:
    if cfg.alloc.budget == "bops":
        return mixed_tables(proto, layers, hessians, backend, cfg, data, batch, budget_bytes,
                            progress, act_scales)
    levels = level_grid(cfg.alloc.max_sparsity)
    if cfg.alloc.score == "output":  # one onnxruntime evaluation per level: a coarser grid
        levels = levels[:-1:2] + levels[-1:]
    per_weight = _per_weight(proto, layers, cfg, data, batch)
    tables = []
    for L, W, H in _on_device(proto, layers, hessians, backend, progress):
        st = structure_for(L, cfg) if cfg.prune.block else None
        if cfg.prune.block and st is None:  # cannot hold blocks: stays dense, one level
            n = math.prod(L.matrix_shape)
            tables.append(LevelTable(L.name, (0.0,), (n * per_weight[L.weight],), (0.0,)))
            continue
        run = traces(W, H, st, levels[-1], damp=cfg.solver.damp, budget_bytes=budget_bytes)
        t = layer_table(L, W, H, run, levels, per_weight[L.weight])
        if cfg.alloc.score == "output":
            errs = output_errors(proto, L, _rebuilt(run, levels, backend),
                                 _output_subset(data), batch, backend)
            t = LevelTable(t.name, t.levels, t.cost, errs)
        tables.append(t)
    return tables


def mixed_tables(proto: onnx.ModelProto, layers: list[Layer],
                 hessians: dict[str, HessianAccumulator], backend: Backend, cfg: Any,
                 data: DataSet, batch: int, budget_bytes: int, progress: bool = False,
                 act_scales: dict[str, float] | None = None) -> list[LevelTable]:
    """OBC's mixed database under a BOP budget: every layer solved at every mixed level
    (fp32, w<b>, N:M, N:M + w<b>) from the same dense Hessian; cost = BOPs per sample."""
    macs = _per_weight(proto, layers, cfg, data, batch)
    tables = []
    for L, W, H in _on_device(proto, layers, hessians, backend, progress):
        n = math.prod(W.shape)
        st = structure_for(L, cfg, nm=cfg.alloc.level_nm) if cfg.alloc.level_nm else None
        levels = mixed_levels(cfg.alloc.level_bits, cfg.alloc.level_nm, st is not None)
        W64 = W.astype(np.float64)
        energy = float(((W64 @ H) * W64).sum()) or 1.0
        sols, alone = [], None  # alone: the N:M-only solution, which the N:M + w<b> reuse
        for lv in levels[1:]:  # [0]: fp32
            sols.append(solve_layer(W, H, quant=_spec(L, cfg, lv.bits), damp=cfg.solver.damp,
                                    structure=st if lv.nm else None, budget_bytes=budget_bytes,
                                    pruned=alone if lv.nm else None))
            if lv.nm and lv.bits is None:
                alone = sols[-1]
        if cfg.alloc.score == "output":  # quantized levels with their int8 input, if deployed so
            mats = (backend.to_host(sol.W) for sol in sols)
            a = (act_scales or {}).get(L.uses[0].input) if len(
                {u.input for u in L.uses}) == 1 else None
            acts = (a if lv.bits is not None else None for lv in levels[1:])
            errs = (0.0,) + output_errors(proto, L, mats, _output_subset(data), batch, backend,
                                          acts)
        else:
            errs = (0.0,) + tuple(sol.loss / energy for sol in sols)
        cost = tuple(n * macs[L.weight] * lv.bops_per_mac(cfg.quant.act_bits) for lv in levels)
        tables.append(LevelTable(L.name, tuple(lv.label for lv in levels), cost, errs))
        backend.free()
    return tables


def _spec(L: Layer, cfg: Any, bits: int | None) -> QuantSpec | None:
    spec = cfg.quant.spec(bits) if bits is not None else None
    return None if spec is None else group_size_for(L, spec)[0]


def dense_cost(tables: list[LevelTable]) -> float:
    return math.fsum(t.cost[0] for t in tables)
