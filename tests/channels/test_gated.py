"""Gated units (channels/gated.py): the gate and up projections of down(act(gate(x)) * up(x))
lose the same rows, the consumer its columns with the group OBS update; the cut equals the
oracle, the FLOPs saved are exact, the L2 baseline reads both producers, and a Mul of two
activations that is no gated unit keeps its channels with the reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_obc.channels import find_sites
from onnx_obc.channels.patterns import layer_macs, saved_macs
from onnx_obc.export.shrink import shrink
from onnx_obc.layers import find_layers
from tests import builders as b
from tests.channels import glu, graphs
from tests.channels.test_stage import _oracle, _run

BUILDS = {
    "swiglu": glu.gated_mlp,
    "swiglu_bias_scale": lambda: glu.gated_mlp(bias=True, scale=True),
    "up_first_tanh": lambda: glu.gated_mlp(act="tanh", up_first=True),
    "bilinear": lambda: glu.gated_mlp(act="none"),
    "conv": glu.gated_conv,
    "constants": lambda: graphs.as_constants(glu.gated_mlp(bias=True)),
}


def _find(model):
    return find_sites(model, find_layers(model)[0])


@pytest.mark.parametrize("name", BUILDS)
def test_one_site_owned_by_the_first_producer_the_other_cut_with_it(name):
    model = BUILDS[name]()
    (s,), refused = _find(model)
    first, second = ("up", "gate") if name == "up_first_tanh" else ("gate", "up")
    if name == "conv":
        first, second = "prod", "gate"
    assert (s.producer.name, s.gate.producer.name) == (first, second)
    assert s.consumer.name in ("down", "cons")
    assert second not in {r.producer for r in refused}  # not reported as kept
    if name == "swiglu_bias_scale":  # the up branch's bias and scale, the gate's bias
        assert {n for n, _ in (*s.sliced, *s.gate.sliced)} == {"up.b", "up.scale", "gate.b"}


@pytest.mark.parametrize("name", BUILDS)
def test_shrunk_model_equals_the_obs_oracle(name):
    model = BUILDS[name]()
    res, layers, data = _run(model)
    (row,) = res.rows
    assert 0 < row.removed < row.channels
    plain = glu.gated_mlp(bias=True) if name == "constants" else model  # the oracle
    # writes initializers; the Constant-node model holds the same values
    ref, site, (dW, H) = _oracle(plain, find_layers(plain)[0], data, row.removed_ids)
    # the oracle zeroes the consumer's columns and keeps the producers' rows: the same
    # outputs as removing them
    feed = b.feeds(model, 8, seed=7)
    np.testing.assert_allclose(b.run(res.model, feed)[0], b.run(ref, feed)[0],
                               rtol=1e-4, atol=1e-4)
    assert row.loss == pytest.approx(np.trace(dW @ H @ dW.T), rel=1e-4)
    kept, w = row.channels - row.removed, b.weights_of(res.model)
    for L in (site.producer, site.gate.producer):
        assert w[L.weight].shape[graphs.axes(L)[0]] == kept
    assert w[site.consumer.weight].shape[graphs.axes(site.consumer)[1]] == kept
    for name_, axis in (*site.sliced, *site.gate.sliced):
        assert w[name_].shape[axis] == kept
    onnx.checker.check_model(res.model, full_check=True)
    onnx.shape_inference.infer_shapes(res.model, check_type=True, strict_mode=True)
    assert b.run(res.baseline, feed)[0].shape == b.run(model, feed)[0].shape


@pytest.mark.parametrize("name", ["swiglu", "conv"])
def test_saved_macs_count_both_producers_exactly(name):
    model = BUILDS[name]()
    layers = find_layers(model)[0]
    (s,), _ = find_sites(model, layers)
    cut = shrink(model, [s], [np.arange(5, s.channels)])
    assert layer_macs(model, layers) - layer_macs(cut, find_layers(cut)[0]) == \
        saved_macs([s], [5])


def test_the_norm_baseline_reads_both_producers(monkeypatch):
    """A channel with a tiny up row but a large gate row is not the baseline's first pick
    when the gate's rows are counted: the L2 norm of the pair decides."""
    from onnx_obc.channels.baseline import norm_removed as _norm_removed
    from onnx_obc.layers import constant_weights

    model = glu.gated_mlp()
    (s,), _ = _find(model)
    w = constant_weights(model.graph)
    from onnx import numpy_helper
    up = numpy_helper.to_array(w["up.w"][1]).copy()
    gate = numpy_helper.to_array(w["gate.w"][1]).copy()
    up[:, 3] *= 1e-3
    gate[:, 3] *= 1e3  # channel 3: smallest up row, largest pair
    for name, arr in (("up.w", up), ("gate.w", gate)):
        w[name] = (w[name][0], numpy_helper.from_array(arr, name))
    assert 3 not in _norm_removed(s, w, 4)
    norms = np.sqrt((up ** 2).sum(0) + (gate ** 2).sum(0))
    assert list(_norm_removed(s, w, 4)) == sorted(np.argsort(norms, kind="stable")[:4])


@pytest.mark.parametrize("name", ["swiglu", "conv"])
def test_obs_beats_the_norm_baseline(name):
    res, _, _ = _run(BUILDS[name](), fraction=0.4)
    (row,) = res.rows
    assert row.loss < 0.7 * row.norm_loss, (row.loss, row.norm_loss)


@pytest.mark.parametrize("kind, words", [
    ("input", "not another layer's 8 channels"), ("fanout", "not another layer's"),
    ("width", "not another layer's")])
def test_a_mul_of_two_activations_that_is_no_gated_unit_keeps_the_channels(kind, words):
    model = glu.not_gated(kind)
    sites, refused = _find(model)
    assert not sites
    assert words in {r.producer: r.reason for r in refused}["prod"]


def test_the_site_subgraph_holds_the_other_branch():
    """timing.py times a site alone: its subgraph runs the gate branch too, and cut at k
    channels loses both producers' rows."""
    from onnx_obc.channels.subgraph import site_subgraph

    model = glu.gated_mlp(bias=True)
    (s,), _ = _find(model)
    sub, inputs, outputs = site_subgraph(model, s)
    assert {n.name for n in sub.graph.node} >= {"gate", "gate.add", "act.sig", "act.mul",
                                                "up", "up.add", "glu", "down"}
    assert inputs == ["x"] and outputs == ["y"]


def test_sequential_and_convert_cut_the_gated_unit(tmp_path):
    from onnx_obc import convert

    model = glu.gated_mlp(d=16, hidden=48)
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    out = tmp_path / "o.onnx"
    feeds = b.feeds(model, 64, seed=3)
    for sequential in (False, True):
        rep = convert(str(src), str(out), channels=0.3, calib=feeds, sequential=sequential,
                      progress=False)
        w = b.weights_of(onnx.load(out))
        kept = w["down.w"].shape[0]
        assert kept < 48 and w["up.w"].shape[1] == w["gate.w"].shape[1] == kept
        (row,) = rep.report.channels["rows"]
        assert row["removed"] == 48 - kept and row["producer"] == "gate"
        assert "up" not in {x["producer"] for x in rep.report.channels["refused"]}


FUSED = {"split": lambda: glu.fused_mlp(how="split"),
         "slices": lambda: glu.fused_mlp(how="slices"),
         "slices_no_bias": lambda: glu.fused_mlp(how="slices", bias=False),
         "glu_conv": glu.glu_conv}


@pytest.mark.parametrize("name", FUSED)
def test_a_fused_gate_up_projection_loses_both_halves_rows(name):
    """One producer chunked in two (Phi-3's gate_up_proj, torch.nn.GLU): channel j takes rows
    j and F + j (and the bias entries), the constants after the chunk their entry j; the cut
    equals the OBS oracle and its FLOPs are exact."""
    model = FUSED[name]()
    layers = find_layers(model)[0]
    (s,), _ = find_sites(model, layers)
    F = s.channels
    assert s.gate.producer is s.producer and s.gate.offset == F
    res, layers, data = _run(model)
    (row,) = res.rows
    kept = F - row.removed
    ref, _, (dW, H) = _oracle(model, layers, data, row.removed_ids)
    feed = b.feeds(model, 8, seed=7)
    np.testing.assert_allclose(b.run(res.model, feed)[0], b.run(ref, feed)[0],
                               rtol=1e-4, atol=1e-4)
    assert row.loss == pytest.approx(np.trace(dW @ H @ dW.T), rel=1e-4)
    w, src = b.weights_of(res.model), b.weights_of(model)
    out_axis = graphs.axes(s.producer)[0]
    assert w[s.producer.weight].shape[out_axis] == 2 * kept
    keep = np.setdiff1d(np.arange(F), row.removed_ids)
    np.testing.assert_array_equal(  # the rows kept: j and F + j, in that order
        w[s.producer.weight], np.take(src[s.producer.weight], np.r_[keep, F + keep], out_axis))
    for name_, axis in s.gate.halved:
        assert w[name_].shape[axis] == 2 * kept
    for name_, axis in s.sliced:
        assert w[name_].shape[axis] == (2 * kept if (name_, axis) in s.gate.halved else kept)
    onnx.checker.check_model(res.model, full_check=True)
    onnx.shape_inference.infer_shapes(res.model, check_type=True, strict_mode=True)
    cut = shrink(model, [s], [np.arange(3, F)])
    assert layer_macs(model, layers) - layer_macs(cut, find_layers(cut)[0]) == \
        saved_macs([s], [3])


@pytest.mark.parametrize("how", ["split", "slices"])
def test_the_fused_projection_cuts_as_the_two_projections_do(how):
    """The same weights as two MatMuls (gated_mlp) and as one chunked in two: the same
    consumer Hessian, so the same channels removed and the same outputs."""
    two, one = _run(glu.gated_mlp(bias=True)), _run(glu.fused_mlp(how=how))
    assert two[0].rows[0].removed_ids == one[0].rows[0].removed_ids
    feed = b.feeds(glu.gated_mlp(bias=True), 8, seed=5)
    for a, c in ((one[0].model, two[0].model), (one[0].baseline, two[0].baseline)):
        np.testing.assert_allclose(b.run(a, feed)[0], b.run(c, feed)[0], rtol=1e-4, atol=1e-5)
    assert one[0].rows[0].norm_loss == pytest.approx(two[0].rows[0].norm_loss, rel=1e-6)


@pytest.mark.parametrize("how, words", [("constant", "feeds 2 nodes"),
                                        ("uneven", "Split 'chunk'")])
def test_chunks_that_do_not_follow_the_cut_keep_the_channels(how, words):
    """Slices with constant bounds (they would not follow the cut) or a Split into unequal
    parts are no fused gate-up projection."""
    sites, refused = _find(glu.fused_mlp(how=how))
    assert not sites and words in {r.producer: r.reason for r in refused}["gu"]


def test_halves_read_by_two_layers_are_refused_at_the_split():
    """A producer chunked in two whose halves feed two different layers (no Mul): refused
    naming the Split, as before the fused pattern existed."""
    from onnx import helper

    n = helper.make_node
    model = b.make([n("MatMul", ["x", "w"], ["h"], name="p"),
                    n("Split", ["h"], ["a", "c"], name="chunk", axis=-1),
                    n("MatMul", ["a", "w1"], ["y1"], name="c1"),
                    n("MatMul", ["c", "w2"], ["y2"], name="c2")],
                   [b.vi("x", ["N", 4, 8])], [b.vi("y1", ["N", 4, 8]), b.vi("y2", ["N", 4, 8])],
                   [b.weight("w", (8, 16), 0), b.weight("w1", (8, 8), 1),
                    b.weight("w2", (8, 8), 2)])
    sites, refused = _find(model)
    assert not sites and "Split 'chunk'" in {r.producer: r.reason for r in refused}["p"]
