"""Block ExactOBS (group OBS, OBC §1.4, §2.5): whole blocks of b columns removed, pure
array math; registered as the "obc" pruning stage of Blocks, and its loss tracer.

Blocks are groups of consecutive input channels at one kernel position (the axis
DeepSparse's 4-blocks read), given as `col_blocks` [d] (block id per column, from
structures.conv_nm_groups / linear_nm_groups with m = b). For a block B of b columns, with F
the free columns,
    L_B     = w_B^T ([Hinv_F]_BB)^-1 w_B
    delta   = - Hinv_F[:, B] ([Hinv_F]_BB)^-1 w_B
    Hinv_F <- Hinv_F - Hinv_F[:, B] ([Hinv_F]_BB)^-1 Hinv_F[B, :]
Removing B equals b sequential OBS eliminations of its columns: their losses sum to L_B and
the updates compose (Gaussian elimination). Each step scores every free block (b x b
eliminations, vectorised over rows and blocks), removes the cheapest one column by column
with deferred Lemma-1 updates (as fast.py: Hinv_t = Hb - U U^T, folded every ~fold_block(d)
eliminations), and records one loss (L_B) and the block id. Rows then get their counts from
the global selection over all rows' block-step keys (select.py), the layer removing exactly
`count` blocks, and are rebuilt exactly on their masks.

Losses are in the units of H (H = X X^T / N, no factor 2): summed over the removed steps they
equal tr(dW H dW^T) for the H whose inverse was given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import array_module, cummax
from .fast import Traces, _Limit, drive, fold_block, kept
from .registry import register_pruner, register_tracer
from .select import rebuild, select_counts
from .solution import Pruned, Stage
from .structures import Blocks, check_groups
from .traces import LossTraces

__all__ = ["block_traces", "block_prune"]


def _block_scores(v: Any, A: Any) -> Any:
    """w_B^T D^-1 w_B for every block, block axes first (contiguous [B, nb] planes):
    v [b, ...] = w_B, A [b, b, ...] = D = [Hinv]_BB (SPD; only its lower triangle is read).
    Computed as b sequential eliminations, i.e. the sequential OBS losses inside the block,
    which sum to the group-OBS loss."""
    xp = array_module(v, A)
    b = v.shape[0]
    tiny = xp.finfo(v.dtype).tiny
    A = A.copy()
    v = v.copy()
    score = xp.zeros(v.shape[1:], dtype=v.dtype)
    for i in range(b):
        p = xp.maximum(A[i, i], tiny)  # [...] pivot
        score += v[i] * v[i] / p
        for k in range(i + 1, b):  # Schur complement on the lower triangle
            f = A[k, i] / p
            v[k] -= f * v[i]
            for m in range(i + 1, k + 1):
                A[k, m] -= f * A[m, i]
    return score


def _diag_blocks(Hb: Any, b: int) -> Any:
    """Hb [B, d, d] (columns grouped, block j = j*b .. j*b+b-1) -> diagonal blocks as
    [b, b, B, nb] (contiguous: entry (p, q) of every block is one [B, nb] plane)."""
    xp = array_module(Hb)
    B, d, _ = Hb.shape
    nb = d // b
    H5 = Hb.reshape(B, nb, b, nb, b)
    blocks = xp.diagonal(H5, axis1=1, axis2=3)  # [B, b, b, nb]
    return xp.ascontiguousarray(xp.transpose(blocks, (1, 2, 0, 3)))


def _block_rows(Wp: Any, Hp: Any, group: Any, rows: Any, tr: Traces, b: int, fold: int,
                limit: _Limit) -> None:
    """Greedy block removal on `rows` (one batch), recording into `tr`, until done or stopped.
    Columns are grouped (block j = columns j*b .. j*b+b-1 of Wp [R, d], Hp [G, d, d])."""
    xp = array_module(Wp, Hp)
    d = Wp.shape[1]
    nb = d // b
    w = Wp[rows].astype(Wp.dtype, copy=True)  # [B, d]
    Hb = Hp[group[rows]].astype(Wp.dtype)  # [B, d, d] one inverse per row
    free = xp.ones((len(rows), nb), dtype=bool)  # blocks still in the row
    key = xp.zeros(len(rows), dtype=xp.float64)  # running max of block-step losses
    tiny = xp.finfo(w.dtype).tiny
    eye = xp.eye(b, dtype=w.dtype)[:, :, None]  # [b, b, 1]
    per = max(1, fold // b)  # block steps per fold
    check = max(2, per // 4)  # block steps between stop checks
    for s0 in range(0, nb, per):
        ns = min(per, nb - s0)
        B = len(rows)
        ar = xp.arange(B)
        U = xp.empty((B, ns * b, d), dtype=w.dtype)  # pending eliminations u_t = U[:, t]
        D = _diag_blocks(Hb, b)  # [b, b, B, nb] diagonal blocks of the current inverse
        D[:, :, ~free] = eye  # removed blocks: decoupled, masked below
        for s in range(ns):
            v = xp.ascontiguousarray(xp.moveaxis(w.reshape(B, nb, b), 2, 0))  # [b, B, nb]
            score = _block_scores(v, D)  # [B, nb] L_B of every block
            score = xp.where(free, score, xp.inf)
            j = xp.argmin(score, axis=1)  # [B]
            loss = score[ar, j]
            tr.losses[rows, s0 + s] = loss
            tr.order[rows, s0 + s] = j
            key = xp.maximum(key, loss)
            tr.keys[rows, s0 + s] = key
            t0 = s * b
            cB = j[:, None] * b + xp.arange(b)[None, :]  # [B, b] the block's columns
            C = Hb[ar[:, None], cB, :]  # [B, b, d] their rows of the folded inverse
            if t0:  # pending eliminations, all b columns in one product
                C -= U[ar[:, None], :t0, cB] @ U[:, :t0, :]  # [B, b, t0] @ [B, t0, d]
            for i in range(b):  # b sequential OBS eliminations = the group-OBS update
                c = cB[:, i]  # [B]
                col = C[:, i, :]  # [B, d] column c of the current inverse
                dc = xp.maximum(col[ar, c], tiny)  # [B] current [Hinv]_cc
                w -= col * (w[ar, c] / dc)[:, None]  # OBS compensation
                w[ar, c] = 0.0
                u = col / xp.sqrt(dc)[:, None]  # Hinv <- Hinv - u u^T (Lemma 1)
                U[:, t0 + i, :] = u
                if i + 1 < b:  # the block's later columns see this elimination
                    C[:, i + 1:, :] -= u[:, None, :] * u[ar[:, None], cB[:, i + 1:]][:, :, None]
                ub = xp.ascontiguousarray(xp.moveaxis(u.reshape(B, nb, b), 2, 0))  # [b,B,nb]
                D -= ub[:, None] * ub[None, :]  # diagonal blocks, rank 1
            free[ar, j] = False
            D[:, :, ar, j] = eye
            tr.steps_run += B
            if s0 + s + 1 == nb:
                return
            if limit.count is not None and ((s + 1) % check == 0 or s + 1 == ns):
                # the others' later steps cannot be selected
                n_keep, keep = kept(key <= limit.threshold())
                if n_keep == 0:
                    return
                if n_keep <= B - max(1, B // 8):  # compact when worth a copy
                    rows, w, free, key, U = rows[keep], w[keep], free[keep], key[keep], U[keep]
                    Hb, D = Hb[keep], D[:, :, keep]
                    B = n_keep
                    ar = xp.arange(B)
        Hb -= xp.ascontiguousarray(xp.swapaxes(U, 1, 2)) @ U  # fold: [B,d,t] @ [B,t,d]


def block_traces(W: Any, Hinv: Any, group: Any, rows_per_batch: int, b: int, col_blocks: Any,
                 count: int | None = None, fold: int | None = None, seed: int = 0) -> Traces:
    """Greedy group-OBS block removal on every row: Traces over block steps.

    W [R, d]; Hinv [G, d, d]; group [R]; col_blocks [d] int block id per column (d/b blocks
    of exactly b columns, ids 0 .. d/b-1). Returns Traces with losses [R, nb] (L_B of the block
    removed at each step, float64), keys [R, nb] (their running max), order [R, nb] (block
    id), steps_run and rerun_rows counted in block steps. With `count` (blocks removed over
    all rows), rows stop once their later steps cannot be selected (+inf / -1 there), exactly
    as fast.greedy_traces, so select_counts(keys, count) equals that of full traces.
    `fold`: eliminations per deferred fold (fast.fold_block(d) by default).
    """
    xp = array_module(W, Hinv)
    R, d = W.shape
    g = check_groups(col_blocks, d, b, "col_blocks")
    nb = d // b
    # stable sort by id: grouped position j holds block id j (every block has b columns)
    perm = xp.asarray(np.argsort(g, kind="stable"))  # [d]
    Wp = W[:, perm]  # [R, d]
    Hp = Hinv[:, perm][:, :, perm]  # [G, d, d]
    fold = fold or fold_block(d)
    tr = Traces(xp.full((R, nb), xp.inf), xp.full((R, nb), xp.inf),
                xp.full((R, nb), -1, dtype=xp.int64), 0, 0)
    skip = count is not None and 0 < count < R * nb
    drive(tr, R, nb, rows_per_batch, count if skip else None, seed,
          lambda rows, limit: _block_rows(Wp, Hp, group, rows, tr, b, fold, limit))
    return tr


def block_prune(W: Any, Hinv: Any, group: Any, rows_per_batch: int, b: int, col_blocks: Any,
                count: int, fold: int | None = None) -> tuple[Any, Any, Any, Any]:
    """Block ExactOBS with global selection: `count` blocks removed over the whole layer.

    W [R, d]; Hinv [G, d, d]; group [R]; b block size; col_blocks [d] block id per column
    (conv_nm_groups / linear_nm_groups with m = b); count blocks to remove over all rows
    (e.g. round(s * R * d/b)). Rows are ranked by the running max of their block-step losses
    (select.select_counts), so rows get different block counts. Returns
      W_hat  [R, d] float64: rows rebuilt exactly on their masks (exact zeros),
      losses [R, nb] float64: group-OBS loss of each block step (+inf after a row stopped:
             steps that could not be selected are not computed),
      order  [R, nb] int64: block id removed at each step (-1 where not computed),
      counts [R] int64: blocks removed per row (summing to count).
    sum over rows of losses[r, :counts[r]] == tr(dW H dW^T).
    """
    xp = array_module(W, Hinv)
    R, d = W.shape
    nb = d // b if b > 0 else 0
    if count <= 0:  # nothing to remove: no traces needed
        g = check_groups(col_blocks, d, b, "col_blocks")
        return (W.astype(xp.float64, copy=True), xp.full((R, nb), xp.inf),
                xp.full((R, nb), -1, dtype=xp.int64), xp.zeros(R, dtype=xp.int64))
    tr = block_traces(W, Hinv, group, rows_per_batch, b, col_blocks, int(count), fold)
    counts = select_counts(tr.keys, int(count))  # [R]
    g = check_groups(col_blocks, d, b, "col_blocks")
    cols = xp.asarray(np.argsort(g, kind="stable").reshape(nb, b))  # [nb, b] columns of block
    col_order = cols[xp.maximum(tr.order, 0)].reshape(R, nb * b)  # [R, d] in column order
    W_hat = rebuild(W, Hinv, group, col_order, counts * b, rows_per_batch)
    return W_hat, tr.losses, tr.order, counts


@register_pruner(Blocks, "obc")
def obs_prune(stage: Stage, st: Blocks, count: int) -> Pruned:
    """`count` weights (count / size blocks) removed, selected globally across rows."""
    xp = array_module(stage.rows, stage.Hinv)
    d = stage.rows.shape[1]
    W_hat, losses, _, counts = block_prune(stage.rows, stage.Hinv, stage.group,
                                           stage.rows_per_batch, st.size, st.groups(d),
                                           count // st.size)
    steps = xp.arange(losses.shape[1])[None, :] < counts[:, None]  # [R, nb] selected
    return Pruned(rows=W_hat, obs_loss=float(xp.where(steps, losses, 0.0).sum()),
                  steps_run=count // st.size)


@register_tracer(Blocks)
def obs_traces(stage: Stage, st: Blocks, max_count: int | None) -> LossTraces:
    """Full block traces of every row (no row stops early: `max_count` is not used); keys are
    the running max of the block-step losses, the order expanded to the blocks' columns."""
    xp = array_module(stage.rows, stage.Hinv)
    R, d = stage.rows.shape
    b, g = st.size, st.groups(d)
    tr = block_traces(stage.rows, stage.Hinv, stage.group, stage.rows_per_batch, b, g, None)
    cols = xp.asarray(np.argsort(g, kind="stable").reshape(-1, b))  # [nb, b]
    return LossTraces(stage, cummax(tr.losses, axis=1), tr.losses,
                      cols[tr.order].reshape(R, d), b)
