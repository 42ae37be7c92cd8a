"""The export target's float candidates, decided by measurement (after the solve, before the
correction): the model is built twice, uncorrected, with the candidates quantized and with
them float, both verified on the run's fidelity samples beside the input model, and the
candidates stay float unless that raises the mean relative output error by more than
MARGIN (differences below it are within the measurement's noise, as for the automatic
correction, correct.MARGIN; then the float stem's speed decides: faster on five of eight real
models, the same on one).

The candidates are the target's `float_layers` (export/): for the onnxruntime target with
8-bit activations the image stem (export/ortstem.py), faster there on most models and more
accurate on most, but not on all: on the PP-OCRv4 recognizer the float stem read 1.6 text
points fewer of 2,000 lines (74.40 against 76.00, McNemar p = 0.005), and its calibration
error said so beforehand (0.2094 float against 0.1934 quantized, uncorrected), as it said
the opposite on PP-LCNet (0.0345 against 0.0646). A rule on the graph alone cannot tell
them apart; one more build and verification pass can (README "A float stem")."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx

from . import export
from .layers import Layer, Skipped
from .verify import measure

MARGIN = 0.02  # the float variant's error may exceed the quantized one's by this fraction


@dataclass(frozen=True)
class Decision:
    layers: list[Layer]  # the layers to compress: the candidates kept float taken out
    done: Any  # schedule.Compressed, their solutions and rows taken out
    skipped: list[Skipped]  # the candidates kept float, each with its reason and both errors
    uncorrected: onnx.ModelProto | None = None  # the chosen variant, uncorrected (if built)
    fidelity: dict[str, Any] | None = None  # its measures: set -> Fidelity


def decide(dense: onnx.ModelProto, proto: onnx.ModelProto, layers: list[Layer], done: Any,
           data: Any, runtime: Any, cfg: Any) -> Decision:
    """The layers, solutions and skipped entries after the decision, and the chosen
    variant's uncorrected model with its measures where one was built (the correction and
    the verification reuse them: built and measured once). `done`: schedule.Compressed;
    `data`: calib.Calibration; `cfg`: CompressConfig."""
    hook = getattr(export.target_for(cfg.export.runtime), "float_layers", None)
    if hook is None or done.act_values is None or not done.solutions or cfg.alloc.active:
        return Decision(layers, done, [])  # an allocation has budgeted every layer: as it chose
    reasons = hook(proto, layers, cfg.quant.act_bits, float_stem=cfg.export.float_stem)
    chosen = {k for k in reasons if k in done.solutions}
    rest = [L for L in layers if L.weight not in chosen]
    if not chosen or not any(L.weight in done.solutions for L in rest):
        return Decision(layers, done, [])
    kw = dict(which="uncorrected", act_scales=done.act_values, target=cfg.export.runtime,
              target_options=cfg.export.target_options())
    models = {"dense": dense, "quantized": export.build(proto, layers, done.solutions, **kw),
              "float": export.build(proto, rest, {k: v for k, v in done.solutions.items()
                                                  if k not in chosen}, **kw)}
    fidelity = measure(models, data.sets(), data.run_batch, runtime, data.free_batch,
                       data.info.get("sample_axes"))
    on = next(iter(fidelity))
    err = {k: float(np.mean(list(fidelity[on][k].rel_error.values())))
           for k in ("quantized", "float")}
    measured = (f"output error on {on} {err['float']:.4g} with the candidates float, "
                f"{err['quantized']:.4g} quantized, before the correction")
    names = ", ".join(L.name for L in layers if L.weight in chosen)
    if err["float"] > (1.0 + MARGIN) * err["quantized"]:
        note = (f"float candidates for {cfg.export.runtime} ({names}): quantized, {measured} "
                f"(kept float only up to {MARGIN:.0%} above)")
        return Decision(layers, replace(done, notes=[*done.notes, note]), [],
                        models["quantized"], {s: v["quantized"] for s, v in fidelity.items()})
    note = f"float candidates for {cfg.export.runtime} ({names}): kept float, {measured}"
    skipped = [Skipped(u.node, u.op, f"{reasons[L.weight]}; {measured}", L.weight)
               for L in layers if L.weight in chosen for u in L.uses]
    done = replace(done, solutions={k: v for k, v in done.solutions.items() if k not in chosen},
                   rows=[r for r in done.rows if r.weight not in chosen],
                   notes=[*done.notes, note])
    return Decision(rest, done, skipped, models["float"],
                    {s: v["float"] for s, v in fidelity.items()})
