"""Channels that change axis on the path (channels/moves.py): SegFormer's Mix-FFN, fc1 ->
Transpose -> Reshape -> depthwise Conv -> Reshape -> Transpose -> act -> fc2, is a site; the
cut equals the OBS oracle with the Reshapes' shapes computed at run time or rewritten; a
Reshape that scrambles the channels, a channel count read from another tensor and a consumer
that sums another axis are refused with the reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_obc.channels import find_sites
from onnx_obc.layers import find_layers
from tests import builders as b
from tests.channels import mixffn
from tests.channels.test_stage import _oracle, _run


def _equals_the_oracle(model, site):
    """One site cut by the stage equals the dense model with the OBS-updated consumer (its
    removed columns zero), and saves FLOPs."""
    res, layers, data = _run(model)
    (row,) = res.rows
    ref, _, _ = _oracle(model, layers, data, row.removed_ids, site)
    feed = b.feeds(model, 8, seed=7)
    np.testing.assert_allclose(b.run(res.model, feed)[0], b.run(ref, feed)[0], rtol=1e-4,
                               atol=1e-4)
    assert res.macs[1] < res.macs[0]


def _sites(model):
    sites, refused = find_sites(model, find_layers(model)[0])
    return {s.producer.name: s for s in sites}, {r.producer: r.reason for r in refused}


@pytest.mark.parametrize("shapes", ["shape", "constant"])
def test_the_mix_ffn_is_a_site_and_its_cut_is_the_oracle(shapes):
    model = mixffn.mix_ffn(shapes=shapes)
    sites, _ = _sites(model)
    site = sites["fc1"]
    assert site.consumer.name == "fc2" and site.grouped == ("dwconv",)
    assert ("dw.w", 0) in site.sliced and ("dw.b", 0) in site.sliced
    assert len(site.shapes) == (2 if shapes == "constant" else 0)  # the channel entries
    res, layers, data = _run(model)
    (row,) = [r for r in res.rows if r.producer == "fc1"]
    assert 0 < row.removed < row.channels
    ref, _, (dW, H) = _oracle(model, layers, data, row.removed_ids, site)
    feed = b.feeds(model, 8, seed=7)
    np.testing.assert_allclose(b.run(res.model, feed)[0], b.run(ref, feed)[0], rtol=1e-4,
                               atol=1e-4)
    assert row.loss == pytest.approx(np.trace(dW @ H @ dW.T), rel=1e-4)
    kept = row.channels - row.removed
    w = b.weights_of(res.model)
    assert w["w1"].shape[1] == w["b1"].shape[0] == w["dw.w"].shape[0] == kept
    assert w["w2"].shape[0] == kept
    if shapes == "constant":  # the channel entries rewritten (the constants may be renamed)
        reshaped = {n.name: list(w[n.input[1]]) for n in res.model.graph.node
                    if n.op_type == "Reshape"}
        assert reshaped == {"to_image": [0, kept, 4, 4], "to_seq": [0, kept, 16]}
    (dw,) = [n for n in res.model.graph.node if n.name == "dwconv"]
    assert next(a.i for a in dw.attribute if a.name == "group") == kept
    onnx.checker.check_model(res.model, full_check=True)
    assert res.macs[1] < res.macs[0]


@pytest.mark.parametrize("shapes, tail, why", [
    ("foreign", "transpose", "reads its channel count at run time from a tensor the cut "
                             "leaves whole"),
    ("shape", "mixed", "does not keep the 32 channels as one axis"),
    ("constant", "mixed", "does not keep the 32 channels as one axis"),
    ("shape", "nct", "on an axis it does not sum over")])
def test_what_moves_the_channels_wrongly_is_refused(shapes, tail, why):
    sites, refused = _sites(mixffn.mix_ffn(shapes=shapes, tail=tail))
    assert "fc1" not in sites
    assert why in refused["fc1"], refused["fc1"]


@pytest.mark.parametrize("side, shape", [(1, [0, -1]), (1, "shape"), (2, [0, -1])])
def test_a_pooled_map_flattened_into_a_classifier(side, shape):
    """Conv -> Relu -> [B, C, side, side] -> Reshape [B, C] (Paddle's [0, -1],
    or [B, C] read from the tensor) -> MatMul: a site where each channel is one position
    (side 1); with 2 x 2 positions [0, -1] merges them into the channel axis: refused."""
    from onnx import helper

    n = helper.make_node
    inits = [b.weight("wc", (16, 4, 1, 1), 0), b.weight("wf", (16 * side * side, 3), 1)]
    if shape == "shape":
        inits += [mixffn._c("s0", [0], np.int64), mixffn._c("s2", [2], np.int64)]
        head = [n("Shape", ["r"], ["sr"], name="shape"),
                n("Slice", ["sr", "s0", "s2"], ["flat"], name="batch_channels")]
    else:
        inits.append(mixffn._c("flat", shape, np.int64))
        head = []
    nodes = [n("Conv", ["x", "wc"], ["c"], name="conv"), n("Relu", ["c"], ["r"], name="act"),
             *head, n("Reshape", ["r", "flat"], ["f"], name="flatten"),
             n("MatMul", ["f", "wf"], ["y"], name="fc")]
    model = b.make(nodes, [b.vi("x", ["N", 4, side, side])], [b.vi("y", ["N", 3])], inits)
    sites, refused = _sites(model)
    if side == 2:
        assert "does not keep the 16 channels as one axis" in refused["conv"]
        return
    assert sites["conv"].consumer.name == "fc"
    _equals_the_oracle(model, sites["conv"])


@pytest.mark.parametrize("perm, ok", [([0, 2, 3, 1], True), ([0, 1, 3, 2], False)])
def test_a_conv_read_channels_last_by_a_matmul(perm, ok):
    """Conv -> Relu -> Transpose to [B, H, W, C] -> MatMul: the channels are the MatMul's
    summed axis, a site equal to the oracle; a perm that leaves a spatial axis last (the
    MatMul then sums positions): refused."""
    from onnx import helper

    n = helper.make_node
    model = b.make([n("Conv", ["x", "wc"], ["c"], name="conv"),
                    n("Relu", ["c"], ["r"], name="act"),
                    n("Transpose", ["r"], ["t"], name="nhwc", perm=perm),
                    n("MatMul", ["t", "wf"], ["y"], name="fc")],
                   [b.vi("x", ["N", 4, 3, 3])], [b.vi("y", ["N", 3, 3, 5] if ok else
                                                        ["N", 16, 3, 5])],
                   [b.weight("wc", (16, 4, 1, 1), 0), b.weight("wf", (16 if ok else 3, 5), 1)])
    sites, refused = _sites(model)
    if not ok:
        assert "on an axis it does not sum over" in refused["conv"]
        return
    _equals_the_oracle(model, sites["conv"])


def test_a_conv_consumer_reading_another_axis_after_a_transpose_is_refused():
    """[N, C, H, W] -> Transpose [0, 2, 1, 3] -> [N, H, C, W] -> Conv: the Conv sums H (of
    size C here, so every shape agrees); the channels are not its input channels."""
    from onnx import helper

    n = helper.make_node
    model = b.make([n("Conv", ["x", "wc"], ["c"], name="conv"),
                    n("Relu", ["c"], ["r"], name="act"),
                    n("Transpose", ["r"], ["t"], name="swap", perm=[0, 2, 1, 3]),
                    n("Conv", ["t", "wd"], ["y"], name="next")],
                   [b.vi("x", ["N", 4, 16, 3])], [b.vi("y", ["N", 5, 16, 3])],
                   [b.weight("wc", (16, 4, 1, 1), 0), b.weight("wd", (5, 16, 1, 1), 1)])
    sites, refused = _sites(model)
    assert "conv" not in sites
    assert "on an axis it does not sum over" in refused["conv"]
