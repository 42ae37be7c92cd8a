"""The onnxruntime target's high-resolution float candidates: with 8-bit activations, the
Convs whose output is at stride HIRES_STRIDE or less of the highest-resolution Conv input
(the ratio of their positions, per axis on average, rounded: a padded input's 225 x 225
against 56 x 56 is stride 4).

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
error without them and the latency rises by at most SLOWER (floatcheck.py measures both).
ExportOptions.float_highres = False (--int8-highres) offers none.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import onnx

from ..hessian import conv_out
from ..layers import Layer
from .floatcand import Candidates

HIRES_STRIDE = 4  # a Conv whose output is at most this stride from the largest Conv input
GAIN = 0.8  # kept float when the error with them float is at most this times the error ...
SLOWER = 1.05  # ... and the latency at most this times the latency without them
KIND = "high-resolution convs"

Probe = Callable[[list[str]], dict[str, tuple[int, ...]]]  # tensor -> shape on one sample


def hires_layers(proto: onnx.ModelProto, layers: list[Layer], probe: Probe) -> dict[str, str]:
    """weight -> why its Conv may stay float (see the module docstring). `probe`: the
    shapes of the named tensors on one sample (floatcheck.py runs the model once)."""
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
    out: dict[str, str] = {}
    for L in convs:
        sizes = [shapes.get(u.input) for u in L.uses]
        if any(s is None or len(s) < 3 for s in sizes):
            continue
        nd = len(sizes[0]) - 2
        stride = round(max(top[nd] / max(1, math.prod(conv_out(u, tuple(s[2:]))))
                           for u, s in zip(L.uses, sizes)) ** (1 / nd))  # a pad's +1: 4.02
        if stride <= HIRES_STRIDE:
            out[L.weight] = (
                f"high-resolution conv (output at stride {stride} of the "
                f"largest conv input), kept float for onnxruntime where that buys accuracy at "
                "little cost in speed (--int8-highres quantizes them)")
    return out


def candidates(proto: onnx.ModelProto, layers: list[Layer], probe: Probe) -> list[Candidates]:
    found = hires_layers(proto, layers, probe)
    return [Candidates(KIND, found, GAIN, SLOWER, "--int8-highres")] if found else []
