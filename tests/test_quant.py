"""Quantization grids: values and codes on the grid, the clipping search, group grids, and
the quantization options' checks. OBQ itself: tests/solvers/test_obq.py."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc.config import CompressConfig
from onnx_obc.errors import ConfigError
from onnx_obc.quant import QuantSpec, codes, fit_grid, quantize, rtn

from .solvers.data import weights


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("mse", [True, False])
def test_grid_values_and_codes(bits, symmetric, mse):
    W = weights(7, 24, bits)[0]
    spec = QuantSpec(bits=bits, symmetric=symmetric, mse=mse)
    grid = fit_grid(W, spec)
    q = rtn(W, grid)
    c = codes(q, grid)
    assert c.min() >= grid.qmin and c.max() <= grid.qmax
    s, z = grid.columns()
    np.testing.assert_allclose(s * (c - z), q, rtol=0, atol=1e-12)  # q is on the grid
    if symmetric:
        assert np.all(grid.zero == 0)
        assert grid.qmax == 2 ** (bits - 1) - 1 and grid.qmin == -grid.qmax  # narrow range
    assert np.all(quantize(np.zeros_like(W), s, z, grid.qmin, grid.qmax) == 0)  # 0 exact


def test_clipping_search_lowers_the_p_norm_error():
    W = np.random.default_rng(0).standard_t(3, size=(16, 64))  # heavy tails
    err = {}
    for mse in (False, True):
        g = fit_grid(W, QuantSpec(bits=4, mse=mse))
        err[mse] = (np.abs(rtn(W, g) - W) ** 2.4).sum()
    assert err[True] < 0.9 * err[False]


def test_group_grid_shapes_and_bad_group_size():
    W = weights(5, 32, 1)[0]
    g = fit_grid(W, QuantSpec(bits=4, group_size=8))
    assert g.scale.shape == (5, 4) and g.columns()[0].shape == (5, 32)
    with pytest.raises(ConfigError, match="does not divide"):
        fit_grid(W, QuantSpec(bits=4, group_size=12))
    with pytest.raises(ConfigError, match="bits"):
        QuantSpec(bits=9)


def test_config_rejects_bad_quant_combinations():
    with pytest.raises(ConfigError, match="add quant.bits"):
        CompressConfig.from_options(sparsity=0.5, group_size=64)
    with pytest.raises(ConfigError, match="2 to 8"):
        CompressConfig.from_options(bits=1)
    with pytest.raises(ConfigError, match=">= 2"):
        CompressConfig.from_options(bits=4, group_size=1)
