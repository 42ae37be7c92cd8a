"""Layers an export target offers to keep float, with the measured rule that keeps them
(floatcheck.py builds the model both ways and applies it)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidates:
    """One group of float candidates. The group stays float when the model built with it
    float has an output error of at most `at_most` times the error without it, and, where
    `slower` is set, a 1-thread onnxruntime latency of at most `slower` times the latency
    without it (measured in the run, alternating): a group that may cost speed must buy
    accuracy. Where the error falls further, the latency allowed grows in proportion, up to
    `slower_cap` (allowed): a group that halves the error is worth more than 1.05x, and a
    fixed limit near the measured ratio let the machine's load decide (PP-PicoDet's first
    group: 1.026-1.041x in four runs, 1.059x with the other core busy; quantized there, its
    AP50 against the dense detections fell from 94.5 to 41.4). Groups are tried in order,
    each on top of the ones before (float or not)."""

    kind: str  # what the group is, for the report ("stem", "high-resolution convs")
    reasons: dict[str, str]  # weight -> why that layer may stay float
    at_most: float  # error with the group float / error without, at most
    slower: float | None = None  # latency with the group float / without, at most (None:
    # not timed: the group is not slower)
    flag: str = ""  # the option that quantizes the group, for the report
    after_kept: bool = False  # tried only when the group before it stayed float (a wider
    # step of the same kind: the narrower one's refusal predicts its own)
    slower_cap: float | None = None  # the most latency any error gain buys (None: `slower`)
    large_error: float = 0.1  # ... where the error without the group is at least this
    trim: bool = False  # once kept float, its last layers (graph order) are tried back on
    # integer kernels one at a time, each by the same rule (floatcheck._trim)
    error_first: bool = False  # verified before it is timed: for a group rarely slower
    # whose error rarely falls enough (a model's output convs), the timing is then skipped

    def allowed(self, ratio: float, base: float = math.inf) -> float:
        """The latency ratio the group may cost at an error ratio `ratio` (with / without it
        float) from an error `base` without it: `slower` at `at_most`; from a large error,
        growing linearly as the error falls further (the error's fall per latency's rise at
        that corner), at most `slower_cap`. Below `large_error` the speed decides: an output
        error under 10% leaves the bench's task metrics near dense (PP-LCNet's 0.035:
        orientation as dense), above it they fall (ppocr_det's 0.14: map F1 98.3 against
        dense; PicoDet's 0.51: AP50 41)."""
        if self.slower is None:
            return math.inf
        if ratio > self.at_most or self.at_most >= 1.0 or base < self.large_error:
            return self.slower
        gain = (1.0 - ratio) / (1.0 - self.at_most)  # >= 1
        return min(self.slower_cap or self.slower, 1.0 + (self.slower - 1.0) * gain)
