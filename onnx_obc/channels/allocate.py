"""How many channels each site removes so that the removed FLOPs reach a goal, from the
sites' greedy group-OBS traces (solvers/channels.py):

- "dp": exact over the traces. A multiple-choice knapsack (allocation/dp.py): site i removes
  k of its channels (k a greedy-trace prefix leaving a multiple of `align` channels) at the
  normalised loss sum(losses[:k]) / energy_i; the DP minimises the summed normalised loss
  with sum_i k_i * flops_i >= goal. Costs are the FLOPs left in each site's option range in
  units of 1/BUCKETS of their total (single FLOPs when fewer), rounded up (the budget
  down), so the goal is always met and the DP is exact on that lattice (exact outright for
  integer FLOPs totalling at most BUCKETS).
- "greedy": repeatedly the cheapest move by normalised loss per FLOP (select_channels).
- "uniform": one fraction f of every site's channels (each site's nearest allowed count),
  the smallest f that reaches the goal.

The first-order saving sum k_i * flops_i is what all three meet; the caller raises the goal
until the exact saving (patterns.saved_macs) reaches the target.
"""

from __future__ import annotations

import math

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..allocation.dp import LevelTable, allocate
from ..errors import ConfigError
from ..solvers.channels import ChannelTrace, select_channels
from .flops import saved_macs

METHODS = ("dp", "greedy", "uniform")
BUCKETS = 20000


def counts(method: str, traces: Sequence[ChannelTrace], energies: Sequence[float],
           flops: Sequence[float], goal: float, channels: Sequence[int],
           align: int | Sequence[int] = 1) -> list[int]:
    """Channels each site removes (method: one of METHODS; see the module docstring);
    `align`: one for every site, or one per site."""
    aligns = [align] * len(traces) if isinstance(align, int) else list(align)
    if method == "greedy":
        return select_channels(list(traces), list(energies), list(flops), goal,
                               list(channels), aligns)
    options = [allowed(len(t.losses), C, a) for t, C, a in zip(traces, channels, aligns)]
    if method == "uniform":
        return _uniform(options, flops, goal, channels)
    if method == "dp":
        return _dp(traces, energies, options, flops, goal)
    raise ConfigError(f"channel allocation must be one of {', '.join(METHODS)}, got {method!r}")


AUTO_ALIGN = 8  # onnxruntime's blocked (NCHWc) CPU convolutions take channels in 8s


def site_align(site: Any, align: int) -> int:
    """The multiple of channels `site` keeps: 1 for whole heads (each is dh channels);
    `align` when given; 0 (auto): 8 where the dense count is a multiple of 8 and at least
    16, else 1 (measured on EfficientNet-Lite0 at a 30% FLOP cut, docs/defaults.md: odd counts ran
    1.29x slower than dense, multiples of 8 0.81x, at the same output error); a grouped
    producer's or consumer's: as many from every group, each group's count aligned so (auto)
    or the total a multiple of `align` too (ResNeXt's 32-wide groups cut to odd counts ran
    0.91x of fp32 at a 30% FLOP cut, docs/channels.md)."""
    if site.split:
        return 1
    C, G = site.channels, site.blocks
    if align:  # a grouped layer's: as many from every group too
        return math.lcm(align, G)
    per = C // G  # auto: each group's count, as an ungrouped layer's (RegNet's 8-wide
    return G * (AUTO_ALIGN if per % AUTO_ALIGN == 0 and per >= 2 * AUTO_ALIGN else 1)  # any)


def allowed(steps: int, C: int, align: int) -> list[int]:
    """Removal counts 0 .. steps that leave a multiple of `align` of the C channels (0 too)."""
    return [0] + [k for k in range(1, steps + 1) if (C - k) % align == 0]


def loss_curve(trace: ChannelTrace, energy: float) -> np.ndarray:
    """[steps + 1] normalised loss of removing the first k channels of the trace."""
    return np.concatenate([[0.0], np.cumsum(trace.losses)]) / max(energy, 1e-30)


def _dp(traces: Sequence[ChannelTrace], energies: Sequence[float],
        options: list[list[int]], flops: Sequence[float], goal: float) -> list[int]:
    most = [max(o) * f for o, f in zip(options, flops)]
    budget = sum(most) - goal  # FLOPs the sites may keep of their option ranges
    if budget <= 0:
        return [max(o) for o in options]
    unit = max(1.0, sum(most) / BUCKETS)  # FLOPs kept in whole units, rounded up
    tables = []
    for i, (t, e, o, f) in enumerate(zip(traces, energies, options, flops)):
        curve = loss_curve(t, e)
        tables.append(LevelTable(f"site{i}", tuple(float(k) for k in o),
                                 tuple(float(np.ceil((most[i] - k * f) / unit - 1e-9))
                                       for k in o),
                                 tuple(float(curve[k]) for k in o)))
    choice = allocate(tables, float(np.floor(budget / unit + 1e-9))).choice
    return [int(choice[f"site{i}"]) for i in range(len(tables))]


def _uniform(options: list[list[int]], flops: Sequence[float], goal: float,
             channels: Sequence[int]) -> list[int]:
    """The smallest common fraction f whose counts (each site's option nearest f * C, so
    coarse aligns round both ways) save the goal, by bisection (the saving grows with f)."""
    def pick(f: float) -> list[int]:
        return [min(o, key=lambda k, C=C: (abs(k - f * C), k)) for o, C in zip(options, channels)]

    def saves(ks: list[int]) -> float:
        return sum(k * fl for k, fl in zip(ks, flops))

    lo, hi = 0.0, 1.0
    if saves(pick(hi)) < goal:
        return pick(hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if saves(pick(mid)) >= goal else (mid, hi)
    return pick(hi)


def by_saving(method: str, traces: Sequence[ChannelTrace], energies: Sequence[float],
              curves: Sequence[np.ndarray], goal: float,
              aligns: Sequence[int]) -> list[int]:
    """`counts` with each site's saving a measured curve (curves[i][k]: what removing k of
    its len(curves[i]) channels saves, e.g. seconds; channels/timing.py) in place of k
    times its FLOPs: "dp" (same lattice, the kept saving in units of 1/BUCKETS of the
    total) or "uniform"."""
    options = [allowed(len(t.losses), len(c), a) for t, c, a in zip(traces, curves, aligns)]
    if method == "uniform":
        def pick(f: float) -> list[int]:
            return [min(o, key=lambda k, C=len(c): (abs(k - f * C), k))
                    for o, c in zip(options, curves)]
        lo, hi = 0.0, 1.0
        if sum(c[k] for c, k in zip(curves, pick(hi))) < goal:
            return pick(hi)
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if sum(c[k] for c, k in zip(curves, pick(mid))) >= goal \
                else (mid, hi)
        return pick(hi)
    if method != "dp":
        raise ConfigError(f"a measured channel budget allocates by dp or uniform, got "
                          f"{method!r}")
    most = [max(float(c[k]) for k in o) for o, c in zip(options, curves)]
    best = [max(o, key=lambda k, c=c: (float(c[k]), -k)) for o, c in zip(options, curves)]
    budget = sum(most) - goal  # saving the sites may forgo
    if budget <= 0 or sum(most) <= 0:
        return best
    unit = sum(most) / BUCKETS
    tables = []
    for i, (t, e, o, c) in enumerate(zip(traces, energies, options, curves)):
        curve = loss_curve(t, e)
        tables.append(LevelTable(f"site{i}", tuple(float(k) for k in o),
                                 tuple(float(np.ceil((most[i] - float(c[k])) / unit - 1e-9))
                                       for k in o),
                                 tuple(float(curve[k]) for k in o)))
    choice = allocate(tables, float(np.floor(budget / unit + 1e-9))).choice
    return [int(choice[f"site{i}"]) for i in range(len(tables))]


def reachable(sites: Sequence[Any], refused: Sequence[Any], dense: float, fraction: float,
              align: int) -> None:
    """ConfigError, before any capture, when `fraction` of the layers' FLOPs is more than
    the sites save with every one cut to its last channels (the multiple of its `align`
    kept): the cut could only take what there is, each site down to one channel, and write
    a wrecked model (ppocr_cls at 0.3: 8.2% reachable, output error 0.78)."""
    most = [max(allowed(s.channels - 1, s.channels, site_align(s, align))) for s in sites]
    top = saved_macs(sites, most) / dense if dense > 0 else 0.0
    if top >= fraction:
        return
    kept = f"; {len(refused)} producers keep their channels (the first: " \
        f"{refused[0].producer}: {refused[0].reason})" if refused else ""
    n = len(sites)
    if np.floor(top * 100) == 0:  # nothing to ask for: name why, not "--channels 0"
        raise ConfigError(
            f"prune.channels {fraction:g} cannot be reached here: the {n} prunable producer "
            f"-> consumer site{'' if n == 1 else 's'} save{'s' if n == 1 else ''} at most "
            f"{top:.1%} of the layers' FLOPs{kept}. Channel pruning needs a producer whose "
            "output channels reach one consumer layer through per-channel nodes only "
            "(docs/channels.md \"Channel pruning\"); compress this model without prune.channels")
    raise ConfigError(
        f"prune.channels {fraction:g} cannot be reached here: the {n} prunable producer -> "
        f"consumer site{'' if n == 1 else 's'} save{'s' if n == 1 else ''} at most {top:.1%} "
        f"of the layers' FLOPs, each cut to its last channels{kept}. Ask for prune.channels "
        f"{np.floor(top * 100) / 100:g} or less (the report then lists every kept producer "
        f"and why); the cut is spread by loss, so well below that maximum is far gentler")
