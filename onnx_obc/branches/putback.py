"""Put the compressed branch back into its If: the nodes the If's outputs depend on that
do not feed the condition or what the branch read from outside, except those an outer node
also reads and the QuantizeLinear of an outer tensor (onnxruntime fuses it with its
producer); what the inlined graph cleaned away that the other branch or the condition reads
restored; the graph sorted again counting subgraphs' outer reads. Proto-level, not a
graphsurgeon round trip: graphsurgeon 0.6 drops, or copies into every subgraph, outer
constants that only subgraphs read."""

from __future__ import annotations

import heapq

import onnx
from onnx import helper

from ..capture import ancestors, subgraph_reads
from ..errors import ModelError
from ..specs import LAYER_OPS
from .graphs import TAKEN, Inlined, branch_of, outer_reads


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


def unfusable(model: onnx.ModelProto, rec: Inlined) -> list[str]:
    """The quantized layers outside the If whose output the kept branch also reads in
    float: onnxruntime cannot fuse them (their output has a float reader)."""
    other = TAKEN[not rec.cond]
    free = set(outer_reads(branch_of(rec.node, not rec.cond)))
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    return [f"{n.name}: its output is read in float by the {other} of If {rec.node.name!r} "
            "too, so onnxruntime runs it on a float kernel (the integer-kernel count is of "
            "the graph with the branch inlined)" for n in model.graph.node
            if n.op_type in LAYER_OPS and set(n.output) & free & quantized]


def rewrap(model: onnx.ModelProto, rec: Inlined) -> onnx.ModelProto:
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
    old = branch_of(rec.node, rec.cond)
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
    g_inits = {t.name for t in keep_init}
    rest = [n for i, n in enumerate(nodes) if i not in region]
    have = {o for n in rest for o in n.output} | g_inits
    rest += [c for c in rec.outer_nodes if not set(c.output) <= have] + [node]  # sorted below
    keep_init += [t for t in rec.outer_inits if t.name not in have]
    del g.node[:]
    g.node.extend(rest)
    del g.initializer[:]
    g.initializer.extend(keep_init)
    kept_vi = [v for v in g.value_info if v.name not in made]
    del g.value_info[:]
    g.value_info.extend(kept_vi)
    _toposort(g)
    onnx.checker.check_model(model)
    return model


def _toposort(g: onnx.GraphProto) -> None:
    """`g`'s nodes in a topological order (the earliest ready first), a subgraph's outer reads
    counted."""
    nodes = list(g.node)
    made = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    waits = [0] * len(nodes)
    users: list[list[int]] = [[] for _ in nodes]
    for i, n in enumerate(nodes):
        for j in {made[x] for x in (*n.input, *subgraph_reads(n)) if x in made} - {i}:
            waits[i] += 1
            users[j].append(i)
    ready = [i for i, w in enumerate(waits) if not w]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waits[u] -= 1
            if not waits[u]:
                heapq.heappush(ready, u)
    if len(order) < len(nodes):
        raise ModelError("the graph has a cycle after the If branches were put back; please "
                         "report this model")
    del g.node[:]
    g.node.extend(nodes[i] for i in order)
