"""Zero padding on the codes, and shapes read from the codes (the onnxruntime target).

TensorFlow-style "same" convolutions are exported as a `Pad` whose pads the graph computes
at run time from the input's `Shape`, then a Conv without padding (EfficientNet-Lite0 from
PyTorch ports, tf2onnx / paddle2onnx graphs). onnxruntime has no integer rule for Pad, so a
placement that treats it as a float op leaves DequantizeLinear -> Pad -> QuantizeLinear on
every such feature map, and each Shape reader gets a DequantizeLinear of its own (onnxruntime
gives every consumer of a DQ its copy): on EfficientNet-Lite0 those DQ, Pad and Q nodes were
over half of the W8A8 model's time, more than its 49 integer convolutions.

Both are exact on the codes. With q = QuantizeLinear(x; s, z), for a constant-mode Pad with
pad value 0 (and 0 a code: z = QuantizeLinear(0)),

    QuantizeLinear(Pad(x, 0); s, z)  =  Pad(QuantizeLinear(x; s, z), z)

so the QuantizeLinear after a Pad moves in front of it, and the Pad pads the codes with the
zero point (onnxruntime's Pad runs on uint8 / int8). Where the Pad read DequantizeLinear(q)
with the same s and z (the plan ties a Pad's output to its input's parameters, like the
data-movement ops), the QuantizeLinear(DequantizeLinear(q)) pair is q itself and both nodes
go. And Shape(DequantizeLinear(q)) = Shape(q). Both for uint8 codes only: with int8 ones
onnxruntime's x86 optimizer turns each adjacent Q -> DQ pair into uint8 before it fuses, and a
Pad or Shape between them kept the Conv after it float (tests/export/test_ortpad.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from .graph import constant, constant_value

PAD_CODES = True  # measured on EfficientNet-Lite0 (docs/deployment.md)
SHAPE_CODES = True
SHAPE_OPS = ("Shape", "Size")


def zero_pad(node: onnx.NodeProto, weights: dict[str, tuple[str, onnx.TensorProto]]) -> bool:
    """A constant-mode Pad (opset >= 11 form) whose pad value is absent or a constant 0
    (`weights`: layers.constant_weights of the graph)."""
    if not PAD_CODES or node.op_type != "Pad":
        return False
    modes = [a.s for a in node.attribute if a.name == "mode"]

    def value() -> np.ndarray | None:
        t = weights.get(node.input[2])
        return None if t is None else numpy_helper.to_array(t[1])

    return _pads_zeros(modes[0] if modes else "constant", list(node.input), value)


def _pads_zeros(mode: str | bytes, names: list[str], value: Callable[[], np.ndarray | None]
                ) -> bool:
    """A Pad of `mode` whose inputs are named `names` (data, pads[, value]) pads with 0:
    constant mode, and its value input absent, empty or a constant 0 (`value()`: that
    input's array, None where it is no constant). One rule for the plan's ONNX nodes and
    the rewrite's graphsurgeon ones."""
    if mode not in ("constant", b"constant") or len(names) < 2:
        return False
    return len(names) < 3 or not names[2] or _is_zero(value())


def _is_zero(v: np.ndarray | None) -> bool:
    return v is not None and v.size == 1 and float(v.reshape(-1)[0]) == 0.0


def shape_readers_to_codes(x: gs.Variable, q: gs.Variable, readers: list[gs.Node]
                           ) -> list[gs.Node]:
    """Point the Shape / Size nodes among x's `readers` at its codes q; the others."""
    rest = []
    for n in readers:
        if SHAPE_CODES and n.op in SHAPE_OPS and n.inputs[0] is x:
            n.inputs[0] = q
        else:
            rest.append(n)
    return rest


def pads_on_codes(graph: gs.Graph) -> int:
    """Rewrite each zero Pad whose output only QuantizeLinear nodes read (after placement):
    the Pad pads the codes with the zero point; a DequantizeLinear -> QuantizeLinear pair of
    equal parameters in front of it cancels. Returns how many Pads run on codes."""
    if not PAD_CODES:
        return 0
    from .ortplan import MOVE_OPS  # onnxruntime moves a Q up through these (and runs them
    # on codes, which the plan chose not to: crepe's uint8 MaxPool ran 9x slower than float)
    done = 0
    for pad in [n for n in graph.nodes if n.op == "Pad"]:
        y = pad.outputs[0]
        if (y in graph.outputs or len(y.outputs) != 1 or y.outputs[0].op != "QuantizeLinear"
                or not _zero_value(pad) or not _uint8_per_tensor(y.outputs[0])):
            continue  # (the placement writes one QuantizeLinear per tensor)
        q = y.outputs[0]
        scale, zero = q.inputs[1], q.inputs[2]
        x = pad.inputs[0]
        src = _codes_of(x, scale, zero)
        if src is None and x.inputs and x.inputs[0].op in MOVE_OPS:
            continue
        codes = q.outputs[0]
        if src is None:  # quantize before the Pad
            src = gs.Variable(f"{codes.name}_unpadded", dtype=codes.dtype)
            graph.nodes.append(gs.Node("QuantizeLinear", f"{codes.name}_unpadded_Q",
                                       inputs=[x, scale, zero], outputs=[src]))
        value = constant(f"{codes.name}_pad_value",
                         np.asarray(constant_value(zero)).reshape(()).copy())
        pad.inputs = [src, pad.inputs[1], value, *pad.inputs[3:]]
        q.outputs.clear()
        pad.outputs = [codes]
        done += 1
    return done


def _zero_value(pad: gs.Node) -> bool:
    return _pads_zeros(pad.attrs.get("mode", "constant"), [t.name for t in pad.inputs],
                       lambda: constant_value(pad.inputs[2]))


def _uint8_per_tensor(q: gs.Node) -> bool:
    """A per-tensor QuantizeLinear to uint8 (constant scale and zero point)."""
    if len(q.inputs) < 3:
        return False
    s, z = (constant_value(t) for t in q.inputs[1:3])
    return s is not None and z is not None and s.size == z.size == 1 and z.dtype == np.uint8


def _codes_of(x: gs.Tensor, scale: gs.Tensor, zero: gs.Tensor) -> gs.Variable | None:
    """q if x = DequantizeLinear(q) with the same scale and zero point, else None."""
    if len(x.inputs) != 1 or x.inputs[0].op != "DequantizeLinear":
        return None
    dq = x.inputs[0]
    if len(dq.inputs) < 3:
        return None
    a = [constant_value(t) for t in (dq.inputs[1], dq.inputs[2], scale, zero)]
    if any(v is None or v.size != 1 for v in a):
        return None
    if float(a[0].reshape(-1)[0]) != float(a[2].reshape(-1)[0]) or \
            int(a[1].reshape(-1)[0]) != int(a[3].reshape(-1)[0]) or a[1].dtype != a[3].dtype:
        return None
    return dq.inputs[0]
