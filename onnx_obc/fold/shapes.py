"""Shape arithmetic over static sizes, as constants.

TensorFlow-style "same" padding exported with a free batch size computes each Pad's pads at
run time: Shape(x) -> Gather(H) -> Sub / Div / Cast ... -> Concat -> Pad (EfficientNet-Lite0's
PyTorch port: 51 Shape, 51 Gather, 85 Sub, 136 Unsqueeze, 102 Cast... for 17 Pads). onnxruntime
folds none of it (the Shape's input has a symbolic batch), so the W8A8 model ran those small
ops on every inference: 17% of EfficientNet-Lite0's time after its convolutions went integer.

Where shape inference knows a Shape node's input dimensions except those named by a graph
input's batch axis, the arithmetic that reads only such Shape / Size outputs and constants
is evaluated (onnx's reference evaluator) for several batch sizes; each tensor it hands to
the rest of the graph that comes out the same for all of them becomes a constant (pads from
the static H and W do; a Reshape target [N, -1] does not, and stays). Exact: the same values
the graph computes, for every batch size the model accepts. Only where the graph inputs'
dimensions other than axis 0 are static (a free width, e.g. an OCR line, leaves it all).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

SHAPE_FOLD = True  # measured on EfficientNet-Lite0 (docs/deployment.md, static pads)
BATCHES = (1, 2, 3, 5, 64)  # the batch sizes a folded value must not depend on
MAX_ELEMENTS = 4096  # larger results (a ConstantOfShape of a feature map) stay computed
SKIP_OPS = {"If", "Loop", "Scan", "RandomNormal", "RandomUniform", "RandomNormalLike",
            "RandomUniformLike", "Multinomial", "Bernoulli"}


def static_shapes(model: onnx.ModelProto, graph: gs.Graph) -> int:
    """Make each batch-independent result of `model`'s shape arithmetic a constant in
    `graph` (`model` imported; the nodes that computed it are left unread, for the
    export's cleanup); returns how many tensors. Rounds until none is found: a Pad's
    constant pads let shape inference size its output, and so the next Pad's input."""
    if not SHAPE_FOLD or not any(n.op_type in ("Shape", "Size") for n in model.graph.node):
        return 0
    batch = _batch_symbols(model)
    if batch is None:
        return 0
    from ..capture import _shapes_only  # weights as typed inputs: no payload copied

    light = _shapes_only(model)
    values: dict[str, np.ndarray] = {}
    while True:
        found = _round(light, batch)
        if not found:
            break
        values.update(found)
        for name, v in found.items():  # the next round's shape inference sees them
            light.graph.initializer.append(numpy_helper.from_array(v, name))
        _drop(light, set(found))
    tensors = graph.tensors()
    for name, v in values.items():
        t = tensors[name]
        t.inputs.clear()
        t.to_constant(v)
    return len(values)


def _round(model: onnx.ModelProto, batch: set) -> dict[str, np.ndarray]:
    """One round: the batch-independent frontier values of the shape arithmetic that
    shape inference can size now."""
    g = model.graph
    dims = _inferred_dims(model)
    consts = {t.name for t in g.initializer} | {
        o for n in g.node if n.op_type == "Constant" for o in n.output}
    fed: dict[str, tuple] = {}  # Shape / Size output -> (op, dims, start, end)
    derived: set[str] = set()
    inner: list[onnx.NodeProto] = []
    for n in g.node:
        if n.op_type in ("Shape", "Size") and n.domain in ("", "ai.onnx"):
            d = dims.get(n.input[0])
            if d is not None and all(isinstance(v, int) or v in batch for v in d):
                a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
                fed[n.output[0]] = (n.op_type, d, a.get("start", 0), a.get("end"))
                derived.add(n.output[0])
        elif (n.op_type not in SKIP_OPS and n.domain in ("", "ai.onnx") and n.input
              and any(i in derived for i in n.input)
              and all(not i or i in derived or i in consts for i in n.input)):
            inner.append(n)
            derived.update(o for o in n.output if o)
    outputs = {o.name for o in g.output}
    inside = {id(n) for n in inner}
    read_by_rest = {i for n in g.node if id(n) not in inside
                    and n.op_type not in ("Shape", "Size") for i in n.input}
    frontier = sorted(t for t in derived if t in read_by_rest and t not in outputs
                      and t not in fed)
    if not frontier or not inner:
        return {}
    return _evaluate(model, inner, fed, frontier, batch)


def _drop(model: onnx.ModelProto, names: set[str]) -> None:
    """Detach the producers of `names` (now initializers) and remove the nodes nothing
    reads any more."""
    g = model.graph
    for n in g.node:
        for k, o in enumerate(n.output):
            if o in names:
                n.output[k] = ""
    keep = list(g.node)
    while True:
        read = {i for n in keep for i in n.input} | {o.name for o in g.output}
        alive = [n for n in keep if any(o and o in read for o in n.output)]
        if len(alive) == len(keep):
            break
        keep = alive
    del g.node[:]
    g.node.extend(keep)


def _batch_symbols(model: onnx.ModelProto) -> set | None:
    """The dim_param names of the graph inputs' axis 0 (empty when the batch is fixed), or
    None when any other input dimension is not a fixed size."""
    inits = {t.name for t in model.graph.initializer}
    names: set = set()
    for i in model.graph.input:
        if i.name in inits:
            continue
        shape = i.type.tensor_type.shape.dim
        for k, d in enumerate(shape):
            if d.HasField("dim_value"):
                continue
            if k != 0 or not d.dim_param:
                return None
            names.add(d.dim_param)
    return names


def ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor -> its rank, where shape inference finds one, or (a Reshape to a computed
    shape, paddle2onnx's flatten) where the length of the Reshape's shape input is known."""
    dims = inferred_dims(model)
    out = {k: len(v) for k, v in dims.items()}
    for n in model.graph.node:
        if n.op_type == "Reshape" and n.output[0] not in out and len(n.input) > 1:
            d = dims.get(n.input[1])
            if d is not None and len(d) == 1 and isinstance(d[0], int):
                out[n.output[0]] = d[0]
    return out


def inferred_dims(model: onnx.ModelProto) -> dict[str, list]:
    """Tensor -> its dims (int or dim_param name) where shape inference found a rank."""
    from ..capture import _shapes_only  # weights as typed inputs: no payload copied

    return _inferred_dims(_shapes_only(model))


def _inferred_dims(model: onnx.ModelProto) -> dict[str, list]:
    """Tensor -> its dims (int or dim_param name) where shape inference found a rank."""
    try:
        m = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # unknown ops, bad shapes: nothing is known
        return {}
    out = {}
    for vi in [*m.graph.value_info, *m.graph.input, *m.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                            for d in t.shape.dim]
    return out


def _evaluate(model: onnx.ModelProto, inner: list[onnx.NodeProto], fed: dict[str, tuple],
              frontier: list[str], batch: set) -> dict[str, np.ndarray]:
    """The frontier tensors whose values are the same for every batch size of BATCHES (and
    at most MAX_ELEMENTS); {} where the evaluator cannot run the arithmetic."""
    from onnx.reference import ReferenceEvaluator

    need = {i for n in inner for i in n.input}
    inits = [t for t in model.graph.initializer if t.name in need]
    consts = [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] in need]
    graph = helper.make_graph(
        consts + inner, "shapes",
        [helper.make_tensor_value_info(k, onnx.TensorProto.INT64, None) for k in fed],
        [helper.make_empty_tensor_value_info(t) for t in frontier], initializer=inits)
    sub = helper.make_model(graph, opset_imports=list(model.opset_import),
                            ir_version=model.ir_version)
    runs = []
    try:
        ev = ReferenceEvaluator(sub)
        for b in BATCHES:
            feed = {}
            for k, (op, d, start, end) in fed.items():
                full = np.array([b if v in batch else v for v in d], dtype=np.int64)
                feed[k] = (np.array(full.prod(), dtype=np.int64) if op == "Size"
                           else full[start:end])
            runs.append(ev.run(None, feed))
    except Exception:  # an op the evaluator lacks, a shape it rejects: leave the graph
        return {}
    found = {}
    for k, name in enumerate(frontier):
        vs = [np.asarray(r[k]) for r in runs]
        if vs[0].size <= MAX_ELEMENTS and all(
                v.shape == vs[0].shape and v.dtype == vs[0].dtype and np.array_equal(v, vs[0])
                for v in vs[1:]):
            found[name] = vs[0]
    return found
