"""Runs that cannot finish stop before any work, with the reason and the fix (preflight.py),
and what a run writes never touches what it reads.

"Before any work" is checked by making onnxruntime refuse to build a session: capture,
verification and every other stage need one, the up-front checks do not.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_obc import convert, modelio, preflight
from onnx_obc.capture import Runtime, providers_for, session
from onnx_obc.errors import CalibrationError, ModelError, ObcError
from onnx_obc.layers import find_layers
from onnx_obc.layers import Skipped
from onnx_obc.report import Report, LayerResult, short_name

from . import builders as b


@pytest.fixture
def no_work(monkeypatch):
    """Any onnxruntime session (capture, verify...) fails the test: nothing may start."""

    def refuse(*a, **kw):
        raise AssertionError("an onnxruntime session was built: work started before the check")

    monkeypatch.setattr(ort, "InferenceSession", refuse)


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def run(path_or_model, feed):
    src = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) \
        else str(path_or_model)
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, feed)


# --------------------------------------------------------------------------- 1. external data


def save_with_data(model: onnx.ModelProto, path: Path, location: str) -> None:
    onnx.save_model(copy.deepcopy(model), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=location, size_threshold=0)


def test_the_inputs_external_data_is_never_written_over(tmp_path, saved):
    model = b.mlp((32, 32, 8))
    _, data = saved(model, n=24)
    inp, out = tmp_path / "a.onnx", tmp_path / "b.onnx"
    save_with_data(model, inp, "b.onnx.data")  # a.onnx reads its weights from b.onnx.data
    before = (tmp_path / "b.onnx.data").read_bytes()
    res = convert(inp, out, sparsity=0.5, allocate="uniform", calib=data, external_data=True,
                  progress=False)
    assert (tmp_path / "b.onnx.data").read_bytes() == before
    assert res.written == [out, tmp_path / "b.onnx.obc.data"]
    assert any("b.onnx.obc.data" in w for w in res.report.warnings)
    x = b.feeds(model, 3)["x"]
    np.testing.assert_array_equal(run(inp, {"x": x})[0], run(model, {"x": x})[0])
    loaded = modelio.load_model(out)  # the output reads its own file
    assert (numpy_helper.to_array(loaded.graph.initializer[0]) == 0).mean() == pytest.approx(0.5)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(res.model, {"x": x})[0], rtol=1e-6)


def test_data_file_name_skips_every_name_the_input_reads(tmp_path):
    inp = tmp_path / "a.onnx"
    model = b.mlp((32, 32, 8))
    save_with_data(model, inp, "b.onnx.data")
    assert modelio.data_file_name(tmp_path / "b.onnx", inp) == "b.onnx.obc.data"
    assert modelio.data_file_name(tmp_path / "c.onnx", inp) == "c.onnx.data"
    assert modelio.data_file_name(tmp_path / "b.onnx", None) == "b.onnx.data"
    inp2 = tmp_path / "d.onnx"
    save_with_data(model, inp2, "b.onnx.obc.data")
    (tmp_path / "b.onnx.data").write_bytes(b"someone else's")  # exists, not read by d.onnx
    assert modelio.data_file_name(tmp_path / "b.onnx", inp2) == "b.onnx.data"
    assert modelio.input_files(inp2) == (inp2.resolve(), (tmp_path / "b.onnx.obc.data").resolve())


def test_an_output_that_is_the_inputs_data_file_is_refused(tmp_path, saved, no_work):
    model = b.mlp((32, 32, 8))
    _, data = saved(model)
    inp = tmp_path / "a.onnx"
    save_with_data(model, inp, "w.onnx")  # weights in a file whose name ends in .onnx
    before = (tmp_path / "w.onnx").read_bytes()
    with pytest.raises(ModelError, match="external data file the input model reads"):
        convert(inp, tmp_path / "w.onnx", sparsity=0.5, calib=data, progress=False)
    assert (tmp_path / "w.onnx").read_bytes() == before


# --------------------------------------------------------------------------- 2. output


def test_an_output_directory_that_cannot_be_written_fails_before_any_work(saved, no_work):
    model, data = saved(b.mlp())
    with pytest.raises(ModelError, match=r"cannot write the output model in '/proc'.*writ"):
        convert(model, "/proc/out.onnx", sparsity=0.5, calib=data, progress=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_directory_fails_before_any_work(saved, tmp_path, no_work):
    model, data = saved(b.mlp())
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ModelError, match="Permission denied"):
            convert(model, ro / "out.onnx", sparsity=0.5, calib=data, progress=False)
    finally:
        ro.chmod(0o700)


def test_a_full_disk_fails_before_any_work(saved, tmp_path, monkeypatch, no_work):
    model, data = saved(b.mlp())
    real = preflight.shutil.disk_usage
    monkeypatch.setattr(preflight.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=1000))
    with pytest.raises(ModelError, match=r"not enough space.*1000 bytes free"):
        convert(model, tmp_path / "out.onnx", sparsity=0.5, calib=data, progress=False)
    assert listing(tmp_path) == ["model.npz", "model.onnx"]  # the probe file is gone too


def test_a_full_disk_at_save_time_is_a_model_error_and_leaves_nothing(tmp_path, monkeypatch):
    def full(model, path, *a, **kw):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", full)
    with pytest.raises(ModelError, match=r"No space left on device.*free space in"):
        modelio.save_model(b.mlp(), tmp_path / "out.onnx", inp=None)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("fail_at", [1, 2])  # the data file's rename, the model's rename
def test_a_failed_rename_leaves_no_data_file_without_its_model(tmp_path, monkeypatch, fail_at):
    calls = []
    real = os.replace

    def replace(a, b):
        calls.append(a)
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(ModelError, match="No space left"):
        modelio.save_model(b.mlp((32, 32, 8)), tmp_path / "out.onnx", inp=None, external=True)
    assert listing(tmp_path) == []


def test_ctrl_c_while_saving_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(model, path, *a, **kw):
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "save_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        modelio.save_model(b.mlp(), tmp_path / "out.onnx", inp=None)
    assert listing(tmp_path) == []


# --------------------------------------------------------------------------- 3. report


@pytest.mark.parametrize("where, match", [
    ("missing/r.json", "does not exist; create it first"),
    ("/proc/r.json", "cannot write the report in '/proc'"),
    (".", "is a directory"),
    ("model.npz", "a file this run reads or writes"),
    ("out.onnx", "a file this run reads or writes"),
])
def test_a_bad_report_path_fails_before_any_work(saved, tmp_path, no_work, where, match):
    model, data = saved(b.mlp())
    report = where if where.startswith("/") else tmp_path / where
    with pytest.raises(ObcError, match=match):
        convert(model, tmp_path / "out.onnx", sparsity=0.5, calib=data, progress=False,
                report_path=report)
    assert not (tmp_path / "out.onnx").exists()


def tiny_report(name: str = "fc1") -> Report:
    layer = LayerResult(name=name, op="MatMul", weight="W", shape=(4, 2), rows=2, cols=4,
                        groups=1, method="obc", sparsity=0.5, target=0.5, loss=1.0,
                        magnitude_loss=2.0, dead_inputs=0, damp=0.01, damp_failed=(),
                        seconds=0.1)
    return Report(model="m.onnx", output="o.onnx", config={}, device="cpu", calibration={},
                  layers=[layer], skipped=[Skipped(name + "_skip", "MatMul", "why")])


def test_write_json_failure_keeps_the_old_report_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    path.write_text("old")

    def full(src, dst):  # the temp file is written; moving it into place fails
        assert os.path.getsize(src) > 0
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(ObcError, match=r"cannot write the report .*No space left.*free space"):
        tiny_report().write_json(path)
    assert listing(tmp_path) == ["r.json"] and path.read_text() == "old"


def test_write_json_is_whole_and_atomic(tmp_path):
    path = tmp_path / "r.json"
    tiny_report().write_json(path)
    assert json.loads(path.read_text())["layers"][0]["name"] == "fc1"
    assert listing(tmp_path) == ["r.json"]


# --------------------------------------------------------------------------- 4. IR 3


def ir3_model(seed: int = 0) -> onnx.ModelProto:
    """IR 3 / opset 9: every weight is also listed as a graph input.

        x [N, 8] --fc1 MatMul(W1 [8, 16])--> Relu --fc2 Gemm(W2 [4, 16], B2, transB)--> y
    """
    w = {"W1": b.weight("W1", (8, 16), seed), "W2": b.weight("W2", (4, 16), seed + 1),
         "B2": b.weight("B2", (4,), seed + 2)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], name="fc2", transB=1)]
    inputs = [b.vi("x", [b.BATCH, 8])] + [b.vi(k, list(t.dims)) for k, t in w.items()]
    graph = helper.make_graph(nodes, "g", inputs, [b.vi("y", [b.BATCH, 4])], list(w.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    return model


def test_ir3_weights_listed_as_inputs_are_compressed_as_constants(tmp_path, saved, caplog):
    model = ir3_model()
    path, data = saved(model, n=64)
    assert list(np.load(data)) == ["x"]  # calibration feeds only the real input
    with caplog.at_level(logging.WARNING, logger="onnx_obc"):
        res = convert(path, tmp_path / "out.onnx", sparsity=0.5, allocate="uniform", calib=data,
                      progress=False)
    assert [x.name for x in res.report.layers] == ["fc1", "fc2"]
    assert any("3 graph input(s) also have initializers" in w for w in res.report.warnings)
    assert "3 graph input(s) also have initializers" in caplog.text
    out = onnx.load(str(tmp_path / "out.onnx"))
    onnx.checker.check_model(out)
    assert out.ir_version == 3  # the same listing: every weight still an input, with its value
    assert [i.name for i in out.graph.input] == [i.name for i in model.graph.input]
    assert {t.name for t in out.graph.initializer} == {"W1", "W2", "B2"}
    w1 = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "W1"))
    assert (w1 == 0).mean() == pytest.approx(0.5)
    x = b.feeds(model, 5)["x"]
    np.testing.assert_allclose(run(tmp_path / "out.onnx", {"x": x})[0],
                               run(res.model, {"x": x})[0], rtol=1e-6)


def test_ir3_with_bits_keeps_a_consistent_input_listing(tmp_path, saved):
    path, data = saved(ir3_model(), n=64)
    res = convert(path, tmp_path / "out.onnx", bits=8, calib=data, progress=False)
    out = onnx.load(str(tmp_path / "out.onnx"))
    onnx.checker.check_model(out)
    inits = {t.name for t in out.graph.initializer}
    # every listed input is either fed by the caller (x) or backed by an initializer
    assert [i.name for i in out.graph.input if i.name not in inits] == ["x"]
    sess = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"]
    assert len(res.report.layers) == 2


def test_ir4_and_later_overridable_weights_stay_skipped_with_the_fix():
    _, (s,) = find_layers(b.weight_is_graph_input())
    assert "graph input, not a constant" in s.reason and "drop it from graph.input" in s.reason


# --------------------------------------------------------------------------- 5. / 6. weights


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_nan_weight_is_named_before_any_work(saved, tmp_path, no_work, bad):
    model = b.mlp((8, 12, 4))
    w = numpy_helper.to_array(model.graph.initializer[1]).copy()
    w[3, 2] = bad
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(w, "W2"))
    path, data = saved(model)
    with pytest.raises(ModelError, match=r"weight 'W2' of layer fc2 has 1 NaN/inf value\(s\), "
                                         r"the first at index \(3, 2\).*--exclude 'fc2'"):
        convert(path, tmp_path / "out.onnx", sparsity=0.5, calib=data, progress=False)
    layers, _ = find_layers(model)
    preflight.check_finite(model, [L for L in layers if L.weight == "W1"])  # fc1 is fine


def test_float16_weights_with_bits_are_refused_before_any_work(saved, tmp_path, no_work):
    path, data = saved(b.matmul(8, 4, dtype=np.float16))
    with pytest.raises(ModelError, match=r"weights of layer mm \('W'\) are float16; --bits "
                                         r"writes float32 QDQ: convert the model to float32"):
        convert(path, tmp_path / "out.onnx", bits=8, calib=data, progress=False)
    with pytest.raises(ModelError, match=r"float16; --act-bits writes float32 QDQ"):
        convert(path, tmp_path / "out.onnx", sparsity=0.5, act_bits=8, calib=data,
                progress=False)


def test_float16_weights_can_still_be_pruned(saved, tmp_path):
    path, data = saved(b.matmul(8, 4, dtype=np.float16))
    res = convert(path, tmp_path / "out.onnx", sparsity=0.5, calib=data, progress=False)
    assert res.model.graph.initializer[0].data_type == TensorProto.FLOAT16


# --------------------------------------------------------------------------- 7. custom ops


def custom_op_model() -> onnx.ModelProto:
    """x --mm(W)--> h --Foo (domain my.custom)--> y"""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Foo", ["h"], ["y"], name="foo", domain="my.custom")]
    graph = helper.make_graph(nodes, "g", [b.vi("x", [b.BATCH, 6])], [b.vi("y", [b.BATCH, 5])],
                              [b.weight("W", (6, 5), 0)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", b.OPSET),
                                                    helper.make_opsetid("my.custom", 1)])
    model.ir_version = b.IR_VERSION
    return model


def test_an_unknown_custom_op_fails_early_suggesting_the_library(tmp_path, no_work):
    model = custom_op_model()
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    assert preflight.unknown_ops(model) == [("foo", "Foo", "my.custom")]
    with pytest.raises(ModelError, match=r"does not know 1 op\(s\).*foo \(Foo, domain "
                                         r"'my.custom'\).*--custom-op-library PATH"):
        convert(tmp_path / "m.onnx", tmp_path / "out.onnx", sparsity=0.5,
                calib=[b.feeds(model, 8)], progress=False)


def test_ops_defined_as_model_functions_are_not_unknown():
    model = custom_op_model()
    model.functions.append(helper.make_function(
        "my.custom", "Foo", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
        [helper.make_opsetid("", b.OPSET)]))
    assert preflight.unknown_ops(model) == []
    assert preflight.unknown_ops(b.cnn()) == []


@pytest.mark.parametrize("content, match", [(None, "does not exist"),
                                            (b"not a library", "cannot load the custom op")])
def test_a_custom_op_library_must_exist_and_load(tmp_path, no_work, content, match):
    lib = tmp_path / "ops.so"
    if content is not None:
        lib.write_bytes(content)
    with pytest.raises(ModelError, match=match):
        convert(b.mlp(), None, sparsity=0.5, custom_op_library=str(lib), progress=False)
    with pytest.raises(ModelError, match=match):  # every session the tool builds uses it
        session(b.mlp(), providers_for("numpy", str(lib)))


def test_runtime_is_what_sessions_are_built_from():
    rt = providers_for("numpy")
    assert rt == Runtime(("CPUExecutionProvider",), None)
    assert Runtime.of(["CPUExecutionProvider"]) == rt and Runtime.of(rt) is rt
    feed = b.feeds(b.mlp(), 2)
    np.testing.assert_allclose(session(b.mlp(), rt).run(None, feed)[0],
                               session(b.mlp(), ["CPUExecutionProvider"]).run(None, feed)[0])


# --------------------------------------------------------------------------- 8. memory


def wide_gemm(d_in: int) -> onnx.ModelProto:
    return b.gemm(d_in=d_in, d_out=2)


def test_a_hessian_that_cannot_fit_is_refused_naming_the_layer(saved, tmp_path, monkeypatch,
                                                                no_work):
    path, data = saved(wide_gemm(512))  # H: 512 x 512 float64 = 2 MiB; solver 3 MiB
    monkeypatch.setattr(preflight, "available_memory", lambda: 4 << 20)
    with pytest.raises(ModelError, match=r"layer gemm needs about 5.0 MiB of memory: its "
                                         r"Hessian is 1 x 512 x 512 float64 \(2.0 MiB; d = 512"
                                         r".*4.0 MiB are available.*--exclude 'gemm'"):
        convert(path, tmp_path / "out.onnx", sparsity=0.5, calib=data, progress=False)


def test_memory_estimates_need_no_big_arrays():
    (L,), _ = find_layers(b.conv(c_in=4096, c_out=2, kernel=4, spatial=4, bias=False))
    assert L.matrix_shape == (1, 2, 65536)
    hess, work = preflight.layer_memory(L)
    assert hess == 32 << 30 and work == 48 << 30  # 32 GiB in float64 + the solver's
    with pytest.raises(ModelError, match=r"d = 65536.*--exclude 'conv'"):
        preflight.check_memory([L], 64 << 30)
    preflight.check_memory([L], 128 << 30)


def test_all_hessians_together_must_fit_one_shot():
    layers, _ = find_layers(b.mlp((256, 256, 4)))
    each = max(sum(preflight.layer_memory(L)) for L in layers)  # every layer fits alone
    with pytest.raises(ModelError, match=r"all 2 layers .* --sequential"):
        preflight.check_memory(layers, each)
    preflight.check_memory(layers, 2 * each, sequential=True)  # one group at a time


# --------------------------------------------------------------------------- 9. samples


def test_few_calibration_samples_give_a_warning(saved, tmp_path, caplog):
    path, data = saved(b.mlp(), n=3)
    with caplog.at_level(logging.WARNING, logger="onnx_obc"):
        res = convert(path, None, sparsity=0.5, calib=data, progress=False, holdout=0.0)
    assert any("only 3 calibration sample(s)" in w and "128" in w for w in res.report.warnings)
    assert "only 3 calibration sample(s)" in caplog.text
    path, data = saved(b.mlp(), n=24)
    res = convert(path, None, sparsity=0.5, calib=data, progress=False)
    assert not any("calibration sample(s)" in w for w in res.report.warnings)


def test_a_text_file_as_calibration_data_says_what_is_accepted(saved, tmp_path):
    path, _ = saved(b.mlp())
    txt = tmp_path / "calib.txt"
    txt.write_text("1 2 3\n")
    with pytest.raises(CalibrationError, match=r"not an \.npz/\.npy file.*numpy\.savez"):
        convert(path, None, sparsity=0.5, calib=txt, progress=False)


# --------------------------------------------------------------------------- 10. names


TF_NAME = ("StatefulPartitionedCall/model/" + "/".join(f"block_{i}/unit_{i}" for i in range(40))
           + "/conv2d_3/Conv2D")


def test_short_name_keeps_head_and_tail():
    assert len(TF_NAME) > 600
    s = short_name(TF_NAME, 48)
    assert s == "StatefulPartitionedCall/model/…/conv2d_3/Conv2D" and len(s) <= 48
    assert short_name("fc1", 10) == "fc1"
    s = short_name("x" * 100, 21)
    assert len(s) == 21 and s.startswith("x" * 10) and "…" in s


def test_tables_shorten_long_names_and_json_keeps_them(tmp_path):
    r = tiny_report(TF_NAME)
    table = r.table()
    assert TF_NAME not in table and "StatefulPartitionedCall/" in table
    assert max(len(line) for line in table.splitlines()) < 200
    r.write_json(tmp_path / "r.json")
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["layers"][0]["name"] == TF_NAME and d["skipped"][0]["node"] == TF_NAME + "_skip"


@pytest.mark.parametrize("clash", ["two nodes", "an initializer"])
def test_a_tensor_defined_twice_is_refused_before_any_work(tmp_path, no_work, clash):
    """Not single assignment (torch's dynamo exporter named MiniLM's word-embedding Gather
    like the output name it was given): a clear error at load, not graph-surgeon's "Cycle
    detected" from the fold; the ModelProto path too."""
    model = b.mlp((4, 6, 3))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    if clash == "two nodes":
        relu.output[0] = model.graph.output[0].name
    else:
        relu.output[0] = model.graph.initializer[0].name
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    for src in (str(path), model):
        with pytest.raises(ModelError, match=r"defines tensor .* twice .*Re-export it"):
            convert(src, tmp_path / "out.onnx", sparsity=0.5, progress=False)
    assert listing(tmp_path) == ["m.onnx"]


def test_a_model_given_as_its_serialized_bytes(tmp_path):
    """bytes (as onnxruntime takes a model) are the model; bytes that are no model, a model
    whose tensors are in external files (bytes cannot locate them) and other types are
    refused at load with what to give instead."""
    model = b.mlp((4, 6, 3))
    calib = b.feeds(model, 16)
    out = convert(model.SerializeToString(), tmp_path / "out.onnx", sparsity=0.5, calib=calib,
                  progress=False)
    ref = convert(model, None, sparsity=0.5, calib=calib, progress=False)
    assert out.model.SerializeToString() == ref.model.SerializeToString()
    assert listing(tmp_path) == ["out.onnx"]
    for bad_input, match in ((b"not a model", "not a serialized ONNX model"),
                             (42, "give a path, an onnx.ModelProto or its serialized bytes")):
        with pytest.raises(ModelError, match=match):
            convert(bad_input, None, sparsity=0.5, progress=False)
    save_with_data(model, tmp_path / "ext.onnx", "ext.data")
    kept = onnx.load(str(tmp_path / "ext.onnx"), load_external_data=False)
    with pytest.raises(ModelError, match="external data files.*pass the model's path"):
        convert(kept.SerializeToString(), None, sparsity=0.5, progress=False)


def test_an_output_that_is_a_directory_fails_before_any_work(tmp_path, saved, no_work):
    """Before: the whole run, then "cannot write ... (Is a directory)" at the save."""
    model, data = saved(b.mlp())
    (tmp_path / "out.onnx").mkdir()
    with pytest.raises(ModelError, match="is a directory; give a file path in it"):
        convert(model, tmp_path / "out.onnx", calib=data, sparsity=0.5, progress=False)
