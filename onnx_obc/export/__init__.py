"""Export: host-side solutions (solve.py) and corrections (correct.py) -> ONNX models.

    models = build_all(proto, layers, solutions, which=("compressed", "baseline"),
                       corrections=fixes, act_scales=scales, target="tensorrt")

Every model is built the same way, so the compressed, the uncorrected and the baseline model
are deployed alike: the float weights written in place (values.py: on the grid when
quantized, corrections folded into biases and weight rows), then the target's placement of
integer weights and activation Q/DQ pairs. One module per target, registered in `TARGETS`:

    tensorrt  weights as codes behind DequantizeLinear; activation Q/DQ on the inputs of the
              quantized layers and on the residual Add inputs (TensorRT's explicit
              quantization)
    onnxruntime  the same weights; activation Q/DQ on the inputs and outputs of the quantized
              layers and of the ops between them that onnxruntime runs on integers, so its
              CPU optimizer fuses them into QLinearConv / QLinearMatMul / QGemm / QLinearAdd...
              (u8 asymmetric or s8 symmetric activations, int32 biases)

A target is a module (or object) with `act_tensors(proto, layers) -> [tensor]` (which
activations need ranges) and `deploy(model, layers, solved, qweights, act_scales, **options)
-> model`; optionally `act_values(observers, method, percentile)` (what its deploy takes as
`act_scales`; default: the symmetric int8 scale of each observer) and `float_candidates(proto,
layers, act_bits, probe, **options) -> [floatcand.Candidates]` (groups of layers it may keep
float, each with its rule; `probe(tensors)` gives their shapes on one sample; floatcheck.py
measures whether they stay float).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import onnx

from ..errors import ConfigError
from ..layers import Layer
from . import fusion, onnxruntime, tensorrt
from .graph import check, checked_once
from .qweights import QuantizedWeight, to_onnx
from .values import (ChannelFix, apply_weights, bias_targets, channel_scales, fold_biases,
                     scale_codes, scale_rows)

if TYPE_CHECKING:
    from ..solve import HostSolution, HostWeights

__all__ = ["TARGETS", "WHICH", "Target", "ChannelFix", "act_tensors", "act_values",
           "apply_weights", "bias_targets", "build", "build_all", "float_model",
           "quantized_weights", "target_for"]

WHICH = ("compressed", "uncorrected", "baseline")


class Target(Protocol):
    def act_tensors(self, proto: onnx.ModelProto, layers: list[Layer]) -> list[str]: ...

    def deploy(self, model: onnx.ModelProto, layers: list[Layer], solved: set[str],
               qweights: dict[str, QuantizedWeight], act_scales: dict[str, float] | None
               ) -> onnx.ModelProto: ...


TARGETS: dict[str, Any] = {"tensorrt": tensorrt, "onnxruntime": onnxruntime}


def target_for(name: str) -> Target:
    """The registered target `name` (ConfigError naming the known ones otherwise)."""
    if name not in TARGETS:
        raise ConfigError(f"unknown export target {name!r}; the targets are "
                          f"{', '.join(sorted(TARGETS))}")
    return TARGETS[name]


def act_tensors(proto: onnx.ModelProto, layers: list[Layer], target: str = "tensorrt"
                ) -> list[str]:
    """The activations whose ranges the target's Q/DQ placement needs (capture observes
    these)."""
    return target_for(target).act_tensors(proto, layers)


def act_values(observers: Mapping[str, Any], target: str = "tensorrt", method: str = "minmax",
               percentile: float = 99.99) -> dict[str, Any]:
    """tensor -> what the target's deploy takes for it (`act_scales`): the symmetric int8
    scale (tensorrt), or the (lo, hi) range (onnxruntime)."""
    values = getattr(target_for(target), "act_values", None)
    if values is not None:
        return values(dict(observers), method, percentile)
    return {n: o.scale(method, percentile) for n, o in observers.items()}


def build(proto: onnx.ModelProto, layers: list[Layer], solutions: Mapping[str, HostSolution],
          *, which: str = "compressed", corrections: Mapping[str, ChannelFix] | None = None,
          act_scales: dict[str, Any] | None = None, target: str = "tensorrt",
          target_options: Mapping[str, Any] | None = None) -> onnx.ModelProto:
    """One model from the dense `proto`: "compressed" (with `corrections`, node label ->
    fix, folded in), "uncorrected" (the same without them) or "baseline" (the baseline
    weights); `act_scales` (tensor -> scale, or range: `act_values`) places activation Q/DQ
    pairs; `target_options` go to the target's deploy (onnxruntime: act_type)."""
    deploy = target_for(target).deploy
    if which not in WHICH:
        raise ConfigError(f"unknown model {which!r} to build; expected one of {', '.join(WHICH)}")
    fixes = corrections if which == "compressed" else None
    with checked_once():  # the checker once, on the model the edits end in
        model = float_model(proto, layers, solutions, which=which, corrections=fixes)
        qweights = quantized_weights(layers, solutions, which=which, corrections=fixes)
        model = deploy(model, layers, set(solutions), qweights, act_scales,
                       **dict(target_options or {}))
    check(model)
    return model


def build_all(proto: onnx.ModelProto, layers: list[Layer],
              solutions: Mapping[str, HostSolution], *, which: Sequence[str] = WHICH,
              corrections: Mapping[str, ChannelFix] | None = None,
              act_scales: dict[str, Any] | None = None, target: str = "tensorrt",
              target_options: Mapping[str, Any] | None = None,
              built: Mapping[str, onnx.ModelProto] | None = None) -> dict[str, onnx.ModelProto]:
    """{name: build(..., which=name)} for each name in `which`, in that order; those in
    `built` (the same arguments' models, built before) taken from there."""
    return {w: (built or {})[w] if w in (built or {}) else build(
        proto, layers, solutions, which=w, corrections=corrections, act_scales=act_scales,
        target=target, target_options=target_options) for w in which}


def _side(solutions: Mapping[str, HostSolution], which: str) -> dict[str, HostWeights]:
    if which == "baseline":
        return {k: s.baseline for k, s in solutions.items()}
    return {k: s.compressed for k, s in solutions.items()}


def float_model(proto: onnx.ModelProto, layers: list[Layer],
                solutions: Mapping[str, HostSolution], *, which: str = "compressed",
                corrections: Mapping[str, ChannelFix] | None = None) -> onnx.ModelProto:
    """Copy of `proto` with the float weights of `which` written in place (on the grid when
    quantized) and `corrections` folded into biases and weight rows: what every target
    starts from, and what the correction measures level by level."""
    weights = {k: h.weight for k, h in _side(solutions, which).items()}
    fixes = dict(corrections or {})
    if fixes:
        weights = scale_rows(layers, weights, channel_scales(layers, fixes))
    model = apply_weights(proto, layers, weights)
    return fold_biases(model, layers, fixes) if fixes else model


def quantized_weights(layers: list[Layer], solutions: Mapping[str, HostSolution], *,
                      which: str = "compressed",
                      corrections: Mapping[str, ChannelFix] | None = None
                      ) -> dict[str, QuantizedWeight]:
    """weight -> its DequantizeLinear parameters (ONNX layout) for the quantized layers of
    `which`, with the corrections' channel scales folded into the DQ scales."""
    by_weight = {L.weight: L for L in layers}
    scales = channel_scales(layers, dict(corrections)) if corrections else {}
    out = {}
    for name, h in _side(solutions, which).items():
        if h.codes is None:
            continue
        L = by_weight[name]
        q = to_onnx(L, h.codes, h.grid, h.bits)
        out[name] = q if name not in scales else scale_codes(q, L, scales[name])
    return out
