"""What the If stages share: which branch a condition takes, a branch's layers, the names
a graph defines and those it reads from outside, the record of an inlined If."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..capture import subgraph_reads
from ..specs import LAYER_OPS

TAKEN = {True: "then_branch", False: "else_branch"}


@dataclass(frozen=True)
class Inlined:
    node: onnx.NodeProto  # the original If (both branches)
    cond: bool  # the condition on every run: the branch inlined is TAKEN[cond]
    free: tuple[str, ...]  # the outer tensors the inlined branch reads
    outer_nodes: tuple[onnx.NodeProto, ...] = ()  # what computes the condition and what the
    outer_inits: tuple[onnx.TensorProto, ...] = ()  # other branch reads (the inlined graph
    # may have cleaned them away: restored with the If)


def branch_of(node: onnx.NodeProto, cond: bool) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == TAKEN[cond])


def layers_in(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    return [n for n in graph.node if n.op_type in LAYER_OPS and n.domain in ("", "ai.onnx")]


def names_defined(graph: onnx.GraphProto) -> set[str]:
    return ({o for n in graph.node for o in n.output if o} | {t.name for t in graph.initializer}
            | {i.name for i in graph.input})


def outer_reads(graph: onnx.GraphProto) -> tuple[str, ...]:
    inner = names_defined(graph)
    reads = [x for n in graph.node for x in (*n.input, *sorted(subgraph_reads(n))) if x]
    return tuple(dict.fromkeys(x for x in reads if x not in inner))
