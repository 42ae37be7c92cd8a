"""The layer-wise stages: capture -> Hessians -> allocate -> solve, for every layer at once
(one-shot, OBC's default) or in topological groups (sequential: each group calibrated on
the model with the earlier groups compressed and fitted to the dense model's outputs).

Arrays cross to the solver's device in collect.py (activations, reduced into Hessians there)
and in solve.py / allocation (each layer's weights); they come back to the host only as
solve.py's host-side solutions.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import onnx

from . import export
from .allocation import guard
from .backend import Backend
from .calib import Calibration
from .capture import Runtime
from .collect import collect
from .tier import column_floor, diagonal_hessians, hessian_dtype
from .engine import Engine
from .frontier import Frontier
from .config import CompressConfig
from .costmem import layer_groups
from .costplan import Plan, exact_applies
from .errors import ConfigError
from .datalimit import run_warnings
from .layers import Layer, Skipped
from .report import LayerResult
from .solve import (HostSolution, dense_reason, group_summary, solve_all, solver_budget,
                    structure_for)
from .specs import MB


@dataclass(frozen=True)
class Compressed:
    """What the layer-wise stages give the rest of the run."""

    solutions: dict[str, HostSolution]  # weight name -> compressed and baseline weights
    rows: list[LayerResult]
    skipped: list[Skipped]
    warnings: list[str]
    profile: dict[str, Any]  # the allocation's choice (empty when uniform)
    act_scales: dict[str, float] | None  # activation ranges for the exporter
    seconds: dict[str, float] = field(default_factory=dict)
    act_values: dict[str, Any] | None = None  # what cfg.export.runtime's target takes
    # (export.act_values: the scales above for tensorrt, (lo, hi) ranges for onnxruntime)
    notes: list[str] = field(default_factory=list)  # decisions after the solve (floatcheck.py)
    uniform: Any = None  # --allocate auto's DP: the same layers solved uniform (solve.Solved),
    # for the model-level check (allocation/guard.py); None where not solved
    decided: dict[str, Any] = field(default_factory=dict)  # measured choices (pinned.py)


def _left_dense(layers: list[Layer], cfg: CompressConfig) -> list[Skipped]:
    """An N:M or block run without quantization or an allocation: the layers whose
    structure does not apply (solve.structure_for), left dense with their reason."""
    p = cfg.prune
    if not (p.nm or p.block) or cfg.quant.bits is not None or cfg.alloc.active:
        return []
    dense = [Skipped(L.name, L.op, dense_reason(L, p.nm, p.block)) for L in layers
             if structure_for(L, p) is None]
    if layers and len(dense) == len(layers):
        what = f"prune.nm {p.nm[0]}:{p.nm[1]}" if p.nm else f"prune.block {p.block}"
        raise ConfigError(f"{what} leaves all {len(layers)} selected layers dense, so nothing "
                          f"would be compressed ({dense[0].node}: {dense[0].reason}). Use "
                          "prune.sparsity (unstructured) or quantization for this model")
    return dense


def compress_layers(proto: onnx.ModelProto, layers: list[Layer], data: Calibration,
                    backend: Backend, cfg: CompressConfig, runtime: Runtime,
                    progress: bool = False, engine: Engine | None = None,
                    plan: Plan | None = None, means: dict[str, Any] | None = None,
                    outputs: Any = None) -> Compressed:
    """Capture, allocate (when asked) and solve every layer; see the module docstring.
    `engine` runs the layer and level-table solves (default: here, one after another);
    `plan` (costplan.py): the memory split, Hessian blocks and per-layer methods; `means`
    (tensor -> collect.ChannelMean; one-shot runs): filled by the dense model's capture;
    `outputs` (set name -> refs.Captured; one-shot runs): the dense outputs the
    verification reuses, filled alike."""
    seconds: dict[str, float] = {}
    observe = export.act_tensors(proto, layers, cfg.export.runtime) if cfg.quant.act_bits else []
    budget = solver_budget(cfg.run, backend) if plan is None else plan.row_bytes
    act_mb = cfg.run.memory_budget_mb if plan is None else plan.activation_bytes // MB
    blocks = None if plan is None else {p.weight: p.blocks for p in plan.layers}
    observers: dict[str, Any] = {}
    solutions: dict[str, HostSolution] = {}
    skipped = _left_dense(layers, cfg)  # known before any capture: no Hessian for them
    layers = [L for L in layers if L.name not in {s.node for s in skipped}]
    rows, warnings = [], []
    levels, profile, uniform = None, {}, None
    current = proto  # sequential: later groups are calibrated on the compressed model
    folds = cfg.solver.shrink and cfg.solver.method in ("obc", "gptq") and exact_applies(cfg)
    if folds and plan is not None and 3 * plan.hessian_total > plan.budget_bytes:
        folds = False  # the halves (up to the Hessians' size again) may not fit
        warnings.append("--shrink: no held-out halves kept (the Hessians take over a third of "
                        "--memory-budget); data-limited layers are solved on H as captured")

    frontier = Frontier(act_mb * MB // 2) if cfg.run.sequential else None  # frontier.py

    def capture(model: onnx.ModelProto, group: list[Layer], wanted: list[str]) -> dict:
        t = time.perf_counter()
        hessians, obs = collect(model, group, data.fit, data.batch, backend, act_mb, progress,
                                wanted, dense=proto if model is not proto else None,
                                runtime=runtime, blocks=blocks,
                                hessian_dtype=hessian_dtype(cfg, backend.xp),
                                histogram=_method(cfg) != "minmax",
                                subsample=column_floor(cfg), free_batch=data.free_batch,
                                sample_axes=data.info.get("sample_axes"),
                                diagonal=diagonal_hessians(cfg, group),
                                means=means if model is proto and not cfg.run.sequential
                                else None, shrink=data.batch_is_free, folds=folds,
                                frontier=frontier, outputs=next(iter(outputs.values()))
                                if outputs and model is proto and not cfg.run.sequential
                                else None, token_mask=data.token_mask)
        observers.update(obs)
        _add(seconds, "capture", t)
        return hessians

    def allocate(group: list[Layer], hessians: dict) -> None:
        nonlocal levels, profile
        t = time.perf_counter()
        chosen = _choose_levels(proto, group, hessians, backend, cfg, data, budget,
                                _values(observers, cfg), runtime, progress, engine)
        levels, profile = chosen.levels, chosen.profile
        warnings.extend(chosen.warnings)
        _add(seconds, "allocate", t)

    if cfg.run.sequential and cfg.alloc.active:  # levels from the dense model, once
        allocate(layers, capture(proto, layers, observe))
    with frontier if frontier is not None else nullcontext():  # its spill folder removed
        for group in layer_groups(layers, cfg.run):
            hessians = capture(current, group, [n for n in observe if n not in observers])
            if levels is None and cfg.alloc.active:  # one-shot: the group is every layer
                allocate(group, hessians)
            t = time.perf_counter()
            spare = guard.spare(hessians, cfg, plan) if levels else None  # solves spend them
            solved = solve_all(proto, group, hessians, backend, prune=cfg.prune, quant=cfg.quant,
                               solver=cfg.solver, budget_bytes=budget, level_for=levels,
                               alloc_budget=cfg.alloc.budget, progress=progress, engine=engine,
                               plan=plan)
            if spare is not None:  # its time is the allocation's (the plan predicts one solve)
                _add(seconds, "solve", t)
                t = time.perf_counter()
                uniform = solve_all(proto, group, spare, backend, prune=cfg.prune,
                                    quant=cfg.quant, solver=cfg.solver, budget_bytes=budget,
                                    progress=progress, engine=engine, plan=plan)
                _add(seconds, "allocate", t)
                t = time.perf_counter()
            rows += solved.rows
            skipped += solved.skipped
            warnings += solved.warnings
            solutions.update(solved.solutions)
            if cfg.run.sequential:  # float weights (on the grid when quantized), as solved
                current = export.apply_weights(current, group, {
                    k: s.compressed.weight for k, s in solved.solutions.items()})
            _add(seconds, "solve", t)
    values = _values(observers, cfg)
    warnings += run_warnings(rows) + group_summary(cfg.quant.group_size, rows)
    return Compressed(solutions, rows, skipped, warnings, profile, _scales(observers, cfg),
                      seconds, values, notes=[SEQUENTIAL_NOTE] if rows and _by_default(cfg)
                      else [], uniform=uniform)


SEQUENTIAL_NOTE = (  # docs/defaults.md "Per-layer --sequential at W4 ...", "... at 2:4"
    "sequential calibration, the default for weights below 8 bits, N:M or both without "
    "activation grids (each layer on the compressed model's inputs): it lowered the output "
    "error of eleven of the twelve real models the bench measured at 4 bits, by 9-71% (Silero "
    "VAD's rose 6%), of six of seven at 2:4 (the seventh level) and of three of three at 2:4 + "
    "4 bits, at 1.0-3x the CPU time; --one-shot is faster")


def _by_default(cfg: CompressConfig) -> bool:
    """Sequential because it is the default (config._auto_sequential), not asked for."""
    auto = getattr(cfg, "_run_auto", None)
    return cfg.run.sequential and auto is not None and auto.sequential_groups is None


def _scales(observers: dict[str, Any], cfg: CompressConfig) -> dict[str, float] | None:
    q = cfg.quant
    if not q.act_bits:
        return None
    return {n: o.scale(_method(cfg), q.act_percentile) for n, o in observers.items()}


def _values(observers: dict[str, Any], cfg: CompressConfig) -> dict[str, Any] | None:
    """The activation values cfg.export.runtime's target takes (export.act_values)."""
    q = cfg.quant
    if not q.act_bits:
        return None
    return export.act_values(observers, cfg.export.runtime, _method(cfg), q.act_percentile)


def _method(cfg: CompressConfig) -> str:
    return cfg.quant.act_method(cfg.export.runtime)


def _choose_levels(proto: onnx.ModelProto, layers: list[Layer], hessians: dict,
                   backend: Backend, cfg: CompressConfig, data: Calibration, budget: int,
                   act_scales: dict[str, float] | None, runtime: Runtime, progress: bool,
                   engine: Engine | None = None) -> Any:
    from .allocation import choose_levels

    return choose_levels(proto, layers, hessians, backend, prune=cfg.prune, quant=cfg.quant,
                         solver=cfg.solver, alloc=cfg.alloc, data=data.fit, batch=data.batch,
                         budget_bytes=budget, act_scales=act_scales, runtime=runtime,
                         progress=progress, export_target=cfg.export.runtime, engine=engine,
                         token_mask=data.token_mask)


def _add(seconds: dict[str, float], stage: str, t: float) -> None:
    seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - t
