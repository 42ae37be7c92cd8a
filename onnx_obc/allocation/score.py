"""The "output" score: a level's error is the measured relative output error of the model
with only that layer compressed, on a few calibration samples (onnxruntime).

    score = OutputScore.measure(proto, data, batch, runtime)   # the dense outputs, once
    errs = score.errors(L, weights, act_scales)                 # one value per candidate

The dense model runs once per allocation; each candidate is the dense model with one
layer's weights written in place and, when the level is deployed with an int8 input, that
layer's input Q/DQ, built by the export package as the chosen target deploys it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from .. import export
from ..calib import CalibrationSource
from ..calib.tokens import positions
from ..capture import Runtime, session
from ..fidelity import scored_outputs
from ..layers import Layer
from ..solve import HostSolution, HostWeights

SAMPLES = 64  # calibration samples the output score runs on


@dataclass(frozen=True)
class OutputScore:
    """The dense model's outputs on `data`, and what scoring a candidate needs."""

    proto: onnx.ModelProto
    data: CalibrationSource
    batch: int
    runtime: Runtime
    reference: tuple[list[np.ndarray], ...]  # the dense model's float outputs, per batch
    energy: tuple[float, ...]  # per output, the sum of its squares (1 when 0)
    target: str = "tensorrt"  # the export target the candidates are deployed for
    token_mask: str | None = None  # per-token outputs scored on its tokens (calib/tokens.py)
    outputs: tuple[str, ...] | None = None  # the outputs scored (None: all): a KV cache aside

    @classmethod
    def measure(cls, proto: onnx.ModelProto, data: CalibrationSource, batch: int,
                runtime: Runtime, *, samples: int = SAMPLES, target: str = "tensorrt",
                token_mask: str | None = None) -> OutputScore:
        """Run the dense model once on the first `samples` samples of `data`."""
        data, outs = data.head(samples), tuple(scored_outputs(proto))
        dense = session(proto, runtime, optimize=True)
        ref = tuple(_floats(dense.run(outs and list(outs), feed), feed, token_mask)
                    for _, feed in data.batches(batch))
        energy = tuple(sum(float(np.square(ys[k]).sum()) for ys in ref) or 1.0
                       for k in range(len(ref[0]) if ref else 0))
        return cls(proto, data, batch, runtime, ref, energy, target, token_mask, outs)

    def candidate(self, L: Layer, W: np.ndarray, act_scale: Any = None
                  ) -> onnx.ModelProto:
        """The dense model with L's weights W [G, r, d] (host) in place and, with
        `act_scale` (the target's activation value: a scale for tensorrt), L's int8 input
        Q/DQ."""
        G, r, d = L.matrix_shape
        w = HostWeights(L.from_matrix(np.asarray(W).reshape(G, r, d)))
        scales = None if act_scale is None else {L.uses[0].input: act_scale}
        return export.build(self.proto, [L], {L.weight: HostSolution(w, w)},
                            act_scales=scales, target=self.target)

    def error(self, model: onnx.ModelProto) -> float:
        """Relative squared output error of `model` against the dense reference, the mean
        over its float outputs (Basic Pitch: contour, note and onset maps; the first alone
        let a level trade the note map's error for the contour's), a decoder's KV cache
        aside (fidelity.scored_outputs)."""
        sess = session(model, self.runtime, optimize=True)
        e = np.zeros(len(self.energy))
        for (_, feed), ref in zip(self.data.batches(self.batch), self.reference):
            ys = _floats(sess.run(self.outputs and list(self.outputs), feed), feed,
                         self.token_mask)
            e += [float(np.square(y - r).sum()) for y, r in zip(ys, ref)]
        return float(np.mean(e / np.asarray(self.energy))) if len(e) else 0.0

    def errors(self, L: Layer, weights: Iterable[np.ndarray],
               act_scales: Iterable[Any] | None = None) -> tuple[float, ...]:
        """One error per weight matrix [G, r, d] that `weights` yields; `act_scales` (one
        per matrix, None for none) puts L's int8 input Q/DQ in place too."""
        scales = iter(act_scales) if act_scales is not None else None
        errs = []
        for W in weights:
            a = next(scales) if scales is not None else None
            errs.append(self.error(self.candidate(L, W, a)))
        return tuple(errs)


def _floats(ys: list[np.ndarray], feed: dict[str, np.ndarray], mask: str | None
            ) -> list[np.ndarray]:
    """A run's float outputs, each on the feed's token positions (calib/tokens.positions)."""
    keep = np.asarray(feed[mask]) != 0 if mask is not None and mask in feed else None
    return [positions(y, keep) for y in ys  # not a sequence (of maps: skl2onnx's ZipMap)
            if isinstance(y, np.ndarray) and np.issubdtype(y.dtype, np.floating)]
