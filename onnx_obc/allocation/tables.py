"""Level tables: each layer's levels with their cost and error, the DP's input (dp.py).

One ExactOBS run per layer gives its loss at every sparsity level (solvers.traces), or,
under a BOP budget, one solve per mixed level (solvers.solve_layer). Levels are OBC's grid
(densities 0.9^k, k = 0.. up to the maximum sparsity, plus the maximum). A level's error is
the layer loss normalised by the layer's output energy tr(W H W^T), so layers compare
("loss" score), or the measured increase of the model's output error on calibration
samples with only that layer compressed ("output" score, score.py, slower). A level's cost
is the layer's remaining parameters, its FLOPs (parameters times output positions per
sample), or its bit-operations (levels.py), depending on the budget kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..backend import Backend
from ..calib import CalibrationSource
from ..capture import activation_bytes
from ..engine import Engine, LocalEngine
from ..export.qweights import group_size_for
from ..hessian import HessianAccumulator
from ..layerjob import solve_cost
from ..layers import Layer, constant_weights, weight_matrix
from ..quant import QuantSpec
from ..solve import structure_for
from ..solvers import LossTraces, rebuild_at, solve_layer, traces
from ..specs import Allocation, Pruning, Quantization, SolverOptions
from .dp import LevelTable
from .levels import mixed_levels
from .score import OutputScore


@dataclass(frozen=True)
class TableSpecs:
    """The specs the tables read."""

    prune: Pruning
    quant: Quantization
    solver: SolverOptions
    alloc: Allocation


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
    energy = _energy(W, H)
    errors, costs = [], []
    for s in levels:
        cut = run.at(s)
        errors.append(cut.loss / energy)
        costs.append((n - cut.removed) * cost_per_weight)
    return LevelTable(L.name, levels, tuple(costs), tuple(errors))


def dense_cost(tables: list[LevelTable]) -> float:
    return math.fsum(t.cost[0] for t in tables)


@dataclass(frozen=True)
class TableJob:
    """One layer's level table as an engine task (engine/): W [G, r, d] float32, H
    [G, d, d] (host or the run's device), the specs and the sparsity levels. weights: also
    return each level's weights on the host (for the "output" score, measured here)."""

    L: Layer
    W: Any
    H: Any
    specs: TableSpecs
    levels: tuple[float, ...]
    per_weight: float
    budget_bytes: int
    weights: bool = False


def table_job(job: TableJob, backend: Backend) -> tuple[LevelTable, list[Any] | None]:
    """The layer's table (errors: the normalised layer loss) and, when asked, the host
    weights at each of its levels (for a mixed table, the levels after fp32)."""
    backend = backend.for_width(job.W.shape[-1])
    W, H = backend.to_device(job.W), backend.to_device(job.H)
    if job.specs.alloc.budget == "bops":
        return _mixed_table(job.L, W, H, backend, job.specs, job.per_weight, job.budget_bytes,
                            job.weights)
    return _sparsity_table(job.L, W, H, backend, job.specs, job.levels, job.per_weight,
                           job.budget_bytes, job.weights)


def build_tables(proto: onnx.ModelProto, layers: list[Layer],
                 hessians: dict[str, HessianAccumulator], backend: Backend, specs: TableSpecs,
                 data: CalibrationSource, batch: int, budget_bytes: int, *,
                 progress: bool = False, act_scales: dict[str, Any] | None = None,
                 scorer: OutputScore | None = None, engine: Engine | None = None
                 ) -> list[LevelTable]:
    """One table per layer: sparsity levels, or the mixed levels under a BOP budget.
    `scorer` (the "output" score) measures the errors; None: the normalised layer loss.
    `engine` runs the layers' solves (default: here, one after another)."""
    per_weight = _per_weight(proto, layers, specs.alloc.budget, data, batch)
    weights = constant_weights(proto.graph)
    levels = level_grid(specs.alloc.max_sparsity)
    if scorer is not None:  # one onnxruntime evaluation per level: a coarser grid
        levels = levels[:-1:2] + levels[-1:]

    def make(i: int) -> TableJob:
        L = layers[i]
        return TableJob(L, backend.to_device(weight_matrix(weights, L)),
                        hessians[L.weight].mean(), specs, levels, per_weight[L.weight],
                        budget_bytes, scorer is not None)

    engine = engine or LocalEngine(backend)
    done = engine.map(table_job, len(layers), make, [solve_cost(L) for L in layers],
                      desc="levels", labels=[L.name for L in layers], progress=progress)
    if scorer is None:
        return [t for t, _ in done]
    return [_scored(L, t, ws, specs, scorer, act_scales) for L, (t, ws) in zip(layers, done)]


def _scored(L: Layer, t: LevelTable, weights: list[Any], specs: TableSpecs,
            scorer: OutputScore, act_scales: dict[str, Any] | None) -> LevelTable:
    """The table with the errors measured by `scorer` on the levels' weights."""
    if specs.alloc.budget != "bops":
        return LevelTable(t.name, t.levels, t.cost, scorer.errors(L, iter(weights)))
    alloc = specs.alloc
    st = structure_for(L, specs.prune, nm=alloc.level_nm) if alloc.level_nm else None
    levels = mixed_levels(alloc.level_bits, alloc.level_nm, st is not None)
    a = _input_scale(L, act_scales)  # quantized levels with their int8 input, if deployed so
    errs = (0.0,) + scorer.errors(L, iter(weights),
                                  (a if lv.bits is not None else None for lv in levels[1:]))
    return LevelTable(t.name, t.levels, t.cost, errs)


def _sparsity_table(L: Layer, W: Any, H: Any, backend: Backend, specs: TableSpecs,
                    levels: tuple[float, ...], per_weight: float, budget_bytes: int,
                    weights: bool) -> tuple[LevelTable, list[Any] | None]:
    st = structure_for(L, specs.prune) if specs.prune.block else None
    if specs.prune.block and st is None:  # cannot hold blocks: stays dense, one level
        t = LevelTable(L.name, (0.0,), (math.prod(L.matrix_shape) * per_weight,), (0.0,))
        return t, [backend.to_host(W)] if weights else None
    run = traces(W, H, st, levels[-1], damp=specs.solver.damp, budget_bytes=budget_bytes)
    t = layer_table(L, W, H, run, levels, per_weight)
    return t, [backend.to_host(rebuild_at(run, s)) for s in levels] if weights else None


def _mixed_table(L: Layer, W: Any, H: Any, backend: Backend, specs: TableSpecs,
                 per_weight: float, budget_bytes: int, weights: bool
                 ) -> tuple[LevelTable, list[Any] | None]:
    """OBC's mixed database for one layer: solved at every mixed level (fp32, w<b>, N:M,
    N:M + w<b>) from the same dense Hessian; cost = BOPs per sample."""
    alloc = specs.alloc
    st = structure_for(L, specs.prune, nm=alloc.level_nm) if alloc.level_nm else None
    levels = mixed_levels(alloc.level_bits, alloc.level_nm, st is not None)
    sols, alone = [], None  # alone: the N:M-only solution, which the N:M + w<b> reuse
    for lv in levels[1:]:  # [0]: fp32
        sols.append(solve_layer(W, H, quant=_spec(L, specs.quant, lv.bits),
                                damp=specs.solver.damp, structure=st if lv.nm else None,
                                budget_bytes=budget_bytes, pruned=alone if lv.nm else None))
        if lv.nm and lv.bits is None:
            alone = sols[-1]
    energy = _energy(W, H)
    errs = (0.0,) + tuple(sol.loss / energy for sol in sols)
    n = math.prod(W.shape)
    cost = tuple(n * per_weight * lv.bops_per_mac(specs.quant.act_bits) for lv in levels)
    host = [backend.to_host(sol.W) for sol in sols] if weights else None
    backend.free()
    return LevelTable(L.name, tuple(lv.label for lv in levels), cost, errs), host


def _input_scale(L: Layer, act_scales: dict[str, Any] | None) -> Any:
    """The scale of L's int8 input Q/DQ (one input shared by all its uses), or None."""
    if len({u.input for u in L.uses}) != 1:
        return None
    return (act_scales or {}).get(L.uses[0].input)


def _energy(W: Any, H: Any) -> float:
    """The layer's output energy tr(W H W^T) (1 when 0)."""
    W64 = W.astype(np.float64)
    return float(((W64 @ H) * W64).sum()) or 1.0


def _spec(L: Layer, quant: Quantization, bits: int | None) -> QuantSpec | None:
    spec = quant.spec(bits) if bits is not None else None
    return None if spec is None else group_size_for(L, spec)[0]


def _per_weight(proto: onnx.ModelProto, layers: list[Layer], budget: str,
                data: CalibrationSource, batch: int) -> dict[str, float]:
    """Cost of one dense weight: 1 (params), or MACs per sample (flops, bops)."""
    if budget in ("flops", "bops"):
        return positions_per_sample(proto, layers, next(data.batches(batch))[1])
    return {L.weight: 1.0 for L in layers}
