"""ExactOBS greedy with deferred (blocked) Lemma-1 updates: same decisions, less traffic.

The greedy step of a row needs only diag(Hinv) and the column Hinv[:, q] of the current
inverse. After t eliminations since the last fold, the current inverse is
    Hinv_t = Hb - U_t U_t^T ,   U_t = [u_1 .. u_t],
    u_s = Hinv_{s-1}[:, q_s] / sqrt([Hinv_{s-1}]_qq)
so  column q = Hb[:, q] - U_t (U_t[q, :])^T   (O(d t))  and  diag -= u_t^2   (O(d)).
Every `block` steps the t updates are folded into Hb with one batched matrix product
(Hb -= U U^T), which is compute-bound instead of streaming d x d numbers per step.

Skipping work the answer does not need: with a global target of `count` removals, the
selection threshold T is the count-th smallest key (running max of a row's step losses)
over all rows. Any `count` keys already computed give an upper bound on T, so a row whose
key exceeds that bound can stop: its later steps can never be selected. When rows do not fit
in one batch (batches are seeded random samples of rows), rows also stop at 1.5x the
threshold of the sub-problem made of the rows seen so far (same sparsity), an estimate of T;
after all rows are done every stopped row is checked against the exact threshold of the
computed keys and re-run if it stopped too soon. The selection is therefore identical to
running every row to the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import array_module
from .rules import PruneRule

MARGIN = 1.5  # safety factor on a sampled threshold estimate


@dataclass
class Traces:
    losses: Any  # [R, d] float64 step losses, +inf where a step was not computed
    keys: Any  # [R, d] running max of losses along each row (selection keys), +inf likewise
    order: Any  # [R, d] int64 removed column per step, -1 where not computed
    steps_run: int  # greedy steps computed, summed over rows (R * d when nothing skipped)
    rerun_rows: int  # rows re-run because a sampled threshold stopped them too early
    final: Any = None  # [R, d] rows after their last step (kept for rules that run to the end)


def fold_block(d: int) -> int:
    """Eliminations folded per batched product. Fold flops are fixed (2 d^2 per step and row)
    but run faster with a wider product, while each step's column costs O(d t) reads of U:
    ~sqrt(20 d), capped at 128, was fastest on a 2-core CPU for d = 120 ... 2880."""
    return int(min(128, max(16, round((20 * d) ** 0.5))))


def greedy_traces(W: Any, Hinv: Any, group: Any, rows_per_batch: int, count: int | None = None,
                  block: int | None = None, seed: int = 0, rule: Any = None,
                  max_steps: int | None = None) -> Traces:
    """Greedy OBS removal order and step losses for every row of W [R, d].

    Hinv [G, d, d] are the inverse Hessians, group [R] the one of each row. With `count`
    (total removals wanted over all rows), rows stop once their steps cannot be selected.
    `rule` (rules.py) decides each step: PruneRule by default; with a QuantRule (OBQ) every
    row runs to the end and `final` holds the quantized rows. `max_steps` stops every row
    after that many steps (N:M): later steps stay uncomputed (+inf, -1) and `final` holds the
    rows at that point (fixed weights at their targets, the others compensated).
    """
    xp = array_module(W, Hinv)
    R, d = W.shape
    block = block or fold_block(d)
    steps = d if max_steps is None else max(0, min(d, int(max_steps)))
    rule = rule or PruneRule()
    tr = Traces(xp.full((R, d), xp.inf), xp.full((R, d), xp.inf),
                xp.full((R, d), -1, dtype=xp.int64), 0, 0,
                None if isinstance(rule, PruneRule) else xp.empty_like(W))
    skip = count is not None and 0 < count < R * d and isinstance(rule, PruneRule)
    drive(tr, R, steps, rows_per_batch, count if skip else None, seed,
          lambda rows, limit: _run_rows(W, Hinv, group, rows, tr, block, limit, rule, steps))
    return tr


def drive(tr: Traces, R: int, steps: int, rows_per_batch: int, count: int | None, seed: int,
          run: Any) -> None:
    """Run `run(rows, limit)` over row batches (seeded random samples when they are several),
    letting rows stop once their steps cannot be selected among `count`; afterwards re-run
    the rows a sampled threshold estimate stopped at or below the exact threshold."""
    xp = array_module(tr.keys)
    if R <= rows_per_batch:
        batches = [np.arange(R)]
    else:
        perm = np.random.default_rng(seed).permutation(R)
        batches = [np.sort(perm[i:i + rows_per_batch]) for i in range(0, R, rows_per_batch)]
    seen = 0
    for rows in batches:
        seen += len(rows)
        run(xp.asarray(rows), _Limit(tr, count, seen, len(batches) > 1))
    if count is None:
        return
    T = float(xp.partition(tr.keys.reshape(-1), count - 1)[count - 1])
    done = xp.isfinite(tr.losses).sum(axis=1)  # [R] steps computed
    last = tr.keys[xp.arange(R), xp.maximum(done - 1, 0)]
    bad = xp.nonzero((done < steps) & (last <= T))[0]
    if len(bad) == 0:
        return
    tr.rerun_rows += int(len(bad))
    tr.losses[bad], tr.keys[bad], tr.order[bad] = xp.inf, xp.inf, -1
    for i in range(0, len(bad), rows_per_batch):
        run(bad[i:i + rows_per_batch], _Limit(tr, count, R, False))


class _Limit:
    """When may a row stop? When its key exceeds the valid bound on the global threshold
    (the count-th smallest computed key), or MARGIN x the bound of the sub-problem of the
    rows seen so far (an estimate, checked afterwards)."""

    def __init__(self, tr: Traces, count: int | None, seen_rows: int, estimate: bool) -> None:
        self.tr, self.count, self.estimate = tr, count, estimate
        R = tr.keys.shape[0]
        self.local = None if count is None else max(1, round(count * seen_rows / R))

    def threshold(self) -> Any:
        """The bound, a scalar on the keys' device (no host round trip); inf without a
        count."""
        if self.count is None:
            return float("inf")
        xp = array_module(self.tr.keys)
        flat = self.tr.keys.reshape(-1)
        bound = xp.partition(flat, self.count - 1)[self.count - 1]  # inf if too few
        if self.estimate and self.local is not None:
            local = xp.partition(flat, self.local - 1)[self.local - 1]
            bound = xp.minimum(bound, MARGIN * local)
        return bound


def kept(keep: Any) -> tuple[int, Any]:
    """How many rows a stop check keeps (its one host round trip) and, found on the device,
    their indices in order (indexing with them needs no further round trip, unlike a mask)."""
    xp = array_module(keep)
    n = int(keep.sum())
    return n, xp.argsort(xp.where(keep, 0, 1), kind="stable")[:n]


def _run_rows(W: Any, Hinv: Any, group: Any, rows: Any, tr: Traces, block: int,
              limit: _Limit, rule: Any, steps: int | None = None) -> None:
    """Run the greedy on `rows` (one batch), recording into `tr`, until done or stopped
    (after `steps` steps, all of them by default)."""
    xp = array_module(W, Hinv)
    step = rule.bind(rows)
    d = W.shape[1]
    steps = d if steps is None else steps
    w = W[rows].astype(W.dtype, copy=True)  # [B, d]
    if steps == 0:
        if tr.final is not None:
            tr.final[rows] = w
        return
    Hb = Hinv[group[rows]].astype(W.dtype)  # [B, d, d], one inverse per row
    free = xp.ones(w.shape, dtype=bool)
    fixed = None if tr.final is None else xp.zeros_like(w)  # values of fixed weights
    key = xp.zeros(len(rows), dtype=xp.float64)  # running max of step losses per row
    tiny = xp.finfo(w.dtype).tiny  # clamps a diagonal that rounding drove to <= 0
    check = max(4, block // 4)  # steps between stop checks
    for k0 in range(0, steps, block):
        nb = min(block, steps - k0)
        U = xp.empty((len(rows), nb, d), dtype=w.dtype)  # pending eliminations, u_t = U[:, t]
        diag = xp.diagonal(Hb, axis1=1, axis2=2).copy()  # [B, d] exact at fold time
        diag[~free] = 1.0  # removed columns: score 0/1 + inf
        pen = xp.where(free, 0.0, xp.inf).astype(w.dtype)  # [B, d] +inf on removed columns
        ar = xp.arange(len(rows))
        for t in range(nb):
            q, loss, target = step.pick(w, xp.maximum(diag, tiny), pen, ar)  # [B] each
            tr.losses[rows, k0 + t] = loss
            tr.order[rows, k0 + t] = q
            key = xp.maximum(key, loss)
            tr.keys[rows, k0 + t] = key
            col = Hb[ar, q, :]  # [B, d] row q of the folded inverse (= column, symmetric)
            if t:
                col -= (U[ar, :t, q][:, None, :] @ U[:, :t, :])[:, 0, :]  # pending updates
            dq = xp.maximum(diag[ar, q], tiny)  # [B]
            w -= col * ((w[ar, q] - target) / dq)[:, None]  # OBS compensation
            w[ar, q] = target
            if fixed is not None:
                fixed[ar, q] = target  # exact: later rounding cannot move a fixed weight
            free[ar, q] = False
            pen[ar, q] = xp.inf
            col /= xp.sqrt(dq)[:, None]
            U[:, t, :] = col  # u_t
            diag -= col * col
            diag[ar, q] = 1.0
            tr.steps_run += len(rows)
            if k0 + t + 1 == steps:
                if tr.final is not None:
                    tr.final[rows] = fixed if steps == d else xp.where(free, w, fixed)
                return
            if limit.count is not None and ((t + 1) % check == 0 or t + 1 == nb):
                # the others' later steps cannot be selected
                n_keep, keep = kept(key <= limit.threshold())
                if n_keep == 0:
                    return
                if n_keep <= len(rows) - max(1, len(rows) // 8):  # compact when worth a copy
                    rows, w, free, key, U = rows[keep], w[keep], free[keep], key[keep], U[keep]
                    fixed = None if fixed is None else fixed[keep]
                    Hb, diag, pen = Hb[keep], diag[keep], pen[keep]
                    step = step.take(keep)
                    ar = xp.arange(len(rows))
        Hb -= xp.ascontiguousarray(xp.swapaxes(U, 1, 2)) @ U  # fold: [B,d,nb] @ [B,nb,d]

