"""Global selection across rows and exact reconstruction of each row at its chosen count.

Selection (OBC's global mask): all rows' step losses are pooled and the `count` cheapest
steps are taken, so the layer hits its sparsity exactly while rows differ. Step losses of a
row are not always increasing; we rank by their running maximum, which makes every row's
ranks non-decreasing so the selected steps of a row are always a prefix of its order.

Rebuild: for a quadratic loss, p greedy OBS steps leave a row at the optimal reconstruction
on the removed set M (the compensations compose exactly):
    w_hat = w - Hinv[:, M] (Hinv[M, M])^-1 w_M ,      w_hat_M = 0
so we only keep each row's removal order, never its d states (the reference's traces).
"""

from __future__ import annotations

from typing import Any

from ..backend import array_module


def select_counts(keys: Any, count: int) -> Any:
    """keys [R, d] (running max of each row's step losses) -> removals per row [R] (int64),
    summing to `count`. Uncomputed steps carry +inf keys and are never selected."""
    xp = array_module(keys)
    R, d = keys.shape
    key = keys.reshape(-1)  # [R*d], row-major: step index breaks ties
    if count <= 0:
        return xp.zeros(R, dtype=xp.int64)
    if count >= R * d:
        return xp.full(R, d, dtype=xp.int64)
    chosen = xp.argsort(key, kind="stable")[:count]  # flat indices r*d + k
    return xp.bincount(chosen // d, minlength=R).astype(xp.int64)


def rebuild(
    W: Any, Hinv: Any, group: Any, order: Any, counts: Any, rows_per_batch: int
) -> Any:
    """Rows of W [R, d] after counts[r] removals in `order` [R, d]; Hinv [G, d, d]."""
    xp = array_module(W, Hinv)
    R, d = W.shape
    out = W.astype(xp.float64, copy=True)  # [R, d]
    for r0 in range(0, R, rows_per_batch):
        r1 = min(R, r0 + rows_per_batch)
        p = int(counts[r0:r1].max()) if r1 > r0 else 0
        if p == 0:
            continue
        w = out[r0:r1]  # [B, d] view
        valid = xp.arange(p)[None, :] < counts[r0:r1, None]  # [B, p]
        idx = xp.where(valid, order[r0:r1, :p], 0)  # [B, p]; padding (maybe -1) -> column 0
        Hg = Hinv[group[r0:r1]]  # [B, d, d]
        cols = xp.take_along_axis(Hg, idx[:, None, :], axis=2)  # [B, d, p] = Hinv[:, M]
        sub = xp.take_along_axis(cols, idx[:, :, None], axis=1)  # [B, p, p] = Hinv[M, M]
        pair = valid[:, :, None] & valid[:, None, :]
        eye = xp.eye(p, dtype=sub.dtype)[None]
        sub = xp.where(pair, sub, eye)  # padding -> identity, decoupled
        rhs = xp.where(valid, xp.take_along_axis(w, idx, axis=1), 0.0)  # [B, p] = w_M
        z = xp.linalg.solve(sub, rhs[:, :, None])  # [B, p, 1]
        w -= (cols @ z)[:, :, 0]
        removed = xp.zeros((r1 - r0, d + 1), dtype=bool)  # [B, d + 1]: padding hits column d
        removed[xp.arange(r1 - r0)[:, None], xp.where(valid, idx, d)] = True
        w[removed[:, :d]] = 0.0  # exact zeros on the mask
    return out
