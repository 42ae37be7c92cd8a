"""Deployable QDQ output, activations: Q/DQ pairs and the residual Add inputs to requantize.

An activation `x` gets `x --QuantizeLinear--> x_quantized --DequantizeLinear-->
x_dequantized` (per-tensor, symmetric, zero point 0; INT8 at opset 13, INT4 at opset 21)
and only the chosen consumers read `x_dequantized`; graph outputs stay unquantized. Only
float32 activations are handled. The opset raise and graph-edit helpers are qdq.py's.

onnxruntime (checked with 1.31, CPU) drops a Relu before QuantizeLinear(INT4) at
ORT_ENABLE_EXTENDED (wrong results with 4-bit activations; use ORT_ENABLE_BASIC there).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .errors import ConfigError, ModelError
from .layers import node_label
from .qdq import _DEFAULT_DOMAINS, _constant, _export, _fresh, _rewire, ensure_opset, model_opset

LAYER_OPS = ("Conv", "Gemm", "MatMul")


def quantize_activations(model: onnx.ModelProto, scales: dict[str, float], bits: int = 8,
                         consumers: dict[str, list[str]] | None = None) -> onnx.ModelProto:
    """Copy of `model` with a per-tensor symmetric QuantizeLinear -> DequantizeLinear pair on
    each activation in `scales` (zero point 0; INT8, or INT4 at opset 21 for bits=4).

    Only the nodes named in consumers[x] (node names, or "<Op #i>" labels of unnamed nodes)
    read the dequantized tensor; a tensor missing from `consumers` (or consumers=None) is
    rewired for all its top-level consumers. A graph output keeps its unquantized value.
    `model` itself is returned when `scales` is empty.
    """
    if bits not in (4, 8):
        raise ConfigError(f"activation bits={bits}: only 8 (INT8) and 4 (INT4) are supported")
    if not scales:
        return model
    needed = 13 if bits == 8 else 21
    why = ("QuantizeLinear/DequantizeLinear need opset 13" if bits == 8
           else "4-bit activations are stored as INT4, which needs opset 21")
    model = ensure_opset(model, needed, why)
    opset = model_opset(model)
    labels = [node_label(n, i) for i, n in enumerate(model.graph.node)]
    graph = gs.import_onnx(model)
    label_of = {id(node): labels[i] for i, node in enumerate(graph.nodes)}
    tensors = graph.tensors()
    zp_dtype = np.dtype(np.int8 if bits == 8 else ml_dtypes.int4)
    for name, s in scales.items():
        x = tensors.get(name)
        if x is None or isinstance(x, gs.Constant):
            raise ModelError(f"activation {name!r} is not a variable tensor of the graph")
        if x.dtype is not None and np.dtype(x.dtype) != np.float32:
            raise ModelError(f"activation {name!r} has dtype {np.dtype(x.dtype)}; only float32 "
                             "activations are quantized")
        if not (np.isfinite(s) and s > 0):
            raise ModelError(f"activation {name!r}: scale {s} must be positive and finite")
        wanted = None if consumers is None else consumers.get(name)
        users = [n for n in x.outputs if wanted is None or label_of.get(id(n)) in wanted]
        if wanted is not None:
            missing = set(wanted) - {label_of.get(id(n)) for n in x.outputs}
            if missing:
                raise ModelError(f"activation {name!r} is not read by node(s) {sorted(missing)}")
        if not users:  # e.g. only a graph output
            continue
        _fresh(tensors, *(f"{name}_{k}" for k in ("quantized", "dequantized", "scale",
                                                   "zero_point")))
        q = gs.Variable(f"{name}_quantized", dtype=zp_dtype, shape=x.shape)
        dq = gs.Variable(f"{name}_dequantized", dtype=x.dtype, shape=x.shape)
        scale = _constant(f"{name}_scale", np.array(s, dtype=np.float32))
        zero = _constant(f"{name}_zero_point", np.zeros((), dtype=zp_dtype))
        graph.nodes.append(gs.Node("QuantizeLinear", f"{name}_QuantizeLinear",
                                   inputs=[x, scale, zero], outputs=[q]))
        graph.nodes.append(gs.Node("DequantizeLinear", f"{name}_DequantizeLinear",
                                   inputs=[q, scale, zero], outputs=[dq]))
        _rewire(x, dq, users)
    return _export(graph, model, opset)


def residual_add_inputs(model: onnx.ModelProto,
                        layer_input_names: set[str] | list[str]) -> dict[str, list[str]]:
    """Residual inputs of Adds fed by a quantized layer: {tensor: [Add node labels]}.

    A Conv/Gemm/MatMul counts as quantized when its activation input (input 0) is in
    `layer_input_names`. For an Add with one input produced directly by such a node, the
    other input (if it is not a constant and not already in `layer_input_names`) is returned
    with that Add as its only consumer to requantize: TensorRT fuses Conv+Add when the
    residual input also carries Q/DQ. When both Add inputs come from quantized layers the
    second input is the residual.
    """
    quantized = set(layer_input_names)
    graph = model.graph
    constants = {t.name for t in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output}
    produced_by_layer = {
        n.output[0] for n in graph.node
        if n.op_type in LAYER_OPS and n.domain in _DEFAULT_DOMAINS and n.input
        and n.input[0] in quantized}
    found: dict[str, list[str]] = {}
    for i, node in enumerate(graph.node):
        if node.op_type != "Add" or node.domain not in _DEFAULT_DOMAINS or len(node.input) != 2:
            continue
        a, b = node.input
        other = b if a in produced_by_layer else a if b in produced_by_layer else ""
        if other and other not in quantized and other not in constants:
            found.setdefault(other, []).append(node_label(node, i))
    return found
