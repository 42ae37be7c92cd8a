"""Shrinking a data-limited layer's Hessian toward its diagonal, by held-out halves.

With fewer calibration columns than inputs (globally pooled inputs, a Gemm on one feature
vector per sample) H = X X^T / N is singular: OBS / GPTQ updates move the error into the
directions the samples never reached, and the solution overfits them. On Magika's 214 x 512
output Gemm (rank 255 of 512 from 256 samples, 4 bits) OBQ's loss under H is 0.12 of
rounding's but 1.65x rounding's under the Hessian of 512 other files. The remedy is the
covariance estimator's for N < d (shrinkage toward the diagonal, Ledoit and Wolf 2004):

    H(a) = (1 - a) H + a diag(H)        a = 0: H itself; a = 1: each input alone (RTN-like)

with `a` chosen by two-fold cross-validation on halves of the calibration samples: each
half's solution (the fast path: GPTQ / SparseGPT with the same grid and structure) scored
by its loss under the other half's Hessian, tr(dW H_other dW^T), summed over both folds
(on at most ROWS of W's rows).
Pure array math (NumPy or CuPy, from the arrays): no onnx, no printing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..backend import array_module

GRID = (0.0, 0.1, 0.2, 0.4, 0.7, 1.0)  # the shrinkage levels tried
MARGIN = 0.02  # a level other than 0 is taken only where its held-out loss is this much lower
ROWS = 64  # the levels are scored on at most this many of W's rows, evenly spaced


def shrunk(H: Any, a: float) -> Any:
    """H [G, d, d] -> (1 - a) H + a diag(H) (a new array; H itself where a == 0)."""
    if a == 0.0:
        return H
    xp = array_module(H)
    out = H * (1.0 - a)
    idx = xp.arange(H.shape[-1])
    out[:, idx, idx] = H[:, idx, idx]  # the diagonal unchanged
    return out


def held_out_loss(dW: Any, H: Any) -> float:
    """tr(dW H dW^T) summed over groups: dW [G, r, d], H [G, d, d] (float64)."""
    xp = array_module(dW, H)
    D = dW.astype(xp.float64)
    return float(((D @ H) * D).sum())  # batched GEMM: [G, r, d] @ [G, d, d]


def choose(W: Any, Ha: Any, Hb: Any, solve: Callable[[Any, Any], Any],
           grid: Sequence[float] = GRID, margin: float = MARGIN) -> tuple[float, list[float]]:
    """(a, the held-out loss per level of `grid`): `solve(W, H)` -> the compressed W [G, r, d]
    of W [G, r, d] under H [G, d, d]; Ha, Hb [G, d, d] the Hessian means of two disjoint
    halves of the samples. `a` minimises the summed cross-fold loss; 0 unless some level
    is `margin` lower than 0's (grid[0] must be 0). At most ROWS rows of W are solved: the
    level is H's (its unseen directions), not a row's."""
    W = W[:, ::max(1, -(-W.shape[1] // ROWS))]  # [G, <= ROWS, d]
    losses = []
    for a in grid:
        loss = 0.0
        for fit, other in ((Ha, Hb), (Hb, Ha)):
            loss += held_out_loss(solve(W, shrunk(fit, a)) - W, other)
        losses.append(loss)
    best = min(range(len(grid)), key=losses.__getitem__)
    return (grid[best] if losses[best] < (1.0 - margin) * losses[0] else 0.0), losses
