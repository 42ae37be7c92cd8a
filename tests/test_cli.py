"""The command line, end to end on tiny builder models (CliRunner), plus the root cli.py shim."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from onnx_obc.cli import main

from . import builders as b

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def mlp_files(saved):
    return saved(b.mlp((8, 16, 4)), n=24)


def test_compress_writes_the_model_and_prints_the_table(mlp_files, tmp_path):
    model, data = mlp_files
    out = tmp_path / "out.onnx"
    res = invoke(model, out, "--sparsity", "0.5", "--allocate", "uniform", "--calib", data, "-q")
    assert res.exit_code == 0, res.output
    assert out.is_file()
    compressed = onnx.load(str(out))
    for init in compressed.graph.initializer:
        w = numpy_helper.to_array(init)
        assert (w == 0).mean() == pytest.approx(0.5, abs=1 / w.size)
    lines = res.output.splitlines()
    assert lines[0].split()[:5] == ["layer", "op", "W", "[out,in]", "sparsity"]
    assert any(line.startswith("fc1") and "16x8" in line and "50.00%" in line for line in lines)
    assert any(line.startswith("fc2") and "4x16" in line for line in lines)
    assert "model fidelity" in res.output
    assert f"wrote {out}" in res.output
    assert "capture:" not in res.output and "batch/s" not in res.output  # -q: no progress bars
    assert "NOT representative" not in res.output


def test_report_json(mlp_files, tmp_path):
    model, data = mlp_files
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    res = invoke(model, out, "--sparsity", "0.25", "--allocate", "uniform", "--calib", data, "-q",
                 "--report", report)
    assert res.exit_code == 0, res.output
    assert str(report) in res.output
    rep = json.loads(report.read_text())
    assert [x["name"] for x in rep["layers"]] == ["fc1", "fc2"]
    for x in rep["layers"]:
        assert x["target"] == 0.25 and x["sparsity"] == pytest.approx(0.25, abs=0.02)
        assert x["loss"] <= x["magnitude_loss"] + 1e-12
    assert rep["config"]["prune"]["sparsity"] == 0.25
    assert rep["output"] == str(out)
    assert rep["calibration"]["synthetic"] is False
    assert rep["fidelity"]  # at least one data set
    assert not list(tmp_path.glob("*.tmp"))


def test_inspect_lists_layers_and_reasons(saved):
    model, _ = saved(b.attention_scores())
    res = invoke("inspect", model)
    assert res.exit_code == 0, res.output
    out = res.output
    assert "2 compressible layers" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line and line[0] in "qk"}
    assert "MatMul" in rows["q"] and "6x6" in rows["q"] and "initializer" in rows["q"]
    assert "left uncompressed (1)" in out
    assert "scores (MatMul): a product of two activations (as attention's scores" in out


def test_inspect_lists_the_channel_sites_and_why_the_others_keep_theirs(saved):
    """`inspect --channels`: the sites a --channels run would find (on the folded model),
    before any data, and the kept producers grouped by reason; shipped ViT: its value heads
    and its MLP."""
    model, _ = saved(b.mlp((8, 16, 4)))
    res = invoke("inspect", model, "--channels")
    assert res.exit_code == 0, res.output
    out = res.output.splitlines()
    i = next(k for k, line in enumerate(out) if line.startswith("channel sites (1;"))
    assert "-> " in out[i + 1] and out[i + 1].endswith(": 16 channels")
    assert out[i + 2] == "channels kept (1 producers):" and "graph output" in out[i + 3]
    res = invoke("inspect", str(ROOT / "models" / "digits_vit.onnx"), "--channels")
    assert "attn.v -> attn.out" in res.output and "mlp.fc1 -> mlp.fc2" in res.output
    assert "channel sites" not in invoke("inspect", model).output
    from tests.channels.graphs import grouped_block

    grouped, _ = saved(grouped_block())  # a grouped conv's sites say so
    res = invoke("inspect", grouped, "--channels")
    assert "first -> grouped: 16 channels (4 groups: as many from each)" in res.output
    assert "grouped -> last: 16 channels (4 groups: as many from each)" in res.output
    from tests.channels.test_concat import c2f

    res = invoke("inspect", saved(c2f())[0], "--channels")  # YOLOv8's C2f: where each cut is
    assert ("cv1 -> cv2: 8 channels (through a Concat: inputs 0..7 of 24, part of a Split: "
            "rows 0..7 of 16)") in res.output
    assert "m.cv2 -> cv2: 8 channels (through a Concat: inputs 16..23 of 24)" in res.output
    from tests.channels.test_fanout import csp

    res = invoke("inspect", saved(csp())[0], "--channels")  # two 1x1 convs on one tensor
    assert "prod -> cv1: 12 channels (also read by cv2)" in res.output


def test_inspect_with_selection_options(saved):
    model, _ = saved(b.cnn())
    res = invoke("inspect", model, "--op-types", "Conv")
    assert res.exit_code == 0, res.output
    assert "1 compressible layers" in res.output
    assert "fc (Gemm): op type Gemm not selected" in res.output
    res = invoke("inspect", model, "--exclude", "conv")
    assert "conv (Conv): excluded by --exclude 'conv'" in res.output
    res = invoke("inspect", model, "--op-types", "Dense")
    assert res.exit_code == 2 and "Dense" in res.output


def test_constant_storage_is_shown(saved):
    model, _ = saved(b.constant_weight())
    res = invoke("inspect", model)
    assert res.exit_code == 0 and "constant" in res.output


def test_bad_sparsity_exits_2_naming_the_option(mlp_files, tmp_path):
    model, data = mlp_files
    out = tmp_path / "out.onnx"
    res = invoke(model, out, "--sparsity", "1.5", "--calib", data, "-q")
    assert res.exit_code == 2
    assert "--sparsity" in res.output and "1.5" in res.output
    assert not out.exists()


def test_missing_sparsity_exits_2(mlp_files, tmp_path):
    model, data = mlp_files
    res = invoke(model, tmp_path / "out.onnx", "--calib", data)
    assert res.exit_code == 2 and "--sparsity" in res.output


def test_output_equal_to_input_exits_1_and_keeps_the_input(mlp_files):
    model, data = mlp_files
    original = model.read_bytes()
    res = invoke(model, model, "--sparsity", "0.5", "--calib", data, "-q")
    assert res.exit_code == 1
    assert "is the input model" in res.output
    assert model.read_bytes() == original


def test_wrong_calibration_key_exits_1_naming_it(saved, tmp_path):
    x = b.feeds(b.mlp((8, 16, 4)), 12)["x"]
    model, data = saved(b.mlp((8, 16, 4)), data={"inputs": x})
    out = tmp_path / "out.onnx"
    res = invoke(model, out, "--sparsity", "0.5", "--calib", data, "-q")
    assert res.exit_code == 1
    assert "Error:" in res.output and "'inputs'" in res.output and "['x']" in res.output
    assert "Traceback" not in res.output
    assert not out.exists()


def test_model_without_compressible_layers_exits_1(saved, tmp_path):
    model, data = saved(b.activation_matmul())
    res = invoke(model, tmp_path / "out.onnx", "--sparsity", "0.5", "--calib", data, "-q")
    assert res.exit_code == 1
    assert "no compressible layer" in res.output
    assert "graph input, not a constant" in res.output  # the reason is passed on
    assert not (tmp_path / "out.onnx").exists()


def test_without_calib_warns_loudly(mlp_files, tmp_path):
    model, _ = mlp_files
    out = tmp_path / "out.onnx"
    res = invoke(model, out, "--sparsity", "0.5", "-q")
    assert res.exit_code == 0, res.output
    assert out.is_file()
    assert "WARNING" in res.output and "NOT representative" in res.output


def test_cnn_end_to_end(saved, tmp_path):
    model, data = saved(b.cnn(), n=20)
    res = invoke(model, tmp_path / "out.onnx", "--sparsity", "0.5", "--allocate", "uniform",
                 "--calib", data, "-q",
                 "--exclude", "fc")
    assert res.exit_code == 0, res.output
    assert "fc (Gemm): excluded by --exclude 'fc'" in res.output
    out = onnx.load(str(tmp_path / "out.onnx"))
    w = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    src = {i.name: numpy_helper.to_array(i) for i in b.cnn().graph.initializer}
    assert (w["Wc"] == 0).mean() == 0.5
    np.testing.assert_array_equal(w["Wfc"], src["Wfc"])  # excluded: untouched


def test_root_cli_shim_help():
    res = subprocess.run([sys.executable, "cli.py", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "Usage:" in res.stdout and "inspect" in res.stdout and "compress" in res.stdout


def test_python_dash_m_runs_the_command():
    """`python -m onnx_obc` (no console script on the PATH, a notebook's `!python -m`)."""
    res = subprocess.run([sys.executable, "-m", "onnx_obc", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "Usage: onnx-obc" in res.stdout and "inspect" in res.stdout


def test_root_cli_shim_compress_help():
    res = subprocess.run([sys.executable, "cli.py", "compress", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "--sparsity" in res.stdout and "--calib" in res.stdout


def test_bops_budget_from_the_command_line(saved, tmp_path):
    model, data = saved(b.mlp((8, 16, 4)), n=48)
    out, prof = tmp_path / "out.onnx", tmp_path / "p.json"
    res = invoke(model, out, "--allocate", "dp", "--budget", "bops", "--target", "20",
                 "--level-bits", "8,4", "--level-nm", "none", "--act-bits", "8",
                 "--calib", data, "-q", "--save-profile", prof, "--correct-scale")
    assert res.exit_code == 0, res.output
    assert "non-uniform profile:" in res.output and "bops kept" in res.output
    choice = json.loads(prof.read_text())["choice"]
    assert set(choice) == {"fc1", "fc2"} and set(choice.values()) <= {"fp32", "w8", "w4"}
    assert any(n.op_type == "DequantizeLinear" for n in onnx.load(str(out)).graph.node)
    bad = invoke(model, out, "--allocate", "dp", "--budget", "bops", "--calib", data, "-q")
    assert bad.exit_code == 2 and "--target" in bad.output
    bad = invoke(model, out, "--allocate", "dp", "--budget", "bops", "--target", "8",
                 "--level-nm", "2-4", "--calib", data, "-q")
    assert bad.exit_code == 2 and "is not N:M" in bad.output


# --------------------------------------------------------------------------- safety


def test_ctrl_c_prints_interrupted_and_exits_130(mlp_files, tmp_path, monkeypatch):
    import onnx_obc.pipeline

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_obc.pipeline, "convert", interrupted)
    model, data = mlp_files
    res = invoke(model, tmp_path / "out.onnx", "--sparsity", "0.5", "--calib", data, "-q")
    assert res.exit_code == 130
    assert "interrupted" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out.onnx").exists()


def test_group_help_points_to_the_compression_options():
    res = invoke("--help")
    assert res.exit_code == 0
    assert "onnx-obc compress --help" in res.output
    for flag in ("--sparsity", "--bits", "--calib", "--nm"):
        assert flag in res.output


def test_external_data_named_like_the_output_is_kept(tmp_path, saved):
    """`onnx-obc a.onnx b.onnx --external-data` where a.onnx keeps its weights in b.onnx.data"""
    import copy

    model = b.mlp((32, 32, 8))
    _, data = saved(model)
    a = tmp_path / "a.onnx"
    onnx.save_model(copy.deepcopy(model), str(a), save_as_external_data=True,
                    location="b.onnx.data", size_threshold=0)
    before = (tmp_path / "b.onnx.data").read_bytes()
    res = invoke(a, tmp_path / "b.onnx", "--sparsity", "0.5", "--calib", data, "-q",
                 "--external-data")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b.onnx.data").read_bytes() == before
    assert "b.onnx.obc.data" in res.output
    onnx.checker.check_model(onnx.load(str(a)))  # the input still loads, weights and all


def test_unwritable_output_exits_1_without_a_traceback(mlp_files):
    model, data = mlp_files
    res = invoke(model, "/proc/out.onnx", "--sparsity", "0.5", "--calib", data, "-q")
    assert res.exit_code == 1
    assert "cannot write the output model in '/proc'" in res.output
    assert "Traceback" not in res.output


def test_text_calibration_file_exits_1_naming_the_formats(mlp_files, tmp_path):
    model, _ = mlp_files
    txt = tmp_path / "calib.txt"
    txt.write_text("0.1 0.2\n")
    res = invoke(model, tmp_path / "out.onnx", "--sparsity", "0.5", "--calib", txt, "-q")
    assert res.exit_code == 1
    assert "not an .npz/.npy file" in res.output and "Traceback" not in res.output


def test_inspect_warns_about_custom_ops_and_shortens_long_names(tmp_path):
    from onnx import helper

    long = "StatefulPartitionedCall/model/" + "/".join(f"dense_{i}" for i in range(80)) + \
        "/MatMul"
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name=long),
             helper.make_node("Foo", ["h"], ["y"], name="foo", domain="my.custom")]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [b.vi("x", [b.BATCH, 6])], [b.vi("y", [b.BATCH, 5])],
                          [b.weight("W", (6, 5), 0)]),
        opset_imports=[helper.make_opsetid("", b.OPSET), helper.make_opsetid("my.custom", 1)])
    model.ir_version = b.IR_VERSION
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    res = invoke("inspect", tmp_path / "m.onnx")
    assert res.exit_code == 0, res.output
    assert "WARNING: onnxruntime does not know 1 op(s)" in res.output
    assert "foo (Foo, domain 'my.custom')" in res.output and "--custom-op-library" in res.output
    assert long not in res.output
    assert "StatefulPartitionedCall/model/dense_0/" in res.output
    assert "/…/dense_78/dense_79/MatMul" in res.output
    assert max(len(line) for line in res.output.splitlines() if "WARNING" not in line) < 150


def test_a_missing_custom_op_library_is_refused(mlp_files, tmp_path):
    model, data = mlp_files
    res = invoke(model, tmp_path / "out.onnx", "--sparsity", "0.5", "--calib", data, "-q",
                 "--custom-op-library", tmp_path / "missing.so")
    assert res.exit_code == 2 and "does not exist" in res.output
    assert not (tmp_path / "out.onnx").exists()


def test_w8a8_on_onnxruntime_measures_its_float_candidates_or_not(saved, tmp_path):
    """--runtime onnxruntime --act-bits 8: the footer says what floatcheck decided for the
    convs (b.cnn's conv reads the input at stride 1: a stem and a high-resolution conv);
    --int8-stem --int8-highres measure nothing."""
    model, data = saved(b.cnn(), n=24)
    res = invoke(model, tmp_path / "a.onnx", "--bits", "8", "--act-bits", "8", "--runtime",
                 "onnxruntime", "--calib", data, "-q")
    assert res.exit_code == 0, res.output
    assert "float candidates for onnxruntime, stem (conv): " in res.output
    res = invoke(model, tmp_path / "b.onnx", "--bits", "8", "--act-bits", "8", "--runtime",
                 "onnxruntime", "--calib", data, "-q", "--int8-stem", "--int8-highres")
    assert res.exit_code == 0, res.output
    assert "float candidates" not in res.output


def test_a_repeated_log_message_prints_once():
    """The CLI's handlers let each message through once: every variant a run builds logs
    its export notes again (W4 on a 20-conv model printed one line 80 times)."""
    import io
    import logging

    from onnx_obc.flags import Once

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(Once())
    log = logging.getLogger("onnx_obc.test_once")
    log.addHandler(handler)
    log.propagate = False
    try:
        for _ in range(3):
            log.warning("4-bit Conv weights stay DequantizeLinear")
        log.warning("another note")
    finally:
        log.removeHandler(handler)
    assert stream.getvalue().splitlines() == ["4-bit Conv weights stay DequantizeLinear",
                                              "another note"]
