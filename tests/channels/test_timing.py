"""The latency budget (channels/timing.py, --channel-budget latency): the per-site subgraphs
are cut and timed at a few counts (here by an injected deterministic timer), the DP then
saves the asked fraction of the model's latency by those curves, and the FLOP budget is
left exactly as it was (no timing, same counts, no latency entry)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from onnx_obc.backend import get_backend
from onnx_obc.calib import DataSet
from onnx_obc.channels import cut_channels, plan_channels, timing
from onnx_obc.channels.stage import counts_for
from onnx_obc.config import CompressConfig
from onnx_obc.errors import ConfigError
from onnx_obc.layers import find_layers
from tests import builders as b
from tests.channels import graphs, mha


def _weights(m, name: str) -> int:
    return sum(numpy_helper.to_array(t).size for t in m.graph.initializer if t.name == name)


def _fake(weights: dict[str, float]):
    """A deterministic timer: each model costs 1 + sum of weight sizes x per-weight rate."""
    def timer(models, feed):
        assert feed  # the subgraph's inputs were captured
        return [1.0 + sum(r * _weights(m, w) for w, r in weights.items()) for m in models]
    return timer


def _plan(model, n=64):
    layers = find_layers(model)[0]
    data = DataSet(b.feeds(model, n, seed=1), "feeds")
    return plan_channels(model, layers, data, 32, get_backend("cpu"), 0.01, 2048)


def test_table_is_the_timer_on_each_cut_subgraph():
    """conv_bn_relu_conv (8 mid channels): the site's subgraph loses 9 * (3 + 5) weights
    per channel, so the fake saving is linear in k, exact at the timed counts."""
    plan = _plan(graphs.conv_bn_relu_conv())
    tab = timing.latency_table(plan, 1, _fake({"p.w": 1.0, "c.w": 1.0}))
    (ks, saved), = tab.points
    assert ks == tuple(timing.counts_to_time(8, 1)) and ks[0] == 0 and ks[-1] == 7
    assert saved == pytest.approx([9 * (3 + 5) * k for k in ks])
    assert tab.curves[0] == pytest.approx(9 * 8 * np.arange(8))
    assert tab.model == 1.0 + 8 * 3 * 9 + 5 * 8 * 9 and not tab.note


@pytest.mark.parametrize("build", [graphs.attention, mha.mha,
                                   lambda: graphs.as_constants(mha.fused_qkv(variant="paddle"))],
                         ids=["value_channels", "heads", "fused_paddle_heads"])
def test_head_sites_are_cut_and_timed(build):
    """Whole heads: the subgraph holds the query/key projections and the shape nodes the
    cut rewrites (paddle2onnx's Cast of a Constant into the Reshape's Concat)."""
    plan = _plan(build())
    (s,) = plan.solved
    tab = timing.latency_table(plan, 1, _fake({s.site.consumer.weight: 1.0}))
    (ks, saved), = tab.points
    assert not tab.note and len(ks) > 1  # shrunk and run at every count
    rows = _weights(plan.proto, s.site.consumer.weight) // s.site.channels
    assert saved == pytest.approx([rows * k for k in ks])


def test_dp_meets_the_latency_budget_where_flops_mislead():
    """chain 8 -> 16 -> 12 -> 4: the fake timer charges w2 (the second site's consumer) 50x
    per weight, so the latency saving lies in the second site although the FLOPs lie in
    the first; the DP reaches 30% of the model's time by the curves, the FLOP DP does not."""
    model = graphs.chain((8, 16, 12, 4))
    plan = _plan(model)
    timer = _fake({"w0": 1.0, "w1": 1.0, "w2": 50.0})
    plan.latency = timing.latency_table(plan, 1, timer)
    counts, notes = counts_for(plan, 0.3, 1, "dp", "layer", "latency")
    goal = 0.3 * plan.latency.model
    assert timing.predicted(plan.latency, counts, plan.sites) >= goal and not notes
    flops, _ = counts_for(plan, 0.3, 1, "dp", "layer")
    assert timing.predicted(plan.latency, flops) < goal
    res = cut_channels(plan, 0.3, 1, "dp", "layer", "latency")
    assert [r.removed for r in res.rows] == counts
    lat = res.to_dict()["latency"]
    assert lat["predicted_saved_ms"] == pytest.approx(
        1e3 * timing.predicted(plan.latency, counts, plan.sites))
    assert lat["measured_dense_ms"] > 0 and lat["measured_cut_ms"] > 0  # real ORT: noisy
    from types import SimpleNamespace

    from onnx_obc.report import _channel_lines

    (line,) = [x for x in _channel_lines(SimpleNamespace(channels=res.to_dict()))
               if x.startswith("latency")]
    assert f"predicted {lat['predicted_saved_ms']:.3g} ms saved" in line and "measured" in line


def test_flops_budget_is_untouched(monkeypatch):
    """The default budget times nothing and gives the same counts, rows and report."""
    def boom(*a, **k):
        raise AssertionError("the FLOP budget must not time anything")

    model = graphs.chain((8, 16, 12, 4))
    plan = _plan(model)
    monkeypatch.setattr(timing, "latency_table", boom)
    monkeypatch.setattr("onnx_obc.channels.stage.latency_report", boom)
    a = cut_channels(plan, 0.3, 1, "dp", "layer")
    c = cut_channels(plan, 0.3, 1, "dp", "layer", "flops")
    assert a.to_dict() == c.to_dict() and "latency" not in a.to_dict()
    assert plan.latency is None


def test_latency_budget_config_is_validated():
    with pytest.raises(ConfigError, match="channel_budget"):
        CompressConfig.from_options(channels=0.3, channel_budget="time")
    with pytest.raises(ConfigError, match="channel_budget"):
        CompressConfig.from_options(sparsity=0.5, channel_budget="latency")
    with pytest.raises(ConfigError, match="channel_budget"):
        CompressConfig.from_options(channels=0.3, channel_budget="latency",
                                    channel_allocate="greedy")
    assert CompressConfig.from_options(channels=0.3).prune.channel_budget == "flops"


def test_a_layer_cut_on_both_sides_is_counted_once():
    """chain: fc1 is the consumer of site 0 and the producer of site 1, so both subgraphs
    time it; the prediction takes off its FLOP share of site 0's saving, as
    flops.saved_macs takes the (row, column) pairs off the FLOPs."""
    from onnx_obc.channels.patterns import saved_macs

    plan = _plan(graphs.chain((8, 16, 12, 4)))
    tab = timing.latency_table(plan, 1, _fake({"w0": 1.0, "w1": 1.0, "w2": 1.0}))
    sites = plan.sites
    for counts in ([4, 3], [10, 6], [0, 5], [7, 0]):
        overlap = sum(k * s.macs for s, k in zip(sites, counts)) - saved_macs(sites, counts)
        share = overlap / (counts[0] * sites[0].macs) if counts[0] else 0.0
        assert timing.predicted(tab, counts, sites) == pytest.approx(
            timing.predicted(tab, counts) - share * tab.curves[0][counts[0]])
        assert (overlap > 0) == all(counts)


class _Sleeper:
    """A session whose run takes `ms` milliseconds of a fake clock (`now`, which the test puts
    in place of timing's perf_counter: no sleep, so no load can stretch it) and counts its
    runs."""

    now = 0.0

    def __init__(self, ms: float) -> None:
        self.ms, self.runs = ms, 0

    def run(self, names, feed):
        self.runs += 1
        _Sleeper.now += self.ms / 1e3


def test_a_block_is_the_runs_that_fill_it(monkeypatch) -> None:
    """ort_timer's `block`: a round runs a model back to back for about that long (one run
    timed to size it), at least once; without a block, once."""
    from types import SimpleNamespace

    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: _Sleeper.now))
    s = _Sleeper(2.0)
    assert timing._block_runs(s, {}, 0.02) == 10 and s.runs == 1  # 10 runs of 2 ms
    assert timing._block_runs(_Sleeper(30.0), {}, 0.02) == 1
    assert timing._block_runs(s, {}, 0.0) == 1 and s.runs == 1  # no block: nothing timed


def test_the_timer_in_blocks_times_real_sessions() -> None:
    """Real onnxruntime sessions in blocks: medians of the per-run means, one per model."""
    m = b.mlp()
    t = timing.ort_timer(None, rounds=3, seconds=0.0, block=0.005)([m, m], b.feeds(m, 1))
    assert len(t) == 2 and all(0 < x < 0.005 for x in t)


def test_a_model_with_a_table_kept_on_disk_is_timed(tmp_path):
    """A loaded model whose Gather table stays in the input's data file (diskdata.py) is
    timed: its session gets the kept tensor (before, onnxruntime refused the bytes: "External
    data path ... escapes working directory", and the report said "latency not measured";
    every dynamo export of a transformer keeps its embeddings so)."""
    from onnx_obc import diskdata, modelio
    from onnx_obc.channels.timing import ort_timer
    from tests.test_diskdata import table_model

    path, feed = table_model(tmp_path)
    m = modelio.load_model(path)
    assert [t.name for t in diskdata.kept(m)] == ["table"]
    (t,) = ort_timer(None, 2, 0.0)([m], feed(1))
    assert t > 0
