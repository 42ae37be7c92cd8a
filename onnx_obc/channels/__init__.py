"""Structured channel pruning that shrinks the graph: `patterns` finds the producer ->
consumer sites (and why the other layers' channels stay), `stage` runs the group OBS of
solvers/channels.py on the consumers' Hessians, `allocate` spreads the FLOP cut over the
sites (exact DP, greedy, uniform) and the tensors are cut (export/shrink.py); `sequential`
cuts group by group (--sequential); `run_channels` is the pipeline's stage."""

from typing import Any

from ..export.shrink import check_input
from ..tier import channel_floor
from .patterns import Refusal, Site, find_sites, layer_macs
from .sequential import prune_channels_sequential
from .stage import ChannelResult, ChannelRow, cut_channels, plan_channels, prune_channels

__all__ = [
           "ChannelResult",
           "ChannelRow",
           "Refusal",
           "Site",
           "cut_channels",
           "find_sites",
           "layer_macs",
           "plan_channels",
           "prune_channels",
           "prune_channels_sequential",
           "run_channels",
]


def run_channels(proto: Any, layers: list, data: Any, backend: Any, cfg: Any, runtime: Any,
                 progress: bool) -> ChannelResult:
    """The channel-pruning stage with a run's settings (`cfg` a CompressConfig, `data` its
    Calibration): the shrunk model, its L2-norm baseline and the sites."""
    check_input(proto)  # what the shrunk model's check would fail on anyway, before the work
    p = cfg.prune
    args = (proto, layers, data.fit, data.batch, backend, p.channels, cfg.solver.damp,
            cfg.run.memory_budget_mb, runtime, progress)
    kw = dict(align=p.channel_align, allocate=p.channel_allocate,
              objective=p.channel_objective, budget=p.channel_budget,
              subsample=channel_floor(cfg), token_mask=data.token_mask)
    if cfg.run.sequential:  # the earlier groups cut before the next one's Hessians
        return prune_channels_sequential(*args, groups=cfg.run.sequential_groups, **kw)
    return prune_channels(*args, **kw)

