"""A post-pass on quantized weights that can only lower the layer loss: H-aware coordinate
descent over the integer codes.

The layer loss of the quantized rows W_hat = s (c - z) is E = sum_rows e H e^T with
e = W_hat - W (H undampened, the loss every candidate is judged by). Moving one code of a
row by delta (one grid step, so e_j changes by t = delta * s_j) changes that row's loss by

    dE = 2 t (e H)_j + t^2 H_jj

exactly. A sweep visits the columns in order and, for all rows (and Hessian groups) at once,
moves the code one step against the gradient (e H)_j (of the two steps the only one that can
lower E: the t^2 H_jj term is the same both ways) where that lowers E, stays inside
[qmin, qmax] and is off the pinned (pruned) weights; (e H) is kept current (eagerly inside blocks
of columns, one matrix product per block for the rest). Sweeps repeat until none moves a code
or `sweeps` ran. Greedy OBQ and GPTQ fix each weight once, against the weights still free;
this pass revisits every weight against all the others' final values, which is where the
last rounding losses of both sit (OBQ's compensation pushes weights against the grid's clip
range, and rounding decisions taken early are never reconsidered).

Exact reduction: for diagonal H (H = I) the loss separates over weights and round to
nearest is already the best code of every weight, so nothing moves (dE >= 0 for every
step). The result is never worse than the input: every accepted step lowers E (dE below
-TOL * t^2 H_jj, and (e H) is recomputed exactly at each sweep's start), and the final loss
is checked against the start's, the input returned when not lower.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import array_module
from .prepare import layer_loss

SWEEPS = 8
BLOCK = 128
TOL = 1e-9  # a step must lower E by more than TOL * t^2 H_jj (no moves on rounding noise)


def wanted(quant: Any, exact: bool) -> bool:
    """Whether a solve runs the descent: after ExactOBS / OBQ (`exact`) unless switched off
    (refine False), after GPTQ only when asked (refine True: reference GPTQ by default);
    never without quantization. The one place the solvers (layer.py, gptq.py, blocked.py)
    and the cost plan decide it."""
    if not quant:
        return False
    return quant.refine is not False if exact else bool(quant.refine)


def descend(W: Any, H: Any, grid: Any, codes: Any, W_hat: Any, name: str, obs_loss: float,
            pinned: Any = None, loss: float | None = None
            ) -> tuple[Any, Any, str, float, float]:
    """The descent on a solved layer (or a candidate, choose.py): W [G, r, d] the original
    weights, H [G, d, d] undampened, W_hat / codes [G, r, d] its solution on `grid`, named
    `name`, with OBS loss `obs_loss` and layer loss `loss` (computed when None). Returns
    (W_hat, codes, name, obs_loss, loss): when a code moved, the descended weights, "+refine"
    appended to the name and obs_loss plus the descent's (exact) change; else the inputs."""
    before = layer_loss(W, W_hat, H) if loss is None else loss
    new, new_codes, moved = refine_codes(W, H, grid, codes, pinned)
    if not moved:
        return W_hat, codes, name, obs_loss, before
    after = layer_loss(W, new, H)
    return new, new_codes, name + "+refine", obs_loss + (after - before), after


def refine_codes(W: Any, H: Any, grid: Any, codes: Any, pinned: Any = None,
                 sweeps: int = SWEEPS, block: int = BLOCK) -> tuple[Any, Any, int]:
    """W [G, r, d] the original weights, H [G, d, d] the undampened Hessians, grid over the
    G * r rows, codes [G, r, d] on it; pinned [G, r, d] bool (codes that must not move,
    e.g. pruned weights) or None. Returns (W_hat [G, r, d] float64 = s (c - z), codes [G, r, d]
    int32, codes moved in all)."""
    xp = array_module(W, H)
    G, r, d = W.shape
    s, z = grid.columns()
    s = s.reshape(G, r, d).astype(xp.float64)
    z = z.reshape(G, r, d).astype(xp.float64)
    W = W.astype(xp.float64)
    H = H.astype(xp.float64)
    c = codes.astype(xp.float64)  # integers, float for the arithmetic
    E = s * (c - z) - W  # [G, r, d]
    Hd = xp.diagonal(H, axis1=1, axis2=2)  # [G, d]
    start = float((E @ H * E).sum())
    moved_total = 0
    for _ in range(sweeps):
        EH = E @ H  # [G, r, d], exact at each sweep's start
        moved = xp.zeros((), dtype=xp.int64)
        for a in range(0, d, block):
            b = min(d, a + block)
            D = xp.zeros((G, r, b - a))  # this block's changes of e
            for j in range(a, b):
                g = EH[:, :, j]  # [G, r]
                step = -xp.sign(g)  # the t^2 H_jj term is the same both ways: descend
                t = step * s[:, :, j]
                t2h = t * t * Hd[:, j][:, None]
                cj = c[:, :, j] + step
                ok = (2.0 * t * g + t2h < -TOL * t2h) & (cj >= grid.qmin) & (cj <= grid.qmax)
                if pinned is not None:
                    ok &= ~pinned[:, :, j]
                if xp is np and not ok.any():  # on a device: no host round trip per column
                    continue
                t = xp.where(ok, t, 0.0)
                c[:, :, j] += xp.where(ok, step, 0.0)
                E[:, :, j] += t
                D[:, :, j - a] = t
                EH[:, :, a:b] += t[:, :, None] * H[:, j, a:b][:, None, :]
                moved += ok.sum()
            upd = D @ H[:, a:b, :]  # the other columns' (e H), once per block
            upd[:, :, a:b] = 0.0  # already applied eagerly
            EH += upd
        moved = int(moved)  # one host round trip per sweep
        moved_total += moved
        if not moved:
            break
    if moved_total and float((E @ H * E).sum()) >= start:  # never worse (rounding guard)
        c, moved_total = codes.astype(xp.float64), 0
    out = c.astype(xp.int32)
    return s * (c - z), out, moved_total
