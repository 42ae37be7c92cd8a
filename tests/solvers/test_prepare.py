"""solvers/prepare.py: the layer loss, worked in row chunks on the CPU."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from onnx_obc.solvers.prepare import layer_loss

PREPARE = sys.modules["onnx_obc.solvers.prepare"]  # the package exports a function `prepare`


@pytest.mark.parametrize("chunk", [1 << 18, 40])
def test_layer_loss_is_the_output_error_in_any_row_chunks(monkeypatch, chunk):
    """E = sum_g ||(W_hat_g - W_g) X_g||^2 / N for H = X X^T / N, and with diag(H) alone the
    same with the cross terms dropped; a chunk of 40 weights is one row of 2 x 20 per step."""
    monkeypatch.setattr(PREPARE, "LOSS_CHUNK", chunk)
    rng = np.random.default_rng(0)
    G, r, d, N = 2, 7, 20, 50
    W = rng.standard_normal((G, r, d)).astype(np.float32)
    W_hat = W + 0.1 * rng.standard_normal((G, r, d))
    X = rng.standard_normal((G, d, N)) @ rng.standard_normal((G, N, N)) / 5  # correlated
    H = X @ np.swapaxes(X, 1, 2) / N  # [G, d, d]
    dW = W_hat - W.astype(np.float64)
    want = float(sum(np.square(dW[g] @ X[g]).sum() for g in range(G)) / N)
    assert layer_loss(W, W_hat, H) == pytest.approx(want, rel=1e-12)
    diag = np.diagonal(H, axis1=1, axis2=2)  # [G, d]
    want_diag = float((np.square(dW) * diag[:, None, :]).sum())
    assert layer_loss(W, W_hat, diag) == pytest.approx(want_diag, rel=1e-12)
    assert want_diag != pytest.approx(want, rel=1e-3)  # the cross terms do count
