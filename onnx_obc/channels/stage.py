"""The channel-pruning stage: find the sites, capture the consumers' Hessians on the dense
model, trace the greedy group OBS of every consumer (`plan_channels`), choose how many
channels each site loses until `prune.channels` of the layers' FLOPs are saved (allocate.py:
exact DP over the traces, greedy or uniform) and cut the graph (`cut_channels`:
OBS-updated consumers; beside it the L2-norm baseline at the same counts).

The rest of the run (sparsity, quantization) then works on the shrunk model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from tqdm.auto import tqdm

from ..backend import Backend
from ..collect import collect
from ..errors import ConfigError
from ..export.shrink import shrink
from ..layers import Layer, constant_weights
from ..solvers.channels import (ChannelTrace, block_diagonal, channel_trace, obs_update,
                                output_energy)
from ..solvers.prepare import fit_to_reference, prepare
from .allocate import counts as allocate_counts
from .allocate import reachable, site_align
from .baseline import norm_removed as _norm_removed
from .baseline import zeroed_loss as _zeroed_loss
from .concat import joint_columns
from .excite import hessian_layers, squeeze_update
from .fanout import readers
from .patterns import Refusal, Site, find_sites, layer_macs, saved_macs
from .probe import probe_feed, probe_sizes
from .sensitivity import OBJECTIVES, scaled_trace, site_factors
from .unshare import unshare
from .timing import BUDGETS, latency_counts, latency_report


@dataclass(frozen=True)
class ChannelRow:
    producer: str
    consumer: str
    channels: int
    removed: int
    loss: float  # consumer loss tr(dW H dW^T) of OBS (removal + update)
    norm_loss: float  # the same for the L2-norm baseline (no update)
    energy: float  # tr(W H W^T), the consumer's output energy
    macs_saved: float
    removed_ids: tuple[int, ...] = ()  # producer channels removed (dense numbering)
    unit: int = 1  # producer rows per channel: > 1 when the channels are attention heads

    @property
    def ratio(self) -> float:
        return self.loss / self.norm_loss if self.norm_loss > 0 else 1.0


@dataclass(frozen=True)
class ChannelResult:
    model: onnx.ModelProto  # shrunk, consumers OBS-updated
    baseline: onnx.ModelProto  # shrunk by producer row norm, no update
    rows: list[ChannelRow]
    refused: list[Refusal]
    macs: tuple[float, float]  # layer multiply-adds per sample: dense, pruned
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    latency: dict = field(default_factory=dict)  # --channel-budget latency: timing.latency_report

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"rows": [{**asdict(r), "ratio": r.ratio} for r in self.rows],
                "refused": [asdict(r) for r in self.refused],
                "macs_dense": self.macs[0], "macs_pruned": self.macs[1],
                **({"latency": self.latency} if self.latency else {})}


@dataclass(frozen=True)
class _Solved:
    site: Site
    W: np.ndarray  # host [r, d] as prepared (dead columns zeroed)
    H: Any  # device, dampened
    Hinv: Any
    trace: ChannelTrace
    energy: float


@dataclass
class ChannelPlan:
    """The sites of a model and their greedy traces on the dense Hessians (the traces grow
    when a selection needs more of them), ready to cut at any FLOP fraction."""

    proto: onnx.ModelProto
    layers: list[Layer]
    sites: list[Site]
    refused: list[Refusal]
    dense: float  # layer multiply-adds per sample
    solved: list[_Solved]
    weights: dict
    hessians: dict
    backend: Backend
    damp: float
    seconds: float = 0.0
    feed: dict | None = None  # a small calibration batch: probe.py's sizes of a cut model
    data: Any = None  # the calibration source, and its batch (sensitivity.py's samples)
    batch: int = 1
    probes: list | None = None  # sensitivity.py's output factors per site, once measured
    factor_seconds: float = 0.0
    factor_note: str = ""  # why the output factors were not measured ("" when they were)
    runtime: Any = None  # capture.Runtime of the run (probe.py's, sensitivity.py's sessions)
    probe_note: str = ""  # why probe.py could not measure the sizes ("" when it did)
    latency: Any = None  # timing.LatencyTable, once measured (--channel-budget latency)
    token_mask: str | None = None  # per-token outputs on its tokens (sensitivity.py)
    memory_mb: int = 2048  # the capture's budget (sensitivity.py's squeeze Hessians)
    progress: bool = False  # bars for the per-site stages (traces, probes, latency timing)


def plan_channels(proto: onnx.ModelProto, layers: list[Layer], data: Any, batch: int,
                  backend: Backend, damp: float, memory_mb: int, runtime: Any = None,
                  progress: bool = False, fraction: float = 1.0, subsample: int = 0,
                  token_mask: str | None = None, budget: str = "", align: int = 0) -> ChannelPlan:
    """Find the sites, capture their consumers' Hessians on `proto` (`subsample`: from a
    subgrid of the positions, collect.py; `token_mask`: the token positions only) and
    trace each consumer's greedy group OBS over the prefix a `fraction` cut is likely to
    use. A "flops" `budget` the sites cannot reach is refused first (`reachable`)."""
    t0 = time.perf_counter()
    proto = unshare(proto)[0]  # a bias the exporter shared between layers: one each
    feed = probe_feed(data, batch)  # the run's batch: a fixed batch axis takes no other
    sizes, probe_note = probe_sizes(proto, feed, runtime)
    sites, refused = find_sites(proto, layers, sizes)
    dense = layer_macs(proto, layers, sizes=sizes)
    if budget == "flops":
        reachable(sites, refused, dense, fraction, align)
    hessians: dict = {}
    if sites:
        hessians, _ = collect(proto, hessian_layers(sites), data, batch, backend, memory_mb,
                              progress, runtime=runtime, subsample=subsample,
                              token_mask=token_mask)
    weights = constant_weights(proto.graph)
    steps = [min(s.channels - 1, int(np.ceil(s.channels * min(1.0, 2 * fraction + 0.25))))
             for s in sites]
    solved = [_solve(s, weights, hessians, backend, damp, n) for s, n in tqdm(
        list(zip(sites, steps)), desc="channel traces", unit="site", disable=not progress)]
    return ChannelPlan(proto, layers, sites, refused, dense, solved, weights, hessians,
                       backend, damp, time.perf_counter() - t0, feed, data, batch,
                       runtime=runtime, probe_note=probe_note, token_mask=token_mask,
                       memory_mb=memory_mb, progress=progress)


def counts_for(plan: ChannelPlan, fraction: float, align: int, allocate: str,
               objective: str = "output", budget: str = "flops") -> tuple[list[int], list[str]]:
    """Channels to remove per site for `fraction` of the layers' multiply-adds (`budget`
    "latency": of the model's measured latency, timing.py), and the warning when the
    prunable sites cover too little; `objective` "output" scales each site's normalised
    loss by its measured output factor (sensitivity.py)."""
    if objective not in OBJECTIVES or budget not in BUDGETS:
        raise ConfigError(f"channel objective must be one of {', '.join(OBJECTIVES)} and the "
                          f"budget one of {', '.join(BUDGETS)}, got {objective!r}, {budget!r}")
    if objective == "output" and plan.probes is None:
        plan.probes, plan.factor_seconds, plan.factor_note = site_factors(plan, align)
    scale = plan.probes if objective == "output" else None
    notes = [n for n in (plan.probe_note, plan.factor_note if scale is not None else "") if n]
    if budget == "latency":
        counts, why = latency_counts(plan, fraction, align, allocate, scale)
        return counts, notes + why
    counts = _counts(plan, fraction * plan.dense, align, allocate, scale)
    saved = saved_macs(plan.sites, counts)
    if saved >= fraction * plan.dense:
        return counts, notes
    why = (f"channel pruning saves {saved / plan.dense:.1%} of the layer FLOPs, short of "
           f"prune.channels {fraction:.1%}: the prunable sites cover too little")
    return counts, notes + [why]


def cut_channels(plan: ChannelPlan, fraction: float, align: int = 1, allocate: str = "dp",
                 objective: str = "output", budget: str = "flops") -> ChannelResult:
    """Remove `fraction` of the layers' multiply-adds as whole channels of `plan`'s sites,
    spread by `allocate` (channels/allocate.py), each site keeping a multiple of `align`
    (head sites: any number of heads, each already dh channels)."""
    t0 = time.perf_counter()
    proto, backend, dense = plan.proto, plan.backend, plan.dense
    if not plan.sites:
        return ChannelResult(proto, proto, [], plan.refused, (dense, dense),
                             ["channel pruning found no prunable producer -> consumer pair"],
                             plan.seconds)
    counts, warnings = counts_for(plan, fraction, align, allocate, objective, budget)
    rows, keep, keep_norm, updated = [], [], [], {}
    joint = joint_columns([s.site for s in plan.solved],
                          [s.trace.order[:k] for k, s in zip(counts, plan.solved)])
    for k, s in zip(counts, plan.solved):
        removed = s.trace.order[:k]
        if (cols := joint.pop(s.site.consumer.weight, None)) is not None:  # once a consumer
            W = obs_update(backend.to_device(s.W), s.Hinv, s.site.width, cols)
            updated.update(s.site.consumer_arrays(backend.to_host(W)))
        updated.update(squeeze_update(s.site, removed, plan.weights, plan.hessians, backend,
                                      plan.damp))  # a squeeze-excite block's squeeze layer
        base = _norm_removed(s.site, plan.weights, k)
        keep.append(np.setdiff1d(np.arange(s.site.channels), removed))
        keep_norm.append(np.setdiff1d(np.arange(s.site.channels), base))
        rows.append(ChannelRow(s.site.producer.name, s.site.consumer.name, s.site.channels, k,
                               float(s.trace.losses[:k].sum()),
                               _zeroed_loss(s, base, backend), s.energy, k * s.site.macs,
                               tuple(int(c) for c in np.sort(removed)), s.site.unit))
    model = shrink(proto, plan.sites, keep, updated)
    baseline = shrink(proto, plan.sites, keep_norm)
    pruned = layer_macs(model, _relabel(plan.layers, model),
                        sizes=pruned_sizes(plan, model, warnings))
    timed = latency_report(plan, counts, model) if budget == "latency" else {}
    return ChannelResult(model, baseline, rows, plan.refused, (dense, pruned), warnings,
                         plan.seconds + time.perf_counter() - t0, timed)


def pruned_sizes(plan: ChannelPlan, model: onnx.ModelProto, warnings: list[str]) -> dict:
    """probe.probe_sizes of the cut `model`; its fallback joins `warnings` unless the dense
    model's already did."""
    sizes, why = probe_sizes(model, plan.feed, plan.runtime)
    if why and not plan.probe_note:
        warnings.append(why + " (the pruned model)")
    return sizes


def prune_channels(proto: onnx.ModelProto, layers: list[Layer], data: Any, batch: int,
                   backend: Backend, fraction: float, damp: float, memory_mb: int,
                   runtime: Any = None, progress: bool = False, align: int = 1,
                   allocate: str = "dp", objective: str = "output", budget: str = "flops",
                   subsample: int = 0, token_mask: str | None = None) -> ChannelResult:
    """Remove `fraction` of the layers' multiply-adds as whole channels (see the module
    docstring); `data` is the calibration source the Hessians come from; every site keeps
    a multiple of `align` channels; `allocate` spreads the cut over the sites
    (channels/allocate.py: dp, greedy or uniform) by the `objective` (output: normalised
    consumer losses scaled by each site's measured output gain, sensitivity.py; layer:
    unscaled); `budget` latency: `fraction` of the model's measured latency (timing.py);
    `subsample`: the Hessians' columns per input from a subgrid (0: every position);
    `token_mask`: the input marking padded positions (calib/tokens.py), left out of them."""
    plan = plan_channels(proto, layers, data, batch, backend, damp, memory_mb, runtime,
                         progress, fraction, subsample, token_mask, budget, align)
    return cut_channels(plan, fraction, align, allocate, objective, budget)


def _counts(plan: ChannelPlan, target: float, align: int, method: str,
            scale: list | None = None) -> list[int]:
    """The selected counts; a site whose trace prefix the selection uses up gets its whole
    greedy trace, and the selection runs again."""
    counts = _select(plan.solved, target, align, method, scale)
    short = [i for i, (k, s) in enumerate(zip(counts, plan.solved))
             if k == len(s.trace.losses) < s.site.channels - 1]
    for i in short:
        plan.solved[i] = _solve(plan.sites[i], plan.weights, plan.hessians, plan.backend,
                                plan.damp, plan.sites[i].channels - 1)
    return _select(plan.solved, target, align, method, scale) if short else counts


def _select(solved: list[_Solved], target: float, align: int, method: str,
            scale: list | None = None) -> list[int]:
    """allocate.counts until the exact saving (saved_macs) reaches `target`: the first-order
    per-channel savings overcount layers cut on both sides, so the goal is raised past the
    counts' own first-order saving by the shortfall, a few times."""
    goal, counts, last = target, [], None
    traces = [s.trace if scale is None else scaled_trace(s.trace, s.energy, p)
              for s, p in zip(solved, scale or solved)]
    for _ in range(8):
        counts = allocate_counts(method, traces,
                                 [s.energy for s in solved], [s.site.macs for s in solved],
                                 goal, [s.site.channels for s in solved],
                                 [site_align(s.site, align) for s in solved])
        saved = saved_macs([s.site for s in solved], counts)
        if saved >= target or counts == last:  # reached, or nothing more to take
            break
        first = sum(k * s.site.macs for k, s in zip(counts, solved))  # >= goal: overshoot
        goal, last = max(goal, first) + target - saved, counts
    return counts


def _solve(site: Site, weights: dict, hessians: dict, backend: Backend, damp: float,
           steps: int) -> _Solved:
    if site.widths:  # readers with Hessians of their own (fanout.py)
        W, H, Hinv = readers(site, weights, hessians, backend, damp)
    else:
        W = backend.to_device(site.matrix(weights))  # [1, r, d]: every consumer's rows
        acc = hessians[site.consumer.weight]
        if acc.cross is not None:  # sequential: fit the dense model's output first
            W = fit_to_reference(W, acc.mean(), acc.cross / acc.samples, max(damp, 1e-4))
        prep = prepare(W, acc.mean(), damp)  # [G, r, d]: a grouped consumer's groups, each
        W, H, Hinv = (block_diagonal(x) for x in (prep.W, prep.H, prep.Hinv))  # alone
    trace = channel_trace(W, Hinv, site.width, steps, site.blocks, site.offset,
                          site.channels if site.span or site.spans else None)  # a Concat's: its own
    return _Solved(site, backend.to_host(W), H, Hinv, trace, output_energy(W, H))


def _relabel(layers: list[Layer], model: onnx.ModelProto) -> list[Layer]:
    """`layers` as found again in `model` (their shapes changed)."""
    from ..layers import find_layers

    names = {L.weight for L in layers}
    return [L for L in find_layers(model)[0] if L.weight in names]
