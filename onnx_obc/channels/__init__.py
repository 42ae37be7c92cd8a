"""Structured channel pruning that shrinks the graph: `patterns` finds the producer ->
consumer sites (and why the other layers' channels stay), `stage` runs the group OBS of
solvers/channels.py on the consumers' Hessians and cuts the tensors (export/shrink.py)."""

from .patterns import Refusal, Site, find_sites, layer_macs
from .stage import ChannelResult, ChannelRow, prune_channels

__all__ = [
           "ChannelResult",
           "ChannelRow",
           "Refusal",
           "Site",
           "find_sites",
           "layer_macs",
           "prune_channels",
]
