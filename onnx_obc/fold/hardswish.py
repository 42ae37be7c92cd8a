"""hardswish and hardsigmoid written out in elementwise ops, as one HardSigmoid node:
x * Clip(x + 3, 0, 6) / 6 (in either order of the product and the division, the division
also as a product with 1/6) becomes x * HardSigmoid(x), Clip(x + 3, 0, 6) / 6 alone
HardSigmoid(x) (alpha 1/6, beta 1/2: the same function, HardSigmoid available since opset 6).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .common import const


def _scalar(t: gs.Tensor, fixed: set[str]) -> float | None:
    v = const(t, fixed)
    return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


def _other(node: gs.Node, x: gs.Tensor) -> gs.Tensor | None:
    """The input of a two-input node that is not x (None when x is not one of them)."""
    if len(node.inputs) != 2 or not any(t is x for t in node.inputs):
        return None
    return node.inputs[1] if node.inputs[0] is x else node.inputs[0]


def _clip_0_6(node: gs.Node, fixed: set[str]) -> bool:
    if node.op != "Clip":
        return False
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
    if len(node.inputs) > 1 and node.inputs[1].name:
        lo = _scalar(node.inputs[1], fixed)
    if len(node.inputs) > 2 and node.inputs[2].name:
        hi = _scalar(node.inputs[2], fixed)
    return lo == 0.0 and hi == 6.0


def _sixth(node: gs.Node, z: gs.Tensor, fixed: set[str]) -> bool:
    """node computes z / 6 (or z * 1/6)."""
    if node.op == "Div" and len(node.inputs) == 2 and node.inputs[0] is z:
        return _scalar(node.inputs[1], fixed) == 6.0
    if node.op == "Mul":
        c = _other(node, z)
        v = None if c is None else _scalar(c, fixed)
        return v is not None and abs(v - 1 / 6) < 1e-7
    return False


def _only(t: gs.Tensor, outputs: set[str]) -> gs.Node | None:
    """The single reader of an intermediate tensor (None: several, none, a graph output)."""
    return t.outputs[0] if len(t.outputs) == 1 and t.name not in outputs else None


def hardswish(graph: gs.Graph, add: gs.Node, outputs: set[str], fixed: set[str]) -> str | None:
    """Rewrite the pattern that starts at `add` (x + 3): "hardswish", "hardsigmoid" or None."""
    if len(add.outputs) != 1 or len(add.inputs) != 2:
        return None
    a, b = add.inputs
    x = next((p for p, q in ((a, b), (b, a))
              if _scalar(q, fixed) == 3.0 and const(p, fixed) is None), None)
    if x is None:
        return None
    clip = _only(add.outputs[0], outputs)
    if clip is None or not _clip_0_6(clip, fixed) or clip.inputs[0] is not add.outputs[0]:
        return None
    v = clip.outputs[0]
    first = _only(v, outputs)
    if first is None:
        return None
    if first.op == "Mul" and _other(first, v) is x:  # x * clip, then / 6
        last = _only(first.outputs[0], outputs)
        if last is None or not _sixth(last, first.outputs[0], fixed):
            return None
        kind = "hardswish"
    elif _sixth(first, v, fixed):  # clip / 6, then maybe * x
        last, kind = first, "hardsigmoid"
        nxt = _only(first.outputs[0], outputs)
        if nxt is not None and nxt.op == "Mul" and _other(nxt, first.outputs[0]) is x:
            last, kind = nxt, "hardswish"
    else:
        return None
    out = last.outputs[0]
    last.outputs.clear()
    hs_out = out if kind == "hardsigmoid" else gs.Variable(f"{out.name}_hardsigmoid",
                                                           dtype=np.float32)
    name = last.name or out.name
    graph.nodes.append(gs.Node("HardSigmoid", f"{name}_hardsigmoid", {"alpha": 1 / 6, "beta": 0.5},
                               inputs=[x], outputs=[hs_out]))
    if kind == "hardswish":
        graph.nodes.append(gs.Node("Mul", f"{name}_hardswish", inputs=[x, hs_out], outputs=[out]))
    return kind


HARDSWISH_OPSET = 14  # the single HardSwish op


def hardswish_pairs(graph: gs.Graph, outputs: set[str]) -> list[tuple[gs.Node, gs.Node]]:
    """(HardSigmoid, Mul) pairs computing x * HardSigmoid(x) (alpha 1/6, beta 1/2), the gate
    read by the product alone: HardSwish(x)."""
    pairs = []
    for mul in graph.nodes:
        if mul.op != "Mul" or len(mul.inputs) != 2:
            continue
        for x, h in ((mul.inputs[0], mul.inputs[1]), (mul.inputs[1], mul.inputs[0])):
            gate = h.inputs[0] if len(h.inputs) == 1 else None
            if (gate is not None and gate.op == "HardSigmoid" and gate.inputs[0] is x
                    and _only(h, outputs) is mul
                    and abs(gate.attrs.get("alpha", 0.2) - 1 / 6) < 1e-7
                    and abs(gate.attrs.get("beta", 0.5) - 0.5) < 1e-7):
                pairs.append((gate, mul))
                break
    return pairs


def as_hardswish(graph: gs.Graph, pairs: list[tuple[gs.Node, gs.Node]]) -> None:
    """Each pair as one HardSwish node (opset >= HARDSWISH_OPSET): x * HardSigmoid(x) is
    HardSwish(x) by definition; onnxruntime (1.31, CPU) expands it back after its QDQ pass,
    so it runs behind one DequantizeLinear instead of one per reader (PP-PicoDet W8A8: 0.718 ->
    0.660x fp32, the same outputs; docs/deployment.md)."""
    for gate, mul in pairs:
        x = gate.inputs[0]
        gate.outputs.clear()
        mul.op, mul.inputs = "HardSwish", [x]
        mul.attrs.clear()
