"""QDQ export of weights: integer codes behind DequantizeLinear, opset raise, file size,
onnxruntime's MatMulNBits fusion. Activations: test_tensorrt.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnx_obc.errors import ModelError
from onnx_obc.export import graph
from onnx_obc.export.qweights import QuantizedWeight, quantize_weights
from onnx_obc.export.values import apply_weights
from onnx_obc.layers import find_layers

from .. import builders as b

# ----------------------------------------------------------------------------- helpers


def session(model: onnx.ModelProto, basic: bool = False) -> ort.InferenceSession:
    """CPU session. ORT fuses DequantizeLinear -> MatMul into MatMulNBits, whose default
    accuracy level 4 quantizes the activations to int8 (~1e-3 relative error); level 0
    keeps float math so the QDQ model matches fake quantization exactly. `basic`: only
    ORT_ENABLE_BASIC optimizations (see test_activation_qdq_matches_fake_quant)."""
    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    if basic:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray], basic: bool = False
        ) -> list[np.ndarray]:
    return session(model, basic).run(None, feed)


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-12))


def layers_of(model: onnx.ModelProto):
    return find_layers(model)[0]


def float_weight(model: onnx.ModelProto, name: str) -> np.ndarray:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    raise KeyError(name)


def inits(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _group_max(a: np.ndarray, axis: int, block: int | None, fn) -> np.ndarray:
    """Reduce `a` per channel (1-D along axis) or per block along axis (weight rank)."""
    if block is None:
        others = tuple(i for i in range(a.ndim) if i != axis)
        return fn.reduce(a, axis=others)
    return fn.reduceat(a, np.arange(0, a.shape[axis], block), axis=axis)


def quantize(w: np.ndarray, axis: int, bits: int, block: int | None = None,
             symmetric: bool = True) -> QuantizedWeight:
    """Round-to-nearest codes: symmetric signed (s = max|w| / qmax) or asymmetric unsigned."""
    proto = QuantizedWeight(np.zeros(w.shape, np.int32), np.zeros(1), np.zeros(1), axis,
                            block, bits, symmetric)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = _group_max(np.abs(w), axis, block, np.maximum) / qmax
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        zp = np.zeros(scale.shape, np.int32)
        codes = np.clip(np.round(w / proto.expand(scale)), -qmax, qmax)
    else:
        qmax = 2 ** bits - 1
        lo = np.minimum(_group_max(w, axis, block, np.minimum), 0)
        hi = np.maximum(_group_max(w, axis, block, np.maximum), 0)
        scale = np.where(hi > lo, (hi - lo) / qmax, 1.0).astype(np.float32)
        zp = np.clip(np.round(-lo / scale), 0, qmax).astype(np.int32)
        codes = np.clip(np.round(w / proto.expand(scale)) + proto.expand(zp), 0, qmax)
    return QuantizedWeight(codes.astype(np.int32), scale, zp, axis, block, bits, symmetric)


def pruned(w: np.ndarray) -> np.ndarray:
    """Every seventh weight exactly zero (as after OBC pruning)."""
    w = w.copy()
    w.reshape(-1)[::7] = 0.0
    return w


# (builder, weight, per-channel axis, reduction axis for blocks, block size)
CASES: dict[str, tuple[Callable[[], onnx.ModelProto], str, int, int, int]] = {
    "matmul2": (lambda: b.matmul(d_in=10, d_out=6), "W", 1, 0, 4),
    "matmul3": (lambda: b.matmul(d_in=8, d_out=5, rank=3), "W", 1, 0, 4),
    "gemm_t1": (lambda: b.gemm(d_in=8, d_out=5, trans_b=True), "B", 0, 1, 4),
    "gemm_t0": (lambda: b.gemm(d_in=8, d_out=5, trans_b=False), "B", 1, 0, 4),
    "conv": (lambda: b.conv(c_in=8, c_out=6), "W", 0, 1, 4),
    "conv_grouped": (lambda: b.conv(c_in=8, c_out=6, group=2), "W", 0, 1, 2),
    "constant": (lambda: b.constant_weight(d_in=8, d_out=5), "W", 1, 0, 4),
}
# scheme -> (bits, blocked, symmetric, codes storage, default opset after the edit)
SCHEMES = {
    "int8": (8, False, True, TensorProto.INT8, 17),
    "int4": (4, False, True, TensorProto.INT4, 21),
    "int3": (3, False, True, TensorProto.INT4, 21),
    "int4_blocked": (4, True, True, TensorProto.INT4, 21),
    "int8_blocked": (8, True, True, TensorProto.INT8, 21),
    "uint8_asym": (8, False, False, TensorProto.UINT8, 17),
    "uint4_blocked_asym": (4, True, False, TensorProto.UINT4, 21),
}


def make_case(case: str, scheme: str, opset: int | None = None):
    build, wname, ch_axis, red_axis, block = CASES[case]
    bits, blocked, sym, _, _ = SCHEMES[scheme]
    model = build()
    if opset is not None:
        model.opset_import[0].version = opset
    w = pruned(float_weight(model, wname))
    layers = layers_of(model)
    model = apply_weights(model, layers, {wname: w})
    q = quantize(w, red_axis if blocked else ch_axis, bits, block if blocked else None, sym)
    return model, layers, wname, w, q


def dequant_from_initializers(model: onnx.ModelProto, wname: str, q: QuantizedWeight
                              ) -> np.ndarray:
    t = inits(model)
    stored = QuantizedWeight(numpy_helper.to_array(t[f"{wname}_quantized"]).astype(np.int32),
                             numpy_helper.to_array(t[f"{wname}_scale"]),
                             numpy_helper.to_array(t[f"{wname}_zero_point"]).astype(np.int32),
                             q.axis, q.block_size, q.bits, q.signed)
    return stored.dequantize()


# ----------------------------------------------------------------------------- weights


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("case", list(CASES))
def test_quantize_weights(case: str, scheme: str) -> None:
    model, layers, wname, w, q = make_case(case, scheme)
    _, _, _, storage, opset = SCHEMES[scheme]
    out = quantize_weights(model, layers, {wname: q})
    onnx.checker.check_model(out, full_check=True)

    # only one DequantizeLinear added (and the Constant node gone), nothing fused
    before = Counter(n.op_type for n in model.graph.node)
    before["Constant"] = 0
    after = Counter(n.op_type for n in out.graph.node)
    assert +after == +(before + Counter({"DequantizeLinear": 1}))
    dq = next(n for n in out.graph.node if n.op_type == "DequantizeLinear")
    assert dq.name == f"{wname}_DequantizeLinear"
    assert list(dq.input) == [f"{wname}_quantized", f"{wname}_scale", f"{wname}_zero_point"]
    assert list(dq.output) == [wname]
    attrs = {a.name: helper.get_attribute_value(a) for a in dq.attribute}
    assert attrs["axis"] == q.axis
    assert attrs.get("block_size") == q.block_size

    # initializers: names, storage types, values round-trip
    t = inits(out)
    assert wname not in t
    assert t[f"{wname}_quantized"].data_type == storage
    assert t[f"{wname}_zero_point"].data_type == storage
    assert t[f"{wname}_scale"].data_type == TensorProto.FLOAT
    np.testing.assert_array_equal(numpy_helper.to_array(t[f"{wname}_quantized"]).astype(int),
                                  q.codes)
    zp = numpy_helper.to_array(t[f"{wname}_zero_point"]).astype(int)
    np.testing.assert_array_equal(zp, q.zero_point)
    if q.signed:
        assert not zp.any()
    else:
        assert zp.any()  # asymmetric grids really have nonzero zero points here

    # opset / IR: 8-bit per-axis keeps opset 17 (IR 8); INT4 / blocked need 21 (IR >= 10)
    assert graph.model_opset(out) == opset
    assert out.ir_version == (8 if opset == 17 else 10)

    # pruned zeros stay exactly zero after DQ, and DQ equals QuantizedWeight.dequantize()
    deq = dequant_from_initializers(out, wname, q)
    assert np.all(deq[w == 0] == 0)
    np.testing.assert_array_equal(deq, q.dequantize())

    # onnxruntime runs the QDQ model like the fake-quantized float model
    fake = apply_weights(model, layers, {wname: q.dequantize()})
    feed = b.feeds(model, 3)
    for got, ref in zip(run(out, feed), run(fake, feed)):
        assert rel_err(got, ref) <= 1e-5


@pytest.mark.parametrize("scheme", ["int8", "int4_blocked", "uint8_asym"])
def test_reference_evaluator_keeps_exact_zeros(scheme: str) -> None:
    model, layers, wname, w, q = make_case("matmul2", scheme)
    out = quantize_weights(model, layers, {wname: q})
    out.graph.output.append(b.vi(wname, list(w.shape)))
    if graph.model_opset(out) < 19:  # onnx 1.23's evaluator implements DequantizeLinear-19+ only
        out.opset_import[0].version, out.ir_version = 19, 9
    feed = b.feeds(model, 2)
    y, wdq = ReferenceEvaluator(out).run(None, feed)
    assert np.all(wdq[w == 0] == 0) and (w == 0).sum() > 0
    np.testing.assert_array_equal(wdq, q.dequantize())
    np.testing.assert_allclose(y, feed["x"] @ q.dequantize(), rtol=1e-5, atol=1e-6)


def test_shared_weight_one_dq_feeds_both() -> None:
    model = b.shared_weight()
    layers = layers_of(model)
    q = quantize(float_weight(model, "W"), 1, 8)
    out = quantize_weights(model, layers, {"W": q})
    dqs = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 1 and dqs[0].output[0] == "W"
    assert [n.input[1] for n in out.graph.node if n.op_type == "MatMul"] == ["W", "W"]
    fake = apply_weights(model, layers, {"W": q.dequantize()})
    feed = b.feeds(model, 4)
    for got, ref in zip(run(out, feed), run(fake, feed)):
        assert rel_err(got, ref) <= 1e-5


def test_two_layers_and_untouched_parts() -> None:
    model = b.cnn()
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    helper.set_model_props(model, {"author": "tests"})
    layers = layers_of(model)
    qw = {"Wc": quantize(float_weight(model, "Wc"), 0, 8),
          "Wfc": quantize(float_weight(model, "Wfc"), 1, 4, block=16)}
    out = quantize_weights(model, layers, qw)
    assert {(o.domain, o.version) for o in out.opset_import} == {("", 21), ("com.example", 1)}
    assert {p.key: p.value for p in out.metadata_props} == {"author": "tests"}
    assert out.producer_name == model.producer_name
    t = inits(out)
    for name in ("Bc", "bfc"):  # biases untouched
        np.testing.assert_array_equal(numpy_helper.to_array(t[name]), float_weight(model, name))
    fake = apply_weights(model, layers, {k: q.dequantize() for k, q in qw.items()})
    feed = b.feeds(model, 4)
    assert rel_err(run(out, feed)[0], run(fake, feed)[0]) <= 1e-5


@pytest.mark.parametrize("scheme,opset", [("int8", 13), ("uint8_asym", 13), ("int4", 21),
                                          ("int4_blocked", 21)])
@pytest.mark.parametrize("case", ["matmul2", "conv", "gemm_t1"])
def test_opset11_is_upgraded(case: str, scheme: str, opset: int) -> None:
    model, layers, wname, _, q = make_case(case, scheme, opset=11)
    out = quantize_weights(model, layers, {wname: q})
    assert graph.model_opset(out) == opset
    assert out.ir_version >= (10 if opset == 21 else 8)
    onnx.checker.check_model(out)
    fake = apply_weights(model, layers, {wname: q.dequantize()})
    feed = b.feeds(model, 3)
    assert rel_err(run(out, feed)[0], run(fake, feed)[0]) <= 1e-5


def test_higher_opset_is_kept() -> None:
    model, layers, wname, _, q = make_case("matmul2", "int4", opset=23)
    model.ir_version = 11
    out = quantize_weights(model, layers, {wname: q})
    assert graph.model_opset(out) == 23 and out.ir_version == 11


def test_failed_upgrade_is_a_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(model, target):
        raise RuntimeError("No Adapter For Foo")

    monkeypatch.setattr(graph.version_converter, "convert_version", boom)
    model, layers, wname, _, q = make_case("matmul2", "int4_blocked", opset=11)
    with pytest.raises(ModelError) as exc:
        quantize_weights(model, layers, {wname: q})
    msg = str(exc.value)
    assert "opset 11" in msg and "opset 21" in msg and "No Adapter For Foo" in msg
    assert "--bits 8 without --group-size" in msg and "block_size" in msg
    model, layers, wname, _, q = make_case("matmul2", "int8", opset=11)
    with pytest.raises(ModelError, match="opset 13"):
        quantize_weights(model, layers, {wname: q})


def test_invalid_quantized_weights() -> None:
    model, layers, wname, w, q = make_case("matmul2", "int4")
    with pytest.raises(ModelError, match="not one of the model's layers"):
        quantize_weights(model, layers, {"nope": q})
    bad = QuantizedWeight(q.codes.T, q.scale, q.zero_point, 1, None, 4, True)
    with pytest.raises(ModelError, match="codes shape"):
        quantize_weights(model, layers, {wname: bad})
    bad = QuantizedWeight(q.codes * 3, q.scale, q.zero_point, 1, None, 4, True)
    with pytest.raises(ModelError, match=r"outside \[-8, 7\]"):
        quantize_weights(model, layers, {wname: bad})
    bad = QuantizedWeight(q.codes, q.scale[:-1], q.zero_point[:-1], 1, None, 4, True)
    with pytest.raises(ModelError, match="must have shape"):
        quantize_weights(model, layers, {wname: bad})
    model.graph.input[0].name = model.graph.node[0].input[0] = "W_scale"  # input x renamed
    with pytest.raises(ModelError, match="already has tensors"):
        quantize_weights(model, layers, {wname: q})


@pytest.mark.parametrize("bits,limit", [(8, 0.3), (4, 0.2)])
def test_file_size(tmp_path: Path, bits: int, limit: float) -> None:
    model = b.matmul(d_in=256, d_out=256)
    layers = layers_of(model)
    q = quantize(float_weight(model, "W"), 1, bits)
    out = quantize_weights(model, layers, {"W": q})
    onnx.save_model(model, str(tmp_path / "fp32.onnx"))
    onnx.save_model(out, str(tmp_path / "q.onnx"))
    ratio = (tmp_path / "q.onnx").stat().st_size / (tmp_path / "fp32.onnx").stat().st_size
    assert ratio <= limit


@pytest.mark.parametrize("bits,block", [(8, None), (4, None), (4, 32), (8, 128)])
def test_ort_matmulnbits_fusion(bits: int, block: int | None) -> None:
    """ORT fuses DQ -> MatMul into MatMulNBits (per-axis and realistic block sizes). With
    default options (accuracy level 4: int8 activations) it is close to fake quantization;
    with accuracy level 0 it is exact."""
    model = b.matmul(d_in=128, d_out=64)
    layers = layers_of(model)
    q = quantize(pruned(float_weight(model, "W")), 0 if block else 1, bits, block)
    out = quantize_weights(model, layers, {"W": q})
    feed = b.feeds(model, 8)
    ref = run(apply_weights(model, layers, {"W": q.dequantize()}), feed)
    default = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    assert rel_err(default.run(None, feed)[0], ref[0]) <= 2e-2
    assert rel_err(run(out, feed)[0], ref[0]) <= 1e-5
