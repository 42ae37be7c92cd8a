"""The 8-bit runs' Hessians from a subgrid of the output positions (hessian.position_step,
columns(step, phase)): the phases' subgrids partition the positions exactly, step 1 is the
full X, the scaled subsample estimates the full H, and only 8-bit quantization alone
subsamples."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnx_obc import calib
from onnx_obc.backend import get_backend
from onnx_obc.collect import collect, subsampled
from onnx_obc.config import CompressConfig
from onnx_obc.hessian import columns, position_step
from onnx_obc.layers import find_layers

from . import builders as b
from .test_hessian import BIG, CONV_CASES

CASES = ["2d", "2d_strides", "2d_everything", "2d_same_upper", "2d_depthwise", "3d"]


def _xxt(L, u, x, **kw):
    X = np.concatenate(list(columns(L, u, x, BIG, np.float64, **kw)), axis=2)
    return X @ X.transpose(0, 2, 1), X.shape[2]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("step", [2, 3])
def test_the_phases_partition_the_positions(case, step):
    """Unscaled, the step^nd phases' X X^T add up to the full X X^T (every output position
    in exactly one subgrid), and step 1 is the full X itself."""
    model = b.conv(**CONV_CASES[case])
    (L,), _ = find_layers(model)
    u = L.uses[0]
    x = b.feeds(model, 3)["x"]
    full, n = _xxt(L, u, x)
    one, n1 = _xxt(L, u, x, step=1, phase=5)
    np.testing.assert_array_equal(one, full)
    nd = len(u.kernel)
    total, kept = np.zeros_like(full), 0
    for phase in range(step ** nd):
        part, m = _xxt(L, u, x, step=step, phase=phase)
        if m:
            scale = (n / 3) * 3 / m  # columns() scales by sqrt(positions / kept)
            part = part / scale
        total += part
        kept += m
    assert kept == n
    np.testing.assert_allclose(total, full, rtol=1e-9, atol=1e-9 * np.abs(full).max())


def test_the_scaled_subsample_estimates_the_full_hessian():
    """On a stationary signal the subgrid's H (scaled to the same N) is close to the full
    one, and not equal to it (a real subsample)."""
    model = b.conv(c_in=2, c_out=4, kernel=2, spatial=(40, 40))  # d = 8
    (L,), _ = find_layers(model)
    u = L.uses[0]
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 2, 40, 40)) + [[[[1.0]], [[-0.5]]]]).astype(np.float32)
    full, n = _xxt(L, u, x)
    sub, m = _xxt(L, u, x, step=2, phase=1)
    assert 0 < m < n
    rel = np.linalg.norm(sub - full) / np.linalg.norm(full)
    assert 0 < rel < 0.05


def test_matmul_tokens_are_subsampled_too():
    model = b.matmul(6, 5, rank=3)
    (L,), _ = find_layers(model)
    u = L.uses[0]
    x = np.random.default_rng(0).standard_normal((4, 40, 6)).astype(np.float32)
    full, n = _xxt(L, u, x)
    assert position_step(L, u, x.shape, 4, per_input=4) == 4  # 4 * 10 tokens >= 4 * 6
    sub, m = _xxt(L, u, x, step=4, phase=1)
    assert m == n // 4
    np.testing.assert_allclose(np.trace(sub[0]), np.trace(full[0]), rtol=0.2)


def test_position_step_keeps_enough_columns_per_input():
    model = b.conv(c_in=4, c_out=6, kernel=3, spatial=(16, 16))  # d = 36, 14 x 14 positions
    (L,), _ = find_layers(model)
    u = L.uses[0]
    shape = (1, 4, 16, 16)
    for samples, per_input, max_step in itertools.product((1, 4, 100), (4, 16), (2, 4, 8)):
        k = position_step(L, u, shape, samples, per_input=per_input, max_step=max_step)
        assert 1 <= k <= max_step
        if k > 1:
            assert samples * (14 // k) ** 2 >= per_input * 36
        if k < max_step:  # the next step would keep too few (or no position per axis)
            assert samples * (14 // (k + 1)) ** 2 < per_input * 36 or 14 < k + 1
    assert position_step(L, u, shape, 1, per_input=16) == 1  # 196 columns < 16 * 36
    assert position_step(L, u, shape, 100, per_input=4, max_step=4) == 4


def test_only_8_bit_quantization_alone_subsamples():
    f = lambda **kw: subsampled(CompressConfig.from_options(**kw))  # noqa: E731
    assert f(bits=8) and f(bits=8, act_bits=8)
    assert not f(bits=4) and not f(sparsity=0.5) and not f(bits=8, sparsity=0.5)
    assert not f(bits=4, act_bits=8)


def test_collect_subsamples_on_request_only():
    """collect(subsample=True) changes a wide layer's H (within sampling error), the
    default keeps the full one; the sample count is N either way."""
    model = b.conv(c_in=2, c_out=3, kernel=2, spatial=(30, 30))
    layers, _ = find_layers(model)
    data = calib.DataSet(b.feeds(model, 8, seed=1), "feeds")
    out = {}
    for sub in (False, True):
        accs, _ = collect(model, layers, data, 4, get_backend("cpu"), 64, False,
                          subsample=sub)
        assert accs["W"].samples == 8
        out[sub] = accs["W"].mean()
    assert not np.array_equal(out[True], out[False])
    t = [np.trace(out[k][0]) for k in (True, False)]  # the same scale: H = X X^T / N
    assert t[0] == pytest.approx(t[1], rel=0.1)
