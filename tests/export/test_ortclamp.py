"""Max / Min bounds before a saturating QuantizeLinear dropped (export/ortclamp.py):
openWakeWord's tf2onnx pattern LeakyRelu -> Max(., -0.4) -> Conv / MaxPool."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnx_obc.export import build, ortclamp
from onnx_obc.layers import find_layers

from .. import builders as b
from . import helpers as h
from .test_onnxruntime import compressed, optimized_ops, rel, run

NONE = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
FULL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def leaky_max_cnn(seed: int = 0, floor: float = -0.4) -> onnx.ModelProto:
    """x [N, 4, 8, 8] --c1--> LeakyRelu, Max(., floor) --c2--> LeakyRelu, Max(., floor),
    MaxPool 2x2 --c3--> GlobalAveragePool, Flatten --fc--> y [N, 5] (the tf2onnx pattern)."""
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="c1", pads=[1] * 4),
             helper.make_node("LeakyRelu", ["c1"], ["l1"], name="leaky1", alpha=0.2),
             helper.make_node("Max", ["l1", "floor"], ["m1"], name="max1"),
             helper.make_node("Conv", ["m1", "W2", "B2"], ["c2"], name="c2", pads=[1] * 4),
             helper.make_node("LeakyRelu", ["c2"], ["l2"], name="leaky2", alpha=0.2),
             helper.make_node("Max", ["floor", "l2"], ["m2"], name="max2"),
             helper.make_node("MaxPool", ["m2"], ["p2"], name="pool", kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("Conv", ["p2", "W3", "B3"], ["c3"], name="c3", pads=[1] * 4),
             helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"], name="fc", transB=1)]
    inits = [b.weight("W1", (8, 4, 3, 3), seed), b.weight("B1", (8,), seed + 1),
             b.weight("W2", (8, 8, 3, 3), seed + 2), b.weight("B2", (8,), seed + 3),
             b.weight("W3", (8, 8, 3, 3), seed + 4), b.weight("B3", (8,), seed + 5),
             b.weight("Wf", (5, 8), seed + 6), b.weight("bf", (5,), seed + 7),
             numpy_helper.from_array(np.full((1, 1, 1, 1), floor, np.float32), "floor")]
    return b.make(nodes, [b.vi("x", [b.BATCH, 4, 8, 8])], [b.vi("y", [b.BATCH, 5])], inits)


def test_bounds_dropped_and_the_layers_fused(monkeypatch) -> None:
    """The onnxruntime target drops both Max nodes (one before a Conv, one before a MaxPool):
    each LeakyRelu stays QLinearLeakyRelu, the MaxPool runs on the codes, no float Max or
    DequantizeLinear is left, and the output is as close to the float model with the same
    weights as with the bounds (closer: one rounding fewer)."""
    model = leaky_max_cnn()
    feed = {k: v * 3.0 for k, v in b.feeds(model, 32, seed=3).items()}  # the floor is hit
    on, _, _ = compressed(model, feed=feed)
    monkeypatch.setattr(ortclamp, "BOUNDS", ())
    off, _, _ = compressed(model, feed=feed)
    onnx.checker.check_model(on, full_check=True)
    assert sum(n.op_type == "Max" for n in off.graph.node) == 2
    assert not any(n.op_type == "Max" for n in on.graph.node)
    ops_on, ops_off = optimized_ops(on), optimized_ops(off)
    assert ops_on["QLinearConv"] == ops_off["QLinearConv"] == 3
    assert ops_on["QLinearLeakyRelu"] == ops_off["QLinearLeakyRelu"] == 2
    assert ops_on["Max"] == 0 and ops_off["Max"] == 2
    assert ops_on["NhwcMaxPool"] == 1 and ops_on["MaxPool"] == 0  # on the codes
    assert ops_on["DequantizeLinear"] == 0 < ops_off["DequantizeLinear"]  # no float island
    assert ops_on["QuantizeLinear"] == 1  # the input's
    layers = find_layers(model)[0]  # the reference: the model with the compressed weights
    ref = run(build(model, layers, h.solutions(model, layers, bits=8)), feed, FULL)
    assert rel(run(on, feed, FULL), ref) <= rel(run(off, feed, FULL), ref) * 1.02
    assert rel(run(on, feed, FULL), run(on, feed, NONE)) <= 0.02


def qdq_bound(op: str, c: float, scale: float, zero: int, dtype: type = np.uint8,
              reader: str = "QuantizeLinear") -> onnx.ModelProto:
    """x [N, 6] -> op(x, c) -> Q(scale, zero) -> DQ -> y; reader "Relu": a float reader
    between the bound and its Q."""
    zp = numpy_helper.from_array(np.array(zero, dtype), "z")
    nodes = [helper.make_node(op, ["x", "c"], ["v"], name="bound")]
    src = "v"
    if reader != "QuantizeLinear":
        nodes.append(helper.make_node(reader, ["v"], ["r"], name="reader"))
        src = "r"
    nodes += [helper.make_node("QuantizeLinear", [src, "s", "z"], ["q"], name="q"),
              helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")]
    inits = [numpy_helper.from_array(np.array(c, np.float32), "c"),
             numpy_helper.from_array(np.array(scale, np.float32), "s"), zp]
    return b.make(nodes, [b.vi("x", [b.BATCH, 6])], [b.vi("y", [b.BATCH, 6])], inits)


@pytest.mark.parametrize("op, c, scale, zero, dtype", [
    ("Max", -0.4, 0.1, 4, np.uint8),  # code of c: -4 + 4 = 0, the lowest
    ("Max", -0.43, 0.1, 4, np.uint8),  # below the grid: saturates as well
    ("Min", 2.0, 0.01, 55, np.uint8),  # 200 + 55 = 255, the highest
    ("Max", -1.28, 0.01, 0, np.int8),  # -128
])
def test_dropped_exactly_where_the_code_saturates(op, c, scale, zero, dtype) -> None:
    model = qdq_bound(op, c, scale, zero, dtype)
    out, n = ortclamp.drop_bounds(model)
    assert n == 1 and not any(x.op_type == op for x in out.graph.node)
    x = np.random.default_rng(0).uniform(-3, 3, (64, 6)).astype(np.float32)
    np.testing.assert_array_equal(run(out, {"x": x}, NONE), run(model, {"x": x}, NONE))


@pytest.mark.parametrize("op, c, scale, zero, dtype, reader", [
    ("Max", -0.4, 0.1, 5, np.uint8, "QuantizeLinear"),  # c is code 1: inside the grid
    ("Max", -0.4, 0.05, 0, np.int8, "QuantizeLinear"),  # symmetric int8: c is code -8
    ("Min", 2.0, 0.01, 54, np.uint8, "QuantizeLinear"),  # 254: one code below the top
    ("Max", -0.4, 0.1, 4, np.uint8, "Relu"),  # a float reader in between
])
def test_kept_where_it_changes_the_codes(op, c, scale, zero, dtype, reader) -> None:
    model = qdq_bound(op, c, scale, zero, dtype, reader)
    out, n = ortclamp.drop_bounds(model)
    assert n == 0 and out is model


def test_unquantized_pair_dropped_only_when_read_by_the_bound_alone() -> None:
    """x0 -> Q1 -> DQ1 -> Max -> Q2: Q2 reads x0 (Q1, DQ1 gone); with a second reader of
    DQ1's output the pair stays and Q2 reads DQ1."""
    def model(second: bool) -> onnx.ModelProto:
        nodes = [helper.make_node("QuantizeLinear", ["x", "s1", "z1"], ["q1"], name="q1"),
                 helper.make_node("DequantizeLinear", ["q1", "s1", "z1"], ["d1"], name="dq1"),
                 helper.make_node("Max", ["d1", "c"], ["v"], name="bound"),
                 helper.make_node("QuantizeLinear", ["v", "s", "z"], ["q"], name="q"),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")]
        outs = [b.vi("y", [b.BATCH, 6])]
        if second:
            nodes.append(helper.make_node("Relu", ["d1"], ["r"], name="other"))
            outs.append(b.vi("r", [b.BATCH, 6]))
        inits = [numpy_helper.from_array(np.array(v, t), k) for k, v, t in (
            ("c", -0.4, np.float32), ("s", 0.1, np.float32), ("z", 4, np.uint8),
            ("s1", 0.05, np.float32), ("z1", 128, np.uint8))]
        return b.make(nodes, [b.vi("x", [b.BATCH, 6])], outs, inits)

    alone, n1 = ortclamp.drop_bounds(model(False))
    shared, n2 = ortclamp.drop_bounds(model(True))
    assert n1 == n2 == 1
    assert [n.op_type for n in alone.graph.node] == ["QuantizeLinear", "DequantizeLinear"]
    q = next(n for n in alone.graph.node if n.op_type == "QuantizeLinear")
    assert q.input[0] == "x"
    q = next(n for n in shared.graph.node if n.output[0] == "q")
    assert q.input[0] == "d1"
