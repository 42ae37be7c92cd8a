"""The TensorRT target: explicit quantization as TensorRT reads it.

Weights: integer codes behind DequantizeLinear (qweights.quantize_weights), zeros exact.
Activations: a per-tensor symmetric Q/DQ pair on the input of every quantized layer (with
pruning alone: every compressed layer), and on the residual input of each Add fed by such a
layer, so TensorRT can fuse Conv + Add in int8:

    x --QuantizeLinear--> x_quantized --DequantizeLinear--> x_dequantized

(zero point 0; INT8 at opset 13, INT4 at opset 21) and only the chosen consumers read
`x_dequantized`; graph outputs stay unquantized. Only float32 activations are handled.

onnxruntime (checked with 1.31, CPU) drops a Relu before QuantizeLinear(INT4) at
ORT_ENABLE_EXTENDED (wrong results with 4-bit activations; use ORT_ENABLE_BASIC there).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import ConfigError, ModelError
from ..layers import Layer, node_label
from ..specs import LAYER_OPS
from .graph import (DEFAULT_DOMAINS, constant, ensure_opset, export_graph, fresh, model_opset,
                    rewire)
from .qweights import QuantizedWeight, quantize_weights

NAME = "tensorrt"


def act_tensors(proto: onnx.ModelProto, layers: list[Layer]) -> list[str]:
    """Tensors that need ranges: the inputs of the layers, and their residual Add inputs."""
    names = list(dict.fromkeys(u.input for L in layers for u in L.uses))
    return names + [n for n in residual_add_inputs(proto, names) if n not in names]


def deploy(model: onnx.ModelProto, layers: list[Layer], solved: set[str],
           qweights: dict[str, QuantizedWeight], act_scales: dict[str, float] | None,
           act_bits: int = 8) -> onnx.ModelProto:
    """`model` (compressed float weights in place) as TensorRT runs it: `qweights` behind
    DequantizeLinear; with `act_scales` (tensor -> scale) the activation Q/DQ pairs on the
    inputs of the quantized layers (every solved layer when nothing is quantized) and on
    their residual Add inputs."""
    if qweights:
        model = quantize_weights(model, layers, qweights)
    if act_scales is None:
        return model
    placed = [L for L in layers if L.weight in solved and (not qweights or L.weight in qweights)]
    consumers = _consumers(model, placed)
    scales = {n: act_scales[n] for n in consumers if n in act_scales}
    return quantize_activations(model, scales, bits=act_bits,
                                consumers={n: consumers[n] for n in scales})


def _consumers(model: onnx.ModelProto, layers: list[Layer]) -> dict[str, list[str]]:
    """tensor -> the node labels that read its Q/DQ copy: the layers, the residual Adds."""
    layer_inputs = list(dict.fromkeys(u.input for L in layers for u in L.uses))
    consumers: dict[str, list[str]] = {n: [] for n in layer_inputs}
    for L in layers:
        for u in L.uses:
            consumers[u.input].append(u.node)
    for n, adds in residual_add_inputs(model, layer_inputs).items():
        consumers.setdefault(n, []).extend(adds)
    return consumers


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
        if users:  # none when only a graph output reads it
            _add_pair(graph, tensors, x, s, zp_dtype, users)
    return export_graph(graph, model, opset)


def _add_pair(graph: gs.Graph, tensors: dict[str, gs.Tensor], x: gs.Variable, s: float,
              zp_dtype: np.dtype, users: list[gs.Node]) -> None:
    """x -> QuantizeLinear -> DequantizeLinear -> x_dequantized, read by `users`."""
    name = x.name
    fresh(tensors, *(f"{name}_{k}" for k in ("quantized", "dequantized", "scale", "zero_point")))
    q = gs.Variable(f"{name}_quantized", dtype=zp_dtype, shape=x.shape)
    dq = gs.Variable(f"{name}_dequantized", dtype=x.dtype, shape=x.shape)
    scale = constant(f"{name}_scale", np.array(s, dtype=np.float32))
    zero = constant(f"{name}_zero_point", np.zeros((), dtype=zp_dtype))
    graph.nodes.append(gs.Node("QuantizeLinear", f"{name}_QuantizeLinear",
                               inputs=[x, scale, zero], outputs=[q]))
    graph.nodes.append(gs.Node("DequantizeLinear", f"{name}_DequantizeLinear",
                               inputs=[q, scale, zero], outputs=[dq]))
    rewire(x, dq, users)


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
        if n.op_type in LAYER_OPS and n.domain in DEFAULT_DOMAINS and n.input
        and n.input[0] in quantized}
    found: dict[str, list[str]] = {}
    for i, node in enumerate(graph.node):
        if node.op_type != "Add" or node.domain not in DEFAULT_DOMAINS or len(node.input) != 2:
            continue
        a, b = node.input
        other = b if a in produced_by_layer else a if b in produced_by_layer else ""
        if other and other not in quantized and other not in constants:
            found.setdefault(other, []).append(node_label(node, i))
    return found
