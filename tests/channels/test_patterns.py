"""Pattern finding: which producer -> consumer sites can lose channels, and why the others
stay (one reason per refused producer)."""

from __future__ import annotations

import pytest

from onnx_obc.channels import find_sites
from onnx_obc.layers import find_layers
from tests.channels import graphs


def _find(model):
    return find_sites(model, find_layers(model)[0])


def test_conv_bn_relu_conv():
    sites, refused = _find(graphs.conv_bn_relu_conv())
    (s,) = sites
    assert (s.producer.weight, s.consumer.weight, s.channels, s.width) == ("p.w", "c.w", 8, 9)
    assert s.path == ("bn", "relu")
    assert sorted(n for n, _ in s.sliced) == ["bn.b", "bn.m", "bn.s", "bn.v", "p.b"]
    assert [r.producer for r in refused] == ["cons"]
    assert "graph output" in refused[0].reason


def test_a_shared_broadcast_bound_passes():
    """Max(., c) with c [1, 1, 1, 1] is per channel; c broadcasts, so nothing is cut and
    its other reader does not matter (a per-channel constant shared would stop the cut)."""
    (s,), _ = _find(graphs.conv_leaky_max_conv())
    assert s.path == ("leaky", "max") and dict(s.sliced) == {"p.b": 0}
    sites, refused = _find(graphs.conv_leaky_max_conv(per_channel=True))
    assert not sites
    assert "'floor' is shared with other nodes" in {r.weight: r.reason for r in refused}["p.w"]


def test_depthwise_between_is_cut_with_its_group():
    (s,), _ = _find(graphs.depthwise_block())
    assert s.grouped == ("dw",) and s.width == 1
    cut = dict(s.sliced)
    assert cut == {"slope": 0, "dw.w": 0, "dw.b": 0, "s": 1}  # Clip bounds are scalars


def test_a_same_pad_computed_from_shape_keeps_the_channels():
    """Pads evaluated from the sizes Shape reads: none on the channel axis, so the channels
    go through the Pad (and its Shape reads only H); pads from a graph input cannot be
    evaluated and stop the cut with that reason."""
    (s,), _ = _find(graphs.same_pad_block())
    assert s.path == ("relu6", "pad", "dw", "clip") and s.grouped == ("dw",)
    sites, refused = _find(graphs.same_pad_block(pads_input=True))
    assert not sites and "its pads read 'pads'" in refused[0].reason


def test_constant_pads_from_the_fold_keep_the_channels_and_padded_channels_stop_them():
    """The fold makes the run-time pads a constant (fixed 5 x 5): read as they are (the
    evaluation had nothing to run on and refused every such Pad, so EfficientNet-Lite0 had
    2 sites where it has 16); constant pads on the channel axis stop the cut."""
    import numpy as np
    from onnx import numpy_helper

    from onnx_obc.fold import fold

    folded, done = fold(graphs.same_pad_block())
    assert done.shapes and not [n for n in folded.graph.node if n.op_type == "Shape"]
    (s,), _ = _find(folded)
    assert s.path == ("relu6", "pad", "dw", "clip")
    pads = next(n.input[1] for n in folded.graph.node if n.op_type == "Pad")
    t = next(t for t in folded.graph.initializer if t.name == pads)
    t.CopyFrom(numpy_helper.from_array(np.array([0, 1, 1, 1, 0, 0, 1, 1], np.int64), pads))
    sites, refused = _find(folded)
    assert not sites and "pads the channel axis" in refused[0].reason


def test_gated_activation_is_per_channel():
    """x * Sigmoid(x): the producer's output feeds two nodes, both per channel."""
    (s,), _ = _find(graphs.conv_silu_conv())
    assert s.path == ("sig", "silu") and s.width == 1 and s.channels == 8


def test_erf_gelu_is_one_per_channel_region():
    """GELU as five elementwise nodes reading the producer's output twice: one region; when
    an inner tensor leaks (a graph output) the channels stay."""
    (s,), _ = _find(graphs.mlp_gelu())
    assert s.path == ("bias1", "gelu.h", "gelu.s", "gelu.erf", "gelu.p", "gelu")
    sites, refused = _find(graphs.mlp_gelu(leak=True))
    assert not sites and "feeds 2 nodes" in {r.weight: r.reason for r in refused}["fc1.w"]


def test_attention_value_channels_and_why_query_key_stay():
    sites, refused = _find(graphs.attention())
    (s,) = sites
    assert (s.producer.weight, s.consumer.weight, s.path) == ("v.w", "o.w", ("v.add", "mix"))
    why = {r.producer: r.reason for r in refused}
    assert "query/key" in why["q"] and "query/key" in why["k"]
    assert "graph output" in why["out"]


@pytest.mark.parametrize("build", [graphs.transformer_mlp, graphs.gemm_pair])
def test_linear_pairs(build):
    (s,), _ = _find(build())
    assert s.width == 1 and s.channels in (12, 16)
    assert len(s.sliced) == 1  # the producer's bias (Add constant or Gemm C)


@pytest.mark.parametrize("kind, words", [
    ("residual", "residual Add"), ("concat", "Concat"), ("reshape", "Reshape"),
    ("output", "graph output"), ("fanout", "feeds 2 nodes")])
def test_refused_patterns_name_their_reason(kind, words):
    sites, refused = _find(graphs.refused(kind))
    assert not sites
    by = {r.producer: r.reason for r in refused}
    assert words in by["prod"], by
    assert len(refused) == len(find_layers(graphs.refused(kind))[0])  # one per producer


def test_shipped_models():
    import onnx

    sites, refused = _find(onnx.load("models/digits_vit.onnx"))
    assert [(s.producer.name, s.consumer.name) for s in sites] == [("attn.v", "attn.out"),
                                                                   ("mlp.fc1", "mlp.fc2")]
    reasons = {r.producer: r.reason for r in refused}
    assert "attention" in reasons["attn.q"] and "residual" in reasons["mlp.fc2"]
    sites, refused = _find(onnx.load("models/digits_cnn.onnx"))
    assert {(s.producer.name, s.consumer.name) for s in sites} == {
        ("block1", "block2"), ("expand", "fc")}
    assert {r.producer for r in refused} == {"stem", "block2", "down", "fc"}


def test_saved_macs_is_exact_on_a_chain():
    """Two chained sites (the middle layer loses rows and columns): saved_macs equals the
    layer FLOPs measured on the cut model."""
    import numpy as np

    from onnx_obc.channels.patterns import layer_macs, saved_macs
    from onnx_obc.export.shrink import shrink
    model = graphs.chain((8, 12, 10, 4))
    layers = find_layers(model)[0]
    sites, _ = find_sites(model, layers)
    assert len(sites) == 2
    counts = [5, 3]
    cut = shrink(model, sites, [np.arange(k, s.channels) for s, k in zip(sites, counts)])
    after = layer_macs(cut, find_layers(cut)[0])
    assert layer_macs(model, layers) - after == saved_macs(sites, counts)


def test_a_single_channel_producer_says_there_is_nothing_to_remove():
    """A 1-channel Conv with its bias [1] before a consumer (a DBNet head's last up-sampler
    feeds a 1-channel map): not "'B' [1] has no channel axis of size 1"."""
    model = graphs.conv_bn_relu_conv(mid=1)
    sites, refused = find_sites(model, find_layers(model)[0])
    assert not sites
    assert {r.producer: r.reason for r in refused}["prod"] == (
        "a single output channel: nothing to remove")
