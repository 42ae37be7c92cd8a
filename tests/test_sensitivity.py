"""Per-layer sensitivity: each value is the output error of the dense model with only that
layer replaced (checked against an independent onnxruntime + NumPy computation), the
ranking is by that error, the suggestion picks the layers that dominate, and its flags,
pasted back, exclude exactly those layers."""

from __future__ import annotations

import copy
import json
import shlex

import numpy as np
import pytest
from onnx import numpy_helper

from onnx_obc import convert
from onnx_obc.calib import load_data
from onnx_obc.capture import providers_for
from onnx_obc.config import Selection
from onnx_obc.fidelity import cache_outputs
from onnx_obc.layers import find_layers
from onnx_obc.sensitivity import (
    LayerSensitivity,
    exclude_flags,
    measure_sensitivity,
    suggest_exclude,
    summarize,
)
from onnx_obc.solve import HostSolution, HostWeights

from . import builders as b


def _perturbed(model, scales):
    """Per layer weight name -> (layer, weights with every other entry zeroed and scaled)."""
    layers, _ = find_layers(model)
    w = b.weights_of(model)
    out = {}
    for L, s in zip(layers, scales):
        new = w[L.weight].copy()
        new.reshape(-1)[::2] = 0.0
        out[L.weight] = (L, (new * s).astype(np.float32))
    return layers, out


def _independent_error(model, weight, value, feed):
    """sqrt(sum (y - y0)^2 / sum y0^2) of the model with one initializer replaced."""
    m = copy.deepcopy(model)
    for i, t in enumerate(m.graph.initializer):
        if t.name == weight:
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, weight))
    y0 = b.run(model, feed)[0].astype(np.float64)
    y = b.run(m, feed)[0].astype(np.float64)
    return float(np.sqrt(((y - y0) ** 2).sum() / (y0 ** 2).sum()))


def test_each_value_is_the_error_with_only_that_layer_replaced_and_ranked_by_it():
    model = b.mlp3()
    feed = b.feeds(model, 40, seed=3)
    layers, new = _perturbed(model, (1.0, 0.7, 1.3))
    sols = {k: HostSolution(HostWeights(v), HostWeights(v)) for k, (_, v) in new.items()}
    ranked = measure_sensitivity(model, layers, sols, load_data([feed], model), 16,
                                 providers_for("cpu"))
    assert len(ranked) == len(layers)
    by_name = {s.layer: s for s in ranked}
    for k, (L, v) in new.items():
        assert by_name[L.name].error == pytest.approx(
            _independent_error(model, k, v, feed), rel=1e-4)
        assert by_name[L.name].nodes == tuple(u.node for u in L.uses)
    errors = [s.error for s in ranked]
    assert errors == sorted(errors, reverse=True) and len(set(errors)) == len(errors)
    assert sum(s.share for s in ranked) == pytest.approx(1.0)
    # only layers with a solution are measured
    one = {layers[1].weight: sols[layers[1].weight]}
    assert [s.layer for s in measure_sensitivity(model, layers, one, load_data([feed], model),
                                                 16, providers_for("cpu"))] == [layers[1].name]


def _ranked(errors):
    total = sum(e * e for e in errors)
    return [LayerSensitivity(f"n{i}", (f"n{i}",), e, share=e * e / total)
            for i, e in sorted(enumerate(errors), key=lambda t: -t[1])]


def test_the_suggestion_is_the_layers_that_dominate():
    assert [s.layer for s in suggest_exclude(_ranked([0.01, 0.2, 0.02, 0.01]))] == ["n1"]
    assert [s.layer for s in suggest_exclude(_ranked([0.3, 0.3, 0.01, 0.01, 0.02]))] == [
        "n0", "n1"]
    assert suggest_exclude(_ranked([0.1] * 6)) == []  # nothing stands out
    assert suggest_exclude(_ranked([0.1])) == []  # never every layer
    assert len(suggest_exclude(_ranked([1.0] * 4 + [0.0] * 40))) == 3  # at most three
    assert summarize([], "x", 1) == {}


def test_the_flags_escape_glob_characters_and_exclude_exactly_those_layers():
    model = b.mlp((8, 16, 12))
    layers, _ = find_layers(model)
    weird = "fc[0]*?"
    for node in model.graph.node:
        if node.name == layers[0].uses[0].node:
            node.name = weird
    (L0, L1), _ = find_layers(model)
    flags = exclude_flags([LayerSensitivity(L0.name, (weird,), 1.0)])
    args = shlex.split(flags)
    assert args == ["--exclude", "fc[[]0][*][?]"]
    kept, _ = find_layers(model, Selection(exclude=(args[1],)))
    assert [L.name for L in kept] == [L1.name]


def test_convert_reports_the_ranking_and_the_flags(tmp_path):
    model = b.mlp3()
    feed = b.feeds(model, 64, seed=1)
    path = tmp_path / "r.json"
    res = convert(model, None, calib=[feed], progress=False, device="cpu", sparsity=0.6,
                  sensitivity=True, report_path=path)
    s = res.report.sensitivity
    assert s["set"] == "held-out calibration" and s["samples"] == 13
    assert {x["layer"] for x in s["layers"]} == {x.name for x in res.report.layers}
    errors = [x["error"] for x in s["layers"]]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0
    assert "sensitivity" in res.report.seconds
    assert json.loads(path.read_text())["sensitivity"]["layers"] == s["layers"]
    table = res.report.table()
    assert "sensitivity on held-out calibration (13 samples)" in table
    assert (f"exclude first: {s['flags']}" in table) == bool(s["exclude"])
    plain = convert(model, None, calib=[feed], progress=False, device="cpu", sparsity=0.6)
    assert plain.report.sensitivity == {} and "sensitivity" not in plain.report.seconds


def test_without_held_out_samples_the_ranking_is_on_the_eval_sets_first_samples():
    """No calibration sample held out: the ranking runs on the eval set's first samples, as
    many as the in-sample check (64 here), the same values as an eval set of just those;
    without an eval set on the calibration samples; a held-out set is kept even with one."""
    model = b.mlp3()
    feed, other = b.feeds(model, 64, seed=1), b.feeds(model, 100, seed=7)
    kw = dict(calib=[feed], progress=False, device="cpu", sparsity=0.6, sensitivity=True)
    s = convert(model, None, eval_data=[other], holdout=0.0, **kw).report.sensitivity
    assert s["set"] == "eval" and s["samples"] == 64
    first = {k: v[:64] for k, v in other.items()}
    same = convert(model, None, eval_data=[first], holdout=0.0, **kw).report.sensitivity
    assert same["set"] == "eval" and same["layers"] == s["layers"]
    fit = convert(model, None, holdout=0.0, **kw).report.sensitivity
    assert fit["set"] == "calibration (not held out)"
    assert [x["error"] for x in fit["layers"]] != [x["error"] for x in s["layers"]]
    held = convert(model, None, eval_data=[other], holdout=0.2, **kw).report.sensitivity
    assert held["set"] == "held-out calibration" and held["samples"] == 13


def test_under_sequential_the_ranking_is_of_one_shot_solves():
    """A sequential run (W4's default) ranks the layers as the one-shot run does, value for
    value: its own layers' weights also undo the layers before them, which alone in the
    dense model would read as their own error; the model written stays the sequential one."""
    model = b.mlp3()
    feed = b.feeds(model, 64, seed=1)
    kw = dict(calib=[feed], progress=False, device="cpu", bits=4, sensitivity=True)
    seq, one = (convert(model, None, sequential=q, **kw).report for q in (None, False))
    assert seq.config["run"]["sequential"] and not one.config["run"]["sequential"]
    assert seq.sensitivity["solves"] == "one-shot" and one.sensitivity["solves"] == "the run's"
    assert seq.sensitivity["layers"] == one.sensitivity["layers"]
    assert [x.loss for x in seq.layers] != [x.loss for x in one.layers]
    assert "as solved one-shot, on the dense model's inputs" in seq.table()
    assert "as solved one-shot" not in one.table()


def test_quantized_layers_are_measured_as_deployed():
    model = b.mlp3()
    feed = b.feeds(model, 64, seed=1)
    w8 = convert(model, None, calib=[feed], progress=False, device="cpu", bits=8,
                 sensitivity=True)
    w3 = convert(model, None, calib=[feed], progress=False, device="cpu", bits=3,
                 act_bits=8, sensitivity=True)
    e8 = {x["layer"]: x["error"] for x in w8.report.sensitivity["layers"]}
    e3 = {x["layer"]: x["error"] for x in w3.report.sensitivity["layers"]}
    assert set(e8) == set(e3) and all(e3[k] > e8[k] > 0 for k in e8)


@pytest.mark.parametrize("budget", [1, 512 << 20])
def test_each_candidate_runs_as_its_piece_and_gives_every_outputs_whole_model_error(budget):
    """A residual model with an early output (tests/test_diffpiece.py): each layer's error
    on each output equals the whole model's, one candidate a chunk (a 1-byte budget for the
    dense tensors the pieces read) or all in one."""
    from .test_diffpiece import _residual

    model = _residual()
    feed = b.feeds(model, 24, seed=5)
    layers, new = _perturbed(model, (1.0, 0.8, 1.2))
    sols = {k: HostSolution(HostWeights(v), HostWeights(v)) for k, (_, v) in new.items()}
    ranked = measure_sensitivity(model, layers, sols, load_data([feed], model), 8,
                                 providers_for("cpu"), budget=budget)
    by_name = {s.layer: s for s in ranked}
    for k, (L, v) in new.items():
        m = copy.deepcopy(model)
        for t in m.graph.initializer:
            if t.name == k:
                t.CopyFrom(numpy_helper.from_array(v, k))
        for i, out in enumerate(("y", "early")):
            y0 = b.run(model, feed)[i].astype(np.float64)
            y = b.run(m, feed)[i].astype(np.float64)
            want = float(np.sqrt(((y - y0) ** 2).sum() / (y0 ** 2).sum()))
            assert by_name[L.name].rel_error[out] == pytest.approx(want, rel=1e-4, abs=1e-9)
    assert by_name[layers[0].name].rel_error["early"] > 0  # fc1 reaches the early output


def test_a_decoders_kv_cache_outputs_are_left_out_of_the_ranking():
    model = b.decoder_step()
    assert cache_outputs(model) == {"present"}
    feed = b.feeds(model, 32, seed=2)
    layers, new = _perturbed(model, (1.0, 1.0, 1.0))
    sols = {k: HostSolution(HostWeights(v), HostWeights(v)) for k, (_, v) in new.items()}
    ranked = measure_sensitivity(model, layers, sols, load_data([feed], model), 8,
                                 providers_for("cpu"))
    by_node = {s.nodes[0]: s for s in ranked}
    # k_proj's own output is the cache: its error there is large, on the logits small
    assert by_node["k_proj"].rel_error["present"] > 10 * by_node["k_proj"].rel_error["logits"]
    assert all(s.error == s.rel_error["logits"] for s in ranked)
    assert ranked[-1].nodes == ("k_proj",)
    table_line = summarize(ranked, "x", 32, ["present"])["outputs_aside"]
    assert table_line == ["present"]
