"""The shared graph helpers: the checker on edited models, a bias input added through
graph-surgeon."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnx_obc.errors import ModelError
from onnx_obc.export.graph import check, set_inputs

from .. import builders as b
from .test_values import run


def test_check_rejects_an_invalid_rewritten_model():
    model = b.mlp()
    model.graph.node.append(helper.make_node("Relu", ["undefined_tensor"], ["zz"]))
    with pytest.raises(ModelError, match="fails onnx.checker"):
        check(model)


def test_set_inputs_adds_a_bias_and_refuses_a_taken_name():
    model = b.conv(bias=False)
    bias = np.arange(6, dtype=np.float32)
    out = set_inputs(model, {0: (2, "conv_bias", bias)})
    assert list(out.graph.node[0].input) == ["x", "W", "conv_bias"]
    feed = b.feeds(model, 2)
    np.testing.assert_allclose(run(out, feed)[0], run(model, feed)[0] + bias[:, None, None],
                               rtol=1e-5, atol=1e-5)
    assert set_inputs(model, {}) is model
    with pytest.raises(ModelError, match="already has tensors"):
        set_inputs(model, {0: (2, "W", bias)})


def test_opset_raise_sets_large_payloads_aside_and_restores_them(monkeypatch):
    """The version converter serialises the model (it fails past 2 GB): large payloads are
    held aside during the conversion, restored in the converted copy and in the input."""
    from onnx import numpy_helper, version_converter

    from onnx_obc.export.graph import ensure_opset

    model = b.matmul(d_in=600, d_out=600)  # a 1.4 MB weight
    before = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    seen = []
    real = version_converter.convert_version

    def spy(m, v):
        seen.append(max(len(t.raw_data) for t in m.graph.initializer))
        return real(m, v)

    monkeypatch.setattr(version_converter, "convert_version", spy)
    out = ensure_opset(model, 21, "a test needs it")
    assert seen == [0]  # the converter saw no large payload
    for m in (model, out):
        got = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        assert got.keys() == before.keys()
        for k, v in before.items():
            np.testing.assert_array_equal(got[k], v)
    feed = b.feeds(model, 3)
    np.testing.assert_array_equal(run(out, feed)[0], run(model, feed)[0])


def test_checked_once_defers_the_checker_and_build_checks_its_result_once(monkeypatch):
    """Inside `checked_once` check() is a no-op (the caller checks the result); export.build
    runs onnx.checker once per model built, on the model its edits end in."""
    import onnx

    from onnx_obc import export
    from onnx_obc.export.graph import checked_once
    from onnx_obc.layers import find_layers

    from . import helpers as h

    bad = b.mlp()
    bad.graph.node.append(helper.make_node("Relu", ["undefined_tensor"], ["zz"]))
    with checked_once():
        check(bad)  # deferred
    with pytest.raises(ModelError, match="fails onnx.checker"):
        check(bad)  # and back on after the block
    model = h.mixed()
    layers, _ = find_layers(model)
    calls = []
    real = onnx.checker.check_model
    monkeypatch.setattr(onnx.checker, "check_model",
                        lambda m, *a, **k: (calls.append(m), real(m, *a, **k))[1])
    out = export.build(model, layers, h.solutions(model, layers, bits=8),
                       act_scales={n: 0.05 for n in export.act_tensors(model, layers)})
    assert len(calls) == 1
    assert any(n.op_type == "QuantizeLinear" for n in calls[0].graph.node)
    assert {n.op_type for n in calls[0].graph.node} == {n.op_type for n in out.graph.node}


def _upsample_conv_opset9():
    """x [N, 2, 4, 4] --Upsample(nearest, x2; opset 9)--> u --Conv(W [3, 2, 3, 3])--> y."""
    import onnx
    from onnx import numpy_helper

    nodes = [helper.make_node("Upsample", ["x", "sc"], ["u"], name="up", mode="nearest"),
             helper.make_node("Conv", ["u", "W"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc"),
             b.weight("W", (3, 2, 3, 3), 0)]
    graph = helper.make_graph(nodes, "g", [b.vi("x", [b.BATCH, 2, 4, 4])],
                              [b.vi("y", [b.BATCH, 3, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 4
    onnx.checker.check_model(model)
    return model


def test_an_opset_raise_keeps_the_names_of_the_tensors_a_node_reads():
    """onnx's version converter writes opset 9's Upsample as a Resize with a fresh output
    name ('_v_...'): the conv's input is named back, so the layer and its range found on
    the input model still find it (before: "activation 'u' is not a variable tensor of the
    graph" from W8A8 with the tensorrt target); the outputs are the same."""
    from onnx_obc import convert
    from onnx_obc.export.graph import ensure_opset

    model = _upsample_conv_opset9()
    out = ensure_opset(model, 13, "a test needs it")
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    assert conv.input[0] == "u" and any(n.op_type == "Resize" and n.output[0] == "u"
                                        for n in out.graph.node)
    feed = b.feeds(model, 3)
    np.testing.assert_allclose(run(out, feed)[0], run(model, feed)[0], rtol=1e-6)
    r = convert(model, None, calib=b.feeds(model, 32), bits=8, act_bits=8, progress=False)
    assert any(n.op_type == "QuantizeLinear" and n.input[0] == "u" for n in r.model.graph.node)
