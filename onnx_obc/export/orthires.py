"""The onnxruntime target's high-resolution float candidates: with 8-bit activations, the
Convs whose output is at stride HIRES_STRIDE or less of the highest-resolution Conv input
(the ratio of their positions, per axis on average, rounded: a padded input's 225 x 225
against 56 x 56 is stride 4) and that read no Conv at a larger stride upstream: the early
backbone, not a detector's head or a decoder back at that resolution.

Why: one uint8 grid per tensor is coarsest where a map's channels differ most in range, and
that is often early: PP-PicoDet's 200 x 152 backbone convs (p2o.Conv.4-9) each push the
output error from 0.07 to 0.18-0.54 alone (`--sensitivity`); their outputs have a few
channels 10-30x wider than the median. With the convs at stride <= 4 float (bench/
float_prefix.py, one process, 1 thread): PicoDet's box F1 against the dense detections 42
-> 85 at 0.338 -> 0.344x fp32, PP-LCNet's output error 0.042 -> 0.022 and 0.826 -> 0.773x
(narrow maps run no faster on the integer kernels, ortstem.py), YOLOv8n's 0.021 -> 0.010
at the same speed. But not everywhere: EfficientNet-Lite0 0.388 -> 0.611x (its wide early
convs gain most from the integer kernels), the PP-OCRv4 recognizer 0.455 -> 0.529x and two
text points fewer of 200 at a lower error. So these are candidates with a rule that weighs
both (export/floatcand.py): kept float when the output error falls to at most GAIN of the
error without them and the latency rises by at most SLOWER, or, from an output error of 0.1
or more, by more where the error falls further (in proportion, up to SLOWER_CAP: at half the
error 1.125x; floatcheck.py measures both).
Where they stay float, the Convs at stride 8 are a second group with the same rule (with
p2o.Conv.2-6 float, `--sensitivity` ranks PicoDet's p2o.Conv.7-9 first, each 0.18-0.25
alone; with them float too, AP50 against the dense detections 90.7 -> 96.2 at the same
speed); where the first group was refused, the wider one is not tried.
ExportOptions.float_highres = False (--int8-highres) offers neither.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import onnx

from ..hessian import conv_out
from ..layers import Layer, node_label
from .floatcand import Candidates

HIRES_STRIDE = 4  # a Conv whose output is at most this stride from the largest Conv input
NEXT_STRIDE = 8  # then, only where those were kept, the Convs up to this stride
GAIN = 0.8  # kept float when the error with them float is at most this times the error ...
SLOWER = 1.05  # ... and the latency at most this times the latency without them; where
SLOWER_CAP = 1.15  # the error falls further, more latency in proportion, up to this
KIND = "high-resolution convs"
NEXT_KIND = "convs at stride 8"

Probe = Callable[[list[str]], dict[str, tuple[int, ...]]]  # tensor -> shape on one sample


def conv_strides(layers: list[Layer], probe: Probe) -> dict[str, int]:
    """weight -> the stride of its Conv's output from the largest Conv input (the ratio of
    positions per axis, rounded; the largest over its uses), 0 for a Conv on a pooled 1 x 1
    map (a squeeze-excite gate: no resolution of its own). `probe`: the shapes of the named
    tensors on one sample (floatcheck.py runs the model once); a Conv whose input's shape it
    does not give is left out."""
    convs = [L for L in layers if L.op == "Conv"]
    if not convs:
        return {}
    shapes = probe(list(dict.fromkeys(u.input for L in convs for u in L.uses)))
    top: dict[int, int] = {}  # spatial axes -> the largest Conv input's positions
    for L in convs:
        for u in L.uses:
            s = shapes.get(u.input)
            if s is not None and len(s) > 2:
                top[len(s) - 2] = max(top.get(len(s) - 2, 0), math.prod(s[2:]))
    out: dict[str, int] = {}
    for L in convs:
        sizes = [shapes.get(u.input) for u in L.uses]
        if any(s is None or len(s) < 3 for s in sizes):
            continue
        nd = len(sizes[0]) - 2
        positions = [math.prod(conv_out(u, tuple(s[2:]))) for u, s in zip(L.uses, sizes)]
        out[L.weight] = 0 if max(positions) <= 1 else round(max(
            top[nd] / max(1, p) for p in positions) ** (1 / nd))  # a padded input: 4.02 -> 4
    return out


def upstream_strides(proto: onnx.ModelProto, layers: list[Layer], strides: dict[str, int]
                     ) -> dict[str, int]:
    """weight -> the largest stride (conv_strides) of its Conv and every Conv upstream of it:
    a backbone's early conv keeps its own stride, a detector's head or a decoder's conv at
    stride 8 or 4 that reads stride-32 features gets 32 (one pass in the graph's
    topological node order)."""
    by_node = {u.node: L.weight for L in layers if L.weight in strides for u in L.uses}
    up: dict[str, int] = {}  # tensor -> the largest stride upstream of it
    out: dict[str, int] = {}
    for i, n in enumerate(proto.graph.node):
        s = max((up.get(x, 0) for x in n.input if x), default=0)
        w = by_node.get(node_label(n, i))
        if w is not None:
            s = max(s, strides[w])
            out[w] = max(out.get(w, 0), s)
        for y in n.output:
            up[y] = s
    return out


def hires_layers(proto: onnx.ModelProto, layers: list[Layer], probe: Probe,
                 strides: tuple[int, int] = (1, HIRES_STRIDE)) -> dict[str, str]:
    """weight -> why its Conv may stay float: the Convs whose output stride and every
    stride upstream (upstream_strides) are within `strides` (see the module docstring)."""
    return _reasons(upstream_strides(proto, layers, conv_strides(layers, probe)), *strides)


def candidates(proto: onnx.ModelProto, layers: list[Layer], probe: Probe) -> list[Candidates]:
    """The Convs at stride <= 4 with nothing deeper upstream, then (tried only where those
    stay float) those at stride 8, each group with the same rule."""
    strides = upstream_strides(proto, layers, conv_strides(layers, probe))
    return [g for g in (
        Candidates(KIND, _reasons(strides, 1, HIRES_STRIDE), GAIN, SLOWER, "--int8-highres",
                   slower_cap=SLOWER_CAP, trim=True),
        Candidates(NEXT_KIND, _reasons(strides, HIRES_STRIDE + 1, NEXT_STRIDE), GAIN, SLOWER,
                   "--int8-highres", after_kept=True, slower_cap=SLOWER_CAP, trim=True)
    ) if g.reasons]


def _reasons(strides: dict[str, int], lo: int, hi: int) -> dict[str, str]:
    return {w: f"{'high-resolution conv' if s <= HIRES_STRIDE else 'conv'} (its output and "
               f"every conv upstream at stride {s} or less of the largest conv input), kept "
               "float for onnxruntime where that buys accuracy at little cost in speed "
               "(--int8-highres quantizes them)"
            for w, s in strides.items() if lo <= s <= hi}
