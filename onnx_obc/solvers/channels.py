"""Structured OBS over input channels shared by every row (pure array math): the consumer
side of channel pruning (channels/ finds the producer -> consumer sites, export/shrink.py
cuts the tensors).

Removing producer channel c makes the consumer's input columns S_c (one column for a
MatMul/Gemm, every kernel position of c for a Conv: columns c*K .. c*K+K-1 of the im2col
view) zero for every row. With W [r, d] the consumer's weights and Hinv = H^-1 [d, d]
(H = X X^T / N on the dense producer output, dampened), group OBS gives
    L_S   = tr(W_S ([Hinv]_SS)^-1 W_S^T)                (summed over the rows)
    W    <- W - W_S ([Hinv]_SS)^-1 Hinv_S,:             (W_S becomes exactly 0)
    Hinv <- Hinv - Hinv_:,S ([Hinv]_SS)^-1 Hinv_S,:
Removing channels one at a time with these downdates gives each channel's incremental loss;
the increments of a set sum to the joint loss of the set, which equals tr(dW H dW^T), and
the final update depends only on the set (`obs_update`). Channels are chosen across layers
by loss per FLOP saved, each loss normalised by the consumer's output energy tr(W H W^T)
(`select_channels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..backend import array_module, to_numpy
from .chanparts import Lazy, Parts, components, split_update, worth_splitting

__all__ = [
    "ChannelTrace",
    "block_diagonal",
    "channel_major",
    "channel_trace",
    "diagonal_blocks",
    "norm_order",
    "obs_update",
    "output_energy",
    "select_channels",
]


@dataclass(frozen=True)
class ChannelTrace:
    """The greedy removal order of one consumer's input channels and its loss increments
    (host arrays): order[i] is removed at step i with incremental loss losses[i]."""

    order: np.ndarray  # [steps] channel ids
    losses: np.ndarray  # [steps] float64, >= 0


COMPACT = 4  # channel_trace compacts its matrices once a quarter of their channels are gone
# (a copy of what is left, about one step's cost): later steps downdate less; a 1,536-wide
# MLP site traced to 85% (1,306 steps): 9.6 -> 6.7 s (docs/channels.md "Conversion time")


def _columns(channels: Any, width: int, xp: Any) -> Any:
    """The consumer columns of `channels` [k]: [k, width] (channel-major im2col order)."""
    return channels[:, None] * width + xp.arange(width)[None, :]


def channel_trace(W: Any, Hinv: Any, width: int, steps: int, blocks: int = 1,
                  first: int = 0, count: int | None = None) -> ChannelTrace:
    """Greedy group OBS over the d // width input channels of W [r, d] (Hinv [d, d], the
    dampened inverse Hessian): remove `steps` channels, each the one whose removal costs
    least given the earlier ones, with the exact Hinv downdate in between. `blocks` > 1
    (the channels of a grouped producer or consumer, in that many equal runs): in rounds,
    one channel from each block a round, so that every multiple of `blocks` steps takes as
    many from each. `first`, `count`: only channels first .. first + count - 1 may go (one
    input of a Concat the consumer reads; the others stay and compensate); the order counts
    from `first`."""
    xp = array_module(W, Hinv)
    W = W.astype(xp.float64, copy=True)
    C = W.shape[1] // width
    count = C - first if count is None else count
    n = min(steps, count)
    alive = xp.zeros(C, dtype=bool)
    alive[first:first + count] = True
    block = xp.clip((xp.arange(C) - first) // (count // blocks), 0, blocks - 1)  # [C]
    served = xp.zeros(blocks, dtype=bool)  # the blocks this round has taken one from
    order, losses = xp.zeros(n, dtype=xp.int64), xp.zeros(n, dtype=xp.float64)
    comps = components(Hinv)  # independent diagonal blocks (chanparts.py): each alone
    parts = Parts(W, Hinv, width, C, comps, to_numpy(alive)) if worth_splitting(
        comps, W.shape[1]) else None
    if parts is None:  # the steps read only the candidates' block of Hinv and W's columns
        lo, hi = first * width, (first + count) * width  # (a Concat input's site: its own)
        one = Lazy(W[:, lo:hi].copy(), Hinv[lo:hi, lo:hi].astype(xp.float64, copy=True),
                   width)
        slot = xp.arange(C) - first  # channel -> its place in them, removed ones dropped
        wide, since = count, 0  # channels they hold; removed since they were last compacted
    for i in range(n):  # one problem: no host round trip per step (the choice on W's device)
        if i % blocks == 0:
            served[:] = False
        free = alive & ~served[block]  # alive channels of the blocks not served this round
        if parts is not None:
            c, loss = parts.step(free)
        else:
            k = (count // blocks - i // blocks) * (blocks - i % blocks)  # how many: known
            idx = xp.argsort(xp.where(free, 0, 1), kind="stable")[:k]  # [k] free, in order
            score = one.scores(_columns(slot[idx], width, xp))  # [k]
            best = xp.argmin(score)
            c, loss = idx[best], score[best]
            one.remove(_columns(slot[c][None], width, xp)[0])
            since += 1
            if since * COMPACT >= wide and i + 1 < n:  # drop the removed channels' entries
                alive[c] = False
                live = xp.flatnonzero(alive)  # ascending: the order kept
                one.compact(_columns(slot[live], width, xp).reshape(-1))
                slot[live] = xp.arange(len(live))
                wide, since = len(live), 0
        alive[c] = False
        served[block[c]] = True
        order[i] = c - first
        losses[i] = xp.maximum(loss, 0.0)
    return ChannelTrace(to_numpy(order), to_numpy(losses))


def obs_update(W: Any, Hinv: Any, width: int, removed: Any) -> Any:
    """W [r, d] after removing the input channels `removed` jointly (group OBS with the
    undowndated Hinv; equal to the greedy's sequential updates): W_S = 0 exactly."""
    xp = array_module(W, Hinv)
    W64 = W.astype(xp.float64)
    if len(removed) == 0:
        return W64.astype(W.dtype)
    S = _columns(np.asarray(removed, dtype=np.int64), width, np).reshape(-1)
    comps = components(Hinv)
    if worth_splitting(comps, W.shape[1]):  # block by block (chanparts.py): the same update
        out = split_update(W64, Hinv, np.sort(S), comps)
    else:
        S = xp.asarray(S)
        D = Hinv[S[:, None], S[None, :]]
        out = W64 - W64[:, S] @ xp.linalg.solve(D, Hinv[S, :])
    out[:, xp.asarray(S)] = 0.0
    return out.astype(W.dtype)


def block_diagonal(M: Any) -> Any:
    """[G, a, b] -> the [G·a, G·b] matrix with those blocks on its diagonal: a grouped
    consumer's W (or H) as one layer whose channel c's columns are c·width .. (group c // Cg
    holds channels g·Cg ..), every other block zero."""
    xp = array_module(M)
    G, a, b = M.shape
    if G == 1:
        return M[0]  # no copy: an ungrouped consumer's d x d H and H^-1 stay as they are
    out = xp.zeros((G * a, G * b), dtype=M.dtype)
    for g in range(G):
        out[g * a:(g + 1) * a, g * b:(g + 1) * b] = M[g]
    return out


def diagonal_blocks(M: Any, G: int) -> Any:
    """block_diagonal's inverse: the G diagonal blocks of M [G·a, G·b] as [G, a, b]."""
    xp = array_module(M)
    a, b = M.shape[0] // G, M.shape[1] // G
    return xp.stack([M[g * a:(g + 1) * a, g * b:(g + 1) * b] for g in range(G)])


def channel_major(widths: Sequence[int], C: int, offsets: Sequence[int] = (),
                  spans: Sequence[int] = ()) -> np.ndarray:
    """The column order that puts channel c's columns of every block together: block i of
    a block-diagonal W holds spans[i] (default C) channels of widths[i] columns, channel c's
    at (offsets[i] + c) * widths[i] ..; the order lists, for each c < C, each block's
    columns of c in turn (channel c then owns columns c * sum(widths) .. of the reordered
    matrix, as channel_trace reads them), then every other column in its order."""
    spans = list(spans) or [C] * len(widths)
    offsets = list(offsets) or [0] * len(widths)
    starts = np.cumsum([0, *(s * w for s, w in zip(spans, widths))])[:-1]
    per = np.concatenate([s + o * w + np.arange(w)
                          for s, o, w in zip(starts, offsets, widths)])  # channel 0's
    steps = np.concatenate([np.full(w, w) for w in widths])  # each column's stride per c
    head = (per[None, :] + np.arange(C)[:, None] * steps[None, :]).reshape(-1)
    rest = np.setdiff1d(np.arange(int(sum(s * w for s, w in zip(spans, widths)))), head)
    return np.concatenate([head, rest])


def output_energy(W: Any, H: Any) -> float:
    """tr(W H W^T): the consumer's mean squared output, the loss normaliser."""
    W64 = W.astype(array_module(W, H).float64)
    return float(((W64 @ H) * W64).sum())


def select_channels(traces: list[ChannelTrace], energies: list[float],
                    flops: list[float], target_flops: float, channels: list[int] | None = None,
                    align: int | list[int] = 1) -> list[int]:
    """How many channels each site removes: repeatedly take the site whose next move costs
    least normalised loss (loss / energy) per FLOP saved (flops[i] per channel of site i),
    until the saved FLOPs reach `target_flops` or every trace is used up. A move is one
    greedy step, or with `align` > 1 the steps up to the next count that leaves a multiple
    of `align` channels (channels[i] in site i; `align` one for all or one per site)."""
    aligns = [align] * len(traces) if isinstance(align, int) else list(align)
    taken = [0] * len(traces)
    saved = 0.0
    while saved < target_flops:
        best, key, size = -1, np.inf, 0
        for i, t in enumerate(traces):
            n = _move(taken[i], len(t.losses), 1 if channels is None else channels[i],
                      aligns[i])
            if n and flops[i] > 0:
                k = t.losses[taken[i]:taken[i] + n].sum() / max(energies[i], 1e-30) / (
                    n * flops[i])
                if k < key:
                    best, key, size = i, k, n
        if best < 0:
            break
        taken[best] += size
        saved += size * flops[best]
    return taken


def _move(taken: int, steps: int, C: int, align: int) -> int:
    """Channels the next move removes (0: none left): up to the next count leaving a
    multiple of `align` of the C channels (1 step when align is 1)."""
    if align <= 1:
        return 1 if taken < steps else 0
    k = taken + 1
    while k <= steps and (C - k) % align:
        k += 1
    return k - taken if k <= steps else 0


def norm_order(rows: Any, blocks: int = 1) -> np.ndarray:
    """The L2-norm baseline: channel ids by ascending norm of the producer's rows [C, ...];
    `blocks` > 1: in rounds of one channel from each of that many equal runs of the rows
    (a grouped producer), each round in ascending norm."""
    xp = array_module(rows)
    norms = xp.sqrt((rows.reshape(rows.shape[0], -1).astype(xp.float64) ** 2).sum(axis=1))
    norms = np.asarray(norms.tolist())
    per = len(norms) // blocks
    rank = np.empty(len(norms))  # each channel's place within its block, by norm
    for b in range(blocks):
        rank[b * per + np.argsort(norms[b * per:(b + 1) * per], kind="stable")] = \
            np.arange(per)
    return np.lexsort((norms, rank))  # round by round, ascending norm within a round
