"""The channel-pruning stage against an oracle: the shrunk model equals the dense model
whose consumer has the removed channels' columns zeroed and the rest updated by the group
OBS formula; the tensors shrink, strict shape inference passes, onnxruntime runs it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnx_obc.backend import get_backend
from onnx_obc.calib import DataSet
from onnx_obc.channels import find_sites, prune_channels
from onnx_obc.collect import collect
from onnx_obc.layers import constant_weights, find_layers, weight_matrix
from onnx_obc.errors import ConfigError
from tests import builders as b
from tests.channels import graphs

BUILDS = [graphs.conv_bn_relu_conv, graphs.depthwise_block, graphs.transformer_mlp,
          graphs.gemm_pair, graphs.conv_silu_conv, graphs.attention, graphs.mlp_gelu,
          graphs.same_pad_block, graphs.conv_leaky_max_conv, graphs.deconv_bn_relu_conv,
          graphs.conv_relu_deconv]
DAMP = 0.01


def _run(model, fraction=0.3, n=96):
    layers = find_layers(model)[0]
    data = DataSet(b.feeds(model, n, seed=1), "feeds")
    res = prune_channels(model, layers, data, 32, get_backend("cpu"), fraction, DAMP, 2048)
    return res, layers, data


def _oracle(model, layers, data, removed, site=None):
    """Dense model with the consumer updated by W - W_S ([Hinv]_SS)^-1 Hinv_S,: (W_S = 0);
    `site`: the site (default: the first find_sites finds without probed sizes)."""
    site = site or find_sites(model, layers)[0][0]
    c = site.consumer
    hess, _ = collect(model, [c], data, 32, get_backend("cpu"), 2048, False)
    H = hess[c.weight].mean()[0]
    H = H + DAMP * np.mean(np.diag(H)) * np.eye(len(H))
    Hinv = np.linalg.inv(H)
    W = weight_matrix(constant_weights(model.graph), c)[0].astype(np.float64)
    S = (site.columns(removed)[:, None] * site.width + np.arange(site.width)).ravel()
    new = W - W[:, S] @ np.linalg.solve(Hinv[np.ix_(S, S)], Hinv[S, :])
    new[:, S] = 0.0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name == c.weight:
            t.CopyFrom(numpy_helper.from_array(
                c.from_matrix(new[None].astype(np.float32)), c.weight))
    return out, site, (new - W, H)


@pytest.mark.parametrize("build", BUILDS, ids=lambda f: f.__name__)
def test_shrunk_model_equals_the_obs_oracle(build):
    model = build()
    res, layers, data = _run(model)
    (row,) = res.rows
    assert 0 < row.removed < row.channels and len(row.removed_ids) == row.removed
    ref, site, (dW, H) = _oracle(model, layers, data, row.removed_ids)
    feed = b.feeds(model, 8, seed=7)
    np.testing.assert_allclose(b.run(res.model, feed)[0], b.run(ref, feed)[0],
                               rtol=1e-4, atol=1e-4)
    # the greedy's summed losses are the consumer's measured loss tr(dW H dW^T)
    assert row.loss == pytest.approx(np.trace(dW @ H @ dW.T), rel=1e-4)
    # the tensors shrank, shapes are consistent, the baseline runs too
    kept = row.channels - row.removed
    w = b.weights_of(res.model)
    assert w[site.producer.weight].shape[graphs.axes(site.producer)[0]] == kept
    assert w[site.consumer.weight].shape[graphs.axes(site.consumer)[1]] == kept
    for name, axis in site.sliced:
        assert w[name].shape[axis] == kept
    onnx.checker.check_model(res.model, full_check=True)
    onnx.shape_inference.infer_shapes(res.model, check_type=True, strict_mode=True)
    assert b.run(res.baseline, feed)[0].shape == b.run(model, feed)[0].shape
    assert res.macs[1] < res.macs[0]


def test_depthwise_group_follows_the_channels():
    res, _, _ = _run(graphs.depthwise_block())
    (dw,) = [n for n in res.model.graph.node if n.name == "dw"]
    group = next(a.i for a in dw.attribute if a.name == "group")
    assert group == res.rows[0].channels - res.rows[0].removed


@pytest.mark.parametrize("build", [graphs.conv_bn_relu_conv, graphs.transformer_mlp],
                         ids=lambda f: f.__name__)
def test_obs_beats_the_norm_baseline(build):
    res, _, _ = _run(build(), fraction=0.4)
    (row,) = res.rows
    assert row.loss < 0.7 * row.norm_loss, (row.loss, row.norm_loss)


def test_no_site_is_refused_before_any_capture_and_says_why(monkeypatch):
    """Nothing prunable: a usage error naming a refused producer and its reason, raised
    before the consumers' Hessians are captured."""
    from onnx_obc.channels import stage

    monkeypatch.setattr(stage, "collect", lambda *a, **k: pytest.fail("captured"))
    with pytest.raises(ConfigError, match=r"0 prunable .* at most 0\.0%.*residual Add") as e:
        _run(graphs.refused("residual"))
    assert "Ask for" not in str(e.value)  # not "prune.channels 0 or less": a refused value
    assert "without prune.channels" in str(e.value)


def test_chained_sites_reach_the_exact_flop_cut():
    model = graphs.chain((8, 16, 12, 4))
    res, _, _ = _run(model, fraction=0.3)
    assert len(res.rows) == 2 and res.macs[1] <= 0.7 * res.macs[0]
    feed = b.feeds(model, 4, seed=3)
    assert b.run(res.model, feed)[0].shape == (4, 4)


def test_short_traces_are_extended_when_the_selection_needs_them():
    """A small site beside a big unprunable layer: the first trace prefix (2 of 4 steps)
    runs out, the site gets its whole greedy and removes 3 of its 4 channels."""
    from onnx import helper

    inits = [graphs._w("big", (32, 32), 0), graphs._w("p.w", (4, 32), 1),
             graphs._w("c.w", (2, 4), 2)]
    nodes = [helper.make_node("Gemm", ["x", "big"], ["h"], name="big", transB=1),
             helper.make_node("Add", ["h", "x"], ["s"], name="res"),
             helper.make_node("Gemm", ["s", "p.w"], ["p"], name="prod", transB=1),
             helper.make_node("Relu", ["p"], ["r"], name="act"),
             helper.make_node("Gemm", ["r", "c.w"], ["y"], name="cons", transB=1)]
    model = b.make(nodes, [b.vi("x", ["N", 32])], [b.vi("y", ["N", 2])], inits)
    res, _, _ = _run(model, fraction=0.08)  # 93 of 1160 MACs: 3 channels of 34
    (row,) = res.rows
    assert row.removed == 3 and not res.warnings
    with pytest.raises(ConfigError, match=r"prune.channels 0\.15 cannot be reached here: the 1 "
                       r"prunable .* saves at most 8\.8% .*Ask for prune.channels 0\.08 or less"):
        _run(model, fraction=0.15)  # beyond the site (3 of its 4 channels: 102 of 1160 MACs)


def test_the_consumers_hessians_come_from_a_subgrid_where_positions_abound(monkeypatch):
    """The stage takes its consumers' H from a subgrid of the positions as the exact runs do
    (tier.channel_floor: EXACT_COLUMNS per input, none with --positions all): a 1x1 pair
    over 64 x 64 positions (consumer d = 4) keeps every 4th along each axis, the H within
    sampling error of the full one, the same channels cut."""
    from onnx import helper

    from onnx_obc import CompressConfig, convert
    from onnx_obc.channels import plan_channels
    from onnx_obc.tier import EXACT_COLUMNS, channel_floor

    cfg = lambda **kw: CompressConfig.from_options(channels=0.3, **kw)  # noqa: E731
    assert channel_floor(cfg()) == EXACT_COLUMNS and channel_floor(cfg(positions="all")) == 0
    nodes = [helper.make_node("Conv", ["x", "p.w"], ["p"], name="prod"),
             helper.make_node("Relu", ["p"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "c.w"], ["y"], name="cons")]
    model = b.make(nodes, [b.vi("x", ["N", 2, 64, 64])], [b.vi("y", ["N", 3, 64, 64])],
                   [b.weight("p.w", (4, 2, 1, 1), 1), b.weight("c.w", (3, 4, 1, 1), 2)])
    layers = find_layers(model)[0]
    data = DataSet(b.feeds(model, 16, seed=1), "feeds")
    H = {sub: plan_channels(model, layers, data, 8, get_backend("cpu"), DAMP, 2048,
                            subsample=sub).hessians["c.w"].mean()[0] for sub in (0, EXACT_COLUMNS)}
    assert not np.array_equal(H[0], H[EXACT_COLUMNS])
    np.testing.assert_allclose(H[EXACT_COLUMNS], H[0], rtol=0.1, atol=0.02 * H[0].max())
    from onnx_obc.channels import stage

    asked, real = [], stage.collect
    monkeypatch.setattr(stage, "collect", lambda *a, **k: asked.append(k["subsample"]) or real(
        *a, **k))
    runs = [convert(model, None, calib=[b.feeds(model, 16, seed=1)], channels=0.3,
                    positions=pos, progress=False).report.channels for pos in ("all", "auto")]
    assert asked == [0, EXACT_COLUMNS]  # the run's stage, as --positions says
    assert runs[0]["rows"][0]["removed_ids"] == runs[1]["rows"][0]["removed_ids"] != []


def _group_obs(W, H, removed, width):
    """The OBS update of a grouped consumer, group by group on its own Hessian block: W [G,
    r, d], H [G, d, d] (dampened as the stage does), removed: global input channels."""
    G, _, d = W.shape
    per = d // width
    out = W.astype(np.float64).copy()
    for g in range(G):
        local = np.asarray([c - g * per for c in removed if c // per == g])
        S = (local[:, None] * width + np.arange(width)).ravel()
        Hg = H[g] + DAMP * np.mean(np.diag(H[g])) * np.eye(d)
        Hinv = np.linalg.inv(Hg)
        out[g] -= out[g][:, S] @ np.linalg.solve(Hinv[np.ix_(S, S)], Hinv[S, :])
        out[g][:, S] = 0.0
    return out


def test_grouped_convs_lose_as_many_channels_from_every_group():
    """RegNet's bottleneck middle: the 1x1 conv into the grouped 3x3 (a grouped consumer:
    each group's columns by OBS on its own Hessian block) and the grouped 3x3 into the last
    1x1 (a grouped producer) are sites; every group loses as many channels (the group count
    stays, each group narrower), and the cut model equals the dense one with both consumers
    OBS-updated (the removed columns zero); the L2 baseline runs; FLOPs exact."""
    from onnx_obc.channels.patterns import layer_macs, saved_macs

    model = graphs.grouped_block()
    sites = {s.producer.name: s for s in find_sites(model, find_layers(model)[0])[0]}
    assert sites["first"].consumer.name == "grouped" and sites["first"].width == 9
    assert sites["grouped"].consumer.name == "last"
    assert sites["first"].blocks == sites["grouped"].blocks == 4
    res, layers, data = _run(model, fraction=0.4)
    rows = {r.producer: r for r in res.rows}
    assert rows["first"].removed and rows["grouped"].removed
    for r in rows.values():
        assert r.removed % 4 == 0 and np.bincount(np.asarray(r.removed_ids) // 4,
                                                  minlength=4).tolist() == [r.removed // 4] * 4
    by_w = {L.weight: L for L in layers}
    hs, _ = collect(model, [by_w["g.w"], by_w["c.w"]], data, 32, get_backend("cpu"), 2048,
                    False)
    w = constant_weights(model.graph)
    grouped = _group_obs(weight_matrix(w, by_w["g.w"]), hs["g.w"].mean(),
                         rows["first"].removed_ids, 9)
    last = _group_obs(weight_matrix(w, by_w["c.w"]), hs["c.w"].mean(),
                      rows["grouped"].removed_ids, 1)
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    for t in ref.graph.initializer:
        new = {"g.w": by_w["g.w"].from_matrix(grouped), "c.w": by_w["c.w"].from_matrix(last)}
        if t.name in new:
            t.CopyFrom(numpy_helper.from_array(new[t.name].astype(np.float32), t.name))
    feed = b.feeds(model, 8, seed=7)
    np.testing.assert_allclose(b.run(res.model, feed)[0], b.run(ref, feed)[0], rtol=1e-4,
                               atol=1e-4)
    kept_a, kept_g = 16 - rows["first"].removed, 16 - rows["grouped"].removed
    cut = b.weights_of(res.model)
    assert cut["g.w"].shape == (kept_g, kept_a // 4, 3, 3) and cut["c.w"].shape[1] == kept_g
    (g,) = [n for n in res.model.graph.node if n.name == "grouped"]
    assert next(a.i for a in g.attribute if a.name == "group") == 4
    onnx.checker.check_model(res.model, full_check=True)
    assert b.run(res.baseline, feed)[0].shape == b.run(model, feed)[0].shape
    order = [s for s in sites.values() if s.producer.name in rows]
    saved = saved_macs(order, [rows[s.producer.name].removed for s in order])  # predicted
    assert res.macs[0] - saved == pytest.approx(layer_macs(res.model,  # = measured
                                                           find_layers(res.model)[0]))
