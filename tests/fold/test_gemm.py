"""A 2-D MatMul and its bias Add as one Gemm (fold/gemm.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnx_obc.export import fusion
from onnx_obc.fold import fold, gemm

from .. import builders as b
from ..export.test_onnxruntime import compressed


def _i64(name: str, v) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(v, np.int64), name)


def head(kind: str = "flatten", bias_shape: tuple = (3,)) -> onnx.ModelProto:
    """x [N, 4, 6, 6] --c1--> GlobalAveragePool --flatten--> [N, 4] --MatMul W [4, 3]--> + b.
    kind "flatten": a Flatten; "paddle": Reshape to Concat(Shape(p)[0:1], [-1]) computed
    through int32 Casts, as paddle2onnx writes it (shape inference gives no rank there); "3d": the MatMul reads [N, 1, 4] (left alone);
    "twice": the MatMul's output is also a graph output (left alone)."""
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c"], name="c1", pads=[1] * 4),
             helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap")]
    if kind == "paddle":
        nodes += [helper.make_node("Shape", ["p"], ["sh64"]),
                  helper.make_node("Cast", ["sh64"], ["sh"], to=onnx.TensorProto.INT32),
                  helper.make_node("Slice", ["sh", "zero", "one"], ["n32"]),
                  helper.make_node("Cast", ["n32"], ["n"], to=onnx.TensorProto.INT64),
                  helper.make_node("Concat", ["n", "minus1"], ["target"], axis=0),
                  helper.make_node("Reshape", ["p", "target"], ["f"])]
    elif kind == "3d":
        nodes += [helper.make_node("Reshape", ["p", "shape3"], ["f"])]
    else:
        nodes += [helper.make_node("Flatten", ["p"], ["f"], axis=1)]
    nodes += [helper.make_node("MatMul", ["f", "W"], ["z"], name="fc"),
              helper.make_node("Add", ["z", "bias"], ["y"], name="bias_add")]
    inits = [b.weight("W1", (4, 4, 3, 3), 0), b.weight("B1", (4,), 1), b.weight("W", (4, 3), 2),
             numpy_helper.from_array(np.linspace(-1, 1, int(np.prod(bias_shape)), dtype=np.float32)
                                     .reshape(bias_shape), "bias"),
             _i64("zero", [0]), _i64("one", [1]), _i64("minus1", [-1]), _i64("shape3", [0, 1, 4])]
    out_shape = [b.BATCH, 1, 3] if kind == "3d" else [b.BATCH, 3]
    outputs = [b.vi("y", out_shape)] + ([b.vi("z", [b.BATCH, 3])] if kind == "twice" else [])
    return b.make(nodes, [b.vi("x", [b.BATCH, 4, 6, 6])], outputs, inits)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(["y"], {"x": x})[0]


@pytest.mark.parametrize("kind", ["flatten", "paddle"])
def test_the_head_becomes_one_gemm_and_runs_on_qgemm(kind) -> None:
    model = head(kind)
    out, done = fold(model)
    assert done.gemm == 1 and "1 MatMul + bias Add as Gemm" in done.summary()
    fc = next(n for n in out.graph.node if n.name == "fc")
    assert fc.op_type == "Gemm" and list(fc.input)[1:] == ["W", "bias"] and fc.output[0] == "y"
    assert not any(n.op_type in ("MatMul", "Add") for n in out.graph.node)
    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(0).standard_normal((3, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(model, x), rtol=1e-6, atol=1e-6)
    q, _, layers = compressed(out)
    f = fusion.check(q, layers)
    assert f.integer == f.layers == 2 and f.kernels.get("QGemm") == 1


@pytest.mark.parametrize("kind, bias_shape", [("3d", (3,)), ("twice", (3,)),
                                              ("flatten", (2, 3))])
def test_left_alone(kind, bias_shape) -> None:
    """A 3-D input (no Gemm for it), an output read elsewhere, a bias that is no vector."""
    model = head(kind, bias_shape)
    out, done = fold(model)
    assert done.gemm == 0 and any(n.op_type == "MatMul" for n in out.graph.node)


def test_the_rule_off(monkeypatch) -> None:
    monkeypatch.setattr(gemm, "GEMM_HEADS", False)
    out, done = fold(head())
    assert done.gemm == 0 and any(n.op_type == "MatMul" for n in out.graph.node)


def test_a_reshape_s_rank_from_its_shape_input(monkeypatch) -> None:
    """Where shape inference leaves a Reshape's output unranked (ppocr_cls: its flatten's
    target goes through int32 Casts), the length of the shape input gives the rank."""
    from onnx_obc.fold import shapes

    model = head("paddle")
    full = shapes._inferred_dims(model)
    assert full["target"] == [2]
    monkeypatch.setattr(shapes, "_inferred_dims",
                        lambda m: {k: v for k, v in full.items() if k != "f"})
    assert shapes.ranks(model)["f"] == 2
