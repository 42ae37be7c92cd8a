"""GPTQ / SparseGPT fast path: equals step-by-step re-inversion, reduces to RTN / magnitude
for H = I, hits the exact count, beats the baselines on correlated activations."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc.quant import QuantSpec, fit_grid, quantize
from onnx_obc.solvers import Unstructured, prepare, solve_layer
from onnx_obc.solvers.gptq import gptq

from .data import correlated_H, weights


def _reinverting_reference(W, H, scale, zero, qmin, qmax, order):
    """Fix columns in `order`, re-inverting H over the still-free columns every step."""
    W = W.copy()
    free = list(order)
    Q = np.zeros_like(W)
    while free:
        i, rest = free[0], free[1:]
        Hinv = np.linalg.inv(H[np.ix_(free, free)])  # [f, f], row 0 is column i
        q = quantize(W[:, i], scale[:, i], zero[:, i], qmin, qmax)
        Q[:, i] = q
        err = (W[:, i] - q) / Hinv[0, 0]
        W[:, rest] -= np.outer(err, Hinv[0, 1:])
        free = rest
    return Q


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_equals_step_by_step_reinversion(act_order):
    d, r = 40, 6
    W = weights(r, d, 0)[0]
    prep = prepare(W[None], correlated_H(d, 0)[None], 0.01)
    grid = fit_grid(prep.W[0], QuantSpec(bits=3))
    s, z = grid.columns()
    diagH = np.diag(prep.H[0])
    got, _ = gptq(prep.W[0], prep.Hinv[0], scale=s, zero=z, qmin=grid.qmin, qmax=grid.qmax,
                  act_order=act_order, diagH=diagH, block=16)
    order = np.argsort(-diagH, kind="stable") if act_order else np.arange(d)
    ref = _reinverting_reference(prep.W[0].astype(np.float64), prep.H[0], s, z, grid.qmin,
                                 grid.qmax, order)
    np.testing.assert_allclose(got, ref, atol=1e-9)


def test_gptq_loss_is_the_measured_loss():
    W = weights(8, 32, 1)
    res = solve_layer(W, correlated_H(32, 1)[None], quant=QuantSpec(bits=4), method="gptq",
                      damp=0.0)
    assert res.obs_loss == pytest.approx(res.loss, rel=1e-6)


def test_identity_hessian_gives_rtn_and_magnitude():
    W = weights(8, 32, 2)
    q = solve_layer(W, np.eye(32)[None], quant=QuantSpec(bits=4), method="gptq", damp=0.0)
    np.testing.assert_array_equal(q.codes, q.baseline_codes)
    p = solve_layer(W, np.eye(32)[None], structure=Unstructured(0.5), method="gptq", damp=0.0)
    # blockwise magnitude: the same count, every pruned weight small within its block
    assert p.zeros == 8 * 32 // 2
    assert p.loss <= p.baseline_loss * 1.2


@pytest.mark.parametrize("seed", range(6))
def test_gptq_and_sparsegpt_beat_the_baselines_on_correlated_data(seed):
    W = weights(32, 64, seed)
    H = correlated_H(64, seed)[None]
    q = solve_layer(W, H, quant=QuantSpec(bits=4), method="gptq", act_order=True)
    assert q.loss <= 0.5 * q.baseline_loss
    p = solve_layer(W, H, structure=Unstructured(0.5), method="gptq")
    assert p.zeros == 32 * 64 // 2
    assert p.loss <= 0.5 * p.baseline_loss
    j = solve_layer(W, H, structure=Unstructured(0.5), quant=QuantSpec(bits=8), method="gptq")
    assert j.zeros >= 32 * 64 // 2  # joint: the pruned weights stay 0 after rounding


@pytest.mark.parametrize("act_order", [True, False])
def test_all_groups_at_once_equal_one_call_per_group(act_order):
    """gptq_groups (depthwise layers at 8 bits: many small Hessian groups) takes the same
    column steps as gptq_rows' call per group: the same weights, codes and loss."""
    from onnx_obc.solvers.gptq import gptq_groups, gptq_rows

    rng = np.random.default_rng(3)
    G, r, d = 12, 2, 9
    X = rng.standard_normal((G, d, 30)) * rng.uniform(0.2, 3.0, (G, d, 1))
    H = X @ X.transpose(0, 2, 1) / 30
    W = rng.standard_normal((G, r, d)).astype(np.float32)
    prep = prepare(W, H, 0.01)
    rows = prep.W.reshape(G * r, d)
    grid = fit_grid(rows, QuantSpec(bits=8), H)
    a = gptq_rows(rows, prep, grid, act_order=act_order)
    b = gptq_groups(rows, prep, grid, act_order=act_order)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert b[2] == pytest.approx(a[2], rel=1e-12)
    from onnx_obc.quant import codes, rtn
    assert not np.array_equal(b[1], codes(rtn(rows, grid), grid))  # compensated, not RTN


@pytest.mark.parametrize("d", [5, 128, 300])
def test_inverse_factor_is_the_cholesky_factor_of_the_inverse(d):
    """gptq.inverse_factor(H) (8-bit GPTQ, no H^-1 formed) is upper triangular and equals
    the transposed Cholesky factor of H^-1 that gptq takes from Hinv, within rounding."""
    from onnx_obc.solvers.gptq import inverse_factor, upper_inverse

    rng = np.random.default_rng(d)
    X = rng.standard_normal((d, 2 * d)) * rng.uniform(0.1, 5.0, (d, 1))
    H = X @ X.T / (2 * d) + 0.01 * np.eye(d)
    U = inverse_factor(H)
    np.testing.assert_array_equal(U, np.triu(U))
    ref = np.linalg.cholesky(np.linalg.inv(H)).T
    np.testing.assert_allclose(U, ref, rtol=1e-6, atol=1e-8 * np.abs(ref).max())
    R = np.linalg.cholesky(H).T  # upper
    np.testing.assert_allclose(upper_inverse(R, leaf=16) @ R, np.eye(d), atol=1e-8)


def test_gptq_from_h_equals_gptq_from_its_inverse():
    """gptq(Hinv=None, H=...) (the 8-bit path) takes the same steps as gptq(Hinv): the same
    codes on a correlated layer, the loss within rounding."""
    W, H = weights(24, 160, seed=4), correlated_H(160, seed=4)
    prep = prepare(W, H[None], 0.01)
    grid = fit_grid(prep.W[0], QuantSpec(bits=8), H[None])
    s, z = grid.columns()
    kw = dict(scale=s, zero=z, qmin=grid.qmin, qmax=grid.qmax, act_order=True,
              diagH=np.diagonal(prep.H[0]))
    a, la = gptq(prep.W[0], prep.Hinv[0], **kw)
    b, lb = gptq(prep.W[0], None, H=prep.H[0], **kw)
    np.testing.assert_allclose(b, a, atol=1e-9 * np.abs(a).max())
    assert lb == pytest.approx(la, rel=1e-6)


def test_the_factor_prepared_for_act_order_gives_the_same_gptq():
    """prepare(inverse=False, factor=True) (8 bits alone: its dampening check factors H in
    act order, reversed) hands GPTQ act-order the factor it would compute itself: the same
    weights and loss bit for bit, one Cholesky per layer instead of two."""
    from onnx_obc.solvers.gptq import gptq_rows

    W, H = weights(24, 160, seed=5), correlated_H(160, seed=5)
    plain = prepare(W, H[None], 0.01, inverse=False)
    kept = prepare(W, H[None], 0.01, inverse=False, factor=True)
    assert plain.factor is None and kept.factor.shape == (1, 160, 160)
    grid = fit_grid(plain.W[0], QuantSpec(bits=8), H[None])
    a = gptq_rows(plain.W[0], plain, grid, act_order=True)
    b = gptq_rows(kept.W[0], kept, grid, act_order=True)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[2] == b[2]


def _sparsegpt_nm_reference(W, H, n, m, order):
    """SparseGPT's N:M by re-inversion: columns fixed in `order` (groups of m together);
    when a group's first column comes up, each row prunes the n of its m columns with the
    smallest w^2 / [H_free(j)^-1]_00 (H over column j and every one after it in order)."""
    W = W.copy()
    d = len(order)
    Q, pruned = np.zeros_like(W), np.zeros(W.shape, dtype=bool)
    for k, i in enumerate(order):
        if k % m == 0:
            sal = np.stack([W[:, order[k + t]] ** 2 / np.linalg.inv(
                H[np.ix_(order[k + t:], order[k + t:])])[0, 0] for t in range(m)])  # [m, r]
            low = np.argsort(np.argsort(sal, axis=0, kind="stable"), axis=0) < n
            for t in range(m):
                pruned[:, order[k + t]] = low[t]
        free = order[k:]
        Hinv = np.linalg.inv(H[np.ix_(free, free)])
        Q[:, i] = np.where(pruned[:, i], 0.0, W[:, i])
        err = (W[:, i] - Q[:, i]) / Hinv[0, 0]
        W[:, free[1:]] -= np.outer(err, Hinv[0, 1:])
    assert d == len(set(order))
    return Q


@pytest.mark.parametrize("conv", [False, True])
def test_sparsegpt_nm_equals_step_by_step_reinversion(conv):
    """The N:M fast path (SparseGPT's) against the re-inverting oracle, on a Linear's
    consecutive groups and on a Conv's (m input channels at one kernel position: columns
    kernel-size apart, processed group by group)."""
    from onnx_obc.solvers import NM, conv_nm_groups, linear_nm_groups

    d, r = 48, 5
    groups = conv_nm_groups(12, 4, 4) if conv else linear_nm_groups(d, 4)
    st = NM(2, 4).on_columns(groups)
    W = weights(r, d, 3)
    res = solve_layer(W, correlated_H(d, 3)[None], structure=st, method="gptq")
    prep = prepare(W, correlated_H(d, 3)[None], 0.01)
    order = list(np.argsort(st.groups(d), kind="stable"))
    ref = _sparsegpt_nm_reference(prep.W[0].astype(np.float64), prep.H[0], 2, 4, order)
    np.testing.assert_allclose(res.W[0], ref, atol=1e-8)
    g = st.groups(d)
    assert all(((res.W[0][:, g == k] == 0).sum(1) == 2).all() for k in range(d // 4))


def test_sparsegpt_nm_reduces_to_magnitude_and_beats_it_on_correlated_data():
    """H = I: each row's 2 smallest of every 4 (the magnitude N:M baseline) exactly; on
    correlated activations well below it (and above ExactOBS N:M, which it approximates)."""
    from onnx_obc.solvers import NM, linear_nm_groups

    st = NM(2, 4).on_columns(linear_nm_groups(64, 4))
    W = weights(16, 64, 4)
    eye = solve_layer(W, np.eye(64)[None], structure=st, method="gptq", damp=0.0)
    np.testing.assert_array_equal(eye.W == 0, eye.baseline == 0)  # the same mask
    np.testing.assert_allclose(eye.W, eye.baseline, rtol=1e-6)  # (float32 weights)
    for seed in range(3):
        H = correlated_H(64, seed)[None]
        fast = solve_layer(W, H, structure=st, method="gptq")
        exact = solve_layer(W, H, structure=st, method="obc")
        assert fast.loss <= 0.5 * fast.baseline_loss and exact.loss <= fast.loss * 1.001
        j = solve_layer(W, H, structure=st, quant=QuantSpec(bits=4), method="gptq")
        assert j.zeros >= 16 * 64 // 2 and j.loss <= 0.5 * j.baseline_loss  # joint
