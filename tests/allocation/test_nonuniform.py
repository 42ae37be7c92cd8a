"""Non-uniform allocation end to end: meets the global budget exactly enough, beats uniform
at the same budget, and a saved profile reproduces the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from onnx_obc import convert
from onnx_obc.errors import ObcError
from onnx_obc.allocation import Level, UnreachableTarget, level_grid
from ..cpu import NEEDS_VNNI

MODELS = Path(__file__).resolve().parents[2] / "models"


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
    uni = _run(sparsity=0.7, allocate="uniform")
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


def _layer_inputs(model, node_name):
    node = next(n for n in model.graph.node if n.name == node_name)
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    return [producer.get(x) for x in node.input]


@NEEDS_VNNI
def test_bops_budget_mixes_levels_beats_uniform_and_deploys(tmp_path):
    """OBC's mixed database under a BOP budget: 1/32 of the dense FP32 bit-ops is what every
    layer at 4-bit weights and 8-bit activations costs; the DP's mix does better."""
    uni = _run(bits=4, act_bits=8)
    dp = _run(allocate="dp", budget="bops", target=32, act_bits=8,
              save_profile=str(tmp_path / "p.json"))
    p = dp.report.profile
    assert p["budget"] == "bops" and p["cost"] <= p["dense_cost"] / 32 * (1 + 1e-9)
    choice = {k: Level.parse(v) for k, v in p["choice"].items()}
    assert len({lv.label for lv in choice.values()}) >= 3  # really mixed
    assert _err(dp) < 0.9 * _err(uni)
    # the exported model holds the chosen levels
    inits = {t.name: t for t in dp.model.graph.initializer}
    dense = {t.name: t for t in onnx.load(MODELS / "digits_vit.onnx").graph.initializer}
    rows = {x.name: x for x in dp.report.layers}
    skipped = {s.node: s.reason for s in dp.report.skipped}
    for name, lv in choice.items():
        if lv.is_dense:
            assert "kept dense (fp32)" in skipped[name] and name not in rows
            assert "DequantizeLinear" not in _layer_inputs(dp.model, name)  # float input
            continue
        r = rows[name]
        assert r.bits == lv.bits
        q = inits[f"{r.weight}_quantized"]
        assert q.data_type == (TensorProto.INT4 if lv.bits == 4 else TensorProto.INT8)
        codes = numpy_helper.to_array(q)
        if lv.nm is not None:  # 2:4 along the reduction axis (K of a [K, N] MatMul weight)
            assert r.sparsity >= 0.5  # quantization may round a few survivors to 0
            k = codes.reshape(-1, 4, codes.shape[-1]) if codes.ndim == 2 else None
            assert k is not None and ((k == 0).sum(axis=1) >= 2).all()
        assert "DequantizeLinear" in _layer_inputs(dp.model, name)  # activation QDQ
    kept = [x.weight for x in dp.report.skipped if "kept dense (fp32)" in x.reason]
    assert len(kept) == sum(lv.is_dense for lv in choice.values())
    for w in kept:  # fp32 layers keep their dense weights
        np.testing.assert_array_equal(numpy_helper.to_array(inits[w]),
                                      numpy_helper.to_array(dense[w]))
    # the saved profile (labels) reproduces the model
    again = _run(budget="bops", act_bits=8, profile=str(tmp_path / "p.json"))
    for a, b in zip(dp.model.graph.initializer, again.model.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_bops_target_beyond_the_cheapest_levels_says_how_far_it_goes():
    with pytest.raises(ObcError, match=r"reach at most .*x less .*quant.act_bits 8") as e:
        _run(allocate="dp", budget="bops", target=40)  # weight-only: 2:4+w4 is 16x at most
    assert isinstance(e.value, UnreachableTarget) and "lower alloc.target" in str(e.value)


def test_output_score_puts_the_deployed_input_qdq_in_place():
    """Mixed levels are scored as deployed: a quantized level's layer reads its int8 input."""
    from onnx_obc.backend import get_backend
    from onnx_obc.calib import load_data
    from onnx_obc.layers import find_layers
    from onnx_obc.allocation import OutputScore
    from onnx_obc.capture import providers_for

    from .. import builders as b

    model = b.mlp((8, 16, 4))
    data = load_data([b.feeds(model, 32)], model)
    layers, _ = find_layers(model)
    L = layers[0]
    dense = L.to_matrix(next(numpy_helper.to_array(t) for t in model.graph.initializer
                             if t.name == L.weight))
    x = data.head(data.n).batches(32)
    amax = float(np.abs(next(x)[1][L.uses[0].input]).max())
    score = OutputScore.measure(model, data, 32, providers_for(get_backend("cpu").name))
    errs = score.errors(L, iter([dense, dense]), iter([None, amax / 127]))
    assert errs[0] == 0.0 and errs[1] > 1e-7  # same weights: only the input Q/DQ differs


def test_output_score_deploys_candidates_for_the_runs_export_target(monkeypatch):
    """With --runtime onnxruntime the allocation scores candidates as onnxruntime runs them
    (its (lo, hi) activation ranges), not in TensorRT's form."""
    import onnx_obc.allocation as allocation

    seen = {}
    real = allocation.choose_levels

    def spy(*a, **k):
        seen.update(target=k["export_target"], values=k["act_scales"])
        return real(*a, **k)

    monkeypatch.setattr(allocation, "choose_levels", spy)
    for runtime, kind in (("onnxruntime", tuple), ("tensorrt", float)):
        _run(allocate="dp", budget="bops", target=16, act_bits=8, runtime=runtime,
             score="output")
        assert seen["target"] == runtime
        assert seen["values"] and all(isinstance(v, kind) for v in seen["values"].values())
