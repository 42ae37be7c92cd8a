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
