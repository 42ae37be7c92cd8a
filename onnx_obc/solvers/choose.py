"""Exact where it pays: the quantization stage keeps, per layer, the candidate with the least
measured loss tr(dW H dW^T) on the undampened H.

Greedy OBQ is not always the best of the OBS-family solvers on a layer: on small or
ill-conditioned Hessians (few inputs, rank-deficient H from pooled features) GPTQ's fixed
order (and act-order) or even round-to-nearest can end lower, and OBC's weight-space clip
grid can suit compensation badly. Solving GPTQ is O(d^3 + r d^2), cheap next to OBQ, so the
stage solves the candidates below and keeps the lowest loss (ties: the earlier one):

    OBQ on OBC's grid (given) | GPTQ, GPTQ act-order on that grid | the same on the baseline's
    H-aware grid | RTN on the H-aware grid (the baseline itself)

With `refine` (solvers/refine.py, the obc default below FAST_BITS) every candidate first goes
through the H-aware code descent, which can only lower its loss ("+refine" is appended to the
name of a candidate it changed), and the least loss is kept among the refined ones.

`method_used` names the winner. With H = I every candidate is RTN on its grid and the least
loss is the baseline's grid (never worse than min-max under H), so the exact reduction holds.

At FAST_BITS and more (8-bit weights: round-to-nearest is already near-lossless) the greedy
OBQ pass (O(r d^3) per layer, most of a W8A8 run's time) buys next to nothing, so only the
cheap candidates are solved (`fast_quantized`): GPTQ act-order on the baseline's H-aware
grid, and RTN on it. Measured on the bench models (bench/deploy.py, W8A8): the same end error
within noise, the solve several times faster. GPTQ's plain column order, also solved there
until act-order won on 21 of common's 22 layers, all of ocr_like's and ppocr_rec's
(docs/conversion-time.md "The second round"), is no longer a candidate at 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .gptq import BLOCK, gptq_groups, gptq_rows
from .prepare import layer_loss
from .refine import descend


@dataclass(frozen=True)
class Candidate:
    name: str
    W: Any  # [G, r, d] float64, on `grid`
    grid: Any
    codes: Any  # [G, r, d] int32
    obs_loss: float  # step losses (dampened H), as the solver recorded them
    loss: float  # tr(dW H dW^T), undampened


FAST_BITS = 8  # weights of at least this many bits: no OBQ, only fast_quantized's candidates


def exact_pays(bits: int) -> bool:
    """Whether the greedy OBQ pass is a candidate at this bit width."""
    return bits < FAST_BITS


def fast_quantized(W: Any, H64: Any, prep: Any, baseline: Any) -> Candidate:
    """GPTQ act-order on the baseline's (H-aware) grid against RTN on it, the least loss
    kept. W [G, r, d] the original weights, H64 [G, d, d] undampened, prep the prepared
    layer."""
    G, r, d = W.shape
    cands = [Candidate("rtn/H-grid", baseline.W, baseline.grid, baseline.codes, baseline.loss,
                       baseline.loss)]  # first: ties (H = I) keep RTN
    solve = gptq_groups if G > 1 and d <= BLOCK else gptq_rows  # depthwise: all groups at once
    out, out_codes, obs = solve(prep.W.reshape(G * r, d), prep, baseline.grid, act_order=True)
    W_hat = out.reshape(G, r, d)
    cands.append(Candidate("gptq+act-order/H-grid", W_hat, baseline.grid,
                           out_codes.reshape(G, r, d), obs, layer_loss(W, W_hat, H64)))
    return min(cands, key=lambda c: c.loss)


def refined(c: Candidate, W: Any, H64: Any, pinned: Any = None) -> Candidate:
    """`c` after the H-aware code descent (refine.descend; its fields when no code moved)."""
    W_hat, codes, name, obs_loss, loss = descend(W, H64, c.grid, c.codes, c.W, c.name,
                                                 c.obs_loss, pinned, c.loss)
    return Candidate(name, W_hat, c.grid, codes, obs_loss, loss)


def best_quantized(W: Any, H64: Any, prep: Any, first: Candidate, baseline: Any,
                   refine: bool = False) -> Candidate:
    """`first` (OBQ on its grid) against GPTQ (both orders) on its grid and on the baseline's
    grid, and the baseline RTN itself; W [G, r, d] the original weights, H64 [G, d, d] the
    undampened Hessians, prep the prepared layer (solvers.prepare); refine: each candidate
    through the code descent first."""
    G, r, d = W.shape
    rows = prep.W.reshape(G * r, d)
    cands = [first]
    grids = [("", first.grid)]
    if baseline.grid is not None and not _same(baseline.grid, first.grid):
        grids.append(("/H-grid", baseline.grid))
    for tag, grid in grids:
        for act_order in (False, True):
            out, out_codes, obs = gptq_rows(rows, prep, grid, act_order=act_order)
            W_hat = out.reshape(G, r, d)
            name = ("gptq+act-order" if act_order else "gptq") + tag
            cands.append(Candidate(name, W_hat, grid, out_codes.reshape(G, r, d), obs,
                                   layer_loss(W, W_hat, H64)))
    if baseline.grid is not None:
        cands.append(Candidate("rtn" + ("/H-grid" if len(grids) > 1 else ""), baseline.W,
                               baseline.grid, baseline.codes, baseline.loss, baseline.loss))
    if refine:
        cands = [refined(c, W, H64) for c in cands]
    return min(cands, key=lambda c: c.loss)  # min keeps the first of equal losses


def _same(a: Any, b: Any) -> bool:
    from ..backend import array_module
    xp = array_module(a.scale)
    return bool(xp.array_equal(a.scale, b.scale) and xp.array_equal(a.zero, b.zero))
