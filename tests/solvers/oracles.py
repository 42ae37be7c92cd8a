"""Test oracles: ExactOBS greedy pruning as the OBC paper describes it (the plain, eager
implementation), and the full traces of the fast solvers (no skipping) in the same contract.

Per row w of W, with its own copy of Hinv = H^-1 restricted to the free weights F:
    q      = argmin_{j in F} w_j^2 / [Hinv]_jj                  (OBS loss of removing j)
    w     <- w - Hinv[:, q] * w_q / [Hinv]_qq                    (optimal compensation)
    Hinv  <- Hinv - Hinv[:, q] Hinv[q, :] / [Hinv]_qq            (Lemma 1: drop q from F)
Each step is a rank-1 update of a d x d matrix per row: O(d^2) memory traffic per step,
O(rows * d^3) per layer. This is the reference the faster solvers are tested against.

Only losses and the removal order are kept (2 * rows * d numbers), not the row state at
every step: the state after p removals is rebuilt exactly from the order (select.py).
"""

from __future__ import annotations

from typing import Any

from onnx_obc.backend import array_module
from onnx_obc.solvers.blocks import block_traces
from onnx_obc.solvers.fast import greedy_traces
from onnx_obc.solvers.rules import PruneRule


def greedy_order(W: Any, Hinv: Any, group: Any, rows_per_batch: int, rule: Any = None,
                 final: Any = None, max_steps: int | None = None) -> tuple[Any, Any]:
    """Run the greedy to the end (or for `max_steps` steps) on every row.

    W [R, d] rows; Hinv [G, d, d] inverse Hessians; group [R] the Hessian of each row;
    `rule` (rules.py) decides each step (pruning by default). Returns losses [R, d] (loss of
    step k, float64) and order [R, d] (weight fixed at step k), [R, max_steps] with
    `max_steps`; the rows after the last step are written into `final` [R, d] when given.
    """
    xp = array_module(W, Hinv)
    rule = rule or PruneRule()
    R, d = W.shape
    steps = d if max_steps is None else max(0, min(d, int(max_steps)))
    losses = xp.empty((R, steps), dtype=xp.float64)
    order = xp.empty((R, steps), dtype=xp.int64)
    for r0 in range(0, R, rows_per_batch):
        r1 = min(R, r0 + rows_per_batch)
        rows = xp.arange(r0, r1)
        lo, od, w = _greedy_batch(W[r0:r1], Hinv[group[r0:r1]].astype(W.dtype), rule.bind(rows),
                                  steps)
        losses[r0:r1] = lo
        order[r0:r1] = od
        if final is not None:
            final[r0:r1] = w
    return losses, order


def _greedy_batch(w: Any, Hb: Any, rule: Any, steps: int | None = None) -> tuple[Any, Any, Any]:
    """w [B, d], Hb [B, d, d] (consumed). The eager loop of the paper, for `steps` steps (all
    by default). Returns losses, order [B, steps] and the rows (fixed weights at their targets)."""
    xp = array_module(w, Hb)
    B, d = w.shape
    steps = d if steps is None else steps
    w = w.copy()
    ar = xp.arange(B)
    pen = xp.zeros((B, d), dtype=w.dtype)  # +inf on fixed weights
    fixed = xp.zeros_like(w)  # their values
    losses = xp.empty((B, steps), dtype=xp.float64)
    order = xp.empty((B, steps), dtype=xp.int64)
    tiny = xp.finfo(w.dtype).tiny
    for k in range(steps):
        diag = xp.diagonal(Hb, axis1=1, axis2=2)  # [B, d]
        safe = xp.where(pen == 0, xp.maximum(diag, tiny), 1.0)
        q, loss, target = rule.pick(w, safe, pen, ar)
        losses[:, k] = loss
        order[:, k] = q
        col = Hb[ar, q, :]  # [B, d] = Hinv[:, q] (symmetric)
        dq = safe[ar, q]  # [B]
        w -= col * ((w[ar, q] - target) / dq)[:, None]
        w[ar, q] = target
        fixed[ar, q] = target
        pen[ar, q] = xp.inf
        Hb -= col[:, :, None] * (col / dq[:, None])[:, None, :]  # rank-1, Lemma 1
    return losses, order, fixed if steps == d else xp.where(pen == 0, w, fixed)


def greedy_order_fast(W: Any, Hinv: Any, group: Any, rows_per_batch: int,
                      block: int | None = None) -> tuple[Any, Any]:
    """Full traces of the deferred solver (no skipping), same contract as greedy_order."""
    tr = greedy_traces(W, Hinv, group, rows_per_batch, None, block)
    return tr.losses, tr.order


def block_greedy_order(W: Any, Hinv: Any, group: Any, rows_per_batch: int, b: int,
                       col_blocks: Any, fold: int | None = None) -> tuple[Any, Any]:
    """Full block traces (no skipping): losses [R, nb] float64, order [R, nb] int64 block ids."""
    tr = block_traces(W, Hinv, group, rows_per_batch, b, col_blocks, None, fold)
    return tr.losses, tr.order
