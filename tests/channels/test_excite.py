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
