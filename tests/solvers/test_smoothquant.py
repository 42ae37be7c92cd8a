"""solvers/smoothquant.py: SmoothQuant's scales (alpha 1: each channel's maximum; floored;
a dead input left alone); exact reduction (channels and weight columns of one maximum give
every strength a constant scale, so no strength changes the error and none is taken); on
correlated inputs with outlier channels the chosen strength lowers the estimated W8A8 error
below half of no smoothing's, and the choice is the largest strength near the lowest."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc.solvers import smoothquant as sq

N, D, R = 512, 48, 32


def inputs(seed: int, outliers: tuple[int, ...] = (), gain: float = 25.0) -> np.ndarray:
    """Correlated rows: 4 shared factors mixed into every channel plus noise; `outliers`
    channels scaled by `gain` (a LayerNorm's large gains)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, 4)) @ rng.standard_normal((4, D)) + 0.3 * rng.standard_normal(
        (N, D))
    X[:, list(outliers)] *= gain
    return X


def weights(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((R, D)) / np.sqrt(D)


def test_scales():
    a = np.array([4.0, 1.0, 0.01, 0.0])
    w = np.array([1.0, 4.0, 1.0, 1.0])
    assert sq.scales(a, w, 1.0) == pytest.approx([4.0, 1.0, 0.04, 0.04])  # the floor
    assert sq.scales(a, w, 0.5) == pytest.approx(np.sqrt([4.0, 1.0, 0.04, 0.04]) / np.sqrt(
        [1.0, 4.0, 1.0, 1.0]))
    assert (sq.scales(np.zeros(4), w, 1.0) == 1).all()  # a dead input: nothing to scale


def test_one_maximum_everywhere_takes_no_strength():
    """Exact reduction: every channel of X and every column of W with the same maximum
    makes s constant for every alpha, and a constant scale moves both grids with it: the
    same error as no smoothing (to rounding), so nothing is taken."""
    X = inputs(0)
    X = X / np.abs(X).max(0)
    W = weights(1)
    W = W / np.abs(W).max(0)
    c = sq.choose([(X, np.abs(X).max(0))], [W])
    assert c.alpha is None
    for a in sq.ALPHAS:
        assert c.errors[f"{a:g}"] == pytest.approx(c.errors["off"], rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_outlier_channels_are_smoothed(seed):
    """Three channels 25x the others, the rows in two halves (each half's scales and grid
    tried on the other's rows): the chosen strength's error is below half of no smoothing's,
    and it is the largest strength within NEAR of the lowest."""
    X = inputs(seed, outliers=(3, 17, 40))
    halves = [(X[:N // 2], np.abs(X[:N // 2]).max(0)), (X[N // 2:], np.abs(X[N // 2:]).max(0))]
    c = sq.choose(halves, [weights(seed + 10), weights(seed + 20)])
    assert c.alpha is not None
    assert c.errors[f"{c.alpha:g}"] < 0.5 * c.errors["off"], c.errors
    low = min(c.errors[f"{a:g}"] for a in sq.ALPHAS)
    assert c.alpha == max(a for a in sq.ALPHAS if c.errors[f"{a:g}"] <= sq.NEAR * low)


def test_the_error_counts_both_grids():
    """output_error with s = 1 is the error of RTN weights on the fake-quantized input, each
    part measured alone adding up in quadrature roughly (both are non-zero)."""
    X, W = inputs(3, outliers=(5,)), weights(4)
    ones = np.ones(D)
    both = sq.output_error(X, [W], ones)
    Y = X @ W.T
    wq = np.sum((Y - X @ sq.fake_weights(W).T) ** 2) / np.sum(Y ** 2)
    aq = np.sum((Y - sq.fake_activations(X) @ W.T) ** 2) / np.sum(Y ** 2)
    assert wq > 0 and aq > 0 and both == pytest.approx(wq + aq, rel=0.5)


def test_the_weight_grid_is_the_run_s_own():
    """qmax 63 (quant.reduce_range): the weights' part of the error on 7 bits' grid, about 4x
    the 8-bit one's, and the strengths' errors of `choose` follow it."""
    X, W = inputs(3), weights(4)
    Y = X @ W.T
    part = {q: np.sum((Y - X @ sq.fake_weights(W, q).T) ** 2) / np.sum(Y ** 2) for q in (63, 127)}
    assert 3.0 < part[63] / part[127] < 5.0
    ones = np.ones(D)
    assert sq.output_error(X, [W], ones, qmax=63) > sq.output_error(X, [W], ones)
    X = inputs(0, outliers=(3, 17, 40))
    c7, c8 = (sq.choose([(X, np.abs(X).max(0))], [W], qmax=q) for q in (63, 127))
    assert all(c7.errors[k] > c8.errors[k] for k in c8.errors)


def test_wide_layers_are_estimated_on_a_spread_of_rows():
    """A layer of more than OUT_ROWS outputs is estimated on an even spread of them: W
    repeated 40 times (1,280 rows, each row's error its own) gives the same choice and
    errors within 10% of W's."""
    X = inputs(5, outliers=(3, 17))
    halves = [(X[:N // 2], np.abs(X[:N // 2]).max(0)), (X[N // 2:], np.abs(X[N // 2:]).max(0))]
    W = weights(6)
    one, big = sq.choose(halves, [W]), sq.choose(halves, [np.tile(W, (40, 1))])
    assert 40 * R > sq.OUT_ROWS and big.alpha == one.alpha
    for k, v in one.errors.items():
        assert big.errors[k] == pytest.approx(v, rel=0.1)
