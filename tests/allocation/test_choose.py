"""The allocation stage (choose_levels): a saved profile or the DP, the report's profile,
the error when the target cannot be met, and the "output" score (the dense reference run
once per allocation, candidates as the old per-layer computation built them)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from onnx_obc import allocation
from onnx_obc.allocation import (Level, OutputScore, ProfileMismatch, UnreachableTarget,
                                 choose_levels)
from onnx_obc.backend import get_backend
from onnx_obc.calib import load_data
from onnx_obc.capture import providers_for, session
from onnx_obc.cli import main
from onnx_obc.collect import collect
from onnx_obc.errors import ConfigError
from onnx_obc.export import apply_weights
from onnx_obc.export.tensorrt import quantize_activations
from onnx_obc.layers import constant_weights, find_layers, weight_matrix
from onnx_obc.specs import Allocation, Pruning, Quantization, SolverOptions

from .. import builders as b

BATCH = 16


@pytest.fixture(scope="module")
def mlp():
    model = b.mlp((8, 16, 12))
    data = load_data([b.feeds(model, 48)], model)
    layers, _ = find_layers(model)
    be = get_backend("cpu")
    hessians, _ = collect(model, layers, data, BATCH, be, 64, False)
    return model, layers, hessians, data, be


def _choose(mlp, *, prune=Pruning(), quant=Quantization(), **alloc):
    model, layers, hessians, data, be = mlp
    return choose_levels(model, layers, hessians, be, prune=prune, quant=quant,
                         solver=SolverOptions(), alloc=Allocation(mode="dp", **alloc),
                         data=data, batch=BATCH, budget_bytes=1 << 26)


def test_dp_path_gives_levels_by_weight_and_the_reports_profile(mlp, tmp_path):
    _, layers, hessians, _, _ = mlp
    path = tmp_path / "p.json"
    got = _choose(mlp, prune=Pruning(sparsity=0.6), save_profile=str(path))
    assert set(got.levels) == {L.weight for L in layers} and got.warnings == ()
    p = got.profile
    assert list(p) == ["choice", "budget", "score", "cost", "dense_cost", "error", "reduction",
                       "target", "curve"]
    assert p["budget"] == "sparsity" and p["score"] == "loss"
    assert p["cost"] <= 0.4 * p["dense_cost"] + 1e-9
    assert p["reduction"] == pytest.approx(p["dense_cost"] / p["cost"])
    for L in layers:
        assert got.levels[L.weight] == Level.parse(p["choice"][L.name])
    assert json.loads(path.read_text())["choice"] == p["choice"]
    assert set(hessians) == {L.weight for L in layers}  # read, not consumed
    with pytest.raises(Exception):
        got.levels = {}  # frozen


def test_bops_dp_prices_the_mixed_levels(mlp):
    got = _choose(mlp, budget="bops", target=8.0, level_nm=None)
    assert got.profile["cost"] <= got.profile["dense_cost"] / 8 * (1 + 1e-9)
    assert {lv.bits for lv in got.levels.values()} <= {None, 8, 4}


def test_profile_path_applies_the_saved_levels(mlp, tmp_path):
    _, layers, _, _, _ = mlp
    saved = _choose(mlp, prune=Pruning(sparsity=0.5), save_profile=str(tmp_path / "p.json"))
    got = _choose(mlp, profile=str(tmp_path / "p.json"))  # no tables, no DP
    assert got.levels == saved.levels
    assert got.profile == {"source": str(tmp_path / "p.json"),
                           "choice": {L.name: saved.levels[L.weight].label for L in layers}}
    doc = json.loads((tmp_path / "p.json").read_text())
    doc["choice"]["not_in_this_model"] = "w8"
    (tmp_path / "q.json").write_text(json.dumps(doc))
    extra = _choose(mlp, profile=str(tmp_path / "q.json"))
    assert extra.levels == saved.levels and "not_in_this_model" in extra.warnings[0]


def test_a_profile_without_every_layer_names_the_field(mlp, tmp_path):
    _, layers, _, _, _ = mlp
    doc = {"version": 1, "choice": {layers[0].name: 0.5}, "cost": 1, "error": 0, "budget": 1}
    (tmp_path / "p.json").write_text(json.dumps(doc))
    with pytest.raises(ProfileMismatch, match=r"alloc.profile .* has no level for") as e:
        _choose(mlp, profile=str(tmp_path / "p.json"))
    assert isinstance(e.value, ConfigError) and "select.include" in str(e.value)


@pytest.mark.parametrize("options, fields", [
    (dict(budget="bops", target=40.0), ("lower alloc.target", "quant.act_bits 8")),
    (dict(prune=Pruning(sparsity=0.9), max_sparsity=0.5),
     ("lower prune.sparsity", "raise alloc.max_sparsity")),
    (dict(budget="flops", prune=Pruning(sparsity=0.9), max_sparsity=0.5),
     ("lower prune.sparsity", "alloc.max_sparsity")),
])
def test_a_target_beyond_the_cheapest_levels_names_the_fields(mlp, options, fields):
    with pytest.raises(UnreachableTarget, match=r"cannot be met: these levels reach at most "
                       r"[\d.]+x less .* asked [\d.]+x") as e:
        _choose(mlp, **options)
    assert isinstance(e.value, ConfigError) and all(f in str(e.value) for f in fields)


def test_the_cli_says_the_flags_of_an_unreachable_target(saved, tmp_path):
    model, data = saved(b.mlp((8, 16, 4)), n=24)
    res = CliRunner().invoke(main, [str(model), str(tmp_path / "o.onnx"), "--calib", str(data),
                                    "-q", "--allocate", "dp", "--budget", "bops",
                                    "--target", "40"])
    assert res.exit_code == 2 and "lower --target or quantize activations (--act-bits 8)" in (
        res.output)


def test_a_missing_target_is_a_config_error():
    with pytest.raises(ConfigError, match="prune.sparsity or alloc.target"):
        allocation.resolve_target(Allocation(mode="dp", budget="flops"), Pruning())
    t = allocation.resolve_target(Allocation(mode="dp", budget="flops"), Pruning(sparsity=0.75))
    assert (t.kind, t.value, t.field) == ("flops", 4.0, "prune.sparsity")
    t = allocation.resolve_target(Allocation(mode="dp", budget="params"), Pruning(sparsity=0.5))
    assert (t.kind, t.value) == ("sparsity", 0.5)


def _count_sessions(monkeypatch, model):
    built = {"dense": 0, "candidates": 0}

    def counting(m, providers, optimize=False):
        built["dense" if m is model else "candidates"] += 1
        return session(m, providers, optimize)

    monkeypatch.setattr("onnx_obc.allocation.score.session", counting)
    return built


@pytest.mark.parametrize("options", [
    dict(prune=Pruning(sparsity=0.5), max_sparsity=0.8),
    dict(budget="bops", target=8.0, quant=Quantization(act_bits=8)),
])
def test_the_output_score_runs_the_dense_model_once(mlp, monkeypatch, options):
    model, layers, _, _, _ = mlp
    built = _count_sessions(monkeypatch, model)
    got = _choose(mlp, score="output", **options)
    assert got.profile["score"] == "output"
    assert built["dense"] == 1  # once per allocation, not once per layer
    if "budget" in options:  # every level but fp32, each layer (8 and 16 inputs: 2:4 fits)
        assert built["candidates"] == 5 * len(layers)
    else:  # the coarser grid of the output score, every layer
        grid = allocation.level_grid(0.8)
        assert built["candidates"] == len(grid[:-1:2] + grid[-1:]) * len(layers)


def _old_output_errors(proto, L, weights, data, batch, act_scales):
    """The per-layer computation output_errors made before the allocation package (the
    dense session and reference rebuilt for every layer)."""
    G, r, d = L.matrix_shape
    providers = providers_for("numpy")
    dense = session(proto, providers, optimize=True)
    ref = [dense.run(None, feed)[0] for _, feed in data.batches(batch)]
    energy = sum(float(np.square(y).sum()) for y in ref) or 1.0
    errs = []
    for Wl, a in zip(weights, act_scales):
        m = apply_weights(proto, [L], {L.weight: L.from_matrix(Wl.reshape(G, r, d))})
        if a is not None:
            x = L.uses[0].input
            m = quantize_activations(m, {x: a}, 8, {x: [u.node for u in L.uses]})
        sess = session(m, providers, optimize=True)
        e = sum(float(np.square(sess.run(None, feed)[0] - y).sum())
                for (_, feed), y in zip(data.batches(batch), ref))
        errs.append(e / energy)
    return tuple(errs)


def test_the_output_score_equals_the_old_per_layer_computation(mlp):
    model, layers, _, data, _ = mlp
    weights = constant_weights(model.graph)
    score = OutputScore.measure(model, data, BATCH, providers_for("numpy"))
    rng = np.random.default_rng(0)
    for L in layers:
        W = weight_matrix(weights, L).astype(np.float64)
        cands = [W, W * (rng.random(W.shape) > 0.5), np.round(W * 8) / 8, W]
        scales = [None, None, 0.02, 0.05]
        new = score.errors(L, iter(cands), iter(scales))
        assert new == _old_output_errors(model, L, cands, data.head(64), BATCH, scales)
        assert new[0] == 0.0 and min(new[1:]) > 0.0


def test_the_output_score_reads_every_float_output():
    """Two heads on one hidden layer: a level of the second head's weight changes only the
    second output, and the score is the mean of the two outputs' relative errors (it read
    the first alone, so such a level scored 0: Basic Pitch's note and onset maps)."""
    from onnx import helper

    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="l1"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["y1"], name="head1"),
             helper.make_node("MatMul", ["r", "W3"], ["y2"], name="head2")]
    inits = [b.weight("W1", (8, 16), 0), b.weight("W2", (16, 4), 1), b.weight("W3", (16, 5), 2)]
    model = b.make(nodes, [b.vi("x", [b.BATCH, 8])],
                   [b.vi("y1", [b.BATCH, 4]), b.vi("y2", [b.BATCH, 5])], inits)
    layers = {L.weight: L for L in find_layers(model)[0]}
    data = load_data([b.feeds(model, 32, seed=1)], model)
    score = OutputScore.measure(model, data, BATCH, providers_for("numpy"))
    assert len(score.energy) == 2
    W = weight_matrix(constant_weights(model.graph), layers["W3"]).astype(np.float64)
    half = W * (np.random.default_rng(0).random(W.shape) > 0.5)
    (same, pruned), = [score.errors(layers["W3"], iter([W, half]))]
    assert same == 0.0 and pruned > 0.0
    sess = session(apply_weights(model, [layers["W3"]], {"W3": layers["W3"].from_matrix(
        half.reshape(layers["W3"].matrix_shape))}), providers_for("numpy"), optimize=True)
    dense = session(model, providers_for("numpy"), optimize=True)
    e2 = sum(float(np.square(sess.run(None, f)[1] - dense.run(None, f)[1]).sum())
             for _, f in data.head(64).batches(BATCH))
    assert pruned == pytest.approx(e2 / score.energy[1] / 2, rel=1e-6)


def test_the_output_score_sets_a_decoders_kv_cache_aside():
    """A decoder step with its KV cache: a level of the key projection scores its error on
    the logits alone (the cache output, the projection's own error, aside)."""
    model = b.decoder_step()
    layers = {L.weight: L for L in find_layers(model)[0]}
    data = load_data([b.feeds(model, 32, seed=1)], model)
    score = OutputScore.measure(model, data, BATCH, providers_for("numpy"))
    assert score.outputs == ("logits",) and len(score.energy) == 1
    L = layers["Wk"]
    W = weight_matrix(constant_weights(model.graph), L).astype(np.float64)
    (e,) = score.errors(L, iter([W * 1.3]))
    m = apply_weights(model, [L], {"Wk": L.from_matrix((W * 1.3).reshape(L.matrix_shape))})
    y0, y = (np.concatenate([session(x, providers_for("numpy"), optimize=True).run(
        ["logits"], f)[0] for _, f in data.head(64).batches(BATCH)]) for x in (model, m))
    assert e == pytest.approx(float(np.square(y - y0).sum() / np.square(y0).sum()), rel=1e-5)


def test_weight_matrix_is_the_layers_w_view(mlp):
    model, layers, _, _, _ = mlp
    weights = constant_weights(model.graph)
    for L in layers:
        W = weight_matrix(weights, L)
        assert W.dtype == np.float32 and W.shape == L.matrix_shape
