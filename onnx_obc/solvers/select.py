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
    """Rows of W [R, d] after counts[r] removals in `order` [R, d]; Hinv [G, d, d].

    Rows are batched in order of their counts, so a batch's systems Hinv[M, M] z = w_M
    (padded with identity to its largest count p) are nearly all of size p. Only those
    [B, p, p] blocks are gathered; the update w -= Hinv[:, M] z is one product per Hessian,
    with z scattered to its columns."""
    xp = array_module(W, Hinv)
    R, d = W.shape
    out = W.astype(xp.float64, copy=True)  # [R, d]
    by_count = xp.argsort(counts, kind="stable")  # [R]
    for r0 in range(0, R, rows_per_batch):
        rows = by_count[r0:r0 + rows_per_batch]  # [B], counts non-decreasing
        c = counts[rows]
        p = int(c[-1])
        if p == 0:
            continue
        B, ar = len(rows), xp.arange(p)
        g = group[rows]
        w = out[rows]  # [B, d] copy
        valid = ar[None, :] < c[:, None]  # [B, p]
        idx = xp.where(valid, order[rows, :p], 0)  # [B, p]; padding (maybe -1) -> column 0
        sub = Hinv[g[:, None, None], idx[:, :, None], idx[:, None, :]]  # [B, p, p] Hinv[M, M]
        sub *= valid[:, :, None] & valid[:, None, :]  # padding -> identity, decoupled
        sub[:, ar, ar] += ~valid
        rhs = xp.where(valid, xp.take_along_axis(w, idx, axis=1), 0.0)  # [B, p] = w_M
        z = xp.linalg.solve(sub, rhs[:, :, None])[:, :, 0]  # [B, p]; 0 on the padding
        cols = xp.where(valid, idx, d)  # padding -> column d, dropped
        zf = xp.zeros((B, d + 1), dtype=z.dtype)
        zf[xp.arange(B)[:, None], cols] = z
        hs = xp.unique(g).tolist()  # w -= Hinv[:, M] z = (Hinv zf)^T, one product per Hessian
        if len(hs) == 1:
            w -= zf[:, :d] @ Hinv[hs[0]].T
        for h in hs if len(hs) > 1 else ():
            sel = g == h
            w[sel] -= zf[sel, :d] @ Hinv[h].T
        removed = xp.zeros((B, d + 1), dtype=bool)  # [B, d + 1]: padding hits column d
        removed[xp.arange(B)[:, None], cols] = True
        w[removed[:, :d]] = 0.0  # exact zeros on the mask
        out[rows] = w
    return out
