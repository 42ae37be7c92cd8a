"""Write compressed weights back into the graph, in their original layout and storage.

Only the payload of each weight tensor changes (initializer or Constant node value, same
name, dtype and shape, exact zeros); no node, edge or attribute is touched. This is a value
edit, not a graph edit, so it is done on the proto directly: a graph-surgeon round trip could
reorder nodes or drop value_info, and "nothing else in the graph changes" is the contract.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ModelError
from .layers import Layer
from .modelio import needs_external


def apply_weights(model: onnx.ModelProto, layers: list[Layer],
                  weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Copy of `model` with weights[layer.weight] (ONNX layout) written in place."""
    out = copy.deepcopy(model)
    by_name = {layer.weight: layer for layer in layers if layer.weight in weights}
    targets: dict[str, onnx.TensorProto] = {}
    for init in out.graph.initializer:
        if init.name in by_name and by_name[init.name].storage == "initializer":
            targets[init.name] = init
    for node in out.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] in by_name:
            for a in node.attribute:
                if a.name == "value":
                    targets[node.output[0]] = a.t
    for name, layer in by_name.items():
        t = targets.get(name)
        if t is None:
            raise ModelError(f"internal: weight {name!r} not found while rewriting")
        new = np.asarray(weights[name]).astype(layer.dtype)
        if tuple(new.shape) != tuple(t.dims):
            raise ModelError(f"internal: weight {name!r} shape {new.shape} != {tuple(t.dims)}")
        _set_payload(t, new)
    check(out)
    return out


def _set_payload(t: onnx.TensorProto, value: np.ndarray) -> None:
    """Replace the data of `t` only (name, dims, dtype, doc_string and metadata stay)."""
    for f in ("float_data", "int32_data", "string_data", "int64_data", "double_data",
              "uint64_data", "external_data"):
        t.ClearField(f)
    t.ClearField("data_location")
    t.raw_data = numpy_helper.from_array(value).raw_data


def check(model: onnx.ModelProto) -> None:
    if needs_external(model):
        return  # checked from the saved file by the caller (protobuf cannot hold it in memory)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"the rewritten model fails onnx.checker: {exc}") from None
