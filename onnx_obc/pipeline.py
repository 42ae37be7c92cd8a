"""convert(): load -> select layers -> capture -> Hessians -> solve -> rewrite -> verify -> save.

The only module that wires the stages together, and the only place where arrays cross
between host (onnx, onnxruntime) and the solver's device.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm.auto import tqdm

from . import calib as calib_mod
from .backend import Backend, get_backend
from .capture import activation_bytes, capture, capture_session, plan_groups, providers_for, session
from .config import CompressConfig
from .errors import ObcError
from .hessian import HessianAccumulator, columns
from .layers import Layer, constant_weights, find_layers
from .modelio import check_output_path, load_model, save_model
from .report import LayerResult, Report, SkippedLayer
from .rewrite import apply_weights
from .solvers import prune_layer
from .verify import evaluate

log = logging.getLogger(__name__)
MB = 1 << 20


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
    cfg = config.replace(**options) if config else CompressConfig(**options)
    timer: dict[str, float] = {}
    t = time.perf_counter()
    src = None if isinstance(model, onnx.ModelProto) else os.fspath(model)
    if output is not None:
        check_output_path(output, src)
    proto = model if src is None else load_model(src)
    layers, skipped = find_layers(proto, cfg)
    report = Report(model=src or "<ModelProto>", output=None if output is None else
                    os.fspath(output), config=cfg.to_dict(), device="", calibration={},
                    skipped=[SkippedLayer(s.node, s.op, s.reason, s.weight) for s in skipped])
    if not layers:
        reasons = "; ".join(f"{s.node}: {s.reason}" for s in skipped[:8]) or "no Conv/Gemm/MatMul"
        raise ObcError(f"no compressible layer in the model ({reasons}). Check --op-types, "
                       "--include/--exclude, or run `onnx-obc inspect` on the model.")
    data = _calibration(proto, calib, cfg, report)
    fit, held = data.split(cfg.holdout, cfg.seed)
    backend = get_backend(cfg.device)
    report.device = backend.device_label
    batch, fixed = _batch_size(proto, cfg, fit.n, report)
    if fixed:  # a fixed batch axis takes full batches only
        fit, held = _full_batches(fit, batch), None if held is None else _full_batches(held, batch)
    report.calibration.update(samples=fit.n, holdout=0 if held is None else held.n)
    timer["load"] = time.perf_counter() - t

    t = time.perf_counter()
    hessians = _hessians(proto, layers, fit, batch, backend, cfg, progress)
    timer["capture"] = time.perf_counter() - t

    t = time.perf_counter()
    new, base = _solve(proto, layers, hessians, backend, cfg, report, progress)
    timer["solve"] = time.perf_counter() - t

    t = time.perf_counter()
    out_model = apply_weights(proto, layers, new)
    models = {"dense": proto, "compressed": out_model}
    if cfg.compare_baseline and cfg.method != "magnitude":
        models["magnitude"] = apply_weights(proto, layers, base)
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
        written = save_model(out_model, output, inp=src, external=cfg.external_data)
    report.seconds = {**timer, "total": sum(timer.values())}
    report.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if report_path is not None:
        report.write_json(report_path)
    return ConvertResult(out_model, report, written)


def _calibration(proto: onnx.ModelProto, calib: Any, cfg: CompressConfig,
                 report: Report) -> calib_mod.DataSet:
    if calib is None:
        data = calib_mod.synthesize(proto, cfg.calib_samples, cfg.seed)
        msg = ("NO CALIBRATION DATA: the Hessians come from random inputs, so the result is "
               "NOT representative of the model on real data. Pass --calib with real samples.")
        report.warnings.append(msg)
        log.warning(msg)
    else:
        data = calib_mod.load_data(calib, proto, limit=cfg.calib_samples)
    report.calibration.update(source=data.source, synthetic=data.synthetic, total=data.n)
    return data


def _batch_size(proto: onnx.ModelProto, cfg: CompressConfig, n: int, report: Report
                ) -> tuple[int, bool]:
    """(batch size, whether the model fixes it)."""
    fixed = {s.shape[0] for s in calib_mod.input_specs(proto)
             if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    if not fixed:
        return min(cfg.batch_size, n), False
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


def _hessians(proto: onnx.ModelProto, layers: list[Layer], data: calib_mod.DataSet, batch: int,
              backend: Backend, cfg: CompressConfig, progress: bool
              ) -> dict[str, HessianAccumulator]:
    budget = cfg.memory_budget_mb * MB
    accs = {L.weight: HessianAccumulator(L.matrix_shape[0], L.matrix_shape[2], backend.xp)
            for L in layers}
    inputs = {s.name for s in calib_mod.input_specs(proto)}
    units = [list(dict.fromkeys(u.input for u in L.uses if u.input not in inputs))
             for L in layers]
    names = list(dict.fromkeys(n for unit in units for n in unit))
    first = next(data.batches(batch))[1]
    sizes = activation_bytes(proto, names, first) if names else {}
    groups = plan_groups(units, sizes, budget) if names else [[]]
    n_batches = -(-data.n // batch)
    bar = tqdm(total=len(groups) * n_batches, desc="capture", unit="batch", disable=not progress)
    done: set[str] = set()
    for group in groups:
        todo = [L for L in layers if L.weight not in done
                and all(u.input in inputs or u.input in group for u in L.uses)]
        sess = capture_session(proto, group, providers_for(backend.name)) if group else None
        for samples, acts in capture(sess, group, data.batches(batch)):
            for L in todo:
                for u in L.uses:
                    for X in columns(L, u, backend.to_device(acts[u.input]), budget // 4):
                        accs[L.weight].add(X)
                accs[L.weight].count(samples)
            bar.update(1)
        done.update(L.weight for L in todo)
        backend.free()
    bar.close()
    return accs


def _solver_budget(cfg: CompressConfig, backend: Backend) -> int:
    if cfg.solver_memory_mb is not None:
        return cfg.solver_memory_mb * MB
    free = backend.free_bytes()
    return int(0.6 * free) if free else cfg.memory_budget_mb * MB


def _solve(proto: onnx.ModelProto, layers: list[Layer], hessians: dict[str, HessianAccumulator],
           backend: Backend, cfg: CompressConfig, report: Report, progress: bool
           ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    weights = constant_weights(proto.graph)
    budget = _solver_budget(cfg, backend)
    new: dict[str, np.ndarray] = {}
    base: dict[str, np.ndarray] = {}
    bar = tqdm(layers, desc="solve", unit="layer", disable=not progress)
    for L in bar:
        bar.set_postfix_str(L.name[:40])
        t = time.perf_counter()
        w = numpy_helper.to_array(weights[L.weight][1])
        W = backend.to_device(L.to_matrix(w).astype(np.float32))  # [G, r, d]
        res = prune_layer(W, hessians.pop(L.weight).mean(), sparsity=cfg.sparsity,
                          method=cfg.method, damp=cfg.damp, budget_bytes=budget)
        new[L.weight] = L.from_matrix(backend.to_host(res.W))
        base[L.weight] = L.from_matrix(backend.to_host(res.baseline))
        backend.sync()
        G, r, d = L.matrix_shape
        report.layers.append(LayerResult(
            name=L.name, op=L.op, weight=L.weight, shape=L.shape, rows=G * r, cols=d,
            groups=G, method=cfg.method, sparsity=res.zeros / (G * r * d), target=cfg.sparsity,
            loss=res.loss, magnitude_loss=res.baseline_loss, dead_inputs=res.dead,
            damp=res.damp, damp_failed=res.escalations, seconds=time.perf_counter() - t,
            work=res.steps_run / (G * r * d), rerun_rows=res.rerun_rows))
        if res.escalations:
            report.warnings.append(f"{L.name}: Cholesky failed with dampening "
                                   f"{list(res.escalations)}; used {res.damp}")
        backend.free()
    return new, base
