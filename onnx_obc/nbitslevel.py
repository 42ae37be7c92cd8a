"""MatMulNBits' accuracy_level, decided by measurement (after the solve, before the float
candidates) where the run writes MatMulNBits (MatMul / Gemm weights of at most 4 bits on
the onnxruntime target, export/nbits.py) and `--accuracy-level` is not given.

Level 0 multiplies the packed weights with float activations; level 4 rounds the
activations to int8 per block at run time and runs an integer kernel (onnxruntime's own
default for the MatMulNBits its optimizer makes). Which is faster depends on the model,
measured on onnxruntime CPU (1 thread, bench/bench_nbits.py): the shipped digits_vit (64-wide
layers, 17 tokens) runs 0.19 ms at level 0 and 0.26 at level 4; all-MiniLM-L6-v2 (384 and
1,536 wide, 64 tokens) 116 ms at level 0 (its fp32 model: 116) and 86 at level 4. So the
compressed model is built (uncorrected) at level 0 and timed against the same file at level
4 (alternating 1-thread runs on one sample, as floatcheck.py times its candidates); level 4
is kept where it runs at most FASTER x level 0's latency and its output error on the run's
fidelity samples rises by at most TRADE times the share of the latency it saves, plus
MARGIN (the correction's margin: below it the measurement's noise). The trade, because the
in-sample error of level 0 is biased low (the solve fitted these samples) while level 4's
rounding adds the same wherever it runs: on MiniLM W4 it adds 0.039 in quadrature to the
calibration samples' error (0.0812 -> 0.0900, +11%) and 0.037 held out (0.191 -> 0.195,
+2%), at 0.66x the latency (+19% allowed). The report says which and why; the pinned
options repeat it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import onnx

from . import export
from .correct import MARGIN
from .floatcheck import NOT_TIMED, TIMING_ROUNDS, TIMING_SECONDS, one_sample
from .layers import Layer
from .verify import References, variant

FASTER = 0.95  # level 4 kept at most this x level 0's latency, and ...
TRADE = 0.5  # ... its output error at most 1 + MARGIN + TRADE x (1 - the latency ratio) x 0's


def decide(dense: onnx.ModelProto, proto: onnx.ModelProto, layers: list[Layer], done: Any,
           data: Any, runtime: Any, cfg: Any, captured: dict | None = None
           ) -> tuple[Any, Any]:
    """(cfg with export.accuracy_level set, done with the report's note and the decision)
    where measured; (cfg, done) as they are elsewhere (the level given, another target, no
    MatMulNBits). `done`: schedule.Compressed; `data`: calib.Calibration."""
    e = cfg.export
    if (e.accuracy_level is not None or e.runtime != "onnxruntime" or not e.matmul_nbits
            or not any(r.bits is not None and r.bits <= 4 and r.op in ("MatMul", "Gemm")
                       for r in done.rows)):
        return cfg, done
    at0 = cfg.replace(accuracy_level=0)
    m0 = export.build(proto, layers, done.solutions, which="uncorrected",
                      act_scales=done.act_values, target=e.runtime,
                      target_options=at0.export.target_options())
    if not any(n.op_type == "MatMulNBits" for n in m0.graph.node):
        return cfg, done
    level, why = _chosen(dense, m0, with_level(m0, 4), data, runtime, captured)
    note = f"MatMulNBits accuracy_level (auto): {why}"
    return (at0 if level == 0 else cfg.replace(accuracy_level=level),
            replace(done, notes=[*done.notes, note],
                    decided={**done.decided, "accuracy_level": level}))


def _chosen(dense: onnx.ModelProto, m0: onnx.ModelProto, m4: onnx.ModelProto, data: Any,
            runtime: Any, captured: dict | None) -> tuple[int, str]:
    """The level kept, and it with its measures in words (FASTER, MARGIN, TRADE decide)."""
    from .channels.timing import BLOCK, ort_timer

    feed = one_sample(data)
    if feed is None:
        return 0, f"0, {NOT_TIMED}: no sample"
    try:
        t0, t4 = ort_timer(runtime, TIMING_ROUNDS, TIMING_SECONDS, block=BLOCK)([m0, m4], feed)
    except Exception as exc:  # noqa: BLE001 - e.g. a model whose batch is fixed above 1
        return 0, f"0, {NOT_TIMED} ({type(exc).__name__}: {exc})"[:300]
    lat = (f"level 4 at {t4 / t0:.3f}x level 0's latency (1 thread, batch 1: {1e3 * t4:.3g} "
           f"vs {1e3 * t0:.3g} ms)")
    if t4 > FASTER * t0:
        return 0, f"0 (float activations), {lat}: kept only at most {FASTER:g}x"
    refs = References()
    on = next(iter(data.sets()))
    e0, e4 = (variant(dense, f"level {k}", m, data, runtime, refs, captured)[1]
              for k, m in ((0, m0), (4, m4)))
    err = f"output error on {on} {e4:.4g} at level 4, {e0:.4g} at 0"
    limit = 1 + MARGIN + TRADE * (1 - t4 / t0)
    if e4 > limit * e0:
        return 0, (f"0 (float activations), {lat}, {err} (at this latency kept only at most "
                   f"{limit:.3f}x)")
    return 4, f"4 (int8 activations per block), {lat}, {err}"


def with_level(model: onnx.ModelProto, level: int) -> onnx.ModelProto:
    """A copy of `model` whose MatMulNBits nodes run at accuracy_level `level`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for n in out.graph.node:
        if n.op_type == "MatMulNBits":
            for a in n.attribute:
                if a.name == "accuracy_level":
                    a.i = level
    return out
