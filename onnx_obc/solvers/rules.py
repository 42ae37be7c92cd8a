"""What one greedy step does to a row: which weight goes next, at what loss, to what value.

Shared by the deferred solver (fast.py) and the tests' eager oracle. `bind(rows)` gives the
state of one batch of rows; `pick` sees w [B, d], the current diag(Hinv) [B, d] and `pen`
[B, d] (+inf on weights already fixed) and returns (q [B], loss [B], target [B]): the
weight q is set to `target` and the others compensate (w -= Hinv[:, q] (w_q - target)/d_q).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import array_module
from ..quant import quantize


class PruneRule:
    """ExactOBS pruning: q = argmin w_q^2 / [Hinv]_qq, set to 0."""

    def bind(self, rows: Any) -> PruneRule:
        return self

    def take(self, keep: Any) -> PruneRule:
        return self

    def pick(self, w: Any, diag: Any, pen: Any, ar: Any) -> tuple[Any, Any, Any]:
        xp = array_module(w)
        score = w * w  # [B, d]
        score /= diag
        score += pen
        q = xp.argmin(score, axis=1)
        return q, score[ar, q], xp.zeros(len(ar), dtype=w.dtype)


class QuantRule:
    """OBQ: q = argmin (quant(w_q) - w_q)^2 / [Hinv]_qq, set to quant(w_q), on a grid fixed
    before the loop (scale, zero [R, d] per column). Outlier rule (OBC): a weight pushed out
    of the grid range by compensation (error above scale^2 / 4) is quantized first, the
    worst one. `pinned` [R, d] marks pruned weights: fixed first, at exactly 0."""

    def __init__(self, scale: Any, zero: Any, qmin: int, qmax: int, pinned: Any = None) -> None:
        self.scale, self.zero, self.qmin, self.qmax, self.pinned = scale, zero, qmin, qmax, pinned

    def bind(self, rows: Any) -> QuantRule:
        pin = None if self.pinned is None else self.pinned[rows]
        return QuantRule(self.scale[rows], self.zero[rows], self.qmin, self.qmax, pin)

    def take(self, keep: Any) -> QuantRule:
        return self.bind(keep)

    def pick(self, w: Any, diag: Any, pen: Any, ar: Any) -> tuple[Any, Any, Any]:
        xp = array_module(w)
        qw = quantize(w, self.scale, self.zero, self.qmin, self.qmax)  # [B, d]
        err = (w - qw) ** 2
        score = err / diag + pen
        q = xp.argmin(score, axis=1)
        outlier = (err > 0.25 * self.scale**2) & (pen == 0)
        has = outlier.any(axis=1)
        if xp is not np or has.any():  # on a device: no host round trip per step
            q = xp.where(has, xp.argmax(xp.where(outlier, err, -1.0), axis=1), q)
        if self.pinned is not None:
            pin = self.pinned & (pen == 0)
            has_pin = pin.any(axis=1)
            q = xp.where(has_pin, xp.argmax(pin, axis=1), q)
        return q, score[ar, q], qw[ar, q]


class NMRule:
    """N:M pruning (OBC `nmprune`): q = argmin w_q^2 / [Hinv]_qq over the free weights whose
    column group still has fewer than `n` removals, set to 0. `col_groups` [d] (int) is the
    group of every column (groups of m columns, see structures.py); run it for exactly
    n * n_groups steps, which leaves exactly n zeros in every group of every row.

    State per batch: counts [B, n_groups] removals so far. `pick` commits its choice (the
    solvers fix the picked weight every step), so it also counts it."""

    def __init__(self, n: int, col_groups: Any, counts: Any = None) -> None:
        self.n, self.col_groups, self.counts = n, col_groups, counts
        self.n_groups = int(col_groups.max()) + 1 if len(col_groups) else 0

    def bind(self, rows: Any) -> NMRule:
        xp = array_module(rows, self.col_groups)
        groups = xp.asarray(self.col_groups)
        return NMRule(self.n, groups, xp.zeros((len(rows), self.n_groups), dtype=xp.int64))

    def take(self, keep: Any) -> NMRule:
        return NMRule(self.n, self.col_groups, self.counts[keep])

    def pick(self, w: Any, diag: Any, pen: Any, ar: Any) -> tuple[Any, Any, Any]:
        xp = array_module(w)
        score = w * w  # [B, d]
        score /= diag
        score += pen
        full = (self.counts >= self.n)[:, self.col_groups]  # [B, d] column's group is full
        score[full] = xp.inf
        q = xp.argmin(score, axis=1)  # [B]
        self.counts[ar, self.col_groups[q]] += 1
        return q, score[ar, q], xp.zeros(len(ar), dtype=w.dtype)
