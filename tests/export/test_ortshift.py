"""A uniform shift v = x + c before integer Convs goes into the zero point of v's codes (the
Add the fold stage keeps in front of a Conv that pads): the Add leaves the graph, x's zeros
are codes again, the Convs still fuse, and a shift that is not uniform, read by a float op,
or too far from the grid stays an Add."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnx_obc.export import act_tensors, act_values, build
from onnx_obc.export import ortshift
from onnx_obc.layers import find_layers

from .. import builders as b
from . import helpers as h
from .test_onnxruntime import optimized_ops, ranges, rel, run

SHIFT = 3.0  # many steps of v's natural grid


def gated(shift: np.ndarray | float = SHIFT, float_reader: bool = False, seed: int = 0,
          constant_node: bool = False) -> onnx.ModelProto:
    """x [N, 4, 6, 6] --c1 (pads 1)--> a --a * HardSigmoid(a)--> g --Add(shift)--> v
       --c2 (pads 1)--> y [N, 6, 6, 6]; float_reader: v also goes to a Relu output;
    constant_node: the shift is a Constant node's output (as paddle2onnx writes it)."""
    c = np.broadcast_to(np.asarray(shift, np.float32), (1, 6, 1, 1)).copy()
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["a"], name="c1", pads=[1] * 4),
             helper.make_node("HardSigmoid", ["a"], ["s"], name="hsig", alpha=1 / 6),
             helper.make_node("Mul", ["a", "s"], ["g"], name="gate"),
             helper.make_node("Add", ["g", "shift"], ["v"], name="shift"),
             helper.make_node("Conv", ["v", "W2", "B2"], ["y"], name="c2", pads=[1] * 4)]
    inits = [b.weight("W1", (6, 4, 3, 3), seed), b.weight("B1", (6,), seed + 1),
             b.weight("W2", (6, 6, 3, 3), seed + 2), b.weight("B2", (6,), seed + 3),
             numpy_helper.from_array(c, "shift")]
    if constant_node:
        nodes.insert(0, helper.make_node("Constant", [], ["shift"], value=inits.pop()))
    # B1 - 4: most of a is <= -3, where x = a * HardSigmoid(a) is 0 (71% of x here)
    inits[1] = numpy_helper.from_array(numpy_helper.to_array(inits[1]) - 4, "B1")
    outputs = [b.vi("y", [b.BATCH, 6, 6, 6])]
    if float_reader:
        nodes.append(helper.make_node("Relu", ["v"], ["r"], name="relu"))
        outputs.append(b.vi("r", [b.BATCH, 6, 6, 6]))
    return onnx.shape_inference.infer_shapes(  # x's shape: the shift must not grow it
        b.make(nodes, [b.vi("x", [b.BATCH, 4, 6, 6])], outputs, inits))


def export(model: onnx.ModelProto, v_range: tuple[float, float] | None = None,
           absorb: bool = True, monkeypatch=None) -> tuple[onnx.ModelProto, dict]:
    layers = find_layers(model)[0]
    feed = b.feeds(model, 32, seed=3)
    scales = act_values(ranges(model, feed, act_tensors(model, layers, "onnxruntime")),
                        "onnxruntime")
    if v_range is not None:
        scales["v"] = v_range
    monkeypatch.setattr(ortshift, "ABSORB_SHIFTS", absorb)
    out = build(model, layers, h.solutions(model, layers, bits=8), act_scales=scales,
                target="onnxruntime", target_options={"act_type": "u8"})
    return out, feed


def q_of(model: onnx.ModelProto, tensor: str) -> tuple[float, int]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear"
             and n.input[0] == tensor)
    return float(inits[q.input[1]]), int(inits[q.input[2]])


@pytest.mark.parametrize("constant_node", [False, True])
def test_the_add_leaves_and_the_zero_point_takes_the_shift(monkeypatch, constant_node) -> None:
    model = gated(constant_node=constant_node)
    out, feed = export(model, monkeypatch=monkeypatch)
    onnx.checker.check_model(out, full_check=True)
    assert "Add" not in {n.op_type for n in out.graph.node}
    kept, _ = export(model, absorb=False, monkeypatch=monkeypatch)
    s0, z0 = q_of(kept, "v")
    s1, z1 = q_of(out, "g")  # the Q reads x (= g) now
    k = z1 - z0
    assert k != 0 and abs(k * s1 - SHIFT) <= 1e-6 * SHIFT  # c is k codes exactly
    assert abs(s1 / s0 - 1) <= ortshift.TOLERANCE
    ops, before = optimized_ops(out), optimized_ops(kept)
    assert before["Add"] == 1 and ops + Counter(Add=1) == before, (ops, before)
    assert ops["QLinearConv"] == 1  # c1; c2 writes the graph output, float
    fused = run(out, feed, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    fake = run(out, feed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert rel(fused, fake) <= 0.02
    assert rel(fake, run(kept, feed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)) <= 0.05


def test_zeros_of_x_are_exact_codes_again(monkeypatch) -> None:
    """x = a * HardSigmoid(a) is 0 wherever a <= -3 (most of it here). With v's grid at
    S = c / 20.5, every such v = c is half a step off the grid: a bias the Conv sums over
    its 54 inputs. Taken into the zero point (S' = c / 20 or c / 21), the zeros are codes."""
    model = gated()
    layers = find_layers(model)[0]
    feed = b.feeds(model, 32, seed=3)
    dense = run(build(model, layers, h.solutions(model, layers, bits=8)), feed,
                ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    s = SHIFT / 20.5
    v_range = (-40 * s, 215 * s)  # 255 steps of s, zero point 40
    err = {}
    for absorb in (True, False):
        out, _ = export(model, v_range, absorb, monkeypatch)
        err[absorb] = rel(run(out, feed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL), dense)
    assert err[True] <= 0.5 * err[False], err


def test_shifts_that_stay_an_add(monkeypatch) -> None:
    per_channel = np.linspace(0.5, 1.0, 6).reshape(1, 6, 1, 1)
    for model in (gated(per_channel), gated(float_reader=True)):
        out, _ = export(model, monkeypatch=monkeypatch)
        assert "Add" in {n.op_type for n in out.graph.node}
    s = SHIFT / 2.5  # k = 2 or 3: the scale would move 20%
    out, _ = export(gated(), (-40 * s, 215 * s), monkeypatch=monkeypatch)
    assert "Add" in {n.op_type for n in out.graph.node}
    out, _ = export(gated(), absorb=False, monkeypatch=monkeypatch)
    assert "Add" in {n.op_type for n in out.graph.node}
