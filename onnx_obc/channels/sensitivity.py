"""An end-to-end scale per channel site (`--channel-objective output`): the allocation's
per-site cost, the consumer's normalised loss sum(losses[:k]) / tr(W H W^T), says how much
the consumer's output moves, not how much the model's output does. Each site is cut alone
at two probe counts of its greedy trace (the middle and the end of the traced prefix;
OBS-updated consumer, as cut_channels does, its removed columns zero in place of a cut; a
squeeze-excite block's squeeze layer with its OBS update fitted on the other samples:
excite.held_squeezes), the model runs on SAMPLES calibration samples, and at each probe k
the site's factor is

    g(k) = (||y - y_dense||^2 / ||y_dense||^2) / normalised loss(k)

(over the graph outputs, a decoder's KV cache aside), a first-order propagation gain,
interpolated linearly in k between the probes and constant outside them. The allocation
then minimises sum_s g_s(k) * normloss_s(k), the predicted relative output error^2 summed
over the sites: `scaled_trace` rewrites a site's trace so that allocate.py's normalised
curve is that cost (made non-decreasing). Costs two forward passes of the samples per site
(plus the dense).
"""

from __future__ import annotations

import time
from itertools import islice
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm.auto import tqdm

from ..calib.tokens import on_tokens
from ..layers import constant_weights
from ..solvers.channels import ChannelTrace, obs_update
from ..specs import MB
from .allocate import allowed, loss_curve, site_align
from .downstream import Cuts
from .excite import held_squeezes, squeeze_update

OBJECTIVES = ("layer", "output")
SAMPLES = 16  # calibration samples the factors are measured on
TINY = 1e-12  # normalised losses below this carry no measurable signal: factor 1


def sample_feeds(data: Any, batch: int, n: int = SAMPLES) -> list[dict[str, np.ndarray]]:
    """About `n` calibration samples of `data` (a calib.DataSet) in batches of `batch`."""
    try:
        return [f for _, f in islice(data.batches(batch), _batches(batch, n))]
    except AttributeError:
        return []


def _batches(batch: int, n: int = SAMPLES) -> int:
    """How many batches of `batch` sample_feeds takes: the first that hold n samples."""
    return max(1, -(-n // max(batch, 1)))


def probe_counts(trace_steps: int, channels: int, align: int) -> list[int]:
    """The probes: the allowed counts (>= 1) nearest the middle and the end of the traced
    prefix (one when they coincide, none without an allowed count)."""
    opts = [k for k in allowed(trace_steps, channels, align) if k > 0]
    if not opts:
        return []
    return sorted({min(opts, key=lambda k: (abs(k - t), k)) for t in (trace_steps / 2,
                                                                         trace_steps)})


Probes = tuple[np.ndarray, np.ndarray]  # (counts, factors) of one site, counts increasing


def site_factors(plan: Any, align: int) -> tuple[list[Probes], float, str]:
    """Per solved site of `plan` (stage.ChannelPlan) its probes, the seconds spent and why
    the layer objective was used instead ("" when measured); from plan.data's first SAMPLES
    samples. A probe whose normalised loss is ~0 has factor 1."""
    t0 = time.perf_counter()
    unit = [(np.zeros(1), np.ones(1))] * len(plan.solved)  # the layer objective
    feeds = sample_feeds(plan.data, plan.batch)
    why = "--channel-objective output fell back to the layer objective: "
    if not feeds:
        return unit, 0.0, why + "no calibration samples to measure the output factors on"
    outs = Cuts.scored(plan.proto)  # a decoder's KV cache aside
    try:
        dense = _run(plan.proto, feeds, plan.runtime, plan.token_mask, outs)
    except Exception as e:  # noqa: BLE001 - a model onnxruntime cannot run here: layer objective
        return unit, time.perf_counter() - t0, why + f"onnxruntime could not run the model ({e})"
    ref = sum(float(np.sum(y ** 2)) for y in dense)
    rest = held_squeezes(plan, plan.data.head(_batches(plan.batch) * plan.batch))
    cuts = Cuts(plan.proto, feeds, plan.runtime, plan.token_mask)  # downstream.py
    where = [cuts.position(changed(s.site, rest)) for s in plan.solved]
    out: list = [None] * len(plan.solved)
    bar = tqdm(total=len(plan.solved), desc="output probes", unit="site",
               disable=not getattr(plan, "progress", False))
    for group in [*cuts.groups([p for p in where if p is not None], plan.memory_mb * MB // 4),
                  [None]]:
        cuts.fetch([p for p in group if p is not None])  # the last group's values dropped
        for i, s in enumerate(plan.solved):
            if where[i] not in group:
                continue
            ks = probe_counts(len(s.trace.losses), s.site.channels, site_align(s.site, align))
            curve = loss_curve(s.trace, s.energy)
            W = plan.backend.to_device(s.W) if ks else None  # once per site
            run = (lambda m: _run(m, feeds, plan.runtime, plan.token_mask, outs)) \
                if where[i] is None else (lambda m, p=where[i], w=changed(s.site, rest):
                                          cuts.run(m, p, w))
            gains = [_gain(plan, s, W, k, run, dense, ref, float(curve[k]), rest) for k in ks]
            out[i] = (np.array(ks or [0], float), np.array(gains or [1.0]))
            bar.update(1)
    bar.close()
    return out, time.perf_counter() - t0, ""


def changed(site: Any, rest: dict) -> set[str]:
    """The weights a probe of `site` changes: its consumers', a squeeze's with `rest`."""
    sq = site.gate.squeeze if site.gate is not None and rest else None
    return {c.weight for c in site.consumers} | ({sq.weight} if sq is not None else set())


def scaled_trace(trace: ChannelTrace, energy: float, probes: Probes) -> ChannelTrace:
    """`trace` with increments such that loss_curve(result, energy)[k] is the running
    maximum of g(k) * loss_curve(trace, energy)[k] (g: the probes interpolated)."""
    curve = loss_curve(trace, energy)
    g = np.interp(np.arange(len(curve)), probes[0], probes[1])
    cost = np.maximum.accumulate(curve * g) * max(energy, 1e-30)
    return ChannelTrace(trace.order, np.diff(cost))


def _gain(plan: Any, s: Any, W: Any, k: int, run: Any, dense: list[np.ndarray],
          ref: float, norm: float, rest: dict) -> float:
    """The measured relative output error^2 of site `s` (device weight W) cut alone at k,
    over `norm`; `run(model)`: its outputs as _run gives them; `rest`: held_squeezes."""
    if norm <= TINY or ref <= 0:
        return 1.0
    removed, m = s.trace.order[:k], plan.proto
    for name, value in squeeze_update(s.site, removed, plan.weights, rest, plan.backend,
                                      plan.damp).items() if rest else ():
        m = _with_weight(m, name, value)  # its removed columns 0, the others updated
    W = obs_update(W, s.Hinv, s.site.width, s.site.columns(removed))  # removed columns 0
    for name, value in s.site.consumer_arrays(plan.backend.to_host(W)).items():
        m = _with_weight(m, name, value)
    ys = run(m)
    err = sum(float(np.sum((y - d) ** 2)) for y, d in zip(ys, dense))
    return max(err / ref / norm, TINY)


def _with_weight(proto: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    """A copy of `proto` with weight `name` (initializer or Constant node) set to `value`:
    the consumer with the removed channels' columns zero computes what the shrunk model
    does (stage.py's oracle test), without the cost of shrinking the graph."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    t = constant_weights(m.graph)[name][1]
    t.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(t).dtype), t.name))
    return m


def _run(model: onnx.ModelProto, feeds: list[dict], runtime: Any = None,
         token_mask: str | None = None, outputs: list[str] | None = None) -> list[np.ndarray]:
    """`outputs` (default every graph output) on every feed, flattened in order (float64),
    with `runtime`'s providers and custom ops (capture.Runtime; default the CPU); per-token
    outputs on the token positions of `token_mask` (calib/tokens.on_tokens). Graph
    optimizations on (as onnxruntime deploys it): 1.5x faster runs than without on YOLOv8n
    and ddddocr's detector (docs/channels.md "Conversion time"), the dense and the cut
    models alike."""
    from ..capture import Runtime, session

    s = session(model, runtime or Runtime(), optimize=True)
    names = {i.name for i in s.get_inputs()}
    return [np.asarray(on_tokens(y, f, token_mask), dtype=np.float64).ravel() for f in feeds
            for y in s.run(outputs, {k: v for k, v in f.items() if k in names})
            if isinstance(y, np.ndarray)]  # not a sequence (of maps: skl2onnx's ZipMap)
