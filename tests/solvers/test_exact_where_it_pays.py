"""Issue "Exact where it pays": on squeeze-excite-like layers (globally pooled inputs, one
column per sample, fewer samples than inputs) the quantization stage never ends worse than
GPTQ or RTN, says which solver it kept, and its grid is never worse than min-max under H."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc.quant import QuantSpec, fit_grid, rtn
from onnx_obc.solvers import solve_layer
from onnx_obc.solvers.prepare import layer_loss


def se_layer(d: int, r: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """W [1, r, d] heavy-tailed, H [1, d, d] from n globally pooled positive features
    (sigmoid of a low-rank map, a constant offset dominating): rank(H) <= n < d."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((d // 4, n))
    X = 1.0 / (1.0 + np.exp(-(rng.standard_normal((d, d // 4)) @ Z / 2 + 1.0)))  # [d, n]
    X *= rng.gamma(2.0, 1.0, size=(d, 1))  # per-channel scales
    W = rng.standard_t(3, size=(1, r, d)) * 0.1
    return W, (X @ X.T / n)[None]


def minmax_rtn_loss(W: np.ndarray, H: np.ndarray, bits: int) -> float:
    G, r, d = W.shape
    rows = W.reshape(G * r, d)
    return layer_loss(W, rtn(rows, fit_grid(rows, QuantSpec(bits=bits, mse=False)))
                      .reshape(G, r, d), H)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("bits", [3, 4])
def test_se_layer_obc_is_never_worse_than_gptq_or_rtn(seed, bits):
    W, H = se_layer(d=96, r=24, n=40, seed=seed)
    assert np.linalg.matrix_rank(H[0]) <= 40 < 96
    spec = QuantSpec(bits=bits)
    obc = solve_layer(W, H, quant=spec)
    gptq = solve_layer(W, H, quant=spec, method="gptq")
    gptq_ao = solve_layer(W, H, quant=spec, method="gptq", act_order=True)
    assert obc.loss <= min(gptq.loss, gptq_ao.loss) * (1 + 1e-9)
    assert obc.loss <= obc.baseline_loss * (1 + 1e-9)
    assert obc.loss <= 0.5 * minmax_rtn_loss(W, H, bits)
    assert obc.method_used  # which solver produced the weights is recorded
    assert obc.loss == pytest.approx(layer_loss(W, obc.W, H), rel=1e-12)
    c = obc.codes.reshape(24, 96)
    s, z = obc.grid.columns()
    np.testing.assert_allclose(obc.W.reshape(24, 96), s * (c - z), atol=1e-12)


def test_h_aware_grid_is_never_worse_than_minmax_under_h():
    """One input carries most of the output (large H_jj) and holds the row's largest
    weight: OBC's weight-space clip search shrinks the range and clips it, which costs far
    more under H than min-max; the H-aware search does not."""
    rng = np.random.default_rng(0)
    d, r = 64, 16
    W = rng.standard_normal((r, d)) * 0.1
    W[:, 0] = 1.0  # the largest weight of every row ...
    hd = np.ones(d)
    hd[0] = 1e3  # ... on the input that matters most
    X = rng.standard_normal((d, 200)) * np.sqrt(hd)[:, None]
    H = (X @ X.T / 200)[None]
    spec = QuantSpec(bits=4)

    def row_losses(grid):
        E = rtn(W, grid) - W
        return ((E @ H[0]) * E).sum(axis=1)

    mm = row_losses(fit_grid(W, QuantSpec(bits=4, mse=False)))
    blind = row_losses(fit_grid(W, spec))
    aware = row_losses(fit_grid(W, spec, H))
    assert (aware <= mm * (1 + 1e-12)).all()
    assert blind.sum() > 2 * mm.sum()  # the weight-space search is fooled here
    for seed in range(3):  # and never worse than min-max on SE-like Hessians
        Ws, Hs = se_layer(d=96, r=24, n=40, seed=seed)
        rows = Ws[0]
        E_mm = rtn(rows, fit_grid(rows, QuantSpec(bits=4, mse=False))) - rows
        E_h = rtn(rows, fit_grid(rows, spec, Hs)) - rows
        assert (((E_h @ Hs[0]) * E_h).sum(1) <= ((E_mm @ Hs[0]) * E_mm).sum(1) * (1 + 1e-12)).all()


def test_h_aware_grid_with_equal_diagonal_is_the_weight_space_search():
    """H = c I: every column weighs the same, so the search is OBC's unless min-max is better
    under H for a row (exact reductions: OBQ with H = I is still RTN on the baseline grid)."""
    rng = np.random.default_rng(1)
    W = rng.standard_normal((20, 32))
    spec = QuantSpec(bits=4)
    blind, aware = fit_grid(W, spec), fit_grid(W, spec, 3.0 * np.eye(32)[None])
    mm = fit_grid(W, QuantSpec(bits=4, mse=False))
    same = aware.scale == blind.scale
    np.testing.assert_array_equal(aware.scale[~same], mm.scale[~same])
    res = solve_layer(W[None], np.eye(32)[None], quant=spec, damp=0.0)
    np.testing.assert_array_equal(res.codes, res.baseline_codes)


@pytest.mark.parametrize("seed", range(3))
def test_eight_bit_weights_skip_obq_and_keep_the_better_of_gptq_and_rtn(seed):
    """At 8 bits (choose.FAST_BITS) only GPTQ act-order and RTN on the H-aware grid are
    solved: the kept loss is the lower of the two, is named, and beats RTN on correlated
    inputs."""
    from onnx_obc.solvers.choose import exact_pays

    assert not exact_pays(8) and exact_pays(4)
    W, H = se_layer(d=96, r=24, n=40, seed=seed)
    spec = QuantSpec(bits=8)
    obc = solve_layer(W, H, quant=spec)
    assert obc.method_used in ("gptq+act-order/H-grid", "rtn/H-grid")
    assert obc.loss <= obc.baseline_loss * (1 + 1e-12)
    assert obc.loss < 0.5 * obc.baseline_loss  # correlated inputs: GPTQ wins clearly
    assert obc.method_used.startswith("gptq")
    assert obc.loss == pytest.approx(layer_loss(W, obc.W, H), rel=1e-12)
    np.testing.assert_array_equal(obc.grid.scale, obc.baseline_grid.scale)  # the H-aware grid
    c = obc.codes.reshape(24, 96)
    s, z = obc.grid.columns()
    np.testing.assert_allclose(obc.W.reshape(24, 96), s * (c - z), atol=1e-12)


def test_eight_bit_weights_with_identity_hessian_are_rtn():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((1, 20, 32))
    res = solve_layer(W, np.eye(32)[None], quant=QuantSpec(bits=8), damp=0.0)
    assert res.method_used == "rtn/H-grid"
    np.testing.assert_array_equal(res.codes, res.baseline_codes)


@pytest.mark.parametrize("seed", range(3))
def test_eight_bit_choice_holds_when_the_layer_input_is_quantized_too(seed):
    """W8A8: the layer reads X_q (uint8 per-tensor, min-max) instead of X. Scored by what
    the deployed layer computes, E||W X - W_hat X_q||^2 minus W's own share (the input
    rounding with exact weights), the kept 8-bit weights beat min-max RTN by as much as the
    loss under H = X X^T / n says: the input rounding does not change the ranking."""
    rng = np.random.default_rng(seed)
    d, r, n = 96, 32, 4000
    Z = rng.standard_normal((d, 6)) @ rng.standard_normal((6, n))
    X = Z + 0.3 * rng.standard_normal((d, n))
    X = X / (1.0 + np.exp(-X))  # SiLU of correlated pre-activations
    lo, hi = min(X.min(), 0.0), X.max()
    s = (hi - lo) / 255
    z = np.round(-lo / s)
    Xq = (np.clip(np.round(X / s) + z, 0, 255) - z) * s
    W = rng.standard_t(4, size=(1, r, d)) * 0.05
    H = (X @ X.T / n)[None]
    kept = solve_layer(W, H, quant=QuantSpec(bits=8))
    mm = rtn(W[0], fit_grid(W[0], QuantSpec(bits=8, mse=False)))
    own = np.sum((W[0] @ X - W[0] @ Xq) ** 2) / n

    def deployed(W_hat):
        return np.sum((W[0] @ X - W_hat @ Xq) ** 2) / n - own

    ratio = deployed(kept.W[0]) / deployed(mm)
    ratio_h = kept.loss / layer_loss(W, mm[None], H)
    assert ratio < 0.5
    assert ratio == pytest.approx(ratio_h, rel=0.25)
