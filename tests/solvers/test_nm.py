"""N:M ExactOBS: the pattern holds on the ONNX axis TensorRT reads, H = I reduces to the
magnitude baseline, fast == eager oracle, recorded losses == measured loss, and it beats
magnitude N:M on correlated H. Block pruning: test_blocks.py."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc.solvers import layer_loss, prepare
from onnx_obc.solvers.baselines import nm_magnitude
from onnx_obc.solvers.nm import nm_prune
from onnx_obc.solvers.rules import NMRule
from onnx_obc.solvers.structures import conv_nm_groups, linear_nm_groups

from .data import correlated_H, weights
from .oracles import greedy_order


def check_nm(w_onnx: np.ndarray, axis: int, n: int, m: int) -> bool:
    """Polygraphy-style N:M check on an ONNX-layout weight: along `axis` (Conv W[M, C, kh, kw]:
    axis 1 at every kernel position; MatMul B[K, N]: axis 0; Gemm transB=1 B[N, K]: axis 1),
    every group of m consecutive entries has at least n zeros."""
    a = np.moveaxis(np.asarray(w_onnx), axis, -1)
    if a.shape[-1] % m:
        return False
    groups = a.reshape(*a.shape[:-1], a.shape[-1] // m, m)
    return bool(np.all((groups == 0).sum(axis=-1) >= n))


def _zeros_per_group(w_onnx: np.ndarray, axis: int, m: int) -> np.ndarray:
    a = np.moveaxis(np.asarray(w_onnx), axis, -1)
    return (a.reshape(*a.shape[:-1], a.shape[-1] // m, m) == 0).sum(axis=-1)


def _solve_nm(W, H, n, m, col_groups, damp=0.01, rows_per_batch=8, block=16):
    """W [G, r, d], H [G, d, d] -> N:M weights [G, r, d], losses, order, prepared."""
    G, r, d = W.shape
    prep = prepare(W, H, damp)
    rows = prep.W.reshape(G * r, d).astype(np.float64)
    group = np.repeat(np.arange(G), r)
    W_hat, losses, order = nm_prune(rows, prep.Hinv, group, rows_per_batch, n, m, col_groups,
                                    block=block)
    return W_hat.reshape(G, r, d), losses, order, prep


# ----------------------------------------------------------------------------- N:M


def test_check_nm_detects_violations():
    w = np.ones((4, 8, 3, 3))
    w[:, ::2] = 0.0  # channels 0, 2, 4, 6 zero: 2 zeros in every group of 4
    assert check_nm(w, 1, 2, 4)
    w[1, 1, 2, 0] = 0.0  # a third zero is still fine
    w[2, 2, 0, 1] = 1.0  # but one group with a single zero is not
    assert not check_nm(w, 1, 2, 4)
    assert not check_nm(np.zeros((3, 6)), 1, 2, 4)  # axis not divisible by m


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_nm_pattern_on_input_channels_at_every_kernel_position(groups):
    M, C, kh, kw, n, m = 8, 16, 3, 3, 2, 4
    cg = C // groups
    d = cg * kh * kw
    w_onnx = np.random.default_rng(1).standard_normal((M, cg, kh, kw))
    W = w_onnx.reshape(groups, M // groups, d)  # Layer.to_matrix for a conv
    H = np.stack([correlated_H(d, 10 + g) for g in range(groups)])
    col_groups = conv_nm_groups(cg, kh * kw, m)
    W_hat, _, _, _ = _solve_nm(W, H, n, m, col_groups)
    out = W_hat.reshape(M, cg, kh, kw)  # Layer.from_matrix
    assert check_nm(out, 1, n, m)
    assert np.all(_zeros_per_group(out, 1, m) == n)  # exactly n: the kept weights are nonzero
    assert int((out == 0).sum()) == out.size * n // m


def test_matmul_and_gemm_nm_pattern_along_k():
    K, N, n, m = 32, 12, 2, 4
    rng = np.random.default_rng(2)
    H = correlated_H(K, 2)[None]
    col_groups = linear_nm_groups(K, m)
    B = rng.standard_normal((K, N))  # MatMul B[K, N]: W = B^T
    W_hat, _, _, _ = _solve_nm(B.T[None], H, n, m, col_groups)
    out = W_hat[0].T  # back to [K, N]
    assert check_nm(out, 0, n, m) and np.all(_zeros_per_group(out, 0, m) == n)
    Bt = rng.standard_normal((N, K))  # Gemm transB=1: B[N, K] = W
    W_hat, _, _, _ = _solve_nm(Bt[None], H, n, m, col_groups)
    assert check_nm(W_hat[0], 1, n, m) and np.all(_zeros_per_group(W_hat[0], 1, m) == n)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_identity_hessian_gives_magnitude_nm_exactly(n, m):
    W = weights(10, 48, 3)
    col_groups = conv_nm_groups(16, 3, m) if m == 4 else linear_nm_groups(48, m)
    W_hat, _, _, _ = _solve_nm(W, np.eye(48)[None], n, m, col_groups, damp=0.0)
    mag = nm_magnitude(W[0], n, col_groups)
    np.testing.assert_array_equal(W_hat[0] == 0, mag == 0)
    kept = W_hat[0] != 0
    np.testing.assert_allclose(W_hat[0][kept], W[0][kept], rtol=1e-6)  # no compensation (fp32)


@pytest.mark.parametrize("seed", range(3))
def test_fast_nm_makes_the_same_decisions_as_the_eager_oracle(seed):
    d, r, n, m = 60, 9, 2, 4  # 2:4 -> 30 steps, not a multiple of the fold block
    prep = prepare(weights(r, d, seed), correlated_H(d, seed)[None], 0.01)
    rows, group = prep.W[0].astype(np.float64), np.zeros(r, dtype=int)
    col_groups = conv_nm_groups(20, 3, m)
    _, l1, o1 = nm_prune(rows, prep.Hinv, group, 4, n, m, col_groups, block=16)
    final = np.empty_like(rows)
    l2, o2 = greedy_order(rows, prep.Hinv, group, 5, rule=NMRule(n, col_groups), final=final,
                          max_steps=d * n // m)
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_allclose(l1, l2, rtol=1e-9, atol=1e-14)
    assert np.all(final[np.arange(r)[:, None], o2] == 0)  # the eager state at the last step


@pytest.mark.parametrize("seed", range(3))
def test_nm_recorded_losses_sum_to_the_measured_loss(seed):
    d, r = 48, 12
    W = weights(r, d, seed)
    H = correlated_H(d, seed)[None]
    W_hat, losses, _, prep = _solve_nm(W, H, 2, 4, linear_nm_groups(d, 4), damp=0.0)
    assert float(losses.sum()) == pytest.approx(layer_loss(W, W_hat, H), rel=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_nm_beats_magnitude_nm_on_correlated_activations(seed):
    d, r = 64, 32
    W = weights(r, d, seed)
    H = correlated_H(d, seed)[None]
    col_groups = linear_nm_groups(d, 4)
    W_hat, _, _, _ = _solve_nm(W, H, 2, 4, col_groups)
    mag = nm_magnitude(W[0], 2, col_groups)[None]
    ratio = layer_loss(W, W_hat, H) / layer_loss(W, mag, H)
    assert ratio <= 0.6, ratio


def test_group_helpers_report_layers_that_cannot_be_nm():
    assert conv_nm_groups(3, 49, 4) is None  # ResNet conv1: 3 input channels
    assert linear_nm_groups(30, 4) is None
    assert conv_nm_groups(8, 9, 4).shape == (72,)
    g = conv_nm_groups(8, 9, 4)  # channels c at kernel position k: column c*9 + k
    assert g[0 * 9 + 5] == g[3 * 9 + 5] != g[4 * 9 + 5]  # channels 0..3 / 4..7 at position 5
    assert g[0] != g[1]  # same channels, different kernel positions
    np.testing.assert_array_equal(np.bincount(g), np.full(18, 4))
    with pytest.raises(ValueError, match="exactly 4"):
        nm_prune(np.ones((2, 6)), np.eye(6)[None], np.zeros(2, dtype=int), 2, 2, 4,
                 np.arange(6) // 4)
