"""The output probes run from the cut before the nodes they change (channels/downstream.py):
the piece fed the dense crossing tensors gives the whole model's outputs, a skip branch
crossing the cut included; an early graph output keeps a site whole; the groups hold every
position once under any budget; the factors are those of whole runs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnx_obc.channels import sensitivity
from onnx_obc.channels.downstream import Cuts
from onnx_obc.channels.sensitivity import _run, _with_weight, sample_feeds
from onnx_obc.channels.stage import counts_for
from tests import builders as b
from tests.channels import graphs
from tests.channels.test_sensitivity import _branches, _plan


def _skip(d=6, seed=0, early=False):
    """x -> f0 -> Relu -> f1 -> Add(., h0) -> f2: the cut before f1 is crossed by h0 too
    (`early`: f0's output is a graph output as well)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((d, d)).astype(np.float32), f"w{i}")
             for i in range(3)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="f0"),
             helper.make_node("Relu", ["h0"], ["r0"], name="act"),
             helper.make_node("MatMul", ["r0", "w1"], ["h1"], name="f1"),
             helper.make_node("Add", ["h1", "h0"], ["s"], name="skip"),
             helper.make_node("MatMul", ["s", "w2"], ["y"], name="f2")]
    outs = [b.vi("y", ["N", d])] + ([b.vi("h0", ["N", d])] if early else [])
    return b.make(nodes, [b.vi("x", ["N", d])], outs, inits)


def _feeds(model, n=3):
    from onnx_obc.calib import DataSet

    return sample_feeds(DataSet(b.feeds(model, 4 * n, seed=2), "feeds"), 4, 4 * n)


def test_the_piece_gives_the_whole_models_outputs_with_a_skip_crossing_the_cut():
    model = _skip()
    feeds = _feeds(model)
    cuts = Cuts(model, feeds)
    p = cuts.position({"w1"})
    assert p == 2 and cuts.crossing(p) == ["h0", "r0"]
    cuts.fetch([p])
    changed = _with_weight(model, "w1", np.full((6, 6), 0.3, np.float32))
    whole, part = _run(changed, feeds), cuts.run(changed, p)
    assert len(part) == len(whole) == len(feeds)
    for a, c in zip(part, whole):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)
    assert not np.allclose(part[0], _run(model, feeds)[0])  # the change shows


def test_an_early_graph_output_keeps_the_site_whole():
    model = _skip(early=True)
    cuts = Cuts(model, _feeds(model))
    assert cuts.position({"w1"}) is None
    assert cuts.position({"w0"}) == 0


@pytest.mark.parametrize("budget", [1, 10**9])
def test_groups_hold_every_position_once(budget):
    model = graphs.chain(dims=(8, 12, 10, 9, 4))
    cuts = Cuts(model, _feeds(model))
    positions = [3, 1, 2, 1]
    groups = cuts.groups(positions, budget)
    assert sorted(p for g in groups for p in g) == [1, 2, 3]
    assert len(groups) == (3 if budget == 1 else 1)


@pytest.mark.parametrize("constants", [False, True])
def test_the_factors_are_those_of_whole_runs(monkeypatch, constants):
    """Also with every weight a Constant node at the graph's start (TensorFlow and Paddle
    exports): the cut still falls at the consumer, its Constant node taken into the piece."""
    model = graphs.as_constants(_branches()) if constants else _branches()
    plan = _plan(model, 64, damp=0.01)
    counts_for(plan, 0.25, 1, "dp", "output")
    cut = plan.probes
    at = [Cuts(model, [{}]).position({s.site.consumer.weight}) for s in plan.solved]
    assert all(p is not None and model.graph.node[p].op_type == "MatMul" for p in at)
    monkeypatch.setattr(sensitivity.Cuts, "position", lambda self, weights: None)
    plan.probes = None
    counts_for(plan, 0.25, 1, "dp", "output")
    for (k0, g0), (k1, g1) in zip(cut, plan.probes):
        np.testing.assert_array_equal(k0, k1)
        np.testing.assert_allclose(g0, g1, rtol=1e-4)


def test_the_probes_score_a_decoders_logits_not_its_kv_cache():
    """Cuts.scored leaves the cache output out; _run gives the outputs asked for."""
    model = b.decoder_step()
    assert Cuts.scored(model) == ["logits"]
    assert Cuts(model, []).outputs == ["logits"]
    feeds = [b.feeds(model, 2, seed=1)]
    every, scored = _run(model, feeds), _run(model, feeds, outputs=["logits"])
    assert len(every) == 2 and len(scored) == 1 and np.array_equal(scored[0], every[0])
    assert Cuts.scored(b.mlp()) == ["y"]
