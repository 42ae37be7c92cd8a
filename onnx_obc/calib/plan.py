"""A run's data: the calibration source split into the samples the Hessians see and a
held-out part (taken by count), the evaluation set, and the batch size the model allows."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ..errors import ObcError
from ..specs import RunOptions
from . import tokens
from .arrays import synthesize
from .layout import Layout, fixed, input_specs, parse_axes
from .load import load_data
from .stream import CalibrationSource

log = logging.getLogger(__name__)
MAX_HELD_OUT = 256
AUTO_HOLDOUT, AUTO_HOLDOUT_MIN = 0.2, 1280  # the default: 20% kept out from 1,280 samples on
IN_SAMPLE_CHECK = 64  # none held out: fidelity measured on this many calibration samples
FEW_SAMPLES = 8
NOT_REPRESENTATIVE = ("NO CALIBRATION DATA: the Hessians come from random inputs, so the "
                      "result is NOT representative of the model on real data. Pass --calib "
                      "with real samples.")


# Samples per onnxruntime run where the batch is free (Calibration.run_batch). onnxruntime
# and the per-batch arithmetic (histograms, im2col) cost less per sample on small runs, and
# memory follows the run: W8A8 one-thread CPU s / peak RSS at 8 against 32 samples per run
# (docs/conversion-time.md): ppocr_rec 19.2 / 1.1 GB vs 27.9 / 3.7 GB, ppocr_det
# 13.1 / 1.3 vs 18.4 / 3.0, EfficientNet-Lite0 48.6 / 2.5 vs 53.3 / 3.6.
RUN_BATCH = 8


@dataclass(frozen=True)
class Calibration:
    fit: CalibrationSource  # the samples the Hessians (and corrections) are built from
    held: CalibrationSource | None  # kept out, to measure fidelity; None: too few samples
    eval: CalibrationSource | None  # the user's evaluation set, if any
    batch: int  # samples per onnxruntime run
    info: dict[str, Any] = field(default_factory=dict)  # for the report
    warnings: tuple[str, ...] = ()
    free_batch: int = 0  # a model whose batch axis is fixed at 1: the samples per capture
    # and verification run to try with that axis made symbolic (batching.py; 0: do not try;
    # at most RUN_BATCH)
    fixed_batch: bool = False  # the model fixes `batch` (no smaller runs)
    check: CalibrationSource | None = None  # none held out: the calibration samples measured
    correct: CalibrationSource | None = None  # --correct-samples: what the correction measures
    check_rows: Any = None  # none held out, an array source: which samples of `fit` the
    # in-sample check measures, in order (the capture keeps their dense outputs for it)

    @property
    def batch_is_free(self) -> bool:
        """Whether runs of fewer than `batch` samples are possible (the model fixes no batch
        and is not run batch-free)."""
        return not (self.fixed_batch or self.free_batch)

    @property
    def token_mask(self) -> str | None:
        """The input marking padded positions (calib/tokens.py), or None."""
        return self.info.get("token_mask", {}).get("input")

    @property
    def run_batch(self) -> int:
        """Samples per onnxruntime run of the capture, the correction and the verification:
        at most RUN_BATCH where the batch is free, else `batch`."""
        return min(self.batch, RUN_BATCH) if self.batch_is_free else self.batch

    @property
    def arena(self) -> bool:
        """Whether the verification's sessions keep onnxruntime's CPU memory arena: not
        where a run's largest tensor is ARENA_RUN bytes or more (fit_runs measured it); each
        session's arena holds its largest run's memory while the others run."""
        return self.info.get("largest_tensor", 0) * self.run_batch < ARENA_RUN

    @property
    def corrected(self) -> CalibrationSource:
        """The samples the correction measures (all of fit unless --correct-samples)."""
        return self.fit if self.correct is None else self.correct

    def sets(self) -> dict[str, CalibrationSource]:
        """The data sets fidelity is measured on, by report name: the held-out samples, else
        (at most IN_SAMPLE_CHECK of) the calibration samples; the eval set."""
        out = {"held-out calibration": self.held} if self.held is not None else {
            "calibration (not held out)": self.fit if self.check is None else self.check}
        return {**out, **({"eval": self.eval} if self.eval is not None else {})}

    def ranking_set(self) -> tuple[str, CalibrationSource]:
        """The set per-layer measurements (--sensitivity) rank on, by report name: the
        held-out samples; else the eval set's first samples, as many as the in-sample check
        (not the samples the layers were fit to: on them the PP-OCR classifier's W4 ranking
        put its first convs on top, 7th and 10th on held-out images); else the in-sample
        check."""
        name, ds = next(iter(self.sets().items()))
        if self.held is not None or self.eval is None:
            return name, ds
        return "eval", self.eval.head(min(ds.n, self.eval.n))


def held_out_count(n: int, fraction: float | None) -> int:
    """Samples kept out: round(n * fraction), at most 256, none when too few remain. None
    (the default): AUTO_HOLDOUT of AUTO_HOLDOUT_MIN samples or more (at most 256: <= 20%),
    none below, where every sample calibrates: keeping 19 of the PP-OCR recognizer's 96
    lines out cost its W8A8 file 2.5 to 5 points of text accuracy in each of 4 splits."""
    if fraction is None:
        fraction = AUTO_HOLDOUT if n >= AUTO_HOLDOUT_MIN else 0.0
    h = min(int(round(n * fraction)), MAX_HELD_OUT)
    return h if 1 <= h < n else 0


def plan(proto: onnx.ModelProto, calib: Any, eval_data: Any, run: RunOptions) -> Calibration:
    """Load (or synthesize) the calibration data, split it, choose the batch size."""
    notes: list[str] = []
    axes = parse_axes(run.calib_sample_axes)
    layout = Layout.of(input_specs(proto), axes)
    opts = {"preprocess": run.calib_preprocess, "sample_axes": axes}
    if calib is None:
        data = synthesize(proto, run.calib_samples, run.seed)
        notes.append(NOT_REPRESENTATIVE)
        log.warning(NOT_REPRESENTATIVE)
    else:
        data = load_data(calib, proto, limit=run.calib_samples, **opts)
    if layout.whole:
        notes.append(f"input(s) {', '.join(map(repr, layout.whole))} have no sample axis in the "
                     "model (all dimensions fixed): the same array is fed whole to every run "
                     "(--calib-sample-axis INPUT=AXIS to change)")
        log.warning(notes[-1])
    total = data.n
    if calib is not None and total < FEW_SAMPLES:
        notes.append(f"only {total} calibration sample(s): the Hessians rest on very little "
                     "data and the result may not hold on other inputs; 128 or more samples "
                     "are advisable (OBC used 1024)")
        log.warning(notes[-1])
    h = held_out_count(total, run.holdout)
    fit, held = data.split(h, run.seed) if h else (data, None)
    batch, fixed_batch = _batch_size(layout, run.batch_size, fit.n, notes)
    ev = load_data(eval_data, proto, **opts) if eval_data is not None else None
    check = _subset(fit, IN_SAMPLE_CHECK, run.seed) if (
        held is None and fit.n > IN_SAMPLE_CHECK) else None  # a seeded subset, not re-fitted
    k = run.correct_samples  # the same seed: the in-sample check's among them
    corr = _subset(fit, k, run.seed) if k is not None and fit.n > k else None
    arrays = held is None and hasattr(fit, "sample_rows")
    rows = fit.sample_rows(IN_SAMPLE_CHECK, run.seed) if arrays and check is not None else None
    if fixed_batch:  # a fixed batch axis takes full batches only
        fit, held, check, corr = (_full_batches(x, batch) for x in (fit, held, check, corr))
        if eval_data is not None and (ev := _full_batches(ev, batch)) is None:
            notes.append(f"the eval set has fewer samples than the model's fixed batch of "
                         f"{batch}; it was not evaluated")
    if arrays and fit is not None:  # the set measured: check's rows, or every sample of fit
        rows = np.arange(fit.n) if check is None else rows[:check.n]
    info = {"source": data.source, "synthetic": data.synthetic, "total": total,
            "samples": fit.n, "holdout": 0 if held is None else held.n,
            "read": getattr(data, "read_as", "in memory"), "shapes": getattr(data, "shapes", 1),
            "sample_axes": dict(layout.axis)}
    if calib is not None and (mask := tokens.find(proto, fit, run.token_mask)) is not None:
        info["token_mask"] = mask
    free = (min(run.batch_size, RUN_BATCH, fit.n)  # runs of 8: docs/conversion-time.md
            if fixed_batch and batch == 1 and not layout.whole else 0)
    return Calibration(fit, held, ev, batch, info, tuple(notes), free if free > 1 else 0,
                       fixed_batch, check, corr, rows)


def probe_batch(data: Calibration, proto: onnx.ModelProto, runtime: Any) -> Calibration:
    """`data` with runs of one sample where an input fed whole pins the batch at 1 (an RNN's
    initial state [layers, 1, hidden]: AECMOS's h0; onnxruntime refuses a run of 8 samples
    beside it, and the capture stopped on that error): one dense run of `run_batch` samples
    before any work, then one of a single sample. Only where the batch is free, runs hold
    several samples and some input is fed whole; ModelError where neither runs."""
    import dataclasses

    import onnxruntime as ort

    from ..capture import session
    from ..errors import ModelError

    if not (data.batch_is_free and data.run_batch > 1
            and None in data.info.get("sample_axes", {}).values()):
        return data
    sess, quiet = session(proto, runtime), ort.RunOptions()
    quiet.log_severity_level = 4  # the refusal is reported below, not logged by onnxruntime
    try:
        sess.run(None, next(data.fit.batches(data.run_batch))[1], quiet)
        return data
    except Exception as exc:  # onnxruntime's errors have no common base class
        first = str(exc).splitlines()[0][:300]
    try:
        sess.run(None, next(data.fit.batches(1))[1], quiet)
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot run the model on the calibration data: "
                         f"{str(exc).splitlines()[0][:300]}") from None
    note = (f"onnxruntime refused a run of {data.run_batch} samples ({first}); the inputs fed "
            "whole fix the batch at 1, so every run takes one sample (--batch-size 1)")
    log.warning(note)
    return dataclasses.replace(data, batch=1, warnings=data.warnings + (note,))


RUN_TENSOR_SHARE = 16  # a run holds at most budget / (this x its largest tensor's bytes):
# half the budget for onnxruntime's working memory, the rest for what the stage keeps (the
# capture's fetched tensors, the correction's). At 8, DNSMOS's onnxruntime-target W8A8 (3
# samples a run) peaked at 2.24 GB in the capture and 2.35 in the correction; at 16 (one) at
# 0.93 and 1.65, 66 -> 58 s, the same output error; the other bench models keep 8 a run
ARENA_RUN = 64 << 20  # Calibration.arena: DNSMOS's verification (3 samples a run of 71 MB
# maps, the dense and the compressed session) peaked at 2.25 GB with the arenas, over the
# 2 GB default budget


def fit_runs(data: Calibration, proto: onnx.ModelProto, budget: int) -> Calibration:
    """`data` with fewer samples per run where one sample's largest tensor (shape inference)
    is big against the memory budget: onnxruntime's working memory for a run is several
    times it (the largest conv's input, output and buffers), outside the plan's counts.
    DNSMOS (a 71 MB map a sample) peaked at 3.2 GB in a W8A8 capture of 8 samples a run,
    0.93 GB at 2, in the same time; the other bench models' largest tensors (15 MB or less)
    leave their runs at 8."""
    import dataclasses

    from ..capture import activation_bytes

    if not (data.batch_is_free and data.run_batch > 1):
        return data
    names = [o for n in proto.graph.node for o in n.output if o]
    sizes = activation_bytes(proto, names, next(data.fit.batches(1))[1])
    top = max((v for v in sizes.values() if v), default=0)
    data = dataclasses.replace(data, info={**data.info, "largest_tensor": top})
    k = max(1, budget // max(1, RUN_TENSOR_SHARE * top))
    if k >= data.run_batch:
        return data
    note = (f"runs of {k} sample(s), not {data.run_batch}: one sample's largest tensor is "
            f"{top / (1 << 20):.0f} MB, and onnxruntime's memory for a run is several times it "
            "(--memory-budget)")
    log.info(note)
    return dataclasses.replace(data, batch=k, info={**data.info, "run_batch": k})


def _subset(src: CalibrationSource, n: int, seed: int) -> CalibrationSource:
    """split's `n` held-out samples (a seeded subset, the same for the same seed; of an
    array source without copying the other samples)."""
    return src.sample(n, seed) if hasattr(src, "sample") else src.split(n, seed)[1]


def _batch_size(layout: Layout, wanted: int, n: int, notes: list[str]) -> tuple[int, bool]:
    """(batch size, whether the model fixes it)."""
    sizes = {s.shape[ax] for s in layout.specs
             if (ax := layout.axis[s.name]) is not None and fixed(s.shape[ax])}
    if not sizes:
        return min(wanted, n), False
    b = sizes.pop()
    if n < b:
        raise ObcError(f"the model's batch axis is fixed at {b} but only {n} calibration "
                       "samples remain after the holdout; give more samples or --holdout 0")
    if n % b:
        notes.append(f"the model's batch axis is fixed at {b}: the last {n % b} calibration "
                     "samples are not used")
    return b, True


def _full_batches(data: CalibrationSource | None, b: int) -> CalibrationSource | None:
    if data is None:
        return None
    n = data.n - data.n % b
    return data.head(n) if n else None
