"""A channel site (patterns.find_sites finds them): the producer whose output channels go,
the consumer whose input columns go with them, and everything else cut on the way; and a
producer's refusal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..layers import Layer, weight_matrix
from ..solvers.channels import channel_major, diagonal_blocks


@dataclass(frozen=True)
class Site:
    """One producer -> consumer pair whose shared channels can be removed."""

    producer: Layer
    consumer: Layer
    channels: int  # producer output channels = consumer input channels
    width: int  # consumer W-view columns per channel (kernel positions of a Conv)
    path: tuple[str, ...]  # labels of the per-channel nodes in between
    sliced: tuple[tuple[str, int], ...]  # (initializer, axis) cut with the channels
    grouped: tuple[str, ...]  # depthwise Conv node labels whose `group` follows the channels
    macs: float  # multiply-adds saved per removed channel
    cell: float = 0.0  # consumer MACs of one (row, channel) pair: counted twice when the
    # consumer also loses rows as the producer of another site (see overlap)
    unit: int = 1  # producer rows (and sliced entries, consumer columns) per channel: a head's dh
    split: Any = None  # heads.HeadSplit of a whole-head site (query/key cuts, Reshape shapes)
    shapes: tuple = ()  # flat.Rewrite: Reshape shape entries set to the kept channel count
    gate: Any = None  # gated.Gate: a gated unit's other producer, cut with this one
    blocks: int = 1  # a grouped Conv producer's or consumer's groups: its channels go in
    # equal numbers from each (the trace takes one from every group a round)
    offset: int = 0  # the consumer's input channel of channel 0, and all its input channels
    span: int = 0  # (0: `channels`): the site is one input of a Concat (concat.py)
    also: tuple = ()  # other consumers reading the channels with the consumer's columns
    # (fanout.py): their W rows stacked under its, one Hessian
    widths: tuple = ()  # with `also` whose columns differ: each reader's columns a channel (its
    cells: tuple = ()  # own Hessian; the view block-diagonal, channel-major) and (row,
    # channel) MACs
    offsets: tuple = ()  # with `widths`: each reader's input channel of channel 0 and all
    spans: tuple = ()  # its input channels, where it reads them through a Concat
    first_row: int = 0  # the producer's output row of channel 0, and all its rows (0:
    rows: int = 0  # `channels`): the site is one part of a Split (splits.py)
    outer: tuple = ()  # (constant, axis) cut like the producer's rows (its bias, before a Split)

    @property
    def consumers(self) -> tuple:
        return (self.consumer, *self.also)

    def columns(self, removed: Any) -> Any:
        """The consumer's input channels of the site's channels `removed`."""
        return np.asarray(removed, dtype=np.int64) + self.offset

    def producer_rows(self, kept: Any) -> np.ndarray:
        """The producer's output rows kept, from the site's `kept` rows: where the site is
        one part of a Split (splits.py), at its first row, every other part's rows too."""
        if not self.rows:
            return np.asarray(kept)
        end = self.first_row + self.channels * self.unit
        return np.concatenate([np.arange(self.first_row), self.first_row + np.asarray(kept),
                               np.arange(end, self.rows)])

    def matrix(self, weights: dict) -> np.ndarray:
        """The consumer's W view [G, r, d]; with `also`, every consumer's rows stacked."""
        if not self.also:
            return weight_matrix(weights, self.consumer)
        return np.concatenate([weight_matrix(weights, c) for c in self.consumers], axis=1)

    def consumer_arrays(self, W: Any) -> dict[str, Any]:
        """Each consumer's ONNX weight from the site's view W [r, d] (host): a grouped
        consumer's is block-diagonal (solvers.channels.block_diagonal), back to its groups;
        consumers sharing the site (`also`) hold its rows in turn."""
        c = self.consumer
        if not self.also:
            G = c.groups if c.layout == "conv" else 1
            return {c.weight: c.from_matrix(diagonal_blocks(W, G) if G > 1 else W[None])}
        if self.widths:  # back from channel-major columns to each reader's block
            W = W[:, np.argsort(self.order())]
        out, at, col = {}, 0, 0
        for c, w, n in zip(self.consumers, self.widths or (0,) * len(self.consumers),
                           self.spans or (self.channels,) * len(self.consumers)):
            rows, cols = c.matrix_shape[1], w * n or W.shape[1]
            out[c.weight] = c.from_matrix(W[at:at + rows, col:col + cols][None])
            at, col = at + rows, col + w * n  # stacked rows (no widths): every column
        return out

    def order(self) -> np.ndarray:
        """With `widths`: the block-diagonal view's columns, channel-major."""
        return channel_major(self.widths, self.channels, self.offsets, self.spans)

    def reads(self) -> list[tuple[Any, int, int]]:
        """(consumer, its input channel of channel 0, its input channels) of every consumer."""
        n = len(self.consumers)
        offsets = self.offsets or (self.offset,) + (0,) * (n - 1)
        spans = self.spans or (self.span or self.channels,) + (self.channels,) * (n - 1)
        return list(zip(self.consumers, offsets, spans))

    def consumer_cells(self) -> list[tuple[Any, float]]:
        """(consumer, MACs of one (row, channel) pair) of every consumer."""
        return list(zip(self.consumers, self.cells or (self.cell,) * len(self.consumers)))


@dataclass(frozen=True)
class Refusal:
    producer: str  # node label
    weight: str
    reason: str
