"""branches/: an If at the top of the graph whose branches hold the layers (Silero VAD's
sample-rate switch). The branch every calibration run takes is compressed in place, the
other kept as it was; the file keeps both."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_obc import convert
from onnx_obc.errors import ModelError

D, H, O = 16, 32, 8


def _w(rng, *shape) -> np.ndarray:
    return rng.normal(0, 0.3, shape).astype(np.float32)


def _then(rng, src: str, nested: bool, shared: bool = False) -> onnx.GraphProto:
    """MatMul (weight a Constant node) -> [a nested If reading the branch's tensors] -> Relu
    -> MatMul (weight a branch initializer) [+ a MatMul on the weight the else branch has,
    an outer initializer: `shared`]."""
    nodes = [helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(
                 _w(rng, D, H), "w1v")),
             helper.make_node("MatMul", [src, "w1"], ["t1"], name="then/mm1")]
    mid = "t1"
    if nested:  # its subgraph reads t1 and k from the branch, and makes a name of its own
        inner = helper.make_graph(
            [helper.make_node("Mul", ["t1", "k"], ["inner"]),
             helper.make_node("Add", ["inner", "t1"], ["inner_out"])], "inner_then", [],
            [helper.make_tensor_value_info("inner_out", TensorProto.FLOAT, None)])
        ident = helper.make_graph(
            [helper.make_node("Identity", ["t1"], ["inner_id"])], "inner_else", [],
            [helper.make_tensor_value_info("inner_id", TensorProto.FLOAT, None)])
        nodes += [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(
                      np.float32(0.5), "kv")),
                  helper.make_node("Constant", [], ["c2"], value=numpy_helper.from_array(
                      np.array(True), "c2v")),
                  helper.make_node("If", ["c2"], ["t1n"], name="then/nested",
                                   then_branch=inner, else_branch=ident)]
        mid = "t1n"
    last = "out_then_2" if shared else "out_then"
    nodes += [helper.make_node("Relu", [mid], ["r1"]),
              helper.make_node("MatMul", ["r1", "w2"], [last], name="then/mm2")]
    if shared:
        nodes += [helper.make_node("MatMul", [src, "w3"], ["t0"], name="then/mm0"),
                  helper.make_node("Add", [last, "t0"], ["out_then"])]
    return helper.make_graph(nodes, "then", [], [
        helper.make_tensor_value_info("out_then", TensorProto.FLOAT, ["N", O])],
        initializer=[numpy_helper.from_array(_w(rng, H, O), "w2")])


def _else(rng, src: str, shared: bool = False) -> onnx.GraphProto:
    """MatMul -> ReduceMean with its axes an attribute (opset 13: an upgrade must convert
    it) -> Add (`shared`: the MatMul's weight is the outer graph's)."""
    nodes = [helper.make_node("MatMul", [src, "w3"], ["e1"], name="else/mm"),
             helper.make_node("ReduceMean", ["e1"], ["e2"], axes=[1], keepdims=1),
             helper.make_node("Add", ["e1", "e2"], ["out_else"])]
    return helper.make_graph(nodes, "else", [], [
        helper.make_tensor_value_info("out_else", TensorProto.FLOAT, ["N", O])],
        initializer=[] if shared else [numpy_helper.from_array(_w(rng, D, O), "w3")])


def _model(pre: bool = False, after: bool = False, nested: bool = False,
           cond_from_x: bool = False, shared: bool = False) -> onnx.ModelProto:
    """x [N, 16], sr []: If(sr == 16000) over the branches; `pre`: a MatMul before the If
    (the branches read its output), `after`: a Relu after it (else the If's output is the
    graph's); `cond_from_x`: the condition sum(x) > 0 instead (differs between runs)."""
    rng = np.random.default_rng(0)
    src = "h" if pre else "x"
    nodes = [helper.make_node("MatMul", ["x", "wpre"], ["h"], name="pre")] if pre else []
    if cond_from_x:
        nodes += [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                  helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(
                      np.float32(0), "zv")),
                  helper.make_node("Greater", ["s", "zero"], ["cond"])]
    else:
        nodes += [helper.make_node("Constant", [], ["c16k"], value=numpy_helper.from_array(
                      np.array(16000, np.int64), "c16kv")),
                  helper.make_node("Equal", ["sr", "c16k"], ["cond"])]
    out = "z" if after else "y"
    nodes.append(helper.make_node("If", ["cond"], [out], name="switch",
                                  then_branch=_then(rng, src, nested, shared),
                                  else_branch=_else(rng, src, shared)))
    if after:
        nodes.append(helper.make_node("Relu", ["z"], ["y"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D]),
                     helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", O])],
        initializer=([numpy_helper.from_array(_w(rng, D, D), "wpre")] if pre else [])
        + ([numpy_helper.from_array(_w(rng, D, O), "w3")] if shared else []))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _calib(n: int = 64, sr: int = 16000, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4)).astype(np.float32)
    x = z @ rng.normal(size=(4, D)).astype(np.float32) + 0.05 * rng.normal(size=(n, D))
    return {"x": x.astype(np.float32), "sr": np.array(sr, np.int64)}


def _npz(tmp_path, **kw) -> str:
    """The calibration set as a .npz (sr, a scalar, fed whole to every run)."""
    path = tmp_path / "calib.npz"
    np.savez(path, **_calib(**kw))
    return str(path)


def _run(model: onnx.ModelProto, x: np.ndarray, sr: int) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x, "sr": np.array(sr, np.int64)})[0]


def _branch(model: onnx.ModelProto, which: str) -> onnx.GraphProto:
    node = next(n for n in model.graph.node if n.op_type == "If")
    return next(a.g for a in node.attribute if a.name == which)


def _weights(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The branch's weights: its initializers and Constant-node values, by name."""
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


@pytest.mark.parametrize("pre,after", [(False, False), (True, True)],
                         ids=["whole-model", "layers-around"])
def test_the_branch_the_data_takes_is_compressed_in_place(pre, after, tmp_path):
    """At 50%: the then branch's two layers (a Constant-node weight, a branch initializer)
    pruned, the else branch as it was (reported with its reason), the If still in the file;
    the report's fidelity is the written file's."""
    model = _model(pre=pre, after=after)
    r = convert(model, None, calib=_npz(tmp_path), sparsity=0.5, allocate="uniform",
                progress=False, holdout=0.0)
    out = r.model
    assert [n.op_type for n in out.graph.node].count("If") == 1
    names = {row.name for row in r.report.layers}
    assert {"then/mm1", "then/mm2"} <= names and ("pre" in names) == pre
    then_w = list(_weights(_branch(out, "then_branch")).values())
    assert sorted(round(float((w == 0).mean()), 2) for w in then_w if w.ndim == 2) == [0.5, 0.5]
    np.testing.assert_array_equal(_weights(_branch(out, "else_branch"))["w3"],
                                  _weights(_branch(model, "else_branch"))["w3"])
    skipped = [s for s in r.report.skipped if "else/mm" in s.node]
    assert len(skipped) == 1 and "does not take" in skipped[0].reason
    assert any("compressed in place" in w for w in r.report.warnings)
    x = _calib()["x"]
    y0, y = _run(model, x, 16000), _run(out, x, 16000)
    err = np.sqrt(((y - y0) ** 2).sum() / (y0 ** 2).sum())
    reported = next(iter(r.report.fidelity.values()))["compressed"].rel_error["y"]
    assert 0 < err and err == pytest.approx(reported, rel=1e-3)
    if not pre:  # the other branch computes what it did
        np.testing.assert_array_equal(_run(out, x, 8000), _run(model, x, 8000))


@pytest.mark.parametrize("options", [dict(bits=4), dict(bits=8, act_bits=8,
                                                         runtime="onnxruntime")],
                         ids=["w4-opset21", "w8a8-onnxruntime"])
def test_an_upgraded_opset_upgrades_the_other_branch(options, tmp_path):
    """W4 weights need opset 21 (int4): the kept branch's opset-13 ReduceMean (axes an
    attribute) is converted with it; the file passes the full checker and computes the
    other branch as before. A nested If between the layers (its subgraph reading the
    branch's tensors and making its own) runs through the sequential capture."""
    model = _model(nested=True)
    r = convert(model, None, calib=_npz(tmp_path), progress=False, **options)
    out = r.model
    onnx.checker.check_model(out, full_check=True)
    x = _calib(seed=5)["x"]
    np.testing.assert_allclose(_run(out, x, 8000), _run(model, x, 8000), rtol=1e-6, atol=1e-6)
    assert len(r.report.layers) == 2
    err = np.linalg.norm(_run(out, x, 16000) - _run(model, x, 16000)) / np.linalg.norm(
        _run(model, x, 16000))
    assert 0 < err < 0.2


def test_a_condition_that_differs_between_runs_keeps_the_if(tmp_path):
    """sum(x) > 0 differs between the runs: nothing inlined, the If's layers reported as in
    a subgraph (with nothing else to compress: the model is refused, saying why); with a
    layer before it the run goes on and says so."""
    with pytest.raises(ModelError, match="control-flow subgraph"):
        convert(_model(cond_from_x=True), None, calib=_npz(tmp_path), bits=8, progress=False)
    model = _model(pre=True, cond_from_x=True)
    r = convert(model, None, calib=_npz(tmp_path), bits=8, progress=False)
    assert [row.name for row in r.report.layers] == ["pre"]
    assert any("takes both branches" in w for w in r.report.warnings)
    for which in ("then_branch", "else_branch"):
        for k, w in _weights(_branch(r.model, which)).items():
            np.testing.assert_array_equal(w, _weights(_branch(model, which))[k])


def test_a_quantized_layer_before_the_if_is_reported_float(tmp_path):
    """W8A8 for onnxruntime with a layer before the If: its output's QuantizeLinear stays
    outside (with its producer), yet the kept branch reads the float output too, so
    onnxruntime leaves that MatMul float: the run says so (the fusion count is of the
    inlined graph); the branch's two layers are fused inside the If."""
    r = convert(_model(pre=True, after=True), None, calib=_npz(tmp_path), bits=8, act_bits=8,
                runtime="onnxruntime", progress=False)
    assert [w for w in r.report.warnings if "float kernel" in w][0].startswith("pre:")
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(r.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    opt = onnx.load(str(tmp_path / "opt.onnx"))
    assert "MatMul" in {n.op_type for n in opt.graph.node}
    inside = {n.op_type for n in _branch(opt, "then_branch").node}
    assert "QLinearMatMul" in inside and "MatMul" not in inside


def test_a_weight_both_branches_read_is_copied_into_the_compressed_one(tmp_path):
    """An outer initializer read by a layer of each branch: the taken branch gets its own
    copy, pruned; the other branch reads the original, and computes what it did."""
    model = _model(shared=True)
    r = convert(model, None, calib=_npz(tmp_path), sparsity=0.5, allocate="uniform",
                progress=False)
    assert "then/mm0" in {row.name for row in r.report.layers}
    outer = {t.name: numpy_helper.to_array(t) for t in r.model.graph.initializer}
    np.testing.assert_array_equal(outer["w3"], numpy_helper.to_array(model.graph.initializer[0]))
    mine = _weights(_branch(r.model, "then_branch"))["w3/then_branch"]
    assert (mine == 0).mean() == pytest.approx(0.5, abs=0.02)
    x = _calib(seed=4)["x"]
    np.testing.assert_array_equal(_run(r.model, x, 8000), _run(model, x, 8000))


def test_inspect_says_what_a_run_would_compress(tmp_path):
    """`onnx-obc inspect` (no data): each such If, its branches' layer counts and the inputs
    its condition is computed from."""
    from click.testing import CliRunner

    from onnx_obc.branches import describe
    from onnx_obc.cli import main

    (line,) = describe(_model())
    assert "2 layer(s) in its then_branch and 1 in its else_branch" in line
    assert line.endswith("computed from 'sr'")
    assert describe(_model(cond_from_x=True))[0].endswith("computed from 'x'")
    assert not describe(onnx.ModelProto())
    onnx.save(_model(), tmp_path / "m.onnx")
    out = CliRunner().invoke(main, ["inspect", str(tmp_path / "m.onnx")]).output
    assert "0 compressible layers" in out and line in out.replace("\n", " ")
