"""A producer whose channels several layers read with the same columns (channels/fanout.py):
a CSP block's two 1x1 convs on one tensor share its Hessian, so their stacked rows are one
consumer: the cut equals the OBS oracle on each reader (the same removed channels, each its
rows of the update), the greedy prices a channel by the summed loss, the saved FLOPs are the
cut model's; readers with different kernels keep their own Hessians (block-diagonal)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx_obc.backend import get_backend
from onnx_obc.calib import DataSet
from onnx_obc.channels import find_sites, prune_channels_sequential
from onnx_obc.channels.flops import saved_macs
from onnx_obc.collect import collect
from onnx_obc.layers import constant_weights, find_layers, weight_matrix
from onnx_obc.solvers.channels import channel_major
from tests import builders as b
from tests.channels.graphs import _c, _w
from tests.channels.test_stage import DAMP, _run


def csp(kernel2: int = 1, seed: int = 0) -> onnx.ModelProto:
    """x -> prod (12, 3x3) -> SiLU -> t;  t -> cv1 (5, 1x1) -> y1;  t -> cv2 (6, k x k) -> y2
    (YOLOX's CSP split: two 1x1 convs on one tensor)."""
    rng = np.random.default_rng(seed)
    pad = [kernel2 // 2] * 4
    inits = [_w("p.w", (12, 4, 3, 3), seed), _c("p.b", rng.standard_normal(12)),
             _w("c1.w", (5, 12, 1, 1), seed + 1), _c("c1.b", rng.standard_normal(5)),
             _w("c2.w", (6, 12, kernel2, kernel2), seed + 2), _c("c2.b", rng.standard_normal(6))]
    nodes = [helper.make_node("Conv", ["x", "p.w", "p.b"], ["p"], name="prod", pads=[1] * 4),
             helper.make_node("Sigmoid", ["p"], ["p.s"], name="sig"),
             helper.make_node("Mul", ["p", "p.s"], ["t"], name="silu"),
             helper.make_node("Conv", ["t", "c1.w", "c1.b"], ["y1"], name="cv1"),
             helper.make_node("Conv", ["t", "c2.w", "c2.b"], ["y2"], name="cv2", pads=pad)]
    return b.make(nodes, [b.vi("x", ["N", 4, 6, 6])],
                  [b.vi("y1", ["N", 5, 6, 6]), b.vi("y2", ["N", 6, 6, 6])], inits)


def test_two_readers_with_the_same_columns_are_one_site():
    model = csp()
    (site,), _ = find_sites(model, find_layers(model)[0])
    assert site.producer.name == "prod" and [c.name for c in site.consumers] == ["cv1", "cv2"]
    assert site.width == 1 and site.macs == (4 * 9 + 5 + 6) * 36


def mixed(other_site: bool = False, seed: int = 0) -> onnx.ModelProto:
    """x -> prod (8, 3x3) -> Relu -> t;  t -> cvA (5, 3x3) -> ya;  Concat(x', t) -> cvB (6, 1x1)
    -> yb, with x' the input itself (other_site False) or a conv of it (then a site too)."""
    rng = np.random.default_rng(seed)
    inits = [_w("p.w", (8, 4, 3, 3), seed), _c("p.b", rng.standard_normal(8)),
             _w("a.w", (5, 8, 3, 3), seed + 1), _w("b.w", (6, 12, 1, 1), seed + 2),
             _w("o.w", (4, 4, 1, 1), seed + 3)]
    nodes = [helper.make_node("Conv", ["x", "p.w", "p.b"], ["p"], name="prod", pads=[1] * 4),
             helper.make_node("Relu", ["p"], ["t"], name="relu"),
             helper.make_node("Conv", ["t", "a.w"], ["ya"], name="cvA", pads=[1] * 4),
             helper.make_node("Concat", ["o" if other_site else "x", "t"], ["cat"], name="cat",
                              axis=1),
             helper.make_node("Conv", ["cat", "b.w"], ["yb"], name="cvB")]
    if other_site:
        nodes.insert(0, helper.make_node("Conv", ["x", "o.w"], ["o"], name="other"))
    return b.make(nodes, [b.vi("x", ["N", 4, 6, 6])],
                  [b.vi("ya", ["N", 5, 6, 6]), b.vi("yb", ["N", 6, 6, 6])], inits)


def _each_reader_oracle(model, site, data, removed):
    """The dense model with every reader updated by W - W_S [Hinv_SS]^-1 Hinv_S,: on its own
    (dampened) Hessian for the same removed channels S, and the summed loss."""
    hess, _ = collect(model, list(site.consumers), data, 32, get_backend("cpu"), 2048, False)
    S = np.asarray(removed)
    ref, loss = onnx.ModelProto(), 0.0
    ref.CopyFrom(model)
    dense = constant_weights(model.graph)
    n = len(site.consumers)
    for c, w, o in zip(site.consumers, site.widths or (site.width,) * n, site.offsets or (0,) * n):
        H = hess[c.weight].mean()[0]
        H = H + DAMP * np.mean(np.diag(H)) * np.eye(len(H))
        Hinv = np.linalg.inv(H)
        cols = ((S[:, None] + o) * w + np.arange(w)).ravel()
        W = weight_matrix(dense, c)[0].astype(np.float64)
        new = W - W[:, cols] @ np.linalg.solve(Hinv[np.ix_(cols, cols)], Hinv[cols, :])
        new[:, cols] = 0.0
        loss += np.trace((new - W) @ H @ (new - W).T)
        for t in ref.graph.initializer:
            if t.name == c.weight:
                t.CopyFrom(numpy_helper.from_array(c.from_matrix(new[None].astype(np.float32)),
                                                   c.weight))
    return ref, loss


@pytest.mark.parametrize("kernel2", [1, 3])  # one Hessian stacked; each reader its own
def test_the_cut_is_the_oracle_on_every_reader(kernel2):
    model = csp(kernel2=kernel2)
    res, layers, data = _run(model, fraction=0.3)
    (row,) = res.rows
    assert 0 < row.removed < row.channels
    (site,), _ = find_sites(model, layers)
    if kernel2 == 3:
        assert site.widths == (1, 9) and site.width == 10 and site.cells == (36, 9 * 36)
    ref, loss = _each_reader_oracle(model, site, data, row.removed_ids)
    feed = b.feeds(model, 8, seed=7)
    for got, want in zip(b.run(res.model, feed), b.run(ref, feed)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert row.loss == pytest.approx(loss, rel=1e-4)  # the summed loss of both readers
    kept = row.channels - row.removed
    w = b.weights_of(res.model)
    assert w["p.w"].shape[0] == w["p.b"].shape[0] == w["c1.w"].shape[1] == w["c2.w"].shape[1] \
        == kept and w["c1.w"].shape[0] == 5 and w["c2.w"].shape[0] == 6
    assert res.macs[0] - res.macs[1] == pytest.approx(saved_macs([site], [row.removed]))
    onnx.checker.check_model(res.model, full_check=True)


def test_a_reader_through_a_concat_keeps_its_own_hessian():
    """t read by a 3x3 conv and, as the second input of a Concat, by a 1x1 conv: each reader
    updated on its own Hessian at its own columns (the Concat reader's at its offset, its
    other inputs kept and updated)."""
    model = mixed()
    res, layers, data = _run(model, fraction=0.3)
    (site,), _ = find_sites(model, layers)
    assert [c.name for c in site.consumers] == ["cvA", "cvB"]
    assert (site.widths, site.offsets, site.spans) == ((9, 1), (0, 4), (8, 12))
    (row,) = res.rows
    assert 0 < row.removed < row.channels
    ref, loss = _each_reader_oracle(model, site, data, row.removed_ids)
    feed = b.feeds(model, 8, seed=7)
    for got, want in zip(b.run(res.model, feed), b.run(ref, feed)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert row.loss == pytest.approx(loss, rel=1e-4)
    w = b.weights_of(res.model)
    assert w["a.w"].shape[1] == 8 - row.removed and w["b.w"].shape[1] == 12 - row.removed
    assert res.macs[0] - res.macs[1] == pytest.approx(saved_macs([site], [row.removed]))
    onnx.checker.check_model(res.model, full_check=True)
    sites, refused = find_sites(mixed(other_site=True), find_layers(mixed(other_site=True))[0])
    assert [s.producer.name for s in sites] == ["other"]  # cvB is its consumer: prod waits
    assert "'cvB', which another site cuts" in {r.producer: r.reason for r in refused}["prod"]


def test_the_channel_major_order():
    order = channel_major((1, 3), 2)  # block 0: 2 columns, block 1: 6 (3 a channel)
    assert list(order) == [0, 2, 3, 4, 1, 5, 6, 7]
    # block 1 reads 3 channels, ours at offset 1 (a Concat's): its channel 0 last
    order = channel_major((1, 1), 2, offsets=(0, 1), spans=(2, 3))
    assert list(order) == [0, 3, 1, 4, 2]


@pytest.mark.parametrize("kernel2", [1, 3])
def test_sequential_cuts_a_fanout_site(kernel2):
    model = csp(kernel2=kernel2)
    layers = find_layers(model)[0]
    data = DataSet(b.feeds(model, 96, seed=1), "feeds")
    res = prune_channels_sequential(model, layers, data, 32, get_backend("cpu"), 0.3, DAMP,
                                    2048)
    (row,) = res.rows
    w = b.weights_of(res.model)
    assert 0 < row.removed and w["c1.w"].shape[1] == w["c2.w"].shape[1] == 12 - row.removed
