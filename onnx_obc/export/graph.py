"""The shared graph-edit helpers of the export package: opset raise, fresh tensor names,
rewiring, constants, the final export (cleanup, toposort, explicit opset, checker).

Graph edits go through onnx-graphsurgeon and end in `export_graph`; pure value edits of an
existing tensor's payload stay proto-level (values.py says why) and end in `check`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper, version_converter
from onnx_graphsurgeon.ir.tensor import LazyValues

from ..diskdata import as_inputs
from ..errors import ModelError
from ..modelio import needs_external, payloads_aside

DEFAULT_DOMAINS = ("", "ai.onnx")
_DEFERRED: ContextVar[bool] = ContextVar("obc_checks_deferred", default=False)


def model_opset(model: onnx.ModelProto) -> int:
    """Version of the default ONNX domain the model imports."""
    versions = [op.version for op in model.opset_import if op.domain in DEFAULT_DOMAINS]
    if not versions:
        raise ModelError("the model imports no default-domain ('ai.onnx') opset")
    return int(versions[0])


def min_ir_version(opset: int) -> int:
    """Lowest IR version whose onnx release already knew `opset` (21 -> 10)."""
    return next((int(ir) for _, ir, ai_onnx, *_ in helper.VERSION_TABLE if ai_onnx >= opset),
                int(onnx.IR_VERSION))


def ensure_opset(model: onnx.ModelProto, needed: int, why: str) -> onnx.ModelProto:
    """`model` itself if its opset is >= needed, else a converted copy (ModelError if not)."""
    current = model_opset(model)
    if current >= needed:
        return model
    hint = " or use --bits 8 without --group-size to stay at opset 13" if needed >= 21 else ""
    try:
        with payloads_aside(model, 1 << 20) as aside:  # the converter serialises
            out = version_converter.convert_version(model, needed)
            for t in out.graph.initializer:  # the converter keeps initializer names
                if t.name in aside:
                    t.raw_data = aside[t.name]
    except Exception as exc:  # the converter raises plain RuntimeError/ValueError
        raise ModelError(
            f"the model uses opset {current}, but {why}; onnx's version converter could not "
            f"upgrade it to opset {needed} ({type(exc).__name__}: {exc}). Re-export the model "
            f"at opset >= {needed}{hint}.") from None
    out.ir_version = max(out.ir_version, min_ir_version(needed))
    _names_back(model, out)
    return out


def _names_back(src: onnx.ModelProto, out: onnx.ModelProto) -> None:
    """The version converter names anew the outputs of the nodes it rewrites (opset 9's
    Upsample became a Resize writing '_v_28'): each tensor a named node of `src` reads is
    renamed back in `out` where that node reads another name in that slot, so the layers
    and ranges found on `src` still find their tensors."""
    g = out.graph
    inits = {t.name for t in g.initializer}
    made = {o for n in g.node for o in n.output} | {t.name for t in g.input} | inits
    by_name = {n.name: n for n in g.node if n.name}
    back = {}
    for n in src.graph.node:
        m = by_name.get(n.name) if n.name else None
        if m is not None and m.op_type == n.op_type:
            back.update((b, a) for a, b in zip(n.input, m.input) if a and b and a != b
                        and a not in made and b not in inits)
    for n in g.node if back else ():
        n.input[:] = [back.get(i, i) for i in n.input]
        n.output[:] = [back.get(o, o) for o in n.output]
    for vi in [*g.output, *g.value_info] if back else ():
        vi.name = back.get(vi.name, vi.name)


def fresh(tensors: dict[str, gs.Tensor], *names: str) -> None:
    """ModelError if a tensor name the edit adds already exists in the graph."""
    taken = [n for n in names if n in tensors]
    if taken:
        raise ModelError(f"cannot add tensor(s) {taken}: the model already has tensors with "
                         "these names")


def rewire(old: gs.Tensor, new: gs.Tensor, nodes: list[gs.Node]) -> None:
    """Make `nodes` read `new` wherever they read `old`."""
    for node in nodes:
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new  # gs keeps both tensors' consumer lists in sync


def constant(name: str, values: np.ndarray) -> gs.Constant:
    """gs.Constant backed by a TensorProto: onnx packs INT4/UINT4 (gs itself would not)."""
    return gs.Constant(name, values=LazyValues(numpy_helper.from_array(values, name)))


def constant_value(t: gs.Tensor) -> np.ndarray | None:
    """The value of a gs.Constant, or of a Variable a Constant node outputs (paddle2onnx
    stores weights and biases that way); None for any other tensor."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    if len(t.inputs) == 1 and t.inputs[0].op == "Constant" and isinstance(
            v := t.inputs[0].attrs.get("value"), gs.Constant):
        return np.asarray(v.values)
    return None


def export_graph(graph: gs.Graph, source: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Export `graph` at `opset`, keeping the other opset imports and model metadata."""
    graph.cleanup().toposort()
    imports = [helper.make_opsetid("", opset)] + [
        helper.make_opsetid(op.domain, op.version) for op in source.opset_import
        if op.domain not in DEFAULT_DOMAINS]
    out = gs.export_onnx(graph, opset_imports=imports)
    out.ir_version = max(source.ir_version, min_ir_version(opset))
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, field, getattr(source, field))
    out.metadata_props.extend(source.metadata_props)
    other = {vi.name: vi for vi in [*source.graph.input, *source.graph.output]
             if vi.type.WhichOneof("value") not in (None, "tensor_type")}
    for vi in [*out.graph.input, *out.graph.output]:  # graph-surgeon writes them as tensors
        if vi.name in other:  # of no type (skl2onnx's ZipMap: a sequence of maps)
            vi.CopyFrom(other[vi.name])
    check(out)
    return out


def set_inputs(model: onnx.ModelProto, values: dict[int, tuple[int, str, np.ndarray]]
               ) -> onnx.ModelProto:
    """Copy of `model` where node graph.node[i] reads a new constant `name` as its input
    `position` (an absent optional input, or one it reads instead, e.g. a bias shared with
    other nodes), for each i -> (position, name, value) in `values`, through graph-surgeon;
    `model` itself when `values` is empty."""
    if not values:
        return model
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    for i, (position, name, value) in values.items():
        fresh(tensors, name)
        inputs = graph.nodes[i].inputs
        while len(inputs) < position:
            inputs.append(gs.Variable.empty())
        new = constant(name, value)
        if len(inputs) > position:
            inputs[position] = new
        else:
            inputs.append(new)
    return export_graph(graph, model, model_opset(model))


@contextmanager
def checked_once() -> Iterator[None]:
    """Inside the block `check` does nothing: the caller checks the model the block's
    edits end in, once (export.build: each of its three edits ended in a checker pass,
    which serialises the whole model; 0.3 s CPU of a 13.5 M-parameter W8A8 run)."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def check(model: onnx.ModelProto) -> None:
    """ModelError when the edited model fails onnx.checker (not inside `checked_once`)."""
    if _DEFERRED.get(False) or needs_external(model):
        return  # checked from the saved file by the caller (protobuf cannot hold it in memory)
    try:  # tensors kept in the input's data file are checked as inputs (no data read)
        onnx.checker.check_model(as_inputs(model))
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"the rewritten model fails onnx.checker: {exc}") from None
