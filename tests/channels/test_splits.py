"""One part of a Split of a producer's channels reaching a consumer (channels/splits.py): the
cut equals the OBS oracle on the consumer, removes only that part's producer rows and bias
entries, sets its size in the Split and leaves the other parts' outputs exactly as they were;
a Split whose sizes are not constants is refused with the reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnx_obc.channels import find_sites
from onnx_obc.channels.flops import saved_macs
from onnx_obc.layers import find_layers
from tests import builders as b
from tests.channels.graphs import _c, _w
from tests.channels.test_stage import _oracle, _run


def split_model(sizes=(5, 7), part: int = 0, constant: bool = True,
                seed: int = 0) -> onnx.ModelProto:
    """x -> prod (12, 3x3, bias) -> Split(sizes) -> part `part` -> Relu -> cons (4, 3x3);
    the other part is a graph output."""
    rng = np.random.default_rng(seed)
    inits = [_w("p.w", (12, 3, 3, 3), seed), _c("p.b", rng.standard_normal(12)),
             _w("c.w", (4, sizes[part], 3, 3), seed + 1), _c("c.b", rng.standard_normal(4))]
    ins = ["p"]
    if constant:
        inits.append(helper.make_tensor("sizes", onnx.TensorProto.INT64, [2], list(sizes)))
        ins.append("sizes")
    outs = ["s0", "s1"]
    nodes = [helper.make_node("Conv", ["x", "p.w", "p.b"], ["p"], name="prod", pads=[1] * 4),
             helper.make_node("Split", ins, outs, name="split", axis=1),
             helper.make_node("Relu", [outs[part]], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "c.w", "c.b"], ["y"], name="cons", pads=[1] * 4)]
    other = outs[1 - part]
    return b.make(nodes, [b.vi("x", ["N", 3, 6, 6])],
                  [b.vi("y", ["N", 4, 6, 6]), b.vi(other, ["N", sizes[1 - part], 6, 6])], inits)


@pytest.mark.parametrize("part", [0, 1])
def test_a_part_of_a_split_is_a_site_and_its_cut_is_the_oracle(part):
    model = split_model(part=part)
    (site,), _ = find_sites(model, find_layers(model)[0])
    assert (site.first_row, site.channels, site.rows) == ((0, 5, 12) if part == 0 else
                                                           (5, 7, 12))
    assert site.outer == (("p.b", 0),) and not site.sliced
    res, layers, data = _run(model, fraction=0.3)
    (row,) = res.rows
    assert 0 < row.removed < row.channels
    ref, _, (dW, H) = _oracle(model, layers, data, row.removed_ids, site)
    feed = b.feeds(model, 8, seed=7)
    got, want = b.run(res.model, feed), b.run(ref, feed)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got[1], want[1])  # the other part: untouched
    assert row.loss == pytest.approx(np.trace(dW @ H @ dW.T), rel=1e-4)
    w, dense = b.weights_of(res.model), b.weights_of(model)
    kept = site.producer_rows(np.setdiff1d(np.arange(site.channels), row.removed_ids))
    np.testing.assert_array_equal(w["p.w"], dense["p.w"][kept])
    np.testing.assert_array_equal(w["p.b"], dense["p.b"][kept])
    (split,) = [n for n in res.model.graph.node if n.op_type == "Split"]
    sizes = [5, 7]
    sizes[part] -= row.removed
    assert list(w[split.input[1]]) == sizes
    assert res.macs[0] - res.macs[1] == pytest.approx(saved_macs([site], [row.removed]))
    onnx.checker.check_model(res.model, full_check=True)


def test_a_split_without_constant_sizes_is_refused():
    model = split_model(sizes=(6, 6), constant=False)
    sites, refused = find_sites(model, find_layers(model)[0])
    assert not sites
    assert "whose sizes are no constant" in {r.producer: r.reason for r in refused}["prod"]
