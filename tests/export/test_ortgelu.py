"""A written-out GELU between quantized layers as one com.microsoft Gelu
(export/ortgelu.py), its Mul kept off the integer kernels (ortplan's float gates)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnx_obc.export import ortgelu, ortplan
from onnx_obc.layers import find_layers

from .. import builders as b
from .test_onnxruntime import compressed, optimized_ops, rel, run

NONE = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
FULL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def gelu_cnn(seed: int = 0, half: float = 0.5) -> onnx.ModelProto:
    """Conv -> a * (Erf(a / sqrt 2) + 1) * half -> Conv -> Conv (paddle2onnx's GELU)."""
    gelu, consts = b.gelu("a", "g", half)
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["a"], name="c1", pads=[1] * 4),
             *gelu,
             helper.make_node("Conv", ["g", "W2", "B2"], ["c2"], name="c2", pads=[1] * 4),
             helper.make_node("Conv", ["c2", "W3", "B3"], ["y"], name="c3", pads=[1] * 4)]
    inits = [b.weight("W1", (8, 4, 3, 3), seed), b.weight("B1", (8,), seed + 1),
             b.weight("W2", (8, 8, 3, 3), seed + 2), b.weight("B2", (8,), seed + 3),
             b.weight("W3", (4, 8, 3, 3), seed + 4), b.weight("B3", (4,), seed + 5), *consts]
    return b.make(nodes, [b.vi("x", [b.BATCH, 4, 6, 6])], [b.vi("y", [b.BATCH, 4, 6, 6])],
                  inits)


def test_gelu_between_integer_convs_is_one_gelu(monkeypatch) -> None:
    """onnxruntime target: the GELU's Mul stays off QLinearMul (a float gate through the
    Erf), the five nodes become one Gelu reading the first conv's DequantizeLinear, the
    convs stay on QLinearConv and the output is the written-out form's (same function)."""
    model = gelu_cnn()
    at = {n.name: i for i, n in enumerate(model.graph.node)}
    p = ortplan.plan(model, ortplan.layer_nodes(model, find_layers(model)[0]))
    assert at["g.mul"] not in p.roles and "g.m" not in p.tensors
    out, feed, _ = compressed(model)
    onnx.checker.check_model(out, full_check=True)
    assert [n.op_type for n in out.graph.node].count("Gelu") == 1
    assert not any(n.op_type == "Erf" for n in out.graph.node)
    ops = optimized_ops(out)
    assert ops["QLinearConv"] == 2 and ops["Gelu"] == 1 and ops["QLinearMul"] == 0  # c3: tail
    monkeypatch.setattr(ortgelu, "gelu_nodes", lambda m: (m, 0))
    written, _, _ = compressed(model, feed=feed)
    assert rel(run(out, feed, NONE), run(written, feed, NONE)) <= 1e-5
    assert rel(run(out, feed, FULL), run(out, feed, NONE)) <= 0.02


def test_other_constants_are_not_a_gelu() -> None:
    """0.4 instead of 0.5: not GELU, nothing rewritten."""
    model = gelu_cnn(half=0.4)
    out, n = ortgelu.gelu_nodes(model)
    assert n == 0 and out is model
    out, n = ortgelu.gelu_nodes(gelu_cnn())
    assert n == 1 and [x.op_type for x in out.graph.node].count("Gelu") == 1
    feed = b.feeds(model, 4, seed=2)
    np.testing.assert_allclose(b.run(out, feed)[0], b.run(gelu_cnn(), feed)[0], rtol=1e-5,
                               atol=1e-5)
