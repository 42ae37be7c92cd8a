"""A weight read through Identity nodes (PyTorch's form of a parameter used twice) is read
directly after the fold: one layer with several uses (fold/identity.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnx_obc import convert
from onnx_obc.fold import fold
from onnx_obc.layers import find_layers

from .. import builders as b


def albert_like(d: int = 8, kind: str = "plain") -> onnx.ModelProto:
    """x [N, 3, d] --mm1(W)+c--> Relu --mm2(Identity(W))+Identity(c)--> y: one layer
    applied twice, as torch exports ALBERT (3-D: the MatMul + Add pairs stay, no Gemm). kind "output": the Identity of W is also a graph output;
    "input": W is a graph input with a default (a caller may feed it)."""
    nodes = [helper.make_node("Identity", ["W"], ["W_1"], name="id_w"),
             helper.make_node("Identity", ["c"], ["c_1"], name="id_c"),
             helper.make_node("MatMul", ["x", "W"], ["h0"], name="mm1"),
             helper.make_node("Add", ["h0", "c"], ["h1"], name="add1"),
             helper.make_node("Relu", ["h1"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W_1"], ["h2"], name="mm2"),
             helper.make_node("Add", ["h2", "c_1"], ["y"], name="add2")]
    outs = [b.vi("y", [b.BATCH, 3, d])] + ([b.vi("W_1", [d, d])] if kind == "output" else [])
    rng = np.random.default_rng(0)
    c = onnx.numpy_helper.from_array(rng.standard_normal(d).astype(np.float32), "c")
    model = b.make(nodes, [b.vi("x", [b.BATCH, 3, d])], outs, [b.weight("W", (d, d), 1), c])
    if kind == "input":
        model.graph.input.append(helper.make_tensor_value_info("W", onnx.TensorProto.FLOAT,
                                                               [d, d]))
    return model


def test_identities_of_constants_are_read_through_and_the_layer_has_two_uses():
    model = albert_like()
    assert [s.reason[:45] for s in find_layers(model)[1]] == [
        "weight 'W_1' is an Identity of 'W' (a weight ", "weight 'W' also feeds Identity node id_w, whi"]
    out, done = fold(model)
    assert done.identities == 2 and "2 Identity of a constant read through" in done.summary()
    assert not [n for n in out.graph.node if n.op_type == "Identity"]
    (L,), skipped = find_layers(out)
    assert L.weight == "W" and [u.node for u in L.uses] == ["mm1", "mm2"] and not skipped
    feed = b.feeds(model, 5)
    np.testing.assert_array_equal(b.run(out, feed)[0], b.run(model, feed)[0])


@pytest.mark.parametrize("kind", ["output", "input"])
def test_an_identity_a_graph_output_or_of_a_fed_weight_stays(kind):
    out, done = fold(albert_like(kind=kind))
    kept = {n.name for n in out.graph.node if n.op_type == "Identity"}
    assert ("id_w" in kept) and done.identities == (1 if kind == "output" else 1)


def test_the_shared_layer_is_solved_once_and_each_add_gets_its_own_correction():
    """convert: the one weight compressed (both MatMuls read the same pruned tensor) and,
    with --correct, each Add its own corrected copy of the shared vector c (no 'no bias'
    warning, which the shared vector gave before)."""
    model = albert_like(16)
    feed = b.feeds(model, 64, seed=3)
    r = convert(model, None, calib=[{"x": feed["x"][i:i + 1]} for i in range(64)],
                sparsity=0.5, bits=8, act_bits=8, correct=True, progress=False)
    (row,) = r.report.layers
    assert row.sparsity == pytest.approx(0.5, abs=0.01)
    g = r.model.graph
    mm = [n for n in g.node if n.op_type == "MatMul"]
    assert len(mm) == 2 and len({n.input[1] for n in mm}) == 1  # one (dequantized) weight
    adds = [n for n in g.node if n.op_type == "Add" and n.input[0] in {m.output[0] for m in mm}]
    assert len(adds) == 2 and len({n.input[1] for n in adds}) == 2  # two vectors now
    assert not [w for w in r.report.warnings if "correction skipped" in w]
