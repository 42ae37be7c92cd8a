"""The piece of a model that differs from a dense one: which nodes (whatever their order,
new ones, changed initializers and Constant nodes), which dense tensors cross into it, which
graph outputs it makes; and run on a dense run's values it gives the whole model's outputs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_obc.capture import providers_for
from onnx_obc.diffpiece import DenseRuns, Differ, PieceRun

from . import builders as b


def _residual():
    """x -> fc1 -> Relu (r, also the early output `early`) -> fc2 -> Add(r) -> fc3 -> y.

        r [N, 8] = Relu(x W1);  y = (r W2 + r) W3 + c;  early = Identity(r)
    """
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h1"], name="fc1"),
             helper.make_node("Relu", ["h1"], ["r"], name="relu"),
             helper.make_node("Identity", ["r"], ["early"], name="tap"),
             helper.make_node("MatMul", ["r", "W2"], ["h2"], name="fc2"),
             helper.make_node("Add", ["h2", "r"], ["s"], name="skip"),
             helper.make_node("Constant", [], ["c"], name="cst",
                              value=numpy_helper.from_array(np.ones(5, np.float32), "c")),
             helper.make_node("MatMul", ["s", "W3"], ["h3"], name="fc3"),
             helper.make_node("Add", ["h3", "c"], ["y"], name="bias")]
    inits = [b.weight("W1", (6, 8), 1), b.weight("W2", (8, 8), 2), b.weight("W3", (8, 5), 3)]
    return b.make(nodes, [b.vi("x", [b.BATCH, 6])],
                  [b.vi("y", [b.BATCH, 5]), b.vi("early", [b.BATCH, 8])], inits)


def _set(model, name, value):
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def _names(piece):
    return [n.name for n in piece.nodes]


def test_a_changed_weight_takes_its_node_and_what_follows_fed_the_crossing_tensors():
    dense = _residual()
    m = copy.deepcopy(dense)
    _set(m, "W2", np.full((8, 8), 0.1))
    p = Differ(dense).piece(m)
    assert _names(p) == ["fc2", "skip", "fc3", "bias"]
    assert p.crossing == ("c", "r")  # the skip branch and the unchanged Constant's output
    assert p.outputs == ("y",)  # `early` is the dense model's


def test_order_names_and_docs_do_not_count_new_and_changed_nodes_do():
    dense = _residual()
    m = copy.deepcopy(dense)
    nodes = list(m.graph.node)
    order = [nodes[i] for i in (5, 0, 1, 3, 2, 4, 6, 7)]  # another topological order
    for n in order:
        n.name, n.doc_string = n.name + "_renamed", "exported again"
    del m.graph.node[:]
    m.graph.node.extend(order)
    differ = Differ(dense)
    assert differ.piece(m).nodes == () and differ.piece(m).outputs == ()
    # a Q/DQ pair inserted before fc3: the new nodes and everything after them
    q = copy.deepcopy(dense)
    fc3 = next(n for n in q.graph.node if n.name == "fc3")
    fc3.input[0] = "s_dq"
    at = list(q.graph.node).index(fc3)
    q.graph.initializer.extend([numpy_helper.from_array(np.float32(0.05), "sc"),
                                numpy_helper.from_array(np.int8(0), "zp")])
    for k, n in enumerate([helper.make_node("QuantizeLinear", ["s", "sc", "zp"], ["s_q"]),
                           helper.make_node("DequantizeLinear", ["s_q", "sc", "zp"],
                                            ["s_dq"])]):
        q.graph.node.insert(at + k, n)
    p = differ.piece(q)
    assert [n.op_type for n in p.nodes] == ["QuantizeLinear", "DequantizeLinear", "MatMul",
                                            "Add"]
    assert p.crossing == ("c", "s") and p.outputs == ("y",)
    # a Constant node's value changed: it and what reads it
    c = copy.deepcopy(dense)
    cst = next(n for n in c.graph.node if n.name == "cst")
    cst.attribute[0].t.CopyFrom(numpy_helper.from_array(np.zeros(5, np.float32), "c"))
    p = differ.piece(c)
    assert _names(p) == ["cst", "bias"] and p.crossing == ("h3",)


@pytest.mark.parametrize("typed", [True, False])
@pytest.mark.parametrize("weight", ["W1", "W2", "W3"])
def test_the_piece_on_the_dense_runs_values_gives_the_whole_models_outputs(weight, typed):
    dense = _residual()
    m = copy.deepcopy(dense)
    rng = np.random.default_rng(7)
    w = b.weights_of(dense)[weight]
    _set(m, weight, w + 0.3 * rng.standard_normal(w.shape))
    cut = Differ(dense).piece(m)
    rt = providers_for("cpu")
    outputs = ["y", "early"]
    fetched = sorted(set(cut.crossing) - {"x"})
    runs = DenseRuns(dense, fetched, outputs, rt)
    types = {n: TensorProto.FLOAT for n in cut.crossing} if typed else {}
    run = PieceRun(m, cut, set(outputs), rt, types)
    assert (run.sess is not None) == typed  # built at once where the types are known
    run.dense = runs
    assert [o.name for o in runs.get_outputs()] == outputs  # not the fetched tensors
    for seed in (1, 2):
        feed = b.feeds(dense, 5, seed=seed)
        got = run.run(outputs, feed)
        want = b.run(m, feed)
        for g, w_ in zip(got, want):
            np.testing.assert_allclose(g, w_, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(runs.run(outputs, feed)[0], b.run(dense, feed)[0],
                                   rtol=1e-5, atol=1e-6)
    assert (weight == "W1") == ("early" in cut.outputs)


def test_a_run_before_its_dense_runs_are_set_is_an_error():
    dense = _residual()
    m = copy.deepcopy(dense)
    _set(m, "W3", np.zeros((8, 5)))
    run = PieceRun(m, Differ(dense).piece(m), {"y"}, providers_for("cpu"), {})
    with pytest.raises(RuntimeError, match="dense"):
        run.run(["y"], b.feeds(dense, 2))
