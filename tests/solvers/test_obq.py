"""OBQ: exact reductions (H = I gives RTN), on-grid values, loss identity, fast == plain,
compound keeps zeros, and OBQ beats RTN on correlated activations."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc.quant import QuantSpec, fit_grid
from onnx_obc.solvers import Unstructured, prepare, solve_layer
from onnx_obc.solvers.fast import greedy_traces
from onnx_obc.solvers.rules import QuantRule

from .data import correlated_H, iid_H, weights
from .oracles import greedy_order


def test_identity_hessian_gives_rtn_exactly():
    W = weights(12, 40, 2)
    res = solve_layer(W, np.eye(40)[None], quant=QuantSpec(bits=4), damp=0.0)
    np.testing.assert_allclose(res.W, res.baseline, atol=1e-12)  # same grid, no compensation
    np.testing.assert_array_equal(res.codes, res.baseline_codes)


@pytest.mark.parametrize("seed", range(3))
def test_recorded_quantization_losses_sum_to_the_measured_loss(seed):
    W = weights(10, 36, seed)
    res = solve_layer(W, correlated_H(36, seed)[None], quant=QuantSpec(bits=3), damp=0.0)
    assert res.loss == pytest.approx(res.obs_loss, rel=1e-3)


def test_every_value_is_on_the_grid_and_in_range():
    W = weights(16, 48, 3)
    res = solve_layer(W, correlated_H(48, 3, rank=4)[None], quant=QuantSpec(bits=3))
    c = res.codes.reshape(16, 48)
    assert c.min() >= res.grid.qmin and c.max() <= res.grid.qmax
    s, z = res.grid.columns()
    np.testing.assert_allclose(res.W.reshape(16, 48), s * (c - z), atol=1e-12)


@pytest.mark.parametrize("pinned", [False, True])
def test_fast_obq_makes_the_same_decisions_as_the_plain_one(pinned):
    d, r = 50, 7
    prep = prepare(weights(r, d, 5), correlated_H(d, 5)[None], 0.01)
    rows = prep.W[0].astype(np.float64)
    if pinned:
        rows[:, ::3] = 0.0
    grid = fit_grid(rows, QuantSpec(bits=4))
    s, z = grid.columns()
    rule = QuantRule(s, z, grid.qmin, grid.qmax, (rows == 0) if pinned else None)
    group = np.zeros(r, dtype=int)
    final = np.empty_like(rows)
    l1, o1 = greedy_order(rows, prep.Hinv, group, 3, rule=rule, final=final)
    tr = greedy_traces(rows, prep.Hinv, group, 4, None, block=16, rule=rule)
    np.testing.assert_array_equal(o1, tr.order)
    np.testing.assert_allclose(l1, tr.losses, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(final, tr.final, atol=1e-9)
    if pinned:
        assert np.all(tr.final[:, ::3] == 0)


@pytest.mark.parametrize("seed", range(8))
def test_obq_beats_rtn_on_correlated_activations(seed):
    W = weights(32, 64, seed)
    res = solve_layer(W, correlated_H(64, seed)[None], quant=QuantSpec(bits=4))
    assert res.loss <= 0.5 * res.baseline_loss, res.loss / res.baseline_loss


@pytest.mark.parametrize("seed", range(4))
def test_obq_not_worse_than_rtn_on_iid_activations(seed):
    W = weights(32, 64, seed)
    res = solve_layer(W, iid_H(64, seed)[None], quant=QuantSpec(bits=4))
    assert res.loss <= 1.0 * res.baseline_loss


def test_compound_keeps_every_zero_and_reports_both_losses():
    W = weights(16, 64, 6)
    H = correlated_H(64, 6)[None]
    res = solve_layer(W, H, structure=Unstructured(0.5), quant=QuantSpec(bits=4))
    assert res.zeros == 16 * 64 // 2
    pruned = solve_layer(W, H, structure=Unstructured(0.5))
    np.testing.assert_array_equal(res.W == 0, pruned.W == 0)  # the pruning mask is kept
    assert res.prune_loss == pytest.approx(pruned.loss, rel=1e-5)
    assert res.loss >= res.prune_loss
    assert res.loss <= 0.5 * res.baseline_loss  # vs magnitude + RTN


def test_group_wise_obq():
    W = weights(8, 64, 7)
    res = solve_layer(W, correlated_H(64, 7)[None], quant=QuantSpec(bits=4, group_size=16))
    assert res.grid.scale.shape == (8, 4)
    assert res.loss < res.baseline_loss
