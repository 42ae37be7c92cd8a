"""The steps of solvers/channels.py's greedy channel trace (pure array math): one problem
with its inverse's downdates held back (`Lazy`), or, where Hinv [d, d] splits into
independent diagonal blocks, each block alone (`Parts`).

Two site kinds give such problems: a producer read by several layers with Hessians of their
own (channels/fanout.py: one block per reader, channel c owning columns in each) and a
grouped consumer (one block per group, each channel in one). Their entries between blocks
are exactly zero and stay zero through every downdate (Hinv_:,S D^-1 Hinv_S,: with a
block-diagonal D mixes no blocks), so each block can be scored and downdated alone:

    L_c = sum_b tr(W_b,S (D_b)^-1 W_b,S^T),   Hinv_b <- Hinv_b - Hinv_b,:S D_b^-1 Hinv_b,S:

for the blocks b that channel c's columns S reach, with D_b = [Hinv_b]_SS. One step then
costs sum_b d_b^2 w_b instead of d^2 w (a YOLOv8n site whose producer three 3 x 3 convs read,
128 channels: d = 3,456 against three blocks of 1,152), and a block no removed channel
reaches keeps its scores (a grouped consumer: one group rescored a step).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import array_module, to_numpy

WORTH = 0.75  # a split pays where its largest block is at most this share of the columns
# (below it a dense problem with a few dead inputs, each a block of one, stays one problem)


def components(M: Any) -> list[np.ndarray]:
    """The column sets (host, ascending) of the independent diagonal blocks of the square
    M: connected components of its nonzero pattern; one set where M is dense."""
    d = M.shape[0]
    if d == 0 or bool((M[0] != 0).all()):  # a dense row: one block
        return [np.arange(d)]
    nz = to_numpy(M != 0)
    nz |= nz.T
    label = np.full(d, -1)
    comps: list[np.ndarray] = []
    for i in range(d):
        if label[i] >= 0:
            continue
        members = np.zeros(d, dtype=bool)
        members[i] = True
        frontier = members.copy()
        while frontier.any():
            frontier = nz[frontier].any(axis=0) & ~members
            members |= frontier
        label[members] = len(comps)
        comps.append(np.flatnonzero(members))
    return comps


def worth_splitting(comps: list[np.ndarray], d: int) -> bool:
    return len(comps) > 1 and max(len(c) for c in comps) <= WORTH * d


def scores(W: Any, Hinv: Any, cols: Any) -> Any:
    """[k] group-OBS losses tr(W_S D^-1 W_S^T) of the column sets cols [k, w]."""
    return _losses(W, Hinv[cols[:, :, None], cols[:, None, :]], cols)


def _losses(W: Any, D: Any, cols: Any) -> Any:
    """scores' losses given the diagonal blocks D [k, w, w] of the current inverse."""
    xp = array_module(W, D)
    Ws = xp.moveaxis(W[:, cols], 0, 1)  # [k, r, w]
    sol = _solve(D, xp.swapaxes(Ws, 1, 2))  # [k, w, r] = D^-1 W_S^T
    return (Ws * xp.swapaxes(sol, 1, 2)).sum(axis=(1, 2))


def downdate(W: Any, Hinv: Any, S: Any) -> None:
    """Remove the columns S [w] in place: the OBS update of W [r, d] (W_S becomes exactly
    0) and the downdate of Hinv [d, d]."""
    Dinv_rows = _solve(Hinv[S[:, None], S[None, :]], Hinv[S, :])  # [w, d]
    W -= W[:, S] @ Dinv_rows
    W[:, S] = 0.0
    Hinv -= Hinv[:, S] @ Dinv_rows


def _solve(D: Any, B: Any) -> Any:
    """D^-1 B for (a stack of) w x w D; for w = 1 (a MatMul consumer's channel: one column)
    the product with 1 / D, as LAPACK's solve computes it (the same bits with OpenBLAS) at
    a fraction of its per-matrix cost: all-MiniLM-L6-v2's six 1,536-wide MLP sites, 7,900
    greedy steps, spent 41 s in 1 x 1 solves."""
    if D.shape[-1] == 1:
        return B * (1.0 / D)
    return array_module(D, B).linalg.solve(D, B)


LAZY = 128  # Lazy: columns of downdates held back, then folded into the inverse in one GEMM


class Lazy:
    """channel_trace's one problem, W [r, d] and Hinv [d, d] (both owned: changed in place
    or replaced), with the inverse's downdates held back as in GPTQ's lazy batches: the
    current inverse is base - A B (A [d, m], B [m, d], m < LAZY + w), read through that for
    the scores' diagonal blocks and the chosen channel's rows, and every LAZY columns one
    GEMM folds A B into base. A step then costs O(d m) instead of the d x d rank-w update
    (memory-bound: 72% of a 1,536-wide MLP site's trace). W is updated at once (the scores
    read its columns). The same losses within rounding (tests/solvers/test_chanparts.py
    against the greedy on the whole inverse)."""

    def __init__(self, W: Any, Hinv: Any, width: int) -> None:
        self.xp = array_module(W, Hinv)
        self.W, self.base, self.width = W, Hinv, width
        self._alloc()

    def _alloc(self) -> None:
        d, cap = self.base.shape[0], max(LAZY, self.width) + self.width
        self.A = self.xp.zeros((d, cap), dtype=self.base.dtype)
        self.B = self.xp.zeros((cap, d), dtype=self.base.dtype)
        self.m = 0

    def scores(self, cols: Any) -> Any:
        """[k] losses of the column sets cols [k, w] (chanparts.scores on the current W, Hinv)."""
        m = self.m
        D = self.base[cols[:, :, None], cols[:, None, :]]  # [k, w, w]
        if m:
            D = D - self.A[cols, :m] @ self.xp.moveaxis(self.B[:m][:, cols], 0, 1)
        return _losses(self.W, D, cols)

    def remove(self, S: Any) -> None:
        """Remove the columns S [w]: W's OBS update now, the inverse's downdate held back."""
        m, w = self.m, len(S)
        row = self.base[S, :] - self.A[S, :m] @ self.B[:m] if m else self.base[S, :]  # [w, d]
        col = self.base[:, S] - self.A[:, :m] @ self.B[:m, S] if m else self.base[:, S]
        Dinv_rows = _solve(row[:, S], row)  # [w, d]
        self.W -= self.W[:, S] @ Dinv_rows
        self.W[:, S] = 0.0
        self.A[:, m:m + w], self.B[m:m + w] = col, Dinv_rows
        self.m = m + w
        if self.m + w > self.A.shape[1]:
            self.flush()

    def flush(self) -> None:
        if self.m:
            self.base -= self.A[:, :self.m] @ self.B[:self.m]
            self.m = 0

    def compact(self, keep: Any) -> None:
        """Keep only the columns `keep` (ascending) of W and the inverse."""
        self.flush()
        self.base, self.W = self.base[keep[:, None], keep[None, :]], self.W[:, keep]
        self._alloc()


class Parts:
    """A channel_trace problem W [r, d], Hinv [d, d] (C channels of `width` columns,
    channel-major) split into its blocks `comps`; `candidates` [C] (host bool): the
    channels that may go. step() takes the free channel of least summed loss and
    downdates the blocks it reaches; one host round trip a step (the chosen channel)."""

    def __init__(self, W: Any, Hinv: Any, width: int, C: int, comps: list[np.ndarray],
                 candidates: np.ndarray) -> None:
        xp = self.xp = array_module(W, Hinv)
        d = W.shape[1]
        block, local = np.empty(d, dtype=np.int64), np.empty(d, dtype=np.int64)
        for b, comp in enumerate(comps):
            block[comp], local[comp] = b, np.arange(len(comp))
        cols = np.arange(C * width).reshape(C, width)  # every channel's global columns
        self.blocks: list[tuple[Any, Any, list[tuple[np.ndarray, Any]]]] = []
        self.where: list[list[tuple[int, Any]]] = [[] for _ in range(C)]
        for b, comp in enumerate(comps):
            rows = np.flatnonzero(to_numpy((W[:, xp.asarray(comp)] != 0).any(axis=1)))
            Wb = W[xp.asarray(rows)][:, xp.asarray(comp)]  # [r_b, d_b]: its rows only
            Hb = Hinv[xp.asarray(comp)][:, xp.asarray(comp)].astype(xp.float64)  # [d_b, d_b]
            inb = block[cols] == b  # [C, width]
            size = inb.sum(axis=1)
            groups = []
            for m in np.unique(size[candidates & (size > 0)]):
                chans = np.flatnonzero(candidates & (size == m))
                loc = local[cols[chans]][inb[chans]].reshape(len(chans), m)
                groups.append((chans, xp.asarray(loc)))
                for c, row in zip(chans, loc):
                    self.where[c].append((b, xp.asarray(row)))
            self.blocks.append((Wb, Hb, groups))
        self.alive = candidates.copy()
        self.score = [xp.zeros(C, dtype=xp.float64) for _ in comps]  # [C] per block
        self.touched = set(range(len(comps)))

    def step(self, free: Any) -> tuple[int, Any]:
        """(channel, its loss): the least summed loss among `free` [C] (device bool)."""
        xp = self.xp
        for b in self.touched:
            Wb, Hb, groups = self.blocks[b]
            for chans, loc in groups:
                keep = self.alive[chans]
                if keep.any():
                    self.score[b][xp.asarray(chans[keep])] = scores(Wb, Hb, loc[
                        xp.asarray(np.flatnonzero(keep))])
        total = self.score[0]
        for s in self.score[1:]:
            total = total + s
        c = int(xp.argmin(xp.where(free, total, xp.inf)))
        self.touched = set()
        for b, S in self.where[c]:
            downdate(self.blocks[b][0], self.blocks[b][1], S)
            self.touched.add(b)
        self.alive[c] = False
        return c, total[c]


def split_update(W64: Any, Hinv: Any, S: Any, comps: list[np.ndarray]) -> Any:
    """W64 [r, d] after the joint removal of the columns S (host ascending) block by block
    (obs_update's update where Hinv is block-diagonal over `comps`); W_S set 0 by the
    caller."""
    xp = array_module(W64, Hinv)
    out = W64.copy()
    for comp in comps:
        Sb = S[np.isin(S, comp)]
        if len(Sb):
            cb, sb = xp.asarray(comp), xp.asarray(Sb)
            out[:, cb] -= W64[:, sb] @ xp.linalg.solve(Hinv[sb[:, None], sb[None, :]],
                                                       Hinv[sb[:, None], cb[None, :]])
    return out
