"""A MatMul's bias as [1, N] where its input's sizes are all static (export/ortbias.py): the
W8A8 onnxruntime-target layer then runs on an integer kernel instead of the float Gemm that
onnxruntime's MatMulAddFusion makes of it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnx_obc import convert

from .. import builders as b


def mlp3d(batch) -> onnx.ModelProto:
    """x [batch, 6, 16] -> MatMul W1 + b1 -> Relu -> MatMul W2 + b2 -> y."""
    rng = np.random.default_rng(0)
    inits = [b.weight("W1", (16, 32), 1), b.weight("W2", (32, 8), 2),
             onnx.numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1"),
             onnx.numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["o"], name="fc2"),
             helper.make_node("Add", ["o", "b2"], ["y"], name="add2")]
    return b.make(nodes, [b.vi("x", [batch, 6, 16])], [b.vi("y", [batch, 6, 8])], inits)


@pytest.mark.parametrize("batch", [2, "N"])
def test_static_sizes_get_the_bias_as_a_row_and_run_on_integer_kernels(batch):
    """Fixed batch 2: both biases [1, N], 2 of 2 layers on MatMulIntegerToFloat (the 1-D
    bias gave 0 of 2: float Gemm); a free batch keeps the 1-D vectors (and its fusion)."""
    model = mlp3d(batch)
    x = np.random.default_rng(1).standard_normal((64, 6, 16)).astype(np.float32)
    calib = [{"x": x[i:i + 2]} for i in range(0, 64, 2)]
    r = convert(model, None, calib=calib, bits=8, act_bits=8, runtime="onnxruntime",
                float_stem=False, float_highres=False, correct=False, progress=False)
    shapes = {t.name: list(t.dims) for t in r.model.graph.initializer if t.name in ("b1", "b2")}
    assert shapes == ({"b1": [1, 32], "b2": [1, 8]} if batch == 2 else {"b1": [32], "b2": [8]})
    f = r.report.fusion
    assert (f["integer"], f["layers"]) == (2, 2)
    # timed on the batch the model fixes (1 sample: "Got invalid dimensions", not measured)
    assert "error" not in f["latency"] and f["latency"]["batch"] == (2 if batch == 2 else 1)
    y0 = b.run(model, {"x": x[:2]})[0]
    y1 = b.run(r.model, {"x": x[:2]})[0]
    assert np.linalg.norm(y1 - y0) / np.linalg.norm(y0) < 0.05
