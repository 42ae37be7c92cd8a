"""HardSwish on the codes: two integer kernels instead of a float island.

onnxruntime has no integer kernel for HardSwish (1.31, CPU): after placement each one runs
DequantizeLinear -> HardSwish (expanded to HardSigmoid and Mul) -> QuantizeLinear, three
float passes over a whole feature map between two integer convolutions. On uint8 codes
(scale s, zero point z) it splits into two ops onnxruntime fuses (QLinearAdd, QLinearMul):

    gate = Q(x / 6 + 1/2; 1/255, 0)  the codes of x read with scale s / 6, plus a constant
                                     1/2: uint8 saturation at 0 and 255 is HardSigmoid's
                                     clip to [0, 1]                    (QLinearAdd)
    y    = Q(x * DQ(gate); y's own scale and zero point)                (QLinearMul)

The gate is exact where it saturates (x <= -3, x >= 3) and within 1/510 between, where
|x| <= 3, so y moves by at most 3/510 before its own rounding. int8 (s8) groups of Add and
Mul are not fused on x86 (checked with 1.31): there the HardSwish stays as placed.
Measured on a 64 x 112 x 112 map, 1 thread: 0.26 ms against 0.86 ms for the float path,
the same codes; models: README "Deployment", HardSwish on the codes.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graph import DEFAULT_DOMAINS, constant, constant_value

HARDSWISH_ON_CODES = True  # measured (README "Deployment", HardSwish on the codes)


def hardswish_on_codes(graph: gs.Graph, unique) -> int:
    """Rewrite every DequantizeLinear(uint8 x) -> HardSwish -> QuantizeLinear in `graph`
    as above; returns how many. `unique(base)` gives a tensor name the graph lacks."""
    if not HARDSWISH_ON_CODES:
        return 0
    if not any(n.op == "HardSwish" for n in graph.nodes):
        return 0
    graph.cleanup()  # readers the placement left unread (a shift's Add, ortshift.py) go
    outputs = {t.name for t in graph.outputs}
    shared: dict[str, gs.Constant] = {}  # one copy of each fixed constant per graph

    def fixed(name: str, value: float, dtype: type) -> gs.Constant:
        if name not in shared:
            shared[name] = constant(unique(f"hardswish_{name}"), np.array(value, dtype=dtype))
        return shared[name]

    done = 0
    swishes = [n for n in graph.nodes
               if n.op == "HardSwish" and (n.domain or "") in DEFAULT_DOMAINS]
    for node in swishes:
        codes = _uint8_source(node.inputs[0])
        y = node.outputs[0]
        if codes is None or y.name in outputs or len(y.outputs) != 1 or (
                y.outputs[0].op != "QuantizeLinear" or y.outputs[0].inputs[0] is not y):
            continue
        q, scale, zero = codes

        def var(suffix: str, dtype: type = np.float32, shape: list | None = q.shape
                ) -> gs.Variable:
            return gs.Variable(unique(f"{y.name}_{suffix}"), dtype=dtype, shape=shape)

        x6, half, gate, x = var("x6"), var("half", shape=[]), var("gate"), var("x")
        gate_q, gate_dq = var("gate_quantized", np.uint8), var("gate_dequantized")
        s6 = constant(unique(f"{y.name}_x6_scale"), constant_value(scale) / np.float32(6))
        g_scale = fixed("gate_scale", 1 / 255, np.float32)
        g_zero = fixed("gate_zero_point", 0, np.uint8)
        graph.nodes += [
            gs.Node("DequantizeLinear", f"{x6.name}_DequantizeLinear",
                    inputs=[q, s6, zero], outputs=[x6]),
            gs.Node("DequantizeLinear", f"{half.name}_DequantizeLinear",
                    inputs=[fixed("half_code", 1, np.uint8),
                            fixed("half_scale", 0.5, np.float32), g_zero], outputs=[half]),
            gs.Node("Add", f"{gate.name}_Add", inputs=[x6, half], outputs=[gate]),
            gs.Node("QuantizeLinear", f"{gate.name}_QuantizeLinear",
                    inputs=[gate, g_scale, g_zero], outputs=[gate_q]),
            gs.Node("DequantizeLinear", f"{gate.name}_DequantizeLinear",
                    inputs=[gate_q, g_scale, g_zero], outputs=[gate_dq]),
            gs.Node("DequantizeLinear", f"{x.name}_DequantizeLinear",
                    inputs=[q, scale, zero], outputs=[x]),
            gs.Node("Mul", node.name or f"{y.name}_Mul", inputs=[x, gate_dq], outputs=[y])]
        node.outputs.clear()  # the HardSwish (and its DequantizeLinear, if alone) go
        node.inputs.clear()
        done += 1
    return done  # export_graph's cleanup drops the emptied nodes


def _uint8_source(x: gs.Tensor) -> tuple[gs.Tensor, gs.Constant, gs.Constant] | None:
    """(codes, scale, zero point), the two constants, where `x` is DequantizeLinear of uint8
    codes with one scale and zero point; else None."""
    if not isinstance(x, gs.Variable) or len(x.inputs) != 1:
        return None
    dq = x.inputs[0]
    if dq.op != "DequantizeLinear" or len(dq.inputs) != 3:
        return None
    q, scale, zero = dq.inputs
    if not (isinstance(scale, gs.Constant) and isinstance(zero, gs.Constant)):
        return None
    s, z = constant_value(scale), constant_value(zero)
    if s.size != 1 or z.size != 1 or z.dtype != np.uint8 or s.dtype != np.float32:
        return None
    return q, scale, zero
