"""Per-layer sensitivity: the model's output error with only one layer compressed (the
others dense), measured on the held-out samples, layers ranked worst first, and the layers a
user would exclude first as ready-to-paste `--exclude` flags.

    ranked = measure_sensitivity(proto, layers, solutions, data.held, batch, runtime,
                                 act_values=done.act_values, target="tensorrt")
    summary = summarize(ranked, "held-out calibration")   # the report's `sensitivity`

Each candidate is the dense model with that one layer deployed as the run deploys it
(export.build on [layer]: its compressed weights, as DequantizeLinear codes when quantized,
and its input Q/DQ with activation quantization), measured like the run's fidelity
(verify.evaluate: relative output error, the largest over the outputs). Corrections
(--correct) are not applied: the ranking is of the layer solves.

Suggestion: the layers whose share of the summed squared errors, e_i^2 / sum_j e_j^2, is at
least `min(0.5, 2 / layers)` (twice the mean share), at most `MOST` of them, never all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from . import export, pinned
from .calib import CalibrationSource
from .capture import Runtime, session
from .layers import Layer
from .solve import HostSolution
from .verify import evaluate

MOST = 3  # layers suggested for --exclude at most
CHUNK_BYTES = 256 << 20  # serialized candidate models evaluated together


@dataclass(frozen=True)
class LayerSensitivity:
    layer: str  # the layer's node name(s), as in the report's layer table
    nodes: tuple[str, ...]  # the node labels --exclude matches
    error: float  # relative output error, only this layer compressed (largest output)
    rel_error: dict[str, float] = field(default_factory=dict)  # per model output
    top1_agreement: float | None = None
    share: float = 0.0  # error^2 / sum of every layer's error^2

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "nodes": list(self.nodes)}


def measure_sensitivity(proto: onnx.ModelProto, layers: list[Layer],
                        solutions: Mapping[str, HostSolution], data: CalibrationSource,
                        batch: int, runtime: Runtime, *, act_values: dict[str, Any] | None = None,
                        target: str = "tensorrt", target_options: Mapping[str, Any] | None = None,
                        token_mask: str | None = None) -> list[LayerSensitivity]:
    """One LayerSensitivity per layer of `layers` that has a solution, worst first (outputs
    on the token positions of `token_mask`'s input where given: verify.evaluate)."""
    todo = [L for L in layers if L.weight in solutions]
    if not todo:
        return []
    dense = session(proto, runtime, optimize=True)
    per_chunk = max(1, min(8, CHUNK_BYTES // max(1, proto.ByteSize())))
    measured: list[tuple[Layer, Any]] = []
    for i in range(0, len(todo), per_chunk):
        chunk = todo[i:i + per_chunk]
        sessions = {"dense": dense}
        for k, L in enumerate(chunk):
            model = export.build(proto, [L], {L.weight: solutions[L.weight]},
                                 act_scales=act_values, target=target,
                                 target_options=target_options)
            sessions[f"#{k}"] = session(model, runtime, optimize=True)
        fid = evaluate(sessions, data, batch, token_mask=token_mask)
        measured += [(L, fid[f"#{k}"]) for k, L in enumerate(chunk)]
    total = sum(max(f.rel_error.values(), default=0.0) ** 2 for _, f in measured) or 1.0
    ranked = [LayerSensitivity(L.name, tuple(u.node for u in L.uses),
                               max(f.rel_error.values(), default=0.0), dict(f.rel_error),
                               f.top1_agreement,
                               max(f.rel_error.values(), default=0.0) ** 2 / total)
              for L, f in measured]
    return sorted(ranked, key=lambda s: -s.error)


def suggest_exclude(ranked: list[LayerSensitivity]) -> list[LayerSensitivity]:
    """The layers to exclude first: see the module docstring."""
    if len(ranked) < 2:
        return []
    least = min(0.5, 2.0 / len(ranked))
    return [s for s in ranked[:MOST] if s.share >= least][:len(ranked) - 1]


def exclude_flags(layers: list[LayerSensitivity]) -> str:
    """`--exclude 'node'` for every node of `layers` (pinned.exclude_flags)."""
    return pinned.exclude_flags(n for s in layers for n in s.nodes)


def summarize(ranked: list[LayerSensitivity], set_name: str, samples: int) -> dict[str, Any]:
    """The report's `sensitivity`: the data set, the ranking and the suggestion."""
    if not ranked:
        return {}
    first = suggest_exclude(ranked)
    return {"set": set_name, "samples": samples, "layers": [s.to_dict() for s in ranked],
            "exclude": [s.layer for s in first], "flags": exclude_flags(first)}
