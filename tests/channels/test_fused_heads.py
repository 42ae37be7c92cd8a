"""Whole heads of a fused QKV projection (channels/fused_heads.py), as paddle2onnx (Slice +
Squeeze, shapes from Cast pieces, weights as Constant nodes) and timm (Gather) export it:
the shrunk model equals the dense model with the heads' Wo columns removed by group OBS,
the projection loses each head's q, k and v columns and biases, the Reshapes follow, the
FLOPs saved are exact, the variants outside the pattern are refused with their reason and
OBS beats the L2-norm head baseline."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_obc.channels import find_sites, layer_macs
from onnx_obc.channels.patterns import saved_macs
from onnx_obc.layers import find_layers
from tests import builders as b
from tests.channels import graphs, mha
from tests.channels.test_heads import _prune
from tests.channels.test_stage import _oracle

D, HEADS, T = 12, 4, 6
DH = D // HEADS


def _dims(model):
    out = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in out.value_info}


@pytest.mark.parametrize("variant", ["paddle", "timm"])
@pytest.mark.parametrize("constants", [False, True], ids=["initializers", "constant_nodes"])
def test_fused_heads_equal_the_obs_oracle(variant, constants):
    dense = mha.fused_qkv(D, HEADS, T, variant=variant)
    model = graphs.as_constants(dense) if constants else dense
    (s,), _ = find_sites(model, find_layers(model)[0])
    assert (s.producer.weight, s.consumer.weight, s.channels, s.width) == ("qkv.w", "o.w",
                                                                          HEADS, DH)
    assert s.split.blocks == 3
    res, layers, data = _prune(model, 0.3)
    (row,) = res.rows
    assert 0 < row.removed < HEADS
    ref, _, (dW, H) = _oracle(dense, find_layers(dense)[0], data, row.removed_ids)
    feed = b.feeds(dense, 8, seed=7)
    np.testing.assert_allclose(b.run(res.model, feed)[0], b.run(ref, feed)[0],
                               rtol=1e-4, atol=1e-4)
    assert row.loss == pytest.approx(np.trace(dW @ H @ dW.T), rel=1e-4)
    kept = (HEADS - row.removed) * DH
    w = b.weights_of(res.model)
    assert w["qkv.w"].shape == (D, 3 * kept) and w["qkv.b"].shape == (3 * kept,)
    assert w["o.w"].shape == (kept, D)
    onnx.checker.check_model(res.model, full_check=True)
    onnx.shape_inference.infer_shapes(res.model, check_type=True, strict_mode=True)
    dims = _dims(res.model)
    assert dims["ctx.merged"][-1] == kept and dims["scores"][1] == HEADS - row.removed
    assert b.run(res.baseline, feed)[0].shape == (8, T, D)


def test_kept_heads_keep_their_query_key_and_value_columns():
    """The cut model's projection is the dense one's columns of the kept heads in each of
    the q, k and v blocks (the OBS update touches only Wo)."""
    model = mha.fused_qkv(D, HEADS, T, variant="timm")
    res, _, _ = _prune(model, 0.3)
    kept = np.setdiff1d(np.arange(HEADS), res.rows[0].removed_ids)
    cols = (np.arange(3)[:, None, None] * D + kept[None, :, None] * DH
            + np.arange(DH)[None, None, :]).reshape(-1)
    w0, w1 = b.weights_of(model), b.weights_of(res.model)
    np.testing.assert_array_equal(w1["qkv.w"], w0["qkv.w"][:, cols])
    np.testing.assert_array_equal(w1["qkv.b"], w0["qkv.b"][cols])


def test_fused_flops_saved_are_exact():
    model = mha.fused_qkv(D, HEADS, T, variant="paddle")
    layers = find_layers(model)[0]
    sites, _ = find_sites(model, layers)
    # per head: its q, k, v columns, Q Kᵀ and A @ V (T² dh each), its Wo rows
    assert sites[0].macs == 3 * D * DH * T + 2 * T * T * DH + DH * D * T
    res, _, _ = _prune(model, 0.3)
    cut = res.model
    assert layer_macs(model, layers) - layer_macs(cut, find_layers(cut)[0]) == \
        saved_macs(sites, [res.rows[0].removed])


def test_fused_variants_outside_the_pattern_are_refused():
    model = mha.fused_qkv(D, HEADS, T, variant="perm")
    sites, refused = find_sites(model, find_layers(model)[0])
    assert not sites and "Transpose [2, 0, 3, 1, 4]" in {r.weight: r.reason
                                                         for r in refused}["qkv.w"]
    model = mha.fused(D, HEADS, T)  # Split before the Reshapes: still refused
    sites, refused = find_sites(model, find_layers(model)[0])
    assert not sites and "Split" in {r.weight: r.reason for r in refused}["qkv.w"]


def test_obs_beats_the_norm_baseline_on_fused_heads():
    model = mha.fused_qkv(32, 8, 8, seed=3, variant="timm")
    res, _, _ = _prune(model, 0.4, n=128)
    (row,) = res.rows
    assert row.removed >= 3 and row.loss < 0.5 * row.norm_loss, (row.loss, row.norm_loss)
    feed = b.feeds(model, 128, seed=1)
    y = b.run(model, feed)[0]
    err = [np.linalg.norm(b.run(m, feed)[0] - y) for m in (res.model, res.baseline)]
    assert err[0] < 0.8 * err[1], err


def test_sequential_finds_the_fused_site_again():
    """After a cut the Reshape's head count is a new constant behind the Cast: the site is
    found again, and --sequential removes the one-shot counts."""
    from onnx_obc.backend import get_backend
    from onnx_obc.calib import DataSet
    from onnx_obc.channels import prune_channels_sequential

    model = graphs.as_constants(mha.fused_qkv(D, HEADS, T, variant="paddle"))
    one, layers, _ = _prune(model, 0.5)
    (s,), _ = find_sites(one.model, find_layers(one.model)[0])
    assert s.channels == HEADS - one.rows[0].removed and s.split.blocks == 3
    data = DataSet(b.feeds(model, 96, seed=1), "feeds")
    res = prune_channels_sequential(model, layers, data, 32, get_backend("cpu"), 0.5, 0.01,
                                    2048)
    assert [r.removed for r in res.rows] == [r.removed for r in one.rows]
    assert res.macs[1] == one.macs[1]
