"""A Pad on a site's path keeps the channels when it pads none: removing channel c before
or after it is the same (any mode; the pad value is one number). TensorFlow-style "same"
convolutions exported from PyTorch (EfficientNet-Lite0) compute their pads at run time from
the input's Shape (Shape -> Gather -> Sub -> ... -> Concat -> Reshape -> Slice -> Transpose ->
Cast), so the pads are evaluated here with onnx's reference evaluator from the sizes the
Shape nodes read, at the channel count and at another one and at two stand-in spatial sizes:
the channel axis must get no padding in each, so it gets none at any size after the cut.
Constant pads (the fold's static-shape pass makes PyTorch's computation one where the sizes
are fixed) are read as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MAX_NODES = 64  # a pads computation larger than this is not followed


def pad_reason(g: Any, pad: onnx.NodeProto, axis: int) -> str | None:
    """None when `pad` leaves the channel `axis` (of its data input) unpadded, else why the
    channels stop there."""
    x = pad.input[0]
    rank = len(g.shapes.get(x) or [])
    if len(pad.input) < 2 or not rank:
        return f"Pad {pad.name!r}: its pads or its input's rank are unknown"
    if len(pad.input) > 3 and pad.input[3]:
        return f"Pad {pad.name!r} has an axes input"
    ax = axis % rank
    runs = []
    for channels, spatial in ((None, 17), (1, 40)):
        pads = _evaluate(g, pad.input[1], ax, channels, spatial)
        if isinstance(pads, str):
            return f"Pad {pad.name!r}: {pads}"
        runs.append(pads)
    if any(len(p) != 2 * rank or p[ax] or p[ax + rank] for p in runs):
        return f"Pad {pad.name!r} pads the channel axis"
    return None


def _evaluate(g: Any, pads: str, axis: int, channels: int | None, spatial: int,
              on: dict[str, int] | None = None) -> np.ndarray | str:
    """The pads tensor's value with each Shape input sized from its inferred dims (the
    channel axis `channels` more when given, unknown sizes `spatial`); a reason when the pads
    depend on anything but shapes and small constants. `on` (tensor -> its channel axis):
    only the Shapes of these tensors get the `channels` more, each on its own axis."""
    if pads in g.values:  # a constant (the fold's static shapes make PyTorch's one): any size
        return np.array(g.values[pads], np.int64)
    nodes, shapes, seen, todo = [], {}, set(), [pads]
    while todo:
        t = todo.pop()
        if t in seen or not t or t in g.values:
            continue
        seen.add(t)
        made = g.makers.get(t)
        if made is None:
            return f"its pads read {t!r}, not a shape or a small constant"
        n = made[1]
        if n.op_type == "Shape":
            dims = g.dims(n.input[0])
            if not dims:
                return f"the rank of {n.input[0]!r} is unknown"
            full = [d if d else spatial for d in dims]
            ax = axis if on is None else on.get(n.input[0])
            if channels is not None and ax is not None and len(full) > ax:
                full[ax] = full[ax] + channels
            start, end = _attr(n, "start", 0), _attr(n, "end", len(full))
            shapes[t] = np.array(full[slice(start, end)], np.int64)
            continue
        nodes.append(n)
        if len(nodes) > MAX_NODES:
            return f"its pads take more than {MAX_NODES} nodes to compute"
        todo += [i for i in n.input if i]
    inits = [numpy_helper.from_array(np.array(v, np.int64).reshape(g.inits.get(k, (-1,))), k)
             for k, v in g.values.items() if k in {i for n in nodes for i in n.input}]
    order = {id(n): i for i, n in enumerate(g.nodes.values())}
    ins = [helper.make_tensor_value_info(k, TensorProto.INT64, [len(v)])
           for k, v in shapes.items()]
    graph = helper.make_graph(sorted(nodes, key=lambda n: order[id(n)]), "pads", ins,
                              [helper.make_tensor_value_info(pads, TensorProto.INT64, None)],
                              inits)
    try:
        from onnx.reference import ReferenceEvaluator

        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        out = ReferenceEvaluator(model).run(None, shapes)[0]
    except Exception as e:  # noqa: BLE001 - any evaluation failure is a refusal with its text
        return f"its pads could not be evaluated ({type(e).__name__}: {e})"
    return np.asarray(out).reshape(-1)


def _attr(n: onnx.NodeProto, name: str, default: int) -> int:
    for a in n.attribute:
        if a.name == name:
            return int(helper.get_attribute_value(a))
    return default
