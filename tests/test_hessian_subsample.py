"""Hessians from a subgrid of the output positions (hessian.position_step, columns(step,
phase)): the phases' subgrids partition the positions exactly, step 1 is the full X, the
scaled subsample estimates the full H; the 8-bit runs keep 4 columns per input, the exact
ones EXACT_COLUMNS (tier.column_floor), and ExactOBS on the subgrid's H loses next to
nothing under the full H."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnx_obc import calib
from onnx_obc.backend import get_backend
from onnx_obc.collect import collect
from onnx_obc.tier import subsampled
from onnx_obc.config import CompressConfig
from onnx_obc.hessian import SUBSAMPLE_MIN, columns, conv_columns, position_step
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
    """conv_columns' step^nd subgrids add up to the full X X^T (every output position in
    exactly one), and step 1 is the full X itself."""
    model = b.conv(**CONV_CASES[case])
    (L,), _ = find_layers(model)
    u = L.uses[0]
    x = b.feeds(model, 3)["x"].astype(np.float64)
    X = conv_columns(u, x)
    full = X @ X.transpose(0, 2, 1)
    np.testing.assert_array_equal(conv_columns(u, x, 1, 5), X)
    total, kept = np.zeros_like(full), 0
    for phase in range(step ** len(u.kernel)):
        Xp = conv_columns(u, x, step, phase)
        total += Xp @ Xp.transpose(0, 2, 1)
        kept += Xp.shape[2]
    assert kept == X.shape[2]
    np.testing.assert_allclose(total, full, rtol=1e-9, atol=1e-9 * np.abs(full).max())


@pytest.mark.parametrize("case", ["2d", "2d_everything", "3d"])
def test_the_samples_take_the_subgrids_in_turn(case):
    """columns(step): sample i takes subgrid (phase + i) mod step^nd, so step^nd copies of
    one input cover its positions exactly once (each chunk unscaled by its
    sqrt(positions / kept)), from any starting phase."""
    model = b.conv(**CONV_CASES[case])
    (L,), _ = find_layers(model)
    u = L.uses[0]
    one = b.feeds(model, 1)["x"]
    X1 = np.concatenate(list(columns(L, u, one, BIG, np.float64)), axis=2)
    full, positions = X1 @ X1.transpose(0, 2, 1), X1.shape[2]
    P = 2 ** len(u.kernel)
    for phase in (0, 3):
        total = np.zeros_like(full)
        for X in columns(L, u, np.repeat(one, P, axis=0), BIG, np.float64, 2, phase):
            assert X.shape[2]  # one sample per chunk here
            X = X / np.sqrt(positions / X.shape[2])
            total += X @ X.transpose(0, 2, 1)
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
    assert position_step(L, u, (4000, 40, 6), 4000, per_input=4) == 4
    assert position_step(L, u, x.shape, 4, per_input=4) == 1  # fewer than SUBSAMPLE_MIN
    sub, m = _xxt(L, u, x, step=4, phase=1)
    assert m == n // 4
    np.testing.assert_allclose(np.trace(sub[0]), np.trace(full[0]), rtol=0.2)


def test_position_step_keeps_enough_columns_per_input():
    model = b.conv(c_in=4, c_out=6, kernel=3, spatial=(16, 16))  # d = 36, 14 x 14 positions
    (L,), _ = find_layers(model)
    u = L.uses[0]
    shape = (1, 4, 16, 16)
    least = lambda per_input: max(per_input * 36, SUBSAMPLE_MIN)  # noqa: E731
    for samples, per_input, max_step in itertools.product((1, 40, 1000), (4, 16), (2, 4, 8)):
        k = position_step(L, u, shape, samples, per_input=per_input, max_step=max_step)
        assert 1 <= k <= max_step
        if k > 1:
            assert samples * (14 // k) ** 2 >= least(per_input)
        if k < max_step:  # the next step would keep too few (or no position per axis)
            assert samples * (14 // (k + 1)) ** 2 < least(per_input) or 14 < k + 1
    assert position_step(L, u, shape, 40, per_input=4) == 1  # 7,840 columns, 2 would keep 1,960
    assert position_step(L, u, shape, 1000, per_input=4, max_step=4) == 4


def test_only_8_bit_quantization_alone_subsamples():
    f = lambda **kw: subsampled(CompressConfig.from_options(**kw))  # noqa: E731
    assert f(bits=8) and f(bits=8, act_bits=8)
    assert not f(bits=4) and not f(sparsity=0.5) and not f(bits=8, sparsity=0.5)
    assert not f(bits=4, act_bits=8)


def test_collect_subsamples_on_request_only():
    """collect(subsample=4) changes a wide layer's H (within sampling error), the
    default keeps the full one; the sample count is N either way."""
    model = b.conv(c_in=2, c_out=3, kernel=2, spatial=(70, 70))
    layers, _ = find_layers(model)
    data = calib.DataSet(b.feeds(model, 8, seed=1), "feeds")
    out = {}
    for sub in (0, 4):
        accs, _ = collect(model, layers, data, 4, get_backend("cpu"), 64, False,
                          subsample=sub)
        assert accs["W"].samples == 8
        out[sub] = accs["W"].mean()
    assert not np.array_equal(out[4], out[0])
    t = [np.trace(out[k][0]) for k in (4, 0)]  # the same scale: H = X X^T / N
    assert t[0] == pytest.approx(t[1], rel=0.1)


def test_exact_runs_take_a_subgrid_only_where_the_columns_abound():
    """column_floor: 4 columns per input in the 8-bit tier, EXACT_COLUMNS where ExactOBS
    / OBQ / the DP read H, none with solver.positions "all"; a 2x2-kernel conv of 16
    channels (d = 64) over 69 x 69 positions keeps every one for 8 samples in an exact run
    (38,088 columns: every other one would keep 9,248 < 256 x 64) and takes a subgrid for 64
    (or in the 8-bit tier)."""
    from onnx_obc.tier import EXACT_COLUMNS, column_floor

    f = lambda **kw: column_floor(CompressConfig.from_options(**kw))  # noqa: E731
    assert f(bits=8) == 4 and f(bits=8, act_bits=8) == 4
    assert f(bits=4) == f(sparsity=0.5) == f(bits=4, act_bits=8) == EXACT_COLUMNS
    assert f(sparsity=0.5, positions="all") == f(bits=8, positions="all") == 0
    model = b.conv(c_in=16, c_out=3, kernel=2, spatial=(70, 70))
    layers, _ = find_layers(model)
    L, u = layers[0], layers[0].uses[0]
    assert position_step(L, u, (8, 16, 70, 70), 8, per_input=EXACT_COLUMNS) == 1
    assert position_step(L, u, (64, 16, 70, 70), 64, per_input=EXACT_COLUMNS) == 4
    assert position_step(L, u, (8, 16, 70, 70), 8, per_input=4) == 3


def test_exact_obs_on_the_subgrids_hessian_is_as_good_under_the_full_one():
    """50% ExactOBS of a 2x2 conv on 16 channels (d = 64) over 69 x 69 positions of 64
    samples (smooth maps, 16 channels mixed from 4, 10% noise): the subgrid (every 4th
    position along each axis, 18,496 of 304,704 columns) gives a solution whose loss under
    the full H is within 2% of the solution from the full H, both far below magnitude
    pruning's."""
    from onnx_obc.solvers.layer import solve_layer
    from onnx_obc.solvers.prepare import layer_loss
    from onnx_obc.solvers.structures import Unstructured
    from onnx_obc.tier import EXACT_COLUMNS

    model = b.conv(c_in=16, c_out=8, kernel=2, spatial=(70, 70))
    layers, _ = find_layers(model)
    rng = np.random.default_rng(4)
    low = np.kron(rng.standard_normal((64, 4, 18, 18)), np.ones((1, 1, 4, 4)))[..., :70, :70]
    x = np.einsum("ck,nkhw->nchw", rng.standard_normal((16, 4)), low)
    x += 0.1 * rng.standard_normal(x.shape)
    data = calib.DataSet({"x": x.astype(np.float32)}, "feeds")
    H = {sub: collect(model, layers, data, 16, get_backend("cpu"), 256, False,
                      subsample=sub)[0]["W"].mean() for sub in (0, EXACT_COLUMNS)}
    assert position_step(layers[0], layers[0].uses[0], (64, 16, 70, 70), 64,
                         per_input=EXACT_COLUMNS) == 4
    W = b.weights_of(model)["W"].reshape(1, 8, 64).astype(np.float64)
    loss = {}
    for sub, h in H.items():
        sol = solve_layer(W, h, structure=Unstructured(0.5))
        loss[sub] = layer_loss(W, sol.W, H[0])
    base = solve_layer(W, H[0], structure=Unstructured(0.5), method="magnitude")
    assert loss[EXACT_COLUMNS] <= 1.02 * loss[0]
    assert loss[EXACT_COLUMNS] < 0.5 * base.loss


def _padded_columns(use, x, step=1, phase=0):
    """The earlier conv_columns: numpy.pad, the phase's offset, then one strided slice per
    kernel offset (the reference for the version that never pads x)."""
    from onnx_obc.hessian import conv_pads

    pads = conv_pads(use, tuple(x.shape[2:]))
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    strides = use.strides
    if step > 1:
        offs = [(phase // step ** i) % step for i in range(len(strides))]
        x = x[(slice(None), slice(None), *(slice(o * s, None) for o, s in zip(offs, strides)))]
        strides = tuple(s * step for s in strides)
    out = [max(0, (n - ((k - 1) * dl + 1)) // s + 1)
           for n, k, s, dl in zip(x.shape[2:], use.kernel, strides, use.dilations)]
    N, C = x.shape[:2]
    K = int(np.prod(use.kernel))
    X = np.zeros((C, K, N, *out), dtype=x.dtype)
    for j, offs in enumerate(itertools.product(*(range(k) for k in use.kernel))):
        sl = tuple(slice(o * dl, o * dl + (n - 1) * s + 1, s)
                   for o, dl, n, s in zip(offs, use.dilations, out, strides))
        if all(n > 0 for n in out):
            X[:, j] = np.swapaxes(x[(slice(None), slice(None), *sl)], 0, 1)
    return X.reshape(use.group, (C // use.group) * K, -1)


@pytest.mark.parametrize("case", sorted(CONV_CASES))
@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_columns_without_a_padded_copy_equal_the_padded_ones(case, step):
    """conv_columns writes the padding's zeros into X instead of padding x: the same X,
    bit for bit, for every conv case, step and phase (the phases whose subgrid is empty
    included)."""
    model = b.conv(**CONV_CASES[case])
    (L,), _ = find_layers(model)
    u = L.uses[0]
    x = b.feeds(model, 3)["x"]
    for phase in range(step ** len(u.kernel)):
        np.testing.assert_array_equal(conv_columns(u, x, step, phase),
                                      _padded_columns(u, x, step, phase))
