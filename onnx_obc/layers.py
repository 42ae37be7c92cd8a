"""Find the compressible layers of an ONNX graph and map their weights to W [G, r, d].

A layer is a constant weight tensor (an initializer or the output of a Constant node) and
every node that uses it as its weight:
  Conv(X, W[M, C/g, *k])   -> G = group, W_g [M/G, C/g * prod(k)] (im2col column order)
  Gemm(A, B)               -> W = B (transB=1) or B^T (transB=0), rows = outputs
  MatMul(X, B[K, N])       -> W = B^T [N, K], X of any rank (leading axes flattened)
  ConvTranspose(X, W[C, M, *k]) -> W [M, C * prod(k)], the kernel flipped (deconv.py)
A weight used by several such nodes is compressed once with their merged Hessian. Every
Conv/Gemm/MatMul/ConvTranspose node that is not compressed is returned as `Skipped` with its
reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import deconv
from .errors import ModelError
from .skips import QUANTIZED, fed_by_inputs, not_constant_reason, selection_reason
from .specs import LAYER_OPS, Selection

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


@dataclass(frozen=True)
class Use:
    """One node that consumes a layer's weight."""

    node: str  # node label (name, or "<Op #i>" when unnamed)
    op: str
    input: str  # activation tensor
    kernel: tuple[int, ...] = ()  # Conv only
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()  # begins then ends
    auto_pad: str = "NOTSET"
    group: int = 1
    output_padding: tuple[int, ...] = ()  # ConvTranspose only
    trans_a: bool = False  # Gemm only
    alpha: float = 1.0


@dataclass(frozen=True)
class Layer:
    weight: str  # tensor name
    storage: str  # "initializer" or "constant"
    shape: tuple[int, ...]
    dtype: str
    op: str
    layout: str  # "conv", "rows" (stored [out, in]), "cols" (stored [in, out]) or "deconv"
    uses: tuple[Use, ...]
    groups: int = 1

    @property
    def name(self) -> str:
        return ", ".join(u.node for u in self.uses)

    @property
    def matrix_shape(self) -> tuple[int, int, int]:
        """(G, r, d) of the W view."""
        if self.layout == "conv":
            G = self.groups
            return G, self.shape[0] // G, math.prod(self.shape[1:])
        if self.layout == "deconv":
            return deconv.matrix_shape(self.shape)
        if self.layout == "rows":
            return 1, self.shape[0], self.shape[1]
        return 1, self.shape[1], self.shape[0]

    def to_matrix(self, w: np.ndarray) -> np.ndarray:
        """ONNX weight -> W [G, r, d]."""
        if self.layout == "deconv":
            return deconv.to_matrix(w)
        if self.layout == "cols":
            w = w.T
        return np.ascontiguousarray(w).reshape(self.matrix_shape)

    def from_matrix(self, m: np.ndarray) -> np.ndarray:
        """W [G, r, d] -> ONNX weight layout (inverse of to_matrix)."""
        G, r, d = self.matrix_shape
        if self.layout == "deconv":
            return deconv.from_matrix(m, self.shape)
        if self.layout == "cols":
            return np.ascontiguousarray(m.reshape(r, d).T)
        return m.reshape(self.shape)


@dataclass(frozen=True)
class Skipped:
    node: str
    op: str
    reason: str
    weight: str | None = None


@dataclass
class _Candidate:
    weight: str
    uses: list[Use] = field(default_factory=list)
    layouts: set[str] = field(default_factory=set)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (node, reason)


def node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"<{node.op_type} #{index}>"


def constant_weights(graph: onnx.GraphProto) -> dict[str, tuple[str, onnx.TensorProto]]:
    """tensor name -> (storage, TensorProto) for initializers and Constant(value=...).
    Initializers that are also graph inputs are included (constants before IR 4, defaults
    a caller may override from IR 4 on: see `overridable`)."""
    found: dict[str, tuple[str, onnx.TensorProto]] = {}
    for init in graph.initializer:
        found[init.name] = ("initializer", init)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    found[node.output[0]] = ("constant", attr.t)
    return found


def weight_matrix(weights: dict[str, tuple[str, onnx.TensorProto]], L: Layer) -> np.ndarray:
    """L's weight as W [G, r, d] float32 on the host; `weights` is constant_weights(graph)
    (built once per model, then one call per layer)."""
    return L.to_matrix(numpy_helper.to_array(weights[L.weight][1])).astype(np.float32)


def overridable(model: onnx.ModelProto) -> set[str]:
    """Initializers a caller may override by feeding the graph input of the same name: from
    IR 4 on (before, every weight is listed as an input and is a constant, as onnxruntime
    treats it)."""
    if model.ir_version < 4:
        return set()
    inits = {t.name for t in model.graph.initializer}
    return {i.name for i in model.graph.input if i.name in inits}


def _conv_use(node: onnx.NodeProto, label: str, wshape: tuple[int, ...]) -> Use:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    nd = len(wshape) - 2
    ap = attrs.get("auto_pad", b"NOTSET")
    return Use(
        node=label, op=node.op_type, input=node.input[0],
        output_padding=tuple(attrs.get("output_padding", ())),
        kernel=tuple(attrs.get("kernel_shape", wshape[2:])),
        strides=tuple(attrs.get("strides", [1] * nd)),
        dilations=tuple(attrs.get("dilations", [1] * nd)),
        pads=tuple(attrs.get("pads", [0] * (2 * nd))),
        auto_pad=ap.decode() if isinstance(ap, bytes) else str(ap),
        group=int(attrs.get("group", 1)),
    )


def _describe_use(node: onnx.NodeProto, label: str,
                  weights: dict[str, tuple[str, onnx.TensorProto]], wname: str
                  ) -> tuple[Use | None, str, str]:
    """(use, layout, "") or (None, "", reason)."""
    op = node.op_type
    storage_t = weights[wname][1]
    if storage_t.data_type not in FLOAT_TYPES:
        return None, "", f"weight {wname!r} has non-float type " \
            f"{onnx.TensorProto.DataType.Name(storage_t.data_type)}"
    shape = tuple(storage_t.dims)
    if op == "Conv":
        if len(shape) < 3:
            return None, "", f"Conv weight {wname!r} has rank {len(shape)}, expected >= 3"
        use = _conv_use(node, label, shape)
        if shape[0] % use.group:
            return None, "", f"Conv group {use.group} does not divide {shape[0]} outputs"
        return use, f"conv/{use.group}", ""
    if op == deconv.OP:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        why = f"{op} weight {wname!r} has rank {len(shape)}" if len(shape) < 3 else \
            deconv.refusal(attrs)
        return (None, "", why) if why else (_conv_use(node, label, shape), "deconv", "")
    if len(shape) != 2:
        return None, "", f"{op} weight {wname!r} has rank {len(shape)}; only 2-D weights are " \
            "compressed"
    if op == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        use = Use(node=label, op=op, input=node.input[0], trans_a=bool(attrs.get("transA", 0)),
                  alpha=float(attrs.get("alpha", 1.0)))
        return use, "rows" if attrs.get("transB", 0) else "cols", ""
    return Use(node=label, op=op, input=node.input[0]), "cols", ""


def find_layers(model: onnx.ModelProto, select: Selection | None = None
                ) -> tuple[list[Layer], list[Skipped]]:
    """Compressible layers (one per weight) and every skipped layer op with a reason."""
    select = select or Selection()
    graph = model.graph
    fed = overridable(model)  # an initializer that is also an input can be overridden
    weights = {k: v for k, v in constant_weights(graph).items() if k not in fed}
    consumers: dict[str, list[tuple[str, str]]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append((node_label(node, i), node.op_type))
    graph_outputs = {o.name for o in graph.output}
    skipped: list[Skipped] = []
    for owner, sub in _subgraph_nodes(graph):  # outer-scope weights read inside If/Loop/Scan
        label = f"{sub.name or '<' + sub.op_type + '>'} (in a subgraph of {owner})"
        for name in sub.input:
            if name:
                consumers.setdefault(name, []).append((label, sub.op_type))
        if sub.op_type in LAYER_OPS:
            skipped.append(Skipped(label, sub.op_type, "inside a control-flow subgraph (Loop"
                                   "/Scan bodies are not compressed, nor If branches but the "
                                   "one the data takes of an If at the top)"))
    cands: dict[str, _Candidate] = {}
    fed: set[str] | None = None  # tensors computed from the data inputs
    for i, node in enumerate(graph.node):
        if node.op_type not in LAYER_OPS or node.domain not in ("", "ai.onnx"):
            continue
        label = node_label(node, i)
        reason = selection_reason(label, node.op_type, select)
        wname = node.input[1] if len(node.input) > 1 else ""
        if node.op_type == "MatMul" and wname not in weights and node.input[0] in weights:
            reason = reason or "constant is the first MatMul input (W @ X); only X @ W is handled"
        elif wname not in weights:
            fed = fed_by_inputs(graph) if fed is None else fed  # once, where needed
            reason = reason or not_constant_reason(graph, wname, fed)
        if reason and wname not in weights:
            skipped.append(Skipped(label, node.op_type, reason, wname or None))
            continue
        cand = cands.setdefault(wname, _Candidate(wname))
        use, layout, why = (None, "", reason) if reason else _describe_use(
            node, label, weights, wname)
        if use is None:
            cand.problems.append((label, why))
            cand.uses.append(Use(node=label, op=node.op_type, input=node.input[0]))
            continue
        cand.uses.append(use)
        cand.layouts.add(layout)
    layers: list[Layer] = []
    for wname, cand in cands.items():
        others = [f"{op} node {n}" for n, op in consumers.get(wname, [])
                  if n not in {u.node for u in cand.uses}]
        problem = ""
        if cand.problems:
            node, problem = cand.problems[0]
            if len(cand.uses) > 1:
                problem = f"{problem} [on {node}, which shares weight {wname!r}]"
        if not problem and others:
            problem = f"weight {wname!r} also feeds {', '.join(others)}, which would change too"
        if not problem and wname in graph_outputs:
            problem = f"weight {wname!r} is also a graph output"
        if not problem and len(cand.layouts) > 1:
            problem = f"weight {wname!r} is used with different layouts {sorted(cand.layouts)}"
        if problem:
            skipped.extend(Skipped(u.node, u.op, problem, wname) for u in cand.uses)
            continue
        storage, tensor = weights[wname]
        layout = next(iter(cand.layouts))
        groups = int(layout.split("/")[1]) if layout.startswith("conv") else 1
        layers.append(Layer(
            weight=wname, storage=storage, shape=tuple(tensor.dims),
            dtype=str(helper.tensor_dtype_to_np_dtype(tensor.data_type)),
            op=cand.uses[0].op, layout=layout.split("/")[0], uses=tuple(cand.uses),
            groups=groups,
        ))
    return layers, skipped


def select_layers(model: onnx.ModelProto, select: Selection | None = None
                  ) -> tuple[list[Layer], list[Skipped]]:
    """find_layers, refusing a model with nothing to compress (the reasons named)."""
    layers, skipped = find_layers(model, select)
    quantized = [s.node for s in skipped if s.reason.endswith(QUANTIZED)]
    if not layers and quantized:
        raise ModelError(f"the model is quantized already: the weights of {len(quantized)} "
                         f"layers ({', '.join(quantized[:3])}{', ...' * (len(quantized) > 3)}) "
                         "are DequantizeLinear of integer codes; onnx-obc compresses float "
                         "models: give it the float model this one was quantized from")
    if not layers:
        reasons = "; ".join(f"{s.node}: {s.reason}" for s in skipped[:3]) + (
            f"; {len(skipped) - 3} more" if len(skipped) > 3 else "") or "no " + "/".join(LAYER_OPS)
        raise ModelError(f"no compressible layer in the model ({reasons}). Check select.op_types"
                         ", select.include / select.exclude, or run `onnx-obc inspect` on it.")
    return layers, skipped


def _subgraph_nodes(graph: onnx.GraphProto):  # -> Iterator[(owner label, node)]
    for i, node in enumerate(graph.node):
        for a in node.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for sub in subs:
                for n in sub.node:
                    yield node_label(node, i), n
                yield from _subgraph_nodes(sub)
