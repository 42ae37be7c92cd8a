"""export.build: the compressed, uncorrected and baseline models are built by one call and
deployed alike; the target registry; which activations need ranges."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from onnx_obc import export
from onnx_obc.errors import ConfigError
from onnx_obc.export import tensorrt
from onnx_obc.layers import find_layers

from .. import builders as b
from . import helpers as h
from .test_tensorrt import residual_model
from .test_values import run


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def test_compressed_uncorrected_and_baseline_weights():
    model = h.mixed()
    layers, _ = find_layers(model)
    sols, fixes = h.solutions(model, layers), h.fixes(layers)
    built = export.build_all(model, layers, sols, corrections=fixes)
    assert list(built) == ["compressed", "uncorrected", "baseline"]
    dense = h.tensors(model)
    got = {k: h.tensors(m) for k, m in built.items()}
    for L in layers:
        for which, side in (("uncorrected", "compressed"), ("baseline", "baseline")):
            want = getattr(sols[L.weight], side).weight.astype(np.float32)
            np.testing.assert_array_equal(got[which][L.weight], want)
        assert not np.array_equal(got["compressed"][L.weight], got["uncorrected"][L.weight])
        zeros = got["uncorrected"][L.weight] == 0
        assert np.all(got["compressed"][L.weight][zeros] == 0)  # the scale keeps the zeros
    for bias in ("Ba", "Cg", "bm"):  # only the compressed model is corrected
        np.testing.assert_array_equal(got["uncorrected"][bias], dense[bias])
        np.testing.assert_array_equal(got["baseline"][bias], dense[bias])
        assert not np.array_equal(got["compressed"][bias], dense[bias])
    assert "conv2_bias_correction" in got["compressed"]
    assert "conv2_bias_correction" not in got["uncorrected"]
    feed = b.feeds(model, 3)
    for m in built.values():
        run(m, feed)
    assert export.build(model, layers, sols, which="uncorrected", corrections=fixes
                        ) == built["uncorrected"]


def test_every_model_is_deployed_alike():
    model = h.mixed()
    layers, _ = find_layers(model)
    sols = h.solutions(model, layers, bits=8)
    scales = {n: 0.05 for n in export.act_tensors(model, layers)}
    built = export.build_all(model, layers, sols, corrections=h.fixes(layers),
                             act_scales=scales)
    counts = {k: ops(m) for k, m in built.items()}
    assert counts["compressed"] == counts["uncorrected"] == counts["baseline"]
    assert counts["baseline"]["DequantizeLinear"] == 4 + 4  # the weights and the 4 inputs
    assert counts["baseline"]["QuantizeLinear"] == 4
    for k, m in built.items():
        t = h.tensors(m)
        side = "baseline" if k == "baseline" else "compressed"
        for L in layers:
            hw = getattr(sols[L.weight], side)
            want = export.quantized_weights([L], {L.weight: sols[L.weight]}, which=side)
            np.testing.assert_array_equal(t[f"{L.weight}_quantized"].astype(np.int32),
                                          want[L.weight].codes)
            assert hw.codes is not None
        run(m, b.feeds(model, 2))


def test_activation_qdq_follows_the_quantized_layers():
    """With quantized weights only the quantized layers get input Q/DQ (mixed levels); with
    pruning alone every compressed layer does."""
    model = h.mixed()
    layers, _ = find_layers(model)
    sols = h.solutions(model, layers, bits=8)
    float_only = h.solutions(model, layers)
    mixed = {**sols, "Wg": float_only["Wg"], "Wm": float_only["Wm"]}
    scales = {n: 0.05 for n in export.act_tensors(model, layers)}
    out = export.build(model, layers, mixed, act_scales=scales)
    assert sorted(n.name for n in out.graph.node if n.op_type == "QuantizeLinear") == [
        "r1_QuantizeLinear", "x_QuantizeLinear"]
    out = export.build(model, layers, {"Wg": float_only["Wg"]}, act_scales=scales)
    assert [n.name for n in out.graph.node if n.op_type == "QuantizeLinear"] == [
        "f_QuantizeLinear"]
    assert export.build(model, layers, float_only) == export.float_model(model, layers,
                                                                        float_only)


def test_act_tensors_are_the_layer_inputs_and_the_residual_add_inputs():
    model = residual_model()
    layers, _ = find_layers(model)
    assert export.act_tensors(model, layers) == ["r", "s"]
    assert export.act_tensors(h.mixed(), find_layers(h.mixed())[0]) == ["x", "r1", "f", "r2"]


def test_unknown_target_and_model_are_config_errors():
    model = b.mlp()
    layers, _ = find_layers(model)
    sols = h.solutions(model, layers)
    with pytest.raises(ConfigError, match=r"unknown export target 'openvino'; the targets "
                                          r"are onnxruntime, tensorrt"):
        export.build(model, layers, sols, target="openvino")
    with pytest.raises(ConfigError, match="unknown export target"):
        export.act_tensors(model, layers, target="openvino")
    with pytest.raises(ConfigError, match="compressed, uncorrected, baseline"):
        export.build(model, layers, sols, which="dense")


def test_a_registered_target_deploys_every_model(monkeypatch):
    calls = []

    class Dummy:
        @staticmethod
        def act_tensors(proto, layers):
            return ["x"]

        @staticmethod
        def deploy(model, layers, solved, qweights, act_scales):
            calls.append((sorted(solved), sorted(qweights), act_scales))
            return model

    monkeypatch.setitem(export.TARGETS, "dummy", Dummy)
    model = b.mlp()
    layers, _ = find_layers(model)
    sols = h.solutions(model, layers, bits=4)
    assert export.act_tensors(model, layers, target="dummy") == ["x"]
    built = export.build_all(model, layers, sols, which=("compressed", "baseline"),
                             act_scales={"x": 0.1}, target="dummy")
    assert calls == [(["W1", "W2"], ["W1", "W2"], {"x": 0.1})] * 2
    assert built["baseline"] == export.float_model(model, layers, sols, which="baseline")
    assert export.TARGETS["tensorrt"] is tensorrt
