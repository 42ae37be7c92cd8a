"""GPT-2's Conv1D layout (channels/flat.py): token rows flattened around each Gemm. The
Reshapes that keep the channels last pass a site, the constant width entry is rewritten and
the one read at run time follows by itself; the cut equals the OBS oracle; the FLOPs count
each token; a width read for anything else is refused."""

from __future__ import annotations

import numpy as np
import onnx

from onnx_obc.backend import get_backend
from onnx_obc.calib import DataSet
from onnx_obc.channels import find_sites, layer_macs, prune_channels
from onnx_obc.channels.probe import probe_sizes
from onnx_obc.layers import find_layers
from tests import builders as b
from tests.channels import graphs
from tests.channels.test_stage import DAMP, _oracle

D, HIDDEN, T = 8, 16, 4


def _sites(model):
    return find_sites(model, find_layers(model)[0], probe_sizes(model, b.feeds(model, 2))[0])


def test_the_site_through_the_flattening_reshapes():
    model = graphs.conv1d_mlp(D, HIDDEN, T)
    (s,), refused = _sites(model)
    assert (s.producer.weight, s.consumer.weight, s.channels) == ("fc.w", "proj.w", HIDDEN)
    assert s.macs == (D + D) * T  # a channel's fc column and proj row, on each of T tokens
    assert s.shapes == (("fc.shape", 2, (HIDDEN,), 0, 1),)  # proj.flat reads its own width
    layers = find_layers(model)[0]
    sizes = probe_sizes(model, b.feeds(model, 2))[0]
    assert layer_macs(model, layers, sizes=sizes) == 2 * D * HIDDEN * T


def test_the_cut_equals_the_obs_oracle_and_the_shapes_follow():
    model = graphs.conv1d_mlp(D, HIDDEN, T)
    layers = find_layers(model)[0]
    data = DataSet(b.feeds(model, 96, seed=1), "feeds")
    res = prune_channels(model, layers, data, 32, get_backend("cpu"), 0.3, DAMP, 2048)
    (row,) = res.rows
    assert 0 < row.removed < HIDDEN
    ref, _, (dW, H) = _oracle(model, layers, data, row.removed_ids, _sites(model)[0][0])
    feed = b.feeds(model, 8, seed=7)
    np.testing.assert_allclose(b.run(res.model, feed)[0], b.run(ref, feed)[0],
                               rtol=1e-4, atol=1e-4)
    kept = HIDDEN - row.removed
    w = b.weights_of(res.model)
    assert w["fc.w"].shape == (D, kept) and w["fc.b"].shape == (kept,)
    assert w["proj.w"].shape == (kept, D)
    m = onnx.ModelProto()
    m.CopyFrom(res.model)
    m.graph.output.extend([b.vi("h1", None), b.vi("af", None)])
    shapes = [list(y.shape) for y in b.run(m, feed)]
    assert shapes[1:] == [[8, T, kept], [8 * T, kept]]  # both Reshapes carry the kept width
    onnx.checker.check_model(res.model, full_check=True)


def test_a_width_read_for_anything_else_is_refused():
    model = graphs.conv1d_mlp(D, HIDDEN, T, shared=True)
    sites, refused = _sites(model)
    assert not sites
    assert "read at run time by Shape" in {r.weight: r.reason for r in refused}["fc.w"]


def test_rows_flattened_before_a_layernorm_count_each_token():
    """OPT flattens its residual stream to [B·T, d] once per block, and the MLP's Gemms read
    it through the LayerNorm (and fc2 through fc1 and the act): each Gemm's MACs count T
    tokens a sample, not one row (before: one, so its MLP was 1/T of the FLOPs)."""
    from onnx import helper, numpy_helper

    n = helper.make_node
    inits = [b.weight("fc1.w", (D, HIDDEN), 0), b.weight("fc2.w", (HIDDEN, D), 1),
             numpy_helper.from_array(np.ones(D, np.float32), "ln.g"),
             numpy_helper.from_array(np.zeros(D, np.float32), "ln.b"),
             numpy_helper.from_array(np.array([-1, D], np.int64), "flat")]
    nodes = [n("Shape", ["x"], ["xs"], name="xs"),
             n("Reshape", ["x", "flat"], ["xf"], name="flatten"),
             n("LayerNormalization", ["xf", "ln.g", "ln.b"], ["ln"], name="ln", axis=-1),
             n("Gemm", ["ln", "fc1.w"], ["h"], name="fc1"),
             n("Relu", ["h"], ["r"], name="act"),
             n("Gemm", ["r", "fc2.w"], ["o"], name="fc2"),
             n("Reshape", ["o", "xs"], ["y"], name="back")]
    model = b.make(nodes, [b.vi("x", ["N", "T", D])], [b.vi("y", ["N", "T", D])], inits)
    feed = {"x": np.random.default_rng(0).standard_normal((2, T, D)).astype(np.float32)}
    sizes = probe_sizes(model, feed)[0]
    layers = find_layers(model)[0]
    assert layer_macs(model, layers, sizes=sizes) == 2 * D * HIDDEN * T
    (s,), _ = find_sites(model, layers, sizes)
    assert s.macs == (D + D) * T
