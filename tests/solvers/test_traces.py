"""Loss traces for the allocation: one run read at every level gives what solve_layer gives
at that level (weights, masks, recorded loss), for unstructured weights and for blocks."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc.solvers import (Blocks, Unstructured, conv_nm_groups, rebuild_at, solve_layer,
                              traces)

from .data import correlated_H, weights


@pytest.mark.parametrize("budget", [1 << 30, 40_000])  # one batch of rows; several
def test_unstructured_levels_are_the_solutions_at_those_levels(budget):
    W = np.concatenate([weights(24, 36, 0), weights(24, 36, 1)])  # two Hessian groups
    H = np.stack([correlated_H(36, 0), correlated_H(36, 1)])
    tr = traces(W, H, None, 0.8, budget_bytes=budget)
    previous = -1.0
    for s in (0.0, 0.3, 0.5, 0.8):
        cut = tr.at(s)
        assert cut.removed == int(cut.steps.sum()) == round(s * W.size)
        assert cut.loss >= previous and cut.loss == tr.loss_at(s)
        previous = cut.loss
        rows = rebuild_at(tr, s)  # [R, d]
        assert int((rows == 0).sum()) == round(s * W.size)
        if s:
            ref = solve_layer(W, H, structure=Unstructured(s), budget_bytes=budget)
            np.testing.assert_array_equal(rows.reshape(W.shape) == 0, ref.W == 0)
            np.testing.assert_allclose(rows.reshape(W.shape), ref.W, rtol=1e-6, atol=1e-7)
            assert cut.loss == pytest.approx(ref.obs_loss, rel=1e-12)


def test_block_levels_are_the_block_solutions():
    cin, kernel, b = 8, 3, 4
    d = cin * kernel
    W, H = weights(16, d, 2), correlated_H(d, 2)[None]
    st = Blocks(b, 0.5).on_columns(conv_nm_groups(cin, kernel, b))
    tr = traces(W, H, st, 0.9)
    assert tr.size == b and tr.keys.shape == (16, d // b)
    for s in (0.25, 0.5):
        cut = tr.at(s)
        assert cut.removed == b * round(s * W.size / b)
        ref = solve_layer(W, H, structure=Blocks(b, s).on_columns(st.col_groups))
        rows = rebuild_at(tr, s).reshape(W.shape)
        np.testing.assert_array_equal(rows == 0, ref.W == 0)
        assert int((rows == 0).sum()) == cut.removed
        assert cut.loss == pytest.approx(ref.obs_loss, rel=1e-9)
