"""A swap of the last two axes written as three nodes, one Transpose: torch's dynamo exporter
decomposes `k.transpose(-2, -1)` of a 4-D tensor (scaled_dot_product_attention's kᵀ) as

    Reshape(k, [-1, d2, d3]) -> Transpose(perm [0, 2, 1]) -> Reshape(., [d0, d1, d3, d2])

with the sizes read from Shape(k) (or, after the static-shape pass, constants equal to k's
static dims). Flattening the two leading axes and restoring them in the same order is the
identity on them, so the three are Transpose(k, perm [0, 1, 3, 2]) exactly. One node instead
of three (and of the Shape arithmetic feeding them); the channel stage then sees the heads'
Transposes (channels/heads.py), which it follows, instead of a 3-D flatten it does not."""

from __future__ import annotations

import onnx_graphsurgeon as gs

Dim = tuple[str, int]  # ("dim", i): k's dim i; ("const", v): the value v


def swap_last_two(graph: gs.Graph, dims: dict[str, list], outputs: set[str]) -> int:
    """Rewrite each such triple in `graph` (`dims`: tensor -> inferred dims, int or name);
    returns how many."""
    done = 0
    for r2 in [n for n in graph.nodes if n.op == "Reshape"]:
        t1 = _only_maker(r2.inputs[0], "Transpose", outputs)
        if t1 is None or list(t1.attrs.get("perm", [])) != [0, 2, 1]:
            continue
        r1 = _only_maker(t1.inputs[0], "Reshape", outputs)
        if r1 is None or len(r1.inputs) < 2:
            continue
        k = r1.inputs[0]
        kd = dims.get(k.name)
        if kd is None or len(kd) != 4:
            continue
        first = _entries(r1.inputs[1], k, kd) or []
        second = _entries(r2.inputs[1], k, kd) or []
        lead = kd[0] * kd[1] if isinstance(kd[0], int) and isinstance(kd[1], int) else -1
        if len(first) != 3 or first[0] not in (("const", -1), ("const", lead)) or \
                not _are(first[1:], [2, 3], kd) or not _are(second, [0, 1, 3, 2], kd):
            continue
        out = r2.outputs[0]
        r2.outputs.clear()
        graph.nodes.append(gs.Node("Transpose", name=f"{r2.name or out.name}_swap_last",
                                   attrs={"perm": [0, 1, 3, 2]}, inputs=[k], outputs=[out]))
        done += 1
    return done


def _only_maker(t: gs.Tensor, op: str, outputs: set[str]) -> gs.Node | None:
    """The `op` node making `t`, where `t` is read by one node alone and no graph output."""
    if len(t.inputs) != 1 or t.inputs[0].op != op or len(t.outputs) != 1 or t.name in outputs:
        return None
    return t.inputs[0]


def _entries(shape: gs.Tensor, k: gs.Tensor, kd: list) -> list[Dim] | None:
    """The entries of a Reshape's shape: k's dims read by Shape(k) (sliced or gathered) and
    constants; None where unknown."""
    if isinstance(shape, gs.Constant):
        return [("const", int(v)) for v in shape.values.reshape(-1)]
    node = shape.inputs[0] if len(shape.inputs) == 1 else None
    if node is None:
        return None
    if node.op == "Concat" and node.attrs.get("axis", 0) in (0, -1):
        out: list[Dim] = []
        for x in node.inputs:
            part = _entries(x, k, kd)
            if part is None:
                return None
            out += part
        return out
    if node.op in ("Slice", "Gather") and node.inputs[0].inputs and \
            node.inputs[0].inputs[0].op == "Shape" and node.inputs[0].inputs[0].inputs[0] is k:
        s = node.inputs[0].inputs[0]
        idx = list(range(4))[s.attrs.get("start", 0):s.attrs.get("end", 4)]
        args = [x.values.reshape(-1).tolist() if isinstance(x, gs.Constant) else None
                for x in node.inputs[1:]]
        if any(a is None for a in args):
            return None
        if node.op == "Gather":
            return [("dim", idx[int(i)]) for i in args[0]] if len(args) == 1 else None
        if len(args) != 2 or len(args[0]) != 1:  # starts, ends on axis 0, step 1
            return None
        return [("dim", i) for i in idx[slice(int(args[0][0]), int(args[1][0]))]]
    if node.op in ("Unsqueeze", "Squeeze", "Cast") and node.inputs:
        return _entries(node.inputs[0], k, kd)
    return None


def _are(entries: list[Dim], axes: list[int], kd: list) -> bool:
    """Whether `entries` are k's dims `axes`: read from Shape(k), or constants equal to its
    static sizes there (the static-shape pass makes the reads of static dims constants)."""
    return len(entries) == len(axes) and all(
        e == ("dim", i) or (e[0] == "const" and isinstance(kd[i], int) and e[1] == kd[i])
        for e, i in zip(entries, axes))
