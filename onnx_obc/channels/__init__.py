"""Structured channel pruning that shrinks the graph: `patterns` finds the producer ->
consumer sites (and why the other layers' channels stay), `stage` runs the group OBS of
solvers/channels.py on the consumers' Hessians, `allocate` spreads the FLOP cut over the
sites (exact DP, greedy, uniform) and the tensors are cut (export/shrink.py); `sequential`
cuts group by group (--sequential)."""

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
]
