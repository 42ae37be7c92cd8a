"""The cost model's formulas (costmodel.py): the predicted seconds grow with rows and
columns, the greedy's row batching is modelled (a fixed cost per step and batch, element
operations slower once a batch's pending updates outgrow the cache), GPTQ's per-row work has
its own rate, and the calibration measures every rate (positive, the spill ratio >= 1)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from onnx_obc.costmodel import (IN_CACHE, Rates, Shape, baseline_seconds, calibrate,
                                exact_seconds, fast_seconds)
from onnx_obc.solvers.fast import fold_block
from onnx_obc.solvers.prepare import rows_per_batch

RT = Rates(flop32=1e-11, flop64=2e-11, prep=5e-3, eig=2e-3, chol=4e-11, solve=2e-10,
           prep_exp=2.8, eig_exp=2.4, spill=2.0, step=3e-5, row=7e-7, elem=2e-10, qstep=5e-5,
           qrow=7e-7, qelem=3e-10, gelem=2.5e-9, col=2e-5, gcall=1e-4, gather=1e-8, grid=8e-9,
           sort=6e-9, fixed=5e-4, qfixed=5e-3)
ZERO = Rates(**{k: 0.0 for k in RT.to_dict()} | {"prep_exp": 3.0, "eig_exp": 3.0,
                                                  "spill": 1.0})
BIG = 1 << 40  # a row budget holding every row in one batch


def _exact(s, rt=RT, budget=1 << 30, **kw):
    return exact_seconds(s, rt, **{"sparsity": 0.5, "quant": False, "candidates": 0,
                                   "row_budget": budget, **kw})


@pytest.mark.parametrize("what", [dict(sparsity=0.5, quant=False),
                                  dict(sparsity=0.0, quant=True)])
def test_the_predictions_grow_with_rows_and_columns(what):
    for d in (64, 256, 1280):
        ex = [_exact(Shape(1, r, d), **what) for r in (16, 64, 256, 1000, 4000)]
        fa = [fast_seconds(Shape(1, r, d), RT, **what) for r in (16, 64, 256, 1000, 4000)]
        assert ex == sorted(ex) and fa == sorted(fa) and ex[-1] > ex[0] and fa[-1] > fa[0]
    for r in (16, 1000):
        ex = [_exact(Shape(1, r, d), **what) for d in (64, 256, 1280)]
        fa = [fast_seconds(Shape(1, r, d), RT, **what) for d in (64, 256, 1280)]
        assert ex == sorted(ex) and fa == sorted(fa)
        base = [baseline_seconds(Shape(1, r, d), RT, quant=what["quant"]) for d in (64, 1280)]
        assert base[0] < base[1] < fa[2]  # the fast path does more than its baseline


def test_each_row_batch_pays_the_steps_fixed_cost():
    s = Shape(1, 600, 64)
    rt = replace(ZERO, step=1.0)  # only the per-step fixed cost
    per_row = 3 * 64 * 64 * 4 + 64 * 64  # rows_per_batch's bytes per row
    assert rows_per_batch(64, 600, 100 * per_row) == 100
    one, many = (_exact(s, rt, budget=b) for b in (BIG, 100 * per_row))
    work = 0.5 + 0.2  # the pruning's computed fraction of steps (PRUNE_WORK_MARGIN)
    assert one == pytest.approx(64 * work) and many == pytest.approx(6 * 64 * work)


def test_element_work_spills_once_a_batchs_pending_updates_outgrow_the_cache():
    n = 256
    f = fold_block(n)
    fits = IN_CACHE // (f * n * 4)  # rows whose pending updates [B, f, n] fit the cache
    rt = replace(ZERO, elem=1e-9, spill=3.0)
    s = Shape(1, 4 * fits, n)
    per_row = 3 * n * n * 4 + 64 * n  # rows_per_batch's bytes per row
    cached = _exact(s, rt, budget=fits * per_row)  # four batches within the cache
    streamed = _exact(s, rt, budget=BIG)  # one batch beyond it
    assert streamed == pytest.approx(3.0 * cached)
    # per element: R n^2 (f / 2 + PASSES) operations, each row's work independent of R
    assert _exact(Shape(1, 8 * fits, n), rt, budget=BIG) == pytest.approx(2 * streamed)
    assert _exact(s, replace(rt, spill=1.0), budget=BIG) == pytest.approx(cached)


def test_gptq_row_work_has_its_own_rate_and_spills_with_the_rows():
    only = replace(ZERO, gelem=1e-9, spill=2.0)
    small, large = Shape(1, 1000, 256), Shape(1, 16000, 256)  # rows [R, 256] of 2 / 32 MB
    assert fast_seconds(small, only, sparsity=0.0, quant=False) > 0
    ratio = (fast_seconds(large, only, sparsity=0.0, quant=False)
             / fast_seconds(small, only, sparsity=0.0, quant=False))
    assert ratio == pytest.approx(16 * 2.0)  # per row the same work, streamed
    assert fast_seconds(small, replace(only, elem=1.0), sparsity=0.0, quant=False) == (
        fast_seconds(small, only, sparsity=0.0, quant=False))  # not the greedy's rate
    # the grid search's passes over [R, d] spill too
    q = replace(ZERO, grid=1e-9, spill=2.0)
    g_small, g_large = (baseline_seconds(s, q, quant=True) for s in (small, large))
    assert g_large == pytest.approx(16 * 2.0 * g_small)


def test_calibration_measures_every_rate():
    rt = calibrate()
    for k, v in rt.to_dict().items():
        assert math.isfinite(v) and (v > 0 or k == "one_thread"), k
    assert rt.spill >= 1.0 and 2.0 <= rt.prep_exp <= 3.0
    assert rt.threads >= 1 and rt.contention >= 1 and 0 <= rt.one_thread <= 1  # costclock
    assert calibrate() is rt  # once per process


def test_many_hessian_groups_pay_gptqs_setup_per_group():
    rt = replace(ZERO, gcall=1e-4, col=1e-5)
    grouped, dense = Shape(1152, 1, 25), Shape(1, 1152, 25)  # depthwise vs one Hessian
    assert fast_seconds(grouped, rt, sparsity=0.0, quant=True) == pytest.approx(
        1152 * (1e-4 + 25 * 1e-5))
    assert fast_seconds(dense, rt, sparsity=0.0, quant=True) == pytest.approx(1e-4 + 25 * 1e-5)


def test_the_code_descent_is_priced_per_refined_candidate():
    """The obc quantization refines OBQ, its GPTQ candidates and RTN (solvers/choose.py):
    each refined candidate adds the same positive cost, growing with rows and columns."""
    q = dict(sparsity=0.0, quant=True, candidates=4)
    for s in (Shape(1, 64, 64), Shape(1, 1000, 256), Shape(4, 32, 512, k=4)):
        t = [_exact(s, **q, refined=n) for n in (0, 1, 6)]
        assert t[0] < t[1] < t[2]
        assert math.isclose(t[2] - t[0], 6 * (t[1] - t[0]), rel_tol=1e-9)
    one = [_exact(s, **q, refined=1) - _exact(s, **q) for s in
           (Shape(1, 64, 256), Shape(1, 256, 256), Shape(1, 256, 1024))]
    assert one == sorted(one)
