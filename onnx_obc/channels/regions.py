"""Activations exported as several elementwise nodes: x · Sigmoid(x) (SiLU), x · 0.5 ·
(1 + Erf(x / √2)) (GELU as PyTorch exports it before opset 20), the tanh GELU with Pow,
x · Clip(x + 3, 0, 6) / 6 (HardSwish). A region of elementwise nodes that reads a tensor,
scalar constants and its own outputs only, and leaves by one tensor, is per channel: the
channels pass through it."""

from __future__ import annotations

from typing import Any

ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Clip", "Sqrt", "Exp", "Abs", "Neg",
               "Reciprocal", "Min", "Max", "Where"}
UNARY = {"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
         "Softplus", "Softsign", "Gelu", "Mish", "Celu", "ThresholdedRelu", "Identity", "Erf"}
MOST = 16  # nodes in one region


def region(g: Any, t: str, unary: set[str]) -> tuple[list[str], str] | None:
    """([node labels], the exit tensor) of the elementwise region that `t`'s readers start
    (unary: the one-input elementwise ops); None when `t` has fewer than two readers or
    they do not close into one region with one exit."""
    if t in g.outputs or len(g.users.get(t, [])) < 2:
        return None
    ops = ELEMENTWISE | unary
    inside, labels, grew = {t}, [], True
    while grew:
        grew = False
        for x in list(inside):
            for label, n in g.users.get(x, []):
                if label in labels or n.op_type not in ops or len(n.output) != 1:
                    continue
                if all(i in inside or _scalar(g, i) for i in n.input if i):
                    labels.append(label)
                    inside.add(n.output[0])
                    grew = True
        if len(labels) > MOST:
            return None
    exits = [x for x in inside if x in g.outputs
             or any(lb not in labels for lb, _ in g.users.get(x, []))]
    if len(exits) != 1 or exits[0] == t:
        return None
    return labels, exits[0]


def _scalar(g: Any, name: str) -> bool:
    """A scalar constant (initializer or Constant node output)."""
    if name in g.inits:
        return g.inits[name] in ((), (1,))
    maker = g.makers.get(name)
    return maker is not None and maker[1].op_type == "Constant" and \
        g.shapes.get(name) in ([], [1])
