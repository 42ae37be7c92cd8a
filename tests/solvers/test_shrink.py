"""Data-limited layers: H shrunk toward its diagonal by the level two held-out halves of the
samples choose (solvers/shrink.py), the halves kept by the accumulator (hessian.py) and the
level carried through the layer job into the report (layerjob.py, solve.py)."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc import costplan
from onnx_obc.backend import get_backend
from onnx_obc.hessian import FOLD_COLUMNS, HessianAccumulator
from onnx_obc.layerjob import LayerJob, solve_job
from onnx_obc.quant import QuantSpec
from onnx_obc.solvers import NM, linear_nm_groups, shrink, solve_layer
from onnx_obc.solvers.prepare import layer_loss

Q4 = QuantSpec(bits=4)


def _pooled(rng: np.random.Generator, d: int, n: int, mix: np.ndarray) -> np.ndarray:
    """n globally pooled feature vectors X [d, n]: ReLU of correlated Gaussians whose
    inputs differ in scale (heavy-tailed, as real squeeze-excite and head inputs do)."""
    return np.maximum(mix @ rng.standard_normal((d, n)), 0.0)


def _case(seed: int = 0, d: int = 256, r: int = 64, n: int = 64):
    """W [1, r, d]; the two halves' Hessians of n samples (n < d) and a test Hessian of
    8,192 other samples from the same population."""
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((d, d)))[0]
    mix = U / np.sqrt(1.0 + np.arange(d)) * np.exp(rng.standard_normal(d))[:, None]
    H = [(X @ X.T / X.shape[1])[None] for X in (
        _pooled(rng, d, n // 2, mix), _pooled(rng, d, n // 2, mix), _pooled(rng, d, 8192, mix))]
    W = (rng.standard_normal((1, r, d)) * 0.1).astype(np.float32)
    return W, H[0], H[1], H[2]


def _gptq(W, H):
    return solve_layer(W, H, quant=Q4, method="gptq").W


def test_shrunk_keeps_the_diagonal_and_reaches_it_at_one():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2, 6, 9))
    H = X @ X.transpose(0, 2, 1)
    assert shrink.shrunk(H, 0.0) is H
    half = shrink.shrunk(H, 0.5)
    assert np.allclose(np.diagonal(half, axis1=1, axis2=2), np.diagonal(H, axis1=1, axis2=2))
    off = ~np.eye(6, dtype=bool)
    assert np.allclose(half[:, off], 0.5 * H[:, off])
    assert np.allclose(shrink.shrunk(H, 1.0), np.eye(6) * np.diagonal(H, axis1=1, axis2=2)[
        :, None, :])
    assert np.allclose(H, X @ X.transpose(0, 2, 1))  # H itself untouched


def test_identity_halves_choose_no_shrinkage_and_the_solve_is_rtn():
    """Exact reduction: with H = I every level gives the same solution, so none is taken,
    and OBQ on I is round to nearest."""
    rng = np.random.default_rng(2)
    W = rng.standard_normal((1, 8, 16)).astype(np.float32)
    eye = np.eye(16)[None]
    level, losses = shrink.choose(W, eye, eye, _gptq)
    assert level == 0.0 and np.allclose(losses, losses[0])
    res = solve_layer(W, shrink.shrunk(eye, level), quant=QuantSpec(bits=4, mse=False),
                      damp=0.0)
    assert np.allclose(res.W, res.baseline)


def test_heldout_halves_choose_shrinkage_that_generalizes_better_than_h_itself():
    """Beats the baseline on realistic data-limited inputs (64 pooled samples, 256 inputs):
    OBQ on the captured H overfits the samples (worse than RTN on 8,192 others); on the H
    the halves shrink it is well below both."""
    W, Ha, Hb, Htest = _case()
    H = (Ha + Hb) / 2
    level, losses = shrink.choose(W, Ha, Hb, _gptq)
    assert level > 0 and min(losses) < 0.8 * losses[0]
    plain = solve_layer(W, H, quant=Q4)
    shrunk = solve_layer(W, shrink.shrunk(H, level), quant=Q4)
    rtn = layer_loss(W, plain.baseline, Htest)
    assert layer_loss(W, plain.W, Htest) > 1.1 * rtn  # the overfit this guards against
    assert layer_loss(W, shrunk.W, Htest) < 0.75 * layer_loss(W, plain.W, Htest)
    assert layer_loss(W, shrunk.W, Htest) < 0.8 * rtn


def test_nm_jobs_search_the_level_and_generalize_better():
    """2:4: the job scores the levels with SparseGPT's N:M on the halves and solves with
    ExactOBS on the level they choose. On the pooled case that beats the solve on H itself
    on 8,192 other samples, and the magnitude baseline; the losses reported stay under H."""
    W, Ha, Hb, Htest = _case(seed=7, d=128, r=32, n=48)
    H = (Ha + Hb) / 2
    st = NM(2, 4).on_columns(linear_nm_groups(128, 4))
    job = LayerJob(W, H, st, None, "obc", 0.01, 1 << 28, False, folds=(Ha, Hb))
    res, _, _ = solve_job(job, get_backend("cpu"))
    level = shrink.choose(W, Ha, Hb, lambda W_, H_: solve_layer(W_, H_, structure=st,
                                                                method="gptq").W)[0]
    assert res.shrink == level > 0
    plain = solve_layer(W, H, structure=st)
    assert np.allclose(res.W, solve_layer(W, shrink.shrunk(H, level), structure=st).W)
    assert res.loss == pytest.approx(layer_loss(W, res.W, H))
    test = {k: layer_loss(W, x, Htest) for k, x in (("plain", plain.W), ("shrunk", res.W),
                                                     ("magnitude", plain.baseline))}
    assert test["shrunk"] < 0.6 * test["plain"] and test["shrunk"] < 0.5 * test["magnitude"]
    assert ((res.W.reshape(32, -1, 4) == 0).sum(-1) >= 2).all()  # still 2:4


def test_accumulator_keeps_halves_only_for_few_columns_and_they_average_to_h():
    rng = np.random.default_rng(3)
    d = 12
    few = HessianAccumulator(1, d, np, folds_for=20)  # 20 samples x 1 column < 8 d
    many = HessianAccumulator(1, d, np, folds_for=20)  # 20 samples x 16 columns >= 8 d
    for n in (3, 4, 5, 8):  # batches of samples
        X = rng.standard_normal((1, d, n))
        few.add(X)
        few.count(n)
        many.add(rng.standard_normal((1, d, n * 16)))
        many.count(n)
    assert many.take_folds() is None and many.half is None
    Ha, Hb = few.take_folds()
    assert few.half_samples == 3 + 5
    assert np.allclose((Ha * 8 + Hb * 12) / 20, few.mean())
    assert FOLD_COLUMNS * d > 20 and HessianAccumulator(1, d, np).take_folds() is None


@pytest.mark.parametrize("folds", [True, False])
def test_layer_job_solves_on_the_shrunk_h_and_reports_losses_under_h(folds):
    W, Ha, Hb, _ = _case(seed=4, d=96, r=16, n=32)
    H = (Ha + Hb) / 2
    job = LayerJob(W, H, None, Q4, "obc", 0.01, 1 << 28, False,
                   folds=(Ha, Hb) if folds else None)
    res, rank, _ = solve_job(job, get_backend("cpu"))
    assert rank == 32
    level = shrink.choose(W, Ha, Hb, _gptq)[0] if folds else 0.0
    assert res.shrink == level and (level > 0) == folds
    ref = solve_layer(W, shrink.shrunk(H, level), quant=Q4)
    assert np.allclose(res.W, ref.W)
    assert res.loss == pytest.approx(layer_loss(W, res.W, H))
    assert res.baseline_loss == pytest.approx(layer_loss(W, res.baseline, H))


def test_a_run_shrinks_a_pooled_gemm_and_says_so(monkeypatch):
    monkeypatch.setattr(costplan, "SMALL_WORK", 0.0)  # its predictions on a small model
    """The whole run: a Gemm on 64 pooled feature vectors of 128 inputs (H of rank 64) gets
    its level from the halves, the table's losses under the captured H, the JSON its level
    and a line naming it; --no-shrink solves on H as captured."""
    from onnx_obc import convert

    from .. import builders as b

    rng = np.random.default_rng(5)
    d = 128
    U = np.linalg.qr(rng.standard_normal((d, d)))[0]
    mix = U / np.sqrt(1.0 + np.arange(d)) * np.exp(rng.standard_normal(d))[:, None]
    x = _pooled(rng, d, 64, mix).T.astype(np.float32)  # [64, d]
    model = b.gemm(d_in=d, d_out=32)
    runs = {s: convert(model, None, calib=[{"x": x[i:i + 8]} for i in range(0, 64, 8)],
                       bits=4, shrink=s, holdout=0.0, progress=False, compare_baseline=False)
            for s in (True, False)}
    (row,), (plain,) = runs[True].report.layers, runs[False].report.layers
    assert row.shrink > 0 and plain.shrink == 0 and row.data_limited and row.rank == 64
    line = next(w for w in runs[True].report.warnings if "shrunk toward its diagonal" in w)
    assert f"gemm ({row.shrink:g})" in line
    assert not any("shrunk toward" in w for w in runs[False].report.warnings)
    limited = [next(w for w in r.report.warnings if "data-limited" in w) for r in runs.values()]
    assert "or the diagonal where H was shrunk" in limited[0]
    assert "; the dampening decides the rest" in limited[1]
    assert row.loss > plain.loss  # under H itself: the shrunk solve fits the samples less
    assert runs[True].report.to_dict()["layers"][0]["shrink"] == row.shrink
    # the predicted seconds carry the search, known after capture; the footer sums them
    from onnx_obc.costmodel import Rates, Shape, shrink_seconds

    plan = runs[True].report.plan
    search = shrink_seconds(Shape(1, 32, d), Rates(**plan["rates"]), sparsity=0.0, quant=True,
                            levels=len(shrink.GRID), rows=shrink.ROWS)
    assert search > 0 and row.predicted_seconds == pytest.approx(
        plan["layers"][0]["seconds"] + search)
    assert plain.predicted_seconds == runs[False].report.plan["layers"][0]["seconds"]
    assert f"plan: solve predicted {row.predicted_seconds:.1f}s" in runs[True].report.table()


def test_no_halves_where_the_hessians_take_over_a_third_of_the_budget():
    """The halves may hold as much again as the Hessians: a plan whose Hessians take over
    a third of the budget keeps none, and the run says so (the same run with the plan's
    own budget shrinks)."""
    from dataclasses import replace

    from onnx_obc import calib, costplan
    from onnx_obc.capture import providers_for
    from onnx_obc.config import CompressConfig
    from onnx_obc.layers import select_layers
    from onnx_obc.schedule import compress_layers

    from .. import builders as b

    rng = np.random.default_rng(6)
    d = 64
    U = np.linalg.qr(rng.standard_normal((d, d)))[0]
    mix = U / np.sqrt(1.0 + np.arange(d)) * np.exp(rng.standard_normal(d))[:, None]
    x = _pooled(rng, d, 48, mix).T.astype(np.float32)
    model = b.mlp3(dims=(d, d, d, 8))
    feeds = [{b.graph_inputs(model)[0].name: x[i:i + 8]} for i in range(0, 48, 8)]
    cfg = CompressConfig.from_options(None, bits=4, holdout=0.0, compare_baseline=False)
    backend = get_backend("cpu")
    layers, _ = select_layers(model, cfg.select)
    plan = costplan.planned(layers, cfg, backend, False)
    data = calib.plan(model, feeds, None, cfg.run)
    rt = providers_for(backend.name)
    tight = replace(plan, budget_bytes=3 * plan.hessian_total - 1)
    runs = [compress_layers(model, layers, data, backend, cfg, rt, plan=p) for p in (plan, tight)]
    assert any(r.shrink for r in runs[0].rows)
    assert not any(r.shrink for r in runs[1].rows)
    assert not any("--shrink: no held-out" in w for w in runs[0].warnings)
    assert any("--shrink: no held-out halves kept" in w for w in runs[1].warnings)


def test_compound_job_reports_its_pruned_stage_under_h():
    """Pruning then OBQ on the shrunk H: the same weights as the one-call solve, and the
    pruned stage's loss under H itself."""
    from onnx_obc.solvers import Unstructured

    W, Ha, Hb, _ = _case(seed=7, d=96, r=16, n=32)
    H = (Ha + Hb) / 2
    st = Unstructured(0.5)
    res, _, _ = solve_job(LayerJob(W, H, st, Q4, "obc", 0.01, 1 << 28, False, folds=(Ha, Hb)),
                          get_backend("cpu"))
    assert res.shrink > 0
    Hs = shrink.shrunk(H, res.shrink)
    assert np.allclose(res.W, solve_layer(W, Hs, structure=st, quant=Q4).W)
    pruned = solve_layer(W, Hs, structure=st)
    assert res.prune_loss == pytest.approx(layer_loss(W, pruned.W, H))
    assert int((res.W == 0).sum()) >= int((pruned.W == 0).sum())  # every pruned zero kept
