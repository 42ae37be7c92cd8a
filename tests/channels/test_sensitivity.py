"""The output objective of the channel allocation (channels/sensitivity.py): a site's factor
is exactly 1 where its consumer's output is the model output, unit factors reduce to the
layer objective, and a downstream amplifier moves the cut to the other site."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnx_obc.backend import get_backend
from onnx_obc.calib import DataSet
from onnx_obc.channels.allocate import loss_curve
from onnx_obc.channels.sensitivity import SAMPLES, _run, probe_counts, scaled_trace
from onnx_obc.channels.stage import counts_for, cut_channels, plan_channels
from onnx_obc.config import CompressConfig
from onnx_obc.errors import ConfigError
from onnx_obc.layers import find_layers
from onnx_obc.solvers.channels import ChannelTrace
from tests import builders as b
from tests.channels import graphs


def _plan(model, n, fraction=0.3, damp=1e-9):
    data = DataSet(b.feeds(model, n, seed=1), "feeds")
    return plan_channels(model, find_layers(model)[0], data, n, get_backend("cpu"), damp,
                         2048, fraction=fraction)


def _branches(d: int = 8, hidden: int = 16, gain: float = 1000.0, seed: int = 0):
    """x -> fa0 -> Relu -> fa1 -> Mul(gain, per channel) and x -> fb0 -> Relu -> fb1, added:
    branch a's hidden channels are near-duplicate pairs (cheap for its consumer fa1), but its
    output is amplified, so its error dominates the model's output error."""
    rng = np.random.default_rng(seed)
    half = rng.standard_normal((d, hidden // 2)) / np.sqrt(d)
    wa0 = np.concatenate([half, half + 0.05 * rng.standard_normal(half.shape)], axis=1)
    arrs = {"wa0": wa0, "wa1": rng.standard_normal((hidden, 4)) / 4,
            "wb0": rng.standard_normal((d, hidden)) / np.sqrt(d),
            "wb1": rng.standard_normal((hidden, 4)) / 4,
            "amp": gain * (1 + rng.random(4))}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrs.items()]
    nodes = [helper.make_node("MatMul", ["x", "wa0"], ["ha"], name="fa0"),
             helper.make_node("Relu", ["ha"], ["ra"], name="acta"),
             helper.make_node("MatMul", ["ra", "wa1"], ["ya"], name="fa1"),
             helper.make_node("Mul", ["ya", "amp"], ["za"], name="amplify"),
             helper.make_node("MatMul", ["x", "wb0"], ["hb"], name="fb0"),
             helper.make_node("Relu", ["hb"], ["rb"], name="actb"),
             helper.make_node("MatMul", ["rb", "wb1"], ["yb"], name="fb1"),
             helper.make_node("Add", ["za", "yb"], ["y"], name="sum")]
    return b.make(nodes, [b.vi("x", ["N", d])], [b.vi("y", ["N", 4])], inits)


def test_factor_is_one_where_the_consumer_output_is_the_model_output():
    model = graphs.chain(dims=(8, 12, 4))  # fc0 -> Relu -> fc1 (the graph output, no bias)
    plan = _plan(model, SAMPLES)  # the factors' samples are the Hessian's samples
    counts_for(plan, 0.3, 1, "dp", "output")
    ((ks, gains),) = plan.probes
    assert len(ks) == 2 and ks[0] >= 1
    s = plan.solved[0]
    assert loss_curve(s.trace, s.energy)[int(ks[0])] > 1e-4  # measured, not the ~0 default
    np.testing.assert_allclose(gains, 1.0, rtol=1e-3)


def test_unit_factors_reduce_to_the_layer_objective():
    rng = np.random.default_rng(0)
    t = ChannelTrace(np.arange(9), np.sort(rng.random(9)))
    probes = (np.array([3.0, 7.0]), np.ones(2))
    np.testing.assert_allclose(loss_curve(scaled_trace(t, 2.5, probes), 2.5),
                               loss_curve(t, 2.5), rtol=1e-12)
    g = (np.array([3.0, 7.0]), np.array([2.0, 4.0]))  # 2 up to k=3, 4 from k=7, linear between
    want = loss_curve(t, 2.5) * np.interp(np.arange(10), *g)
    np.testing.assert_allclose(loss_curve(scaled_trace(t, 2.5, g), 2.5),
                               np.maximum.accumulate(want), rtol=1e-12)
    model = _branches(gain=1.0)
    plan = _plan(model, 64, damp=0.01)
    plan.probes = [(np.zeros(1), np.ones(1))] * len(plan.solved)
    assert (counts_for(plan, 0.25, 1, "dp", "output")
            == counts_for(plan, 0.25, 1, "dp", "layer"))


def test_probe_counts_are_allowed_and_inside_the_trace():
    assert probe_counts(10, 16, 1) == [5, 10]
    assert probe_counts(9, 16, 4) == [4, 8]  # keep 12 or 8 of 16
    assert probe_counts(1, 16, 8) == []  # no allowed count in the traced prefix


def test_a_downstream_amplifier_moves_the_cut_to_the_other_site():
    model = _branches()
    plan = _plan(model, 64, fraction=0.25, damp=0.01)
    names = [s.site.producer.name for s in plan.solved]
    assert sorted(names) == ["fa0", "fb0"]
    a, bb = names.index("fa0"), names.index("fb0")
    layer = cut_channels(plan, 0.25, 1, "dp", "layer")
    output = cut_channels(plan, 0.25, 1, "dp", "output")
    ka = [r.removed for r in layer.rows]
    ko = [r.removed for r in output.rows]
    assert ka[a] > ka[bb]  # the consumer losses favour the near-duplicate channels of a
    assert ko[bb] > ko[a]  # the amplified output moves the cut to b
    gains = [float(np.mean(p[1])) for p in plan.probes]
    assert gains[a] > 100 * gains[bb]
    feed = b.feeds(model, 128, seed=9)  # held out

    def err(m):
        (y,), (ref,) = _run(m, [feed]), _run(model, [feed])
        return np.linalg.norm(y - ref) / np.linalg.norm(ref)

    assert err(output.model) < 0.5 * err(layer.model)


def test_objective_is_validated():
    with pytest.raises(ConfigError, match="channel_objective"):
        CompressConfig.from_options(channels=0.3, channel_objective="fisher")
    with pytest.raises(ConfigError, match="channel_objective"):
        CompressConfig.from_options(sparsity=0.5, channel_objective="layer")
    assert CompressConfig.from_options(channels=0.3).prune.channel_objective == "output"
    assert CompressConfig.from_options(sparsity=0.5).prune.channel_objective == "output"
    plan = _plan(graphs.chain(dims=(8, 12, 4)), SAMPLES)
    with pytest.raises(ConfigError, match="objective"):
        counts_for(plan, 0.3, 1, "dp", "fisher")


def test_convert_with_the_output_objective_and_its_fallback():
    from onnx_obc import convert
    from onnx_obc.channels.sensitivity import site_factors

    model = _branches()
    r = convert(model, None, calib=[b.feeds(model, 64, seed=1)], channels=0.25,
                channel_objective="output", progress=False)
    rows = {x["producer"]: x["removed"] for x in r.report.channels["rows"]}
    assert rows["fb0"] > rows["fa0"]
    plan = _plan(model, 64)
    plan.data = None  # no samples: every factor 1, the layer objective
    probes, _, why = site_factors(plan, 1)
    assert all(np.all(g == 1.0) for _, g in probes)
    assert "fell back to the layer objective" in why and "no calibration samples" in why
    from onnx_obc.channels.stage import counts_for

    _, warnings = counts_for(plan, 0.25, 1, "dp", "output")
    assert any("fell back to the layer objective" in w for w in warnings)


@pytest.mark.parametrize("build", [graphs.conv_bn_relu_conv, graphs.depthwise_block,
                                   graphs.attention, graphs.mlp_gelu],
                         ids=lambda f: f.__name__)
def test_zeroed_columns_compute_what_the_shrunk_model_does(build):
    from onnx_obc.channels.sensitivity import _with_weight
    from onnx_obc.export.shrink import shrink
    from onnx_obc.solvers.channels import obs_update

    model = build()
    plan = _plan(model, 64, damp=0.01)
    s = plan.solved[0]
    k = probe_counts(len(s.trace.losses), s.site.channels, 1)[0]
    removed = s.trace.order[:k]
    W = obs_update(s.W, s.Hinv, s.site.width, removed)
    new = s.site.consumer.from_matrix(np.asarray(W)[None])
    cut = shrink(model, [s.site], [np.setdiff1d(np.arange(s.site.channels), removed)],
                 {s.site.consumer.weight: new})
    feed = b.feeds(model, 8, seed=5)
    np.testing.assert_allclose(_run(_with_weight(model, s.site.consumer.weight, new), [feed]),
                               _run(cut, [feed]), rtol=1e-4, atol=1e-5)
