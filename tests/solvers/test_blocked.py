"""Blocked OBS (block-diagonal H over column blocks): with one block it is the unblocked
solver exactly; with several it beats the baseline, hits the sparsity exactly and keeps the
full rows' grid; block accumulation equals the diagonal blocks of the full Hessian."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc.errors import ConfigError
from onnx_obc.hessian import BlockHessianAccumulator, HessianAccumulator
from onnx_obc.quant import QuantSpec
from onnx_obc.solvers import NM, Unstructured, solve_layer
from onnx_obc.solvers.blocked import from_blocks, solve_blocked, to_blocks

from .data import correlated_H, weights

CASES = [  # (structure, quant, method)
    (Unstructured(0.5), None, "obc"),
    (Unstructured(0.5), None, "gptq"),
    (None, QuantSpec(bits=4), "gptq"),
    (Unstructured(0.5), QuantSpec(bits=4), "obc"),  # prune, then OBQ with zeros kept
    (Unstructured(0.5), QuantSpec(bits=3, group_size=4), "gptq"),
]


def _diag_blocks(H: np.ndarray, k: int) -> np.ndarray:
    """H [G, d, d] -> its diagonal blocks [G, k, bs, bs]."""
    G, d, _ = H.shape
    bs = d // k
    return np.stack([H[:, j * bs:(j + 1) * bs, j * bs:(j + 1) * bs] for j in range(k)], axis=1)


@pytest.mark.parametrize("st,q,method", CASES)
def test_one_block_is_the_unblocked_solver(st, q, method):
    W = weights(12, 32, 0).astype(np.float32)
    H = correlated_H(32, 0)[None]
    ref = solve_layer(W, H, structure=st, quant=q, method=method)
    got = solve_blocked(W, H[:, None], structure=st, quant=q, method=method)
    np.testing.assert_array_equal(got.W, ref.W)
    assert got.loss == pytest.approx(ref.loss, rel=1e-12)
    assert got.zeros == ref.zeros and got.method_used == ref.method_used
    if q is not None:
        np.testing.assert_array_equal(got.codes, ref.codes)
        np.testing.assert_array_equal(got.grid.scale, ref.grid.scale)
    if q is None:  # the baseline too (magnitude pruning; RTN's grid search differs: no H)
        np.testing.assert_array_equal(got.baseline, ref.baseline)


def test_block_layout_round_trips():
    A = np.arange(2 * 3 * 12).reshape(2, 3, 12)
    V = to_blocks(A, 4)
    assert V.shape == (8, 3, 3)
    np.testing.assert_array_equal(V[1 * 4 + 2], A[1, :, 6:9])  # group 1, block 2
    np.testing.assert_array_equal(from_blocks(V, 2), A)


@pytest.mark.parametrize("st,q,method", CASES)
def test_blocks_beat_the_baseline_and_keep_the_format(st, q, method):
    G, r, d, k = 2, 10, 48, 2
    W = np.concatenate([weights(r, d, s) for s in range(G)]).astype(np.float32)
    H = np.stack([correlated_H(d, s) for s in range(G)])
    Hb = _diag_blocks(H, k)
    res = solve_blocked(W, Hb, structure=st, quant=q, method=method)
    assert res.W.shape == (G, r, d)
    if st is not None:
        n = round(0.5 * G * r * d)  # the exact layer-wide count (rounding adds zeros)
        assert res.zeros == n if q is None else res.zeros >= n
    if q is not None:  # one scale per output row (per group of 4): the full rows' grid
        assert res.grid.scale.shape == (G * r, d // (q.group_size or d))
        s, z = res.grid.columns()
        np.testing.assert_allclose(res.W.reshape(G * r, d), s * (res.codes.reshape(G * r, d) - z))
    assert res.loss < (0.2 if method == "obc" else 0.6) * res.baseline_loss  # block-diag H


def test_block_accumulation_is_the_diagonal_of_the_full_hessian():
    rng = np.random.default_rng(0)
    full, blk = HessianAccumulator(2, 24, np), BlockHessianAccumulator(2, 24, 3, np)
    for _ in range(3):
        X = rng.standard_normal((2, 24, 40))
        full.add(X)
        blk.add(X)
        full.count(5)
        blk.count(5)
    np.testing.assert_allclose(blk.mean(), _diag_blocks(full.mean(), 3), rtol=1e-13)
    assert blk.total.nbytes == 2 * 24 * 8 * 8  # G * d * bs * 8 bytes


def test_blocked_refuses_structures_it_cannot_solve():
    W = weights(4, 16, 0)
    H = _diag_blocks(correlated_H(16, 0)[None], 2)
    with pytest.raises(ConfigError, match="unstructured"):
        solve_blocked(W, H, structure=NM(2, 4))
    with pytest.raises(ConfigError, match="divide"):
        solve_blocked(W, H, quant=QuantSpec(bits=4, group_size=6))
