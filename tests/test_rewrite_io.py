"""rewrite.apply_weights changes weight payloads only; modelio loads and saves safely."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnx_obc import modelio
from onnx_obc.config import CompressConfig
from onnx_obc.errors import ModelError
from onnx_obc.layers import constant_weights, find_layers
from onnx_obc.rewrite import apply_weights

from . import builders as b

CFG = CompressConfig.from_options(sparsity=0.5)


def run(model_or_path, feed):
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) \
        else str(model_or_path)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def weights_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {k: numpy_helper.to_array(t) for k, (_, t) in constant_weights(model.graph).items()}


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


# --------------------------------------------------------------------------- save_model


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def test_save_model_writes_the_model_and_nothing_else(tmp_path):
    model = b.mlp()
    out = tmp_path / "out.onnx"
    assert modelio.save_model(model, out, inp=None) == [out]
    assert listing(tmp_path) == ["out.onnx"]
    assert onnx.load(str(out)) == model


def test_save_model_replaces_an_existing_output(tmp_path):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"old")
    modelio.save_model(b.mlp(), out, inp=None)
    assert onnx.load(str(out)) == b.mlp()
    assert listing(tmp_path) == ["out.onnx"]


def test_save_model_failure_leaves_no_temp_files_and_the_old_output(tmp_path, monkeypatch):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous result")

    def broken(model, path, *a, **kw):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", broken)
    with pytest.raises(OSError, match="disk full"):
        modelio.save_model(b.mlp(), out, inp=None)
    assert listing(tmp_path) == ["out.onnx"]
    assert out.read_bytes() == b"previous result"


def test_save_model_refuses_to_overwrite_the_input(tmp_path):
    inp = tmp_path / "m.onnx"
    onnx.save_model(b.mlp(), str(inp))
    original = inp.read_bytes()
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.onnx"
    link.symlink_to(inp)
    for out in (inp, str(inp), tmp_path / "sub" / ".." / "m.onnx", link):
        with pytest.raises(ModelError, match="is the input model"):
            modelio.save_model(b.matmul(), out, inp=inp)
    assert inp.read_bytes() == original
    assert listing(tmp_path) == ["link.onnx", "m.onnx", "sub"]


def test_save_model_refuses_a_missing_output_directory(tmp_path):
    with pytest.raises(ModelError, match="does not exist; create it first"):
        modelio.save_model(b.mlp(), tmp_path / "missing" / "out.onnx", inp=None)
    assert listing(tmp_path) == []


def test_save_model_wants_an_onnx_suffix(tmp_path):
    with pytest.raises(ModelError, match=r"should end in \.onnx"):
        modelio.save_model(b.mlp(), tmp_path / "out.bin", inp=None)


def test_save_model_external_data_reloads_and_runs(tmp_path):
    model = b.mlp((32, 32, 8))  # W1 is 4 KiB: above the 1 KiB external threshold
    x = b.feeds(model, 3)["x"]
    expected = run(model, {"x": x})[0]
    out = tmp_path / "out.onnx"
    # a copy: save_model(external=True) empties the proto it is given (see the xfail below)
    written = modelio.save_model(copy.deepcopy(model), out, inp=None, external=True)
    assert written == [out, tmp_path / "out.onnx.data"]
    assert listing(tmp_path) == ["out.onnx", "out.onnx.data"]
    assert (tmp_path / "out.onnx.data").stat().st_size >= 32 * 32 * 4
    assert out.stat().st_size < 32 * 32 * 4  # the weights are not inline
    loaded = modelio.load_model(out)
    np.testing.assert_array_equal(weights_of(loaded)["W1"], weights_of(model)["W1"])
    np.testing.assert_array_equal(run(out, {"x": x})[0], expected)
    np.testing.assert_array_equal(run(loaded, {"x": x})[0], expected)


def test_save_model_external_data_for_a_tiny_model(tmp_path):
    out = tmp_path / "out.onnx"
    modelio.save_model(b.mlp((4, 4, 2)), out, inp=None, external=True)
    assert out.is_file()
    np.testing.assert_array_equal(weights_of(modelio.load_model(out))["W1"],
                                  weights_of(b.mlp((4, 4, 2)))["W1"])


def test_save_model_external_data_leaves_the_model_untouched(tmp_path):
    model = b.mlp((32, 32, 8))
    before = model.SerializeToString()
    modelio.save_model(model, tmp_path / "out.onnx", inp=None, external=True)
    assert model.SerializeToString() == before


def test_needs_external_threshold(monkeypatch):
    model = b.mlp((32, 32, 8))
    assert modelio.tensor_bytes(model) == (32 * 32 + 32 * 8) * 4
    assert not modelio.needs_external(model)
    monkeypatch.setattr(modelio, "PROTO_LIMIT", 1000)
    assert modelio.needs_external(model)


# --------------------------------------------------------------------------- load_model


def test_load_model_round_trip(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save_model(b.cnn(), str(p))
    assert modelio.load_model(p) == b.cnn()


def test_load_model_missing_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        modelio.load_model(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="does not exist"):
        modelio.load_model(tmp_path)  # a directory is not a model file


@pytest.mark.parametrize("content", [b"hello, this is not onnx\n", b'{"graph": []}',
                                     b"PK\x03\x04garbage"])
def test_load_model_non_onnx_file(tmp_path, content):
    p = tmp_path / "m.onnx"
    p.write_bytes(content)
    with pytest.raises(ModelError, match="is not a readable ONNX model"):
        modelio.load_model(p)


def test_load_model_empty_file(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(b"")
    with pytest.raises(ModelError):
        modelio.load_model(p)


def test_load_model_missing_external_data(tmp_path):
    out = tmp_path / "out.onnx"
    modelio.save_model(b.mlp((32, 32, 8)), out, inp=None, external=True)
    (tmp_path / "out.onnx.data").unlink()
    with pytest.raises(ModelError, match=r"out\.onnx\.data"):
        modelio.load_model(out)


def test_check_rejects_an_invalid_rewritten_model():
    from onnx_obc.rewrite import check

    model = b.mlp()
    model.graph.node.append(helper.make_node("Relu", ["undefined_tensor"], ["zz"]))
    with pytest.raises(ModelError, match="fails onnx.checker"):
        check(model)
