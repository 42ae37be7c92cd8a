"""convert(): load -> select -> check -> calibration -> capture -> Hessians -> allocate -> solve
-> measured choices -> correct -> export -> verify -> save, each stage one call into its module.

Arrays cross between the host (onnx, onnxruntime) and the solver's device only inside the
layer-wise stages (schedule.py: activations into collect.py, weights into solve.py and the
allocation, host-side solutions out of solve.py); everything after them works on the host."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from . import calib as calibration
from . import (branches, costplan, export, floatcheck, floatlayers, nbitslevel, pinned,
               preflight, sensitivity, skips, smooth, view)
from .backend import get_backend
from .capture import providers_for
from .channels import ChannelResult, run_channels
from .config import CompressConfig, reduce_note
from .correct import (CorrectionResult, auto_decision, correct_outputs, correction_mode,
                      reference_means)
from .costclock import solve_threads
from .engine import make_engine
from .fold import fold
from .layers import select_layers
from .modelio import open_model, save_model, tensor_outputs
from .report import Report
from .schedule import Compressed, compress_layers
from .allocation import guard
from .segments import kept_budget
from .variants import baseline_name, compares_baseline, layerwise, variants
from .verify import Captured, measure


@dataclass(frozen=True)
class ConvertResult:
    model: onnx.ModelProto  # may reference the input's data file: save with modelio.save_model
    report: Report
    written: list[Path]  # files written (empty when no output path was given)


def convert(model: str | os.PathLike | onnx.ModelProto, output: str | os.PathLike | None = None,
            *, calib: Any = None, eval_data: Any = None, config: CompressConfig | None = None,
            report_path: str | os.PathLike | None = None, progress: bool = True,
            plot: str | os.PathLike | None = None, html: str | os.PathLike | None = None,
            **options: Any) -> ConvertResult:
    """Compress `model` (a path, a ModelProto or its bytes) and write `output` atomically.

    `calib`: .npz path or its arrays ({input_name: array}), directory of per-sample files,
    a re-iterable of feed dicts or an onnxruntime CalibrationDataReader (calib/); None
    synthesizes random inputs (not representative). `eval_data`: the same, with `labels`.
    `config` (a CompressConfig or a recipe's) and/or flat `options` (sparsity=0.5, bits=4...).
    `plot` / `html`: the report as a figure / an HTML page too (view/; needs matplotlib).
    """
    cfg = CompressConfig.from_options(config, **options)
    view.check(plot, html, [m for m in (model, output, report_path)
                            if isinstance(m, (str, os.PathLike))])
    clock: dict[str, float] = {}
    with _timed(clock, "load"):
        src, dense = open_model(model, output)  # dense: what the verification compares with
        dense, fork = branches.inline(dense, calib, eval_data, cfg.run)  # If: the branch taken
        proto, folded = fold(dense) if cfg.select.fold else (dense, None)
        layers, skipped = select_layers(proto, cfg.select)
        skipped += fork.skipped  # the layers of If branches the data does not take
        backend = get_backend(cfg.run.device)
    cfg, plan, notes = _plan(layers, cfg, backend, progress, clock)  # before any work
    with _timed(clock, "load"):
        checks = notes + fork.notes + _preflight(proto, layers, src, output, report_path, calib,
                                                 cfg, plan)
        data, engine, runtime = _calibration(proto, calib, eval_data, cfg, backend, fork)
    proto, layers, skipped, chan, cfg, plan = _channel_stage(
        proto, layers, skipped, data, backend, cfg, plan, runtime, progress, clock)
    proto, layers, smoothed = smooth.stage(proto, layers, data, runtime, cfg, clock)
    means = reference_means(proto, layers, cfg, data) if layerwise(cfg) else None  # capture fills
    kept = _captured(dense, data, cfg, chan)  # the dense outputs the verification reuses
    with solve_threads(plan.rates if plan is not None else {}):  # one, where contended
        done = (compress_layers(proto, layers, data, backend, cfg, runtime, progress, engine,
                                plan, means, kept) if layerwise(cfg)
                else Compressed({}, [], [], [], {}, None))
    with _timed(clock, "verify"):  # the DP against uniform; MatMulNBits level; float candidates
        done = guard.decide(dense, proto, layers, done, data, runtime, cfg, kept)
        cfg, done = nbitslevel.decide(dense, proto, layers, done, data, runtime, cfg, kept)
        fc = floatcheck.decide(dense, proto, layers, done, data, runtime, cfg, kept)
    layers, done, skipped = fc.layers, fc.done, skipped + fc.skipped
    fixes, built = _correct(proto, layers, done, data, runtime, cfg, clock, progress, means,
                            fc.uncorrected)
    models, fidelity, fusion, fixes = _build_and_verify(
        dense, proto, layers, done, fixes, chan, data, runtime, cfg, clock, built, fc, kept)
    ranked = sensitivity.stage(proto, layers, done, data, runtime, cfg, clock, lambda c: (
        compress_layers(proto, layers, data, backend, c, runtime, progress, engine, plan)))
    final = fork.restore(models["compressed"], runtime)  # inlined If branches put back
    written = save_model(final, output, inp=src,
                         external=cfg.run.external_data) if output is not None else []
    report = _report(src, output, cfg, backend, layers, data, skipped + skips.outside(
        proto, models["compressed"], cfg), done, fixes, fidelity, checks + fork.after,
        {**clock, **done.seconds}, fusion, chan, ranked, plan, folded, smoothed)
    if report_path is not None:
        report.write_json(report_path)
    written += [Path(p) for p in view.write_views(report, plot, html)]
    return ConvertResult(final, report, written)


def _calibration(proto: onnx.ModelProto, calib: Any, eval_data: Any, cfg: CompressConfig,
                 backend: Any, fork: Any) -> tuple[calibration.Calibration, Any, Any]:
    """The calibration data planned for this model's runs (batch, state inputs, big maps),
    the engine and the onnxruntime providers."""
    data = fork.data or calibration.plan(proto, calib, eval_data, cfg.run)
    engine = make_engine(cfg.run, backend)  # --engine ray without Ray: fails here
    runtime = providers_for(backend.name, cfg.run.custom_op_library)
    data = calibration.probe_batch(data, proto, runtime)  # a state input fixing batch 1
    data = calibration.fit_runs(data, proto, cfg.run.memory_budget_mb << 20)  # big maps
    return data, engine, runtime


def _channel_stage(proto: onnx.ModelProto, layers: list, skipped: list,
                   data: calibration.Calibration, backend: Any, cfg: CompressConfig, plan: Any,
                   runtime: Any, progress: bool, clock: dict[str, float]) -> tuple:
    """Channel pruning, its own stage: the rest runs on the shrunk model, its layers
    selected and planned again. Returns (proto, layers, skipped, chan or None, cfg, plan)."""
    if cfg.prune.channels is None:
        return proto, layers, skipped, None, cfg, plan
    with _timed(clock, "channels"):
        chan = run_channels(proto, layers, data, backend, cfg, runtime, progress)
        layers, skipped = select_layers(chan.model, cfg.select)
    if plan is not None:  # the shrunk layers
        cfg, plan, _ = _plan(layers, cfg, backend, progress, clock)
    return chan.model, layers, skipped, chan, cfg, plan


def _build_and_verify(dense: onnx.ModelProto, proto: onnx.ModelProto, layers: list,
                      done: Compressed, fixes: CorrectionResult | None, chan: Any,
                      data: calibration.Calibration, runtime: Any, cfg: CompressConfig,
                      clock: dict[str, float], built: dict | None = None, fc: Any = None,
                      kept: Any = None) -> tuple[dict, dict, Any, Any]:
    """Export (the compressed model and its comparison variants, deployed alike; those in
    `built` made before) and verify (fidelity against the input model, except floatcheck's
    model `fc`, measured there; what onnxruntime fuses); an automatic correction kept or
    dropped on the verified errors."""
    with _timed(clock, "export"):
        models = export.build_all(proto, layers, done.solutions, which=variants(cfg, fixes),
                                  corrections=None if fixes is None else fixes.fixes,
                                  act_scales=done.act_values, target=cfg.export.runtime,
                                  target_options=cfg.export.target_options(), built=built)
    with _timed(clock, "verify"):
        named = _named(dense, models, chan, cfg)
        known = {k for k, m in named.items() if fc is not None and m is fc.uncorrected}
        fresh = measure({k: m for k, m in named.items() if k not in known}, data.sets(),
                        data.run_batch, runtime, data.free_batch, data.info.get("sample_axes"),
                        None if fc is None else fc.references, kept, data.arena,
                        data.token_mask)
        fidelity = {s: {k: fc.fidelity[s] if k in known else v[k] for k in named}
                    for s, v in fresh.items()}
        if fixes is not None and correction_mode(cfg) == "auto":
            keep, fixes = auto_decision(fixes, fidelity, next(iter(fidelity)))
            if not keep:  # what is written is the uncorrected model, and named so
                models["compressed"] = models.pop("uncorrected")
                fidelity = {s: {"corrected (not kept)" if k == "compressed" else
                                "compressed" if k == "uncorrected" else k: f
                                for k, f in v.items()} for s, v in fidelity.items()}
        fusion = export.fusion.check(models["compressed"], layers, runtime, *(
            (dense, data.sets()) if cfg.export.runtime == "onnxruntime" else ()))
    return models, fidelity, fusion, fixes


def _captured(dense: onnx.ModelProto, data: calibration.Calibration, cfg: CompressConfig,
              chan: Any) -> dict[str, Captured] | None:
    """The in-sample check's dense outputs a one-shot capture of the unshrunk model keeps
    (refs.Captured), by set name; None without such a capture or set."""
    if not layerwise(cfg) or cfg.run.sequential or chan is not None or data.check_rows is None:
        return None
    name = next(iter(data.sets()))
    return {name: Captured(data.check_rows, tensor_outputs(dense))}


def _correct(proto: onnx.ModelProto, layers: list, done: Compressed,
             data: calibration.Calibration, runtime: Any, cfg: CompressConfig,
             clock: dict[str, float], progress: bool = False, means: Any = None,
             uncorrected: onnx.ModelProto | None = None) -> tuple:
    """The correction stage (timed only when it runs): per-node factors or None, and the
    "uncorrected" model it measures (with activation Q/DQ; `uncorrected` where floatcheck
    built it, which without a correction is the compressed model), which export reuses; its
    kept tensors get the memory budget less what the process holds (segments.py)."""
    if correction_mode(cfg) == "off" or not done.solutions:  # floatcheck's is the compressed one
        return None, None if uncorrected is None else {"compressed": uncorrected}
    with _timed(clock, "correct"):
        if uncorrected is None and done.act_values is not None:  # else floatcheck built it
            uncorrected = export.build(
                proto, layers, done.solutions, which="uncorrected", act_scales=done.act_values,
                target=cfg.export.runtime, target_options=cfg.export.target_options())
        built = None if uncorrected is None else {"uncorrected": uncorrected}
        fixes = correct_outputs(proto, [L for L in layers if L.weight in done.solutions],
                                done.solutions, data.corrected, data.run_batch, runtime,
                                cfg.correct.scale, act_values=done.act_values,
                                target=cfg.export.runtime,
                                target_options=cfg.export.target_options(),
                                budget=kept_budget(cfg.run.memory_budget_mb << 20),
                                progress=progress, token_mask=data.token_mask,
                                means=means, uncorrected=built and built["uncorrected"])
    return fixes, built


def _plan(layers: list, cfg: CompressConfig, backend: Any, progress: bool,
          clock: dict[str, float]) -> tuple[CompressConfig, Any, list[str]]:
    """A layer-wise run's cost plan (refusing what cannot fit the memory budget): the config
    (the DP falls back to uniform where its Hessians cannot fit), plan (or None), fallbacks."""
    if not layerwise(cfg):
        return cfg, None, []
    cfg, fallbacks = costplan.without_auto(layers, cfg)
    with _timed(clock, "plan"):
        plan = costplan.planned(layers, cfg, backend, progress)
        if (slow := costplan.over_time(cfg, plan)) is not None:  # the DP's tables do not fit
            cfg, fallbacks = cfg.replace(allocate="uniform"), [*fallbacks, slow]
            plan = costplan.planned(layers, cfg, backend, progress, plan.rates)
    return cfg, plan, fallbacks


def _preflight(proto: onnx.ModelProto, layers: list, src: str | None, output: Any,
               report_path: Any, calib: Any, cfg: CompressConfig, plan: Any) -> list[str]:
    """preflight.check with the run's settings: what can be known before any work."""
    floatlayers.check(layers, cfg.export.float_layers)
    return preflight.check(proto, layers, model_path=src, output=output,
                           report_path=report_path, external=cfg.run.external_data,
                           bits=bool(cfg.quant.bits or cfg.alloc.budget == "bops"),
                           act_bits=bool(cfg.quant.act_bits), calib=calib,
                           custom_op_library=cfg.run.custom_op_library,
                           sequential=cfg.run.sequential,
                           blocks=None if plan is None else plan.blocks())


def _named(dense: onnx.ModelProto, models: dict, chan: Any, cfg: CompressConfig) -> dict:
    """dense, the built variants (the baseline by its method) and channels' L2-norm model."""
    named = {"dense": dense, **{baseline_name(cfg) if k == "baseline" else k: m
                                for k, m in models.items()}}
    if chan is not None and compares_baseline(cfg):
        named["channels-l2"] = chan.baseline
    return named


def _report(src: str | None, output: Any, cfg: CompressConfig, backend: Any, layers: list,
            data: calibration.Calibration, skipped: list, done: Compressed,
            fixes: CorrectionResult | None, fidelity: dict, checks: list[str],
            seconds: dict[str, float], fusion: export.fusion.Fusion | None = None,
            chan: ChannelResult | None = None, sensitivity: dict | None = None,
            plan: Any = None, folded: Any = None, smoothed: Any = None) -> Report:
    """The run's report, assembled from what the stages returned."""
    device = backend.label_for([L.matrix_shape[2] for L in layers if L.weight in done.solutions])
    order = ("load", "channels", "smooth", "plan", "capture", "allocate", "solve", "correct",
             "export", "verify", "sensitivity")
    seconds = {k: seconds[k] for k in order if k in seconds}
    pin = pinned.pinned(cfg, {**done.decided, **({"correct": fixes.kept} if fixes is not None
                                                 and fixes.kept is not None else {})})
    warnings = [*checks, *data.warnings, *(chan.warnings if chan else []),
                *(plan.warnings if plan else []), *done.warnings]
    if fixes is not None:
        warnings += fixes.skipped_lines()
    return Report(
        model=src or "<ModelProto>", output=None if output is None else os.fspath(output),
        config=cfg.to_dict(), device=device, calibration=dict(data.info),
        layers=list(done.rows), skipped=[*skipped, *done.skipped], fidelity=fidelity,
        warnings=warnings, seconds={**seconds, "total": sum(seconds.values())},
        peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        correction={} if fixes is None else fixes.summary(), profile=dict(done.profile),
        fusion={} if fusion is None or not fusion.layers else fusion.to_dict(),
        channels={} if chan is None else chan.to_dict(), sensitivity=dict(sensitivity or {}),
        plan={} if plan is None else plan.to_dict(),
        folded=folded.to_dict() if folded is not None and folded.changed else {},
        smoothed={} if smoothed is None else smoothed.to_dict(),
        notes=list(done.notes), pinned=pin, machine=reduce_note(cfg))


@contextmanager
def _timed(clock: dict[str, float], stage: str) -> Iterator[None]:
    t = time.perf_counter()
    try:
        yield
    finally:
        clock[stage] = clock.get(stage, 0.0) + time.perf_counter() - t
