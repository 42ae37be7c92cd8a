"""If nodes at the top of the graph whose branches hold the layers (Silero VAD: the whole
network twice, one branch per sample rate): compress the branch the data takes, in place.

`inline` evaluates each such If's condition on every calibration (and eval) batch; where
every run takes the same branch, that branch's nodes replace the If (an Identity per If
output marks the seam) and the run compresses them like any others. `Branches.restore`
puts the compressed nodes back as that branch of the original If: the nodes the If's
outputs depend on that do not feed what the branch read from the outer scope (its free
tensors and the condition), except those an outer node also reads and the QuantizeLinear
of an outer tensor (onnxruntime fuses it with its producer). The other branch is kept as
it was, its layers reported. An If whose condition differs between runs, or whose
branch defines a name the outer graph has, stays an If (its layers reported as before)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from . import calib as calibration
from .capture import ancestors, capture_session, providers_for, session, subgraph_reads
from .errors import ModelError
from .export.graph import ensure_opset, model_opset
from .layers import Skipped
from .specs import LAYER_OPS

TAKEN = {True: "then_branch", False: "else_branch"}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inlined:
    node: onnx.NodeProto  # the original If (both branches)
    cond: bool  # the condition on every run: the branch inlined is TAKEN[cond]
    free: tuple[str, ...]  # the outer tensors the inlined branch reads
    cond_nodes: tuple[onnx.NodeProto, ...] = ()  # what computes the condition (cleaned away
    cond_inits: tuple[onnx.TensorProto, ...] = ()  # with the If: restored with it)


@dataclass
class Branches:
    inlined: list[Inlined] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    data: Any = None  # the calibration plan made to evaluate the conditions (reused)
    source: onnx.ModelProto | None = None  # the input model (its other branches, upgraded
    # where the export raised the opset)
    after: list[str] = field(default_factory=list)  # what restore() found

    def restore(self, model: onnx.ModelProto, runtime: Any) -> onnx.ModelProto:
        """`model` (compressed from the inlined graph) with each inlined branch put back,
        checked to give the same outputs on the first calibration batch."""
        if not self.inlined:
            return model
        flat = model
        model = onnx.ModelProto()
        model.CopyFrom(flat)
        opset = model_opset(model)
        src = ensure_opset(self.source, opset, "the compressed branches need it")
        ifs = {n.name: n for n in src.graph.node if n.op_type == "If"}
        for rec in self.inlined:
            model = _rewrap(model, replace(rec, node=ifs[rec.node.name]))
            self.after += _unfusable(model, rec)
        _, feed = next(iter(self.data.fit.batches(self.data.run_batch)))
        names = [o.name for o in flat.graph.output]
        for a, b, n in zip(session(flat, runtime).run(names, feed),
                           session(model, runtime).run(names, feed), names):
            if not np.allclose(a, b, rtol=1e-4, atol=1e-6 * (np.abs(a).max() + 1)):
                raise ModelError(f"the compressed If branches put back give other outputs "
                                 f"({n!r}: max difference {np.abs(a - b).max():.3g}); "
                                 "please report this model")
        return model


def _branch(node: onnx.NodeProto, cond: bool) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == TAKEN[cond])


def _layers_in(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    return [n for n in graph.node if n.op_type in LAYER_OPS and n.domain in ("", "ai.onnx")]


def candidates(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The top-level If nodes with a Conv / Gemm / MatMul at the top of a branch."""
    return [n for n in model.graph.node if n.op_type == "If" and n.domain in ("", "ai.onnx")
            and any(_layers_in(_branch(n, c)) for c in (True, False))]


def _defined(graph: onnx.GraphProto) -> set[str]:
    return ({o for n in graph.node for o in n.output if o} | {t.name for t in graph.initializer}
            | {i.name for i in graph.input})


def _free(graph: onnx.GraphProto) -> tuple[str, ...]:
    inner = _defined(graph)
    reads = [x for n in graph.node for x in (*n.input, *sorted(subgraph_reads(n))) if x]
    return tuple(dict.fromkeys(x for x in reads if x not in inner))


def conditions(model: onnx.ModelProto, ifs: list[onnx.NodeProto], data: Any, runtime: Any
               ) -> dict[str, list[bool]]:
    """Per If, its condition on every run over the calibration (fit, held-out) and eval sets."""
    names = list(dict.fromkeys(n.input[0] for n in ifs))
    sess = capture_session(model, names, runtime, prune=True)
    seen: dict[str, list[bool]] = {n.name: [] for n in ifs}
    sets = [s for s in (data.fit, data.held, data.eval) if s is not None]
    for src in sets:
        for _, feed in src.batches(data.run_batch):
            feed = {k: v for k, v in feed.items() if k in {i.name for i in sess.get_inputs()}}
            vals = dict(zip(names, sess.run(names, feed)))
            for n in ifs:
                seen[n.name].append(bool(np.asarray(vals[n.input[0]]).reshape(-1)[0]))
    return seen


def inline(model: onnx.ModelProto, calib: Any, eval_data: Any, run: Any
           ) -> tuple[onnx.ModelProto, Branches]:
    """`model` with each candidate If the data always takes one way replaced by that branch
    (the calibration plan, made only where there is a candidate, kept in Branches.data)."""
    ifs = candidates(model)
    out = Branches()
    if not ifs:
        return model, out
    out.data = calibration.plan(model, calib, eval_data, run)
    seen = conditions(model, ifs, out.data, providers_for("numpy", run.custom_op_library))
    outer = _defined(model.graph) | {n.name for n in model.graph.output}
    keep: dict[str, Inlined] = {}
    for n in ifs:
        vals = seen[n.name]
        if len(set(vals)) != 1:
            out.notes.append(f"If {n.name!r}: the data takes both branches ({vals.count(True)} "
                             f"runs then, {vals.count(False)} else): its layers are not "
                             "compressed (calibrate with data that takes one branch)")
            log.warning(out.notes[-1])
            continue
        cond = vals[0]
        taken, other = _branch(n, cond), _branch(n, not cond)
        clash = sorted((_defined(taken) - set(n.output)) & outer)
        if clash:
            out.notes.append(f"If {n.name!r}: its {TAKEN[cond]} defines names the outer graph "
                             f"has ({', '.join(clash[:3])}): its layers are not compressed")
            log.warning(out.notes[-1])
            continue
        idx = ancestors(list(model.graph.node), [n.input[0]])
        cnodes = tuple(model.graph.node[i] for i in idx)
        creads = {x for c in cnodes for x in (*c.input, n.input[0])}
        keep[n.name] = Inlined(n, cond, _free(taken), cnodes, tuple(
            t for t in model.graph.initializer if t.name in creads))
        out.notes.append(f"If {n.name!r}: its {TAKEN[cond]}, which the calibration and eval "
                         f"data take ({n.input[0]!r} {cond} on all {len(vals)} runs), "
                         f"compressed in place; its {TAKEN[not cond]} kept as it was")
        out.skipped += [Skipped(f"{x.name or x.op_type} (in the {TAKEN[not cond]} of "
                                f"{n.name})", x.op_type,
                                f"in the branch of If {n.name!r} the calibration data does not "
                                f"take ({n.input[0]!r} was {cond} on every run); kept as it "
                                "was") for x in _layers_in(other)]
    if not keep:
        return model, out
    out.inlined, out.source = list(keep.values()), model
    graph = gs.import_onnx(model)
    for node in [x for x in graph.nodes if x.op == "If" and x.name in keep]:
        branch = node.attrs[TAKEN[keep[node.name].cond]]
        outs = list(node.outputs)
        node.outputs.clear()
        node.inputs.clear()
        graph.nodes.extend(branch.nodes)
        for i, (b, o) in enumerate(zip(branch.outputs, outs)):
            graph.nodes.append(gs.Node("Identity", f"{node.name}/taken_{i}", inputs=[b],
                                       outputs=[o]))
    return _finish(graph, model), out


def _finish(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    model.ir_version = like.ir_version
    model.functions.extend(f for f in like.functions if f not in model.functions)
    onnx.checker.check_model(model)
    return model


def _region(nodes: list[onnx.NodeProto], rec: Inlined, graph_outputs: set[str]) -> set[int]:
    """Indices of the nodes that go back into the branch."""
    outs = list(rec.node.output)
    region = set(ancestors(nodes, outs)) - set(ancestors(nodes, [*rec.free, rec.node.input[0]]))
    made = {o for i in region for o in nodes[i].output}
    region -= {i for i in region if nodes[i].op_type == "QuantizeLinear"  # an outer tensor's
               and nodes[i].input[0] not in made}  # Q stays with its producer (fused there)
    while True:  # a tensor an outer node (or the graph) reads stays outer, with its producers
        read = {x for i, n in enumerate(nodes) if i not in region
                for x in (*n.input, *subgraph_reads(n))} | (graph_outputs - set(outs))
        drop = {i for i in region if any(o in read and o not in outs for o in nodes[i].output)}
        if not drop:
            return region
        region -= drop


def _unfusable(model: onnx.ModelProto, rec: Inlined) -> list[str]:
    """The quantized layers outside the If whose output the kept branch also reads in
    float: onnxruntime cannot fuse them (their output has a float reader)."""
    other = TAKEN[not rec.cond]
    free = set(_free(_branch(rec.node, not rec.cond)))
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    return [f"{n.name}: its output is read in float by the {other} of If {rec.node.name!r} "
            "too, so onnxruntime runs it on a float kernel (the integer-kernel count is of "
            "the graph with the branch inlined)" for n in model.graph.node
            if n.op_type in LAYER_OPS and set(n.output) & free & quantized]


def _rewrap(model: onnx.ModelProto, rec: Inlined) -> onnx.ModelProto:
    g = model.graph
    nodes = list(g.node)
    region = _region(nodes, rec, {o.name for o in g.output})
    outs = list(rec.node.output)
    if not all(any(o in nodes[i].output for i in region) for o in outs):
        raise ModelError(f"the compressed branch of If {rec.node.name!r} could not be put back "
                         "(its outputs are not computed inside it); please report this "
                         "model")
    rename = {o: f"{o}/branch" for o in outs}
    inner = [onnx.NodeProto() for _ in sorted(region)]
    for dst, i in zip(inner, sorted(region)):
        dst.CopyFrom(nodes[i])
        dst.input[:] = [rename.get(x, x) for x in dst.input]
        dst.output[:] = [rename.get(x, x) for x in dst.output]
    reads_outer = {x for i, n in enumerate(nodes) if i not in region
                   for x in (*n.input, *subgraph_reads(n))}
    reads_inner = {x for n in inner for x in (*n.input, *subgraph_reads(n))}
    moved = [t for t in g.initializer if t.name in reads_inner and t.name not in reads_outer]
    made = {o for n in inner for o in n.output}
    old = _branch(rec.node, rec.cond)
    types = {o.name: o for o in old.output}
    sub_out = []
    for o, b in zip(outs, old.output):
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(types[b.name])
        vi.name = rename[o]
        sub_out.append(vi)
    sub = helper.make_graph(inner, old.name, [], sub_out, initializer=moved,
                            value_info=[v for v in g.value_info if v.name in made])
    node = onnx.NodeProto()
    node.CopyFrom(rec.node)
    for a in node.attribute:
        if a.name == TAKEN[rec.cond]:
            a.g.CopyFrom(sub)
    names = {t.name for t in moved}
    keep_init = [t for t in g.initializer if t.name not in names]
    first = min((i for i, n in enumerate(nodes) if i not in region
                 and set(outs) & {*n.input, *subgraph_reads(n)}), default=len(nodes))
    rest = [n for i, n in enumerate(nodes) if i not in region]
    pos = sum(1 for i in range(first) if i not in region)
    have = {o for n in rest for o in n.output} | {t.name for t in g.initializer}
    cond = [c for c in rec.cond_nodes if not set(c.output) <= have]
    rest[pos:pos] = [*cond, node]
    keep_init += [t for t in rec.cond_inits if t.name not in have]
    del g.node[:]
    g.node.extend(rest)
    del g.initializer[:]
    g.initializer.extend(keep_init)
    kept_vi = [v for v in g.value_info if v.name not in made]
    del g.value_info[:]
    g.value_info.extend(kept_vi)
    return _finish(gs.import_onnx(model), model)
