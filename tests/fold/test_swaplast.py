"""Reshape -> Transpose [0, 2, 1] -> Reshape back, a swap of the last two axes as torch's
dynamo exporter writes kᵀ, as one Transpose (fold/swaplast.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx_obc.fold import fold

from .. import builders as b


def triple(back: str = "swap", perm=(0, 2, 1), fixed: bool = False) -> onnx.ModelProto:
    """x [N, 3, 5, 4] -> Reshape [-1, d2, d3] -> Transpose(perm) -> Reshape back to
    [d0, d1, d3, d2] (sizes from Shape(x) slices) -> Relu -> y. back "lead": the leading
    sizes restored in the other order [d1, d0, ...] (not a swap: left alone). fixed: N = 2."""
    c = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    inits = [c("m1", [-1]), c("m2", [-2]), c("big", [2 ** 62]), c("small", [-2 ** 62]),
             c("i0", [0]), c("i1", [1])]
    n = helper.make_node
    nodes = [n("Shape", ["x"], ["s"]), n("Slice", ["s", "m1", "big"], ["d3"]),
             n("Slice", ["s", "m2", "m1"], ["d2"]), n("Slice", ["s", "small", "m2"], ["lead"]),
             n("Slice", ["s", "i0", "i1"], ["d0"]), n("Slice", ["s", "i1", "m2"], ["d1"]),
             n("Concat", ["m1", "d2", "d3"], ["flat_shape"], axis=0),
             n("Reshape", ["x", "flat_shape"], ["flat"], allowzero=1),
             n("Transpose", ["flat"], ["swapped"], perm=list(perm)),
             n("Concat", ["lead", "d3", "d2"] if back == "swap" else ["d1", "d0", "d3", "d2"],
               ["back_shape"], axis=0),
             n("Reshape", ["swapped", "back_shape"], ["kt"], allowzero=1),
             n("Relu", ["kt"], ["y"])]
    batch = 2 if fixed else "N"
    return b.make(nodes, [b.vi("x", [batch, 3, 5, 4])], [b.vi("y", [batch, 3, 4, 5])], inits)


@pytest.mark.parametrize("fixed", [False, True])
def test_the_triple_is_one_transpose(fixed):
    model = triple(fixed=fixed)
    out, done = fold(model)
    assert done.swaps == 1 and "1 Reshape -> Transpose -> Reshape swaps" in done.summary()
    ops = [x.op_type for x in out.graph.node]
    assert ops == ["Transpose", "Relu"]
    assert list(out.graph.node[0].attribute[0].ints) == [0, 1, 3, 2]
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(b.run(out, {"x": x})[0], b.run(model, {"x": x})[0])


@pytest.mark.parametrize("kw", [dict(back="lead"), dict(perm=(1, 0, 2))])
def test_other_shapes_or_perms_stay(kw):
    out, done = fold(triple(**kw))
    assert done.swaps == 0 and "Transpose" in [x.op_type for x in out.graph.node]
    assert [x.op_type for x in out.graph.node].count("Reshape") == 2
