"""A producer whose channels reach their consumer as one input of a Concat (channels/concat.py):
YOLOv8's C2f block ends Concat(split halves, bottleneck) -> 1x1 conv. The cut equals the OBS
oracle on the consumer's columns at the site's offset (the Concat's other inputs kept and
updated), the consumer keeps every other input channel; two inputs of one Concat are two
sites whose union leaves the consumer in one group-OBS update; a Concat on another axis or
read by no layer is refused with the reason."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import helper

from onnx_obc.backend import get_backend
from onnx_obc.calib import DataSet
from onnx_obc.channels import find_sites, prune_channels, prune_channels_sequential
from onnx_obc.channels.flops import saved_macs
from onnx_obc.layers import find_layers
from onnx_obc.solvers.channels import channel_trace
from tests import builders as b
from tests.channels.graphs import _c, _w
from tests.channels.test_stage import _oracle, _run


def concat_pair(axis: int = 1, tail: str = "conv", b_site: bool = True, seed: int = 0
                ) -> onnx.ModelProto:
    """x -> convA (8, 3x3) -> Relu -+-> Concat(b, a) -> cons (5, 3x3)
       x -> convB (6, 1x1) ---------+   (b_site False: b is also a graph output)"""
    rng = np.random.default_rng(seed)
    inits = [_w("a.w", (8, 4, 3, 3), seed), _c("a.b", rng.standard_normal(8)),
             _w("b.w", (6, 4, 1, 1), seed + 1), _c("b.b", rng.standard_normal(6)),
             _w("c.w", (5, 14, 3, 3), seed + 2), _c("c.b", rng.standard_normal(5))]
    nodes = [helper.make_node("Conv", ["x", "a.w", "a.b"], ["a0"], name="convA", pads=[1] * 4),
             helper.make_node("Relu", ["a0"], ["a"], name="reluA"),
             helper.make_node("Conv", ["x", "b.w", "b.b"], ["bb"], name="convB"),
             helper.make_node("Concat", ["bb", "a"], ["cat"], name="cat", axis=axis)]
    if tail == "conv":
        nodes.append(helper.make_node("Conv", ["cat", "c.w", "c.b"], ["y"], name="cons",
                                      pads=[1] * 4))
        out = [b.vi("y", ["N", 5, 6, 6])]
    else:  # the joined map is the output
        inits = inits[:4]
        out = [b.vi("cat", ["N", 14, 6, 6])]
    if not b_site:
        out.append(b.vi("bb", ["N", 6, 6, 6]))
    return b.make(nodes, [b.vi("x", ["N", 4, 6, 6])], out, inits)


def c2f(seed: int = 0) -> onnx.ModelProto:
    """YOLOv8's C2f (shortcut off, one bottleneck): cv1 -> Split(8, 8) -> h1, h2; h2 ->
    m.cv1 -> SiLU -> m.cv2 -> SiLU -> m; Concat(h1, h2, m) -> cv2."""
    rng = np.random.default_rng(seed)
    inits = [_w("cv1.w", (16, 4, 1, 1), seed), _c("cv1.b", rng.standard_normal(16)),
             _w("m1.w", (8, 8, 3, 3), seed + 1), _c("m1.b", rng.standard_normal(8)),
             _w("m2.w", (8, 8, 3, 3), seed + 2), _c("m2.b", rng.standard_normal(8)),
             _w("cv2.w", (6, 24, 1, 1), seed + 3), _c("cv2.b", rng.standard_normal(6)),
             helper.make_tensor("split", onnx.TensorProto.INT64, [2], [8, 8])]

    def silu(x, y):
        return [helper.make_node("Sigmoid", [x], [y + ".s"], name=y + ".sig"),
                helper.make_node("Mul", [x, y + ".s"], [y], name=y + ".mul")]
    nodes = [helper.make_node("Conv", ["x", "cv1.w", "cv1.b"], ["c1"], name="cv1"),
             helper.make_node("Split", ["c1", "split"], ["h1", "h2"], name="split", axis=1),
             helper.make_node("Conv", ["h2", "m1.w", "m1.b"], ["m1"], name="m.cv1", pads=[1] * 4),
             *silu("m1", "m1a"),
             helper.make_node("Conv", ["m1a", "m2.w", "m2.b"], ["m2"], name="m.cv2", pads=[1] * 4),
             *silu("m2", "m"),
             helper.make_node("Concat", ["h1", "h2", "m"], ["cat"], name="cat", axis=1),
             helper.make_node("Conv", ["cat", "cv2.w", "cv2.b"], ["y"], name="cv2")]
    return b.make(nodes, [b.vi("x", ["N", 4, 6, 6])], [b.vi("y", ["N", 6, 6, 6])], inits)


def _sites(model):
    sites, refused = find_sites(model, find_layers(model)[0])
    return {s.producer.name: s for s in sites}, {r.producer: r.reason for r in refused}


def test_each_input_of_a_concat_is_a_site_at_its_offset():
    sites, _ = _sites(concat_pair())
    site = sites["convA"]
    assert (site.consumer.name, site.offset, site.channels, site.span) == ("cons", 6, 8, 14)
    assert site.width == 9 and "cat" in site.path
    other = sites["convB"]
    assert (other.consumer.name, other.offset, other.channels, other.span) == ("cons", 0, 6, 14)
    _, refused = _sites(concat_pair(b_site=False))
    assert "graph output" in refused["convB"]


def test_the_cut_is_the_oracle_and_keeps_the_other_inputs():
    model = concat_pair(b_site=False)
    res, layers, data = _run(model)
    (row,) = res.rows
    assert row.producer == "convA" and 0 < row.removed < row.channels
    site = _sites(model)[0]["convA"]
    ref, _, (dW, H) = _oracle(model, layers, data, row.removed_ids, site)
    feed = b.feeds(model, 8, seed=7)
    np.testing.assert_allclose(b.run(res.model, feed)[0], b.run(ref, feed)[0], rtol=1e-4,
                               atol=1e-4)
    assert row.loss == pytest.approx(np.trace(dW @ H @ dW.T), rel=1e-4)
    assert np.abs(dW[:, :6 * 9]).max() > 0  # convB's columns stay and take the update
    kept = row.channels - row.removed
    w, dense = b.weights_of(res.model), b.weights_of(model)
    assert w["a.w"].shape[0] == w["a.b"].shape[0] == kept and w["c.w"].shape[1] == 6 + kept
    np.testing.assert_array_equal(w["b.w"], dense["b.w"])
    onnx.checker.check_model(res.model, full_check=True)
    # the predicted saving is the cut model's: convA's rows and cons' columns (9 a channel)
    assert res.macs[0] - res.macs[1] == pytest.approx(saved_macs([site], [row.removed]))
    assert site.macs == 4 * 9 * 36 + 5 * 9 * 36


def test_two_inputs_leave_their_consumer_in_one_update():
    """Both inputs cut: the consumer equals the OBS oracle for the union of their columns."""
    model = concat_pair()
    res, layers, data = _run(model, fraction=0.4)
    rows = {r.producer: r for r in res.rows}
    assert rows["convA"].removed and rows["convB"].removed
    sites = _sites(model)[0]
    union = np.concatenate([sites["convB"].columns(rows["convB"].removed_ids),
                            sites["convA"].columns(rows["convA"].removed_ids)])
    ref, _, _ = _oracle(model, layers, data, union, dataclasses.replace(sites["convA"], offset=0))
    w, want = b.weights_of(res.model), b.weights_of(ref)
    kept = np.setdiff1d(np.arange(14), union)
    np.testing.assert_allclose(w["c.w"], want["c.w"][:, kept], rtol=1e-4, atol=1e-5)
    assert w["c.w"].shape[1] == 14 - len(union)
    assert w["a.w"].shape[0] == 8 - rows["convA"].removed
    assert w["b.w"].shape[0] == 6 - rows["convB"].removed
    onnx.checker.check_model(res.model, full_check=True)


def test_the_trace_takes_only_the_sites_channels():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 200))
    H = X @ X.T / 200 + 0.01 * np.eye(12)
    W = rng.standard_normal((3, 12))
    Hinv = np.linalg.inv(H)
    part = channel_trace(W, Hinv, 2, 3, first=2, count=3)
    assert sorted(part.order) == [0, 1, 2]  # channels 2..4, counted from 2

    def score(c):  # group OBS cost of channel c (columns 2c, 2c + 1) alone
        S = [2 * c, 2 * c + 1]
        return np.trace(W[:, S] @ np.linalg.solve(Hinv[np.ix_(S, S)], W[:, S].T))
    scores = [score(c) for c in range(6)]
    assert part.order[0] == int(np.argmin(scores[2:5]))
    assert part.losses[0] == pytest.approx(min(scores[2:5]))
    assert int(np.argmin(scores)) not in (2, 3, 4)  # the whole layer's best lies outside


def test_yolov8s_c2f_bottleneck_reaches_cv2_through_the_concat():
    model = c2f()
    sites, refused = _sites(model)
    assert sites["m.cv1"].consumer.name == "m.cv2" and not sites["m.cv1"].span
    cat = sites["m.cv2"]
    assert (cat.consumer.name, cat.offset, cat.channels, cat.span) == ("cv2", 16, 8, 24)
    half = sites["cv1"]  # the first half of cv1's Split, read by the Concat alone (splits.py)
    assert (half.consumer.name, half.offset, half.first_row, half.channels, half.rows) == (
        "cv2", 0, 0, 8, 16)
    res, _, _ = _run(model, fraction=0.2)
    assert {r.producer for r in res.rows if r.removed} and res.macs[1] < res.macs[0]
    w = b.weights_of(res.model)
    removed = {r.producer: r.removed for r in res.rows}
    assert w["cv2.w"].shape[1] == 24 - removed["m.cv2"] - removed["cv1"]
    assert w["cv1.w"].shape[0] == 16 - removed["cv1"]
    assert w["m2.w"].shape[0] == 8 - removed["m.cv2"]
    assert w["m2.w"].shape[1] == w["m1.w"].shape[0] == 8 - removed["m.cv1"]
    onnx.checker.check_model(res.model, full_check=True)
    feed = b.feeds(model, 4, seed=3)
    assert np.isfinite(b.run(res.model, feed)[0]).all()


@pytest.mark.parametrize("axis, tail, why", [
    (2, "conv", "reach Concat 'cat' on another axis"),
    (1, "output", "reach the graph output")])
def test_a_concat_that_is_no_site_is_refused(axis, tail, why):
    sites, refused = _sites(concat_pair(axis=axis, tail=tail))
    assert "convA" not in sites
    assert why in refused["convA"], refused["convA"]


@pytest.mark.parametrize("groups", [None, 1])  # each site its own group, or both in one
def test_sequential_cuts_a_concats_inputs(groups):
    """--sequential: in one group the two inputs leave the consumer in one update (as
    one-shot); in two, the second is found again at its new offset on the cut model."""
    model = concat_pair()
    layers = find_layers(model)[0]
    data = DataSet(b.feeds(model, 96, seed=1), "feeds")
    args = (model, layers, data, 32, get_backend("cpu"), 0.4, 0.01, 2048)
    one, seq = prune_channels(*args), prune_channels_sequential(*args, groups=groups)
    assert [r.removed for r in seq.rows] == [r.removed for r in one.rows]
    assert all(r.removed for r in seq.rows) and seq.macs[1] == pytest.approx(one.macs[1])
    feed = b.feeds(model, 64, seed=9)
    ref = b.run(model, feed)[0]
    err = [np.linalg.norm(b.run(m, feed)[0] - ref) / np.linalg.norm(ref)
           for m in (one.model, seq.model, seq.baseline)]
    assert err[1] <= 1.1 * err[0] and err[1] < 0.7 * err[2], err
    if groups == 1:  # one group: the same update as one-shot
        np.testing.assert_allclose(b.weights_of(seq.model)["c.w"],
                                   b.weights_of(one.model)["c.w"], rtol=1e-4, atol=1e-5)
