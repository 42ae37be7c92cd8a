"""Non-uniform allocation end to end: meets the global budget exactly enough, beats uniform
at the same budget, and a saved profile reproduces the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from onnx import numpy_helper

from onnx_obc import convert
from onnx_obc.nonuniform import level_grid

MODELS = Path(__file__).resolve().parents[1] / "models"


def _run(**kw):
    return convert(MODELS / "digits_vit.onnx", None, calib=MODELS / "digits_vit.calib.npz",
                   eval_data=MODELS / "digits_vit.eval.npz", progress=False, device="cpu",
                   compare_baseline=False, **kw)


def _err(res):
    return max(res.report.fidelity["eval"]["compressed"].rel_error.values())


def test_level_grid_is_obcs():
    g = level_grid(0.99)
    assert g[:4] == (0.0, 0.1, 0.19, 0.271) and g[-1] == 0.99 and len(g) == 45


def test_dp_meets_the_budget_and_beats_uniform(tmp_path):
    uni = _run(sparsity=0.7)
    dp = _run(sparsity=0.7, allocate="dp", save_profile=str(tmp_path / "p.json"))
    total = sum(x.rows * x.cols for x in dp.report.layers)
    zeros = sum(round(x.sparsity * x.rows * x.cols) for x in dp.report.layers)
    assert zeros >= 0.7 * total - len(dp.report.layers)  # the global target, per-layer rounding
    assert len({round(x.sparsity, 3) for x in dp.report.layers}) > 2  # really non-uniform
    assert _err(dp) < 0.5 * _err(uni)
    ev = dp.report.fidelity["eval"]
    assert ev["compressed"].accuracy > uni.report.fidelity["eval"]["compressed"].accuracy
    # the profile round trip gives the same model
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["choice"] == dp.report.profile["choice"]
    again = _run(sparsity=0.7, profile=str(tmp_path / "p.json"))
    for a, b in zip(dp.model.graph.initializer, again.model.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_flops_budget():
    dp = _run(sparsity=0.7, allocate="dp", budget="flops")
    p = dp.report.profile
    assert p["cost"] <= 0.3 * p["dense_cost"] + 1e-6
    assert _err(dp) < _err(_run(sparsity=0.7))


def test_block_levels_from_block_traces():
    uni = _run(sparsity=0.7, block=4)
    dp = _run(sparsity=0.7, block=4, allocate="dp")
    assert dp.report.profile["choice"]["patch"] == 0.0  # 1 input channel: no 4-blocks
    assert dp.report.profile["cost"] <= 0.3 * dp.report.profile["dense_cost"] + 1e-6
    assert _err(dp) < _err(uni)


def test_output_score_measures_the_model_and_beats_uniform():
    only = ("attn.*", "mlp.*")
    dp = _run(sparsity=0.7, allocate="dp", score="output", max_sparsity=0.9, include=only)
    assert dp.report.profile["score"] == "output"
    assert dp.report.profile["cost"] <= 0.3 * dp.report.profile["dense_cost"] + 1e-6
    assert _err(dp) < 0.8 * _err(_run(sparsity=0.7, include=only))
