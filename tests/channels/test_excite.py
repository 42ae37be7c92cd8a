"""Squeeze-excite blocks on a site's path (channels/excite.py): x read by a global pool and
by the Mul that scales it; channel j takes the excite conv's row j and the squeeze conv's
column j with the producer's rows and the consumer's columns. The cut equals the dense
model with the OBS-updated consumer and those squeeze columns zeroed; FLOPs exact."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_obc.channels import find_sites
from onnx_obc.channels.patterns import layer_macs, saved_macs
from onnx_obc.export.shrink import shrink
from onnx_obc.layers import find_layers
from tests import builders as b
from tests.channels import glu
from tests.channels.test_stage import _oracle, _run


def _se_site(model):
    sites, refused = find_sites(model, find_layers(model)[0])
    return {s.producer.name: s for s in sites}, {r.producer: r.reason for r in refused}


@pytest.mark.parametrize("pool", ["global", "reducemean"])
def test_the_block_is_on_the_expand_convs_path(pool):
    sites, refused = _se_site(glu.squeeze_excite(pool=pool))
    se = sites["expand"]
    assert se.consumer.name == "project" and se.gate.producer.name == "excite"
    assert se.gate.squeeze.weight == "s.w" and ("x.b", 0) in se.gate.sliced
    assert "squeeze" in sites and "excite" not in refused  # the inner pair: its own site


def test_a_pool_that_is_not_global_is_no_block():
    sites, refused = _se_site(glu.squeeze_excite(pool="average"))
    assert "expand" not in sites
    assert "Mul 'scale' of two activations" in refused["expand"]


def test_the_cut_is_the_obs_update_of_both_the_consumer_and_the_squeeze_conv():
    """The consumer's columns by group OBS on its Hessian (the Mul's output), the squeeze
    conv's columns by group OBS on its own (the pooled channels): equal to the dense model
    with both updates (removed columns zero), and not to the squeeze columns merely zeroed.
    (Two squeeze channels: the cut leaves their inner pair whole here, as asserted.)"""
    from onnx_obc.backend import get_backend
    from onnx_obc.collect import collect

    model = glu.squeeze_excite(squeeze=2)
    res, layers, data = _run(model, fraction=0.3)
    (row,) = [r for r in res.rows if r.removed]
    assert row.producer == "expand"
    site = _se_site(model)[0]["expand"]
    ref, _, (dW, H) = _oracle(model, layers, data, row.removed_ids, site)
    sq = site.gate.squeeze
    hs, _ = collect(model, [sq], data, 32, get_backend("cpu"), 2048, False)
    H1 = hs[sq.weight].mean()[0]
    H1 = H1 + 0.01 * np.mean(np.diag(H1)) * np.eye(len(H1))
    Hinv, S = np.linalg.inv(H1), np.asarray(row.removed_ids)
    feed = b.feeds(model, 8, seed=7)
    for update in (True, False):
        out = onnx.ModelProto()
        out.CopyFrom(ref)
        for t in out.graph.initializer:
            if t.name == "s.w":
                w = onnx.numpy_helper.to_array(t)[:, :, 0, 0].astype(np.float64)
                if update:
                    w = w - w[:, S] @ np.linalg.solve(Hinv[np.ix_(S, S)], Hinv[S, :])
                w[:, S] = 0
                t.CopyFrom(onnx.numpy_helper.from_array(
                    w[:, :, None, None].astype(np.float32), "s.w"))
        gap = np.abs(b.run(res.model, feed)[0] - b.run(out, feed)[0]).max()
        assert (gap < 1e-4) == update, (update, gap)
    assert row.loss == pytest.approx(np.trace(dW @ H @ dW.T), rel=1e-4)
    w = b.weights_of(res.model)
    kept = row.channels - row.removed
    assert w["e.w"].shape[0] == w["x.w"].shape[0] == w["s.w"].shape[1] == kept
    assert w["p.w"].shape[1] == w["e.b"].shape[0] == w["x.b"].shape[0] == kept
    onnx.checker.check_model(res.model, full_check=True)


def test_both_sites_cut_save_exactly_the_counted_flops():
    """The squeeze conv loses rows (its own site) and columns (the block's), the excite conv
    columns and rows: each (row, column) pair counted once."""
    model = glu.squeeze_excite()
    layers = find_layers(model)[0]
    sites, _ = find_sites(model, layers)
    counts = [5 if s.producer.name == "expand" else 3 for s in sites]
    cut = shrink(model, sites, [np.arange(k, s.channels) for s, k in zip(sites, counts)])
    assert layer_macs(model, layers) - layer_macs(cut, find_layers(cut)[0]) == \
        saved_macs(sites, counts)
    out = b.run(cut, b.feeds(model, 2, seed=1))[0]
    assert out.shape == (2, 5, 6, 6)


def test_obs_beats_the_norm_baseline_on_the_consumer():
    res, _, _ = _run(glu.squeeze_excite(mid=24), fraction=0.4)
    row = next(r for r in res.rows if r.producer == "expand")
    assert row.removed and row.loss < 0.7 * row.norm_loss, (row.loss, row.norm_loss)


def _plan(model, n, batch=16):
    """Inputs that vary from sample to sample more than over the positions (as a late
    layer's features do), so that the pooled channels differ between samples."""
    from onnx_obc.backend import get_backend
    from onnx_obc.calib import DataSet
    from onnx_obc.channels.stage import plan_channels

    data = DataSet({k: x.mean(axis=(2, 3), keepdims=True) * 6 + 0.2 * x for k, x in
                    b.feeds(model, n, seed=1, correlated=False).items()}, "feeds")
    return plan_channels(model, find_layers(model)[0], data, batch, get_backend("cpu"), 0.01,
                         2048, fraction=0.3)


def test_held_squeezes_leave_the_probes_samples_out():
    from onnx_obc.backend import get_backend
    from onnx_obc.channels.excite import held_squeezes
    from onnx_obc.collect import collect

    model = glu.squeeze_excite(mid=32)
    plan = _plan(model, 64)
    rest = held_squeezes(plan, plan.data.head(16))
    sq = _se_site(model)[0]["expand"].gate.squeeze
    assert list(rest) == [sq.weight] and rest[sq.weight].samples == 48
    tail, _ = collect(model, [sq], plan.data.take(np.arange(16, 64)), 16, get_backend("cpu"),
                      2048, False)
    np.testing.assert_allclose(rest[sq.weight].mean(), tail[sq.weight].mean(), rtol=1e-9,
                               atol=1e-12)
    assert plan.hessians[sq.weight].samples == 64  # the cut's: every sample, untouched
    assert held_squeezes(plan, plan.data.head(40)) == {}  # fewer others than probe samples
    assert held_squeezes(_plan(glu.gated_conv(), 64), plan.data.head(16)) == {}  # no block


def test_an_se_sites_probe_updates_the_squeeze_on_the_other_samples():
    """The output probe of a site through a squeeze-excite block runs the model with the
    consumer's OBS update (as for any site) and the squeeze conv's, fitted without the probe
    samples: with fewer samples than pooled channels, the in-sample fit reproduces the
    squeeze's output on the samples it saw (error 0.0009 here, 0.144 fitted on the others),
    which no new input gets."""
    from onnx_obc.channels.allocate import loss_curve
    from onnx_obc.channels.excite import held_squeezes, squeeze_update
    from onnx_obc.channels.sensitivity import _run as run
    from onnx_obc.channels.sensitivity import _with_weight, probe_counts
    from onnx_obc.channels.stage import counts_for
    from onnx_obc.solvers.channels import obs_update

    model = glu.squeeze_excite(c_in=96, mid=96, squeeze=16)  # pooled: ~96 directions
    plan = _plan(model, 40)  # 16 probe samples, 24 others: fewer than the 96 pooled inputs
    counts_for(plan, 0.3, 1, "dp", "output")
    i, s = next((i, s) for i, s in enumerate(plan.solved) if s.site.producer.name == "expand")
    k = probe_counts(len(s.trace.losses), s.site.channels, 1)[0]  # keeps more than 40
    removed = s.trace.order[:k]
    feeds = [f for _, f in plan.data.head(16).batches(16)]
    rest = held_squeezes(plan, plan.data.head(16))

    def probe(hessians):
        m = model
        for name, value in squeeze_update(s.site, removed, plan.weights, hessians,
                                          plan.backend, plan.damp).items():
            m = _with_weight(m, name, value)
        W = obs_update(s.W, s.Hinv, s.site.width, removed)
        m = _with_weight(m, s.site.consumer.weight, s.site.consumer.from_matrix(W[None]))
        (y,), (ref,) = run(m, feeds), run(model, feeds)
        return np.sum((y - ref) ** 2) / np.sum(ref ** 2)

    want = probe(rest) / loss_curve(s.trace, s.energy)[k]
    np.testing.assert_allclose(plan.probes[i][1][0], want, rtol=1e-6)
    pooled = onnx.ModelProto()  # the squeeze's input on the probe samples
    pooled.CopyFrom(model)
    pooled.graph.output.append(onnx.helper.make_tensor_value_info("pl", 1, None))
    P = np.concatenate([b.run(pooled, f)[1] for f in feeds])[:, :, 0, 0].T  # [96, 16]
    W0 = b.weights_of(model)["s.w"][:, :, 0, 0]

    def moved(hessians):  # the squeeze's output error on the probe samples
        W = squeeze_update(s.site, removed, plan.weights, hessians, plan.backend,
                           plan.damp)["s.w"][:, :, 0, 0]
        return np.sum(((W - W0) @ P) ** 2) / np.sum((W0 @ P) ** 2)

    assert moved(rest) > 20 * moved(plan.hessians)  # in-sample its fit looks free (163x)
