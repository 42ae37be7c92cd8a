"""Weights, biases and per-channel constants stored as Constant nodes (TensorFlow and
Paddle exports) are cut like initializers: the same sites, the shrunk model equals the OBS
oracle, the Constant nodes shrink and stay Constant nodes, strict shape inference and the
full checker pass, the input model is untouched, and the other refusals keep their reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_obc.channels import find_sites, prune_channels_sequential
from onnx_obc.layers import find_layers
from tests import builders as b
from tests.channels import graphs, mha
from tests.channels.test_stage import BUILDS, DAMP, _oracle, _run


def _shape_of(model, name):
    (n,) = [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] == name]
    return tuple(onnx.numpy_helper.to_array(n.attribute[0].t).shape)


def _site_key(s):
    return (s.producer.weight, s.consumer.weight, s.channels, s.width, s.sliced, s.grouped,
            s.macs)


BUILT = [*BUILDS, lambda: mha.mha(12, 4, 6, variant="hf")]


@pytest.mark.parametrize("build", BUILT, ids=lambda f: getattr(f, "__name__", "mha"))
def test_constant_node_weights_are_cut_like_initializers(build):
    dense = build()
    model = graphs.as_constants(dense)
    before = model.SerializeToString()
    sites, refused = find_sites(model, find_layers(model)[0])
    want, _ = find_sites(dense, find_layers(dense)[0])
    assert [_site_key(s) for s in sites] == [_site_key(s) for s in want]
    assert not any("Constant" in r.reason or "not a constant" in r.reason for r in refused)
    res, _, data = _run(model)
    assert model.SerializeToString() == before  # the input model is never modified
    (row,) = res.rows
    ref, site, (dW, H) = _oracle(dense, find_layers(dense)[0], data, row.removed_ids)
    feed = b.feeds(dense, 8, seed=7)
    np.testing.assert_allclose(b.run(res.model, feed)[0], b.run(ref, feed)[0],
                               rtol=1e-4, atol=1e-4)
    assert row.loss == pytest.approx(np.trace(dW @ H @ dW.T), rel=1e-4)
    kept = (row.channels - row.removed) * row.unit
    # still Constant nodes, shrunk in place (a head cut adds its new Reshape shapes)
    assert all(t.data_type == onnx.TensorProto.INT64 for t in res.model.graph.initializer)
    assert _shape_of(res.model, site.producer.weight)[graphs.axes(site.producer)[0]] == kept
    assert _shape_of(res.model, site.consumer.weight)[graphs.axes(site.consumer)[1]] == kept
    for name, axis in site.sliced:
        assert _shape_of(res.model, name)[axis] == kept
    onnx.checker.check_model(res.model, full_check=True)
    onnx.shape_inference.infer_shapes(res.model, check_type=True, strict_mode=True)
    assert b.run(res.baseline, feed)[0].shape == b.run(dense, feed)[0].shape


def test_mixed_storage_and_scalar_attributes():
    """Only the producer's weight a Constant node, Clip bounds as value_float Constants."""
    dense = graphs.depthwise_block()
    model = graphs.as_constants(dense)
    keep = {"c.w", "dw.w", "dw.b", "s", "slope"}  # back to initializers
    inits = [onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(n.attribute[0].t),
                                          n.output[0])
             for n in model.graph.node if n.output[0] in keep]
    nodes = [n for n in model.graph.node if n.output[0] not in keep]
    mixed = b.make(nodes, list(model.graph.input), list(model.graph.output), inits)
    res, _, _ = _run(mixed)
    (row,) = res.rows
    feed = b.feeds(dense, 8, seed=7)
    res_i, _, _ = _run(dense)
    assert row.removed_ids == res_i.rows[0].removed_ids
    np.testing.assert_allclose(b.run(res.model, feed)[0], b.run(res_i.model, feed)[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind, words", [
    ("residual", "residual Add"), ("concat", "Concat"), ("reshape", "Reshape"),
    ("output", "graph output"), ("fanout", "feeds 2 nodes")])
def test_other_refusals_keep_their_reason(kind, words):
    model = graphs.as_constants(graphs.refused(kind))
    sites, refused = find_sites(model, find_layers(model)[0])
    assert not sites
    assert words in {r.producer: r.reason for r in refused}["prod"]


def test_a_shared_per_channel_constant_is_refused():
    """Two Adds read one Constant bias: cutting it for one would change the other."""
    dense = graphs.transformer_mlp()
    model = graphs.as_constants(dense)
    for n in model.graph.node:
        if n.name == "bias2":  # fc2's bias read from fc1's bias Constant: refused for fc1
            n.input[1] = "fc1.b"
    model.graph.node.remove(next(n for n in model.graph.node if n.output[0] == "fc2.b"))
    for n in model.graph.node:
        if n.output[0] == "fc1.b":
            n.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(
                np.ones(16, np.float32)))
    model.graph.node.append(onnx.helper.make_node("Constant", [], ["fc2.b"], name="c2",
                                                  value_float=0.0))
    sites, refused = find_sites(model, find_layers(model)[0])
    assert not sites and "shared" in {r.producer: r.reason for r in refused}["fc1"]


def test_sequential_on_constant_nodes():
    model = graphs.as_constants(mha.mha(12, 4, 6, mlp=True))
    from onnx_obc.backend import get_backend
    from onnx_obc.calib import DataSet

    data = DataSet(b.feeds(model, 96, seed=1), "feeds")
    res = prune_channels_sequential(model, find_layers(model)[0], data, 32,
                                    get_backend("cpu"), 0.5, DAMP, 2048)
    assert sum(r.removed for r in res.rows) > 0
    assert all(t.data_type == onnx.TensorProto.INT64 for t in res.model.graph.initializer)
    onnx.checker.check_model(res.model, full_check=True)


def test_sizes_unknown_to_shape_inference_are_probed():
    """A sequence length only known at run time (as after Paddle's Shape -> Cast -> Concat
    reshapes): the stage measures it on the calibration batch, so the FLOPs (and the cut
    reached) are those of the model with the length written in."""
    from onnx_obc.channels import layer_macs

    static = graphs.transformer_mlp(t=4)
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(static)
    for v in [*dynamic.graph.input, *dynamic.graph.output]:
        v.type.tensor_type.shape.dim[1].dim_param = "T"
    layers = find_layers(static)[0]
    assert layer_macs(dynamic, layers) * 4 == layer_macs(static, layers)  # T counted 1
    res, _, _ = _run(dynamic)
    ref, _, _ = _run(static)
    assert res.macs == ref.macs and res.macs[0] == layer_macs(static, layers)


def test_convert_cuts_constant_node_weights_then_quantizes():
    """Through convert(): fused heads and MLP channels of a Constant-node model, then W8."""
    from onnx_obc import convert

    model = graphs.as_constants(mha.fused_qkv(12, 4, 6, variant="paddle"))
    r = convert(model, None, channels=0.3, bits=8, progress=False)
    (row,) = r.report.channels["rows"]
    assert row["removed"] > 0 and row["unit"] == 3
    assert not any("Constant" in x["reason"] for x in r.report.channels["refused"])
    assert r.report.layers and all(x.bits == 8 for x in r.report.layers)
