"""Whole attention heads (channels/heads.py): the shrunk model equals the dense model with
the heads' Wo columns removed by group OBS (numpy oracle), every tensor and Reshape shrinks,
strict shape inference and onnxruntime pass, the FLOPs saved (attention MatMuls included)
are exact, the variants outside the standard pattern are refused with their reason, and
OBS beats the L2-norm head baseline on correlated activations."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_obc.backend import get_backend
from onnx_obc.calib import DataSet
from onnx_obc.channels import find_sites, layer_macs, prune_channels, prune_channels_sequential
from onnx_obc.channels.patterns import saved_macs
from onnx_obc.channels.probe import probe_sizes
from onnx_obc.layers import find_layers
from tests import builders as b
from tests.channels import mha
from tests.channels.test_stage import DAMP, _oracle

D, HEADS, T = 12, 4, 6
DH = D // HEADS


def _prune(model, fraction, n=96, seed=1, allocate="dp"):
    layers = find_layers(model)[0]
    data = DataSet(b.feeds(model, n, seed=seed), "feeds")
    return prune_channels(model, layers, data, 32, get_backend("cpu"), fraction, DAMP, 2048,
                          allocate=allocate), layers, data


VARIANTS = ["bert", "hf", "torch", "sdpa", "const", "hfmask", "sdpa_hf", "hf_cast",
            "paddle_softmax", "dynamo"]


def _model(variant):
    """mha's graph; "dynamo" folded first (its kᵀ triple is one Transpose there, as in a
    run: the fold stage comes before the channel stage)."""
    from onnx_obc.fold import fold

    model = mha.mha(D, HEADS, T, variant=variant)
    return fold(model)[0] if variant == "dynamo" else model


def _sites(model):
    """find_sites with the sizes the stage probes (sdpa_hf's mask and merge need them)."""
    return find_sites(model, find_layers(model)[0], probe_sizes(model, b.feeds(model, 2))[0])


@pytest.mark.parametrize("variant", VARIANTS)
def test_head_site_and_query_key_reasons(variant):
    model = _model(variant)
    sites, refused = _sites(model)
    (s,) = sites
    assert (s.producer.weight, s.consumer.weight) == ("v.w", "o.w")
    assert (s.channels, s.width, s.unit) == (HEADS, DH, DH)
    # per head: Q, K, V columns, the scores and A @ V (T^2 dh each), Wo rows
    assert s.macs == 3 * D * DH * T + 2 * T * T * DH + DH * D * T
    reasons = {r.weight: r.reason for r in refused}
    assert "query/key" in reasons["q.w"] and "query/key" in reasons["k.w"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_pruned_heads_equal_the_obs_oracle(variant):
    model = _model(variant)
    res, layers, data = _prune(model, 0.3)
    (row,) = res.rows
    assert 0 < row.removed < HEADS and row.unit == DH
    ref, site, (dW, H) = _oracle(model, layers, data, row.removed_ids, _sites(model)[0][0])
    feed = b.feeds(model, 8, seed=7)
    np.testing.assert_allclose(b.run(res.model, feed)[0], b.run(ref, feed)[0],
                               rtol=1e-4, atol=1e-4)
    # the removal losses sum to the consumer's loss tr(dW H dW^T)
    assert row.loss == pytest.approx(np.trace(dW @ H @ dW.T), rel=1e-4)
    kept = (HEADS - row.removed) * DH
    w = b.weights_of(res.model)
    for p in "qkv":
        assert w[f"{p}.w"].shape == (D, kept) and w[f"{p}.b"].shape == (kept,)
    assert w["o.w"].shape == (kept, D) and w["o.b"].shape == (D,)
    out = onnx.shape_inference.infer_shapes(res.model, check_type=True, strict_mode=True)
    onnx.checker.check_model(out, full_check=True)
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in onnx.shape_inference.infer_shapes(res.model, data_prop=True).graph.value_info}
    if variant in ("sdpa_hf", "dynamo"):  # -1 head counts: the sizes at run time
        m = onnx.ModelProto()
        m.CopyFrom(res.model)
        m.graph.output.extend(b.vi(t, None) for t in ("q.heads", "k.heads", "v.heads",
                                                        "ctx.merged"))
        dims = dict(zip(["y", "q.heads", "k.heads", "v.heads", "ctx.merged"],
                        [list(y.shape) for y in b.run(m, feed)]))
    for p in "qkv":  # the Reshapes split the kept heads
        assert dims[f"{p}.heads"][1:] == [T, HEADS - row.removed, DH]
    assert dims["ctx.merged"][1:] == [T, kept]
    assert b.run(res.baseline, feed)[0].shape == (8, T, D)


def test_flops_saved_are_exact_with_an_overlapping_site():
    """Wo is the consumer of the head site and the producer of an MLP site: the measured
    drop in layer + attention MACs equals saved_macs."""
    model = mha.mha(D, HEADS, T, mlp=True)
    layers = find_layers(model)[0]
    sites, _ = find_sites(model, layers)
    assert len(sites) == 2
    res, _, _ = _prune(model, 0.5)
    counts = [r.removed for r in res.rows]
    assert all(counts) and res.macs[1] <= 0.5 * res.macs[0]
    cut = res.model
    assert layer_macs(model, layers) - layer_macs(cut, find_layers(cut)[0]) == \
        saved_macs(sites, counts)
    assert res.macs[0] > layer_macs(model, layers, attention=False)  # attention counted


@pytest.mark.parametrize("variant, reason", [
    ("dynamic", "read at run time"),
    ("bias", "differs per head"),
    ("perm", "transposed by"),
    ("runtime_merge", "head count read at run time"),
])
def test_ambiguous_variants_are_refused_with_their_reason(variant, reason):
    model = _model(variant)
    sites, refused = find_sites(model, find_layers(model)[0])
    assert not sites
    assert reason in {r.weight: r.reason for r in refused}["v.w"]


def test_attention_weights_read_beside_their_nan_guard_or_casts_are_refused():
    model = mha.mha(D, HEADS, T, variant="sdpa_hf")
    model.graph.output.append(b.vi("probs", None))  # the Softmax's output read elsewhere too
    sites, refused = _sites(model)
    assert not sites and "beside their NaN guard" in {r.weight: r.reason
                                                      for r in refused}["v.w"]
    model = mha.mha(D, HEADS, T, variant="hf_cast")
    model.graph.output.append(b.vi("probs.f32", None))  # between the Casts
    assert "beside their NaN guard / Casts" in {r.weight: r.reason
                                                for r in _sites(model)[1]}["v.w"]


def test_fused_qkv_is_refused():
    model = mha.fused(D, HEADS, T)
    sites, refused = find_sites(model, find_layers(model)[0])
    assert not sites and "Split" in {r.weight: r.reason for r in refused}["qkv.w"]


def test_obs_beats_the_norm_head_baseline():
    """Same heads count, correlated activations: the OBS-updated Wo loses far less than
    removing the heads with the smallest V rows (no update), and so does the output."""
    model = mha.mha(32, 8, 8, seed=3)
    res, _, data = _prune(model, 0.4, n=128)
    (row,) = res.rows
    assert row.removed >= 3
    assert row.loss < 0.5 * row.norm_loss, (row.loss, row.norm_loss)
    feed = b.feeds(model, 128, seed=1)  # the calibration distribution
    y = b.run(model, feed)[0]
    err = [np.linalg.norm(b.run(m, feed)[0] - y) for m in (res.model, res.baseline)]
    assert err[0] < 0.8 * err[1], err


@pytest.mark.parametrize("variant", ["bert", "sdpa_hf"])  # sdpa_hf: found on probed sizes
def test_sequential_finds_the_head_site_again(variant):
    model = mha.mha(D, HEADS, T, mlp=True, variant=variant)
    layers = find_layers(model)[0]
    data = DataSet(b.feeds(model, 96, seed=1), "feeds")
    res = prune_channels_sequential(model, layers, data, 32, get_backend("cpu"), 0.5, DAMP,
                                    2048)
    one, _, _ = _prune(model, 0.5)
    assert [r.removed for r in res.rows] == [r.removed for r in one.rows]
    assert res.macs[1] == one.macs[1]


@pytest.mark.parametrize("allocate", ["dp", "greedy", "uniform"])
def test_every_allocation_takes_heads_whatever_the_align(allocate):
    """--channel-align applies to channels, not heads (each already dh of them): align 4
    would leave no count of the 4 heads to remove but 0."""
    model = mha.mha(D, HEADS, T, mlp=True)
    layers = find_layers(model)[0]
    data = DataSet(b.feeds(model, 96, seed=1), "feeds")
    res = prune_channels(model, layers, data, 32, get_backend("cpu"), 0.4, DAMP, 2048,
                         align=4, allocate=allocate)
    heads = [r for r in res.rows if r.unit > 1]
    assert heads and res.macs[1] <= 0.6 * res.macs[0]
    assert all((r.channels - r.removed) % 4 == 0 for r in res.rows if r.unit == 1)


def test_convert_reports_heads_then_quantizes():
    from onnx_obc import convert

    r = convert(mha.mha(D, HEADS, T, variant="hf"), None, channels=0.3, bits=8,
                progress=False)
    (row,) = r.report.channels["rows"]
    assert row["unit"] == DH and row["removed"] > 0
    assert f"/{HEADS}h" in r.report.table()
    assert r.report.layers and all(x.bits == 8 for x in r.report.layers)


def test_allowzero_is_refused_only_beside_a_0_entry():
    """allowzero=1 (dynamo) changes a Reshape only where its shape has a 0: the "bert"
    shapes [0, 0, H, dh] copy B and T with 0, so with allowzero=1 they are refused, with
    that reason; the "dynamo" variant (sizes read at run time, no 0) keeps its site."""
    model = mha.mha(D, HEADS, T, variant="bert")
    for n in model.graph.node:
        if n.op_type == "Reshape":
            n.attribute.extend([onnx.helper.make_attribute("allowzero", 1)])
    sites, refused = _sites(model)
    assert not [s for s in sites if s.consumer.weight == "o.w"]
    assert any("allowzero=1 and a 0 entry" in r.reason for r in refused)
    assert [s.consumer.weight for s in _sites(_model("dynamo"))[0]] \
        == ["o.w"]
