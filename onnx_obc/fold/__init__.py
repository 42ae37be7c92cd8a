"""The fold stage (load -> fold -> select): float-exact rewrites that decide how fast the
compressed model runs, done before the layers are selected, so the solvers see (and quantize)
the weights the deployed model multiplies by.

- after a layer: Conv / Gemm / MatMul -> any chain of BatchNormalization (Conv, Gemm) and
  Mul / Add / Sub / Div by a constant acting per output channel, each intermediate read only by
  the next, becomes the layer's weight and bias (MatMul, which has no bias: scales only);
- before Conv layers: a chain of Mul / Add / Sub / Div by a per-input-channel constant whose
  result only Convs read: the scale goes into their weights; the shift into their biases when
  they pad nothing, else it stays as one Add (of shift / scale) in front of them;
- hardswish written out, x * Clip(x + 3, 0, 6) / 6 (paddle2onnx, older PyTorch exports),
  becomes x * HardSigmoid(x) (alpha 1/6, beta 1/2), and Clip(x + 3, 0, 6) / 6 HardSigmoid(x).

Why: onnxruntime folds such nodes into a float Conv itself, but not once the weight is behind
a DequantizeLinear, so in a W8A8 model each one runs in float between the integer kernels
(PP-OCRv4's recognizer: 70% of its W8A8 time). README "Deployment" has the measurements.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx
import onnx_graphsurgeon as gs

from ..export.graph import export_graph, model_opset
from ..layers import overridable
from .after import fold_after
from .before import fold_before
from .hardswish import hardswish
from .common import weight


@dataclass
class Folded:
    """What the fold changed: op -> count folded into the layer before / the layers after
    them, the shifts kept as an Add, and hardswish / hardsigmoid rewrites."""

    after: Counter = field(default_factory=Counter)
    before: Counter = field(default_factory=Counter)
    kept_adds: int = 0
    hardswish: int = 0
    hardsigmoid: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.after or self.before or self.hardswish or self.hardsigmoid)

    def summary(self) -> str:
        """One line for the report ('' when nothing changed)."""
        parts = []
        for what, c in (("into the layer before them", self.after),
                        ("into the layers after them", self.before)):
            if c:
                ops = ", ".join(f"{op} {k}" for op, k in sorted(c.items()))
                n = sum(c.values())
                parts.append(f"{n} op{'s' * (n != 1)} {what} ({ops})")
        if self.kept_adds:
            parts.append(f"{self.kept_adds} shifts kept as an Add (the Conv pads)")
        if self.hardswish or self.hardsigmoid:
            parts.append(f"{self.hardswish} hardswish as x * HardSigmoid(x), "
                         f"{self.hardsigmoid} written-out hardsigmoid as HardSigmoid")
        return "folded (float-exact, --no-fold keeps the graph): " + "; ".join(parts) \
            if parts else ""

    def to_dict(self) -> dict:
        return {"after": dict(self.after), "before": dict(self.before),
                "kept_adds": self.kept_adds, "hardswish": self.hardswish,
                "hardsigmoid": self.hardsigmoid, "summary": self.summary()}


def fold(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Folded]:
    """(the folded copy of `model`, what changed); `model` itself when nothing applies."""
    graph = gs.import_onnx(model)
    done = Folded()
    outputs = {t.name for t in graph.outputs}
    fixed = overridable(model) | {t.name for t in graph.inputs}  # a caller may feed them
    for node in list(graph.nodes):  # first: x + 3 is no affine op to fold
        kind = hardswish(graph, node, outputs, fixed) if node.op == "Add" else None
        done.hardswish += kind == "hardswish"
        done.hardsigmoid += kind == "hardsigmoid"
    for node in list(graph.nodes):
        if (node.op in ("Conv", "Gemm", "MatMul") and node.outputs
                and weight(node, fixed) is not None):
            done.after.update(fold_after(node, outputs, fixed))
    seen: set[str] = set()
    for node in list(graph.nodes):
        if node.op == "Conv" and node.outputs and node.inputs[0].name not in seen:
            seen.add(node.inputs[0].name)
            ops, kept = fold_before(graph, node.inputs[0], outputs, fixed)
            done.before.update(ops)
            done.kept_adds += kept
    if not done.changed:
        return model, done
    return export_graph(graph, model, model_opset(model)), done


