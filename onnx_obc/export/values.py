"""Value edits: compressed weights and corrections written into existing tensors.

`apply_weights` changes only the payload of each weight tensor (initializer or Constant node
value, same name, dtype and shape, exact zeros); no node, edge or attribute is touched. This
is a value edit, not a graph edit, so it is done on the proto directly: a graph-surgeon round
trip could reorder nodes or drop value_info, and "nothing else in the graph changes" is the
contract. Corrections (correct.py measures them) fold the same way:

    shift d, scale a per output channel of a node's output y:   y <- a * y + d
    bias (its own input, initializer or Constant):  b <- a * b + d   (Gemm: d / beta)
    bias of the Add after a MatMul (constant vector):  c <- c + d   (never scaled)
    weight rows:  W_c <- a_c W_c;   DequantizeLinear scales:  s_c <- a_c s_c (codes stay)

A Conv / Gemm without a bias, or whose bias constant other nodes read too, gets a new bias
input, and the Add after a MatMul whose vector other nodes read too (a layer applied twice,
ALBERT) a new vector; that is a graph edit, done through graph-surgeon (graph.set_inputs).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelError
from ..layers import Layer, constant_weights, node_label
from .graph import check, set_inputs
from .qweights import QuantizedWeight


@dataclass(frozen=True)
class ChannelFix:
    """The correction of one node's output per channel: y <- scale * y + shift."""

    shift: np.ndarray  # [M] float64
    scale: np.ndarray | None = None  # [M] float64; None: 1 (the mean correction)


@dataclass(frozen=True)
class BiasSite:
    """Where a node's correction folds in."""

    node: int  # index of the layer node in graph.node
    output: str  # the node output the correction applies to (what is measured)
    bias: str | None  # the constant tensor edited in place; None: a new bias input
    via_add: bool = False  # the bias is the following Add's vector (after the output)
    beta: float = 1.0  # Gemm's beta (the bias is scaled by it)
    source: str | None = None  # a new bias starts from this (shared) constant's value
    add_input: tuple[int, int] | None = None  # via_add, shared: (the Add's index, its input)


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
        set_payload(t, new)
    check(out)
    return out


def set_payload(t: onnx.TensorProto, value: np.ndarray) -> None:
    """Replace the data of `t` only (name, dtype, doc_string and metadata stay; dims follow
    `value`, which differs only for a broadcast bias)."""
    for f in ("float_data", "int32_data", "string_data", "int64_data", "double_data",
              "uint64_data", "external_data"):
        t.ClearField(f)
    t.ClearField("data_location")
    if tuple(t.dims) != value.shape:
        del t.dims[:]
        t.dims.extend(value.shape)
    t.raw_data = numpy_helper.from_array(value).raw_data


def bias_targets(model: onnx.ModelProto, layers: list[Layer]
                 ) -> tuple[dict[str, BiasSite], list[str]]:
    """node label -> where its correction folds in; and the reasons for nodes left alone."""
    g = model.graph
    by_label = {node_label(n, i): (i, n) for i, n in enumerate(g.node)}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(g.node):
        for x in n.input:
            consumers.setdefault(x, []).append(i)
    consts = constant_weights(g)
    sites, skipped = {}, []
    for u in (u for L in layers for u in L.uses):
        i, node = by_label[u.node]
        out = node.output[0]
        if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
            b = node.input[2] if len(node.input) > 2 else ""
            beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0)
            if b and b not in consts:
                skipped.append(f"{u.node}: its bias {b!r} is not a constant (computed at run "
                               "time or a graph input), so the correction cannot fold into it")
            elif b and len(consumers[b]) > 1:  # shared: this node gets its own copy
                sites[u.node] = BiasSite(i, out, None, beta=beta, source=b)
            else:
                sites[u.node] = BiasSite(i, out, b or None, beta=beta)
            continue
        users = consumers.get(out, [])
        add = g.node[users[0]] if len(users) == 1 else None
        if add is not None and add.op_type == "Add":
            other = [x for x in add.input if x != out]
            t = consts.get(other[0]) if len(other) == 1 else None
            if t is not None and len(t[1].dims) == 1:
                own = len(consumers[other[0]]) == 1  # else this Add gets its own copy
                sites[u.node] = BiasSite(i, out, other[0] if own else None, via_add=True,
                                         source=None if own else other[0],
                                         add_input=None if own else (
                                             users[0], list(add.input).index(other[0])))
                continue
        skipped.append(f"{u.node}: no bias to fold the correction into (the MatMul output "
                       "is not consumed by a single Add with a constant vector)")
    return sites, skipped


def _corrected(b: np.ndarray, fix: ChannelFix, site: BiasSite) -> np.ndarray:
    """a * b + d (the Add's vector: b + d), in float64."""
    d, a = fix.shift, None if site.via_add else fix.scale
    if not site.via_add:
        d = d / (site.beta or 1.0)
    if b.size == d.size:
        d, a = d.reshape(b.shape), None if a is None else a.reshape(b.shape)
    return (b if a is None else a * b) + d


def fold_biases(model: onnx.ModelProto, layers: list[Layer],
                fixes: dict[str, ChannelFix]) -> onnx.ModelProto:
    """Copy of `model` with each node's shift (and scale) folded into its bias (node label ->
    fix); a bias input is added where there is none (or where it is shared)."""
    out = copy.deepcopy(model)
    sites, _ = bias_targets(out, layers)
    consts = constant_weights(out.graph)
    added: dict[int, tuple[int, str, np.ndarray]] = {}
    for label, fix in fixes.items():
        site = sites.get(label)
        if site is None:
            raise ModelError(f"internal: node {label!r} has no bias to fold its correction into")
        if site.bias is not None:
            t = consts[site.bias][1]
            dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
            set_payload(t, _corrected(numpy_helper.to_array(t).astype(np.float64), fix,
                                      site).astype(dtype))
            continue
        dtype = _layer_of(layers, label).dtype
        b = (numpy_helper.to_array(consts[site.source][1]).astype(np.float64)
             if site.source else np.zeros(fix.shift.shape))
        name = f"{label}_bias_correction".replace("<", "").replace(">", "").replace(
            " ", "_").replace("#", "")
        where = site.add_input or (site.node, 2)
        added[where[0]] = (where[1], name, _corrected(b, fix, site).astype(dtype))
    check(out)
    return set_inputs(out, added)


def _layer_of(layers: list[Layer], label: str) -> Layer:
    return next(L for L in layers if any(u.node == label for u in L.uses))


def channel_scales(layers: list[Layer], fixes: dict[str, ChannelFix]) -> dict[str, np.ndarray]:
    """weight -> per-output-channel scale a [M] (ModelError for a weight read by several
    nodes: one factor per use cannot fold into one weight)."""
    out = {}
    for L in layers:
        for u in L.uses:
            fix = fixes.get(u.node)
            if fix is None or fix.scale is None:
                continue
            if len(L.uses) > 1:
                raise ModelError(f"internal: weight {L.weight!r} is read by {len(L.uses)} nodes "
                                 "and cannot take one node's output scale")
            out[L.weight] = fix.scale
    return out


def scale_rows(layers: list[Layer], weights: dict[str, np.ndarray],
               scales: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`weights` with the rows (output channels) of those in `scales` multiplied by a, on the
    values as stored (layer dtype)."""
    out = dict(weights)
    for L in layers:
        a = scales.get(L.weight)
        if a is None:
            continue
        W = L.to_matrix(np.asarray(weights[L.weight]).astype(L.dtype)).astype(np.float64)
        G, r, d = W.shape
        out[L.weight] = L.from_matrix((W.reshape(G * r, d) * a[:, None]).reshape(G, r, d))
    return out


def scale_codes(q: QuantizedWeight, L: Layer, a: np.ndarray) -> QuantizedWeight:
    """`q` with the per-output-channel scale a folded into its DQ scales (codes stay)."""
    axis = 1 if L.layout == "cols" else 0  # the output-channel axis
    shape = [1] * q.scale.ndim
    shape[0 if q.block_size is None else axis] = -1
    return dataclasses.replace(q, scale=(q.scale * a.reshape(shape)).astype(np.float32))
