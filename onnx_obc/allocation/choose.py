"""The allocation stage: per-layer levels from a saved profile (alloc.profile), or from the
level tables and the exact DP under the global budget (alloc.mode "dp").

    chosen = choose_levels(proto, layers, hessians, backend, prune=cfg.prune,
                           quant=cfg.quant, solver=cfg.solver, alloc=cfg.alloc, data=fit,
                           batch=32, budget_bytes=solver_memory, act_scales=scales,
                           runtime=runtime)
    chosen.levels    # weight name -> Level (solve_all's level_for)
    chosen.profile   # what the report prints: choice, budget, score, cost, dense_cost, ...

The target is a global sparsity (prune.sparsity) or a reduction factor of the dense FP32
model's params / FLOPs / BOPs (alloc.target; without it 1 / (1 - prune.sparsity)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import onnx

from ..backend import Backend
from ..calib import CalibrationSource
from ..capture import Runtime, providers_for
from ..engine import Engine
from ..errors import ConfigError
from ..hessian import HessianAccumulator
from ..layers import Layer
from ..specs import Allocation, Pruning, Quantization, SolverOptions
from .curve import error_curve
from .dp import LevelTable, allocate, target_budget
from .levels import Level
from .profiles import load_profile, save_profile
from .score import OutputScore
from .tables import TableSpecs, build_tables, dense_cost


class ProfileMismatch(ConfigError):
    """alloc.profile has no level for some layer of this run."""


class UnreachableTarget(ConfigError):
    """The target asks for more than every layer at its cheapest level gives."""


@dataclass(frozen=True)
class Allocated:
    """The allocation's result."""

    levels: dict[str, Level]  # weight name -> level
    profile: dict[str, Any]  # for the report (and its JSON)
    warnings: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Target:
    """What the DP's budget is made from."""

    kind: str  # target_budget's kind: "sparsity", "params", "flops" or "bops"
    value: float  # a fraction of weights removed ("sparsity"), else a reduction factor
    field: str  # the config field it comes from, for messages


def choose_levels(proto: onnx.ModelProto, layers: list[Layer],
                  hessians: dict[str, HessianAccumulator], backend: Backend, *,
                  prune: Pruning, quant: Quantization, solver: SolverOptions,
                  alloc: Allocation, data: CalibrationSource, batch: int, budget_bytes: int,
                  act_scales: dict[str, Any] | None = None, runtime: Runtime | None = None,
                  progress: bool = False, export_target: str = "tensorrt",
                  engine: Engine | None = None, token_mask: str | None = None) -> Allocated:
    """Per-layer levels: alloc.profile when given, else the DP over the level tables built
    from `hessians` (read, not consumed) and, for the "output" score, measured on `data`
    with sessions built by `runtime` (default: the backend's providers) on candidates
    deployed for `export_target`. `act_scales`: that target's activation values (tensor ->
    scale for tensorrt: export.act_values) for the int8 inputs of quantized levels;
    `budget_bytes`: the solver's memory for row batches; `engine` runs the tables' solves;
    `token_mask`: the "output" score on the token positions of per-token outputs."""
    if alloc.profile:
        return from_profile(layers, alloc.profile)
    target = resolve_target(alloc, prune)
    scorer = None
    if alloc.score == "output":
        scorer = OutputScore.measure(proto, data, batch, runtime or providers_for(backend.name),
                                     target=export_target, token_mask=token_mask)
    tables = build_tables(proto, layers, hessians, backend,
                          TableSpecs(prune, quant, solver, alloc), data, batch, budget_bytes,
                          progress=progress, act_scales=act_scales, scorer=scorer,
                          engine=engine)
    return from_tables(layers, tables, target, alloc=alloc, quant=quant)


def resolve_target(alloc: Allocation, prune: Pruning) -> Target:
    """The budget kind and target: a global sparsity for alloc.budget "sparsity" (and
    "params" without alloc.target), else a reduction factor."""
    if alloc.budget == "sparsity" or (alloc.budget == "params" and alloc.target is None):
        kind = "sparsity"
    else:
        kind = alloc.budget
    if kind != "sparsity" and alloc.target is not None:
        return Target(kind, float(alloc.target), "alloc.target")
    if prune.sparsity is None:
        raise ConfigError(f"alloc.budget {alloc.budget} needs a target: give prune.sparsity"
                          + ("" if kind == "sparsity" else " or alloc.target"))
    s = prune.sparsity
    return Target(kind, s if kind == "sparsity" else 1.0 / (1.0 - s), "prune.sparsity")


def from_profile(layers: list[Layer], path: str) -> Allocated:
    """The levels of a saved profile (ProfileMismatch when a layer has none)."""
    choice = load_profile(path)
    names = [L.name for L in layers]
    missing = [n for n in names if n not in choice]
    if missing:
        raise ProfileMismatch(f"alloc.profile {path} has no level for {missing}; it was made "
                              "for another model or other select.include / select.exclude")
    extra = [n for n in choice if n not in names]
    warnings = (f"the profile {path} has levels for layers this run does not compress "
                f"(ignored): {extra}",) if extra else ()
    return Allocated({L.weight: choice[L.name] for L in layers},
                     {"source": str(path), "choice": {n: choice[n].label for n in names}},
                     warnings)


def from_tables(layers: list[Layer], tables: list[LevelTable], target: Target, *,
                alloc: Allocation, quant: Quantization) -> Allocated:
    """The DP's choice under the target's budget; written to alloc.save_profile if set."""
    dense = dense_cost(tables)
    budget = target_budget(tables, target.value, target.kind)
    check_reachable(tables, budget, target, quant)
    chosen = allocate(tables, budget)
    profile = {"choice": chosen.choice, "budget": alloc.budget, "score": alloc.score,
               "cost": chosen.cost, "dense_cost": dense, "error": chosen.error,
               "reduction": dense / chosen.cost if chosen.cost else math.inf,
               "target": chosen.budget,  # the budget the DP met, and its curve:
               "curve": [list(p) for p in error_curve(tables, chosen)]}  # [[budget, error]]
    if alloc.save_profile:
        save_profile(alloc.save_profile, chosen,
                     {"budget_kind": alloc.budget, "score": alloc.score})
    return Allocated({L.weight: Level.parse(chosen.choice[L.name]) for L in layers}, profile)


def check_reachable(tables: list[LevelTable], budget: float, target: Target,
                    quant: Quantization) -> None:
    """UnreachableTarget, saying how far the levels go, when even every layer at its
    cheapest level costs more than `budget`."""
    least = math.fsum(min(t.cost) for t in tables)
    if least <= budget:
        return
    dense = dense_cost(tables)
    if target.kind == "bops":
        hint = "" if quant.act_bits else " or quantize activations (quant.act_bits 8)"
    else:
        hint = " or raise alloc.max_sparsity"
    raise UnreachableTarget(
        f"the {target.kind} target cannot be met: these levels reach at most "
        f"{dense / least:.3g}x less than the dense model (every layer at its cheapest "
        f"level), asked {dense / budget:.3g}x; lower {target.field}{hint}")
