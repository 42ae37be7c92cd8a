"""The subgraph of one channel site, runnable alone (channels/timing.py times it at several
widths): the nodes between the site's producer and its consumer, the constants they read,
and as inputs every other tensor they read, captured from one run of the dense model."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..export.shrink import tied_cuts
from ..layers import node_label


def site_subgraph(proto: onnx.ModelProto, site: Any) -> tuple[onnx.ModelProto, list[str],
                                                                 list[str]]:
    """(the model of `site`'s producer -> consumer subgraph, its inputs, its outputs): the
    nodes downstream of the producer (or of a tied query/key projection, a rewritten shape
    node, a depthwise Conv whose group follows) that lead to the consumer, and the
    Constant nodes they read; named by their labels in `proto` (shrink finds them); `typed`
    declares the inputs and outputs once captured."""
    g = proto.graph
    nodes = list(g.node)
    labels = [node_label(n, i) for i, n in enumerate(nodes)]
    at = {lab: i for i, lab in enumerate(labels)}
    maker = {t: i for i, n in enumerate(nodes) for t in n.output}
    users: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            users.setdefault(t, []).append(i)
    cut = {name for name, _ in site.sliced} | {site.producer.weight}
    cut |= {x[0] for x in tied_cuts(site)}
    forced = [lab for lab in site.grouped] + [x[0] for x in (site.split.shapes
                                                             if site.split else ())]
    sources = {at[u.node] for u in site.producer.uses} | {at[lab] for lab in forced} | {
        i for t in cut for i in users.get(t, []) if nodes[i].op_type != "Constant"}
    ends = {at[u.node] for c in site.consumers for u in c.uses}
    down, todo = set(sources), list(sources)
    while todo:
        for t in nodes[todo.pop()].output:
            for j in users.get(t, []):
                if j not in down:
                    down.add(j), todo.append(j)
    keep, todo = set(ends), list(ends)
    while todo:
        for t in nodes[todo.pop()].input:
            j = maker.get(t)
            if j is not None and j not in keep and (j in down or nodes[j].op_type == "Constant"
                                                   and not nodes[j].input):
                keep.add(j), todo.append(j)
    made = {t for i in keep for t in nodes[i].output}
    inits = {t.name: t for t in g.initializer}
    inputs = list(dict.fromkeys(t for i in sorted(keep) for t in nodes[i].input
                                if t and t not in made and t not in inits))
    outputs = [t for i in sorted(ends) for t in nodes[i].output]
    used = {t for i in keep for t in nodes[i].input}
    sub_nodes = []
    for i in sorted(keep):
        n = onnx.NodeProto()
        n.CopyFrom(nodes[i])
        n.name = labels[i]
        sub_nodes.append(n)
    graph = helper.make_graph(sub_nodes, "site", [], [], [inits[t] for t in used if t in inits])
    m = helper.make_model(graph, opset_imports=list(proto.opset_import))
    m.ir_version = proto.ir_version
    return m, inputs, outputs


def typed(sub: onnx.ModelProto, inputs: list[str], outputs: list[str],
          values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`sub` with its inputs and outputs declared from the captured `values`."""
    def vi(t: str) -> onnx.ValueInfoProto:
        v = np.asarray(values[t])
        return helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(v.dtype),
                                             list(v.shape))
    m = onnx.ModelProto()
    m.CopyFrom(sub)
    m.graph.input.extend(vi(t) for t in inputs)
    m.graph.output.extend(vi(t) for t in outputs)
    return m


def capture(proto: onnx.ModelProto, feed: dict, names: list[str], runtime: Any) -> dict:
    """`feed` and the dense model's values of `names` on it."""
    from ..capture import Runtime, capture_session

    want = [n for n in dict.fromkeys(names) if n not in feed]
    s = capture_session(proto, want, runtime or Runtime())
    inputs = {i.name for i in s.get_inputs()}
    return {**feed, **dict(zip(want, s.run(want, {k: v for k, v in feed.items()
                                                  if k in inputs})))}
