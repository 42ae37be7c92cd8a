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
from onnx import numpy_helper

from .. import calib as calibration
from ..capture import ancestors, capture_session, providers_for, session
from ..errors import ModelError
from ..export.graph import ensure_opset, model_opset
from ..layers import Skipped
from .graphs import TAKEN, Inlined, branch_of, layers_in, names_defined, outer_reads
from .putback import rewrap, unfusable

log = logging.getLogger(__name__)


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
            model = rewrap(model, replace(rec, node=ifs[rec.node.name]))
            self.after += unfusable(model, rec)
        _, feed = next(iter(self.data.fit.batches(self.data.run_batch)))
        names = [o.name for o in flat.graph.output]
        for a, b, n in zip(session(flat, runtime).run(names, feed),
                           session(model, runtime).run(names, feed), names):
            if not np.allclose(a, b, rtol=1e-4, atol=1e-6 * (np.abs(a).max() + 1)):
                raise ModelError(f"the compressed If branches put back give other outputs "
                                 f"({n!r}: max difference {np.abs(a - b).max():.3g}); "
                                 "please report this model")
        return model


def candidates(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The top-level If nodes with a Conv / Gemm / MatMul at the top of a branch."""
    return [n for n in model.graph.node if n.op_type == "If" and n.domain in ("", "ai.onnx")
            and any(layers_in(branch_of(n, c)) for c in (True, False))]


def describe(model: onnx.ModelProto) -> list[str]:
    """For `onnx-obc inspect`: each candidate If, its branches' layers, what decides."""
    out = []
    for n in candidates(model):
        nodes = list(model.graph.node)
        ins = {i.name for i in model.graph.input}
        reads = sorted({x for i in ancestors(nodes, [n.input[0]]) for x in nodes[i].input
                        if x in ins} | ({n.input[0]} & ins))
        out.append(f"If {n.name!r} holds {len(layers_in(branch_of(n, True)))} layer(s) in its "
                   f"then_branch and {len(layers_in(branch_of(n, False)))} in its else_branch "
                   "(listed above as in a subgraph): a run compresses the branch every "
                   f"calibration run takes, its condition {n.input[0]!r} computed from "
                   f"{', '.join(map(repr, reads)) or 'constants'}")
    return out


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
    outer = names_defined(model.graph) | {n.name for n in model.graph.output}
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
        taken, other = branch_of(n, cond), branch_of(n, not cond)
        clash = sorted((names_defined(taken) - set(n.output)) & outer)
        if clash:
            out.notes.append(f"If {n.name!r}: its {TAKEN[cond]} defines names the outer graph "
                             f"has ({', '.join(clash[:3])}): its layers are not compressed")
            log.warning(out.notes[-1])
            continue
        need = [n.input[0], *outer_reads(other)]
        onodes = tuple(model.graph.node[i] for i in ancestors(list(model.graph.node), need))
        oreads = {x for c in onodes for x in c.input} | set(need)
        keep[n.name] = Inlined(n, cond, outer_reads(taken), onodes, tuple(
            t for t in model.graph.initializer if t.name in oreads))
        out.notes.append(f"If {n.name!r}: its {TAKEN[cond]}, which the calibration and eval "
                         f"data take ({n.input[0]!r} {cond} on all {len(vals)} runs), "
                         f"compressed in place; its {TAKEN[not cond]} kept as it was")
        out.skipped += [Skipped(f"{x.name or x.op_type} (in the {TAKEN[not cond]} of "
                                f"{n.name})", x.op_type,
                                f"in the branch of If {n.name!r} the calibration data does not "
                                f"take ({n.input[0]!r} was {cond} on every run); kept as it "
                                "was") for x in layers_in(other)]
    if not keep:
        return model, out
    out.inlined, out.source = list(keep.values()), model
    outer_values = {t.name: t for t in model.graph.initializer} | {
        n.output[0]: n.attribute[0].t for n in model.graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    graph = gs.import_onnx(model)
    for node in [x for x in graph.nodes if x.op == "If" and x.name in keep]:
        branch = node.attrs[TAKEN[keep[node.name].cond]]
        _own_weights(graph, node, branch, TAKEN[keep[node.name].cond], outer_values)
        outs = list(node.outputs)
        node.outputs.clear()
        node.inputs.clear()
        graph.nodes.extend(branch.nodes)
        for i, (b, o) in enumerate(zip(branch.outputs, outs)):
            graph.nodes.append(gs.Node("Identity", f"{node.name}/taken_{i}", inputs=[b],
                                       outputs=[o]))
    return _finish(graph, model), out


def _own_weights(graph: gs.Graph, node: gs.Node, branch: gs.Graph, which: str,
                 outer: dict[str, onnx.TensorProto]) -> None:
    """The constants of the outer graph (`outer`: initializers, Constant nodes' values) the
    branch reads and something else reads too (the other branch, an outer node): the branch
    reads its own copy, which the run may compress, and the others keep the original."""
    inner = [*branch.nodes, *(m for g in branch.subgraphs(recursive=True) for m in g.nodes)]
    ours = {id(m) for m in inner}
    others = [n for n in graph.nodes if n is not node] + [
        m for g in (*node.subgraphs(recursive=True),
                    *(g for n in graph.nodes if n is not node
                      for g in n.subgraphs(recursive=True)))
        for m in g.nodes if id(m) not in ours]
    elsewhere = {t.name for n in others for t in n.inputs} | {t.name for t in graph.outputs}
    copies: dict[str, gs.Constant] = {}
    for m in inner:
        for k, t in enumerate(m.inputs):
            if t.name in outer and t.name in elsewhere:
                if t.name not in copies:
                    copies[t.name] = gs.Constant(f"{t.name}/{which}",
                                                 numpy_helper.to_array(outer[t.name]))
                m.inputs[k] = copies[t.name]


def _finish(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    model.ir_version = like.ir_version
    model.functions.extend(f for f in like.functions if f not in model.functions)
    onnx.checker.check_model(model)
    return model
