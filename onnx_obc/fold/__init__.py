"""The fold stage (load -> fold -> select): float-exact rewrites that decide how fast the
compressed model runs, done before the layers are selected, so the solvers see (and quantize)
the weights the deployed model multiplies by.

- after a layer: Conv / Gemm / MatMul -> any chain of BatchNormalization (Conv, Gemm) and
  Mul / Add / Sub / Div by a constant acting per output channel (also a constant Reshaped to
  a constant shape, paddle2onnx's bias Add), each intermediate read only by the next,
  becomes the layer's weight and bias (MatMul, which has no bias: scales only);
- before Conv layers: a chain of Mul / Add / Sub / Div by a per-input-channel constant whose
  result only Convs read: the scale goes into their weights; the shift into their biases when
  they pad nothing, else it stays as one Add (of shift / scale) in front of them;
- an Identity of a constant (PyTorch's form of a weight used twice) read through: the
  layers reading it become one layer with several uses (identity.py);
- a swap of the last two axes written as Reshape -> Transpose -> Reshape (torch's dynamo
  export of kᵀ) as one Transpose (swaplast.py);
- a MatMul of a 2-D input and the Add of its bias vector become one Gemm (gemm.py);
- shape arithmetic over static sizes (TensorFlow-style "same" pads computed from Shape at
  run time under a free batch size) becomes constants (shapes.py);
- hardswish written out, x * Clip(x + 3, 0, 6) / 6 (paddle2onnx, older PyTorch exports),
  becomes x * HardSigmoid(x) (alpha 1/6, beta 1/2), and Clip(x + 3, 0, 6) / 6 HardSigmoid(x);
  then every x * HardSigmoid(x) one HardSwish(x), the model raised to opset 14 where it is
  older (onnx's version converter; where that fails, the pairs stay, and the summary says so).

Why: onnxruntime folds such nodes into a float Conv itself, but not once the weight is behind
a DequantizeLinear, so in a W8A8 model each one runs in float between the integer kernels
(PP-OCRv4's recognizer: 70% of its W8A8 time). docs/deployment.md has the measurements.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx
import onnx_graphsurgeon as gs

from ..capture import subgraph_reads
from ..errors import ModelError
from ..export.graph import ensure_opset, export_graph, model_opset
from ..layers import overridable
from .after import fold_after
from .before import fold_before
from .common import weight
from .gemm import as_gemm, candidates
from .identity import read_through_identities
from .swaplast import swap_last_two
from .hardswish import HARDSWISH_OPSET, as_hardswish, hardswish, hardswish_pairs
from .shapes import inferred_dims, ranks, static_shapes


@dataclass
class Folded:
    """What the fold changed: op -> count folded into the layer before / the layers after
    them, the shifts kept as an Add, and hardswish / hardsigmoid rewrites."""

    after: Counter = field(default_factory=Counter)
    before: Counter = field(default_factory=Counter)
    kept_adds: int = 0
    hardswish: int = 0
    hardsigmoid: int = 0
    hardswish_ops: int = 0  # x * HardSigmoid(x) pairs written as one HardSwish
    shapes: int = 0  # shape-arithmetic results made constants (shapes.py)
    gemm: int = 0  # 2-D MatMul + bias Add pairs as one Gemm (gemm.py)
    identities: int = 0  # Identity of a constant read through (identity.py)
    swaps: int = 0  # Reshape -> Transpose -> Reshape swaps of the last two axes (swaplast.py)
    opset: str = ""  # "13 -> 14" where HardSwish raised it; why not, where it could not

    @property
    def changed(self) -> bool:
        return bool(self.after or self.before or self.hardswish or self.hardsigmoid
                    or self.hardswish_ops or self.shapes or self.gemm or self.identities
                    or self.swaps)

    def summary(self) -> str:
        """One line for the report ('' when nothing changed)."""
        parts = [f"{self.shapes} shape computations over static sizes as constants"] if (
            self.shapes) else []
        parts += [f"{self.identities} Identity of a constant read through (a shared "
                  "weight: one layer with several uses)"] if self.identities else []
        parts += [f"{self.swaps} Reshape -> Transpose -> Reshape swaps of the last two axes "
                  "as one Transpose"] if self.swaps else []
        parts += [f"{self.gemm} MatMul + bias Add as Gemm"] if self.gemm else []
        for what, c in (("into the layer before them", self.after),
                        ("into the layers after them", self.before)):
            if c:
                ops = ", ".join(f"{op} {k}" for op, k in sorted(c.items()))
                n = sum(c.values())
                parts.append(f"{n} op{'s' * (n != 1)} {what} ({ops})")
        if self.kept_adds:
            parts.append(f"{self.kept_adds} shifts kept as an Add (the Conv pads)")
        if self.hardswish or self.hardsigmoid:
            parts.append(f"{self.hardswish} written-out hardswish as x * HardSigmoid(x), "
                         f"{self.hardsigmoid} written-out hardsigmoid as HardSigmoid")
        if self.hardswish_ops or self.opset:
            parts.append(f"{self.hardswish_ops} x * HardSigmoid(x) as HardSwish"
                         + (f" (opset {self.opset})" if self.opset else ""))
        return "folded (float-exact, --no-fold keeps the graph): " + "; ".join(parts) \
            if parts else ""

    def to_dict(self) -> dict:
        return {"after": dict(self.after), "before": dict(self.before),
                "kept_adds": self.kept_adds, "hardswish": self.hardswish,
                "hardsigmoid": self.hardsigmoid, "hardswish_ops": self.hardswish_ops,
                "opset": self.opset, "shapes": self.shapes, "gemm": self.gemm,
                "identities": self.identities, "swaps": self.swaps,
                "summary": self.summary()}


def fold(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Folded]:
    """(the folded copy of `model`, what changed); `model` itself when nothing applies."""
    graph = gs.import_onnx(model)
    done = Folded()
    outputs = {t.name for t in graph.outputs}
    fixed = overridable(model) | {t.name for t in graph.inputs}  # a caller may feed them
    done.shapes = static_shapes(model, graph)
    inner = {n for node in model.graph.node for n in subgraph_reads(node)}
    done.identities = read_through_identities(graph, outputs, fixed, inner)
    if any(n.op == "Transpose" and list(n.attrs.get("perm", [])) == [0, 2, 1]
           for n in graph.nodes):  # (the shape inference only where one may be)
        done.swaps = swap_last_two(graph, inferred_dims(model), outputs)
    heads = candidates(graph, outputs, fixed)
    done.gemm = as_gemm(heads, ranks(model)) if heads else 0
    for node in list(graph.nodes):  # first: x + 3 is no affine op to fold
        kind = hardswish(graph, node, outputs, fixed) if node.op == "Add" else None
        done.hardswish += kind == "hardswish"
        done.hardsigmoid += kind == "hardsigmoid"
    for node in list(graph.nodes):
        if (node.op in ("Conv", "Gemm", "MatMul", "ConvTranspose") and node.outputs
                and weight(node, fixed) is not None):
            done.after.update(fold_after(node, outputs, fixed))
    seen: set[str] = set()
    for node in list(graph.nodes):
        if node.op == "Conv" and node.outputs and node.inputs[0].name not in seen:
            seen.add(node.inputs[0].name)
            ops, kept = fold_before(graph, node.inputs[0], outputs, fixed)
            done.before.update(ops)
            done.kept_adds += kept
    out = export_graph(graph, model, model_opset(model)) if done.changed else model
    return _hardswish_ops(out, done), done


def _hardswish_ops(model: onnx.ModelProto, done: Folded) -> onnx.ModelProto:
    """`model` with its x * HardSigmoid(x) pairs as HardSwish, at opset >= 14."""
    if not any(n.op_type == "HardSigmoid" for n in model.graph.node):
        return model
    graph = gs.import_onnx(model)
    outputs = {t.name for t in graph.outputs}
    if not hardswish_pairs(graph, outputs):
        return model
    old = model_opset(model)
    try:
        raised = ensure_opset(model, HARDSWISH_OPSET, "HardSwish needs opset 14")
    except ModelError as exc:
        done.opset = f"{old}, kept: not raised to {HARDSWISH_OPSET}, {exc}"[:200]
        return model
    graph = gs.import_onnx(raised)
    pairs = hardswish_pairs(graph, outputs)
    as_hardswish(graph, pairs)
    done.hardswish_ops = len(pairs)
    done.opset = f"{old} -> {model_opset(raised)}" if model_opset(raised) != old else ""
    return export_graph(graph, raised, model_opset(raised))
