"""convert(): load -> select layers -> capture -> Hessians -> solve -> rewrite -> verify -> save.

The only module that wires the stages together. Arrays cross between the host (onnx,
onnxruntime) and the solver's device only in the two stages that need it: collect.py
(activations in) and solve.py (weights in, results out).
"""

from __future__ import annotations

import logging
import math
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import calib as calib_mod
from .backend import get_backend
from .capture import providers_for, session
from .collect import collect
from .config import CompressConfig
from .correct import correct_outputs
from . import export
from .errors import ObcError
from .layers import Layer, find_layers
from .levels import Level
from .modelio import check_output_path, load_model, save_model
from .report import Report, SkippedLayer
from .solve import solve_all, solver_budget
from . import nonuniform
from .allocate import allocate, load_profile, save_profile, target_budget
from .verify import evaluate

log = logging.getLogger(__name__)


@dataclass
class ConvertResult:
    model: onnx.ModelProto  # the compressed model
    report: Report
    written: list[Path]  # files written (empty when no output path was given)


def convert(model: str | os.PathLike | onnx.ModelProto, output: str | os.PathLike | None = None,
            *, calib: Any = None, eval_data: Any = None, config: CompressConfig | None = None,
            report_path: str | os.PathLike | None = None, progress: bool = True,
            **options: Any) -> ConvertResult:
    """Compress `model` and (if `output` is given) write it atomically.

    `calib`: .npz path, directory of per-sample files, iterable of feed dicts or an
    onnxruntime CalibrationDataReader; None synthesizes random inputs (not representative).
    `eval_data`: optional .npz with the inputs and `labels`, for accuracy.
    `options`: CompressConfig fields (sparsity=0.5, method="obc", ...), or pass `config`.
    """
    cfg = CompressConfig.from_options(config, **options)
    timer: dict[str, float] = {}
    t = time.perf_counter()
    src = None if isinstance(model, onnx.ModelProto) else os.fspath(model)
    if output is not None:
        check_output_path(output, src)
    proto = model if src is None else load_model(src)
    layers, skipped = find_layers(proto, cfg.select)
    report = Report(model=src or "<ModelProto>", output=None if output is None else
                    os.fspath(output), config=cfg.to_dict(), device="", calibration={},
                    skipped=[SkippedLayer(s.node, s.op, s.reason, s.weight) for s in skipped])
    if not layers:
        reasons = "; ".join(f"{s.node}: {s.reason}" for s in skipped[:8]) or "no Conv/Gemm/MatMul"
        raise ObcError(f"no compressible layer in the model ({reasons}). Check --op-types, "
                       "--include/--exclude, or run `onnx-obc inspect` on the model.")
    from . import preflight  # every check that can be made before any work: see preflight.py
    report.warnings.extend(preflight.check(
        proto, layers, model_path=src, output=output, report_path=report_path,
        external=cfg.run.external_data, bits=bool(cfg.quant.bits or cfg.alloc.budget == "bops"),
        act_bits=bool(cfg.quant.act_bits), custom_op_library=cfg.run.custom_op_library,
        calib=calib, calib_limit=cfg.run.calib_samples, sequential=cfg.run.sequential))
    data = _calibration(proto, calib, cfg, report)
    fit, held = data.split(cfg.run.holdout, cfg.run.seed)
    backend = get_backend(cfg.run.device)
    report.device = backend.device_label
    batch, fixed = _batch_size(proto, cfg, fit.n, report)
    if fixed:  # a fixed batch axis takes full batches only
        fit, held = _full_batches(fit, batch), None if held is None else _full_batches(held, batch)
    report.calibration.update(samples=fit.n, holdout=0 if held is None else held.n)
    timer["load"] = time.perf_counter() - t

    observe = export.act_tensors(proto, layers) if cfg.quant.act_bits else []
    solutions, observers = {}, {}
    current = proto  # sequential: later groups are calibrated on the compressed model
    level_for = None
    if cfg.run.sequential and cfg.alloc.active:  # levels from the dense model, before any change
        t = time.perf_counter()
        hessians, obs = collect(proto, layers, fit, batch, backend, cfg.run.memory_budget_mb, progress,
                                observe)
        observers.update(obs)
        timer["capture"] = time.perf_counter() - t
        t = time.perf_counter()
        level_for = _allocation(proto, layers, hessians, backend, cfg, report, fit, batch,
                                progress, observers)
        timer["allocate"] = time.perf_counter() - t
    for chunk in _layer_groups(layers, cfg):
        t = time.perf_counter()
        wanted = [n for n in observe if n not in observers]
        hessians, obs = collect(current, chunk, fit, batch, backend, cfg.run.memory_budget_mb,
                                progress, wanted,
                                dense=proto if current is not proto else None)
        observers.update(obs)
        timer["capture"] = timer.get("capture", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        if level_for is None and cfg.alloc.active:  # one-shot: chunk = every layer
            level_for = _allocation(proto, chunk, hessians, backend, cfg, report, fit, batch,
                                    progress, observers)
        solved = solve_all(proto, chunk, hessians, backend, prune=cfg.prune, quant=cfg.quant,
                           solver=cfg.solver, budget_bytes=solver_budget(cfg, backend),
                           level_for=level_for, alloc_budget=cfg.alloc.budget, progress=progress)
        report.layers.extend(solved.rows)
        report.skipped.extend(solved.skipped)
        report.warnings.extend(solved.warnings)
        solutions.update(solved.solutions)
        if cfg.run.sequential:  # float weights (on the grid if quantized), as solved
            current = export.apply_weights(current, chunk, {
                k: s.compressed.weight for k, s in solved.solutions.items()})
        timer["solve"] = timer.get("solve", 0.0) + time.perf_counter() - t

    t = time.perf_counter()
    done = [L for L in layers if L.weight in solutions]  # the layers the solver changed
    fixes = None
    if cfg.correct.active:
        corr = correct_outputs(proto, done, solutions, fit, batch, providers_for(backend.name),
                               cfg.correct.scale)
        report.warnings.extend(f"correction skipped for {w}" for w in corr.skipped)
        report.correction = corr.summary()
        fixes = corr.fixes
    which = ["compressed"]
    if cfg.run.compare_baseline:  # deployed the same way as the compressed model
        which += ["uncorrected"] if fixes is not None else []
        which += ["baseline"] if cfg.solver.method not in ("magnitude", "rtn") else []
    act_scales = ({n: o.scale(cfg.quant.act_calibration, cfg.quant.act_percentile)
                   for n, o in observers.items()} if cfg.quant.act_bits else None)
    built = export.build_all(proto, layers, solutions, which=which, corrections=fixes,
                             act_scales=act_scales)
    out_model = built["compressed"]
    models = {"dense": proto, **{baseline_name(cfg) if k == "baseline" else k: m
                                 for k, m in built.items()}}
    sets = {"held-out calibration" if held is not None else "calibration (not held out)":
            held if held is not None else fit}
    if eval_data is not None:
        ev = calib_mod.load_data(eval_data, proto)
        ev = _full_batches(ev, batch) if fixed else ev
        if ev is None:
            report.warnings.append(f"the eval set has fewer samples than the model's fixed "
                                   f"batch of {batch}; it was not evaluated")
        else:
            sets["eval"] = ev
    providers = providers_for(backend.name)
    sessions = {k: session(m, providers, optimize=True) for k, m in models.items()}
    for name, ds in sets.items():
        report.fidelity[name] = evaluate(sessions, ds, batch)
    timer["verify"] = time.perf_counter() - t

    written: list[Path] = []
    if output is not None:
        written = save_model(out_model, output, inp=src, external=cfg.run.external_data)
    report.seconds = {**timer, "total": sum(timer.values())}
    report.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if report_path is not None:
        report.write_json(report_path)
    return ConvertResult(out_model, report, written)


def _calibration(proto: onnx.ModelProto, calib: Any, cfg: CompressConfig,
                 report: Report) -> calib_mod.DataSet:
    if calib is None:
        data = calib_mod.synthesize(proto, cfg.run.calib_samples, cfg.run.seed)
        msg = ("NO CALIBRATION DATA: the Hessians come from random inputs, so the result is "
               "NOT representative of the model on real data. Pass --calib with real samples.")
        report.warnings.append(msg)
        log.warning(msg)
    else:
        data = calib_mod.load_data(calib, proto, limit=cfg.run.calib_samples)
    report.calibration.update(source=data.source, synthetic=data.synthetic, total=data.n)
    return data


def _batch_size(proto: onnx.ModelProto, cfg: CompressConfig, n: int, report: Report
                ) -> tuple[int, bool]:
    """(batch size, whether the model fixes it)."""
    fixed = {s.shape[0] for s in calib_mod.input_specs(proto)
             if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    if not fixed:
        return min(cfg.run.batch_size, n), False
    b = fixed.pop()
    if n < b:
        raise ObcError(f"the model's batch axis is fixed at {b} but only {n} calibration "
                       "samples remain after the holdout; give more samples or --holdout 0")
    if n % b:
        report.warnings.append(f"the model's batch axis is fixed at {b}: the last {n % b} "
                               "calibration samples are not used")
    return b, True


def _full_batches(data: calib_mod.DataSet, b: int) -> calib_mod.DataSet | None:
    n = data.n - data.n % b
    return data.take(np.arange(n)) if n else None


def baseline_name(cfg: CompressConfig) -> str:
    """The baseline model's name in the report: magnitude, rtn or magnitude+rtn."""
    if cfg.alloc.budget == "bops":  # the mixed levels, each with its own baseline
        pruned, quant = cfg.alloc.level_nm is not None, True
    else:
        pruned = cfg.prune.sparsity or cfg.prune.nm or cfg.alloc.target or cfg.alloc.profile
        quant = cfg.quant.bits
    return "+".join(n for n, on in (("magnitude", pruned), ("rtn", quant)) if on)


def _layer_groups(layers: list[Layer], cfg: CompressConfig) -> list[list[Layer]]:
    """All layers at once (one-shot, OBC's default), or topological groups (--sequential)."""
    if not cfg.run.sequential:
        return [layers]
    k = cfg.run.sequential_groups or len(layers)
    size = -(-len(layers) // k)
    return [layers[i:i + size] for i in range(0, len(layers), size)]


def _allocation(proto: onnx.ModelProto, layers: list[Layer], hessians: dict, backend: Any,
                cfg: CompressConfig, report: Report, data: calib_mod.DataSet, batch: int,
                progress: bool, observers: dict) -> dict[str, Level]:
    """Per-layer levels from a profile or the DP."""
    if cfg.alloc.profile:
        choice = load_profile(cfg.alloc.profile)
        missing = [L.name for L in layers if L.name not in choice]
        if missing:
            raise ObcError(f"profile {cfg.alloc.profile} has no level for {missing}; it was made for "
                           "another model or other --include/--exclude options")
        report.profile = {"source": str(cfg.alloc.profile),
                          "choice": {L.name: choice[L.name].label for L in layers}}
        return {L.weight: choice[L.name] for L in layers}
    scales = ({n: o.scale(cfg.quant.act_calibration, cfg.quant.act_percentile) for n, o in observers.items()}
              if cfg.quant.act_bits else None)
    tables = nonuniform.build_tables(proto, layers, hessians, backend, cfg, data, batch,
                                     solver_budget(cfg, backend), progress, scales)
    if cfg.alloc.budget == "sparsity" or (cfg.alloc.budget == "params" and cfg.alloc.target is None):
        kind, target = "sparsity", cfg.prune.sparsity
    else:  # a reduction factor of the dense FP32 FLOPs / params / BOPs
        kind = cfg.alloc.budget
        target = cfg.alloc.target if cfg.alloc.target is not None else 1.0 / (1.0 - cfg.prune.sparsity)
    dense = nonuniform.dense_cost(tables)
    budget = target_budget(tables, target, kind)
    least = math.fsum(min(t.cost) for t in tables)
    if least > budget:
        hint = (" or quantize activations (--act-bits 8)" if kind == "bops" and not cfg.quant.act_bits
                else "")
        raise ObcError(f"the {kind} target cannot be met: these levels reach at most "
                       f"{dense / least:.3g}x less than the dense model (every layer at its "
                       f"cheapest level), asked {dense / budget:.3g}x; lower the target{hint}")
    alloc = allocate(tables, budget)
    report.profile = {"choice": alloc.choice, "budget": cfg.alloc.budget, "score": cfg.alloc.score,
                      "cost": alloc.cost, "dense_cost": dense, "error": alloc.error,
                      "reduction": dense / alloc.cost if alloc.cost else math.inf}
    if cfg.alloc.save_profile:
        save_profile(cfg.alloc.save_profile, alloc, {"budget_kind": cfg.alloc.budget, "score": cfg.alloc.score})
    return {L.weight: Level.parse(alloc.choice[L.name]) for L in layers}
