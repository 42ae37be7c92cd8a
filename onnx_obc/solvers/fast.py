"""ExactOBS greedy with deferred (blocked) Lemma-1 updates: same decisions, less traffic.

The greedy step of a row needs only diag(Hinv) and the column Hinv[:, q] of the current
inverse. After t eliminations since the last fold, the current inverse is
    Hinv_t = Hb - U_t U_t^T ,   U_t = [u_1 .. u_t],  u_s = Hinv_{s-1}[:, q_s] / sqrt([Hinv_{s-1}]_qq)
so  column q = Hb[:, q] - U_t (U_t[q, :])^T   (O(d t))  and  diag -= u_t^2   (O(d)).
Every `block` steps the t updates are folded into Hb with one batched matrix product
(Hb -= U U^T), which runs compute-bound instead of streaming d x d per step.
The decisions are those of exact.py up to float rounding (tests compare both).
"""

from __future__ import annotations

from typing import Any

from ..backend import array_module

BLOCK = 32  # eliminations folded per batched product


def greedy_order_fast(
    W: Any, Hinv: Any, group: Any, rows_per_batch: int, block: int = BLOCK
) -> tuple[Any, Any]:
    """Same contract as exact.greedy_order: losses [R, d] float64, order [R, d] int64."""
    xp = array_module(W, Hinv)
    R, d = W.shape
    losses = xp.empty((R, d), dtype=xp.float64)
    order = xp.empty((R, d), dtype=xp.int64)
    for r0 in range(0, R, rows_per_batch):
        r1 = min(R, r0 + rows_per_batch)
        Hb = Hinv[group[r0:r1]].astype(W.dtype)  # [B, d, d], one copy per row
        lo, od = _greedy_batch_fast(W[r0:r1], Hb, block)
        losses[r0:r1] = lo
        order[r0:r1] = od
    return losses, order


def _greedy_batch_fast(w: Any, Hb: Any, block: int) -> tuple[Any, Any]:
    xp = array_module(w, Hb)
    B, d = w.shape
    w = w.copy()  # [B, d]
    ar = xp.arange(B)
    free = xp.ones((B, d), dtype=bool)
    losses = xp.empty((B, d), dtype=xp.float64)
    order = xp.empty((B, d), dtype=xp.int64)
    tiny = xp.finfo(w.dtype).tiny
    U = xp.empty((B, d, block), dtype=w.dtype)  # pending eliminations
    for k0 in range(0, d, block):
        diag = xp.diagonal(Hb, axis1=1, axis2=2).copy()  # [B, d] exact at fold time
        nb = min(block, d - k0)
        for t in range(nb):
            safe = xp.where(free, xp.maximum(diag, tiny), 1.0)
            score = xp.where(free, w * w / safe, xp.inf)  # [B, d]
            q = xp.argmin(score, axis=1)  # [B]
            losses[:, k0 + t] = score[ar, q]
            order[:, k0 + t] = q
            col = Hb[ar, q, :]  # [B, d] row q of the folded inverse (= column, symmetric)
            if t:
                col = col - (U[:, :, :t] @ U[ar, q, :t][:, :, None])[:, :, 0]
            dq = safe[ar, q]  # [B]
            w -= col * (w[ar, q] / dq)[:, None]
            w[ar, q] = 0.0
            free[ar, q] = False
            u = col / xp.sqrt(dq)[:, None]  # [B, d]
            U[:, :, t] = u
            diag -= u * u
        Hb -= U[:, :, :nb] @ xp.swapaxes(U[:, :, :nb], 1, 2)  # fold: [B,d,nb] @ [B,nb,d]
    return losses, order
