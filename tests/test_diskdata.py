"""Large tensors no stage reads stay in the input's data file (diskdata.py): not loaded,
shared by the sessions, copied to the output; the results are those of a loaded model."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_obc import convert, diskdata, modelio
from onnx_obc.capture import session

from .builders import huge_external


def table_model(folder, rows: int = 2048, dim: int = 128):
    """huge_external at 1 MiB (exactly diskdata.OVER): Gather(table) -> fc1 -> Relu -> fc2."""
    assert rows * dim * 4 >= diskdata.OVER
    return huge_external(folder, table_rows=rows, dim=dim)


def _table(path) -> np.ndarray:
    m = onnx.load(str(path))
    return numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "table"))


def test_load_model_keeps_a_gather_table_on_disk_and_loads_the_rest(tmp_path):
    path, _ = table_model(tmp_path)
    m = modelio.load_model(path)
    t = {i.name: i for i in m.graph.initializer}
    assert [k.name for k in diskdata.kept(m)] == ["table"]
    assert not t["table"].raw_data and t["fc1.weight"].raw_data  # fc1 is a layer: loaded
    assert modelio.tensor_bytes(m) < diskdata.OVER
    assert modelio.weight_bytes(m) == modelio.tensor_bytes(m) + 2048 * 128 * 4
    assert modelio.writes_external(m) and not modelio.needs_external(m)


def test_a_table_any_stage_could_read_is_loaded(tmp_path):
    """The same table also read by a MatMul (a layer weight) is loaded as before."""
    table = np.random.default_rng(0).standard_normal((2048, 128)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("MatMul", ["e", "table_t"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64,
                                                                       [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(table, "table"),
                           numpy_helper.from_array(table.T.copy(), "table_t")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(tmp_path / "a.onnx"), save_as_external_data=True,
                    location="a.onnx.data", size_threshold=0)
    assert [t.name for t in diskdata.kept(modelio.load_model(tmp_path / "a.onnx"))] == ["table"]
    model.graph.node[1].input[1] = "table"  # now the MatMul reads the table too
    del model.graph.initializer[1]
    onnx.save_model(model, str(tmp_path / "b.onnx"), save_as_external_data=True,
                    location="b.onnx.data", size_threshold=0)
    loaded = modelio.load_model(tmp_path / "b.onnx")
    assert diskdata.kept(loaded) == []
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), table)


def test_sessions_share_one_mapping_and_match_the_loaded_model(tmp_path):
    path, feed = table_model(tmp_path)
    m, full = modelio.load_model(path), onnx.load(path)
    x = feed(4)
    y0 = session(full, ["CPUExecutionProvider"]).run(None, x)[0]
    a, c = session(m, ["CPUExecutionProvider"]), session(m, ["CPUExecutionProvider"], True)
    assert a._obc_shared[0] is c._obc_shared[0]  # one mapping of the file for both
    np.testing.assert_array_equal(a.run(None, x)[0], y0)
    np.testing.assert_array_equal(c.run(None, x)[0], y0)
    del a, c
    gc.collect()
    assert len(diskdata._MAPPED) == 0  # unmapped with the last session


@pytest.mark.parametrize("external", [None, False])
def test_save_copies_the_kept_table_into_the_output(tmp_path, external):
    path, feed = table_model(tmp_path)
    before = {p: Path(p).read_bytes() for p in (path, path + ".data")}
    m = modelio.load_model(path)
    out = tmp_path / "out.onnx"
    written = modelio.save_model(m, out, inp=path, external=external)
    assert [p.name for p in written] == (["out.onnx", "out.onnx.data"] if external is None
                                         else ["out.onnx"])
    assert sorted(os.listdir(tmp_path)) == sorted(["huge.onnx", "huge.onnx.data",
                                                   *(p.name for p in written)])
    assert {p: Path(p).read_bytes() for p in before} == before
    np.testing.assert_array_equal(_table(out), _table(path))
    assert diskdata.kept(m)  # the model still points at the input's file


@pytest.mark.parametrize("options", [
    dict(bits=4, method="gptq"), dict(channels=0.3),  # channels: the shrink's full check
    dict(bits=8, act_bits=8, runtime="onnxruntime", correct=True),
    dict(bits=8, act_bits=8, runtime="onnxruntime", smooth_alpha=1.0)], ids=str)  # smooth.py
def test_convert_gives_what_a_loaded_model_gives(tmp_path, options):
    """The run on a model whose table stays on disk equals the run on the same model in
    memory: same layer losses, same fidelity, same output values. The onnxruntime target
    stores the table as codes (export/orttables.py), read from the input's file in chunks:
    then nothing is left kept."""
    path, feed = table_model(tmp_path)
    x = feed(32)
    calib = [{"ids": x["ids"][i:i + 1]} for i in range(32)]
    opts = dict(calib=calib, progress=False, holdout=0.25, **options)
    disk = convert(path, tmp_path / "out.onnx", **opts)
    mem = convert(onnx.load(path), **opts)
    codes = options.get("runtime") == "onnxruntime"
    assert bool(diskdata.kept(disk.model)) != codes and not diskdata.kept(mem.model)
    assert [r.loss for r in disk.report.layers] == [r.loss for r in mem.report.layers]
    assert disk.report.fidelity == mem.report.fidelity
    y_mem = session(mem.model, ["CPUExecutionProvider"]).run(None, x)[0]
    y_out = session(onnx.load(str(tmp_path / "out.onnx")), ["CPUExecutionProvider"]).run(
        None, x)[0]
    np.testing.assert_array_equal(y_out, y_mem)


def test_payload_bytes_equal_the_payload_without_reading_it():
    """payload_bytes: len(raw_data) (else 4 x float_data) for every kind of tensor, packed
    4-bit and string-free types from dims and type, the others read."""
    T = TensorProto
    tensors = [numpy_helper.from_array(np.ones((3, 5), dt), "a") for dt in
               (np.float32, np.float16, np.int8, np.uint8, np.int64, np.float64, np.bool_)]
    tensors += [helper.make_tensor("f", T.FLOAT, [4], [1.0, 2.0, 3.0, 4.0]),  # float_data
                helper.make_tensor("q", T.INT4, [5], [1, -2, 3, 0, 7]),  # packed: read
                helper.make_tensor("e", T.FLOAT, [0], [])]
    for t in tensors:
        assert diskdata.payload_bytes(t) == (len(t.raw_data) or 4 * len(t.float_data)), t.name
    assert diskdata.payload_bytes(tensors[0]) == 60
    assert diskdata.payload_bytes(tensors[-3]) == 16
