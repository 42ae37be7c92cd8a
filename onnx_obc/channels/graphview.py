"""A model's graph as the channel patterns read it: nodes by label, each tensor's readers
and maker, constant shapes, small integer constants, inferred (data-propagated) shapes and
the sizes probe.py measured where inference leaves them unknown."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx
from onnx import numpy_helper, shape_inference

from ..layers import node_label
from .constants import constant_shapes
from .flat import row_positions


@dataclass
class _Graph:
    nodes: dict[str, onnx.NodeProto]  # label -> node
    users: dict[str, list[tuple[str, onnx.NodeProto]]]  # tensor -> (label, node) reading it
    inits: dict[str, tuple[int, ...]]  # constant (initializer or Constant node) -> shape
    outputs: set[str]
    shapes: dict[str, list[int | None]]
    makers: dict[str, tuple[str, onnx.NodeProto]] = field(default_factory=dict)  # tensor ->
    # (label, node) writing it
    values: dict[str, list[int]] = field(default_factory=dict)  # small int64/32 constants
    sizes: dict[str, list[int | None]] = field(default_factory=dict)  # probe.py

    def dims(self, tensor: str) -> list[int | None] | None:
        """Inferred shape, its unknown sizes (or all) filled by the probed ones."""
        inferred, probed = self.shapes.get(tensor), self.sizes.get(tensor)
        if probed is None or (inferred and len(inferred) != len(probed)):
            return inferred
        return [a if a else b for a, b in zip(inferred or probed, probed)]

    def spatial(self, tensor: str, conv: bool) -> int:
        """Positions per channel (conv: the spatial dims; linear: the token dims)."""
        dims = self.dims(tensor)
        if not dims:
            return 1
        if not conv and len(dims) == 2 and (rows := row_positions(self, tensor)) is not None:
            return rows  # a Gemm on flattened token rows (flat.py)
        inner = dims[2:] if conv else dims[1:-1]
        return math.prod(d if d else 1 for d in inner)


def graph_of(model: onnx.ModelProto, sizes: dict | None = None) -> _Graph:
    g = model.graph
    nodes, users, makers = {}, {}, {}
    for i, n in enumerate(g.node):
        label = node_label(n, i)
        nodes[label] = n
        for t in n.input:
            if t:
                users.setdefault(t, []).append((label, n))
        makers.update({o: (label, n) for o in n.output if o})
    small = [*((i.name, i) for i in g.initializer),
             *((n.output[0], a.t) for n in g.node if n.op_type == "Constant"
               for a in n.attribute if a.name == "value")]
    values = {k: [int(v) for v in numpy_helper.to_array(t).reshape(-1)] for k, t in small
              if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
              and math.prod(t.dims) <= 8}
    inits = {**{i.name: tuple(i.dims) for i in g.initializer}, **constant_shapes(g)}
    try:  # data_prop: sizes read with Shape -> Gather -> Concat (PyTorch exports) too
        inferred = shape_inference.infer_shapes(model, data_prop=True).graph
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        # shapes only size the FLOPs; without them every position counts 1
        inferred = g
    shapes = {}
    for v in [*inferred.value_info, *inferred.input, *inferred.output]:
        if not v.type.tensor_type.HasField("shape"):
            continue  # rank unknown (not a scalar)
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return _Graph(nodes, users, inits, {o.name for o in g.output}, shapes, makers, values,
                  sizes or {})
