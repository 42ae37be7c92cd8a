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
the same codes; models: docs/deployment.md, HardSwish on the codes.

Where x's grid puts -3 and 3 on codes (3 / s an integer k, z >= k: `snapped` makes it so
before placement) the gate needs no arithmetic: it is x's own codes clipped to
[z - k, z + k] and read with scale s / 6 and zero point z - k,

    gate = DQ(Clip(q, z - k, z + k); s / 6, z - k) = clip((x + 3) / 6, 0, 1)   exactly,

a Clip on uint8 (one pass with no requantization: 10.6 against 22.8 us for QLinearAdd on a
64 x 56 x 56 map, 1 thread) or nothing where x's grid is [-3, 3] or within it.

A squeeze-excite gate HardSigmoid(x) = clip(alpha x + 1/2, 0, 1) alone (PP-OCR's alpha 1/5,
PP-LCNet's 1/6) is the same on codes with h = 1 / (2 alpha) for 3: gate_inputs names them,
the placement snaps x's grid and gives the gate's output the grid (alpha s, z - k), and
hardsigmoid_on_codes writes DequantizeLinear -> HardSigmoid -> QuantizeLinear as the Clip.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from .graph import DEFAULT_DOMAINS, constant, constant_value

HARDSWISH_ON_CODES = True  # measured (docs/deployment.md, HardSwish on the codes)
GATE_BY_CLIP = True  # the clipped-codes gate where the grid allows (the same section)
SE_GATES = True  # squeeze-excite HardSigmoid gates on the codes likewise (gate_inputs)


def snapped(scale: float, zero: int, h: float = 3.0) -> tuple[float, int] | None:
    """The uint8 grid (scale, zero point) nearest (scale, zero) whose codes hold -h and h
    (hardswish's gate: 3): scale h / k for the integer k = floor(h / scale) (coarser by at
    most 1 / k, the range kept), the zero point moved with it; None where -h is below the
    grid (zero < k: the gate's zero point z - k would be negative) or the step is over h."""
    k = math.floor(h / scale + 1e-6) if scale > 0 else 0
    if not GATE_BY_CLIP or k < 1:
        return None
    s = h / k
    z = int(np.clip(np.rint(zero * scale / s), 0, 255))
    return (s, z) if z >= k else None


def gate_inputs(graph: gs.Graph) -> dict[str, tuple[str, float]]:
    """HardSigmoid(x) = clip(alpha x + 1/2, 0, 1) (a squeeze-excite gate; PP-LCNet's
    alpha 1/6, PP-OCR's 1/5): x's name -> (its output's name, alpha). On x's codes with -h
    and h on the grid (h = 1 / (2 alpha), scale s = h / k, zero point z >= k) the gate is
    those codes clipped to [z - k, z + k] read with scale alpha s and zero point z - k,
    exactly (hardsigmoid_on_codes)."""
    out = {}
    for n in graph.nodes if SE_GATES else []:
        a = {k: float(v) for k, v in n.attrs.items()} if n.op == "HardSigmoid" else {}
        if (a and (n.domain or "") in DEFAULT_DOMAINS and n.inputs and a.get("alpha", 0.2) > 0
                and a.get("beta", 0.5) == 0.5):
            out[n.inputs[0].name] = (n.outputs[0].name, a.get("alpha", 0.2))
    return out


def hardsigmoid_on_codes(graph: gs.Graph, unique) -> int:
    """Each DequantizeLinear(uint8 x) -> HardSigmoid -> QuantizeLinear whose grids the
    placement set as gate_inputs says, as a Clip on x's codes (or nothing where x's grid
    is within [-h, h]): onnxruntime has no integer HardSigmoid, so the gate ran three float
    nodes between two integer ones. Returns how many."""
    done = 0
    for node in [n for n in graph.nodes if n.op == "HardSigmoid"]:
        codes, y = _uint8_source(node.inputs[0]), node.outputs[0]
        alpha = float(node.attrs.get("alpha", 0.2))
        if codes is None or float(node.attrs.get("beta", 0.5)) != 0.5 or len(y.outputs) != 1:
            continue
        q, scale, zero = codes
        quant = y.outputs[0]
        if quant.op != "QuantizeLinear" or len(quant.inputs) != 3 or quant.inputs[0] is not y:
            continue
        s, z = float(constant_value(scale)), int(constant_value(zero))
        k = round(0.5 / alpha / s)
        gs_, gz = (constant_value(t) if isinstance(t, gs.Constant) else None
                   for t in quant.inputs[1:])
        if (gs_ is None or gz is None or gz.dtype != np.uint8 or k < 1 or k > z
                or abs(0.5 / alpha / s - k) > 1e-4 or int(gz) != z - k
                or abs(float(gs_) - alpha * s) > 1e-6 * alpha * s):
            continue
        out = quant.outputs[0]
        lo, hi = constant(unique(f"{out.name}_min"), np.array(z - k, np.uint8)), constant(
            unique(f"{out.name}_max"), np.array(min(z + k, 255), np.uint8))
        graph.nodes.append(gs.Node("Clip", f"{out.name}_Clip", inputs=[q, lo, hi],
                                   outputs=[out]) if z - k > 0 or z + k < 255 else
                           gs.Node("Identity", f"{out.name}_Identity", inputs=[q],
                                   outputs=[out]))
        quant.outputs.clear()  # the QuantizeLinear, HardSigmoid (and DQ, if alone) go
        quant.inputs.clear()
        done += 1
    return done


def swish_inputs(graph: gs.Graph) -> dict[str, str]:
    """HardSwish input tensor name -> its output's name (default-domain nodes)."""
    return {n.inputs[0].name: n.outputs[0].name for n in graph.nodes
            if n.op == "HardSwish" and (n.domain or "") in DEFAULT_DOMAINS and n.inputs}


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

        x, gate_dq = var("x"), var("gate_dequantized")
        graph.nodes += [
            *_gate(q, scale, zero, gate_dq, var, fixed, unique),
            gs.Node("DequantizeLinear", f"{x.name}_DequantizeLinear",
                    inputs=[q, scale, zero], outputs=[x]),
            gs.Node("Mul", node.name or f"{y.name}_Mul", inputs=[x, gate_dq], outputs=[y])]
        node.outputs.clear()  # the HardSwish (and its DequantizeLinear, if alone) go
        node.inputs.clear()
        done += 1
    return done  # export_graph's cleanup drops the emptied nodes


def _gate(q: gs.Tensor, scale: gs.Constant, zero: gs.Constant, gate_dq: gs.Variable, var,
          fixed, unique) -> list[gs.Node]:
    """The nodes making gate_dq = clip((x + 3) / 6, 0, 1) from x's codes q."""
    s, z = float(constant_value(scale)), int(constant_value(zero))
    k = round(3.0 / s)
    if GATE_BY_CLIP and abs(3.0 / s - k) < 1e-4 and k <= z:  # -3 and 3 on codes (snapped)
        g_scale = constant(unique(f"{gate_dq.name}_scale"), np.array(s / 6, np.float32))
        g_zero = constant(unique(f"{gate_dq.name}_zero_point"), np.array(z - k, np.uint8))
        codes = q
        if z - k > 0 or z + k < 255:
            codes = var("gate_quantized", np.uint8)
            clip = gs.Node("Clip", f"{codes.name}_Clip", outputs=[codes], inputs=[
                q, constant(unique(f"{codes.name}_min"), np.array(z - k, np.uint8)),
                constant(unique(f"{codes.name}_max"), np.array(min(z + k, 255), np.uint8))])
        return ([clip] if codes is not q else []) + [
            gs.Node("DequantizeLinear", f"{gate_dq.name}_DequantizeLinear",
                    inputs=[codes, g_scale, g_zero], outputs=[gate_dq])]
    x6, half, gate = var("x6"), var("half", shape=[]), var("gate")
    gate_q = var("gate_quantized", np.uint8)
    s6 = constant(unique(f"{gate.name}_x6_scale"), constant_value(scale) / np.float32(6))
    g_scale = fixed("gate_scale", 1 / 255, np.float32)
    g_zero = fixed("gate_zero_point", 0, np.uint8)
    return [
        gs.Node("DequantizeLinear", f"{x6.name}_DequantizeLinear",
                inputs=[q, s6, zero], outputs=[x6]),
        gs.Node("DequantizeLinear", f"{half.name}_DequantizeLinear",
                inputs=[fixed("half_code", 1, np.uint8),
                        fixed("half_scale", 0.5, np.float32), g_zero], outputs=[half]),
        gs.Node("Add", f"{gate.name}_Add", inputs=[x6, half], outputs=[gate]),
        gs.Node("QuantizeLinear", f"{gate.name}_QuantizeLinear",
                inputs=[gate, g_scale, g_zero], outputs=[gate_q]),
        gs.Node("DequantizeLinear", f"{gate.name}_DequantizeLinear",
                inputs=[gate_q, g_scale, g_zero], outputs=[gate_dq])]


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
