"""The capture's range observers, with the tensors that only hold another observed tensor's
values derived from it instead of binned again.

A Reshape, Transpose, Flatten, Squeeze, Unsqueeze or Identity output has its input's values;
a zero Pad's output (constant mode, pad value 0, every pad >= 0) has them plus one 0 per
padded position. Their histograms, extremes and so ranges are the source's (plus those
zeros: bin 0), exactly: the same files, less binning. EfficientNet-Lite0's 16 zero Pads in
front of its depthwise convolutions (TensorFlow-style "same" padding) were 39% of the values
its W8A8 capture binned. A Pad's pads computed at run time are fetched and checked per run;
a run with a negative pad (a crop) turns that tensor into one binned on its own from there,
starting from its source's observer as it stood (exact: it held the runs copied so far)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .actrange import RangeObserver
from .export.ortpad import zero_pad
from .layers import constant_weights

SAME_VALUES = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity")


@dataclass
class _Copy:
    src: str  # the observed tensor whose values it holds
    pads: str | None = None  # a zero Pad's pads tensor computed at run time, fetched
    zeros: int = 0  # padded positions so far
    padded: bool = False  # a zero Pad's output (else a value-preserving op's)


class Observers:
    """Range observers of the `names` tensors of `proto` (host side, numpy)."""

    def __init__(self, proto: onnx.ModelProto, names: list[str], histogram: bool = True,
                 pads: bool = True) -> None:
        """pads=False: zero Pads binned on their own (a capture in several passes: a Pad's
        copy reads its source's observer in step, run by run)."""
        self.copies = {t: c for t, c in _copies(proto, names).items() if pads or not c.padded}
        self.own = {n: RangeObserver(histogram) for n in names if n not in self.copies}
        self.names = list(names)

    @property
    def padded(self) -> bool:
        return any(c.padded for c in self.copies.values())

    def fetch(self, inputs: set[str]) -> list[list[str]]:
        """What the capture fetches for them, each list in one run: the own ones; a zero
        Pad's output with its source (to count the zeros) and its pads (to check them)."""
        units = [[n] for n in self.own if n not in inputs]
        for t, c in self.copies.items():
            if c.padded:
                units.append([x for x in (c.src, t, c.pads) if x and x not in inputs])
        return units

    def add(self, acts: Mapping[str, np.ndarray], here: Callable[[str], bool]) -> None:
        """One run's tensors; `here(name)`: whether this run brings that tensor."""
        for t, c in list(self.copies.items()):  # before the sources take this run
            if not c.padded or not here(t):
                continue
            if c.pads is None or np.all(acts[c.pads] >= 0):
                c.zeros += acts[t].size - acts[c.src].size
                continue
            obs = copy.deepcopy(self.own[c.src])  # the runs copied so far
            obs.add_zeros(c.zeros)
            self.own[t] = obs
            del self.copies[t]
        for n, obs in self.own.items():
            if n in acts and here(n):
                obs.add(acts[n])

    def result(self) -> dict[str, RangeObserver]:
        """name -> observer, in the order of `names`."""
        out = dict(self.own)
        for t, c in self.copies.items():
            out[t] = copy.deepcopy(self.own[c.src])
            out[t].add_zeros(c.zeros)
        return {n: out[n] for n in self.names}


def _copies(proto: onnx.ModelProto, names: list[str]) -> dict[str, _Copy]:
    """The `names` whose values are another observed tensor's (through value-preserving
    ops), or those plus zeros (a zero Pad of such a tensor: pads constant and >= 0, or
    computed at run time and checked per run), in topological order."""
    observed, inputs = set(names), {i.name for i in proto.graph.input}
    made = {o: n for n in proto.graph.node for o in n.output if o}
    weights = constant_weights(proto.graph)
    out: dict[str, _Copy] = {}

    def source(x: str) -> str | None:  # the own observed tensor whose values x holds
        while x not in observed or x in out:
            n = made.get(x)
            if n is None or n.op_type not in SAME_VALUES or n.domain not in ("", "ai.onnx"):
                return None
            x = n.input[0]
        return x

    for n in proto.graph.node:
        t = n.output[0] if n.output else ""
        if t not in observed or n.domain not in ("", "ai.onnx"):
            continue
        if n.op_type in SAME_VALUES:
            src = source(n.input[0])
            if src is not None:
                out[t] = _Copy(src)
        elif n.op_type == "Pad" and zero_pad(n, weights):
            src = source(n.input[0])
            if src is None or src in inputs:
                continue
            pads = weights.get(n.input[1])
            if pads is None:
                out[t] = _Copy(src, n.input[1], padded=True)
            elif np.all(numpy_helper.to_array(pads[1]) >= 0):
                out[t] = _Copy(src, padded=True)
    return out
