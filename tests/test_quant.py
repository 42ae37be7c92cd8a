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


@pytest.mark.parametrize("symmetric", [True, False])
def test_a_reduced_8_bit_grid_is_the_7_bit_one(symmetric):
    """quant.reduce_range: 8-bit weights in 7 bits' range, the same grid and codes as 7 bits
    (the search at 8 bits' coarse-to-fine, asked for at 7 too), the 8-bit paths kept."""
    W = weights(7, 24, 8)[0]
    red = QuantSpec(bits=8, symmetric=symmetric, reduced=True)
    seven = QuantSpec(bits=7, symmetric=symmetric)
    assert (red.qmin, red.qmax) == (seven.qmin, seven.qmax) == ((-63, 63) if symmetric
                                                                 else (0, 127))
    g7, g8 = fit_grid(W, seven, coarse=True), fit_grid(W, red)
    np.testing.assert_array_equal(codes(rtn(W, g8), g8), codes(rtn(W, g7), g7))
    assert red.bits == 8


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


def _clippable(seed):
    """W [48, 256] whose widest weights sit on inputs that barely matter (clipping pays
    under H), and H (mildly correlated inputs)."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((48, 256))
    W[:, :4] *= 8
    diag = rng.uniform(0.5, 2.0, 256)
    diag[:4] = 1e-3
    return W, np.diag(diag) + 0.002


def _h_loss(W, grid, H):
    E = rtn(W, grid) - W
    return float(((E @ H) * E).sum())


@pytest.mark.parametrize("symmetric", [True, False])
def test_the_8_bit_coarse_to_fine_search_matches_the_full_one(symmetric, monkeypatch):
    """At quant.COARSE_BITS (8) the clip search tries a quarter of the shrinks (coarse, then
    around the best) in float32: its H-weighted RTN loss is within 1% of the full search's,
    never worse than min-max under H, and below min-max on heavy-tailed rows."""
    import onnx_obc.quant as quant

    W, H = _clippable(2)
    spec = QuantSpec(bits=8, symmetric=symmetric)
    coarse = fit_grid(W, spec, H[None])
    monkeypatch.setattr(quant, "COARSE_BITS", 9)  # the full search, as below 8 bits
    full = fit_grid(W, spec, H[None])
    minmax = fit_grid(W, QuantSpec(bits=8, symmetric=symmetric, mse=False))
    lc, lf, lm = (_h_loss(W, g, H) for g in (coarse, full, minmax))
    assert lc <= 1.01 * lf and lc <= lm * (1 + 1e-9)
    assert lc < 0.9 * lm
    assert not np.array_equal(coarse.scale, minmax.scale)
    rows = [np.sum(((rtn(W, g) - W) @ H) * (rtn(W, g) - W), axis=1) for g in (coarse, minmax)]
    assert np.all(rows[0] <= rows[1] * (1 + 1e-5))  # row by row, float32 products


def test_below_8_bits_the_search_is_the_full_float64_one(monkeypatch):
    """The coarse search is only for COARSE_BITS and more: a 4-bit grid is the same with
    the coarse path forced off (the full search) and differs with it forced on."""
    import onnx_obc.quant as quant

    W, H = _clippable(4)
    H = H[None]
    spec = QuantSpec(bits=4)
    g = fit_grid(W, spec, H)
    monkeypatch.setattr(quant, "COARSE_BITS", 99)
    np.testing.assert_array_equal(fit_grid(W, spec, H).scale, g.scale)
    monkeypatch.setattr(quant, "COARSE_BITS", 4)
    assert not np.array_equal(fit_grid(W, spec, H).scale, g.scale)


def test_coarse_asked_for_below_8_bits_is_the_coarse_search(monkeypatch):
    """fit_grid(coarse=True) runs the coarse-to-fine search at any width (export/orttables.py
    at 4 bits): what COARSE_BITS = 4 gives, within 1% of the full search's loss; coarse=False
    the full one even at 8 bits."""
    import onnx_obc.quant as quant

    W, H = _clippable(4)
    spec = QuantSpec(bits=4, symmetric=False, group_size=8, norm=2.0)
    asked, full = fit_grid(W, spec, coarse=True), fit_grid(W, spec, coarse=False)
    monkeypatch.setattr(quant, "COARSE_BITS", 4)
    np.testing.assert_array_equal(asked.scale, fit_grid(W, spec).scale)
    eye = np.eye(W.shape[1])
    assert _h_loss(W, asked, eye) <= 1.01 * _h_loss(W, full, eye)
    spec8 = QuantSpec(bits=8)
    monkeypatch.setattr(quant, "COARSE_BITS", 99)  # the full search for every width
    np.testing.assert_array_equal(fit_grid(W, spec8, coarse=False).scale,
                                  fit_grid(W, spec8).scale)


@pytest.mark.parametrize("group_size", [None, 8])
def test_rtn_and_codes_on_row_chunks_equal_the_whole_matrix(monkeypatch, group_size):
    """The CPU works rtn() and codes() in row chunks (fresh memory for layer-sized float64
    temporaries was most of an 8-bit classifier's baseline); the chunks must not show."""
    import onnx_obc.quant as q

    rng = np.random.default_rng(3)
    W = rng.standard_normal((37, 24)).astype(np.float32)
    spec = QuantSpec(bits=4, symmetric=False, group_size=group_size)
    grid = fit_grid(W, spec)
    whole = rtn(W, grid), codes(rtn(W, grid), grid)
    monkeypatch.setattr(q, "ROW_CHUNK", 50)  # two rows a step, the last step one row
    chunked = rtn(W, grid), codes(rtn(W, grid), grid)
    assert len(q._row_chunks(W)) == 19
    np.testing.assert_array_equal(chunked[0], whole[0])
    np.testing.assert_array_equal(chunked[1], whole[1])
    assert chunked[0].dtype == np.float64 and chunked[1].dtype == np.int32
    s, z = grid.columns()  # the definition, whole-matrix
    ref = s * (np.clip(np.rint(W / s) + z, spec.qmin, spec.qmax) - z)
    np.testing.assert_allclose(chunked[0], ref, rtol=0, atol=1e-12)
