"""export/shrink.py: cutting channels equals zeroing the consumer's columns (no update),
keeps every shape consistent and refuses to remove every channel."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnx_obc.channels import find_sites
from onnx_obc.errors import ModelError
from onnx_obc.export.shrink import shrink, weight_axes
from onnx_obc.layers import find_layers
from tests import builders as b
from tests.channels import graphs


@pytest.mark.parametrize("build", [graphs.conv_bn_relu_conv, graphs.depthwise_block,
                                   graphs.transformer_mlp, graphs.gemm_pair],
                         ids=lambda f: f.__name__)
def test_cut_equals_zeroed_consumer_columns(build):
    model = build()
    (site,), _ = find_sites(model, find_layers(model)[0])
    keep = np.arange(0, site.channels, 2)
    out = shrink(model, [site], [keep])
    zeroed = onnx.ModelProto()
    zeroed.CopyFrom(model)
    axis = weight_axes(site.consumer)[1]
    for t in zeroed.graph.initializer:
        if t.name == site.consumer.weight:
            w = numpy_helper.to_array(t).copy()
            gone = np.setdiff1d(np.arange(site.channels), keep)
            np.moveaxis(w, axis, 0)[gone] = 0
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    feed = b.feeds(model, 4, seed=2)
    np.testing.assert_allclose(b.run(out, feed)[0], b.run(zeroed, feed)[0], rtol=1e-5,
                               atol=1e-5)
    onnx.checker.check_model(out, full_check=True)
    assert len(out.graph.value_info) > 0  # re-inferred, with the new channel counts


def test_keep_all_is_a_no_op_and_keep_none_is_refused():
    model = graphs.gemm_pair()
    (site,), _ = find_sites(model, find_layers(model)[0])
    same = shrink(model, [site], [np.arange(site.channels)])
    assert b.weights_of(same)["g1.w"].shape == b.weights_of(model)["g1.w"].shape
    with pytest.raises(ModelError, match="every channel"):
        shrink(model, [site], [np.array([], dtype=np.int64)])


def _half_converted():
    """conv_bn_relu_conv with a float16 conversion's leftover: a Cast to float32 whose
    output a Mul combines with a float16 constant (onnxruntime refuses to load it)."""
    from onnx import TensorProto, helper

    model = graphs.conv_bn_relu_conv()
    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.array([2.0], np.float16), "half"))
    g.node.extend([helper.make_node("Cast", ["y"], ["y32"], name="cast", to=TensorProto.FLOAT),
                   helper.make_node("Mul", ["y32", "half"], ["z"], name="mul")])
    g.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT16, None))
    g.value_info.append(helper.make_tensor_value_info("y32", TensorProto.FLOAT16, None))
    return model


def test_an_input_that_fails_the_strict_check_is_named_before_the_stage(monkeypatch):
    """The shrunk model's own check (strict shape inference, full checker) run on the
    input first: a model that fails it is refused before any capture, the message naming
    the node and the input as the cause, the input proto untouched (its value_info kept);
    a sound input passes."""
    from onnx_obc import CompressConfig
    from onnx_obc.backend import get_backend
    from onnx_obc.calib import DataSet
    from onnx_obc.channels import run_channels, stage
    from onnx_obc.export.shrink import check_input

    check_input(graphs.conv_bn_relu_conv())  # sound: nothing raised
    model = _half_converted()
    before = model.SerializeToString()
    with pytest.raises(ModelError, match=r"(?s)the input model fails them already: .*"
                       r"node name: mul.*compress without --channels"):
        check_input(model)
    assert model.SerializeToString() == before
    monkeypatch.setattr(stage, "collect", lambda *a, **k: pytest.fail("captured"))
    cfg = CompressConfig.from_options(channels=0.3)
    data = DataSet(b.feeds(graphs.conv_bn_relu_conv(), 8, seed=1), "feeds")
    data = type("Cal", (), {"fit": data, "batch": 8, "token_mask": None})()
    layers = find_layers(model)[0]
    with pytest.raises(ModelError, match="fails them already"):
        run_channels(model, layers, data, get_backend("cpu"), cfg, None, False)
