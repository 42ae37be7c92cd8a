"""Layers an export target offers to keep float, with the measured rule that keeps them
(floatcheck.py builds the model both ways and applies it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidates:
    """One group of float candidates. The group stays float when the model built with it
    float has an output error of at most `at_most` times the error without it, and, where
    `slower` is set, a 1-thread onnxruntime latency of at most `slower` times the latency
    without it (measured in the run, alternating): a group that may cost speed must buy
    accuracy. Groups are tried in order, each on top of the ones before (float or not)."""

    kind: str  # what the group is, for the report ("stem", "high-resolution convs")
    reasons: dict[str, str]  # weight -> why that layer may stay float
    at_most: float  # error with the group float / error without, at most
    slower: float | None = None  # latency with the group float / without, at most (None:
    # not timed: the group is not slower)
    flag: str = ""  # the option that quantizes the group, for the report
    after_kept: bool = False  # tried only when the group before it stayed float (a wider
    # step of the same kind: the narrower one's refusal predicts its own)
