"""Identity of a constant, read directly: PyTorch's exporter writes a parameter that a model
uses more than once (ALBERT's one layer applied at every depth, any tied weight) as one
initializer and an Identity of it for each further use, so every layer but the first reads
its weight from a node and none is compressible ("computed by an Identity node"; the first
"also feeds Identity"). With the Identity gone all the layers read the one initializer and
are one compressible layer with several uses (layers.Layer.uses): its Hessian sums theirs,
one solution is written once. Float-exact: Identity copies its input."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .common import const


def read_through_identities(graph: gs.Graph, outputs: set[str], fixed: set[str],
                            in_subgraphs: set[str]) -> int:
    """Rewire the readers of Identity(c), c a float constant, to read c; returns how many
    Identity nodes are left without readers (the export's cleanup drops them). An Identity
    whose output is a graph output or read by name inside a subgraph stays."""
    done = 0
    for node in list(graph.nodes):
        if (node.op != "Identity" or len(node.inputs) != 1 or len(node.outputs) != 1
                or node.outputs[0].name in outputs | in_subgraphs
                or const(node.inputs[0], fixed) is None):
            continue
        src, out = node.inputs[0], node.outputs[0]
        for reader in list(out.outputs):
            for i, t in enumerate(reader.inputs):
                if t is out:
                    reader.inputs[i] = src
        node.outputs.clear()
        node.inputs.clear()
        done += 1
    return done
