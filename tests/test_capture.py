"""capture_session(prune=True): only the nodes the captured tensors depend on run (and
onnxruntime would otherwise run the whole graph whatever is fetched); the tensors are the
unpruned session's bit for bit, and the proto is left as it was."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from onnx_obc.capture import Runtime, _ancestors_only, capture_session

from . import builders as b


def test_a_pruned_session_gives_the_same_tensors_from_fewer_nodes(monkeypatch):
    model = b.mlp3((8, 24, 16, 6))
    before = model.SerializeToString()
    x = {"x": np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)}
    full = capture_session(model, ["r1"], Runtime())
    built = []
    real = ort.InferenceSession.__init__
    monkeypatch.setattr(ort.InferenceSession, "__init__", lambda self, src, *a, **k: (
        built.append(src) or real(self, src, *a, **k)))
    pruned = capture_session(model, ["r1"], Runtime(), prune=True)
    assert model.SerializeToString() == before  # restored
    import onnx

    kept = onnx.load_from_string(built[0]).graph
    assert [n.name for n in kept.node] == ["fc1", "relu1"]  # not fc2, relu2, fc3
    assert [o.name for o in kept.output] == ["r1"]
    np.testing.assert_array_equal(pruned.run(["r1"], x)[0], full.run(["r1"], x)[0])


def test_names_read_inside_a_subgraph_keep_their_producers():
    """An If whose branch reads an outer-scope tensor: that tensor's producer is kept."""
    from onnx import TensorProto, helper

    then = helper.make_graph([helper.make_node("Identity", ["a"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Neg", ["a"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Abs", ["x"], ["u"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
              helper.make_tensor_value_info("c", TensorProto.BOOL, [])]
    g = helper.make_graph(nodes, "g", inputs,
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(g)
    with _ancestors_only(model, ["y"]):
        assert [n.op_type for n in model.graph.node] == ["Relu", "If"]  # not Abs
    assert [n.op_type for n in model.graph.node] == ["Relu", "Abs", "If"]


def test_sizes_shape_inference_cannot_tell_are_measured_with_one_sample():
    """A conv behind a Pad whose pads the graph computes at run time (EfficientNet's "same"
    padding): activation_bytes cannot size its input; measured_bytes runs one sample and
    scales by the batch, so the capture plans one group instead of one per such tensor."""
    from onnx import helper

    from onnx_obc import calib
    from onnx_obc.capture import activation_bytes, measured_bytes, plan_groups

    pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64)
    nodes = [helper.make_node("Identity", ["pads0"], ["pads"])]  # not a constant to inference
    inits = [helper.make_tensor("pads0", 7, [8], pads)]
    for i in range(9):  # h_i -> Pad -> p_i -> Conv -> h_{i+1}, 4 channels, 10 x 10
        nodes += [helper.make_node("Pad", [f"h{i}", "pads"], [f"p{i}"]),
                  helper.make_node("Conv", [f"p{i}", f"W{i}"], [f"h{i + 1}"], name=f"c{i}")]
        inits.append(b.weight(f"W{i}", [4, 4, 3, 3], i))
    model = b.make(nodes, [b.vi("h0", [b.BATCH, 4, 10, 10])],
                   [b.vi("h9", [b.BATCH, 4, "H", "W"])], inits)
    data = calib.DataSet(b.feeds(model, 6), "feeds")
    feed = next(data.batches(4))[1]
    names = [f"p{i}" for i in range(9)]
    sizes = activation_bytes(model, names, feed)
    assert sizes == {n: None for n in names}
    budget = 100_000
    units = [[n] for n in names]
    assert len(plan_groups(units, sizes, budget)) == 2  # unknown: budget / 8 each
    got = measured_bytes(model, sizes, feed, data, Runtime(), budget)
    assert got == {n: 4 * 4 * 12 * 12 * 4 for n in names}  # one sample's bytes x 4
    assert len(plan_groups(units, got, budget)) == 1


def test_sizes_left_unknown_when_the_measuring_run_fails_say_so(caplog):
    """A measuring run that onnxruntime refuses leaves the sizes unknown (the capture takes
    more passes, the same tensors) with a warning naming why, not silently."""
    from onnx_obc import calib
    from onnx_obc.capture import measured_bytes

    model = b.mlp()
    data = calib.DataSet(b.feeds(model, 2), "feeds")
    feed = next(data.batches(2))[1]
    with caplog.at_level("WARNING", logger="onnx_obc.capture"):
        got = measured_bytes(model, {"no_such_tensor": None}, feed, data, Runtime(), 1 << 20)
    assert got == {"no_such_tensor": None}
    assert "not measured" in caplog.text and "capture passes" in caplog.text


def test_the_runs_own_sessions_do_not_spin_and_timed_ones_keep_the_default():
    """capture.session (capture, correction, verification): onnxruntime's intra-op threads
    sleep between runs (NO_SPIN: the Hessians are computed between them); the options the
    latency timings build from (Runtime.options) keep onnxruntime's default."""
    import pytest

    from onnx_obc.capture import session

    key = "session.intra_op.allow_spinning"
    sess = session(b.mlp((4, 3, 2)), Runtime())
    assert sess.get_session_options().get_session_config_entry(key) == "0"
    with pytest.raises(Exception, match="does not have configuration"):
        Runtime().options(optimize=True).get_session_config_entry(key)
