"""The baselines at the same settings: magnitude pruning (unstructured, N:M, blocks), then
round-to-nearest on a grid fitted to the pruned weights. Computed for every method and
reported next to it; the methods "magnitude" and "rtn" return it as the solution."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import array_module, to_numpy
from ..quant import QuantSpec, codes, fit_grid, rtn
from .prepare import layer_loss
from .registry import baseline_for, register_baseline, register_solver
from .solution import Baseline, LayerSolution, Task, count_zeros
from .structures import NM, Blocks, Unstructured

__all__ = ["magnitude_prune", "nm_magnitude", "block_magnitude", "baseline"]


def magnitude_prune(W: Any, count: int) -> Any:
    """W [..] -> copy with the `count` smallest-magnitude entries (layer-wide) set to 0."""
    xp = array_module(W)
    flat = W.reshape(-1).copy()
    if count > 0:
        idx = xp.argsort(xp.abs(flat), kind="stable")[:count]
        flat[idx] = 0
    return flat.reshape(W.shape)


def nm_magnitude(W: Any, n: int, col_groups: Any) -> Any:
    """Magnitude N:M baseline: the n smallest |w| of every group of every row set to 0.
    W [R, d]; col_groups [d] (groups of equal size m). Returns a copy."""
    xp = array_module(W)
    R, d = W.shape
    g = to_numpy(col_groups)
    perm = np.argsort(g, kind="stable")  # columns grouped: group j = perm[j*m:(j+1)*m]
    ng = int(g.max()) + 1 if d else 0
    m = d // max(ng, 1)
    idx = xp.asarray(perm.reshape(ng, m))  # [ng, m]
    blocks = W[:, idx]  # [R, ng, m]
    drop = xp.argsort(xp.abs(blocks), axis=2, kind="stable")[:, :, :n]  # [R, ng, n]
    out = W.copy()
    cols = xp.take_along_axis(xp.broadcast_to(idx, (R, ng, m)), drop, axis=2)  # [R, ng, n]
    out[xp.arange(R)[:, None], cols.reshape(R, -1)] = 0
    return out


def block_magnitude(W: Any, col_blocks: Any, count: int) -> Any:
    """Magnitude block baseline: the `count` blocks with the smallest ||w_B||^2 over the whole
    layer W [R, d] set to 0. col_blocks [d] (blocks of equal size). Returns a copy."""
    xp = array_module(W)
    R, d = W.shape
    g = to_numpy(col_blocks)
    nb = int(g.max()) + 1 if d else 0
    cols = xp.asarray(np.argsort(g, kind="stable").reshape(nb, d // max(nb, 1)))  # [nb, b]
    norms = (W[:, cols] ** 2).sum(axis=2).reshape(-1)  # [R*nb]
    out = W.copy()
    if count > 0:
        drop = xp.argsort(norms, kind="stable")[:count]  # flat r*nb + j
        r, j = drop // nb, drop % nb
        out[r[:, None], cols[j]] = 0
    return out


# ----------------------------------------------------------------------------- registered
# fn(W64 [G, r, d] float64, structure, count > 0 weights) -> [G, r, d]

@register_baseline(Unstructured)
def _unstructured(W64: Any, st: Unstructured, count: int) -> Any:
    return magnitude_prune(W64, count)


@register_baseline(NM)
def _nm(W64: Any, st: NM, count: int) -> Any:
    G, r, d = W64.shape
    return nm_magnitude(W64.reshape(G * r, d), st.n, st.groups(d)).reshape(G, r, d)


@register_baseline(Blocks)
def _blocks(W64: Any, st: Blocks, count: int) -> Any:
    G, r, d = W64.shape
    return block_magnitude(W64.reshape(G * r, d), st.groups(d), count // st.size
                           ).reshape(G, r, d)


def baseline(W: Any, H64: Any, structure: Any, count: int, quant: QuantSpec | None
             ) -> Baseline:
    """W [G, r, d], H64 [G, d, d]: the structure's registered magnitude baseline removing
    `count` weights, then RTN on a grid fitted to the result (zeros stay 0), the clipping
    search weighted by diag(H) and never worse than min-max under H (quant.fit_grid)."""
    xp = array_module(W, H64)
    G, r, d = W.shape
    base = baseline_for(structure)(W.astype(xp.float64), structure, count) if count else W
    grid = fit_grid(base.reshape(G * r, d), quant, H64) if quant else None
    if quant:  # float64 (rtn works on row chunks: no float64 copy of W first)
        base = rtn(base.reshape(G * r, d), grid).reshape(G, r, d)  # zeros stay 0
    elif not count:
        base = W.astype(xp.float64)
    loss = layer_loss(W, base, H64)
    base_codes = codes(base.reshape(G * r, d), grid).reshape(G, r, d) if quant else None
    return Baseline(W=base, loss=loss, grid=grid, codes=base_codes)


@register_solver(object, "magnitude", "rtn")
def baseline_solution(task: Task) -> LayerSolution:
    """The methods "magnitude" / "rtn": the baseline itself, for every structure kind."""
    b = task.baseline
    return LayerSolution(W=b.W, baseline=b.W, loss=b.loss, baseline_loss=b.loss, obs_loss=0.0,
                         zeros=count_zeros(b.W), dead=0, damp=0.0, escalations=(), grid=b.grid,
                         codes=b.codes, baseline_codes=b.codes, baseline_grid=b.grid,
                         method_used="rtn" if task.quant else "magnitude")
