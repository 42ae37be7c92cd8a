"""The export target's float candidates, decided by measurement (after the solve, before the
correction). The target offers groups of layers that may stay float, each with its rule
(export/floatcand.py). The model is built uncorrected with every candidate quantized and
verified on the run's fidelity samples beside the input model (whose outputs are kept for
the rest: References); then each group in turn is built float on top of the groups kept so
far and stays float when that variant's mean relative output error is at most the group's
`at_most` times the current choice's and, for a group that may cost speed, its 1-thread
onnxruntime latency (alternating runs on one sample; timed first, so a group too slow is
never verified) at most `slower` times the current choice's.

For the onnxruntime target with 8-bit activations (export/onnxruntime.float_candidates):
  - the image stem (export/ortstem.py), kept float unless that raises the error by more
    than 2% (the correction's margin, correct.MARGIN: differences below it are within the
    measurement's noise; then the float stem's speed decides: faster on five of eight real
    models, the same on one). It is more accurate on most models, but not on all: on the
    PP-OCRv4 recognizer the float stem read 1.6 text points fewer of 2,000 lines (74.40
    against 76.00, McNemar p = 0.005), and its calibration error said so beforehand (0.2094
    float against 0.1934 quantized, uncorrected), as it said the opposite on PP-LCNet
    (0.0345 against 0.0646). A rule on the graph alone cannot tell them apart; one more
    build and verification pass can (docs/deployment.md "A float stem").
  - the high-resolution Convs (export/orthires.py), kept float when the error falls to
    0.8x or less at no more than 1.05x the latency, or, from an output error of 0.1 or more,
    further at more latency in proportion (half the error: 1.125x; at most 1.15x): the
    convs that wreck PP-PicoDet's 8-bit detections are there, and so are EfficientNet-Lite0's,
    which run much faster on integers (docs/deployment.md "High-resolution convs"). A group
    kept float then gives its last layers back to the integer kernels one at a time where
    each, float, does not pass the same rule on its own (_trim).

In a run that also prunes, a candidate kept float keeps its zeros (its solved weights, on
the grid, written float): the sparsity and an allocation's budget hold, so the candidates are
measured under `--sparsity`'s default DP too (not where the allocation chose bit widths).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from . import export, floatlayers
from .layers import Layer, Skipped
from .verify import References, variant

TIMING_ROUNDS = 21  # alternating 1-thread runs of the two variants timed, at least ...
TIMING_SECONDS = 1.5  # ... and until this long has passed
RETIME_BAND = 0.03  # a latency ratio this close to the group's limit is timed twice (PicoDet's
# first group measured 1.026-1.041x in four runs against its 1.05x)
EARLY_ROUNDS = 5  # a variant whose fastest of this many runs or more is slower than the
# other's slowest by more than the most any gain buys is already too slow: the timing ends
# (then the ratio of medians is above that limit too). DNSMOS's high-resolution convs float
# (3.3x, 0.35 s a run) took 21 rounds, 9.6 s. Likewise one whose slowest is faster than the
# other's fastest times the least limit (less RETIME_BAND): within any limit, whatever more
# rounds would give (ppocr_cls's stem and high-resolution groups float, 0.93x and 0.90x,
# took TIMING_SECONDS each)
NAMES = 4  # layer names a note lists
TRIM_STEPS = 3  # a kept group's last layers tried back on integer kernels, at most (_trim)
TRIM_FASTER = 1.02  # ... each quantized again only where the float one is slower than this
# (a measurable gain: YOLOv8n's three early convs at 0.998-1.010x went back for nothing, the
# output error 0.0109 -> 0.0136; PP-PicoDet's p2o.Conv.9 float at 0.992x and 0.90x the error)
NOT_TIMED = "latency not measured"


@dataclass(frozen=True)
class Decision:
    layers: list[Layer]  # the layers to compress: those kept float taken out (floatlayers:
    done: Any  # schedule.Compressed, their solutions and rows taken out; in a run that
    skipped: list[Skipped]  # prunes kept, unquantized), and each with its reason
    uncorrected: onnx.ModelProto | None = None  # the chosen variant, uncorrected (if built)
    fidelity: dict[str, Any] | None = None  # its measures: set -> Fidelity
    references: References | None = None  # the input model's outputs on the sets measured


def decide(dense: onnx.ModelProto, proto: onnx.ModelProto, layers: list[Layer], done: Any,
           data: Any, runtime: Any, cfg: Any, captured: dict | None = None) -> Decision:
    """The layers, solutions and skipped entries after the decision, and the chosen
    variant's uncorrected model with its measures where one was built (the correction and
    the verification reuse them: built and measured once). `done`: schedule.Compressed;
    `data`: calib.Calibration; `cfg`: CompressConfig; `captured`: the capture's dense outputs
    (set name -> refs.Captured). The layers `--float-layer` names are float from the start,
    not measured (floatlayers.py)."""
    pruned = cfg.prune.active  # a float layer keeps its zeros (and an allocation's budget)
    forced = floatlayers.forced(layers, done.solutions, cfg.export.float_layers)
    why = {k: f"kept float by --float-layer {p!r}" for k, p in forced.items()}
    head = [f"--float-layer: {_names([L for L in layers if L.weight in forced])} written "
            "float, not measured"] if forced else []
    hook = getattr(export.target_for(cfg.export.runtime), "float_candidates", None)
    measure = not (hook is None or done.act_values is None or not done.solutions
                   or floatlayers.bits_allocated(cfg))  # bits allocated: as chosen
    feed = one_sample(data) if measure else None
    offered = hook(proto, layers, cfg.quant.act_bits, lambda names: _shapes(
        proto, names, feed, runtime), **cfg.export.float_options()) if measure else []
    solved = {L.weight for L in layers if L.weight in done.solutions} - set(forced)
    if not any(solved & set(g.reasons) and solved - set(g.reasons) for g in offered):
        return Decision(*floatlayers.apply(layers, done, set(forced), why, head, pruned))
    kw = dict(which="uncorrected", act_scales=done.act_values, target=cfg.export.runtime,
              target_options=cfg.export.target_options())
    refs = References()  # the input model's outputs, measured once (the verification too)

    def build(floats: set[str]) -> onnx.ModelProto:
        return export.build(proto, *floatlayers.solutions_for(layers, done.solutions, floats,
                                                              pruned), **kw)

    def verified(key: str, model: onnx.ModelProto) -> tuple[dict, float]:
        return variant(dense, key, model, data, runtime, refs, captured)

    on = next(iter(data.sets()))
    floats: set[str] = set(forced)
    model = build(floats)  # the current choice: every candidate quantized
    fidelity, err = verified("quantized", model)
    notes = []
    kept = False  # the group before stayed float
    for g in offered:
        new = {k for k in g.reasons if k in solved} - floats
        if not new or not solved - floats - new or (g.after_kept and not kept):
            kept = False  # nothing to add, nothing left integer, or the step before refused
            continue
        other = build(floats | new)
        ok, measured, fid, e = _accept(g, err, model, other, lambda: verified(g.kind, other),
                                       runtime, feed, on)
        names = _names([L for L in layers if L.weight in new])
        notes.append(f"float candidates for {cfg.export.runtime}, {g.kind} ({names}): "
                     + (f"kept float, {measured}" if ok else f"quantized, {measured} "
                        f"(or {g.flag} quantizes them without measuring)"))
        kept = ok
        if ok:
            floats |= new
            model, fidelity, err = other, fid, e
            why.update({k: f"{g.reasons[k]}; {measured}" for k in new})
            if g.trim:
                back, (model, fidelity, err), trims = _trim(
                    g, [L for L in layers if L.weight in new], floats, (model, fidelity, err),
                    build, verified, runtime, feed, on)
                floats -= back
                notes += [f"float candidates for {cfg.export.runtime}, {t}" for t in trims]
                kept = not back  # the boundary is found: no wider step of this kind
    measured_floats = floatlayers.nodes(layers, floats - set(forced)) if notes else None
    return Decision(*floatlayers.apply(layers, done, floats, why, head + notes, pruned,
                                       measured_floats), model, fidelity, refs)


def _trim(g: Any, members: list[Layer], floats: set[str], current: tuple, build: Any,
          verified: Any, runtime: Any, feed: dict | None, on: str
          ) -> tuple[set[str], tuple, list[str]]:
    """A kept group's float tail back on integer kernels: from its last layer (graph order),
    one at a time (at most TRIM_STEPS, at least one left float), each step built and
    verified with that layer quantized and kept so where that is measurably faster (the
    float one over TRIM_FASTER x its latency) and the layer float does not pass the group's
    own rule against it (_accept with the roles swapped: the float layer must buy its
    latency with accuracy); the first layer that stays float ends the trim. A group is
    judged whole; its last layers are often the widest, where integer kernels gain most:
    PP-LCNet's 64 x 64 1 x 1 conv at stride 4 runs 0.26 ms float against 0.10 on
    QLinearConv, its group float 1.068x the latency with it quantized (the rule allows
    1.05x), and held out its error is no higher with it quantized (0.0088 against 0.0104 on
    128 images). Returns (the layers quantized again, the current (model, fidelity, error),
    the report's notes)."""
    model, fidelity, err = current
    back: set[str] = set()
    notes: list[str] = []
    if feed is None:
        return back, current, notes
    for L in members[::-1][:min(TRIM_STEPS, len(members) - 1)]:
        trial = build(floats - back - {L.weight})
        fid, e = verified(f"{g.kind} but {L.name}", trial)
        kept, ratio = (fidelity, err), []
        keep, measured, _, _ = _accept(g, e, trial, model, lambda: kept, runtime, feed, on,
                                       timing=ratio)
        if not ratio:
            break  # no timing: the group stays as kept
        if not keep and ratio[0] <= TRIM_FASTER:
            keep, measured = True, (f"{measured} (quantized again only where the float one "
                                    f"is over {TRIM_FASTER:g}x slower)")
        notes.append(f"{g.kind}, its last {L.name}: " + (
            f"kept float, {measured}" if keep else f"quantized again, {measured}"))
        if keep:
            break
        back.add(L.weight)
        model, fidelity, err = trial, fid, e
    return back, (model, fidelity, err), notes


def _accept(g: Any, base: float, base_model: onnx.ModelProto, model: onnx.ModelProto,
            verify: Any, runtime: Any, feed: dict | None, on: str,
            timing: list[float] | None = None) -> tuple:
    """(whether group `g` stays float by its rule, the measures for the report, the float
    variant's fidelity and error where verified). A group that may cost speed is timed
    first (verified first where `g.error_first`: one whose error does not fall enough is
    not timed): one slower than any error gain could buy (g.allowed) is not verified; a ratio
    within RETIME_BAND of the latency its error allows is timed once more, the decision on
    the mean. `timing` (a list; _trim): the float variant's error is known already
    (`verify` costs nothing), so the measures always name it, and the latency ratio is
    appended to it."""
    if g.slower is None or (g.error_first and timing is None):
        fid, err = verify()
        measured = f"output error on {on} {err:.4g} with them float, {base:.4g} without"
        if err > g.at_most * base:
            return False, f"{measured} (kept float only at most {g.at_most:g}x)", fid, err
        if g.slower is None:
            return True, measured, fid, err
        verify, timing = (lambda: (fid, err)), []  # as for _trim: known, the timing decides
    if feed is None:
        return False, f"{NOT_TIMED}: no sample", None, None
    from .channels.timing import BLOCK, ort_timer
    from .export.fusion import fixed_batch

    times: list = []
    cap = g.allowed(0.0, base)  # the most any gain buys from this error

    def settled(ts: list[list[float]]) -> bool:  # the float variant's best over cap x the
        # other's worst (too slow for any gain), or its worst under the least limit (minus
        # the band) x the other's best (within any): more rounds would not change the rule's
        return len(ts[1]) >= EARLY_ROUNDS and (  # decision
            min(ts[1]) > (cap + RETIME_BAND) * max(ts[0])
            or max(ts[1]) < (g.slower - RETIME_BAND) * min(ts[0]))

    def timed() -> tuple[float, str]:  # the latency ratio so far, and its words
        times.append(ort_timer(runtime, TIMING_ROUNDS, TIMING_SECONDS, stop=settled,
                               block=BLOCK)([base_model, model], feed))
        t_base, t = (float(np.mean([x[k] for x in times])) for k in (0, 1))
        n = fixed_batch(base_model)  # the batch the feed has
        return t / t_base, (f"latency {t / t_base:.3f}x with them float (1 thread, batch {n}: "
                            f"{1e3 * t:.3g} vs {1e3 * t_base:.3g} ms" + (
                                f", the mean of {len(times)} timings" if len(times) > 1 else "")
                            + ")")

    try:
        ratio, lat = timed()
        if abs(ratio - cap) <= RETIME_BAND:  # near the most any gain buys: once more
            ratio, lat = timed()
    except Exception as exc:  # noqa: BLE001 - e.g. a model whose batch is fixed above 1
        return False, f"{NOT_TIMED} ({type(exc).__name__}: {exc})"[:300], None, None
    if ratio > cap and timing is None:
        return (False, f"{lat} (kept float only at most {cap:g}x; output error not "
                "measured)", None, None)
    fid, err = verify()
    limit = g.allowed(err / base if base > 0 else 1.0, base)
    if len(times) == 1 and err <= g.at_most * base and abs(ratio - limit) <= RETIME_BAND:
        ratio, lat = timed()  # near the latency this gain allows: once more
    if timing is not None:
        timing.append(ratio)
    measured = f"output error on {on} {err:.4g} with them float, {base:.4g} without, {lat}"
    if err > g.at_most * base:
        return False, f"{measured} (kept float only at most {g.at_most:g}x)", fid, err
    if ratio > limit:
        return (False, f"{measured} (at {err / base:.2f}x the error kept float only at most "
                f"{limit:.3f}x the latency)", fid, err)
    return True, measured, fid, err


def _names(layers: list[Layer]) -> str:
    names = [L.name for L in layers]
    more = len(names) - NAMES
    return ", ".join(names[:NAMES]) + (f" and {more} more" if more > 0 else "")


def one_sample(data: Any) -> dict | None:
    """One sample of the first fidelity set (the timing's and the shape probe's feed); as
    many as a batch fixed above 1 takes."""
    n = data.batch if getattr(data, "fixed_batch", False) else 1
    try:
        return next(iter(next(iter(data.sets().values())).batches(n)))[1]
    except (StopIteration, AttributeError):
        return None


def _shapes(proto: onnx.ModelProto, names: list[str], feed: dict | None, runtime: Any
            ) -> dict[str, tuple[int, ...]]:
    """The named tensors' shapes on `feed` (one run of `proto` pruned to them)."""
    from .capture import capture_session

    if feed is None or not names:
        return {}
    try:
        s = capture_session(proto, names, runtime, prune=True)
        inputs = {i.name for i in s.get_inputs()}
        outs = s.run(names, {k: v for k, v in feed.items() if k in inputs})
    except Exception:  # noqa: BLE001 - one sample will not run (a batch fixed above 1): no
        return {}  # shapes, so no candidates that need them
    return {n: tuple(np.shape(y)) for n, y in zip(names, outs)}
