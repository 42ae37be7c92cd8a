"""Value edits: apply_weights changes weight payloads only; corrections fold into biases
(initializer, Constant node, or a new bias input), weight rows and DQ scales."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx_obc import export
from onnx_obc.errors import ModelError
from onnx_obc.export import ChannelFix
from onnx_obc.export.values import apply_weights, fold_biases
from onnx_obc.layers import find_layers

from .. import builders as b
from ..builders import run, weights_of
from . import helpers as h


def half_zeroed(w: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    new = (w.astype(np.float64) + 0.01 * rng.standard_normal(w.shape))
    new[rng.random(w.shape) < 0.5] = 0.0
    return new


def strip_payload(t: onnx.TensorProto) -> onnx.TensorProto:
    c = onnx.TensorProto()
    c.CopyFrom(t)
    for f in ("raw_data", "float_data", "int32_data", "double_data", "int64_data"):
        c.ClearField(f)
    return c


def assert_only_payloads_changed(before: onnx.ModelProto, after: onnx.ModelProto,
                                 changed: set[str]) -> None:
    assert after.ir_version == before.ir_version
    assert list(after.opset_import) == list(before.opset_import)
    g0, g1 = before.graph, after.graph
    assert list(g1.input) == list(g0.input)
    assert list(g1.output) == list(g0.output)
    assert list(g1.value_info) == list(g0.value_info)
    assert [i.name for i in g1.initializer] == [i.name for i in g0.initializer]
    for i0, i1 in zip(g0.initializer, g1.initializer):
        if i0.name in changed:
            assert (i1.data_type, list(i1.dims)) == (i0.data_type, list(i0.dims))
        else:
            assert i1 == i0
    assert len(g1.node) == len(g0.node)
    for n0, n1 in zip(g0.node, g1.node):
        assert (n1.name, n1.op_type, n1.domain, list(n1.input), list(n1.output)) == (
            n0.name, n0.op_type, n0.domain, list(n0.input), list(n0.output))
        assert [a.name for a in n1.attribute] == [a.name for a in n0.attribute]
        if n0.op_type == "Constant" and n0.output[0] in changed:
            t0, t1 = n0.attribute[0].t, n1.attribute[0].t
            assert (t1.name, t1.data_type, list(t1.dims)) == (t0.name, t0.data_type, list(t0.dims))
        else:
            assert n1 == n0


# --------------------------------------------------------------------------- apply_weights


def test_apply_weights_writes_initializers_and_nothing_else():
    model = b.mlp((8, 12, 4))
    before = model.SerializeToString()
    layers, _ = find_layers(model)
    w = weights_of(model)
    new1 = half_zeroed(w["W1"])
    out = apply_weights(model, layers, {"W1": new1})
    assert model.SerializeToString() == before  # the input proto is not modified
    assert_only_payloads_changed(model, out, {"W1"})
    got = weights_of(out)
    assert got["W1"].dtype == np.float32 and got["W1"].shape == (8, 12)
    np.testing.assert_array_equal(got["W1"], new1.astype(np.float32))
    assert ((got["W1"] == 0) == (new1 == 0)).all()  # exact zeros
    np.testing.assert_array_equal(got["W2"], w["W2"])
    # and onnxruntime computes with the new weights
    x = b.feeds(model, 4)["x"]
    (y,) = run(out, {"x": x})
    ref = np.maximum(x @ new1.astype(np.float32), 0) @ w["W2"]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_apply_weights_writes_constant_nodes():
    model = b.constant_weight(6, 5)
    (L,), _ = find_layers(model)
    assert L.storage == "constant"
    new = half_zeroed(weights_of(model)["W"])
    out = apply_weights(model, [L], {"W": new})
    assert_only_payloads_changed(model, out, {"W"})
    assert len(out.graph.initializer) == 0  # stays a Constant, not moved to an initializer
    np.testing.assert_array_equal(weights_of(out)["W"], new.astype(np.float32))
    x = b.feeds(model, 3)["x"]
    np.testing.assert_allclose(run(out, {"x": x})[0], x @ new.astype(np.float32), rtol=1e-5,
                               atol=1e-6)


def test_apply_weights_keeps_float16():
    model = b.matmul(6, 5, dtype=np.float16)
    (L,), _ = find_layers(model)
    new = half_zeroed(weights_of(model)["W"].astype(np.float64))
    out = apply_weights(model, [L], {"W": new})
    assert_only_payloads_changed(model, out, {"W"})
    got = weights_of(out)["W"]
    assert got.dtype == np.float16
    assert out.graph.initializer[0].data_type == onnx.TensorProto.FLOAT16
    np.testing.assert_array_equal(got, new.astype(np.float16))


def test_apply_weights_on_conv_and_gemm_in_their_own_layouts():
    model = b.cnn()
    layers, _ = find_layers(model)
    w = weights_of(model)
    new = {L.weight: L.from_matrix(half_zeroed(L.to_matrix(w[L.weight]))) for L in layers}
    out = apply_weights(model, layers, new)
    assert_only_payloads_changed(model, out, {"Wc", "Wfc"})
    got = weights_of(out)
    for name in ("Wc", "Wfc"):
        np.testing.assert_array_equal(got[name], new[name].astype(np.float32))
    np.testing.assert_array_equal(got["Bc"], w["Bc"])  # biases untouched


def test_apply_weights_rejects_a_wrong_shape():
    model = b.matmul(6, 5)
    layers, _ = find_layers(model)
    with pytest.raises(ModelError, match="shape"):
        apply_weights(model, layers, {"W": np.zeros((5, 6))})


def test_apply_weights_without_new_weights_is_identity():
    model = b.mlp()
    layers, _ = find_layers(model)
    assert apply_weights(model, layers, {}) == model


def test_apply_weights_keeps_tensor_metadata():
    model = b.matmul(6, 5)
    model.graph.initializer[0].doc_string = "projection weight"
    layers, _ = find_layers(model)
    out = apply_weights(model, layers, {"W": np.zeros((6, 5))})
    assert strip_payload(out.graph.initializer[0]) == strip_payload(model.graph.initializer[0])


# --------------------------------------------------------------------------- corrections


def old_folding(model: onnx.ModelProto, layers, fixes) -> onnx.ModelProto:
    """The folding correct.py did in place before the export package (the reference):
    bias <- a * bias + shift (/ beta), a new zero bias initializer where there was none, the
    following Add's vector <- vector + shift, weight rows <- a * rows."""
    out = copy.deepcopy(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    nodes = {n.name: n for n in g.node}
    for label, fix in fixes.items():
        node, d, a = nodes[label], fix.shift, fix.scale
        if node.op_type in ("Conv", "Gemm"):
            beta = next((x.f for x in node.attribute if x.name == "beta"), 1.0)
            d = d / (beta or 1.0)
            if len(node.input) < 3:
                g.initializer.append(numpy_helper.from_array(np.zeros(d.shape, np.float32),
                                                             f"{label}_bias_correction"))
                inits[f"{label}_bias_correction"] = g.initializer[-1]
                node.input.append(f"{label}_bias_correction")
            name = node.input[2]
        else:
            add = next(n for n in g.node if node.output[0] in n.input)
            name, a = next(x for x in add.input if x != node.output[0]), None
        t = inits[name]
        bias = numpy_helper.to_array(t).astype(np.float64)
        t.CopyFrom(numpy_helper.from_array(
            ((bias if a is None else a * bias) + d).astype(np.float32), name))
    for L in layers:
        a = fixes[L.uses[0].node].scale
        W = L.to_matrix(numpy_helper.to_array(inits[L.weight])).astype(np.float64)
        G, r, d = W.shape
        scaled = L.from_matrix((W.reshape(G * r, d) * a[:, None]).reshape(G, r, d))
        inits[L.weight].CopyFrom(numpy_helper.from_array(scaled.astype(np.float32), L.weight))
    return out


def test_exporter_folds_corrections_exactly_like_the_old_in_place_folding():
    model = h.mixed()
    layers, _ = find_layers(model)
    sols, fixes = h.solutions(model, layers), h.fixes(layers)
    assert [L.name for L in layers] == ["conv1", "conv2", "gemm", "mm"]
    ref = old_folding(export.float_model(model, layers, sols), layers, fixes)
    got = export.build(model, layers, sols, corrections=fixes)
    want = h.tensors(ref)
    assert h.tensors(got).keys() == want.keys()
    for name, value in h.tensors(got).items():
        np.testing.assert_array_equal(value, want[name], err_msg=name)
    assert [list(n.input) for n in got.graph.node] == [list(n.input) for n in ref.graph.node]
    feed = b.feeds(model, 5)
    np.testing.assert_array_equal(run(got, feed)[0], run(ref, feed)[0])


def test_exporter_folds_channel_scales_into_the_dq_scales():
    model = h.mixed()
    layers, _ = find_layers(model)
    sols, fixes = h.solutions(model, layers, bits=4), h.fixes(layers)
    plain = h.tensors(export.build(model, layers, sols))
    got = h.tensors(export.build(model, layers, sols, corrections=fixes))
    for L in layers:
        np.testing.assert_array_equal(got[f"{L.weight}_quantized"], plain[f"{L.weight}_quantized"])
        a = fixes[L.uses[0].node].scale
        s = plain[f"{L.weight}_scale"]  # per output channel: [M]
        np.testing.assert_array_equal(got[f"{L.weight}_scale"], (s * a).astype(np.float32))


def test_constant_node_biases_are_edited_in_place():
    model = h.paddle_convs()
    layers, _ = find_layers(model)
    sites, skipped = export.bias_targets(model, layers)
    assert not skipped and {k: s.bias for k, s in sites.items()} == {
        "p2o.Conv.0": "b1", "p2o.Conv.1": "b2"}
    fixes = h.fixes(layers, scale=False)
    out = fold_biases(model, layers, fixes)
    assert [list(n.input) for n in out.graph.node] == [list(n.input) for n in model.graph.node]
    assert len(out.graph.initializer) == 0
    before, after = h.tensors(model), h.tensors(out)
    np.testing.assert_allclose(after["b1"], before["b1"] + fixes["p2o.Conv.0"].shift,
                               rtol=1e-6)
    run(out, b.feeds(model, 2))


def test_a_shared_bias_gets_a_copy_per_node_and_a_runtime_bias_is_skipped():
    nodes = [helper.make_node("Conv", ["x", "W1", "B"], ["c1"], name="conv1"),
             helper.make_node("Conv", ["x", "W2", "B"], ["c2"], name="conv2"),
             helper.make_node("Identity", ["B"], ["Bi"], name="ident"),
             helper.make_node("Conv", ["x", "W3", "Bi"], ["c3"], name="conv3"),
             helper.make_node("Sum", ["c1", "c2", "c3"], ["y"], name="sum")]
    model = b.make(nodes, [b.vi("x", [b.BATCH, 2, 4, 4])], [b.vi("y", [b.BATCH, 3, 2, 2])],
                   [b.weight(f"W{i}", (3, 2, 3, 3), i) for i in (1, 2, 3)]
                   + [b.weight("B", (3,), 4)])
    layers, _ = find_layers(model)
    sites, skipped = export.bias_targets(model, layers)
    assert set(sites) == {"conv1", "conv2"} and sites["conv1"].source == "B"
    assert len(skipped) == 1 and skipped[0].startswith("conv3: its bias 'Bi' is not a constant")
    fixes = {k: v for k, v in h.fixes(layers, scale=False).items() if k in sites}
    out = fold_biases(model, layers, fixes)
    got = h.tensors(out)
    np.testing.assert_array_equal(got["B"], h.tensors(model)["B"])  # conv3 still reads it
    for k in ("conv1", "conv2"):
        np.testing.assert_allclose(got[f"{k}_bias_correction"],
                                   h.tensors(model)["B"] + fixes[k].shift, rtol=1e-6)
    run(out, b.feeds(model, 2))


def test_a_scale_on_a_shared_weight_is_refused():
    model = b.shared_weight()
    layers, _ = find_layers(model)
    fixes = {"mm1": ChannelFix(np.zeros(5), np.ones(5))}
    with pytest.raises(ModelError, match="read by 2 nodes"):
        export.build(model, layers, h.solutions(model, layers), corrections=fixes)


def test_a_broadcast_gemm_bias_takes_the_full_shift():
    model = b.gemm(d_in=6, d_out=5, beta=2.0)
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array([0.5], np.float32),
                                                                "C"))
    layers, _ = find_layers(model)
    fixes = {"gemm": ChannelFix(np.arange(5.0), np.full(5, 2.0))}
    out = fold_biases(model, layers, fixes)
    np.testing.assert_array_equal(h.tensors(out)["C"], 2.0 * 0.5 + np.arange(5.0) / 2.0)
    run(out, b.feeds(model, 2))
