"""The onnxruntime target's weights that no integer kernel takes: their DequantizeLinear
written as Cast -> [Sub] -> Mul (export/ortweights.py), bit-equal to it, and constant-folded
by onnxruntime when the session loads; left alone where an integer kernel (or onnxruntime's
own MatMulNBits fusion) takes them."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_obc import convert
from onnx_obc.export import ortweights
from onnx_obc.export.fusion import optimized_graph
from onnx_obc.export.qweights import quantize_weights

from .. import builders as b
from .test_qweights import make_case, run


def _plain(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    """The output with no graph optimization: the same kernels on the computed weight
    (optimized, a folded weight is a constant the Conv prepacks: sums in another order)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


@pytest.mark.parametrize("case", ["conv", "conv_grouped", "gemm_t1"])
@pytest.mark.parametrize("scheme", ["int8", "int4", "int3", "int4_blocked", "uint8_asym",
                                    "uint4_blocked_asym"])
def test_folded_weights_equal_dequantize_linear_and_fold_at_load(case: str, scheme: str
                                                                 ) -> None:
    """Weights-only: every scheme written as plain ops gives the DequantizeLinear model's
    outputs bit for bit, and onnxruntime's optimized graph has neither a Cast nor a
    DequantizeLinear left (the weight computed once, at load)."""
    model, layers, wname, _, q = make_case(case, scheme)
    dq = quantize_weights(model, layers, {wname: q})
    out, done = ortweights.fold(dq)
    assert done == [wname]
    onnx.checker.check_model(out, full_check=True)
    ops = _ops(out)
    assert ops["DequantizeLinear"] == 0 and ops["Cast"] == 1 and ops["Mul"] == 1
    assert ops["Sub"] == (1 if "asym" in scheme else 0)
    assert ops["Reshape"] == (2 if "blocked" in scheme else 0)
    feed = b.feeds(model, 5)
    assert np.array_equal(_plain(out, feed), _plain(dq, feed))  # the same weight, bit for bit
    np.testing.assert_allclose(run(out, feed)[0], run(dq, feed)[0], rtol=1e-5, atol=1e-6)
    opt = _ops(optimized_graph(out))
    assert opt["Cast"] == opt["DequantizeLinear"] == opt["Mul"] == 0
    assert set(ortweights.folded(out)) == {wname}
    assert ortweights.folded(out)[wname][0] == f"{wname}_quantized"


@pytest.mark.parametrize("case", ["matmul2", "gemm_t0", "constant"])
def test_matmul_weights_are_left_to_onnxruntimes_matmulnbits(case: str) -> None:
    """onnxruntime fuses DequantizeLinear -> MatMul (and Gemm transB = 0) into MatMulNBits
    itself: those stay as they are."""
    model, layers, wname, _, q = make_case(case, "int4")
    dq = quantize_weights(model, layers, {wname: q})
    out, done = ortweights.fold(dq)
    assert done == [] and out is dq
    assert _ops(optimized_graph(out))["MatMulNBits"] == 1


def test_integer_kernels_keep_their_dequantize_linear() -> None:
    """W8A8 for onnxruntime: the 8-bit weights beside a quantized activation stay behind
    DequantizeLinear and run on integer kernels; nothing is folded."""
    m = b.cnn()
    r = convert(m, None, calib=[b.feeds(m, 24, seed=1)], bits=8, act_bits=8,
                runtime="onnxruntime", progress=False, float_stem=False,
                float_highres=False)
    assert ortweights.folded(r.model) == {} and _ops(r.model)["Cast"] == 0
    assert r.report.fusion["integer"] == r.report.fusion["layers"] == 2


@pytest.mark.parametrize("bits", [4, 8])
def test_weights_only_and_four_bit_convs_run_folded_through_convert(bits: int) -> None:
    """`--bits 4` and `--bits 8` weights-only with `--runtime onnxruntime`: the Conv weight
    folded (at 8 bits the Gemm's too; at 4 it is on MatMulNBits), the outputs those of the
    tensorrt target's DequantizeLinear file, and the fusion check naming each folded layer
    with its reason."""
    m = b.cnn()
    calib, feed = [b.feeds(m, 24, seed=1)], b.feeds(m, 4, seed=3)
    ort_r = convert(m, None, calib=calib, bits=bits, runtime="onnxruntime", progress=False)
    trt_r = convert(m, None, calib=calib, bits=bits, runtime="tensorrt", progress=False)
    got = ortweights.folded(ort_r.model)
    assert set(got) == ({"Wc"} if bits == 4 else {"Wc", "Wfc"})
    assert _ops(trt_r.model)["DequantizeLinear"] == 2 and _ops(trt_r.model)["Cast"] == 0
    np.testing.assert_allclose(run(ort_r.model, feed)[0], run(trt_r.model, feed)[0],
                               rtol=1e-5, atol=1e-6)
    why = {n["node"]: n["why"] for n in ort_r.report.fusion["unfused"]}
    reason = ("no integer kernel takes 4-bit Conv weights" if bits == 4 else
              "its input activation is float (weights only)")
    assert set(why) == ({"conv"} if bits == 4 else {"conv", "fc"})
    assert all(f"float {'Conv' if k == 'conv' else 'Gemm'}, weights dequantized once at "
               f"load — {reason}" in w for k, w in why.items())
    assert ort_r.report.fusion["layers"] == 2
    assert ort_r.report.fusion["integer"] == (1 if bits == 4 else 0)  # MatMulNBits: the Gemm


def test_an_input_models_per_tensor_weight_is_folded_too() -> None:
    """A weight the input model already stores behind DequantizeLinear with one scale and
    zero point for the tensor (another tool's weight-only file): folded alike, bit-equal."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 255, (6, 4, 3, 3)).astype(np.uint8)
    inits = [numpy_helper.from_array(codes, "Wq"),
             numpy_helper.from_array(np.array(0.02, np.float32), "Ws"),
             numpy_helper.from_array(np.array(128, np.uint8), "Wz")]
    nodes = [helper.make_node("DequantizeLinear", ["Wq", "Ws", "Wz"], ["W"], name="dq"),
             helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    m = b.make(nodes, [b.vi("x", [1, 4, 5, 5])], [b.vi("y", [1, 6, 5, 5])], inits)
    out, done = ortweights.fold(m)
    assert done == ["W"] and _ops(out)["Sub"] == 1 and _ops(out)["DequantizeLinear"] == 0
    feed = {"x": rng.standard_normal((1, 4, 5, 5)).astype(np.float32)}
    assert np.array_equal(_plain(out, feed), _plain(m, feed))
